"""`idstitch import` takes its own bulk path (several batches per transaction, each file's
position in the same commit), yet stores exactly what live ingestion of the same messages in
the same order stores: the same profiles under the same segment_ids, the same identifiers,
merges, links, refusals, events and traits, and the same derived state."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from benchmarks.workload import generate
from idstitch.config import settings_from
from idstitch.engine import Engine
from idstitch.importer import import_paths
from idstitch.storage.sqlite import SQLiteStore
from idstitch.storage.sqlite_index import index_path
from tests.storage.derived import dump, wait_indexed

TABLES = {
    "profiles": "id, segment_id, collection, canonical_id, created_at, merges, "
    "first_message_id, first_source_id",
    "identifiers": "id, key_hash, collection, type, value, profile_id, source_id, "
    "first_message_id, created_at",
    "events": "seq, msg_hash, source_id, message_id, type, event, timestamp, received_at, "
    "profile_id, account_id, reason, external_ids, body",
    "merges": "from_id, into_id, message_id, source_id, timestamp",
    "links": "user_id, account_id, source_id, created_at",
    "violations": "source_id, message_id, collection, type, value, rule, detail, timestamp",
}


def _tables(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(db) as conn:
        return {
            name: conn.execute(f"SELECT {columns} FROM {name} ORDER BY 1").fetchall()
            for name, columns in TABLES.items()
        }


def _open(db: Path) -> Engine:
    return Engine(settings_from({"storage": {"url": f"sqlite:///{db}"}}), tune_gc=False)


def test_an_import_stores_what_live_ingestion_of_the_same_messages_stores(
    tmp_path: Path,
) -> None:
    # Merges across devices, refusals on shared computers, aliases, groups with account
    # traits, identify traits, junk ids, and retried messages (duplicates).
    messages = generate(4_000, seed=9).messages
    stream = tmp_path / "history.jsonl"
    stream.write_bytes(b"".join(m + b"\n" for m in messages))

    live = tmp_path / "live" / "s.db"
    with _open(live) as engine:
        for start in range(0, len(messages), 100):
            engine.ingest_batch(messages[start : start + 100], source="web", keep_received_at=True)
        assert isinstance(engine.store, SQLiteStore)
        wait_indexed(engine.store)

    imported = tmp_path / "imported" / "s.db"
    with Engine(
        settings_from({"storage": {"url": f"sqlite:///{imported}"}}),
        tune_gc=False,
        max_batch=8_000,
    ) as engine:
        summary = import_paths(engine, [stream], source="web", batch_size=2_000)
        assert summary.events == len(messages) and summary.invalid == 0
        assert summary.duplicates > 0 and summary.merges > 0 and summary.violations > 0
        assert engine.store.index_lag().messages == 0  # the import waited for its index

    live_tables, imported_tables = _tables(live), _tables(imported)
    for name in TABLES:
        assert imported_tables[name] == live_tables[name], name
    assert len(live_tables["merges"]) > 10 and len(live_tables["links"]) > 10
    assert dump(index_path(imported)) == dump(index_path(live))
    with _open(imported) as engine:
        # Resumed, the import finds every line stored: nothing is read twice.
        again = import_paths(engine, [stream], source="web", batch_size=2_000)
        assert again.events == 0 and again.skipped_bytes == stream.stat().st_size
