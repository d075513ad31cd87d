"""Explain against the reference model, on random message streams (the reference-model
search's streams, on Segment's preset): two identifiers are `together` exactly when the model
puts them in one profile; then every step of the path is a message that was sent and that
carried both of its ends (as the model reads the message), the steps chain from the first
reference to the second, and no shorter chain exists among the messages the model resolved
to that profile.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, note

from idstitch.engine import Engine
from tests.conftest import MakeEngine
from tests.core import reference_model as rm
from tests.core.test_properties import LIMITS_ON_CREATE, Scenario, forget, render, scenarios, search

_examples = itertools.count(20_000)
EXAMPLES = 15

Ident = tuple[str, str, str]


@pytest.fixture(params=["sqlite"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _ref(ident: Ident) -> str:
    return f"{ident[1]}:{ident[2]}"


def _shortest(edges: dict[Ident, set[Ident]], a: Ident, b: Ident) -> int | None:
    seen = {a: 0}
    queue = deque([a])
    while queue:
        here = queue.popleft()
        if here == b:
            return seen[here]
        for there in edges.get(here, ()):
            if there not in seen:
                seen[there] = seen[here] + 1
                queue.append(there)
    return None


def test_explain_paths_agree_with_the_reference_model(make_engine: MakeEngine) -> None:
    examples = int(os.environ.get("IDSTITCH_EXAMPLES", EXAMPLES))

    @search(examples)
    @given(scenario=scenarios(), picks=st.lists(st.integers(0, 10_000), min_size=4, max_size=4))
    def agree(scenario: Scenario, picks: list[int]) -> None:
        ns = next(_examples)
        identity = {**render(scenario.identity, ns), "preset": "segment"}
        config = {"identity": identity}
        note(f"config: {config}")
        model = rm.Model(identity, limits_on_create=LIMITS_ON_CREATE)
        engine: Engine = make_engine(config)
        sent: dict[tuple[str, str], dict[str, Any]] = {}
        # The model's edges: each message joins the identifiers it used (carried, not refused).
        used: list[tuple[int | None, set[Ident]]] = []
        try:
            received = 1_800_000_000.0
            for step in itertools.chain.from_iterable(scenario.chunks):
                message = render(step.message, ns)
                received += 1
                got = engine.ingest(message, source=step.source, received_at=received)
                want = model.ingest(message, step.source)
                note(f"  {step.source}: {message} -> {got.outcome}")
                if want.duplicate or got.outcome == "duplicate":
                    continue
                sent[(step.source, got.message_id)] = message
                users, _, previous, _ = model.extract(message)
                dropped = {i for i, _ in want.users.dropped}
                used.append((want.users.profile, {*users, *previous} - dropped))
            groups = sorted(
                (
                    sorted(g)
                    for g in model.partition()
                    if len(g) > 1 and next(iter(g))[0] == "users"
                ),
                key=lambda g: g[0],
            )
            if not groups:
                return
            group = groups[picks[0] % len(groups)]
            a, b = group[picks[1] % len(group)], group[picks[2] % len(group)]
            answer = engine.explain(_ref(a), _ref(b))
            note(f"explain {a} {b}: {answer}")
            assert answer["together"] and answer["refusals"] == []
            members = set(group)
            edges: dict[Ident, set[Ident]] = {}
            for profile, ids in used:
                if profile is None:
                    continue
                inside = ids & members
                for x, y in itertools.permutations(inside, 2):
                    edges.setdefault(x, set()).add(y)
            path = answer["path"]
            assert answer["complete"]
            assert len(path) == _shortest(edges, a, b)
            at = _ref(a)
            for step in path:
                assert step["from"] == at
                message = sent[(step["source"], step["message_id"])]
                users, _, previous, _ = model.extract(message)
                carried = {_ref(i) for i in (*users, *previous)}
                assert {step["from"], step["to"]} <= carried, (step, carried)
                at = step["to"]
            assert at == _ref(b) or not path
            # Two identifiers of different profiles: apart, with no path.
            if len(groups) > 1:
                other = groups[(picks[0] + 1 + picks[3] % (len(groups) - 1)) % len(groups)]
                apart = engine.explain(_ref(a), _ref(other[0]))
                assert not apart["together"] and apart["path"] == []
        finally:
            engine.close()
            forget(engine)

    agree()
