"""The engine benchmark: durable in-process resolutions/s and latencies on SQLite, side by
side with a naive in-memory union-find over the same messages, plus `idstitch import` and
the memory held per million identifiers.

    python -m benchmarks [--events 200000] [--runs 3] [--seed 7]

Every figure is the median of `--runs` rounds, and each ratio is taken inside one round (the
engine and the union-find run back to back on the same messages), because absolute times on
a shared 2-core machine move by 20-40 % from one minute to the next.

- closed loop: messages are prepared (decoded, validated, identifiers extracted) and
  submitted in tickets of `--ticket` messages, with at most `--window` tickets in flight; the
  clock runs from the first prepare to the last durable commit. Latencies here include the
  queueing that a full window causes (Little's law), so they are not the service's latency.
- open loop: tickets are submitted on a fixed schedule (`--rates`, events/s : ticket size),
  whatever the engine's progress, which is how traffic arrives; `lag` is how late the
  submitting thread was against its schedule (large: the process itself was saturated).
- resolve latency: `ticket.resolved - ticket.arrived` (arrival at the engine to the plan
  applied to the in-memory graph); ack latency: `ticket.committed - ticket.arrived` (to the
  fsync'd commit). Each message of a ticket counts once.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import msgspec

from benchmarks.memory import probe, watch_peak
from benchmarks.unionfind import UnionFindRun, file_lines, stdlib_stitch, union_find
from benchmarks.workload import Workload, generate, write_messages
from idstitch.config import Settings, settings_from
from idstitch.engine import Engine, Ticket
from idstitch.errors import Overloaded

SOURCE = "bench"
STAGE_MESSAGES = 100_000  # the stage timings use the start of the stream
VENV_BIN = Path(sys.executable).parent


# ---- statistics --------------------------------------------------------------------------------
class Timing(NamedTuple):
    """A settled ticket's times. The benchmark keeps these, not the tickets: a ticket holds its
    messages and plans, which a server lets go of once it has answered, and holding on to
    hundreds of thousands of them would make the garbage collector walk them again and again."""

    arrived: float
    resolved: float
    committed: float
    count: int

    @classmethod
    def of(cls, ticket: Ticket) -> Timing:
        ticket.future.result()
        return cls(ticket.arrived, ticket.resolved, ticket.committed, len(ticket.items))


def percentiles(pairs: Iterable[tuple[float, int]], qs: Sequence[float]) -> list[float]:
    """Weighted percentiles (nearest rank) of (value, weight) pairs."""
    ordered = sorted(pairs)
    total = sum(w for _, w in ordered)
    if not total:
        return [float("nan")] * len(qs)
    out = []
    for q in qs:
        rank = q * total
        running = 0
        for value, weight in ordered:
            running += weight
            if running >= rank:
                out.append(value)
                break
        else:
            out.append(ordered[-1][0])
    return out


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Latency:
    """P50/P95/P99 of resolve and ack latencies, in milliseconds."""

    resolve: list[float]
    ack: list[float]

    @classmethod
    def of(cls, tickets: Sequence[Timing]) -> Latency:
        qs = (0.50, 0.95, 0.99)
        resolve = [((t.resolved - t.arrived) * 1e3, t.count) for t in tickets]
        ack = [((t.committed - t.arrived) * 1e3, t.count) for t in tickets]
        return cls(percentiles(resolve, qs), percentiles(ack, qs))

    @classmethod
    def median_of(cls, runs: Sequence[Latency]) -> Latency:
        return cls(
            [median([r.resolve[i] for r in runs]) for i in range(3)],
            [median([r.ack[i] for r in runs]) for i in range(3)],
        )


# ---- the engine --------------------------------------------------------------------------------
# `--preset`: the identity preset every engine of this run uses (empty: the default).
IDENTITY: dict[str, str] = {}


def settings_for(db: Path) -> Settings:
    return settings_from({"storage": {"url": f"sqlite:///{db}"}, "identity": dict(IDENTITY)})


@dataclass
class EngineRun:
    rate: float
    latency: Latency
    events: int
    commits: int
    created: int
    merges: int
    unresolved: int
    duplicates: int
    violations: dict[str, int]
    identifiers: int
    profiles: int
    lag_p99_ms: float = 0.0
    rejected: int = 0


def _finish(
    engine: Engine, tickets: Sequence[Timing], seconds: float, lag: float, rejected: int
) -> EngineRun:
    m = engine.metrics
    graph = getattr(engine.store, "graph", None)
    return EngineRun(
        rate=sum(t.count for t in tickets) / seconds,
        latency=Latency.of(tickets),
        events=m.events,
        commits=m.commits,
        created=m.created,
        merges=m.merges,
        unresolved=m.unresolved,
        duplicates=m.duplicates,
        violations=dict(m.violations),
        identifiers=len(graph.owners) if graph is not None else 0,
        profiles=len(graph.profiles) if graph is not None else 0,
        lag_p99_ms=lag,
        rejected=rejected,
    )


def closed_loop(
    messages: Sequence[bytes],
    db: Path,
    ticket_size: int,
    window: int,
    profiles: dict[str, cProfile.Profile] | None = None,
) -> EngineRun:
    """Prepare + submit as fast as the engine takes them, `window` tickets in flight."""
    engine = Engine(settings_for(db), tune_gc=True)
    profile = None
    if profiles is not None:
        profiles["writer"] = _profile_writer(engine)
        profile = profiles["submitting"] = cProfile.Profile()
    tickets: list[Timing] = []
    inflight: deque[Ticket] = deque()
    prepare, submit = engine.prepare, engine.submit
    try:
        if profile is not None:
            profile.enable()
        started = time.perf_counter()
        for start in range(0, len(messages), ticket_size):
            items = [prepare(raw) for raw in messages[start : start + ticket_size]]
            inflight.append(submit(items, SOURCE))
            del items
            if len(inflight) >= window:
                tickets.append(Timing.of(inflight.popleft()))
        while inflight:
            tickets.append(Timing.of(inflight.popleft()))
        seconds = time.perf_counter() - started
        if profile is not None:
            profile.disable()
        return _finish(engine, tickets, seconds, 0.0, 0)
    finally:
        engine.close()


def open_loop(messages: Sequence[bytes], db: Path, rate: float, ticket_size: int) -> EngineRun:
    """Submit a ticket every `ticket_size / rate` seconds, on schedule, whatever the backlog."""
    engine = Engine(settings_for(db), tune_gc=True)
    tickets: list[Timing] = []
    inflight: deque[Ticket] = deque()
    lags: list[tuple[float, int]] = []
    rejected = 0
    interval = ticket_size / rate
    prepare, submit = engine.prepare, engine.submit
    try:
        started = time.perf_counter()
        for n, start in enumerate(range(0, len(messages), ticket_size)):
            due = started + n * interval
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            items = [prepare(raw) for raw in messages[start : start + ticket_size]]
            try:
                ticket = submit(items, SOURCE)
            except Overloaded:
                rejected += len(items)
                continue
            inflight.append(ticket)
            lags.append(((ticket.arrived - due) * 1e3, len(items)))
            del ticket, items
            while inflight and inflight[0].future.done():  # let go of what was answered
                tickets.append(Timing.of(inflight.popleft()))
        while inflight:
            tickets.append(Timing.of(inflight.popleft()))
        seconds = time.perf_counter() - started
        return _finish(engine, tickets, seconds, percentiles(lags, (0.99,))[0], rejected)
    finally:
        engine.close()


@dataclass
class Stages:
    """Where the time goes: each stage alone, in microseconds per message."""

    prepare_us: float  # decode, validate, timestamps, extract identifiers (submitting thread)
    resolve_us: float  # plan + apply to a bare in-memory graph: no store, no other thread
    write_rate: float  # the durable path alone: prepared messages in, acknowledged out


def stages(messages: Sequence[bytes], db: Path, ticket_size: int, window: int) -> Stages:
    from idstitch.core.graph import Graph

    try:
        from idstitch.core.ksuid import segment_id_for as segment_id
    except ImportError:  # a release before derived segment ids (`benchmarks baseline`)
        from idstitch.core.ksuid import segment_id  # type: ignore[assignment]
    from idstitch.core.planner import apply_plan, plan_message

    engine = Engine(settings_for(db), tune_gc=True)
    try:
        started = time.perf_counter()
        items = [engine.prepare(raw) for raw in messages]
        prepare_us = (time.perf_counter() - started) / len(items) * 1e6
        graph, rules, seen = Graph(), engine.rules, set()
        started = time.perf_counter()
        for prepared, extracted in items:
            if prepared.message_id in seen:
                continue
            seen.add(prepared.message_id)
            plan = plan_message(prepared, extracted, graph, rules, SOURCE, segment_id)
            apply_plan(graph, plan)
        resolve_us = (time.perf_counter() - started) / len(items) * 1e6
        del graph, seen
        inflight: deque[Ticket] = deque()
        started = time.perf_counter()
        for start in range(0, len(items), ticket_size):
            inflight.append(engine.submit(items[start : start + ticket_size], SOURCE))
            if len(inflight) >= window:
                inflight.popleft().future.result()
        for ticket in inflight:
            ticket.future.result()
        write_rate = len(items) / (time.perf_counter() - started)
        return Stages(prepare_us, resolve_us, write_rate)
    finally:
        engine.close()


def _profile_writer(engine: Engine) -> cProfile.Profile:
    """Profile the writer thread too: cProfile only sees the thread that enables it."""
    original = engine._write
    writer_profile = cProfile.Profile()

    def profiled(tickets: list[Ticket]) -> None:
        writer_profile.enable()
        try:
            original(tickets)
        finally:
            writer_profile.disable()

    engine._write = profiled  # type: ignore[method-assign]
    return writer_profile


# ---- idstitch import -------------------------------------------------------------------------
@dataclass
class ImportRun:
    rate: float
    seconds: float
    peak_rss_mb: float
    how: str


def import_available() -> str | None:
    """`cli` when `idstitch import` runs, `library` when only `import_paths` does, else None."""
    exe = VENV_BIN / "idstitch"
    if exe.exists():
        done = subprocess.run([str(exe), "import", "--help"], capture_output=True, check=False)
        if done.returncode == 0:
            return "cli"
    try:
        from idstitch.importer import import_paths  # noqa: F401
    except ImportError:
        return None
    return "library"


def run_import(path: Path, workdir: Path, events: int, how: str) -> ImportRun:
    db = workdir / "import.db"
    if how == "cli":
        config = workdir / "import.toml"
        preset = f'[identity]\npreset = "{IDENTITY["preset"]}"\n' if IDENTITY else ""
        config.write_text(f'[storage]\nurl = "sqlite:///{db}"\n{preset}')
        cmd = [str(VENV_BIN / "idstitch"), "import", "--config", str(config), str(path)]
        log = workdir / "import.log"
        with log.open("wb") as out:
            started = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            peak = watch_peak(proc)
            code = proc.wait()
            seconds = time.perf_counter() - started
        if code != 0:
            tail = log.read_text(errors="replace")[-500:]
            raise RuntimeError(f"idstitch import exited with {code}: {tail}")
        return ImportRun(events / seconds, seconds, peak() / 1024, "cli")
    from idstitch.importer import import_paths

    started = time.perf_counter()
    with Engine(settings_for(db), tune_gc=True) as engine:
        import_paths(engine, [path], source="import")
    seconds = time.perf_counter() - started
    return ImportRun(events / seconds, seconds, float("nan"), "library")


# ---- the report --------------------------------------------------------------------------------
@dataclass
class Round:
    closed: EngineRun
    uf_memory: UnionFindRun
    open: dict[str, EngineRun] = field(default_factory=dict)
    uf_file: UnionFindRun | None = None
    stdlib_file: UnionFindRun | None = None
    imported: ImportRun | None = None
    stages: Stages | None = None


def _ms(values: Sequence[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def _mark(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(
    args: argparse.Namespace,
    workload: Workload,
    rounds: list[Round],
    rates: list[tuple[int, int]],
    memory: dict[str, dict[str, float]] | None,
    import_how: str | None,
    started: float,
) -> None:
    stats = workload.stats
    closed = [r.closed for r in rounds]
    rate = median([c.rate for c in closed])
    lat = Latency.median_of([c.latency for c in closed])
    uf = median([r.uf_memory.rate for r in rounds])
    ratio = median([r.closed.rate / r.uf_memory.rate for r in rounds])
    last = closed[-1]
    p = print
    p()
    p("idstitch engine benchmark (SQLite, durable: synchronous=FULL, acknowledged after commit)")
    p(
        f"  command : python -m benchmarks --events {args.events} --runs {args.runs} "
        f"--seed {args.seed} --ticket {args.ticket} --window {args.window} "
        f"--rates {args.rates}"
    )
    p(
        f"  machine : {os.cpu_count()} CPUs, Python {platform.python_version()}, SQLite "
        f"{sqlite3.sqlite_version}, msgspec {msgspec.__version__}, load average at start "
        f"{args.load_at_start}"
    )
    p(f"  stream  : {stats.describe()}")
    p(
        f"  result  : {last.profiles:,} profiles, {last.identifiers:,} identifiers, "
        f"{last.merges:,} merges, {last.unresolved:,} unresolved, {last.duplicates:,} duplicates, "
        f"violations {dict(sorted(last.violations.items()))}; {last.commits:,} commits "
        f"({last.events / max(last.commits, 1):.0f} messages each)"
    )
    p(f"  runs    : {len(rounds)}; medians below; ratios taken within each round, then the median")
    p()
    p(f"{'measure':46s} {'median':>22s}  {'each run':26s} target")
    p("-" * 120)

    def row(label: str, value: str, each: str, target: str = "") -> None:
        p(f"{label:46s} {value:>22s}  {each:26s} {target}".rstrip())

    each = ", ".join(f"{c.rate:,.0f}" for c in closed)
    row(
        "closed loop: resolutions/s, durable",
        f"{rate:,.0f}",
        each,
        f">= 100,000/s: {_mark(rate >= 100_000)}",
    )
    row("  resolve P50/P95/P99 ms (queueing incl.)", _ms(lat.resolve), "")
    row("  ack P50/P95/P99 ms (queueing incl.)", _ms(lat.ack), "")
    row(
        "naive union-find, in memory: messages/s",
        f"{uf:,.0f}",
        ", ".join(f"{r.uf_memory.rate:,.0f}" for r in rounds),
    )
    row(
        "engine / union-find",
        f"{ratio:.3f}",
        ", ".join(f"{r.closed.rate / r.uf_memory.rate:.3f}" for r in rounds),
    )
    for offered, size in rates:
        key = f"{offered}:{size}"
        runs = [r.open[key] for r in rounds if key in r.open]
        if not runs:
            continue
        olat = Latency.median_of([o.latency for o in runs])
        got = median([o.rate for o in runs])
        lag = median([o.lag_p99_ms for o in runs])
        rejected = sum(o.rejected for o in runs)
        label = f"open loop {offered:,}/s, tickets of {size}: achieved/s"
        row(
            label,
            f"{got:,.0f}",
            ", ".join(f"{o.rate:,.0f}" for o in runs),
            f"submit lag P99 {lag:.2f} ms" + (f", {rejected:,} rejected (429)" if rejected else ""),
        )
        row(
            "  resolve P50/P95/P99 ms",
            _ms(olat.resolve),
            "; ".join(f"{o.latency.resolve[1]:.2f}" for o in runs) + " (P95)",
            f"P95 <= 1 ms: {_mark(olat.resolve[1] <= 1.0)}",
        )
        row(
            "  ack P50/P95/P99 ms",
            _ms(olat.ack),
            "; ".join(f"{o.latency.ack[1]:.2f}" for o in runs) + " (P95)",
            f"P95 <= 7 ms: {_mark(olat.ack[1] <= 7.0)}",
        )
    imports = [(r.imported, r.uf_file) for r in rounds if r.imported and r.uf_file]
    if imports:
        irate = median([i.rate for i, _ in imports])
        how = "idstitch import, process wall time" if import_how == "cli" else "import_paths()"
        row(f"{how}: msgs/s", f"{irate:,.0f}", ", ".join(f"{i.rate:,.0f}" for i, _ in imports))
        # The same file through two baselines: the msgspec union-find, and what a user would
        # write in an afternoon with the standard library (the target's measure).
        for label, attr, target in (
            ("naive union-find (msgspec)", "uf_file", None),
            ("naive stitch (json.loads)", "stdlib_file", 1.0),
        ):
            pairs = [(r.imported, getattr(r, attr)) for r in rounds if r.imported]
            ratio = median([i.rate / b.rate for i, b in pairs])
            each = ", ".join(f"{b.rate:,.0f}" for _, b in pairs)
            row(f"{label}, same file: msgs/s", f"{median([b.rate for _, b in pairs]):,.0f}", each)
            row(
                f"import / {label}",
                f"{ratio:.3f}",
                ", ".join(f"{i.rate / b.rate:.3f}" for i, b in pairs),
                "" if target is None else f">= {target}: {_mark(ratio >= target)}",
            )
        million = median([1e6 / i.rate for i, _ in imports])
        row(
            "import: seconds for 1,000,000 messages at that rate",
            f"{million:,.1f}",
            "",
            f"<= 10 s (floor 15): {_mark(million <= 10)}",
        )
    elif args.skip_import:
        row("idstitch import", "skipped", "--skip-import")
    else:
        row("idstitch import", "unavailable", "neither the CLI nor idstitch.importer runs")
    if memory:
        rss, heap = memory["rss"], memory["heap"]
        ids = rss["identifiers"] or 1
        per_m = 1e6 / ids / 2**20
        row(
            "graph heap per 1M identifiers (tracemalloc)",
            f"{heap['graph_heap'] * per_m:,.0f} MiB",
            f"{heap['graph_heap'] / 2**20:,.1f} MiB for {ids:,} ids",
        )
        dedupe = heap.get("dedupe_heap", 0.0)
        row(
            "dedupe filter + recent message hashes",
            f"{dedupe / 2**20:,.1f} MiB",
            f"{heap.get('events', 0):,.0f} events, {heap.get('recent', 0):,.0f} recent",
            "(filter 2 B/event; recent <= ~100,000)",
        )
        row(
            "RSS growth per 1M identifiers, less SQLite",
            f"{(rss['rss_growth'] - rss['sqlite'] - dedupe) * per_m:,.0f} MiB",
            f"+{rss['rss_growth'] / 2**20:,.1f} MiB RSS, SQLite {rss['sqlite'] / 2**20:,.1f} MiB",
            "less the dedupe structures",
        )
        peaks = [i.peak_rss_mb for i, _ in imports if i.how == "cli"]
        if peaks:
            peak = median(peaks)
            base = rss["baseline"] / 2**20
            row(
                "import process: peak RSS (VmHWM)",
                f"{peak:,.0f} MiB",
                f"{ids:,} ids; interpreter {base:,.0f} MiB",
                "+ graph + SQLite page cache (<= 256 MiB)",
            )
    staged = [r.stages for r in rounds if r.stages is not None]
    if staged:
        p()
        p(
            "where the time goes: each stage alone, microseconds per message (medians; the "
            f"first {min(STAGE_MESSAGES, len(workload.messages)):,} messages)"
        )
        prep = median([x.prepare_us for x in staged])
        res = median([x.resolve_us for x in staged])
        write = median([x.write_rate for x in staged])
        both = median([r.closed.rate for r in rounds])
        uf_us = 1e6 / uf
        p(f"  prepare (decode, validate, timestamps, extract identifiers)  {prep:7.1f}")
        p(f"  resolve in memory (plan + apply; no store, one thread)       {res:7.1f}")
        p(
            f"  durable path alone (resolve + rows + SQLite, commit; input   {1e6 / write:7.1f}"
            f"  = {write:,.0f}/s"
        )
        p("    already prepared, the submitting thread idle)")
        p(
            f"  closed loop, all of it (every thread shares one GIL)        {1e6 / both:7.1f}"
            f"  = {both:,.0f}/s"
        )
        p(f"  naive union-find (decode identity fields + union)            {uf_us:7.1f}")
        p("  budget at 100,000/s: 10 us per message for all the Python work of every thread")
    p("-" * 120)
    p(
        f"total time {time.perf_counter() - started:.0f} s. Closed-loop latencies include the "
        "queue of a full window; the open-loop rows are the service latencies."
    )
    p("Noise: a shared 2-core machine moves absolute figures by 20-40 %; compare ratios.")


# ---- driver ------------------------------------------------------------------------------------
def parse_rates(text: str) -> list[tuple[int, int]]:
    rates = []
    for part in text.split(","):
        if not part.strip():
            continue
        rate, _, size = part.partition(":")
        rates.append((int(rate), int(size or 1)))
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "Durable in-process resolutions/s and latencies on SQLite, against a naive union-find."
        ),
    )
    parser.add_argument("--events", type=int, default=200_000, help="messages (default 200000)")
    parser.add_argument("--runs", type=int, default=3, help="rounds; medians are reported (3)")
    parser.add_argument("--seed", type=int, default=7, help="workload seed (7)")
    parser.add_argument("--ticket", type=int, default=100, help="closed loop: messages/ticket")
    parser.add_argument("--window", type=int, default=20, help="closed loop: tickets in flight")
    parser.add_argument(
        "--rates",
        default="10000:1,50000:10",
        help="open loop: RATE:TICKET_SIZE,... (default 10000:1,50000:10)",
    )
    parser.add_argument(
        "--open-seconds",
        type=float,
        default=3.0,
        help="open loop: seconds of offered traffic per rate (3)",
    )
    parser.add_argument("--skip-import", action="store_true", help="do not run idstitch import")
    parser.add_argument("--skip-memory", action="store_true", help="do not measure memory")
    parser.add_argument(
        "--skip-stages", action="store_true", help="do not time the stages one by one"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="one extra closed-loop run under cProfile; prints both threads",
    )
    parser.add_argument("--keep", type=Path, help="keep the work files in this directory")
    parser.add_argument(
        "--preset", choices=["segment", "idstitch"], help="identity preset (default: the default)"
    )
    args = parser.parse_args(argv)
    if args.preset:
        IDENTITY["preset"] = args.preset
    started = time.perf_counter()
    args.load_at_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rates = parse_rates(args.rates)
    print(f"generating {args.events:,} messages (seed {args.seed}) ...", flush=True)
    workload = generate(args.events, args.seed)
    messages = workload.messages
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="idstitch-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    stream = workdir / "stream.jsonl"
    import_how = None if args.skip_import else import_available()
    if import_how is not None:
        write_messages(stream, messages)
    rounds: list[Round] = []
    memory: dict[str, dict[str, float]] | None = None
    try:
        for n in range(1, args.runs + 1):
            here = workdir / f"run{n}"
            shutil.rmtree(here, ignore_errors=True)
            here.mkdir()
            uf_memory = union_find(messages)
            closed = closed_loop(messages, here / "closed.db", args.ticket, args.window)
            print(
                f"round {n}: closed loop {closed.rate:,.0f}/s, union-find "
                f"{uf_memory.rate:,.0f}/s ({uf_memory.components:,} components, the largest "
                f"{uf_memory.largest:,} ids)",
                flush=True,
            )
            rnd = Round(closed, uf_memory)
            for offered, size in rates:
                count = min(len(messages), int(offered * args.open_seconds))
                run = open_loop(messages[:count], here / f"open{offered}.db", offered, size)
                rnd.open[f"{offered}:{size}"] = run
                print(
                    f"round {n}: open loop {offered:,}/s -> {run.rate:,.0f}/s, resolve P95 "
                    f"{run.latency.resolve[1]:.2f} ms, ack P95 {run.latency.ack[1]:.2f} ms",
                    flush=True,
                )
            if import_how is not None:
                rnd.uf_file = union_find(file_lines(stream))
                rnd.stdlib_file = stdlib_stitch(file_lines(stream))
                rnd.imported = run_import(stream, here, len(messages), import_how)
                print(
                    f"round {n}: import {rnd.imported.rate:,.0f}/s, union-find over the file "
                    f"{rnd.uf_file.rate:,.0f}/s",
                    flush=True,
                )
            if not args.skip_stages:
                part = messages[:STAGE_MESSAGES]
                rnd.stages = stages(part, here / "stages.db", args.ticket, args.window)
                st = rnd.stages
                print(
                    f"round {n}: prepare {st.prepare_us:.1f} us, resolve {st.resolve_us:.1f} us "
                    f"per message; durable path alone {st.write_rate:,.0f}/s",
                    flush=True,
                )
            rounds.append(rnd)
            if n == args.runs and not args.skip_memory:
                db = here / "closed.db"
                memory = {"rss": probe(db, "rss"), "heap": probe(db, "heap")}
            if n < args.runs:
                shutil.rmtree(here, ignore_errors=True)
        if args.profile:
            here = workdir / "profile"
            shutil.rmtree(here, ignore_errors=True)
            here.mkdir()
            print_profile(messages, here / "profile.db", args.ticket, args.window)
        report(args, workload, rounds, rates, memory, import_how, started)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def print_profile(messages: Sequence[bytes], db: Path, ticket: int, window: int) -> None:
    """One closed-loop run under cProfile, both threads, top functions by own time."""
    profiles: dict[str, cProfile.Profile] = {}
    run = closed_loop(messages, db, ticket, window, profiles=profiles)
    print(f"\nprofile: closed loop at {run.rate:,.0f}/s under cProfile (slower than unprofiled)")
    for name in ("submitting", "writer"):
        print(f"--- {name} thread: top functions by own time")
        pstats.Stats(profiles[name]).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    raise SystemExit(main())
