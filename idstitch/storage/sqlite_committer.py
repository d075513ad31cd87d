"""The SQLite committer: a child process that owns the write connection.

The engine process resolves messages and sends each batch's rows down a pipe; this process
writes them, coalescing whatever is queued into one transaction, commits with
`synchronous=FULL` (the WAL is fsync'd before COMMIT returns) and only then answers with the
job ids it made durable. Running SQLite's inserts in their own process takes them, and the
binding of every row, off the engine's GIL, so both cores do useful work.

It runs as a plain script
(`python -I -S sqlite_committer.py PATH IN_FD OUT_FD MAX_EVENTS WAL_PAGES FILE_IDENTITY`)
that needs only the standard library, so it starts in milliseconds and never re-imports the
engine's own `__main__`.

Protocol (pickled tuples over two OS pipes, framed by `multiprocessing.connection`):
    engine -> committer   ("rows", job_id, RowsPayload) | ("offset", job_id, (name, offset, at))
                          | ("index", job_id, (after_seq, up_to_seq, low_hash, high_hash, last))
                          | ("reset", job_id, None) | None (finish and exit)
    committer -> engine   ("ok", [job_id, ...]) | ("err", [job_id, ...], message)
After a failed transaction every later "rows" and "index" job is refused until a "reset"
arrives: those batches were resolved on top of the failed one and must not be stored without
it, and an index range must not be recorded as complete over events that were lost.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from multiprocessing.connection import Connection
from typing import Any

# The order of BatchRows' fields that are written (see `payload_of`).
RowsPayload = tuple[list[Any], ...]


def payload_of(rows: Any) -> RowsPayload:
    return (
        rows.profiles,
        rows.repoint,
        rows.merge_counts,
        rows.merges,
        rows.identifiers,
        rows.events,
        rows.traits,
        rows.links,
        rows.violations,
    )


def open_writer(path: str, wal_pages: int = 65536) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    # The engine's checkpoint thread copies most of the WAL into the database in the
    # background, but under steady writes it never catches up with the end, and only a
    # checkpoint that does lets the WAL start over: without this one, run by the only writer
    # right after a commit once the WAL holds `wal_pages` pages, the WAL grows without bound.
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.execute(f"PRAGMA wal_autocheckpoint={int(wal_pages)}")
    conn.execute(f"PRAGMA journal_size_limit={int(wal_pages) * page_size}")
    conn.execute("PRAGMA cache_size=-262144")
    return conn


def write_rows(c: sqlite3.Connection, payload: RowsPayload) -> None:
    (profiles, repoint, merge_counts, merges, identifiers, events, traits, links, violations) = (
        payload
    )
    if profiles:
        c.executemany(
            "INSERT INTO profiles (id, segment_id, collection, canonical_id, created_at, "
            "first_message_id, first_source_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
            profiles,
        )
    for into, other in repoint:
        c.execute("UPDATE profiles SET canonical_id = ? WHERE canonical_id = ?", (into, other))
    if merge_counts:
        c.executemany("UPDATE profiles SET merges = ? WHERE id = ?", merge_counts)
    if merges:
        c.executemany(
            "INSERT INTO merges (from_id, into_id, message_id, source_id, timestamp) "
            "VALUES (?, ?, ?, ?, ?)",
            merges,
        )
    if identifiers:
        c.executemany(
            "INSERT INTO identifiers (key_hash, collection, type, value, profile_id, source_id, "
            "first_message_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            identifiers,
        )
    if events:
        c.executemany(
            "INSERT INTO events (seq, msg_hash, source_id, message_id, type, event, timestamp, "
            "received_at, profile_id, account_id, reason, external_ids, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            events,
        )
    if traits:
        c.executemany(
            "INSERT INTO traits (profile_id, key, value, timestamp, seq, source_id) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (profile_id, key) DO UPDATE SET "
            "value = excluded.value, timestamp = excluded.timestamp, seq = excluded.seq, "
            "source_id = excluded.source_id "
            "WHERE (excluded.timestamp, excluded.seq) >= (traits.timestamp, traits.seq)",
            traits,
        )
    if links:
        c.executemany(
            "INSERT OR IGNORE INTO links (user_id, account_id, source_id, created_at) "
            "VALUES (?, ?, ?, ?)",
            links,
        )
    if violations:
        c.executemany(
            "INSERT INTO violations (source_id, message_id, collection, type, value, rule, "
            "detail, timestamp) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            violations,
        )


def write_offset(c: sqlite3.Connection, item: tuple[str, int, float]) -> None:
    c.execute(
        "INSERT INTO import_progress (name, byte_offset, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET byte_offset = excluded.byte_offset, "
        "updated_at = excluded.updated_at",
        item,
    )


def write_index(c: sqlite3.Connection, item: tuple[int, int, int, int, bool]) -> None:
    """Merge one hash range of the events after `after_seq` into `message_index`, in hash
    order (pages fill in order); the last range also records how far the index now reaches."""
    after, up_to, low, high, last = item
    c.execute(
        "INSERT OR IGNORE INTO message_index (msg_hash, seq) SELECT msg_hash, seq "
        "FROM events INDEXED BY events_seq_hash "
        "WHERE seq > ? AND seq <= ? AND msg_hash BETWEEN ? AND ? ORDER BY msg_hash, seq",
        (after, up_to, low, high),
    )
    if last:
        c.execute("UPDATE index_progress SET seq = ? WHERE name = 'message_index'", (up_to,))


IDLE_CHECKPOINT_EVENTS = 20_000


def _checkpoint(conn: sqlite3.Connection) -> bool:
    """A full checkpoint between transactions; True when it reached the WAL's end."""
    try:
        busy, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    except sqlite3.Error:
        return False
    return bool(busy == 0 and log == done)


def identity(path: str) -> str:
    """Which file `path` names now (device and inode), or "" when it names none."""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return f"{st.st_dev}:{st.st_ino}"


def _moved(path: str, expected: str) -> str | None:
    """Why commits to `path` would be lost, or None: SQLite goes on writing to the file it
    opened, even after that file was deleted or another was moved over its name."""
    if identity(path) == expected:
        return None
    return (
        f"the database file {path} was deleted or replaced while the store was open, so "
        "nothing more can be stored in it; restart idstitch (with the file in place)"
    )


def _size(job: Any) -> int:
    return len(job[2][5]) if job[0] == "rows" else 1


def main(
    path: str,
    pipe: Connection,
    replies: Connection,
    max_events: int,
    wal_pages: int,
    expected: str,
) -> None:
    """The committer process's whole life: write what arrives until told to stop.
    `expected` is the `identity` of the database file the engine opened."""
    # The engine decides when this process ends (None down the pipe, or the pipe's end when
    # the engine is gone): a SIGTERM or SIGINT sent to every process of a service (systemd,
    # a terminal's Ctrl-C) must not cut off the commits of requests still being answered.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    wrong = _moved(path, expected)
    if wrong is not None:
        # Started on another file than the engine's (replaced before this committer was
        # started again): write nothing to it, not even a batch that would go unanswered.
        _refuse_all(pipe, replies, wrong)
        return
    conn = open_writer(path, wal_pages)
    failed: str | None = None
    written = 0  # events committed since the WAL last started over
    try:
        while True:
            # Nothing is waiting: the moment to let the WAL start over, so that the checkpoint
            # after a commit (at `wal_pages`) is rarely needed under load.
            if written >= IDLE_CHECKPOINT_EVENTS and not pipe.poll() and _checkpoint(conn):
                written = 0
            try:
                first = pipe.recv()
            except (EOFError, OSError):  # the engine process is gone
                return
            if first is None:
                return
            jobs = [first]
            size = _size(first)
            stop = False
            while size < max_events and pipe.poll():
                try:
                    job = pipe.recv()
                except (EOFError, OSError):
                    job = None
                if job is None:
                    stop = True
                    break
                jobs.append(job)
                size += _size(job)
            failed = _commit(conn, replies, jobs, failed, path, expected)
            written += size
            if stop:
                return
    finally:
        conn.close()


def _refuse_all(pipe: Connection, replies: Connection, why: str) -> None:
    while True:
        try:
            job = pipe.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        _reply(replies, ("err", [job[1]], why))


def _commit(
    conn: sqlite3.Connection,
    pipe: Connection,
    jobs: list[Any],
    failed: str | None,
    path: str,
    expected: str,
) -> str | None:
    done: list[int] = []
    refused: list[int] = []
    why = failed
    try:
        conn.execute("BEGIN IMMEDIATE")
        for kind, job_id, payload in jobs:
            if kind == "reset":
                failed = None
            elif failed is not None and kind in ("rows", "index"):
                refused.append(job_id)
                why = failed
                continue
            elif kind == "rows":
                write_rows(conn, payload)
            elif kind == "offset":
                write_offset(conn, payload)
            elif kind == "index":
                write_index(conn, payload)
            done.append(job_id)
        conn.execute("COMMIT")
    except Exception as err:  # the whole transaction is gone: report every job in it
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        failed = f"{type(err).__name__}: {err}"
        _reply(pipe, ("err", [job[1] for job in jobs], failed))
        return failed
    # Checked after the commit, before any acknowledgement: what was just written went to a
    # file no one will read if the path names another one now (for good: no reset helps).
    moved = _moved(path, expected)
    if moved is not None:
        _reply(pipe, ("err", [job[1] for job in jobs], moved))
        return moved
    if done:
        _reply(pipe, ("ok", done))
    if refused:
        _reply(pipe, ("err", refused, f"an earlier write failed ({why})"))
    return failed


def _reply(pipe: Connection, message: tuple[Any, ...]) -> None:
    try:
        pipe.send(message)
    except OSError:  # the engine process is gone: what was committed stays committed
        raise SystemExit(0) from None


if __name__ == "__main__":
    import sys

    _path, _in, _out, _max, _wal, _file = sys.argv[1:7]
    main(
        _path,
        Connection(int(_in), writable=False),
        Connection(int(_out), readable=False),
        int(_max),
        int(_wal),
        _file,
    )
