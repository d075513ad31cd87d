"""`idstitch export` on every store: the Profiles Sync tables load into DuckDB and say what
the store says (the Profile API's identifiers and traits, where each segment_id resolves),
repairs show as REMOVED rows, and runs with --since add up to one full export."""

from __future__ import annotations

import atexit
import gc
import itertools
import json
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner

from benchmarks.messy import generate
from idstitch import export
from idstitch.cli import main as cli
from idstitch.config import settings_from
from idstitch.engine import Engine
from idstitch.storage import open_store
from idstitch.storage.sqlite_index import catch_up, index_path
from tests.conftest import MakeEngine

# DuckDB reports its objects as leaked when the process ends with them frozen out of the
# collector's reach, as an in-process `idstitch import` (Engine(tune_gc=True)) leaves them.
atexit.register(gc.unfreeze)

READERS = {"parquet": "read_parquet", "csv": "read_csv", "jsonl": "read_json"}
APPEND_ONLY = [t.name for t in export.TABLES if t.append_only]
MATERIALIZED = [t.name for t in export.TABLES if not t.append_only]
RECEIVED = 1_800_000_000.0


def _send(engine: Engine, messages: list[tuple[str, dict[str, Any]]], start: int = 0) -> None:
    """In order, a batch per run of one source's messages (a commit each, not one a message)."""
    n = start
    for source, run in itertools.groupby(messages, key=lambda sent: sent[0]):
        batch = [message for _, message in run]
        engine.ingest_batch(batch, source=source, received_at=RECEIVED + n)
        n += len(batch)


def _history() -> list[tuple[str, dict[str, Any]]]:
    """Messy traffic of 15 persons (anonymous visits joined by sign-ups and logins); three
    visits of dora's merged in a chain (c into b, then b into a: c points on to a); a user
    whose traits change and lose one; and a kiosk's cookie that joins two users."""
    sent = list(generate(persons=15, seed=5).messages)
    sent += [("web", {"type": "page", "anonymousId": f"dora-{v}", "messageId": f"d{v}"})
             for v in "abc"]  # fmt: skip
    sent += [
        ("web", {"type": "identify", "userId": "dora", "anonymousId": f"dora-{v}",
                 "messageId": f"d{v}2"})
        for v in "bca"
    ]  # fmt: skip
    sent += [
        ("web", {"type": "identify", "userId": "ann", "anonymousId": "kiosk", "messageId": "a1",
                 "traits": {"plan": "free", "tags": ["x"], "age": 30}}),
        ("web", {"type": "identify", "userId": "ann", "messageId": "a2",
                 "traits": {"plan": "pro", "age": None, "email": "ann@example.com"}}),
        ("web", {"type": "page", "anonymousId": "kiosk", "messageId": "a3",
                 "context": {"traits": {"email": "bob@example.com"}}}),
    ]  # fmt: skip
    return sent


TYPES = {"text": "VARCHAR", "int": "BIGINT", "time": "TIMESTAMPTZ", "json": "JSON"}


def _load(directory: Path, fmt: str) -> duckdb.DuckDBPyConnection:
    """Every table of the export at `directory` as a DuckDB view of the same name (JSON
    lines with their columns' types: guessed, a JSON object would be a STRUCT)."""
    con = duckdb.connect()
    for table in export.TABLES:
        path = str(directory / f"{table.name}.{fmt}").replace("'", "''")
        typed = ", ".join(f"'{n}': '{TYPES[k]}'" for n, k in table.columns)
        options = f", columns = {{{typed}}}" if fmt == "jsonl" else ""
        con.execute(f"CREATE VIEW {table.name} AS SELECT * FROM {READERS[fmt]}('{path}'{options})")
    return con


def _rows(con: duckdb.DuckDBPyConnection, table: str, columns: str = "*") -> list[Any]:
    return con.execute(f"SELECT {columns} FROM {table}").fetchall()


def _partition(engine: Engine) -> dict[tuple[str, str], str]:
    return {(t, v): s for c, t, v, s in engine.store.partition() if c == "users"}


def test_the_tables_load_into_duckdb_and_say_what_the_store_says(
    make_engine: MakeEngine, tmp_path: Path
) -> None:
    engine = make_engine()
    _send(engine, _history())
    answer = export.export(engine.store, tmp_path / "out")
    con = _load(tmp_path / "out", "parquet")
    for name, table in answer["tables"].items():
        assert table["rows"] == _rows(con, name, "count(*)")[0][0], name
    # user_identifiers: the partition of the store, and what the Profile API answers.
    held = _rows(con, "user_identifiers", "canonical_segment_id, type, value")
    assert {(t, v): s for s, t, v in held} == _partition(engine)
    assert len(held) == len({(t, v) for _, t, v in held})
    by_profile: dict[str, set[tuple[str, str]]] = {}
    for segment_id, type_, value in held:
        by_profile.setdefault(segment_id, set()).add((type_, value))
    assert len(by_profile) > 10
    for segment_id, ids in sorted(by_profile.items())[::3]:
        assert {(e["type"], e["id"]) for e in engine.external_ids(segment_id)} == ids
    # user_traits: the newest value of each trait, as the Profile API gives them.
    traits: dict[str, dict[str, Any]] = {}
    for segment_id, name, value in _rows(con, "user_traits", "canonical_segment_id, name, value"):
        traits.setdefault(segment_id, {})[name] = json.loads(value)
    ann = engine.profile("user_id:ann")["segment_id"]
    assert traits[ann] == engine.traits("user_id:ann") == {
        "plan": "pro", "tags": ["x"], "email": "ann@example.com"
    }  # fmt: skip
    assert set(traits) <= set(by_profile)
    assert all(traits.get(s, {}) == engine.traits(s) for s in by_profile)
    # profile_traits_updates: one row per identify that set traits, the traits as JSON.
    updates = _rows(con, "profile_traits_updates", "segment_id, triggering_event_id, traits")
    assert (ann, "a2", {"plan": "pro", "age": None, "email": "ann@example.com"}) in [
        (s, m, json.loads(t)) for s, m, t in updates
    ]
    # Each change at the seq of its message, up to the run's last seq.
    for name in APPEND_ONLY:
        seqs = [s for (s,) in _rows(con, name, "seq")]
        assert seqs == sorted(seqs) and seqs[0] > 0 and seqs[-1] <= answer["last_seq"], name


def _same_rows(con: duckdb.DuckDBPyConnection, table: export.Table) -> Counter[tuple[Any, ...]]:
    """A table's rows but their load time, as text and times in milliseconds: the formats
    hold times to the millisecond (Parquet to the microsecond)."""
    columns = ", ".join(
        f'epoch_us("{n}") // 1000' if k == "time" else f'"{n}"::VARCHAR'
        for n, k in table.columns
        if n != "uuid_ts"
    )
    return Counter(_rows(con, table.name, columns))


def test_the_three_formats_hold_the_same_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'data.db'}"
    with Engine(settings_from({"storage": {"url": url}, "identity": {"preset": "segment"}})) as e:
        _send(e, _history())
        e.delete_identifier("user_id:ann", "email", "ann@example.com")
        e.ingest({"type": "track", "event": "Later", "userId": "ann", "messageId": "a4"})
        answers = {fmt: export.export(e.store, tmp_path / fmt, fmt) for fmt in export.FORMATS}
    loaded = {fmt: _load(tmp_path / fmt, fmt) for fmt in export.FORMATS}
    for table in export.TABLES:
        rows = {fmt: _same_rows(con, table) for fmt, con in loaded.items()}
        assert rows["csv"] == rows["jsonl"] == rows["parquet"], table.name
        assert sum(rows["csv"].values()) == answers["csv"]["tables"][table.name]["rows"] > 0


def test_id_graph_updates_folded_name_where_every_segment_id_resolves(
    make_engine: MakeEngine, tmp_path: Path
) -> None:
    engine = make_engine()
    _send(engine, _history())
    # Junk for ann's profile: the unmerge splits it and rewrites its history.
    engine.unmerge("user_id:ann", "anonymous_id:kiosk")
    # The unmerge is placed after the last message stored before it: an export that ends
    # there leaves its REMOVED row for the next one, which reaches the message after it.
    waiting = export.export(engine.store, tmp_path / "before", "jsonl")
    assert waiting["repairs_waiting"] == 1
    engine.ingest({"type": "identify", "userId": "eve", "messageId": "after-unmerge"})
    answer = export.export(engine.store, tmp_path, "parquet")
    assert answer["repairs_waiting"] == 0
    con = _load(tmp_path, "parquet")
    latest: dict[str, str] = {}
    for segment_id, canonical in _rows(
        con,
        "id_graph_updates ORDER BY seq, segment_id <> canonical_segment_id",
        "segment_id, canonical_segment_id",
    ):
        latest[segment_id] = canonical
    assert len({s for s, c in latest.items() if s != c}) >= 3
    # dora's chain: c's latest row is the one b's merge into a wrote for it.
    made = dict(
        _rows(con, "id_graph_updates WHERE segment_id = canonical_segment_id",
              "triggering_event_id, segment_id")
    )  # fmt: skip
    a, b, c = (made[f"d{v}"] for v in "abc")
    assert [latest[a], latest[b], latest[c]] == [a, a, a]
    assert engine.profile("user_id:dora")["segment_id"] == a
    for segment_id, canonical in latest.items():
        assert engine.profile(segment_id)["segment_id"] == canonical, segment_id
    assert dict(_rows(con, "profile_merges", "segment_id, canonical_segment_id")) == latest
    # Every profile holding an identifier is there.
    assert set(_partition(engine).values()) <= set(latest.values())
    # The kiosk's cookie left ann's profile: REMOVED, and held by no one.
    removed = _rows(
        con,
        "external_id_mapping_updates WHERE __operation = 'REMOVED'",
        "external_id_type, external_id_value, triggering_event_type, seq",
    )
    assert removed == [("anonymous_id", "kiosk", "unmerge", answer["last_seq"])]
    assert ("anonymous_id", "kiosk") not in _partition(engine)
    assert answer["rewrites"] == 1


def test_a_deleted_identifier_is_removed_once_a_later_message_places_it(
    make_engine: MakeEngine, tmp_path: Path
) -> None:
    engine = make_engine()
    _send(engine, _history())
    engine.delete_identifier("user_id:ann", "email", "ann@example.com")
    before = export.export(engine.store, tmp_path / "before", "jsonl")
    engine.ingest({"type": "track", "event": "Later", "userId": "ann", "messageId": "a4"})
    after = export.export(engine.store, tmp_path / "after", "jsonl", since=before["last_seq"])
    # No message was stored after the deletion: the first run cannot place it yet.
    assert before["repairs_waiting"] == 1 and after["repairs_waiting"] == 0
    first, second = _load(tmp_path / "before", "jsonl"), _load(tmp_path / "after", "jsonl")
    mapping = "external_id_mapping_updates WHERE external_id_value = 'ann@example.com'"
    columns = "__operation, segment_id, seq, triggering_event_type"
    ann = engine.profile("user_id:ann")["segment_id"]
    assert _rows(first, mapping, columns) == []  # deleted before the first run: not CREATED
    assert _rows(second, mapping, columns) == [
        ("REMOVED", ann, before["last_seq"] + 1, "delete_identifier")
    ]
    for con in (first, second):
        assert _rows(con, "user_identifiers WHERE value = 'ann@example.com'", "type") == []
        assert _rows(con, f"user_identifiers WHERE canonical_segment_id = '{ann}'", "value")


def _table(con: duckdb.DuckDBPyConnection, name: str) -> Counter[tuple[Any, ...]]:
    """A table's rows but their load time (uuid_ts), as text (a time with its zone needs
    pytz in Python), counted."""
    return Counter(_rows(con, name, "COLUMNS(* EXCLUDE (uuid_ts))::VARCHAR"))


def test_runs_since_the_last_seq_add_up_to_one_full_export(
    make_engine: MakeEngine, tmp_path: Path
) -> None:
    engine = make_engine()
    sent = _history()
    _send(engine, sent[:60])
    first = export.export(engine.store, tmp_path / "1", "parquet")
    _send(engine, sent[60:], start=60)
    second = export.export(engine.store, tmp_path / "2", "parquet", since=first["last_seq"])
    whole = export.export(engine.store, tmp_path / "all", "parquet")
    assert second["since"] == first["last_seq"] < second["last_seq"] == whole["last_seq"]
    one, two, full = (_load(tmp_path / d, "parquet") for d in ("1", "2", "all"))
    for name in APPEND_ONLY:
        assert _rows(two, f"{name} WHERE seq <= {first['last_seq']}", "seq") == [], name
        assert _table(one, name) + _table(two, name) == _table(full, name), name
        assert second["tables"][name]["rows"] > 0, name  # the second run has changes of each
    for name in MATERIALIZED:  # the state now, whole at every run
        assert _table(two, name) == _table(full, name), name


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config of a SQLite store holding the history, shared by the CLI tests."""
    folder = tmp_path_factory.mktemp("stored")
    url = f"sqlite:///{folder / 'data.db'}"
    config = folder / "idstitch.toml"
    config.write_text(f'[storage]\nurl = "{url}"\n[identity]\npreset = "segment"\n')
    with Engine(settings_from({"storage": {"url": url}, "identity": {"preset": "segment"}})) as e:
        _send(e, _history())
    return config


@pytest.fixture
def store_file(stored: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The shared store's config and a folder of the test's own for the files."""
    return stored, tmp_path


def test_the_cli_exports_beside_a_running_writer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'data.db'}"
    config = tmp_path / "idstitch.toml"
    config.write_text(f'[storage]\nurl = "{url}"\n[identity]\npreset = "segment"\n')
    runner = CliRunner()
    # The writer holds the store (as `idstitch serve` does): the export only reads.
    with Engine(settings_from({"storage": {"url": url}, "identity": {"preset": "segment"}})) as e:
        e.ingest({"type": "identify", "userId": "cy", "messageId": "c1", "traits": {"a": 1}})
        last = e.store.last_seq()
        shown = runner.invoke(cli, ["export", str(tmp_path / "out"), "--config", str(config)])
        again = runner.invoke(
            cli,
            ["export", str(tmp_path / "more"), "--config", str(config), "--since", str(last),
             "--format", "csv", "--json"],
        )  # fmt: skip
    assert shown.exit_code == 0, shown.output
    assert f"every change up to seq {last:,}" in shown.stdout
    assert "id_graph_updates.parquet" in shown.stdout and f"--since {last}" in shown.stdout
    manifest = json.loads((tmp_path / "out" / export.MANIFEST).read_text())
    assert manifest["last_seq"] == last and manifest["format"] == "parquet"
    con = _load(tmp_path / "out", "parquet")
    assert _rows(con, "user_traits WHERE name = 'a'", "value") == [("1",)]
    assert again.exit_code == 0, again.output
    answer = json.loads(again.stdout)
    assert answer["since"] == last and answer["format"] == "csv"
    assert all(answer["tables"][name]["rows"] == 0 for name in APPEND_ONLY)
    assert answer["tables"]["user_identifiers"]["rows"] == manifest["tables"][
        "user_identifiers"]["rows"]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--since", "-1"], ["--since '-1'", "whole number"]),
        (["--since", "abc"], ["--since 'abc'", "last_seq"]),
        (["--since", "10000000"], ["past the last message stored", "seq"]),
        (["--format", "xml"], ["'xml'", "parquet, csv, jsonl"]),
        (["--dir-is-a-file"], ["is not a directory"]),
    ],
)
def test_the_cli_refuses_bad_input_with_exit_2(
    store_file: tuple[Path, Path], args: list[str], words: list[str]
) -> None:
    config, tmp_path = store_file
    target = tmp_path / "out"
    if args == ["--dir-is-a-file"]:
        target.write_text("not a directory")
        args = []
    result = CliRunner().invoke(cli, ["export", str(target), "--config", str(config), *args])
    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr and "Traceback" not in result.output
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    assert not (target.is_dir() and any(target.iterdir()))


def test_parquet_without_duckdb_names_the_extra(
    store_file: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, tmp_path = store_file
    monkeypatch.setitem(sys.modules, "duckdb", None)  # `import duckdb` fails
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "out"), "--config", str(config)])
    assert result.exit_code == 2 and "pip install 'idstitch[export]'" in result.stderr
    assert "--format csv" in result.stderr and not (tmp_path / "out").exists()
    jsonl = CliRunner().invoke(
        cli, ["export", str(tmp_path / "out"), "--config", str(config), "--format", "jsonl"]
    )
    assert jsonl.exit_code == 0, jsonl.output


def test_the_cli_without_a_store_exits_1(tmp_path: Path) -> None:
    config = tmp_path / "idstitch.toml"
    config.write_text(f'[storage]\nurl = "sqlite:///{tmp_path / "none.db"}"\n')
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "out"), "--config", str(config)])
    assert result.exit_code == 1 and "no idstitch store" in result.stderr


def test_a_sqlite_store_without_its_index_exports_the_same_rows(
    stored: Path, tmp_path: Path
) -> None:
    """Everything past the index's watermark is read from the log (here: all of it)."""
    indexed = stored.parent / "data.db"
    catch_up(indexed, index_path(indexed))  # the index holds every message
    (tmp_path / "bare").mkdir()
    shutil.copy(indexed, tmp_path / "bare" / "data.db")
    loaded = {}
    for name, db in (("indexed", indexed), ("bare", tmp_path / "bare" / "data.db")):
        store = open_store(f"sqlite:///{db}", read_only=True)
        try:
            export.export(store, tmp_path / name, "parquet")
        finally:
            store.close()
        loaded[name] = _load(tmp_path / name, "parquet")
    assert not (tmp_path / "bare" / "data.db-index").exists()
    for table in export.TABLES:
        rows = _same_rows(loaded["indexed"], table)
        assert rows == _same_rows(loaded["bare"], table) and rows, table.name
