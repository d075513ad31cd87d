"""The repair benchmark: how long `explain` takes on long profiles, and what an unmerge costs
on a store full of ordinary traffic, through the library API (`idstitch.open`).

    python -m benchmarks repair [--sizes 10,100,1000,10000] [--background 200000]
                                [--kiosk 1000] [--rounds 3] [--postgres URL [--analyze]]

Each store (a fresh SQLite file, and with `--postgres URL` a fresh schema
`repair_bench_<pid>` on that server, dropped at the end) is filled once:

- background: `--background` messages of the engine benchmark's synthetic stream
  (`benchmarks.workload`: visitors on one to three devices, sign-ups, logins on other devices),
  through the bulk path `idstitch import` uses (`idstitch.importer.import_paths`);
- chains, one profile per size N of `--sizes`: one identify (a user id and the first
  anonymous id), then N - 1 messages that each carry the previous message's anonymous id (in
  `context.externalIds`) and a new one, so the shortest path between the first and the last
  anonymous id is N - 1 messages long;
- kiosks, one per round: a shared browser's cookie (`anonymous_id:kiosk-R`) seen alone, then
  joined to its owner by a login; then `--kiosk` people each log in on it (refused: the cookie
  already belongs to a user) and type their e-mail into a form there, which lands on the
  owner's profile through the cookie, as in docs/explain.md. The kiosk profile holds
  `--kiosk` + 1 e-mails.

The rules are Segment's (`preset = "segment"`), with the limits of `anonymous_id` and
`email` and the identifiers per profile raised to 1,000,000: under the default limits a
profile gathers at most 5 anonymous ids a week, 5 e-mails a year and 1,000 identifiers, so
neither the chains nor the kiosk profile could be built.

Measured, once the read index has caught up with everything stored:

1. explain: `engine.explain(first, last)` on each chain, `--repeat` calls per round; the
   median and P95 of every call of every round, and the path length it answered;
2. unmerge: `engine.unmerge("user_id:<kiosk owner>", "anonymous_id:kiosk-R")` once per
   round, on that round's kiosk: its seconds, the parts it made, the messages it resolved
   again (those of the kiosk profile). On SQLite the read index is emptied and rebuilt after
   a split; the seconds until `engine.index_lag().messages` is 0 again are timed, and
   `engine.profile()` of `--reads` background users is timed before the unmerge, right
   after it (while the index rebuilds, reads take what it lacks from the log) and once it
   has caught up. Each round waits for the index before the next. Medians of the rounds.
   On PostgreSQL, whose reads need no index of idstitch's own, the same reads are timed.

The header says whether the PostgreSQL server runs autovacuum: without it, tables that were
never analyzed have no statistics, and the planner may choose plans that read whole tables
(`--analyze` runs ANALYZE on the store's tables once they are loaded, to compare).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import msgspec
from rich.console import Console
from rich.table import Table

import idstitch
from benchmarks.workload import generate, write_messages
from idstitch.config import settings_from
from idstitch.engine import Engine
from idstitch.errors import ProfileNotFound
from idstitch.importer import import_paths

SOURCE: Final = "web"
CHUNK: Final = 1_000  # messages per ingest_batch call
BIG: Final = 1_000_000
IDENTITY: Final[dict[str, Any]] = {
    "preset": "segment",
    "limits": {
        "anonymous_id": {"max": BIG, "window": "ever"},
        "email": {"max": BIG, "window": "ever"},
    },
    "max_identifiers": BIG,
}
# After the synthetic stream (March to May 2025), so the chains and kiosks come last.
START: Final = datetime(2025, 6, 1, tzinfo=UTC).timestamp()
INDEX_TIMEOUT: Final = 900.0  # seconds to wait for the read index before giving up


# ---- what is measured ---------------------------------------------------------------------
@dataclass
class Explained:
    size: int  # messages of the chain profile
    path: int  # messages on the path the answer gave
    complete: bool
    first_ms: float  # the first call
    calls_ms: list[float] = field(default_factory=list)


@dataclass
class Unmerged:
    seconds: float
    parts: int
    messages: int  # the kiosk profile's messages, resolved again
    lag_after: int  # index_lag().messages right after the unmerge returned
    rebuild_seconds: float | None  # until index_lag().messages == 0; None: no index
    read_before_ms: float  # median profile read before the unmerge
    read_first_ms: float  # the first read after it
    read_during_ms: float  # median of the reads right after it
    read_caught_up_ms: float  # median once the index has caught up


@dataclass
class StoreRun:
    name: str
    url: str  # as shown (no password)
    background: int  # messages imported
    import_rate: float  # messages/s of the bulk import, index caught up included
    build_seconds: float  # chains and kiosks through ingest_batch
    explained: list[Explained] = field(default_factory=list)
    unmerged: list[Unmerged] = field(default_factory=list)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank: the smallest value with at least `q` of them at or below it."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 1))  # ceil(n * q)
    return ordered[int(rank) - 1]


# ---- the messages -------------------------------------------------------------------------
def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def chain(size: int, at: float) -> list[dict[str, Any]]:
    """A profile of `size` messages whose first and last anonymous ids are `size - 1`
    messages apart: each message carries the previous one's anonymous id and a new one."""
    name = f"chain{size}"
    out: list[dict[str, Any]] = [
        {
            "type": "identify",
            "messageId": f"{name}-m0",
            "userId": f"{name}-user",
            "anonymousId": f"{name}-a0",
            "timestamp": _iso(at),
        }
    ]
    for i in range(1, size):
        out.append(
            {
                "type": "track",
                "event": "Step",
                "messageId": f"{name}-m{i}",
                "anonymousId": f"{name}-a{i}",
                "context": {
                    "externalIds": [
                        {
                            "id": f"{name}-a{i - 1}",
                            "type": "anonymous_id",
                            "collection": "users",
                            "encoding": "none",
                        }
                    ]
                },
                "timestamp": _iso(at + i),
            }
        )
    return out


def chain_ends(size: int) -> tuple[str, str]:
    return f"anonymous_id:chain{size}-a0", f"anonymous_id:chain{size}-a{size - 1}"


def kiosk(n: int, people: int, at: float) -> list[dict[str, Any]]:
    """docs/explain.md's kiosk at scale: the cookie alone, its owner's login, then each of
    `people` logs in on it (refused) and types their e-mail into a form there."""
    cookie = f"kiosk-{n}"
    out: list[dict[str, Any]] = [
        {"type": "page", "messageId": f"{cookie}-m0", "anonymousId": cookie, "timestamp": _iso(at)},
        {
            "type": "identify",
            "messageId": f"{cookie}-m1",
            "anonymousId": cookie,
            "userId": f"{cookie}-owner",
            "traits": {"email": f"owner@{cookie}.example.com"},
            "timestamp": _iso(at + 1),
        },
    ]
    for k in range(people):
        t = at + 2 + 2 * k
        out.append(
            {
                "type": "identify",
                "messageId": f"{cookie}-login{k}",
                "anonymousId": cookie,
                "userId": f"{cookie}-visitor{k}",
                "timestamp": _iso(t),
            }
        )
        out.append(
            {
                "type": "track",
                "event": "Newsletter Signup",
                "messageId": f"{cookie}-form{k}",
                "anonymousId": cookie,
                "context": {"traits": {"email": f"visitor{k}@{cookie}.example.com"}},
                "timestamp": _iso(t + 1),
            }
        )
    return out


class _Ids(msgspec.Struct):
    userId: str | None = None


def background_users(messages: Sequence[bytes], count: int, seed: int) -> list[str]:
    """`count` user ids of the background stream, chosen at random (seeded)."""
    decode = msgspec.json.Decoder(_Ids).decode
    seen = dict.fromkeys(u for raw in messages if (u := decode(raw).userId))
    users = sorted(seen)
    return random.Random(seed).sample(users, min(count, len(users)))


# ---- one store ----------------------------------------------------------------------------
def open_engine(url: str) -> Engine:
    data: dict[str, Any] = {
        "storage": {"url": url},
        "sources": [{"id": SOURCE, "write_key": "repair-bench-write-key"}],
        "identity": IDENTITY,
    }
    return idstitch.open(settings_from(data))


def wait_for_index(engine: Engine, timeout: float = INDEX_TIMEOUT) -> float | None:
    """Seconds until the read index has caught up, or None after `timeout`."""
    started = time.perf_counter()
    while engine.index_lag().messages > 0:
        if time.perf_counter() - started > timeout:
            return None
        time.sleep(0.01)
    return time.perf_counter() - started


def ingest(engine: Engine, messages: list[dict[str, Any]]) -> list[idstitch.Resolution]:
    out: list[idstitch.Resolution] = []
    for i in range(0, len(messages), CHUNK):
        out.extend(engine.ingest_batch(messages[i : i + CHUNK], source=SOURCE))
    return out


def timed_reads(engine: Engine, refs: Sequence[str]) -> list[float]:
    """Milliseconds of `engine.profile(ref)` for each ref."""
    out = []
    for ref in refs:
        started = time.perf_counter()
        with contextlib.suppress(ProfileNotFound):
            engine.profile(ref)
        out.append((time.perf_counter() - started) * 1000)
    return out


def run_store(
    name: str,
    url: str,
    shown: str,
    stream: Path,
    args: argparse.Namespace,
    users: list[str],
    loaded: Callable[[], None] | None = None,
) -> StoreRun:
    """Fill a fresh store at `url`, then measure; `loaded()` runs once everything is stored
    and indexed, before the first measure."""
    sizes, rounds = args.sizes, args.rounds
    say(f"{name}: importing {args.background:,} background messages ...")
    engine = open_engine(url)
    try:
        summary = import_paths(engine, [stream], source="import")
        run = StoreRun(name, shown, summary.events, summary.events_per_second, 0.0)
        say(f"{name}: {summary.events:,} imported at {summary.events_per_second:,.0f}/s")
        started = time.perf_counter()
        at = START
        for size in sizes:
            ingest(engine, chain(size, at))
            at += size + 60
        kiosks: list[tuple[str, int]] = []  # (owner ref, messages of the kiosk profile)
        for n in range(1, rounds + 1):
            results = ingest(engine, kiosk(n, args.kiosk, at))
            owner = results[1].segment_id
            kiosks.append((f"user_id:kiosk-{n}-owner", sum(r.segment_id == owner for r in results)))
            at += 2 * args.kiosk + 60
        run.build_seconds = time.perf_counter() - started
        if wait_for_index(engine) is None:
            say(f"{name}: the read index did not catch up in {INDEX_TIMEOUT:.0f} s")
        say(f"{name}: chains and kiosks ingested in {run.build_seconds:.1f} s")
        if loaded is not None:
            loaded()

        # explain: rounds of `repeat` calls per size, interleaved, so drift hits every size.
        explained = {size: Explained(size, 0, True, 0.0) for size in sizes}
        for r in range(rounds):
            for size in sizes:
                first, last = chain_ends(size)
                found = explained[size]
                for i in range(args.repeat):
                    started = time.perf_counter()
                    answer = engine.explain(first, last)
                    ms = (time.perf_counter() - started) * 1000
                    if r == 0 and i == 0:
                        found.first_ms = ms
                        found.path = len(answer["path"]) if answer["together"] else -1
                        found.complete = bool(answer["complete"])
                    found.calls_ms.append(ms)
            say(
                f"{name}: explain round {r + 1}: "
                + ", ".join(
                    f"N={s:,} {statistics.median(explained[s].calls_ms[-args.repeat :]):.1f} ms"
                    for s in sizes
                )
            )
        run.explained = list(explained.values())

        refs = [f"user_id:{u}" for u in users]
        for n, (owner, count) in enumerate(kiosks, start=1):
            timed_reads(engine, refs)  # warm: the reads below are of pages in the cache
            before = statistics.median(timed_reads(engine, refs))
            started = time.perf_counter()
            result = engine.unmerge(owner, f"anonymous_id:kiosk-{n}")
            seconds = time.perf_counter() - started
            done = time.perf_counter()
            lag = engine.index_lag().messages
            during = timed_reads(engine, refs)
            # From the unmerge's return, the reads above included.
            rebuilt = None if wait_for_index(engine) is None else time.perf_counter() - done
            caught_up = statistics.median(timed_reads(engine, refs))
            run.unmerged.append(
                Unmerged(
                    seconds=seconds,
                    parts=len(result["parts"]),
                    messages=count,
                    lag_after=lag,
                    rebuild_seconds=rebuilt if lag > 0 else None,
                    read_before_ms=before,
                    read_first_ms=during[0],
                    read_during_ms=statistics.median(during),
                    read_caught_up_ms=caught_up,
                )
            )
            u = run.unmerged[-1]
            rebuilt_text = "-" if u.rebuild_seconds is None else f"{u.rebuild_seconds:.1f} s"
            say(
                f"{name}: unmerge round {n}: {seconds:.2f} s, {u.parts:,} parts, index lag "
                f"{lag:,} messages, rebuilt in {rebuilt_text}; reads {before:.2f} ms before, "
                f"{u.read_during_ms:.2f} ms right after"
            )
        return run
    finally:
        engine.close()


# ---- PostgreSQL ---------------------------------------------------------------------------
def _schema() -> str:
    return f"repair_bench_{os.getpid()}"


@contextlib.contextmanager
def postgres_schema(url: str) -> Iterator[str]:
    """A new schema on the server at `url`, dropped afterwards; yields a store URL in it."""
    import psycopg

    from benchmarks.postgres_bench import with_schema

    schema = _schema()
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE".encode())
        conn.execute(f"CREATE SCHEMA {schema}".encode())
    try:
        yield with_schema(url, schema)
    finally:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE".encode())


def autovacuum(url: str) -> str:
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SHOW autovacuum").fetchone()
    return str(row[0]) if row else "unknown"


def analyze(url: str) -> None:
    """ANALYZE every table of the benchmark's schema (and only those)."""
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        tables = [
            str(r[0])
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s", (_schema(),)
            )
        ]
        for table in tables:
            conn.execute(f'ANALYZE {_schema()}."{table}"'.encode())
    say(f"Postgres: ANALYZE ran on {len(tables)} tables")


# ---- the report ---------------------------------------------------------------------------
def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _ms(value: float) -> str:
    return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def report(args: argparse.Namespace, runs: list[StoreRun], started: float) -> None:
    # Lines as they are (no wrapping); tables as wide as they need, up to 120 columns.
    console = Console(width=None if sys.stdout.isatty() else 120, soft_wrap=True, highlight=False)
    p = console.print
    p()
    p("idstitch repair benchmark: explain on long profiles, unmerge of a kiosk profile")
    p(
        f"  command : python -m benchmarks repair --sizes {','.join(map(str, args.sizes))} "
        f"--background {args.background} --kiosk {args.kiosk} --rounds {args.rounds} "
        f"--repeat {args.repeat} --reads {args.reads} --seed {args.seed}"
        + (" --postgres URL" if args.postgres else "")
        + (" --analyze" if args.analyze else "")
    )
    p(
        f"  machine : {os.cpu_count()} CPUs, Python {platform.python_version()}, SQLite "
        f"{sqlite3.sqlite_version}, load average at start {args.load_at_start}"
    )
    p(
        "  rules   : preset segment; anonymous_id and email limits and max_identifiers "
        f"{BIG:,} (see the module docstring)"
    )
    if args.postgres:
        stats = "ANALYZE after loading (--analyze)" if args.analyze else "as the server left them"
        p(f"  Postgres: autovacuum {args.autovacuum} on the server; table statistics: {stats}")
    for run in runs:
        p(
            f"  {run.name:8s}: {run.url}; {run.background:,} background messages imported at "
            f"{run.import_rate:,.0f}/s; chains and kiosks ingested in {run.build_seconds:.1f} s"
        )

    p()
    p(f"explain(first, last) on a chain of N messages, {args.rounds} x {args.repeat} calls each:")
    table = Table()
    table.add_column("N messages", justify="right")
    table.add_column("path", justify="right")
    for run in runs:
        table.add_column(f"{run.name}\nmedian ms", justify="right")
        table.add_column(f"{run.name}\nP95 ms", justify="right")
        table.add_column(f"{run.name}\nfirst ms", justify="right")
    for i, size in enumerate(args.sizes):
        cells = [f"{size:,}"]
        paths = {run.explained[i].path for run in runs}
        complete = all(run.explained[i].complete for run in runs)
        cells.append(", ".join(f"{p:,}" for p in sorted(paths)) + ("" if complete else " (cut)"))
        for run in runs:
            e = run.explained[i]
            cells += [
                _ms(statistics.median(e.calls_ms)),
                _ms(percentile(e.calls_ms, 0.95)),
                _ms(e.first_ms),
            ]
        table.add_row(*cells)
    p(table)

    p()
    p(
        f"unmerge of a kiosk profile ({args.kiosk:,} e-mails through one cookie): median of "
        f"{args.rounds} round(s), each round in brackets:"
    )
    table = Table()
    table.add_column("measure")
    for run in runs:
        table.add_column(run.name, justify="right")

    def row(label: str, values: list[list[float | None]], fmt: str) -> None:
        cells = [label]
        for each in values:
            known = [v for v in each if v is not None]
            if not known:
                cells.append("-")
                continue
            med = statistics.median(known)
            rounds = ", ".join("-" if v is None else format(v, fmt) for v in each)
            cells.append(f"{format(med, fmt)} [{rounds}]" if len(each) > 1 else format(med, fmt))
        table.add_row(*cells)

    def of(attr: str) -> list[list[float | None]]:
        return [[getattr(u, attr) for u in run.unmerged] for run in runs]

    row("unmerge: seconds", of("seconds"), ".2f")
    row("  messages resolved again", of("messages"), ",.0f")
    row("  parts", of("parts"), ",.0f")
    row("  index lag right after (messages)", of("lag_after"), ",.0f")
    row("  seconds until the index caught up", of("rebuild_seconds"), ".1f")
    row("profile read before: median ms", of("read_before_ms"), ".2f")
    row("  first read right after: ms", of("read_first_ms"), ".2f")
    row("  reads right after: median ms", of("read_during_ms"), ".2f")
    row("  reads once caught up: median ms", of("read_caught_up_ms"), ".2f")
    p(table)

    p()
    p("summary:")
    biggest = len(args.sizes) - 1
    for run in runs:
        e = run.explained[biggest]
        u = run.unmerged
        med = statistics.median
        line = (
            f"  {run.name}: explain across {e.size:,} messages ({e.path:,} on the path) takes "
            f"{med(e.calls_ms):,.1f} ms (P95 {percentile(e.calls_ms, 0.95):,.1f}); the unmerge "
            f"of {med(x.messages for x in u):,.0f} messages into {med(x.parts for x in u):,.0f} "
            f"parts takes {med(x.seconds for x in u):.2f} s"
        )
        rebuilds = [x.rebuild_seconds for x in u if x.rebuild_seconds is not None]
        if rebuilds:
            line += (
                f", then the read index of {run.background:,}+ messages is rebuilt in "
                f"{med(rebuilds):.1f} s, during which a profile read takes "
                f"{med(x.read_during_ms for x in u):.2f} ms against "
                f"{med(x.read_before_ms for x in u):.2f} ms before"
            )
        else:
            line += (
                f"; profile reads take {med(x.read_during_ms for x in u):.2f} ms right after "
                f"against {med(x.read_before_ms for x in u):.2f} ms before"
            )
        p(line + ".")
    p(f"total time {time.perf_counter() - started:.0f} s.")


# ---- driver -------------------------------------------------------------------------------
def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of whole numbers") from None
    if not sizes or sizes[0] < 2:
        raise argparse.ArgumentTypeError("every size must be at least 2 messages")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks repair",
        description=(
            "explain latency on long profiles, and the cost of an unmerge (with the read "
            "index rebuilt after it) on a store of ordinary traffic."
        ),
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=_sizes("10,100,1000,10000"),
        help="messages of each chain profile explain runs on (10,100,1000,10000)",
    )
    parser.add_argument(
        "--background", type=int, default=200_000, help="background messages (200000)"
    )
    parser.add_argument(
        "--kiosk", type=int, default=1_000, help="people whose e-mails reach the kiosk (1000)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians reported (3)")
    parser.add_argument("--repeat", type=int, default=10, help="explain calls per round (10)")
    parser.add_argument("--reads", type=int, default=20, help="profile reads per sample (20)")
    parser.add_argument("--seed", type=int, default=7, help="background stream seed (7)")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="also on this PostgreSQL server, in a schema of its own (dropped afterwards)",
    )
    parser.add_argument(
        "--analyze",
        action="store_true",
        help="PostgreSQL: ANALYZE the store's tables once loaded (a server whose autovacuum is "
        "off, or has not run yet, has no statistics on them)",
    )
    args = parser.parse_args(argv)
    for name in ("background", "kiosk", "rounds", "repeat", "reads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    started = time.perf_counter()
    args.load_at_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if args.postgres:
        import psycopg

        from idstitch.checks import redact_url

        try:
            with psycopg.connect(args.postgres, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
            args.autovacuum = autovacuum(args.postgres)
        except psycopg.Error as err:
            print(
                f"cannot reach PostgreSQL at {redact_url(args.postgres)} "
                f"({str(err).strip().splitlines()[0]}); start it or pass another URL.",
                file=sys.stderr,
            )
            return 2
    say(f"generating {args.background:,} background messages (seed {args.seed}) ...")
    messages = generate(args.background, args.seed).messages
    users = background_users(messages, args.reads, args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="idstitch-repair-"))
    runs: list[StoreRun] = []
    try:
        stream = workdir / "background.jsonl"
        write_messages(stream, messages)
        del messages
        url = f"sqlite:///{workdir / 'repair.db'}"
        runs.append(run_store("SQLite", url, "a fresh file", stream, args, users))
        if args.postgres:
            from idstitch.checks import redact_url

            with postgres_schema(args.postgres) as pg_url:
                shown = f"{redact_url(args.postgres)}, a fresh schema"
                loaded = functools.partial(analyze, pg_url) if args.analyze else None
                runs.append(run_store("Postgres", pg_url, shown, stream, args, users, loaded))
        report(args, runs, started)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
