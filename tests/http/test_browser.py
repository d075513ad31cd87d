"""What analytics.js needs besides the Tracking API: CORS for every header it sends (retries
included), its settings document, and a sink for its own usage counters."""

from __future__ import annotations

import gzip

import pytest

from tests.http.conftest import READ, WRITE_KEY, TestClient, profile_url

PAGE = "https://shop.example"


def preflight(client: TestClient, path: str, method: str, headers: str | None) -> dict[str, str]:
    asked = {"Origin": PAGE, "Access-Control-Request-Method": method}
    if headers is not None:
        asked["Access-Control-Request-Headers"] = headers
    response = client.options(path, headers=asked)
    assert response.status_code == 204, response.text
    assert response.headers["access-control-allow-origin"] == "*"
    return dict(response.headers)


@pytest.mark.parametrize("path", ["/v1/t", "/v1/b", "/v1/track", "/v1/batch"])
def test_a_retry_may_send_x_retry_count(client: TestClient, path: str) -> None:
    # analytics.js adds X-Retry-Count to every retry; a preflight that leaves it out makes
    # the browser drop the retried events without sending them.
    headers = preflight(client, path, "POST", "authorization,content-type,x-retry-count")
    allowed = {h.strip().lower() for h in headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-retry-count"} <= allowed
    assert "POST" in headers["access-control-allow-methods"]
    sent = client.post(
        path,
        content=b'{"type":"track","event":"E","anonymousId":"a1","writeKey":"'
        + WRITE_KEY.encode()
        + b'"}'
        if not path.endswith(("b", "batch"))
        else b'{"batch":[{"type":"track","event":"E","anonymousId":"a1"}],"writeKey":"'
        + WRITE_KEY.encode()
        + b'"}',
        headers={"Content-Type": "text/plain", "X-Retry-Count": "2", "Origin": PAGE},
    )
    assert sent.status_code == 200 and sent.headers["access-control-allow-origin"] == "*"


def test_a_preflight_without_a_header_list_or_with_a_malformed_one_gets_the_known_headers(
    client: TestClient,
) -> None:
    for asked in (None, "bad header\r\nx: y", "a" * 2000):
        headers = preflight(client, "/v1/t", "POST", asked)
        allowed = headers["access-control-allow-headers"].lower()
        assert "x-retry-count" in allowed and "authorization" in allowed
        assert "bad" not in allowed and "aaaa" not in allowed


def test_the_settings_document_points_analytics_js_back_here(client: TestClient) -> None:
    headers = preflight(client, f"/v1/projects/{WRITE_KEY}/settings", "GET", None)
    assert "GET" in headers["access-control-allow-methods"]
    response = client.get(
        f"/v1/projects/{WRITE_KEY}/settings",
        headers={"Origin": PAGE, "Host": "events.example:8443", "X-Forwarded-Proto": "https"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == "*"
    settings = response.json()
    segment = settings["integrations"]["Segment.io"]
    assert segment["apiKey"] == WRITE_KEY
    assert segment["apiHost"] == "events.example:8443/v1"
    assert segment["protocol"] == "https"
    assert settings["metrics"]["sampleRate"] == 0  # no usage counters sent at all
    plain = client.get(f"/v1/projects/{WRITE_KEY}/settings", headers={"Host": "10.0.0.5:8088"})
    assert plain.json()["integrations"]["Segment.io"]["protocol"] == "http"
    assert plain.json()["integrations"]["Segment.io"]["apiHost"] == "10.0.0.5:8088/v1"


def test_the_settings_of_an_unknown_write_key_are_refused_readably(client: TestClient) -> None:
    response = client.get("/v1/projects/not-a-key/settings", headers={"Origin": PAGE})
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.json()["code"] == "authentication_error"
    assert "www-authenticate" not in response.headers  # no login prompt in a visitor's browser
    assert client.post(f"/v1/projects/{WRITE_KEY}/settings").status_code == 405


def test_usage_counters_are_accepted_and_dropped(client: TestClient) -> None:
    body = b'{"series":[{"type":"Counter","metric":"analytics_js.invoke","value":1}]}'
    response = client.post("/v1/m", content=body, headers={"Origin": PAGE})
    assert response.status_code == 200 and response.json() == {"success": True}
    assert response.headers["access-control-allow-origin"] == "*"
    zipped = client.post("/v1/m", content=gzip.compress(body), headers={"Content-Encoding": "gzip"})
    assert zipped.status_code == 200
    assert client.post("/v1/m", content=b"x" * (65 * 1024)).status_code == 413


def test_an_unknown_tracking_path_is_a_404_a_browser_can_read(client: TestClient) -> None:
    response = client.post("/v1/nope", content=b"{}", headers={"Origin": PAGE})
    assert response.status_code == 404
    assert response.headers["access-control-allow-origin"] == "*"


def test_the_profile_api_stays_out_of_browsers(client: TestClient) -> None:
    response = client.get(profile_url("user_id:u1", "traits"), headers={**READ, "Origin": PAGE})
    assert "access-control-allow-origin" not in response.headers
    preflight = client.options(profile_url("user_id:u1", "traits"), headers={"Origin": PAGE})
    assert preflight.status_code == 401  # no token: nothing more is said
    assert "access-control-allow-origin" not in preflight.headers
