"""The storage contract: what every store (SQLite, PostgreSQL) must read back the same way."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from idstitch import profiles
from idstitch.cli import main as cli
from idstitch.core.messages import parse_time
from idstitch.engine import Engine
from idstitch.errors import InvalidMessage, ProfileNotFound
from idstitch.importer import import_paths
from idstitch.storage import open_store, sqlite_reads
from idstitch.storage.migrations import NAMES
from tests.conftest import MakeEngine
from tests.helpers import at, msg


def _seconds(iso: str) -> float:
    return parse_time(iso, "timestamp")


def _pid(engine: Engine, ref: str) -> int:
    row = engine.store.find_by_identifier("users", *ref.split(":", 1))
    assert row is not None, ref
    return row.pid


def test_a_new_store_applies_every_migration_once(store_url: str) -> None:
    first = open_store(store_url)
    try:
        assert getattr(first, "migrations_applied", None) == NAMES
    finally:
        first.close()
    again = open_store(store_url)
    try:
        assert getattr(again, "migrations_applied", None) == []
        assert again.healthy()
    finally:
        again.close()


def test_migrate_command_prints_the_names_it_applied(store_url: str, tmp_path: Path) -> None:
    config = tmp_path / "idstitch.toml"
    config.write_text(f'[storage]\nurl = "{store_url}"\n')
    runner = CliRunner()
    first = runner.invoke(cli, ["migrate", "--config", str(config)])
    assert first.exit_code == 0, first.output
    assert first.output.strip() == "applied: " + ", ".join(NAMES)
    second = runner.invoke(cli, ["migrate", "--config", str(config)])
    assert second.exit_code == 0, second.output
    assert "up to date" in second.output


def test_events_page_by_time_and_seq_in_both_directions(make_engine: MakeEngine) -> None:
    engine = make_engine()
    for i in range(7):
        engine.ingest(msg("track", event=f"E{i}", anonymousId="a1", timestamp=at(seconds=i % 3)))
    pid = _pid(engine, "anonymous_id:a1")
    store = engine.store
    desc = store.events(pid, sort="desc", limit=100)
    keys = [(e.timestamp, e.seq) for e in desc]
    assert keys == sorted(keys, reverse=True) and len(keys) == 7
    asc = store.events(pid, sort="asc", limit=100)
    assert [e.seq for e in asc] == [e.seq for e in reversed(desc)]
    page1 = store.events(pid, sort="desc", limit=3)
    page2 = store.events(pid, sort="desc", limit=3, after=(page1[-1].timestamp, page1[-1].seq))
    assert [e.seq for e in page1 + page2] == [e.seq for e in desc[:6]]
    window = store.events(pid, start=desc[-1].timestamp + 0.5, end=desc[0].timestamp, limit=100)
    assert {e.timestamp for e in window} == {desc[-1].timestamp + 1}
    assert all(e.segment_id is not None and e.body for e in desc)


@pytest.mark.parametrize("per_query", [200, 2])
def test_events_of_a_merged_profile_page_in_one_order_across_its_members(
    make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch, per_query: int
) -> None:
    # per_query=2: the SQLite store reads a long merge history in parts, merged in order.
    monkeypatch.setattr(sqlite_reads, "MEMBERS_PER_QUERY", per_query)
    engine = make_engine()
    sent: list[tuple[float, int, str]] = []  # (timestamp, arrival, message id)
    for n in range(24):
        member, second = n % 5, (n * 7) % 6  # five profiles, interleaved and repeated times
        mid = f"m{n}"
        engine.ingest(
            msg("track", anonymousId=f"a{member}", messageId=mid, timestamp=at(seconds=second))
        )
        sent.append((second, n, mid))
    for member in range(5):  # one person after all: merge the five into one profile
        engine.ingest(
            msg("identify", userId="u1", anonymousId=f"a{member}", messageId=f"i{member}")
        )
    pid = _pid(engine, "user_id:u1")
    store = engine.store
    newest_first = [mid for _, _, mid in sorted(sent, reverse=True)]
    for sort, expected in (("desc", newest_first), ("asc", newest_first[::-1])):
        seen: list[str] = []
        after = None
        while True:
            page = store.events(pid, sort=sort, limit=4, after=after)
            seen.extend(e.message_id for e in page if e.message_id.startswith("m"))
            if len(page) < 4:
                break
            after = (page[-1].timestamp, page[-1].seq)
        assert seen == expected, sort
    start, end = at(seconds=2), at(seconds=4)
    window = engine.events("user_id:u1", limit=100)  # the Python API: newest first
    assert [e["message_id"] for e in window if e["message_id"].startswith("m")] == newest_first
    lo, hi = (_seconds(start), _seconds(end))
    inside = store.events(pid, start=lo, end=hi, sort="asc", limit=3)
    assert [e.message_id for e in inside] == [
        mid for second, _, mid in sorted(sent) if 2 <= second < 4
    ][:3]
    assert {e.segment_id for e in store.events(pid, limit=100)} == {
        engine.metadata("user_id:u1")["segment_id"]
    }


def test_events_filtered_by_name_in_the_store(make_engine: MakeEngine) -> None:
    engine = make_engine()
    engine.ingest(msg("identify", userId="u1", messageId="i-1"))  # no name
    for i, name in enumerate(["Viewed", "Bought", "Viewed", "Left"]):
        engine.ingest(msg("track", userId="u1", event=name, messageId=f"t-{i}"))
    engine.ingest(msg("page", userId="u1", name="Home", messageId="p-1"))
    store = engine.store
    found = store.find_by_identifier("users", "user_id", "u1")
    assert found is not None
    pid = found.pid

    def ids(**filters: frozenset[str]) -> list[str]:
        return [e.message_id for e in store.events(pid, sort="asc", limit=100, **filters)]

    assert ids(names=frozenset({"Viewed", "Home"})) == ["t-0", "t-2", "p-1"]
    assert ids(excluded=frozenset({"Viewed"})) == ["i-1", "t-1", "t-3", "p-1"]
    assert ids(names=frozenset({"Viewed"}), excluded=frozenset({"Viewed"})) == []
    many = frozenset(f"n{i}" for i in range(40_000)) | {"Left"}  # past any variable cap
    assert ids(names=many) == ["t-3"]
    page = store.events(pid, sort="asc", limit=1, names=frozenset({"Viewed"}))
    after = (page[0].timestamp, page[0].seq)
    rest = store.events(pid, sort="asc", after=after, limit=5, names=frozenset({"Viewed"}))
    assert [e.message_id for e in rest] == ["t-2"]


def test_latest_arrival_is_the_event_stored_last_on_both_sides(make_engine: MakeEngine) -> None:
    engine = make_engine()
    store = engine.store
    engine.ingest(msg("group", userId="u1", groupId="g1", messageId="g-new", timestamp=at(9)))
    engine.ingest(msg("group", userId="u1", groupId="g1", messageId="g-old", timestamp=at(1)))
    engine.ingest(msg("track", userId="u1", event="E", messageId="t-last", timestamp=at(5)))
    user = store.find_by_identifier("users", "user_id", "u1")
    account = store.find_by_identifier("accounts", "group_id", "g1")
    assert user is not None and account is not None
    last_user, last_account = store.latest_arrival(user.pid), store.latest_arrival(account.pid)
    assert last_user is not None and last_user.message_id == "t-last"
    assert last_account is not None and last_account.message_id == "g-old"
    assert last_account.segment_id == account.segment_id
    engine.ingest(msg("identify", anonymousId="lonely", messageId="i-1"))
    lonely = store.find_by_identifier("users", "anonymous_id", "lonely")
    assert lonely is not None
    assert store.latest_arrival(lonely.pid) is not None
    assert store.latest_arrival(10**9) is None


def test_traits_keep_the_newest_value_across_a_merge(make_engine: MakeEngine) -> None:
    engine = make_engine()
    engine.ingest(
        msg(
            "identify", anonymousId="a1", traits={"plan": "pro", "age": 30}, timestamp=at(seconds=5)
        )
    )
    engine.ingest(
        msg(
            "identify",
            anonymousId="a2",
            traits={"plan": "free", "city": "Oslo"},
            timestamp=at(seconds=1),
        )
    )
    engine.ingest(msg("identify", anonymousId="a2", traits={"age": None}, timestamp=at(seconds=9)))
    merged = engine.ingest(
        msg(
            "track",
            event="Join",
            userId="u1",
            anonymousId="a1",
            context={"traits": {"email": "x@example.com"}},
        )
    )
    assert merged.outcome in ("attached", "merged")
    engine.ingest(msg("alias", previousId="a2", userId="u1"))
    pid = _pid(engine, "user_id:u1")
    assert pid == _pid(engine, "anonymous_id:a2")
    traits = {t.key: t.value for t in engine.store.traits(pid)}
    assert traits == {"plan": "pro", "city": "Oslo"}  # age: removed by the newer null


def test_links_page_by_position_with_a_limit(make_engine: MakeEngine) -> None:
    engine = make_engine()
    for i in range(7):
        engine.ingest(msg("group", groupId="g1", userId=f"u{i}"))
    engine.ingest(msg("track", event="x", userId="u2", anonymousId="a-u2"))  # not a new link
    store = engine.store
    found = store.find_by_identifier("accounts", "group_id", "g1")
    assert found is not None
    account = found.pid
    everyone = store.links(account)
    assert len(everyone) == 7
    assert [link.position for link in everyone] == sorted({p.position for p in everyone})
    seen = []
    after = None
    while True:
        page = store.links(account, after=after, limit=3)
        assert len(page) <= 3
        seen.extend(page)
        if len(page) < 3:
            break
        after = page[-1].position
    assert seen == everyone  # nothing skipped, nothing repeated
    assert store.links(account, limit=0) == []


def test_a_link_merged_between_pages_is_neither_skipped_nor_repeated(
    make_engine: MakeEngine,
) -> None:
    """A linked profile merged into an older one keeps the later of the two positions."""
    engine = make_engine({"identity": {"custom_types": ["domain"]}})
    engine.ingest(msg("group", userId="other", groupId="L0", traits={"domain": "d.com"}))
    for group in ("L1", "L2", "L3"):
        engine.ingest(msg("group", userId="linker", groupId=group))
    store = engine.store
    user = store.find_by_identifier("users", "user_id", "linker")
    assert user is not None
    [first] = store.links(user.pid, limit=1)
    engine.ingest(msg("group", userId="linker", groupId="L3", traits={"domain": "d.com"}))
    rest = store.links(user.pid, after=first.position)
    l0 = engine.profile("group_id:L0")["segment_id"]
    assert engine.profile("group_id:L3")["segment_id"] == l0  # merged into the older L0
    shown = [first.profile.segment_id] + [link.profile.segment_id for link in rest]
    assert sorted(shown) == sorted(
        engine.profile(f"group_id:{g}")["segment_id"] for g in ("L0", "L1", "L2")
    )
    # Both sides of a merge already shown: the merged profile does not come again.
    engine.ingest(msg("group", userId="linker", groupId="L1", traits={"domain": "d.com"}))
    assert store.links(user.pid, after=rest[-1].position) == []


def test_links_and_merges_follow_the_canonical_profile(make_engine: MakeEngine) -> None:
    engine = make_engine()
    first = engine.ingest(msg("track", event="A", anonymousId="a1"))
    engine.ingest(msg("group", groupId="g1", anonymousId="a2", traits={"name": "Acme"}))
    joined = engine.ingest(
        msg(
            "identify",
            userId="u1",
            anonymousId="a1",
            context={"traits": {"email": "j@example.com"}},
        )
    )
    merged = engine.ingest(msg("track", event="B", userId="u1", anonymousId="a2"))
    assert merged.outcome == "merged" and joined.segment_id == first.segment_id
    store = engine.store
    user = store.find_by_segment_id(merged.merged[0])
    assert user is not None and user.segment_id == first.segment_id
    [link] = store.links(user.pid)
    account = link.profile
    assert account.collection == "accounts"
    assert [u.profile.pid for u in store.links(account.pid)] == [user.pid]
    [row] = store.merges(user.pid)
    assert (row.from_segment_id, row.into_segment_id) == (merged.merged[0], first.segment_id)
    ids = {(e.type, e.id) for e in store.external_ids(user.pid)}
    assert ids == {
        ("anonymous_id", "a1"),
        ("anonymous_id", "a2"),
        ("user_id", "u1"),
        ("email", "j@example.com"),
    }


def test_violations_stats_and_import_offsets(make_engine: MakeEngine) -> None:
    engine = make_engine()
    engine.ingest(msg("identify", userId="u1", traits={"email": "e@example.com"}))
    engine.ingest(msg("identify", userId="u2", traits={"email": "e@example.com"}))
    engine.ingest(msg("track", event="X", userId="null", anonymousId="undefined"))
    store = engine.store
    rules = [v.rule for v in store.violations()]
    assert rules[0] == "blocked_value" and "limit_exceeded" in rules
    stats = store.stats()
    assert (stats.profiles, stats.identifiers, stats.events, stats.merges) == (2, 3, 3, 0)
    assert stats.violations == len(rules)
    assert store.import_offset("f.jsonl") == 0
    store.set_import_offset("f.jsonl", 123)
    store.set_import_offset("f.jsonl", 456)
    assert store.import_offset("f.jsonl") == 456


def test_nul_characters_are_refused_where_stores_would_differ(make_engine: MakeEngine) -> None:
    # PostgreSQL text cannot hold NUL: a store that replaced it would join "x\0" and
    # "x\ufffd" (two people) or drop the second message as a duplicate of the first.
    engine = make_engine()
    results = engine.ingest_batch(
        [
            msg("identify", userId="u\x00nul", anonymousId="a-nul", traits={"k": "v\x00"}),
            msg("identify", userId="u\ufffdnul", anonymousId="a-fffd"),
            msg("track", event="ok", anonymousId="plain"),
        ]
    )
    assert [r.outcome for r in results] == ["created", "created", "created"]
    assert [(v.type, v.rule) for v in results[0].violations] == [("user_id", "invalid_value")]
    assert (
        engine.profile("anonymous_id:a-nul")["segment_id"]
        != (engine.profile("user_id:u\ufffdnul")["segment_id"])
    )
    for ref in ("user_id:u\x00nul", "user_id:u\x00"):  # no store finds it by a stand-in
        with pytest.raises(ProfileNotFound):
            engine.profile(ref)
    with pytest.raises(InvalidMessage, match="NUL") as refused:
        engine.ingest_batch(
            [
                msg("track", event="E", anonymousId="x"),
                msg("track", event="E", anonymousId="x", messageId="m\x00one"),
            ]
        )
    assert refused.value.index == 1
    # SPEC 1 bounds values in characters: 1,000 of them may take 4,000 bytes, more than a
    # PostgreSQL B-tree entry holds, and every store keeps them.
    long = "\U0001f600" * 1000
    result = engine.ingest(msg("identify", userId=long, anonymousId="a-long"))
    assert (result.outcome, result.violations) == ("created", ())
    other = engine.ingest(msg("identify", userId=long[:-1] + "\U0001f601", anonymousId="b"))
    assert (other.outcome, other.violations) == ("created", ())
    assert engine.profile("user_id:" + long)["segment_id"] == result.segment_id
    again = engine.ingest(msg("track", event="E", userId=long, anonymousId="a-long-2"))
    assert (again.outcome, again.segment_id) == ("attached", result.segment_id)
    longer = engine.ingest(msg("identify", userId=long + "x", anonymousId="c"))
    assert [(v.type, v.rule) for v in longer.violations] == [("user_id", "value_too_long")]
    wide = engine.ingest(
        msg(
            "track",
            event="E",
            anonymousId="a-type",
            context={"externalIds": [{"id": "1", "type": "t" * 101, "collection": "users"}]},
        )
    )
    assert [v.rule for v in wide.violations] == ["invalid_type"]


def test_nul_in_names_and_references_reads_the_same_on_every_store(
    make_engine: MakeEngine,
) -> None:
    engine = make_engine()
    # A trait key with NUL has no stand-in that could not be another key.
    with pytest.raises(InvalidMessage, match="NUL") as refused:
        engine.ingest(msg("identify", userId="u1", traits={"a\x00": 1, "a\ufffd": 2}))
    assert refused.value.code == "invalid_trait_key"
    engine.ingest(msg("identify", userId="u1", traits={"a\ufffd": 2, "v": "x\x00y"}))
    assert engine.traits("user_id:u1") == {"a\ufffd": 2, "v": "x\x00y"}  # values are JSON
    # Text columns keep a NUL as U+FFFD on every store; the body keeps the message as sent.
    engine.ingest(msg("track", event="Ord\x00er", userId="u1", messageId="m-nul"))
    (stored,) = [e for e in engine.events("user_id:u1") if e.get("message_id") == "m-nul"]
    assert stored["event"] == "Ord\ufffder"
    pid = profiles.find(engine.store, "user_id:u1").pid
    for asked in ("Ord\x00er", "Ord\ufffder"):
        found = engine.store.events(pid, names=frozenset([asked]))
        assert [e.message_id for e in found] == ["m-nul"]
        left = engine.store.events(pid, excluded=frozenset([asked]))
        assert "m-nul" not in [e.message_id for e in left]
    long = engine.ingest(msg("track", event="E", userId="\x00" + "x" * 1001, anonymousId="a"))
    assert [v.rule for v in long.violations] == ["value_too_long"]
    assert all("\x00" not in v.value for v in engine.store.violations())
    # References no identifier can hold find nothing, on every store, without an error.
    for ref in ("user\x00_id:u1", "group\x00_id:g", "user_id:\ud800", "use_\x00"):
        with pytest.raises(ProfileNotFound):
            engine.profile(ref)


def test_traits_page_across_members_removals_and_key_filters(make_engine: MakeEngine) -> None:
    # Three profiles merged into one, each holding some of the keys; newer values, removals
    # (null) and keys only one member has interleave in key order.
    engine = make_engine()
    keys = [f"k{n:03d}" for n in range(150)] + ["Z", "a", "é", "\U0001f600", "k"]
    for member in range(3):
        traits: dict[str, object] = {}
        for n, key in enumerate(keys):
            if (n + member) % 3:
                traits[key] = None if (n * 7 + member) % 11 == 0 else f"{key}-{member}"
        engine.ingest(
            msg("identify", anonymousId=f"a{member}", traits=traits, timestamp=at(seconds=member))
        )
    engine.ingest(msg("identify", anonymousId="a0", userId="u"))
    engine.ingest(msg("track", event="E", anonymousId="a1", userId="u"))
    engine.ingest(msg("track", event="E", anonymousId="a2", userId="u"))
    pid = profiles.find(engine.store, "user_id:u").pid
    assert len({m.from_segment_id for m in engine.store.merges(pid)}) >= 2
    everything = engine.store.traits(pid)
    assert [t.key for t in everything] == sorted(t.key for t in everything)
    assert 50 < len(everything) < len(keys)
    for limit in (1, 2, 7, 63, 64, 65, 200):
        paged, start = [], ""
        while True:
            page = engine.store.traits(pid, start=start, limit=limit + 1)
            paged += page[:limit]
            if len(page) <= limit:
                break
            start = page[limit].key
        assert paged == everything, limit
    wanted = frozenset(["a", "k001", "k002", "k149", "nope", "\U0001f600"])
    assert engine.store.traits(pid, keys=wanted) == [t for t in everything if t.key in wanted]
    assert (
        engine.store.traits(pid, keys=wanted, start="k002", limit=2)
        == [t for t in everything if t.key in wanted and t.key >= "k002"][:2]
    )
    assert engine.store.traits(pid, start="\x00") == everything  # a crafted cursor reads all


def test_import_resumes_files_with_long_or_non_utf8_paths(
    make_engine: MakeEngine, tmp_path: Path
) -> None:
    # Positions are kept under the file's path: one of 2,800 bytes is past what PostgreSQL
    # indexes, and a name that is not UTF-8 is not text either store keeps.
    deep = tmp_path.joinpath(*["d" * 200] * 14)
    deep.mkdir(parents=True)
    odd = Path(os.fsdecode(bytes(tmp_path / "odd") + b"\xff.jsonl"))
    for n, path in enumerate((deep / "f.jsonl", odd)):
        path.write_text(json.dumps(msg("track", event="E", userId=f"u{n}")) + "\n")
    engine = make_engine()
    first = import_paths(engine, [tmp_path])
    assert (first.files, first.events, first.damaged) == (2, 2, [])
    again = import_paths(engine, [tmp_path])
    sizes = sum(len(p.read_bytes()) for p in (deep / "f.jsonl", odd))
    assert (again.events, again.duplicates, again.skipped_bytes) == (0, 0, sizes)


def test_a_read_by_a_profile_merged_away_meanwhile_still_finds_its_data(
    make_engine: MakeEngine,
) -> None:
    # The Profile API finds a profile, then reads it: a merge committed in between (by
    # another worker on PostgreSQL) must not make the read come back empty.
    engine = make_engine()
    engine.ingest(msg("identify", userId="u1", traits={"plan": "pro"}, timestamp=at(seconds=1)))
    engine.ingest(msg("identify", anonymousId="a1", traits={"seen": 1}, timestamp=at(seconds=2)))
    found = engine.store.find_by_identifier("users", "anonymous_id", "a1")
    assert found is not None
    engine.ingest(msg("identify", userId="u1", anonymousId="a1", timestamp=at(seconds=3)))
    store = engine.store
    assert {t.key for t in store.traits(found.pid)} == {"plan", "seen"}
    assert {e.type for e in store.external_ids(found.pid)} == {"user_id", "anonymous_id"}
    assert len(store.events(found.pid, limit=100)) == 3
