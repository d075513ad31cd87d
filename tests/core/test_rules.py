"""Identity rules: blocked values, limits with windows, priority, per-source rules, caps."""

from __future__ import annotations

import pytest

from idstitch.config import settings_from
from idstitch.errors import ConfigError, InvalidMessage, ProfileNotFound
from tests.conftest import MakeEngine
from tests.core.pure import MakeCore
from tests.helpers import at, ids, msg, sid

JUNK = [
    "null",
    " undefined ",
    '"none"',
    "'NULL'",
    "0000-0000",
    "",
    "   ",
    "[object Object]",
    "-1",
    "NaN",
    "nil",
    "guest",
    "Anonymous",
    "unknown",
    "true",
    "false",
    '"undefined"',
    "null\n",
    "'guest'",
    '""',
    "0",
]


@pytest.mark.parametrize("junk", JUNK)
def test_junk_ids_never_join_two_people(make_core: MakeCore, junk: str) -> None:
    engine = make_core()
    a = engine.ingest(msg("identify", userId="alice", anonymousId=junk, traits={"email": junk}))
    b = engine.ingest(msg("identify", userId="bob", anonymousId=junk, traits={"email": junk}))
    assert a.segment_id != b.segment_id
    assert ids(engine, "user_id:alice") == {"user_id:alice"}
    assert {v.rule for v in a.violations} == {"blocked_value"}
    with pytest.raises(ProfileNotFound):
        engine.profile(f"anonymous_id:{junk.strip() or 'x'}")


def test_junk_user_id_alone_leaves_the_event_unresolved(make_core: MakeCore) -> None:
    engine = make_core()
    result = engine.ingest(msg("track", userId="undefined"))
    assert result.outcome == "unresolved"
    assert result.reason == "no usable identifiers"
    assert [(v.type, v.rule) for v in result.violations] == [("user_id", "blocked_value")]


def test_configured_blocked_values_exact_regex_and_per_type(make_core: MakeCore) -> None:
    engine = make_core(
        {
            "identity": {
                "blocked_values": ["noreply@example.com", {"regex": "^test.*@example\\.com$"}],
                "blocked_values_by_type": {"phone": ["555-000-0000"]},
                "priority": ["user_id", "email", "phone"],
            }
        }
    )
    r = engine.ingest(
        msg(
            "identify",
            userId="u1",
            traits={"email": " NoReply@Example.com ", "phone": "555-000-0000"},
        )
    )
    assert ids(engine, "user_id:u1") == {"user_id:u1"}
    assert sorted(v.type for v in r.violations) == ["email", "phone"]
    engine.ingest(msg("identify", userId="u2", traits={"email": "testing1@example.com"}))
    assert ids(engine, "user_id:u2") == {"user_id:u2"}
    # A value blocked for phone is fine as another type; defaults still apply.
    engine.ingest(msg("identify", userId="555-000-0000"))
    assert ids(engine, "user_id:555-000-0000") == {"user_id:555-000-0000"}
    assert engine.ingest(msg("track", userId="null")).outcome == "unresolved"


def test_overlong_values_are_dropped_with_a_violation(make_core: MakeCore) -> None:
    engine = make_core()
    r = engine.ingest(msg("track", userId="u1", anonymousId="a" * 1001))
    assert ids(engine, "user_id:u1") == {"user_id:u1"}
    assert [v.rule for v in r.violations] == ["value_too_long"]


def test_numbers_are_written_as_javascript_writes_them(make_core: MakeCore) -> None:
    # A browser sends the same user as 1000 whether it was 1e3 or 1000.0 in its code; a
    # backend that writes doubles sends 1000.0. All of them are user_id:1000.
    engine = make_core()
    first = engine.ingest('{"type":"track","event":"E","userId":1000}')
    for raw in ("1000.0", "1e3", "1.0E+3", "1000"):
        again = engine.ingest('{"type":"track","event":"E","userId":' + raw + "}")
        assert again.segment_id == first.segment_id, raw
    assert ids(engine, "user_id:1000") == {"user_id:1000"}
    small = engine.ingest('{"type":"track","event":"E","userId":1.5e-7,"anonymousId":0.25}')
    assert ids(engine, "user_id:1.5e-7") == {"user_id:1.5e-7", "anonymous_id:0.25"}
    assert small.outcome == "created"
    big = engine.ingest('{"type":"track","event":"E","userId":1.5e21,"anonymousId":2e20}')
    assert ids(engine, "user_id:1.5e+21") == {
        "user_id:1.5e+21",
        "anonymous_id:200000000000000000000",
    }
    assert big.outcome == "created"
    zero = engine.ingest('{"type":"track","event":"E","userId":-0.0}')
    assert [v.rule for v in zero.violations] == ["blocked_value"]  # "0", like -0 and 0
    with pytest.raises(InvalidMessage, match="userId"):  # no double holds it
        engine.ingest('{"type":"track","event":"E","userId":1e400,"anonymousId":"h"}')


def test_email_is_trimmed_and_lowercased_and_numbers_are_strings(make_engine: MakeEngine) -> None:
    engine = make_engine()
    engine.ingest(msg("identify", userId=42, traits={"email": "  Jane@Example.COM "}))
    engine.ingest(msg("track", userId="42", context={"traits": {"email": "jane@example.com"}}))
    assert ids(engine, "email:JANE@example.com") == {"user_id:42", "email:jane@example.com"}
    assert len(engine.events("user_id:42")) == 2


WINDOW_DAYS = {"daily": 1, "weekly": 7, "monthly": 30, "annually": 365}


@pytest.mark.parametrize("window", sorted(WINDOW_DAYS))
def test_limit_windows_count_on_event_time(make_core: MakeCore, window: str) -> None:
    days = WINDOW_DAYS[window]
    engine = make_core({"identity": {"limits": {"email": {"max": 2, "window": window}}}})
    engine.ingest(msg("identify", userId="u", traits={"email": "a@x.com"}, timestamp=at(0)))
    engine.ingest(msg("identify", userId="u", traits={"email": "b@x.com"}, timestamp=at(0, 1)))
    inside = engine.ingest(
        msg("identify", userId="u", traits={"email": "c@x.com"}, timestamp=at(days * 0.9))
    )
    assert [(v.value, v.rule) for v in inside.violations] == [("c@x.com", "time_limit_exceeded")]
    after = engine.ingest(
        msg("identify", userId="u", traits={"email": "d@x.com"}, timestamp=at(days + 1))
    )
    assert after.violations == ()
    assert ids(engine, "user_id:u") == {
        "user_id:u",
        "email:a@x.com",
        "email:b@x.com",
        "email:d@x.com",
    }
    # A backfill before the window counts the same way: the first two are within reach.
    early = engine.ingest(
        msg("identify", userId="u", traits={"email": "e@x.com"}, timestamp=at(-days * 0.5))
    )
    assert [v.value for v in early.violations] == ["e@x.com"]


def test_limit_ever_never_expires(make_core: MakeCore) -> None:
    engine = make_core({"identity": {"limits": {"email": {"max": 1, "window": "ever"}}}})
    engine.ingest(msg("identify", userId="u", traits={"email": "a@x.com"}, timestamp=at(0)))
    late = engine.ingest(
        msg("identify", userId="u", traits={"email": "b@x.com"}, timestamp=at(3000))
    )
    assert [v.rule for v in late.violations] == ["limit_exceeded"]


def test_default_anonymous_id_limit_is_five_weekly(make_core: MakeCore) -> None:
    engine = make_core()
    for i in range(5):
        engine.ingest(msg("track", userId="u", anonymousId=f"a{i}", timestamp=at(i)))
    sixth = engine.ingest(msg("track", userId="u", anonymousId="a5", timestamp=at(5)))
    assert [v.value for v in sixth.violations] == ["a5"]
    later = engine.ingest(msg("track", userId="u", anonymousId="a6", timestamp=at(20)))
    assert later.violations == ()


def test_merge_refused_when_the_merged_profile_would_exceed_a_limit(
    make_core: MakeCore,
) -> None:
    engine = make_core({"identity": {"limits": {"email": {"max": 2, "window": "ever"}}}})
    engine.ingest(msg("identify", anonymousId="a1", traits={"email": "x1@x.com"}))
    engine.ingest(msg("identify", anonymousId="a1", traits={"email": "x2@x.com"}))
    engine.ingest(msg("identify", anonymousId="a2", traits={"email": "y1@x.com"}))
    # user_id:u is new; a1 and a2 profiles would merge into 3 emails: anonymous_id a2 goes.
    r = engine.ingest(
        msg("track", userId="u", anonymousId="a2", context={"traits": {"email": "x1@x.com"}})
    )
    assert r.outcome == "attached"
    assert sid(engine, "anonymous_id:a1") != sid(engine, "anonymous_id:a2")
    assert "user_id:u" in ids(engine, "anonymous_id:a1")


def test_a_profile_over_a_tightened_limit_stays_usable(make_engine: MakeEngine) -> None:
    engine = make_engine()
    for i in range(3):
        engine.ingest(msg("identify", userId="u", traits={"email": f"e{i}@x.com"}))
    engine.close()
    tight = make_engine({"identity": {"limits": {"email": {"max": 1, "window": "ever"}}}})
    again = tight.ingest(msg("identify", userId="u", traits={"email": "e1@x.com"}))
    assert again.outcome == "attached" and again.violations == ()
    more = tight.ingest(msg("identify", userId="u", traits={"email": "new@x.com"}))
    assert [v.value for v in more.violations] == ["new@x.com"]


@pytest.mark.parametrize(
    ("priority", "winner"),
    [(None, "user_id:u2"), (["user_id", "anonymous_id", "email"], "user_id:u1")],
)
def test_priority_decides_which_identifier_goes(
    make_core: MakeCore, priority: list[str] | None, winner: str
) -> None:
    config = {"identity": {"priority": priority}} if priority else {}
    engine = make_core(config)
    engine.ingest(msg("identify", userId="u1", anonymousId="shared"))
    engine.ingest(msg("identify", userId="u2", traits={"email": "e@x.com"}))
    # Both profiles match and would hold two user_ids: the lower-ranked identifier goes.
    r = engine.ingest(msg("page", anonymousId="shared", context={"traits": {"email": "e@x.com"}}))
    assert r.segment_id == sid(engine, winner)
    assert sid(engine, "user_id:u1") != sid(engine, "user_id:u2")


def test_default_priority_order() -> None:
    default = settings_from({}).rules
    assert default.ordered_types(
        ["anonymous_id", "ios.id", "email", "user_id", "ga_client_id"]
    ) == ["user_id", "email", "ios.id", "ga_client_id", "anonymous_id"]


def test_unranked_custom_types_sort_alphabetically_after_builtins() -> None:
    rules = settings_from({"identity": {"priority": ["phone", "user_id"]}}).rules
    order = rules.ordered_types(["zeta", "anonymous_id", "alpha", "email", "user_id", "phone"])
    assert order == ["phone", "user_id", "email", "anonymous_id", "alpha", "zeta"]


def test_a_group_call_keeps_its_own_group_id_over_a_custom_account_id(
    make_core: MakeCore,
) -> None:
    """`aaa` sorts before `group_id`: ranked A to Z, the group call for g3 would give up g3
    and land on g1's account."""
    engine = make_core({"identity": {"custom_types": ["aaa"], "limits": {"group_id": {"max": 1}}}})
    engine.ingest(msg("group", userId="u1", groupId="g1", traits={"aaa": "A"}))
    engine.ingest(msg("group", userId="u1", groupId="g3", traits={"aaa": "A"}))
    g1 = engine.profile("group_id:g1")["segment_id"]
    g3 = engine.profile("group_id:g3")["segment_id"]
    assert g1 != g3
    assert engine.profile("aaa:A")["segment_id"] == g1
    assert settings_from({}).rules.ordered_types(["aaa", "domain", "group_id"])[0] == "group_id"


def test_source_that_may_not_create_profiles(make_core: MakeCore) -> None:
    engine = make_core({"identity": {"sources": {"crm": {"create": False}}}})
    r = engine.ingest(msg("identify", userId="u1"), source="crm")
    assert r.outcome == "unresolved"
    assert r.reason == "source 'crm' may not create profiles"
    assert [v.rule for v in r.violations] == ["source_create_denied"]
    engine.ingest(msg("identify", userId="u1"), source="web")
    ok = engine.ingest(msg("identify", userId="u1", traits={"email": "a@x.com"}), source="crm")
    assert ok.outcome == "attached"


def test_source_that_may_not_add_identifiers(make_engine: MakeEngine) -> None:
    engine = make_engine({"identity": {"sources": {"crm": {"add": False}}}})
    engine.ingest(msg("identify", userId="u1"), source="web")
    r = engine.ingest(msg("identify", userId="u1", traits={"email": "a@x.com"}), source="crm")
    assert r.outcome == "attached"
    assert [(v.value, v.rule) for v in r.violations] == [("a@x.com", "source_add_denied")]
    assert ids(engine, "user_id:u1") == {"user_id:u1"}
    assert len(engine.events("user_id:u1")) == 2


def test_a_source_that_may_not_add_identifiers_still_keeps_people_apart(
    make_engine: MakeEngine,
) -> None:
    """The library problem through a source denied `add`: Bob logs in on Alice's browser. His
    user_id may not be added to her profile, but it still counts against the user_id limit, so
    the shared anonymous id is dropped and Bob gets his own profile, as from any source."""
    engine = make_engine({"identity": {"sources": {"crm": {"add": False}}}})
    alice = engine.ingest(
        msg("identify", userId="alice", anonymousId="shared", traits={"name": "Alice"}),
        source="web",
    )
    bob = engine.ingest(
        msg("identify", userId="bob", anonymousId="shared", traits={"name": "Bob"}),
        source="crm",
    )
    assert bob.outcome == "created"
    assert bob.segment_id != alice.segment_id
    assert [(v.value, v.rule) for v in bob.violations] == [("shared", "limit_exceeded")]
    assert engine.traits("user_id:alice") == {"name": "Alice"}
    assert engine.traits("user_id:bob") == {"name": "Bob"}


def test_source_that_may_not_merge(make_core: MakeCore) -> None:
    engine = make_core({"identity": {"sources": {"crm": {"merge": False}}}})
    engine.ingest(msg("identify", userId="u1"), source="web")
    engine.ingest(msg("page", anonymousId="a1"), source="web")
    r = engine.ingest(msg("identify", userId="u1", anonymousId="a1"), source="crm")
    assert r.outcome == "attached"
    assert [(v.value, v.rule) for v in r.violations] == [("a1", "source_merge_denied")]
    assert sid(engine, "user_id:u1") != sid(engine, "anonymous_id:a1")
    merged = engine.ingest(msg("identify", userId="u1", anonymousId="a1"), source="web")
    assert merged.outcome == "merged"


def test_merge_cap(make_engine: MakeEngine) -> None:
    engine = make_engine({"identity": {"max_merges": 2}})
    engine.ingest(msg("identify", userId="u"))
    for i in range(3):
        engine.ingest(msg("page", anonymousId=f"a{i}"))
    assert engine.ingest(msg("page", userId="u", anonymousId="a0")).outcome == "merged"
    assert engine.ingest(msg("page", userId="u", anonymousId="a1")).outcome == "merged"
    third = engine.ingest(msg("page", userId="u", anonymousId="a2"))
    assert third.outcome == "attached"  # the event still resolves to the profile
    assert [v.rule for v in third.violations] == ["merge_cap"]
    assert sid(engine, "anonymous_id:a2") != sid(engine, "user_id:u")
    # Past the cap nothing further is added either (SPEC 2): a new identifier stays unowned.
    fourth = engine.ingest(msg("page", userId="u", anonymousId="a-new"))
    assert fourth.outcome == "attached"
    assert [(v.value, v.rule) for v in fourth.violations] == [("a-new", "merge_cap")]
    assert "anonymous_id:a-new" not in ids(engine, "user_id:u")
    with pytest.raises(ProfileNotFound):
        engine.profile("anonymous_id:a-new")


def test_identifier_cap(make_core: MakeCore) -> None:
    engine = make_core({"identity": {"max_identifiers": 3}})
    engine.ingest(msg("identify", userId="u", anonymousId="a0", traits={"email": "e@x.com"}))
    r = engine.ingest(msg("track", userId="u", anonymousId="a1"))
    assert r.outcome == "attached"
    assert [(v.value, v.rule) for v in r.violations] == [("a1", "identifier_cap")]
    assert len(ids(engine, "user_id:u")) == 3


def test_configured_custom_types_are_read_from_traits_and_properties(
    make_core: MakeCore,
) -> None:
    engine = make_core(
        {
            "identity": {
                "priority": ["user_id", "email", "phone_number"],
                "limits": {"phone_number": {"max": 1, "window": "ever"}},
                "custom_types": ["shopify_id"],
            }
        }
    )
    engine.ingest(msg("identify", userId="u1", traits={"phoneNumber": "+1 555"}))
    engine.ingest(msg("track", userId="u1", properties={"shopify_id": 99}))
    engine.ingest(msg("page", anonymousId="a9", context={"traits": {"phone_number": "+1 555"}}))
    assert ids(engine, "phone_number:+1 555") == {
        "user_id:u1",
        "phone_number:+1 555",
        "shopify_id:99",
        "anonymous_id:a9",
    }
    # An undeclared key is payload, not an identifier.
    engine.ingest(msg("identify", userId="u2", traits={"loyalty_id": "L1"}))
    assert ids(engine, "user_id:u2") == {"user_id:u2"}


def test_custom_types_are_read_from_traits_and_properties_of_any_call(
    make_core: MakeCore,
) -> None:
    engine = make_core({"identity": {"custom_types": ["phone", "shop_id"]}})
    # SPEC 1 lists `traits`, `properties` and `context.traits` with no call type: a track
    # call's traits and an identify call's properties count too.
    engine.ingest(msg("track", userId="ck1", event="E", traits={"phone": "p1", "shopId": "s1"}))
    engine.ingest(msg("identify", userId="ck2", properties={"phone": "p2"}))
    assert ids(engine, "user_id:ck1") == {"user_id:ck1", "phone:p1", "shop_id:s1"}
    assert ids(engine, "user_id:ck2") == {"user_id:ck2", "phone:p2"}
    # A group call's traits describe the account; its properties and context.traits the user.
    engine.ingest(
        msg(
            "group",
            userId="ck3",
            groupId="g3",
            traits={"shop_id": "acct-shop"},
            properties={"phone": "p3"},
        )
    )
    assert ids(engine, "user_id:ck3") == {"user_id:ck3", "phone:p3"}
    assert engine.profile("shop_id:acct-shop")["collection"] == "accounts"


def test_device_ids_by_type_and_ad_tracking(make_core: MakeCore) -> None:
    engine = make_core()
    engine.ingest(
        msg(
            "track",
            userId="u1",
            context={
                "device": {
                    "id": "d1",
                    "type": "IOS",
                    "advertisingId": "ad1",
                    "adTrackingEnabled": False,
                    "token": "t1",
                }
            },
        )
    )
    engine.ingest(
        msg(
            "track",
            userId="u1",
            context={
                "device": {
                    "id": "d2",
                    "type": "android",
                    "advertisingId": "ad2",
                    "adTrackingEnabled": True,
                },
                "integrations": {"Google Analytics": {"clientId": "ga.1"}},
            },
        )
    )
    engine.ingest(msg("track", userId="u1", context={"device": {"id": "d3", "type": "web"}}))
    assert ids(engine, "user_id:u1") == {
        "user_id:u1",
        "ios.id:d1",
        "ios.push_token:t1",
        "android.id:d2",
        "android.idfa:ad2",
        "ga_client_id:ga.1",
    }


@pytest.mark.parametrize(
    ("identity", "key"),
    [
        ({"limits": {"email": {"max": 0}}}, "identity.limits.email.max"),
        ({"limits": {"email": {"max": 2, "window": "hourly"}}}, "identity.limits.email.window"),
        ({"blocked_values": [{"regex": "("}]}, "identity.blocked_values[0].regex"),
        ({"sources": {"web": {"create": "no"}}}, "identity.sources.web.create"),
        ({"priorty": ["user_id"]}, "identity.priorty"),
        ({"priority": ["user_id", "user_id"]}, "identity.priority"),
        ({"priority": ["User Id!"]}, "identity.priority"),
    ],
)
def test_bad_config_names_the_key(identity: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from({"identity": identity})
    assert f"`{key}`" in str(caught.value)
    assert ";" in str(caught.value)  # problem; fix
