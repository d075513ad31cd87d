"""The SQLite committer: a child process that owns the write connection of the main database.

The engine resolves messages and sends each micro-batch's rows here (`sqlite_protocol`). What
a commit writes is only what an acknowledgement must make durable: the message log (`events`,
in `seq` order) and the graph changes (profiles, identifiers, merges, links, violations), all
appended in key order, with no index that a commit would update at random. Everything else is
derived behind the log by the indexer (`sqlite_index`). Whatever is queued goes into one
transaction, committed with `synchronous=FULL` (the WAL is fsync'd before COMMIT returns), and
only then are the job ids answered.

Its own process because sqlite3 releases the GIL for every row it steps: beside a thread that
resolves messages, each row would wait for the GIL (measured: 3 us a row alone, 90 us beside a
busy thread).

    python -I -S .../sqlite_committer.py PATH MAX_EVENTS WAL_PAGES FILE_ID IN_FD OUT_FD

It runs as a plain script that needs only the standard library and `sqlite_protocol`, so that
it starts in milliseconds and never imports the engine's own modules.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys

try:
    from idstitch.storage.pipe import Pipe
    from idstitch.storage.sqlite_protocol import (
        Done,
        Execute,
        Failed,
        Job,
        Offset,
        Reset,
        Stop,
        Write,
        from_wire,
        to_wire,
    )
except ImportError:  # run as a script with `python -I -S`: its sibling, by path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from pipe import Pipe  # type: ignore[import-not-found,no-redef]
    from sqlite_protocol import (  # type: ignore[import-not-found,no-redef]
        Done,
        Execute,
        Failed,
        Job,
        Offset,
        Reset,
        Stop,
        Write,
        from_wire,
        to_wire,
    )

IDLE_CHECKPOINT_EVENTS = 20_000


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
    conn.execute("PRAGMA cache_size=-65536")
    return conn


def write_rows(c: sqlite3.Connection, job: Write) -> None:
    if job.profiles:
        c.executemany(
            "INSERT INTO profiles (id, segment_id, collection, canonical_id, created_at, "
            "first_message_id, first_source_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
            job.profiles,
        )
    for into, other in job.repoint:
        c.execute("UPDATE profiles SET canonical_id = ? WHERE canonical_id = ?", (into, other))
    if job.merge_counts:
        c.executemany("UPDATE profiles SET merges = ? WHERE id = ?", job.merge_counts)
    if job.merges:
        c.executemany(
            "INSERT INTO merges (from_id, into_id, message_id, source_id, timestamp, rule) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            job.merges,
        )
    if job.identifiers:
        c.executemany(
            "INSERT INTO identifiers (key_hash, collection, type, value, profile_id, source_id, "
            "first_message_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            job.identifiers,
        )
    if job.events:
        c.executemany(
            "INSERT INTO events (seq, msg_hash, source_id, message_id, type, event, timestamp, "
            "received_at, profile_id, account_id, reason, external_ids, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            job.events,
        )
    if job.links:
        c.executemany(
            "INSERT OR IGNORE INTO links (user_id, account_id, source_id, created_at) "
            "VALUES (?, ?, ?, ?)",
            job.links,
        )
    if job.violations:
        c.executemany(
            "INSERT INTO violations (source_id, message_id, collection, type, value, rule, "
            "detail, timestamp, profile_id, other_profile_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            job.violations,
        )
    if job.outbox:
        c.executemany(
            "INSERT INTO outbox (segment_id, changes, created_at) VALUES (?, ?, ?)", job.outbox
        )
    for name, offset, at in job.progress:
        write_offset(c, name, offset, at)


def write_offset(c: sqlite3.Connection, name: str, offset: int, at: float) -> None:
    c.execute(
        "INSERT INTO import_progress (name, byte_offset, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET byte_offset = excluded.byte_offset, "
        "updated_at = excluded.updated_at",
        (name, offset, at),
    )


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


def moved(path: str, expected: str) -> str | None:
    """Why commits to `path` would be lost, or None: SQLite goes on writing to the file it
    opened, even after that file was deleted or another was moved over its name."""
    if identity(path) == expected:
        return None
    return (
        f"the database file {path} was deleted or replaced while the store was open, so "
        "nothing more can be stored in it; restart idstitch (with the file in place)"
    )


def _size(job: Job) -> int:
    return len(job.events) if isinstance(job, Write) else 1


class Committer:
    """One committer's state: its connection, its pipes, and the failure that stops writes."""

    def __init__(
        self,
        path: str,
        jobs: Pipe,
        replies: Pipe,
        max_events: int,
        wal_pages: int,
        expected: str,
    ):
        self.path = path
        self.jobs = jobs
        self.replies = replies
        self.max_events = max_events
        self.wal_pages = wal_pages
        self.expected = expected
        self.failed: str | None = None

    def _receive(self) -> Job:
        try:
            job: Job = from_wire(self.jobs.recv())
        except (EOFError, OSError):  # the engine process is gone
            return Stop()
        return job

    def _reply(self, reply: Done | Failed) -> None:
        try:
            self.replies.send(to_wire(reply))
        except OSError:  # the engine process is gone: what was committed stays committed
            raise SystemExit(0) from None

    def run(self) -> None:
        """The committer's whole life: write what arrives until told to stop."""
        wrong = moved(self.path, self.expected)
        if wrong is not None:
            # Started on another file than the engine's (replaced before this committer was
            # started again): write nothing to it, not even a batch that would go unanswered.
            self._refuse_all(wrong)
            return
        conn = open_writer(self.path, self.wal_pages)
        written = 0  # events committed since the WAL last started over
        try:
            while True:
                # Nothing is waiting: the moment to let the WAL start over, so that the
                # checkpoint after a commit (at `wal_pages`) is rarely needed under load.
                if written >= IDLE_CHECKPOINT_EVENTS and not self.jobs.poll() and _checkpoint(conn):
                    written = 0
                first = self._receive()
                if isinstance(first, Stop):
                    return
                group: list[Job] = [first]
                size = _size(first)
                stop = False
                while size < self.max_events and self.jobs.poll():
                    job = self._receive()
                    if isinstance(job, Stop):
                        stop = True
                        break
                    group.append(job)
                    size += _size(job)
                self._commit(conn, group)
                written += size
                if stop:
                    return
        finally:
            conn.close()

    def _refuse_all(self, why: str) -> None:
        while True:
            job = self._receive()
            if isinstance(job, Stop):
                return
            self._reply(Failed([job.job], why))

    def _commit(self, conn: sqlite3.Connection, group: list[Job]) -> None:
        done: list[int] = []
        refused: list[int] = []
        why = self.failed
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in group:
                if isinstance(job, Reset):
                    self.failed = None
                elif isinstance(job, Write):
                    if self.failed is not None:
                        refused.append(job.job)
                        why = self.failed
                        continue
                    write_rows(conn, job)
                elif isinstance(job, Offset):
                    write_offset(conn, job.name, job.offset, job.at)
                elif isinstance(job, Execute):
                    if self.failed is not None:
                        refused.append(job.job)
                        why = self.failed
                        continue
                    for sql, rows in job.steps:
                        conn.executemany(sql, rows)
                else:  # pragma: no cover - Stop never reaches a commit
                    continue
                done.append(job.job)
            conn.execute("COMMIT")
        except Exception as err:  # the whole transaction is gone: report every job in it
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self.failed = f"{type(err).__name__}: {err}"
            self._reply(Failed([j.job for j in group if not isinstance(j, Stop)], self.failed))
            return
        # Checked after the commit, before any acknowledgement: what was just written went to a
        # file no one will read if the path names another one now (for good: no reset helps).
        gone = moved(self.path, self.expected)
        if gone is not None:
            self.failed = gone
            self._reply(Failed([j.job for j in group if not isinstance(j, Stop)], gone))
            return
        if done:
            self._reply(Done(done))
        if refused:
            self._reply(Failed(refused, f"an earlier write failed ({why})"))


def main(argv: list[str]) -> None:
    path, max_events, wal_pages, expected, in_fd, out_fd = argv
    # The engine decides when this process ends (Stop down the pipe, or the pipe's end when
    # the engine is gone): a SIGTERM or SIGINT sent to every process of a service (systemd,
    # a terminal's Ctrl-C) must not cut off the commits of requests still being answered.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Committer(
        path,
        Pipe(int(in_fd)),
        Pipe(int(out_fd)),
        int(max_events),
        int(wal_pages),
        expected,
    ).run()


if __name__ == "__main__":
    main(sys.argv[1:7])
