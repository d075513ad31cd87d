"""Configuration: one TOML file (SPEC section 6) -> validated Settings and IdentityRules.

The file's shape is declared once, in `config_schema`; a Settings built in Python is turned
into the same tables and checked by it. Every problem is reported as a ConfigError whose
sentence names the key, the value and the fix.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import secrets
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from idstitch import config_schema
from idstitch.checks import (
    redact_url,
    same_secret,
    source_id_problem,
    sqlite_url_problem,
)
from idstitch.config_schema import DEFAULT_DB_URL, TYPE_FIX, URL_FIX, fail
from idstitch.core.rules import (
    BUILTIN_TYPES,
    DEFAULT_BLOCKLIST,
    BlockList,
    IdentityRules,
    Limit,
    SourceRules,
)
from idstitch.errors import ConfigError
from idstitch.storage.base import STALL_SECONDS

DEFAULT_DIR = Path("idstitch-data")
DEFAULT_CONFIG = DEFAULT_DIR / "idstitch.toml"
ENV_STORAGE_URL = "IDSTITCH_STORAGE_URL"

_TYPE_RE = re.compile(r"^[a-z0-9_.\-]{1,64}$")


@dataclass(frozen=True)
class Source:
    id: str
    write_key: str


WEBHOOK_EVENTS = ("merge", "identifier", "traits")


@dataclass(frozen=True)
class Webhook:
    """A receiver of the change feed (`[[webhooks]]`): `events` it wants, signed with
    `secret` (Standard Webhooks)."""

    url: str
    secret: str = field(repr=False)
    events: tuple[str, ...] = WEBHOOK_EVENTS

    @property
    def name(self) -> str:
        """What its delivery position is stored under: changing the URL starts another."""
        return "webhook-" + hashlib.sha256(self.url.encode()).hexdigest()[:16]


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
    webhooks: tuple[Webhook, ...] = ()

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


def settings_from(data: Mapping[str, Any], path: Path | None = None) -> Settings:
    """A parsed config file -> Settings (raises ConfigError naming the key and the fix).

    The environment variable IDSTITCH_STORAGE_URL, when set, overrides `storage.url`."""
    table = config_schema.decode(data)
    env_url = os.environ.get(ENV_STORAGE_URL)
    url = _storage_url(env_url, from_env=True) if env_url else _storage_url(table.storage.url)
    return _settings(table, url, _rules(table.identity, None), path)


def check(settings: Settings) -> Settings:
    """A Settings built in Python, checked by the schema a config file is checked by, with
    the same ConfigError messages (named by the TOML key); returns it normalized as
    `settings_from` would have built it. The storage URL is taken as given: the
    environment variable overrides a config file only."""
    table = config_schema.decode(as_table(settings))
    url = _storage_url(table.storage.url)
    return _settings(table, url, _rules(table.identity, settings.rules), settings.path)


def as_table(settings: Settings) -> dict[str, Any]:
    """A Settings built in Python -> the tables a config file would hold, so that one schema
    checks both. A value of the wrong type is passed on as it is, for the schema to name."""
    if not isinstance(settings, Settings):
        what = type(settings).__name__
        if isinstance(settings, str | Path):  # a path or URL: safe to show, and the likely slip
            what += f" {redact_url(str(settings))!r}"
        raise ConfigError(
            f"the engine takes a Settings, not a {what}; pass a config path or storage URL to "
            "idstitch.open(), or build one with idstitch.Settings(...) or config.load(path)."
        )
    rules = settings.rules
    if not isinstance(rules, IdentityRules):
        raise fail(
            "identity",
            f"is {type(rules).__name__}, not IdentityRules",
            "pass idstitch.IdentityRules(...) as Settings(rules=...)",
        )
    # Block lists are objects in Python (a pattern may carry flags): checked for their type
    # here, kept as they are, and shown to the schema as empty lists.
    if not isinstance(rules.blocked, BlockList):
        raise fail(
            "identity.blocked_values",
            f"is {rules.blocked!r:.80}",
            "pass a BlockList, e.g. DEFAULT_BLOCKLIST | BlockList.build([...])",
        )
    by_type = rules.blocked_by_type
    for t, blocklist in by_type.items() if isinstance(by_type, Mapping) else ():
        if not isinstance(blocklist, BlockList):
            raise fail(
                f"identity.blocked_values_by_type.{t}",
                f"is {blocklist!r:.80}",
                "pass a BlockList, e.g. BlockList.build([...])",
            )
    return {
        "space_id": settings.space_id,
        "storage": {"url": settings.storage_url, "stall_seconds": settings.stall_seconds},
        "sources": _each(
            settings.sources,
            lambda s: {"id": s.id, "write_key": s.write_key} if isinstance(s, Source) else s,
        ),
        "access_tokens": _each(settings.access_tokens, lambda token: {"token": token}),
        "webhooks": _each(
            settings.webhooks,
            lambda w: (
                {"url": w.url, "secret": w.secret, "events": list(w.events)}
                if isinstance(w, Webhook)
                else w
            ),
        ),
        "identity": {
            "priority": _each(rules.priority, lambda t: t),
            "limits": _entries(
                rules.limits,
                lambda lim: (
                    {"max": lim.max, "window": lim.window} if isinstance(lim, Limit) else lim
                ),
            ),
            "blocked_values": [],
            "blocked_values_by_type": _entries(rules.blocked_by_type, lambda _: []),
            "sources": _entries(
                rules.sources, lambda f: vars(f) if isinstance(f, SourceRules) else f
            ),
            "custom_types": _each(rules.custom_types, lambda t: t),
            "max_merges": rules.max_merges,
            "max_identifiers": rules.max_identifiers,
            "preset": rules.preset,
            "generic_after": rules.generic_after,
        },
    }


def _each(value: Any, convert: Callable[[Any], Any]) -> Any:
    return [convert(v) for v in value] if isinstance(value, list | tuple) else value


def _entries(value: Any, convert: Callable[[Any], Any]) -> Any:
    return {k: convert(v) for k, v in value.items()} if isinstance(value, Mapping) else value


# ---- what the schema cannot say: names folded, names repeated, patterns, URLs, secrets -----


def _type_name(value: str, key: str) -> str:
    if not _TYPE_RE.match(value.strip().lower()):
        raise fail(
            key,
            f"has {value!r}, which is not an identifier type",
            TYPE_FIX,
        )
    return value.strip().lower()


def _type_names(names: Iterable[str], key: str) -> list[str]:
    """Type names keyed in one table, folded; a name given twice (after folding) is refused."""
    seen: list[str] = []
    for raw in names:
        name = _type_name(raw, f"{key}.{raw}")
        if name in seen:
            raise fail(f"{key}.{raw}", f"names the type {name!r} again", "give each type once")
        seen.append(name)
    return seen


def _blocklist(entries: list[str | config_schema.RegexEntry], key: str) -> BlockList:
    exact = [e for e in entries if isinstance(e, str)]
    regex: list[str] = []
    for i, entry in enumerate(entries):
        if isinstance(entry, config_schema.RegexEntry):
            try:
                re.compile(entry.regex)
            except re.error as err:
                raise fail(
                    f"{key}[{i}].regex",
                    f"is not a valid regular expression ({err})",
                    "fix the pattern",
                ) from None
            regex.append(entry.regex)
    return BlockList.build(exact, regex)


def _rules(identity: config_schema.IdentityTable, given: IdentityRules | None) -> IdentityRules:
    """The checked [identity] table -> IdentityRules. From Python (`given`), its block lists
    are kept as they were passed."""
    priority = tuple(_type_name(t, "identity.priority") for t in identity.priority)
    if len(set(priority)) != len(priority):
        raise fail("identity.priority", "names a type twice", "list each type once")
    limits = {
        name: Limit(spec.max, spec.window)
        for name, spec in zip(
            _type_names(identity.limits, "identity.limits"), identity.limits.values(), strict=True
        )
    }
    key = "identity.blocked_values_by_type"
    names = _type_names(identity.blocked_values_by_type, key)
    if given is None:
        blocked = DEFAULT_BLOCKLIST | _blocklist(identity.blocked_values, "identity.blocked_values")
        lists = [_blocklist(v, f"{key}.{t}") for t, v in identity.blocked_values_by_type.items()]
    else:
        blocked, lists = given.blocked, list(given.blocked_by_type.values())
    by_type = dict(zip(names, lists, strict=True))
    sources: dict[str, SourceRules] = {}
    for sid, flags in identity.sources.items():
        if source_id_problem(sid) is not None:
            raise fail(
                f"identity.sources.{sid}",
                "is not keyed by a source id",
                "key each entry by a short printable id",
            )
        sources[sid] = SourceRules(flags.create, flags.add, flags.merge, flags.trust_alias)
    declared = [_type_name(t, "identity.custom_types") for t in identity.custom_types]
    # A custom type is declared by naming it anywhere in the identity rules.
    declared += [t for t in (*priority, *limits, *by_type) if t not in BUILTIN_TYPES]
    return IdentityRules(
        priority=priority,
        limits=limits,
        blocked=blocked,
        blocked_by_type=by_type,
        sources=sources,
        custom_types=tuple(dict.fromkeys(t for t in declared if t not in BUILTIN_TYPES)),
        max_merges=identity.max_merges,
        max_identifiers=identity.max_identifiers,
        preset=identity.preset,
        generic_after=identity.generic_after,
    )


def _storage_url(url: str, from_env: bool = False) -> str:
    """A storage URL: any `scheme://...` (the store checks its own form when it opens), and a
    PostgreSQL URL must name its database, or libpq would pick one by its defaults."""

    def failure(problem: str) -> ConfigError:
        fix = URL_FIX
        if from_env:
            return ConfigError(
                f"environment variable {ENV_STORAGE_URL} (it overrides config key `storage.url`) "
                f"{problem}; {fix}, or unset {ENV_STORAGE_URL} to use the config file's."
            )
        return fail("storage.url", problem, fix)

    if "://" not in url:
        raise failure(f"is {url!r}")
    if not url.startswith(("sqlite://", "postgresql://", "postgres://")):
        raise failure(f"is {redact_url(url)!r}, which names no known store")
    if url.startswith("sqlite://"):
        problem = sqlite_url_problem(url)
        if problem is not None:
            raise failure(f"is {url!r}, which {problem}")
    else:
        try:
            parts = urlsplit(url)
        except ValueError as err:
            raise failure(f"is {redact_url(url)!r}, which is not a valid URL ({err})") from None
        named = parts.path[1:] or any(k == "dbname" and v for k, v in parse_qsl(parts.query))
        if not named:
            raise failure(
                f"is {redact_url(url)!r}, which names no database (expected "
                "postgresql://user@host/dbname, or postgresql:///dbname for the local socket)"
            )
    return url


def _settings(
    table: config_schema.ConfigFile, url: str, rules: IdentityRules, path: Path | None
) -> Settings:
    """The checked tables -> Settings, once source ids and the secrets are checked against
    each other: each source id, write key and access token once, no token that is a key."""
    sources = [Source(s.id, s.write_key) for s in table.sources]
    tokens = [t.token for t in table.access_tokens]
    for i, source in enumerate(sources):
        problem = source_id_problem(source.id)
        if problem is not None:
            raise fail(
                f"sources[{i}].id",
                f"{problem} ({source.id!r:.60})",
                "give each source a short printable id",
            )
    if len({s.id for s in sources}) != len(sources):
        raise fail("sources", "repeats a source id", "give each source its own id")
    if len({s.write_key for s in sources}) != len(sources):
        raise fail("sources", "repeats a write key", "give each source its own write key")
    first: dict[str, int] = {}
    for i, token in enumerate(tokens):
        if token in first:
            raise fail(
                f"access_tokens[{i}].token",
                f"repeats access_tokens[{first[token]}].token",
                "list each token once",
            )
        first[token] = i
        for j, source in enumerate(sources):
            if token == source.write_key:
                raise fail(
                    f"access_tokens[{i}].token",
                    f"is the write key of source {source.id!r} (sources[{j}].write_key); a write "
                    "key ships in browser code, so anyone could read profiles with it",
                    "set a different long random token",
                )
    return Settings(
        table.space_id,
        url,
        tuple(sources),
        tuple(tokens),
        rules,
        path,
        table.storage.stall_seconds,
        tuple(_webhook(i, w) for i, w in enumerate(table.webhooks)),
    )


def _webhook(i: int, entry: config_schema.WebhookEntry) -> Webhook:
    key = f"webhooks[{i}]"
    parts = urlsplit(entry.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise fail(f"{key}.url", "is not an http:// or https:// URL", "write the receiver's URL")
    secret = entry.secret
    try:
        raw = base64.b64decode(secret.removeprefix("whsec_") + "==", validate=False)
    except (ValueError, binascii.Error):
        raw = b""
    if not secret.startswith("whsec_") or not 24 <= len(raw) <= 64:
        raise fail(f"{key}.secret", "is not a Standard Webhooks secret", config_schema.SECRET_FIX)
    events = tuple(dict.fromkeys(entry.events))
    return Webhook(entry.url, secret, events)


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
