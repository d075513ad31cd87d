"""The SQLite store's derived state: built behind the log by the indexer, read together with
the log's tail, and always equal to what a clean rebuild from the log gives.

- every message stays a duplicate whether the index holds it yet or not, across restarts;
- a store made before the log-first schema is migrated and its derived state rebuilt;
- an index that is missing, belongs to another store or runs ahead of the log is rebuilt;
- dropping the derived state gives the same answer on every Profile API route;
- an indexer killed over and over leaves nothing behind that a clean rebuild would not make.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from benchmarks.workload import generate
from idstitch.config import settings_from
from idstitch.engine import Engine
from idstitch.http.app import App
from idstitch.storage.sqlite import SQLiteStore
from idstitch.storage.sqlite_index import index_path
from tests.http.conftest import READ, SPACE, TOKEN, TestClient
from tests.storage.derived import dump, rebuilt, wait_indexed


def track(i: int) -> dict[str, object]:
    return {"type": "track", "event": "e", "userId": f"u{i % 37}", "messageId": f"m{i}"}


def engine_on(db: Path, *, indexer: bool = True) -> Engine:
    store = SQLiteStore(db, indexer=indexer)
    return Engine(settings_from({"storage": {"url": f"sqlite:///{db}"}}), store, tune_gc=False)


def ingest(engine: Engine, numbers: range, per_batch: int = 10) -> list[str]:
    outcomes = []
    for start in range(numbers.start, numbers.stop, per_batch):
        chunk = range(start, min(start + per_batch, numbers.stop))
        outcomes += [
            r.outcome for r in engine.ingest_batch([track(i) for i in chunk], source="web")
        ]
    return outcomes


def sqlite_store(engine: Engine) -> SQLiteStore:
    assert isinstance(engine.store, SQLiteStore)
    return engine.store


def test_the_indexer_fills_the_dedupe_index_and_old_messages_stay_duplicates(
    tmp_path: Path,
) -> None:
    db = tmp_path / "x.db"
    with engine_on(db) as engine:
        store = sqlite_store(engine)
        assert "duplicate" not in ingest(engine, range(300))
        wait_indexed(store)
        deadline = time.monotonic() + 10
        while store.messages.recent:  # the housekeeper follows the watermark
            assert time.monotonic() < deadline, len(store.messages.recent)
            time.sleep(0.02)
        assert store.messages.merged_seq == 300
        assert set(ingest(engine, range(0, 300, 3), per_batch=7)) == {"duplicate"}
    assert len(dump(index_path(db))["message_index"]) == 300
    with engine_on(db) as engine:  # and after a restart
        assert set(ingest(engine, range(0, 300, 5), per_batch=9)) == {"duplicate"}


def test_messages_the_index_does_not_hold_yet_are_found_too(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    with engine_on(db, indexer=False) as engine:
        ingest(engine, range(100))
        assert sqlite_store(engine).index_lag().messages == 100
        assert set(ingest(engine, range(100), per_batch=25)) == {"duplicate"}
        # Reads see every acknowledged message through the log's tail.
        assert len(engine.events("user_id:u1", limit=100)) == len(range(1, 100, 37))
    assert dump(index_path(db))["message_index"] == []
    with engine_on(db, indexer=False) as engine:  # restarted, the index still empty
        assert set(ingest(engine, range(100), per_batch=25)) == {"duplicate"}
        assert "duplicate" not in ingest(engine, range(100, 110))
    with engine_on(db) as engine:
        wait_indexed(sqlite_store(engine))
        assert set(ingest(engine, range(110), per_batch=25)) == {"duplicate"}


def test_a_store_made_before_the_log_first_schema_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    with engine_on(db) as engine:
        ingest(engine, range(30))
        engine.ingest({"type": "identify", "userId": "u1", "traits": {"plan": "pro"}})
    # Turn it back into what the third migration left: the derived tables in the main
    # database, no index database.
    with sqlite3.connect(db) as conn:
        conn.executescript(
            "DROP TABLE store_meta; "
            "CREATE TABLE traits (profile_id INTEGER NOT NULL, key TEXT NOT NULL, value TEXT, "
            "timestamp REAL NOT NULL, seq INTEGER NOT NULL, source_id TEXT NOT NULL, "
            "PRIMARY KEY (profile_id, key)) WITHOUT ROWID; "
            "CREATE TABLE message_index (msg_hash INTEGER NOT NULL, seq INTEGER NOT NULL, "
            "PRIMARY KEY (msg_hash, seq)) WITHOUT ROWID; "
            "CREATE TABLE index_progress (name TEXT PRIMARY KEY, seq INTEGER NOT NULL); "
            "CREATE INDEX events_profile ON events (profile_id, timestamp, seq); "
            "CREATE INDEX identifiers_key ON identifiers (key_hash); "
            "DELETE FROM schema_migrations WHERE name = '0004_log_first';"
        )
    for suffix in ("", "-wal", "-shm"):
        Path(f"{index_path(db)}{suffix}").unlink(missing_ok=True)
    with engine_on(db) as engine:
        assert sqlite_store(engine).migrations_applied == ["0004_log_first"]
        assert set(ingest(engine, range(30))) == {"duplicate"}
        assert engine.traits("user_id:u1") == {"plan": "pro"}
        wait_indexed(sqlite_store(engine))
        assert engine.traits("user_id:u1") == {"plan": "pro"}
    with sqlite3.connect(db) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert not names & {"traits", "message_index", "index_progress", "events_profile"}


@pytest.mark.parametrize("how", ["missing", "another store", "ahead of the log"])
def test_an_index_that_does_not_match_the_log_is_built_again(tmp_path: Path, how: str) -> None:
    db = tmp_path / "x.db"
    with engine_on(db) as engine:
        ingest(engine, range(50))
        wait_indexed(sqlite_store(engine))
    index = index_path(db)
    if how == "missing":
        index.unlink()
    elif how == "another store":
        other = tmp_path / "other" / "x.db"
        other.parent.mkdir()
        with engine_on(other) as engine:
            ingest(engine, range(1000, 1020))
            wait_indexed(sqlite_store(engine))
        shutil.copy(index_path(other), index)
    else:
        with sqlite3.connect(index) as conn:
            conn.execute("UPDATE progress SET value = 99999 WHERE name = 'events'")
    with engine_on(db) as engine:
        store = sqlite_store(engine)
        wait_indexed(store)
        assert set(ingest(engine, range(50))) == {"duplicate"}
        assert len(engine.events("user_id:u2", limit=100)) == len(range(2, 50, 37))
    assert dump(index) == rebuilt(db, tmp_path)


def _every_route(client: TestClient, refs: list[str]) -> list[Any]:
    out = []
    for ref in refs:
        for resource in ("traits", "external_ids", "events", "metadata", "links"):
            for query in ("", "?limit=3", "?verbose=true&limit=100"):
                url = f"/v1/spaces/{SPACE}/collections/users/profiles/{ref}/{resource}{query}"
                response = client.get(url, headers=READ)
                out.append((url, response.status_code, response.json()))
    return out


def test_dropping_the_derived_state_gives_the_same_answer_on_every_profile_api_route(
    tmp_path: Path,
) -> None:
    """A mixed stream (identify with traits, group, alias, merges across devices, refusals,
    retried messages); every profile read on every route, before and after a rebuild, and
    with nothing derived at all (every read from the log's tail)."""
    db = tmp_path / "x.db"
    config = {
        "space_id": SPACE,
        "storage": {"url": f"sqlite:///{db}"},
        "access_tokens": [{"token": TOKEN}],
    }
    messages = generate(2_000, seed=11).messages

    def answers(indexer: bool = True) -> list[Any]:
        store = SQLiteStore(db, indexer=indexer)
        engine = Engine(settings_from(config), store, tune_gc=False)
        try:
            if indexer:
                wait_indexed(store)
            refs = sorted(
                {
                    f"{e.type}:{quote(e.id, safe='')}"
                    for s in _segment_ids(store)
                    for e in store.external_ids(s)
                    if e.collection == "users"
                }
            )[:60]
            with TestClient(App(engine)) as client:
                return _every_route(client, refs)
        finally:
            engine.close()

    with Engine(settings_from(config), tune_gc=False) as engine:
        for start in range(0, len(messages), 100):
            engine.ingest_batch(messages[start : start + 100], source="web")
    first = answers()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{index_path(db)}{suffix}").unlink(missing_ok=True)
    # With nothing derived yet, every read comes from the log's tail: the same answers.
    assert answers(indexer=False) == first
    assert answers() == first
    assert sum(1 for _, status, _ in first if status == 200) > 500


def _segment_ids(store: SQLiteStore) -> list[int]:
    return [state.pid for state in list(store.graph.profiles.values())]


def test_an_indexer_killed_over_and_over_leaves_what_a_clean_rebuild_makes(
    tmp_path: Path,
) -> None:
    db = tmp_path / "x.db"
    messages = generate(3_000, seed=5).messages
    with engine_on(db) as engine:
        store = sqlite_store(engine)
        for n, start in enumerate(range(0, len(messages), 100)):
            engine.ingest_batch(messages[start : start + 100], source="web")
            if n % 3 == 0 and store._indexer is not None:
                store._indexer.process.kill()  # the housekeeper starts another
        wait_indexed(store)
        assert dump(index_path(db)) == rebuilt(db, tmp_path)


def test_every_read_sees_a_write_as_soon_as_it_is_acknowledged_under_load(
    tmp_path: Path,
) -> None:
    """Four threads keep the indexer busy; another writes and at once reads back, through the
    engine and through a read-only store beside it (as `idstitch profile` beside the service),
    two thousand times: events, traits and external ids all show what was just acknowledged."""
    db = tmp_path / "x.db"
    messages = generate(20_000, seed=3).messages
    stop = threading.Event()
    with engine_on(db) as engine:
        store = sqlite_store(engine)

        def load(part: int) -> None:
            mine = messages[part::4]
            for start in range(0, len(mine), 50):
                if stop.is_set():
                    return
                engine.ingest_batch(mine[start : start + 50], source="load")

        loaders = [threading.Thread(target=load, args=(p,), daemon=True) for p in range(4)]
        for thread in loaders:
            thread.start()
        beside = SQLiteStore(db, read_only=True)
        lagged = 0
        try:
            for n in range(2_000):
                user = f"ryw-{n}"
                engine.ingest_batch(
                    [
                        {
                            "type": "identify",
                            "userId": user,
                            "anonymousId": f"ryw-a{n}",
                            "traits": {"n": n},
                            "messageId": f"ryw-i{n}",
                        },
                        {
                            "type": "track",
                            "event": "Seen",
                            "anonymousId": f"ryw-a{n}",
                            "messageId": f"ryw-t{n}",
                        },
                    ],
                    source="ryw",
                )
                lagged += store.index_lag().messages > 0
                assert engine.traits(f"user_id:{user}")["n"] == n
                events = engine.events(f"anonymous_id:ryw-a{n}", limit=2)
                assert [e["message_id"] for e in events] == [f"ryw-t{n}", f"ryw-i{n}"]
                if n % 10 == 0:
                    row = beside.find_by_identifier("users", "anonymous_id", f"ryw-a{n}")
                    assert row is not None
                    assert beside.traits(row.pid, keys=frozenset({"n"}))[0].value == n
                    ids = {e.id for e in beside.external_ids(row.pid)}
                    assert {user, f"ryw-a{n}"} <= ids
                    assert beside.latest_arrival(row.pid).message_id == f"ryw-t{n}"  # type: ignore[union-attr]
        finally:
            stop.set()
            for thread in loaders:
                thread.join(timeout=60)
            beside.close()
        # The reads above ran while the index trailed the log, not only once it had caught up.
        assert lagged > 100, lagged
