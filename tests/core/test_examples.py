"""The seed's worked example and Segment's documented examples A to F (SPEC section 3)."""

from __future__ import annotations

import re

import pytest

from idstitch.errors import ProfileNotFound
from tests.conftest import MakeEngine
from tests.helpers import at, ids, msg, sid


def test_seed_example_anonymous_page_signup_then_phone(make_engine: MakeEngine) -> None:
    engine = make_engine()
    first = engine.ingest(
        msg("page", anonymousId="anon_123", name="Pricing", properties={"title": "Acme Pricing"})
    )
    assert first.outcome == "created"
    assert first.segment_id is not None
    assert re.fullmatch(r"use_[0-9A-Za-z]{27}", first.segment_id)
    again = engine.ingest(msg("page", anonymousId="anon_123", name="Docs"))
    assert again.outcome == "attached" and again.segment_id == first.segment_id
    signup = engine.ingest(
        msg("track", event="User Signup", userId="use_123", anonymousId="anon_123")
    )
    assert signup.segment_id == first.segment_id
    assert signup.added == ("user_id:use_123",)
    upgrade = engine.ingest(
        msg(
            "track",
            event="Subscription Upgraded",
            userId="use_123",
            properties={"plan": "Pro", "mrr": 99.99},
            context={
                "externalIds": [
                    {
                        "id": "123-456-7890",
                        "type": "phone",
                        "collection": "users",
                        "encoding": "none",
                    }
                ]
            },
        )
    )
    assert upgrade.segment_id == first.segment_id
    assert ids(engine, "phone:123-456-7890") == {
        "anonymous_id:anon_123",
        "user_id:use_123",
        "phone:123-456-7890",
    }
    assert sid(engine, "phone:123-456-7890") == first.segment_id
    assert len(engine.events(first.segment_id)) == 4


def test_example_a_conflicting_user_ids_drop_the_email(make_engine: MakeEngine) -> None:
    engine = make_engine()
    p1 = engine.ingest(msg("identify", userId="abc123", traits={"email": "jane@example1.com"}))
    result = engine.ingest(msg("identify", userId="abc456", traits={"email": "jane@example1.com"}))
    assert result.outcome == "created"
    assert result.segment_id != p1.segment_id
    assert ids(engine, "user_id:abc456") == {"user_id:abc456"}
    assert ids(engine, "user_id:abc123") == {"user_id:abc123", "email:jane@example1.com"}
    [violation] = result.violations
    assert (violation.type, violation.value, violation.rule) == (
        "email",
        "jane@example1.com",
        "limit_exceeded",
    )
    assert "user_id" in violation.detail


def test_example_b_shared_anonymous_id_keeps_two_signups_apart(make_engine: MakeEngine) -> None:
    engine = make_engine()
    u1 = engine.ingest(msg("track", event="User Signup", anonymousId="a1", userId="u1"))
    engine.ingest(msg("track", event="User Logout", anonymousId="a1"))
    u2 = engine.ingest(msg("track", event="User Signup", anonymousId="a1", userId="u2"))
    assert u2.outcome == "created" and u2.segment_id != u1.segment_id
    assert ids(engine, "user_id:u2") == {"user_id:u2"}
    assert ids(engine, "user_id:u1") == {"user_id:u1", "anonymous_id:a1"}
    assert [v.type for v in u2.violations] == ["anonymous_id"]
    [logged] = engine.violations()
    assert (logged["type"], logged["id"], logged["rule"], logged["message_id"]) == (
        "anonymous_id",
        "a1",
        "limit_exceeded",
        u2.message_id,
    )


def test_example_c_library_problem_shared_device(make_engine: MakeEngine) -> None:
    engine = make_engine()
    kiosk = {"device": {"id": "ipad-1", "type": "ios"}}
    engine.ingest(msg("identify", userId="alice", traits={"email": "alice@x.com"}, context=kiosk))
    bob = engine.ingest(msg("identify", userId="bob", traits={"email": "bob@x.com"}, context=kiosk))
    carol = engine.ingest(msg("track", userId="carol", anonymousId="anon-c", context=kiosk))
    assert len({sid(engine, "user_id:alice"), bob.segment_id, carol.segment_id}) == 3
    assert "ios.id:ipad-1" in ids(engine, "user_id:alice")
    assert ids(engine, "user_id:bob") == {"user_id:bob", "email:bob@x.com"}
    # The loop drops the lowest-priority identifier first, even when it is not the one that
    # links to another person: anonymous_id goes, then the shared ios.id.
    assert ids(engine, "user_id:carol") == {"user_id:carol"}
    assert [v.type for v in carol.violations] == ["anonymous_id", "ios.id"]


def test_example_c_library_browser_two_logins(make_engine: MakeEngine) -> None:
    engine = make_engine()
    engine.ingest(msg("page", anonymousId="library-pc"))
    engine.ingest(msg("identify", anonymousId="library-pc", userId="reader1"))
    engine.ingest(msg("identify", anonymousId="library-pc", userId="reader2"))
    engine.ingest(msg("track", anonymousId="library-pc", userId="reader2"))
    assert sid(engine, "user_id:reader1") != sid(engine, "user_id:reader2")
    assert sid(engine, "anonymous_id:library-pc") == sid(engine, "user_id:reader1")


def test_example_d_anonymous_to_known_cross_device_cross_app(make_engine: MakeEngine) -> None:
    engine = make_engine()
    iphone = {"device": {"id": "ios_abc123", "type": "ios"}}
    android = {"device": {"id": "and_1a2b3c4d", "type": "android"}}
    p1 = engine.ingest(msg("screen", anonymousId="anon_123", name="Home", context=iphone))
    engine.ingest(msg("track", anonymousId="anon_123", event="Product Viewed", context=iphone))
    engine.ingest(
        msg(
            "identify",
            anonymousId="anon_123",
            userId="abc123def",
            traits={"email": "jane@example.com"},
            context=iphone,
        )
    )
    engine.ingest(msg("identify", anonymousId="anon_456", userId="abc123def", context=android))
    last = engine.ingest(msg("track", anonymousId="anon_789", userId="abc123def", context=android))
    assert last.segment_id == p1.segment_id
    assert ids(engine, "android.id:and_1a2b3c4d") == {
        "anonymous_id:anon_123",
        "ios.id:ios_abc123",
        "user_id:abc123def",
        "email:jane@example.com",
        "anonymous_id:anon_456",
        "android.id:and_1a2b3c4d",
        "anonymous_id:anon_789",
    }


def test_example_e_two_anonymous_profiles_joined_by_email(make_engine: MakeEngine) -> None:
    engine = make_engine()
    p1 = engine.ingest(msg("page", anonymousId="5285bc35-05ef-4d21", timestamp=at(0)))
    engine.ingest(
        msg(
            "identify",
            anonymousId="5285bc35-05ef-4d21",
            traits={"email": "jane.kim@segment.com"},
            timestamp=at(0, 60),
        )
    )
    p2 = engine.ingest(msg("page", anonymousId="b50e18a5-1b8d-451c", timestamp=at(21)))
    assert p2.segment_id != p1.segment_id
    joined = engine.ingest(
        msg(
            "identify",
            anonymousId="b50e18a5-1b8d-451c",
            traits={"email": "jane.kim@segment.com"},
            timestamp=at(21, 5),
        )
    )
    assert joined.outcome == "merged"
    assert joined.segment_id == p1.segment_id  # the older profile survives
    assert joined.merged == (p2.segment_id,)
    assert p2.segment_id is not None
    assert sid(engine, p2.segment_id) == p1.segment_id  # the old id keeps resolving
    assert ids(engine, p2.segment_id) == {
        "anonymous_id:5285bc35-05ef-4d21",
        "anonymous_id:b50e18a5-1b8d-451c",
        "email:jane.kim@segment.com",
    }
    metadata = engine.metadata(p2.segment_id)
    assert metadata["segment_id"] == p1.segment_id
    assert metadata["merged_from"] == [p2.segment_id]
    assert len(engine.events(p1.segment_id)) == 4  # history of both, after the merge
    [merge] = engine.merges(p2.segment_id)
    assert (merge["from_segment_id"], merge["into_segment_id"], merge["message_id"]) == (
        p2.segment_id,
        p1.segment_id,
        joined.message_id,
    )


def test_example_f_flowchart_merge_into_the_oldest(make_engine: MakeEngine) -> None:
    engine = make_engine()
    xyz = engine.ingest(
        msg("identify", userId="user_1", anonymousId="anon_3", traits={"email": "demo@gmail.com"})
    )
    abc = engine.ingest(msg("page", anonymousId="anon_1"))
    result = engine.ingest(
        msg("identify", anonymousId="anon_1", userId="user_1", traits={"email": "demo@gmail.com"})
    )
    assert result.outcome == "merged"
    assert result.segment_id == xyz.segment_id
    assert result.merged == (abc.segment_id,)
    assert ids(engine, "anonymous_id:anon_1") == {
        "user_id:user_1",
        "anonymous_id:anon_3",
        "email:demo@gmail.com",
        "anonymous_id:anon_1",
    }


def test_old_segment_ids_resolve_after_a_restart(make_engine: MakeEngine) -> None:
    engine = make_engine()
    a = engine.ingest(msg("page", anonymousId="x1"))
    b = engine.ingest(msg("page", anonymousId="x2"))
    c = engine.ingest(msg("page", anonymousId="x3"))
    engine.ingest(msg("track", anonymousId="x2", userId="u", properties={"email": "no"}))
    engine.ingest(msg("identify", anonymousId="x3", traits={"email": "e@x.com"}))
    engine.ingest(msg("identify", userId="u", traits={"email": "e@x.com"}))
    engine.ingest(msg("identify", anonymousId="x1", traits={"email": "e@x.com"}))
    engine.close()
    reopened = make_engine()
    assert b.segment_id and c.segment_id and a.segment_id
    assert {sid(reopened, s) for s in (a.segment_id, b.segment_id, c.segment_id)} == {a.segment_id}
    assert ids(reopened, "user_id:u") == {
        "anonymous_id:x1",
        "anonymous_id:x2",
        "anonymous_id:x3",
        "user_id:u",
        "email:e@x.com",
    }
    with pytest.raises(ProfileNotFound):
        reopened.profile("user_id:nobody")
