"""The Tracking API in-process: every route, both ways to authenticate, validation, the
timestamp rule, and that a rejected request applies nothing."""

from __future__ import annotations

import base64
import logging
import threading
import time
from datetime import datetime
from typing import Any

import pytest

from idstitch.engine import Engine, Ticket
from idstitch.errors import Overloaded, ProfileNotFound, StorageError
from idstitch.http import tracking
from idstitch.http.app import App
from tests.http.conftest import (
    OTHER_KEY,
    READ,
    WRITE,
    WRITE_KEY,
    TestClient,
    basic,
    profile_url,
)

SINGLE_CALLS: dict[str, dict[str, Any]] = {
    "identify": {"userId": "u1", "traits": {"email": "ann@example.com", "plan": "pro"}},
    "track": {"userId": "u1", "event": "Order Completed", "properties": {"total": 12.5}},
    "page": {"anonymousId": "a1", "name": "Home", "properties": {"path": "/"}},
    "screen": {"anonymousId": "a1", "name": "Settings"},
    "group": {"userId": "u1", "groupId": "g1", "traits": {"name": "Acme"}},
    "alias": {"userId": "u1", "previousId": "a1"},
}


def parse(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def events_of(client: TestClient, ref: str, collection: str = "users") -> list[dict[str, Any]]:
    response = client.get(
        profile_url(ref, "events", collection), params={"limit": 100}, headers=READ
    )
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


@pytest.mark.parametrize("route", sorted(SINGLE_CALLS))
def test_each_single_route_resolves_and_stores(client: TestClient, route: str) -> None:
    response = client.post(f"/v1/{route}", json=SINGLE_CALLS[route], headers=WRITE)
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True}
    ref = (
        "group_id:g1"
        if route == "group"
        else ("anonymous_id:a1" if route in ("page", "screen") else "user_id:u1")
    )
    collection = "accounts" if route == "group" else "users"
    stored = events_of(client, ref, collection)
    assert [e["type"] for e in stored] == [route]
    assert stored[0]["source_id"] == "web"


def test_alias_merges_previous_id_into_user(client: TestClient) -> None:
    client.post("/v1/page", json={"anonymousId": "a1"}, headers=WRITE)
    client.post("/v1/identify", json={"userId": "u1"}, headers=WRITE)
    assert client.post("/v1/alias", json=SINGLE_CALLS["alias"], headers=WRITE).status_code == 200
    by_anon = client.get(profile_url("anonymous_id:a1", "metadata"), headers=READ).json()
    by_user = client.get(profile_url("user_id:u1", "metadata"), headers=READ).json()
    assert by_anon["metadata"]["segment_id"] == by_user["metadata"]["segment_id"]


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/import"])
def test_batch_and_import_store_every_message(client: TestClient, path: str) -> None:
    batch = [{"type": t, **body} for t, body in SINGLE_CALLS.items()]
    response = client.post(path, json={"batch": batch}, headers=WRITE)
    assert response.status_code == 200, response.text
    types = sorted(e["type"] for e in events_of(client, "user_id:u1"))
    assert types == ["alias", "group", "identify", "page", "screen", "track"]


def test_the_route_decides_the_type(client: TestClient) -> None:
    body = {"type": "identify", "userId": "u1", "event": "Clicked"}
    assert client.post("/v1/track", json=body, headers=WRITE).status_code == 200
    assert [e["type"] for e in events_of(client, "user_id:u1")] == ["track"]


def test_duplicate_message_id_is_acknowledged_once(client: TestClient) -> None:
    body = {"userId": "u1", "event": "E", "messageId": "m-1"}
    for _ in range(3):
        assert client.post("/v1/track", json=body, headers=WRITE).status_code == 200
    assert len(events_of(client, "user_id:u1")) == 1


# ---- authentication -----------------------------------------------------------------------
def test_basic_header_alone_authenticates(client: TestClient) -> None:
    assert (
        client.post("/v1/track", json={"userId": "u1", "event": "E"}, headers=WRITE).status_code
        == 200
    )
    assert events_of(client, "user_id:u1")[0]["source_id"] == "web"


def test_body_write_key_alone_authenticates(client: TestClient) -> None:
    body = {"userId": "u1", "event": "E", "writeKey": OTHER_KEY}
    assert client.post("/v1/track", json=body).status_code == 200
    batch = {"writeKey": OTHER_KEY, "batch": [{"type": "identify", "userId": "u2"}]}
    assert client.post("/v1/batch", json=batch).status_code == 200
    assert events_of(client, "user_id:u1")[0]["source_id"] == "mobile"
    assert events_of(client, "user_id:u2")[0]["source_id"] == "mobile"


def test_basic_header_decides_over_the_body(client: TestClient) -> None:
    body = {"userId": "u1", "event": "E", "writeKey": OTHER_KEY}
    assert client.post("/v1/track", json=body, headers=WRITE).status_code == 200
    assert events_of(client, "user_id:u1")[0]["source_id"] == "web"
    unknown = client.post("/v1/track", json=body, headers=basic("not-a-configured-key"))
    assert unknown.status_code == 401


def test_bearer_header_falls_back_to_the_body_key(client: TestClient) -> None:
    body = {"userId": "u1", "event": "E", "writeKey": WRITE_KEY}
    response = client.post("/v1/track", json=body, headers={"Authorization": "Bearer abc"})
    assert response.status_code == 200


def test_key_without_colon_is_accepted(client: TestClient) -> None:
    legacy = {"Authorization": "Basic " + base64.b64encode(WRITE_KEY.encode()).decode()}
    assert (
        client.post("/v1/track", json={"userId": "u1", "event": "E"}, headers=legacy).status_code
        == 200
    )


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({}, {"userId": "u1", "event": "E"}),
        ({}, {"userId": "u1", "event": "E", "writeKey": "unknown-key-123"}),
        ({}, {"userId": "u1", "event": "E", "writeKey": 12345678}),
        (basic("unknown-key-123"), {"userId": "u1", "event": "E"}),
        ({"Authorization": "Basic not-base64!"}, {"userId": "u1", "event": "E"}),
        ({}, {"userId": "u1", "event": "E", "writeKey": "clé-écrite"}),
        (basic("clé-écrite"), {"userId": "u1", "event": "E"}),
    ],
    ids=[
        "missing",
        "unknown-body",
        "non-string-body",
        "unknown-basic",
        "malformed-basic",
        "non-ascii-body",
        "non-ascii-basic",
    ],
)
def test_missing_or_unknown_write_key_is_401(
    client: TestClient, engine: Engine, headers: dict[str, str], body: dict[str, Any]
) -> None:
    response = client.post("/v1/track", json=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")
    payload = response.json()
    assert payload["success"] is False and payload["code"] == "authentication_error"
    assert "write key" in payload["message"] or "writeKey" in payload["message"]
    with pytest.raises(ProfileNotFound):
        engine.profile("user_id:u1")


def test_a_write_key_holding_a_lone_surrogate_is_refused_not_a_server_error(
    client: TestClient,
) -> None:
    body = b'{"userId": "u1", "event": "E", "writeKey": "key-\\ud800"}'
    response = client.post("/v1/track", content=body)
    assert response.status_code in (400, 401), response.text


def test_unknown_basic_key_is_refused_before_the_body_is_read(client: TestClient) -> None:
    response = client.post("/v1/batch", content=b"not json", headers=basic("unknown-key-123"))
    assert response.status_code == 401


def test_non_json_body_without_basic_is_400(client: TestClient) -> None:
    for path in ("/v1/track", "/v1/batch"):
        response = client.post(path, content=b"{not json")
        assert response.status_code == 400, path
        assert response.json()["code"] == "invalid_json"


# ---- validation ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("route", "body", "code"),
    [
        ("track", {"event": "E"}, "no_user_anon_id"),
        ("track", {"userId": "u1"}, "event_not_defined"),
        ("track", {"userId": "u1", "event": ""}, "event_not_string"),
        ("track", {"userId": "u1", "event": 5}, "event_not_string"),
        ("identify", {"userId": "u1", "traits": [1]}, "traits_not_object"),
        ("track", {"userId": "u1", "event": "E", "properties": "x"}, "properties_not_object"),
        ("identify", {"userId": "u1", "context": 3}, "context_not_object"),
        ("group", {"userId": "u1"}, "group_id_required"),
        ("alias", {"userId": "u1"}, "id_required"),
        ("identify", {"userId": "u1", "timestamp": "yesterday"}, "invalid_timestamp"),
        ("identify", {"userId": {"nested": 1}}, "invalid_message"),
        ("identify", [1, 2], "invalid_message"),
    ],
)
def test_invalid_single_message_is_400_and_names_the_problem(
    client: TestClient, engine: Engine, route: str, body: Any, code: str
) -> None:
    response = client.post(f"/v1/{route}", json=body, headers=WRITE)
    assert response.status_code == 400, response.text
    payload = response.json()
    assert payload["success"] is False
    assert payload["code"] == code
    assert payload["message"]
    assert engine.metrics.events == 0


def test_null_counts_as_absent(client: TestClient) -> None:
    body = {
        "userId": None,
        "anonymousId": "a1",
        "event": "E",
        "properties": None,
        "context": None,
        "timestamp": None,
    }
    assert client.post("/v1/track", json=body, headers=WRITE).status_code == 200


def test_a_bad_batch_item_applies_nothing_and_names_its_index(
    client: TestClient, engine: Engine
) -> None:
    batch = [
        {"type": "identify", "userId": "valid-before", "traits": {"email": "v@example.com"}},
        {"type": "track", "userId": "u1", "event": "E"},
        {"type": "track", "userId": "u2"},
        {"type": "track"},
    ]
    response = client.post("/v1/batch", json={"batch": batch}, headers=WRITE)
    assert response.status_code == 400
    payload = response.json()
    assert payload["index"] == 2
    assert payload["code"] == "event_not_defined"
    assert "batch item 2" in payload["message"]
    for ref in ("user_id:valid-before", "user_id:u1", "email:v@example.com"):
        with pytest.raises(ProfileNotFound):
            engine.profile(ref)
    assert engine.metrics.events == 0


@pytest.mark.parametrize(
    ("body", "code", "index"),
    [
        ({"batch": []}, "empty_batch", None),
        ({}, "empty_batch", None),
        ({"batch": "x"}, "invalid_message", None),
        ({"batch": [{"userId": "u1"}]}, "type_required", 0),
        (
            {"batch": [{"type": "identify", "userId": "u1"}, {"type": "jump", "userId": "u"}]},
            "invalid_type",
            1,
        ),
        ({"batch": [{"type": "identify", "userId": "u1"}, 7]}, "invalid_message", 1),
        ({"batch": [7], "context": {"ip": "1.2.3.4"}}, "invalid_message", 0),
    ],
)
def test_malformed_batches_are_400(
    client: TestClient, body: dict[str, Any], code: str, index: int | None
) -> None:
    response = client.post("/v1/batch", json=body, headers=WRITE)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == code
    assert response.json().get("index") == index


def test_batch_context_and_integrations_apply_to_each_item(client: TestClient) -> None:
    body = {
        "batch": [
            {"type": "track", "anonymousId": "a1", "event": "E"},
            {
                "type": "track",
                "anonymousId": "a2",
                "event": "E",
                "context": {"traits": {"email": "own@example.com"}},
            },
        ],
        "context": {"traits": {"email": "Shared@Example.com"}},
        "integrations": {"All": False},
    }
    assert client.post("/v1/batch", json=body, headers=WRITE).status_code == 200
    shared = client.get(profile_url("email:shared@example.com", "external_ids"), headers=READ)
    assert {e["id"] for e in shared.json()["data"]} == {"a1", "shared@example.com"}
    own = client.get(profile_url("email:own@example.com", "external_ids"), headers=READ)
    assert {e["id"] for e in own.json()["data"]} == {"a2", "own@example.com"}
    event = events_of(client, "anonymous_id:a1")[0]
    assert event["integrations"] == {"All": False}


# ---- timestamps ---------------------------------------------------------------------------
def test_timestamp_corrects_clock_skew_with_batch_sent_at(client: TestClient) -> None:
    body = {
        "sentAt": "2025-01-15T10:00:10.000Z",
        "batch": [
            {"type": "track", "userId": "u1", "event": "E", "timestamp": "2025-01-15T10:00:00.000Z"}
        ],
    }
    assert client.post("/v1/batch", json=body, headers=WRITE).status_code == 200
    event = events_of(client, "user_id:u1")[0]
    skew = parse(event["received_at"]) - parse(event["timestamp"])
    assert skew == pytest.approx(10.0, abs=0.002)


def test_timestamp_uses_a_single_message_own_sent_at(client: TestClient) -> None:
    body = {
        "userId": "u1",
        "event": "E",
        "timestamp": "2025-01-15T10:00:00Z",
        "sentAt": "2025-01-15T10:01:00Z",
    }
    assert client.post("/v1/track", json=body, headers=WRITE).status_code == 200
    event = events_of(client, "user_id:u1")[0]
    assert parse(event["received_at"]) - parse(event["timestamp"]) == pytest.approx(60, abs=0.002)


def test_timestamp_without_sent_at_is_kept_and_default_is_received_at(
    client: TestClient,
) -> None:
    client.post(
        "/v1/track",
        json={"userId": "u1", "event": "Old", "timestamp": "2020-02-02T02:02:02.020Z"},
        headers=WRITE,
    )
    client.post("/v1/track", json={"userId": "u2", "event": "Now"}, headers=WRITE)
    assert events_of(client, "user_id:u1")[0]["timestamp"] == "2020-02-02T02:02:02.020Z"
    now = events_of(client, "user_id:u2")[0]
    assert now["timestamp"] == now["received_at"]


T = "2025-01-15T10:00:00.000Z"


@pytest.mark.parametrize(
    ("route", "body", "field", "index"),
    [
        ("track", {"userId": "v_u1", "event": "E", "sentAt": "bad"}, "sentAt", None),
        (
            "track",
            {"userId": "v_u1", "event": "E", "sentAt": "bad", "timestamp": T},
            "sentAt",
            None,
        ),
        (
            "track",
            {"userId": "v_u1", "event": "E", "sentAt": "bad", "originalTimestamp": T},
            "sentAt",
            None,
        ),
        ("track", {"userId": "v_u1", "event": "E", "sentAt": 17}, "sentAt", None),
        (
            "track",
            {"userId": "v_u1", "event": "E", "originalTimestamp": "bad", "timestamp": T},
            "originalTimestamp",
            None,
        ),
        (
            "batch",
            {"batch": [{"type": "track", "userId": "v_u1", "event": "E"}], "sentAt": "bad"},
            "sentAt",
            None,
        ),
        (
            "batch",
            {
                "batch": [{"type": "track", "userId": "v_u1", "event": "E", "sentAt": T}],
                "sentAt": "bad",
            },
            "sentAt",
            None,
        ),
        (
            "batch",
            {
                "batch": [
                    {"type": "track", "userId": "v_u1", "event": "E"},
                    {"type": "track", "userId": "v_u1", "event": "E", "sentAt": "bad"},
                ]
            },
            "sentAt",
            1,
        ),
        (
            "import",
            {
                "batch": [
                    {"type": "track", "userId": "v_u1", "event": "E", "timestamp": T},
                    {"type": "track", "userId": "v_u1", "event": "E", "sentAt": "bad"},
                ],
                "sentAt": T,
            },
            "sentAt",
            1,
        ),
    ],
    ids=[
        "alone",
        "with-timestamp",
        "with-original",
        "not-a-string",
        "bad-original",
        "batch-level",
        "batch-level-unused",
        "item",
        "item-with-batch-sent-at",
    ],
)
def test_an_unparseable_sent_at_is_400_whatever_else_is_present(
    client: TestClient, engine: Engine, route: str, body: Any, field: str, index: int | None
) -> None:
    response = client.post(f"/v1/{route}", json=body, headers=WRITE)
    assert response.status_code == 400, response.text
    payload = response.json()
    assert payload["code"] == "invalid_timestamp"
    assert f"`{field}`" in payload["message"]
    assert payload.get("index") == index
    if index is not None:
        assert f"batch item {index}" in payload["message"]
    assert engine.metrics.events == 0


@pytest.mark.parametrize(
    "sent_at",
    [
        "2025-01-15T10:00:10.000Z",  # analytics.js, analytics-node, the mobile libraries
        "2025-01-15T10:00:10.000+00:00",
        "2025-01-15T10:00:10.000123+00:00",  # analytics-python: isoformat() with microseconds
        "2025-01-15T12:00:10.000+02:00",
        "2025-01-15T05:00:10-05:00",
        "2025-01-15T10:00:10.000000000Z",  # Go: RFC 3339 with nanoseconds
        "",  # an empty sentAt counts as absent
    ],
)
def test_official_clients_sent_at_formats_are_accepted(client: TestClient, sent_at: str) -> None:
    single = {"userId": "u1", "event": "E", "timestamp": T, "sentAt": sent_at}
    assert client.post("/v1/track", json=single, headers=WRITE).status_code == 200
    batch = {"batch": [{"type": "track", "userId": "u2", "event": "E", "timestamp": T}]}
    response = client.post("/v1/batch", json={**batch, "sentAt": sent_at}, headers=WRITE)
    assert response.status_code == 200
    if sent_at:
        for ref in ("user_id:u1", "user_id:u2"):
            event = events_of(client, ref)[0]
            skew = parse(event["received_at"]) - parse(event["timestamp"])
            assert skew == pytest.approx(10.0, abs=0.01)


# ---- acknowledgement and back-pressure ----------------------------------------------------
def test_success_waits_for_the_durable_commit(
    client: TestClient, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_submit = engine.submit
    delay = 0.3

    def slow_submit(items: list[Any], source: str) -> Ticket:
        ticket = Ticket(source, items)
        inner = real_submit(items, source)

        def later() -> None:
            plans = inner.future.result()
            time.sleep(delay)
            ticket.future.set_result(plans)

        threading.Thread(target=later).start()
        return ticket

    monkeypatch.setattr(engine, "submit", slow_submit)
    started = time.perf_counter()
    response = client.post("/v1/track", json={"userId": "u1", "event": "E"}, headers=WRITE)
    assert response.status_code == 200
    assert time.perf_counter() - started >= delay


def test_overloaded_engine_answers_429_with_retry_after(
    client: TestClient, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(items: list[Any], source: str) -> Ticket:
        raise Overloaded("200000 messages are waiting to be written; retry shortly.")

    monkeypatch.setattr(engine, "submit", full)
    response = client.post("/v1/track", json={"userId": "u1", "event": "E"}, headers=WRITE)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.json()["code"] == "overloaded"


def test_failed_commit_answers_503_and_logs_the_reason_for_the_operator(
    client: TestClient,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    reason = "the SQLite write at /var/lib/idstitch/idstitch.db failed: disk full"

    def failing(items: list[Any], source: str) -> Ticket:
        ticket = Ticket(source, items)
        ticket.future.set_exception(StorageError(reason))
        return ticket

    monkeypatch.setattr(engine, "submit", failing)
    caplog.set_level(logging.INFO)
    for _ in range(3):
        response = client.post("/v1/track", json={"userId": "u1", "event": "E"}, headers=WRITE)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        body = response.json()
        assert body["code"] == "storage_error"
        # A write key is public in web pages: the answer names no path, host or database.
        assert "/var/lib" not in body["message"] and "may or may not be stored" in body["message"]
    logged = [r for r in caplog.records if r.getMessage() == "store failed"]
    assert len(logged) == 1  # one line per route and ten seconds
    assert logged[0].levelno == logging.WARNING
    assert getattr(logged[0], "fields") == {"route": "track", "reason": reason}  # noqa: B009


def test_a_write_the_store_never_confirms_is_answered_503_in_time(
    client: TestClient, engine: Engine, app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracking, "ACK_TIMEOUT", 0.2)
    monkeypatch.setattr(engine, "submit", lambda items, source: Ticket(source, items))
    started = time.perf_counter()
    response = client.post("/v1/track", json={"userId": "u1", "event": "E"}, headers=WRITE)
    assert response.status_code == 503
    assert response.json()["code"] == "storage_error"
    assert time.perf_counter() - started < 5
    assert app.bodies.used == 0  # the body's share of the budget is given back


def test_tracking_routes_take_post_only(client: TestClient) -> None:
    response = client.get("/v1/track", headers=WRITE)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["success"] is False


# ---- browsers ------------------------------------------------------------------------------
def test_browsers_may_post_events_from_any_origin(client: TestClient) -> None:
    """analytics.js posts from web pages: the Tracking API answers CORS preflights and marks
    every answer, errors included, as readable from any origin."""
    preflight = client.options(
        "/v1/track",
        headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    ok = client.post(
        "/v1/track",
        content=f'{{"event": "E", "userId": "u-cors", "writeKey": "{WRITE_KEY}"}}',
        headers={"Content-Type": "text/plain", "Origin": "https://shop.example"},
    )
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "*"
    refused = client.post("/v1/track", content=b'{"event": "E", "userId": "u"}')
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-origin" not in client.get("/healthz").headers


def test_analytics_js_short_routes_and_plain_text_bodies(client: TestClient) -> None:
    """analytics.js posts to /v1/<first letter of the type> (and /v1/b when it batches), with
    `Content-Type: text/plain` (no CORS preflight for the type) and the write key both in a
    Basic header and in the body."""
    import json

    preflight = client.options(
        "/v1/t",
        headers={
            "Origin": "https://shop.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code == 204
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    common = {"writeKey": WRITE_KEY, "sentAt": "2025-01-15T02:02:15.908Z"}
    calls = {
        "/v1/p": {"type": "page", "anonymousId": "ajs-a1", "name": "Home"},
        "/v1/t": {"type": "track", "anonymousId": "ajs-a1", "event": "Viewed"},
        "/v1/i": {"type": "identify", "anonymousId": "ajs-a1", "userId": "ajs-u1"},
        "/v1/g": {"type": "group", "userId": "ajs-u1", "groupId": "ajs-g1"},
        "/v1/a": {"type": "alias", "userId": "ajs-u1", "previousId": "ajs-old"},
        "/v1/s": {"type": "screen", "userId": "ajs-u1", "name": "Cart"},
    }
    for n, (path, body) in enumerate(calls.items()):
        message = {**body, **common, "messageId": f"ajs-next-{n}"}
        response = client.post(
            path,
            content=json.dumps(message),
            headers={**WRITE, "Content-Type": "text/plain", "Origin": "https://shop.example.com"},
        )
        assert response.status_code == 200, (path, response.text)
        assert response.headers["access-control-allow-origin"] == "*"
    batch = {
        "batch": [{"type": "track", "anonymousId": "ajs-a2", "userId": "ajs-u1", "event": "B"}],
        **common,
    }
    response = client.post(
        "/v1/b", content=json.dumps(batch), headers={**WRITE, "Content-Type": "text/plain"}
    )
    assert response.status_code == 200, response.text
    types = sorted(e["type"] for e in events_of(client, "user_id:ajs-u1"))
    assert types == ["alias", "group", "identify", "page", "screen", "track", "track"]
    assert {
        e["id"]
        for e in client.get(
            profile_url("user_id:ajs-u1", "external_ids"), params={"limit": 100}, headers=READ
        ).json()["data"]
    } >= {"ajs-u1", "ajs-a1", "ajs-a2", "ajs-old"}
    # The long form is what metrics name, whichever path was used.
    assert 'route="t"' not in client.get("/metrics").text


@pytest.mark.parametrize(
    "times",
    [
        {"timestamp": "9999-12-31T23:59:59-01:00"},
        {"timestamp": "0001-01-01T00:00:00+14:00"},
        {"originalTimestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-12-31T00:00:00Z"},
    ],
)
def test_timestamps_outside_years_1_to_9999_are_refused(
    client: TestClient, times: dict[str, str]
) -> None:
    """Such an instant cannot be shown as ISO-8601: stored, it made every later read of the
    profile's events fail."""
    client.post("/v1/track", json={"userId": "victim", "event": "ok"}, headers=WRITE)
    sent = client.post("/v1/track", json={"userId": "victim", "event": "E", **times}, headers=WRITE)
    assert sent.status_code == 400, sent.text
    assert sent.json()["code"] == "invalid_timestamp"
    assert "years 1 to 9999" in sent.json()["message"]
    assert len(events_of(client, "user_id:victim")) == 1


def test_bodies_that_could_not_be_read_back_are_refused(client: TestClient) -> None:
    headers = {**WRITE, "Content-Type": "application/json"}
    bad_utf8_in_properties = b'{"userId":"u1","event":"E","properties":{"k":"\xc3"}}'
    bad_utf8_in_id = b'{"userId":"u\xff\xfe","event":"E"}'
    deep = b'{"userId":"u1","event":"E","properties":{"a":' + b"[" * 3000 + b"]" * 3000 + b"}}"
    for body in (bad_utf8_in_properties, bad_utf8_in_id, deep):
        sent = client.post("/v1/track", content=body, headers=headers)
        assert sent.status_code == 400, sent.text
        assert sent.json()["code"] == "invalid_json"
        batch = b'{"batch":[' + body[:-1] + b',"type":"track"}],"context":{"a":1}}'
        sent = client.post("/v1/batch", content=batch, headers=headers)
        assert sent.status_code == 400, sent.text
    with pytest.raises(ProfileNotFound):
        client.app.engine.profile("user_id:u1")  # type: ignore[attr-defined]


@pytest.mark.parametrize("number", [b"1e400", b"9" * 20_000])
def test_a_number_beyond_a_double_reads_back_as_null(client: TestClient, number: bytes) -> None:
    """An integer past Python's 4,300 digits too: the rest of the message is still served."""
    body = b'{"userId":"u-f400","event":"E","properties":{"n":' + number + b',"m":2}}'
    sent = client.post("/v1/track", content=body, headers=WRITE)
    assert sent.status_code == 200, sent.text
    [stored] = events_of(client, "user_id:u-f400")
    assert stored["properties"] == {"n": None, "m": 2}
    assert stored["userId"] == "u-f400"


def test_a_batch_item_context_that_is_not_an_object_is_refused_with_a_batch_context(
    client: TestClient,
) -> None:
    batch = {
        "batch": [{"type": "track", "userId": "u", "event": "E", "context": 5}],
        "context": {"a": 1},
    }
    sent = client.post("/v1/batch", json=batch, headers=WRITE)
    assert sent.status_code == 400, sent.text
    assert sent.json()["code"] == "context_not_object"
    assert sent.json()["index"] == 0


def test_page_and_screen_names_of_any_kind_are_accepted(client: TestClient) -> None:
    """SPEC 4 requires no `name` or `category`: an odd one must not cost the batch."""
    batch = [
        {"type": "page", "anonymousId": "named", "name": ""},
        {"type": "screen", "anonymousId": "named", "name": 5, "category": {"a": 1}},
        {"type": "track", "anonymousId": "named", "event": "After"},
    ]
    response = client.post("/v1/batch", json={"batch": batch}, headers=WRITE)
    assert response.status_code == 200, response.text
    assert len(events_of(client, "anonymous_id:named")) == 3


def test_a_malformed_external_id_costs_that_identifier_not_the_batch(
    client: TestClient, engine: Engine
) -> None:
    items = [
        {"id": "c-1", "type": "CRM", "collection": "Users"},
        {"id": "dom.io", "type": "domain", "collection": " ACCOUNTS "},
        {"id": "x-1", "type": "crm", "collection": "people"},
        {"type": "crm", "collection": "users"},
        {"id": "x-2", "type": 7},
        {"id": "x-3", "type": "crm", "collection": None, "encoding": 5},
    ]
    batch = [
        {"type": "track", "userId": "ext-1", "event": "E", "context": {"externalIds": items}},
        {"type": "track", "userId": "ext-2", "event": "Valid"},
    ]
    response = client.post("/v1/batch", json={"batch": batch}, headers=WRITE)
    assert response.status_code == 200, response.text
    ids = client.get(profile_url("user_id:ext-1", "external_ids"), headers=READ).json()["data"]
    assert {(i["type"], i["id"]) for i in ids} == {
        ("user_id", "ext-1"),
        ("crm", "c-1"),
        ("crm", "x-3"),
    }
    account = client.get(profile_url("domain:dom.io", "traits", "accounts"), headers=READ)
    assert account.status_code == 200, account.text
    assert len(events_of(client, "user_id:ext-2")) == 1
    rules = sorted(v["rule"] for v in engine.violations())
    assert rules == ["invalid_collection", "invalid_type", "invalid_value"]


def test_an_external_id_type_with_control_characters_is_dropped(client: TestClient) -> None:
    """Identifier keys join the type and the value with a control character: a type holding
    one could make two different identifiers share a key."""

    def send(anonymous_id: str, id_: str, type_: str) -> None:
        context = {"externalIds": [{"id": id_, "type": type_, "collection": "users"}]}
        message = {"anonymousId": anonymous_id, "event": "E", "context": context}
        assert client.post("/v1/track", json=message, headers=WRITE).status_code == 200

    send("col-x", "1", "a\x1fb")
    send("col-y", "b\x1f1", "a")
    x = client.get(profile_url("anonymous_id:col-x", "metadata"), headers=READ).json()
    y = client.get(profile_url("anonymous_id:col-y", "metadata"), headers=READ).json()
    assert x["metadata"]["segment_id"] != y["metadata"]["segment_id"]
    rules = {v["rule"] for v in client.app.engine.violations()}  # type: ignore[attr-defined]
    assert "invalid_type" in rules
