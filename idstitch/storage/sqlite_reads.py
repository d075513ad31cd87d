"""Profile reads on the SQLite store: the index up to its watermarks, plus the log past them.

The index database (`sqlite_index`, attached as `ix`) holds events by profile and by account,
identifiers by key and by profile, and traits, up to its watermarks; the log and the graph
tables of the main database hold everything committed. A read takes the index's snapshot
first (its watermarks), then the main database's, which is newer: every row the index names
is there, and the rows past the watermarks (the tail, a fraction of a second of traffic while
the indexer keeps up) are read from the log itself. So a message is visible to every read as
soon as its commit is acknowledged.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from idstitch.core.split import StoredMessage
from idstitch.storage.base import (
    EVENT_COLUMNS,
    JOIN_REFUSALS,
    PROFILE_VIOLATION_COLUMNS,
    PROFILE_VIOLATION_JOINS,
    BlockedRow,
    EventRow,
    ExternalIdRow,
    LinkRow,
    MergeRow,
    ProfileRow,
    ProfileViolationRow,
    SharedValueRow,
    SortOrder,
    Stats,
    TraitRow,
    ViolationRow,
    event_row,
    events_column,
    profile_violation_row,
    shared_values_query,
)
from idstitch.storage.export_reads import (
    GraphUpdate,
    HeldIdentifier,
    Join,
    TraitUpdate,
    TraitValue,
    current_traits_sql,
    graph_update,
    graph_updates_sql,
    held_identifier,
    identifiers_sql,
    members_sql,
    newest_traits,
    sqlite_message_hash,
    trait_messages_sql,
    trait_updates,
)
from idstitch.storage.rewrite import Member, Operation
from idstitch.storage.rows import identifier_hash, stored_names
from idstitch.storage.sqlite_index import SCHEMA as INDEX_SCHEMA
from idstitch.storage.sqlite_index import Watermarks, trait_rows, watermarks

PROFILE_COLUMNS = (
    "p.id, p.segment_id, p.collection, p.created_at, p.merges, "
    "p.first_message_id, p.first_source_id"
)
# Member profiles (a profile and those merged into it) per query of `events`.
MEMBERS_PER_QUERY = 200
_json_encode = msgspec.json.Encoder().encode
_ids = msgspec.json.Decoder(list[tuple[str, str, str]])


def _json_list(values: Any) -> str:
    return _json_encode(values).decode()


@contextlib.contextmanager
def reading(conn: sqlite3.Connection) -> Iterator[Watermarks]:
    """One read transaction: the index's snapshot first, then the log's (see the module)."""
    conn.execute("BEGIN")
    try:
        yield watermarks(conn)
    finally:
        conn.execute("COMMIT")


def members(conn: sqlite3.Connection, pid: int) -> list[int]:
    """The profile and those merged into it, through its canonical id: a merge committed
    between finding a profile and reading it must not empty the answer."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT id FROM profiles WHERE canonical_id = "
            "(SELECT canonical_id FROM profiles WHERE id = ?)",
            (pid,),
        )
    ]


def _collection(conn: sqlite3.Connection, pid: int) -> str | None:
    row = conn.execute("SELECT collection FROM profiles WHERE id = ?", (pid,)).fetchone()
    return None if row is None else str(row[0])


def find_by_identifier(
    conn: sqlite3.Connection, collection: str, type_: str, value: str
) -> ProfileRow | None:
    h = identifier_hash(collection, type_, value)
    with reading(conn) as marks:
        row = conn.execute(
            f"SELECT {PROFILE_COLUMNS} FROM identifiers i "
            "JOIN profiles q ON q.id = i.profile_id JOIN profiles p ON p.id = q.canonical_id "
            "WHERE i.id IN (SELECT id FROM ix.identifier_keys WHERE key_hash = ? UNION ALL "
            "SELECT id FROM identifiers WHERE id > ? AND key_hash = ?) "
            "AND i.collection = ? AND i.type = ? AND i.value = ?",
            (h, marks.identifiers, h, collection, type_, value),
        ).fetchone()
    return ProfileRow(*row) if row else None


def find_by_segment_id(conn: sqlite3.Connection, segment_id: str) -> ProfileRow | None:
    row = conn.execute(
        f"SELECT {PROFILE_COLUMNS} FROM profiles q "
        "JOIN profiles p ON p.id = q.canonical_id WHERE q.segment_id = ?",
        (segment_id,),
    ).fetchone()
    return ProfileRow(*row) if row else None


def external_ids(conn: sqlite3.Connection, pid: int) -> list[ExternalIdRow]:
    columns = (
        "collection, type, value, source_id, first_message_id, created_at, "
        "(SELECT segment_id FROM profiles WHERE id = identifiers.profile_id)"
    )
    with reading(conn) as marks:
        mine = members(conn, pid)
        # The row's own profile is checked too: an id freed by a repair (a deleted
        # identifier) may be taken again by a row of another profile.
        rows = [
            ExternalIdRow(*r)
            for member in mine
            for r in conn.execute(
                f"SELECT {columns} FROM identifiers WHERE id IN "
                "(SELECT id FROM ix.identifier_profiles WHERE profile_id = ?1) "
                "AND profile_id = ?1",
                (member,),
            )
        ]
        rows.extend(
            ExternalIdRow(*r)
            for r in conn.execute(
                f"SELECT {columns} FROM identifiers WHERE id > ? "
                "AND profile_id IN (SELECT value FROM json_each(?))",
                (marks.identifiers, _json_list(mine)),
            )
        )
    rows.sort(key=lambda r: (r.created_at, r.type, r.id))
    return rows


def _tail_traits(
    conn: sqlite3.Connection, marks: Watermarks, mine: list[int], keys: frozenset[str] | None
) -> dict[str, tuple[float, int, str | None, str]]:
    """The newest trait per key among the members' identify and group events past the
    watermark: key -> (timestamp, seq, value JSON or None, source_id)."""
    found = conn.execute(
        "SELECT seq, type, profile_id, account_id, timestamp, source_id, body FROM events "
        "WHERE seq > ?1 AND type IN ('identify', 'group') AND (profile_id IN "
        "(SELECT value FROM json_each(?2)) OR account_id IN (SELECT value FROM json_each(?2)))",
        (marks.events, _json_list(mine)),
    ).fetchall()
    best: dict[str, tuple[float, int, str | None, str]] = {}
    wanted = set(mine)
    for owner, key, value, ts, seq, source in trait_rows(found):
        if owner not in wanted or (keys is not None and key not in keys):
            continue
        held = best.get(key)
        if held is None or (ts, seq) >= held[:2]:
            best[key] = (ts, seq, value, source)
    return best


def traits(
    conn: sqlite3.Connection,
    pid: int,
    *,
    start: str = "",
    limit: int | None = None,
    keys: frozenset[str] | None = None,
) -> list[TraitRow]:
    sql = "SELECT key, value, timestamp, seq, source_id FROM ix.traits WHERE profile_id = ?"
    args: list[Any] = []
    if keys is not None:
        sql += " AND key IN (SELECT value FROM json_each(?))"
        args.append(_json_list(sorted(keys)))
    # Each member in key order, `chunk` rows at a time. Keys up to the lowest last key of a
    # member cut short are complete (every member has given all of its own); removed traits
    # are skipped, so a page may take more than one round. The tail's traits join each round.
    chunk = None if limit is None else max(limit + 1, 64)
    out: list[TraitRow] = []
    above, inclusive = start, True
    with reading(conn) as marks:
        mine = members(conn, pid)
        tail = _tail_traits(conn, marks, mine, keys)
        while True:
            best: dict[str, tuple[float, int, str | None, str]] = {
                k: v for k, v in tail.items() if k > above or (inclusive and k == above)
            }
            bound: str | None = None
            where = sql + (" AND key >= ?" if inclusive else " AND key > ?") + " ORDER BY key"
            for member in mine:
                tail_args = (above,) if chunk is None else (above, chunk)
                rows = conn.execute(
                    where + ("" if chunk is None else " LIMIT ?"), (member, *args, *tail_args)
                ).fetchall()
                if chunk is not None and len(rows) == chunk:
                    last = rows[-1][0]
                    bound = last if bound is None or last < bound else bound
                for key, value, ts, seq, source in rows:
                    held = best.get(key)
                    if held is None or (ts, seq) >= held[:2]:
                        best[key] = (ts, seq, value, source)
            for key in sorted(best):
                if bound is not None and key > bound:
                    break
                ts, _, value, source = best[key]
                if value is not None:
                    out.append(TraitRow(key, msgspec.json.decode(value), ts, source))
                    if limit is not None and len(out) >= limit:
                        return out
            if bound is None:
                return out
            above, inclusive = bound, False


def events(
    conn: sqlite3.Connection,
    pid: int,
    *,
    start: float | None = None,
    end: float | None = None,
    sort: SortOrder = "desc",
    after: tuple[float, int] | None = None,
    limit: int = 10,
    names: frozenset[str] | None = None,
    excluded: frozenset[str] | None = None,
) -> list[EventRow]:
    with reading(conn) as marks:
        collection = _collection(conn, pid)
        if collection is None:
            return []
        column = events_column(collection)
        indexed = "ix.profile_events" if column == "profile_id" else "ix.account_events"
        where: list[str] = []
        filters: list[Any] = []
        # One JSON parameter per list, however long: a query's variables are capped.
        if names is not None:
            where.append("e.event IN (SELECT value FROM json_each(?))")
            filters.append(_json_list(stored_names(names)))
        if excluded is not None:
            where.append("(e.event IS NULL OR e.event NOT IN (SELECT value FROM json_each(?)))")
            filters.append(_json_list(stored_names(excluded)))
        if start is not None:
            where.append("k.timestamp >= ?")
            filters.append(start)
        if end is not None:
            where.append("k.timestamp < ?")
            filters.append(end)
        if after is not None:
            where.append("(k.timestamp, k.seq) " + ("<" if sort == "desc" else ">") + " (?, ?)")
            filters.extend(after)
        order = "DESC" if sort == "desc" else "ASC"
        by_name = names is not None or excluded is not None
        join = " JOIN events e ON e.seq = k.seq" if by_name else ""
        conditions = "".join(f" AND {w}" for w in where)
        # One index range per member profile, each cut at `limit`, then merged: a single
        # `IN (members)` query would sort every event of a merged profile for each page.
        one = (
            f"SELECT * FROM (SELECT k.seq, k.timestamp FROM {indexed} k{join} "
            f"WHERE k.{column} = ?{conditions} "
            f"ORDER BY k.timestamp {order}, k.seq {order} LIMIT ?)"
        )
        mine = members(conn, pid)
        # The tail: the members' events past the watermark, from the log itself.
        tail = (
            "SELECT * FROM (SELECT k.seq, k.timestamp FROM events k"
            + (" JOIN events e ON e.seq = k.seq" if by_name else "")
            + f" WHERE k.seq > ? AND k.{column} IN (SELECT value FROM json_each(?)){conditions} "
            f"ORDER BY k.timestamp {order}, k.seq {order} LIMIT ?)"
        )
        rows: list[Any] = []
        # SQLite caps a compound SELECT at 500 terms: a long merge history goes in parts.
        parts = [mine[at : at + MEMBERS_PER_QUERY] for at in range(0, len(mine), MEMBERS_PER_QUERY)]
        for n, part in enumerate(parts):
            terms = [one] * len(part)
            args: list[Any] = []
            for member in part:
                args.extend((member, *filters, limit))
            if n == 0:
                terms.append(tail)
                args.extend((marks.events, _json_list(mine), *filters, limit))
            args.append(limit)
            sql = (
                f"SELECT {EVENT_COLUMNS} "
                f"FROM ({' UNION ALL '.join(terms)}) k "
                "JOIN events e ON e.seq = k.seq "
                f"LEFT JOIN profiles q ON q.id = e.{column} "
                "LEFT JOIN profiles p ON p.id = q.canonical_id "
                f"ORDER BY k.timestamp {order}, k.seq {order} LIMIT ?"
            )
            rows.extend(conn.execute(sql, args))
        if len(parts) > 1:
            rows.sort(key=lambda r: (r[5], r[0]), reverse=sort == "desc")
            del rows[limit:]
        return [event_row(r) for r in rows]


def latest_arrival(conn: sqlite3.Connection, pid: int) -> EventRow | None:
    with reading(conn) as marks:
        collection = _collection(conn, pid)
        if collection is None:
            return None
        column = events_column(collection)
        indexed = "ix.profile_events" if column == "profile_id" else "ix.account_events"
        mine = members(conn, pid)
        # The tail first: any event there arrived after every indexed one.
        last = conn.execute(
            f"SELECT MAX(seq) FROM events WHERE seq > ? AND {column} IN "
            "(SELECT value FROM json_each(?))",
            (marks.events, _json_list(mine)),
        ).fetchone()[0]
        if last is None:
            # MAX per member, each from its own index range.
            seqs = [
                conn.execute(f"SELECT MAX(seq) FROM {indexed} WHERE {column} = ?", (m,)).fetchone()[
                    0
                ]
                for m in mine
            ]
            last = max((s for s in seqs if s is not None), default=None)
        if last is None:
            return None
        r = conn.execute(
            f"SELECT {EVENT_COLUMNS} FROM events e "
            f"LEFT JOIN profiles q ON q.id = e.{column} "
            "LEFT JOIN profiles p ON p.id = q.canonical_id WHERE e.seq = ?",
            (last,),
        ).fetchone()
    return event_row(r)


def links(
    conn: sqlite3.Connection, pid: int, *, after: int | None = None, limit: int | None = None
) -> list[LinkRow]:
    collection = _collection(conn, pid)
    if collection is None:
        return []
    mine, theirs = (
        ("account_id", "user_id") if collection == "accounts" else ("user_id", "account_id")
    )
    ids = members(conn, pid)
    marks = ",".join("?" * len(ids))
    args: list[Any] = [*ids, -1 if after is None else after]
    args.append(-1 if limit is None else limit)
    return [
        LinkRow(r[-1], ProfileRow(*r[:-1]))
        for r in conn.execute(
            f"SELECT {PROFILE_COLUMNS}, MAX(q.id) AS position FROM links l "
            f"JOIN profiles q ON q.id = l.{theirs} JOIN profiles p ON p.id = q.canonical_id "
            f"WHERE l.{mine} IN ({marks}) GROUP BY p.id HAVING position > ? "
            "ORDER BY position LIMIT ?",
            args,
        )
    ]


def merges(conn: sqlite3.Connection, pid: int) -> list[MergeRow]:
    ids = members(conn, pid)
    marks = ",".join("?" * len(ids))
    return [
        MergeRow(*r)
        for r in conn.execute(
            "SELECT f.segment_id, i.segment_id, m.message_id, m.source_id, m.timestamp, m.rule "
            "FROM merges m JOIN profiles f ON f.id = m.from_id "
            f"JOIN profiles i ON i.id = m.into_id WHERE m.into_id IN ({marks}) ORDER BY m.id",
            ids,
        )
    ]


def violations(
    conn: sqlite3.Connection, limit: int = 100, rules: Sequence[str] = ()
) -> list[ViolationRow]:
    where = f"WHERE rule IN ({', '.join('?' * len(rules))}) " if rules else ""
    return [
        ViolationRow(*r)
        for r in conn.execute(
            "SELECT source_id, message_id, collection, type, value, rule, detail, timestamp "
            f"FROM violations {where}ORDER BY id DESC LIMIT ?",
            (*rules, limit),
        )
    ]


def profile_violations(
    conn: sqlite3.Connection, pid: int, before: int | None, limit: int
) -> list[ProfileViolationRow]:
    ids = _json_list(members(conn, pid))
    return [
        profile_violation_row(r)
        for r in conn.execute(
            f"SELECT {PROFILE_VIOLATION_COLUMNS} FROM violations v {PROFILE_VIOLATION_JOINS} "
            "WHERE v.id IN (SELECT id FROM violations WHERE profile_id IN "
            "(SELECT value FROM json_each(?1)) UNION SELECT id FROM violations "
            "WHERE other_profile_id IN (SELECT value FROM json_each(?1))) AND v.id < ?2 "
            "ORDER BY v.id DESC LIMIT ?3",
            (ids, before if before is not None else 2**63 - 1, limit),
        )
    ]


def shared_values(conn: sqlite3.Connection, min_profiles: int, limit: int) -> list[SharedValueRow]:
    sql = shared_values_query("?").replace("{agg}", "group_concat(DISTINCT rule)")
    args = (*JOIN_REFUSALS, *JOIN_REFUSALS, min_profiles, limit)
    return [
        SharedValueRow(c, t, v, n, sorted(rules.split(",")))
        for c, t, v, n, rules in conn.execute(sql, args)
    ]


def stats(conn: sqlite3.Connection) -> Stats:
    def count(sql: str) -> int:
        return int(conn.execute(sql).fetchone()[0])

    return Stats(
        profiles=count("SELECT COUNT(*) FROM profiles WHERE id = canonical_id"),
        identifiers=count("SELECT COUNT(*) FROM identifiers WHERE profile_id > 0"),
        events=count("SELECT COUNT(*) FROM events"),
        merges=count("SELECT COUNT(*) FROM merges"),
        violations=count("SELECT COUNT(*) FROM violations"),
    )


# ---- what a repair reads (under the store's write lock, with nothing in flight) -----------


def member_rows(conn: sqlite3.Connection, pid: int) -> list[Member]:
    """The profile `pid` (canonical) and the profiles merged into it."""
    return [
        Member(*r)
        for r in conn.execute(
            "SELECT id, segment_id, created_at, first_message_id, first_source_id FROM profiles "
            "WHERE canonical_id = ? ORDER BY id",
            (pid,),
        )
    ]


def stored_messages(
    conn: sqlite3.Connection, members: list[int], collection: str, limit: int
) -> list[StoredMessage]:
    """The messages that resolved to `members` in `collection`, at most `limit`."""
    column = events_column(collection)
    other = "account_id" if column == "profile_id" else "profile_id"
    table = "account_events" if collection == "accounts" else "profile_events"
    wanted = _json_list(members)
    with reading(conn) as marks:
        rows = conn.execute(
            "SELECT seq, source_id, message_id, type, timestamp, received_at, body, "
            f"external_ids, {other} FROM events WHERE (seq IN (SELECT seq FROM ix.{table} "
            f"WHERE {column} IN (SELECT value FROM json_each(?1))) OR seq > ?2) AND "
            f"{column} IN (SELECT value FROM json_each(?1)) ORDER BY seq LIMIT ?3",
            (wanted, marks.events, limit),
        ).fetchall()
    return [
        StoredMessage(seq, source, mid, kind, ts, received, bytes(body), _ids.decode(ids), linked)
        for seq, source, mid, kind, ts, received, body, ids, linked in rows
    ]


def identifier_rows(
    conn: sqlite3.Connection, members: list[int]
) -> list[tuple[int, str, str, str, float]]:
    """(id, collection, type, value, created_at) of the identifiers `members` first held."""
    wanted = _json_list(members)
    with reading(conn) as marks:
        return conn.execute(
            "SELECT id, collection, type, value, created_at FROM identifiers WHERE (id IN "
            "(SELECT id FROM ix.identifier_profiles WHERE profile_id IN "
            "(SELECT value FROM json_each(?1))) OR id > ?2) AND profile_id IN "
            "(SELECT value FROM json_each(?1))",
            (wanted, marks.identifiers),
        ).fetchall()


def identifier_row(
    conn: sqlite3.Connection, collection: str, type_: str, value: str
) -> tuple[int, float] | None:
    """(id, created_at) of the identifier's row."""
    h = identifier_hash(collection, type_, value)
    with reading(conn) as marks:
        row = conn.execute(
            "SELECT id, created_at FROM identifiers WHERE id IN (SELECT id FROM "
            "ix.identifier_keys WHERE key_hash = ? UNION ALL SELECT id FROM identifiers "
            "WHERE id > ? AND key_hash = ?) AND collection = ? AND type = ? AND value = ? "
            "AND profile_id > 0",
            (h, marks.identifiers, h, collection, type_, value),
        ).fetchone()
    return (int(row[0]), float(row[1])) if row else None


def blocked_identifiers(conn: sqlite3.Connection) -> list[BlockedRow]:
    return [
        BlockedRow(*r)
        for r in conn.execute(
            "SELECT b.collection, b.type, b.value, o.segment_id, o.actor, b.created_at "
            "FROM blocked_identifiers b LEFT JOIN operations o ON o.id = b.operation_id "
            "ORDER BY b.created_at, b.type, b.value"
        )
    ]


ORIGINS = (
    "SELECT segment_id, collection, created_at, first_message_id, first_source_id "
    "FROM profiles ORDER BY id"
)


def profile_ids(conn: sqlite3.Connection, segment_id: str) -> tuple[int, int] | None:
    """The profile named `segment_id`: (id, canonical id)."""
    row = conn.execute(
        "SELECT id, canonical_id FROM profiles WHERE segment_id = ?", (segment_id,)
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else None


OPERATIONS = (
    "SELECT kind, segment_id, collection, type, value, actor, created_at, detail "
    "FROM operations ORDER BY id"
)


def operations(conn: sqlite3.Connection) -> list[Operation]:
    return [Operation(*r) for r in conn.execute(OPERATIONS)]


def history(conn: sqlite3.Connection, after: int, limit: int) -> list[StoredMessage]:
    rows = conn.execute(
        "SELECT seq, source_id, message_id, type, timestamp, received_at, body, external_ids "
        "FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
        (after, limit),
    ).fetchall()
    return [
        StoredMessage(seq, source, mid, kind, ts, received, bytes(body), _ids.decode(ids))
        for seq, source, mid, kind, ts, received, body, ids in rows
    ]


PARTITION = (
    "SELECT i.collection, i.type, i.value, c.segment_id FROM identifiers i "
    "JOIN profiles p ON p.id = i.profile_id JOIN profiles c ON c.id = p.canonical_id"
)


# The identifiers deleted from profiles, where in the history (`operations.detail`'s seq;
# a record without one counts as after everything).
DELETIONS = (
    "SELECT COALESCE(CAST(json_extract(detail, '$.seq') AS INTEGER), 9223372036854775807), "
    "collection, type, value FROM operations WHERE kind = 'delete_identifier' ORDER BY id"
)


def deletions(conn: sqlite3.Connection) -> list[tuple[int, str, str, str]]:
    return [(int(s), c, t, v) for s, c, t, v in conn.execute(DELETIONS)]


# ---- the export's reads (`idstitch export`): the whole graph, streamed ----------------------
# Each runs on a connection of its own (`SQLiteStore._whole`), in one read transaction that
# lasts while its rows stream; what it sets up lives in that connection's temp database.

# Rows of the log's tail turned into trait rows at a time.
TAIL_CHUNK = 1_000


def attach_index(conn: sqlite3.Connection, index: Path) -> None:
    """Attach the index database as `ix`, as `SQLiteStore._read` does: an empty one in
    memory when there is none yet (everything is then read from the log)."""
    if index.exists():
        conn.execute("ATTACH DATABASE ? AS ix", (str(index),))
    else:
        conn.execute("ATTACH DATABASE ':memory:' AS ix")
        conn.executescript(INDEX_SCHEMA.replace("IF NOT EXISTS ", "IF NOT EXISTS ix."))


def last_seq(conn: sqlite3.Connection) -> int:
    # One committer appends the log in seq order: what a read sees is a prefix of it.
    return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])


class Whole(NamedTuple):
    marks: Watermarks
    join: Join  # to the message a graph row names


@contextlib.contextmanager
def _whole(conn: sqlite3.Connection, *, traits: bool = False) -> Iterator[Whole]:
    """A read of the whole graph: `message_hash()` as a SQL function, and in the temp
    database the (hash, seq) of the messages past the index's watermark (`export_tail`,
    beside `ix.message_index`, which holds those before it) and, with `traits`, the trait
    rows of the identify and group messages there (`export_traits`). Reads only after."""
    with reading(conn) as marks:
        conn.create_function("message_hash", 2, sqlite_message_hash, deterministic=True)
        conn.execute(
            "CREATE TEMP TABLE export_tail AS SELECT msg_hash, seq FROM events WHERE seq > ?",
            (marks.events,),
        )
        conn.execute("CREATE INDEX temp.export_tail_hash ON export_tail (msg_hash)")
        tail = conn.execute("SELECT EXISTS (SELECT 1 FROM export_tail)").fetchone()[0]
        if traits:
            conn.execute(
                "CREATE TEMP TABLE export_traits (profile_id INTEGER, key TEXT, value TEXT, "
                "timestamp REAL, seq INTEGER, source_id TEXT)"
            )
            found = conn.execute(
                "SELECT seq, type, profile_id, account_id, timestamp, source_id, body "
                "FROM events WHERE seq > ? AND type IN ('identify', 'group')",
                (marks.events,),
            )
            while chunk := found.fetchmany(TAIL_CHUNK):
                conn.executemany(
                    "INSERT INTO export_traits VALUES (?, ?, ?, ?, ?, ?)", trait_rows(chunk)
                )
        conn.execute("PRAGMA query_only=1")
        yield Whole(marks, functools.partial(_join, tail=bool(tail)))


def _join(source: str, message: str, left: bool, *, tail: bool) -> str:
    """The stored message `source`/`message` name, as `e`: its seq through the message
    hash (the index's dedupe table, and the tail's when it holds any), each hit checked on
    the full key. The check's `+` keeps SQLite from indexing the whole log on the key."""
    h = f"message_hash({source}, {message})"
    past = f" UNION ALL SELECT seq FROM temp.export_tail WHERE msg_hash = {h}" if tail else ""
    return (
        f"{'LEFT ' if left else ''}JOIN events e ON e.seq IN ("
        f"SELECT seq FROM ix.message_index WHERE msg_hash = {h}{past}) "
        f"AND +e.source_id = {source} AND +e.message_id = {message}"
    )


def graph_updates(conn: sqlite3.Connection, after: int, upto: int) -> Iterator[GraphUpdate]:
    with _whole(conn) as whole:
        for r in conn.execute(graph_updates_sql(whole.join, "?"), (after, upto, after, upto)):
            yield graph_update(r[1:])


def identifier_updates(conn: sqlite3.Connection, after: int, upto: int) -> Iterator[HeldIdentifier]:
    with _whole(conn) as whole:
        for r in conn.execute(identifiers_sql(whole.join, "?", now=False), (after, upto)):
            yield held_identifier(r)


def trait_changes(conn: sqlite3.Connection, after: int, upto: int) -> Iterator[TraitUpdate]:
    with reading(conn):
        yield from trait_updates(conn.execute(trait_messages_sql("?"), (after, upto)))


def profile_members(conn: sqlite3.Connection) -> Iterator[GraphUpdate]:
    with _whole(conn) as whole:
        for r in conn.execute(members_sql(whole.join)):
            yield graph_update(r)


def held_identifiers(conn: sqlite3.Connection) -> Iterator[HeldIdentifier]:
    with _whole(conn) as whole:
        for r in conn.execute(identifiers_sql(whole.join, "?", now=True)):
            yield held_identifier(r)


def current_traits(conn: sqlite3.Connection) -> Iterator[TraitValue]:
    # The index's traits up to its watermark (none while it rebuilds after a rewrite), the
    # tail's past it.
    with _whole(conn, traits=True) as whole:
        rows = conn.execute(
            current_traits_sql(
                "(SELECT profile_id, key, value, timestamp, seq FROM ix.traits WHERE seq <= ? "
                "UNION ALL SELECT profile_id, key, value, timestamp, seq FROM export_traits)"
            ),
            (whole.marks.events,),
        )
        yield from newest_traits(rows)
