"""The quality benchmark: how well each contender groups identifiers into persons on messy
traffic whose ground truth is known (see benchmarks/messy.py), side by side.

    python -m benchmarks quality [--persons 3000] [--seed 7] [--json]

Contenders:

- naive union-find: joins every pair of identifiers that appear in one message (an alias's
  previousId with its userId included); no rules at all.
- idstitch engines, one per entry of CONTENDERS: a fresh SQLite store, the messages ingested
  in arrival order under their sources, then every identifier of the truth looked up; the
  profile's segment_id is its cluster, and an identifier the engine refused is a cluster of
  its own. A configuration this checkout does not accept is shown as not available.
- evidence ceiling, for reference: the linkable groups themselves (below). Its true recall
  is the most a contender reaches without joining through identifiers that several persons
  share: the other pairs of one person are linked by no message, or only through those.

Scores are pairwise over the identifiers that exactly one person used. Identifiers several
persons used (placeholder e-mails, kiosk cookies, shared and resold phones, "(null)") have no
right answer and are left out of every pair.

- precision: predicted same-cluster pairs whose two identifiers belong to one person, over
  all predicted pairs (1 when nothing is predicted: nothing claimed, nothing wrong);
- recall (true): predicted pairs of one person, over all pairs of one person;
- recall (linkable): predicted pairs that are also linkable, over all linkable pairs. Two
  identifiers of one person are linkable when a chain of messages joins them in which each
  step is two identifiers of that person alone in one message (an alias's previousId and
  userId included).
- wrong-merge clusters: predicted clusters that hold identifiers of two or more persons.

Pairs are counted from contingency tables (n * (n - 1) / 2 per cell), never one by one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from benchmarks.messy import SOURCES, Ident, Link, Stream, generate, identifiers_of
from idstitch.config import settings_from
from idstitch.engine import Engine
from idstitch.errors import ConfigError, ProfileNotFound

# Each is an idstitch config (without storage and sources, which the benchmark sets).
CONTENDERS: Final[list[tuple[str, dict[str, Any]]]] = [
    ("segment preset", {"identity": {"preset": "segment"}}),
    ("idstitch (default)", {}),
]
BATCH: Final = 500  # messages per ingest_batch call at most
NAIVE: Final = "naive union-find"
CEILING: Final = "evidence ceiling"

Partition = Mapping[Ident, Hashable]  # identifier -> its cluster's label


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[Ident, Ident] = {}

    def add(self, x: Ident) -> None:
        self.parent.setdefault(x, x)

    def find(self, x: Ident) -> Ident:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    def union(self, a: Ident, b: Ident) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def _pairs(cells: Counter[Any]) -> int:
    return sum(n * (n - 1) // 2 for n in cells.values())


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 1.0


@dataclass(frozen=True, slots=True)
class Score:
    precision: float
    recall_linkable: float
    recall_true: float
    clusters: int  # over every identifier of the truth
    wrong_merges: int  # clusters holding single-owner identifiers of 2+ persons
    predicted_pairs: int
    correct_pairs: int
    linkable_found: int


class _Alone:
    """The label of an identifier a partition leaves out: equal to nothing else."""


class Truth:
    """The ground truth as the scorer needs it: each single-owner identifier's person and
    linkable group, and the pair counts that do not depend on a contender."""

    def __init__(self, owners: Mapping[Ident, Set[int]], links: Iterable[Link]):
        self.identifiers = list(owners)
        self.person = {i: next(iter(who)) for i, who in owners.items() if len(who) == 1}
        self.shared = len(owners) - len(self.person)
        groups = _UnionFind()
        for ident in self.person:
            groups.add(ident)
        for a, b in links:
            if a in self.person and b in self.person:
                if self.person[a] != self.person[b]:
                    raise ValueError(f"a link joins {a} and {b}, which belong to two persons")
                groups.union(a, b)
        self.group = {i: groups.find(i) for i in self.person}
        self.true_pairs = _pairs(Counter(self.person.values()))
        self.linkable_pairs = _pairs(Counter(self.group.values()))

    @classmethod
    def of(cls, stream: Stream) -> Truth:
        return cls(stream.owners, stream.links)

    def score(self, partition: Partition) -> Score:
        def label(ident: Ident) -> Hashable:
            found = partition.get(ident)
            return _Alone() if found is None else found

        labels = {i: label(i) for i in self.identifiers}
        sizes: Counter[Hashable] = Counter()
        by_person: Counter[tuple[Hashable, int]] = Counter()
        by_group: Counter[tuple[Hashable, Ident]] = Counter()
        for ident, person in self.person.items():
            cluster = labels[ident]
            sizes[cluster] += 1
            by_person[cluster, person] += 1
            by_group[cluster, self.group[ident]] += 1
        predicted = _pairs(sizes)
        correct = _pairs(by_person)
        linkable = _pairs(by_group)
        persons_in = Counter(cluster for cluster, _ in by_person)
        return Score(
            precision=_ratio(correct, predicted),
            recall_linkable=_ratio(linkable, self.linkable_pairs),
            recall_true=_ratio(correct, self.true_pairs),
            clusters=len(set(labels.values())),
            wrong_merges=sum(1 for n in persons_in.values() if n > 1),
            predicted_pairs=predicted,
            correct_pairs=correct,
            linkable_found=linkable,
        )


# ---- contenders -------------------------------------------------------------------------------
def naive_union_find(messages: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[Ident, Ident]:
    """Join every identifier of a message with every other one; no rules."""
    forest = _UnionFind()
    for _, message in messages:
        ids = identifiers_of(message)
        for ident in ids:
            forest.add(ident)
        for other in ids[1:]:
            forest.union(ids[0], other)
    return {i: forest.find(i) for i in forest.parent}


def batches(stream: Stream) -> Iterator[tuple[str, list[dict[str, Any]], float]]:
    """Runs of consecutive messages from one source, at most BATCH long, with the arrival
    time of their last message."""
    messages, received = stream.messages, stream.received
    start = 0
    for end in range(1, len(messages) + 1):
        if end == len(messages) or messages[end][0] != messages[start][0] or end - start == BATCH:
            yield messages[start][0], [m for _, m in messages[start:end]], received[end - 1]
            start = end


def engine_partition(
    stream: Stream, config: Mapping[str, Any], workdir: Path
) -> tuple[dict[Ident, str], float]:
    """Ingest the stream into a fresh engine; each identifier's segment_id, and the seconds
    the ingest took (raises ConfigError for a configuration this checkout does not accept)."""
    data = dict(config)
    data["storage"] = {"url": f"sqlite:///{workdir / 'idstitch.db'}"}
    data["sources"] = [{"id": s, "write_key": f"quality-{s}-write-key"} for s in SOURCES]
    engine = Engine(settings_from(data))
    try:
        started = time.perf_counter()
        for source, batch, received in batches(stream):
            # The arrival time as receive time: the engine sees the stream as it happened.
            engine.ingest_batch(batch, source=source, received_at=received)
        ingest_seconds = time.perf_counter() - started
        partition: dict[Ident, str] = {}
        for type_, value in stream.owners:
            try:
                profile = engine.profile(f"{type_}:{value}")
            except ProfileNotFound:
                continue  # refused by the rules: a cluster of its own
            partition[type_, value] = str(profile["segment_id"])
        return partition, ingest_seconds
    finally:
        engine.close()


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    score: Score | None
    seconds: float  # the whole run: ingest and lookups (median of the rounds)
    unavailable: str | None = None  # why the contender could not run
    ingest_rate: float | None = None  # messages/s of the ingest alone (median of the rounds)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def run_contenders(
    stream: Stream,
    contenders: Sequence[tuple[str, Mapping[str, Any]]] = CONTENDERS,
    rounds: int = 1,
) -> tuple[Truth, list[Result]]:
    """Score every contender. With several `rounds`, the engine contenders run once per
    round, in alternating order, and their times are the medians (the scores do not change:
    the same stream gives the same partition)."""
    truth = Truth.of(stream)
    results = [Result(CEILING, truth.score(truth.group), 0.0)]
    started = time.perf_counter()
    naive = naive_union_find(stream.messages)
    results.append(Result(NAIVE, truth.score(naive), time.perf_counter() - started))
    runs: dict[str, list[tuple[Score, float, float]]] = {name: [] for name, _ in contenders}
    unavailable: dict[str, str] = {}
    for n in range(rounds):
        order = list(contenders) if n % 2 == 0 else list(reversed(contenders))
        for name, config in order:
            if name in unavailable:
                continue
            with tempfile.TemporaryDirectory(prefix="idstitch-quality-") as tmp:
                started = time.perf_counter()
                try:
                    partition, ingest = engine_partition(stream, config, Path(tmp))
                except ConfigError as err:
                    unavailable[name] = _first_line(err)
                    continue
                seconds = time.perf_counter() - started
            runs[name].append((truth.score(partition), seconds, len(stream.messages) / ingest))
    for name, _ in contenders:
        if name in unavailable:
            results.append(Result(name, None, 0.0, unavailable[name]))
            continue
        scores = runs[name]
        results.append(
            Result(
                name,
                scores[0][0],
                statistics.median(r[1] for r in scores),
                ingest_rate=statistics.median(r[2] for r in scores),
            )
        )
    return truth, results


# ---- the report -------------------------------------------------------------------------------
def _stream_summary(stream: Stream, truth: Truth) -> dict[str, Any]:
    return {
        "persons": stream.persons,
        "messages": len(stream.messages),
        "identifiers": len(truth.identifiers),
        "shared_identifiers": truth.shared,
        "single_owner_identifiers": len(truth.person),
        "true_pairs": truth.true_pairs,
        "linkable_pairs": truth.linkable_pairs,
        "cases": dict(stream.counts),
    }


def report(args: argparse.Namespace, stream: Stream, truth: Truth, results: list[Result]) -> None:
    p = print
    p()
    p("idstitch quality benchmark: pairwise precision and recall against the ground truth")
    p(
        f"  command : python -m benchmarks quality --persons {args.persons} --seed {args.seed} "
        f"--rounds {args.rounds}"
    )
    p(f"  stream  : {stream.describe()}")
    p(
        f"  scored  : {len(truth.person):,} identifiers one person used; {truth.shared:,} used "
        f"by several (placeholders, kiosks, shared and resold phones) are left out of all "
        f"pairs; {truth.true_pairs:,} same-person pairs, {truth.linkable_pairs:,} of them "
        "linkable"
    )
    p()
    header = (
        f"{'contender':20s} {'precision':>9s}  {'recall(linkable)':>16s}  {'recall(true)':>12s}"
        f"  {'clusters':>8s}  {'wrong-merge clusters':>20s}  {'seconds':>7s}  {'ingest/s':>9s}"
    )
    p(header)
    p("-" * len(header))
    for r in results:
        if r.score is None:
            p(f"{r.name:20s} not available ({r.unavailable})")
            continue
        s = r.score
        seconds = "-" if r.name == CEILING else f"{r.seconds:.1f}"
        rate = "-" if r.ingest_rate is None else f"{r.ingest_rate:,.0f}"
        p(
            f"{r.name:20s} {s.precision:9.4f}  {s.recall_linkable:16.4f}  {s.recall_true:12.4f}"
            f"  {s.clusters:8,}  {s.wrong_merges:20,}  {seconds:>7s}  {rate:>9s}"
        )
    p("-" * len(header))
    p(
        f"{CEILING}: the linkable groups themselves; true recall above its figure comes only "
        "through identifiers several persons share."
    )


def as_json(stream: Stream, truth: Truth, results: list[Result]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for r in results:
        if r.score is None:
            rows.append({"name": r.name, "available": False, "reason": r.unavailable})
        else:
            rows.append({"name": r.name, "available": True, **asdict(r.score)})
            rows[-1]["seconds"] = round(r.seconds, 3)
            if r.ingest_rate is not None:
                rows[-1]["ingest_per_second"] = round(r.ingest_rate)
    return {"stream": _stream_summary(stream, truth), "contenders": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks quality",
        description=(
            "Pairwise precision and recall of identity resolution on messy traffic with known "
            "ground truth: naive union-find and idstitch configurations side by side."
        ),
    )
    parser.add_argument("--persons", type=int, default=3_000, help="persons (default 3000)")
    parser.add_argument("--seed", type=int, default=7, help="stream seed (default 7)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the engine contenders this many times, alternating; times are medians (1)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if not args.json:
        print(f"generating {args.persons:,} persons' traffic (seed {args.seed}) ...", flush=True)
    stream = generate(args.persons, args.seed)
    truth, results = run_contenders(stream, rounds=args.rounds)
    if args.json:
        json.dump(as_json(stream, truth, results), sys.stdout)
        print()
    else:
        report(args, stream, truth, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
