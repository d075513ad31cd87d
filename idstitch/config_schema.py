"""The shape of the config file, declared once as msgspec structs.

A TOML file and a Settings built in Python (turned into the same tables by `config.as_table`)
are both checked by `decode`, so one declaration gives one set of error messages. What a
struct cannot say (type names folded to lower case, names repeated after folding, regular
expressions, storage URLs, secrets compared with each other) is checked in `config`.

Each field's fix is in its `Meta(extra={"fix": ...})`, or is derived from its type; a field
marked `secret` never has its value shown, nor does anything inside it.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta, Struct, field

from idstitch.core.rules import DEFAULT_PRESET, PresetName, WindowName
from idstitch.errors import ConfigError
from idstitch.storage.base import STALL_SECONDS

DEFAULT_DB_URL = "sqlite:///idstitch-data/idstitch.db"
MIN_STALL_SECONDS, MAX_STALL_SECONDS = 1, 300
TYPE_FIX = "use lower-case letters, digits, '_', '.' or '-', e.g. \"phone\""
URL_FIX = 'write "sqlite:///path/to/file.db" or "postgresql://user@host/dbname"'

PositiveInt = Annotated[int, Meta(ge=1)]
TypeName = Annotated[str, Meta(extra={"fix": TYPE_FIX})]
Secret = Annotated[str, Meta(min_length=8, extra={"secret": True})]


class _Table(Struct, forbid_unknown_fields=True, kw_only=True):
    # How to write the whole table, for a value that is not one.
    fix: ClassVar[str] = "write a table"


class StorageTable(_Table):
    fix: ClassVar[str] = 'write [storage] url = "sqlite:///..."'
    url: Annotated[str, Meta(extra={"fix": URL_FIX})] = DEFAULT_DB_URL
    stall_seconds: Annotated[
        float,
        Meta(
            ge=MIN_STALL_SECONDS,
            le=MAX_STALL_SECONDS,
            extra={
                "fix": f"use a number of seconds from {MIN_STALL_SECONDS} to {MAX_STALL_SECONDS}"
            },
        ),
    ] = STALL_SECONDS


class SourceEntry(_Table):
    fix: ClassVar[str] = 'write id = "web" and write_key = "..." (in Python: Source("web", "..."))'
    id: Annotated[str, Meta(extra={"fix": "give each source a short printable id"})]
    write_key: Annotated[
        Secret, Meta(extra={"fix": "set a long random write key (at least 8 characters)"})
    ]


class TokenEntry(_Table):
    fix: ClassVar[str] = 'write token = "..."'
    token: Annotated[Secret, Meta(extra={"fix": "set a long random token (at least 8 characters)"})]


class LimitTable(_Table):
    fix: ClassVar[str] = 'write { max = 5, window = "weekly" } (in Python: Limit(5, "weekly"))'
    max: PositiveInt
    window: WindowName = "ever"


class SourceFlags(_Table):
    fix: ClassVar[str] = (
        "write create/add/merge = true or false (in Python: SourceRules(create=..., ...))"
    )
    create: bool = True
    add: bool = True
    merge: bool = True
    trust_alias: Annotated[bool | None, Meta(extra={"fix": "write true or false"})] = None


class RegexEntry(_Table):
    fix: ClassVar[str] = 'write { regex = "..." }'
    regex: Annotated[str, Meta(extra={"fix": "write the regular expression as a string"})]


BlockEntries = Annotated[
    list[Annotated[str | RegexEntry, Meta(extra={"fix": 'write a string or { regex = "..." }'})]],
    Meta(extra={"fix": 'write e.g. ["x@example.com", { regex = "^test" }]'}),
]


class IdentityTable(_Table):
    fix: ClassVar[str] = "write [identity]"
    priority: Annotated[list[TypeName], Meta(extra={"fix": 'write e.g. ["user_id", "email"]'})] = (
        field(default_factory=list)
    )
    blocked_values: BlockEntries = field(default_factory=list)
    blocked_values_by_type: Annotated[
        dict[str, BlockEntries], Meta(extra={"fix": "write [identity.blocked_values_by_type]"})
    ] = field(default_factory=dict)
    limits: Annotated[dict[str, LimitTable], Meta(extra={"fix": "write [identity.limits]"})] = (
        field(default_factory=dict)
    )
    sources: Annotated[
        dict[str, SourceFlags], Meta(extra={"fix": "write [identity.sources.<id>]"})
    ] = field(default_factory=dict)
    custom_types: Annotated[list[TypeName], Meta(extra={"fix": 'write e.g. ["phone"]'})] = field(
        default_factory=list
    )
    max_merges: PositiveInt = 100
    max_identifiers: PositiveInt = 1000
    preset: PresetName = DEFAULT_PRESET  # Segment's rules exactly, or idstitch's
    generic_after: PositiveInt = 2  # the idstitch preset: known users a value may be seen with


WebhookEvent = Literal["merge", "identifier", "traits"]
SECRET_FIX = (
    "set a Standard Webhooks secret, whsec_ and 24 to 64 random bytes in base64; make one with: "
    "python3 -c 'import base64, os; print(\"whsec_\" + base64.b64encode(os.urandom(32)).decode())'"
)


class WebhookEntry(_Table):
    fix: ClassVar[str] = (
        'write url = "https://...", secret = "whsec_...", events = ["merge", "identifier", '
        '"traits"] (in Python: Webhook(url, secret))'
    )
    url: Annotated[
        str,
        Meta(max_length=2000, extra={"fix": "write an http:// or https:// URL"}),
    ]
    secret: Annotated[
        str,
        Meta(
            min_length=8,
            extra={
                "secret": True,
                "fix": SECRET_FIX,
            },
        ),
    ]
    events: Annotated[
        list[WebhookEvent],
        Meta(
            min_length=1,
            extra={"fix": 'list some of "merge", "identifier", "traits"'},
        ),
    ] = field(default_factory=lambda: ["merge", "identifier", "traits"])


class ConfigFile(_Table):
    space_id: Annotated[
        str,
        Meta(pattern=r"^[A-Za-z0-9_\-]{1,64}$", extra={"fix": "use letters, digits, '_' or '-'"}),
    ] = "default"
    storage: StorageTable = field(default_factory=StorageTable)
    sources: Annotated[
        list[SourceEntry],
        Meta(
            extra={
                "fix": 'write [[sources]] id = "web" (in Python: a tuple of Source)',
                "secret": True,
            }
        ),
    ] = field(default_factory=list)
    access_tokens: Annotated[
        list[TokenEntry],
        Meta(extra={"fix": "write [[access_tokens]] (in Python: a tuple of str)", "secret": True}),
    ] = field(default_factory=list)
    identity: IdentityTable = field(default_factory=IdentityTable)
    webhooks: Annotated[
        list[WebhookEntry],
        Meta(
            max_length=20,
            extra={
                "fix": 'write [[webhooks]] url = "https://..." (in Python: a tuple of Webhook)',
                "secret": True,
            },
        ),
    ] = field(default_factory=list)


def fail(key: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"config key `{key}` {problem}; {fix}.")


def decode(data: Any) -> ConfigFile:
    """A config file's tables -> ConfigFile, or a ConfigError naming the key, value and fix."""
    try:
        return msgspec.convert(data, ConfigFile)
    except msgspec.ValidationError as err:
        raise _explain(str(err), data) from None


# ---- msgspec's message -> ours -----------------------------------------------------------

_MESSAGE = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>.*)`)?$", re.S)
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+|\.\.\.)\]")
_MISSING = object()
# msgspec's names for the types a value failed to be.
_KINDS = {
    "array": "a list",
    "object": "a table",
    "int": "a whole number",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "str | object": "a string or a table",
}


def _explain(message: str, data: Any) -> ConfigError:
    parsed = _MESSAGE.match(message)
    assert parsed is not None  # the pattern matches any text
    what, path = parsed["what"], parsed["path"] or ""
    key, value, type_, secret = _walk(path, data)
    unknown = re.match(r"Object contains unknown field `(.*)`$", what)
    if unknown:
        allowed = ", ".join(sorted(_fields(type_)))
        return fail(_join(key, unknown[1]), "is not a known setting", "allowed here: " + allowed)
    missing = re.match(r"Object missing required field `(.*)`$", what)
    if missing:
        inner = _fields(type_)[missing[1]]
        return fail(_join(key, missing[1]), "is missing", _fix(inner))
    mismatch = re.match(r"Expected `(.*?)`, got `", what)
    expected = _KINDS.get(mismatch[1], mismatch[1]) if mismatch else None
    if secret:  # a write key or token: say what is wrong with it, never what it is
        problem = f"is not {expected}" if expected else "is not accepted (its value is not shown)"
    else:
        problem = f"is {value!r:.80}" + (f", which is not {expected}" if expected else "")
    return fail(key or "(top level)", problem, _fix(type_))


def _walk(path: str, data: Any) -> tuple[str, Any, Any, bool]:
    """Follow msgspec's path (`.name`, `[3]`, `[...]` for a dict entry) through the data and
    the schema: the dotted TOML key, the value there, its declared type, whether secret."""
    key, value, type_, secret = "", data, ConfigFile, False
    for name, index in _STEP.findall(path):
        type_, metas = _unwrap(type_)
        secret = secret or any(m.extra and m.extra.get("secret") for m in metas)
        if name:
            type_ = _fields(type_)[name]
            value = value.get(name, _MISSING) if isinstance(value, dict) else _MISSING
            key = _join(key, name)
        elif index != "...":
            type_ = typing.get_args(type_)[0]
            value = value[int(index)]
            key = f"{key}[{index}]"
        else:  # msgspec does not name the dict key: it is the first entry that fails alone
            type_ = typing.get_args(type_)[1]
            for entry_key, entry in value.items():
                try:
                    msgspec.convert(entry, type_)
                except msgspec.ValidationError:
                    key, value = _join(key, str(entry_key)), entry
                    break
    _, metas = _unwrap(type_)
    secret = secret or any(m.extra and m.extra.get("secret") for m in metas)
    return key, value, type_, secret


def _unwrap(type_: Any) -> tuple[Any, list[Meta]]:
    metas: list[Meta] = []
    while typing.get_origin(type_) is Annotated:
        type_, *extras = typing.get_args(type_)
        metas[:0] = [m for m in extras if isinstance(m, Meta)]
    return type_, metas


def _fields(type_: Any) -> dict[str, Any]:
    struct = _unwrap(type_)[0]
    if typing.get_origin(struct) in (types.UnionType, typing.Union):  # str | RegexEntry
        struct = next(
            t for t in typing.get_args(struct) if isinstance(t, type) and issubclass(t, _Table)
        )
    hints = typing.get_type_hints(struct, include_extras=True)
    return {name: hints[name] for name in struct.__struct_fields__}


def _fix(type_: Any) -> str:
    """The field's own fix, else one its type implies."""
    base, metas = _unwrap(type_)
    for meta in reversed(metas):  # the outermost annotation speaks last, and wins
        if meta.extra and "fix" in meta.extra:
            return str(meta.extra["fix"])
    if isinstance(base, type) and issubclass(base, _Table):
        return base.fix
    if typing.get_origin(base) is Literal:
        return "use one of " + ", ".join(typing.get_args(base))
    if base is bool:
        return "write true or false"
    if base is int:
        floor = next((m.ge for m in metas if m.ge is not None), None)
        return "write a whole number" + (f" of at least {floor}" if floor is not None else "")
    return "see the configuration reference in the README"


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name
