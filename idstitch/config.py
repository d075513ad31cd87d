"""Configuration: one TOML file (SPEC section 6) -> validated Settings and IdentityRules.

Every problem is reported as a ConfigError whose sentence names the key and the fix.
"""

from __future__ import annotations

import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idstitch.core.rules import (
    BUILTIN_TYPES,
    DEFAULT_BLOCKLIST,
    WINDOWS,
    BlockList,
    IdentityRules,
    Limit,
    SourceRules,
)
from idstitch.errors import ConfigError

DEFAULT_DIR = Path("idstitch-data")
DEFAULT_CONFIG = DEFAULT_DIR / "idstitch.toml"
DEFAULT_DB_URL = "sqlite:///idstitch-data/idstitch.db"
ENV_STORAGE_URL = "IDSTITCH_STORAGE_URL"

_TOP_KEYS = {"space_id", "storage", "sources", "access_tokens", "identity"}
_IDENTITY_KEYS = {
    "priority",
    "blocked_values",
    "blocked_values_by_type",
    "limits",
    "sources",
    "custom_types",
    "max_merges",
    "max_identifiers",
}
_TYPE_RE = re.compile(r"^[a-z0-9_.\-]{1,64}$")


@dataclass(frozen=True)
class Source:
    id: str
    write_key: str


@dataclass(frozen=True)
class Settings:
    space_id: str = "default"
    storage_url: str = DEFAULT_DB_URL
    sources: tuple[Source, ...] = ()
    access_tokens: tuple[str, ...] = ()
    rules: IdentityRules = field(default_factory=IdentityRules)
    path: Path | None = None

    def source_for_key(self, write_key: str) -> Source | None:
        for source in self.sources:
            if secrets.compare_digest(source.write_key, write_key):
                return source
        return None


def _fail(key: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"config key `{key}` {problem}; {fix}.")


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            name = f"{where}.{key}" if where else key
            raise _fail(
                name, "is not a known setting", "allowed here: " + ", ".join(sorted(allowed))
            )


def _type_name(value: Any, key: str) -> str:
    if not isinstance(value, str) or not _TYPE_RE.match(value.strip().lower()):
        raise _fail(
            key,
            f"has {value!r}, which is not an identifier type",
            "use lower-case letters, digits, '_', '.' or '-', e.g. \"phone\"",
        )
    return value.strip().lower()


def _blocklist(entries: Any, key: str) -> BlockList:
    if not isinstance(entries, list):
        raise _fail(key, "must be a list", 'write e.g. ["x@example.com", { regex = "^test" }]')
    exact: list[str] = []
    regex: list[str] = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            exact.append(entry)
        elif (
            isinstance(entry, dict) and set(entry) == {"regex"} and isinstance(entry["regex"], str)
        ):
            try:
                re.compile(entry["regex"])
            except re.error as err:
                raise _fail(
                    f"{key}[{i}].regex",
                    f"is not a valid regular expression ({err})",
                    "fix the pattern",
                ) from None
            regex.append(entry["regex"])
        else:
            raise _fail(
                f"{key}[{i}]", f"is {entry!r}", 'write a string or a table { regex = "..." }'
            )
    return BlockList.build(exact, regex)


def _bool(table: Mapping[str, Any], name: str, key: str) -> bool:
    value = table.get(name, True)
    if not isinstance(value, bool):
        raise _fail(f"{key}.{name}", f"is {value!r}", "write true or false")
    return value


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(key, f"is {value!r}", "write a whole number of at least 1")
    return value


def rules_from(identity: Mapping[str, Any]) -> IdentityRules:
    if not isinstance(identity, dict):
        raise _fail("identity", "must be a table", "write [identity]")
    _check_keys(identity, _IDENTITY_KEYS, "identity")
    priority_raw = identity.get("priority", [])
    if not isinstance(priority_raw, list):
        raise _fail("identity.priority", "must be a list", 'write e.g. ["user_id", "email"]')
    priority = tuple(_type_name(t, "identity.priority") for t in priority_raw)
    if len(set(priority)) != len(priority):
        raise _fail("identity.priority", "names a type twice", "list each type once")
    limits: dict[str, Limit] = {}
    limits_raw = identity.get("limits", {})
    if not isinstance(limits_raw, dict):
        raise _fail("identity.limits", "must be a table", "write [identity.limits]")
    for type_, spec in limits_raw.items():
        key = f"identity.limits.{type_}"
        name = _type_name(type_, key)
        if not isinstance(spec, dict) or not set(spec) <= {"max", "window"} or "max" not in spec:
            raise _fail(key, f"is {spec!r}", 'write { max = 5, window = "weekly" }')
        window = spec.get("window", "ever")
        if window not in WINDOWS:
            raise _fail(f"{key}.window", f"is {window!r}", "use one of " + ", ".join(WINDOWS))
        limits[name] = Limit(_positive_int(spec["max"], f"{key}.max"), window)
    blocked = DEFAULT_BLOCKLIST | _blocklist(
        identity.get("blocked_values", []), "identity.blocked_values"
    )
    by_type_raw = identity.get("blocked_values_by_type", {})
    if not isinstance(by_type_raw, dict):
        raise _fail(
            "identity.blocked_values_by_type",
            "must be a table",
            "write [identity.blocked_values_by_type]",
        )
    by_type = {
        _type_name(t, f"identity.blocked_values_by_type.{t}"): _blocklist(
            v, f"identity.blocked_values_by_type.{t}"
        )
        for t, v in by_type_raw.items()
    }
    sources_raw = identity.get("sources", {})
    if not isinstance(sources_raw, dict):
        raise _fail("identity.sources", "must be a table", "write [identity.sources.<id>]")
    sources: dict[str, SourceRules] = {}
    for sid, spec in sources_raw.items():
        key = f"identity.sources.{sid}"
        if not isinstance(spec, dict):
            raise _fail(key, "must be a table", "write create/add/merge = true or false")
        _check_keys(spec, {"create", "add", "merge"}, key)
        sources[sid] = SourceRules(
            _bool(spec, "create", key), _bool(spec, "add", key), _bool(spec, "merge", key)
        )
    custom_raw = identity.get("custom_types", [])
    if not isinstance(custom_raw, list):
        raise _fail("identity.custom_types", "must be a list", 'write e.g. ["phone"]')
    declared = [_type_name(t, "identity.custom_types") for t in custom_raw]
    # A custom type is declared by naming it anywhere in the identity rules.
    declared += [t for t in (*priority, *limits, *by_type) if t not in BUILTIN_TYPES]
    custom = tuple(dict.fromkeys(t for t in declared if t not in BUILTIN_TYPES))
    return IdentityRules(
        priority=priority,
        limits=limits,
        blocked=blocked,
        blocked_by_type=by_type,
        sources=sources,
        custom_types=custom,
        max_merges=_positive_int(identity.get("max_merges", 100), "identity.max_merges"),
        max_identifiers=_positive_int(
            identity.get("max_identifiers", 1000), "identity.max_identifiers"
        ),
    )


def settings_from(data: Mapping[str, Any], path: Path | None = None) -> Settings:
    _check_keys(data, _TOP_KEYS, "")
    space_id = data.get("space_id", "default")
    if not isinstance(space_id, str) or not re.match(r"^[A-Za-z0-9_\-]{1,64}$", space_id):
        raise _fail("space_id", f"is {space_id!r}", "use letters, digits, '_' or '-'")
    storage = data.get("storage", {})
    if not isinstance(storage, dict):
        raise _fail("storage", "must be a table", 'write [storage] url = "sqlite:///..."')
    _check_keys(storage, {"url"}, "storage")
    url = os.environ.get(ENV_STORAGE_URL) or storage.get("url", DEFAULT_DB_URL)
    if not isinstance(url, str) or "://" not in url:
        raise _fail(
            "storage.url",
            f"is {url!r}",
            'write "sqlite:///path/to/file.db" or "postgresql://user@host/dbname"',
        )
    sources_raw = data.get("sources", [])
    if not isinstance(sources_raw, list):
        raise _fail("sources", "must be an array of tables", 'write [[sources]] id = "web"')
    sources = []
    for i, spec in enumerate(sources_raw):
        key = f"sources[{i}]"
        if not isinstance(spec, dict):
            raise _fail(key, "must be a table", 'write id = "web" and write_key = "..."')
        _check_keys(spec, {"id", "write_key"}, key)
        sid, wkey = spec.get("id"), spec.get("write_key")
        if not isinstance(sid, str) or not sid:
            raise _fail(f"{key}.id", f"is {sid!r}", "give each source a non-empty id")
        if not isinstance(wkey, str) or len(wkey) < 8:
            raise _fail(
                f"{key}.write_key",
                "is missing or shorter than 8 characters",
                "set a long random write key",
            )
        sources.append(Source(sid, wkey))
    if len({s.id for s in sources}) != len(sources):
        raise _fail("sources", "repeats a source id", "give each source its own id")
    if len({s.write_key for s in sources}) != len(sources):
        raise _fail("sources", "repeats a write key", "give each source its own write key")
    tokens_raw = data.get("access_tokens", [])
    if not isinstance(tokens_raw, list):
        raise _fail("access_tokens", "must be an array of tables", "write [[access_tokens]]")
    tokens = []
    for i, spec in enumerate(tokens_raw):
        key = f"access_tokens[{i}]"
        if not isinstance(spec, dict):
            raise _fail(key, "must be a table", 'write token = "..."')
        _check_keys(spec, {"token"}, key)
        token = spec.get("token")
        if not isinstance(token, str) or len(token) < 8:
            raise _fail(
                f"{key}.token", "is missing or shorter than 8 characters", "set a long random token"
            )
        tokens.append(token)
    return Settings(
        space_id=space_id,
        storage_url=url,
        sources=tuple(sources),
        access_tokens=tuple(tokens),
        rules=rules_from(data.get("identity", {})),
        path=path,
    )


def load(path: str | Path) -> Settings:
    file = Path(path)
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist; check the --config path.") from None
    except OSError as err:
        raise ConfigError(f"config file {file} cannot be read: {err.strerror}.") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(
            f"config file {file} is not valid TOML ({err}); fix the syntax."
        ) from None
    return settings_from(data, file)


def write_default(path: Path = DEFAULT_CONFIG) -> tuple[Settings, str, str]:
    """Create a config with a random write key and access token; returns both once."""
    write_key = secrets.token_urlsafe(24)
    token = secrets.token_urlsafe(32)
    db = path.parent / "idstitch.db"
    text = (
        "# idstitch configuration (see README: Configuration)\n"
        'space_id = "default"\n\n'
        "[storage]\n"
        f'url = "sqlite:///{db.as_posix()}"\n\n'
        "[[sources]]\n"
        'id = "default"\n'
        f'write_key = "{write_key}"\n\n'
        "[[access_tokens]]\n"
        f'token = "{token}"\n\n'
        "[identity]\n"
        '# priority = ["user_id", "email", "phone", "anonymous_id"]\n'
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return load(path), write_key, token


def resolve(config: str | Path | Settings | None) -> Settings:
    """What `idstitch.open` and the CLI accept: a Settings, a TOML path, a storage URL,
    or None for ./idstitch-data/."""
    if isinstance(config, Settings):
        return config
    if config is None:
        if DEFAULT_CONFIG.exists():
            return load(DEFAULT_CONFIG)
        return settings_from({})
    text = str(config)
    if "://" in text:
        return settings_from({"storage": {"url": text}})
    return load(text)
