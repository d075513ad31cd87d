"""The embedded store: SQLite in WAL mode, one writer, group commit, durable on commit.

The graph lives in memory (rebuilt from the tables at startup), so resolving a message costs
no SQL round trip; each micro-batch is written in one `BEGIN IMMEDIATE` transaction and
committed with `synchronous=FULL`, which fsyncs the WAL before the commit returns. WAL
checkpoints run on a background thread so they never sit on the commit path. Reads use
their own connections (one per thread).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from idstitch.core.graph import Graph
from idstitch.core.identifiers import key_of
from idstitch.core.plan import Plan
from idstitch.errors import StorageError
from idstitch.storage.base import (
    EventRow,
    ExternalIdRow,
    MergeRow,
    ProfileRow,
    SortOrder,
    Stats,
    Store,
    TraitRow,
    Transaction,
    ViolationRow,
)
from idstitch.storage.migrations import SQLITE as MIGRATIONS

_json = msgspec.json.Encoder()
_ext_decoder = msgspec.json.Decoder(list[tuple[str, str, str]])
_PROFILE_COLUMNS = (
    "p.id, p.segment_id, p.collection, p.created_at, p.merges, "
    "p.first_message_id, p.first_source_id"
)


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout=30000")
    if readonly:
        conn.execute("PRAGMA query_only=1")
    return conn


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply the named migrations not yet recorded; returns the names applied."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at REAL)"
    )
    done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
    applied = []
    for name, sql in MIGRATIONS:
        if name in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in sql.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)",
                (name, time.time()),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied


class SQLiteTransaction(Transaction):
    def __init__(self, store: SQLiteStore, conn: sqlite3.Connection):
        self.store = store
        self.conn = conn
        self.graph = store.graph

    def seen(self, source_id: str, message_ids: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(message_ids), 500):
            chunk = message_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(
                row[0]
                for row in self.conn.execute(
                    "SELECT message_id FROM events "
                    f"WHERE source_id = ? AND message_id IN ({marks})",
                    (source_id, *chunk),
                )
            )
        return found

    def apply(self, plans: list[Plan]) -> None:
        seq = self.store.next_seq
        events: list[tuple[Any, ...]] = []
        profiles: list[tuple[Any, ...]] = []
        repoint: list[tuple[int, int]] = []
        merges: list[tuple[Any, ...]] = []
        identifiers: list[tuple[Any, ...]] = []
        traits: list[tuple[Any, ...]] = []
        links: list[tuple[Any, ...]] = []
        violations: list[tuple[Any, ...]] = []
        targets: set[int] = set()
        for plan in plans:
            if plan.duplicate:
                continue
            source, mid, ts = plan.source_id, plan.message_id, plan.timestamp
            users, accounts = plan.users, plan.accounts
            user_pid = users.pid if users is not None and users.outcome != "unresolved" else None
            account_pid = (
                accounts.pid if accounts is not None and accounts.outcome != "unresolved" else None
            )
            promoted: list[tuple[str, str, str]] = []
            for side in (users, accounts):
                if side is None or side.pid is None or side.outcome == "unresolved":
                    continue
                pid, coll = side.pid, side.collection
                promoted.extend((coll, t, v) for t, v in side.identifiers)
                if side.created:
                    profiles.append(
                        (pid, side.segment_id, coll, pid, plan.received_at, mid, source)
                    )
                for other, _ in side.merged:
                    repoint.append((pid, other))
                    merges.append((other, pid, mid, source, ts))
                    targets.add(pid)
                identifiers.extend((coll, t, v, pid, source, mid, ts) for t, v in side.added)
            reason = None
            if user_pid is None and account_pid is None:
                reason = (users.reason if users is not None else None) or "no usable identifiers"
            events.append(
                (
                    seq,
                    source,
                    mid,
                    plan.type,
                    plan.event,
                    ts,
                    plan.received_at,
                    user_pid,
                    account_pid,
                    reason,
                    _json.encode(promoted),
                    plan.raw,
                )
            )
            owner = user_pid if plan.type == "identify" else account_pid
            if plan.traits and owner is not None:
                for key, value in plan.traits.items():
                    encoded = None if value is None else _json.encode(value).decode()
                    traits.append((owner, key, encoded, ts, seq, source))
            if user_pid is not None and account_pid is not None:
                links.append((user_pid, account_pid, source, plan.received_at))
            for v in plan.all_violations():
                violations.append(
                    (source, mid, v.collection, v.type, v.value, v.rule, v.detail, ts)
                )
            seq += 1
        c = self.conn
        if profiles:
            c.executemany(
                "INSERT INTO profiles (id, segment_id, collection, canonical_id, created_at, "
                "first_message_id, first_source_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                profiles,
            )
        for into, other in repoint:
            c.execute("UPDATE profiles SET canonical_id = ? WHERE canonical_id = ?", (into, other))
        if merges:
            c.executemany(
                "INSERT INTO merges (from_id, into_id, message_id, source_id, timestamp) "
                "VALUES (?, ?, ?, ?, ?)",
                merges,
            )
            for pid in targets:
                state = self.graph.profiles.get(pid)
                if state is not None:
                    c.execute("UPDATE profiles SET merges = ? WHERE id = ?", (state.merges, pid))
        if identifiers:
            c.executemany(
                "INSERT INTO identifiers (collection, type, value, profile_id, source_id, "
                "first_message_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                identifiers,
            )
        if events:
            c.executemany(
                "INSERT INTO events (seq, source_id, message_id, type, event, timestamp, "
                "received_at, profile_id, account_id, reason, external_ids, body) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                events,
            )
        if traits:
            c.executemany(
                "INSERT INTO traits (profile_id, key, value, timestamp, seq, source_id) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (profile_id, key) DO UPDATE SET "
                "value = excluded.value, timestamp = excluded.timestamp, seq = excluded.seq, "
                "source_id = excluded.source_id "
                "WHERE (excluded.timestamp, excluded.seq) >= (traits.timestamp, traits.seq)",
                traits,
            )
        if links:
            c.executemany(
                "INSERT OR IGNORE INTO links (user_id, account_id, source_id, created_at) "
                "VALUES (?, ?, ?, ?)",
                links,
            )
        if violations:
            c.executemany(
                "INSERT INTO violations (source_id, message_id, collection, type, value, rule, "
                "detail, timestamp) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                violations,
            )
        self.store.next_seq = seq


class SQLiteStore(Store):
    def __init__(self, path: Path | str, *, checkpoint_interval: float = 0.5):
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = _connect(self.path)
            mode = self._writer.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except (OSError, sqlite3.Error) as err:
            raise StorageError(
                f"cannot open the SQLite store at {self.path}: {err}; check the path and "
                "its permissions."
            ) from None
        if mode != "wal":
            raise StorageError(f"SQLite at {self.path} refused WAL mode (got {mode!r}).")
        self._writer.execute("PRAGMA synchronous=FULL")
        self._writer.execute("PRAGMA wal_autocheckpoint=0")
        self._writer.execute("PRAGMA cache_size=-262144")
        self.migrations_applied = migrate(self._writer)
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self.graph = Graph()
        self.next_seq = 1
        self._load()
        self._closing = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop,
            args=(checkpoint_interval,),
            daemon=True,
            name="idstitch-checkpoint",
        )
        self._checkpointer.start()

    # ---- startup -------------------------------------------------------------------------
    def _load(self) -> None:
        """Rebuild the in-memory graph from the tables."""
        graph = Graph()
        c = self._writer
        max_id = 0
        for pid, segment_id, canonical, created_at, merges in c.execute(
            "SELECT id, segment_id, canonical_id, created_at, merges FROM profiles"
        ):
            max_id = max(max_id, pid)
            if canonical == pid:
                graph.create(segment_id, created_at, pid).merges = merges
            else:
                graph.parent[pid] = canonical
        graph.next_pid = max_id + 1
        owners = graph.owners
        profiles = graph.profiles
        parent = graph.parent
        for coll, type_, value, pid, created_at in c.execute(
            "SELECT collection, type, value, profile_id, created_at FROM identifiers"
        ):
            owners[key_of(coll, type_, value)] = pid
            profiles[parent.get(pid, pid)].add(type_, created_at)
        self.graph = graph
        row = c.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        self.next_seq = row[0] + 1

    def _checkpoint_loop(self, interval: float) -> None:
        conn = _connect(self.path)
        try:
            while not self._closing.wait(interval):
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

    # ---- writes --------------------------------------------------------------------------
    @contextlib.contextmanager
    def batch(self, keys: Iterable[str]) -> Iterator[Transaction]:
        with self._write_lock:
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as err:
                raise StorageError(f"cannot start a write transaction: {err}") from None
            try:
                yield SQLiteTransaction(self, conn)
                conn.execute("COMMIT")
            except BaseException as err:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._load()  # the in-memory graph may hold the rolled-back batch
                if isinstance(err, sqlite3.Error):
                    raise StorageError(f"the write transaction failed: {err}") from err
                raise

    def close(self) -> None:
        self._closing.set()
        self._checkpointer.join(timeout=5)
        with self._write_lock:
            with contextlib.suppress(sqlite3.Error):
                self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._writer.close()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    # ---- reads ---------------------------------------------------------------------------
    def _read(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, readonly=True)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def _members(self, conn: sqlite3.Connection, pid: int) -> list[int]:
        return [
            r[0] for r in conn.execute("SELECT id FROM profiles WHERE canonical_id = ?", (pid,))
        ]

    def find_by_identifier(self, collection: str, type_: str, value: str) -> ProfileRow | None:
        row = (
            self._read()
            .execute(
                f"SELECT {_PROFILE_COLUMNS} FROM identifiers i "
                "JOIN profiles q ON q.id = i.profile_id JOIN profiles p ON p.id = q.canonical_id "
                "WHERE i.collection = ? AND i.type = ? AND i.value = ?",
                (collection, type_, value),
            )
            .fetchone()
        )
        return ProfileRow(*row) if row else None

    def find_by_segment_id(self, segment_id: str) -> ProfileRow | None:
        row = (
            self._read()
            .execute(
                f"SELECT {_PROFILE_COLUMNS} FROM profiles q "
                "JOIN profiles p ON p.id = q.canonical_id WHERE q.segment_id = ?",
                (segment_id,),
            )
            .fetchone()
        )
        return ProfileRow(*row) if row else None

    def traits(self, pid: int) -> list[TraitRow]:
        conn = self._read()
        best: dict[str, tuple[float, int, str | None, str]] = {}
        for member in self._members(conn, pid):
            for key, value, ts, seq, source in conn.execute(
                "SELECT key, value, timestamp, seq, source_id FROM traits WHERE profile_id = ?",
                (member,),
            ):
                held = best.get(key)
                if held is None or (ts, seq) >= held[:2]:
                    best[key] = (ts, seq, value, source)
        return [
            TraitRow(key, msgspec.json.decode(v[2]), v[0], v[3])
            for key, v in sorted(best.items())
            if v[2] is not None
        ]

    def external_ids(self, pid: int) -> list[ExternalIdRow]:
        conn = self._read()
        rows: list[ExternalIdRow] = []
        for member in self._members(conn, pid):
            rows.extend(
                ExternalIdRow(*r)
                for r in conn.execute(
                    "SELECT collection, type, value, source_id, first_message_id, created_at "
                    "FROM identifiers WHERE profile_id = ?",
                    (member,),
                )
            )
        rows.sort(key=lambda r: (r.created_at, r.type, r.id))
        return rows

    def events(
        self,
        pid: int,
        *,
        start: float | None = None,
        end: float | None = None,
        sort: SortOrder = "desc",
        after: tuple[float, int] | None = None,
        limit: int = 10,
    ) -> list[EventRow]:
        conn = self._read()
        row = conn.execute("SELECT collection FROM profiles WHERE id = ?", (pid,)).fetchone()
        if row is None:
            return []
        column = "account_id" if row[0] == "accounts" else "profile_id"
        members = self._members(conn, pid)
        marks = ",".join("?" * len(members))
        where = [f"e.{column} IN ({marks})"]
        args: list[Any] = list(members)
        if start is not None:
            where.append("e.timestamp >= ?")
            args.append(start)
        if end is not None:
            where.append("e.timestamp < ?")
            args.append(end)
        if after is not None:
            where.append("(e.timestamp, e.seq) " + ("<" if sort == "desc" else ">") + " (?, ?)")
            args.extend(after)
        order = "DESC" if sort == "desc" else "ASC"
        args.append(limit)
        sql = (
            "SELECT e.seq, e.source_id, e.message_id, e.type, e.event, e.timestamp, "
            f"e.received_at, p.segment_id, e.external_ids, e.body FROM events e "
            f"LEFT JOIN profiles p ON p.id = e.{column} WHERE {' AND '.join(where)} "
            f"ORDER BY e.timestamp {order}, e.seq {order} LIMIT ?"
        )
        return [
            EventRow(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                r[6],
                r[7],
                _ext_decoder.decode(r[8]),
                bytes(r[9]),
            )
            for r in conn.execute(sql, args)
        ]

    def links(self, pid: int) -> list[ProfileRow]:
        conn = self._read()
        row = conn.execute("SELECT collection FROM profiles WHERE id = ?", (pid,)).fetchone()
        if row is None:
            return []
        mine, theirs = (
            ("account_id", "user_id") if row[0] == "accounts" else ("user_id", "account_id")
        )
        members = self._members(conn, pid)
        marks = ",".join("?" * len(members))
        return [
            ProfileRow(*r)
            for r in conn.execute(
                f"SELECT DISTINCT {_PROFILE_COLUMNS} FROM links l "
                f"JOIN profiles q ON q.id = l.{theirs} JOIN profiles p ON p.id = q.canonical_id "
                f"WHERE l.{mine} IN ({marks}) ORDER BY p.created_at, p.id",
                members,
            )
        ]

    def merges(self, pid: int) -> list[MergeRow]:
        conn = self._read()
        members = self._members(conn, pid)
        marks = ",".join("?" * len(members))
        return [
            MergeRow(*r)
            for r in conn.execute(
                "SELECT f.segment_id, i.segment_id, m.message_id, m.source_id, m.timestamp "
                "FROM merges m JOIN profiles f ON f.id = m.from_id "
                f"JOIN profiles i ON i.id = m.into_id WHERE m.into_id IN ({marks}) ORDER BY m.id",
                members,
            )
        ]

    def violations(self, limit: int = 100) -> list[ViolationRow]:
        return [
            ViolationRow(*r)
            for r in self._read().execute(
                "SELECT source_id, message_id, collection, type, value, rule, detail, timestamp "
                "FROM violations ORDER BY id DESC LIMIT ?",
                (limit,),
            )
        ]

    def stats(self) -> Stats:
        conn = self._read()

        def count(sql: str) -> int:
            return int(conn.execute(sql).fetchone()[0])

        return Stats(
            profiles=count("SELECT COUNT(*) FROM profiles WHERE id = canonical_id"),
            identifiers=count("SELECT COUNT(*) FROM identifiers"),
            events=count("SELECT COUNT(*) FROM events"),
            merges=count("SELECT COUNT(*) FROM merges"),
            violations=count("SELECT COUNT(*) FROM violations"),
        )

    def healthy(self) -> bool:
        try:
            self._read().execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

    def import_offset(self, name: str) -> int:
        row = (
            self._read()
            .execute("SELECT byte_offset FROM import_progress WHERE name = ?", (name,))
            .fetchone()
        )
        return int(row[0]) if row else 0

    def set_import_offset(self, name: str, offset: int) -> None:
        with self._write_lock:
            self._writer.execute(
                "INSERT INTO import_progress (name, byte_offset, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET byte_offset = excluded.byte_offset, "
                "updated_at = excluded.updated_at",
                (name, offset, time.time()),
            )
