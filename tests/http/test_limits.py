"""Size limits and gzip: 32 KiB per message, 500 KiB per request, 2,500 messages per batch,
all measured after decompression, and decompression itself capped."""

from __future__ import annotations

import gzip
import json
import re
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from idstitch.core.messages import MAX_BATCH_ITEMS, MAX_MESSAGE_BYTES, MAX_REQUEST_BYTES
from idstitch.engine import Engine
from idstitch.errors import PayloadTooLarge, ProfileNotFound
from idstitch.http.body import gunzip
from tests.http.conftest import WRITE, WRITE_KEY, TestClient

GZIP = {**WRITE, "Content-Encoding": "gzip", "Content-Type": "application/json"}
JSON = {**WRITE, "Content-Type": "application/json"}


def padded(body: dict[str, Any], size: int) -> bytes:
    """`body` as JSON of exactly `size` bytes, padded with a string trait."""
    body = {**body, "traits": {"pad": ""}}
    bare = len(json.dumps(body, separators=(",", ":")))
    body["traits"]["pad"] = "x" * (size - bare)
    raw = json.dumps(body, separators=(",", ":")).encode()
    assert len(raw) == size
    return raw


def whitespace_padded(body: dict[str, Any], size: int) -> bytes:
    raw = json.dumps(body).encode()
    return raw[:-1] + b" " * (size - len(raw)) + b"}"


def chunks(raw: bytes, size: int = 4096) -> Iterator[bytes]:
    """A streamed body (no Content-Length), so the cap while reading is what refuses it."""
    for start in range(0, len(raw), size):
        yield raw[start : start + size]


def test_a_message_of_exactly_32_kib_is_accepted(client: TestClient) -> None:
    raw = padded({"userId": "u1"}, MAX_MESSAGE_BYTES)
    assert client.post("/v1/identify", content=raw, headers=JSON).status_code == 200


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
def test_a_message_over_32_kib_is_413(client: TestClient, engine: Engine, streamed: bool) -> None:
    raw = padded({"userId": "u1"}, MAX_MESSAGE_BYTES + 1)
    content = chunks(raw) if streamed else raw
    response = client.post("/v1/identify", content=content, headers=JSON)
    assert response.status_code == 413
    payload = response.json()
    assert payload["success"] is False and payload["code"] == "payload_too_large"
    assert f"{MAX_MESSAGE_BYTES:,}" in payload["message"]
    assert engine.metrics.events == 0


def test_a_batch_item_over_32_kib_is_413_with_its_index(client: TestClient, engine: Engine) -> None:
    small = {"type": "identify", "userId": "before"}
    big = json.loads(padded({"type": "identify", "userId": "u1"}, MAX_MESSAGE_BYTES + 1))
    response = client.post("/v1/batch", json={"batch": [small, big]}, headers=WRITE)
    assert response.status_code == 413
    assert response.json()["index"] == 1
    with pytest.raises(ProfileNotFound):
        engine.profile("user_id:before")


def test_a_request_of_exactly_500_kib_is_accepted(client: TestClient) -> None:
    body = {"batch": [{"type": "identify", "userId": f"u{i}"} for i in range(10)]}
    raw = whitespace_padded(body, MAX_REQUEST_BYTES)
    assert client.post("/v1/batch", content=raw, headers=JSON).status_code == 200


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
def test_a_request_over_500_kib_is_413(client: TestClient, engine: Engine, streamed: bool) -> None:
    body = {"batch": [{"type": "identify", "userId": f"u{i}"} for i in range(10)]}
    raw = whitespace_padded(body, MAX_REQUEST_BYTES + 1)
    response = client.post("/v1/batch", content=chunks(raw) if streamed else raw, headers=JSON)
    assert response.status_code == 413
    assert f"{MAX_REQUEST_BYTES:,}" in response.json()["message"]
    assert engine.metrics.events == 0


MESSAGE_413 = (
    "the message is {}; the limit is 32,768 bytes per message{}. Trim its properties or traits."
)
REQUEST_413 = (
    "the request body is {}; the limit is 512,000 bytes per request{}. "
    "Send fewer messages per request."
)
NOISE = gzip.compress(bytes(range(256)) * 4000, 0)  # ~1 MB that gzip does not shrink


@pytest.mark.parametrize(
    ("route", "content", "headers", "want"),
    [
        (
            "/v1/identify",
            gzip.compress(padded({"userId": "u1"}, MAX_MESSAGE_BYTES + 1)),
            GZIP,
            MESSAGE_413.format("more than 32,768 bytes after decompression", ""),
        ),
        (
            "/v1/batch",
            gzip.compress(
                whitespace_padded({"batch": [{"type": "identify", "userId": "u1"}]}, 512_001)
            ),
            GZIP,
            REQUEST_413.format("more than 512,000 bytes after decompression", ""),
        ),
        (
            "/v1/identify",
            padded({"userId": "u1"}, MAX_MESSAGE_BYTES + 1),
            JSON,
            MESSAGE_413.format("32,769 bytes", ""),
        ),
        (
            "/v1/identify",
            chunks(padded({"userId": "u1"}, MAX_MESSAGE_BYTES + 1)),
            JSON,
            MESSAGE_413.format("more than 32,768 bytes", ""),
        ),
        (
            "/v1/batch",
            whitespace_padded({"batch": [{"type": "identify", "userId": "u1"}]}, 512_001),
            JSON,
            REQUEST_413.format("512,001 bytes", ""),
        ),
        (
            "/v1/batch",
            NOISE,
            GZIP,
            REQUEST_413.format(f"{len(NOISE):,} bytes compressed", " after decompression"),
        ),
        (
            "/v1/batch",
            chunks(NOISE),
            GZIP,
            REQUEST_413.format("more than 577,536 bytes compressed", " after decompression"),
        ),
    ],
    ids=[
        "gzip-message",
        "gzip-batch",
        "message",
        "message-chunked",
        "batch",
        "gzip-wire",
        "gzip-wire-chunked",
    ],
)
def test_413_messages_read_as_sentences(
    client: TestClient, route: str, content: Any, headers: dict[str, str], want: str
) -> None:
    response = client.post(route, content=content, headers=headers)
    assert response.status_code == 413
    message = response.json()["message"]
    assert message == want
    assert not re.search(r"decompression bytes|\d{5}", message), message


def test_2500_messages_are_accepted_and_2501_are_413(client: TestClient, engine: Engine) -> None:
    def batch(n: int) -> dict[str, Any]:
        return {
            "batch": [{"type": "track", "anonymousId": f"a{i}", "event": "E"} for i in range(n)]
        }

    too_many = client.post("/v1/batch", json=batch(MAX_BATCH_ITEMS + 1), headers=WRITE)
    assert too_many.status_code == 413
    assert too_many.json()["code"] == "too_many_messages"
    assert engine.metrics.events == 0
    assert client.post("/v1/batch", json=batch(MAX_BATCH_ITEMS), headers=WRITE).status_code == 200
    assert engine.metrics.events == MAX_BATCH_ITEMS


# ---- gzip ---------------------------------------------------------------------------------
def test_gzip_bodies_are_accepted_on_every_route(client: TestClient) -> None:
    batch = {"batch": [{"type": "identify", "userId": "u1", "traits": {"plan": "pro"}}]}
    single = {"userId": "u2", "event": "E"}
    assert (
        client.post(
            "/v1/batch", content=gzip.compress(json.dumps(batch).encode()), headers=GZIP
        ).status_code
        == 200
    )
    assert (
        client.post(
            "/v1/track", content=gzip.compress(json.dumps(single).encode()), headers=GZIP
        ).status_code
        == 200
    )


def test_gzip_limits_apply_after_decompression(client: TestClient, engine: Engine) -> None:
    # 33 KB of JSON compresses to a few hundred bytes: the wire size must not decide.
    message = gzip.compress(padded({"userId": "u1"}, MAX_MESSAGE_BYTES + 1))
    assert len(message) < 2000
    assert client.post("/v1/identify", content=message, headers=GZIP).status_code == 413
    body = {"batch": [{"type": "identify", "userId": "u1"}]}
    request = gzip.compress(whitespace_padded(body, MAX_REQUEST_BYTES + 1))
    assert client.post("/v1/batch", content=request, headers=GZIP).status_code == 413
    assert engine.metrics.events == 0


BOMB = gzip.compress(b"[" + b" " * (50 * 1024 * 1024) + b"]", compresslevel=9)


def test_a_gzip_bomb_is_413(client: TestClient) -> None:
    assert len(BOMB) < 100_000
    response = client.post("/v1/batch", content=BOMB, headers=GZIP)
    assert response.status_code == 413


def test_decompression_stops_at_the_cap() -> None:
    tracing = tracemalloc.is_tracing()
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with pytest.raises(PayloadTooLarge):
            gunzip(BOMB, MAX_REQUEST_BYTES)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if not tracing:
            tracemalloc.stop()
    assert peak - baseline < 4 * MAX_REQUEST_BYTES  # the bomb inflates to 50 MB


def test_a_compressed_body_over_the_wire_cap_is_413(client: TestClient) -> None:
    noise = bytes(range(256)) * 4000  # ~1 MB that gzip cannot shrink much
    response = client.post("/v1/batch", content=gzip.compress(noise, 0), headers=GZIP)
    assert response.status_code == 413


@pytest.mark.parametrize(
    "content",
    [b"definitely not gzip", gzip.compress(b'{"batch": []}')[:-12]],
    ids=["garbage", "truncated"],
)
def test_broken_gzip_is_400(client: TestClient, content: bytes) -> None:
    response = client.post("/v1/batch", content=content, headers=GZIP)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_gzip"


def test_other_content_encodings_are_415(client: TestClient) -> None:
    headers = {**WRITE, "Content-Encoding": "br"}
    response = client.post("/v1/track", content=b"...", headers=headers)
    assert response.status_code == 415
    assert "gzip" in response.json()["message"]


def test_the_item_limit_applies_to_items_as_received(client: TestClient, engine: Engine) -> None:
    """A batch's shared `context` is merged into each item after the 32 KiB check, so items
    under the limit as sent are accepted even when the merged message is larger."""
    item = json.loads(padded({"type": "identify", "userId": "big-context"}, 30_000))
    body = {"batch": [item], "context": {"note": "y" * 20_000}}
    response = client.post("/v1/batch", content=json.dumps(body).encode(), headers=JSON)
    assert response.status_code == 200, response.text
    assert engine.profile("user_id:big-context")["segment_id"].startswith("use_")


def test_concatenated_gzip_members_are_all_read(client: TestClient, engine: Engine) -> None:
    """`cat a.gz b.gz` is one valid gzip stream (RFC 1952); reading only the first member
    lost data."""
    text = json.dumps({"batch": [{"type": "identify", "userId": "gz-1"}]})
    half = len(text) // 2
    body = gzip.compress(text[:half].encode()) + gzip.compress(text[half:].encode())
    sent = client.post("/v1/batch", content=body, headers=GZIP)
    assert sent.status_code == 200, sent.text
    assert engine.profile("user_id:gz-1")["segment_id"].startswith("use_")


def test_bytes_after_the_gzip_body_are_refused(client: TestClient) -> None:
    body = gzip.compress(json.dumps({"userId": "gz-2"}).encode()) + b"trailing junk"
    sent = client.post("/v1/identify", content=body, headers=GZIP)
    assert sent.status_code == 400, sent.text
    assert sent.json()["code"] == "invalid_gzip"


def test_every_content_encoding_header_counts(client: TestClient) -> None:
    body = gzip.compress(json.dumps({"userId": "gz-3"}).encode())
    headers = [
        ("Authorization", WRITE["Authorization"]),
        ("Content-Encoding", "gzip"),
        ("Content-Encoding", "br"),
    ]
    sent = client.post("/v1/identify", content=body, headers=headers)
    assert sent.status_code == 415, sent.text


def test_a_body_of_many_gzip_members_is_refused(client: TestClient) -> None:
    message = json.dumps({"userId": "gz-members", "event": "E"}).encode()
    many = gzip.compress(message) + gzip.compress(b"", 0) * 100
    response = client.post("/v1/track", content=many, headers=GZIP)
    assert response.status_code == 400 and response.json()["code"] == "invalid_gzip"
    few = gzip.compress(message) + gzip.compress(b"", 0) * 3
    assert client.post("/v1/track", content=few, headers=GZIP).status_code == 200


def test_bodies_past_the_in_flight_budget_get_429_as_they_arrive(client: TestClient) -> None:
    """The budget counts each body's bytes as they arrive."""
    bodies = client.app.bodies  # type: ignore[attr-defined]
    bodies.used = bodies.total - 1000  # as if other requests held the rest
    try:
        big = json.dumps({"batch": [{"type": "track", "userId": "b", "event": "E"}] * 100})
        response = client.post("/v1/batch", content=big.encode(), headers=JSON)
        assert response.status_code == 429, response.text
        assert response.headers["retry-after"]
        small = json.dumps({"userId": "b", "event": "E"}).encode()
        assert client.post("/v1/track", content=small, headers=JSON).status_code == 200
    finally:
        bodies.used -= bodies.total - 1000
    assert bodies.used == 0  # every request gave its reservation back


def test_bodies_without_a_key_header_have_a_share_of_their_own(client: TestClient) -> None:
    """A body whose key is inside it counts against the unverified share until its key is
    checked, and against its client address's share: keyed requests keep the rest."""
    bodies = client.app.bodies  # type: ignore[attr-defined]
    in_body = {"writeKey": WRITE_KEY, "userId": "b", "event": "E"}
    bodies.unverified = bodies.unverified_total - 10  # as if others held the unverified share
    try:
        refused = client.post("/v1/track", json=in_body)
        assert refused.status_code == 429, refused.text
        assert "Authorization header" in refused.json()["message"]
        keyed = client.post("/v1/track", json={"userId": "b", "event": "E"}, headers=WRITE)
        assert keyed.status_code == 200, keyed.text
    finally:
        bodies.unverified -= bodies.unverified_total - 10
    peer = "testclient"  # the test client's address
    bodies.by_peer[peer] = bodies.peer_total - 10  # as if this address held its whole share
    try:
        refused = client.post("/v1/track", json=in_body)
        assert refused.status_code == 429, refused.text
        assert "this client address" in refused.json()["message"]
    finally:
        bodies.by_peer[peer] -= bodies.peer_total - 10
    assert client.post("/v1/track", json=in_body).status_code == 200
    assert (bodies.used, bodies.unverified) == (0, 0)
    assert not any(bodies.by_peer.values())


def test_a_gzip_body_counts_at_its_decompressed_size_while_it_is_resolved(
    client: TestClient, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    bodies = client.app.bodies  # type: ignore[attr-defined]
    raw = json.dumps({"batch": [{"type": "track", "userId": "gz", "event": "E" * 5000}] * 20})
    seen: list[int] = []
    submit = engine.submit

    def watching(items: list[Any], source: str) -> Any:
        seen.append(bodies.used)
        return submit(items, source)

    monkeypatch.setattr(engine, "submit", watching)
    response = client.post("/v1/batch", content=gzip.compress(raw.encode()), headers=GZIP)
    assert response.status_code == 200, response.text
    assert seen == [len(raw)]
    assert bodies.used == 0
