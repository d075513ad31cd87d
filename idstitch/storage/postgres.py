"""The PostgreSQL store: many workers, on one or more hosts, sharing one identity graph.

Nothing is kept in memory between batches: each micro-batch locks the identifiers and
profiles it touches, loads them, resolves and writes in one transaction (`pg_batch`), so
workers serialize per connected component and never per database. Commits wait for the WAL
flush (`synchronous_commit = on`), so an acknowledged message is on disk. Reads use a small
connection pool. Install with `pip install 'idstitch[postgres]'`.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import msgspec
import psycopg
from psycopg import errors
from psycopg_pool import ConnectionPool, PoolTimeout

from idstitch.checks import redact_url
from idstitch.core.changes import removal, unmerged
from idstitch.core.identifiers import Identifier, key_of, slot_of
from idstitch.core.split import StoredMessage
from idstitch.errors import InvalidArgument, StorageError
from idstitch.storage.base import (
    EVENT_COLUMNS,
    JOIN_REFUSALS,
    PROFILE_VIOLATION_COLUMNS,
    PROFILE_VIOLATION_JOINS,
    STALL_SECONDS,
    BlockedRow,
    ChangeRow,
    EventRow,
    ExternalIdRow,
    LinkRow,
    MergeRow,
    Origin,
    ProfileRow,
    ProfileViolationRow,
    SharedValueRow,
    SortOrder,
    SplitWith,
    Stats,
    Store,
    TraitRow,
    Transaction,
    ViolationRow,
    event_row,
    events_column,
    maybe_stored,
    profile_violation_row,
    shared_values_query,
    too_many_messages,
)
from idstitch.storage.export_reads import (
    GraphUpdate,
    HeldIdentifier,
    TraitUpdate,
    TraitValue,
    current_traits_sql,
    graph_update,
    graph_updates_sql,
    held_identifier,
    identifiers_sql,
    members_sql,
    newest_traits,
    trait_messages_sql,
    trait_updates,
)
from idstitch.storage.migrations import POSTGRES as MIGRATIONS
from idstitch.storage.pg_batch import OWNERS, Conflict, LockIds, PostgresTransaction, int32
from idstitch.storage.rewrite import (
    KEPT_BY_REBUILD,
    MAX_SPLIT_MESSAGES,
    Member,
    Operation,
    Rewrite,
    block_rows,
    marked,
    operation_rows,
    rewrite,
    split_detail,
    split_statements,
)
from idstitch.storage.rows import stable_hash, stored_names

log = logging.getLogger("idstitch.storage")

_PROFILE_COLUMNS = (
    "p.id, p.segment_id, p.collection, p.created_at, p.merges, "
    "p.first_message_id, p.first_source_id"
)
# The profile and those merged into it. Through the profile's canonical id: a merge committed
# by another worker between finding a profile and reading it must not empty the answer.
_CANONICAL = "(SELECT canonical_id FROM profiles WHERE id = %(pid)s)"


def _each_member(rows: str) -> str:
    """`FROM` the profile's members, each joined to `rows` (a query that names the member as
    `m.id`), one index range per member. `OFFSET 0` keeps the planner from flattening the
    join: on tables without statistics (autovacuum off, or a young table) it would hash the
    whole table for every read."""
    return (
        f"FROM profiles m CROSS JOIN LATERAL ({rows} OFFSET 0) AS x "
        f"WHERE m.canonical_id = {_CANONICAL}"
    )


# Errors after which the same batch may succeed on a fresh transaction: a deadlock, a
# serialization failure, a message stored meanwhile by another worker, a lock timeout, and a
# full lock table (the exclusive attempt needs one lock only).
RETRYABLE: tuple[type[Exception], ...] = (
    Conflict,
    errors.DeadlockDetected,
    errors.SerializationFailure,
    errors.UniqueViolation,
    errors.LockNotAvailable,
    errors.OutOfMemory,
    errors.QueryCanceled,  # a statement that outlasted twice the stall bound
)


def _configure(conn: psycopg.Connection[Any]) -> None:
    # Durable acknowledgements, whatever the server's default.
    conn.execute("SET synchronous_commit = on")
    # Every query here reads a few index ranges; a planner that misjudges a young table's
    # size would compile it to machine code first, which costs milliseconds.
    conn.execute("SET jit = off")


# A writer that stalls inside its transaction (a frozen process or VM, a long GC pause, a
# lost host) holds locks that other workers' batches wait for. PostgreSQL's own timeouts do
# not end every such stall: a session waiting for COPY data, or for the rest of a pipeline,
# is neither idle in transaction nor running a statement. So a batch waits for a lock at most
# `stall_seconds`; then it ends the transactions of this store's writers that have waited
# longer than that on their own client (`_FENCE`) and runs again. The stalled writer finds
# its connection gone and its batch not stored (its callers get 503 and resend).
# A failed write makes the store unhealthy this long, or until a write succeeds.
FAILED_SECONDS = 30.0

WRITE_CONNECTION_WAIT = 10.0  # seconds a batch waits for the writer's connection

# Sessions that hold this store's lock (every write transaction takes it first, shared or
# exclusive: the two-int advisory form, objsubid 2) and have waited on their client, reading
# or writing, for longer than the stall bound.
_FENCE = (
    "SELECT a.pid, pg_terminate_backend(a.pid) FROM pg_locks l "
    "JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND l.classid::bigint = %s AND l.objid::bigint = 0 AND a.pid <> pg_backend_pid() "
    "AND a.wait_event IN ('ClientRead', 'ClientWrite') "
    "AND a.state_change < now() - make_interval(secs => %s)"
)


def _writer_settings(stall: float) -> Callable[[psycopg.Connection[Any]], None]:
    def configure(conn: psycopg.Connection[Any]) -> None:
        _configure(conn)
        ms = max(1, round(stall * 1000))
        conn.execute(f"SET lock_timeout = {ms}")
        # The server's own bound where it has one; twice the lock wait, so that a batch
        # stuck behind a stalled writer is ended by its lock timeout first.
        conn.execute(f"SET idle_in_transaction_session_timeout = {ms}")
        conn.execute(f"SET statement_timeout = {2 * ms}")

    return configure


def _first_line(err: BaseException) -> str:
    """An error's first line: PostgreSQL's DETAIL lines can quote the values of a row, and
    the message goes back to the client."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


_ids = msgspec.json.Decoder(list[tuple[str, str, str]])

# A rebuild's kept segment_ids, in one statement: each (segment_id, collection, created_at,
# first message, first source, into) not yet a profile becomes one merged into the profile
# `into` resolves to, with the merge that points it there.
_KEEP_SEGMENT_IDS = (
    "WITH wanted AS (SELECT r->>0 AS segment_id, r->>1 AS collection, "
    "(r->>2)::float8 AS created_at, r->>3 AS message_id, r->>4 AS source_id, r->>5 AS into "
    "FROM json_array_elements(%s::json) AS r), "
    "added AS (INSERT INTO profiles (segment_id, collection, canonical_id, created_at, "
    "first_message_id, first_source_id) SELECT DISTINCT ON (w.segment_id) w.segment_id, "
    "w.collection, p.canonical_id, w.created_at, w.message_id, w.source_id FROM wanted w "
    "JOIN profiles p ON p.segment_id = w.into WHERE NOT EXISTS "
    "(SELECT 1 FROM profiles q WHERE q.segment_id = w.segment_id) "
    "RETURNING id, canonical_id, created_at, first_message_id, first_source_id), "
    "merged AS (INSERT INTO merges (from_id, into_id, message_id, source_id, timestamp, rule) "
    "SELECT id, canonical_id, COALESCE(first_message_id, ''), COALESCE(first_source_id, ''), "
    f"created_at, '{KEPT_BY_REBUILD}' FROM added RETURNING 1) "
    "SELECT count(*) FROM merged"
)


def _canonical_of(conn: psycopg.Connection[Any], pid: int) -> int:
    row = conn.execute("SELECT canonical_id FROM profiles WHERE id = %s", (pid,)).fetchone()
    assert row is not None
    return int(row[0])


def _discard(tx: PostgresTransaction) -> None:
    """Roll back, then close the connection so that the pool replaces it: after an error
    inside a pipeline, psycopg can believe statements prepared that the server never kept,
    and every later batch on that connection would fail."""
    tx.abort()
    with contextlib.suppress(Exception):
        tx.conn.close()


def migrate(conn: psycopg.Connection[Any]) -> list[str]:
    """Apply the named migrations not yet recorded; returns the names applied. Workers that
    start together wait for each other on an advisory lock."""
    applied = []
    with conn.transaction():
        schema = conn.execute("SELECT current_schema()").fetchone()
        if schema is None or schema[0] is None:
            path = conn.execute("SHOW search_path").fetchone()
            raise StorageError(
                f"PostgreSQL search_path {path[0] if path else ''!r} names no existing schema; "
                "create the schema first or fix `options=-csearch_path=...` in the URL."
            )
        conn.execute("SELECT pg_advisory_xact_lock(%s::int, 1)", (LockIds(schema[0]).store,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION)"
        )
        done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            conn.execute(sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (name, applied_at) VALUES (%s, %s)",
                (name, time.time()),
            )
            applied.append(name)
    return applied


class PostgresStore(Store):
    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 4,
        max_attempts: int = 6,
        connect_timeout: float = 10.0,
        stall_seconds: float = STALL_SECONDS,
    ):
        self.url = redact_url(url)
        self._url = url
        self.max_attempts = max_attempts
        self.stall_seconds = stall_seconds
        self.fenced = 0  # stalled writers' sessions this store ended
        self._writing_since: float | None = None  # monotonic start of the batch in progress
        self._failed_at: float | None = None  # the last failed batch, until one succeeds
        self.conflicts = 0  # batches restarted after a conflict with another writer
        self.exclusive_runs = 0  # batches that ended up running alone
        try:
            conn = psycopg.connect(
                url, autocommit=True, connect_timeout=max(1, round(connect_timeout))
            )
        except psycopg.Error as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise StorageError(
                f"cannot connect to PostgreSQL at {self.url} ({reason}); check that the server "
                "is running and that the URL names the right host, port, user and database."
            ) from None
        with conn:
            try:
                self.migrations_applied = migrate(conn)
                row = conn.execute("SELECT current_schema()").fetchone()
            except psycopg.Error as err:
                raise StorageError(
                    f"cannot prepare the schema at {self.url}: {err}; check that the user may "
                    "create tables there."
                ) from None
        self.schema: str = row[0] if row else "public"
        self._locks = LockIds(self.schema)
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            open=False,
            kwargs={"autocommit": True},
            configure=_configure,
            # A connection the server dropped (a restart, pg_terminate_backend) is replaced
            # when it is taken, not discovered by the request that uses it (one round trip).
            check=ConnectionPool.check_connection,
            name="idstitch",
        )
        # The writer has a connection of its own: reads never make a write wait for one.
        self._writer: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            min_size=1,
            max_size=1,
            open=False,
            kwargs={"autocommit": True},
            configure=_writer_settings(stall_seconds),
            check=ConnectionPool.check_connection,
            # While the server is down a batch fails after this wait, not the pool's 30 s
            # default, so the batches queued behind it are answered sooner.
            timeout=WRITE_CONNECTION_WAIT,
            name="idstitch-writer",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
            self._writer.open(wait=True, timeout=connect_timeout)
        except PoolTimeout:
            self._writer.close()
            self._pool.close()
            raise StorageError(
                f"cannot open a connection pool to PostgreSQL at {self.url}; check the server."
            ) from None

    # ---- writes ----------------------------------------------------------------------------
    def run_batch(self, keys: Iterable[str], work: Callable[[Transaction], None]) -> Transaction:
        """Run `work` in one locked transaction and commit it. After a conflict with another
        writer the whole batch runs again on a fresh transaction (with a short random pause);
        after `max_attempts` it runs once more alone, under the store's exclusive lock, which
        no race can defeat. If even that fails, nothing was stored and StorageError says so."""
        distinct = list(dict.fromkeys(keys))
        self._writing_since = time.monotonic()
        try:
            tx = self._run_batch(distinct, work)
        except BaseException:
            self._failed_at = time.monotonic()
            raise
        finally:
            self._writing_since = None
        self._failed_at = None
        return tx

    def write(self, keys: Iterable[str], work: Callable[[Transaction], None]) -> Future[None]:
        """`run_batch`: the commit is durable when it returns, so the future is complete."""
        self.run_batch(keys, work)
        done: Future[None] = Future()
        done.set_result(None)
        return done

    def _run_batch(self, distinct: list[str], work: Callable[[Transaction], None]) -> Transaction:
        attempt = 0
        while True:
            attempt += 1
            exclusive = attempt > self.max_attempts
            try:
                with self._writer.connection() as conn:
                    tx = PostgresTransaction(conn, self._locks, distinct, exclusive)
                    tx.changes = self.feed_changes
                    try:
                        tx.open()
                        work(tx)
                        tx.commit()
                    except BaseException:
                        _discard(tx)
                        raise
                return tx
            except RETRYABLE as err:
                self.conflicts += 1
                if exclusive:
                    raise StorageError(
                        f"a batch of {len(distinct)} identifiers could not be stored after "
                        f"{attempt} attempts, the last one alone ({_first_line(err)}); nothing "
                        "of it was stored. Send it again; if this persists, look for a session "
                        "holding locks in the database."
                    ) from err
                if isinstance(err, errors.OutOfMemory):
                    attempt = self.max_attempts  # the lock table is full: run alone next
                if isinstance(err, errors.LockNotAvailable | errors.QueryCanceled):
                    self._fence()
                time.sleep(random.uniform(0, 0.002 * attempt))
            except psycopg.Error as err:
                # It can fail in the COMMIT itself, after the server kept the batch.
                raise StorageError(
                    maybe_stored(f"the PostgreSQL write at {self.url} failed: {_first_line(err)}")
                ) from err
            finally:
                if exclusive:
                    self.exclusive_runs += 1

    def _fence(self) -> None:
        """End the write transactions of this store stalled on their own client for longer
        than the stall bound (see `_FENCE`); logged, since a writer stopped responding."""
        try:
            ended = self._all(_FENCE, (self._locks.store & 0xFFFFFFFF, self.stall_seconds))
        except StorageError as err:
            log.warning("could not end a stalled writer", extra={"fields": {"reason": str(err)}})
            return
        pids = [pid for pid, done in ended if done]
        if pids:
            self.fenced += len(pids)
            log.warning(
                "ended the transaction of a stalled writer",
                extra={"fields": {"pids": pids, "stall_seconds": self.stall_seconds}},
            )

    @contextlib.contextmanager
    def batch(self, keys: Iterable[str]) -> Iterator[Transaction]:
        """One attempt, without retries; `run_batch` is the form that survives conflicts."""
        try:
            with self._writer.connection() as conn:
                tx = PostgresTransaction(conn, self._locks, list(dict.fromkeys(keys)), False)
                tx.changes = self.feed_changes
                try:
                    tx.open()
                    yield tx
                    tx.commit()
                except BaseException:
                    _discard(tx)
                    raise
        except psycopg.Error as err:
            raise StorageError(
                f"the PostgreSQL write at {self.url} failed: {_first_line(err)}"
            ) from err

    # ---- repairs -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _alone(self) -> Iterator[psycopg.Connection[Any]]:
        """A transaction under the store's exclusive lock: no batch of any worker runs beside
        it. Commits when the block ends; rolls back on an error."""
        try:
            with self._writer.connection() as conn:
                conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
                try:
                    conn.execute("SELECT pg_advisory_xact_lock(%s::int, 0)", (self._locks.store,))
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(Exception):
                        conn.execute("ROLLBACK")
                    raise
        except psycopg.Error as err:
            raise StorageError(
                f"the PostgreSQL repair at {self.url} failed: {_first_line(err)}; nothing of "
                "it was stored"
            ) from err

    @staticmethod
    def _run(conn: psycopg.Connection[Any], steps: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        with conn.cursor() as cur:
            for sql, rows in marked(steps, "%s"):
                cur.executemany(sql, rows)

    def remove_identifier(
        self, pid: int, collection: str, type_: str, value: str, operation: Operation
    ) -> bool:
        if "\x00" in value:
            return False
        with self._alone() as conn:
            gone = conn.execute(
                "DELETE FROM identifiers WHERE collection = %s AND type = %s "
                "AND identifier_digest(value) = identifier_digest(%s) AND value = %s "
                "AND profile_id IN (SELECT id FROM profiles WHERE canonical_id = "
                "(SELECT canonical_id FROM profiles WHERE id = %s)) RETURNING 1",
                (collection, type_, value, value, pid),
            ).fetchall()
            if gone:
                # Where in the history it happened, so that a replay deletes it there again.
                row = conn.execute("SELECT COALESCE(max(seq), 0) FROM events").fetchone()
                at = msgspec.json.encode({"seq": row[0] if row else 0}).decode()
                self._run(conn, operation_rows(msgspec.structs.replace(operation, detail=at)))
                if self.feed_changes:
                    now = operation.created_at
                    row = conn.execute(
                        "SELECT c.segment_id FROM profiles p JOIN profiles c "
                        "ON c.id = p.canonical_id WHERE p.id = %s",
                        (pid,),
                    ).fetchone()
                    sid = str(row[0]) if row else ""
                    conn.execute(
                        "INSERT INTO outbox (segment_id, changes, created_at) VALUES (%s, %s, %s)",
                        (sid, removal(collection, sid, type_, value, now).decode(), now),
                    )
        return bool(gone)

    def split_profile(
        self, pid: int, blocked: Identifier, split_with: SplitWith, operation: Operation
    ) -> Rewrite:
        collection = blocked.collection
        column = events_column(collection)
        other = "account_id" if column == "profile_id" else "profile_id"
        with self._alone() as conn:
            members = [
                Member(*r)
                for r in conn.execute(
                    "SELECT id, segment_id, created_at, first_message_id, first_source_id "
                    "FROM profiles WHERE canonical_id = (SELECT canonical_id FROM profiles "
                    "WHERE id = %s) ORDER BY id",
                    (pid,),
                )
            ]
            ids = [m.pid for m in members]
            top = next(m for m in members if m.pid == _canonical_of(conn, pid))
            messages = [
                StoredMessage(
                    seq, source, mid, kind, ts, received, bytes(body), _ids.decode(found), linked
                )
                for seq, source, mid, kind, ts, received, body, found, linked in conn.execute(
                    "SELECT seq, source_id, message_id, type, timestamp, received_at, body, "
                    f"external_ids, {other} FROM events WHERE {column} = ANY(%s) "
                    "ORDER BY seq LIMIT %s",
                    (ids, MAX_SPLIT_MESSAGES + 1),
                )
            ]
            if len(messages) > MAX_SPLIT_MESSAGES:
                raise InvalidArgument(too_many_messages(top.segment_id))

            def foreign(carried: list[Identifier]) -> set[int]:
                keys = [i.key for i in carried]
                owned = conn.execute(OWNERS, (msgspec.json.encode(keys).decode(),)).fetchall()
                return {slot_of(keys[n - 1]) for n, _, canonical in owned if canonical != top.pid}

            blocked_slots = {
                slot_of(key_of(*r))
                for r in conn.execute("SELECT collection, type, value FROM blocked_identifiers")
            }
            deleted = [
                (int(r[0]), r[1], r[2], r[3])
                for r in conn.execute(
                    "SELECT COALESCE((detail::json->>'seq')::bigint, 9223372036854775807), "
                    "collection, type, value FROM operations "
                    "WHERE kind = 'delete_identifier' ORDER BY id"
                )
            ]
            done = split_with(messages, foreign, blocked_slots, deleted)

            def new_pid() -> int:
                row = conn.execute("SELECT nextval('profile_id_seq')").fetchone()
                assert row is not None
                return int(row[0])

            rw = rewrite(done, collection, top, members, new_pid)
            last = conn.execute("SELECT COALESCE(max(seq), 0) FROM events").fetchone()
            op = msgspec.structs.replace(operation, detail=split_detail(rw, last[0] if last else 0))
            steps = split_statements(
                rw,
                (blocked.collection, blocked.type, blocked.value),
                op,
                ("DELETE FROM identifiers WHERE profile_id = ?", [(m,) for m in ids]),
                key_hashes=False,
            )
            if self.feed_changes:
                at = operation.created_at
                pair = (blocked.type, blocked.value)
                change = unmerged(collection, top.segment_id, rw.parts, pair, at)
                steps.append(
                    (
                        "INSERT INTO outbox (segment_id, changes, created_at) VALUES (?, ?, ?)",
                        [(top.segment_id, change.decode(), at)],
                    )
                )
            owners = ids + [r[0] for r in rw.profiles]
            steps += [
                ("DELETE FROM traits WHERE profile_id = ?", [(m,) for m in owners]),
                (
                    "INSERT INTO traits (profile_id, key, value, timestamp, seq, source_id) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    rw.traits,
                ),
            ]
            self._run(conn, [(sql, rows) for sql, rows in steps if rows])
        return rw

    def deletions(self) -> list[tuple[int, str, str, str]]:
        return [
            (int(r[0]), r[1], r[2], r[3])
            for r in self._all(
                "SELECT COALESCE((detail::json->>'seq')::bigint, 9223372036854775807), "
                "collection, type, value FROM operations WHERE kind = 'delete_identifier' "
                "ORDER BY id"
            )
        ]

    def operations(self) -> list[Operation]:
        return [
            Operation(*r)
            for r in self._all(
                "SELECT kind, segment_id, collection, type, value, actor, created_at, detail "
                "FROM operations ORDER BY id"
            )
        ]

    def record_operation(
        self, operation: Operation, block: tuple[str, str, str] | None = None
    ) -> None:
        steps = operation_rows(operation)
        if block is not None:
            steps += block_rows(block, operation.created_at)
        with self._alone() as conn:
            self._run(conn, steps)

    def import_offsets(self) -> dict[str, int]:
        return {
            str(name): int(offset)
            for name, offset in self._all("SELECT name, byte_offset FROM import_progress")
        }

    def history(self, after: int, limit: int) -> list[StoredMessage]:
        return [
            StoredMessage(seq, source, mid, kind, ts, received, bytes(body), _ids.decode(found))
            for seq, source, mid, kind, ts, received, body, found in self._all(
                "SELECT seq, source_id, message_id, type, timestamp, received_at, body, "
                "external_ids FROM events WHERE seq > %s ORDER BY seq LIMIT %s",
                (after, limit),
            )
        ]

    def origins(self) -> Iterator[Origin]:
        for row in self._stream(
            "SELECT segment_id, collection, created_at, first_message_id, first_source_id "
            "FROM profiles ORDER BY id"
        ):
            yield Origin(*row)

    def keep_segment_ids(self, kept: list[tuple[Origin, str]]) -> int:
        rows = [
            (o.segment_id, o.collection, o.created_at, o.first_message_id, o.first_source_id, into)
            for o, into in kept
        ]
        with self._alone() as conn:
            encoded = msgspec.json.encode(rows).decode()
            found = conn.execute(_KEEP_SEGMENT_IDS, (encoded,)).fetchone()
        return int(found[0]) if found else 0

    # ---- the change feed -----------------------------------------------------------------
    def changes_after(self, position: tuple[int, int], limit: int) -> list[ChangeRow]:
        return [
            ChangeRow((int(xid), int(i)), sid, changes.encode(), at)
            for xid, i, sid, changes, at in self._all(
                "SELECT xid::text::bigint, id, segment_id, changes, created_at FROM outbox "
                "WHERE (xid, id) > (%s::text::xid8, %s) "
                "AND xid < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY xid, id LIMIT %s",
                (str(position[0]), position[1], limit),
            )
        ]

    def changes_left(self, position: tuple[int, int]) -> int:
        rows = self._all(
            "SELECT count(*) FROM outbox WHERE (xid, id) > (%s::text::xid8, %s)",
            (str(position[0]), position[1]),
        )
        return int(rows[0][0])

    def feed_position(self, name: str) -> tuple[int, int] | None:
        rows = self._all("SELECT xid, id FROM webhook_progress WHERE name = %s", (name,))
        return (int(rows[0][0]), int(rows[0][1])) if rows else None

    def set_feed_position(self, name: str, position: tuple[int, int]) -> None:
        self._all(
            "INSERT INTO webhook_progress (name, xid, id, updated_at) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (name) DO UPDATE SET xid = excluded.xid, id = excluded.id, "
            "updated_at = excluded.updated_at RETURNING name",
            (name, *position, time.time()),
        )

    def forget_changes(self, position: tuple[int, int]) -> None:
        self._all(
            "DELETE FROM outbox WHERE (xid, id) <= (%s::text::xid8, %s) RETURNING 1",
            (str(position[0]), position[1]),
        )

    def keep_changes(self, rows: list[ChangeRow], positions: dict[str, tuple[int, int]]) -> None:
        with self._alone() as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO outbox (id, xid, segment_id, changes, created_at) "
                "VALUES (%s, %s::text::xid8, %s, %s, %s)",
                [
                    (
                        r.position[1],
                        str(r.position[0]),
                        r.segment_id,
                        r.changes.decode(),
                        r.created_at,
                    )
                    for r in rows
                ],
            )
            cur.execute(
                "SELECT setval(pg_get_serial_sequence('outbox', 'id'), "
                "GREATEST((SELECT max(id) FROM outbox), 1))"
            )
            cur.executemany(
                "INSERT INTO webhook_progress (name, xid, id, updated_at) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET xid = excluded.xid, "
                "id = excluded.id, updated_at = excluded.updated_at",
                [(n, *p, time.time()) for n, p in positions.items()],
            )

    @contextlib.contextmanager
    def feeding(self, name: str) -> Iterator[bool]:
        # A session lock on a connection of its own, held while this process delivers: the
        # other workers' feeds for `name` wait their turn (the two-int form, apart from keys).
        lock = (int32(stable_hash(self.schema + "\x1fwebhooks")), int32(stable_hash(name)))
        try:
            conn = psycopg.connect(self._url, autocommit=True)
        except psycopg.Error:
            yield False
            return
        with conn:
            row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", lock).fetchone()
            yield bool(row and row[0])

    def partition(self) -> Iterator[tuple[str, str, str, str]]:
        yield from self._stream(
            "SELECT i.collection, i.type, i.value, c.segment_id FROM identifiers i "
            "JOIN profiles p ON p.id = i.profile_id JOIN profiles c ON c.id = p.canonical_id"
        )

    def blocked_identifiers(self) -> list[BlockedRow]:
        return [
            BlockedRow(*r)
            for r in self._all(
                "SELECT b.collection, b.type, b.value, o.segment_id, o.actor, b.created_at "
                "FROM blocked_identifiers b LEFT JOIN operations o ON o.id = b.operation_id "
                "ORDER BY b.created_at, b.type, b.value"
            )
        ]

    def close(self) -> None:
        self._writer.close()
        self._pool.close()

    # ---- reads -----------------------------------------------------------------------------
    def _all(
        self, sql: str, args: Any = None, timeout: float | None = None
    ) -> list[tuple[Any, ...]]:
        try:
            with self._pool.connection(timeout=timeout) as conn:
                return conn.execute(sql, args).fetchall()
        except psycopg.Error as err:
            raise StorageError(
                f"the PostgreSQL read at {self.url} failed: {_first_line(err)}"
            ) from err

    def find_by_identifier(self, collection: str, type_: str, value: str) -> ProfileRow | None:
        if "\x00" in value:  # never an identifier (core.identifiers); PostgreSQL text refuses it
            return None
        rows = self._all(
            f"SELECT {_PROFILE_COLUMNS} FROM identifiers i "
            "JOIN profiles q ON q.id = i.profile_id JOIN profiles p ON p.id = q.canonical_id "
            "WHERE i.collection = %s AND i.type = %s "
            "AND identifier_digest(i.value) = identifier_digest(%s) AND i.value = %s",
            (collection, type_, value, value),
        )
        return ProfileRow(*rows[0]) if rows else None

    def find_by_segment_id(self, segment_id: str) -> ProfileRow | None:
        if "\x00" in segment_id:  # never in a segment_id; PostgreSQL text refuses it
            return None
        rows = self._all(
            f"SELECT {_PROFILE_COLUMNS} FROM profiles q "
            "JOIN profiles p ON p.id = q.canonical_id WHERE q.segment_id = %s",
            (segment_id,),
        )
        return ProfileRow(*rows[0]) if rows else None

    def traits(
        self,
        pid: int,
        *,
        start: str = "",
        limit: int | None = None,
        keys: frozenset[str] | None = None,
    ) -> list[TraitRow]:
        if "\x00" in start:  # no key holds NUL (messages refuse it); PostgreSQL text cannot
            start = start[: start.index("\x00")] + "\x01"
        # Each member's keys in order, at most `chunk` of them: a key among the first `chunk`
        # of the union is then complete (a member that cut it off holds `chunk` smaller keys).
        # Removed traits are among the distinct keys a LIMIT counts: read on until `limit`.
        chunk = None if limit is None else max(limit + 1, 64)
        cut = "" if chunk is None else f" LIMIT {chunk:d}"
        inner = "SELECT key, value, timestamp, seq, source_id FROM traits WHERE profile_id = m.id "
        inner += "AND key {op} %(above)s"
        args: dict[str, Any] = {"pid": pid}
        if keys is not None:
            inner += " AND key = ANY(%(keys)s::text[])"
            args["keys"] = sorted(k for k in keys if "\x00" not in k)
        sql = (
            "SELECT DISTINCT ON (x.key) x.key, x.value, x.timestamp, x.source_id "
            + _each_member(inner + " ORDER BY key" + cut)
            + " ORDER BY x.key, x.timestamp DESC, x.seq DESC"
            + cut
        )
        out: list[TraitRow] = []
        above, op = start, ">="
        while True:
            rows = self._all(sql.format(op=op), {**args, "above": above})
            for key, value, ts, source in rows:
                if value is not None:
                    out.append(TraitRow(key, msgspec.json.decode(value), ts, source))
                    if limit is not None and len(out) >= limit:
                        return out
            if chunk is None or len(rows) < chunk:
                return out
            above, op = rows[-1][0], ">"

    def external_ids(self, pid: int) -> list[ExternalIdRow]:
        rows = [
            ExternalIdRow(*r)
            for r in self._all(
                "SELECT x.collection, x.type, x.value, x.source_id, x.first_message_id, "
                "x.created_at, m.segment_id "
                + _each_member(
                    "SELECT collection, type, value, source_id, first_message_id, created_at "
                    "FROM identifiers WHERE profile_id = m.id"
                ),
                {"pid": pid},
            )
        ]
        rows.sort(key=lambda r: (r.created_at, r.type, r.id))
        return rows

    def _collection(self, pid: int) -> str | None:
        rows = self._all("SELECT collection FROM profiles WHERE id = %s", (pid,))
        return str(rows[0][0]) if rows else None

    def events(
        self,
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
        collection = self._collection(pid)
        if collection is None:
            return []
        column = events_column(collection)
        where = [f"{column} = m.id"]
        args: dict[str, Any] = {"pid": pid, "limit": limit}
        if names is not None:
            where.append("event = ANY(%(names)s::text[])")
            args["names"] = stored_names(names)
        if excluded is not None:
            where.append("(event IS NULL OR NOT event = ANY(%(excluded)s::text[]))")
            args["excluded"] = stored_names(excluded)
        if start is not None:
            where.append("timestamp >= %(start)s")
            args["start"] = start
        if end is not None:
            where.append("timestamp < %(end)s")
            args["end"] = end
        if after is not None:
            op = "<" if sort == "desc" else ">"
            where.append(f"(timestamp, seq) {op} (%(after_ts)s, %(after_seq)s)")
            args["after_ts"], args["after_seq"] = after
        order = "DESC" if sort == "desc" else "ASC"
        # One index range per member profile, each cut at `limit`, then merged: a single
        # `IN (members)` query would sort every event of a merged profile for each page. The
        # page's rows are then read one by one by `seq` (`OFFSET 0` keeps that a lookup per
        # row): joined plainly, a young table without statistics was read whole, by a hash
        # join, for a page of 1,000 (580 ms on 200,000 events, against 3 ms).
        sql = (
            f"SELECT {EVENT_COLUMNS} FROM (SELECT k.seq, k.timestamp, m.canonical_id "
            "FROM profiles m CROSS JOIN LATERAL (SELECT seq, timestamp FROM events "
            f"WHERE {' AND '.join(where)} ORDER BY timestamp {order}, seq {order} "
            "LIMIT %(limit)s) k "
            f"WHERE m.canonical_id = {_CANONICAL} ORDER BY k.timestamp {order}, k.seq {order} "
            "LIMIT %(limit)s) top "
            "CROSS JOIN LATERAL (SELECT * FROM events WHERE seq = top.seq OFFSET 0) e "
            "JOIN profiles p ON p.id = top.canonical_id "
            f"ORDER BY top.timestamp {order}, top.seq {order}"
        )
        return [event_row(r) for r in self._all(sql, args)]

    def latest_arrival(self, pid: int) -> EventRow | None:
        collection = self._collection(pid)
        if collection is None:
            return None
        column = events_column(collection)
        # `seq + 0`: max(seq) alone may be planned as a backward walk of the primary key,
        # filtered by profile, which reads the whole table for a profile last seen long ago.
        sql = (
            f"SELECT {EVENT_COLUMNS} FROM events e "
            "JOIN profiles p ON p.id = (SELECT canonical_id FROM profiles WHERE id = %(pid)s) "
            "WHERE e.seq = (SELECT max(k.seq) FROM profiles m CROSS JOIN LATERAL "
            f"(SELECT max(seq + 0) AS seq FROM events WHERE {column} = m.id) k "
            f"WHERE m.canonical_id = {_CANONICAL})"
        )
        rows = self._all(sql, {"pid": pid})
        return event_row(rows[0]) if rows else None

    def links(
        self, pid: int, *, after: int | None = None, limit: int | None = None
    ) -> list[LinkRow]:
        collection = self._collection(pid)
        if collection is None:
            return []
        mine, theirs = (
            ("account_id", "user_id") if collection == "accounts" else ("user_id", "account_id")
        )
        args = {"pid": pid, "limit": limit, "after": -1 if after is None else after}
        return [
            LinkRow(r[-1], ProfileRow(*r[:-1]))
            for r in self._all(
                f"SELECT {_PROFILE_COLUMNS}, max(l.other) AS position FROM ("
                f"SELECT x.{theirs} AS other "
                + _each_member(f"SELECT {theirs} FROM links WHERE {mine} = m.id")
                + ") AS l CROSS JOIN LATERAL (SELECT canonical_id FROM profiles "
                "WHERE id = l.other OFFSET 0) AS q CROSS JOIN LATERAL (SELECT * FROM profiles "
                "WHERE id = q.canonical_id OFFSET 0) AS p "
                "GROUP BY p.id, p.segment_id, p.collection, p.created_at, p.merges, "
                "p.first_message_id, p.first_source_id HAVING max(l.other) > %(after)s "
                "ORDER BY position LIMIT %(limit)s",
                args,
            )
        ]

    def merges(self, pid: int) -> list[MergeRow]:
        return [
            MergeRow(*r)
            for r in self._all(
                "SELECT (SELECT segment_id FROM profiles WHERE id = x.from_id), "
                "(SELECT segment_id FROM profiles WHERE id = x.into_id), x.message_id, "
                "x.source_id, x.timestamp, x.rule "
                + _each_member(
                    "SELECT id, from_id, into_id, message_id, source_id, timestamp, rule "
                    "FROM merges "
                    "WHERE into_id = m.id"
                )
                + " ORDER BY x.id",
                {"pid": pid},
            )
        ]

    def violations(self, limit: int = 100, rules: Sequence[str] = ()) -> list[ViolationRow]:
        where = "WHERE rule = ANY(%s) " if rules else ""
        return [
            ViolationRow(*r)
            for r in self._all(
                "SELECT source_id, message_id, collection, type, value, rule, detail, timestamp "
                f"FROM violations {where}ORDER BY id DESC LIMIT %s",
                (list(rules), limit) if rules else (limit,),
            )
        ]

    def profile_violations(
        self, pid: int, *, before: int | None = None, limit: int = 100
    ) -> list[ProfileViolationRow]:
        members = f"SELECT id FROM profiles WHERE canonical_id = {_CANONICAL}"
        return [
            profile_violation_row(r)
            for r in self._all(
                f"SELECT {PROFILE_VIOLATION_COLUMNS} FROM violations v {PROFILE_VIOLATION_JOINS} "
                f"WHERE v.id IN (SELECT id FROM violations WHERE profile_id IN ({members}) "
                f"UNION SELECT id FROM violations WHERE other_profile_id IN ({members})) "
                "AND v.id < %(before)s ORDER BY v.id DESC LIMIT %(limit)s",
                {
                    "pid": pid,
                    "before": before if before is not None else 2**63 - 1,
                    "limit": limit,
                },
            )
        ]

    def shared_values(self, min_profiles: int = 3, limit: int = 100) -> list[SharedValueRow]:
        sql = shared_values_query("%s").replace("{agg}", "string_agg(DISTINCT rule, ',')")
        return [
            SharedValueRow(c, t, v, n, sorted(rules.split(",")))
            for c, t, v, n, rules in self._all(
                sql, (*JOIN_REFUSALS, *JOIN_REFUSALS, min_profiles, limit)
            )
        ]

    def stats(self) -> Stats:
        [row] = self._all(
            "SELECT (SELECT count(*) FROM profiles WHERE id = canonical_id), "
            "(SELECT count(*) FROM identifiers), (SELECT count(*) FROM events), "
            "(SELECT count(*) FROM merges), (SELECT count(*) FROM violations)"
        )
        return Stats(*(int(v) for v in row))

    def healthy(self) -> bool:
        """The server answers, no write has waited half the stall bound, and the last write
        did not fail (in the last `FAILED_SECONDS`): a worker that cannot write says so, even
        though its reads answer. (A write stuck behind a stalled writer waits the whole bound,
        and is then unhealthy for its second half.)"""
        now = time.monotonic()
        since, failed = self._writing_since, self._failed_at
        if since is not None and now - since > self.stall_seconds / 2:
            return False
        if failed is not None and now - failed < FAILED_SECONDS:
            return False
        try:
            self._all("SELECT 1", timeout=2.0)  # a health check must answer quickly
        except StorageError:
            return False
        return True

    def import_offset(self, name: str) -> int:
        rows = self._all("SELECT byte_offset FROM import_progress WHERE name = %s", (name,))
        return int(rows[0][0]) if rows else 0

    def set_import_offset(self, name: str, offset: int) -> None:
        self._all(
            "INSERT INTO import_progress (name, byte_offset, updated_at) VALUES (%s, %s, %s) "
            "ON CONFLICT (name) DO UPDATE SET byte_offset = excluded.byte_offset, "
            "updated_at = excluded.updated_at RETURNING name",
            (name, offset, time.time()),
        )

    # ---- the export's reads (`idstitch export`) --------------------------------------------
    def last_seq(self) -> int:
        # Every batch numbers its messages and stores them under the store's lock, shared:
        # once this transaction holds it alone, each seq handed out so far is committed or
        # gone, and every later one is higher. It is held for one query.
        try:
            with self._pool.connection() as conn, conn.transaction():
                conn.execute("SET LOCAL lock_timeout = '30s'")
                conn.execute("SELECT pg_advisory_xact_lock(%s::int, 0)", (self._locks.store,))
                row = conn.execute("SELECT COALESCE(max(seq), 0) FROM events").fetchone()
        except psycopg.Error as err:
            raise StorageError(
                f"the PostgreSQL read at {self.url} failed: {_first_line(err)}; if a write "
                "holds the store that long, look for a stalled worker."
            ) from err
        return int(row[0]) if row else 0

    def graph_updates(self, after: int, upto: int) -> Iterator[GraphUpdate]:
        sql = graph_updates_sql(_export_join, "%s")
        for r in self._stream(sql, (after, upto, after, upto)):
            yield graph_update(r[1:])

    def identifier_updates(self, after: int, upto: int) -> Iterator[HeldIdentifier]:
        for r in self._stream(identifiers_sql(_export_join, "%s", now=False), (after, upto)):
            yield held_identifier(r)

    def trait_updates(self, after: int, upto: int) -> Iterator[TraitUpdate]:
        return trait_updates(self._stream(trait_messages_sql("%s"), (after, upto)))

    def profile_members(self) -> Iterator[GraphUpdate]:
        for r in self._stream(members_sql(_export_join)):
            yield graph_update(r)

    def held_identifiers(self) -> Iterator[HeldIdentifier]:
        for r in self._stream(identifiers_sql(_export_join, "%s", now=True)):
            yield held_identifier(r)

    def current_traits(self) -> Iterator[TraitValue]:
        return newest_traits(self._stream(current_traits_sql("traits")))

    def _stream(self, sql: str, args: Any = None) -> Iterator[tuple[Any, ...]]:
        """The rows of `sql` through a server-side cursor, in a transaction of its own: they
        stream, however many there are."""
        try:
            with (
                self._pool.connection() as conn,
                conn.transaction(),
                conn.cursor(name="idstitch_rows") as cur,
            ):
                # Every row is read: plan for all of them, not for the first tenth (a
                # cursor's default), which picked plans a hundred times slower.
                conn.execute("SET LOCAL cursor_tuple_fraction = 1.0")
                cur.execute(sql, args)
                yield from cur
        except psycopg.Error as err:
            raise StorageError(
                f"the PostgreSQL read at {self.url} failed: {_first_line(err)}"
            ) from err


def _export_join(source: str, message: str, left: bool) -> str:
    """The stored message `source`/`message` name, as `e`, through the unique index on the
    message key (its columns sort as "C")."""
    return (
        f'{"LEFT " if left else ""}JOIN events e ON e.source_id = ({source}) COLLATE "C" '
        f'AND e.message_id = ({message}) COLLATE "C"'
    )
