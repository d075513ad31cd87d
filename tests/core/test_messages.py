"""Message validation and the timestamp rule (SPEC section 4, applied by the engine to every call).

- Validation: every call needs `userId` or `anonymousId` (alias: `userId` and `previousId`;
  group: `groupId`; track: `event`, a non-empty string); `traits`, `properties`, `context` must
  be objects; ids are strings or numbers; JSON `null` counts as absent; 32 KiB per message.
  Each refusal has a code and names the field.
- Timestamps: `timestamp = receivedAt - (sentAt - originalTimestamp)` when `sentAt` is present;
  else the given `timestamp`, else `receivedAt`.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idstitch.core.messages import (
    MAX_MESSAGE_BYTES,
    decode_batch,
    format_time,
    lone_surrogate,
    parse_time,
    prepare,
)
from idstitch.errors import InvalidMessage, PayloadTooLarge
from tests.conftest import MakeEngine

RECEIVED = datetime(2025, 1, 15, 12, 0, 0, tzinfo=UTC)
CODE = re.compile(r"[a-z][a-z0-9_]*")


def raw(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def refusal(type_: str | None, body: dict[str, Any]) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as caught:
        prepare(raw(body), type_=type_, received_at=RECEIVED.timestamp())
    return caught.value


INVALID = [
    # (route type, body, a field the refusal must name)
    ("identify", {}, "userId"),
    ("identify", {}, "anonymousId"),
    ("identify", {"userId": None, "anonymousId": None}, "userId"),
    ("identify", {"userId": ""}, "anonymousId"),
    ("page", {"traits": {"email": "a@b.io"}}, "userId"),
    ("track", {"userId": "u1"}, "event"),
    ("track", {"userId": "u1", "event": None}, "event"),
    ("track", {"userId": "u1", "event": ""}, "event"),
    ("track", {"userId": "u1", "event": 5}, "event"),
    ("track", {"userId": "u1", "event": {"name": "x"}}, "event"),
    ("group", {"userId": "u1"}, "groupId"),
    ("group", {"userId": "u1", "groupId": None}, "groupId"),
    ("alias", {"userId": "u1"}, "previousId"),
    ("alias", {"userId": "u1", "previousId": None}, "previousId"),
    ("alias", {"previousId": "a1"}, "userId"),
    ("alias", {"anonymousId": "a1", "previousId": "a0"}, "userId"),
    ("identify", {"userId": "u1", "traits": "x"}, "traits"),
    ("identify", {"userId": "u1", "traits": ["email"]}, "traits"),
    ("track", {"userId": "u1", "event": "e", "properties": []}, "properties"),
    ("track", {"userId": "u1", "event": "e", "properties": 3}, "properties"),
    ("identify", {"userId": "u1", "context": "x"}, "context"),
    ("identify", {"userId": "u1", "context": [1]}, "context"),
    ("identify", {"userId": {"id": 1}}, "userId"),
    ("identify", {"userId": True}, "userId"),
    ("identify", {"anonymousId": [1]}, "anonymousId"),
    ("group", {"userId": "u1", "groupId": {}}, "groupId"),
    ("group", {"userId": "u1", "groupId": False}, "groupId"),
    ("alias", {"userId": "u1", "previousId": True}, "previousId"),
    ("identify", {"userId": "u1", "timestamp": "yesterday"}, "timestamp"),
    ("identify", {"userId": "u1", "timestamp": "2025-01-15", "sentAt": "noon"}, "sentAt"),
    ("identify", {"userId": "u1", "sentAt": "noon"}, "sentAt"),
    ("identify", {"userId": "u1", "originalTimestamp": "noon"}, "originalTimestamp"),
    ("identify", {"userId": "u1", "sentAt": 5}, "sentAt"),
    (None, {"userId": "u1"}, "type"),
    (None, {"type": "purchase", "userId": "u1"}, "type"),
    ("identify", {"userId": "u1", "traits": {"k" * 501: 1}}, "trait"),
    ("group", {"userId": "u1", "groupId": "g1", "traits": {"\u00e9" * 501: 1}}, "trait"),
    ("track", {"userId": "u1", "event": "e", "messageId": "m\u0000"}, "messageId"),
]


@pytest.mark.parametrize("type_,body,field", INVALID)
def test_a_refusal_has_a_code_and_names_the_field(
    type_: str | None, body: dict[str, Any], field: str
) -> None:
    err = refusal(type_, body)
    assert CODE.fullmatch(err.code), err.code
    assert err.code != "error"
    assert re.search(rf"\b{re.escape(field)}\b", str(err)), str(err)


def test_different_problems_have_different_codes() -> None:
    codes = {
        refusal("identify", {}).code,
        refusal("track", {"userId": "u1"}).code,
        refusal("group", {"userId": "u1"}).code,
        refusal("identify", {"userId": "u1", "traits": "x"}).code,
        refusal("identify", {"userId": "u1", "timestamp": "yesterday"}).code,
    }
    assert len(codes) == 5, codes


VALID = [
    ("identify", {"userId": "u1"}),
    ("identify", {"anonymousId": "a1"}),
    ("identify", {"userId": 42}),
    ("identify", {"anonymousId": 4.5}),
    ("identify", {"userId": None, "anonymousId": "a1"}),
    ("track", {"anonymousId": "a1", "event": "Clicked", "properties": None}),
    ("page", {"userId": "u1", "name": None, "properties": {"title": "x"}}),
    ("screen", {"userId": "u1"}),
    ("group", {"anonymousId": "a1", "groupId": 17, "traits": None}),
    ("alias", {"userId": "u2", "previousId": 1}),
    ("identify", {"userId": "u1", "traits": None, "context": None, "integrations": None}),
    (
        "identify",
        {
            "userId": "u1",
            "context": {"traits": None, "device": None, "externalIds": None, "integrations": None},
        },
    ),
    ("identify", {"userId": "u1", "timestamp": None, "sentAt": None, "messageId": None}),
    (None, {"type": "identify", "userId": "u1"}),
    (None, {"type": "Track", "userId": "u1", "event": "e"}),
]


@pytest.mark.parametrize("type_,body", VALID)
def test_valid_messages_and_null_as_absent(type_: str | None, body: dict[str, Any]) -> None:
    prepared = prepare(raw(body), type_=type_, received_at=RECEIVED.timestamp())
    assert prepared.type == (type_ or body["type"]).lower()
    assert prepared.message_id  # a message without messageId gets one


def test_a_message_without_message_id_gets_a_fresh_one() -> None:
    ids = {
        prepare(raw({"userId": "u1"}), type_="identify", received_at=0).message_id
        for _ in range(50)
    }
    assert len(ids) == 50
    given_id = prepare(raw({"userId": "u1", "messageId": "m-1"}), type_="identify", received_at=0)
    assert given_id.message_id == "m-1"


def padded(size: int) -> bytes:
    body = raw({"userId": "u1", "properties": {"pad": ""}})
    return raw({"userId": "u1", "properties": {"pad": "x" * (size - len(body))}})


def test_a_message_may_be_32_kib_and_not_a_byte_more() -> None:
    assert MAX_MESSAGE_BYTES == 32_768
    exact = padded(32_768)
    assert len(exact) == 32_768
    prepare(exact, type_="identify", received_at=0)
    with pytest.raises(PayloadTooLarge) as caught:
        prepare(padded(32_769), type_="identify", received_at=0)
    assert CODE.fullmatch(caught.value.code)
    assert "32768" in str(caught.value).replace(",", "")


def test_a_batch_with_one_invalid_message_names_its_index_and_applies_nothing(
    make_engine: MakeEngine,
) -> None:
    engine = make_engine()
    batch: list[dict[str, Any]] = [
        {"type": "identify", "userId": "u1", "messageId": "m1"},
        {"type": "track", "userId": "u1", "event": "e", "messageId": "m2"},
        {"type": "group", "userId": "u1", "messageId": "m3"},  # no groupId
        {"type": "identify", "userId": "u2", "messageId": "m4"},
    ]
    with pytest.raises(InvalidMessage) as caught:
        engine.ingest_batch(batch)
    assert caught.value.index == 2
    assert "groupId" in str(caught.value)
    assert engine.store.stats().events == 0
    assert engine.ingest_batch(batch[:2] + batch[3:])[0].outcome == "created"
    assert engine.store.stats().events == 3


# ---- the timestamp rule -----------------------------------------------------------------------


def timestamp(body: dict[str, Any], sent_at: str | None = None) -> float:
    """`body`'s timestamp as a batch item whose batch carries `sent_at` (parsed once per
    batch, as the Tracking API does, before its items are prepared)."""
    return prepare(
        raw({"userId": "u1", **body}),
        type_="identify",
        received_at=RECEIVED.timestamp(),
        sent_at=parse_time(sent_at, "sentAt") if sent_at else None,
    ).timestamp


def test_clock_skew_is_corrected_with_sent_at() -> None:
    # The device clock runs 1 h 2.5 s fast; the event happened 30 s before the batch was sent.
    skew = timedelta(hours=1, seconds=2.5)
    happened = RECEIVED - timedelta(seconds=30)
    body = {"timestamp": iso(happened + skew), "sentAt": iso(RECEIVED + skew)}
    assert timestamp(body) == pytest.approx(happened.timestamp(), abs=1e-3)
    body = {"originalTimestamp": iso(happened + skew), "sentAt": iso(RECEIVED + skew)}
    assert timestamp(body) == pytest.approx(happened.timestamp(), abs=1e-3)


def test_a_batch_sent_at_applies_to_its_items() -> None:
    body = {"timestamp": "2025-01-15T13:00:00.000Z"}
    got = timestamp(body, sent_at="2025-01-15T13:00:10.000Z")
    assert got == pytest.approx((RECEIVED - timedelta(seconds=10)).timestamp(), abs=1e-3)


def test_without_sent_at_the_given_timestamp_then_received_at() -> None:
    assert timestamp({"timestamp": "2024-12-31T23:59:59.500Z"}) == pytest.approx(
        datetime(2024, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC).timestamp()
    )
    assert timestamp({"timestamp": "2025-01-15T03:00:00+02:00"}) == pytest.approx(
        datetime(2025, 1, 15, 1, tzinfo=UTC).timestamp()
    )
    assert timestamp({}) == RECEIVED.timestamp()
    assert timestamp({"timestamp": None, "sentAt": None}) == RECEIVED.timestamp()
    # sentAt alone says nothing about when the event happened
    assert timestamp({"sentAt": "2025-01-15T11:00:00Z"}) == RECEIVED.timestamp()


GOOD = "2025-01-15T11:00:00.000Z"


@pytest.mark.parametrize(
    ("body", "sent_at", "field"),
    [
        ({"sentAt": "noon"}, None, "sentAt"),
        ({"sentAt": "noon", "timestamp": GOOD}, None, "sentAt"),
        ({"sentAt": "noon", "originalTimestamp": GOOD}, None, "sentAt"),
        ({"timestamp": GOOD}, "noon", "sentAt"),
        ({"sentAt": GOOD, "timestamp": GOOD}, "noon", "sentAt"),  # a batch's, overridden
        ({"originalTimestamp": "noon", "timestamp": GOOD}, None, "originalTimestamp"),
        ({"timestamp": "noon", "originalTimestamp": GOOD, "sentAt": GOOD}, None, "timestamp"),
    ],
)
def test_every_timestamp_field_present_is_checked(
    body: dict[str, Any], sent_at: str | None, field: str
) -> None:
    """An unparseable timestamp is refused whether or not the rule would use it."""
    with pytest.raises(InvalidMessage) as caught:
        timestamp(body, sent_at=sent_at)
    assert caught.value.code == "invalid_timestamp"
    assert f"field `{field}`" in str(caught.value)


MOMENTS = st.datetimes(
    min_value=datetime(2015, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC)
).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))


@settings(max_examples=200)
@given(received=MOMENTS, sent=MOMENTS, original=MOMENTS)
def test_timestamp_is_received_minus_the_sending_delay(
    received: datetime, sent: datetime, original: datetime
) -> None:
    got = prepare(
        raw({"userId": "u1", "timestamp": iso(original), "sentAt": iso(sent)}),
        type_="identify",
        received_at=received.timestamp(),
    ).timestamp
    want = received.timestamp() - (sent.timestamp() - original.timestamp())
    assert got == pytest.approx(want, abs=1e-3)


def test_the_stored_event_carries_the_corrected_timestamp(make_engine: MakeEngine) -> None:
    engine = make_engine()
    engine.ingest(
        {
            "type": "track",
            "event": "Clicked",
            "userId": "u1",
            "messageId": "m1",
            "timestamp": "2025-01-15T12:00:40.000Z",
            "sentAt": "2025-01-15T12:01:00.000Z",
        },
        received_at=RECEIVED.timestamp(),
    )
    [event] = engine.events("user_id:u1")
    assert event["message_id"] == "m1"
    assert event["timestamp"] == "2025-01-15T11:59:40.000Z"


def test_format_time_never_fails_on_a_stored_value() -> None:
    """Reads render every stored instant; one outside what ISO-8601 can show is clamped to
    the nearest one it can, rather than failing the whole page."""
    assert format_time(1e20).startswith("9999-12-31T23:59:59.")
    assert format_time(-1e20) == "0001-01-01T00:00:00.000Z"
    assert format_time(0) == "1970-01-01T00:00:00.000Z"


@pytest.mark.parametrize(
    "value",
    [
        "9999-12-31T23:59:59.999999Z",
        "9999-12-31T23:59:59.999Z",
        "0001-01-01T00:00:00Z",
        "9999-12-31T18:59:59.999999-05:00",
    ],
)
def test_the_first_and_last_instants_of_years_1_to_9999_are_accepted(value: str) -> None:
    seconds = parse_time(value, "timestamp")
    assert format_time(seconds)[:4] in ("0001", "9999")


@pytest.mark.parametrize(
    "value", ["9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+01:00", "10000-01-01T00:00:00Z"]
)
def test_instants_past_the_years_1_to_9999_utc_are_refused(value: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_time(value, "timestamp")
    assert caught.value.code == "invalid_timestamp"


@pytest.mark.parametrize(
    ("body", "escape"),
    [
        (rb'{"userId":"\ud800"}', r"\ud800"),
        (rb'{"userId":"x","traits":{"\ud800":1}}', r"\ud800"),
        (rb'{"userId":"\ud800\"}"}', r"\ud800"),
        (rb'{"userId":"a\udc00b"}', r"\udc00"),
        (rb'{"userId":"\ud83d\ude00\udfff"}', r"\udfff"),
    ],
)
def test_a_lone_surrogate_escape_is_named_as_such(body: bytes, escape: str) -> None:
    """msgspec calls these truncated input or a bad hex escape; the answer names the escape."""
    for raw in (body, b'{"batch":[' + body + b"]}"):
        with pytest.raises(InvalidMessage) as caught:
            if raw is body:
                prepare(raw, type_="identify", received_at=0.0)
            else:
                decode_batch(raw)
        assert caught.value.code == "invalid_json"
        assert f"lone UTF-16 surrogate escape (`{escape}`" in str(caught.value)


def test_pairs_and_escaped_backslashes_are_not_lone_surrogates() -> None:
    assert lone_surrogate(rb'{"a":"\ud83d\ude00"}') is None
    assert lone_surrogate(rb'{"a":"\\ud800"}') is None  # a backslash, then the text ud800
    assert lone_surrogate(rb'{"a":"\\\ud800"}') == 8
    assert lone_surrogate(rb'{"a":"\ud83d x"}') == 6
