"""Configuration: one TOML file (SPEC section 6) -> validated Settings and IdentityRules.

Every problem is reported as a ConfigError whose sentence names the key and the fix.
"""

from __future__ import annotations

import os
import re
import secrets
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

from idstitch.checks import (
    redact_url,
    same_secret,
    source_id_problem,
    sqlite_url_problem,
)
from idstitch.core.rules import (
    BUILTIN_TYPES,
    DEFAULT_BLOCKLIST,
    WINDOWS,
    BlockList,
    IdentityRules,
    Limit,
    SourceRules,
    WindowName,
)
from idstitch.errors import ConfigError
from idstitch.storage.base import STALL_SECONDS

DEFAULT_DIR = Path("idstitch-data")
DEFAULT_CONFIG = DEFAULT_DIR / "idstitch.toml"
DEFAULT_DB_URL = "sqlite:///idstitch-data/idstitch.db"
ENV_STORAGE_URL = "IDSTITCH_STORAGE_URL"
MIN_STALL_SECONDS, MAX_STALL_SECONDS = 1, 300

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
    # PostgreSQL: how long a write waits on another worker's transaction before that worker
    # is taken as stalled and its transaction ended (`[storage] stall_seconds`).
    stall_seconds: float = STALL_SECONDS

    def source_for_key(self, write_key: str) -> Source | None:
        for source in self.sources:
            if same_secret(source.write_key, write_key):
                return source
        return None

    def unmatched_source_rules(self) -> list[str]:
        """The ids of `[identity.sources.ID]` tables that no `[[sources]]` entry carries: over
        HTTP their rules never apply (a typo, most likely); imports and Python calls can still
        name such a source."""
        known = {source.id for source in self.sources}
        return [sid for sid in self.rules.sources if sid not in known]


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


# ---- identity rules: each check below serves both the TOML file and a Python IdentityRules --


def _priority(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise _fail(
            "identity.priority", f"must be a list, not {value!r}", 'write e.g. ["user_id", "email"]'
        )
    priority = tuple(_type_name(t, "identity.priority") for t in value)
    if len(set(priority)) != len(priority):
        raise _fail("identity.priority", "names a type twice", "list each type once")
    return priority


def _limit(type_: Any, max_: Any, window: Any) -> tuple[str, Limit]:
    key = f"identity.limits.{type_}"
    name = _type_name(type_, key)
    if not isinstance(window, str) or window not in WINDOWS:
        raise _fail(f"{key}.window", f"is {window!r}", "use one of " + ", ".join(WINDOWS))
    return name, Limit(_positive_int(max_, f"{key}.max"), cast(WindowName, window))


def _source_rules(source_id: Any, flags: Mapping[str, Any]) -> SourceRules:
    key = f"identity.sources.{source_id}"
    if source_id_problem(source_id) is not None:
        raise _fail(key, "is not keyed by a source id", "key each entry by a short printable id")
    return SourceRules(
        _bool(flags, "create", key), _bool(flags, "add", key), _bool(flags, "merge", key)
    )


def _assemble(
    priority: tuple[str, ...],
    limits: dict[str, Limit],
    blocked: BlockList,
    by_type: dict[str, BlockList],
    sources: dict[str, SourceRules],
    custom_raw: Any,
    max_merges: Any,
    max_identifiers: Any,
) -> IdentityRules:
    if not isinstance(custom_raw, list | tuple):
        raise _fail(
            "identity.custom_types", f"must be a list, not {custom_raw!r}", 'write e.g. ["phone"]'
        )
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
        max_merges=_positive_int(max_merges, "identity.max_merges"),
        max_identifiers=_positive_int(max_identifiers, "identity.max_identifiers"),
    )


def rules_from(identity: Mapping[str, Any]) -> IdentityRules:
    """The [identity] table of a config file -> IdentityRules (raises ConfigError)."""
    if not isinstance(identity, dict):
        raise _fail("identity", "must be a table", "write [identity]")
    _check_keys(identity, _IDENTITY_KEYS, "identity")
    limits: dict[str, Limit] = {}
    limits_raw = identity.get("limits", {})
    if not isinstance(limits_raw, dict):
        raise _fail("identity.limits", "must be a table", "write [identity.limits]")
    for type_, spec in limits_raw.items():
        key = f"identity.limits.{type_}"
        if not isinstance(spec, dict) or "max" not in spec:
            raise _fail(key, f"is {spec!r}", 'write { max = 5, window = "weekly" }')
        _check_keys(spec, {"max", "window"}, key)
        name, limit = _limit(type_, spec["max"], spec.get("window", "ever"))
        if name in limits:
            raise _fail(key, f"names the type {name!r} again", "give each type one limit")
        limits[name] = limit
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
    by_type: dict[str, BlockList] = {}
    for t, v in by_type_raw.items():
        key = f"identity.blocked_values_by_type.{t}"
        name = _type_name(t, key)
        if name in by_type:
            raise _fail(key, f"names the type {name!r} again", "list its values once")
        by_type[name] = _blocklist(v, key)
    sources_raw = identity.get("sources", {})
    if not isinstance(sources_raw, dict):
        raise _fail("identity.sources", "must be a table", "write [identity.sources.<id>]")
    sources: dict[str, SourceRules] = {}
    for sid, spec in sources_raw.items():
        key = f"identity.sources.{sid}"
        if not isinstance(spec, dict):
            raise _fail(key, "must be a table", "write create/add/merge = true or false")
        _check_keys(spec, {"create", "add", "merge"}, key)
        sources[sid] = _source_rules(sid, spec)
    return _assemble(
        _priority(identity.get("priority", [])),
        limits,
        blocked,
        by_type,
        sources,
        identity.get("custom_types", []),
        identity.get("max_merges", 100),
        identity.get("max_identifiers", 1000),
    )


def check_rules(rules: IdentityRules) -> IdentityRules:
    """An IdentityRules built in Python, checked by the rules a config file's [identity]
    table is checked by (same ConfigError messages, named by the TOML key), and normalized
    the same way: type names trimmed and lower-cased, custom types declared by use."""
    if not isinstance(rules, IdentityRules):
        raise _fail(
            "identity",
            f"is {type(rules).__name__}, not IdentityRules",
            "pass idstitch.IdentityRules(...) as Settings(rules=...)",
        )
    limits: dict[str, Limit] = {}
    if not isinstance(rules.limits, Mapping):
        raise _fail(
            "identity.limits", f"is {rules.limits!r}", 'pass a dict, e.g. {"phone": Limit(5)}'
        )
    for type_, spec in rules.limits.items():
        if not isinstance(spec, Limit):
            raise _fail(
                f"identity.limits.{type_}", f"is {spec!r}", 'pass a Limit, e.g. Limit(5, "weekly")'
            )
        name, limit = _limit(type_, spec.max, spec.window)
        limits[name] = limit
    if not isinstance(rules.blocked, BlockList):
        raise _fail(
            "identity.blocked_values",
            f"is {rules.blocked!r}",
            "pass a BlockList, e.g. DEFAULT_BLOCKLIST | BlockList.build([...])",
        )
    if not isinstance(rules.blocked_by_type, Mapping):
        raise _fail(
            "identity.blocked_values_by_type",
            f"is {rules.blocked_by_type!r}",
            "pass a dict of type -> BlockList",
        )
    by_type: dict[str, BlockList] = {}
    for t, blocklist in rules.blocked_by_type.items():
        key = f"identity.blocked_values_by_type.{t}"
        if not isinstance(blocklist, BlockList):
            raise _fail(key, f"is {blocklist!r}", "pass a BlockList, e.g. BlockList.build([...])")
        by_type[_type_name(t, key)] = blocklist
    if not isinstance(rules.sources, Mapping):
        raise _fail(
            "identity.sources", f"is {rules.sources!r}", "pass a dict of source id -> SourceRules"
        )
    sources: dict[str, SourceRules] = {}
    for sid, flags in rules.sources.items():
        if not isinstance(flags, SourceRules):
            raise _fail(
                f"identity.sources.{sid}",
                f"is {flags!r}",
                "pass SourceRules(create=..., add=..., merge=...)",
            )
        sources[sid] = _source_rules(sid, vars(flags))
    return _assemble(
        _priority(rules.priority),
        limits,
        rules.blocked,
        by_type,
        sources,
        rules.custom_types,
        rules.max_merges,
        rules.max_identifiers,
    )


# ---- the rest of the settings ----------------------------------------------------------------


def _space_id(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"^[A-Za-z0-9_\-]{1,64}$", value):
        raise _fail("space_id", f"is {value!r}", "use letters, digits, '_' or '-'")
    return value


def _storage_url(url: Any, from_env: bool = False) -> str:
    """A storage URL: any `scheme://...` (the store checks its own form when it opens), and a
    PostgreSQL URL must name its database, or libpq would pick one by its defaults."""

    def fail(problem: str) -> ConfigError:
        fix = 'write "sqlite:///path/to/file.db" or "postgresql://user@host/dbname"'
        if from_env:
            return ConfigError(
                f"environment variable {ENV_STORAGE_URL} (it overrides config key `storage.url`) "
                f"{problem}; {fix}, or unset {ENV_STORAGE_URL} to use the config file's."
            )
        return _fail("storage.url", problem, fix)

    if not isinstance(url, str) or "://" not in url:
        raise fail(f"is {url!r}")
    if not url.startswith(("sqlite://", "postgresql://", "postgres://")):
        raise fail(f"is {redact_url(url)!r}, which names no known store")
    if url.startswith("sqlite://"):
        problem = sqlite_url_problem(url)
        if problem is not None:
            raise fail(f"is {url!r}, which {problem}")
    else:
        try:
            parts = urlsplit(url)
        except ValueError as err:
            raise fail(f"is {redact_url(url)!r}, which is not a valid URL ({err})") from None
        named = parts.path[1:] or any(k == "dbname" and v for k, v in parse_qsl(parts.query))
        if not named:
            raise fail(
                f"is {redact_url(url)!r}, which names no database (expected "
                "postgresql://user@host/dbname, or postgresql:///dbname for the local socket)"
            )
    return url


def _source(source_id: Any, write_key: Any, key: str) -> Source:
    problem = source_id_problem(source_id)
    if problem is not None:
        raise _fail(
            f"{key}.id", f"{problem} ({source_id!r:.60})", "give each source a short printable id"
        )
    if not isinstance(write_key, str) or len(write_key) < 8:
        raise _fail(
            f"{key}.write_key",
            "is missing or shorter than 8 characters",
            "set a long random write key",
        )
    return Source(source_id, write_key)


def _token(token: Any, key: str) -> str:
    if not isinstance(token, str) or len(token) < 8:
        raise _fail(
            f"{key}.token", "is missing or shorter than 8 characters", "set a long random token"
        )
    return token


def _check_secrets(sources: Sequence[Source], tokens: Sequence[str]) -> None:
    """Each source id, write key and access token once, and no token that is a write key."""
    if len({s.id for s in sources}) != len(sources):
        raise _fail("sources", "repeats a source id", "give each source its own id")
    if len({s.write_key for s in sources}) != len(sources):
        raise _fail("sources", "repeats a write key", "give each source its own write key")
    first: dict[str, int] = {}
    for i, token in enumerate(tokens):
        if token in first:
            raise _fail(
                f"access_tokens[{i}].token",
                f"repeats access_tokens[{first[token]}].token",
                "list each token once",
            )
        first[token] = i
        for j, source in enumerate(sources):
            if token == source.write_key:
                raise _fail(
                    f"access_tokens[{i}].token",
                    f"is the write key of source {source.id!r} (sources[{j}].write_key); a write "
                    "key ships in browser code, so anyone could read profiles with it",
                    "set a different long random token",
                )


def settings_from(data: Mapping[str, Any], path: Path | None = None) -> Settings:
    """A parsed config file -> Settings (raises ConfigError naming the key and the fix).

    The environment variable IDSTITCH_STORAGE_URL, when set, overrides `storage.url`."""
    _check_keys(data, _TOP_KEYS, "")
    space_id = _space_id(data.get("space_id", "default"))
    storage = data.get("storage", {})
    if not isinstance(storage, dict):
        raise _fail("storage", "must be a table", 'write [storage] url = "sqlite:///..."')
    _check_keys(storage, {"url", "stall_seconds"}, "storage")
    stall = _stall_seconds(storage.get("stall_seconds", STALL_SECONDS))
    env_url = os.environ.get(ENV_STORAGE_URL)
    if env_url:
        url = _storage_url(env_url, from_env=True)
    else:
        url = _storage_url(storage.get("url", DEFAULT_DB_URL))
    sources_raw = data.get("sources", [])
    if not isinstance(sources_raw, list):
        raise _fail("sources", "must be an array of tables", 'write [[sources]] id = "web"')
    sources = []
    for i, spec in enumerate(sources_raw):
        key = f"sources[{i}]"
        if not isinstance(spec, dict):
            raise _fail(key, "must be a table", 'write id = "web" and write_key = "..."')
        _check_keys(spec, {"id", "write_key"}, key)
        sources.append(_source(spec.get("id"), spec.get("write_key"), key))
    tokens_raw = data.get("access_tokens", [])
    if not isinstance(tokens_raw, list):
        raise _fail("access_tokens", "must be an array of tables", "write [[access_tokens]]")
    tokens = []
    for i, spec in enumerate(tokens_raw):
        key = f"access_tokens[{i}]"
        if not isinstance(spec, dict):
            raise _fail(key, "must be a table", 'write token = "..."')
        _check_keys(spec, {"token"}, key)
        tokens.append(_token(spec.get("token"), key))
    rules = rules_from(data.get("identity", {}))
    return _settings(space_id, url, sources, tokens, rules, path, stall)


def _settings(
    space_id: str,
    url: str,
    sources: Sequence[Source],
    tokens: Sequence[str],
    rules: IdentityRules,
    path: Path | None,
    stall_seconds: float,
) -> Settings:
    """Checked parts -> Settings, once the secrets are checked against each other."""
    _check_secrets(sources, tokens)
    return Settings(space_id, url, tuple(sources), tuple(tokens), rules, path, stall_seconds)


def _stall_seconds(value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not MIN_STALL_SECONDS <= value <= MAX_STALL_SECONDS
    ):
        raise _fail(
            "storage.stall_seconds",
            f"is {value!r:.60}",
            f"use a number of seconds from {MIN_STALL_SECONDS:g} to {MAX_STALL_SECONDS:g}",
        )
    return float(value)


def check(settings: Settings) -> Settings:
    """A Settings built in Python, checked by the rules `settings_from` applies to a config
    file, with the same ConfigError messages (named by the TOML key); returns it normalized
    as `settings_from` would have built it. The storage URL is taken as given: the
    environment variable overrides a config file only."""
    if not isinstance(settings, Settings):
        what = type(settings).__name__
        if isinstance(settings, str | Path):  # a path or URL: safe to show, and the likely slip
            what += f" {redact_url(str(settings))!r}"
        raise ConfigError(
            f"the engine takes a Settings, not a {what}; pass a config path or storage URL to "
            "idstitch.open(), or build one with idstitch.Settings(...) or config.load(path)."
        )
    space_id = _space_id(settings.space_id)
    url = _storage_url(settings.storage_url)
    sources = settings.sources
    if not isinstance(sources, list | tuple):
        raise _fail(
            "sources",
            f"is a {type(sources).__name__}",  # not shown: it may hold write keys
            'pass a tuple of Source("web", "<write key>")',
        )
    for i, source in enumerate(sources):
        if not isinstance(source, Source):
            raise _fail(
                f"sources[{i}]",
                f"is a {type(source).__name__}, not a Source",
                'pass Source("web", "<write key>")',
            )
        _source(source.id, source.write_key, f"sources[{i}]")
    tokens = settings.access_tokens
    if not isinstance(tokens, list | tuple):
        raise _fail(
            "access_tokens", f"is a {type(tokens).__name__}", "pass a tuple of token strings"
        )
    for i, token in enumerate(tokens):
        _token(token, f"access_tokens[{i}]")
    rules = check_rules(settings.rules)
    stall = _stall_seconds(settings.stall_seconds)
    return _settings(space_id, url, sources, tokens, rules, settings.path, stall)


def load(path: str | Path) -> Settings:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8-sig")  # a byte-order mark is not TOML
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist; check the --config path.") from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file {file} is not UTF-8 text (byte {err.start}: {err.reason}); save it "
            "as UTF-8."
        ) from None
    except OSError as err:
        raise ConfigError(
            f"config file {file} cannot be read: {err.strerror or err}; check the path and "
            "its permissions."
        ) from None
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
    except OSError as err:
        raise ConfigError(
            f"cannot create the default config {path}: {err.strerror or err} "
            f"({err.filename or path}); run from a directory you can write to, or pass "
            "--config FILE."
        ) from None
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
    if not isinstance(config, str | os.PathLike) or not str(config).strip():
        raise ConfigError(
            f"{config!r:.80} is neither a config file path nor a storage URL; pass a TOML "
            'path, a URL such as "sqlite:///idstitch-data/idstitch.db", or a Settings.'
        )
    text = str(config)
    if "://" in text:
        return settings_from({"storage": {"url": text}})
    return load(text)
