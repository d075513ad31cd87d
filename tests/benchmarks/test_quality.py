"""The messy stream is deterministic and holds every hard case; the quality scorer counts
pairs right, on the truth itself, on a hand-made example and against naive union-find."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import pytest

from benchmarks import quality
from benchmarks.messy import (
    NA_ANONYMOUS_ID,
    NULL_USER_ID,
    PLACEHOLDER_EMAILS,
    Ident,
    Stream,
    generate,
    identifiers_of,
    read_stream,
    truth_path,
    write_stream,
)
from benchmarks.quality import Truth, naive_union_find, run_contenders


@pytest.fixture(scope="module")
def stream() -> Stream:
    return generate(1_000, seed=7)


def _seconds(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def test_same_seed_same_stream_and_bytes(tmp_path: Path) -> None:
    first = generate(300, seed=3)
    again = generate(300, seed=3)
    assert again.messages == first.messages and again.received == first.received
    assert again.owners == first.owners and again.links == first.links
    assert generate(300, seed=4).messages != first.messages
    a = write_stream(first, tmp_path / "a.jsonl.gz")
    b = write_stream(again, tmp_path / "b.jsonl.gz")
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()
    assert a == truth_path(tmp_path / "a.jsonl.gz") and a.read_bytes() == b.read_bytes()
    back = read_stream(tmp_path / "a.jsonl.gz")
    assert back.messages == first.messages and back.senders == first.senders
    assert back.owners == first.owners and back.links == first.links


def test_every_hard_case_is_in_the_truth(stream: Stream) -> None:
    shared = {ident for ident, who in stream.owners.items() if len(who) > 1}
    # Placeholders typed by several persons, a kiosk cookie many persons used, a shared or
    # resold phone, and the values a buggy client sends.
    assert {("email", e) for e in PLACEHOLDER_EMAILS} & shared
    assert any(
        t == "anonymous_id" and v != NA_ANONYMOUS_ID and len(stream.owners[t, v]) >= 5
        for t, v in shared
    )
    assert any(t in ("ios.id", "android.id") for t, _ in shared)
    assert {("user_id", NULL_USER_ID), ("anonymous_id", NA_ANONYMOUS_ID)} & shared
    # A user id that changes: a server-side alias between two user ids of one person.
    aliases = [
        (m["previousId"], m["userId"], sender)
        for (source, m), sender in zip(stream.messages, stream.senders, strict=True)
        if m["type"] == "alias" and source == "server"
    ]
    assert aliases
    for old, new, sender in aliases:
        assert stream.owners["user_id", old] == stream.owners["user_id", new] == {sender}
    # Late data: a message that arrives after one whose timestamp is a day later.
    newest = float("-inf")
    late = 0
    for _, m in stream.messages:
        at = _seconds(m["timestamp"])
        late += at < newest - 86_400
        newest = max(newest, at)
    assert late > 0
    # Retries repeat a messageId.
    ids = [m["messageId"] for _, m in stream.messages]
    assert len(ids) > len(set(ids))


def test_heavy_users_log_in_on_six_or_more_browsers_in_a_week(stream: Stream) -> None:
    browsers: dict[str, dict[str, float]] = defaultdict(dict)
    for source, m in stream.messages:
        if source == "web" and m["type"] == "identify" and "userId" in m:
            browsers[m["userId"]].setdefault(m["anonymousId"], _seconds(m["timestamp"]))
    week = 7 * 86_400

    def busiest(times: list[float]) -> int:
        return max(sum(1 for t in times if start <= t < start + week) for start in times)

    assert any(busiest(list(seen.values())) >= 6 for seen in browsers.values())


def test_the_truth_partition_scores_one(stream: Stream) -> None:
    truth = Truth.of(stream)
    exact = {i: min(who) for i, who in stream.owners.items() if len(who) == 1}
    score = truth.score(exact)
    assert (score.precision, score.recall_linkable, score.recall_true) == (1.0, 1.0, 1.0)
    assert score.wrong_merges == 0 and score.correct_pairs == truth.true_pairs > 0
    assert truth.linkable_pairs < truth.true_pairs  # some devices are never linked


def _hand_made() -> Truth:
    owners: dict[Ident, set[int]] = {
        ("user_id", "u1"): {1},
        ("anonymous_id", "a1"): {1},
        ("email", "e1@x.io"): {1},  # never in a message with another id of person 1
        ("user_id", "u2"): {2},
        ("anonymous_id", "a2"): {2},
        ("anonymous_id", "kiosk"): {1, 2},  # shared: in no pair
    }
    links = [
        (("user_id", "u1"), ("anonymous_id", "a1")),
        (("user_id", "u2"), ("anonymous_id", "a2")),
        (("anonymous_id", "kiosk"), ("user_id", "u1")),
        (("anonymous_id", "kiosk"), ("user_id", "u2")),
    ]
    return Truth(owners, links)


def test_pairs_on_a_hand_made_example() -> None:
    truth = _hand_made()
    assert (truth.shared, truth.true_pairs, truth.linkable_pairs) == (1, 4, 2)
    # Everything in one cluster: 10 pairs of single-owner ids, 3 + 1 of them right.
    merged = truth.score(dict.fromkeys(truth.identifiers, "one"))
    assert (merged.predicted_pairs, merged.correct_pairs) == (10, 4)
    assert merged.precision == pytest.approx(4 / 10)
    assert merged.recall_true == merged.recall_linkable == 1.0
    assert (merged.clusters, merged.wrong_merges) == (1, 1)
    # u1, a1 and a2 (with the kiosk) together; e1 and u2 left out: each a cluster of its own.
    partial = truth.score(
        {
            ("user_id", "u1"): "x",
            ("anonymous_id", "a1"): "x",
            ("anonymous_id", "a2"): "x",
            ("anonymous_id", "kiosk"): "x",
        }
    )
    assert (partial.predicted_pairs, partial.correct_pairs, partial.linkable_found) == (3, 1, 1)
    assert partial.precision == pytest.approx(1 / 3)
    assert partial.recall_true == pytest.approx(1 / 4)
    assert partial.recall_linkable == pytest.approx(1 / 2)
    assert (partial.clusters, partial.wrong_merges) == (3, 1)


def test_a_link_between_two_persons_is_refused() -> None:
    owners: dict[Ident, set[int]] = {("user_id", "u1"): {1}, ("user_id", "u2"): {2}}
    with pytest.raises(ValueError, match="two persons"):
        Truth(owners, [(("user_id", "u1"), ("user_id", "u2"))])


def test_naive_union_find_merges_persons_and_finds_every_linkable_pair() -> None:
    small = generate(400, seed=11)
    truth = Truth.of(small)
    score = truth.score(naive_union_find(small.messages))
    assert score.precision < 1.0 and score.wrong_merges > 0
    assert score.recall_linkable == 1.0
    assert set(naive_union_find(small.messages)) == {
        i for _, m in small.messages for i in identifiers_of(m)
    }


def test_engine_contenders_and_one_this_checkout_refuses() -> None:
    small = generate(150, seed=2)
    contenders = [("unknown key", {"identity": {"no_such_key": 1}}), ("default", {})]
    truth, results = run_contenders(small, contenders)
    by_name = {r.name: r for r in results}
    assert list(by_name) == [quality.CEILING, quality.NAIVE, "unknown key", "default"]
    refused = by_name["unknown key"]
    assert refused.score is None and refused.unavailable and "ConfigError" in refused.unavailable
    engine = by_name["default"].score
    assert engine is not None and 0.0 < engine.precision <= 1.0 and engine.recall_true > 0.0
    assert engine.clusters <= len(truth.identifiers)


def test_main_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert quality.main(["--persons", "100", "--seed", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stream"]["persons"] >= 100
    names = [row["name"] for row in out["contenders"]]
    assert names[:2] == [quality.CEILING, quality.NAIVE]
    assert names[2:] == [name for name, _ in quality.CONTENDERS]
