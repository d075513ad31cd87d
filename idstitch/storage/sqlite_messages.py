"""Which messages the SQLite store holds: "was (source, messageId) stored before?" for every
message, without a SQL lookup per message.

Three places, from newest to oldest (batches still on their way to disk are the store's
in-flight set):
- `recent`: the hash and seq of every event committed past the index's watermark, in memory
  (rebuilt at startup from the log);
- `message_index` in the index database (`sqlite_index`): (hash, seq) of every event up to
  the watermark, built by the indexer in hash order;
- and over all of them a Bloom filter (`SeenFilter`), which rules out almost every new
  message before any of the above is asked.
An event leaves `recent` only once the index's watermark covers it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from typing import Any

from idstitch.storage.seen_filter import SeenFilter


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
    """The store's knowledge of stored message hashes. `sending` runs on the writer;
    `committed` on the acknowledgement thread and `merged` on the housekeeping thread, under
    `_lock`, which keeps an entry added by the one from being lost in the other's copy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.filter = SeenFilter(1)
        self.recent: dict[int, int | list[int]] = {}
        self.merged_seq = 0  # message_index holds every event up to this seq

    def load(self, c: sqlite3.Connection, merged: int) -> None:
        """Rebuild everything from the tables, inside the caller's read transaction, where
        the index (`ix`) holds every event up to `merged`."""
        count = c.execute("SELECT COUNT(*) FROM ix.message_index").fetchone()[0]
        last = c.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
        stored = SeenFilter(max(1 << 20, 2 * (count + last - merged)))
        add = stored.add
        for (h,) in c.execute("SELECT msg_hash FROM ix.message_index"):
            add(h)
        recent: dict[int, int | list[int]] = {}
        for h, seq in c.execute("SELECT msg_hash, seq FROM events WHERE seq > ?", (merged,)):
            add(h)
            _remember(recent, h, seq)
        self.filter, self.recent, self.merged_seq = stored, recent, merged

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
                "SELECT e.msg_hash, e.source_id, e.message_id FROM ix.message_index m "
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
        with self._lock:
            recent = self.recent
            for h, seq in marks:
                _remember(recent, h, seq)

    def merged(self, up_to: int) -> None:
        """The index holds every event up to `up_to`: those leave `recent`."""
        with self._lock:
            if up_to <= self.merged_seq:
                return
            self.recent = {h: s for h, s in self.recent.items() if _latest(s) > up_to}
            self.merged_seq = up_to
