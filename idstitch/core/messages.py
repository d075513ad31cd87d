"""Segment messages: typed decoding, validation and the timestamp rule.

Only the fields idstitch reads are declared; everything else in a message is kept as raw
bytes for storage. JSON `null` counts as absent everywhere.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, Literal

import msgspec

from idstitch.errors import InvalidMessage, PayloadTooLarge

MessageType = Literal["identify", "track", "page", "screen", "group", "alias"]
MESSAGE_TYPES: Final = ("identify", "track", "page", "screen", "group", "alias")

MAX_MESSAGE_BYTES: Final = 32 * 1024
MAX_REQUEST_BYTES: Final = 500 * 1024
MAX_BATCH_ITEMS: Final = 2500
MAX_MESSAGE_ID_LENGTH: Final = 100
# A trait key is indexed with its profile: at most 500 characters keeps it within what
# every store can index (PostgreSQL: 2,704 bytes per B-tree entry).
MAX_TRAIT_KEY_LENGTH: Final = 500

Id = str | int | float


class Device(msgspec.Struct):
    id: Any = None
    type: Any = None
    advertisingId: Any = None
    adTrackingEnabled: Any = None
    token: Any = None


class ExternalId(msgspec.Struct):
    # Any: a malformed item costs that identifier (a recorded violation), not the message.
    id: Any = None
    type: Any = None
    collection: Any = None
    encoding: Any = None


class Library(msgspec.Struct):
    name: Any = None


class Context(msgspec.Struct):
    library: Library | None = None
    traits: dict[str, Any] | None = None
    device: Device | None = None
    externalIds: list[ExternalId] | None = None
    integrations: dict[str, Any] | None = None


class Message(msgspec.Struct):
    """One Segment call, as far as identity resolution needs it."""

    type: str | None = None
    userId: Id | None = None
    anonymousId: Id | None = None
    previousId: Id | None = None
    groupId: Id | None = None
    event: Any = None
    name: Any = None
    category: Any = None
    messageId: Id | None = None
    timestamp: str | None = None
    originalTimestamp: str | None = None
    sentAt: str | None = None
    receivedAt: str | None = None
    traits: dict[str, Any] | None = None
    properties: msgspec.Raw = msgspec.Raw(b"")  # decoded only when a custom type needs it
    context: Context | None = None
    integrations: dict[str, Any] | None = None
    writeKey: str | None = None


class Batch(msgspec.Struct):
    batch: list[msgspec.Raw] | None = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None
    sentAt: str | None = None
    writeKey: str | None = None


class Prepared(msgspec.Struct):
    """A validated message ready for the resolver: typed view, times, and raw bytes to store."""

    message: Message
    type: str
    message_id: str
    timestamp: float
    received_at: float
    raw: bytes


_message_decoder = msgspec.json.Decoder(Message)
_batch_decoder = msgspec.json.Decoder(Batch)
_dict_decoder = msgspec.json.Decoder(dict[str, Any])
_dict_or_none_decoder = msgspec.json.Decoder(dict[str, Any] | None)
_encoder = msgspec.json.Encoder()

# msgspec reports a path such as `$.context.traits`; map the common ones to Segment-style codes.
_FIELD_CODES = {
    "$.traits": "traits_not_object",
    "$.properties": "properties_not_object",
    "$.context": "context_not_object",
    "$.timestamp": "invalid_timestamp",
    "$.originalTimestamp": "invalid_timestamp",
    "$.sentAt": "invalid_timestamp",
    "$.receivedAt": "invalid_timestamp",
}


# A `\uXXXX` escape: a run of backslashes of odd length before `u` (an even run is escaped
# backslashes followed by a plain `u`).
_ESCAPE = re.compile(rb"(\\+)u([0-9a-fA-F]{4})")


def lone_surrogate(raw: bytes) -> int | None:
    """The byte offset of the first `\\uD800`-`\\uDFFF` escape in JSON text that is not half
    of a pair (a high one followed at once by a low one), or None."""
    pending: int | None = None  # a high half waiting for its low half
    expected = -1  # where that low half must start
    for m in _ESCAPE.finditer(raw):
        if len(m.group(1)) % 2 == 0:
            continue
        at = m.end(1) - 1
        unit = int(m.group(2), 16)
        if pending is not None:
            if at == expected and 0xDC00 <= unit <= 0xDFFF:
                pending = None
                continue
            return pending
        if 0xD800 <= unit <= 0xDBFF:
            pending, expected = at, m.end()
        elif 0xDC00 <= unit <= 0xDFFF:
            return at
    return pending


def _decode_error(err: msgspec.DecodeError, raw: bytes) -> InvalidMessage:
    text = str(err)
    at = lone_surrogate(raw)
    if at is not None:
        # msgspec words this as truncated input or a bad hex escape, which sends the sender
        # looking in the wrong place.
        return InvalidMessage(
            f"the body holds a lone UTF-16 surrogate escape "
            f"(`{raw[at : at + 6].decode('ascii')}` at byte {at}), which is no character; "
            "send the character itself, or both halves of its surrogate pair.",
            "invalid_json",
        )
    path = text.rsplit(" - at `", 1)[1].rstrip("`") if " - at `" in text else ""
    code = _FIELD_CODES.get(path, "invalid_message" if path else "invalid_json")
    field = path[2:] if path.startswith("$.") else path
    if field:
        problem = text.split(" - at ")[0]
        return InvalidMessage(f"field `{field}`: {problem}; fix the value and resend.", code)
    if text.startswith("Expected `object`"):
        return InvalidMessage(
            f"the message is not a JSON object ({text}); send one object per message.",
            "invalid_message",
        )
    return InvalidMessage(f"the body is not valid JSON ({text}); send a JSON object.", code)


def _undecodable(err: Exception) -> InvalidMessage:
    """JSON that the decoder cannot take although it may be well formed: nested deeper than
    the interpreter allows, or bytes that are not UTF-8."""
    if isinstance(err, RecursionError):
        return InvalidMessage(
            "the body is nested too deeply to read; keep objects and arrays under a few "
            "hundred levels.",
            "invalid_json",
        )
    return InvalidMessage(
        f"the body is not valid UTF-8 ({err}); send JSON encoded as UTF-8.", "invalid_json"
    )


def decode_message(raw: bytes) -> Message:
    try:
        message = _message_decoder.decode(raw)
        # `properties` is kept raw (decoded only when needed): its strings must be UTF-8
        # too, or every later read of the event would fail. ASCII, the usual case, needs no
        # decoding to know.
        if not raw.isascii():
            raw.decode()
    except msgspec.DecodeError as err:
        raise _decode_error(err, raw) from None
    except (RecursionError, UnicodeDecodeError) as err:
        raise _undecodable(err) from None
    return message


def decode_batch(raw: bytes) -> Batch:
    try:
        return _batch_decoder.decode(raw)
    except msgspec.DecodeError as err:
        raise _decode_error(err, raw) from None
    except (RecursionError, UnicodeDecodeError) as err:
        raise _undecodable(err) from None


def properties_of(message: Message) -> dict[str, Any] | None:
    """The message's `properties` as a dict (decoded on demand)."""
    if not message.properties:
        return None
    value: dict[str, Any] | None = _dict_or_none_decoder.decode(message.properties)
    return value


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


# The instants a stored timestamp may take: years 1 to 9999 in UTC, what ISO-8601 text (and
# Python's datetime) can show. An offset can push a valid-looking text outside this range.
EARLIEST = datetime(1, 1, 1, tzinfo=UTC).timestamp()
LATEST = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC).timestamp()


def _out_of_range(what: str) -> InvalidMessage:
    return InvalidMessage(
        f"{what} falls outside the years 1 to 9999 UTC; send a real date-time such as "
        "2025-01-15T02:02:15.908Z.",
        "invalid_timestamp",
    )


def parse_time(value: str, field: str) -> float:
    """ISO-8601 to Unix seconds; a value without an offset is taken as UTC."""
    try:
        moment = datetime.fromisoformat(value)  # accepts a trailing Z since Python 3.11
    except ValueError:
        moment = _lenient_time(value, field)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        seconds = moment.astimezone(UTC).timestamp()  # raises past the years 1 to 9999 UTC
    except (OverflowError, ValueError):
        raise _out_of_range(f"field `{field}`: {value!r}") from None
    # A float cannot tell the last microseconds of 9999 from the year 10000: they read as the
    # latest time a float can carry back into a date.
    return min(seconds, LATEST)


def _lenient_time(value: str, field: str) -> datetime:
    text = value.strip()
    if text.endswith("z"):
        text = text[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise InvalidMessage(
            f"field `{field}`: {value!r} is not an ISO-8601 date-time; "
            "send e.g. 2025-01-15T02:02:15.908Z.",
            "invalid_timestamp",
        ) from None


def format_time(seconds: float) -> str:
    """Unix seconds to ISO-8601 UTC with milliseconds and a `Z` (clamped to years 1-9999, so
    that no stored value can make a read fail)."""
    moment = datetime.fromtimestamp(min(max(seconds, EARLIEST), LATEST), UTC)
    # isoformat pads the year to four digits (strftime's %Y does not, for years before 1000).
    return moment.isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


def _id_text(value: Id | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return str(value)


def validate(message: Message, type_: str) -> None:
    """Segment's required fields per call; raises InvalidMessage naming the first problem."""
    props = bytes(message.properties)
    if props and props[:1] not in (b"{", b"n"):
        raise InvalidMessage(
            "field `properties`: Expected `object`; send properties as a JSON object.",
            "properties_not_object",
        )
    has_user = _id_text(message.userId) not in (None, "")
    has_anon = _id_text(message.anonymousId) not in (None, "")
    if type_ == "alias":
        if not has_user:
            raise InvalidMessage("alias needs `userId`; add the new user id.", "id_required")
        if _id_text(message.previousId) in (None, ""):
            raise InvalidMessage("alias needs `previousId`; add the old id.", "id_required")
        return
    if not (has_user or has_anon):
        raise InvalidMessage(
            f"{type_} needs `userId` or `anonymousId`; add one of them.", "no_user_anon_id"
        )
    if type_ == "track":
        if message.event is None:
            raise InvalidMessage("track needs `event`; add the event name.", "event_not_defined")
        if not isinstance(message.event, str) or not message.event:
            raise InvalidMessage(
                "field `event` must be a non-empty string; send the event name as text.",
                "event_not_string",
            )
    elif type_ == "group" and _id_text(message.groupId) in (None, ""):
        raise InvalidMessage("group needs `groupId`; add the account id.", "group_id_required")
    if type_ in ("identify", "group") and message.traits:
        for key in message.traits:
            if len(key) > MAX_TRAIT_KEY_LENGTH:
                raise InvalidMessage(
                    f"a trait key is {len(key):,} characters long; the limit is "
                    f"{MAX_TRAIT_KEY_LENGTH}. Shorten the key.",
                    "trait_key_too_long",
                )
            if "\x00" in key:
                # PostgreSQL text cannot hold it, and any stand-in could be another key.
                raise InvalidMessage(
                    f"the trait key {key[:100]!r} holds a NUL character (\\u0000); remove it.",
                    "invalid_trait_key",
                )


def _moment(value: str | None, field: str) -> float | None:
    """A timestamp field in Unix seconds; None when absent (null or an empty string)."""
    return parse_time(value, field) if value else None


def compute_timestamp(message: Message, received_at: float, sent_at: float | None = None) -> float:
    """`receivedAt - (sentAt - originalTimestamp)` when sentAt is known, else the given
    timestamp, else receivedAt. `sent_at` is a batch's sentAt (Unix seconds, parsed once per
    batch), for items without their own.

    Every timestamp present is parsed, whether the rule needs it or not, so an unparseable
    one is refused (`invalid_timestamp`, naming the field) whatever else the message holds."""
    timestamp = _moment(message.timestamp, "timestamp")
    original = _moment(message.originalTimestamp, "originalTimestamp")
    own_sent = _moment(message.sentAt, "sentAt")
    sent = own_sent if own_sent is not None else sent_at
    if original is None:
        original = timestamp
    if sent is not None and original is not None:
        computed = received_at - (sent - original)
        if not EARLIEST <= computed <= LATEST:
            raise _out_of_range(
                "the timestamp computed as receivedAt - (sentAt - originalTimestamp)"
            )
        return computed
    if timestamp is not None:
        return timestamp
    return received_at


def check_size(raw: bytes | msgspec.Raw, limit: int = MAX_MESSAGE_BYTES) -> None:
    """Raises PayloadTooLarge for a message over `limit` bytes as received."""
    if len(raw) > limit:
        raise PayloadTooLarge(
            f"the message is {len(raw):,} bytes; the limit is {limit:,} bytes per message. "
            "Trim its properties or traits."
        )


def prepare(
    raw: bytes,
    *,
    type_: str | None = None,
    received_at: float,
    sent_at: float | None = None,
    keep_received_at: bool = False,
    fallback_id: Callable[[], str] | None = None,
    max_bytes: int | None = MAX_MESSAGE_BYTES,
) -> Prepared:
    """Decode and validate one message. `type_` comes from the route for single calls.

    With `keep_received_at` (imports of exported data), a message's own `receivedAt` wins.
    `fallback_id` names a message that has no `messageId` (default: a random id).
    `max_bytes=None` skips the size check (for an item already checked as received).
    `sent_at` is a batch's sentAt in Unix seconds.
    """
    if max_bytes is not None:
        check_size(raw, max_bytes)
    message = decode_message(raw)
    kind = type_ or message.type
    if kind is None:
        raise InvalidMessage(
            "the message has no `type`; set it to one of " + ", ".join(MESSAGE_TYPES) + ".",
            "type_required",
        )
    kind = kind.strip().lower() if isinstance(kind, str) else kind
    if kind not in MESSAGE_TYPES:
        raise InvalidMessage(
            f"`type` {message.type!r} is not a Segment call; use one of "
            + ", ".join(MESSAGE_TYPES)
            + ".",
            "invalid_type",
        )
    validate(message, kind)
    if keep_received_at and message.receivedAt:
        received_at = parse_time(message.receivedAt, "receivedAt")
    timestamp = compute_timestamp(message, received_at, sent_at)
    message_id = _id_text(message.messageId)
    if message_id is not None:
        message_id = message_id.strip()
        if "\x00" in message_id:
            raise InvalidMessage(
                "`messageId` holds a NUL character; send an id without it.", "invalid_message_id"
            )
        if len(message_id) > MAX_MESSAGE_ID_LENGTH:
            raise InvalidMessage(
                f"`messageId` is {len(message_id)} characters; the limit is "
                f"{MAX_MESSAGE_ID_LENGTH}.",
                "message_id_too_long",
            )
    if not message_id:
        message_id = fallback_id() if fallback_id is not None else "api-" + uuid.uuid4().hex
    return Prepared(message, kind, message_id, timestamp, received_at, raw)


def merge_batch_defaults(item: msgspec.Raw, batch: Batch) -> bytes:
    """Apply a batch's top-level `context` and `integrations` to one item (item keys win);
    raises InvalidMessage for an item that cannot be read or whose own key is not an object."""
    try:
        body = _dict_decoder.decode(item)
    except msgspec.DecodeError as err:
        raise _decode_error(err, bytes(item)) from None
    except (RecursionError, UnicodeDecodeError) as err:
        raise _undecodable(err) from None
    for key in ("context", "integrations"):
        shared = getattr(batch, key)
        if shared:
            own = body.get(key)
            if own is not None and not isinstance(own, dict):
                raise InvalidMessage(
                    f"field `{key}`: Expected `object`; send {key} as a JSON object.",
                    f"{key}_not_object" if key == "context" else "invalid_message",
                )
            body[key] = {**shared, **own} if own else dict(shared)
    return _encoder.encode(body)
