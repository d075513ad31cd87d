"""The bounds the HTTP server puts on a request before the app sees it: a head's size and
how long it may take, and how long a body may take."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from idstitch.errors import InvalidMessage
from idstitch.http import body, protocol
from idstitch.http.app import App
from idstitch.http.server import server_for
from tests.http.conftest import WRITE

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def served(app: App, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """The real server (uvicorn with idstitch's protocol) on a free port, in a thread."""
    monkeypatch.setattr(protocol, "HEAD_SECONDS", 0.5)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server: uvicorn.Server = server_for(app, "127.0.0.1", port)
    server.config.lifespan = "off"  # the app's engine belongs to the test
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def _exchange(port: int, data: bytes, pause: float = 0.0, rest: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(data)
        if pause:
            time.sleep(pause)
            try:
                conn.sendall(rest)
            except OSError:
                return b""  # closed already
        received = b""
        try:
            while chunk := conn.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return received


def test_a_normal_request_is_served(served: int) -> None:
    reply = _exchange(served, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200"), reply


def test_a_request_head_over_the_bound_is_refused(served: int) -> None:
    big = b"x" * (protocol.MAX_HEAD_BYTES + 1)
    reply = _exchange(served, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + big + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    # A head under the bound is fine.
    ok = b"x" * (protocol.MAX_HEAD_BYTES // 2)
    reply = _exchange(
        served,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Ok: " + ok + b"\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]


def test_a_head_that_never_completes_is_closed(served: int) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", served), timeout=5) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        assert conn.recv(65536) == b""  # the server closed it
    assert time.monotonic() - started < 4
    with socket.create_connection(("127.0.0.1", served), timeout=5) as idle:
        assert idle.recv(65536) == b""  # a connection that sends nothing is closed too


def test_a_body_that_stops_arriving_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(body, "BODY_SECONDS", 0.2)
    first = True

    async def receive() -> dict[str, Any]:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b'{"userId"', "more_body": True}
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    scope: dict[str, Any] = {
        "type": "http",
        "headers": [(b"authorization", WRITE["Authorization"].encode())],
    }
    budget = body.BodyBudget()
    hold = budget.hold(scope, verified=True)
    with pytest.raises(InvalidMessage) as caught:
        asyncio.run(body.read_body(scope, receive, 1000, hold))
    assert caught.value.code == "body_timeout"
    assert "did not arrive within" in str(caught.value)


def test_a_body_that_arrives_slower_than_the_minimum_rate_is_cut_off_after_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A byte now and then keeps a request alive only through the grace period: the next
    bytes are due when the average since the head would fall below the minimum rate."""
    monkeypatch.setattr(body, "BODY_GRACE_SECONDS", 0.3)
    monkeypatch.setattr(body, "MIN_BODY_RATE", 100)
    sent = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        await asyncio.sleep(0.05)
        sent += 1
        return {"type": "http.request", "body": b" ", "more_body": True}

    scope: dict[str, Any] = {"type": "http", "headers": [], "client": ("192.0.2.1", 1)}
    budget = body.BodyBudget()
    hold = budget.hold(scope, verified=False)
    started = time.monotonic()
    with pytest.raises(InvalidMessage) as caught:
        asyncio.run(body.read_body(scope, receive, 100_000, hold))
    assert caught.value.code == "body_timeout"
    assert "slower than 100 bytes per second" in str(caught.value)
    # Cut off at the end of the grace period (0.3 s), long before the 60 s deadline.
    assert time.monotonic() - started < 5
    assert 3 <= sent <= 60
    assert hold.amount == sent and budget.unverified == sent
    hold.release()
    assert (budget.used, budget.unverified, budget.by_peer) == (0, 0, {})


def test_a_body_that_keeps_the_minimum_rate_is_read_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the grace period, a body sent in parts five times faster than the minimum rate
    (50 bytes every 0.1 s against 100 bytes/s) is read whole."""
    monkeypatch.setattr(body, "BODY_GRACE_SECONDS", 0.2)
    monkeypatch.setattr(body, "MIN_BODY_RATE", 100)
    parts = [b"x" * 50 for _ in range(10)]

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0.1)
        return {"type": "http.request", "body": parts.pop(), "more_body": bool(parts)}

    scope: dict[str, Any] = {"type": "http", "headers": []}
    hold = body.BodyBudget().hold(scope, verified=True)
    assert asyncio.run(body.read_body(scope, receive, 1000, hold)) == b"x" * 500
    assert hold.amount == 500


def test_a_pipelined_request_is_not_cut_off_by_the_head_deadline(
    served: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two batches sent back to back on one connection: the second one's head is whole before
    the first is answered, so the head deadline must not run while it is being served."""
    monkeypatch.setattr(protocol, "HEAD_SECONDS", 0.01)
    requests = b""
    for n in range(2):
        batch = [
            {"type": "track", "event": "E", "anonymousId": f"p{n}-{i}", "messageId": f"p{n}-{i}"}
            for i in range(2000)
        ]
        content = json.dumps({"batch": batch}).encode()
        requests += (
            b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: {WRITE['Authorization']}\r\n".encode()
            + f"Content-Length: {len(content)}\r\n\r\n".encode()
            + content
        )
    with socket.create_connection(("127.0.0.1", served), timeout=20) as conn:
        conn.sendall(requests)
        received = b""
        while received.count(b"HTTP/1.1 ") < 2 or not received.endswith(b"}"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
    assert received.count(b"HTTP/1.1 200") == 2, received[:300]


def test_a_header_value_that_never_ends_is_refused_at_the_bound(served: int) -> None:
    """The parser holds an unfinished header line itself: it must not grow without bound."""
    with socket.create_connection(("127.0.0.1", served), timeout=5) as conn:
        conn.sendall(b"POST /v1/track HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        reply = b""
        try:
            while sent < 4 * protocol.MAX_HEAD_BYTES:
                conn.sendall(b"a" * 8192)
                sent += 8192
            reply = conn.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            pass
    assert reply.startswith(b"HTTP/1.1 400") or reply == b"", reply[:100]
    assert sent < 4 * protocol.MAX_HEAD_BYTES or reply.startswith(b"HTTP/1.1 400")


def test_pipelined_heads_are_bounded_one_by_one(served: int) -> None:
    """Each pipelined request has its own head: several heads of 40 KB pass, and many small
    requests in a row too."""
    pad = b"X-Pad: " + b"p" * 40_000 + b"\r\n"
    one = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + pad + b"\r\n"
    last = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + pad + b"\r\n"
    reply = _exchange(served, one * 2 + last)
    assert reply.count(b"HTTP/1.1 200") == 3, reply[:300]
    small = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    reply = _exchange(served, small * 600 + b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert reply.count(b"HTTP/1.1 200") == 601


def test_head_healthz_is_answered_without_a_body(served: int) -> None:
    with socket.create_connection(("127.0.0.1", served), timeout=5) as conn:
        conn.sendall(
            b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        reply = b""
        while chunk := conn.recv(65536):  # until the server closes, after the GET
            reply += chunk
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), reply[:200]
    # No body after the HEAD answer: what follows is the GET's answer.
    assert rest.startswith(b"HTTP/1.1 200"), reply[:400]
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["status"] == "ok", rest
