"""The embedded store: SQLite in WAL mode, one writer, group commit, durable on commit.

The graph lives in memory (rebuilt from the tables at startup), so resolving a message costs
no SQL round trip; each micro-batch is written in one `BEGIN IMMEDIATE` transaction and
committed with `synchronous=FULL`, which fsyncs the WAL before the commit returns. WAL
checkpoints run on a background thread so they never sit on the commit path. Reads use
their own connections (one per thread).
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
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
from idstitch.storage.rows import BatchRows, identifier_hash, message_hash, rows_from_plans

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
    def __init__(self, store: SQLiteStore):
        self.store = store
        self.graph = store.graph
        self.rows: BatchRows | None = None
        self.done: Future[None] | None = None

    def seen(self, source_id: str, message_ids: list[str]) -> set[str]:
        # Batches still on their way to disk first, then the table: a batch leaves the
        # in-flight set only after its commit, so nothing falls between the two checks.
        found = {m for m in message_ids if (source_id, m) in self.store.inflight}
        by_hash = {message_hash(source_id, m): m for m in message_ids}
        hashes = list(by_hash)
        conn = self.store._read()
        for start in range(0, len(hashes), 500):
            chunk = hashes[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for h, source, mid in conn.execute(
                f"SELECT msg_hash, source_id, message_id FROM events WHERE msg_hash IN ({marks})",
                chunk,
            ):
                if source == source_id and by_hash.get(h) == mid:
                    found.add(mid)
        return found

    def apply(self, plans: list[Plan]) -> None:
        self.rows, self.store.next_seq = rows_from_plans(plans, self.graph, self.store.next_seq)


def _write_rows(c: sqlite3.Connection, rows: BatchRows) -> None:
    if rows.profiles:
        c.executemany(
            "INSERT INTO profiles (id, segment_id, collection, canonical_id, created_at, "
            "first_message_id, first_source_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows.profiles,
        )
    for into, other in rows.repoint:
        c.execute("UPDATE profiles SET canonical_id = ? WHERE canonical_id = ?", (into, other))
    if rows.merge_counts:
        c.executemany("UPDATE profiles SET merges = ? WHERE id = ?", rows.merge_counts)
    if rows.merges:
        c.executemany(
            "INSERT INTO merges (from_id, into_id, message_id, source_id, timestamp) "
            "VALUES (?, ?, ?, ?, ?)",
            rows.merges,
        )
    if rows.identifiers:
        c.executemany(
            "INSERT INTO identifiers (key_hash, collection, type, value, profile_id, source_id, "
            "first_message_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows.identifiers,
        )
    if rows.events:
        c.executemany(
            "INSERT INTO events (seq, msg_hash, source_id, message_id, type, event, timestamp, "
            "received_at, profile_id, account_id, reason, external_ids, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows.events,
        )
    if rows.traits:
        c.executemany(
            "INSERT INTO traits (profile_id, key, value, timestamp, seq, source_id) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (profile_id, key) DO UPDATE SET "
            "value = excluded.value, timestamp = excluded.timestamp, seq = excluded.seq, "
            "source_id = excluded.source_id "
            "WHERE (excluded.timestamp, excluded.seq) >= (traits.timestamp, traits.seq)",
            rows.traits,
        )
    if rows.links:
        c.executemany(
            "INSERT OR IGNORE INTO links (user_id, account_id, source_id, created_at) "
            "VALUES (?, ?, ?, ?)",
            rows.links,
        )
    if rows.violations:
        c.executemany(
            "INSERT INTO violations (source_id, message_id, collection, type, value, rule, "
            "detail, timestamp) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows.violations,
        )


class _Job:
    """One commit for the committer thread: rows to write, or a function to run."""

    __slots__ = ("done", "rows", "work")

    def __init__(
        self,
        rows: BatchRows | None = None,
        work: Callable[[sqlite3.Connection], None] | None = None,
    ):
        self.rows = rows
        self.work = work
        self.done: Future[None] = Future()


class SQLiteStore(Store):
    needs_keys = False  # the whole graph is in memory
    """Resolution happens in memory under `batch`; writing happens on a committer thread.

    The committer owns the write connection. While it writes and fsyncs one batch, the next
    batch is already being resolved (sqlite3 releases the GIL while SQLite works), which
    keeps both cores busy. A batch is acknowledged only when its own commit returned.
    If a commit fails, every batch queued behind it fails too, and the in-memory graph is
    rebuilt from disk before the next batch.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        checkpoint_interval: float = 0.5,
        pipeline_depth: int = 64,
        max_commit_events: int = 5000,
    ):
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
        self.inflight: set[tuple[str, str]] = set()
        self._broken: BaseException | None = None
        self.max_commit_events = max_commit_events
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=pipeline_depth)
        self._committer = threading.Thread(
            target=self._commit_loop, daemon=True, name="idstitch-committer"
        )
        self._committer.start()
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
    def _commit_loop(self) -> None:
        """Write queued jobs, coalescing whatever is waiting into one transaction: under load
        commits grow (fewer fsyncs, fewer page writes per event); when idle they stay small."""
        conn = self._writer
        while True:
            jobs = [self._jobs.get()]
            events = 0
            while jobs[-1] is not None and events < self.max_commit_events:
                job = jobs[-1]
                events += len(job.rows.events) if job.rows is not None else 0
                try:
                    jobs.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            stop = jobs[-1] is None
            batch = [job for job in jobs if job is not None]
            if batch:
                self._commit(conn, batch)
            if stop:
                return

    def _commit(self, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        try:
            if self._broken is not None:
                raise StorageError(
                    f"an earlier write failed ({self._broken}); this batch was not stored."
                )
            conn.execute("BEGIN IMMEDIATE")
            try:
                for job in jobs:
                    if job.rows is not None:
                        _write_rows(conn, job.rows)
                    if job.work is not None:
                        job.work(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except BaseException as err:
            if self._broken is None and any(job.rows is not None for job in jobs):
                self._broken = err
            failure = (
                err
                if isinstance(err, StorageError)
                else StorageError(f"the write transaction failed: {err}")
            )
            for job in jobs:
                job.done.set_exception(failure)
        else:
            for job in jobs:
                job.done.set_result(None)
        finally:
            for job in jobs:
                if job.rows is not None:
                    self.inflight.difference_update(job.rows.message_keys)

    def _submit(self, job: _Job) -> Future[None]:
        if self._closing.is_set():
            raise StorageError("the store is closed; open it again.")
        self._jobs.put(job)
        return job.done

    def _recover(self) -> None:
        """After a failed write: wait for queued commits, then rebuild the graph from disk."""
        barrier = _Job()  # jobs run in order: when this one is done, all earlier ones are
        self._jobs.put(barrier)
        with contextlib.suppress(StorageError):
            barrier.done.result()
        self._broken = None
        self.inflight.clear()
        self._load()

    @contextlib.contextmanager
    def batch(self, keys: Iterable[str]) -> Iterator[Transaction]:
        with self._write_lock:
            if self._broken is not None:
                self._recover()
            tx = SQLiteTransaction(self)
            seq = self.next_seq
            try:
                yield tx
            except BaseException:
                self.next_seq = seq
                self._recover()  # the in-memory graph may hold this batch's changes
                raise
            # Always queue a job, even an empty one: a batch of duplicates must not be
            # acknowledged before the batch holding the originals is on disk.
            rows = tx.rows if tx.rows is not None else BatchRows()
            self.inflight.update(rows.message_keys)
            tx.done = self._submit(_Job(rows=rows))

    def close(self) -> None:
        if self._closing.is_set():
            return
        with self._write_lock:
            self._jobs.put(None)
            self._committer.join()
            self._closing.set()
        self._checkpointer.join(timeout=5)
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
                "WHERE i.key_hash = ? AND i.collection = ? AND i.type = ? AND i.value = ?",
                (identifier_hash(collection, type_, value), collection, type_, value),
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
        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO import_progress (name, byte_offset, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET byte_offset = excluded.byte_offset, "
                "updated_at = excluded.updated_at",
                (name, offset, time.time()),
            )

        self._submit(_Job(work=work)).result()
