"""Stores behind one interface; `open_store` picks one by URL."""

from __future__ import annotations

from pathlib import Path

from idstitch.errors import ConfigError
from idstitch.storage.base import STALL_SECONDS, Store


def sqlite_url_problem(url: str) -> str | None:
    """Why `url` names no SQLite store file (None when it does): `sqlite:////abs/path.db`
    (four slashes) or `sqlite:///relative/path.db` (three), and nothing else."""
    rest = url[len("sqlite:///") :]
    if not url.startswith("sqlite:///") or not rest:
        return "names no file"
    if "?" in rest or "#" in rest:
        return "has parameters; a SQLite URL takes no parameters, only a file path"
    if rest in (":memory:", "/:memory:") or rest.startswith("file:"):
        return "is no file path; the store must be a file, which keeps what it stores"
    return None


def sqlite_path(url: str) -> Path:
    """The file a SQLite URL names (raises ConfigError, see `sqlite_url_problem`)."""
    problem = sqlite_url_problem(url)
    if problem is not None:
        raise ConfigError(
            f"storage url {url!r} {problem}; write sqlite:////absolute/path.db or "
            "sqlite:///relative/path.db."
        )
    return Path(url[len("sqlite:///") :])


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


__all__ = ["Store", "open_store", "sqlite_path", "sqlite_url_problem"]
