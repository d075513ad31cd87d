"""Arguments of the Python API: a bad one is refused with an idstitch error naming it.

A Settings built in Python is checked at open time by the rules the TOML file is checked by;
profile reads refuse non-string references and out-of-range `limit` / `sort`; ingest_batch
refuses one message passed where a list belongs, and `source` must be a non-empty string.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

import idstitch
from idstitch.config import Settings, Source, settings_from
from idstitch.core.rules import IdentityRules, Limit, SourceRules
from idstitch.engine import Engine
from idstitch.errors import (
    ConfigError,
    InvalidArgument,
    InvalidMessage,
    InvalidReference,
    StorageError,
)
from tests.helpers import msg

WRITE_KEY = "wk-0123456789"
TOKEN = "tok-0123456789"


# ---- a Settings built in Python ----------------------------------------------------------


def rules(**fields: Any) -> IdentityRules:
    """IdentityRules with fields of any type, as an untyped caller may build them."""
    return IdentityRules(**fields)


def limit(*args: Any) -> Limit:
    return Limit(*args)


def flags(**fields: Any) -> SourceRules:
    return SourceRules(**fields)


@pytest.mark.parametrize(
    ("rules_", "key", "shown"),
    [
        (rules(limits={"phone": limit(1, "yearly")}), "identity.limits.phone.window", "'yearly'"),
        (rules(limits={"phone": limit(-1)}), "identity.limits.phone.max", "-1"),
        (rules(limits={"phone": limit(0)}), "identity.limits.phone.max", "0"),
        (rules(limits={"phone": limit("5")}), "identity.limits.phone.max", "'5'"),
        (rules(limits={"phone": 3}), "identity.limits.phone", "3"),
        (rules(limits={"Bad Type!": limit(1)}), "identity.limits.Bad Type!", "'Bad Type!'"),
        (rules(priority="user_id"), "identity.priority", "'user_id'"),
        (rules(priority=("email", "email")), "identity.priority", "twice"),
        (rules(priority=("User Id!",)), "identity.priority", "'User Id!'"),
        (rules(max_merges=-1), "identity.max_merges", "-1"),
        (rules(max_identifiers=0), "identity.max_identifiers", "0"),
        (rules(max_merges=True), "identity.max_merges", "True"),
        (rules(sources={"web": flags(create="no")}), "identity.sources.web.create", "'no'"),
        (rules(sources={"web": True}), "identity.sources.web", "True"),
        (rules(custom_types="phone"), "identity.custom_types", "'phone'"),
        (rules(blocked=["x"]), "identity.blocked_values", "['x']"),
    ],
)
def test_python_settings_are_checked_like_the_config_file(
    tmp_path: Path, rules_: IdentityRules, key: str, shown: str
) -> None:
    settings = Settings(storage_url=f"sqlite:///{tmp_path / 'x.db'}", rules=rules_)
    for opener in (idstitch.open, Engine):
        with pytest.raises(ConfigError) as caught:
            opener(settings, tune_gc=False)
        assert f"`{key}`" in str(caught.value)
        assert shown in str(caught.value)
        assert ";" in str(caught.value)  # problem; fix
    assert not (tmp_path / "x.db").exists()  # refused before the store opened


def test_python_settings_give_the_config_files_message() -> None:
    """Same rule, same words: the Python path reuses the TOML path's checks."""
    for toml, python in [
        (
            {"limits": {"phone": {"max": 1, "window": "yearly"}}},
            rules(limits={"phone": limit(1, "yearly")}),
        ),
        ({"limits": {"phone": {"max": -1}}}, rules(limits={"phone": limit(-1)})),
        ({"priority": "user_id"}, rules(priority="user_id")),
        ({"max_merges": -1}, rules(max_merges=-1)),
    ]:
        with pytest.raises(ConfigError) as from_toml:
            settings_from({"identity": toml})
        with pytest.raises(ConfigError) as from_python:
            Engine(Settings(rules=python))
        assert str(from_python.value) == str(from_toml.value)


def test_python_settings_top_level_fields_are_checked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    web = Source("web", WRITE_KEY)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"space_id": "no spaces"}, "`space_id`"),
        ({"storage_url": "idstitch.db"}, "`storage.url`"),
        ({"storage_url": "postgresql://"}, "`storage.url`"),
        ({"sources": (Source("web", "short"),)}, "`sources[0].write_key`"),
        ({"sources": (web, Source("web", TOKEN))}, "repeats a source id"),
        ({"sources": ("web",)}, "`sources[0]`"),
        ({"access_tokens": ("short",)}, "`access_tokens[0].token`"),
        ({"access_tokens": TOKEN}, "`access_tokens`"),
        ({"access_tokens": (TOKEN, TOKEN)}, "`access_tokens[1].token`"),
        ({"sources": (web,), "access_tokens": (WRITE_KEY,)}, "`access_tokens[0].token`"),
        ({"rules": {"priority": []}}, "`identity`"),
    ]
    for fields, key in cases:
        settings = Settings(**{"storage_url": url, **fields})
        with pytest.raises(ConfigError) as caught:
            Engine(settings, tune_gc=False)
        assert key in str(caught.value), fields
    with pytest.raises(ConfigError, match=r"takes a Settings, not a str 'idstitch\.toml'"):
        Engine(cast(Settings, "idstitch.toml"), tune_gc=False)
    assert not (tmp_path / "x.db").exists()


def test_valid_python_settings_are_normalized_as_the_config_file_would_be(tmp_path: Path) -> None:
    settings = Settings(
        storage_url=f"sqlite:///{tmp_path / 'x.db'}",
        rules=rules(priority=["Phone", "user_id"], limits={"phone": Limit(1)}),
    )
    with Engine(settings, tune_gc=False) as engine:
        assert engine.rules.priority == ("phone", "user_id")
        assert engine.rules.custom_types == ("phone",)  # declared by use, as in TOML
        engine.ingest(msg("identify", userId="u1", traits={"phone": "555"}))
        assert {e["type"] for e in engine.external_ids("phone:555")} == {"phone", "user_id"}


# ---- profile reads ------------------------------------------------------------------------

READS = ["profile", "traits", "events", "external_ids", "links", "metadata", "merges"]


@pytest.mark.parametrize("method", READS)
@pytest.mark.parametrize("ref", [None, 5, b"user_id:u1", ["user_id:u1"]])
def test_non_string_reference_is_an_invalid_reference(
    engine: Engine, method: str, ref: Any
) -> None:
    with pytest.raises(InvalidReference) as caught:
        getattr(engine, method)(ref)
    assert repr(ref) in str(caught.value)
    assert "type:value" in str(caught.value)


@pytest.mark.parametrize("bad", [0, -1, "5", 5.0, True, None])
def test_events_and_violations_refuse_a_bad_limit(engine: Engine, bad: Any) -> None:
    engine.ingest(msg("track", userId="u1"))
    reads: list[Callable[[], object]] = [
        lambda: engine.events("user_id:u1", limit=bad),
        lambda: engine.violations(limit=bad),
    ]
    for read in reads:
        with pytest.raises(InvalidArgument) as caught:
            read()
        assert repr(bad) in str(caught.value)
        assert "from 1 up" in str(caught.value)


@pytest.mark.parametrize("sort", ["up", "ASC", None, 1])
def test_events_refuse_a_bad_sort(engine: Engine, sort: Any) -> None:
    engine.ingest(msg("track", userId="u1"))
    with pytest.raises(InvalidArgument) as caught:
        engine.events("user_id:u1", sort=sort)
    assert repr(sort) in str(caught.value)
    assert '"asc" or "desc"' in str(caught.value)


def test_events_limit_and_sort_in_range_work(engine: Engine) -> None:
    for i in range(3):
        engine.ingest(
            msg("track", userId="u1", event=f"e{i}", timestamp=f"2025-01-0{i + 1}T00:00:00Z")
        )
    assert [e["event"] for e in engine.events("user_id:u1", limit=2)] == ["e2", "e1"]
    assert [e["event"] for e in engine.events("user_id:u1", limit=1, sort="asc")] == ["e0"]
    assert len(engine.events("user_id:u1", limit=1_000_000)) == 3
    assert engine.violations(limit=1) == []


# ---- ingesting ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "batch",
    [{"type": "identify", "userId": "u1"}, '[{"type": "identify"}]', b"{}", bytearray(b"{}")],
)
def test_one_message_passed_as_a_batch_is_refused(engine: Engine, batch: Any) -> None:
    with pytest.raises(InvalidMessage) as caught:
        engine.ingest_batch(batch)
    assert "list of messages" in str(caught.value)
    assert "ingest(message)" in str(caught.value)
    assert type(batch).__name__ in str(caught.value)
    assert "batch item" not in str(caught.value)


@pytest.mark.parametrize("batch", [5, None, 1.5])
def test_a_batch_that_is_not_iterable_is_refused(engine: Engine, batch: Any) -> None:
    with pytest.raises(InvalidMessage) as caught:
        engine.ingest_batch(batch)
    assert "list of messages" in str(caught.value)
    assert repr(batch) in str(caught.value)


def test_any_iterable_of_messages_is_a_batch(engine: Engine) -> None:
    done = engine.ingest_batch(msg("identify", userId=f"u{i}") for i in range(2))
    assert [r.outcome for r in done] == ["created", "created"]


@pytest.mark.parametrize("source", [5, "", None, b"api", " ", "we\x00b", "s" * 201])
def test_source_must_be_a_non_empty_string(engine: Engine, source: Any) -> None:
    calls: list[Callable[[], object]] = [
        lambda: engine.ingest(msg("identify", userId="u1"), source=source),
        lambda: engine.ingest_batch([msg("identify", userId="u1")], source=source),
    ]
    for call in calls:
        with pytest.raises(InvalidMessage) as caught:
            call()
        assert not isinstance(caught.value, StorageError)
        assert f"source {source!r:.60}" in str(caught.value)
        assert "non-empty string" in str(caught.value)
    assert engine.ingest(msg("identify", userId="u1"), source="web").outcome == "created"


@pytest.mark.parametrize(
    "message",
    [
        {"type": "identify", "userId": "u1", "traits": {"o": object()}},
        {"type": "identify", "userId": "\ud800"},
        '{"type": "identify", "userId": "\ud800"}',
    ],
)
def test_a_message_json_cannot_carry_is_an_invalid_message(engine: Engine, message: Any) -> None:
    with pytest.raises(InvalidMessage) as caught:
        engine.ingest(message)
    assert "JSON" in str(caught.value)


def test_a_message_nested_past_the_limit_is_an_invalid_message(engine: Engine) -> None:
    deep: dict[str, Any] = {}
    for _ in range(5000):
        deep = {"x": deep}
    with pytest.raises(InvalidMessage):
        engine.ingest({"type": "identify", "userId": "u1", "traits": deep})


@pytest.mark.parametrize("received_at", ["x", float("nan"), float("inf"), 1e20, True, -1e15])
def test_received_at_must_be_unix_seconds(engine: Engine, received_at: Any) -> None:
    with pytest.raises(InvalidArgument) as caught:
        engine.ingest(msg("identify", userId="u1"), received_at=received_at)
    assert "received_at" in str(caught.value)
    assert engine.ingest(msg("identify", userId="u1"), received_at=1_700_000_000).outcome


def test_reads_after_close_say_the_engine_is_closed(tmp_path: Path) -> None:
    engine = idstitch.open(f"sqlite:///{tmp_path}/x.db")
    engine.ingest(msg("identify", userId="u1"))
    engine.close()
    reads: list[Callable[[], object]] = [
        lambda: engine.profile("user_id:u1"),
        lambda: engine.traits("user_id:u1"),
        lambda: engine.events("user_id:u1"),
        lambda: engine.violations(),
    ]
    for read in reads:
        with pytest.raises(StorageError, match="the engine is closed"):
            read()


@pytest.mark.parametrize("config", ["", "  ", 123, {"storage": {"url": "sqlite:///x.db"}}])
def test_open_names_what_it_takes(config: Any) -> None:
    with pytest.raises(ConfigError, match="neither a config file path nor a storage URL"):
        idstitch.open(config)


def process_settings() -> tuple[float, tuple[int, int, int], int]:
    return sys.getswitchinterval(), gc.get_threshold(), gc.get_freeze_count()


def test_the_library_changes_no_process_wide_setting(tmp_path: Path) -> None:
    """The GC and thread-switch tunings are for idstitch's own processes (serve, import); an
    application that opens the library keeps its own."""
    before = process_settings()
    with idstitch.open(f"sqlite:///{tmp_path / 'x.db'}") as engine:
        engine.ingest({"type": "identify", "userId": "u1", "anonymousId": "a1"})
        assert process_settings() == before
    assert process_settings() == before


def test_an_engine_asked_to_tune_the_process_does(tmp_path: Path) -> None:
    before = process_settings()
    try:
        with idstitch.open(f"sqlite:///{tmp_path / 'x.db'}", tune_gc=True):
            interval, threshold, frozen = process_settings()
            assert interval == pytest.approx(0.0005) and threshold[0] == 50_000
            assert frozen > before[2]  # what was alive went to the permanent generation
    finally:
        sys.setswitchinterval(before[0])
        gc.set_threshold(*before[1])
        gc.unfreeze()
