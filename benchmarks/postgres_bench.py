"""PostgreSQL store: events/s and P95 with 1, 2 and 4 worker processes on one database.

Every worker is its own process with its own Engine, as `idstitch serve` workers are. The
synthetic stream (`benchmarks.workload`) is cut into tickets of `--ticket` messages (one
`/v1/batch` request each) and dealt round-robin to the workers, as a load balancer would:
concurrent workers see overlapping people, devices and merges (`--route device` instead
sends each device to one worker, as sticky sessions would). Each worker runs closed loop
with `--window` tickets in flight, so its engine forms micro-batches of up to
`window x ticket` messages. The same stream through the SQLite store in one process gives
the reference figure of the same run.

Throughput is all messages over the wall time from the first worker's start to the last
worker's end; P95 is the time from submitting a ticket to its durable acknowledgement.

    python -m benchmarks.postgres_bench --events 60000 --rounds 3
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shlex
import statistics
import sys
import tempfile
import time
import uuid
import zlib
from collections import deque
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import msgspec

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
SOURCE = "bench"


@dataclass
class WorkerResult:
    events: int
    started: float  # time.time()
    ended: float
    latencies: list[float]  # seconds per ticket, submit -> durable ack
    commits: int
    conflicts: int


@dataclass
class Run:
    label: str
    workers: int
    rate: float
    p50_ms: float
    p95_ms: float
    commits: int
    conflicts: int


def with_schema(url: str, schema: str) -> str:
    parts = urlsplit(url)
    option = "options=" + quote(f"-csearch_path={schema}")
    query = f"{parts.query}&{option}" if parts.query else option
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def worker(url: str, tickets: list[list[bytes]], window: int, barrier: Barrier, out: Any) -> None:
    """One worker process: open an engine, wait for the others, ingest closed loop."""
    from idstitch.config import settings_from
    from idstitch.engine import Engine, Ticket

    engine = Engine(settings_from({"storage": {"url": url}}), tune_gc=True)
    prepare, submit = engine.prepare, engine.submit
    latencies: list[float] = []  # not the tickets: they hold messages and plans
    inflight: deque[Ticket] = deque()
    barrier.wait()
    started = time.time()
    for raw_ticket in tickets:
        inflight.append(submit([prepare(raw) for raw in raw_ticket], SOURCE))
        if len(inflight) >= window:
            ticket = inflight.popleft()
            ticket.future.result()
            latencies.append(ticket.committed - ticket.arrived)
    for ticket in inflight:
        ticket.future.result()
        latencies.append(ticket.committed - ticket.arrived)
    ended = time.time()
    conflicts = int(getattr(engine.store, "conflicts", 0))
    commits = engine.metrics.commits
    engine.close()
    out.put(
        WorkerResult(
            events=sum(len(t) for t in tickets),
            started=started,
            ended=ended,
            latencies=latencies,
            commits=commits,
            conflicts=conflicts,
        )
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_workers(label: str, urls: list[str], shares: list[list[list[bytes]]], window: int) -> Run:
    ctx = mp.get_context("spawn")
    count = len(urls)
    barrier = ctx.Barrier(count)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(urls[i], shares[i], window, barrier, out))
        for i in range(count)
    ]
    for proc in procs:
        proc.start()
    results: list[WorkerResult] = [out.get(timeout=900) for _ in procs]
    for proc in procs:
        proc.join()
        if proc.exitcode:
            raise SystemExit(f"a worker of {label} exited with status {proc.exitcode}.")
    seconds = max(r.ended for r in results) - min(r.started for r in results)
    latencies = [lat for r in results for lat in r.latencies]
    return Run(
        label=label,
        workers=count,
        rate=sum(r.events for r in results) / seconds,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p95_ms=percentile(latencies, 0.95) * 1000,
        commits=sum(r.commits for r in results),
        conflicts=sum(r.conflicts for r in results),
    )


class _Ids(msgspec.Struct):
    anonymousId: str | None = None
    userId: str | None = None
    messageId: str | None = None


def deal(messages: list[bytes], workers: int, args: argparse.Namespace) -> list[list[list[bytes]]]:
    """Each worker's tickets. `round-robin`: consecutive tickets go to different workers, as
    a load balancer without affinity sends them. `device`: each anonymousId (or userId) always
    goes to the same worker, as with sticky sessions; a person's devices may still differ."""
    if args.route == "round-robin":
        tickets = [messages[i : i + args.ticket] for i in range(0, len(messages), args.ticket)]
        return [tickets[i::workers] for i in range(workers)]
    streams: list[list[bytes]] = [[] for _ in range(workers)]
    decode = msgspec.json.Decoder(_Ids).decode
    for raw in messages:
        ids = decode(raw)
        key = ids.anonymousId or ids.userId or ids.messageId or ""
        streams[zlib.crc32(key.encode()) % workers].append(raw)
    return [[s[i : i + args.ticket] for i in range(0, len(s), args.ticket)] for s in streams]


def admin(url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.encode())


def postgres_run(url: str, shares: list[list[list[bytes]]], window: int) -> Run:
    schema = f"idstitch_bench_{uuid.uuid4().hex[:10]}"
    admin(url, f"CREATE SCHEMA {schema}")
    try:
        store_url = with_schema(url, schema) + "&application_name=idstitch-bench"
        from idstitch.storage.postgres import PostgresStore

        PostgresStore(store_url).close()  # migrate once, outside the timed part
        count = len(shares)
        return run_workers(f"postgres x{count}", [store_url] * count, shares, window)
    finally:
        admin(url, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def sqlite_run(tickets: list[list[bytes]], window: int) -> Run:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        return run_workers("sqlite x1", [url], [tickets], window)


def median_run(runs: list[Run]) -> Run:
    first = runs[0]
    return Run(
        label=first.label,
        workers=first.workers,
        rate=statistics.median(r.rate for r in runs),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p95_ms=statistics.median(r.p95_ms for r in runs),
        commits=round(statistics.median(r.commits for r in runs)),
        conflicts=round(statistics.median(r.conflicts for r in runs)),
    )


def report(runs: dict[str, list[Run]], command: str, events: int, rounds: int) -> str:
    medians = {label: median_run(rs) for label, rs in runs.items()}
    sqlite = medians.get("sqlite x1")
    one = next((m for m in medians.values() if m.label == "postgres x1"), None)
    lines = [
        f"idstitch PostgreSQL store benchmark: {events:,} messages, median of {rounds} "
        f"round(s), {os.cpu_count()} CPU(s)",
        f"command: {command}",
        "",
        f"{'store':<14}{'events/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'commits':>9}"
        f"{'retries':>9}{'vs 1 worker':>13}{'vs SQLite':>11}",
    ]
    for m in medians.values():
        vs_one = f"{m.rate / one.rate:.2f}x" if one is not None and m.label != "sqlite x1" else ""
        vs_sqlite = f"{m.rate / sqlite.rate:.2f}x" if sqlite is not None else ""
        lines.append(
            f"{m.label:<14}{m.rate:>10,.0f}{m.p50_ms:>9.1f}{m.p95_ms:>9.1f}{m.commits:>9}"
            f"{m.conflicts:>9}{vs_one:>13}{vs_sqlite:>11}"
        )
    lines.append("")
    lines.append(
        "every round: "
        + "; ".join(
            f"{label} " + " / ".join(f"{r.rate:,.0f}" for r in rs) for label, rs in runs.items()
        )
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("IDSTITCH_BENCH_POSTGRES_URL", DEFAULT_URL))
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ticket", type=int, default=100, help="messages per ticket")
    parser.add_argument("--window", type=int, default=10, help="tickets in flight per worker")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument(
        "--route",
        choices=["round-robin", "device"],
        default="round-robin",
        help="how tickets reach the workers (see `deal`)",
    )
    args = parser.parse_args(argv)
    import psycopg

    from benchmarks.workload import generate
    from idstitch.checks import redact_url

    try:
        admin(args.url, "SELECT 1")
    except psycopg.Error as err:
        print(
            f"cannot reach PostgreSQL at {redact_url(args.url)} ({str(err).splitlines()[0]}); "
            "start it or pass --url.",
            file=sys.stderr,
        )
        return 2
    messages = generate(args.events, args.seed).messages
    tickets = [messages[i : i + args.ticket] for i in range(0, len(messages), args.ticket)]
    counts = [int(n) for n in args.workers.split(",")]
    runs: dict[str, list[Run]] = {}
    for _ in range(args.rounds):
        if not args.no_sqlite:
            runs.setdefault("sqlite x1", []).append(sqlite_run(tickets, args.window))
        for count in counts:
            run = postgres_run(args.url, deal(messages, count, args), args.window)
            runs.setdefault(run.label, []).append(run)
            print(
                f"  {run.label}: {run.rate:,.0f} events/s, p95 {run.p95_ms:.1f} ms",
                file=sys.stderr,
                flush=True,
            )
    command = "python -m benchmarks.postgres_bench " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    print(report(runs, command, len(messages), args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
