"""Stores behind one interface; `open_store` picks one by URL."""

from __future__ import annotations

from idstitch.checks import sqlite_path, sqlite_url_problem
from idstitch.errors import ConfigError
from idstitch.storage.base import STALL_SECONDS, Store
from idstitch.storage.swap import Rebuilding


def open_store(url: str, *, read_only: bool = False, stall_seconds: float = STALL_SECONDS) -> Store:
    """The store `url` names. `read_only` asks for reads alone: the SQLite store then takes
    no writer lock (so it opens beside a running service) and refuses writes; a PostgreSQL
    store is shared by design and opens as usual."""
    if url.startswith("sqlite:"):
        from idstitch.storage.sqlite import SQLiteStore

        return SQLiteStore(sqlite_path(url), read_only=read_only)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from idstitch.storage.postgres import PostgresStore
        except ImportError as err:
            raise ConfigError(
                f"storage url {url.split('@')[-1]!r} needs the PostgreSQL extra ({err.name} is "
                "missing); install it with: pip install 'idstitch[postgres]'"
            ) from None
        return PostgresStore(url, stall_seconds=stall_seconds)
    raise ConfigError(
        f"storage url {url!r} names no known store; use sqlite:///path/to/file.db "
        "or postgresql://user@host/dbname."
    )


def open_rebuilding(url: str) -> Rebuilding:
    """Where the store at `url` is rebuilt (`storage.swap`)."""
    if url.startswith("sqlite:"):
        from idstitch.storage.sqlite_swap import SQLiteRebuilding

        return SQLiteRebuilding(sqlite_path(url))
    if url.startswith(("postgresql://", "postgres://")):
        from idstitch.storage.pg_swap import PostgresRebuilding

        return PostgresRebuilding(url)
    raise ConfigError(
        f"storage url {url!r} names no known store; use sqlite:///path/to/file.db "
        "or postgresql://user@host/dbname."
    )


__all__ = ["Store", "open_rebuilding", "open_store", "sqlite_path", "sqlite_url_problem"]
