"""Helpers for tests of the SQLite store's derived state (the index database)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from idstitch.storage.sqlite import SQLiteStore
from idstitch.storage.sqlite_index import catch_up

TABLES = (
    "profile_events",
    "account_events",
    "message_index",
    "identifier_keys",
    "identifier_profiles",
    "traits",
    "progress",
)


def wait_indexed(store: SQLiteStore, timeout: float = 60) -> None:
    """Until the indexer has caught up with every acknowledged message."""
    deadline = time.monotonic() + timeout
    while store.index_lag().messages:
        assert time.monotonic() < deadline, f"the indexer is still behind: {store.index_lag()}"
        time.sleep(0.02)


def dump(index: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every derived table, sorted."""
    with sqlite3.connect(index) as conn:
        return {t: sorted(conn.execute(f"SELECT * FROM {t}")) for t in TABLES}


def rebuilt(main: Path, where: Path) -> dict[str, list[tuple[Any, ...]]]:
    """The derived tables built afresh from the log of the store at `main`."""
    index = where / "fresh-index"
    catch_up(main, index)
    return dump(index)
