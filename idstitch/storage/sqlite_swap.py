"""A SQLite store rebuilt in a file beside it (`<db>.rebuild`), then renamed over it.

The store's writer lock is held from start to end, so no other process writes meanwhile
(a running `idstitch serve` holds it: the rebuild then stops with that message). The old
file is changed by nothing before the rename, and a rename is atomic: a crash leaves
either the old store or the new one, whole. The index database is derived (its `meta`
names the store it was built for): the new one is renamed in first, so that a crash
between the two renames leaves an index the old store starts again.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from idstitch.errors import StorageError, StoreNotFound
from idstitch.storage.sqlite import SQLiteStore, _writer_lock
from idstitch.storage.sqlite_index import index_path
from idstitch.storage.swap import Rebuilding, nothing

SIDE_FILES = ("", "-wal", "-shm")


def _settle(db: Path) -> None:
    """Copy `db`'s write-ahead log into it and remove the log: a rename must move a whole
    database, and a log left behind would be read into the next file of that name."""
    if not db.exists():
        for suffix in SIDE_FILES[1:]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{db}{suffix}")
        return
    conn = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # Leaving WAL mode fails unless this connection is the only one, and leaves no log;
        # the store sets WAL mode again when it opens.
        conn.execute("PRAGMA journal_mode=DELETE")
    finally:
        conn.close()
    for suffix in SIDE_FILES[1:]:
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{db}{suffix}")
    fd = os.open(db, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_directory(path: Path) -> None:
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SQLiteRebuilding(Rebuilding):
    def __init__(self, path: Path, *, lock_timeout: float = 2.0) -> None:
        self.path = path
        if not path.exists():
            raise StoreNotFound(f"there is no SQLite store at {path}; check storage.url.")
        self._lock_fd: int | None = _writer_lock(path, lock_timeout)
        self.target = path.with_name(path.name + ".rebuild")
        self.discard()  # what a crashed rebuild left
        self.source = SQLiteStore(path, read_only=True)

    def open_target(self) -> SQLiteStore:
        return SQLiteStore(self.target)

    def alone(self) -> contextlib.AbstractContextManager[None]:
        return nothing()  # the writer lock is held throughout

    def _files(self, db: Path) -> list[Path]:
        index = index_path(db)
        return [Path(f"{f}{s}") for f in (db, index) for s in SIDE_FILES] + [Path(f"{db}.lock")]

    def discard(self) -> None:
        for file in self._files(self.target):
            with contextlib.suppress(FileNotFoundError):
                os.remove(file)

    def swap(self) -> None:
        try:
            self._swap()
        except (OSError, sqlite3.Error) as err:
            raise StorageError(
                f"the rebuilt store could not replace {self.path}: {err}; the old store is "
                "unchanged. Close other programs reading it (idstitch profile, sqlite3) and "
                "run the rebuild again."
            ) from None

    def _swap(self) -> None:
        self.source.close()
        new_index, old_index = index_path(self.target), index_path(self.path)
        for db in (self.target, new_index, self.path, old_index):
            _settle(db)
        if new_index.exists():
            os.replace(new_index, old_index)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(old_index)
        _sync_directory(self.path)
        os.replace(self.target, self.path)
        _sync_directory(self.path)
        self.swapped = True
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{self.target}.lock")

    def release(self) -> None:
        self.source.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
