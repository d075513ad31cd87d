"""The SQLite committer process failing under the engine: killed, stopped, its file deleted.

The engine must never hang on a committer that is gone, never acknowledge what was not
stored, and come back by itself when it can.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from idstitch.config import settings_from
from idstitch.engine import Engine
from idstitch.errors import StorageError
from idstitch.storage.sqlite import SQLiteStore
from idstitch.storage.sqlite_committer import identity
from idstitch.storage.sqlite_protocol import Reset
from tests.helpers import msg


def _engine(tmp_path: Path) -> tuple[Engine, SQLiteStore]:
    settings = settings_from({"storage": {"url": f"sqlite:///{tmp_path / 's.db'}"}})
    engine = Engine(settings, tune_gc=False)
    assert isinstance(engine.store, SQLiteStore)
    return engine, engine.store


def _stored(engine: Engine) -> set[str]:
    rows = engine.store._read().execute("SELECT message_id FROM events")  # type: ignore[attr-defined]
    return {r[0] for r in rows}


def test_killing_the_committer_under_load_never_hangs_and_loses_no_acknowledged_message(
    tmp_path: Path,
) -> None:
    # A kill used to leave a recovery waiting for ever on a job sent to the dying committer
    # (its replies had ended, it was not reaped yet): every later write hung.
    engine, store = _engine(tmp_path)
    acknowledged: list[str] = []
    hung: list[str] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            mid = f"w{worker}-{n}"
            item = engine.prepare(msg("track", event="E", userId=f"u{n % 50}", messageId=mid))
            future = engine.submit([item], "api").future
            try:
                future.result(timeout=20)
            except StorageError:
                continue
            except TimeoutError:
                hung.append(mid)
                return
            acknowledged.append(mid)

    threads = [threading.Thread(target=load, args=(w,), daemon=True) for w in range(4)]
    try:
        for thread in threads:
            thread.start()
        for _ in range(12):
            time.sleep(0.15)
            store._committer.process.kill()  # a no-op once it is gone and reaped
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        assert not hung, f"writes hung after the committer was killed: {hung[:3]}"
        assert not any(thread.is_alive() for thread in threads)
        # It works again by itself, and /healthz says so once a write went through.
        result = engine.ingest(msg("track", event="E", userId="after", messageId="after"))
        assert result.outcome in ("created", "attached")
        assert store.healthy()
        assert set(acknowledged) | {"after"} <= _stored(engine)
    finally:
        stop.set()
        engine.close()


class _EndedPipe:
    def recv_bytes(self) -> bytes:
        raise EOFError

    def close(self) -> None:
        pass


def test_a_committer_whose_replies_ended_is_replaced_even_before_its_process_exits(
    tmp_path: Path,
) -> None:
    # After a SIGKILL the replies can end a moment before the process is gone: a recovery
    # that trusted `poll()` sent its reset to the dying process and waited for ever.
    engine, store = _engine(tmp_path)
    old = store._committer
    os.kill(old.process.pid, signal.SIGSTOP)  # alive, and it will never answer
    try:
        old.replies = _EndedPipe()  # type: ignore[assignment]
        store._receive_loop(old)
        assert old.process.poll() is None
        with pytest.raises(StorageError, match="committer process stopped"):
            store._send(Reset).result(timeout=5)  # refused at once, not queued
        done = threading.Event()
        result: list[object] = []

        def write() -> None:
            try:
                result.append(engine.ingest(msg("track", event="E", userId="u1")).outcome)
            except StorageError as err:
                result.append(err)
            done.set()

        threading.Thread(target=write, daemon=True).start()
        assert done.wait(30), "the write hung on a committer that will never answer"
        assert result == ["created"]
        assert store._committer is not old and old.process.poll() is not None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(old.process.pid, signal.SIGCONT)
        engine.close()


def test_a_stopped_committer_makes_the_store_unhealthy_until_it_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("idstitch.storage.sqlite.STALLED_SECONDS", 0.3)
    engine, store = _engine(tmp_path)
    pid = store._committer.process.pid
    try:
        engine.ingest(msg("track", event="E", userId="u1"))
        assert store.healthy()
        os.kill(pid, signal.SIGSTOP)
        ticket = engine.submit([engine.prepare(msg("track", event="E", userId="u2"))], "api")
        time.sleep(0.6)
        assert not ticket.future.done()
        assert not store.healthy()
        os.kill(pid, signal.SIGCONT)
        ticket.future.result(timeout=20)
        assert store.healthy()
    finally:
        os.kill(pid, signal.SIGCONT)
        engine.close()


def test_a_committer_that_dies_while_idle_is_restarted_without_traffic(tmp_path: Path) -> None:
    """A load balancer stops sending on 503: the store must come back by itself, not on the
    next write."""
    engine, store = _engine(tmp_path)
    try:
        engine.ingest(msg("identify", userId="u1", anonymousId="a1", messageId="m1"))
        old = store._committer.process
        old.kill()
        old.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not store.healthy():
            assert time.monotonic() < deadline, "still unhealthy 10 s after the committer died"
            time.sleep(0.05)
        assert store._committer.process is not old
        assert store._committer.process.poll() is None
        result = engine.ingest(msg("track", event="E", anonymousId="a1", messageId="m2"))
        assert result.outcome == "attached"
        assert _stored(engine) == {"m1", "m2"}
    finally:
        engine.close()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_database_file_deleted_or_replaced_while_open_refuses_writes(
    tmp_path: Path, how: str
) -> None:
    # SQLite goes on writing to the file it opened: without the check every message was
    # acknowledged into a file no one would ever read again.
    engine, store = _engine(tmp_path)
    db = tmp_path / "s.db"
    try:
        engine.ingest(msg("track", event="E", userId="before"))
        if how == "deleted":
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
        else:
            other = tmp_path / "other.db"
            other.write_bytes(b"")
            os.replace(other, db)
        for n in range(3):
            with pytest.raises(StorageError, match="deleted or replaced"):
                engine.ingest(msg("track", event="E", userId=f"after-{n}"))
            time.sleep(0.6)  # past the pause between recoveries
        assert not store.healthy()
        # A committer started again finds the other file at the path and writes nothing.
        store._committer.process.kill()
        time.sleep(0.6)
        with pytest.raises(StorageError, match="deleted or replaced"):
            engine.ingest(msg("track", event="E", userId="after-restart"))
        if how == "replaced":
            assert db.stat().st_size == 0
    finally:
        engine.close()


def test_failures_in_a_row_pause_the_rebuilds_and_one_success_ends_the_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, store = _engine(tmp_path)
    try:
        engine.ingest(msg("track", event="E", userId="u0"))
        loads = 0
        real_load = store._load

        def counting_load() -> None:
            nonlocal loads
            loads += 1
            real_load()

        monkeypatch.setattr(store, "_load", counting_load)
        # Every commit fails, as on a full disk: the committer is told its file moved.
        monkeypatch.setattr(store, "_file", "0:0")
        store._committer.process.kill()
        errors = []
        for n in range(20):
            try:
                engine.ingest(msg("track", event="E", userId=f"u{n}"))
            except StorageError as err:
                errors.append(str(err))
        assert len(errors) == 20
        assert loads <= 3, loads  # not one rebuild per batch
        assert any("tries again in" in e for e in errors), errors[:4]
        # The file is back (its identity matches again): writes resume after the pause.
        monkeypatch.setattr(store, "_file", identity(str(store.path)))
        store._committer.process.kill()
        deadline = time.monotonic() + 10
        while True:
            try:
                engine.ingest(msg("track", event="E", userId="back"))
                break
            except StorageError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert store.healthy()
    finally:
        engine.close()


def test_a_full_disk_is_named_when_the_store_cannot_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from idstitch.storage import sqlite as sqlite_module

    real = os.statvfs(tmp_path)

    class Full:
        f_bavail = 3
        f_frsize = real.f_frsize

    def failing(path: Path, *, readonly: bool = False) -> object:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(sqlite_module, "_connect", failing)
    with pytest.raises(StorageError, match="check the path and its permissions"):
        SQLiteStore(tmp_path / "a" / "s.db")
    monkeypatch.setattr(sqlite_module.os, "statvfs", lambda path: Full())
    with pytest.raises(StorageError, match=r"disk I/O error; the disk holding .* is full"):
        SQLiteStore(tmp_path / "b" / "s.db")


def test_a_failed_write_makes_the_store_unhealthy_for_a_while_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("idstitch.storage.sqlite.FAILED_SECONDS", 0.5)
    engine, store = _engine(tmp_path)
    try:
        store._failed("OperationalError: database or disk is full")
        assert not store.healthy()
        time.sleep(0.7)
        assert store.healthy()  # no traffic came to prove it, and none will while it is out
        store._failed("OperationalError: database or disk is full")
        engine.ingest(msg("track", event="E", userId="u1"))  # recovers, and succeeds
        assert store.healthy()
    finally:
        engine.close()
