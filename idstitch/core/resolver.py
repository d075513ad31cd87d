"""The resolver: Segment's flat matching with merge protection, as a pure function.

`resolve_side` reads a graph snapshot and returns a SidePlan; it never mutates anything.
`apply_side` then records the decision in the in-memory graph, so that the next message of
the same micro-batch sees it. Stores persist the same plans in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable

from idstitch.core.graph import Graph, ProfileState
from idstitch.core.identifiers import USERS, Identifier, key_of, slot_of
from idstitch.core.plan import SidePlan, Violation
from idstitch.core.rules import (
    ANONYMOUS_COOKIES,
    CONFLICT,
    COOKIE_TYPES,
    DEVICE_TYPES,
    GENERIC,
    SHARED_DEVICE,
    TRUSTED_ALIAS,
    IdentityRules,
    Limit,
    SourceRules,
)

# The segment_id of a profile a message creates: (collection, source_id, message_id,
# received_at) -> id (`ksuid.segment_id_for`).
NewId = Callable[[str, str, str, float], str]


def _violation(ident: Identifier, rule: str, detail: str, graph: Graph | None = None) -> Violation:
    """A refusal of `ident`; with the graph, naming the profile that holds it (if one does)."""
    owner = graph.owners.get(ident.slot) if graph is not None else None
    return Violation(ident.collection, ident.type, ident.value, rule, detail, owner)


def _over_limit(
    matched: list[ProfileState],
    new: list[Identifier],
    rules: IdentityRules,
    at: float,
    waived: frozenset[str] = frozenset(),
    login: bool = False,
    anonymous: bool = False,
) -> tuple[str, str, str] | None:
    """(rule, detail, type) for the first type this message makes grow past its limit, or None.
    The types in `waived` are not checked. On a `login` (the idstitch preset, a message with
    a user_id), the cookies of profiles that hold a user_id are not counted: only those the
    message and the anonymous profiles it joins bring, so a user may log in from any number
    of browsers, but a cookie-laden anonymous profile (glued by a shared value) still may
    not join them. When the message is `anonymous` (the idstitch preset, no user_id) and no
    matched profile holds one, a cookie type's limit is at most ANONYMOUS_COOKIES, ever."""
    if len(matched) > 1:
        types: set[str] = {i.type for i in new}
        for state in matched:
            types.update(state.types())
    elif new:
        types = {i.type for i in new}
    else:
        return None
    # The idstitch preset: the matched profiles without a known user.
    unknown = [s for s in matched if not s.holds("user_id")] if login or anonymous else matched
    for type_ in rules.ordered_types(types) if len(types) > 1 else types:
        if type_ in waived:
            continue
        limit = rules.limit(type_)
        counted = matched
        if type_ in COOKIE_TYPES:
            if login:
                counted = unknown
            elif anonymous and len(unknown) == len(matched):
                # No known user anywhere: an anonymous profile glued by a value other than a
                # login (a placeholder e-mail typed into forms) gathers few browsers, ever.
                limit = Limit(min(limit.max, ANONYMOUS_COOKIES), "ever")
        window = limit.seconds
        held = [state.count(type_, at, window) for state in counted]
        would = sum(held) + sum(1 for i in new if i.type == type_)
        if would > limit.max and would > max(held, default=0):
            rule = "limit_exceeded" if window is None else "time_limit_exceeded"
            detail = f"{type_} would hold {would} values, over its limit of {limit.describe()}"
            return rule, detail, type_
    return None


def _is_shared(ident: Identifier, graph: Graph, rules: IdentityRules) -> bool:
    """Seen with more known users than its type allows (the idstitch preset): it stops
    linking. Lookups still find the profiles that hold it."""
    seen = graph.conflicts.get(ident.slot)  # never a user_id's: see `_note_conflicts`
    if seen is None:
        return False
    after = rules.shared_after(ident.type)
    return after is not None and len(seen) >= after


def _note_conflicts(
    live: list[Identifier],
    graph: Graph,
    rules: IdentityRules,
    noted: set[int],
    violations: list[Violation],
) -> None:
    """The user_id limit refuses this message: each identifier that would bring in the
    profile of another known user was seen with this message's user_id, which that profile
    does not hold. Record it (`conflict`), and, when that makes it shared, say so once."""
    top = next((i for i in live if i.type == "user_id"), None)
    if top is None:
        return
    mine = graph.owner(top.slot)
    detail = f"seen with user_id:{top.value}, a known user its profile does not hold"
    for ident in live:
        if ident.type == "user_id" or ident.slot in noted:
            continue
        state = graph.owner(ident.slot)
        if state is None or state is mine or not state.holds("user_id"):
            continue
        noted.add(ident.slot)
        violations.append(_violation(ident, CONFLICT, detail, graph))
        seen = graph.conflicts.get(ident.slot, set())
        after = rules.shared_after(ident.type)
        if after is not None and detail not in seen and len(seen) + 1 == after:
            rule = SHARED_DEVICE if ident.type in DEVICE_TYPES else GENERIC
            why = f"seen with {after + 1} known users; from now on it links no profiles"
            violations.append(_violation(ident, rule, why, graph))


def _single_owner(ids: list[Identifier], graph: Graph) -> ProfileState | None:
    """The profile owning every one of `ids`, if one does."""
    owners, parent = graph.owners, graph.parent
    root = None
    for ident in ids:
        pid = owners.get(ident.slot)
        if pid is None:
            return None
        if pid in parent:
            pid = graph.find(pid)
        if root is None:
            root = pid
        elif pid != root:
            return None
    return graph.profiles[root] if root is not None else None


def choose_alias_previous(candidates: list[Identifier], graph: Graph) -> Identifier | None:
    """`previousId` is a user_id or an anonymous_id, whichever exists (anonymous_id if neither)."""
    for ident in candidates:
        if graph.owner(ident.slot) is not None:
            return ident
    anonymous = [i for i in candidates if i.type == "anonymous_id"]
    if anonymous:
        return anonymous[0]
    return candidates[0] if candidates else None


STORED_BLOCK = (
    "on the stored block list (an unmerge named it junk); it links no profiles. "
    "`idstitch doctor` lists the list"
)


def resolve_side(
    ids: list[Identifier],
    graph: Graph,
    rules: IdentityRules,
    source: SourceRules,
    source_id: str,
    at: float,
    collection: str,
    alias_previous: list[Identifier] | None = None,
    trusted_alias: bool = False,
) -> SidePlan:
    """How the message's identifiers `ids` resolve in `collection`. A profile the message
    creates is left unnamed (`segment_id` None): the planner names it after the message.
    `trusted_alias`: the message's alias may join two user_ids past the user_id limit.
    Identifiers on the stored block list (`graph.blocked`) are dropped first."""
    blocked = graph.blocked
    if blocked and (
        any(i.slot in blocked for i in ids)
        or (alias_previous and any(i.slot in blocked for i in alias_previous))
    ):
        dropped = [
            Violation(i.collection, i.type, i.value, "blocked_value", STORED_BLOCK)
            for i in (*ids, *(alias_previous or ()))
            if i.slot in blocked
        ]
        ids = [i for i in ids if i.slot not in blocked]
        alias_previous = [i for i in alias_previous or () if i.slot not in blocked]
        side = _resolve_side(
            ids, graph, rules, source, source_id, at, collection, alias_previous, trusted_alias
        )
        side.violations[:0] = dropped
        return side
    return _resolve_side(
        ids, graph, rules, source, source_id, at, collection, alias_previous, trusted_alias
    )


def _resolve_side(
    ids: list[Identifier],
    graph: Graph,
    rules: IdentityRules,
    source: SourceRules,
    source_id: str,
    at: float,
    collection: str,
    alias_previous: list[Identifier] | None = None,
    trusted_alias: bool = False,
) -> SidePlan:
    """How the message's identifiers `ids` resolve in `collection`. A profile the message
    creates is left unnamed (`segment_id` None): the planner names it after the message.
    `trusted_alias`: the message's alias may join two user_ids past the user_id limit."""
    conflicts = graph.conflicts
    if conflicts and rules.idstitch and any(i.slot in conflicts for i in ids):
        kept = [i for i in ids if not _is_shared(i, graph, rules)]
        if len(kept) < len(ids) and not kept and not alias_previous:
            names = ", ".join(str(i) for i in ids)
            reason = f"only identifiers seen with several known users ({names})"
            return SidePlan(collection, "unresolved", reason=reason)
        ids = kept
    if not alias_previous and ids:
        known = _single_owner(ids, graph)
        if known is not None:  # the common case: every identifier already on one profile
            return SidePlan(
                collection,
                "attached",
                known.segment_id,
                pid=known.pid,
                identifiers=[(i.type, i.value) for i in ids],
            )
    live = list(ids)
    waived: frozenset[str] = frozenset()
    if alias_previous:
        chosen = choose_alias_previous(alias_previous, graph)
        if chosen is not None and conflicts and _is_shared(chosen, graph, rules):
            chosen = None  # a previousId several known users share links nothing either
        if chosen is not None and chosen not in live:
            live.append(chosen)
            live.sort(key=lambda i: rules.rank(i.type))  # stable: ties keep extraction order
            # A trusted source's alias(previousId=old user_id, userId=new user_id) is the
            # customer saying the two are one person: the user_id limit does not refuse it.
            if trusted_alias and chosen.type == "user_id" and chosen.slot in graph.owners:
                waived = frozenset(("user_id",))
    evidence = rules.idstitch and collection == USERS
    violations: list[Violation] = []
    noted: set[int] = set()  # identifiers whose conflict this message recorded
    owners, parent, profiles = graph.owners, graph.parent, graph.profiles
    matched: list[ProfileState] = []
    new: list[Identifier] = []
    while True:
        if not live:
            return SidePlan(
                collection, "unresolved", violations=violations, reason="no usable identifiers"
            )
        matched = []
        new = []
        for ident in live:
            pid = owners.get(ident.slot)
            if pid is None:
                new.append(ident)
                continue
            if pid in parent:
                pid = graph.find(pid)
            state = profiles[pid]
            if state not in matched:
                matched.append(state)
        if not matched:
            if not source.create:
                reason = f"source {source_id!r} may not create profiles"
                for ident in live:
                    violations.append(_violation(ident, "source_create_denied", reason))
                return SidePlan(collection, "unresolved", violations=violations, reason=reason)
        elif len(matched) > 1 and not source.merge:
            victim = live.pop()
            violations.append(
                _violation(
                    victim,
                    "source_merge_denied",
                    f"source {source_id!r} may not merge profiles",
                    graph,
                )
            )
            continue
        # The limits see the identifiers a source may not add too: a second user_id on a
        # shared browser must still split the event off (the library problem), or a source
        # denied `add` would attribute one person's events to another.
        login = evidence and any(i.type == "user_id" for i in live)
        over = _over_limit(matched, new, rules, at, waived, login, evidence and not login)
        if over is not None:
            rule, detail, type_ = over
            if type_ == "user_id" and rules.idstitch:
                _note_conflicts(live, graph, rules, noted, violations)
            victim = live.pop()
            violations.append(_violation(victim, rule, detail, graph))
            continue
        break
    if matched and new and not source.add:
        reason = f"source {source_id!r} may not add identifiers to existing profiles"
        for ident in new:
            violations.append(_violation(ident, "source_add_denied", reason))
            live.remove(ident)
        new = []
    used = [(i.type, i.value) for i in live]
    cap = rules.max_identifiers
    if not matched:
        added, refused = new[:cap], new[cap:]
        for ident in refused:
            violations.append(_violation(ident, "identifier_cap", f"a profile holds at most {cap}"))
        return SidePlan(
            collection,
            "created",
            None,
            created=True,
            added=[(i.type, i.value) for i in added],
            identifiers=used,
            violations=violations,
        )
    target = min(matched, key=lambda s: (s.created_at, s.pid))
    others = [s for s in matched if s is not target]
    # SPEC 2, system caps: once a profile holds `max_merges` merges, nothing further is merged
    # into it or added to it; its events still resolve to it.
    if target.merges >= rules.max_merges and new:
        detail = f"the profile holds {target.merges} merges, the cap; nothing more is added"
        violations.extend(_violation(ident, "merge_cap", detail) for ident in new)
        new = []
    if others:
        merges = target.merges + sum(o.merges + 1 for o in others)
        held = target.n_ids + sum(o.n_ids for o in others)
        refusal = None
        if merges > rules.max_merges:
            refusal = (
                "merge_cap",
                f"the merge would make {merges} merges; the cap is {rules.max_merges}",
            )
        elif held > cap:
            refusal = (
                "identifier_cap",
                f"the merge would make {held} identifiers; the cap is {cap}",
            )
        if refusal is not None:
            for other in others:
                violations.append(
                    Violation(collection, "segment_id", other.segment_id, *refusal, other.pid)
                )
            others = []
    room = cap - target.n_ids - sum(o.n_ids for o in others)
    added_ids = new[: max(room, 0)]
    for ident in new[len(added_ids) :]:
        violations.append(_violation(ident, "identifier_cap", f"a profile holds at most {cap}"))
    return SidePlan(
        collection,
        "merged" if others else "attached",
        target.segment_id,
        pid=target.pid,
        merged=[(o.pid, o.segment_id) for o in others],
        added=[(i.type, i.value) for i in added_ids],
        identifiers=used,
        violations=violations,
        merge_rule=TRUSTED_ALIAS if waived and others else None,
    )


def apply_side(graph: Graph, side: SidePlan, at: float, created_at: float) -> None:
    """Record a decided SidePlan in the in-memory graph (sets `side.pid` for a new profile)."""
    for v in side.violations:
        if v.rule == CONFLICT:
            graph.add_conflict(slot_of(key_of(v.collection, v.type, v.value)), v.detail)
    if side.outcome == "unresolved" or side.segment_id is None:
        return
    if side.created:
        state = graph.create(side.segment_id, created_at)
        side.pid = state.pid
    else:
        assert side.pid is not None
        state = graph.profiles[side.pid]
    if side.merged:
        graph.merge(state, [graph.profiles[pid] for pid, _ in side.merged])
    collection = side.collection
    for type_, value in side.added:
        graph.attach(state, slot_of(key_of(collection, type_, value)), type_, at)
