"""The PostgreSQL server the tests use, and a fresh schema for each test.

Set IDSTITCH_TEST_POSTGRES_URL to point elsewhere. Without a reachable server the PostgreSQL
tests skip with the reason, except under CI=true, where they fail: CI must test both stores.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

ENV_URL = "IDSTITCH_TEST_POSTGRES_URL"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def base_url() -> str:
    return os.environ.get(ENV_URL) or DEFAULT_URL


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def with_schema(url: str, schema: str) -> str:
    """`url` with `options=-csearch_path=<schema>` added to its query."""
    parts = urlsplit(url)
    option = "options=" + quote(f"-csearch_path={schema}")
    query = f"{parts.query}&{option}" if parts.query else option
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


@functools.cache
def unavailable() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None when they can."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'idstitch[postgres]')"
    from idstitch.checks import redact_url

    try:
        with psycopg.connect(base_url(), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"no PostgreSQL server at {redact_url(base_url())} ({first})"
    return None


def require() -> str:
    """The server URL, or skip (fail under CI=true) with the reason."""
    reason = unavailable()
    if reason is not None:
        hint = f"start one or set {ENV_URL}"
        if in_ci():
            pytest.fail(f"CI=true and the PostgreSQL tests cannot run: {reason}; {hint}.")
        pytest.skip(f"{reason}; {hint} (under CI=true this is a failure).")
    return base_url()


def admin_execute(sql: str) -> None:
    import psycopg

    with psycopg.connect(base_url(), autocommit=True, connect_timeout=3) as conn:
        conn.execute(sql.encode())


@contextmanager
def fresh_schema() -> Iterator[str]:
    """A new, empty schema; yields a store URL that uses it, and drops it afterwards."""
    url = require()
    name = f"idstitch_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    admin_execute(f"CREATE SCHEMA {name}")
    try:
        yield with_schema(url, name)
    finally:
        admin_execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
