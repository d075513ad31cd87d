"""The SQLite store's derived state, built behind the log by the indexer process.

A commit makes the message log and the graph changes durable, appended in key order and
nothing more (`sqlite_committer`). What reads need besides (events by profile and by account,
the dedupe index, identifiers by key and by profile, each profile's latest traits) is derived
from those tables here, in a database of its own beside the store (`<db>-index`): its own file,
so that building it never holds the lock that commits wait for. It is rebuilt from the log
whenever it is missing, belongs to another store or another version of this schema, or runs
ahead of the log (a store put back from a backup): deleting it is always safe.

The indexer takes what was committed past its watermarks in sorted runs (`INSERT ... SELECT
... ORDER BY` the index's own key, so each page takes many entries at once) and moves the
watermarks in the same transaction: a crash anywhere leaves a watermark that says exactly
what the index holds, and the next run goes on from there. Reads combine the index up to the
watermark with the short tail of the log past it (`sqlite_reads`).

    python -m idstitch.storage.sqlite_index MAIN_DB INDEX_DB CONTROL_FD
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from idstitch.storage.pipe import Pipe

VERSION = "1"
# Events per indexing transaction: large enough to sort well, small enough that the lag a
# run leaves behind stays short and its rows fit in memory.
CHUNK_EVENTS = 50_000
CHUNK_IDENTIFIERS = 50_000
# How long the indexer rests after a run that found it caught up: each run then takes what
# came meanwhile in one sorted transaction (indexing after every commit cost three times the
# CPU per message), and reads cover the short tail from the log.
IDLE_SECONDS = 0.2

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS progress (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS profile_events (
    profile_id INTEGER NOT NULL, timestamp REAL NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (profile_id, timestamp, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS account_events (
    account_id INTEGER NOT NULL, timestamp REAL NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (account_id, timestamp, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS message_index (
    msg_hash INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (msg_hash, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS identifier_keys (
    key_hash INTEGER NOT NULL, id INTEGER NOT NULL, PRIMARY KEY (key_hash, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS identifier_profiles (
    profile_id INTEGER NOT NULL, id INTEGER NOT NULL, PRIMARY KEY (profile_id, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS traits (
    profile_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    value TEXT,
    timestamp REAL NOT NULL,
    seq INTEGER NOT NULL,
    source_id TEXT NOT NULL,
    PRIMARY KEY (profile_id, key)
) WITHOUT ROWID;
INSERT OR IGNORE INTO progress (name, value) VALUES ('events', 0), ('identifiers', 0);
"""


def index_path(db: Path) -> Path:
    """Where the derived state of the store at `db` lives."""
    return db.with_name(db.name + "-index")


class Watermarks(msgspec.Struct, frozen=True):
    """How far the index reaches: every event up to `events` (a seq) and every identifier up
    to `identifiers` (a row id) is in it; nothing past them is."""

    events: int = 0
    identifiers: int = 0


def watermarks(conn: sqlite3.Connection, schema: str = "ix", log: str = "main") -> Watermarks:
    """How far the index goes; nowhere while it has not caught up with a rewrite of the log
    (an unmerge): what it holds may be out of date, and reads take everything from the log."""
    found = dict(conn.execute(f"SELECT name, value FROM {schema}.progress"))
    if generation(conn, log) != generation(conn, schema, "meta"):
        return Watermarks(0, 0)
    return Watermarks(found.get("events", 0), found.get("identifiers", 0))


def generation(conn: sqlite3.Connection, schema: str, table: str = "store_meta") -> str:
    """How many times the log was rewritten (`store_meta`), or which of those rewrites the
    index was built after (its `meta`)."""
    row = conn.execute(f"SELECT value FROM {schema}.{table} WHERE name = 'generation'").fetchone()
    return str(row[0]) if row else "0"


class _TraitsOnly(msgspec.Struct):
    traits: dict[str, Any] | None = None


_decode_traits = msgspec.json.Decoder(_TraitsOnly).decode
_encode = msgspec.json.Encoder().encode


def trait_rows(rows: Any) -> list[tuple[Any, ...]]:
    """Trait rows (owner, key, value JSON or None, timestamp, seq, source_id) of identify and
    group events given as (seq, type, profile_id, account_id, timestamp, source_id, body):
    an identify's traits belong to its user, a group's to its account, as the resolver
    decided (`storage.rows`)."""
    out: list[tuple[Any, ...]] = []
    for seq, kind, user, account, ts, source, body in rows:
        owner = user if kind == "identify" else account
        if owner is None:
            continue
        traits = _decode_traits(body).traits
        if not traits:
            continue
        for key, value in traits.items():
            encoded = None if value is None else _encode(value).decode()
            out.append((owner, key, encoded, ts, seq, source))
    return out


_UPSERT_TRAITS = (
    "INSERT INTO traits (profile_id, key, value, timestamp, seq, source_id) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (profile_id, key) DO UPDATE SET "
    "value = excluded.value, timestamp = excluded.timestamp, seq = excluded.seq, "
    "source_id = excluded.source_id "
    "WHERE (excluded.timestamp, excluded.seq) >= (traits.timestamp, traits.seq)"
)


def _uri(path: Path, mode: str = "") -> str:
    return path.resolve().as_uri() + (f"?mode={mode}" if mode else "")


def store_id(conn: sqlite3.Connection, schema: str = "main") -> str:
    row = conn.execute(f"SELECT value FROM {schema}.store_meta WHERE name = 'store_id'").fetchone()
    return str(row[0]) if row else ""


def open_index(main: Path, index: Path) -> sqlite3.Connection:
    """The index database's write connection, `log` attached read-only. A database that does
    not belong to the store at `main` as it is now is deleted and started afresh."""
    for attempt in (1, 2):
        conn = sqlite3.connect(_uri(index), uri=True, isolation_level=None, timeout=30)
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA journal_mode=WAL")
        # Derived: a power cut may lose the last runs, never consistency (the watermarks go
        # back with them), and the next run builds them again.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute("ATTACH DATABASE ? AS log", (_uri(main, "ro"),))
        conn.executescript(SCHEMA)
        meta = dict(conn.execute("SELECT name, value FROM meta"))
        owner = store_id(conn, "log")
        last = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM log.events").fetchone()[0]
        marks = watermarks(conn, "main", "log")
        if not meta:
            conn.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?)",
                [
                    ("store_id", owner),
                    ("version", VERSION),
                    ("generation", generation(conn, "log")),
                ],
            )
            return conn
        if (
            meta.get("store_id") == owner
            and meta.get("version") == VERSION
            and marks.events <= last
        ):
            return conn
        conn.close()
        if attempt == 2:
            break
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{index}{suffix}")
    raise sqlite3.DatabaseError(f"the index database {index} cannot be started afresh")


def index_step(conn: sqlite3.Connection) -> int:
    """Index one run of what was committed past the watermarks; returns how many events and
    identifiers it took (0: the index had caught up)."""
    # Deferred, not IMMEDIATE: that would ask for the write lock of `log` too. The snapshot
    # of `log` is taken by the first read below; only this process writes the index.
    conn.execute("BEGIN")
    try:
        rewritten = generation(conn, "log")
        if rewritten != generation(conn, "main", "meta"):
            _start_again(conn, rewritten)
        marks = watermarks(conn, "main", "log")
        last_seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM log.events").fetchone()[0]
        last_id = conn.execute("SELECT COALESCE(MAX(id), 0) FROM log.identifiers").fetchone()[0]
        to_seq = min(last_seq, marks.events + CHUNK_EVENTS)
        to_id = min(last_id, marks.identifiers + CHUNK_IDENTIFIERS)
        done = (to_seq - marks.events) + (to_id - marks.identifiers)
        if to_seq > marks.events:
            span = (marks.events, to_seq)
            conn.execute(
                "INSERT INTO profile_events (profile_id, timestamp, seq) "
                "SELECT profile_id, timestamp, seq FROM log.events WHERE seq > ? AND seq <= ? "
                "AND profile_id IS NOT NULL ORDER BY 1, 2, 3",
                span,
            )
            conn.execute(
                "INSERT INTO account_events (account_id, timestamp, seq) "
                "SELECT account_id, timestamp, seq FROM log.events WHERE seq > ? AND seq <= ? "
                "AND account_id IS NOT NULL ORDER BY 1, 2, 3",
                span,
            )
            conn.execute(
                "INSERT OR IGNORE INTO message_index (msg_hash, seq) "
                "SELECT msg_hash, seq FROM log.events WHERE seq > ? AND seq <= ? ORDER BY 1, 2",
                span,
            )
            rows = trait_rows(
                conn.execute(
                    "SELECT seq, type, profile_id, account_id, timestamp, source_id, body "
                    "FROM log.events WHERE seq > ? AND seq <= ? "
                    "AND type IN ('identify', 'group')",
                    span,
                )
            )
            rows.sort(key=lambda r: (r[0], r[1], r[3], r[4]))
            conn.executemany(_UPSERT_TRAITS, rows)
            conn.execute("UPDATE progress SET value = ? WHERE name = 'events'", (to_seq,))
        if to_id > marks.identifiers:
            span = (marks.identifiers, to_id)
            conn.execute(
                "INSERT INTO identifier_keys (key_hash, id) SELECT key_hash, id "
                "FROM log.identifiers WHERE id > ? AND id <= ? ORDER BY 1, 2",
                span,
            )
            conn.execute(
                "INSERT INTO identifier_profiles (profile_id, id) SELECT profile_id, id "
                "FROM log.identifiers WHERE id > ? AND id <= ? ORDER BY 1, 2",
                span,
            )
            conn.execute("UPDATE progress SET value = ? WHERE name = 'identifiers'", (to_id,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return int(done)


def _start_again(conn: sqlite3.Connection, rewritten: str) -> None:
    """The log was rewritten (an unmerge moved events, identifiers and traits between
    profiles): forget what was derived by profile and derive it again from the start. The
    dedupe index stays: a rewrite keeps every message."""
    for table in ("profile_events", "account_events", "traits", "identifier_keys",
                  "identifier_profiles"):  # fmt: skip
        conn.execute(f"DELETE FROM {table}")
    conn.execute("UPDATE progress SET value = 0")
    conn.execute(
        "INSERT INTO meta (name, value) VALUES ('generation', ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (rewritten,),
    )


def start_again(index: Path, rewritten: str) -> None:
    """Empty the index derived by profile, as of the log's generation `rewritten`, from
    another process than the indexer (which must not be running)."""
    conn = sqlite3.connect(_uri(index), uri=True, isolation_level=None, timeout=30)
    try:
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("BEGIN IMMEDIATE")
        _start_again(conn, rewritten)
        conn.execute("COMMIT")
    finally:
        conn.close()


def catch_up(main: Path, index: Path) -> None:
    """Index everything committed so far, in this process (the import's last step, tests)."""
    conn = open_index(main, index)
    try:
        while index_step(conn):
            pass
    finally:
        conn.close()


def run(main: Path, index: Path, control: Pipe) -> None:
    """The indexer process's life: index what is committed until the engine says stop (or is
    gone). A run that had a whole chunk to take goes on at once; otherwise it rests."""
    conn = open_index(main, index)
    try:
        while True:
            done = index_step(conn)
            if done >= CHUNK_EVENTS:
                if control.poll() and not _drain(control):
                    return
                continue
            if control.poll(IDLE_SECONDS) and not _drain(control):
                return
    finally:
        conn.close()


def _drain(control: Pipe) -> bool:
    """Read every waiting message; False once the engine asked to stop or is gone."""
    try:
        while control.poll():
            if control.recv_bytes() == b"stop":
                return False
    except (EOFError, OSError):
        return False
    return True


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the engine decides when this one ends
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    main_db, index_db, fd = argv
    started = time.monotonic()
    try:
        run(Path(main_db), Path(index_db), Pipe(int(fd)))
    except sqlite3.Error as err:
        print(
            f"the SQLite indexer stopped after {time.monotonic() - started:.1f} s: {err}",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


if __name__ == "__main__":
    main(sys.argv[1:4])
