"""The engine: validated messages in, resolved and durably stored profiles out.

One writer thread owns resolution. Callers submit prepared messages; the writer takes
everything queued (up to `max_batch` messages), resolves each message in arrival order
against the store's graph snapshot, persists the batch in one transaction and only then
completes the callers' futures: that is group commit, and an acknowledged message is on disk.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec

from idstitch import checks, explain, profiles, repair
from idstitch import config as config_module
from idstitch.config import Settings
from idstitch.core.identifiers import Extracted, Extractor
from idstitch.core.ksuid import segment_id_for as new_segment_id
from idstitch.core.messages import (
    EARLIEST,
    LATEST,
    MAX_MESSAGE_BYTES,
    Prepared,
    encode,
    format_time,
    prepare,
)
from idstitch.core.plan import Plan, Violation
from idstitch.core.planner import keys_of, resolve_messages
from idstitch.errors import (
    IdstitchError,
    InvalidArgument,
    InvalidMessage,
    Overloaded,
    StorageError,
)
from idstitch.metrics import Metrics
from idstitch.reads import ProfileReads
from idstitch.storage import Store, open_store
from idstitch.storage.base import IndexLag, SortOrder, Transaction
from idstitch.store_rules import rules_drift

if TYPE_CHECKING:
    from idstitch.webhooks import Dispatcher

Item = tuple[Prepared, Extracted]


def _check_limit(limit: object) -> int:
    """A read limit: a whole number from 1 up. The Python API sets no upper bound (a script
    may read a whole history on purpose); the Profile API pages at most 100."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidArgument(f"limit {limit!r} is not allowed; pass a whole number from 1 up.")
    return min(limit, 1 << 62)  # what a SQL LIMIT takes


def _check_sort(sort: object) -> SortOrder:
    if sort == "asc":
        return "asc"
    if sort == "desc":
        return "desc"
    raise InvalidArgument(f'sort {sort!r} is not allowed; pass "asc" or "desc".')


def _check_source(source: object) -> str:
    problem = checks.source_id_problem(source)
    if problem is None and isinstance(source, str):
        return source
    raise InvalidMessage(
        f"source {source!r:.60} is not a source id: it {problem}; pass a non-empty string "
        'of printable characters such as "api".',
        "invalid_source",
    )


def _check_received_at(received_at: object) -> float | None:
    if received_at is None:
        return None
    if (
        isinstance(received_at, bool)
        or not isinstance(received_at, int | float)
        or not EARLIEST <= received_at <= LATEST
    ):
        raise InvalidArgument(
            f"received_at {received_at!r:.60} is not allowed; pass Unix seconds (a number "
            "between years 1 and 9999), or leave it out for now."
        )
    return float(received_at)


class Resolution(msgspec.Struct, frozen=True):
    """What happened to one message."""

    message_id: str
    outcome: str  # created | attached | merged | unresolved | duplicate
    segment_id: str | None = None
    account_segment_id: str | None = None
    merged: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    violations: tuple[Violation, ...] = ()
    reason: str | None = None

    @classmethod
    def of(cls, plan: Plan) -> Resolution:
        users, accounts = plan.users, plan.accounts
        merged: list[str] = []
        added: list[str] = []
        for side in (users, accounts):
            if side is not None:
                merged.extend(s for _, s in side.merged)
                added.extend(f"{t}:{v}" for t, v in side.added)
        return cls(
            message_id=plan.message_id,
            outcome=plan.outcome,
            segment_id=users.segment_id if users is not None else None,
            account_segment_id=accounts.segment_id if accounts is not None else None,
            merged=tuple(merged),
            added=tuple(added),
            violations=tuple(plan.all_violations()),
            reason=users.reason if users is not None and users.outcome == "unresolved" else None,
        )


class Ticket:
    """One submission: its future, and the times the benchmarks read."""

    __slots__ = ("arrived", "committed", "future", "items", "progress", "resolved", "source_id")

    def __init__(self, source_id: str, items: list[Item], progress: tuple[str, int] | None = None):
        self.source_id = source_id
        self.items = items
        self.progress = progress  # an import's position after these items
        self.future: Future[list[Plan]] = Future()
        self.arrived = time.perf_counter()
        self.resolved = 0.0
        self.committed = 0.0


class Engine:
    def __init__(
        self,
        settings: Settings,
        store: Store | None = None,
        *,
        max_batch: int = 1000,
        max_pending: int = 200_000,
        tune_gc: bool = False,
        webhooks: bool = True,
    ):
        settings = config_module.check(settings)  # raises ConfigError, before the store opens
        self.settings = settings
        self.rules = settings.rules
        self.extractor = Extractor(settings.rules)
        self.store = (
            store
            if store is not None
            else open_store(settings.storage_url, stall_seconds=settings.stall_seconds)
        )
        self.metrics = Metrics()
        self.reads = ProfileReads(self.store)  # the HTTP layer's way to the store's reads
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._queue: deque[Ticket] = deque()
        self._pending = 0
        self._cond = threading.Condition()
        self._closing = False
        self._closed = False
        if tune_gc:
            # Process-wide settings, so only for the processes idstitch owns (`serve`,
            # `import`), never a host application's by default.
            # The graph is long-lived: keep the cyclic GC off it and make collections rare,
            # which removes the millisecond pauses from the latency tail.
            gc.collect()
            gc.freeze()
            gc.set_threshold(50_000, 50, 100)
            # A message crosses threads (request -> writer -> acknowledgement): a woken thread
            # waits for the GIL up to the switch interval, 5 ms by default, which is the
            # latency tail. Side by side in one run, 0.5 ms gave /v1/track a P95 of 1.64 ms
            # (1.86 at 5 ms) with the same /v1/batch throughput.
            sys.setswitchinterval(0.0005)
        self._writer = threading.Thread(target=self._run, name="idstitch-writer", daemon=True)
        self._writer.start()
        # The change feed: written with every batch while webhooks are configured; sent from
        # here unless `webhooks=False` (a short command leaves that to the service).
        self.dispatcher: Dispatcher | None = None
        if settings.webhooks:
            self.store.feed_changes = True
            if webhooks:
                from idstitch.webhooks import Dispatcher  # httpx, only when needed

                self.dispatcher = Dispatcher(self.store, settings.webhooks)
                self.dispatcher.start()

    # ---- preparing and submitting ----------------------------------------------------------
    def prepare(
        self,
        message: bytes | str | dict[str, Any],
        *,
        type_: str | None = None,
        received_at: float | None = None,
        sent_at: float | None = None,  # a batch's sentAt, in Unix seconds
        keep_received_at: bool = False,
        fallback_id: Callable[[], str] | None = None,
        max_bytes: int | None = MAX_MESSAGE_BYTES,
    ) -> Item:
        """Validate one message (raises InvalidMessage) and extract its identifiers."""
        if isinstance(message, dict | str):
            try:
                raw = encode(message) if isinstance(message, dict) else message.encode()
            except (TypeError, ValueError, RecursionError) as err:
                # a value JSON has no form for, a lone surrogate, or nesting past the limit
                raise InvalidMessage(
                    f"the message cannot be encoded as JSON ({type(err).__name__}: "
                    f"{str(err)[:200]}); pass only JSON values: dicts, lists, strings, "
                    "numbers, booleans and None.",
                    "invalid_message",
                ) from None
        elif isinstance(message, bytes | bytearray | memoryview):
            raw = bytes(message)
        else:
            raise InvalidMessage(
                f"a message must be a dict or JSON bytes, not {type(message).__name__}."
            )
        prepared = prepare(
            raw,
            type_=type_,
            received_at=time.time() if received_at is None else received_at,
            sent_at=sent_at,
            keep_received_at=keep_received_at,
            fallback_id=fallback_id,
            max_bytes=max_bytes,
        )
        return prepared, self.extractor.extract(prepared.message, prepared.type)

    def submit(
        self, items: list[Item], source: str, progress: tuple[str, int] | None = None
    ) -> Ticket:
        """Queue prepared messages; the ticket's future completes once they are on disk.
        `progress` (an import's file and position after these messages) is stored in the
        same transaction as they are."""
        ticket = Ticket(source, items, progress)
        with self._cond:
            if self._closing:
                raise StorageError("the engine is closed; open a new one.")
            if self._pending + len(items) > self.max_pending and self._pending:
                raise Overloaded(
                    f"{self._pending} messages are waiting to be written; retry shortly."
                )
            self._queue.append(ticket)
            self._pending += len(items)
            self._cond.notify()
        return ticket

    def ingest(
        self,
        message: bytes | str | dict[str, Any],
        *,
        source: str = "api",
        received_at: float | None = None,
    ) -> Resolution:
        """Resolve and durably store one message. `source` is the id the message is stored
        under (a non-empty string; identity rules per source key on it)."""
        return self.ingest_batch([message], source=source, received_at=received_at)[0]

    def ingest_batch(
        self,
        messages: Iterable[bytes | str | dict[str, Any]],
        *,
        source: str = "api",
        received_at: float | None = None,
        keep_received_at: bool = False,
    ) -> list[Resolution]:
        """Validate every message first (nothing is applied if one is invalid), then resolve
        them in order and return once all are durably stored.

        `messages` is a list (or other iterable) of messages; one message, a dict, str or
        bytes, is refused with InvalidMessage: pass `[message]` or use `ingest`."""
        _check_source(source)
        received_at = _check_received_at(received_at)
        if isinstance(messages, dict | str | bytes | bytearray | memoryview):
            raise InvalidMessage(
                f"ingest_batch takes a list of messages, not one {type(messages).__name__}; "
                "pass [message], or use ingest(message) for one message.",
                "invalid_batch",
            )
        try:
            iterator = iter(messages)
        except TypeError:
            raise InvalidMessage(
                f"ingest_batch takes a list of messages, not {messages!r} "
                f"({type(messages).__name__}); pass a list of dicts or JSON strings.",
                "invalid_batch",
            ) from None
        items = []
        for index, message in enumerate(iterator):
            try:
                items.append(
                    self.prepare(
                        message, received_at=received_at, keep_received_at=keep_received_at
                    )
                )
            except InvalidMessage as err:
                raise err.at_index(index) from None
        if not items:
            return []
        plans = self.submit(items, source).future.result()
        return [Resolution.of(p) for p in plans]

    # ---- the writer -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                tickets: list[Ticket] = []
                count = 0
                while self._queue and (
                    not tickets or count + len(self._queue[0].items) <= self.max_batch
                ):
                    ticket = self._queue.popleft()
                    tickets.append(ticket)
                    count += len(ticket.items)
                self._pending -= count
            self._write(tickets)

    def _write(self, tickets: list[Ticket]) -> None:
        started = time.perf_counter()
        keys: list[str] = []
        if self.store.needs_keys:
            for ticket in tickets:
                for _, extracted in ticket.items:
                    keys.extend(keys_of(extracted))
        rules = self.rules
        results: list[list[Plan]] = []
        fresh: list[Plan] = []
        # Each import file's position after the last of its tickets in this batch.
        progress = dict(t.progress for t in tickets if t.progress is not None)

        def resolve(tx: Transaction) -> None:
            # A store may run this again on a fresh transaction after a conflict with
            # another writer: start from nothing each time.
            results.clear()
            fresh.clear()
            graph = tx.graph
            by_source: dict[str, list[str]] = {}
            for ticket in tickets:
                by_source.setdefault(ticket.source_id, []).extend(
                    p.message_id for p, _ in ticket.items
                )
            seen = {sid: tx.seen(sid, mids) for sid, mids in by_source.items()}
            for ticket in tickets:
                sid = ticket.source_id
                plans = resolve_messages(ticket.items, sid, graph, rules, seen[sid], new_segment_id)
                fresh.extend(p for p in plans if not p.duplicate)
                ticket.resolved = time.perf_counter()
                results.append(plans)
            tx.apply(fresh)
            for name, offset in progress.items():
                tx.record_progress(name, offset)

        try:
            durable = self.store.write(keys, resolve)
        except Exception as err:
            self._fail(tickets, err)
            return

        def settle(future: Future[None]) -> None:
            error = future.exception()
            if error is not None:
                self._fail(tickets, error)
            else:
                self._acknowledge(tickets, results, fresh, started)

        durable.add_done_callback(settle)

    def _fail(self, tickets: list[Ticket], err: BaseException) -> None:
        failure = (
            err
            if isinstance(err, IdstitchError)
            else StorageError(f"the batch could not be stored: {err}")
        )
        for ticket in tickets:
            if not ticket.future.done():  # a caller may have cancelled its future
                ticket.future.set_exception(failure)

    def _acknowledge(
        self, tickets: list[Ticket], results: list[list[Plan]], fresh: list[Plan], started: float
    ) -> None:
        done = time.perf_counter()
        self._count(fresh, sum(len(r) for r in results), done - started)
        for ticket, plans in zip(tickets, results, strict=True):
            ticket.committed = done
            if not ticket.future.done():
                ticket.future.set_result(plans)

    def _count(self, fresh: Sequence[Plan], total: int, seconds: float) -> None:
        m = self.metrics
        with m.lock:
            m.commits += 1
            m.events += total
            m.duplicates += total - len(fresh)
            m.commit_seconds.observe(seconds)
            m.batch_sizes.observe(total)
            for plan in fresh:
                for side in (plan.users, plan.accounts):
                    if side is None:
                        continue
                    if side.created:
                        m.created += 1
                    m.merges += len(side.merged)
                if plan.outcome == "unresolved":
                    m.unresolved += 1
                for v in plan.all_violations():
                    m.violations[v.rule] += 1

    # ---- reading profiles -----------------------------------------------------------------
    def profile(self, ref: str) -> dict[str, Any]:
        """The whole profile for `type:value` or a segment_id (raises ProfileNotFound)."""
        return profiles.document(self._reading(), ref)

    def traits(self, ref: str, *, verbose: bool = False) -> dict[str, Any]:
        store = self._reading()
        return profiles.traits(store, profiles.find(store, ref), verbose)

    def external_ids(self, ref: str) -> list[dict[str, Any]]:
        store = self._reading()
        return profiles.external_ids(store, profiles.find(store, ref))

    def events(
        self, ref: str, *, limit: int = 100, sort: SortOrder = "desc"
    ) -> list[dict[str, Any]]:
        """The profile's events, newest first (`sort="asc"`: oldest first). `limit` is a whole
        number from 1 up; anything else raises InvalidArgument."""
        limit, sort = _check_limit(limit), _check_sort(sort)
        store = self._reading()
        row = profiles.find(store, ref)
        return [profiles.event(e) for e in profiles.events(store, row, sort=sort, limit=limit)]

    def links(self, ref: str) -> list[dict[str, Any]]:
        store = self._reading()
        return profiles.links(store, profiles.find(store, ref))

    def metadata(self, ref: str) -> dict[str, Any]:
        store = self._reading()
        return profiles.metadata(store, profiles.find(store, ref))

    def merges(self, ref: str) -> list[dict[str, Any]]:
        """The merge log of a profile: which profiles merged in, on which message, when."""
        store = self._reading()
        row = profiles.find(store, ref)
        return [profiles.merge(m) for m in store.merges(row.pid)]

    def violations(self, limit: int = 100, rules: Sequence[str] = ()) -> list[dict[str, Any]]:
        """The newest refusals: which identifier was dropped, by which rule, on which message;
        only those of `rules` when it names some. `limit` is a whole number from 1 up;
        anything else raises InvalidArgument."""
        limit = _check_limit(limit)
        if isinstance(rules, str) or not all(isinstance(r, str) for r in rules):
            raise InvalidArgument(f"rules must be a list of rule names, not {rules!r:.80}.")
        return [profiles.violation(v) for v in self._reading().violations(limit, tuple(rules))]

    def refusals(self, ref: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """The refusals that involve a profile, newest first: those of its own messages and
        those that would have joined it (`other_segment_id` names the other profile)."""
        limit = _check_limit(limit)
        self._reading()
        row = self.reads.find(ref)
        return [explain.refusal(f, row) for f in explain.refusals(self.reads, row, limit)]

    def explain(self, ref: str, other: str) -> dict[str, Any]:
        """Whether two references are one profile: `together`, the shortest chain of messages
        that joined them (`path`), or the refusals that kept their profiles apart."""
        self._reading()
        return explain.explain(self.reads, ref, other)

    # ---- repairs --------------------------------------------------------------------------
    def delete_identifier(
        self, user: str, type_: str, value: str, *, actor: str = "library"
    ) -> dict[str, Any]:
        """Delete one identifier from the known user `user` (`user_id:...`), as Segment's
        Delete Profile Identifier API: lookups by it no longer find the profile, a later
        message carrying it resolves afresh; traits, events and merge history stay. Raises
        RepairRefused (a group_id, the user_id the profile is addressed by), ProfileNotFound,
        IdentifierNotFound."""
        return self.delete_external_ids(user, [{"type": type_, "id": value}], actor=actor)

    def delete_external_ids(
        self, user: str, items: Any, *, actor: str = "library"
    ) -> dict[str, Any]:
        """`delete_identifier` as Segment's API takes it: `items` is the request's
        `delete_external_ids`, a list of exactly one {"type", "id"}."""
        self._reading()
        return repair.delete_identifier(self.store, self.reads, user, items, actor)

    def unmerge(
        self,
        ref: str,
        identifier: str | dict[str, Any],
        *,
        actor: str = "library",
        collection: str | None = None,
    ) -> dict[str, Any]:
        """Split the profile `ref` by `identifier` (`type:value`, or {"type", "id"}), junk for
        it: its messages are resolved again under the current rules with the identifier
        blocked, and the identifier goes on the stored block list. Returns the parts."""
        self._reading()
        return repair.unmerge(
            self.store, self.reads, self.rules, ref, identifier, actor, collection
        )

    def blocked_identifiers(self) -> list[dict[str, Any]]:
        """The stored block list: identifiers unmerges named junk, which link nothing."""
        return [
            {
                "collection": b.collection,
                "type": b.type,
                "id": b.value,
                "unmerged_from": b.segment_id,
                "actor": b.actor,
                "created_at": format_time(b.created_at),
            }
            for b in self._reading().blocked_identifiers()
        ]

    # ---- operations -----------------------------------------------------------------------
    def healthy(self) -> bool:
        """The store answers and can take writes (what /healthz reports)."""
        return self.store.healthy()

    def index_lag(self) -> IndexLag:
        """How far the store's derived state trails the acknowledged messages."""
        return self.store.index_lag()

    def rules_drift(self) -> str | None:
        """A sentence when the config's identity rules are not the ones the store was last
        rebuilt under (`idstitch rebuild`), or None."""
        return rules_drift(self._reading(), self.rules)

    def webhook_feeds(self) -> list[dict[str, Any]]:
        """Each configured receiver: its name, host, how many feed rows wait for it, and
        (delivered, failed, last_success) as this process counted its deliveries."""
        store = self._reading()
        out = []
        for hook in self.settings.webhooks:
            position = store.feed_position(hook.name) or (0, 0)
            feed = (
                next((f for f in self.dispatcher.feeds if f.name == hook.name), None)
                if self.dispatcher is not None
                else None
            )
            parts = urlsplit(hook.url)
            out.append(
                {
                    "name": hook.name,
                    "host": f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}",
                    "backlog": store.changes_left(position),
                    "delivered": feed.stats.delivered if feed else 0,
                    "failed": feed.stats.failed if feed else 0,
                    "last_success": feed.stats.last_success if feed else 0.0,
                }
            )
        return out

    @property
    def storage_url(self) -> str:
        return self.store.url

    def _reading(self) -> Store:
        if self._closed:
            raise StorageError("the engine is closed; open a new one.")
        return self.store

    # ---- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        """Finish every queued message, then close the store."""
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._cond.notify_all()
        self._writer.join()
        if self.dispatcher is not None:
            self.dispatcher.close()
        self.store.close()
        self._closed = True

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open(config: str | Settings | None = None, **options: Any) -> Engine:
    """Open an engine from a Settings, a TOML path, a storage URL, or ./idstitch-data/.
    Every one is validated first: a bad setting raises ConfigError here, not at ingest."""
    return Engine(config_module.resolve(config), **options)
