"""A flood of slow uploads without a key must not starve clients that hold one.

Against a real `idstitch serve`: 180 connections declare `/v1/batch` bodies (most of
512,000 bytes, some smaller to fill the gaps) and send a byte a second, and 40 more send most
of such a body at once and then stall; each reconnects when it is cut off. Meanwhile keyed
clients send batches as usual.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.http.conftest import WRITE
from tests.http.live import running

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def _head(declared: int) -> bytes:
    return (
        b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {declared}\r\n\r\n".encode()
    )


def _attacker(
    port: int, stop: threading.Event, declared: int, upfront: int, opened: Counter[str]
) -> None:
    """Open an upload of `declared` bytes, send `upfront` bytes of it, then a byte a second;
    reconnect whenever the server cuts it off."""
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
                opened["connections"] += 1
                conn.sendall(_head(declared) + b" " * upfront)
                while not stop.wait(1.0):
                    conn.sendall(b" ")
        except OSError:
            stop.wait(0.2)


def _keyed(port: int, stop: threading.Event, statuses: Counter[int]) -> None:
    batch = json.dumps(
        {"batch": [{"type": "track", "event": "E", "userId": f"k{n}"} for n in range(10)]}
    ).encode()
    headers = {**WRITE, "Content-Type": "application/json"}
    while not stop.is_set():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("POST", "/v1/batch", body=batch, headers=headers)
            response = conn.getresponse()
            response.read()
            statuses[response.status] += 1
        except OSError:
            statuses[0] += 1
        finally:
            conn.close()
        stop.wait(0.05)


def test_slow_uploads_without_a_key_leave_keyed_clients_served(tmp_path: Path) -> None:
    with running(tmp_path) as server:
        stop = threading.Event()
        opened: Counter[str] = Counter()
        # (declared size, bytes sent at once, connections): large slow uploads, smaller
        # ones that fill the gaps between them, and large ones sent fast that then stall.
        kinds = [(512_000, 0, 140), (4_000, 0, 20), (200, 0, 20), (512_000, 480_000, 40)]
        attackers = [
            threading.Thread(target=_attacker, args=(server.port, stop, size, upfront, opened))
            for size, upfront, count in kinds
            for _ in range(count)
        ]
        for thread in attackers:
            thread.start()
        try:
            time.sleep(2.0)  # every attacker is holding its upload open
            statuses: Counter[int] = Counter()
            stop_keyed = threading.Event()
            clients = [
                threading.Thread(target=_keyed, args=(server.port, stop_keyed, statuses))
                for _ in range(4)
            ]
            for thread in clients:
                thread.start()
            # Through the attackers' grace period, their cut-off and their reconnects.
            time.sleep(8.0)
            stop_keyed.set()
            for thread in clients:
                thread.join(timeout=60)
        finally:
            stop.set()
            for thread in attackers:
                thread.join(timeout=30)
        answered = sum(statuses.values())
        assert answered >= 20, statuses
        assert statuses[200] >= 0.95 * answered, statuses
        # Every trickling upload was cut off after the grace period (its connection closed,
        # not left open for the rest of its declared body) and came back at least once.
        assert opened["connections"] >= 400, opened
