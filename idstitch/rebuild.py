"""Resolving the stored history again under other rules, and what that would change
(`idstitch rebuild --dry-run`).

Every message is kept, in arrival order, so the history can be resolved again with the pure
core, the way `core.split` resolves one profile's messages: the same planner, the rules of
another config, the stored block list from the start. A profile made by the same message
that made one before gets the same segment_id (segment_ids are derived from the message), so
the two partitions compare profile by profile. Nothing is written.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from idstitch.core.graph import Graph
from idstitch.core.identifiers import ACCOUNTS, USERS, Extractor, key_of, slot_of
from idstitch.core.ksuid import segment_id_for
from idstitch.core.messages import Prepared, decode_message
from idstitch.core.planner import apply_plan, plan_message
from idstitch.core.rules import IdentityRules
from idstitch.storage.base import Store

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
    """What resolving the history again under `rules` would change: profiles before and
    after; how many of the profiles before stay the same, split (their identifiers end in
    several profiles, or some in none) or only gain or lose identifiers (`changed`), and how
    many profiles after merge identifiers of several profiles before; and the largest
    changes, by identifiers moved."""
    started = time.perf_counter()
    before: dict[Ident, str] = {(c, t, v): sid for c, t, v, sid in store.partition()}
    after, messages = replay(store, rules)
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
        if len(targets) > 1 or None in targets:
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
        "messages": messages,
        "seconds": round(time.perf_counter() - started, 3),
    }
