"""One worker process of the concurrency test: its own engine on the shared database."""

from __future__ import annotations

import random
from collections import deque
from multiprocessing.synchronize import Barrier
from typing import Any

from idstitch.config import settings_from
from idstitch.engine import Engine, Resolution, Ticket


def run(
    url: str,
    config: dict[str, Any],
    messages: list[tuple[float, bytes]],
    seed: int,
    barrier: Barrier,
    out: Any,
) -> None:
    """Ingest `messages` in tickets of random sizes with a few in flight; report the
    segment_ids the engine returned and the retries the store made."""
    rng = random.Random(seed)
    engine = Engine(
        settings_from({**config, "storage": {"url": url}}),
        tune_gc=False,
        max_batch=rng.choice([8, 32, 128]),
    )
    segment_ids: set[str] = set()
    inflight: deque[Ticket] = deque()

    def settle(ticket: Ticket) -> None:
        for plan in ticket.future.result(timeout=60):
            resolution = Resolution.of(plan)
            segment_ids.update(s for s in (resolution.segment_id, *resolution.merged) if s)

    barrier.wait(timeout=60)
    start = 0
    while start < len(messages):
        size = rng.randint(1, 12)
        chunk = messages[start : start + size]
        start += size
        items = [engine.prepare(raw, received_at=at) for at, raw in chunk]
        inflight.append(engine.submit(items, "web"))
        if len(inflight) >= rng.randint(1, 4):
            settle(inflight.popleft())
    while inflight:
        settle(inflight.popleft())
    out.put(
        {
            "segment_ids": sorted(segment_ids),
            "retries": int(getattr(engine.store, "conflicts", 0)),
            "commits": engine.metrics.commits,
        }
    )
    engine.close()


def freeze_in_copy(url: str, stall_seconds: float, out: Any) -> None:
    """Stop this process (SIGSTOP) inside the COPY of the message `freeze-me`, with the
    batch's locks held; once continued, report what became of it and of a later message."""
    import signal
    import threading

    import psycopg

    from idstitch.errors import StorageError

    write_row = psycopg.Copy.write_row

    def freezing(self: psycopg.Copy, row: Any) -> None:
        write_row(self, row)
        if "freeze-me" in row:
            # Sent to this thread, so that this thread stops on its way out of the call: sent
            # to the process, the kernel may pick another thread, and this one runs on
            # (through the COPY and the COMMIT) until the stop reaches it.
            signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)

    psycopg.Copy.write_row = freezing  # type: ignore[method-assign]
    engine = Engine(
        settings_from({"storage": {"url": url, "stall_seconds": stall_seconds}}), tune_gc=False
    )
    report: dict[str, Any] = {}
    try:
        engine.ingest({"type": "identify", "userId": "shared", "messageId": "freeze-me"})
        report["frozen"] = "stored"
    except StorageError as err:
        report["frozen"] = str(err)
    after = engine.ingest({"type": "track", "event": "E", "userId": "shared", "messageId": "later"})
    report["later"] = after.outcome
    out.put(report)
    engine.close()
