"""SIGKILL a real server while batches are being acknowledged, restart it, and find every
acknowledged event; a batch is all-or-nothing either way."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.http.conftest import READ, SPACE, WRITE
from tests.http.live import running

pytestmark = pytest.mark.timeout(120)

PER_BATCH = 20
WRITERS = 4


def batch(writer: int, n: int) -> dict[str, object]:
    user = f"c-{writer}-{n}"
    return {
        "batch": [
            {
                "type": "identify",
                "userId": user,
                "anonymousId": f"{user}-anon",
                "messageId": f"{user}-{k}",
                "traits": {"n": k},
            }
            for k in range(PER_BATCH)
        ]
    }


def test_every_acknowledged_event_survives_sigkill(tmp_path: Path) -> None:
    acked: list[tuple[int, int]] = []
    sent: list[tuple[int, int]] = []
    lock = threading.Lock()

    with running(tmp_path) as server:

        def write(writer: int) -> None:
            with httpx.Client(base_url=server.url, headers=WRITE, timeout=5) as client:
                for n in range(100_000):
                    with lock:
                        sent.append((writer, n))
                    try:
                        response = client.post("/v1/batch", json=batch(writer, n))
                    except httpx.HTTPError:
                        return  # the server is gone
                    assert response.status_code == 200, response.text
                    with lock:
                        acked.append((writer, n))

        threads = [threading.Thread(target=write, args=(w,)) for w in range(WRITERS)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 20
        while len(acked) < 60 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.kill()  # SIGKILL, mid-stream: writers still have requests in flight
        for thread in threads:
            thread.join(timeout=30)
        assert len(acked) >= 60

    with running(tmp_path) as server, httpx.Client(base_url=server.url, headers=READ) as client:

        def stored(writer: int, n: int) -> set[str]:
            response = client.get(
                f"/v1/spaces/{SPACE}/collections/users/profiles/user_id:c-{writer}-{n}/events",
                params={"limit": 100},
            )
            if response.status_code == 404:
                return set()
            assert response.status_code == 200, response.text
            return {e["message_id"] for e in response.json()["data"]}

        expected = {f"c-{{w}}-{{n}}-{k}" for k in range(PER_BATCH)}
        for writer, n in acked:
            assert stored(writer, n) == {m.format(w=writer, n=n) for m in expected}
        unacknowledged = [pair for pair in sent if pair not in set(acked)]
        for writer, n in unacknowledged:
            assert len(stored(writer, n)) in (0, PER_BATCH)  # never half a batch
        # the restarted server resolves onto the recovered graph
        writer, n = acked[0]
        with httpx.Client(base_url=server.url, headers=WRITE) as writer_client:
            assert (
                writer_client.post(
                    "/v1/identify",
                    json={
                        "userId": f"c-{writer}-{n}",
                        "traits": {"email": "after@restart.example"},
                    },
                ).status_code
                == 200
            )
        ids = client.get(
            f"/v1/spaces/{SPACE}/collections/users/profiles/"
            "email:after@restart.example/external_ids",
            params={"limit": 100},
        )
        assert f"c-{writer}-{n}" in {e["id"] for e in ids.json()["data"]}
