"""The Profile API's repairs on every store: Segment's Delete Profile Identifier API with each
of its documented error codes, and unmerge."""

from __future__ import annotations

from typing import Any

import pytest

from idstitch.engine import Engine
from tests.conftest import STORES
from tests.http.conftest import READ, TestClient, profile_url


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _ann(engine: Engine) -> None:
    """Ann: an anonymous visit, then a login with an e-mail; her second browser is merged in
    by a later login; she joins Acme."""
    engine.ingest_batch(
        [
            {"type": "page", "anonymousId": "a1", "messageId": "m1"},
            {"type": "identify", "anonymousId": "a1", "userId": "ann", "messageId": "m2",
             "traits": {"email": "ann@example.com", "plan": "pro"}},
            {"type": "page", "anonymousId": "a2", "messageId": "m3"},
            {"type": "identify", "anonymousId": "a2", "userId": "ann", "messageId": "m4"},
            {"type": "group", "userId": "ann", "groupId": "acme", "messageId": "m5"},
        ]
    )  # fmt: skip


def _delete(client: TestClient, ref: str, body: Any, collection: str = "users") -> Any:
    return client.post(profile_url(ref, "external_ids/delete", collection), json=body, headers=READ)


def _one(type_: str, value: str) -> dict[str, Any]:
    return {"delete_external_ids": [{"type": type_, "id": value}]}


def _error(response: Any, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    message: str = body["error"]["message"]
    return message


def test_a_deleted_identifier_no_longer_finds_the_profile(
    client: TestClient, engine: Engine
) -> None:
    _ann(engine)
    before = engine.profile("user_id:ann")
    done = _delete(client, "user_id:ann", _one("email", "ann@example.com"))
    assert done.status_code == 200, done.text
    assert done.json() == {
        "segment_id": before["segment_id"],
        "deleted": {"type": "email", "id": "ann@example.com"},
    }
    gone = client.get(profile_url("email:ann@example.com", "traits"), headers=READ)
    assert gone.status_code == 404
    after = engine.profile("user_id:ann")
    assert {(e["type"], e["id"]) for e in after["external_ids"]} == {
        ("user_id", "ann"), ("anonymous_id", "a1"), ("anonymous_id", "a2")
    }  # fmt: skip
    # Traits, events and merge history stay.
    assert after["traits"] == before["traits"] == {"email": "ann@example.com", "plan": "pro"}
    assert len(engine.events("user_id:ann")) == 5
    assert len(engine.merges("user_id:ann")) == 1
    # A later message carrying it resolves afresh: here, a visitor who types it.
    engine.ingest({"type": "identify", "anonymousId": "b9", "traits": {"email": "ann@example.com"}})
    assert engine.profile("email:ann@example.com")["segment_id"] != before["segment_id"]
    # The deletion does not undo itself on a restart of the graph (read from the store).
    engine.ingest({"type": "track", "userId": "ann", "event": "Seen"})
    assert engine.profile("user_id:ann")["segment_id"] == before["segment_id"]


def test_every_documented_error_of_delete(client: TestClient, engine: Engine) -> None:
    _ann(engine)
    engine.ingest({"type": "identify", "userId": "bob", "anonymousId": "b1"})
    # 400 unsupported_eid_type: a group_id.
    _error(_delete(client, "user_id:ann", _one("group_id", "acme")), 400, "unsupported_eid_type")
    # 400 bad_request: more than one id, none, the lookup id itself, not by user_id, another
    # collection, a body that is not JSON, a type that is not a string.
    two = {"delete_external_ids": [{"type": "anonymous_id", "id": "a1"}] * 2}
    assert "exactly one" in _error(_delete(client, "user_id:ann", two), 400, "bad_request")
    _error(_delete(client, "user_id:ann", {"delete_external_ids": []}), 400, "bad_request")
    _error(_delete(client, "user_id:ann", {}), 400, "bad_request")
    same = _error(_delete(client, "user_id:ann", _one("user_id", "ann")), 400, "bad_request")
    assert "at least one user_id" in same
    by_email = _delete(client, "email:ann@example.com", _one("anonymous_id", "a1"))
    assert "user_id" in _error(by_email, 400, "bad_request")
    accounts = _delete(client, "user_id:ann", _one("anonymous_id", "a1"), "accounts")
    _error(accounts, 400, "bad_request")
    raw = client.post(
        profile_url("user_id:ann", "external_ids/delete"), content=b"{nope", headers=READ
    )
    _error(raw, 400, "bad_request")
    bad_type = _delete(client, "user_id:ann", {"delete_external_ids": [{"type": 5, "id": "x"}]})
    _error(bad_type, 400, "bad_request")
    # 404 not_found: no such user; 404 eid_not_found: the profile does not hold it (bob's).
    _error(_delete(client, "user_id:nobody", _one("anonymous_id", "a1")), 404, "not_found")
    _error(_delete(client, "user_id:ann", _one("anonymous_id", "b1")), 404, "eid_not_found")
    # 401 without a token; 405 for another method.
    assert (
        client.post(profile_url("user_id:ann", "external_ids/delete"), json={}).status_code == 401
    )
    assert (
        client.get(profile_url("user_id:ann", "external_ids/delete"), headers=READ).status_code
        == 405
    )
    # Nothing was deleted by any of them.
    assert len(engine.profile("user_id:ann")["external_ids"]) == 4


def _shared_inbox(engine: Engine) -> None:
    """Two visitors on two browsers type the same placeholder e-mail into a form: the e-mail
    joins the second browser's profile into the first. The second then logs in."""
    engine.ingest_batch(
        [
            {"type": "identify", "anonymousId": "x1", "messageId": "n1",
             "traits": {"email": "info@shop.example"}},
            {"type": "track", "anonymousId": "x1", "event": "Viewed", "messageId": "n2"},
            {"type": "page", "anonymousId": "y1", "messageId": "n0"},
            {"type": "identify", "anonymousId": "y1", "messageId": "n3",
             "traits": {"email": "info@shop.example", "name": "Yan"}},
            {"type": "identify", "anonymousId": "y1", "userId": "yan", "messageId": "n4"},
        ]
    )  # fmt: skip


def test_unmerge_splits_a_profile_by_a_junk_identifier(client: TestClient, engine: Engine) -> None:
    _shared_inbox(engine)
    joined = engine.profile("anonymous_id:x1")
    assert joined["segment_id"] == engine.profile("user_id:yan")["segment_id"]
    [merge] = engine.merges("user_id:yan")  # y1's own profile, merged in by the e-mail
    response = client.post(
        profile_url("user_id:yan", "unmerge"),
        json={"identifier": {"type": "email", "id": "info@shop.example"}},
        headers=READ,
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["segment_id"] == joined["segment_id"]
    assert answer["blocked"] == {"collection": "users", "type": "email", "id": "info@shop.example"}
    parts = {
        p["segment_id"]: {(i["type"], i["id"]) for i in p["external_ids"]} for p in answer["parts"]
    }
    assert len(parts) == 2
    # The part holding the oldest message keeps the segment_id; the other is the profile y1
    # made, whose segment_id was merged away: it resolves to that part again.
    assert parts[joined["segment_id"]] == {("anonymous_id", "x1")}
    assert parts[merge["from_segment_id"]] == {("anonymous_id", "y1"), ("user_id", "yan")}
    # Each part has the events and traits of its own messages.
    x1 = engine.profile("anonymous_id:x1")
    yan = engine.profile("user_id:yan")
    assert (
        x1["segment_id"] == joined["segment_id"] and yan["segment_id"] == merge["from_segment_id"]
    )
    assert x1["traits"] == {"email": "info@shop.example"}
    assert yan["traits"] == {"email": "info@shop.example", "name": "Yan"}
    assert sorted(e["message_id"] for e in engine.events("anonymous_id:x1")) == ["n1", "n2"]
    assert sorted(e["message_id"] for e in engine.events("user_id:yan")) == ["n0", "n3", "n4"]
    traits = client.get(profile_url(merge["from_segment_id"], "traits"), headers=READ).json()
    assert traits["traits"] == {"email": "info@shop.example", "name": "Yan"}
    # The identifier is blocked: a new message carrying it joins nothing again.
    engine.ingest(
        {"type": "identify", "anonymousId": "x1", "traits": {"email": "info@shop.example"}}
    )
    engine.ingest({"type": "identify", "userId": "yan", "traits": {"email": "info@shop.example"}})
    assert (
        engine.profile("anonymous_id:x1")["segment_id"]
        != engine.profile("user_id:yan")["segment_id"]
    )
    assert [b["id"] for b in engine.blocked_identifiers()] == ["info@shop.example"]
    assert engine.blocked_identifiers()[0]["actor"].startswith("access_token:")


def test_unmerge_errors(client: TestClient, engine: Engine) -> None:
    _shared_inbox(engine)
    url = profile_url("user_id:yan", "unmerge")
    _error(client.post(url, json={}, headers=READ), 400, "bad_request")
    missing = client.post(url, json={"identifier": {"type": "anonymous_id", "id": "zz"}},
                          headers=READ)  # fmt: skip
    _error(missing, 404, "eid_not_found")
    nobody = client.post(
        profile_url("user_id:nobody", "unmerge"),
        json={"identifier": {"type": "email", "id": "info@shop.example"}},
        headers=READ,
    )
    _error(nobody, 404, "not_found")
    engine.ingest({"type": "page", "anonymousId": "lonely"})
    alone = client.post(
        profile_url("anonymous_id:lonely", "unmerge"),
        json={"identifier": {"type": "anonymous_id", "id": "lonely"}},
        headers=READ,
    )
    assert "nothing to split" in _error(alone, 400, "bad_request")
    assert engine.blocked_identifiers() == []
