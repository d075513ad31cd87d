"""Cursor paging never skips or repeats: across page sizes, sort orders, equal timestamps,
and while new data arrives between pages."""

from __future__ import annotations

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


def pages(client: TestClient, url: str, key: str, between: Any = None, **params: Any) -> list[Any]:
    """Every item of every page, following `cursor.next` to the end."""
    items: list[Any] = []
    cursor = ""
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


@given(st.floats(allow_nan=False, allow_infinity=False), st.text(), st.integers(-(2**62), 2**62))
def test_cursors_round_trip(moment: float, text: str, seq: int) -> None:
    assert decode_cursor(encode_cursor([moment, text, seq]), (float, str, int)) == (
        moment,
        text,
        seq,
    )


@pytest.mark.parametrize(
    "cursor",
    [
        "!!!",
        "e30",
        encode_cursor([1.0]),
        encode_cursor([1.0, "x"]),
        encode_cursor([True, 1]),
        encode_cursor(["1", 2]),
    ],
)
def test_tampered_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(ParameterError):
        decode_cursor(cursor, (float, int))


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
