"""A PostgreSQL store rebuilt in a schema beside its own (`<schema>_rebuild`), then renamed
into its place.

Workers keep writing to the old schema while the new one is built; the rebuild copies their
messages after it. The last ones are copied under the store's exclusive lock (no worker's
batch runs beside it), and in that same transaction the schemas are renamed and the old one
dropped: PostgreSQL commits all of it or none. Workers' statements name tables through the
search path, so once the transaction commits they find the new tables under the old name;
readers see the old graph until then.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from idstitch.checks import redact_url
from idstitch.errors import StorageError
from idstitch.storage.pg_batch import LockIds
from idstitch.storage.postgres import PostgresStore
from idstitch.storage.swap import Rebuilding

SUFFIX = "_rebuild"
NAME_BYTES = 63  # PostgreSQL's identifier length


def _with_schema(url: str, schema: str) -> str:
    """`url` with its search path set to `schema` alone (other options kept)."""
    params = conninfo_to_dict(url)
    options = str(params.get("options") or "")
    kept = [o for o in options.split() if "search_path" not in o]
    quoted = schema.replace("\\", "\\\\").replace(" ", "\\ ")
    params["options"] = " ".join([*kept, f"-csearch_path={quoted}"])
    return make_conninfo("", **params)


class PostgresRebuilding(Rebuilding):
    def __init__(self, url: str) -> None:
        self.url = url
        self.source = PostgresStore(url)
        self.schema = self.source.schema
        self.target_schema = self.schema.encode()[: NAME_BYTES - len(SUFFIX)].decode(
            errors="ignore"
        ) + (SUFFIX)
        self._lock = LockIds(self.schema).store
        self._conn: psycopg.Connection[Any] | None = None
        self.discard()  # what a crashed rebuild left
        self._ddl(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.target_schema)))

    def open_target(self) -> PostgresStore:
        return PostgresStore(_with_schema(self.url, self.target_schema))

    def _ddl(self, statement: sql.Composed) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(statement)
        except psycopg.Error as err:
            raise StorageError(
                f"cannot prepare the schema {self.target_schema} at {redact_url(self.url)}: "
                f"{str(err).strip().splitlines()[0]}; the user must be allowed to create and "
                "drop schemas in the database."
            ) from None

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        try:
            conn = psycopg.connect(self.url, autocommit=True)
        except psycopg.Error as err:
            raise StorageError(f"cannot connect to {redact_url(self.url)}: {err}") from None
        with conn:
            conn.execute("BEGIN")
            try:
                conn.execute("SELECT pg_advisory_xact_lock(%s::int, 0)", (self._lock,))
                self._conn = conn
                yield
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.execute("ROLLBACK")
                self.swapped = False
                raise
            finally:
                self._conn = None

    def swap(self) -> None:
        if self._conn is None:
            raise RuntimeError("swap() runs inside alone()")
        replaced = self.schema.encode()[: NAME_BYTES - 9].decode(errors="ignore") + "_replaced"
        old, new, gone = (sql.Identifier(n) for n in (self.schema, self.target_schema, replaced))
        self._conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(gone))
        self._conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(old, gone))
        self._conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(new, old))
        self._conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(gone))
        self.swapped = True  # once `alone` commits

    def discard(self) -> None:
        self._ddl(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.target_schema))
        )

    def release(self) -> None:
        self.source.close()
