"""The benchmark stream is deterministic, valid, and holds the cases it promises."""

from __future__ import annotations

import gzip
from pathlib import Path

import msgspec

from benchmarks.workload import JUNK_IDS, generate, write_jsonl
from idstitch.core.messages import prepare


def test_same_seed_same_bytes_and_other_seed_other_bytes() -> None:
    first = generate(2_000, seed=3)
    assert generate(2_000, seed=3).messages == first.messages
    assert generate(2_000, seed=4).messages != first.messages
    assert len(first.messages) == first.stats.events == 2_000


def test_every_message_is_a_valid_segment_message() -> None:
    workload = generate(2_000, seed=5)
    kinds = set()
    for raw in workload.messages:
        assert 300 <= len(raw) <= 1_000
        kinds.add(prepare(raw, received_at=0.0).type)
    assert kinds == {"identify", "track", "page", "screen", "group", "alias"}


def test_stream_holds_junk_ids_kiosks_and_retries() -> None:
    workload = generate(20_000, seed=7)
    decoded = [msgspec.json.decode(raw) for raw in workload.messages]
    anonymous = {m.get("anonymousId") for m in decoded}
    assert anonymous & set(JUNK_IDS)
    assert workload.stats.kiosk_logins > 0 and workload.stats.cross_device_logins > 0
    ids = [m["messageId"] for m in decoded]
    assert len(ids) - len(set(ids)) == workload.stats.retries > 0


def test_write_jsonl_gzip(tmp_path: Path) -> None:
    path = tmp_path / "stream.jsonl.gz"
    stats = write_jsonl(path, 500, seed=1, gzip=True)
    with gzip.open(path, "rb") as fh:
        assert len(fh.read().splitlines()) == stats.events == 500
