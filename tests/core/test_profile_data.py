"""Alias, accounts and links, trait precedence, deduplication, and event history."""

from __future__ import annotations

import pytest

from idstitch.errors import InvalidMessage
from tests.conftest import MakeEngine
from tests.core.pure import MakeCore
from tests.helpers import at, ids, msg, sid


def test_alias_merges_previous_anonymous_id_with_user(make_core: MakeCore) -> None:
    engine = make_core()
    anon = engine.ingest(msg("page", anonymousId="visitor-1"))
    user = engine.ingest(msg("identify", userId="u1", traits={"email": "a@x.com"}))
    r = engine.ingest(msg("alias", previousId="visitor-1", userId="u1"))
    assert r.outcome == "merged"
    assert r.segment_id == anon.segment_id  # the older profile survives
    assert r.merged == (user.segment_id,)
    assert ids(engine, "user_id:u1") == {"anonymous_id:visitor-1", "user_id:u1", "email:a@x.com"}


def test_alias_previous_id_that_is_a_user_id(make_core: MakeCore) -> None:
    engine = make_core()
    engine.ingest(msg("identify", userId="old-login", anonymousId="a1"))
    r = engine.ingest(msg("alias", previousId="old-login", userId="new-login"))
    # Both are user_ids: one profile may hold only one, so the claim is refused.
    assert r.outcome == "created"
    assert [(v.type, v.value) for v in r.violations] == [("user_id", "old-login")]
    assert sid(engine, "user_id:old-login") != sid(engine, "user_id:new-login")


def test_alias_with_unknown_previous_id_records_it_as_anonymous(make_core: MakeCore) -> None:
    engine = make_core()
    r = engine.ingest(msg("alias", previousId="never-seen", userId="u9", anonymousId="a9"))
    assert r.outcome == "created"
    assert ids(engine, "user_id:u9") == {"user_id:u9", "anonymous_id:a9", "anonymous_id:never-seen"}


def test_alias_requires_both_ids(make_core: MakeCore) -> None:
    engine = make_core()
    with pytest.raises(InvalidMessage) as caught:
        engine.ingest(msg("alias", userId="u1"))
    assert "previousId" in str(caught.value)


def test_group_creates_account_links_and_writes_account_traits(make_engine: MakeEngine) -> None:
    engine = make_engine()
    r = engine.ingest(
        msg(
            "group",
            userId="u1",
            groupId="acme",
            traits={"name": "Acme", "email": "billing@acme.com", "plan": "pro"},
        )
    )
    assert r.account_segment_id is not None and r.account_segment_id.startswith("acc_")
    assert r.segment_id is not None and r.segment_id.startswith("use_")
    # Group traits describe the account: the e-mail identifies nobody.
    assert ids(engine, "user_id:u1") == {"user_id:u1"}
    assert ids(engine, "group_id:acme") == {"group_id:acme"}
    assert engine.traits("group_id:acme") == {
        "name": "Acme",
        "email": "billing@acme.com",
        "plan": "pro",
    }
    assert engine.traits("user_id:u1") == {}
    [link] = engine.links("user_id:u1")
    assert link["to_collection"] == "accounts"
    assert link["segment_id"] == r.account_segment_id
    [back] = engine.links(r.account_segment_id)
    assert back["to_collection"] == "users" and back["segment_id"] == r.segment_id
    profile = engine.profile("group_id:acme")
    assert profile["collection"] == "accounts"


def test_links_are_many_to_many_and_follow_merges(make_engine: MakeEngine) -> None:
    engine = make_engine()
    engine.ingest(msg("group", anonymousId="anon-1", groupId="acme"))
    engine.ingest(msg("group", userId="u1", groupId="globex"))
    engine.ingest(msg("group", userId="u2", groupId="globex"))
    engine.ingest(msg("identify", userId="u1", anonymousId="anon-1"))
    accounts = {link["segment_id"] for link in engine.links("user_id:u1")}
    assert accounts == {sid(engine, "group_id:acme"), sid(engine, "group_id:globex")}
    members = {link["segment_id"] for link in engine.links("group_id:globex")}
    assert members == {sid(engine, "user_id:u1"), sid(engine, "user_id:u2")}
    assert len(engine.links("group_id:acme")) == 1


def test_account_external_ids_and_custom_keys_in_group_traits(make_engine: MakeEngine) -> None:
    engine = make_engine({"identity": {"custom_types": ["salesforce_id"]}})
    engine.ingest(
        msg(
            "group",
            userId="u1",
            groupId="acme",
            traits={"salesforceId": "SF1"},
            context={
                "externalIds": [
                    {"id": "D-1", "type": "domain_id", "collection": "accounts", "encoding": "none"}
                ]
            },
        )
    )
    account = sid(engine, "group_id:acme")
    assert sid(engine, "salesforce_id:SF1") == account  # users first, then accounts
    assert sid(engine, "user_id:u1") != account
    assert ids(engine, "group_id:acme") == {"group_id:acme", "salesforce_id:SF1", "domain_id:D-1"}


def test_traits_latest_event_time_wins_and_null_removes(make_engine: MakeEngine) -> None:
    engine = make_engine()
    engine.ingest(
        msg("identify", userId="u", traits={"plan": "pro", "city": "Oslo"}, timestamp=at(2))
    )
    engine.ingest(
        msg("identify", userId="u", traits={"plan": "free", "age": 30}, timestamp=at(1))
    )  # older: loses on plan, adds age
    assert engine.traits("user_id:u") == {"plan": "pro", "city": "Oslo", "age": 30}
    engine.ingest(msg("identify", userId="u", traits={"city": None}, timestamp=at(3)))
    assert engine.traits("user_id:u") == {"plan": "pro", "age": 30}
    engine.ingest(msg("identify", userId="u", traits={"plan": "team"}, timestamp=at(2)))
    assert engine.traits("user_id:u")["plan"] == "team"  # same time: the later arrival wins
    engine.ingest(msg("identify", userId="u", traits={"plan": ""}, timestamp=at(4)))
    assert engine.traits("user_id:u")["plan"] == ""  # empty string is a value


def test_traits_survive_merges_newest_per_key(make_engine: MakeEngine) -> None:
    engine = make_engine()
    engine.ingest(
        msg("identify", anonymousId="a1", traits={"color": "red", "size": "s"}, timestamp=at(5))
    )
    engine.ingest(
        msg(
            "identify",
            userId="u1",
            traits={"color": "blue", "size": None, "name": "N"},
            timestamp=at(1),
        )
    )
    engine.ingest(msg("identify", userId="u1", traits={"size": None}, timestamp=at(9)))
    engine.ingest(msg("track", userId="u1", anonymousId="a1", timestamp=at(10)))
    assert engine.traits("anonymous_id:a1") == {"color": "red", "name": "N"}
    verbose = engine.traits("user_id:u1", verbose=True)
    assert verbose["color"]["value"] == "red"
    assert verbose["color"]["source_id"] == "api"


def test_duplicate_message_ids_are_acknowledged_not_processed(make_engine: MakeEngine) -> None:
    engine = make_engine()
    first = engine.ingest(msg("identify", userId="u", messageId="m-1", traits={"a": 1}))
    dup = engine.ingest(msg("identify", userId="u", messageId="m-1", traits={"a": 2}))
    assert first.outcome == "created" and dup.outcome == "duplicate"
    other_source = engine.ingest(
        msg("identify", userId="u", messageId="m-1", traits={"b": 3}), source="mobile"
    )
    assert other_source.outcome == "attached"
    assert engine.traits("user_id:u") == {"a": 1, "b": 3}
    # Within one batch too, and after a restart.
    batch = engine.ingest_batch(
        [msg("page", userId="u", messageId="m-2"), msg("page", userId="u", messageId="m-2")]
    )
    assert [r.outcome for r in batch] == ["attached", "duplicate"]
    engine.close()
    again = make_engine()
    assert again.ingest(msg("page", userId="u", messageId="m-2")).outcome == "duplicate"
    assert len(again.events("user_id:u", limit=100)) == 3


def test_invalid_message_in_a_batch_applies_nothing(make_engine: MakeEngine) -> None:
    engine = make_engine()
    with pytest.raises(InvalidMessage) as caught:
        engine.ingest_batch(
            [
                msg("identify", userId="u1"),
                {"type": "track", "userId": "u1"},
                msg("track", userId="u2", event=""),
            ]
        )
    assert caught.value.index == 1
    assert "batch item 1" in str(caught.value)
    assert caught.value.code == "event_not_defined"
    assert engine.store.stats().events == 0


def test_events_keep_full_history_with_order_and_filters(make_engine: MakeEngine) -> None:
    engine = make_engine()
    for day in (3, 1, 2):
        engine.ingest(msg("track", anonymousId="a", event=f"day{day}", timestamp=at(day)))
    other = engine.ingest(msg("track", userId="u", event="other", timestamp=at(0)))
    engine.ingest(msg("identify", userId="u", anonymousId="a", timestamp=at(4)))
    events = engine.events("user_id:u")
    assert [e.get("event") for e in events] == [None, "day3", "day2", "day1", "other"]
    first = engine.events("anonymous_id:a", sort="asc")[0]
    assert first["event"] == "other"
    assert first["external_ids"] == [
        {"collection": "users", "type": "user_id", "id": "u", "encoding": "none"}
    ]
    # An event first stored on a profile merged away since relates to the survivor, the
    # canonical segment_id the profile is found under (as the Profile API's cursor.url).
    survivor = sid(engine, "anonymous_id:a")
    assert other.segment_id != survivor
    assert first["related"] == {"users": survivor}
    assert {e["related"]["users"] for e in events} == {survivor}
    newest = events[0]
    assert newest["type"] == "identify" and newest["timestamp"] == at(4).replace("Z", ".000Z")


def test_unresolved_events_are_stored_with_the_reason(make_engine: MakeEngine) -> None:
    engine = make_engine({"identity": {"sources": {"crm": {"create": False}}}})
    r = engine.ingest(msg("identify", userId="u1"), source="crm")
    assert r.outcome == "unresolved"
    stats = engine.store.stats()
    assert (stats.events, stats.profiles, stats.violations) == (1, 0, 1)
