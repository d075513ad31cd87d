"""The in-memory filter that spares the SQL probe for messages never seen before."""

from __future__ import annotations

from pathlib import Path

from idstitch.storage.rows import message_hash
from idstitch.storage.seen_filter import SeenFilter
from idstitch.storage.sqlite import SQLiteStore


def test_every_added_hash_is_a_maybe_across_growth() -> None:
    stored = SeenFilter(capacity=1000)
    hashes = [message_hash("web", f"m{i}") for i in range(30_000)]
    for h in hashes:
        stored.add(h)
    assert len(stored) == 30_000
    assert len(stored._layers) == 4  # 1,000 + 4,000 + 16,000 + 64,000 (partly filled)
    assert all(stored.may_contain(h) for h in hashes)


def test_new_hashes_are_mostly_ruled_out() -> None:
    stored = SeenFilter(capacity=1 << 16)
    for i in range(50_000):
        stored.add(message_hash("web", f"m{i}"))
    maybes = sum(stored.may_contain(message_hash("web", f"new{i}")) for i in range(20_000))
    assert maybes < 20_000 * 0.02  # about 0.5 % expected


def test_the_store_rebuilds_it_from_the_events_table(tmp_path: Path) -> None:
    from idstitch.config import settings_from
    from idstitch.engine import Engine

    settings = settings_from({"storage": {"url": f"sqlite:///{tmp_path / 'x.db'}"}})
    with Engine(settings) as engine:
        engine.ingest_batch(
            [
                {"type": "track", "event": "e", "userId": f"u{i}", "messageId": f"m{i}"}
                for i in range(50)
            ],
            source="web",
        )
    store = SQLiteStore(tmp_path / "x.db")
    try:
        assert len(store.messages.filter) == 50
        assert all(
            store.messages.filter.may_contain(message_hash("web", f"m{i}")) for i in range(50)
        )
    finally:
        store.close()
    with Engine(settings) as engine:  # and a restarted engine still drops the duplicates
        again = engine.ingest_batch(
            [{"type": "track", "event": "e", "userId": "u1", "messageId": "m1"}], source="web"
        )
        assert again[0].outcome == "duplicate"
