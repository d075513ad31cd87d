"""Memory: what the in-memory graph holds per identifier, and a child process's peak RSS.

    python -m benchmarks.memory heap|rss PATH/TO/store.db

`heap` counts the Python objects the graph holds (tracemalloc, SQLite's own allocations are
not traced), and apart from them the dedupe structures (a Bloom filter over every stored
message, the hashes of those stored since the last index merge); `rss` reads the process's
VmRSS around opening the store and subtracts what SQLite reports it holds (its page cache
fills while the graph is rebuilt from the tables).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import idstitch

ROOT = Path(__file__).resolve().parent.parent


def status_kb(field_name: str, pid: int | str = "self") -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def watch_peak(proc: subprocess.Popen[bytes]) -> Callable[[], float]:
    """Poll the child's VmHWM (its peak RSS since exec, in KiB) until it exits.

    `ru_maxrss` from wait4 would not do: it also counts the pages the child shared with
    this (large) process between fork and exec."""
    peak = [0]

    def poll() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], status_kb("VmHWM", proc.pid))
            time.sleep(0.05)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()

    def result() -> float:
        watcher.join()
        return float(peak[0])

    return result


def _sqlite_memory() -> int:
    """Bytes SQLite holds (page cache included), when the library exports the counter."""
    try:
        import ctypes
        import ctypes.util

        lib = ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
        lib.sqlite3_memory_used.restype = ctypes.c_int64
        return int(lib.sqlite3_memory_used())
    except (OSError, AttributeError):
        return 0


def memory_probe(db: Path, mode: str) -> dict[str, float]:
    """Run in a fresh process: open the store (which rebuilds the graph from its tables).

    `rss`: VmRSS growth of the process, minus what SQLite itself holds, and VmHWM;
    `heap`: the Python heap that the graph holds, by tracemalloc."""
    from idstitch.storage.sqlite import SQLiteStore

    if mode == "heap":
        from idstitch.storage.seen_filter import SeenFilter

        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        store = SQLiteStore(db)
        held = tracemalloc.get_traced_memory()[0] - before
        # The dedupe structures grow with events, not identifiers: weigh them apart, by
        # what letting go of them frees.
        recent = len(store.messages.recent)
        store.messages.recent, store.messages.filter = {}, SeenFilter(1)
        dedupe = held - (tracemalloc.get_traced_memory()[0] - before)
        tracemalloc.stop()
        result: dict[str, float] = {
            "graph_heap": held - dedupe,
            "dedupe_heap": dedupe,
            "events": store.next_seq - 1,
            "recent": recent,
        }
    else:
        before = status_kb("VmRSS") * 1024
        sqlite_before = _sqlite_memory()
        store = SQLiteStore(db)
        grown = status_kb("VmRSS") * 1024 - before
        sqlite_held = _sqlite_memory() - sqlite_before
        result = {
            "rss_growth": float(grown),
            "sqlite": sqlite_held,
            "hwm": status_kb("VmHWM") * 1024,
            "baseline": before,
        }
    result["identifiers"] = len(store.graph.owners)
    result["profiles"] = len(store.graph.profiles) + len(store.graph.parent)
    store.close()
    return result


def probe(db: Path, mode: str) -> dict[str, float]:
    """`memory_probe` in a fresh interpreter, so that nothing else sits in its heap."""
    cmd = [sys.executable, "-m", "benchmarks.memory", mode, str(db)]
    # The idstitch this process runs (a baseline's, say), then these benchmarks; from a
    # directory holding neither, since `-m` puts the working directory first on the path.
    package = Path(idstitch.__file__).parent.parent  # not resolved: a baseline's is a link
    env = dict(os.environ, PYTHONPATH=os.pathsep.join((str(package), str(ROOT))))
    done = subprocess.run(cmd, capture_output=True, check=True, cwd=db.parent, env=env)
    return dict(json.loads(done.stdout))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("heap", "rss"):
        print("usage: python -m benchmarks.memory heap|rss STORE.db", file=sys.stderr)
        return 2
    print(json.dumps(memory_probe(Path(args[1]), args[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
