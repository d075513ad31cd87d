"""Cursor paging never skips or repeats: across page sizes, sort orders, equal timestamps,
and while new data arrives between pages."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from idstitch.engine import Engine
from idstitch.http.errors import ParameterError
from idstitch.http.paging import decode_cursor, encode_cursor
from tests.http.conftest import READ, TestClient, profile_url


def at(second: float) -> str:
    whole = int(second)
    return f"2025-03-01T12:{whole // 60:02d}:{whole % 60:02d}.{int(second % 1 * 1000):03d}Z"


def pages(
    client: TestClient, url: str, key: str, between: Any = None, first: str = "", **params: Any
) -> list[Any]:
    """Every item of every page from cursor `first`, following `cursor.next` to the end."""
    items: list[Any] = []
    cursor = first
    for _ in range(1000):
        response = client.get(url, params={**params, "next": cursor}, headers=READ)
        assert response.status_code == 200, response.text
        body = response.json()
        data = body[key]
        items.extend(data.items() if isinstance(data, dict) else data)
        assert len(data) <= int(params.get("limit", 10))
        if not body["cursor"]["has_more"]:
            return items
        cursor = body["cursor"]["next"]
        assert cursor
        if between is not None:
            between()
    raise AssertionError("paging did not end")


@pytest.fixture
def busy(engine: Engine) -> Engine:
    """One profile with 23 events; several share a timestamp, so order needs the tiebreak."""
    seconds = [1, 2, 2, 2, 3, 4, 5, 5, 6, 7, 8, 9, 9, 9, 9, 10, 11, 12, 13, 14, 15, 15, 16]
    engine.ingest_batch(
        [
            {
                "type": "track",
                "userId": "u",
                "event": f"E{i % 3}",
                "messageId": f"m{i}",
                "timestamp": at(s),
            }
            for i, s in enumerate(seconds)
        ],
        source="web",
    )
    engine.ingest_batch(
        [
            {"type": "identify", "userId": "u", "traits": {f"t{i:02d}": i for i in range(17)}},
            {
                "type": "track",
                "userId": "u",
                "event": "Ids",
                "context": {
                    "externalIds": [
                        {"id": f"x{i}", "type": t, "collection": "users"}
                        for i, t in enumerate(["crm_id", "shop_id"] * 4)
                    ]
                },
            },
        ],
        source="web",
    )
    return engine


@pytest.mark.usefixtures("busy")
@pytest.mark.parametrize("limit", [1, 2, 3, 7, 10, 100])
@pytest.mark.parametrize("sort", ["asc", "desc"])
def test_event_pages_cover_every_event_once(client: TestClient, limit: int, sort: str) -> None:
    url = profile_url("user_id:u", "events")
    everything = client.get(url, params={"limit": 100, "sort": sort}, headers=READ).json()
    expected = [e["message_id"] for e in everything["data"]]
    assert len(expected) == 25
    got = [e["message_id"] for e in pages(client, url, "data", limit=limit, sort=sort)]
    assert got == expected


@pytest.mark.usefixtures("busy")
@pytest.mark.parametrize("limit", [1, 2, 5])
def test_filtered_event_pages_cover_every_match_once(client: TestClient, limit: int) -> None:
    url = profile_url("user_id:u", "events")
    got = [e["message_id"] for e in pages(client, url, "data", limit=limit, include="E1")]
    assert got == [f"m{i}" for i in range(22, -1, -1) if i % 3 == 1]


@pytest.mark.usefixtures("busy")
@pytest.mark.parametrize("limit", [1, 4, 10])
def test_trait_and_identifier_pages_cover_everything_once(client: TestClient, limit: int) -> None:
    traits = pages(client, profile_url("user_id:u", "traits"), "traits", limit=limit)
    assert [k for k, _ in traits] == [f"t{i:02d}" for i in range(17)]
    ids = pages(client, profile_url("user_id:u", "external_ids"), "data", limit=limit)
    assert sorted(e["id"] for e in ids) == sorted(["u", *(f"x{i}" for i in range(8))])


@pytest.mark.parametrize("limit", [1, 2, 5, 20])
def test_link_pages_cover_every_linked_user_once(
    engine: Engine, client: TestClient, limit: int
) -> None:
    engine.ingest_batch(
        [{"type": "group", "groupId": "g1", "userId": f"u{i}"} for i in range(9)], source="web"
    )
    url = profile_url("group_id:g1", "links", collection="accounts")
    linked = pages(client, url, "data", limit=limit)
    ids = [d["external_ids"][0]["id"] for d in linked]
    assert sorted(ids) == sorted(f"u{i}" for i in range(9))  # each once


def test_pages_neither_skip_nor_repeat_while_events_arrive(
    client: TestClient, busy: Engine
) -> None:
    url = profile_url("user_id:u", "events")
    before = {
        e["message_id"] for e in client.get(url, params={"limit": 100}, headers=READ).json()["data"]
    }
    arrivals = iter(range(1000))

    def more() -> None:
        # New events both older and newer than any page boundary, equal timestamps too.
        n = next(arrivals)
        busy.ingest_batch(
            [
                {
                    "type": "track",
                    "userId": "u",
                    "event": "Late",
                    "messageId": f"late-{n}-{s}",
                    "timestamp": at(s),
                }
                for s in (0.5, 9, 30)
            ],
            source="web",
        )

    for sort in ("desc", "asc"):
        got = [e["message_id"] for e in pages(client, url, "data", more, limit=3, sort=sort)]
        assert len(got) == len(set(got)), "an event was repeated"
        assert before <= set(got), "an event was skipped"


@given(
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
    st.integers(-(2**63), 2**63 - 1),
)
def test_cursors_round_trip(moment: float, text: str, seq: int) -> None:
    cursor = encode_cursor("events", "tag", [moment, text, seq])
    assert decode_cursor(cursor, "events", (float, str, int)) == ("tag", (moment, text, seq))


def raw_cursor(value: Any) -> str:
    """A cursor as a client could forge one: base64url of any JSON."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "!!!",
        "e30",
        "ŵ",
        encode_cursor("events", "t", [1.0]),
        encode_cursor("events", "t", [1.0, "x"]),
        encode_cursor("events", "t", [True, 1]),
        encode_cursor("events", "t", ["1", 2]),
        encode_cursor("events", "t", [1, 2]),
        encode_cursor("events", "t", [1.0, 2, 3]),
        raw_cursor(["events", 1, 1.0, 2]),
        raw_cursor(["events"]),
        raw_cursor([1.0, 2]),  # the format before cursors were bound
        raw_cursor(["events", "t", 1.0, 2**63]),
        raw_cursor(["events", "t", 1.0, 2**64 - 1]),
        raw_cursor(["events", "t", 1.0, -(2**63) - 1]),
        raw_cursor(["events", "t", 1.0, 10**400]),
        raw_cursor(["events", "t", [1.0], 2]),
        raw_cursor(["events", "t", {"a": 1}, 2]),
        base64.urlsafe_b64encode(b'["events", "t", 1e999, 2]').decode(),
        base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000).decode(),
        base64.urlsafe_b64encode(b"[" * 100_000 + b"]" * 100_000).decode(),
        "A" * 20_000,
    ],
)
def test_tampered_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(ParameterError):
        decode_cursor(cursor, "events", (float, int))


def test_cursor_positions_may_use_the_whole_signed_64_bit_range() -> None:
    for seq in (-(2**63), 2**63 - 1):
        assert decode_cursor(encode_cursor("links", "t", [0.0, seq]), "links", (float, int)) == (
            "t",
            (0.0, seq),
        )


def refused(client: TestClient, url: str, **params: Any) -> str:
    """The message of a 400 validation_error (Segment's error shape)."""
    response = client.get(url, params=params, headers=READ)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    return str(error["message"])


@pytest.mark.usefixtures("busy")
@pytest.mark.parametrize(("resource", "maximum"), [("events", 100), ("traits", 200)])
@pytest.mark.parametrize(
    "limit",
    [
        "\u00b2",  # superscript two: str.isdigit() but not int()
        "\u0663",  # Arabic-Indic three: int() takes it
        "\uff15",  # fullwidth five
        "9" * 5000,  # beyond Python's int-string conversion limit
        "9" * 7,
        "0" * 7 + "5",
        "",
        "-1",
        "+5",
        " 5",
        "5\n",
        "1e2",
        "5.0",
        "0x10",
    ],
)
def test_limit_takes_ascii_digits_only(
    client: TestClient, resource: str, maximum: int, limit: str
) -> None:
    message = refused(client, profile_url("user_id:u", resource), limit=limit)
    assert "`limit`" in message and f"1 to {maximum}" in message
    assert len(message) < 300  # a long value is not repeated whole


@pytest.mark.usefixtures("busy")
def test_limit_takes_leading_zeros(client: TestClient) -> None:
    response = client.get(profile_url("user_id:u", "events"), params={"limit": "007"}, headers=READ)
    assert response.status_code == 200 and len(response.json()["data"]) == 7


@pytest.mark.usefixtures("busy")
@pytest.mark.parametrize("name", ["start", "end"])
@pytest.mark.parametrize(
    "moment",
    [
        "\u0662\u0660\u0662\u0665-01-01",
        "\uff12\uff10\uff12\uff15-01-01",
        "9" * 5000,
        "0001-01-01T00:00:00+01:00",
    ],
)
def test_start_and_end_refuse_what_is_not_an_iso_date_time(
    client: TestClient, name: str, moment: str
) -> None:
    message = refused(client, profile_url("user_id:u", "events"), **{name: moment})
    assert f"`{name}`" in message and len(message) < 300


def first_cursor(client: TestClient, url: str) -> str:
    body = client.get(url, params={"limit": 2}, headers=READ).json()
    assert body["cursor"]["has_more"], body
    return str(body["cursor"]["next"])


def forged(cursor: str, last: Any) -> str:
    """`cursor` with its last position item replaced, the rest (resource, profile) kept."""
    items = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    return raw_cursor([*items[:-1], last])


@pytest.mark.usefixtures("crowded")
@pytest.mark.parametrize("resource", ["events", "links"])
@pytest.mark.parametrize("seq", [2**63, 2**64 - 1, -(2**63) - 1, 10**30, "x", True, None])
def test_a_cursor_position_out_of_range_is_a_400(
    client: TestClient, resource: str, seq: Any
) -> None:
    url = profile_url("group_id:g1", resource, collection="accounts")
    message = refused(client, url, next=forged(first_cursor(client, url), seq))
    assert "`next`" in message and "start without `next`" in message


@pytest.mark.usefixtures("crowded")
@pytest.mark.parametrize("resource", ["events", "links", "external_ids"])
@pytest.mark.parametrize(
    "cursor",
    [
        base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000).decode(),
        base64.urlsafe_b64encode(b"[" * 20_000 + b"]" * 20_000).decode(),  # over the cap
        "A" * 20_000,
        "\u0175" * 100,
    ],
)
def test_a_deep_or_long_cursor_is_a_400(client: TestClient, resource: str, cursor: str) -> None:
    url = profile_url("group_id:g1", resource, collection="accounts")
    message = refused(client, url, next=cursor)
    assert "`next`" in message and len(message) < 400


@pytest.mark.usefixtures("crowded")
@pytest.mark.parametrize(
    ("issued_by", "used_on"),
    [
        ("events", "links"),
        ("links", "events"),
        ("external_ids", "events"),
        ("events", "external_ids"),
    ],
)
def test_a_cursor_of_another_resource_is_a_400(
    client: TestClient, issued_by: str, used_on: str
) -> None:
    cursor = first_cursor(client, profile_url("group_id:g1", issued_by, collection="accounts"))
    url = profile_url("group_id:g1", used_on, collection="accounts")
    message = refused(client, url, next=cursor)
    assert "another resource" in message and "start without `next`" in message


@pytest.mark.usefixtures("busy")
@pytest.mark.parametrize("resource", ["events", "external_ids"])
def test_a_cursor_of_another_profile_is_a_400(
    engine: Engine, client: TestClient, resource: str
) -> None:
    engine.ingest_batch(
        [
            {
                "type": "track",
                "userId": "other",
                "event": "E",
                "messageId": f"o{i}",
                "timestamp": at(i),
                "context": {
                    "externalIds": [{"id": f"o{i}", "type": "crm_id", "collection": "users"}]
                },
            }
            for i in range(5)
        ],
        source="web",
    )
    cursor = first_cursor(client, profile_url("user_id:u", resource))
    message = refused(client, profile_url("user_id:other", resource), next=cursor)
    assert "another profile" in message and "start without `next`" in message


@pytest.mark.parametrize("resource", ["events", "external_ids"])
def test_cursors_stay_valid_when_their_profile_is_merged(
    engine: Engine, client: TestClient, resource: str
) -> None:
    """A merge changes the canonical segment_id of one side; paging that started before it
    carries on, on both sides, without skipping or repeating."""

    def track(i: int, key: str, value: str) -> dict[str, Any]:
        return {
            "type": "track",
            key: value,
            "event": "E",
            "messageId": f"{value}-{i}",
            "timestamp": at(i),
            "context": {
                # two of each type a side: the merged profile stays within 5 a type
                "externalIds": [{"id": f"{value}-{i}", "type": f"k{i % 3}", "collection": "users"}]
            },
        }

    engine.ingest_batch(
        [track(i, "anonymousId", "anon") for i in range(6)]
        + [track(i + 10, "userId", "known") for i in range(6)],
        source="web",
    )
    refs = ("anonymous_id:anon", "user_id:known")
    urls = [profile_url(ref, resource) for ref in refs]
    first = [client.get(u, params={"limit": 2}, headers=READ).json() for u in urls]
    engine.ingest_batch(
        [{"type": "identify", "userId": "known", "anonymousId": "anon"}], source="web"
    )
    after = [client.get(u, params={"limit": 100}, headers=READ).json() for u in urls]
    assert after[0]["cursor"]["url"] == after[1]["cursor"]["url"]  # merged
    survivor = after[0]["cursor"]["url"]
    assert any(f["cursor"]["url"] != survivor for f in first)  # one side was merged away
    key = "message_id" if resource == "events" else "id"
    everything = {item[key] for item in after[0]["data"]}
    for page in first:
        seen = [item[key] for item in page["data"]]
        seen += [
            item[key]
            for item in pages(client, survivor, "data", first=page["cursor"]["next"], limit=2)
        ]
        assert len(seen) == len(set(seen)), "an item was repeated"
        assert set(seen) <= everything


@pytest.fixture
def crowded(engine: Engine) -> Engine:
    """An account with 12 traits, 12 identifiers, 12 events and 12 linked users."""
    engine.ingest_batch(
        [
            {
                "type": "group",
                "userId": f"u{i}",
                "groupId": "g1",
                "traits": {f"t{i:02d}": i},
                "context": {
                    "externalIds": [
                        # four of each type: under the default limit of 5 values per type
                        {
                            "id": f"x{i}",
                            "type": ("crm_id", "erp_id", "domain")[i % 3],
                            "collection": "accounts",
                        }
                    ]
                },
            }
            for i in range(12)
        ],
        source="web",
    )
    return engine


@pytest.mark.usefixtures("crowded")
@pytest.mark.parametrize(
    ("resource", "key", "maximum"),
    [
        ("traits", "traits", 200),
        ("external_ids", "data", 100),
        ("events", "data", 100),
        ("links", "data", 100),
    ],
)
def test_every_resource_pages_10_by_default_within_its_bounds(
    client: TestClient, resource: str, key: str, maximum: int
) -> None:
    """SPEC section 5: `limit` defaults to 10 as Segment's; 1 to 100, traits up to 200."""
    url = profile_url("group_id:g1", resource, collection="accounts")
    body = client.get(url, headers=READ).json()
    assert len(body[key]) == 10 and body["cursor"]["has_more"] is True
    assert len(client.get(url, params={"limit": 11}, headers=READ).json()[key]) == 11
    for limit, status in ((1, 200), (maximum, 200), (0, 400), (maximum + 1, 400)):
        assert client.get(url, params={"limit": limit}, headers=READ).status_code == status


def test_openapi_states_the_same_limits(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    base = "/v1/spaces/{space_id}/collections/{collection}/profiles/{ref}/"
    for resource, maximum in (
        ("traits", 200),
        ("external_ids", 100),
        ("events", 100),
        ("links", 100),
    ):
        [limit] = [
            p for p in spec["paths"][base + resource]["get"]["parameters"] if p["name"] == "limit"
        ]
        assert limit["schema"] == {
            "type": "integer",
            "minimum": 1,
            "maximum": maximum,
            "default": 10,
        }, resource
