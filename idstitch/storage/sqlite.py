"""The embedded store: SQLite in WAL mode, one writer process, group commit, durable on commit.

The graph lives in memory (rebuilt from the tables at startup), so resolving a message costs
no SQL round trip; each micro-batch is written in one `BEGIN IMMEDIATE` transaction and
committed with `synchronous=FULL`, which fsyncs the WAL before the commit returns. WAL
checkpoints run on a background thread so they never sit on the commit path. Reads use
their own connections (one per thread).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

import msgspec

from idstitch.core.graph import Graph
from idstitch.core.identifiers import key_of
from idstitch.core.plan import Plan
from idstitch.errors import StorageError, StoreNotFound
from idstitch.storage import sqlite_committer
from idstitch.storage.base import (
    EVENT_COLUMNS,
    EventRow,
    ExternalIdRow,
    LinkRow,
    MergeRow,
    ProfileRow,
    SortOrder,
    Stats,
    Store,
    TraitRow,
    Transaction,
    ViolationRow,
    event_row,
    events_column,
    maybe_stored,
)
from idstitch.storage.migrations import SQLITE as MIGRATIONS
from idstitch.storage.rows import (
    BatchRows,
    identifier_hash,
    message_hash,
    rows_from_plans,
    stored_names,
)
from idstitch.storage.sqlite_messages import StoredMessages

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


Settled = Callable[[], None]


def _widen(fd: int) -> None:
    """Give the pipe to the committer room for a whole batch's rows (about 1 KB a message):
    with the default 64 KiB, sending a batch blocks the writer thread while the committer
    reads it piece by piece. Linux only; elsewhere, or past the system's cap, the default."""
    setsize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsize is None:
        return
    for size in (4 << 20, 1 << 20):
        try:
            fcntl.fcntl(fd, setsize, size)
            return
        except OSError:
            continue


class SQLiteTransaction(Transaction):
    def __init__(self, store: SQLiteStore):
        self.store = store
        self.graph = store.graph
        self.rows: BatchRows | None = None
        self.done: Future[None] | None = None
        self.hashes: dict[tuple[str, str], int] = {}  # computed here once, reused for rows

    def seen(self, source_id: str, message_ids: list[str]) -> set[str]:
        # Batches still on their way to disk first; then the stored messages, asked only about
        # what their filter cannot rule out. A batch leaves the in-flight set only after
        # `messages` knows it as committed: nothing falls in between.
        store = self.store
        inflight, maybe = store.inflight, store.messages.may_contain
        hashes = self.hashes
        found: set[str] = set()
        candidates: dict[int, str] = {}
        for m in message_ids:
            if (source_id, m) in inflight:
                found.add(m)
            else:
                h = hashes[source_id, m] = message_hash(source_id, m)
                if maybe(h):
                    candidates[h] = m
        if candidates:
            found |= store.messages.find(store._read(), source_id, candidates)
        return found

    def apply(self, plans: list[Plan]) -> None:
        self.rows, self.store.next_seq = rows_from_plans(
            plans, self.graph, self.store.next_seq, self.hashes
        )


F = TypeVar("F", bound=Callable[..., Any])


def _reads(method: F) -> F:
    """Report a failed read as StorageError (HTTP 503), naming the store."""

    @functools.wraps(method)
    def wrapper(self: SQLiteStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as err:
            raise StorageError(f"reading the SQLite store at {self.path} failed: {err}") from None

    return cast(F, wrapper)


def _writer_lock(path: Path, timeout: float) -> int:
    """Take the store's exclusive writer lock (`<db>.lock`), waiting up to `timeout` s."""
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise StorageError(
                    f"another idstitch process is writing to {path} (it holds {path}.lock); "
                    "stop it, or point this one at another store."
                ) from None
            time.sleep(0.05)


def _collection(conn: sqlite3.Connection, pid: int) -> str | None:
    row = conn.execute("SELECT collection FROM profiles WHERE id = ?", (pid,)).fetchone()
    return None if row is None else str(row[0])


# Member profiles (a profile and those merged into it) per query of `events`.
MEMBERS_PER_QUERY = 200
_json_encode = msgspec.json.Encoder().encode


log = logging.getLogger("idstitch.storage")

RESET_TIMEOUT = 60.0  # seconds a recovery waits for the committer to settle earlier jobs
STALLED_SECONDS = 15.0  # a write waiting longer than this makes the store unhealthy
FAILED_SECONDS = 30.0  # a failed write makes the store unhealthy this long, or until a success


def _pause(streak: int) -> float:
    """Seconds between recoveries: none after a single failure, then 0.5 s doubling to 30 s."""
    return 0.0 if streak <= 1 else min(30.0, 0.5 * 2 ** (streak - 2))


FULL_DISK_BYTES = 16 << 20


def _disk_full(path: Path) -> str | None:
    """A sentence when the disk holding `path` is (nearly) full: SQLite then says only
    `disk I/O error`."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    free = st.f_bavail * st.f_frsize
    if free >= FULL_DISK_BYTES:
        return None
    return (
        f"the disk holding {folder} is full ({free:,} bytes free); free some space, then "
        "start again."
    )


class _Job(NamedTuple):
    future: Future[None]
    keys: list[tuple[str, str]]
    on_ok: Settled | None
    sent: float  # monotonic


class _Committer:
    """One committer process, the pipe to it, and the thread that reads its replies."""

    def __init__(self, process: subprocess.Popen[bytes], pipe: Connection):
        self.process = process
        self.pipe = pipe
        self.receiver: threading.Thread | None = None
        self.gone = False  # its replies ended: nothing sent to it will be answered


class SQLiteStore(Store):
    """Resolution happens in memory under `batch`; writing happens in a committer process.

    The committer process (`sqlite_committer`) owns the write connection. While it writes
    and fsyncs one batch, the next one is already being resolved here, so both cores work.
    A batch is acknowledged only when the commit that holds it returned. If a commit fails,
    every batch sent after it fails too, and the in-memory graph is rebuilt from disk
    before the next batch.
    """

    needs_keys = False  # the whole graph is in memory
    local_reads = True

    def __init__(
        self,
        path: Path | str,
        *,
        checkpoint_interval: float = 0.1,
        max_commit_events: int = 5000,
        lock_timeout: float = 30.0,
        index_every: int = 100_000,
        wal_pages: int = 65536,
        read_only: bool = False,
    ):
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.read_only = read_only
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closing = threading.Event()
        if read_only:
            self._open_read_only()
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _writer_lock(self.path, lock_timeout)
            self._conn = _connect(self.path)
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except (OSError, sqlite3.Error) as err:
            full = _disk_full(self.path)
            raise StorageError(
                f"cannot open the SQLite store at {self.path}: {err}; "
                + (full or "check the path and its permissions.")
            ) from None
        if mode != "wal":
            raise StorageError(f"SQLite at {self.path} refused WAL mode (got {mode!r}).")
        self._conn.execute("PRAGMA synchronous=FULL")
        # The file this engine opened: a committer (re)started on another file at the same
        # path refuses to write, so the graph in memory always matches what is stored.
        self._file = sqlite_committer.identity(str(self.path))
        self.migrations_applied = migrate(self._conn)
        self._write_lock = threading.Lock()
        self.graph = Graph()
        self.messages = StoredMessages(index_every)  # rebuilt by _load
        self.next_seq = 1
        self._load()
        self.inflight: set[tuple[str, str]] = set()
        self._broken: str | None = None
        self._failed_at = 0.0  # when the last failure was seen (monotonic)
        self._streak = 0  # failures seen since the last commit that succeeded (/healthz)
        self.max_commit_events = max_commit_events
        self.wal_pages = wal_pages
        self._pending: dict[int, _Job] = {}
        self._pending_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._next_job = 0
        self._start_committer()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop,
            args=(checkpoint_interval,),
            daemon=True,
            name="idstitch-checkpoint",
        )
        self._checkpointer.start()

    # ---- startup -------------------------------------------------------------------------
    def _open_read_only(self) -> None:
        """Reads only: no writer lock, no committer, no graph, so it works beside a running
        service (`idstitch profile` while `idstitch serve` writes)."""
        try:
            is_file, exists = self.path.is_file(), self.path.exists()
            parent_is_dir = self.path.parent.is_dir()
        except OSError as err:
            raise StorageError(
                f"the store path {self.path} cannot be used ({err.strerror}); check the "
                "[storage] url in the config."
            ) from None
        if not is_file:
            if exists or not parent_is_dir:
                what = self.path if exists else self.path.parent
                raise StorageError(
                    f"{what} is not a {'file' if exists else 'directory'}, so no store can be "
                    f"at {self.path}; check the [storage] url in the config."
                )
            raise StoreNotFound(
                f"there is no idstitch store at {self.path} yet; check --config, or send "
                "events first (idstitch serve, idstitch import)."
            )
        try:
            names = {r[0] for r in self._read().execute("SELECT name FROM schema_migrations")}
        except sqlite3.Error as err:
            self.close()
            full = _disk_full(self.path)
            if full is not None:
                raise StorageError(
                    f"cannot read the store at {self.path} ({err}): {full}"
                ) from None
            raise StorageError(
                f"{self.path} is not an idstitch store ({err}); check --config."
            ) from None
        missing = [name for name, _ in MIGRATIONS if name not in names]
        if missing:
            self.close()
            raise StorageError(
                f"the store at {self.path} lacks the migration(s) {', '.join(missing)}; "
                "run `idstitch migrate` (or start the service once)."
            )
        self.migrations_applied = []
        self.graph = Graph()

    def _refuse_writes(self) -> None:
        if self.read_only:
            raise StorageError(
                f"the store at {self.path} was opened read-only; open it without read_only "
                "to write."
            )

    def _load(self) -> None:
        """Rebuild the in-memory graph from the tables, in one read transaction."""
        with self._snapshot() as c:
            self._load_from(c)

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN")
        try:
            yield self._conn
        finally:
            self._conn.execute("COMMIT")

    def _load_from(self, c: sqlite3.Connection) -> None:
        graph = Graph()
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
        types: dict[str, str] = {}
        for coll, type_, value, pid, created_at in c.execute(
            "SELECT collection, type, value, profile_id, created_at FROM identifiers"
        ):
            # Point keys straight at the canonical profile and share its int and the type
            # strings: one object each instead of one per row.
            state = profiles[parent.get(pid, pid)]
            owners[key_of(coll, type_, value)] = state.pid
            state.add(types.setdefault(type_, type_), created_at)
        self.graph = graph
        last = c.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
        self.messages.load(c, last)
        self.next_seq = last + 1

    def _checkpoint_loop(self, interval: float) -> None:
        # Often (every 0.1 s): what this thread has not copied when the WAL reaches its size
        # limit, the committer must copy before the WAL can start over, while commits wait.
        # Copying in small steps here keeps that pause short (in process, single messages from
        # 64 submitters: P99 29-44 ms with a 2 s interval and a 64 MiB WAL, about 12 ms with
        # 0.1 s and 256 MiB).
        conn = _connect(self.path)
        try:
            while not self._closing.wait(interval):
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                self._restart_if_stopped()
        finally:
            conn.close()

    def _restart_if_stopped(self) -> None:
        """Replace a committer that stopped while no write came (/healthz answers 503 until
        it is back, and a load balancer that stops sending on 503 never sends the write that
        would otherwise restart it). A batch that arrives meanwhile recovers it itself."""
        committer = self._committer
        if not (committer.gone or committer.process.poll() is not None):
            return
        if _pause(self._streak) > time.monotonic() - self._failed_at:
            return
        if not self._write_lock.acquire(blocking=False):
            return  # a batch holds the store: it recovers it
        try:
            if self._closing.is_set() or committer is not self._committer:
                return
            if self._broken is None:  # stopped without a job pending: nothing failed yet
                self._failed("the SQLite committer process stopped")
            self._recover()
            # The new committer answered a transaction on the right file: writes work again.
            self._streak = 0
        except (StorageError, sqlite3.Error) as err:
            log.warning(
                "the SQLite committer could not be restarted; trying again",
                extra={"fields": {"reason": str(err)[:500]}},
            )
        finally:
            self._write_lock.release()

    # ---- writes --------------------------------------------------------------------------
    def _start_committer(self) -> None:
        from_parent, to_child = os.pipe()
        _widen(to_child)
        from_child, to_parent = os.pipe()
        try:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-S",
                    sqlite_committer.__file__,
                    str(self.path),
                    str(from_parent),
                    str(to_parent),
                    str(self.max_commit_events),
                    str(self.wal_pages),
                    self._file,
                ],
                # The child inherits the writer lock too: the lock lasts as long as either
                # process, so a new engine cannot load the graph while an old committer of a
                # killed engine still writes.
                pass_fds=(from_parent, to_parent, self._lock_fd),
                # Its own session: a Ctrl-C in the terminal (SIGINT to the foreground process
                # group) reaches the engine, which drains and then stops the committer, not
                # the committer in the middle of a commit. It ignores SIGINT and SIGTERM too.
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        finally:
            os.close(from_parent)
            os.close(to_parent)
        replies = Connection(from_child, writable=False)
        committer = _Committer(process, Connection(to_child, readable=False))
        committer.receiver = threading.Thread(
            target=self._receive_loop,
            args=(committer, replies),
            daemon=True,
            name="idstitch-acks",
        )
        self._committer = committer
        committer.receiver.start()

    def _receive_loop(self, committer: _Committer, pipe: Connection) -> None:
        try:
            self._receive(pipe)
        except Exception:  # a bug here must not leave writes waiting for answers
            log.exception("reading the SQLite committer's answers failed")
        finally:
            # From here on `_send` fails at once: a job sent now would wait for ever.
            with self._pending_lock:
                committer.gone = True
            if not self._closing.is_set():
                log.warning(
                    "the SQLite committer process stopped",
                    extra={"fields": {"exit_code": committer.process.poll()}},
                )
            self._fail_pending("the SQLite committer process stopped")
            pipe.close()

    def _receive(self, pipe: Connection) -> None:
        """Settle jobs as the committer answers, until its answers end."""
        while True:
            try:
                reply = pipe.recv()
            except (EOFError, OSError):
                return
            status, job_ids = reply[0], reply[1]
            with self._pending_lock:
                # A job can be gone already: failed when a send to this committer broke,
                # while its answer was still in the pipe.
                found = (self._pending.pop(job_id, None) for job_id in job_ids)
                settled = [job for job in found if job is not None]
            if status == "ok":
                if self._broken is None:  # not an import offset slipping past a failure
                    self._streak = 0
            else:
                self._failed(reply[2])
            for job in settled:
                if status == "ok" and job.on_ok is not None:
                    job.on_ok()  # before the keys leave the in-flight set (see `seen`)
                if job.keys:
                    self.inflight.difference_update(job.keys)
                if status == "ok":
                    job.future.set_result(None)
                else:
                    job.future.set_exception(StorageError(f"the batch was not stored: {reply[2]}"))

    def _failed(self, why: str) -> None:
        """A write failed: the next batch rebuilds the graph first, after a pause that grows
        while failures follow each other (a full disk must not cost a rebuild per batch)."""
        if self._broken is None:
            self._broken = why
            self._failed_at = time.monotonic()
            self._streak += 1

    def _fail_pending(self, why: str) -> None:
        if not self._closing.is_set():
            self._failed(why)
        with self._pending_lock:
            settled = list(self._pending.values())
            self._pending.clear()
        for job in settled:
            self.inflight.difference_update(job.keys)
            # The committer may have committed it just before it went: say so, and that a
            # retry is safe (the same messageIds are acknowledged, not stored twice).
            job.future.set_exception(StorageError(maybe_stored(why)))

    def _send(
        self,
        kind: str,
        payload: Any,
        keys: list[tuple[str, str]] | None = None,
        on_ok: Settled | None = None,
    ) -> Future[None]:
        future: Future[None] = Future()
        with self._send_lock:
            if self._closing.is_set():
                raise StorageError("the store is closed; open it again.")
            committer = self._committer
            job_id = self._next_job
            self._next_job += 1
            with self._pending_lock:
                if committer.gone:
                    future.set_exception(
                        StorageError(maybe_stored("the SQLite committer process stopped"))
                    )
                    return future
                self._pending[job_id] = _Job(future, keys or [], on_ok, time.monotonic())
            try:
                committer.pipe.send((kind, job_id, payload))
            except (OSError, ValueError) as err:
                self._fail_pending(f"the SQLite committer process is unreachable ({err})")
        return future

    def _replace_committer(self) -> None:
        """Reap a committer that stopped (or whose pipe broke) and start another."""
        old = self._committer
        with contextlib.suppress(OSError):
            old.process.kill()  # already gone, unless only its pipe broke
        try:
            old.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise StorageError(
                f"the SQLite committer process {old.process.pid} does not stop; restart idstitch."
            ) from None
        with contextlib.suppress(OSError):
            old.pipe.close()
        if old.receiver is not None:
            old.receiver.join(timeout=10)
        self._start_committer()
        log.warning(
            "the SQLite committer process was restarted",
            extra={"fields": {"exit_code": old.process.returncode}},
        )

    def _recover(self) -> None:
        """After a failed write: let every sent job settle, then rebuild the graph from disk."""
        try:
            committer = self._committer
            if committer.gone or committer.process.poll() is not None:
                self._replace_committer()
            try:
                # Jobs settle in order: once the reset is answered, all earlier ones are done.
                self._send("reset", None).result(timeout=RESET_TIMEOUT)
            except FutureTimeout:
                raise StorageError(
                    f"the SQLite committer did not answer within {RESET_TIMEOUT:.0f} s after "
                    f"a failed write ({self._broken}); retry later."
                ) from None
            self._broken = None
            self.inflight.clear()
            self._load()
        except (StorageError, sqlite3.Error):
            # Still broken: the next attempt waits longer.
            self._failed_at = time.monotonic()
            self._streak += 1
            raise

    @contextlib.contextmanager
    def batch(self, keys: Iterable[str]) -> Iterator[Transaction]:
        self._refuse_writes()
        with self._write_lock:
            if self._broken is not None:
                pause = _pause(self._streak) - (time.monotonic() - self._failed_at)
                if pause > 0:
                    raise StorageError(
                        f"writes failed {self._streak} times in a row, the last time with: "
                        f"{self._broken}; the store tries again in {pause:.1f} s, and nothing "
                        "of this batch was stored. Retry shortly."
                    )
                self._recover()
            tx = SQLiteTransaction(self)
            seq = self.next_seq
            try:
                yield tx
            except BaseException:
                self.next_seq = seq
                self._recover()  # the in-memory graph may hold this batch's changes
                raise
            # Always send a job, even an empty one: a batch of duplicates must not be
            # acknowledged before the batch holding the originals is on disk.
            rows = tx.rows if tx.rows is not None else BatchRows()
            self.inflight.update(rows.message_keys)
            messages = self.messages
            marks = messages.sending(rows.events)
            tx.done = self._send(
                "rows",
                sqlite_committer.payload_of(rows),
                rows.message_keys,
                functools.partial(messages.committed, marks) if marks else None,
            )
            job = messages.next_index_job(self.next_seq)
            if job is not None:
                last = job[4]
                self._send(
                    "index", job, on_ok=functools.partial(messages.merged, job[1]) if last else None
                )

    def close(self) -> None:
        if self._closing.is_set():
            return
        if self.read_only:
            self._closing.set()
            self._close_readers()
            return
        with self._write_lock, self._send_lock:
            self._closing.set()
            committer = self._committer
            with contextlib.suppress(OSError, ValueError):
                committer.pipe.send(None)
        try:
            committer.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            committer.process.kill()
            committer.process.wait()
        if committer.receiver is not None:
            committer.receiver.join(timeout=10)
        committer.pipe.close()
        self._checkpointer.join(timeout=5)
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._conn.close()
        os.close(self._lock_fd)
        self._close_readers()

    def _close_readers(self) -> None:
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

    @_reads
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

    @_reads
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

    @_reads
    def traits(
        self,
        pid: int,
        *,
        start: str = "",
        limit: int | None = None,
        keys: frozenset[str] | None = None,
    ) -> list[TraitRow]:
        conn = self._read()
        members = self._members(conn, pid)
        sql = "SELECT key, value, timestamp, seq, source_id FROM traits WHERE profile_id = ?"
        args: list[Any] = []
        if keys is not None:
            sql += " AND key IN (SELECT value FROM json_each(?))"
            args.append(_json_encode(sorted(keys)).decode())
        # Each member in key order, `chunk` rows at a time. Keys up to the lowest last key of
        # a member cut short are complete (every member has given all of its own); removed
        # traits are skipped, so a page may take more than one round.
        chunk = None if limit is None else max(limit + 1, 64)
        out: list[TraitRow] = []
        above, inclusive = start, True
        while True:
            best: dict[str, tuple[float, int, str | None, str]] = {}
            bound: str | None = None
            where = sql + (" AND key >= ?" if inclusive else " AND key > ?") + " ORDER BY key"
            for member in members:
                tail = (above,) if chunk is None else (above, chunk)
                rows = conn.execute(
                    where + ("" if chunk is None else " LIMIT ?"), (member, *args, *tail)
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

    @_reads
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

    @_reads
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
        conn = self._read()
        collection = _collection(conn, pid)
        if collection is None:
            return []
        column = events_column(collection)
        where = [f"{column} = ?"]
        filters: list[Any] = []
        # One JSON parameter per list, however long: a query's variables are capped.
        if names is not None:
            where.append("event IN (SELECT value FROM json_each(?))")
            filters.append(_json_encode(stored_names(names)).decode())
        if excluded is not None:
            where.append("(event IS NULL OR event NOT IN (SELECT value FROM json_each(?)))")
            filters.append(_json_encode(stored_names(excluded)).decode())
        if start is not None:
            where.append("timestamp >= ?")
            filters.append(start)
        if end is not None:
            where.append("timestamp < ?")
            filters.append(end)
        if after is not None:
            where.append("(timestamp, seq) " + ("<" if sort == "desc" else ">") + " (?, ?)")
            filters.extend(after)
        order = "DESC" if sort == "desc" else "ASC"
        # One index range per member profile, each cut at `limit`, then merged: a single
        # `IN (members)` query would sort every event of a merged profile for each page.
        one = (
            f"SELECT * FROM (SELECT seq, timestamp FROM events WHERE {' AND '.join(where)} "
            f"ORDER BY timestamp {order}, seq {order} LIMIT ?)"
        )
        members = self._members(conn, pid)
        rows: list[Any] = []
        # SQLite caps a compound SELECT at 500 terms: a long merge history goes in parts.
        for at in range(0, len(members), MEMBERS_PER_QUERY):
            part = members[at : at + MEMBERS_PER_QUERY]
            args: list[Any] = []
            for member in part:
                args.extend((member, *filters, limit))
            args.append(limit)
            sql = (
                f"SELECT {EVENT_COLUMNS} "
                f"FROM ({' UNION ALL '.join([one] * len(part))}) k "
                "JOIN events e ON e.seq = k.seq "
                f"LEFT JOIN profiles q ON q.id = e.{column} "
                "LEFT JOIN profiles p ON p.id = q.canonical_id "
                f"ORDER BY k.timestamp {order}, k.seq {order} LIMIT ?"
            )
            rows.extend(conn.execute(sql, args))
        if len(members) > MEMBERS_PER_QUERY:
            rows.sort(key=lambda r: (r[5], r[0]), reverse=sort == "desc")
            del rows[limit:]
        return [event_row(r) for r in rows]

    @_reads
    def latest_arrival(self, pid: int) -> EventRow | None:
        conn = self._read()
        collection = _collection(conn, pid)
        if collection is None:
            return None
        column = events_column(collection)
        # MAX per member, each from its own index range (the arrival number is the rowid:
        # one query over all members could walk the whole table backwards instead).
        seqs = [
            conn.execute(f"SELECT MAX(seq) FROM events WHERE {column} = ?", (m,)).fetchone()[0]
            for m in self._members(conn, pid)
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

    @_reads
    def links(
        self, pid: int, *, after: int | None = None, limit: int | None = None
    ) -> list[LinkRow]:
        conn = self._read()
        collection = _collection(conn, pid)
        if collection is None:
            return []
        mine, theirs = (
            ("account_id", "user_id") if collection == "accounts" else ("user_id", "account_id")
        )
        members = self._members(conn, pid)
        marks = ",".join("?" * len(members))
        args: list[Any] = [*members, -1 if after is None else after]
        args.append(-1 if limit is None else limit)
        return [
            LinkRow(r[-1], ProfileRow(*r[:-1]))
            for r in conn.execute(
                f"SELECT {_PROFILE_COLUMNS}, MAX(q.id) AS position FROM links l "
                f"JOIN profiles q ON q.id = l.{theirs} JOIN profiles p ON p.id = q.canonical_id "
                f"WHERE l.{mine} IN ({marks}) GROUP BY p.id HAVING position > ? "
                "ORDER BY position LIMIT ?",
                args,
            )
        ]

    @_reads
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

    @_reads
    def violations(self, limit: int = 100) -> list[ViolationRow]:
        return [
            ViolationRow(*r)
            for r in self._read().execute(
                "SELECT source_id, message_id, collection, type, value, rule, detail, timestamp "
                "FROM violations ORDER BY id DESC LIMIT ?",
                (limit,),
            )
        ]

    @_reads
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
        """Reads answer and, on a writing store, the committer runs, the last write did not
        fail (in the last `FAILED_SECONDS`), no write has waited longer than `STALLED_SECONDS`
        and the database file is the one opened."""
        if not self.read_only:
            committer = self._committer
            if committer.gone or committer.process.poll() is not None:
                return False
            # A failed write counts for a while only: a load balancer that stops sending
            # traffic on 503 must not keep the store out for ever for want of a success.
            if self._streak and time.monotonic() - self._failed_at < FAILED_SECONDS:
                return False
            if sqlite_committer.identity(str(self.path)) != self._file:
                return False  # deleted or replaced: nothing written now would be kept
            with self._pending_lock:
                oldest = next(iter(self._pending.values()), None)
            if oldest is not None and time.monotonic() - oldest.sent > STALLED_SECONDS:
                return False
        try:
            self._read().execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

    @_reads
    def import_offset(self, name: str) -> int:
        row = (
            self._read()
            .execute("SELECT byte_offset FROM import_progress WHERE name = ?", (name,))
            .fetchone()
        )
        return int(row[0]) if row else 0

    def set_import_offset(self, name: str, offset: int) -> None:
        self._refuse_writes()
        self._send("offset", (name, offset, time.time())).result()
