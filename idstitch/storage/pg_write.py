"""Writing one micro-batch's plans to PostgreSQL: COPY for new rows, one statement per update.

Rows come from `storage.rows` (the same rows as every SQL store); only event numbers differ:
they are drawn from the `event_seq` sequence inside the locked transaction, so workers on
several hosts interleave, and a later conflicting batch always numbers its events higher.
"""

from __future__ import annotations

from typing import Any

import psycopg

from idstitch.core.graph import Graph
from idstitch.core.plan import Plan
from idstitch.storage.rows import BatchRows, rows_from_plans

# Every write is one set-based statement over arrays, all pipelined with the commit: a batch
# costs one round trip to write, whatever its size.
_PROFILES = (
    "INSERT INTO profiles (id, segment_id, collection, canonical_id, created_at, "
    "first_message_id, first_source_id) SELECT * FROM unnest(%b::bigint[], %b::text[], "
    "%b::text[], %b::bigint[], %b::float8[], %b::text[], %b::text[])"
)
_MERGES = (
    "INSERT INTO merges (from_id, into_id, message_id, source_id, timestamp) "
    "SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::text[], %b::text[], %b::float8[])"
)
_IDENTIFIERS = (
    "INSERT INTO identifiers (collection, type, value, profile_id, source_id, "
    "first_message_id, created_at) SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], "
    "%b::bigint[], %b::text[], %b::text[], %b::float8[])"
)
_EVENTS = (
    "INSERT INTO events (seq, source_id, message_id, type, event, timestamp, received_at, "
    "profile_id, account_id, reason, external_ids, body) SELECT * FROM unnest(%b::bigint[], "
    "%b::text[], %b::text[], %b::text[], %b::text[], %b::float8[], %b::float8[], %b::bigint[], "
    "%b::bigint[], %b::text[], %b::text[], %b::bytea[])"
)
_VIOLATIONS = (
    "INSERT INTO violations (source_id, message_id, collection, type, value, rule, detail, "
    "timestamp) SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], "
    "%b::text[], %b::text[], %b::text[], %b::float8[])"
)
_REPOINT = (
    "UPDATE profiles SET canonical_id = u.dst "
    "FROM unnest(%b::bigint[], %b::bigint[]) AS u(dst, src) WHERE profiles.canonical_id = u.src"
)
_MERGE_COUNTS = (
    "UPDATE profiles SET merges = u.m "
    "FROM unnest(%b::int[], %b::bigint[]) AS u(m, id) WHERE profiles.id = u.id"
)
_TRAITS = (
    "INSERT INTO traits (profile_id, key, value, timestamp, seq, source_id) "
    "SELECT * FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::float8[], %b::bigint[], "
    "%b::text[]) "
    "ON CONFLICT (profile_id, key) DO UPDATE SET value = excluded.value, "
    "timestamp = excluded.timestamp, seq = excluded.seq, source_id = excluded.source_id "
    "WHERE (excluded.timestamp, excluded.seq) >= (traits.timestamp, traits.seq)"
)
_LINKS = (
    "INSERT INTO links (user_id, account_id, source_id, created_at) "
    "SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::text[], %b::float8[]) "
    "ON CONFLICT DO NOTHING"
)
_SEQS = "SELECT nextval('event_seq') FROM generate_series(1, %s)"


def _scrub_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(
        v.replace("\x00", "\ufffd") if isinstance(v, str) and "\x00" in v else v for v in row
    )


def _scrub(rows: BatchRows) -> None:
    """Replace NUL characters (which PostgreSQL text cannot hold) in every text column."""
    for name in ("events", "profiles", "merges", "identifiers", "traits", "links", "violations"):
        setattr(rows, name, [_scrub_row(r) for r in getattr(rows, name)])


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


def _columns(rows: list[tuple[Any, ...]], floats: tuple[int, ...]) -> list[list[Any]]:
    """Rows as one list per column; `floats` are the float8 columns (an int among floats
    cannot be sent in one array)."""
    columns = [list(col) for col in zip(*rows, strict=True)]
    for index in floats:
        columns[index] = [float(v) for v in columns[index]]
    return columns


def _insert(
    conn: psycopg.Connection[Any],
    sql: str,
    rows: list[tuple[Any, ...]],
    floats: tuple[int, ...] = (),
) -> None:
    if rows:
        conn.execute(sql, _columns(rows, floats))


def write_plans(
    conn: psycopg.Connection[Any], plans: list[Plan], graph: Graph, seqs: list[int]
) -> None:
    """Queue the batch's writes on `conn` (in pipeline mode); `seqs` are event numbers
    reserved in this transaction, ascending, at least one per plan."""
    rows, count = rows_from_plans(plans, graph, 0)
    if any(b"\\u0000" in p.raw for p in plans):
        _scrub(rows)
    if count > len(seqs):
        seqs = sorted([*seqs, *(r[0] for r in conn.execute(_SEQS, (count - len(seqs),)))])
    # rows.events: (seq, msg_hash, source, message, type, event, ts, received, profile,
    # account, reason, external_ids JSON bytes, body); the hash is SQLite's lookup column.
    events = [(seqs[e[0]], *e[2:11], e[11].decode(), e[12]) for e in rows.events]
    identifiers = [i[1:] for i in rows.identifiers]  # drop SQLite's key hash
    traits = _latest_traits([(t[0], t[1], t[2], t[3], seqs[t[4]], t[5]) for t in rows.traits])
    _insert(conn, _PROFILES, rows.profiles, (4,))
    if rows.repoint:
        final = _final(rows.repoint)
        conn.execute(_REPOINT, (list(final.values()), list(final)))
    if rows.merge_counts:
        conn.execute(
            _MERGE_COUNTS, ([m for m, _ in rows.merge_counts], [p for _, p in rows.merge_counts])
        )
    _insert(conn, _MERGES, rows.merges, (4,))
    _insert(conn, _IDENTIFIERS, identifiers, (6,))
    _insert(conn, _EVENTS, events, (5, 6))
    _insert(conn, _TRAITS, traits, (3,))
    _insert(conn, _LINKS, rows.links, (3,))
    _insert(conn, _VIOLATIONS, rows.violations, (7,))
