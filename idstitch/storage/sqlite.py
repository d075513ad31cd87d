"""The embedded store: SQLite in WAL mode, a log-first write path, derived state behind it.

The graph lives in memory (rebuilt from the tables at startup), so resolving a message costs
no SQL round trip. A micro-batch's log rows (the messages) and graph changes go to the
committer process (`sqlite_committer`), which appends them in one transaction committed with
`synchronous=FULL`: a batch is acknowledged once that commit returns. Everything else a read
needs is derived behind the log by the indexer process (`sqlite_index`) into a database of
its own, and reads combine the two (`sqlite_reads`). A housekeeping thread checkpoints the
WAL, follows the indexer's watermarks, and restarts a child process that stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import logging
import os
import sqlite3
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

import msgspec

from idstitch.core.changes import removal, unmerged
from idstitch.core.graph import Graph
from idstitch.core.identifiers import Identifier, key_of, slot_of
from idstitch.core.plan import Plan
from idstitch.core.rules import CONFLICT
from idstitch.core.split import StoredMessage
from idstitch.errors import InvalidArgument, StorageError, StoreNotFound
from idstitch.storage import sqlite_committer, sqlite_index
from idstitch.storage import sqlite_reads as reads
from idstitch.storage.base import (
    BlockedRow,
    ChangeRow,
    EventRow,
    ExternalIdRow,
    IndexLag,
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
    maybe_stored,
    too_many_messages,
)
from idstitch.storage.export_reads import GraphUpdate, HeldIdentifier, TraitUpdate, TraitValue
from idstitch.storage.migrations import SQLITE as MIGRATIONS
from idstitch.storage.rewrite import (
    KEPT_BY_REBUILD,
    MAX_SPLIT_MESSAGES,
    Operation,
    Rewrite,
    block_rows,
    keep_statements,
    operation_rows,
    rewrite,
    split_detail,
    split_statements,
)
from idstitch.storage.rows import BatchRows, message_hash, rows_from_plans
from idstitch.storage.sqlite_children import Child
from idstitch.storage.sqlite_committer import identity
from idstitch.storage.sqlite_index import SCHEMA as INDEX_SCHEMA
from idstitch.storage.sqlite_index import index_path, open_index, watermarks
from idstitch.storage.sqlite_messages import StoredMessages
from idstitch.storage.sqlite_protocol import (
    Done,
    Execute,
    Job,
    Offset,
    Reply,
    Reset,
    Stop,
    Write,
    from_wire,
    to_wire,
)

# The indexer's entry: argv[1] is the directory holding the `idstitch` package to run.
_RUN_INDEXER = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from idstitch.storage.sqlite_index import main; main(sys.argv[2:5])"
)

log = logging.getLogger("idstitch.storage")

RESET_TIMEOUT = 60.0  # seconds a recovery waits for the committer to settle earlier jobs
STALLED_SECONDS = 15.0  # a write waiting longer than this makes the store unhealthy
FAILED_SECONDS = 30.0  # a failed write makes the store unhealthy this long, or until a success
FULL_DISK_BYTES = 16 << 20


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


def _pause(streak: int) -> float:
    """Seconds between recoveries: none after a single failure, then 0.5 s doubling to 30 s."""
    return 0.0 if streak <= 1 else min(30.0, 0.5 * 2 ** (streak - 2))


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


Settled = Callable[[], None]


class _Job(NamedTuple):
    future: Future[None]
    keys: list[tuple[str, str]]
    on_ok: Settled | None
    sent: float  # monotonic
    last_seq: int  # the batch's last event number (0: no events)


class SQLiteTransaction(Transaction):
    def __init__(self, store: SQLiteStore):
        self.store = store
        self.graph = store.graph
        self.rows: BatchRows | None = None
        self.done: Future[None] | None = None  # the commit of this batch's rows
        self.progress: list[tuple[str, int, float]] = []
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
            plans,
            self.graph,
            self.store.next_seq,
            self.hashes,
            traits=False,
            changes=self.store.feed_changes,
        )

    def record_progress(self, name: str, offset: int) -> None:
        self.progress.append((name, offset, time.time()))


# A repair detaches an identifier row rather than deleting it: SQLite would give a deleted
# last row's id to the next row, which the indexer, past that id already, would never index.
# Profile id 0 names no profile: every read joins or checks the row's profile.
DETACH = "UPDATE identifiers SET profile_id = 0 WHERE id = ?"
OUTBOX = "INSERT INTO outbox (segment_id, changes, created_at) VALUES (?, ?, ?)"
FEED_POSITION = (
    "INSERT INTO webhook_progress (name, xid, id, updated_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET xid = excluded.xid, id = excluded.id, "
    "updated_at = excluded.updated_at"
)


class SQLiteStore(Store):
    """Resolution happens in memory under `batch`; writing happens in the committer process,
    derived state in the indexer process.

    While the committer writes and fsyncs one batch, the next one is already being resolved
    here. A batch is acknowledged only when the commit that holds it returned. If a commit
    fails, every batch sent after it fails too, and the in-memory graph is rebuilt from disk
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
        wal_pages: int = 65536,
        read_only: bool = False,
        indexer: bool = True,
    ):
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.index = index_path(self.path)
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
        self._file = identity(str(self.path))
        try:
            self.migrations_applied = migrate(self._conn)
            open_index(self.path, self.index).close()  # created, or started afresh
        except sqlite3.Error as err:
            raise StorageError(
                f"cannot prepare the SQLite store at {self.path}: {err}; "
                + (_disk_full(self.path) or "check the path and its permissions.")
            ) from None
        self._write_lock = threading.Lock()
        self.graph = Graph()
        self.messages = StoredMessages()  # rebuilt by _load
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
        # Commits the index has not reached yet: (last seq, when committed), for the lag.
        self._unindexed: deque[tuple[int, float]] = deque()
        self._committed_seq = self.next_seq - 1
        self._start_committer()
        # Started by the housekeeper on its first round, not here: a store opened for a
        # moment (a script, a test) has nothing to derive yet, and reads cover the tail.
        self._indexer: Child | None = None
        self._indexing = indexer
        # A split holds the indexer stopped (`split_profile`); starting and stopping it
        # (there, at close, and in the housekeeper) take this lock.
        self._rewriting = False
        self._indexer_lock = threading.Lock()
        self._housekeeper = threading.Thread(
            target=self._housekeeping,
            args=(checkpoint_interval,),
            daemon=True,
            name="idstitch-housekeeping",
        )
        self._housekeeper.start()

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
        """Rebuild the in-memory graph and the stored-message filter from the tables."""
        conn = self._read()
        with reads.reading(conn) as marks:
            self._load_from(conn, marks.events)

    def _load_from(self, c: sqlite3.Connection, indexed: int) -> None:
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
        for coll, type_, value, pid, created_at in c.execute(
            "SELECT collection, type, value, profile_id, created_at FROM identifiers "
            "WHERE profile_id > 0"  # 0: detached by a repair (`DETACHED`)
        ):
            # Point keys straight at the canonical profile and share its int: one object
            # instead of one per row.
            state = profiles[parent.get(pid, pid)]
            owners[slot_of(key_of(coll, type_, value))] = state.pid
            state.add(type_, created_at)
        for coll, type_, value, detail in c.execute(
            "SELECT collection, type, value, detail FROM violations WHERE rule = ?", (CONFLICT,)
        ):
            graph.add_conflict(slot_of(key_of(coll, type_, value)), detail)
        graph.blocked.update(
            slot_of(key_of(*row))
            for row in c.execute("SELECT collection, type, value FROM blocked_identifiers")
        )
        self.graph = graph
        last = c.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
        self.messages.load(c, indexed)
        self.next_seq = last + 1

    # ---- child processes -------------------------------------------------------------------
    def _start_committer(self) -> None:
        script = sqlite_committer.__file__
        args = [str(self.path), str(self.max_commit_events), str(self.wal_pages), self._file]
        committer = Child(["-I", "-S", script, *args], replies=True, keep_fd=self._lock_fd)
        self._committer = committer
        receiver = threading.Thread(
            target=self._receive_loop, args=(committer,), daemon=True, name="idstitch-acks"
        )
        self._receiver = receiver
        receiver.start()

    def _stop_indexer(self) -> None:
        indexer, self._indexer = self._indexer, None
        if indexer is None:
            return
        with contextlib.suppress(OSError, ValueError):
            indexer.pipe.send_bytes(b"stop")
        try:
            indexer.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            # Derived state: a run cut off is rolled back and done again next time.
            indexer.process.kill()
            indexer.process.wait()
        indexer.close_pipes()

    def _start_indexer(self) -> None:
        # The package this engine runs from, by path (`-I` ignores PYTHONPATH): the indexer
        # must be the same code as the engine, even where another idstitch is installed.
        package_root = str(Path(sqlite_index.__file__).resolve().parent.parent.parent)
        command = ["-I", "-c", _RUN_INDEXER, package_root, str(self.path), str(self.index)]
        self._indexer = Child(command, replies=False)

    # ---- the committer's answers ----------------------------------------------------------
    def _receive_loop(self, committer: Child) -> None:
        try:
            self._receive(committer)
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
            committer.close_pipes()

    def _receive(self, committer: Child) -> None:
        """Settle jobs as the committer answers, until its answers end."""
        assert committer.replies is not None
        while True:
            try:
                reply: Reply = from_wire(committer.replies.recv())
            except (EOFError, OSError):
                return
            with self._pending_lock:
                # A job can be gone already: failed when a send to this committer broke,
                # while its answer was still in the pipe.
                found = (self._pending.pop(job_id, None) for job_id in reply.jobs)
                settled = [job for job in found if job is not None]
            ok = isinstance(reply, Done)
            reason = "" if isinstance(reply, Done) else reply.reason
            if ok:
                if self._broken is None:  # not an import offset slipping past a failure
                    self._streak = 0
                last = max((job.last_seq for job in settled), default=0)
                if last > self._committed_seq:
                    self._committed_seq = last
                    self._unindexed.append((last, time.monotonic()))
            else:
                self._failed(reason)
            for job in settled:
                if ok and job.on_ok is not None:
                    job.on_ok()  # before the keys leave the in-flight set (see `seen`)
                if job.keys:
                    self.inflight.difference_update(job.keys)
                if ok:
                    job.future.set_result(None)
                else:
                    job.future.set_exception(StorageError(f"the batch was not stored: {reason}"))

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
        make: Callable[[int], Job],
        keys: list[tuple[str, str]] | None = None,
        on_ok: Settled | None = None,
        last_seq: int = 0,
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
                self._pending[job_id] = _Job(future, keys or [], on_ok, time.monotonic(), last_seq)
            try:
                committer.pipe.send(to_wire(make(job_id)))
            except (OSError, ValueError) as err:
                self._fail_pending(f"the SQLite committer process is unreachable ({err})")
        return future

    # ---- recovery ----------------------------------------------------------------------------
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
        old.close_pipes()
        self._receiver.join(timeout=10)
        self._start_committer()
        log.warning(
            "the SQLite committer process was restarted",
            extra={"fields": {"exit_code": old.process.returncode}},
        )

    def _recover(self) -> None:
        """After a failed write: let every sent job settle, then rebuild the graph from disk."""
        try:
            if not self._committer.running():
                self._replace_committer()
            try:
                # Jobs settle in order: once the reset is answered, all earlier ones are done.
                self._send(Reset).result(timeout=RESET_TIMEOUT)
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

    # ---- writes --------------------------------------------------------------------------
    @contextlib.contextmanager
    def batch(self, keys: Iterable[str]) -> Iterator[SQLiteTransaction]:
        """A transaction on the in-memory graph; its rows are sent to the committer when the
        block ends (`write` returns the future of their commit)."""
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

            def job(job_id: int) -> Write:
                return Write(
                    job_id,
                    rows.events,
                    rows.profiles,
                    rows.repoint,
                    rows.merge_counts,
                    rows.merges,
                    rows.identifiers,
                    rows.links,
                    rows.violations,
                    tx.progress,
                    rows.outbox,
                )

            tx.done = self._send(
                job,
                rows.message_keys,
                functools.partial(messages.committed, marks) if marks else None,
                self.next_seq - 1 if rows.events else 0,
            )

    def write(self, keys: Iterable[str], work: Callable[[Transaction], None]) -> Future[None]:
        with self.batch(keys) as tx:
            work(tx)
        assert tx.done is not None
        return tx.done

    # ---- repairs -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _repairing(self) -> Iterator[sqlite3.Connection]:
        """The write lock, with every batch sent before on disk: a repair reads what is
        stored and must see all of it. Yields a read connection."""
        self._refuse_writes()
        with self._write_lock:
            if self._broken is not None:
                self._recover()
            self._send(lambda job: Write(job, [], [], [], [], [], [], [], [])).result()
            yield self._read()

    def _execute(self, steps: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        self._send(lambda job: Execute(job, steps)).result()

    def remove_identifier(
        self, pid: int, collection: str, type_: str, value: str, operation: Operation
    ) -> bool:
        with self._repairing() as conn:
            graph = self.graph
            slot = slot_of(key_of(collection, type_, value))
            owner = graph.owner(slot)
            if owner is None or owner.pid != graph.find(pid):
                return False
            row = reads.identifier_row(conn, collection, type_, value)
            if row is None:  # pragma: no cover - the graph holds it, so the log does
                return False
            row_id, created_at = row
            # Where in the history it happened, so that a replay deletes it there again.
            at = msgspec.json.encode({"seq": self.next_seq - 1}).decode()
            operation = msgspec.structs.replace(operation, detail=at)
            steps = [(DETACH, [(row_id,)]), *operation_rows(operation)]
            if self.feed_changes:
                now = operation.created_at
                change = removal(collection, owner.segment_id, type_, value, now)
                steps.append((OUTBOX, [(owner.segment_id, change, now)]))
            self._execute(steps)
            del graph.owners[slot]
            owner.remove(type_, created_at)
        return True

    def split_profile(
        self, pid: int, blocked: Identifier, split_with: SplitWith, operation: Operation
    ) -> Rewrite:
        with self._repairing() as conn:
            graph = self.graph
            canonical = graph.find(pid)
            members = reads.member_rows(conn, canonical)
            top = next(m for m in members if m.pid == canonical)
            collection = blocked.collection
            ids = [m.pid for m in members]
            messages = reads.stored_messages(conn, ids, collection, MAX_SPLIT_MESSAGES + 1)
            if len(messages) > MAX_SPLIT_MESSAGES:
                raise InvalidArgument(too_many_messages(top.segment_id))

            def foreign(carried: list[Identifier]) -> set[int]:
                out = set()
                for ident in carried:
                    owner = graph.owner(ident.slot)
                    if owner is not None and owner.pid != canonical:
                        out.add(ident.slot)
                return out

            done = split_with(messages, foreign, set(graph.blocked), reads.deletions(conn))
            first_new = graph.next_pid
            counter = itertools.count(first_new)
            rw = rewrite(done, collection, top, members, lambda: next(counter))
            held = reads.identifier_rows(conn, ids)
            op = msgspec.structs.replace(operation, detail=split_detail(rw, self.next_seq - 1))
            steps = split_statements(
                rw,
                (blocked.collection, blocked.type, blocked.value),
                op,
                (DETACH, [(r[0],) for r in held]),
                key_hashes=True,
            )
            # What the index derived by profile is out of date from here: with the indexer
            # stopped, its tables are emptied first (reads then take everything from the log,
            # before the rewrite and after it), then the log is rewritten with the generation
            # the emptied index names; the indexer then builds it again from the start. A
            # crash in between leaves generations that differ: the indexer starts again too.
            if self.feed_changes:
                at = operation.created_at
                pair = (blocked.type, blocked.value)
                change = unmerged(collection, top.segment_id, rw.parts, pair, at)
                steps.append((OUTBOX, [(top.segment_id, change, at)]))
            generation = int(sqlite_index.generation(conn, "main")) + 1
            steps.append(
                (
                    "UPDATE store_meta SET value = ? WHERE name = 'generation'",
                    [(str(generation),)],
                )
            )
            with self._indexer_lock:
                self._rewriting = True
                self._stop_indexer()
            try:
                if self.index.exists():
                    sqlite_index.start_again(self.index, str(generation))
                self._execute(steps)
            finally:
                with self._indexer_lock:
                    self._rewriting = False
                    if self._indexing and not self._closing.is_set():
                        self._start_indexer()
            for m in members:
                graph.profiles.pop(m.pid, None)
                graph.parent.pop(m.pid, None)
            for _, coll, type_, value, _ in held:
                graph.owners.pop(slot_of(key_of(coll, type_, value)), None)
            graph.owners.update(rw.owners)
            graph.profiles.update((state.pid, state) for state in rw.states)
            graph.parent.update(rw.parents)
            graph.next_pid = max(graph.next_pid, next(counter))
            graph.blocked.add(blocked.slot)
        return rw

    @_reads
    def blocked_identifiers(self) -> list[BlockedRow]:
        return reads.blocked_identifiers(self._read())

    @_reads
    def operations(self) -> list[Operation]:
        return reads.operations(self._read())

    def record_operation(
        self, operation: Operation, block: tuple[str, str, str] | None = None
    ) -> None:
        with self._repairing():
            steps = operation_rows(operation)
            if block is not None:
                steps += block_rows(block, operation.created_at)
            self._execute(steps)
            if block is not None:
                self.graph.blocked.add(slot_of(key_of(*block)))

    def set_import_offset(self, name: str, offset: int) -> None:
        self._refuse_writes()
        self._send(lambda job: Offset(job, name, offset, time.time())).result()

    # ---- housekeeping --------------------------------------------------------------------
    def _housekeeping(self, interval: float) -> None:
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
                with contextlib.suppress(sqlite3.Error):
                    self._follow_index()
                self._restart_if_stopped()
        finally:
            conn.close()

    def _follow_index(self) -> None:
        """What the indexer has reached: messages it covers leave the in-memory set."""
        marks = watermarks(self._read())
        self.messages.merged(marks.events)
        unindexed = self._unindexed
        while unindexed and unindexed[0][0] <= marks.events:
            unindexed.popleft()

    def index_lag(self) -> IndexLag:
        if self.read_only:
            return IndexLag(0, 0.0)
        try:
            marks = watermarks(self._read())
        except sqlite3.Error as err:
            raise StorageError(f"could not read the index's watermark: {err}") from err
        behind = max(0, self._committed_seq - marks.events)
        # A copy (taken whole, under the GIL): the acks thread appends while we look.
        unindexed = self._unindexed.copy()
        oldest = next((at for seq, at in unindexed if seq > marks.events), None)
        seconds = 0.0 if behind == 0 or oldest is None else time.monotonic() - oldest
        return IndexLag(behind, seconds)

    def _restart_if_stopped(self) -> None:
        """Replace a child process that stopped while no write came (/healthz answers 503
        until the committer is back, and a load balancer that stops sending on 503 never
        sends the write that would otherwise restart it). A batch that arrives meanwhile
        recovers the committer itself."""
        with self._indexer_lock:
            indexer = self._indexer
            if self._indexing and not self._closing.is_set() and not self._rewriting:
                if indexer is None:
                    self._start_indexer()
                elif not indexer.running():
                    log.warning(
                        "the SQLite indexer process stopped; starting it again",
                        extra={"fields": {"exit_code": indexer.process.poll()}},
                    )
                    indexer.close_pipes()
                    self._start_indexer()
        committer = self._committer
        if committer.running():
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

    # ---- closing -------------------------------------------------------------------------
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
                committer.pipe.send(to_wire(Stop()))
        try:
            committer.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            committer.process.kill()
            committer.process.wait()
        self._receiver.join(timeout=10)
        committer.close_pipes()
        self._housekeeper.join(timeout=5)  # it starts no indexer once closing is set
        with self._indexer_lock:
            self._stop_indexer()
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
        """This thread's read connection, the index database attached as `ix` (an empty one
        in memory when a read-only store has none yet: everything is then read from the log)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            conn.execute("PRAGMA busy_timeout=30000")
            if self.index.exists():
                conn.execute("ATTACH DATABASE ? AS ix", (str(self.index),))
            else:
                conn.execute("ATTACH DATABASE ':memory:' AS ix")
                conn.executescript(INDEX_SCHEMA.replace("IF NOT EXISTS ", "IF NOT EXISTS ix."))
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    @_reads
    def find_by_identifier(self, collection: str, type_: str, value: str) -> ProfileRow | None:
        return reads.find_by_identifier(self._read(), collection, type_, value)

    @_reads
    def find_by_segment_id(self, segment_id: str) -> ProfileRow | None:
        return reads.find_by_segment_id(self._read(), segment_id)

    @_reads
    def traits(
        self,
        pid: int,
        *,
        start: str = "",
        limit: int | None = None,
        keys: frozenset[str] | None = None,
    ) -> list[TraitRow]:
        return reads.traits(self._read(), pid, start=start, limit=limit, keys=keys)

    @_reads
    def external_ids(self, pid: int) -> list[ExternalIdRow]:
        return reads.external_ids(self._read(), pid)

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
        return reads.events(
            self._read(),
            pid,
            start=start,
            end=end,
            sort=sort,
            after=after,
            limit=limit,
            names=names,
            excluded=excluded,
        )

    @_reads
    def latest_arrival(self, pid: int) -> EventRow | None:
        return reads.latest_arrival(self._read(), pid)

    @_reads
    def links(
        self, pid: int, *, after: int | None = None, limit: int | None = None
    ) -> list[LinkRow]:
        return reads.links(self._read(), pid, after=after, limit=limit)

    @_reads
    def merges(self, pid: int) -> list[MergeRow]:
        return reads.merges(self._read(), pid)

    @_reads
    def violations(self, limit: int = 100, rules: Sequence[str] = ()) -> list[ViolationRow]:
        return reads.violations(self._read(), limit, rules)

    @_reads
    def profile_violations(
        self, pid: int, *, before: int | None = None, limit: int = 100
    ) -> list[ProfileViolationRow]:
        return reads.profile_violations(self._read(), pid, before, limit)

    @_reads
    def shared_values(self, min_profiles: int = 3, limit: int = 100) -> list[SharedValueRow]:
        return reads.shared_values(self._read(), min_profiles, limit)

    @_reads
    def deletions(self) -> list[tuple[int, str, str, str]]:
        return reads.deletions(self._read())

    @_reads
    def history(self, after: int, limit: int) -> list[StoredMessage]:
        return reads.history(self._read(), after, limit)

    def origins(self) -> Iterator[Origin]:
        conn = _connect(self.path, readonly=True)
        try:
            for row in conn.execute(reads.ORIGINS):
                yield Origin(*row)
        finally:
            conn.close()

    def keep_segment_ids(self, kept: list[tuple[Origin, str]]) -> int:
        with self._repairing() as conn:
            graph = self.graph
            profiles, merges, parents = [], [], {}
            for origin, into in kept:
                if reads.profile_ids(conn, origin.segment_id) is not None:
                    continue
                found = reads.profile_ids(conn, into)
                if found is None:
                    continue
                canonical = graph.find(found[0])
                pid = graph.next_pid
                graph.next_pid += 1
                parents[pid] = canonical
                o = origin
                made = (o.first_message_id, o.first_source_id)
                profiles.append((pid, o.segment_id, o.collection, canonical, o.created_at, *made))
                by = (o.first_message_id or "", o.first_source_id or "", o.created_at)
                merges.append((pid, canonical, *by, KEPT_BY_REBUILD))
            self._execute(keep_statements(profiles, merges))
            graph.parent.update(parents)
        return len(profiles)

    # ---- the change feed -----------------------------------------------------------------
    @_reads
    def changes_after(self, position: tuple[int, int], limit: int) -> list[ChangeRow]:
        found = self._read().execute(
            "SELECT id, segment_id, changes, created_at FROM outbox WHERE id > ? ORDER BY id "
            "LIMIT ?",
            (position[1], limit),
        )
        return [ChangeRow((0, i), sid, bytes(c), at) for i, sid, c, at in found]

    @_reads
    def changes_left(self, position: tuple[int, int]) -> int:
        found = self._read().execute("SELECT count(*) FROM outbox WHERE id > ?", (position[1],))
        return int(found.fetchone()[0])

    @_reads
    def feed_position(self, name: str) -> tuple[int, int] | None:
        row = (
            self._read()
            .execute("SELECT xid, id FROM webhook_progress WHERE name = ?", (name,))
            .fetchone()
        )
        return (int(row[0]), int(row[1])) if row else None

    def set_feed_position(self, name: str, position: tuple[int, int]) -> None:
        self._refuse_writes()
        self._execute([(FEED_POSITION, [(name, *position, time.time())])])

    def forget_changes(self, position: tuple[int, int]) -> None:
        self._refuse_writes()
        self._execute([("DELETE FROM outbox WHERE id <= ?", [(position[1],)])])

    def keep_changes(self, rows: list[ChangeRow], positions: dict[str, tuple[int, int]]) -> None:
        with self._repairing():
            steps: list[tuple[str, list[tuple[Any, ...]]]] = [
                (
                    "INSERT INTO outbox (id, segment_id, changes, created_at) VALUES (?, ?, ?, ?)",
                    [(r.position[1], r.segment_id, r.changes, r.created_at) for r in rows],
                ),
                (FEED_POSITION, [(n, *p, time.time()) for n, p in positions.items()]),
            ]
            self._execute([(sql, args) for sql, args in steps if args])

    @contextlib.contextmanager
    def feeding(self, name: str) -> Iterator[bool]:
        yield not self.read_only  # one process writes a SQLite store: its own feed

    def partition(self) -> Iterator[tuple[str, str, str, str]]:
        # A connection of its own: the caller may read other things while it iterates.
        conn = _connect(self.path, readonly=True)
        try:
            yield from conn.execute(reads.PARTITION)
        finally:
            conn.close()

    @_reads
    def stats(self) -> Stats:
        return reads.stats(self._read())

    @_reads
    def import_offsets(self) -> dict[str, int]:
        found = self._read().execute("SELECT name, byte_offset FROM import_progress")
        return {str(name): int(offset) for name, offset in found}

    @_reads
    def import_offset(self, name: str) -> int:
        row = (
            self._read()
            .execute("SELECT byte_offset FROM import_progress WHERE name = ?", (name,))
            .fetchone()
        )
        return int(row[0]) if row else 0

    def healthy(self) -> bool:
        """Reads answer and, on a writing store, the committer runs, the last write did not
        fail (in the last `FAILED_SECONDS`), no write has waited longer than `STALLED_SECONDS`
        and the database file is the one opened."""
        if not self.read_only:
            if not self._committer.running():
                return False
            # A failed write counts for a while only: a load balancer that stops sending
            # traffic on 503 must not keep the store out for ever for want of a success.
            if self._streak and time.monotonic() - self._failed_at < FAILED_SECONDS:
                return False
            if identity(str(self.path)) != self._file:
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

    # ---- the export's reads (`idstitch export`) --------------------------------------------
    @_reads
    def last_seq(self) -> int:
        return reads.last_seq(self._read())

    def graph_updates(self, after: int, upto: int) -> Iterator[GraphUpdate]:
        return self._whole(reads.graph_updates, after, upto)

    def identifier_updates(self, after: int, upto: int) -> Iterator[HeldIdentifier]:
        return self._whole(reads.identifier_updates, after, upto)

    def trait_updates(self, after: int, upto: int) -> Iterator[TraitUpdate]:
        return self._whole(reads.trait_changes, after, upto)

    def profile_members(self) -> Iterator[GraphUpdate]:
        return self._whole(reads.profile_members)

    def held_identifiers(self) -> Iterator[HeldIdentifier]:
        return self._whole(reads.held_identifiers)

    def current_traits(self) -> Iterator[TraitValue]:
        return self._whole(reads.current_traits)

    def _whole(self, read: Callable[..., Iterator[Any]], *args: Any) -> Iterator[Any]:
        """`read` streamed on a connection of its own (the caller may read other things while
        it iterates), its failures as StorageError."""
        conn = _connect(self.path)
        try:
            reads.attach_index(conn, self.index)
            yield from read(conn, *args)
        except sqlite3.Error as err:
            raise StorageError(f"reading the SQLite store at {self.path} failed: {err}") from None
        finally:
            conn.close()
