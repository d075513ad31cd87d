"""`idstitch serve` as a process: the first start, and a SIGTERM that drains in-flight
requests and closes the store cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from idstitch.config import load
from idstitch.engine import Engine
from tests.http.conftest import SPACE, WRITE_KEY, basic
from tests.http.live import free_port, running, start, write_config

pytestmark = pytest.mark.timeout(120)

STOPPED_BY_SIGTERM = (0, -signal.SIGTERM)


def test_first_start_writes_a_config_and_prints_the_keys_once(tmp_path: Path) -> None:
    out, log = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    server = start(None, tmp_path, log, out=out)
    try:
        server.wait_ready()
        printed = out.read_text()
        write_key = re.search(r"write key:\s+(\S+)", printed)
        token = re.search(r"access token:\s+(\S+)", printed)
        assert write_key and token, printed
        config = tmp_path / "idstitch-data" / "idstitch.toml"
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        assert (tmp_path / "idstitch-data" / "idstitch.db").exists()
        sent = httpx.post(
            f"{server.url}/v1/identify", json={"userId": "u1"}, headers=basic(write_key[1])
        )
        assert sent.status_code == 200
        read = httpx.get(
            f"{server.url}/v1/spaces/default/collections/users/profiles/user_id:u1/metadata",
            headers=basic(token[1]),
        )
        assert read.status_code == 200
    finally:
        assert server.stop() in STOPPED_BY_SIGTERM
    again = start(None, tmp_path, tmp_path / "stderr2.txt", out=tmp_path / "stdout2.txt")
    try:
        again.wait_ready()
    finally:
        again.stop()
    assert "write key" not in (tmp_path / "stdout2.txt").read_text()
    logs = log.read_text() + (tmp_path / "stderr2.txt").read_text()
    assert write_key[1] not in logs and token[1] not in logs
    for line in logs.splitlines():
        json.loads(line)  # every log line is one JSON object


def test_sigterm_drains_an_in_flight_request_and_closes_the_store(tmp_path: Path) -> None:
    body = json.dumps(
        {"batch": [{"type": "identify", "userId": "drained", "traits": {"plan": "pro"}}]}
    ).encode()
    head = (
        f"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: {basic(WRITE_KEY)['Authorization']}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with running(tmp_path) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
            conn.sendall(head + body[:10])  # the request is now in flight, its body half sent
            httpx.get(server.url + "/healthz")  # ...and has surely reached the app
            server.proc.send_signal(signal.SIGTERM)
            # New connections are not served while draining: refused once the listener is
            # closed, or reset if one slipped into the kernel's backlog just before.
            with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
                for _ in range(100):
                    httpx.get(server.url + "/healthz", timeout=1)
            conn.sendall(body[10:])
            received = b""
            while chunk := conn.recv(65536):  # the server closes the connection after answering
                received += chunk
        reply = received.decode()
        assert reply.startswith("HTTP/1.1 200"), reply
        assert reply.endswith('{"success":true}')
        assert server.proc.wait(timeout=30) in STOPPED_BY_SIGTERM
        assert '"message":"store closed"' in server.output()
    wal = tmp_path / "idstitch.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # checkpointed on close
    with Engine(load(tmp_path / "idstitch.toml")) as engine:
        assert engine.traits("user_id:drained") == {"plan": "pro"}
        assert engine.settings.space_id == SPACE


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_whole_process_group_drains_every_request(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """A terminal's Ctrl-C (SIGINT) and a service manager's stop (SIGTERM) reach every process
    of the group, the committer too: requests in flight are still answered 200 and stored,
    and the server ends by the signal, with no traceback."""
    acknowledged: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def client(worker: int, url: str) -> None:
        n = 0
        while not stop.is_set():
            ids = [f"w{worker}-{n}-{k}" for k in range(50)]
            n += 1
            batch = [
                {"type": "track", "event": "E", "anonymousId": f"a-{m}", "messageId": m}
                for m in ids
            ]
            try:
                answer = httpx.post(
                    f"{url}/v1/batch", json={"batch": batch}, headers=basic(WRITE_KEY), timeout=30
                )
            except httpx.TransportError:  # refused or reset once the listener is closed
                return
            if answer.status_code == 200:
                acknowledged.extend(ids)
            else:
                failures.append(f"{answer.status_code} {answer.text}")

    with running(tmp_path, own_group=True) as server:
        workers = [
            threading.Thread(target=client, args=(w, server.url), daemon=True) for w in range(4)
        ]
        for worker in workers:
            worker.start()
        time.sleep(1.0)
        os.killpg(server.proc.pid, signum)
        ended = server.proc.wait(timeout=60)
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
        output = server.output()
    assert ended == -signum, output
    assert not failures, failures[:3]
    assert "Traceback" not in output and "Aborted!" not in output, output
    assert len(acknowledged) >= 50
    with Engine(load(tmp_path / "idstitch.toml")) as engine:
        missing = [
            m
            for m in acknowledged
            if engine.store.find_by_identifier("users", "anonymous_id", f"a-{m}") is None
        ]
    assert not missing, missing[:5]


def test_a_taken_port_is_one_clear_sentence(tmp_path: Path) -> None:
    write_config(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "idstitch",
                "serve",
                "--config",
                str(tmp_path / "idstitch.toml"),
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_source_rules_that_match_no_write_key_are_named_at_start(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(
        config.read_text()
        + "\n[identity.sources.web]\nmerge = false\n"
        + "\n[identity.sources.wbe]\ncreate = false\n"
    )
    log = tmp_path / "stderr.txt"
    server = start(config, tmp_path, log)
    try:
        server.wait_ready()
    finally:
        assert server.stop() in STOPPED_BY_SIGTERM
    warnings = [
        json.loads(line)
        for line in log.read_text().splitlines()
        if '"source rules match no write key"' in line
    ]
    assert [(w["level"], w["source"]) for w in warnings] == [("warning", "wbe")]
    assert "[identity.sources.wbe]" in warnings[0]["fix"]


def test_a_host_this_machine_does_not_have_is_named_as_the_problem() -> None:
    from idstitch.errors import ConfigError
    from idstitch.http.server import listen

    with pytest.raises(ConfigError, match="pass a --host this machine has"):
        listen("192.0.2.1", 18765)  # TEST-NET-1: documentation addresses, never assigned


SWALLOWING = """
import contextlib, sys
import uvicorn
from idstitch.cli import main

@contextlib.contextmanager
def capture_without_raising_again(self):
    # What asyncio's runner can make of uvicorn's re-raised SIGINT when it lands as the
    # server finishes: nothing at all.
    import signal
    originals = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in originals.items():
            signal.signal(s, h)

uvicorn.Server.capture_signals = capture_without_raising_again
sys.exit(main(["serve", "--config", sys.argv[1], "--port", sys.argv[2]]))
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_server_ends_by_the_signal_even_when_uvicorn_does_not_raise_it_again(
    tmp_path: Path, signum: signal.Signals
) -> None:
    config = write_config(tmp_path)
    port = free_port()
    log = (tmp_path / "swallow.txt").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-c", SWALLOWING, str(config), str(port)],
        cwd=tmp_path,
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == -signum
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
