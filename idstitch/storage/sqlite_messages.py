"""Which messages the SQLite store holds: "was (source, messageId) stored before?" for every
message, without a SQL lookup per message and without a random-key index on the events.

Three places, from newest to oldest (batches still on their way to disk are the store's
in-flight set):
- `recent`: the hash and seq of every event committed since the last index merge, in memory
  (rebuilt at startup from `events_seq_hash`, a narrow index in insertion order);
- `message_index`: (hash, seq) of older events, filled by merges in hash order, one range
  per batch, so that each of its pages takes many entries at once (an index on a random hash
  gains an entry in a different page for almost every message, and SQLite's WAL writes whole
  pages);
- and over all of them a Bloom filter (`SeenFilter`), which rules out almost every new
  message before any of the above is asked.
An event leaves `recent` only once a merge that covers it is committed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from idstitch.storage.seen_filter import SeenFilter

INDEX_RANGES = 16  # a merge into message_index goes in this many hash ranges

# (after_seq, up_to_seq, low_hash, high_hash, last): one range of a merge, for the committer
IndexJob = tuple[int, int, int, int, bool]


def hash_range(part: int) -> tuple[int, int]:
    """The `part`-th of INDEX_RANGES equal ranges of signed 64-bit hashes, both ends in."""
    width = (1 << 64) // INDEX_RANGES
    low = -(1 << 63) + part * width
    high = (1 << 63) - 1 if part == INDEX_RANGES - 1 else low + width - 1
    return low, high


def _remember(recent: dict[int, int | list[int]], h: int, seq: int) -> None:
    held = recent.get(h)
    if held is None:
        recent[h] = seq
    elif isinstance(held, list):
        held.append(seq)
    else:  # two recent messages share a hash: keep both
        recent[h] = [held, seq]


def _latest(held: int | list[int]) -> int:
    return max(held) if isinstance(held, list) else held


class StoredMessages:
    """The store's knowledge of stored message hashes. `sending` and `next_index_job` run
    on the writer; `committed` and `merged` on the acknowledgement thread, the only one that
    changes `recent`."""

    def __init__(self, index_every: int = 100_000):
        self.index_every = index_every  # start a merge once this many events are recent
        self.filter = SeenFilter(1)
        self.recent: dict[int, int | list[int]] = {}
        self.merged_seq = 0  # message_index holds every event up to this seq
        self.merging: tuple[int, int, int] | None = None  # (after, up to, next range)

    def load(self, c: sqlite3.Connection, last_seq: int) -> None:
        """Rebuild everything from the tables (inside the caller's read transaction)."""
        row = c.execute("SELECT seq FROM index_progress WHERE name = 'message_index'").fetchone()
        merged = row[0] if row else 0
        count = c.execute("SELECT COUNT(*) FROM message_index").fetchone()[0]
        stored = SeenFilter(max(1 << 20, 2 * (count + last_seq - merged)))
        add = stored.add
        for (h,) in c.execute("SELECT msg_hash FROM message_index"):
            add(h)
        recent: dict[int, int | list[int]] = {}
        rows = "SELECT msg_hash, seq FROM events INDEXED BY events_seq_hash WHERE seq > ?"
        for h, seq in c.execute(rows, (merged,)):
            add(h)
            _remember(recent, h, seq)
        self.filter, self.recent, self.merged_seq, self.merging = stored, recent, merged, None

    def may_contain(self, message_hash: int) -> bool:
        return self.filter.may_contain(message_hash)

    def find(self, c: sqlite3.Connection, source_id: str, candidates: dict[int, str]) -> set[str]:
        """Which of `candidates` (hash -> message id) are stored for `source_id`: each hash
        is compared on the full (source, message id) of the events it points to."""
        seqs: list[int] = []
        for h in candidates:
            held = self.recent.get(h)
            if held is not None:
                seqs.extend(held) if isinstance(held, list) else seqs.append(held)
        queries: list[tuple[str, list[Any]]] = [
            ("SELECT msg_hash, source_id, message_id FROM events WHERE seq IN ", seqs),
            (
                "SELECT e.msg_hash, e.source_id, e.message_id FROM message_index m "
                "JOIN events e ON e.seq = m.seq WHERE m.msg_hash IN ",
                list(candidates),
            ),
        ]
        found: set[str] = set()
        for sql, values in queries:
            for start in range(0, len(values), 500):
                chunk = values[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for h, source, mid in c.execute(f"{sql}({marks})", chunk):
                    if source == source_id and candidates.get(h) == mid:
                        found.add(mid)
        return found

    def sending(self, events: Iterable[tuple[Any, ...]]) -> list[tuple[int, int]]:
        """A batch's event rows are on their way: into the filter now; returns the
        (hash, seq) pairs to hand to `committed` once their commit is acknowledged."""
        marks = [(event[1], event[0]) for event in events]  # rows.events: (seq, msg_hash, ...)
        add = self.filter.add
        for h, _ in marks:
            add(h)
        return marks

    def committed(self, marks: list[tuple[int, int]]) -> None:
        recent = self.recent
        for h, seq in marks:
            _remember(recent, h, seq)

    def next_index_job(self, next_seq: int) -> IndexJob | None:
        """The next range of a merge to send after a batch (one per batch, so no commit
        carries a whole merge), starting one once enough events are recent; None if none."""
        if self.merging is None:
            if len(self.recent) < self.index_every:
                return None
            self.merging = (self.merged_seq, next_seq - 1, 0)
        after, up_to, part = self.merging
        if part >= INDEX_RANGES:
            return None  # every range is sent; the last one's acknowledgement ends the merge
        low, high = hash_range(part)
        self.merging = (after, up_to, part + 1)
        return (after, up_to, low, high, part == INDEX_RANGES - 1)

    def merged(self, up_to: int) -> None:
        """The last range of a merge is committed: what it covers leaves `recent`."""
        self.recent = {h: s for h, s in self.recent.items() if _latest(s) > up_to}
        self.merged_seq = up_to
        self.merging = None
