"""`/explorer`: the page, its script, and the graph it draws."""

from __future__ import annotations

import pytest

from idstitch.engine import Engine
from idstitch.http import explorer
from tests.helpers import msg
from tests.http.conftest import READ, WRITE, TestClient, basic


def graph(client: TestClient, ref: str) -> dict[str, object]:
    response = client.get(explorer.DATA_PATH, params={"ref": ref}, headers=READ)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"  # profile data stays off disk
    body: dict[str, object] = response.json()
    return body


def test_the_page_and_its_script_are_served_without_data_and_only_run_their_own_code(
    client: TestClient,
) -> None:
    page = client.get("/explorer")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert '<script src="/explorer.js">' in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    script = client.get("/explorer.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "/explorer/graph" in script.text
    assert "innerHTML" not in script.text  # store values are set as text, never as markup
    assert client.post("/explorer").status_code == 405


def test_the_graph_holds_identifiers_merges_links_and_traits(
    client: TestClient, engine: Engine
) -> None:
    engine.ingest_batch(
        [
            msg("page", anonymousId="anon-1"),
            msg("page", anonymousId="anon-2"),
            msg("identify", anonymousId="anon-1", userId="u1", traits={"email": "J@x.com"}),
            msg("identify", anonymousId="anon-2", traits={"email": "j@x.com", "plan": "pro"}),
            msg("group", userId="u1", groupId="g1", traits={"name": "Acme"}),
        ]
    )
    body = graph(client, "anonymous_id:anon-2")
    profile = body["profile"]
    assert isinstance(profile, dict)
    assert profile["segment_id"] == engine.profile("user_id:u1")["segment_id"]
    assert profile["collection"] == "users"
    identifiers = body["identifiers"]
    assert isinstance(identifiers, list)
    assert sorted((i["type"], i["id"]) for i in identifiers) == [
        ("anonymous_id", "anon-1"),
        ("anonymous_id", "anon-2"),
        ("email", "j@x.com"),
        ("user_id", "u1"),
    ]
    assert all(i["source_id"] == "api" and i["first_message_id"] for i in identifiers)
    merges = body["merges"]
    assert isinstance(merges, list) and len(merges) == 1
    assert merges[0]["into_segment_id"] == profile["segment_id"]
    assert body["links"] == [
        {
            "segment_id": engine.profile("group_id:g1")["segment_id"],
            "collection": "accounts",
            "identifiers": [{"type": "group_id", "id": "g1"}],
            "more_identifiers": False,
        }
    ]
    assert body["traits"] == {"email": "j@x.com", "plan": "pro"}
    assert [body[f"more_{k}"] for k in ("identifiers", "merges", "links", "traits")] == [False] * 4
    # The account's side: the user it links to, named by its highest-priority identifiers
    # (the user_id and the email before the anonymous ids seen first).
    account = graph(client, "group_id:g1")
    assert account["profile"]["collection"] == "accounts"  # type: ignore[index]
    (user,) = account["links"]  # type: ignore[misc]
    assert user["segment_id"] == profile["segment_id"]
    assert [i["type"] for i in user["identifiers"]] == [
        "user_id",
        "email",
        "anonymous_id",
        "anonymous_id",
    ]
    assert account["traits"] == {"name": "Acme"}


def test_an_account_linked_to_many_users_is_drawn_with_the_first_few_hundred(
    client: TestClient, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in (("LINKS", 3), ("TRAITS", 2), ("IDENTIFIERS", 1), ("MERGES", 1)):
        monkeypatch.setattr(explorer, f"MAX_{name}", value)
    monkeypatch.setattr(explorer, "MAX_LINKED_IDENTIFIERS", 1)
    engine.ingest_batch(
        [msg("group", userId=f"u{n}", groupId="big", traits={f"t{n}": n}) for n in range(5)]
        + [msg("page", anonymousId=f"a{n}") for n in range(3)]
        + [msg("identify", userId="u0", anonymousId=f"a{n}") for n in range(3)]
    )
    body = graph(client, "group_id:big")
    assert len(body["links"]) == 3  # type: ignore[arg-type]
    assert body["more_links"] is True
    assert len(body["traits"]) == 2  # type: ignore[arg-type]
    assert body["more_traits"] is True
    user = graph(client, "user_id:u0")
    assert (len(user["identifiers"]), user["more_identifiers"]) == (1, True)  # type: ignore[arg-type]
    assert (len(user["merges"]), user["more_merges"]) == (1, True)  # type: ignore[arg-type]
    (link,) = user["links"]  # type: ignore[misc]
    assert (link["identifiers"], link["more_identifiers"]) == (
        [{"type": "group_id", "id": "big"}],
        False,
    )


def test_the_graph_needs_an_access_token_and_a_reference(client: TestClient) -> None:
    missing = client.get(explorer.DATA_PATH, params={"ref": "user_id:u1"})
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "authentication_error"
    # The page fetches it: a challenge would open the browser's own sign-in dialog.
    assert "www-authenticate" not in missing.headers
    # A write key is not an access token.
    wrong = client.get(explorer.DATA_PATH, params={"ref": "user_id:u1"}, headers=WRITE)
    assert wrong.status_code == 401
    forged = client.get(explorer.DATA_PATH, params={"ref": "x:y"}, headers=basic("nope"))
    assert forged.status_code == 401
    for params, status, code in [
        ({}, 400, "validation_error"),
        ({"ref": "  "}, 400, "validation_error"),
        ({"ref": "no-colon"}, 400, "validation_error"),
        ({"ref": "user_id:" + "x" * 5000}, 400, "validation_error"),
        ({"ref": "user_id:nobody"}, 404, "not_found"),
    ]:
        response = client.get(explorer.DATA_PATH, params=params, headers=READ)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert client.post(explorer.DATA_PATH, headers=READ).status_code == 405
