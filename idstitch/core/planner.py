"""From a prepared message to a Plan: extract, resolve each side, pick the traits."""

from __future__ import annotations

from collections.abc import Iterable

from idstitch.core.graph import Graph
from idstitch.core.identifiers import ACCOUNTS, USERS, Extracted
from idstitch.core.messages import Prepared
from idstitch.core.plan import Plan, Violation
from idstitch.core.resolver import NewId, apply_side, resolve_side
from idstitch.core.rules import IdentityRules


def keys_of(extracted: Extracted) -> list[str]:
    """Every graph key a message may touch: what a store must put in the snapshot."""
    keys = [i.key for i in extracted.users]
    keys.extend(i.key for i in extracted.accounts)
    keys.extend(i.key for i in extracted.alias_previous)
    return keys


def plan_message(
    prepared: Prepared,
    extracted: Extracted,
    graph: Graph,
    rules: IdentityRules,
    source_id: str,
    new_segment_id: NewId,
) -> Plan:
    message = prepared.message
    kind = prepared.type
    source = rules.source(source_id)
    at = prepared.timestamp
    trusted = False
    if extracted.alias_previous:
        library = message.context.library if message.context is not None else None
        trusted = rules.trusts_alias(source_id, library.name if library is not None else None)
    users = resolve_side(
        extracted.users,
        graph,
        rules,
        source,
        source_id,
        at,
        USERS,
        extracted.alias_previous,
        trusted,
    )
    if users.created:
        users.segment_id = new_segment_id(
            USERS, source_id, prepared.message_id, prepared.received_at
        )
    accounts = None
    if extracted.accounts:
        accounts = resolve_side(extracted.accounts, graph, rules, source, source_id, at, ACCOUNTS)
        if accounts.created:
            accounts.segment_id = new_segment_id(
                ACCOUNTS, source_id, prepared.message_id, prepared.received_at
            )
    traits = None
    if kind in ("identify", "group") and message.traits:
        traits = message.traits
    return Plan(
        source_id=source_id,
        message_id=prepared.message_id,
        type=kind,
        event=message.event
        if kind == "track"
        else (
            message.name if kind in ("page", "screen") and isinstance(message.name, str) else None
        ),
        timestamp=at,
        received_at=prepared.received_at,
        raw=prepared.raw,
        users=users,
        accounts=accounts,
        traits=traits,
        violations=[
            Violation(
                d.identifier.collection, d.identifier.type, d.identifier.value, d.rule, d.detail
            )
            for d in extracted.dropped
        ],
    )


def apply_plan(graph: Graph, plan: Plan) -> None:
    for side in (plan.users, plan.accounts):
        if side is not None:
            apply_side(graph, side, plan.timestamp, plan.received_at)


def duplicate_plan(p: Prepared, source_id: str) -> Plan:
    """The plan of a message its source already sent (same messageId): nothing to do."""
    return Plan(
        source_id, p.message_id, p.type, None, p.timestamp, p.received_at, b"", duplicate=True
    )


def resolve_messages(
    items: Iterable[tuple[Prepared, Extracted]],
    source_id: str,
    graph: Graph,
    rules: IdentityRules,
    seen: set[str],
    new_segment_id: NewId,
) -> list[Plan]:
    """Messages of one source in order, each planned on the graph as the ones before left it
    and applied to it. `seen` holds the source's messageIds already stored, and gains these:
    a message whose id is there is a duplicate, and changes nothing."""
    plans = []
    for prepared, extracted in items:
        if prepared.message_id in seen:
            plans.append(duplicate_plan(prepared, source_id))
            continue
        seen.add(prepared.message_id)
        plan = plan_message(prepared, extracted, graph, rules, source_id, new_segment_id)
        apply_plan(graph, plan)
        plans.append(plan)
    return plans
