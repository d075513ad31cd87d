"""Reading profiles back: lookup by any reference, and Segment's Profile API shapes.

The CLI, the Python API and the HTTP Profile API all render from these functions.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from idstitch.core.identifiers import ACCOUNTS, USERS, is_text, parse_ref
from idstitch.core.messages import format_time
from idstitch.errors import InvalidReference, ProfileNotFound
from idstitch.storage.base import (
    EventRow,
    ExternalIdRow,
    MergeRow,
    ProfileRow,
    SortOrder,
    Store,
    ViolationRow,
)

_body_decoder = msgspec.json.Decoder(dict[str, Any])
_HIDDEN_BODY_KEYS = {"writeKey", "messageId", "timestamp", "type", "event"}


def find(store: Store, ref: str, collection: str | None = None) -> ProfileRow:
    """The canonical profile for `type:value` or a segment_id; raises ProfileNotFound.

    Without a collection, `type:value` is looked up among users, then accounts."""
    if not isinstance(ref, str):
        raise InvalidReference(
            f"profile reference {ref!r} is a {type(ref).__name__}, not a string; pass "
            "`type:value` (e.g. user_id:u123) or a segment_id (use_... or acc_...)."
        )
    parsed = parse_ref(ref, collection)
    row: ProfileRow | None = None
    if "\x00" in ref or not is_text(ref):
        pass  # no identifier, type or segment_id holds a NUL or a lone surrogate
    elif isinstance(parsed, str):
        row = store.find_by_segment_id(parsed)
    else:
        row = store.find_by_identifier(*parsed)
        if row is None and collection is None and parsed[0] == USERS:
            row = store.find_by_identifier(ACCOUNTS, parsed[1], parsed[2])
    if row is None or (collection is not None and row.collection != collection):
        shown = ref if len(ref) <= 200 else ref[:200] + "..."
        where = f" among {collection}" if collection else ""
        raise ProfileNotFound(f"no profile{where} matches {shown!r}.")
    return row


def traits(
    store: Store,
    row: ProfileRow,
    verbose: bool = False,
    *,
    start: str = "",
    limit: int | None = None,
    keys: frozenset[str] | None = None,
) -> dict[str, Any]:
    """Traits by key, in key order: all of them, or a page (`Store.traits`)."""
    out: dict[str, Any] = {}
    for t in store.traits(row.pid, start=start, limit=limit, keys=keys):
        if verbose:
            out[t.key] = {
                "value": t.value,
                "source_id": t.source_id,
                "updated_at": format_time(t.timestamp),
            }
        else:
            out[t.key] = t.value
    return out


def external_id(r: ExternalIdRow) -> dict[str, Any]:
    return {
        "id": r.id,
        "type": r.type,
        "collection": r.collection,
        "source_id": r.source_id,
        "created_at": format_time(r.created_at),
        "encoding": "none",
        "first_message_id": r.first_message_id,
    }


def external_ids(store: Store, row: ProfileRow) -> list[dict[str, Any]]:
    return [external_id(r) for r in store.external_ids(row.pid)]


def _body(raw: bytes) -> dict[str, Any]:
    """A stored message's JSON. Ingest refuses what cannot be read back, but a body stored
    before a check existed (or one with a number beyond a double, such as 1e400, which JSON
    allows) must still not fail the whole page: such numbers read back as null, and a body
    that cannot be read at all is left out."""
    try:
        body: dict[str, Any] = _body_decoder.decode(raw)
        return body
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        pass
    try:
        # 1e400 -> inf -> null on output; an integer past Python's 4,300 digits likewise
        loose = json.loads(raw.decode("utf-8", "replace"), parse_int=_int_or_infinity)
    except (ValueError, RecursionError):
        return {}
    return loose if isinstance(loose, dict) else {}


def _int_or_infinity(digits: str) -> int | float:
    try:
        return int(digits)
    except ValueError:
        return float(digits)


def event(e: EventRow) -> dict[str, Any]:
    body = _body(e.body) if e.body else {}
    out: dict[str, Any] = {"type": e.type}
    if e.event is not None and e.type == "track":
        out["event"] = e.event
    out.update(
        {
            "source_id": e.source_id,
            "message_id": e.message_id,
            "timestamp": format_time(e.timestamp),
            "received_at": format_time(e.received_at),
            "external_ids": [
                {"collection": c, "type": t, "id": v, "encoding": "none"}
                for c, t, v in e.external_ids
            ],
        }
    )
    for key, value in body.items():
        if key not in _HIDDEN_BODY_KEYS and key not in out:
            out[key] = value
    if e.segment_id is not None:
        out["related"] = {_collection_of(e.segment_id): e.segment_id}
    return out


def events(
    store: Store,
    row: ProfileRow,
    *,
    start: float | None = None,
    end: float | None = None,
    sort: SortOrder = "desc",
    after: tuple[float, int] | None = None,
    limit: int = 10,
) -> list[EventRow]:
    """Events of the canonical profile `row`; their `segment_id` (`related`) names `row`, the
    canonical id that `cursor.url` and `metadata` show too (the store follows merges)."""
    return store.events(row.pid, start=start, end=end, sort=sort, after=after, limit=limit)


def _collection_of(segment_id: str) -> str:
    return ACCOUNTS if segment_id.startswith("acc_") else USERS


def links(store: Store, row: ProfileRow) -> list[dict[str, Any]]:
    other = USERS if row.collection == ACCOUNTS else ACCOUNTS
    return [
        {
            "to_collection": other,
            "segment_id": linked.profile.segment_id,
            "external_ids": [
                {k: v for k, v in external_id(r).items() if k != "first_message_id"}
                for r in store.external_ids(linked.profile.pid)
            ],
        }
        for linked in store.links(row.pid)
    ]


def metadata(store: Store, row: ProfileRow) -> dict[str, Any]:
    """One clock, arrival, as Segment's (its segment_ids carry their creation time): the
    first message is the one that created the profile, the last the one stored last."""
    last = store.latest_arrival(row.pid)
    updated = max(last.received_at, row.created_at) if last else row.created_at
    return {
        "segment_id": row.segment_id,
        "collection": row.collection,
        "created_at": format_time(row.created_at),
        "updated_at": format_time(updated),
        "expires_at": None,
        "first_message_id": row.first_message_id,
        "first_source_id": row.first_source_id,
        "last_message_id": last.message_id if last else row.first_message_id,
        "last_source_id": last.source_id if last else row.first_source_id,
        "merged_from": [m.from_segment_id for m in store.merges(row.pid)],
    }


def merge(m: MergeRow) -> dict[str, Any]:
    return {
        "from_segment_id": m.from_segment_id,
        "into_segment_id": m.into_segment_id,
        "message_id": m.message_id,
        "source_id": m.source_id,
        "timestamp": format_time(m.timestamp),
        "rule": m.rule,
    }


def violation(v: ViolationRow) -> dict[str, Any]:
    return {
        "collection": v.collection,
        "type": v.type,
        "id": v.value,
        "rule": v.rule,
        "detail": v.detail,
        "message_id": v.message_id,
        "source_id": v.source_id,
        "timestamp": format_time(v.timestamp),
    }


def document(store: Store, ref: str) -> dict[str, Any]:
    """The whole profile as `idstitch profile --json` prints it."""
    row = find(store, ref)
    return {
        "ref": ref,
        "segment_id": row.segment_id,
        "collection": row.collection,
        "traits": traits(store, row),
        "external_ids": [
            {
                k: v
                for k, v in e.items()
                if k in ("type", "id", "collection", "source_id", "created_at")
            }
            for e in external_ids(store, row)
        ],
        "links": links(store, row),
        "metadata": metadata(store, row),
    }
