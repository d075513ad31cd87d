"""Several worker processes, one PostgreSQL database, overlapping identities.

Four real processes, each with its own engine, ingest one shuffled stream (alias chains,
shared kiosk devices, cross-device merges, a few messages sent by two workers at once).
Afterwards every identifier has one owner, no type is over its limit, every segment_id ever
returned still resolves, the order-independent identities match a serial run, and the whole
graph equals a serial replay in the order the database committed (the events' `seq`).
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import random
from typing import Any

import msgspec
import psycopg
import pytest

from idstitch.config import settings_from
from idstitch.storage.postgres import PostgresStore
from tests.storage import concurrency_worker
from tests.storage.streams import Ident, Partition, reference, restrict, story

pytestmark = pytest.mark.postgres

WORKERS = 4
SEED = 20_251_128
CONFIG: dict[str, Any] = {}  # the default identity rules: one user_id per profile, ever


def messages_of(seed: int) -> tuple[list[tuple[float, bytes]], set[Ident]]:
    s = story(seed)
    ids = [msgspec.json.decode(raw)["messageId"] for raw in s.messages]
    return [(s.received[m], raw) for m, raw in zip(ids, s.messages, strict=True)], s.clean


def test_the_story_is_order_sensitive_outside_its_clean_identities() -> None:
    """Without this, the replay comparison below could not tell a wrong order from a right one."""
    messages, clean = messages_of(SEED)
    serial, _ = reference(messages, CONFIG)
    differs = 0
    for attempt in range(5):
        shuffled = random.Random(attempt).sample(messages, len(messages))
        other, _ = reference(shuffled, CONFIG)
        assert restrict(other, clean) == restrict(serial, clean)
        differs += other != serial
    assert differs >= 3


def _database(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        groups: dict[int, set[Ident]] = {}
        for canonical, coll, type_, value in conn.execute(
            "SELECT m.canonical_id, i.collection, i.type, i.value FROM identifiers i "
            "JOIN profiles m ON m.id = i.profile_id"
        ):
            groups.setdefault(canonical, set()).add((coll, type_, value))
        return {
            "partition": {frozenset(g) for g in groups.values()},
            "events": conn.execute(
                "SELECT message_id, received_at, body FROM events ORDER BY seq"
            ).fetchall(),
            "orphans": conn.execute(
                "SELECT count(*) FROM identifiers i LEFT JOIN profiles m ON m.id = i.profile_id "
                "LEFT JOIN profiles c ON c.id = m.canonical_id "
                "WHERE c.id IS NULL OR c.canonical_id <> c.id"
            ).fetchone(),
            "per_type": conn.execute(
                "SELECT m.canonical_id, i.type, count(*) FROM identifiers i "
                "JOIN profiles m ON m.id = i.profile_id GROUP BY 1, 2"
            ).fetchall(),
            "segment_ids": [r[0] for r in conn.execute("SELECT segment_id FROM profiles")],
            "merges": conn.execute("SELECT count(*) FROM merges").fetchone(),
        }


def _run_workers(url: str, shares: list[list[tuple[float, bytes]]]) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(shares))
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=concurrency_worker.run,
            args=(url, CONFIG, share, SEED + i, barrier, out),
            daemon=True,
        )
        for i, share in enumerate(shares)
    ]
    for proc in procs:
        proc.start()
    try:
        reports = [out.get(timeout=90) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    assert [proc.exitcode for proc in procs] == [0] * len(procs)
    return reports


@pytest.mark.slow
def test_workers_sharing_one_database_equal_a_serial_run(postgres_url: str) -> None:
    messages, clean = messages_of(SEED)
    rng = random.Random(SEED)
    order = rng.sample(messages, len(messages))
    shares: list[list[tuple[float, bytes]]] = [[] for _ in range(WORKERS)]
    owner: dict[bytes, int] = {}
    for i, item in enumerate(order):
        shares[i % WORKERS].append(item)
        owner[item[1]] = i % WORKERS
    for item in rng.sample(order, len(order) // 20):  # the same message from a second worker
        shares[(owner[item[1]] + 1) % WORKERS].insert(0, item)
    PostgresStore(postgres_url).close()  # the schema exists before the workers race

    reports = _run_workers(postgres_url, shares)
    db = _database(postgres_url)

    # Stored once each, whichever worker got there first.
    assert len(db["events"]) == len(messages)
    # The writes really interleaved: consecutive events came from different workers.
    by_message = {msgspec.json.decode(raw)["messageId"]: owner[raw] for _, raw in messages}
    workers_in_order = [by_message[m] for m, _, _ in db["events"]]
    switches = sum(a != b for a, b in itertools.pairwise(workers_in_order))
    assert switches >= 4 * WORKERS, "the workers did not run concurrently"
    # Each identifier has one owner, and that owner is a canonical profile.
    assert db["orphans"] == (0,)
    rules = settings_from(CONFIG).rules
    over = [(pid, t, n) for pid, t, n in db["per_type"] if n > rules.limit(t).max]
    assert over == []
    # Every segment_id ever created or returned still resolves to a canonical profile.
    store = PostgresStore(postgres_url)
    try:
        returned = {s for r in reports for s in r["segment_ids"]}
        for sid in set(db["segment_ids"]) | returned:
            found = store.find_by_segment_id(sid)
            assert found is not None, sid
            assert store.find_by_segment_id(found.segment_id) == found
    finally:
        store.close()
    # Identities whose outcome cannot depend on order: as in a serial run of the story.
    serial, _ = reference(messages, CONFIG)
    assert restrict(db["partition"], clean) == restrict(serial, clean)
    # Everything, kiosks included: a serial replay in the order the database committed.
    replayed, merges = reference([(at, bytes(body)) for _, at, body in db["events"]], CONFIG)
    assert db["partition"] == replayed
    assert db["merges"] == (merges,)
    partition: Partition = db["partition"]
    assert sum(len(g) for g in partition) == len({i for g in partition for i in g})
