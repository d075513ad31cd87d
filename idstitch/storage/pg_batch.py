"""One PostgreSQL write transaction: lock what a micro-batch touches, load it, write its plans.

Several workers (processes, hosts) write to one database. Each batch runs in one transaction:

1. A shared advisory lock on the store. A batch that keeps losing races takes it exclusively
   and then runs alone (see `PostgresStore.run_batch`).
2. Transaction advisory locks on the 64-bit hash of every identifier key of the batch, in
   ascending order. Keys that do not exist yet are locked too: two writers never create the
   same identifier, and nobody attaches one of our keys while we hold it.
3. Read the owners of those keys, then lock their canonical profiles (advisory, ascending),
   then re-read those profiles. One that another worker merged away in between is followed to
   its canonical. A new canonical that sorts above every profile lock held is waited for;
   one below is only tried, and a failed try restarts the batch (`Conflict`): waiting there
   could close a cycle.
4. Load the full state of every canonical profile found into a fresh Graph; the engine
   resolves against it; `apply` writes the plans with COPY and set-based SQL.

Every change to a profile happens under the locks of its keys and of every profile it reads,
so batches that share a connected component run one after the other, and event `seq` values,
drawn after the locks, record that order. Locks are always taken in one global order (store,
then keys, then profiles, each ascending); only try-locks break it, and they never wait.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from idstitch.core.graph import Graph, ProfileState
from idstitch.core.identifiers import slot_of
from idstitch.core.plan import Plan
from idstitch.errors import StorageError
from idstitch.storage.base import Transaction
from idstitch.storage.pg_write import Statement, json, write_plans
from idstitch.storage.rows import stable_hash


class Conflict(Exception):
    """Another writer merged a profile this batch needs, in a way that forbids waiting."""


def int32(number: int) -> int:
    """`number` wrapped to a signed 32-bit integer (the two-key advisory lock form)."""
    number &= 0xFFFFFFFF
    return number - (1 << 32) if number >= 1 << 31 else number


class LockIds:
    """Advisory lock ids of one store. They include the schema, so stores in other schemas of
    the same database never wait for each other. Keys use the one-bigint form, profiles and
    the store lock the two-int form: PostgreSQL keeps the two spaces apart."""

    def __init__(self, schema: str):
        self.schema = schema
        self.prefix = schema + "\x1f"  # keys hash as hashtextextended(prefix || key, 0)
        self.store = int32(stable_hash(schema + "\x1fstore"))
        self.profiles = int32(stable_hash(schema + "\x1fprofiles"))


class BatchGraph(Graph):
    """A graph whose new profiles take ids reserved from the database sequence, so the plans
    carry real row ids. Every new profile owns at least one key that had no owner, so one id
    per such key is always enough."""

    __slots__ = ("reserved",)

    def __init__(self) -> None:
        super().__init__()
        self.reserved: list[int] = []  # descending: pop() hands out the smallest

    def create(self, segment_id: str, created_at: float, pid: int | None = None) -> ProfileState:
        if pid is None:
            if not self.reserved:
                raise StorageError(
                    "a batch created more profiles than it had new identifier keys; the "
                    "engine must pass every key it resolves to the store."
                )
            pid = self.reserved.pop()
        return super().create(segment_id, created_at, pid)


_KEYS = "json_array_elements_text(%s::json)"
# Keys are hashed by the server (hashtextextended is stable across versions: hash partitioning
# relies on it) and locked in ascending order.
_LOCK_KEYS = (
    "SELECT count(pg_advisory_xact_lock(h)) FROM (SELECT DISTINCT hashtextextended(%s || k, 0) "
    f"AS h FROM {_KEYS} AS t(k) ORDER BY 1) AS s"
)
_LOCK_PROFILES = (
    f"SELECT count(pg_advisory_xact_lock(%s::int, l::int)) FROM {_KEYS} WITH ORDINALITY AS t(l, n)"
)
_TRY_PROFILES = (
    "SELECT bool_and(pg_try_advisory_xact_lock(%s::int, l::int)) "
    f"FROM {_KEYS} WITH ORDINALITY AS t(l, n)"
)
# Lookups go through LATERAL ... LIMIT 1, which the planner cannot turn into a hash join: one
# index probe per key, whatever the table statistics say (a young table's would otherwise
# choose a full scan per batch). A key is `u|a` + type + US + value (`core.identifiers`).
_IS_KEY = (
    "collection = CASE left(t.k, 1) WHEN 'a' THEN 'accounts' ELSE 'users' END "
    "AND type = substr(t.k, 2, strpos(t.k, chr(31)) - 2) "
    "AND identifier_digest(value) = identifier_digest(substr(t.k, strpos(t.k, chr(31)) + 1)) "
    "AND value = substr(t.k, strpos(t.k, chr(31)) + 1)"
)
OWNERS = (
    f"SELECT t.n, i.profile_id, p.canonical_id FROM {_KEYS} WITH ORDINALITY AS t(k, n) "
    f"CROSS JOIN LATERAL (SELECT profile_id FROM identifiers WHERE {_IS_KEY} LIMIT 1) AS i "
    "JOIN profiles p ON p.id = i.profile_id"
)
# The idstitch preset's conflicts of the batch's keys (`Graph.conflicts`).
_CONFLICTS = (
    f"SELECT t.n, v.detail FROM {_KEYS} WITH ORDINALITY AS t(k, n) "
    f"CROSS JOIN LATERAL (SELECT detail FROM violations WHERE rule = 'conflict' AND {_IS_KEY}) "
    "AS v"
)
# The batch's keys on the stored block list (`Graph.blocked`): one probe per key, and none
# at all while the list is empty (the EXISTS runs once, first).
_BLOCKED = (
    f"SELECT t.n FROM {_KEYS} WITH ORDINALITY AS t(k, n) "
    "WHERE EXISTS (SELECT 1 FROM blocked_identifiers) "
    f"AND EXISTS (SELECT 1 FROM blocked_identifiers WHERE {_IS_KEY})"
)
_PROFILES = (
    "SELECT id, canonical_id, segment_id, created_at, merges FROM profiles "
    "WHERE id = ANY(%b::bigint[])"
)
# One index range per member (`OFFSET 0` keeps the join from being flattened into a hash of
# the whole identifiers table, the plan chosen for a table without statistics).
_STAMPS = (
    "SELECT m.canonical_id, i.type, i.created_at FROM profiles m CROSS JOIN LATERAL "
    "(SELECT type, created_at FROM identifiers WHERE profile_id = m.id OFFSET 0) AS i "
    "WHERE m.canonical_id = ANY(%b::bigint[])"
)
_RESERVE = "SELECT nextval('profile_id_seq') FROM generate_series(1, %s)"
_PROGRESS = (
    "INSERT INTO import_progress (name, byte_offset, updated_at) VALUES (%s, %s, %s) "
    "ON CONFLICT (name) DO UPDATE SET byte_offset = excluded.byte_offset, "
    "updated_at = excluded.updated_at"
)
# Both in one statement: the ids already stored (second column null), then new event numbers.
_SEEN_AND_SEQS = (
    f"SELECT m.id, NULL::bigint FROM {_KEYS} AS m(id) CROSS JOIN LATERAL (SELECT 1 FROM events "
    "WHERE source_id = %s AND message_id = m.id LIMIT 1) AS e "
    "UNION ALL SELECT NULL, nextval('event_seq') FROM generate_series(1, %s)"
)


def _json_list(values: list[Any]) -> str:
    return json.encode(values).decode()


class PostgresTransaction(Transaction):
    """A batch costs up to seven round trips whatever its size: locks and owners; profiles
    and their state; new profile ids; seen messages with event numbers; COPY of the events,
    two; the other writes with the COMMIT. What comes right before the resolver's work is
    sent plain, not pipelined (see `seen`)."""

    def __init__(
        self, conn: psycopg.Connection[Any], locks: LockIds, keys: list[str], exclusive: bool
    ):
        self.conn = conn
        self.locks = locks
        self.keys = keys  # distinct
        self.exclusive = exclusive
        self.batch_graph = BatchGraph()
        self.graph = self.batch_graph
        self.seqs: list[int] = []  # event numbers reserved by `seen`
        self._held: set[int] = set()  # profile lock ids
        self._writes: list[Statement] = []

    # ---- locking and loading ---------------------------------------------------------------
    def open(self) -> None:
        conn = self.conn
        graph = self.graph
        owners, parent = graph.owners, graph.parent
        keys = self.keys
        sent = _json_list(keys)
        with conn.pipeline():
            # Each statement must see what committed while we waited for a lock, whatever the
            # server default: read committed, explicitly.
            conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
            if self.exclusive:
                conn.execute("SELECT pg_advisory_xact_lock(%s::int, 0)", (self.locks.store,))
            else:
                conn.execute("SELECT pg_advisory_xact_lock_shared(%s::int, 0)", (self.locks.store,))
                if keys:
                    conn.execute(_LOCK_KEYS, (self.locks.prefix, sent))
            found = conn.execute(OWNERS, (sent,)) if keys else None
            conflicts = conn.execute(_CONFLICTS, (sent,)) if keys else None
            blocked = conn.execute(_BLOCKED, (sent,)) if keys else None
        for n, detail in conflicts or ():
            graph.add_conflict(slot_of(keys[n - 1]), detail)
        graph.blocked.update(slot_of(keys[n - 1]) for (n,) in blocked or ())
        canonicals: set[int] = set()
        for n, pid, canonical in found or ():
            owners[slot_of(keys[n - 1])] = pid
            if pid != canonical:
                parent[pid] = canonical
            canonicals.add(canonical)
        absent = len(keys) - len(owners)  # keys are distinct, and so are their slots
        if canonicals:
            with conn.pipeline():
                self._load_profiles(canonicals)
        if absent:  # plain, as in `seen`: PostgreSQL's idle-in-transaction timeout stays armed
            reserved = conn.execute(_RESERVE, (absent,)).fetchall()
            self.batch_graph.reserved = sorted((r[0] for r in reserved), reverse=True)

    def _load_profiles(self, pending: set[int]) -> None:
        """Lock the canonical profiles, follow any that were merged away, load their state."""
        graph = self.graph
        profiles = graph.profiles
        conn = self.conn
        while pending:
            if not self.exclusive:
                self._lock_profiles(pending)
            ids = sorted(pending)
            found = conn.execute(_PROFILES, (ids,))
            stamps = conn.execute(_STAMPS, (ids,))
            moved: set[int] = set()
            for pid, canonical, segment_id, created_at, merges in found:
                if pid == canonical:
                    profiles[pid] = ProfileState.new(pid, segment_id, created_at, merges)
                else:  # merged away after we read its owner: follow the pointer
                    graph.parent[pid] = canonical
                    moved.add(canonical)
            # Only rows of current canonicals can match: a merge repoints all members at once.
            for canonical, type_, created_at in stamps:
                profiles[canonical].add(type_, created_at)
            pending = moved - profiles.keys()

    def _lock_profiles(self, pids: set[int]) -> None:
        wanted = sorted({int32(p) for p in pids} - self._held)
        if not wanted:
            return
        top = max(self._held, default=None)
        below = [w for w in wanted if top is not None and w < top]
        above = [w for w in wanted if top is None or w > top]
        if below:
            row = self.conn.execute(
                _TRY_PROFILES, (self.locks.profiles, _json_list(below))
            ).fetchone()
            if row is None or not row[0]:
                raise Conflict(f"{len(below)} merged profile(s) are locked by another writer")
        if above:
            self.conn.execute(_LOCK_PROFILES, (self.locks.profiles, _json_list(above)))
        self._held.update(wanted)

    # ---- the Transaction interface ---------------------------------------------------------
    def seen(self, source_id: str, message_ids: list[str]) -> set[str]:
        if not message_ids:
            return set()
        # Reserve the event numbers now, after the locks, so that a batch that waited for
        # another one numbers its events after it. One plain statement, not a pipeline, on
        # purpose: the resolver's work follows, and PostgreSQL arms
        # idle_in_transaction_session_timeout after a plain exchange but not after a
        # pipeline, so a writer frozen here would hold its locks for ever.
        rows = self.conn.execute(
            _SEEN_AND_SEQS, (_json_list(message_ids), source_id, len(message_ids))
        ).fetchall()
        result = {mid for mid, seq in rows if seq is None}
        self.seqs = sorted([*self.seqs, *(seq for _, seq in rows if seq is not None)])
        return result

    def apply(self, plans: list[Plan]) -> None:
        self._writes.extend(write_plans(self.conn, plans, self.graph, self.seqs, self.changes))
        self.seqs = []

    def record_progress(self, name: str, offset: int) -> None:
        self._writes.append((_PROGRESS, (name, offset, time.time())))

    # ---- ending ----------------------------------------------------------------------------
    def commit(self) -> None:
        """Send the queued writes and the COMMIT together; returns once it is durable."""
        conn = self.conn
        with conn.pipeline():
            for sql, params in self._writes:
                conn.execute(sql, params)
            conn.execute("COMMIT")

    def abort(self) -> None:
        """Roll back whatever is open; a broken connection is left to the pool to discard."""
        conn = self.conn
        if conn.closed or conn.info.transaction_status == TransactionStatus.IDLE:
            return
        with contextlib.suppress(psycopg.Error):
            conn.execute("ROLLBACK")
