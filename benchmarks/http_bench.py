"""HTTP benchmark: `idstitch serve` under load from a second process, next to the engine.

Each figure is printed beside the same run's in-process engine figure, so the cost of HTTP
shows as a ratio. Every request is unique (fresh message ids and user ids), so the server
resolves and stores real work instead of acknowledging duplicates.

    python benchmarks/http_bench.py [--runs 3] [--duration 5]

Load: `wrk` (apt-get install wrk) with generated Lua scripts for the saturation phases; a
Python open-loop client (its own process, rate-limited) for the fixed-rate phase. Without
wrk, the saturation phases fall back to the Python client, which is slower than wrk and
understates the server. Latencies are measured with `time.perf_counter`.

Phases, each run:
  batch      /v1/batch, 100 events per request, 16 connections: events/s acknowledged
  rate       /v1/track at a fixed 1,000 requests/s: p50 / p95 / p99
  saturate   /v1/track, 64 connections: requests/s and p99
  traits     Profile API /traits, 16 connections: requests/s and p95; then 1 connection: p95
  events     Profile API /events?limit=100, 16 connections: p95 on small profiles (one event
             each), then on one profile holding `--big-events` events (100,000)

During the batch phase the index lag (how far derived state trails the acknowledged messages:
`/healthz`'s `index_lag`, `store.index_lag()` in process) is sampled every 0.2 s; its largest
value is reported, and how long the indexer took after the phase to reach zero. A release
without derived state reports it as n/a.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from idstitch import profiles
from idstitch.config import settings_from
from idstitch.engine import Engine

BATCH = 100
TRAIT_PROFILES = 2000
WRITE_KEY = "bench-write-key-" + "x" * 16
TOKEN = "bench-access-token-" + "y" * 16


# ---- the events ---------------------------------------------------------------------------
# One template, filled from Python for the in-process runs and from Lua for wrk, so both
# sides resolve the same shape of work: a ~1 KB track call, two events per user.
TRACK_HEAD = '{"type":"track","event":"Order Completed","userId":"u-'
TRACK_MID = '","anonymousId":"a-'
TRACK_MID2 = '","messageId":"m-'
TRACK_TAIL = (
    '","timestamp":"2025-01-15T02:02:15.908Z","properties":{"revenue":14.99,"currency":"USD",'
    '"orderId":"o-1234","products":[{"sku":"A-100","name":"Widget","price":9.99,"quantity":1},'
    '{"sku":"B-200","name":"Gadget","price":5.0,"quantity":1}]},"context":{"library":'
    '{"name":"analytics-python","version":"2.4.0"},"ip":"203.0.113.7","locale":"en-US",'
    '"userAgent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) '
    'Chrome/120.0 Safari/537.36","page":{"path":"/checkout","referrer":"https://example.com/",'
    '"url":"https://shop.example.com/checkout","title":"Checkout"}}}'
)


def track_event(tag: str, n: int, k: int = 0) -> bytes:
    """Event k of request n: user `tag-n-k//2`, anonymous id and message id `tag-n-k`."""
    return (
        f"{TRACK_HEAD}{tag}-{n}-{k // 2}{TRACK_MID}{tag}-{n}-{k}{TRACK_MID2}{tag}-{n}-{k}"
        f"{TRACK_TAIL}"
    ).encode()


def batch_body(tag: str, n: int) -> bytes:
    return b'{"batch":[' + b",".join(track_event(tag, n, k) for k in range(BATCH)) + b"]}"


def _lua_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def lua_track(tag: str, path: str, per_request: int) -> str:
    """A wrk script sending unique track events (`per_request` > 1: a /v1/batch body)."""
    return f"""
local head, mid, mid2, tail = {_lua_string(TRACK_HEAD)}, {_lua_string(TRACK_MID)},
  {_lua_string(TRACK_MID2)}, {_lua_string(TRACK_TAIL)}
local tag, per = {_lua_string(tag)}, {per_request}
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Basic {_basic(WRITE_KEY)}"
request = function()
  n = n + 1
  local parts = {{}}
  for k = 0, per - 1 do
    local id = tag .. "-" .. n .. "-"
    parts[#parts + 1] = head .. id .. math.floor(k / 2) .. mid .. id .. k .. mid2 .. id .. k .. tail
  end
  local body = table.concat(parts, ",")
  if per > 1 then body = '{{"batch":[' .. body .. ']}}' end
  return wrk.format(nil, "{path}", nil, body)
end
{LUA_DONE}
"""


def lua_traits(space: str, profiles_count: int, tag: str) -> str:
    return f"""
local n = 0
wrk.headers["Authorization"] = "Basic {_basic(TOKEN)}"
request = function()
  n = n + 1
  local path = "/v1/spaces/{space}/collections/users/profiles/user_id:{tag}-" ..
    (n % {profiles_count}) .. "/traits"
  return wrk.format("GET", path)
end
{LUA_DONE}
"""


def lua_events(space: str, profiles_count: int, tag: str) -> str:
    """/events?limit=100 across the small profiles (`profiles_count` > 1) or on one profile."""
    ref = f"user_id:{tag}-" if profiles_count > 1 else f"user_id:{tag}"
    which = f'" .. (n % {profiles_count}) .. "' if profiles_count > 1 else ""
    return f"""
local n = 0
wrk.headers["Authorization"] = "Basic {_basic(TOKEN)}"
request = function()
  n = n + 1
  return wrk.format("GET", "/v1/spaces/{space}/collections/users/profiles/{ref}{which}" ..
    "/events?limit=100")
end
{LUA_DONE}
"""


def big_profile_batches(tag: str, count: int) -> Iterator[bytes]:
    """`count` track events of the one user `u-{tag}-big`, as /v1/batch bodies of 100."""
    for first in range(0, count, BATCH):
        events = (
            f"{TRACK_HEAD}{tag}-big{TRACK_MID}{tag}-big{TRACK_MID2}{tag}-big-{i}{TRACK_TAIL}"
            for i in range(first, min(first + BATCH, count))
        )
        yield ("{" + '"batch":[' + ",".join(events) + "]}").encode()


# wrk's latency percentiles are in microseconds; done() runs once, after all threads.
LUA_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %.1f %.1f %.1f\\n", summary.requests,
    e.status + e.connect + e.read + e.write + e.timeout, summary.duration,
    latency.max, latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


def _basic(user: str) -> str:
    import base64

    return base64.b64encode(f"{user}:".encode()).decode()


# ---- results ------------------------------------------------------------------------------
@dataclass
class Load:
    """What one load phase measured: ok requests per second and latency percentiles (ms)."""

    rps: float
    p50: float
    p95: float
    p99: float
    errors: int = 0
    lag_p99: float = 0.0  # fixed rate only: how late the client sent, against its schedule


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def _load(ok: int, seconds: float, latencies: list[float], errors: int = 0) -> Load:
    ms = [x * 1000 for x in latencies]
    return Load(ok / seconds, percentile(ms, 50), percentile(ms, 95), percentile(ms, 99), errors)


# ---- the server under test -----------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CONFIG = """space_id = "bench"
[storage]
url = "sqlite:///{db}"
[[sources]]
id = "bench"
write_key = "{key}"
[[access_tokens]]
token = "{token}"
"""


@contextmanager
def server(workdir: Path) -> Iterator[int]:
    """A real `idstitch serve` in its own process on a free port; SIGTERM at the end."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "idstitch.toml"
    config.write_text(CONFIG.format(db=workdir / "idstitch.db", key=WRITE_KEY, token=TOKEN))
    port = free_port()
    code = f"from idstitch.http.server import serve; serve({str(config)!r}, '127.0.0.1', {port})"
    log = (workdir / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except OSError as err:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the server did not start; see {workdir}/server.log"
                    ) from err
                time.sleep(0.05)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def post(port: int, path: str, body: bytes, user: str) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Basic {_basic(user)}"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()


# ---- load generators ----------------------------------------------------------------------
def wrk(port: int, script: str, connections: int, seconds: float, workdir: Path) -> Load:
    path = workdir / f"load-{secrets.token_hex(4)}.lua"
    path.write_text(script)
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds:.0f}s",
            "--timeout",
            "10s",
            "-s",
            str(path),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    requests, errors, micros, _, p50, p95, p99 = (float(x) for x in line.split()[1:])
    ok = requests - errors
    return Load(ok / (micros / 1e6), p50 / 1000, p95 / 1000, p99 / 1000, int(errors))


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


def http_request(path: str, body: bytes, user: str, method: str = "POST") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Basic {_basic(user)}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _client(
    port: int, make: Callable[[int], bytes], connections: int, seconds: float, rate: float | None
) -> tuple[int, int, list[float], list[float], float]:
    """Closed loop (rate None: each connection sends as fast as answers come) or open loop
    (`rate` requests/s on a fixed schedule, latency measured from the actual send)."""
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    latencies: list[float] = []
    lags: list[float] = []
    counts = [0, 0]
    start = time.perf_counter()
    end = start + seconds

    async def one(n: int, due: float) -> None:
        conn = await pool.get()
        sent = time.perf_counter()
        lags.append(sent - due)
        try:
            status = await _exchange(*conn, make(n))
        finally:
            pool.put_nowait(conn)
        if status == 200:
            counts[0] += 1
            latencies.append(time.perf_counter() - sent)
        else:
            counts[1] += 1

    n = 0
    if rate is None:

        async def loop() -> None:
            nonlocal n
            while time.perf_counter() < end:
                n += 1
                await one(n, time.perf_counter())

        await asyncio.gather(*(loop() for _ in range(connections)))
    else:
        tasks = []
        while True:
            due = start + n / rate
            if due >= end:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            n += 1
            tasks.append(asyncio.create_task(one(n, due)))
        await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    return counts[0], counts[1], latencies, lags, elapsed


def _client_process(args: tuple[Any, ...], out: Any) -> None:
    import uvloop

    port, kind, tag, connections, seconds, rate = args
    if kind == "track":

        def make(n: int) -> bytes:
            return http_request("/v1/track", track_event(tag, n), WRITE_KEY)
    elif kind == "batch":

        def make(n: int) -> bytes:
            return http_request("/v1/batch", batch_body(tag, n), WRITE_KEY)
    else:

        def make(n: int) -> bytes:
            path = f"/v1/spaces/bench/collections/users/profiles/user_id:{tag}-{n % TRAIT_PROFILES}"
            return http_request(path + "/traits", b"", TOKEN, "GET")

    result = uvloop.run(_client(port, make, connections, seconds, rate))
    out.send(result)


def python_client(
    port: int, kind: str, tag: str, connections: int, seconds: float, rate: float | None
) -> Load:
    """Run the Python client in its own process, so it does not share the server's core."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=_client_process, args=((port, kind, tag, connections, seconds, rate), child)
    )
    proc.start()
    ok, errors, latencies, lags, elapsed = parent.recv()
    proc.join()
    load = _load(ok, elapsed, latencies, errors)
    load.lag_p99 = percentile([x * 1000 for x in lags], 99)
    return load


# ---- in-process engine figures ------------------------------------------------------------
@contextmanager
def engine_at(workdir: Path) -> Iterator[Engine]:
    workdir.mkdir(parents=True, exist_ok=True)
    settings = settings_from(
        {
            "space_id": "bench",
            "storage": {"url": f"sqlite:///{workdir / 'idstitch.db'}"},
            "sources": [{"id": "bench", "write_key": WRITE_KEY}],
        }
    )
    engine = Engine(settings, tune_gc=True)
    try:
        yield engine
    finally:
        engine.close()


def engine_closed_loop(
    engine: Engine, make: Callable[[int], list[bytes]], in_flight: int, seconds: float
) -> Load:
    """Prepare and submit from bytes (as the server does) with `in_flight` submissions
    outstanding; counts messages acknowledged."""
    slots = threading.Semaphore(in_flight)
    latencies: list[float] = []
    done = [0]
    start = time.perf_counter()
    end = start + seconds
    n = 0
    while time.perf_counter() < end:
        slots.acquire()
        n += 1
        began = time.perf_counter()
        items = [engine.prepare(raw) for raw in make(n)]
        ticket = engine.submit(items, "bench")

        def finished(_: object, began: float = began, size: int = len(items)) -> None:
            latencies.append(time.perf_counter() - began)
            done[0] += size
            slots.release()

        ticket.future.add_done_callback(finished)
    for _ in range(in_flight):
        slots.acquire()
    elapsed = time.perf_counter() - start
    return _load(done[0], elapsed, latencies)


def _timer(latencies: list[float], began: float) -> Callable[[object], None]:
    def finished(_: object) -> None:
        latencies.append(time.perf_counter() - began)

    return finished


def engine_fixed_rate(engine: Engine, tag: str, rate: float, seconds: float) -> Load:
    latencies: list[float] = []
    futures: list[Future[Any]] = []
    start = time.perf_counter()
    total = int(rate * seconds)
    for n in range(1, total + 1):
        due = start + n / rate
        while (delay := due - time.perf_counter()) > 0:
            time.sleep(min(delay, 0.0005))
        began = time.perf_counter()
        ticket = engine.submit([engine.prepare(track_event(tag, n))], "bench")
        ticket.future.add_done_callback(_timer(latencies, began))
        futures.append(ticket.future)
    for future in futures:
        future.result()
    time.sleep(0.05)  # callbacks run just after result() wakes up
    return _load(total, time.perf_counter() - start, latencies)


def seed_traits(send: Callable[[bytes], None], tag: str) -> None:
    for first in range(0, TRAIT_PROFILES, 500):
        batch = [
            {
                "type": "identify",
                "userId": f"{tag}-{i}",
                "messageId": f"seed-{tag}-{i}",
                "traits": {f"trait_{t}": f"value {t} of {i}" for t in range(10)}
                | {"email": f"{tag}-{i}@example.com"},
            }
            for i in range(first, min(first + 500, TRAIT_PROFILES))
        ]
        send(msgspec.json.encode({"batch": batch}))


def _ingest(engine: Engine, body: bytes) -> None:
    engine.ingest_batch(msgspec.json.decode(body)["batch"], source="bench")


def engine_reads(
    engine: Engine, ref: Callable[[int], str], read: Callable[[Any], object], seconds: float
) -> Load:
    """Read `read(row)` of profile `ref(n)` for request n = 1, 2, ... for `seconds`, in process
    (the store's reads, as the Profile API makes them, without HTTP)."""
    latencies = []
    start = time.perf_counter()
    end = start + seconds
    n = 0
    while (now := time.perf_counter()) < end:
        n += 1
        read(profiles.find(engine.store, ref(n), "users"))
        latencies.append(time.perf_counter() - now)
    return _load(n, time.perf_counter() - start, latencies)


def engine_traits(engine: Engine, tag: str, seconds: float) -> Load:
    def traits(row: Any) -> object:
        return profiles.traits(engine.store, row)

    return engine_reads(engine, lambda n: f"user_id:{tag}-{n % TRAIT_PROFILES}", traits, seconds)


def engine_events(engine: Engine, refs: Callable[[int], str], seconds: float) -> Load:
    def events(row: Any) -> object:
        return profiles.events(engine.store, row, limit=100)

    return engine_reads(engine, refs, events, seconds)


# ---- index lag ----------------------------------------------------------------------------
NO_LAG = (float("nan"), float("nan"))  # a release without derived state


def engine_lag(engine: Engine) -> Callable[[], tuple[float, float]]:
    """(messages, seconds) behind, from the store."""
    read = getattr(engine.store, "index_lag", None)
    if read is None:
        return lambda: NO_LAG

    def lag() -> tuple[float, float]:
        got = read()
        return float(got.messages), float(got.seconds)

    return lag


def http_lag(port: int) -> Callable[[], tuple[float, float]]:
    """(messages, seconds) behind, from /healthz."""

    def lag() -> tuple[float, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            found = msgspec.json.decode(response.read()).get("index_lag")
        return NO_LAG if found is None else (float(found["messages"]), float(found["seconds"]))

    return lag


@dataclass
class Lag:
    messages: float  # the most messages behind, sampled every 0.2 s
    seconds: float  # the oldest unindexed message's age, at its largest
    catch_up: float  # seconds from the end of the load to no lag


@contextmanager
def sampling(lag: Callable[[], tuple[float, float]], result: list[Lag]) -> Iterator[None]:
    """Sample the lag while the block runs; then wait (up to 60 s) until it is zero."""
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            samples.append(lag())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    ended = time.perf_counter()
    while (now := lag())[0] > 0 and time.perf_counter() - ended < 60:
        time.sleep(0.05)
    if math.isnan(now[0]):  # nothing to sample
        result.append(Lag(*NO_LAG, float("nan")))
        return
    result.append(
        Lag(
            max((m for m, _ in samples), default=0.0),
            max((sec for _, sec in samples), default=0.0),
            time.perf_counter() - ended,
        )
    )


# ---- one run ------------------------------------------------------------------------------
@dataclass
class Run:
    figures: dict[str, tuple[Load, Load]] = field(default_factory=dict)  # http, in-process
    lags: dict[str, tuple[Lag, Lag]] = field(default_factory=dict)  # http, in-process


def one_run(root: Path, seconds: float, rate: float, use_wrk: bool, big: int) -> Run:
    run = Run()
    tag = secrets.token_hex(3)
    lags: list[Lag] = []

    with engine_at(root / "engine") as engine:
        with sampling(engine_lag(engine), lags):
            inproc_batch = engine_closed_loop(
                engine, lambda n: [track_event(tag + "b", n, k) for k in range(BATCH)], 16, seconds
            )
        inproc_rate = engine_fixed_rate(engine, tag + "r", rate, seconds)
        inproc_sat = engine_closed_loop(engine, lambda n: [track_event(tag + "s", n)], 64, seconds)
        seed_traits(lambda body: _ingest(engine, body), tag + "t")
        inproc_traits = engine_traits(engine, tag + "t", seconds)
        inproc_events = engine_events(
            engine, lambda n: f"user_id:{tag}t-{n % TRAIT_PROFILES}", seconds
        )
        for body in big_profile_batches(tag, big):
            _ingest(engine, body)
        inproc_big = engine_events(engine, lambda n: f"user_id:u-{tag}-big", seconds)

    with server(root / "server") as port:
        with sampling(http_lag(port), lags):
            if use_wrk:
                http_batch = wrk(port, lua_track(tag + "b", "/v1/batch", BATCH), 16, seconds, root)
            else:
                http_batch = python_client(port, "batch", tag + "b", 16, seconds, None)
        http_rate = python_client(port, "track", tag + "r", 32, seconds, rate)
        if use_wrk:
            http_sat = wrk(port, lua_track(tag + "s", "/v1/track", 1), 64, seconds, root)
        else:
            http_sat = python_client(port, "track", tag + "s", 64, seconds, None)
        seed_traits(lambda body: post(port, "/v1/batch", body, WRITE_KEY), tag + "t")
        if use_wrk:
            http_traits = wrk(
                port, lua_traits("bench", TRAIT_PROFILES, tag + "t"), 16, seconds, root
            )
        else:
            http_traits = python_client(port, "traits", tag + "t", 16, seconds, None)
        http_traits_one = python_client(port, "traits", tag + "t", 1, seconds, None)
        if use_wrk:
            small = lua_events("bench", TRAIT_PROFILES, tag + "t")
            http_events = wrk(port, small, 16, seconds, root)
            for body in big_profile_batches(tag, big):
                post(port, "/v1/batch", body, WRITE_KEY)
            http_big = wrk(port, lua_events("bench", 1, f"u-{tag}-big"), 16, seconds, root)
        else:
            nan = float("nan")  # no wrk: these phases need it
            http_events = http_big = Load(nan, nan, nan, nan)

    http_batch.rps *= BATCH  # events per second
    run.figures = {
        "batch": (http_batch, inproc_batch),
        "rate": (http_rate, inproc_rate),
        "saturate": (http_sat, inproc_sat),
        "traits": (http_traits, inproc_traits),
        "traits_one": (http_traits_one, inproc_traits),
        "events": (http_events, inproc_events),
        "events_big": (http_big, inproc_big),
    }
    run.lags = {"batch": (lags[1], lags[0])}
    return run


# ---- report -------------------------------------------------------------------------------
def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(runs: list[Run], command: str, rate: float, big_events: int) -> str:
    def col(name: str, side: int, attr: str) -> float:
        return _median([getattr(r.figures[name][side], attr) for r in runs])

    def ratio(name: str, attr: str) -> float:
        return _median(
            [getattr(r.figures[name][0], attr) / getattr(r.figures[name][1], attr) for r in runs]
        )

    lines = [
        f"idstitch HTTP benchmark: median of {len(runs)} runs; ratio = HTTP / in-process, "
        "each run side by side",
        f"command: {command}",
        f"{'figure':<44}{'HTTP':>12}{'in-process':>12}{'ratio':>8}  target",
        f"{'/v1/batch x100, events/s acknowledged':<44}{col('batch', 0, 'rps'):>12,.0f}"
        f"{col('batch', 1, 'rps'):>12,.0f}{ratio('batch', 'rps'):>8.2f}  >= 100,000 (floor 50,000)",
        f"{'/v1/batch x100, request p99 ms':<44}{col('batch', 0, 'p99'):>12.2f}"
        f"{col('batch', 1, 'p99'):>12.2f}{ratio('batch', 'p99'):>8.1f}",
    ]
    for q in ("p50", "p95", "p99"):
        target = "<= 2 ms" if q == "p95" else ""
        lines.append(
            f"{f'/v1/track @ {rate:,.0f}/s, {q} ms':<44}{col('rate', 0, q):>12.2f}"
            f"{col('rate', 1, q):>12.2f}{ratio('rate', q):>8.1f}  {target}"
        )
    lines += [
        f"{'  client send lag p99 ms (not in the above)':<44}{col('rate', 0, 'lag_p99'):>12.2f}",
        f"{'/v1/track saturated, requests/s':<44}{col('saturate', 0, 'rps'):>12,.0f}"
        f"{col('saturate', 1, 'rps'):>12,.0f}{ratio('saturate', 'rps'):>8.2f}",
        f"{'/v1/track saturated, p99 ms':<44}{col('saturate', 0, 'p99'):>12.2f}"
        f"{col('saturate', 1, 'p99'):>12.2f}{ratio('saturate', 'p99'):>8.1f}  <= 20 ms",
        f"{'/traits, 16 connections, requests/s':<44}{col('traits', 0, 'rps'):>12,.0f}"
        f"{col('traits', 1, 'rps'):>12,.0f}{ratio('traits', 'rps'):>8.2f}",
        f"{'/traits, 16 connections, p95 ms':<44}{col('traits', 0, 'p95'):>12.2f}"
        f"{col('traits', 1, 'p95'):>12.2f}{ratio('traits', 'p95'):>8.1f}  < 5 ms",
        f"{'/traits, 1 connection, p95 ms':<44}{col('traits_one', 0, 'p95'):>12.2f}"
        f"{col('traits_one', 1, 'p95'):>12.2f}{ratio('traits_one', 'p95'):>8.1f}",
    ]
    lines += [
        f"{'/events?limit=100 small, 16 conn, p95 ms':<44}{col('events', 0, 'p95'):>12.2f}"
        f"{col('events', 1, 'p95'):>12.2f}{ratio('events', 'p95'):>8.1f}  <= 5 ms",
        f"{f'/events?limit=100 {big_events:,} events, p95 ms':<44}"
        f"{col('events_big', 0, 'p95'):>12.2f}{col('events_big', 1, 'p95'):>12.2f}"
        f"{ratio('events_big', 'p95'):>8.1f}  <= 10 ms",
    ]

    def lag(attr: str) -> tuple[float, float]:
        return tuple(  # type: ignore[return-value]
            _median([getattr(r.lags["batch"][side], attr) for r in runs]) for side in (0, 1)
        )

    for label, attr, fmt, target in (
        ("index lag in /v1/batch phase, max messages", "messages", ",.0f", ""),
        ("index lag in /v1/batch phase, max seconds", "seconds", ".2f", "<= 1 s"),
        ("index catch-up after the phase, seconds", "catch_up", ".2f", ""),
    ):
        http_value, inproc_value = lag(attr)
        lines.append(
            f"{label:<44}{format(http_value, fmt):>12}{format(inproc_value, fmt):>12}"
            f"{'':>8}  {target}"
        )
    errors = sum(f[0].errors for r in runs for f in r.figures.values())
    lines.append(f"non-200 answers during load: {errors}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per phase")
    parser.add_argument("--rate", type=float, default=1000.0, help="fixed-rate requests/s")
    parser.add_argument(
        "--big-events", type=int, default=100_000, help="events of the large profile (100000)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args(argv)
    use_wrk = shutil.which("wrk") is not None
    if not use_wrk:
        print("wrk not found (apt-get install wrk); using the Python client for saturation.")
    if argv is None:
        command = "python benchmarks/http_bench.py " + " ".join(sys.argv[1:])
    else:  # through benchmarks/__main__.py
        command = "python -m benchmarks http " + " ".join(argv)
    root = Path(tempfile.mkdtemp(prefix="idstitch-http-bench-"))
    runs = []
    try:
        for i in range(args.runs):
            started = time.perf_counter()
            runs.append(
                one_run(root / f"run{i}", args.duration, args.rate, use_wrk, args.big_events)
            )
            print(
                f"run {i + 1}/{args.runs} done in {time.perf_counter() - started:.0f} s", flush=True
            )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(report(runs, command.strip(), args.rate, args.big_events))
    print(f"machine: {os.cpu_count()} cores; load generators run in their own processes.")


if __name__ == "__main__":
    main()
