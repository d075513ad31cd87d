"""The Profile API's `violations` and `explain` resources, and the explorer's explain route:
same token, paging and error shapes as the other resources."""

from __future__ import annotations

from typing import Any

from idstitch.engine import Engine
from tests.http.conftest import READ, TestClient, profile_url


def _kiosk(engine: Engine) -> None:
    """Five people log in on one shared browser, one after the other: the first keeps the
    cookie, each later login is refused it."""
    engine.ingest_batch(
        [
            {"type": "identify", "userId": f"k{n}", "anonymousId": "kiosk", "messageId": f"m{n}"}
            for n in range(5)
        ]
    )


def _get(client: TestClient, url: str, **params: str) -> dict[str, Any]:
    response = client.get(url, params=params, headers=READ)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_violations_page_newest_first_from_both_sides(client: TestClient, engine: Engine) -> None:
    _kiosk(engine)
    first = engine.profile("user_id:k0")["segment_id"]
    url = profile_url("user_id:k0", "violations")
    page = _get(client, url, limit="3")
    assert [v["message_id"] for v in page["data"]] == ["m4", "m3", "m2"]
    assert all(v["segment_id"] == first for v in page["data"])
    assert page["data"][0]["other_segment_id"] == engine.profile("user_id:k4")["segment_id"]
    assert set(page["data"][0]) >= {
        "rule", "type", "value", "message_id", "source", "timestamp", "segment_id",
        "other_segment_id",
    }  # fmt: skip
    assert page["cursor"]["has_more"] and page["cursor"]["url"].endswith(f"{first}/violations")
    rest = _get(client, url, limit="3", next=page["cursor"]["next"])
    assert [v["message_id"] for v in rest["data"]] == ["m1"]
    assert not rest["cursor"]["has_more"] and rest["cursor"]["next"] == ""
    # The refused side sees the same refusal, the other way round.
    [theirs] = _get(client, profile_url("user_id:k2", "violations"))["data"]
    assert (theirs["rule"], theirs["value"], theirs["other_segment_id"]) == (
        "limit_exceeded",
        "kiosk",
        first,
    )
    # A cursor of another profile is refused, as on every resource.
    other = client.get(
        profile_url("user_id:k2", "violations"),
        params={"next": page["cursor"]["next"]},
        headers=READ,
    )
    assert other.status_code == 400 and "another profile" in other.json()["error"]["message"]


def test_explain_answers_together_or_apart(client: TestClient, engine: Engine) -> None:
    _kiosk(engine)
    url = profile_url("user_id:k0", "explain")
    together = _get(client, url, **{"with": "anonymous_id:kiosk"})
    assert together["together"] and together["refusals"] == []
    [step] = together["path"]
    assert (step["from"], step["to"], step["kind"], step["message_id"], step["source"]) == (
        "user_id:k0",
        "anonymous_id:kiosk",
        "attach",
        "m0",
        "api",
    )
    apart = _get(client, url, **{"with": "user_id:k3"})
    assert not apart["together"] and apart["path"] == []
    assert [(r["rule"], r["message_id"]) for r in apart["refusals"]] == [("limit_exceeded", "m3")]
    # The explorer asks the same question for two picked identifiers.
    same = client.get("/explorer/explain", params={"a": "user_id:k0", "b": "user_id:k3"},
                      headers=READ)  # fmt: skip
    assert same.status_code == 200 and same.json() == apart


def test_explain_errors_name_the_fix(client: TestClient, engine: Engine) -> None:
    _kiosk(engine)
    missing = client.get(profile_url("user_id:k0", "explain"), headers=READ)
    assert missing.status_code == 400
    assert "?with=type:value" in missing.json()["error"]["message"]
    unknown = client.get(
        profile_url("user_id:k0", "explain"), params={"with": "user_id:nobody"}, headers=READ
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    assert client.get(profile_url("user_id:k0", "violations")).status_code == 401
    assert (
        client.get("/explorer/explain", params={"a": "user_id:k0"}, headers=READ).status_code == 400
    )
    assert client.get("/explorer/explain", params={"a": "x", "b": "y"}).status_code == 401
