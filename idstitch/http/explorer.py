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

from idstitch import explain, profiles
from idstitch.core.messages import format_time
from idstitch.errors import InvalidReference
from idstitch.reads import ProfileReads
from idstitch.storage.base import EventRow, ExternalIdRow, ProfileRow, ProfileViolationRow

Rank = Callable[[str], Any]  # IdentityRules.rank: smaller sorts first

PAGE_PATH = "/explorer"
SCRIPT_PATH = "/explorer.js"
# The graph library the page draws with (cytoscape.js, vendored with its licence).
LIBRARY_PATH = "/explorer/cytoscape.min.js"
DATA_PATH = "/explorer/graph"
EXPLAIN_PATH = "/explorer/explain"
# What one drawing shows at most; the answer says when there was more. A profile holds at
# most 1,000 identifiers and 100 merges, but an account may be linked to any number of users.
MAX_IDENTIFIERS = 1000
MAX_MERGES = 200
MAX_LINKS = 200
MAX_LINKED_IDENTIFIERS = 10
MAX_TRAITS = 200
MAX_EDGES = 2000
MAX_REFUSALS = 500
MAX_MESSAGES = explain.MAX_MESSAGES  # read for the edges
MAX_REF_LENGTH = 4100  # `type:value` with a 1,000-character value of 4-byte characters
# Each of explain's two references: a type (at most 100 characters), `:` and a value (at most
# 1,000), with room to spare; both fit in one request head even percent-encoded.
MAX_PICKED_LENGTH = 2100
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


def library() -> bytes:
    return _static("cytoscape.min.js")


def graph(reads: ProfileReads, params: dict[str, str], rank: Rank) -> dict[str, Any]:
    """The drawing's data for `?ref=type:value` or `?ref=segment_id` (users first, then
    accounts, as `idstitch profile`). A linked profile is named by its highest-priority
    identifiers (`rank`, as the identity rules order types)."""
    ref = _ref(params, "ref")
    row = reads.find(ref)
    linked = reads.links(row, limit=MAX_LINKS + 1)
    traits = reads.traits(row, limit=MAX_TRAITS + 1)
    identifiers = [
        {**profiles.external_id(r), "profile": r.segment_id or row.segment_id}
        for r in _by_priority(reads, row, rank)
    ]
    merges = reads.merges(row)
    events = list(explain.messages(reads, row, MAX_MESSAGES))
    edges = _edges(events, row.collection, {(m.source_id, m.message_id) for m in merges})
    refusals = list(explain.refusals(reads, row, MAX_REFUSALS + 1))
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
        "edges": edges[:MAX_EDGES],
        "more_edges": len(edges) > MAX_EDGES or len(events) >= MAX_MESSAGES,
        "refusals": [_refusal(f, row, events) for f in refusals[:MAX_REFUSALS]],
        "more_refusals": len(refusals) > MAX_REFUSALS,
    }


def explanation(reads: ProfileReads, params: dict[str, str]) -> dict[str, Any]:
    """`/explorer/explain?a=&b=`: as the Profile API's explain, for two picked identifiers."""
    a = _ref(params, "a", MAX_PICKED_LENGTH)
    return explain.explain(reads, a, _ref(params, "b", MAX_PICKED_LENGTH))


def _ref(params: dict[str, str], name: str, limit: int = MAX_REF_LENGTH) -> str:
    ref = params.get(name, "")
    if not ref.strip():
        raise InvalidReference(
            f"no profile reference: pass ?{name}=type:value (e.g. {name}=user_id:u123) or "
            f"?{name}=a segment_id."
        )
    if len(ref) > limit:
        raise InvalidReference(
            f"the profile reference {name} is {len(ref):,} characters; the limit is "
            f"{limit:,} (identifier values hold at most 1,000)."
        )
    return ref


def _edges(
    events: list[EventRow], collection: str, merges: set[tuple[str, str]]
) -> list[dict[str, Any]]:
    """One edge per pair of identifiers that a message carried together, described by the
    first such message: each message joins its first (highest-priority) identifier to each
    of the others, so a message of n identifiers draws n - 1 edges, not n * (n - 1) / 2."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for event in events:
        ids = explain.carried(event, collection)
        for other in ids[1:]:
            pair = (ids[0], other)
            edge = found.get(pair)
            if edge is not None:
                edge["messages"] += 1
                continue
            kind = explain.kind(event, merges)
            found[pair] = {
                "from": ids[0],
                "to": other,
                "kind": kind,
                "message_id": event.message_id,
                "message_type": event.type,
                "source_id": event.source_id,
                "timestamp": format_time(event.timestamp),
                "messages": 1,
            }
    return list(found.values())


def _refusal(found: ProfileViolationRow, row: ProfileRow, events: list[EventRow]) -> dict[str, Any]:
    """A refusal, with the two nodes its dashed edge joins: the refused identifier (or
    `segment_id:` of a refused merge) and the first identifier of the message that was
    refused, when the message is this profile's; else the other profile."""
    out = explain.refusal(found, row)
    v = found.violation
    out["from"] = explain.node(v.type, v.value)
    carried = next(
        (
            explain.carried(e, v.collection)
            for e in events
            if e.message_id == v.message_id and e.source_id == v.source_id
        ),
        [],
    )
    if carried:
        out["to"] = carried[0]
    elif out["other_segment_id"] is not None:
        out["to"] = explain.node("segment_id", out["other_segment_id"])
    else:
        out["to"] = None
    return out


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
