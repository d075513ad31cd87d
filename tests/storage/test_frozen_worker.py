"""One PostgreSQL worker frozen (SIGSTOP) in the middle of a write must not stall the others
for longer than `[storage] stall_seconds`.

A real worker process stops itself inside the COPY of a batch, holding that batch's locks: the
server waits for COPY data, a state that neither `statement_timeout` nor
`idle_in_transaction_session_timeout` ends. This process then writes the same person.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from idstitch.config import settings_from
from idstitch.engine import Engine
from idstitch.storage.postgres import PostgresStore
from tests.storage import concurrency_worker

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(120)]

STALL = 2.0


def _stopped(pid: int) -> bool:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return fields[0] == "T"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states in /proc")
def test_a_worker_frozen_inside_its_copy_stalls_the_others_at_most_the_stall_bound(
    postgres_url: str,
) -> None:
    PostgresStore(postgres_url).close()  # the schema exists before the worker starts
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    frozen = ctx.Process(
        target=concurrency_worker.freeze_in_copy, args=(postgres_url, STALL, out), daemon=True
    )
    frozen.start()
    engine = None
    try:
        deadline = time.monotonic() + 60
        assert frozen.pid is not None
        while not _stopped(frozen.pid):
            assert frozen.is_alive() and time.monotonic() < deadline, "the worker did not stop"
            time.sleep(0.01)
        settings = settings_from({"storage": {"url": postgres_url, "stall_seconds": STALL}})
        engine = Engine(settings, tune_gc=False)
        acknowledged: list[float] = []
        started = time.monotonic()
        for n in range(5):  # the same person the frozen worker holds
            message = {"type": "track", "event": "E", "userId": "shared", "messageId": f"b{n}"}
            engine.ingest(message)
            acknowledged.append(time.monotonic() - started)
        # The first waits out the stall bound, then the frozen worker's transaction is ended;
        # the rest go straight through.
        assert STALL * 0.9 <= acknowledged[0] < STALL + 8, acknowledged
        assert acknowledged[-1] - acknowledged[0] < 5, acknowledged
        assert engine.store.healthy()
        os.kill(frozen.pid, signal.SIGCONT)
        report = out.get(timeout=60)
        # Its batch was not stored and it said so; it writes again afterwards by itself.
        assert "may or may not be stored" in report["frozen"], report
        assert report["later"] == "attached", report
        stored = {e["message_id"] for e in engine.events("user_id:shared", limit=100)}
        assert stored == {"b0", "b1", "b2", "b3", "b4", "later"}
    finally:
        if frozen.pid is not None and frozen.is_alive():
            os.kill(frozen.pid, signal.SIGCONT)
        frozen.join(timeout=30)
        if frozen.is_alive():
            frozen.kill()
        if engine is not None:
            engine.close()
