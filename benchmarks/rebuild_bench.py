"""The rebuild benchmark: how fast `idstitch rebuild` resolves a stored history again against
how fast `idstitch import` stored it, what the change feed costs the write path, and how
fast its webhook deliveries go, through the library API.

    python -m benchmarks rebuild [--events 50000] [--rounds 3] [--seed 7] [--postgres URL]

`--events` messages of the engine benchmark's synthetic stream (`benchmarks.workload`) are
written to a JSON-lines file once. Every store below is fresh: a new SQLite file, and with
`--postgres URL` the schema `rebuild_bench_<pid>` created anew on that server (a rebuild
makes `<schema>_rebuild` beside it and renames it into place; every schema the benchmark
made is dropped at the end, also after an error). Each measure is taken once per round;
the tables show the median of `--rounds` rounds and, in brackets, each round.

1. rebuild against import, on SQLite and PostgreSQL, as a user runs them: each command in a
   process of its own, timed by its wall clock. `idstitch import` stores the file in a fresh
   store under Segment's rules; then `idstitch rebuild --dry-run --json` and `idstitch
   rebuild --json` resolve the history again under the idstitch preset. messages/s are the
   messages stored (the rebuild's answer says how many) over each process's wall time (the
   import's includes its read index catching up, the rebuild's the swap). The ratio is the
   rebuild's rate over the import's, round by round: the target is 1 or more.
2. the change feed's cost on the write path, on SQLite and PostgreSQL: the same import into
   a fresh store without webhooks, and into another with one `[[webhooks]]` receiver on an
   engine that does not deliver (`Engine(..., webhooks=False)`: the feed's rows are written
   in each batch's transaction, nothing is sent). The two run in turns, first one then the
   other, so that drift hits both alike.
3. delivery, on SQLite: a local receiver (a `ThreadingHTTPServer` on 127.0.0.1 in this
   process, answering 204 on kept-alive HTTP/1.1 connections, so that the rate is not that
   of opening a connection per change) gets the changes. While importing: an engine with
   the receiver configured imports the file while its dispatcher delivers; the time runs
   from the import's start until the last change reached the receiver, once the feed's
   backlog (`engine.webhook_feeds()[0]["backlog"]`) is 0 and the count received has not
   changed for half a second. A backlog alone: the store of measure 2 that holds the
   undelivered feed is opened by an engine that delivers; the time runs from its opening to
   the last change received. The receiver shares this process (and its GIL) with the
   engine, so both rates are lower bounds of what a receiver elsewhere would see.

Measures 2 and 3 run in this process, with the garbage collector at Python's defaults (the
commands of measure 1 tune it, each in its own process).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.table import Table

from benchmarks.workload import Stats, generate, write_messages
from idstitch.config import Settings, settings_from
from idstitch.engine import Engine
from idstitch.importer import ImportSummary, import_paths

SOURCE: Final = "import"
BATCH: Final = 5_000  # lines per ticket, as `idstitch import`
SETTLED: Final = 0.5  # seconds without a new delivery once the backlog is 0
DELIVERY_TIMEOUT: Final = 900.0  # seconds to wait for every change before giving up
POLL: Final = 0.05


# ---- what is measured ---------------------------------------------------------------------
@dataclass
class Delivered:
    changes: int  # changes the receiver got
    seconds: float  # from the start (the import's, or the engine's opening) to the last one
    after_import: float | None = None  # of which after import_paths returned

    @property
    def rate(self) -> float:
        return self.changes / self.seconds if self.seconds > 0 else 0.0


@dataclass
class StoreRun:
    name: str
    shown: str  # where, without a password
    import_rate: list[float] = field(default_factory=list)
    dry_rate: list[float] = field(default_factory=list)
    rebuild_rate: list[float] = field(default_factory=list)
    ratio: list[float] = field(default_factory=list)  # rebuild / import, per round
    imported: int = 0  # lines the import counted
    resolved: int = 0  # messages the rebuild resolved again
    dry_resolved: int = 0
    answer: dict[str, Any] = field(default_factory=dict)  # the last rebuild's report
    plain_rate: list[float] = field(default_factory=list)
    feed_rate: list[float] = field(default_factory=list)
    feed_ratio: list[float] = field(default_factory=list)  # with the feed / without
    feed_rows: int = 0
    while_importing: list[Delivered] = field(default_factory=list)
    delivering_import_rate: list[float] = field(default_factory=list)
    backlog_alone: list[Delivered] = field(default_factory=list)


# ---- the receiver -------------------------------------------------------------------------
class Receiver:
    """Counts the POSTs it gets and notes when the last one came; answers 204."""

    def __init__(self) -> None:
        self.count = 0
        self.last_at = 0.0  # time.perf_counter() of the last POST
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a receiver behind any server

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                with owner._lock:
                    owner.count += 1
                    owner.last_at = time.perf_counter()
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reset(self) -> None:
        with self._lock:
            self.count, self.last_at = 0, 0.0

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for_deliveries(engine: Engine, receiver: Receiver, started: float) -> Delivered | None:
    """Once the feed's backlog is 0 and nothing has arrived for SETTLED seconds: what the
    receiver got, and the seconds from `started` to the last of it; None after a timeout."""
    last, since = -1, started
    while time.perf_counter() - started < DELIVERY_TIMEOUT:
        count = receiver.count
        if count != last:
            last, since = count, time.perf_counter()
        elif engine.webhook_feeds()[0]["backlog"] == 0 and time.perf_counter() - since > SETTLED:
            return Delivered(count, max(0.0, receiver.last_at - started))
        time.sleep(POLL)
    return None


# ---- the stores ---------------------------------------------------------------------------
class SQLiteStores:
    name = "SQLite"
    shown = "a fresh file per store"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.made = 0

    @contextlib.contextmanager
    def fresh(self) -> Iterator[str]:
        self.made += 1
        folder = self.workdir / f"store-{self.made}"
        folder.mkdir()
        try:
            yield f"sqlite:///{folder / 'idstitch.db'}"
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def cleanup(self) -> None:
        pass


class PostgresStores:
    """One schema name, made anew for each store; a rebuild adds two beside it for a while."""

    name = "Postgres"

    def __init__(self, url: str) -> None:
        from idstitch.checks import redact_url

        self.url = url
        self.schema = f"rebuild_bench_{os.getpid()}"
        self.shown = f"{redact_url(url)}, a fresh schema {self.schema} per store"

    def _drop(self, conn: Any) -> None:
        # The rebuild's own: `<schema>_rebuild` while it runs, `<schema>_replaced` in the swap.
        for name in (self.schema, f"{self.schema}_rebuild", f"{self.schema}_replaced"):
            conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE".encode())

    @contextlib.contextmanager
    def fresh(self) -> Iterator[str]:
        import psycopg

        from benchmarks.postgres_bench import with_schema

        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            self._drop(conn)
            conn.execute(f"CREATE SCHEMA {self.schema}".encode())
        try:
            yield with_schema(self.url, self.schema)
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            self._drop(conn)


Stores = SQLiteStores | PostgresStores


# ---- one round ----------------------------------------------------------------------------
def settings(url: str, preset: str, hook: dict[str, str] | None = None) -> Settings:
    data: dict[str, Any] = {"storage": {"url": url}, "identity": {"preset": preset}}
    if hook is not None:
        data["webhooks"] = [hook]
    return settings_from(data)


def bulk_import(engine: Engine, stream: Path) -> ImportSummary:
    summary = import_paths(engine, [stream], source=SOURCE, batch_size=BATCH)
    if summary.invalid or summary.damaged:
        raise RuntimeError(f"the import refused lines: {summary.errors or summary.damaged}")
    return summary


def import_into(
    url: str, stream: Path, hook: dict[str, str] | None = None
) -> tuple[ImportSummary, int]:
    """Import `stream` as `idstitch import` does (several batches per transaction); with
    `hook`, the feed's rows are written and nothing is delivered. The summary, and the rows
    of the feed."""
    with Engine(settings(url, "segment", hook), max_batch=4 * BATCH, webhooks=False) as engine:
        summary = bulk_import(engine, stream)
        return summary, engine.webhook_feeds()[0]["backlog"] if hook is not None else 0


def command(*args: str) -> tuple[float, str]:
    """Run `idstitch ARGS` as a user does, in a process of its own: its wall time and its
    standard output."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "idstitch", *args], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"idstitch {args[0]} failed ({done.returncode}): {done.stderr[-500:]}")
    return seconds, done.stdout


def rebuild_round(stores: Stores, stream: Path, run: StoreRun, work: Path) -> None:
    with stores.fresh() as url:
        configs = {}
        for preset in ("segment", "idstitch"):
            configs[preset] = work / f"{preset}.toml"
            configs[preset].write_text(
                f'[storage]\nurl = "{url}"\n[identity]\npreset = "{preset}"\n'
            )
        import_seconds, _ = command(
            "import", "--config", str(configs["segment"]), "--source", SOURCE,
            "--no-progress", str(stream),
        )  # fmt: skip
        dry_seconds, out = command(
            "rebuild", "--config", str(configs["idstitch"]), "--dry-run", "--json"
        )
        dry = json.loads(out)
        seconds, out = command("rebuild", "--config", str(configs["idstitch"]), "--json")
        answer = json.loads(out)
    stored = answer["messages"]  # the import stored as many (retries once)
    run.imported = stored
    run.resolved, run.dry_resolved, run.answer = stored, dry["messages"], answer
    run.import_rate.append(stored / import_seconds)
    run.dry_rate.append(dry["messages"] / dry_seconds)
    run.rebuild_rate.append(stored / seconds)
    run.ratio.append(run.rebuild_rate[-1] / run.import_rate[-1])
    say(
        f"{run.name}: import {run.import_rate[-1]:,.0f}/s, dry run {run.dry_rate[-1]:,.0f}/s, "
        f"rebuild {run.rebuild_rate[-1]:,.0f}/s ({stored:,} messages)"
    )


def feed_round(
    stores: Stores,
    stream: Path,
    run: StoreRun,
    hook: dict[str, str],
    turn: int,
    receiver: Receiver | None,
) -> None:
    """The import without and with the feed; with `receiver`, the feed's backlog is then
    delivered to it."""
    plain = feed = 0.0
    for with_feed in (False, True) if turn % 2 == 0 else (True, False):
        with stores.fresh() as url:
            if not with_feed:
                plain = import_into(url, stream)[0].events_per_second
                continue
            summary, run.feed_rows = import_into(url, stream, hook)
            feed = summary.events_per_second
            if receiver is None:
                continue
            receiver.reset()
            started = time.perf_counter()
            with Engine(settings(url, "segment", hook)) as engine:
                delivered = wait_for_deliveries(engine, receiver, started)
            if delivered is None:
                say(f"{run.name}: the backlog was not delivered in {DELIVERY_TIMEOUT:.0f} s")
            else:
                run.backlog_alone.append(delivered)
    run.plain_rate.append(plain)
    run.feed_rate.append(feed)
    run.feed_ratio.append(feed / plain)
    say(f"{run.name}: import without the feed {plain:,.0f}/s, with it {feed:,.0f}/s")


def delivery_round(
    stores: Stores, stream: Path, run: StoreRun, hook: dict[str, str], receiver: Receiver
) -> None:
    with stores.fresh() as url:
        receiver.reset()
        with Engine(settings(url, "segment", hook), max_batch=4 * BATCH) as engine:
            started = time.perf_counter()
            summary = bulk_import(engine, stream)
            imported = time.perf_counter()
            delivered = wait_for_deliveries(engine, receiver, started)
    run.delivering_import_rate.append(summary.events_per_second)
    if delivered is None:
        say(f"{run.name}: the changes were not delivered in {DELIVERY_TIMEOUT:.0f} s")
        return
    delivered.after_import = max(0.0, started + delivered.seconds - imported)
    run.while_importing.append(delivered)
    say(
        f"{run.name}: {delivered.changes:,} changes delivered while importing at "
        f"{delivered.rate:,.0f}/s, the last {delivered.after_import:.1f} s after the import"
    )


# ---- the report ---------------------------------------------------------------------------
def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def commit() -> str:
    """The checkout's short commit, and whether tracked files differ from it."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True
        )
        if head.returncode != 0:
            return "unknown (not a git checkout)"
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=here).returncode
    except OSError:
        return "unknown (no git)"
    return head.stdout.strip() + (" with uncommitted changes" if dirty == 1 else "")


def _cell(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    med = format(statistics.median(values), fmt)
    return f"{med} [{', '.join(format(v, fmt) for v in values)}]" if len(values) > 1 else med


def report(args: argparse.Namespace, stats: Stats, runs: list[StoreRun], started: float) -> None:
    # Lines as they are (no wrapping); tables as wide as they need, up to 120 columns.
    console = Console(width=None if sys.stdout.isatty() else 120, soft_wrap=True, highlight=False)
    p = console.print
    p()
    p("idstitch rebuild benchmark: rebuild against import, the change feed, webhook delivery")
    p(
        f"  command : python -m benchmarks rebuild --events {args.events} --rounds "
        f"{args.rounds} --seed {args.seed}" + (" --postgres URL" if args.postgres else "")
    )
    p(
        f"  machine : {os.cpu_count()} CPUs, Python {platform.python_version()}, SQLite "
        f"{sqlite3.sqlite_version}, load average at start {args.load_at_start}"
    )
    p(f"  commit  : {args.commit}; run {args.date}")
    p(f"  stream  : {stats.describe()}")
    p("  rules   : imports under preset segment; the rebuild and its dry run under preset idstitch")
    for run in runs:
        p(f"  {run.name:8s}: {run.shown}")
    columns = [run.name for run in runs]
    each = ", each round in brackets" if args.rounds > 1 else ""

    def table(rows: list[tuple[str, list[str]]], names: list[str]) -> Table:
        out = Table()
        out.add_column("measure")
        for name in names:
            out.add_column(name, justify="right")
        for label, cells in rows:
            out.add_row(label, *cells)
        return out

    p()
    p(f"1. rebuild against import, messages/s: median of {args.rounds} round(s){each}")
    p(
        table(
            [
                ("import (segment)", [_cell(r.import_rate, ",.0f") for r in runs]),
                ("rebuild --dry-run (idstitch)", [_cell(r.dry_rate, ",.0f") for r in runs]),
                ("rebuild (idstitch)", [_cell(r.rebuild_rate, ",.0f") for r in runs]),
                ("rebuild / import", [_cell(r.ratio, ".2f") for r in runs]),
                ("lines imported", [f"{r.imported:,}" for r in runs]),
                ("messages resolved again", [f"{r.resolved:,}" for r in runs]),
                ("  by the dry run", [f"{r.dry_resolved:,}" for r in runs]),
                (
                    "profiles before -> after",
                    [
                        f"{r.answer['profiles_before']:,} -> {r.answer['profiles_after']:,}"
                        for r in runs
                    ],
                ),
                (
                    "  unchanged, split, merged, changed",
                    [
                        ", ".join(
                            f"{r.answer[k]:,}" for k in ("unchanged", "split", "merged", "changed")
                        )
                        for r in runs
                    ],
                ),
            ],
            columns,
        )
    )

    p()
    p(
        "2. the change feed on the write path, import messages/s: median of "
        f"{args.rounds} round(s){each}"
    )
    p(
        table(
            [
                ("no webhooks", [_cell(r.plain_rate, ",.0f") for r in runs]),
                ("one webhook, not delivering", [_cell(r.feed_rate, ",.0f") for r in runs]),
                ("with / without", [_cell(r.feed_ratio, ".2f") for r in runs]),
                ("feed rows written", [f"{r.feed_rows:,}" for r in runs]),
            ],
            columns,
        )
    )

    delivering = [r for r in runs if r.while_importing or r.backlog_alone]
    if delivering:
        p()
        p(f"3. webhook delivery to a local receiver: median of {args.rounds} round(s){each}")

        def of(items: list[Delivered], attr: str) -> list[float]:
            return [float(getattr(d, attr)) for d in items]

        p(
            table(
                [
                    (
                        "while importing: import messages/s",
                        [_cell(r.delivering_import_rate, ",.0f") for r in delivering],
                    ),
                    (
                        "  changes delivered",
                        [_cell(of(r.while_importing, "changes"), ",.0f") for r in delivering],
                    ),
                    (
                        "  seconds to the last change",
                        [_cell(of(r.while_importing, "seconds"), ".1f") for r in delivering],
                    ),
                    (
                        "  of which after the import",
                        [_cell(of(r.while_importing, "after_import"), ".1f") for r in delivering],
                    ),
                    (
                        "  changes/s delivered",
                        [_cell(of(r.while_importing, "rate"), ",.0f") for r in delivering],
                    ),
                    (
                        "a backlog alone: changes delivered",
                        [_cell(of(r.backlog_alone, "changes"), ",.0f") for r in delivering],
                    ),
                    (
                        "  seconds to the last change",
                        [_cell(of(r.backlog_alone, "seconds"), ".1f") for r in delivering],
                    ),
                    (
                        "  changes/s delivered",
                        [_cell(of(r.backlog_alone, "rate"), ",.0f") for r in delivering],
                    ),
                ],
                [r.name for r in delivering],
            )
        )

    p()
    p("summary:")
    med = statistics.median
    for run in runs:
        ratio = med(run.ratio)
        verdict = "at least as fast as import" if ratio >= 1 else "slower than import"
        line = (
            f"  {run.name}: rebuild {med(run.rebuild_rate):,.0f} messages/s against import "
            f"{med(run.import_rate):,.0f}/s (x{ratio:.2f}, {verdict}); with the feed's rows the "
            f"import runs at x{med(run.feed_ratio):.2f} its rate without"
        )
        if run.while_importing:
            line += (
                f"; webhooks got {med(d.rate for d in run.while_importing):,.0f} changes/s "
                "while importing"
            )
        if run.backlog_alone:
            line += f", {med(d.rate for d in run.backlog_alone):,.0f}/s from a backlog"
        p(line + ".")
    p(f"total time {time.perf_counter() - started:.0f} s.")


# ---- driver -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks rebuild",
        description=(
            "idstitch rebuild against idstitch import, the change feed's cost on the write "
            "path, and webhook delivery to a local receiver."
        ),
    )
    parser.add_argument("--events", type=int, default=50_000, help="messages (50000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians reported (3)")
    parser.add_argument("--seed", type=int, default=7, help="stream seed (7)")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="measures 1 and 2 on this PostgreSQL server too, in a schema of its own "
        "(dropped afterwards)",
    )
    args = parser.parse_args(argv)
    for name in ("events", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    started = time.perf_counter()
    args.load_at_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    args.commit = commit()
    args.date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    if args.postgres:
        import psycopg

        from idstitch.checks import redact_url

        try:
            with psycopg.connect(args.postgres, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as err:
            print(
                f"cannot reach PostgreSQL at {redact_url(args.postgres)} "
                f"({str(err).strip().splitlines()[0]}); start it or pass another URL.",
                file=sys.stderr,
            )
            return 2
    say(f"generating {args.events:,} messages (seed {args.seed}) ...")
    workload = generate(args.events, args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="idstitch-rebuild-"))
    receiver = Receiver()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    hook = {"url": receiver.url, "secret": secret}
    all_stores: list[Stores] = [SQLiteStores(workdir)]
    if args.postgres:
        all_stores.append(PostgresStores(args.postgres))
    runs = [StoreRun(s.name, s.shown) for s in all_stores]
    try:
        stream = workdir / "stream.jsonl"
        write_messages(stream, workload.messages)
        for n in range(args.rounds):
            say(f"round {n + 1} of {args.rounds}")
            for stores, run in zip(all_stores, runs, strict=True):
                rebuild_round(stores, stream, run, workdir)
                # Delivery on SQLite only: it measures the feed, not the store.
                local = receiver if isinstance(stores, SQLiteStores) else None
                feed_round(stores, stream, run, hook, n, local)
                if local is not None:
                    delivery_round(stores, stream, run, hook, local)
        report(args, workload.stats, runs, started)
    finally:
        receiver.close()
        for stores in all_stores:
            stores.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
