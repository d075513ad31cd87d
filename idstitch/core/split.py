"""Splitting a profile (unmerge): its messages resolved again, alone and in arrival order,
under the current rules, with one identifier blocked. Pure: the store reads the history and
writes the result.

Only the profile's own messages are resolved again, and an identifier that another profile
holds is left out of them: the split never takes from, or joins, another profile. A profile
a message of this one was refused from stays as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec

from idstitch.core.graph import Graph
from idstitch.core.identifiers import USERS, Extractor, Identifier, key_of, slot_of
from idstitch.core.ksuid import segment_id_for
from idstitch.core.messages import Prepared, decode_message
from idstitch.core.plan import Plan
from idstitch.core.planner import apply_plan, plan_message
from idstitch.core.rules import IdentityRules


class StoredMessage(msgspec.Struct, frozen=True):
    """One message of the profile as the store keeps it."""

    seq: int
    source_id: str
    message_id: str
    type: str
    timestamp: float
    received_at: float
    body: bytes
    # What the store holds besides: the identifiers the message used (both collections), and
    # the profile of the other collection it named (a user's account), if any.
    external_ids: list[tuple[str, str, str]] = []
    linked: int | None = None


class Split(msgspec.Struct):
    """The re-resolution: `plans[i]` is what `messages[i]` does now, on `graph` (its own
    profile ids, starting at 1); `parts` are the canonical profiles of `graph` by their
    first message (oldest first)."""

    graph: Graph
    messages: list[StoredMessage]
    plans: list[Plan]
    parts: list[int]


def split(
    messages: Sequence[StoredMessage],
    collection: str,
    rules: IdentityRules,
    blocked: Identifier,
    foreign: Callable[[list[Identifier]], set[int]],
    also_blocked: set[int] | None = None,
    deleted: Sequence[tuple[int, str, str, str]] = (),
) -> Split:
    """Resolve `messages` again (sorted by `seq`) with `blocked` on the block list, beside
    the slots already there (`also_blocked`). `foreign` is asked once, with every identifier
    the messages carry, which of them (as slots) another profile holds: those are left
    out. Identifiers deleted from profiles (`deleted`: the last seq stored then, collection,
    type, value) are deleted again at that point, so an unmerge does not bring them back."""
    ordered = sorted(messages, key=lambda m: m.seq)
    extractor = Extractor(rules)
    items = []
    carried: dict[int, Identifier] = {}
    for m in ordered:
        message = decode_message(m.body)
        prepared = Prepared(message, m.type, m.message_id, m.timestamp, m.received_at, m.body)
        extracted = extractor.extract(message, m.type)
        if collection == USERS:
            extracted = extracted._replace(accounts=[])
            ids = [*extracted.users, *extracted.alias_previous]
        else:
            extracted = extracted._replace(users=[], alias_previous=[])
            ids = extracted.accounts
        carried.update((i.slot, i) for i in ids)
        items.append((m, prepared, extracted))
    elsewhere = foreign(list(carried.values())) if carried else set()
    graph = Graph()
    graph.blocked.add(blocked.slot)
    graph.blocked.update(also_blocked or ())
    plans: list[Plan] = []
    first_seen: dict[int, int] = {}  # profile id -> position of its first message
    pending = sorted(deleted)
    for n, (m, prepared, extracted) in enumerate(items):
        while pending and pending[0][0] < m.seq:
            _, collection_, type_, value = pending.pop(0)
            graph.detach(slot_of(key_of(collection_, type_, value)), type_)
        if elsewhere:
            extracted = extracted._replace(
                users=[i for i in extracted.users if i.slot not in elsewhere],
                accounts=[i for i in extracted.accounts if i.slot not in elsewhere],
                alias_previous=[i for i in extracted.alias_previous if i.slot not in elsewhere],
            )
        plan = plan_message(prepared, extracted, graph, rules, m.source_id, segment_id_for)
        apply_plan(graph, plan)
        plans.append(plan)
        side = plan.users if collection == USERS else plan.accounts
        if side is not None and side.pid is not None and side.outcome != "unresolved":
            first_seen.setdefault(side.pid, n)
    for _, collection_, type_, value in pending:  # deleted after the last message
        graph.detach(slot_of(key_of(collection_, type_, value)), type_)
    start: dict[int, int] = {}  # canonical profile id -> position of its first message
    for pid, n in first_seen.items():
        top = graph.find(pid)
        start[top] = min(n, start.get(top, n))
    parts = sorted(start, key=start.__getitem__)
    return Split(graph, ordered, plans, parts)
