"""`/explorer`: a page that draws one profile's identity graph.

The page and its script hold no data and need no token; they ask `/explorer/graph` for a
profile, which takes a Profile API access token like every other read. The graph is the
profile, its identifiers (which source added each, and when), the profiles merged into it
(with the message that merged them) and the linked profiles of the other collection.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any

from idstitch import profiles
from idstitch.core.messages import format_time
from idstitch.errors import InvalidReference
from idstitch.reads import ProfileReads
from idstitch.storage.base import ExternalIdRow, ProfileRow

Rank = Callable[[str], Any]  # IdentityRules.rank: smaller sorts first

PAGE_PATH = "/explorer"
SCRIPT_PATH = "/explorer.js"
DATA_PATH = "/explorer/graph"
# What one drawing shows at most; the answer says when there was more. A profile holds at
# most 1,000 identifiers and 100 merges, but an account may be linked to any number of users.
MAX_IDENTIFIERS = 1000
MAX_MERGES = 200
MAX_LINKS = 200
MAX_LINKED_IDENTIFIERS = 10
MAX_TRAITS = 200
MAX_REF_LENGTH = 4100  # `type:value` with a 1,000-character value of 4-byte characters
# The page runs only its own script and talks only to this server.
HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        b"connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
        b"form-action 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]


def _static(name: str) -> bytes:
    return resources.files("idstitch.http").joinpath("static", name).read_bytes()


def page() -> bytes:
    return _static("explorer.html")


def script() -> bytes:
    return _static("explorer.js")


def graph(reads: ProfileReads, params: dict[str, str], rank: Rank) -> dict[str, Any]:
    """The drawing's data for `?ref=type:value` or `?ref=segment_id` (users first, then
    accounts, as `idstitch profile`). A linked profile is named by its highest-priority
    identifiers (`rank`, as the identity rules order types)."""
    ref = params.get("ref", "")
    if not ref.strip():
        raise InvalidReference(
            "no profile reference: pass ?ref=type:value (e.g. ref=user_id:u123) or "
            "?ref=a segment_id."
        )
    if len(ref) > MAX_REF_LENGTH:
        raise InvalidReference(
            f"the profile reference is {len(ref):,} characters; the limit is "
            f"{MAX_REF_LENGTH:,} (identifier values hold at most 1,000)."
        )
    row = reads.find(ref)
    linked = reads.links(row, limit=MAX_LINKS + 1)
    traits = reads.traits(row, limit=MAX_TRAITS + 1)
    identifiers = [profiles.external_id(r) for r in _by_priority(reads, row, rank)]
    merges = reads.merges(row)
    return {
        "ref": ref,
        "profile": {
            "segment_id": row.segment_id,
            "collection": row.collection,
            "created_at": format_time(row.created_at),
            "first_message_id": row.first_message_id,
            "first_source_id": row.first_source_id,
        },
        "identifiers": identifiers[:MAX_IDENTIFIERS],
        "more_identifiers": len(identifiers) > MAX_IDENTIFIERS,
        "merges": [profiles.merge(m) for m in merges[:MAX_MERGES]],
        "more_merges": len(merges) > MAX_MERGES,
        "links": [_linked(reads, link.profile, rank) for link in linked[:MAX_LINKS]],
        "more_links": len(linked) > MAX_LINKS,
        "traits": dict(list(traits.items())[:MAX_TRAITS]),
        "more_traits": len(traits) > MAX_TRAITS,
    }


def _by_priority(reads: ProfileReads, row: ProfileRow, rank: Rank) -> list[ExternalIdRow]:
    """Highest priority first, so that a list cut short shows the user_id and the email."""
    return sorted(reads.external_ids(row), key=lambda r: (rank(r.type), r.created_at))


def _linked(reads: ProfileReads, row: ProfileRow, rank: Rank) -> dict[str, Any]:
    found = _by_priority(reads, row, rank)
    return {
        "segment_id": row.segment_id,
        "collection": row.collection,
        "identifiers": [{"type": r.type, "id": r.id} for r in found[:MAX_LINKED_IDENTIFIERS]],
        "more_identifiers": len(found) > MAX_LINKED_IDENTIFIERS,
    }
