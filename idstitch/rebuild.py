"""Resolving the stored history again under other rules: what that would change
(`idstitch rebuild --dry-run`), and doing it (`idstitch rebuild`).

Every message is kept, in arrival order, so the history can be resolved again with the pure
core, the way `core.split` resolves one profile's messages: the same planner, the rules of
another config, the stored block list from the start, each deleted identifier deleted again
where that happened. A profile made by the same message that made one before gets the same
segment_id (segment_ids are derived from the message), so the two partitions compare
profile by profile, and every old segment_id still resolves afterwards.

The dry run resolves in memory and writes nothing. The real run sends the same messages
through the ordinary write path into a store built beside the old one (`storage.swap`),
then swaps it in: a crash before the swap leaves the old graph serving.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import msgspec

from idstitch.config import Settings
from idstitch.core.graph import Graph
from idstitch.core.identifiers import ACCOUNTS, USERS, Extractor, key_of, slot_of
from idstitch.core.ksuid import segment_id_for
from idstitch.core.messages import Prepared, decode_message
from idstitch.core.plan import Plan
from idstitch.core.planner import apply_plan, plan_message
from idstitch.core.rules import IdentityRules
from idstitch.core.split import StoredMessage
from idstitch.errors import StorageError
from idstitch.storage.base import Origin, Store
from idstitch.storage.rewrite import Operation
from idstitch.store_rules import fingerprint, rules_record

Ident = tuple[str, str, str]  # (collection, type, value)
# Messages read from the store at a time, and the changes a report lists.
PAGE = 5_000
LARGEST = 20
SHOWN_IDENTIFIERS = 20


def replay(store: Store, rules: IdentityRules) -> tuple[dict[Ident, str], int]:
    """Every identifier the history attaches under `rules` -> the segment_id of its profile,
    and the number of messages resolved."""
    graph = Graph()
    graph.blocked.update(
        slot_of(key_of(b.collection, b.type, b.value)) for b in store.blocked_identifiers()
    )
    extractor = Extractor(rules)
    attached: dict[int, Ident] = {}
    # Identifiers deleted from their profiles, deleted again where that happened.
    pending = sorted(store.deletions())
    after, count = 0, 0
    while True:
        page = store.history(after, PAGE)
        for m in page:
            while pending and pending[0][0] < m.seq:
                _, collection, type_, value = pending.pop(0)
                graph.detach(slot_of(key_of(collection, type_, value)), type_)
            message = decode_message(m.body)
            prepared = Prepared(message, m.type, m.message_id, m.timestamp, m.received_at, m.body)
            extracted = extractor.extract(message, m.type)
            plan = plan_message(prepared, extracted, graph, rules, m.source_id, segment_id_for)
            apply_plan(graph, plan)
            for side, collection in ((plan.users, USERS), (plan.accounts, ACCOUNTS)):
                for type_, value in side.added if side is not None else ():
                    attached[slot_of(key_of(collection, type_, value))] = (collection, type_, value)
        count += len(page)
        if len(page) < PAGE:
            break
        after = page[-1].seq
    for _, collection, type_, value in pending:
        graph.detach(slot_of(key_of(collection, type_, value)), type_)
    out: dict[Ident, str] = {}
    for slot, ident in attached.items():
        state = graph.owner(slot)
        if state is not None:
            out[ident] = state.segment_id
    return out, count


def _groups(partition: dict[Ident, str]) -> dict[str, set[Ident]]:
    groups: dict[str, set[Ident]] = {}
    for ident, segment_id in partition.items():
        groups.setdefault(segment_id, set()).add(ident)
    return groups


def _shown(ids: set[Ident]) -> list[str]:
    return [f"{t}:{v}" for _, t, v in sorted(ids)[:SHOWN_IDENTIFIERS]]


def report(store: Store, rules: IdentityRules) -> dict[str, Any]:
    """What resolving the history again under `rules` would change (see `compare`)."""
    started = time.perf_counter()
    before: dict[Ident, str] = {(c, t, v): sid for c, t, v, sid in store.partition()}
    after, messages = replay(store, rules)
    answer = compare(before, after)
    answer["messages"] = messages
    answer["seconds"] = round(time.perf_counter() - started, 3)
    return answer


def compare(before: dict[Ident, str], after: dict[Ident, str]) -> dict[str, Any]:
    """Two partitions of identifiers into profiles (segment_ids), before and after: profiles
    before and after; how many of the profiles before stay the same, split (their
    identifiers end in several profiles, or some in none) or only gain or lose identifiers
    (`changed`), and how many profiles after merge identifiers of several profiles before;
    and the largest changes, by identifiers moved."""
    old, new = _groups(before), _groups(after)
    unchanged = split = changed = 0
    changes: list[dict[str, Any]] = []
    for segment_id, ids in old.items():
        targets = Counter(after.get(i) for i in ids)
        only = next(iter(targets))
        if len(targets) == 1 and only is not None and new[only] == ids:
            unchanged += 1
            continue
        if len(targets) == 1 and only is not None:
            changed += 1  # the same profile, with identifiers gained or lost
            continue
        split += 1
        kept, _ = targets.most_common(1)[0]
        moved = {i for i in ids if after.get(i) != kept}
        changes.append(
            {
                "kind": "split",
                "before": [segment_id],
                "after": sorted(t for t in targets if t is not None),
                "unattached": sum(1 for i in ids if i not in after),
                "identifiers_moved": len(moved),
                "moved": _shown(moved),
            }
        )
    merged = 0
    for segment_id, ids in new.items():
        sources = Counter(before.get(i) for i in ids if i in before)
        if len(sources) < 2:
            continue
        merged += 1
        kept, _ = sources.most_common(1)[0]
        moved = {i for i in ids if before.get(i) not in (kept, None)}
        changes.append(
            {
                "kind": "merge",
                "before": sorted(s for s in sources if s is not None),
                "after": [segment_id],
                "unattached": 0,
                "identifiers_moved": len(moved),
                "moved": _shown(moved),
            }
        )
    changes.sort(key=lambda c: (-c["identifiers_moved"], c["kind"], c["before"]))
    return {
        "profiles_before": len(old),
        "profiles_after": len(new),
        "unchanged": unchanged,
        "split": split,
        "merged": merged,
        "changed": changed,
        "largest": changes[:LARGEST],
    }


# ---- the real run ------------------------------------------------------------------------

# Messages sent to the new store per ticket, tickets in flight at once (as `idstitch
# import`), and messages left over that the last pass copies with every writer held.
BATCH = 5_000
WINDOW = 4
CATCH_UP = 2_000
MAX_PASSES = 10  # copying passes before the last, however fast writers write

Key = tuple[str, str, str]  # (collection, source_id, message_id)


class _Copier:
    """Sends the stored history, in arrival order, through a new store's engine; deletes
    identifiers again where they were deleted; notes which profile each profile-creating
    message of the old graph now resolves to."""

    def __init__(
        self,
        source: Store,
        engine: Any,
        wanted: set[Key],
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.source = source
        self.progress = progress
        self.engine = engine
        self.extractor = Extractor(engine.rules)
        self.wanted = wanted
        self.resolved: dict[Key, str] = {}
        self.after = 0  # the last seq copied
        self.copied = 0
        self.deletions_done = 0
        self.deletions_missed = 0
        self._inflight: deque[tuple[str, list[str], Future[list[Plan]]]] = deque()
        self._items: list[tuple[Prepared, Any]] = []
        self._source_id = ""
        self._sent = 0  # messages submitted and not settled

    def copy(self, deletions: list[tuple[int, Operation]]) -> int:
        """Copy what is stored past `after`, applying the `deletions` (seq, operation) due
        before each message. The number of messages copied."""
        copied = 0
        # A networked store's next page is read while this one is resolved (its client
        # waits on the server without the GIL); a local one's, when it is needed (a thread
        # reading it would only take turns with the resolver).
        threads = 0 if self.source.local_reads else 1
        with ThreadPoolExecutor(max(threads, 1), thread_name_prefix="idstitch-history") as reader:
            ahead = _page(reader if threads else None, self.source, self.after)
            while True:
                page = ahead.result()
                if len(page) == PAGE:
                    ahead = _page(reader if threads else None, self.source, page[-1].seq)
                for m in page:
                    while deletions and deletions[0][0] < m.seq:
                        self._delete(deletions.pop(0)[1])
                    self._add(m)
                copied += len(page)
                if page:
                    self.after = page[-1].seq
                if len(page) < PAGE:
                    break
        self._drain()
        return copied

    def _add(self, m: StoredMessage) -> None:
        if self._items and (m.source_id != self._source_id or len(self._items) >= BATCH):
            self._submit()
        self._source_id = m.source_id
        message = decode_message(m.body)
        prepared = Prepared(message, m.type, m.message_id, m.timestamp, m.received_at, m.body)
        self._items.append((prepared, self.extractor.extract(message, m.type)))

    def _submit(self) -> None:
        if not self._items:
            return
        ids = [p.message_id for p, _ in self._items]
        ticket = self.engine.submit(self._items, self._source_id)
        self._inflight.append((self._source_id, ids, ticket.future))
        self._sent += len(ids)
        self._items = []
        # Bounded by messages, not tickets: interleaved sources make many small tickets,
        # and the writer commits what is queued together.
        while self._sent > WINDOW * BATCH:
            self._settle()

    def _settle(self) -> None:
        source_id, ids, future = self._inflight.popleft()
        self._sent -= len(ids)
        plans = future.result()  # raises what the write raised
        self.copied += len(plans)
        if self.progress is not None:
            self.progress(self.copied)
        wanted = self.wanted
        for message_id, plan in zip(ids, plans, strict=True):
            for side, collection in ((plan.users, USERS), (plan.accounts, ACCOUNTS)):
                key = (collection, source_id, message_id)
                if side is not None and side.segment_id is not None and key in wanted:
                    self.resolved[key] = side.segment_id

    def _drain(self) -> None:
        self._submit()
        while self._inflight:
            self._settle()

    def _delete(self, op: Operation) -> None:
        """Delete the identifier again here, or record that it was deleted (it may be held
        by no profile under the new rules), so that a later rebuild deletes it here too."""
        self._drain()
        store = self.engine.store
        found = store.find_by_identifier(op.collection, op.type, op.value)
        if found is not None and store.remove_identifier(
            found.pid, op.collection, op.type, op.value, op
        ):
            self.deletions_done += 1
            return
        self.deletions_missed += 1
        at = msgspec.json.encode({"seq": self.copied}).decode()
        store.record_operation(msgspec.structs.replace(op, detail=at))


def _page(
    reader: ThreadPoolExecutor | None, source: Store, after: int
) -> Future[list[StoredMessage]]:
    """The history page past `after`: read by `reader`, or now."""
    if reader is not None:
        return reader.submit(source.history, after, PAGE)
    done: Future[list[StoredMessage]] = Future()
    done.set_result(source.history(after, PAGE))
    return done


def _block_of(op: Operation) -> tuple[str, str, str] | None:
    return (op.collection, op.type, op.value) if op.kind == "unmerge" else None


def _deletions(source: Store, ops: list[Operation]) -> list[tuple[int, Operation]]:
    """The deletions among `ops`, each with the seq it happened after."""
    seqs = [seq for seq, *_ in source.deletions()]
    deleting = [op for op in ops if op.kind == "delete_identifier"]
    return list(zip(seqs, deleting, strict=True))


def run(
    settings: Settings,
    *,
    actor: str,
    progress: Callable[[int], None] | None = None,
    tune_gc: bool = False,
) -> dict[str, Any]:
    """Resolve the stored history again under `settings.rules` and put the new graph in
    place of the old one; the report (see `compare`) of what changed. The store is the one
    `settings` names. `progress(messages copied)` is called as they are; `tune_gc`
    (for a process of idstitch's own, as `Engine`'s) keeps the garbage collector off the
    copied graph."""
    from idstitch.engine import Engine
    from idstitch.importer import wait_for_index
    from idstitch.storage import open_rebuilding

    started = time.perf_counter()
    with open_rebuilding(settings.storage_url) as rebuilding:
        source = rebuilding.source
        ops = source.operations()
        before: dict[Ident, str] = {(c, t, v): sid for c, t, v, sid in source.partition()}
        origins = list(source.origins())
        wanted = {
            (o.collection, o.first_source_id, o.first_message_id)
            for o in origins
            if o.first_message_id and o.first_source_id
        }
        target = rebuilding.open_target()
        # The history's changes were sent when they happened: the copy sends none.
        engine = Engine(
            settings, store=target, webhooks=False, tune_gc=tune_gc, max_batch=WINDOW * BATCH
        )
        target.feed_changes = False
        try:
            # The block list applies from the start; deletions where they happened.
            for op in ops:
                if op.kind != "delete_identifier":
                    target.record_operation(op, _block_of(op))
            deletions = _deletions(source, ops)
            known = len(deletions)
            copier = _Copier(source, engine, wanted, progress)
            # Copy while writers go on (PostgreSQL), until what is left is small.
            for _ in range(MAX_PASSES):
                if copier.copy(deletions) <= CATCH_UP:
                    break
            while deletions and deletions[0][0] <= copier.after:  # due before what follows
                copier._delete(deletions.pop(0)[1])
            # What the last pass adds comes from messages stored since, which make profiles
            # of their own: the report and the old segment_ids are settled before it, so
            # that the writers wait for the last pass only.
            after: dict[Ident, str] = {(c, t, v): sid for c, t, v, sid in target.partition()}
            kept = target.keep_segment_ids(_kept(origins, copier.resolved, before, after))
            answer = compare(before, after)
            wait_for_index(target)
            with rebuilding.alone():
                copier.copy(deletions)
                now = source.operations()
                if now[: len(ops)] != ops or any(op.kind == "unmerge" for op in now[len(ops) :]):
                    raise StorageError(
                        "the store was unmerged while it was rebuilt; nothing changed: run "
                        "`idstitch rebuild` again."
                    )
                # Deletions made while it was copied (PostgreSQL's workers run on) come last.
                deletions += _deletions(source, now)[known:]
                for _, op in deletions:
                    copier._delete(op)
                for name, offset in source.import_offsets().items():
                    target.set_import_offset(name, offset)
                _carry_feed(source, target, settings)
                answer.update(
                    messages=copier.copied,
                    kept_segment_ids=kept,
                    deletions_applied=copier.deletions_done,
                    deletions_unheld=copier.deletions_missed,
                )
                target.record_operation(_rebuild_record(settings.rules, actor, answer))
                engine.close()
                rebuilding.swap()
        finally:
            engine.close()
    answer["seconds"] = round(time.perf_counter() - started, 3)
    return answer


def _carry_feed(source: Store, target: Store, settings: Settings) -> None:
    """The changes not yet delivered to the configured webhooks, and how far each got."""
    positions = {hook.name: source.feed_position(hook.name) or (0, 0) for hook in settings.webhooks}
    if not positions:
        return
    position, rows = min(positions.values()), []
    while page := source.changes_after(position, PAGE):
        rows.extend(page)
        position = page[-1].position
    target.keep_changes(rows, positions)


def _kept(
    origins: list[Origin],
    resolved: dict[Key, str],
    before: dict[Ident, str],
    after: dict[Ident, str],
) -> list[tuple[Origin, str]]:
    """Where each old segment_id goes: to the profile now holding the message that made
    it; failing that (the message resolves to nothing now), to the profile now holding most
    of the identifiers its profile held."""
    old = _groups(before)
    out: list[tuple[Origin, str]] = []
    canonical = set(after.values())
    for o in origins:
        if o.segment_id in canonical:
            continue  # made by the same message again
        into = resolved.get((o.collection, o.first_source_id or "", o.first_message_id or ""))
        if into is None:
            held = Counter(after[i] for i in old.get(o.segment_id, ()) if i in after)
            if not held:
                continue
            into = held.most_common(1)[0][0]
        out.append((o, into))
    return out


def _rebuild_record(rules: IdentityRules, actor: str, answer: dict[str, Any]) -> Operation:
    summary = {k: v for k, v in answer.items() if k != "largest"}
    recorded = rules_record(rules)
    detail = {"rules": recorded, "fingerprint": fingerprint(recorded), **summary}
    return Operation(
        kind="rebuild",
        segment_id="",
        collection="",
        type="",
        value="",
        actor=actor,
        created_at=time.time(),
        detail=msgspec.json.encode(detail).decode(),
    )
