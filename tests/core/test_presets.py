"""The two presets: `segment` (Segment's rules exactly) and `idstitch` (logins as evidence,
trusted aliases). Each case runs on the core, and the ones that matter end to end on every
store."""

from __future__ import annotations

import pytest

from idstitch.errors import ConfigError
from tests.conftest import MakeEngine
from tests.core.pure import MakeCore
from tests.helpers import at, ids, msg, sid

IDSTITCH = {"identity": {"preset": "idstitch"}}
SEGMENT = {"identity": {"preset": "segment"}}
SERVER = {"library": {"name": "analytics-node", "version": "2.1.0"}}
BROWSER = {"library": {"name": "analytics.js", "version": "next-1.84.3"}}


def login(user: str, browser: int, day: int = 1) -> dict[str, object]:
    return msg("identify", userId=user, anonymousId=f"{user}-b{browser}", timestamp=at(day))


@pytest.mark.parametrize(("config", "held"), [(SEGMENT, 5), (IDSTITCH, 9)])
def test_a_user_logging_in_from_many_browsers_in_a_week(
    make_core: MakeCore, config: dict[str, object], held: int
) -> None:
    core = make_core(config)
    results = [core.ingest(login("alice", b)) for b in range(9)]
    cookies = {i for i in ids(core, "user_id:alice") if i.startswith("anonymous_id:")}
    assert len(cookies) == held
    refused = [r for r in results if r.violations]
    assert len(refused) == 9 - held
    assert all(v.rule == "time_limit_exceeded" for r in refused for v in r.violations)


@pytest.mark.parametrize(("config", "joined"), [(SEGMENT, False), (IDSTITCH, True)])
def test_a_login_joins_the_browsers_anonymous_profile_past_the_weekly_count(
    make_core: MakeCore, config: dict[str, object], joined: bool
) -> None:
    core = make_core(config)
    for b in range(5):
        core.ingest(login("alice", b))
    core.ingest(msg("page", anonymousId="alice-b5", timestamp=at(2)))  # browses first
    result = core.ingest(login("alice", 5, day=2))
    assert (result.outcome == "merged") is joined
    assert (sid(core, "anonymous_id:alice-b5") == sid(core, "user_id:alice")) is joined


def test_a_cookie_held_by_another_user_is_still_refused(make_core: MakeCore) -> None:
    """The library problem: a login is evidence only for a cookie no other user holds."""
    core = make_core(IDSTITCH)
    core.ingest(msg("identify", userId="alice", anonymousId="kiosk"))
    result = core.ingest(msg("identify", userId="bob", anonymousId="kiosk"))
    assert [v.rule for v in result.violations] == ["conflict", "limit_exceeded"]
    assert ids(core, "user_id:bob") == {"user_id:bob"}
    assert sid(core, "anonymous_id:kiosk") == sid(core, "user_id:alice")


def test_the_cookies_anonymous_profiles_bring_to_a_login_still_count(make_core: MakeCore) -> None:
    """Segment's rules: five visitors who typed one placeholder e-mail form one anonymous
    profile of five cookies; a login that would join it and another browser's profile brings
    six, and its cookie is refused."""
    core = make_core(SEGMENT)
    for v in range(5):
        core.ingest(msg("identify", anonymousId=f"v{v}", traits={"email": "test@test.com"}))
    core.ingest(msg("page", anonymousId="own"))
    result = core.ingest(
        msg("identify", userId="alice", anonymousId="own", traits={"email": "test@test.com"})
    )
    assert [(v.value, v.rule) for v in result.violations] == [("own", "time_limit_exceeded")]
    assert sid(core, "anonymous_id:own") != sid(core, "user_id:alice")


def test_an_anonymous_profile_holds_three_browsers_under_the_idstitch_preset(
    make_core: MakeCore,
) -> None:
    """Without a known user, a value other than a login (a placeholder e-mail typed into
    forms) glues at most three browsers, ever; the visitors after that keep their own."""
    core = make_core(IDSTITCH)
    results = [
        core.ingest(
            msg(
                "identify",
                anonymousId=f"v{v}",
                traits={"email": "test@test.com"},
                timestamp=at(7 * v),
            )
        )
        for v in range(5)
    ]
    assert [[(x.value, x.rule) for x in r.violations] for r in results] == [
        [], [], [], [("v3", "limit_exceeded")], [("v4", "limit_exceeded")]
    ]  # fmt: skip
    assert {i for i in ids(core, "email:test@test.com") if i.startswith("anonymous_id:")} == {
        "anonymous_id:v0", "anonymous_id:v1", "anonymous_id:v2"
    }  # fmt: skip
    # A known user's profile is not held to it: her own browsers join by her e-mail.
    core.ingest(msg("identify", userId="ann", traits={"email": "ann@x.io"}))
    for b in range(4):
        joined = core.ingest(msg("identify", anonymousId=f"ann-{b}", traits={"email": "ann@x.io"}))
        assert not joined.violations


@pytest.mark.parametrize(
    ("config", "context", "merged"),
    [
        (SEGMENT, SERVER, False),
        (IDSTITCH, SERVER, True),
        (IDSTITCH, BROWSER, False),
        (IDSTITCH, {}, False),
        (
            {"identity": {"preset": "idstitch", "sources": {"default": {"trust_alias": False}}}},
            SERVER,
            False,
        ),
        (
            {"identity": {"preset": "idstitch", "sources": {"default": {"trust_alias": True}}}},
            BROWSER,
            True,
        ),
        (
            {"identity": {"preset": "segment", "sources": {"default": {"trust_alias": True}}}},
            {},
            True,
        ),
    ],
)
def test_an_alias_between_two_user_ids_merges_when_its_source_is_trusted(
    make_core: MakeCore, config: dict[str, object], context: dict[str, object], merged: bool
) -> None:
    core = make_core(config)
    core.ingest(msg("identify", userId="old-id", anonymousId="a1", traits={"email": "p@x.io"}))
    core.ingest(msg("identify", userId="new-id", anonymousId="a2"))
    result = core.ingest(msg("alias", previousId="old-id", userId="new-id", context=context))
    assert (result.outcome == "merged") is merged
    assert (sid(core, "user_id:old-id") == sid(core, "user_id:new-id")) is merged
    if merged:
        assert ids(core, "user_id:new-id") >= {"user_id:old-id", "email:p@x.io", "anonymous_id:a2"}
        later = core.ingest(msg("track", userId="new-id", anonymousId="a3", event="x"))
        assert not later.violations and later.segment_id == sid(core, "user_id:old-id")
    else:
        assert [v.rule for v in result.violations] == ["limit_exceeded"]


def test_a_trusted_alias_still_respects_the_other_limits(make_core: MakeCore) -> None:
    core = make_core({"identity": {"preset": "idstitch", "limits": {"email": {"max": 1}}}})
    core.ingest(msg("identify", userId="old-id", traits={"email": "p@x.io"}))
    core.ingest(msg("identify", userId="new-id", traits={"email": "q@x.io"}))
    result = core.ingest(msg("alias", previousId="old-id", userId="new-id", context=SERVER))
    assert result.outcome == "attached"
    assert sid(core, "user_id:old-id") != sid(core, "user_id:new-id")


def test_an_unknown_preset_is_refused_with_the_choices() -> None:
    with pytest.raises(
        ConfigError, match=r"`identity\.preset` is 'smart'; use one of segment, idstitch"
    ):
        from idstitch.config import settings_from

        settings_from({"identity": {"preset": "smart"}})


@pytest.mark.parametrize("preset", ["segment", "idstitch"])
def test_presets_end_to_end(make_engine: MakeEngine, preset: str) -> None:
    engine = make_engine({"identity": {"preset": preset}})
    for b in range(7):
        engine.ingest(login("alice", b))
    engine.ingest(msg("identify", userId="alice-2", anonymousId="z"))
    engine.ingest(msg("alias", previousId="alice", userId="alice-2", context=SERVER))
    cookies = {i for i in ids(engine, "user_id:alice") if i.startswith("anonymous_id:")}
    together = sid(engine, "user_id:alice") == sid(engine, "user_id:alice-2")
    if preset == "segment":
        assert len(cookies) == 5 and not together
    else:
        assert len(cookies) == 8 and together
        # The merge names the rule that let it past the user_id limit; the logins' did not.
        rules = [m["rule"] for m in engine.merges("user_id:alice")]
        assert rules == ["trusted_alias"]


@pytest.mark.parametrize(
    "placeholder", ["(null)", "<NULL>", "n/a", " #N/A ", "(not set)", '"(null)"']
)
def test_missing_values_written_as_text_are_blocked_under_the_idstitch_preset(
    make_core: MakeCore, placeholder: str
) -> None:
    for config, blocked in ((IDSTITCH, True), (SEGMENT, False)):
        core = make_core(config)
        a = core.ingest(msg("track", userId=placeholder, anonymousId="a1", event="x"))
        b = core.ingest(msg("track", userId=placeholder, anonymousId="b1", event="x"))
        assert (a.segment_id != b.segment_id) is blocked, config
        assert ("blocked_value" in {v.rule for v in a.violations}) is blocked, config


PHONE = {"device": {"id": "tablet-1", "type": "ios"}}


def test_a_phone_seen_with_a_second_known_user_is_shared_from_then_on(make_core: MakeCore) -> None:
    core = make_core(IDSTITCH)
    core.ingest(msg("identify", userId="alice", anonymousId="a1", context=PHONE))
    early = core.ingest(msg("screen", anonymousId="b0", context=PHONE, name="Home"))
    assert early.segment_id == sid(core, "user_id:alice")  # nothing says otherwise yet
    login = core.ingest(msg("identify", userId="bob", anonymousId="b1", context=PHONE))
    rules = [(v.value, v.rule) for v in login.violations]
    assert ("tablet-1", "conflict") in rules and ("tablet-1", "shared_device") in rules
    assert ids(core, "user_id:bob") == {"user_id:bob"}  # b1 came with the phone: refused
    later = core.ingest(msg("screen", anonymousId="b2", context=PHONE, name="Home"))
    assert later.outcome == "created"  # the phone no longer carries anonymous activity
    assert ids(core, later.segment_id) == {"anonymous_id:b2"}
    own = core.ingest(msg("identify", userId="bob", anonymousId="b2", context=PHONE))
    assert own.outcome == "merged" and not own.violations  # the phone is simply left out
    assert sid(core, "ios.id:tablet-1") == sid(core, "user_id:alice")  # lookups still work


@pytest.mark.parametrize(("after", "generic_at"), [(2, 3), (1, 2), (3, 4)])
def test_a_value_seen_with_more_known_users_than_allowed_stops_linking(
    make_core: MakeCore, after: int, generic_at: int
) -> None:
    core = make_core({"identity": {"preset": "idstitch", "generic_after": after}})
    for n in range(1, 6):
        result = core.ingest(msg("identify", userId=f"u{n}", traits={"email": "test@test.com"}))
        marked = "generic_identifier" in {v.rule for v in result.violations}
        assert marked is (n == generic_at), n
    visitor = core.ingest(msg("identify", anonymousId="v1", traits={"email": "test@test.com"}))
    assert visitor.outcome == "created"
    assert ids(core, "anonymous_id:v1") == {"anonymous_id:v1"}
    assert sid(core, "email:test@test.com") == sid(core, "user_id:u1")


def test_a_kiosk_cookie_seen_with_three_known_users_resolves_nothing(make_core: MakeCore) -> None:
    core = make_core(IDSTITCH)
    for user in ("alice", "bob", "carol"):
        core.ingest(msg("identify", userId=user, anonymousId="kiosk"))
    alone = core.ingest(msg("page", anonymousId="kiosk"))
    assert alone.outcome == "unresolved"
    assert "several known users" in (alone.reason or "")
    dave = core.ingest(msg("identify", userId="dave", anonymousId="kiosk"))
    assert dave.outcome == "created" and not dave.violations
    assert ids(core, "user_id:dave") == {"user_id:dave"}


def test_segments_preset_records_no_conflicts(make_core: MakeCore) -> None:
    core = make_core(SEGMENT)
    core.ingest(msg("identify", userId="alice", context=PHONE))
    for user in ("bob", "carol"):
        result = core.ingest(msg("identify", userId=user, context=PHONE))
        assert {v.rule for v in result.violations} == {"limit_exceeded"}
    later = core.ingest(msg("screen", anonymousId="x", context=PHONE, name="Home"))
    assert later.segment_id == sid(core, "user_id:alice")


def test_shared_values_stay_shared_after_a_restart(make_engine: MakeEngine) -> None:
    engine = make_engine(IDSTITCH)
    engine.ingest(msg("identify", userId="alice", context=PHONE))
    engine.ingest(msg("identify", userId="bob", context=PHONE))
    for n in range(1, 4):
        engine.ingest(msg("identify", userId=f"u{n}", traits={"email": "test@test.com"}))
    engine.close()
    again = make_engine(IDSTITCH)
    phone = again.ingest(msg("screen", anonymousId="z1", context=PHONE, name="Home"))
    assert phone.outcome == "created"
    email = again.ingest(msg("identify", anonymousId="z2", traits={"email": "test@test.com"}))
    assert email.outcome == "created"
    assert sid(again, "ios.id:tablet-1") == sid(again, "user_id:alice")
    rules = {v["rule"] for v in again.violations(limit=1000)}
    assert {"conflict", "shared_device", "generic_identifier"} <= rules
    stopped = again.violations(rules=["shared_device", "generic_identifier"])
    assert [(v["id"], v["rule"]) for v in stopped] == [
        ("test@test.com", "generic_identifier"),
        ("tablet-1", "shared_device"),
    ]
