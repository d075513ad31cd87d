"""Crash safety of the SQLite store: an acknowledged batch survives a SIGKILL.

A worker process (`tests/crash_worker.py`) ingests batches from several threads and prints each
batch id once `ingest_batch` returned. The test kills it with SIGKILL at a random moment, several
rounds in a row on the same file; each new round first re-sends the batches that were begun but
never acknowledged, as a client would. Afterwards, in this process:

- every acknowledged message is stored exactly once (by message id, through `engine.events`),
  and every segment_id the worker was given still resolves to the profile of the message's user;
- the identity graph is consistent: each identifier is owned by one profile, and the in-memory
  graph rebuilt at startup agrees with what the store's reads return;
- the derived state (the index database, whose indexer the whole-group kills hit at any point
  of its cycle) equals a clean rebuild from the log;
- ingestion goes on: retrying the last round's unacknowledged batches and new messages works.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from idstitch.config import settings_from
from idstitch.core.identifiers import key_of, slot_of
from idstitch.engine import Engine
from idstitch.storage.sqlite import SQLiteStore
from idstitch.storage.sqlite_index import index_path
from tests.crash_worker import batch_messages
from tests.storage.derived import dump, rebuilt, wait_indexed

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "crash_worker.py"
ROUNDS = 12


class Round:
    """One run of the worker, killed at a random moment."""

    def __init__(self, path: Path, number: int, retries: list[str]):
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(path), str(number), *retries],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: the worker and its helpers
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.endswith("\n"):
                break  # cut off by the kill: not a complete acknowledgement
            self.lines.append(line.rstrip("\n"))
            if line == "ready\n":
                self.ready.set()

    def acks(self) -> int:
        return sum(1 for line in list(self.lines) if line.startswith("ack "))

    def kill_after(self, rng: random.Random, whole_group: bool) -> None:
        """SIGKILL the worker (or its whole process group, helpers included) mid-stream, then
        wait until no process of the group is left before the store is opened again."""
        try:
            assert self.ready.wait(20), "the worker did not start"
            deadline = time.monotonic() + 10
            wanted = self.acks() + rng.randrange(1, 40)
            while self.acks() < wanted and time.monotonic() < deadline:
                assert self.proc.poll() is None, "the worker stopped by itself"
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.05))  # land anywhere, mid-commit included
        finally:
            if whole_group:
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            deadline = time.monotonic() + 10
            while group_members(self.proc.pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            left = group_members(self.proc.pid)
            if left:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.reader.join(10)
            assert self.proc.stdout is not None and self.proc.stderr is not None
            errors = self.proc.stderr.read()
            self.proc.stdout.close()
            self.proc.stderr.close()
        assert self.proc.returncode == -signal.SIGKILL, errors
        assert not errors.strip(), errors
        assert not left, f"processes {left} outlived the killed worker by 10 s"


def test_acknowledged_batches_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    rng = random.Random()
    acked: dict[str, list[str]] = {}  # batch id -> "outcome:segment_id" of each message
    pending: list[str] = []  # begun, never acknowledged
    retried: set[str] = set()
    for number in range(ROUNDS):
        run = Round(path, number, pending)
        retried.update(pending)
        run.kill_after(rng, whole_group=number % 2 == 1)
        begun = set()
        for line in run.lines:
            word, _, rest = line.partition(" ")
            if word == "begin":
                begun.add(rest)
            elif word == "ack":
                batch_id, *results = rest.split(" ")
                acked[batch_id] = results
        assert all(b in acked for b in pending), "a retried batch was not acknowledged"
        assert any(b.startswith(f"{number}.") for b in acked), "no new batch in this round"
        pending = sorted(begun - set(acked))

    engine = Engine(settings_from({"storage": {"url": f"sqlite:///{path}"}}), tune_gc=False)
    try:
        check_graph(engine)
        # Derived state, whatever point of its cycle each kill hit, equals a clean rebuild.
        assert isinstance(engine.store, SQLiteStore)
        wait_indexed(engine.store)
        assert dump(index_path(path)) == rebuilt(path, tmp_path)
        # the last round's unacknowledged batches: stored at most once, whatever happened
        for batch_id in pending:
            results = engine.ingest_batch(batch_messages(batch_id), source="crash")
            acked[batch_id] = [f"{r.outcome}:{r.segment_id}" for r in results]
        retried.update(pending)
        check_stored(engine, acked, retried)
        # ingestion goes on after the crashes
        user = batch_messages(next(iter(acked)))[0]["userId"]
        result = engine.ingest(
            {"type": "identify", "userId": user, "messageId": "after"}, source="crash"
        )
        assert result.outcome == "attached"
        assert result.segment_id == engine.profile(f"user_id:{user}")["segment_id"]
        events = engine.events(f"user_id:{user}", limit=10)
        assert any(e["message_id"] == "after" for e in events)
        check_graph(engine)
    finally:
        engine.close()


def check_stored(engine: Engine, acked: dict[str, list[str]], retried: set[str]) -> None:
    """Every acknowledged message is stored once, on the profile its user id resolves to now,
    which is also where the segment_id it was acknowledged with resolves. Only a retried batch
    may meet its own messages again (as duplicates)."""
    by_user: dict[str, set[str]] = defaultdict(set)
    canonical: dict[str, str] = {}

    def resolve(ref: str) -> str:
        if ref not in canonical:
            canonical[ref] = engine.profile(ref)["segment_id"]
        return canonical[ref]

    for batch_id, results in acked.items():
        messages = batch_messages(batch_id)
        assert len(results) == len(messages)
        for msg, result in zip(messages, results, strict=True):
            by_user[msg["userId"]].add(msg["messageId"])
            outcome, _, sid = result.partition(":")
            if outcome == "duplicate":
                assert batch_id in retried, (batch_id, msg)
                continue
            assert outcome in ("created", "attached", "merged"), (batch_id, result)
            assert resolve(sid) == resolve(f"user_id:{msg['userId']}"), (msg, sid)
    stored: list[str] = []
    for user, message_ids in by_user.items():
        events = engine.events(f"user_id:{user}", limit=1_000_000)
        found = {e["message_id"] for e in events}
        missing = message_ids - found
        assert not missing, f"acknowledged but lost: {sorted(missing)[:5]}"
        stored.extend(e["message_id"] for e in events)
    assert len(stored) == len(set(stored)), "a message was stored twice"
    assert engine.store.stats().events == sum(len(s) for s in by_user.values())


def check_graph(engine: Engine) -> None:
    """The in-memory graph (rebuilt from the tables at startup) against the store's reads."""
    assert isinstance(engine.store, SQLiteStore)
    graph = engine.store.graph
    owners: dict[tuple[str, str, str], str] = {}
    for state in list(graph.profiles.values()):
        row = engine.store.find_by_segment_id(state.segment_id)
        assert row is not None and row.segment_id == state.segment_id
        assert row.merges == state.merges
        held = engine.store.external_ids(row.pid)
        assert len(held) == state.n_ids
        stamps: dict[str, list[float]] = defaultdict(list)
        for ext in held:
            ident = (ext.collection, ext.type, ext.id)
            assert ident not in owners, f"{ident} is owned by two profiles"
            owners[ident] = state.segment_id
            found = engine.store.find_by_identifier(*ident)
            assert found is not None and found.segment_id == state.segment_id
            owner = graph.owner(slot_of(key_of(*ident)))
            assert owner is state, f"{ident}: the graph says {owner}, the store {state}"
            stamps[ext.type].append(ext.created_at)
        assert {t: sorted(s) for t, s in stamps.items()} == {
            t: sorted(s) for t, s in state.held().items()
        }
    assert len(owners) == engine.store.stats().identifiers
    assert len(graph.owners) == len(owners)
    for number in range(200):
        if (found := engine.store.find_by_identifier("users", "user_id", f"u{number}")) is not None:
            assert owners[("users", "user_id", f"u{number}")] == found.segment_id


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def children_of(pid: int) -> list[tuple[int, str]]:
    """The processes whose parent is `pid`, as (pid, start time) (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append((int(entry.name), fields[19]))
    return out


def alive(helper: tuple[int, str]) -> bool:
    """Whether this very process (same pid, same start time) still runs."""
    try:
        fields = (Path("/proc") / str(helper[0]) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == helper[1] and fields[0] != "Z"


def signal_helpers(helpers: list[tuple[int, str]], sig: signal.Signals) -> None:
    for helper in helpers:
        if alive(helper):
            os.kill(helper[0], sig)


def kill_holding_a_batch(path: Path) -> list[tuple[int, str]]:
    """Run the worker until its engine handed batch `h.1` to its frozen helper processes,
    then SIGKILL the worker; returns the helpers, still frozen."""
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(path), "--hold", "h.0", "h.1"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    helpers: list[tuple[int, str]] = []
    try:
        while (line := proc.stdout.readline()) != "ready\n":
            assert line, proc.stderr.read()
        helpers = children_of(proc.pid)
        signal_helpers(helpers, signal.SIGSTOP)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "begin h.1\n"
        time.sleep(0.5)  # the batch is resolved and handed to the frozen helper
    except BaseException:
        signal_helpers(helpers, signal.SIGKILL)
        raise
    finally:
        proc.kill()
        proc.wait(10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
    return helpers


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_nothing_is_written_behind_a_restarted_engine(tmp_path: Path) -> None:
    """The engine process is killed while a helper process of its own (the SQLite committer)
    still holds an unacknowledged batch; a new engine then opens the store. Whatever the old
    helper does afterwards, the new engine's graph must match the tables, and its own writes
    must succeed. (The helper is frozen with SIGSTOP to make the timing deterministic.)"""
    path = tmp_path / "crash.db"
    helpers = kill_holding_a_batch(path)
    assert helpers, "the engine should write through its SQLite committer process"
    opened: list[Engine] = []
    failures: list[BaseException] = []

    def open_engine() -> None:
        try:
            opened.append(
                Engine(settings_from({"storage": {"url": f"sqlite:///{path}"}}), tune_gc=False)
            )
        except BaseException as err:  # reported below
            failures.append(err)

    opener = threading.Thread(target=open_engine)
    try:
        opener.start()
        opener.join(1.0)  # an engine may rightly wait here for the old helper to finish
        signal_helpers(helpers, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while any(alive(h) for h in helpers) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        signal_helpers(helpers, signal.SIGKILL)
        opener.join(30)
    assert not failures, f"the new engine did not open: {failures[0]!r}"
    [engine] = opened
    try:
        check_graph(engine)
        results = engine.ingest_batch(batch_messages("h.1"), source="crash")
        assert {r.outcome for r in results} <= {"created", "attached", "merged", "duplicate"}
        results = engine.ingest_batch(batch_messages("h.2"), source="crash")
        assert "duplicate" not in {r.outcome for r in results}
        check_graph(engine)
    finally:
        engine.close()
