"""Identifiers: what SPEC section 1 reads from a message, normalised and checked against blocks."""

from __future__ import annotations

import decimal
import hashlib
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import msgspec

from idstitch.core.messages import Message, properties_of
from idstitch.core.rules import MAX_TYPE_LENGTH, MAX_VALUE_LENGTH, IdentityRules

USERS = "users"
ACCOUNTS = "accounts"


def key_of(collection: str, type_: str, value: str) -> str:
    """An identifier as one string, unique per (collection, type, value): what a store locks
    and looks up (`Store.batch` keys)."""
    return ("a" if collection == ACCOUNTS else "u") + type_ + "\x1f" + value


def slot_of(key: str) -> int:
    """The graph's dictionary key for `key`: a 128-bit digest as an int, 44 bytes in memory
    where the text takes about 100, and no two identifiers share one (no one can make two
    collide)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return int.from_bytes(digest, "big")


# Identifiers and refusals live on in the extractor's verdict cache: Structs the cyclic garbage
# collector does not track (they refer only to strings), so its collections never walk them.
class Identifier(msgspec.Struct, frozen=True, gc=False):
    collection: str
    type: str
    value: str
    key: str  # key_of(collection, type, value), computed once
    slot: int  # slot_of(key), the graph's key

    @classmethod
    def of(cls, collection: str, type_: str, value: str) -> Identifier:
        key = key_of(collection, type_, value)
        return cls(collection, type_, value, key, slot_of(key))

    def __str__(self) -> str:
        return f"{self.type}:{self.value}"


VERDICT_CACHE_SIZE = 200_000


class Dropped(msgspec.Struct, frozen=True, gc=False):
    identifier: Identifier
    rule: str
    detail: str


class Extracted(NamedTuple):
    """The identifiers of one message, per side, in extraction order, plus what was dropped."""

    users: list[Identifier]
    accounts: list[Identifier]
    alias_previous: list[Identifier]
    dropped: list[Dropped]


def normalize(type_: str, value: Any) -> str | None:
    """A value as stored: strings and numbers only, trimmed; e-mails lower-cased."""
    if isinstance(value, str):
        text = value.strip()
    elif isinstance(value, bool) or not isinstance(value, int | float):
        return None
    elif isinstance(value, int):
        text = str(value)
    else:
        number = number_text(value)
        if number is None:
            return None
        text = number
    if type_ == "email":
        text = text.lower()
    return text


def number_text(value: float) -> str | None:
    """A JSON number as JavaScript's `String()` writes it, so that `1000`, `1000.0` and `1e3`
    name one identifier, as they do in the browser that sent them: integral values without a
    fraction, exponents only below 1e-6 and from 1e21, `-0` as `0`. None for infinities."""
    if not math.isfinite(value):
        return None  # 1e400 reads as infinity: no such id was meant
    if value == 0:
        return "0"
    # The shortest digits that read back as the same double (what repr and JavaScript use).
    sign, digits, exponent = decimal.Decimal(repr(value)).as_tuple()
    point = len(digits) + int(exponent)  # the value is 0.<digits> x 10^point
    shown = "".join(map(str, digits)).rstrip("0")
    head = "-" if sign else ""
    if len(shown) <= point <= 21:
        return head + shown + "0" * (point - len(shown))
    if 0 < point <= 21:
        return head + shown[:point] + "." + shown[point:]
    if -6 < point <= 0:
        return head + "0." + "0" * -point + shown
    power = point - 1
    body = shown[0] + ("." + shown[1:] if len(shown) > 1 else "")
    return f"{head}{body}e{'+' if power > 0 else '-'}{abs(power)}"


def _camel(snake: str) -> str:
    head, *rest = re.split(r"[_.]", snake)
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def custom_keys(custom_types: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
    """For each configured custom type, the payload keys it is read from."""
    out = []
    for type_ in custom_types:
        keys = dict.fromkeys((type_, _camel(type_)))
        out.append((type_, tuple(keys)))
    return out


class Extractor:
    """Reads identifiers out of messages under one set of rules."""

    def __init__(self, rules: IdentityRules):
        self.rules = rules
        self.custom = custom_keys(rules.custom_types)
        self._verdicts: dict[str, Identifier | Dropped] = {}

    def _custom_from(self, source: Mapping[str, Any] | None) -> Iterator[tuple[str, Any]]:
        if not source:
            return
        for type_, keys in self.custom:
            for key in keys:
                value = source.get(key)
                if value is not None:
                    yield type_, value

    def extract(self, message: Message, kind: str) -> Extracted:
        users: list[tuple[str, Any]] = []
        accounts: list[tuple[str, Any]] = []
        previous: list[tuple[str, Any]] = []
        context = message.context
        ctx_traits = context.traits if context else None
        if message.userId is not None:
            users.append(("user_id", message.userId))
        if kind == "alias" and message.previousId is not None:
            previous.append(("user_id", message.previousId))
            previous.append(("anonymous_id", message.previousId))
        if message.anonymousId is not None:
            users.append(("anonymous_id", message.anonymousId))
        if kind != "group" and message.traits:
            email = message.traits.get("email")
            if email is not None:
                users.append(("email", email))
        if ctx_traits:
            email = ctx_traits.get("email")
            if email is not None:
                users.append(("email", email))
        if context is not None and context.device is not None:
            users.extend(_device_ids(context.device))
        ga = _ga_client_id(message)
        if ga is not None:
            users.append(("ga_client_id", ga))
        dropped: list[Dropped] = []
        if context is not None and context.externalIds:
            for item in context.externalIds:
                collection = _collection_of(item.collection)
                if collection is None:
                    dropped.append(_bad_collection(item))
                    continue
                type_ = item.type.strip().lower() if isinstance(item.type, str) else None
                if not type_ or not type_.isprintable() or len(type_) > MAX_TYPE_LENGTH:
                    # A control character (the key separator among them) would let two
                    # different identifiers share one key.
                    dropped.append(_bad_type(collection, item.type, item.id))
                    continue
                (accounts if collection == ACCOUNTS else users).append((type_, item.id))
        if self.custom:
            # SPEC 1: `traits`, `properties` and `context.traits` of any call; a group call's
            # traits describe the account.
            if kind == "group":
                accounts.extend(self._custom_from(message.traits))
            else:
                users.extend(self._custom_from(message.traits))
            users.extend(self._custom_from(properties_of(message)))
            users.extend(self._custom_from(ctx_traits))
        if kind == "group" and message.groupId is not None:
            accounts.insert(0, ("group_id", message.groupId))
        return Extracted(
            self._clean("users", users, dropped) if users else [],
            self._clean("accounts", accounts, dropped) if accounts else [],
            self._clean("users", previous, dropped) if previous else [],
            dropped,
        )

    def _clean(
        self, collection: str, pairs: list[tuple[str, Any]], dropped: list[Dropped]
    ) -> list[Identifier]:
        out: list[Identifier] = []
        if not pairs:
            return out
        seen: set[str] = set()
        prefix = "a" if collection == ACCOUNTS else "u"
        cache = self._verdicts
        for type_, raw in pairs:
            # The same ids come back message after message: remember each verdict.
            raw_key = prefix + type_ + "\x1f" + raw if raw.__class__ is str else None
            verdict = cache.get(raw_key) if raw_key is not None else None
            if verdict is None:
                verdict = self._judge(collection, prefix, type_, raw)
                if raw_key is not None:
                    if len(cache) >= VERDICT_CACHE_SIZE:
                        cache.clear()
                    cache[raw_key] = verdict
            if verdict.__class__ is Identifier:
                ident: Identifier = verdict
                if ident.key not in seen:
                    seen.add(ident.key)
                    out.append(ident)
            else:
                drop: Dropped = verdict  # type: ignore[assignment]
                if drop.identifier.key not in seen:
                    seen.add(drop.identifier.key)
                    dropped.append(drop)
        if len(out) > 1:
            rank = self.rules.rank
            last = rank(out[0].type)
            for ident in out:
                here = rank(ident.type)
                if here < last:
                    out.sort(key=lambda i: rank(i.type))  # stable: ties keep extraction order
                    break
                last = here
        return out

    def _judge(self, collection: str, prefix: str, type_: str, raw: Any) -> Identifier | Dropped:
        value = normalize(type_, raw)
        if value is None:
            return Dropped(
                Identifier.of(collection, type_, repr(raw)[:100]),
                "invalid_value",
                f"{type_} must be a string or a number",
            )
        if len(value) > MAX_VALUE_LENGTH:
            return Dropped(
                Identifier.of(collection, type_, _shown(value) + "..."),
                "value_too_long",
                f"{len(value)} characters; the limit is {MAX_VALUE_LENGTH}",
            )
        if "\x00" in value:
            return Dropped(
                Identifier.of(collection, type_, _shown(value)),
                "invalid_value",
                "the value holds a NUL character; no store keeps it apart from U+FFFD",
            )
        if not value.isascii() and not is_text(value):
            return Dropped(
                Identifier.of(collection, type_, _shown(value)),
                "invalid_value",
                "the value holds a lone surrogate, which is not text",
            )
        key = prefix + type_ + "\x1f" + value
        hit = self.rules.blocked_by(type_, value)
        if hit is not None:  # never in the graph: no slot
            ident = Identifier(collection, type_, value, key, -1)
            return Dropped(ident, "blocked_value", f"matches blocked value {hit!r}")
        return Identifier(collection, type_, value, key, slot_of(key))


def is_text(value: str) -> bool:
    """Whether a store can keep `value` as itself: UTF-8 has no form for a lone surrogate
    (half of a UTF-16 pair, or a byte that was not UTF-8 in a file name)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _shown(value: str) -> str:
    """A value as a violation records it: short, and storable by every store (a lone
    surrogate and a NUL, which PostgreSQL text refuses, are written as escapes)."""
    return value[:100].encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")


def _bad_type(collection: str, type_: Any, raw: Any) -> Dropped:
    shown = repr(type_)[:100]
    return Dropped(
        Identifier.of(collection, shown, _shown(str(raw))),
        "invalid_type",
        f"type {shown} is missing, not a string, empty, longer than {MAX_TYPE_LENGTH} "
        "characters or holds control characters; types are short printable names",
    )


def _collection_of(raw: Any) -> str | None:
    """An externalIds item's collection: `users` when absent, None when unknown."""
    if raw is None:
        return USERS
    if isinstance(raw, str):
        name = raw.strip().lower()
        if name in (USERS, ACCOUNTS):
            return name
    return None


def _bad_collection(item: Any) -> Dropped:
    shown = repr(item.collection)[:100]
    type_ = item.type.strip().lower() if isinstance(item.type, str) else repr(item.type)
    return Dropped(
        Identifier.of(USERS, _shown(type_), _shown(str(item.id))),
        "invalid_collection",
        f"collection {shown} is neither 'users' nor 'accounts'",
    )


def _device_ids(device: Any) -> Iterator[tuple[str, Any]]:
    kind = device.type
    if not isinstance(kind, str):
        return
    kind = kind.strip().lower()
    if kind not in ("ios", "android"):
        return
    if device.id is not None:
        yield f"{kind}.id", device.id
    if device.advertisingId is not None and device.adTrackingEnabled is True:
        yield f"{kind}.idfa", device.advertisingId
    if device.token is not None:
        yield f"{kind}.push_token", device.token


def _ga_client_id(message: Message) -> Any:
    for integrations in (
        message.context.integrations if message.context else None,
        message.integrations,
    ):
        if integrations:
            ga = integrations.get("Google Analytics")
            if isinstance(ga, dict) and ga.get("clientId") is not None:
                return ga["clientId"]
    return None


def parse_ref(ref: str, collection: str | None = None) -> tuple[str, str, str] | str:
    """A profile reference: a segment_id, or `(collection, type, value)` from `type:value`."""
    text = ref.strip()
    if (text.startswith(("use_", "acc_"))) and ":" not in text:
        return text
    type_, sep, value = text.partition(":")
    if not sep or not type_ or not value:
        from idstitch.errors import InvalidReference

        raise InvalidReference(
            f"profile reference {ref!r} is neither `type:value` (e.g. user_id:u123) "
            "nor a segment_id (use_... or acc_...)."
        )
    type_ = type_.strip().lower()
    coll = collection or (ACCOUNTS if type_ == "group_id" else USERS)
    norm = normalize(type_, value)
    return coll, type_, norm if norm is not None else value
