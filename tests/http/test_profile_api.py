"""The Profile API in-process: Segment's shapes for every resource, canonical segment_ids,
query parameters, URL-encoded references and Segment's error body."""

from __future__ import annotations

from typing import Any

import pytest

from idstitch.engine import Engine
from tests.conftest import STORES
from tests.http.conftest import READ, SPACE, TOKEN, TestClient, basic, profile_url


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def at(second: int) -> str:
    return f"2025-03-01T12:00:{second:02d}.000Z"


@pytest.fixture
def ann(engine: Engine) -> Engine:
    """Ann: an anonymous visitor who identifies (email with a `+`), shops, joins Acme, and
    whose second anonymous profile is merged in by a later identify."""
    engine.ingest_batch(
        [
            {"type": "page", "anonymousId": "anon-1", "name": "Home", "timestamp": at(1)},
            {
                "type": "identify",
                "anonymousId": "anon-1",
                "userId": "ann",
                "traits": {"email": "Ann+Shop@Example.com", "name": "Ann", "plan": "free"},
                "timestamp": at(2),
            },
            {
                "type": "track",
                "userId": "ann",
                "event": "Order Completed",
                "properties": {"total": 20},
                "timestamp": at(3),
            },
            {"type": "track", "userId": "ann", "event": "Cart Viewed", "timestamp": at(4)},
            {
                "type": "group",
                "userId": "ann",
                "groupId": "acme",
                "traits": {"name": "Acme", "employees": 50},
                "timestamp": at(5),
            },
            {"type": "page", "anonymousId": "anon-2", "name": "Pricing", "timestamp": at(6)},
            {
                "type": "identify",
                "anonymousId": "anon-2",
                "userId": "ann",
                "traits": {"plan": "pro", "age": None},
                "timestamp": at(7),
            },
            {"type": "group", "userId": "bob", "groupId": "acme", "timestamp": at(8)},
        ],
        source="web",
    )
    return engine


def get(client: TestClient, url: str, **params: Any) -> dict[str, Any]:
    response = client.get(url, params=params, headers=READ)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["request-id"]
    body: dict[str, Any] = response.json()
    return body


def canonical(engine: Engine, ref: str) -> str:
    return str(engine.profile(ref)["segment_id"])


@pytest.mark.usefixtures("ann")
def test_traits_shape_and_cursor_url_names_the_canonical_profile(
    client: TestClient, engine: Engine
) -> None:
    sid = canonical(engine, "user_id:ann")
    body = get(client, profile_url("anonymous_id:anon-2", "traits"))
    assert body["traits"] == {"email": "Ann+Shop@Example.com", "name": "Ann", "plan": "pro"}
    assert body["cursor"] == {
        "url": f"/v1/spaces/{SPACE}/collections/users/profiles/{sid}/traits",
        "has_more": False,
        "next": "",
        "limit": 10,
    }


@pytest.mark.usefixtures("ann")
def test_traits_verbose_include_and_key_paging(client: TestClient) -> None:
    verbose = get(client, profile_url("user_id:ann", "traits"), verbose="true")
    assert verbose["traits"]["plan"] == {"value": "pro", "source_id": "web", "updated_at": at(7)}
    only = get(client, profile_url("user_id:ann", "traits"), include="plan,name,missing")
    assert only["traits"] == {"name": "Ann", "plan": "pro"}
    first = get(client, profile_url("user_id:ann", "traits"), limit=2)
    assert first["traits"] == {"email": "Ann+Shop@Example.com", "name": "Ann"}
    assert first["cursor"]["has_more"] is True
    rest = get(client, profile_url("user_id:ann", "traits"), limit=2, next=first["cursor"]["next"])
    assert rest["traits"] == {"plan": "pro"}
    assert rest["cursor"]["has_more"] is False


@pytest.mark.usefixtures("ann")
@pytest.mark.parametrize(
    "ref",
    [
        "email:ann%2Bshop@example.com",
        "email:ANN%2BSHOP%40EXAMPLE.COM",
        "user_id:ann",
        "anonymous_id:anon-1",
    ],
)
def test_url_encoded_references_find_the_profile(
    client: TestClient, engine: Engine, ref: str
) -> None:
    body = get(client, profile_url(ref, "metadata"))
    assert body["metadata"]["segment_id"] == canonical(engine, "user_id:ann")


def test_a_non_ascii_reference_is_decoded_as_utf8(client: TestClient, engine: Engine) -> None:
    engine.ingest({"type": "identify", "userId": "josé/ü", "traits": {"x": 2}}, source="web")
    assert get(client, profile_url("user_id:jos%C3%A9%2F%C3%BC", "traits"))["traits"] == {"x": 2}


def test_an_encoded_slash_stays_inside_the_reference(client: TestClient, engine: Engine) -> None:
    engine.ingest({"type": "identify", "userId": "team/ann", "traits": {"x": 1}}, source="web")
    assert get(client, profile_url("user_id:team%2Fann", "traits"))["traits"] == {"x": 1}


@pytest.mark.usefixtures("ann")
def test_a_merged_away_segment_id_answers_with_the_canonical_one(
    client: TestClient, engine: Engine
) -> None:
    sid = canonical(engine, "user_id:ann")
    merged = get(client, profile_url("user_id:ann", "metadata"))["metadata"]["merged_from"]
    assert len(merged) == 1 and merged[0] != sid
    body = get(client, profile_url(merged[0], "traits"))
    assert sid in body["cursor"]["url"] and merged[0] not in body["cursor"]["url"]
    assert get(client, profile_url(merged[0], "metadata"))["metadata"]["segment_id"] == sid


@pytest.mark.usefixtures("ann")
def test_external_ids_shape_include_and_paging(client: TestClient) -> None:
    body = get(client, profile_url("user_id:ann", "external_ids"))
    ids = {(e["type"], e["id"]) for e in body["data"]}
    assert ids == {
        ("anonymous_id", "anon-1"),
        ("anonymous_id", "anon-2"),
        ("user_id", "ann"),
        ("email", "ann+shop@example.com"),
    }
    first = body["data"][0]
    assert set(first) == {
        "id",
        "type",
        "collection",
        "source_id",
        "created_at",
        "encoding",
        "first_message_id",
    }
    assert first["collection"] == "users" and first["encoding"] == "none"
    anon = get(client, profile_url("user_id:ann", "external_ids"), include="anonymous_id")
    assert {e["id"] for e in anon["data"]} == {"anon-1", "anon-2"}
    seen = []
    cursor = ""
    while True:
        page = get(client, profile_url("user_id:ann", "external_ids"), limit=1, next=cursor)
        seen += [(e["type"], e["id"]) for e in page["data"]]
        cursor = page["cursor"]["next"]
        if not page["cursor"]["has_more"]:
            assert cursor == ""
            break
    assert sorted(seen) == sorted(ids) and len(seen) == len(ids)


@pytest.mark.usefixtures("ann")
def test_events_shape_sort_and_time_window(client: TestClient, engine: Engine) -> None:
    body = get(client, profile_url("user_id:ann", "events"))
    assert [e["timestamp"] for e in body["data"]] == [at(s) for s in (7, 6, 5, 4, 3, 2, 1)]
    track = next(e for e in body["data"] if e["type"] == "track")
    assert track["event"] == "Cart Viewed"
    assert track["source_id"] == "web"
    assert track["related"] == {"users": body["data"][0]["related"]["users"]}
    assert {"collection": "users", "type": "user_id", "id": "ann", "encoding": "none"} in (
        track["external_ids"]
    )
    asc = get(client, profile_url("user_id:ann", "events"), sort="asc")
    assert [e["timestamp"] for e in asc["data"]] == [at(s) for s in (1, 2, 3, 4, 5, 6, 7)]
    window = get(client, profile_url("user_id:ann", "events"), start=at(3), end=at(5), sort="asc")
    assert [e["timestamp"] for e in window["data"]] == [at(3), at(4)]


def test_events_relate_to_the_surviving_profile_after_a_merge(
    client: TestClient, engine: Engine
) -> None:
    """`related` names the canonical segment_id, as `cursor.url` does, also for events first
    stored on a profile that was merged away (users and accounts alike)."""
    accounts = {"externalIds": [{"id": "rel.io", "type": "domain", "collection": "accounts"}]}
    engine.ingest_batch(
        [
            {"type": "page", "anonymousId": "rel-a", "messageId": "m1"},
            {"type": "identify", "userId": "rel-u", "messageId": "m2"},
            {"type": "identify", "userId": "rel-u", "anonymousId": "rel-a", "messageId": "m3"},
            {"type": "group", "userId": "rel-u", "groupId": "rel-g", "messageId": "m4"},
            {"type": "track", "userId": "x", "event": "E", "messageId": "m5", "context": accounts},
            {
                "type": "group",
                "userId": "x",
                "groupId": "rel-g",
                "messageId": "m6",
                "context": accounts,
            },
        ],
        source="web",
    )
    for collection, ref, events in (
        ("users", "user_id:rel-u", ["m4", "m3", "m2", "m1"]),
        ("accounts", "group_id:rel-g", ["m6", "m5", "m4"]),
    ):
        body = get(client, profile_url(ref, "events", collection), limit=100)
        survivor = body["cursor"]["url"].split("/")[-2]
        assert sorted(e["message_id"] for e in body["data"]) == sorted(events)
        assert [e["related"] for e in body["data"]] == [{collection: survivor}] * len(events)
        assert get(client, profile_url(ref, "metadata", collection))["metadata"]["merged_from"]


@pytest.mark.usefixtures("ann")
def test_events_include_and_exclude_event_names(client: TestClient) -> None:
    url = profile_url("user_id:ann", "events")
    only = get(client, url, include="Order Completed")
    assert [e["event"] for e in only["data"]] == ["Order Completed"]
    rest = get(client, url, exclude="Order Completed,Cart Viewed")
    assert [e["type"] for e in rest["data"]] == ["identify", "page", "group", "identify", "page"]


@pytest.mark.usefixtures("ann")
def test_account_profile_traits_events_and_links(client: TestClient, engine: Engine) -> None:
    traits = get(client, profile_url("group_id:acme", "traits", "accounts"))
    assert traits["traits"] == {"employees": 50, "name": "Acme"}
    assert "/collections/accounts/profiles/acc_" in traits["cursor"]["url"]
    events = get(client, profile_url("group_id:acme", "events", "accounts"))
    assert [e["type"] for e in events["data"]] == ["group", "group"]
    links = get(client, profile_url("group_id:acme", "links", "accounts"))
    assert [link["to_collection"] for link in links["data"]] == ["users", "users"]
    users = [{e["id"] for e in link["external_ids"]} for link in links["data"]]
    assert {"ann", "anon-1", "anon-2", "ann+shop@example.com"} in users
    assert {"bob"} in users


@pytest.mark.usefixtures("ann")
def test_user_links_point_to_accounts(client: TestClient, engine: Engine) -> None:
    body = get(client, profile_url("user_id:ann", "links"))
    assert body["data"] == [
        {
            "to_collection": "accounts",
            "segment_id": canonical(engine, "group_id:acme"),
            "external_ids": [
                {
                    "id": "acme",
                    "type": "group_id",
                    "collection": "accounts",
                    "source_id": "web",
                    "created_at": at(5),
                    "encoding": "none",
                }
            ],
        }
    ]
    paged = get(client, profile_url("group_id:acme", "links", "accounts"), limit=1)
    assert len(paged["data"]) == 1 and paged["cursor"]["has_more"] is True
    tail = get(
        client,
        profile_url("group_id:acme", "links", "accounts"),
        limit=1,
        next=paged["cursor"]["next"],
    )
    assert len(tail["data"]) == 1 and tail["cursor"]["has_more"] is False
    assert tail["data"][0]["segment_id"] != paged["data"][0]["segment_id"]


@pytest.mark.usefixtures("ann")
def test_metadata_shape(client: TestClient, engine: Engine) -> None:
    meta = get(client, profile_url("user_id:ann", "metadata"))["metadata"]
    assert meta["segment_id"] == canonical(engine, "user_id:ann")
    assert meta["segment_id"].startswith("use_") and len(meta["segment_id"]) == 31
    for key in (
        "created_at",
        "updated_at",
        "first_message_id",
        "first_source_id",
        "last_message_id",
        "last_source_id",
    ):
        assert meta[key], key
    assert meta["expires_at"] is None


def test_metadata_keeps_to_the_arrival_clock(client: TestClient, engine: Engine) -> None:
    """Late and backfilled messages: the first message is the one that created the profile,
    the last the one stored last (merged profiles included), whatever their timestamps."""
    sends = [
        ("md-0", {"anonymousId": "md-a", "timestamp": "2024-06-01T00:00:00Z"}),
        ("md-1", {"anonymousId": "md-a", "userId": "md", "timestamp": "2020-01-01T00:00:00Z"}),
        ("md-2", {"anonymousId": "md-b", "timestamp": "2030-01-01T00:00:00Z"}),
        ("md-3", {"anonymousId": "md-b", "userId": "md", "timestamp": "2018-01-01T00:00:00Z"}),
    ]
    for message_id, fields in sends:
        engine.ingest({"type": "track", "event": "E", "messageId": message_id, **fields})
    meta = get(client, profile_url("user_id:md", "metadata"))["metadata"]
    assert meta["first_message_id"] == "md-0"
    assert meta["last_message_id"] == "md-3"
    assert meta["first_source_id"] == meta["last_source_id"]
    assert len(meta["merged_from"]) == 1
    assert meta["created_at"] <= meta["updated_at"]


# ---- errors -------------------------------------------------------------------------------
def error(
    client: TestClient, url: str, status: int, code: str, headers: Any = READ, **params: Any
) -> str:
    response = client.get(url, params=params, headers=headers)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert response.headers["request-id"]
    message: str = body["error"]["message"]
    assert message
    return message


@pytest.mark.usefixtures("ann")
@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({}, "no access token"),
        (basic("wrong-token-123456"), "not one of the server's"),
        ({"Authorization": "Basic %%%"}, "not valid HTTP Basic"),
        (basic("jeton-é"), "not one of the server's"),
    ],
)
def test_missing_or_wrong_token_is_401(
    client: TestClient, headers: dict[str, str], why: str
) -> None:
    message = error(
        client, profile_url("user_id:ann", "traits"), 401, "authentication_error", headers=headers
    )
    assert why in message
    assert TOKEN not in message


@pytest.mark.parametrize(
    "url",
    [
        profile_url("user_id:ann", "traits", collection="groups"),
        profile_url("user_id:ann", "properties"),
        f"/v1/spaces/{SPACE}/collections/users/profiles/user_id:ann/traits/",
        "/v1/spaces",
    ],
)
def test_without_a_token_the_routes_are_not_told(client: TestClient, url: str) -> None:
    """The token is checked before the path, as Segment does: 401, not 404, without one."""
    error(client, url, 401, "authentication_error", headers={})
    response = client.post(profile_url("user_id:ann", "traits"), headers=basic("bad-token-99"))
    assert response.status_code == 401


def test_a_server_without_tokens_refuses_every_read(make_engine: Any) -> None:
    from idstitch.http.app import App

    engine = make_engine({"space_id": SPACE})
    with TestClient(App(engine)) as bare:
        message = error(
            bare,
            profile_url("user_id:ann", "traits"),
            401,
            "authentication_error",
            headers=basic("some-token-123"),
        )
    assert "[[access_tokens]]" in message


@pytest.mark.usefixtures("ann")
@pytest.mark.parametrize(
    "url",
    [
        profile_url("user_id:nobody", "traits"),
        profile_url("user_id:ann", "traits", space="other_space"),
        profile_url("user_id:ann", "traits", collection="things"),
        profile_url("user_id:ann", "properties"),
        profile_url("group_id:acme", "traits"),  # an account ref in the users collection
        profile_url("user_id:ann", "traits", collection="accounts"),
        f"/v1/spaces/{SPACE}/collections/users/profiles/user_id:ann",
        f"/v1/spaces/{SPACE}/collections/users/profiles/user_id:ann/traits/extra",
        "/v1/spaces",
    ],
)
def test_unknown_space_collection_resource_or_profile_is_404(client: TestClient, url: str) -> None:
    error(client, url, 404, "not_found")


@pytest.mark.usefixtures("ann")
def test_a_segment_id_of_the_other_collection_is_404(client: TestClient, engine: Engine) -> None:
    account = canonical(engine, "group_id:acme")
    error(client, profile_url(account, "traits"), 404, "not_found")


@pytest.mark.usefixtures("ann")
@pytest.mark.parametrize(
    ("resource", "params", "names"),
    [
        ("traits", {"limit": "0"}, "limit"),
        ("traits", {"limit": "201"}, "limit"),
        ("events", {"limit": "101"}, "limit"),
        ("external_ids", {"limit": "ten"}, "limit"),
        ("traits", {"verbose": "maybe"}, "verbose"),
        ("events", {"sort": "sideways"}, "sort"),
        ("events", {"start": "last tuesday"}, "start"),
        ("events", {"end": "2025-13-45"}, "end"),
        ("events", {"next": "not-a-cursor"}, "next"),
        ("external_ids", {"next": "WzEsMl0"}, "next"),
        ("links", {"next": "e30"}, "next"),
        ("traits", {"class": "custom"}, "class"),
    ],
)
def test_invalid_parameters_are_400_validation_error(
    client: TestClient, resource: str, params: dict[str, str], names: str
) -> None:
    message = error(client, profile_url("user_id:ann", resource), 400, "validation_error", **params)
    assert f"`{names}`" in message


@pytest.mark.usefixtures("ann")
def test_parameters_segment_takes_are_answered(client: TestClient) -> None:
    """`class` asks for audiences or computed traits (none are made here); metadata takes no
    `limit`; an empty `sort` is the default, as the other empty parameters are."""
    for trait_class in ("audience", "computed_trait"):
        body = get(client, profile_url("user_id:ann", "traits"), **{"class": trait_class})
        assert body["traits"] == {} and body["cursor"]["has_more"] is False
    assert get(client, profile_url("user_id:ann", "traits"))["traits"]
    meta = get(client, profile_url("user_id:ann", "metadata"), limit=500)["metadata"]
    assert meta["segment_id"].startswith("use_")
    events = get(client, profile_url("user_id:ann", "events"), sort="")["data"]
    assert events == get(client, profile_url("user_id:ann", "events"))["data"]


def test_a_not_found_message_shows_a_long_reference_in_part(client: TestClient) -> None:
    message = error(client, profile_url("user_id:" + "x" * 5000, "traits"), 404, "not_found")
    assert len(message) < 400


def test_traits_allow_a_limit_of_200(client: TestClient, ann: Engine) -> None:
    assert get(client, profile_url("user_id:ann", "traits"), limit=200)["cursor"]["limit"] == 200


def test_a_reference_without_a_type_is_400(client: TestClient) -> None:
    error(client, profile_url("ann", "traits"), 400, "validation_error")


def test_the_profile_api_takes_get_only(client: TestClient) -> None:
    response = client.post(profile_url("user_id:ann", "traits"), headers=READ)
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
