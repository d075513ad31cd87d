"""Config checks: storage URLs, write keys and access tokens (each a ConfigError naming the key)."""

from __future__ import annotations

import re
import types
import typing
from dataclasses import replace
from typing import Any, cast

import msgspec
import pytest

from idstitch import config_schema
from idstitch.config import ENV_STORAGE_URL, check, settings_from
from idstitch.errors import ConfigError

KEY_A = "wk-aaaaaaaaaaaa"
KEY_B = "wk-bbbbbbbbbbbb"
TOKEN = "tok-cccccccccccc"


def _config(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "sources": [{"id": "web", "write_key": KEY_A}, {"id": "ios", "write_key": KEY_B}],
        "access_tokens": [{"token": TOKEN}],
    }
    data.update(overrides)
    return data


@pytest.fixture(autouse=True)
def _no_env_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_STORAGE_URL, raising=False)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://",
        "postgres://",
        "postgresql://db.internal",
        "postgresql://app@db.internal:5432/",
        "postgresql://app:s3cret@db.internal:5432",
        "postgresql://db.internal?sslmode=require",
    ],
)
def test_postgres_url_without_a_database_is_refused(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from({"storage": {"url": url}})
    message = str(caught.value)
    assert "`storage.url`" in message
    assert "names no database" in message
    assert "postgresql://user@host/dbname" in message
    assert "s3cret" not in message  # the password is not echoed


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app@db.internal/idstitch",
        "postgresql://app:s3cret@db.internal:5432/idstitch?sslmode=require",
        "postgresql:///idstitch",  # the local socket
        "postgres://db.internal/idstitch",
        "postgresql://db.internal?dbname=idstitch",
        "sqlite:///idstitch-data/idstitch.db",
    ],
)
def test_storage_urls_naming_their_store_are_accepted(url: str) -> None:
    assert settings_from({"storage": {"url": url}}).storage_url == url


def test_an_invalid_url_from_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for bad in ("postgresql://", "idstitch.db"):
        monkeypatch.setenv(ENV_STORAGE_URL, bad)
        with pytest.raises(ConfigError) as caught:
            settings_from({"storage": {"url": "sqlite:///fine.db"}})
        message = str(caught.value)
        assert f"environment variable {ENV_STORAGE_URL}" in message
        assert "`storage.url`" in message
        assert repr(bad) in message
        assert "postgresql://user@host/dbname" in message
    monkeypatch.setenv(ENV_STORAGE_URL, "postgresql:///idstitch")
    assert settings_from({}).storage_url == "postgresql:///idstitch"


def test_an_access_token_that_is_a_write_key_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from(_config(access_tokens=[{"token": TOKEN}, {"token": KEY_B}]))
    message = str(caught.value)
    assert "`access_tokens[1].token`" in message
    assert "write key of source 'ios'" in message
    assert "sources[1].write_key" in message
    assert "different long random token" in message
    assert KEY_B not in message  # the secret itself is not echoed


def test_the_same_access_token_twice_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from(_config(access_tokens=[{"token": TOKEN}, {"token": TOKEN}]))
    message = str(caught.value)
    assert "`access_tokens[1].token`" in message
    assert "repeats access_tokens[0].token" in message
    assert "list each token once" in message
    assert TOKEN not in message


def test_distinct_tokens_and_keys_are_accepted() -> None:
    settings = settings_from(_config(access_tokens=[{"token": TOKEN}, {"token": TOKEN + "2"}]))
    assert settings.access_tokens == (TOKEN, TOKEN + "2")


def test_a_limit_window_that_is_not_a_string_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"`identity\.limits\.email\.window` is \['weekly'\]"):
        settings_from({"identity": {"limits": {"email": {"max": 2, "window": ["weekly"]}}}})


def test_source_rules_without_a_write_key_are_listed() -> None:
    settings = settings_from(
        {
            "sources": [{"id": "web", "write_key": "k" * 24}],
            "identity": {"sources": {"web": {"merge": False}, "ios": {"create": False}}},
        }
    )
    assert settings.unmatched_source_rules() == ["ios"]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sqlite:///data/q.db?mode=ro", "takes no parameters"),
        ("sqlite:///:memory:", "must be a file"),
        ("sqlite://", "names no file"),
        ("mysql://db.internal/idstitch", "names no known store"),
    ],
)
def test_storage_urls_no_store_can_use_are_refused(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as caught:
        settings_from({"storage": {"url": url}})
    assert "`storage.url`" in str(caught.value)


def test_an_unknown_store_from_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_STORAGE_URL, "mysql://x/y")
    with pytest.raises(ConfigError, match=f"environment variable {ENV_STORAGE_URL}"):
        settings_from({})


@pytest.mark.parametrize("source_id", ["we\x00b", " ", "x" * 201])
def test_a_source_id_no_store_or_log_can_keep_is_refused(source_id: str) -> None:
    sources = [{"id": source_id, "write_key": KEY_A}]
    with pytest.raises(ConfigError, match=r"sources\[0\]\.id"):
        settings_from(_config(sources=sources))


def test_a_type_named_twice_in_limits_or_blocked_values_is_refused() -> None:
    limits = {"phone": {"max": 1}, "PHONE": {"max": 2}}
    with pytest.raises(ConfigError, match="again"):
        settings_from(_config(identity={"limits": limits}))
    by_type = {"phone": ["x"], " Phone": ["y"]}
    with pytest.raises(ConfigError, match="again"):
        settings_from(_config(identity={"blocked_values_by_type": by_type}))


def test_an_unknown_key_inside_a_limit_is_named() -> None:
    limits = {"phone": {"max": 1, "windw": "ever"}}
    with pytest.raises(ConfigError, match=r"identity\.limits\.phone\.windw"):
        settings_from(_config(identity={"limits": limits}))


@pytest.mark.parametrize("value", [0, 0.5, 301, "10", True, float("nan")])
def test_a_stall_bound_outside_1_to_300_seconds_is_refused(value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from(_config(storage={"stall_seconds": value}))
    assert "`storage.stall_seconds`" in str(caught.value)
    assert "from 1 to 300" in str(caught.value)
    with pytest.raises(ConfigError) as again:
        check(replace(settings_from(_config()), stall_seconds=value))
    assert str(again.value) == str(caught.value)


def test_the_stall_bound_defaults_to_10_seconds_and_is_kept() -> None:
    assert settings_from(_config()).stall_seconds == 10.0
    assert settings_from(_config(storage={"stall_seconds": 25})).stall_seconds == 25.0


def _leaves(type_: Any, key: str) -> list[tuple[str, Any]]:
    """Every setting the schema declares, as (TOML key, declared type)."""
    base, _ = config_schema._unwrap(type_)
    origin = typing.get_origin(base)
    if isinstance(base, type) and issubclass(base, msgspec.Struct):
        found = [(key, type_)] if key else []
        for name, inner in config_schema._fields(base).items():
            found += _leaves(inner, f"{key}.{name}" if key else name)
        return found
    if origin in (list, dict):
        return [(key, type_), *_leaves(typing.get_args(base)[-1], f"{key}[]")]
    return [(key, type_)]


def test_every_setting_the_schema_declares_has_a_fix() -> None:
    leaves = _leaves(config_schema.ConfigFile, "")
    assert len(leaves) > 25
    generic = config_schema._fix(Any)
    for key, type_ in leaves:
        if typing.get_origin(config_schema._unwrap(type_)[0]) in (types.UnionType, typing.Union):
            continue  # a list item that may be one of two: its list says how to write it
        assert config_schema._fix(type_) != generic, key


@pytest.mark.parametrize(
    ("identity", "says"),
    [
        ({"sources": {"web": {"mrge": False}}}, "`identity.sources.web.mrge` is not a known"),
        (
            {"limits": {"email": {"max": 2}, "phone": {"max": 0}}},
            "`identity.limits.phone.max` is 0",
        ),
        (
            {"blocked_values_by_type": {"email": ["a", 5]}},
            "`identity.blocked_values_by_type.email[1]` is 5",
        ),
        ({"blocked_values": [{"rgx": "^a"}]}, "`identity.blocked_values[0].rgx` is not a known"),
    ],
)
def test_a_problem_inside_a_table_entry_names_the_entry(
    identity: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        settings_from(_config(identity=identity))


@pytest.mark.parametrize(
    "sources",
    [
        [{"id": "web", "write_key": 123456789}],
        [{"id": "web", "write_key": "short"}],
        [{"id": "web", "write_key": KEY_A, "extra": "sekret-value"}],
        "sekret-value",
    ],
)
def test_a_bad_write_key_or_source_list_is_named_but_not_shown(sources: Any) -> None:
    with pytest.raises(ConfigError, match=r"`sources") as caught:
        settings_from(_config(sources=sources))
    for secret in ("123456789", "short", "sekret-value"):
        assert secret not in str(caught.value)


def test_python_access_tokens_that_are_not_a_list_are_not_shown() -> None:
    with pytest.raises(ConfigError, match=r"`access_tokens` is not a list") as caught:
        check(replace(settings_from(_config()), access_tokens=cast(Any, TOKEN)))
    assert TOKEN not in str(caught.value)
