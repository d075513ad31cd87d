"""Opening a store for reads alone, beside the process that writes to it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from idstitch import profiles
from idstitch.errors import StorageError
from idstitch.storage import open_store
from tests.conftest import MakeEngine
from tests.helpers import msg


def test_a_read_only_store_opens_beside_the_writer_and_sees_its_commits(
    make_engine: MakeEngine, store_url: str
) -> None:
    engine = make_engine()
    engine.ingest(msg("identify", userId="ro1", traits={"email": "ro1@example.com"}))
    reader = open_store(store_url, read_only=True)
    try:
        doc = profiles.document(reader, "email:ro1@example.com")
        assert doc["traits"] == {"email": "ro1@example.com"}
        # A commit made after the reader opened is visible to its next read.
        engine.ingest(msg("identify", userId="ro1", traits={"plan": "pro"}))
        assert profiles.document(reader, "user_id:ro1")["traits"]["plan"] == "pro"
    finally:
        reader.close()


def test_a_read_only_sqlite_store_refuses_writes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ro.db'}"
    open_store(url).close()
    reader = open_store(url, read_only=True)
    try:
        with pytest.raises(StorageError, match="read-only"), reader.batch([]):
            pass
        with pytest.raises(StorageError, match="read-only"):
            reader.set_import_offset("f", 1)
    finally:
        reader.close()


def test_a_read_only_sqlite_store_needs_an_existing_migrated_store(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(StorageError, match="no idstitch store"):
        open_store(f"sqlite:///{missing}", read_only=True)
    assert not missing.exists()  # looking did not create it
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(StorageError, match="not an idstitch store"):
        open_store(f"sqlite:///{other}", read_only=True)
