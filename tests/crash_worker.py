"""The process that `test_crash.py` kills: ingests batches into a SQLite store until killed.

    python tests/crash_worker.py DB_PATH ROUND [RETRY_BATCH_ID ...]
    python tests/crash_worker.py DB_PATH --hold FIRST_ID SECOND_ID

It first re-sends the batches named on the command line (a client retrying what was never
acknowledged), then sends new batches `ROUND.0`, `ROUND.1`, ... from a few threads at once, so
that the engine commits several of them together. Each thread prints, one line at a time:

    begin BATCH_ID                        before `ingest_batch` is called
    ack BATCH_ID OUTCOME:SEGMENT_ID ...   after it returned (one pair per message)

The messages of a batch are a function of its id (`batch_messages`), so the test can rebuild
them. With `--hold`, it sends batch FIRST_ID, prints `ready`, waits for a line on stdin, then
sends batch SECOND_ID (the test freezes the engine's helper processes before that).
"""

from __future__ import annotations

import random
import sys
import threading
from itertools import count
from typing import Any

from idstitch.config import settings_from
from idstitch.engine import Engine

THREADS = 4
BATCH_SIZE = 20


def batch_messages(batch_id: str) -> list[dict[str, Any]]:
    """The messages of one batch; every one carries a `userId` from a small pool, so that
    profiles grow and merge across batches and rounds."""
    rng = random.Random(batch_id)
    out: list[dict[str, Any]] = []
    for i in range(BATCH_SIZE):
        msg: dict[str, Any] = {
            "type": rng.choice(["identify", "track"]),
            "messageId": f"{batch_id}/{i}",
            "userId": f"u{rng.randrange(200)}",
        }
        if rng.random() < 0.6:
            msg["anonymousId"] = f"a{rng.randrange(300)}"
        if msg["type"] == "track":
            msg["event"] = "Clicked"
        else:
            msg["traits"] = {"plan": rng.choice(["free", "pro"])}
            if rng.random() < 0.4:
                msg["traits"]["email"] = f"p{rng.randrange(150)}@example.com"
        out.append(msg)
    return out


def main(argv: list[str]) -> None:
    path, round_ = argv[0], argv[1]
    retries = argv[2:]
    engine = Engine(settings_from({"storage": {"url": f"sqlite:///{path}"}}), tune_gc=False)
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def send(batch_id: str) -> None:
        say(f"begin {batch_id}")
        results = engine.ingest_batch(batch_messages(batch_id), source="crash")
        say(f"ack {batch_id} " + " ".join(f"{r.outcome}:{r.segment_id}" for r in results))

    if round_ == "--hold":
        send(retries[0])
        say("ready")
        sys.stdin.readline()
        send(retries[1])
        return
    for batch_id in retries:
        send(batch_id)
    say("ready")
    numbers = count()

    def loop() -> None:
        while True:
            send(f"{round_}.{next(numbers)}")

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main(sys.argv[1:])
