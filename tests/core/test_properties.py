"""The engine against the reference model (SPEC sections 1 to 3), on random event sequences.

Every example draws identity rules (tight limits with windows, small caps, per-source rules)
and a sequence of identify/track/page/group/alias calls over small pools of identifiers, so that
collisions, merges and refusals are frequent. The engine and `reference_model.Model` see the
same messages; after every message their decisions must agree (which profile, what was created,
merged, added, and which identifier each rule dropped), and after every chunk of messages the
engine's profiles must be the model's partition, each with the events resolved to it. Without
the model: no identifier is ever lost or split away from its profile, no identifier is held
twice, every segment_id ever returned still resolves, replaying the same messages (same
messageIds) changes nothing, and reopening the store changes nothing.

The examples of one test may share a store, so each example writes its values under its own
prefix (`Name`, `Num` and `NumStr` leaves are rendered per example).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, Phase, event, given, note, settings

from idstitch.engine import Engine, Resolution
from idstitch.storage import sqlite_path
from tests.conftest import MakeEngine
from tests.core import reference_model as rm
from tests.core.pure import Core

# ---- values rendered per example ----------------------------------------------------------


@dataclass(frozen=True)
class Name:
    """A string value; `#` becomes the example's prefix."""

    text: str


@dataclass(frozen=True)
class Num:
    """A numeric id (sent as a JSON number)."""

    k: int


@dataclass(frozen=True)
class NumFloat:
    """The same numeric id sent as a JSON number with a fraction part (`7.0`)."""

    k: int


@dataclass(frozen=True)
class NumStr:
    """The same numeric id sent as a string."""

    k: int


_examples = itertools.count(1)

# SPEC 2 defines a limit as what "one profile may hold", so a new profile is held to the
# limits too (SPEC 3 step 3 read alone would create it "holding all identifiers"); this keeps
# "no type is over its limit" true of every profile. See test_a_new_profile_respects_limits.
LIMITS_ON_CREATE = True


def render(value: Any, ns: int) -> Any:
    if isinstance(value, Name):
        return value.text.replace("#", f"x{ns}")
    if isinstance(value, Num):
        return ns * 100 + value.k
    if isinstance(value, NumStr):
        return str(ns * 100 + value.k)
    if isinstance(value, NumFloat):
        return float(ns * 100 + value.k)
    if isinstance(value, dict):
        return {k: render(v, ns) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, ns) for v in value]
    return value


# ---- the generators -------------------------------------------------------------------------

T0 = datetime(2025, 3, 3, tzinfo=UTC)
SOURCES = ["web", "app", "nocreate", "noadd", "nomerge", "locked", "trusted", "untrusted"]
SOURCE_RULES = {
    "nocreate": {"create": False},
    "noadd": {"add": False},
    "nomerge": {"merge": False},
    "locked": {"create": False, "add": False, "merge": False},
    "trusted": {"trust_alias": True},
    "untrusted": {"trust_alias": False},
}
# What `context.library.name` an alias names: a server-side library is trusted by default
# under the idstitch preset.
LIBRARIES = st.sampled_from([None, "analytics-node", "analytics-python", "analytics.js"])
WINDOW_NAMES = ["ever", "annually", "monthly", "weekly", "daily"]

JUNK = st.sampled_from(
    ["null", " undefined ", '"none"', "'NULL'", "Guest", "0", "000", "-", "--0", " ",
     "[object Object]", "-1", "NaN", "TRUE", "nil", 0, -1]
)  # fmt: skip
# Values a call must carry (`userId` / `anonymousId` / `groupId`) may be junk but not empty.
USER_IDS = st.sampled_from(
    [Name("#u1"), Name("#u2"), Name("#u3"), Name(" #u1 "), Num(7), NumStr(7), NumFloat(7)]
)
ANON_IDS = st.sampled_from([Name("#a1"), Name("#a2"), Name("#a3"), Name("#a4"), Num(8)])
EMAILS = st.sampled_from(
    [Name("#ann@x.io"), Name("#ANN@X.io"), Name(" #bob@x.io "), Name("#cy@x.io")]
)
GROUP_IDS = st.sampled_from([Name("#g1"), Name("#g2"), Name("#g3"), Num(5)])
LONG = Name("#" + "z" * 1000)  # longer than 1,000 characters once prefixed
MEMBER_NOS = st.sampled_from([Name("#m1"), Name("#m2"), Num(9)])


def maybe(values: st.SearchStrategy[Any], junk: int = 1, absent: int = 2) -> st.SearchStrategy[Any]:
    """Mostly a pool value, sometimes junk, sometimes absent (None: the key is left out)."""
    choices = [values] * 4 + [JUNK] * junk + [st.none()] * absent
    return st.one_of(*choices)


def put(target: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        target[key] = value


@st.composite
def devices(draw: st.DrawFn) -> dict[str, Any]:
    device: dict[str, Any] = {
        "type": draw(st.sampled_from(["ios", "IOS", "android", "Android", "web"])),
    }
    put(device, "id", draw(maybe(st.sampled_from([Name("#d1"), Name("#d2"), Name("#d3")]))))
    if draw(st.booleans()):
        device["advertisingId"] = draw(st.sampled_from([Name("#ad1"), Name("#ad2")]))
        device["adTrackingEnabled"] = draw(st.sampled_from([True, False, None, "true"]))
    put(device, "token", draw(maybe(st.sampled_from([Name("#t1"), Name("#t2")]), absent=4)))
    return device


@st.composite
def external_ids(draw: st.DrawFn) -> list[dict[str, Any]]:
    items = []
    for _ in range(draw(st.integers(1, 2))):
        value = draw(st.sampled_from([Name("#c1"), Name("#c2"), Num(9)] * 3 + ["null", LONG]))
        items.append(
            {
                "id": value,
                "type": draw(st.sampled_from(["crm", "CRM", "Phone", "member_no"])),
                "collection": draw(
                    st.sampled_from(["users", "users", "accounts", "Accounts ", None, "people"])
                ),
                "encoding": draw(st.sampled_from(["none", None, 3])),
            }
        )
    return items


@st.composite
def contexts(draw: st.DrawFn) -> dict[str, Any]:
    context: dict[str, Any] = {}
    if draw(st.integers(0, 3)) == 0:
        context["traits"] = {"email": draw(maybe(EMAILS, absent=1))}
    if draw(st.integers(0, 2)) == 0:
        context["device"] = draw(devices())
    if draw(st.integers(0, 4)) == 0:
        context["externalIds"] = draw(external_ids())
    if draw(st.integers(0, 6)) == 0:
        ga = draw(st.sampled_from([Name("#ga1"), Name("#ga2")]))
        context["integrations"] = {"Google Analytics": {"clientId": ga}}
    return context


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(
        st.sampled_from(
            ["identify"] * 3 + ["track"] * 3 + ["page", "screen"] + ["group"] * 2 + ["alias"]
        )
    )
    msg: dict[str, Any] = {"type": kind}
    days = draw(st.integers(0, 84)) / 2  # six weeks in half days: windows meet exactly
    msg["timestamp"] = (T0 + timedelta(days=days)).isoformat().replace("+00:00", "Z")
    if kind == "alias":
        msg["userId"] = draw(st.one_of(USER_IDS, USER_IDS, JUNK))
        msg["previousId"] = draw(st.one_of(USER_IDS, ANON_IDS, ANON_IDS, JUNK))
        put(msg, "anonymousId", draw(maybe(ANON_IDS, absent=6)))
        library = draw(LIBRARIES)
        if library is not None:
            msg["context"] = {"library": {"name": library, "version": "1.0.0"}}
        return msg
    put(msg, "userId", draw(maybe(USER_IDS)))
    put(msg, "anonymousId", draw(maybe(ANON_IDS)))
    if "userId" not in msg and "anonymousId" not in msg:
        msg["anonymousId"] = draw(ANON_IDS)
    context = draw(contexts())
    if context:
        msg["context"] = context
    if kind == "identify":
        traits: dict[str, Any] = {"name": "someone"}
        traits["email"] = draw(maybe(EMAILS, absent=2))  # JSON null counts as absent
        if draw(st.integers(0, 3)) == 0:
            traits[draw(st.sampled_from(["member_no", "memberNo"]))] = draw(maybe(MEMBER_NOS))
        msg["traits"] = traits
    elif kind == "group":
        msg["groupId"] = draw(st.one_of(GROUP_IDS, GROUP_IDS, GROUP_IDS, JUNK))
        traits = {"name": "Acme"}
        put(traits, "email", draw(maybe(EMAILS)))  # describes the account: identifies nobody
        if draw(st.booleans()):
            traits[draw(st.sampled_from(["member_no", "memberNo"]))] = draw(MEMBER_NOS)
        msg["traits"] = traits
    else:
        if kind == "track":
            msg["event"] = "Clicked"
        if draw(st.integers(0, 3)) == 0:
            key = draw(st.sampled_from(["member_no", "memberNo"]))
            msg["properties"] = {key: draw(maybe(MEMBER_NOS))}
    return msg


def limit(max_values: st.SearchStrategy[int], windows: list[str]) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries({"max": max_values, "window": st.sampled_from(windows)})


@st.composite
def identity_rules(draw: st.DrawFn) -> dict[str, Any]:
    small = st.integers(1, 3)
    limits: dict[str, Any] = {
        # naming `member_no` declares it as a custom type read from traits and properties
        "member_no": draw(limit(st.integers(1, 2), WINDOW_NAMES)),
    }
    optional = {
        "user_id": limit(st.integers(1, 2), ["ever"]),
        "email": limit(small, WINDOW_NAMES),
        "anonymous_id": limit(small, ["daily", "weekly", "monthly"]),
        "ios.id": limit(st.integers(1, 2), ["weekly", "annually"]),
        "android.id": limit(st.integers(1, 2), ["daily", "ever"]),
        "crm": limit(st.integers(1, 2), WINDOW_NAMES),
        "group_id": limit(st.integers(1, 2), ["ever", "weekly"]),
    }
    for type_, strategy in optional.items():
        if draw(st.booleans()):
            limits[type_] = draw(strategy)
    identity: dict[str, Any] = {"limits": limits, "sources": SOURCE_RULES}
    # Named always: the test fixtures put an unnamed preset on Segment's.
    identity["preset"] = draw(st.sampled_from(["segment", "idstitch"]))
    if draw(st.booleans()):  # values seen with several known users stop linking sooner
        identity["generic_after"] = draw(st.integers(1, 2))
    priority = draw(
        st.sampled_from(
            [[], [], ["email", "user_id"], ["anonymous_id"], ["member_no", "user_id"], ["crm"]]
        )
    )
    if priority:
        identity["priority"] = priority
    if draw(st.integers(0, 3)) == 0:
        identity["blocked_values"] = [Name("#a4"), {"regex": Name("^#c2$")}]
    if draw(st.integers(0, 3)) == 0:
        identity["blocked_values_by_type"] = {"email": [Name(" #CY@x.io ")]}
    if draw(st.integers(0, 3)) > 0:
        identity["max_merges"] = draw(st.integers(1, 3))
    if draw(st.booleans()):
        identity["max_identifiers"] = draw(st.integers(3, 8))
    return identity


@dataclass
class Step:
    message: dict[str, Any]
    source: str


@dataclass
class Scenario:
    identity: dict[str, Any]
    chunks: list[list[Step]]
    reopen: list[bool]  # before each chunk
    grouped: list[bool]  # submit the chunk's messages together (one group commit)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    identity = draw(identity_rules())
    steps: list[Step] = []
    used: list[tuple[Name, str]] = []
    for index in range(draw(st.integers(1, 48))):
        msg = draw(messages())
        source = draw(st.sampled_from(["web"] * 4 + ["app"] * 2 + SOURCES[2:]))
        how = draw(st.sampled_from(["new"] * 6 + ["repeat", "none"]))
        if how == "repeat" and used:
            # the same messageId again, from its source (a duplicate) or from another
            mid, earlier = draw(st.sampled_from(used))
            source = draw(st.sampled_from([earlier, earlier, source]))
            msg["messageId"] = mid
        elif how != "none":
            msg["messageId"] = Name(f"#m-{index}")
            used.append((msg["messageId"], source))
        steps.append(Step(msg, source))
    cuts = sorted(draw(st.sets(st.integers(1, max(len(steps) - 1, 1)), max_size=3)))
    bounds = [0, *[c for c in cuts if c < len(steps)], len(steps)]
    chunks = [steps[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    reopen = [False] + [draw(st.booleans()) for _ in chunks[1:]]
    grouped = [draw(st.booleans()) for _ in chunks]
    return Scenario(identity, chunks, reopen, grouped)


# ---- comparing ------------------------------------------------------------------------------

ENGINE_RULES = {
    "blocked_value": rm.BLOCKED,
    "value_too_long": rm.TOO_LONG,
    "source_create_denied": rm.NO_CREATE,
    "source_add_denied": rm.NO_ADD,
    "source_merge_denied": rm.NO_MERGE,
    "limit_exceeded": rm.LIMIT,
    "time_limit_exceeded": rm.LIMIT,
    "merge_cap": rm.MERGE_CAP,
    "identifier_cap": rm.IDENTIFIER_CAP,
}

Drop = tuple[str, str, str, str]  # (collection, type, value, rule)


def drop_key(collection: str, type_: str, value: str, rule: str) -> Drop:
    if rule == rm.BLOCKED:
        # A blocked alias `previousId` is neither type yet: compare blocked values by value.
        return (collection, "*", value, rule)
    if rule == rm.TOO_LONG:
        return (collection, type_, "*", rule)
    return (collection, type_, value, rule)


class Run:
    """One example: the engine and the model side by side."""

    def __init__(self, make_engine: MakeEngine, config: dict[str, Any]):
        self.make_engine = make_engine
        self.config = config
        self.engine: Engine = make_engine(config)
        self.model = rm.Model(config["identity"], limits_on_create=LIMITS_ON_CREATE)
        self.sid_of: dict[int, str] = {}  # model profile number -> engine segment_id
        self.returned: dict[str, int] = {}  # every segment_id returned -> model profile number
        self.previous: dict[rm.Ident, str] = {}  # last snapshot: identifier -> segment_id
        self.events: dict[int, set[tuple[str, str]]] = {}  # profile -> (source, messageId)
        self.received_at = 1_800_000_000.0

    def reopen(self) -> None:
        self.engine.close()
        self.engine = self.make_engine(self.config)

    def ingest(self, steps: list[Step], grouped: bool) -> list[Resolution]:
        events_before = self.engine.store.stats().events
        results = []
        if grouped:
            tickets = []
            for step in steps:
                self.received_at += 1
                item = self.engine.prepare(step.message, received_at=self.received_at)
                tickets.append(self.engine.submit([item], step.source))
            for ticket in tickets:
                results.extend(Resolution.of(p) for p in ticket.future.result())
        else:
            for step in steps:
                self.received_at += 1
                results.append(
                    self.engine.ingest(
                        step.message, source=step.source, received_at=self.received_at
                    )
                )
        fresh = sum(1 for r in results if r.outcome != "duplicate")
        assert self.engine.store.stats().events == events_before + fresh
        return results

    def compare(self, step: Step, got: Resolution, want: rm.Outcome) -> None:
        where = f"message {step.message!r} from {step.source!r}: engine {got!r}, model {want!r}"
        if want.duplicate:
            assert got.outcome == "duplicate", where
            return
        assert got.outcome != "duplicate", where
        for side, sid, prefix in (
            (want.users, got.segment_id, "use_"),
            (want.accounts, got.account_segment_id, "acc_"),
        ):
            if side.profile is None:
                assert sid is None, where
                continue
            assert sid is not None and sid.startswith(prefix), where
            if side.created:
                assert sid not in self.sid_of.values(), where
                self.sid_of[side.profile] = sid
            else:
                assert sid == self.sid_of[side.profile], where
            self.returned[sid] = side.profile
            self.events.setdefault(side.profile, set()).add((step.source, got.message_id))
        want_merged = sorted(self.sid_of[n] for s in (want.users, want.accounts) for n in s.merged)
        assert sorted(got.merged) == want_merged, where
        want_added = sorted(f"{t}:{v}" for s in (want.users, want.accounts) for _, t, v in s.added)
        assert sorted(got.added) == want_added, where
        want_drops = {drop_key(*ident, rule) for ident, rule in want.extraction_drops}
        for s in (want.users, want.accounts):
            for (collection, type_, value), rule in s.dropped:
                if type_ == "profile":  # a refused merge names the other profile
                    want_drops.add((collection, "segment_id", self.sid_of[int(value)], rule))
                else:
                    want_drops.add(drop_key(collection, type_, value, rule))
        got_drops = {
            drop_key(v.collection, v.type, v.value, ENGINE_RULES.get(v.rule, v.rule))
            for v in got.violations
        }
        assert got_drops == want_drops, where

    def check_state(self) -> None:
        """The engine's profiles against the model, and the model-free invariants."""
        engine, model = self.engine, self.model
        partition: set[frozenset[rm.Ident]] = set()
        owner: dict[rm.Ident, str] = {}
        for sid, number in self.returned.items():
            doc = engine.profile(sid)
            canonical = model.canonical(number)
            assert doc["segment_id"] == self.sid_of[canonical], (sid, doc)
            held = [(e["collection"], e["type"], e["id"]) for e in doc["external_ids"]]
            assert len(held) == len(set(held)), doc
            assert set(held) == set(model.profiles[canonical].ids), (sid, doc)
            # the events of a profile: those resolved to it or to a profile merged into it
            events = {(e["source_id"], e["message_id"]) for e in engine.events(sid, limit=10_000)}
            assert events == {
                event
                for n, got in self.events.items()
                if model.canonical(n) == canonical
                for event in got
            }, sid
            partition.add(frozenset(held))
            for ident in held:
                assert owner.setdefault(ident, doc["segment_id"]) == doc["segment_id"], (
                    f"{ident} is held by two profiles"
                )
        assert partition == model.partition()
        # Model-free: nothing attached before is lost, nor split from its companions.
        for ident in self.previous:
            row = engine.store.find_by_identifier(*ident)
            assert row is not None, f"{ident} was lost"
            assert owner[ident] == row.segment_id
        for a, b in itertools.combinations(self.previous, 2):
            if self.previous[a] == self.previous[b]:
                assert owner[a] == owner[b], f"{a} and {b} were split"
        self.previous = owner

    def replay(self, steps: list[Step]) -> None:
        """Sending every message that has a messageId again, from its source, changes nothing."""
        again = [s for s in steps if "messageId" in s.message]
        if again:
            results = self.ingest(again, grouped=True)
            assert {r.outcome for r in results} == {"duplicate"}
        self.check_state()


def label(outcome: rm.Outcome) -> None:
    """Label what an example exercised (shown by --hypothesis-show-statistics)."""
    if outcome.duplicate:
        event("duplicate")
    for side in (outcome.users, outcome.accounts):
        if side.merged:
            event("merge")
        for _, rule in side.dropped:
            event(f"dropped: {rule}")
    for _, rule in outcome.extraction_drops:
        event(f"dropped: {rule}")


class CoreRun(Run):
    """One example on the identity core alone (tests/core/pure.py): the same decisions and
    partition, without a store (about 35 ms an example, most of it drawing the scenario and
    running the model, against about 200 ms end to end), so the search runs more examples.
    Events, reopening and the stores' rows are checked by the end-to-end runs."""

    def __init__(self, config: dict[str, Any]):
        self.core = Core(config)
        self.model = rm.Model(config["identity"], limits_on_create=LIMITS_ON_CREATE)
        self.sid_of = {}
        self.returned = {}
        self.previous = {}
        self.events = {}

    def reopen(self) -> None:
        pass  # nothing is stored

    def ingest(self, steps: list[Step], grouped: bool) -> list[Resolution]:
        if grouped:  # one call per source run, as a group commit batches them
            results: list[Resolution] = []
            for source, run in itertools.groupby(steps, key=lambda s: s.source):
                results += self.core.ingest_batch([s.message for s in run], source=source)
            return results
        return [self.core.ingest(s.message, source=s.source) for s in steps]

    def check_state(self) -> None:
        partition: set[frozenset[rm.Ident]] = set()
        owner: dict[rm.Ident, str] = {}
        for sid, number in self.returned.items():
            doc = self.core.profile(sid)
            canonical = self.model.canonical(number)
            assert doc["segment_id"] == self.sid_of[canonical], (sid, doc)
            held = [(e["collection"], e["type"], e["id"]) for e in doc["external_ids"]]
            assert set(held) == set(self.model.profiles[canonical].ids), (sid, doc)
            partition.add(frozenset(held))
            for ident in held:
                assert owner.setdefault(ident, doc["segment_id"]) == doc["segment_id"], ident
        assert partition == self.model.partition()
        for a, b in itertools.combinations(self.previous, 2):
            if self.previous[a] == self.previous[b]:
                assert owner[a] == owner[b], f"{a} and {b} were split"
        self.previous = owner


def test_the_core_agrees_with_the_reference_model() -> None:
    examples = int(os.environ.get("IDSTITCH_EXAMPLES", CORE_EXAMPLES))

    @search(examples)
    @given(scenario=scenarios())
    def agree(scenario: Scenario) -> None:
        ns = next(_examples)
        config = {"identity": render(scenario.identity, ns)}
        note(f"config: {config}")
        play(CoreRun(config), scenario, ns)

    agree()


# No explain phase: on Python 3.11 it traces every line of a failing example again, which
# takes minutes here; the failure and its minimal example are reported without it.
PHASES = [phase for phase in Phase if phase is not Phase.explain]


def search(examples: int) -> settings:
    """The settings of a reference-model search of `examples` examples."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        phases=PHASES,
    )


# Examples: the core alone runs many (20 to 50 s, as busy as the machine is); each store runs
# fewer, end to end (events, reopening, replay, the stores' rows). For a longer search, set e.g.
# IDSTITCH_EXAMPLES=3000 (3000 SQLite examples passed when the store runs were the only ones).
CORE_EXAMPLES = 400
EXAMPLES = {"sqlite": 60, "postgres": 30}


def test_engine_agrees_with_the_reference_model(make_engine: MakeEngine, store_kind: str) -> None:
    examples = int(os.environ.get("IDSTITCH_EXAMPLES", EXAMPLES.get(store_kind, 40)))

    @search(examples)
    @given(scenario=scenarios())
    def agree(scenario: Scenario) -> None:
        # The examples share this test's store; each one writes under its own prefix.
        ns = next(_examples)
        config = {"identity": render(scenario.identity, ns)}
        note(f"config: {config}")
        run = Run(make_engine, config)
        try:
            play(run, scenario, ns)
        finally:
            run.engine.close()
            forget(run.engine)

    agree()


def play(run: Run, scenario: Scenario, ns: int) -> None:
    sent: list[Step] = []
    for chunk, reopen, grouped in zip(
        scenario.chunks, scenario.reopen, scenario.grouped, strict=True
    ):
        if reopen:
            run.reopen()
            run.check_state()
        steps = [Step(render(s.message, ns), s.source) for s in chunk]
        note(f"chunk: reopen={reopen} grouped={grouped}")
        for step in steps:
            note(f"  {step.source}: {step.message}")
        results = run.ingest(steps, grouped)
        for step, got in zip(steps, results, strict=True):
            want = run.model.ingest(step.message, step.source)
            run.compare(step, got, want)
            label(want)
        run.check_state()
        sent.extend(steps)
    run.replay(sent)
    run.reopen()
    run.check_state()


def forget(engine: Engine) -> None:
    """Delete a closed SQLite store, so that the next example starts from an empty one (an
    engine loads its whole store at startup). Other stores keep the examples side by side."""
    if engine.store.url.startswith("sqlite:"):
        path = sqlite_path(engine.store.url)
        for suffix in ("", "-wal", "-shm", "-index", "-index-wal", "-index-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)


# ---- disagreements found by the model, as minimal examples -------------------------------------


def test_a_new_profile_respects_limits(make_engine: MakeEngine) -> None:
    """A message that matches no profile creates one, but not past a limit: SPEC 2 defines a
    limit as how many values "one profile may hold"; the lowest-priority identifier goes."""
    engine = make_engine({"identity": {"limits": {"email": {"max": 1, "window": "ever"}}}})
    result = engine.ingest(
        {
            "type": "identify",
            "userId": "u1",
            "traits": {"email": "a@x.io"},
            "context": {"traits": {"email": "b@x.io"}},
        }
    )
    assert result.outcome == "created"
    assert sorted(result.added) == ["email:a@x.io", "user_id:u1"]
    assert [(v.value, v.rule) for v in result.violations] == [("b@x.io", "limit_exceeded")]
