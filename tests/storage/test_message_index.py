"""SQLite's dedupe index: recent message hashes in memory, merged into `message_index` in hash
ranges. Whatever the merge's state (never started, half sent, done, interrupted), a message
stored before is found again, also after a restart."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from idstitch.config import settings_from
from idstitch.engine import Engine
from idstitch.storage.sqlite import SQLiteStore
from idstitch.storage.sqlite_messages import INDEX_RANGES, hash_range


def track(i: int) -> dict[str, object]:
    return {"type": "track", "event": "e", "userId": f"u{i % 37}", "messageId": f"m{i}"}


def engine_on(db: Path, index_every: int) -> Engine:
    store = SQLiteStore(db, index_every=index_every)
    return Engine(settings_from({"storage": {"url": f"sqlite:///{db}"}}), store, tune_gc=False)


def ingest(engine: Engine, numbers: range, per_batch: int = 10) -> list[str]:
    outcomes = []
    for start in range(numbers.start, numbers.stop, per_batch):
        chunk = range(start, min(start + per_batch, numbers.stop))
        outcomes += [
            r.outcome for r in engine.ingest_batch([track(i) for i in chunk], source="web")
        ]
    return outcomes


def indexed(db: Path) -> tuple[int, int]:
    """(rows in message_index, seq the index is complete up to)."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT COUNT(*) FROM message_index").fetchone()[0]
        done = conn.execute("SELECT seq FROM index_progress").fetchone()[0]
    return rows, done


def test_merges_fill_the_index_and_every_old_message_stays_a_duplicate(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    with engine_on(db, index_every=50) as engine:
        store = engine.store
        assert isinstance(store, SQLiteStore)
        # Once 50 messages are recent, each batch carries one hash range of a merge, until
        # the last range is acknowledged: send until two merges are done.
        sent = 0
        while store.messages.merged_seq < 100 and sent < 2000:
            assert "duplicate" not in ingest(engine, range(sent, sent + 10))
            sent += 10
        assert store.messages.merged_seq >= 100
        merged = store.messages.merged_seq
        assert all(
            s > merged
            for h in store.messages.recent.values()
            for s in ([h] if isinstance(h, int) else h)
        )
        again = ingest(engine, range(0, sent, 3), per_batch=7)
        assert set(again) == {"duplicate"}
    rows, done = indexed(db)
    assert done >= merged and rows >= done  # every event up to `done` is in the index
    with engine_on(db, index_every=50) as engine:  # and after a restart
        assert set(ingest(engine, range(0, sent, 5), per_batch=9)) == {"duplicate"}


def test_a_restart_in_the_middle_of_a_merge_loses_no_message(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    with engine_on(db, index_every=40) as engine:
        ingest(engine, range(60))  # the merge starts...
        ingest(engine, range(60, 100))  # ...and sends a few of its ranges, not all
        store = engine.store
        assert isinstance(store, SQLiteStore)
        assert store.messages.merging is not None and 0 < store.messages.merging[2] < INDEX_RANGES
    rows, done = indexed(db)
    assert done == 0 and rows > 0  # some ranges are in, the merge is not recorded as done
    with engine_on(db, index_every=40) as engine:
        assert set(ingest(engine, range(100), per_batch=25)) == {"duplicate"}
        assert "duplicate" not in ingest(engine, range(100, 110))


def test_a_store_made_before_the_index_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    settings = settings_from({"storage": {"url": f"sqlite:///{db}"}})
    with Engine(settings, tune_gc=False) as engine:
        ingest(engine, range(30))
    # Turn it back into a store as the first schema made it: events carry their own hash index.
    with sqlite3.connect(db) as conn:
        conn.executescript(
            "DROP TABLE message_index; DROP TABLE index_progress; DROP INDEX events_seq_hash; "
            "CREATE INDEX events_message ON events (msg_hash); "
            "DELETE FROM schema_migrations WHERE name = '0002_message_index';"
        )
    with Engine(settings, tune_gc=False) as engine:
        assert engine.store.migrations_applied == ["0002_message_index"]  # type: ignore[attr-defined]
        assert set(ingest(engine, range(30))) == {"duplicate"}
    with sqlite3.connect(db) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "events_message" not in names
    assert indexed(db) == (30, 30)


@pytest.mark.parametrize("part", [0, 1, INDEX_RANGES - 1])
def test_hash_ranges_cover_every_64_bit_hash_once(part: int) -> None:
    low, high = hash_range(part)
    assert low <= high
    if part == 0:
        assert low == -(1 << 63)
    if part == INDEX_RANGES - 1:
        assert high == (1 << 63) - 1
    else:
        assert hash_range(part + 1)[0] == high + 1


def test_the_wal_starts_over_under_steady_writes(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    wal = Path(f"{db}-wal")
    store = SQLiteStore(db, wal_pages=64, checkpoint_interval=0.01)  # 256 KiB of WAL
    largest = 0
    with Engine(settings_from({"storage": {"url": f"sqlite:///{db}"}}), store) as engine:
        padding = "x" * 2000
        for start in range(0, 3000, 30):
            engine.ingest_batch(
                [
                    {**track(i), "properties": {"padding": padding}}
                    for i in range(start, start + 30)
                ],
                source="web",
            )
            largest = max(largest, wal.stat().st_size if wal.exists() else 0)
    written = db.stat().st_size
    assert written > 6_000_000  # 6 MB went through the WAL...
    # ...which started over again and again: it never held more than a fraction of it (a few
    # commits, or some more when a busy machine delays the checkpoints).
    assert largest < written / 2, (largest, written)
