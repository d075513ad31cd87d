"""Overlapping identity streams for the concurrency test, and a serial reference resolver.

`story(seed)` makes one deterministic stream of Segment messages in which people browse on
several devices, log in, alias old anonymous ids (chains of them), get merged across devices,
and share kiosk devices. Each person's own identifiers can only ever join each other, and no
limit is ever reached by them, so their final partition is the same in any arrival order:
those identifiers are the `clean` ones. Who keeps a kiosk depends on who came first: a second
person's user_id would put two user_ids on one profile, so the kiosk is dropped instead.

`reference(messages)` resolves messages one at a time with the pure core, exactly as the
engine would in that order, and returns the partition it ends with.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import msgspec

from idstitch.config import settings_from
from idstitch.core.graph import Graph
from idstitch.core.identifiers import Extractor, key_of, slot_of
from idstitch.core.ksuid import segment_id_for as segment_id
from idstitch.core.messages import prepare
from idstitch.core.planner import apply_plan, plan_message

Ident = tuple[str, str, str]  # (collection, type, value)
Partition = set[frozenset[Ident]]
SOURCE = "web"
DAY = "2025-03-01T"
_encode = msgspec.json.Encoder().encode


@dataclass
class Story:
    messages: list[bytes]  # in the order they were made (a valid serial order)
    clean: set[Ident] = field(default_factory=set)  # order-independent identifiers
    received: dict[str, float] = field(default_factory=dict)  # messageId -> receivedAt


def _at(n: int) -> str:
    return f"{DAY}{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}Z"


def story(seed: int, people: int = 120, kiosks: int = 6) -> Story:
    rng = random.Random(seed)
    per_person: list[list[dict[str, Any]]] = []
    clean: set[Ident] = set()
    for p in range(people):
        user, email = f"u{p}", f"p{p}@example.com"
        anons = [f"a{p}-{d}" for d in range(rng.randint(2, 3))]
        devices = [f"d{p}-{d}" for d in range(rng.randint(1, 2))]
        kiosk = f"kiosk-{rng.randrange(kiosks)}" if p % 3 == 0 else None
        mine: list[dict[str, Any]] = []
        for anon in anons:  # browsing before signing up
            mine.append({"type": "page", "anonymousId": anon, "name": "Home"})
        for i, device in enumerate(devices):  # the app: device id with an anonymous id
            mine.append(
                {
                    "type": "track",
                    "event": "Opened",
                    "anonymousId": anons[i],
                    "context": {"device": {"type": "android", "id": device}},
                }
            )
        mine.append(
            {
                "type": "identify",
                "userId": user,
                "anonymousId": anons[0],
                "traits": {"email": email, "plan": rng.choice(["free", "pro"])},
            }
        )
        # an alias chain: each older anonymous id is claimed by the user
        for prev, current in zip(anons[1:], anons, strict=False):
            mine.append(
                {"type": "alias", "previousId": prev, "userId": user, "anonymousId": current}
            )
        # a cross-merge: the second device meets the e-mail, from another profile
        mine.append(
            {
                "type": "track",
                "event": "Login",
                "anonymousId": anons[-1],
                "context": {
                    "device": {"type": "android", "id": devices[-1]},
                    "traits": {"email": email},
                },
            }
        )
        if kiosk is not None:  # a shared device: only one person can keep it
            mine.append(
                {
                    "type": "track",
                    "event": "Kiosk",
                    "userId": user,
                    "context": {"device": {"type": "android", "id": kiosk}},
                }
            )
        per_person.append(mine)
        clean.update(
            [("users", "user_id", user), ("users", "email", email)]
            + [("users", "anonymous_id", a) for a in anons]
            + [("users", "android.id", d) for d in devices]
        )
    messages: list[bytes] = []
    received: dict[str, float] = {}
    cursors = [0] * people
    n = 0
    while any(c < len(m) for c, m in zip(cursors, per_person, strict=True)):
        p = rng.choice([i for i, m in enumerate(per_person) if cursors[i] < len(m)])
        message = dict(per_person[p][cursors[p]])
        cursors[p] += 1
        message["messageId"] = f"m{n}"
        message["timestamp"] = _at(n)
        received[message["messageId"]] = 1_740_830_400.0 + n  # distinct: no created_at ties
        messages.append(_encode(message))
        n += 1
    return Story(messages, clean, received)


def reference(messages: list[tuple[float, bytes]], config: dict[str, Any]) -> tuple[Partition, int]:
    """The partition (and the number of merges) a single writer ends with after resolving
    `messages` in this order."""
    rules = settings_from(config).rules
    extractor = Extractor(rules)
    graph = Graph()
    merges = 0
    added: list[Ident] = []
    for received_at, raw in messages:
        prepared = prepare(raw, received_at=received_at)
        extracted = extractor.extract(prepared.message, prepared.type)
        plan = plan_message(prepared, extracted, graph, rules, SOURCE, segment_id)
        apply_plan(graph, plan)
        for side in (plan.users, plan.accounts):
            if side is not None:
                merges += len(side.merged)
                added.extend((side.collection, t, v) for t, v in side.added)
    groups: dict[int, set[Ident]] = {}
    for ident in added:
        pid = graph.owners[slot_of(key_of(*ident))]
        groups.setdefault(graph.find(pid), set()).add(ident)
    return {frozenset(g) for g in groups.values()}, merges


def restrict(partition: Partition, keep: set[Ident]) -> Partition:
    return {frozenset(g & keep) for g in partition if g & keep}
