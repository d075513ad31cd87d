"""Writing one micro-batch's plans to PostgreSQL in few round trips.

Rows come from `storage.rows` (the same rows as every SQL store). Events, the bulk of the
bytes, go by binary COPY. Every other table gets one set-based statement whose rows travel as
one JSON document: encoding it costs the client almost nothing, where psycopg adapts list
parameters element by element. Those statements and the COMMIT then leave in one pipeline.
Event numbers were reserved from `event_seq` inside the locked transaction (`seen`), so a
batch that had to wait for another one numbers its events after it.
"""

from __future__ import annotations

from typing import Any

import msgspec
import psycopg

from idstitch.core.graph import Graph
from idstitch.core.plan import Plan
from idstitch.storage.rows import rows_from_plans

Statement = tuple[str, tuple[Any, ...]]
json = msgspec.json.Encoder()

_COPY_EVENTS = (
    "COPY events (seq, source_id, message_id, type, event, timestamp, received_at, "
    "profile_id, account_id, reason, external_ids, body) FROM STDIN (FORMAT BINARY)"
)
_EVENT_TYPES = ["int8", "text", "text", "text", "text", "float8", "float8", "int8", "int8",
                "text", "text", "bytea"]  # fmt: skip
_ROWS = "FROM json_array_elements(%s::json) AS r"
_PROFILES = (
    "INSERT INTO profiles (id, segment_id, collection, canonical_id, created_at, "
    "first_message_id, first_source_id) SELECT (r->>0)::bigint, r->>1, r->>2, "
    f"(r->>3)::bigint, (r->>4)::float8, r->>5, r->>6 {_ROWS}"
)
_MERGES = (
    "INSERT INTO merges (from_id, into_id, message_id, source_id, timestamp, rule) "
    f"SELECT (r->>0)::bigint, (r->>1)::bigint, r->>2, r->>3, (r->>4)::float8, r->>5 {_ROWS}"
)
_IDENTIFIERS = (
    "INSERT INTO identifiers (collection, type, value, profile_id, source_id, "
    "first_message_id, created_at) SELECT r->>0, r->>1, r->>2, (r->>3)::bigint, r->>4, "
    f"r->>5, (r->>6)::float8 {_ROWS}"
)
_VIOLATIONS = (
    "INSERT INTO violations (source_id, message_id, collection, type, value, rule, detail, "
    "timestamp, profile_id, other_profile_id) SELECT r->>0, r->>1, r->>2, r->>3, r->>4, r->>5, "
    f"r->>6, (r->>7)::float8, (r->>8)::bigint, (r->>9)::bigint {_ROWS}"
)
_REPOINT = (
    "UPDATE profiles SET canonical_id = (r->>0)::bigint "
    f"{_ROWS} WHERE profiles.canonical_id = (r->>1)::bigint"
)
_MERGE_COUNTS = (
    f"UPDATE profiles SET merges = (r->>0)::int {_ROWS} WHERE profiles.id = (r->>1)::bigint"
)
_TRAITS = (
    "INSERT INTO traits (profile_id, key, value, timestamp, seq, source_id) "
    "SELECT (r->>0)::bigint, r->>1, r->>2, (r->>3)::float8, (r->>4)::bigint, r->>5 "
    f"{_ROWS} ON CONFLICT (profile_id, key) DO UPDATE SET value = excluded.value, "
    "timestamp = excluded.timestamp, seq = excluded.seq, source_id = excluded.source_id "
    "WHERE (excluded.timestamp, excluded.seq) >= (traits.timestamp, traits.seq)"
)
_LINKS = (
    "INSERT INTO links (user_id, account_id, source_id, created_at) "
    f"SELECT (r->>0)::bigint, (r->>1)::bigint, r->>2, (r->>3)::float8 {_ROWS} "
    "ON CONFLICT DO NOTHING"
)
_OUTBOX = (
    "INSERT INTO outbox (segment_id, changes, created_at) "
    f"SELECT r->>0, r->>1, (r->>2)::float8 {_ROWS}"
)
_SEQS = "SELECT nextval('event_seq') FROM generate_series(1, %s)"


def _final(repoint: list[tuple[int, int]]) -> dict[int, int]:
    """Each merged-away profile -> the profile it ends up in after the whole batch."""
    into = {other: target for target, other in repoint}
    final = {}
    for other in into:
        target = into[other]
        while target in into:
            target = into[target]
        final[other] = target
    return final


def _latest_traits(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """One row per (profile, key): the newest by (timestamp, seq), as sequential upserts
    would leave it (one statement may not update a row twice)."""
    best: dict[tuple[int, str], tuple[Any, ...]] = {}
    for row in rows:
        held = best.get((row[0], row[1]))
        if held is None or (row[3], row[4]) >= (held[3], held[4]):
            best[(row[0], row[1])] = row
    return list(best.values())


def write_plans(
    conn: psycopg.Connection[Any],
    plans: list[Plan],
    graph: Graph,
    seqs: list[int],
    changes: bool = False,
) -> list[Statement]:
    """COPY the batch's events now; return the other statements, to be sent with the COMMIT.
    `seqs` are event numbers reserved in this transaction, ascending; `changes`: write the
    change feed's rows too."""
    rows, count = rows_from_plans(plans, graph, 0, changes=changes)
    if count > len(seqs):
        more = conn.execute(_SEQS, (count - len(seqs),)).fetchall()
        seqs = sorted([*seqs, *(r[0] for r in more)])
    if rows.events:
        # rows.events: (seq, msg_hash, source, message, type, event, ts, received, profile,
        # account, reason, external_ids JSON bytes, body); the hash is SQLite's lookup column.
        with conn.cursor().copy(_COPY_EVENTS) as copy:
            copy.set_types(_EVENT_TYPES)
            for e in rows.events:
                copy.write_row((seqs[e[0]], *e[2:11], e[11].decode(), e[12]))
    out: list[Statement] = []

    def add(sql: str, table: list[Any]) -> None:
        if table:
            out.append((sql, (json.encode(table).decode(),)))

    add(_PROFILES, rows.profiles)
    final = _final(rows.repoint)
    add(_REPOINT, list(zip(final.values(), final, strict=True)))
    add(_MERGE_COUNTS, rows.merge_counts)
    add(_MERGES, rows.merges)
    add(_IDENTIFIERS, [i[1:] for i in rows.identifiers])  # drop SQLite's key hash
    add(_TRAITS, _latest_traits([(*t[:4], seqs[t[4]], t[5]) for t in rows.traits]))
    add(_LINKS, rows.links)
    add(_VIOLATIONS, rows.violations)
    add(_OUTBOX, [(sid, changes.decode(), at) for sid, changes, at in rows.outbox])
    return out
