"""Durable throughput as the SQLite store grows: one long closed-loop run, reported per step.

    python -m benchmarks growth [--events 1000000] [--step 100000]

`make bench` measures a fresh store. A store that already holds millions of events is slower
to write: its random-key indexes (events by profile, identifiers by key, traits by profile)
gain an entry in a different page for almost every message, and SQLite's WAL holds whole
pages, so a commit writes about one page per such index and message once an index is larger
than a commit. This run shows that curve: messages/s for each step of `--step` messages, the
committer's messages per commit, the database's size, and the WAL's, which must stay bounded.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections import deque
from pathlib import Path

from benchmarks.engine_bench import SOURCE, settings_for
from benchmarks.workload import generate
from idstitch.engine import Engine, Ticket


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks growth",
        description="Durable messages/s on SQLite, step by step as the store grows.",
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="messages (1000000)")
    parser.add_argument("--step", type=int, default=100_000, help="report every N (100000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--ticket", type=int, default=100, help="messages per ticket (100)")
    parser.add_argument("--window", type=int, default=20, help="tickets in flight (20)")
    args = parser.parse_args(argv)
    if args.step % args.ticket:
        parser.error("--step must be a multiple of --ticket")
    print(f"generating {args.events:,} messages (seed {args.seed}) ...", flush=True)
    messages = generate(args.events, args.seed).messages
    workdir = Path(tempfile.mkdtemp(prefix="idstitch-growth-"))
    db = workdir / "growth.db"
    head = ("messages stored", "messages/s", "per commit", "db MB", "WAL MB")
    print("\n{:>16} {:>11} {:>11} {:>9} {:>7}".format(*head))
    rates: list[float] = []
    try:
        engine = Engine(settings_for(db), tune_gc=True)
        try:
            inflight: deque[Ticket] = deque()
            started, commits, step_start = time.perf_counter(), 0, 0
            for start in range(0, len(messages), args.ticket):
                items = [engine.prepare(raw) for raw in messages[start : start + args.ticket]]
                inflight.append(engine.submit(items, SOURCE))
                if len(inflight) >= args.window:
                    inflight.popleft().future.result()
                done = min(start + args.ticket, len(messages))
                if done % args.step and done < len(messages):
                    continue
                while inflight:
                    inflight.popleft().future.result()
                now = time.perf_counter()
                step = done - step_start
                rate = step / (now - started)
                rates.append(rate)
                made = engine.metrics.commits - commits
                size = db.stat().st_size / 1e6
                wal = Path(f"{db}-wal")
                wal_mb = wal.stat().st_size / 1e6 if wal.exists() else 0.0
                print(
                    f"{done:>16,} {rate:>11,.0f} {step / max(made, 1):>11,.0f} {size:>9,.0f} "
                    f"{wal_mb:>7,.0f}"
                )
                started, commits, step_start = now, engine.metrics.commits, done
        finally:
            engine.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if len(rates) > 1:
        print(f"\nlast step / first step: {rates[-1] / rates[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
