"""Operations routes (health, metrics, OpenAPI, docs) and what the logs may contain."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from idstitch.checks import redact_url
from idstitch.config import settings_from
from idstitch.engine import Engine
from idstitch.http import logs
from idstitch.http import profile_api as profile_routes
from idstitch.http.app import App
from idstitch.http.logs import JsonFormatter
from idstitch.http.metrics import RateMeter
from idstitch.http.routes import document
from idstitch.http.tracking import ROUTES
from idstitch.storage.sqlite import SQLiteStore
from tests.http.conftest import (
    CONFIG,
    READ,
    TOKEN,
    WRITE,
    WRITE_KEY,
    TestClient,
    basic,
    profile_url,
)


def test_healthz(client: TestClient, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    assert client.get("/healthz").json() == {
        "status": "ok",
        "index_lag": {"messages": 0, "seconds": 0.0},
    }
    assert client.head("/healthz").status_code == 200  # what many load balancers send
    monkeypatch.setattr(engine.store, "healthy", lambda: False)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert client.head("/healthz").status_code == 503
    refused = client.post("/healthz")
    assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"


def test_index_lag_is_on_healthz_and_metrics(tmp_path: Path) -> None:
    """Messages acknowledged but not yet indexed are counted, with the age of the oldest; once
    the indexer has run, both are back to zero."""
    db = tmp_path / "idstitch.db"
    settings = settings_from({**CONFIG, "storage": {"url": f"sqlite:///{db}"}})
    lagging = Engine(settings, SQLiteStore(db, indexer=False), tune_gc=False)
    with contextlib.closing(lagging), TestClient(App(lagging)) as c:
        for n in range(3):
            assert c.post("/v1/track", json={"userId": f"u{n}", "event": "E"}, headers=WRITE)
        time.sleep(0.05)
        lag = c.get("/healthz").json()["index_lag"]
        assert lag["messages"] == 3 and lag["seconds"] >= 0.05, lag
        text = c.get("/metrics").text
        assert metric(text, "idstitch_index_lag_messages") == 3
        assert metric(text, "idstitch_index_lag_seconds") >= 0.05
        assert "# TYPE idstitch_index_lag_seconds gauge" in text
    indexing = Engine(settings, SQLiteStore(db), tune_gc=False)
    with contextlib.closing(indexing), TestClient(App(indexing)) as c:
        deadline = time.monotonic() + 30
        while (lag := c.get("/healthz").json()["index_lag"])["messages"]:
            assert time.monotonic() < deadline, lag
            time.sleep(0.05)
        assert lag == {"messages": 0, "seconds": 0.0}
        assert metric(c.get("/metrics").text, "idstitch_index_lag_messages") == 0


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def test_metrics_count_events_merges_violations_and_latency(client: TestClient) -> None:
    client.post("/v1/identify", json={"anonymousId": "a1", "traits": {"x": 1}}, headers=WRITE)
    client.post("/v1/identify", json={"anonymousId": "a2", "traits": {"x": 1}}, headers=WRITE)
    client.post(
        "/v1/batch",
        headers=WRITE,
        json={
            "batch": [
                {"type": "identify", "anonymousId": "a1", "userId": "u1"},
                {"type": "identify", "anonymousId": "a2", "userId": "u1"},
                {"type": "identify", "userId": "u1", "anonymousId": "undefined"},
            ]
        },
    )
    client.post("/v1/track", json={"userId": "u1"}, headers=WRITE)
    client.get(profile_url("user_id:u1", "traits"), headers=READ)
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert metric(text, "idstitch_events_total") == 5
    assert metric(text, "idstitch_resolutions_total") == 5
    assert metric(text, "idstitch_profiles_created_total") == 2
    assert metric(text, "idstitch_merges_total") == 1
    assert 'idstitch_violations_total{rule="blocked_value"}' in text
    assert 'idstitch_http_requests_total{route="identify",status="200"} 2' in text
    assert 'idstitch_http_requests_total{route="track",status="400"} 1' in text
    assert 'idstitch_http_requests_total{route="profiles.traits",status="200"} 1' in text
    assert 'idstitch_http_request_duration_seconds_bucket{route="batch",le="+Inf"} 1' in text
    assert metric(text, "idstitch_commit_duration_seconds_count") == 3
    assert "idstitch_events_per_second " in text
    assert "# TYPE idstitch_http_request_duration_seconds histogram" in text


def test_events_per_second_is_a_sliding_window() -> None:
    meter = RateMeter(window=10)
    assert meter.rate() == 0.0
    for second in range(30):
        meter.sample(second * 100 if second < 20 else 2000, now=float(second))
    assert meter.rate() == pytest.approx(10.0)  # 19 s -> 29 s: 1900 -> 2000
    meter.sample(3000, now=30.0)
    assert meter.rate() == pytest.approx(100.0)


def test_openapi_describes_both_apis(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    assert spec == document()
    for path in ROUTES:
        assert "post" in spec["paths"][path]
    base = "/v1/spaces/{space_id}/collections/{collection}/profiles/{ref}/"
    for resource in ("traits", "external_ids", "events", "metadata", "links"):
        assert "get" in spec["paths"][base + resource]
    assert set(spec["components"]["securitySchemes"]) == {"writeKey", "accessToken"}


def test_docs_page_lists_every_route(client: TestClient) -> None:
    response = client.get("/docs")
    assert response.headers["content-type"].startswith("text/html")
    for path in document()["paths"]:
        assert path in response.text
    assert "<script" not in response.text


def test_root_redirects_to_docs_and_unknown_routes_are_404(client: TestClient) -> None:
    root = client.get("/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/docs"
    missing = client.get("/v2/nothing")
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"
    assert client.post("/metrics").status_code == 405


# ---- logs ---------------------------------------------------------------------------------
SECRET_PAYLOAD = "payload-marker-7f3a"
SECRET_EMAIL = "private.person@example.org"


def rendered(caplog: pytest.LogCaptureFixture) -> str:
    formatter = JsonFormatter()
    return "\n".join(
        formatter.format(record)
        for record in caplog.records
        if record.name.startswith(("idstitch", "uvicorn"))  # not the test client's own log
    )


def test_logs_never_carry_payloads_keys_tokens_or_references(
    client: TestClient, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    bad = [
        ("/v1/track", {"userId": SECRET_PAYLOAD, "timestamp": SECRET_PAYLOAD}, WRITE),
        ("/v1/track", {"userId": "u", "event": "E", "writeKey": "unknown-" + SECRET_PAYLOAD}, {}),
        (
            "/v1/identify",
            {"userId": "u", "traits": {"email": SECRET_EMAIL}},
            basic(WRITE_KEY + "-wrong"),
        ),
        (
            "/v1/batch",
            {
                "batch": [
                    {"type": "identify", "userId": SECRET_PAYLOAD, "timestamp": SECRET_PAYLOAD}
                ]
            },
            WRITE,
        ),
    ]
    for path, body, headers in bad:
        assert client.post(path, json=body, headers=headers).status_code in (400, 401)
    client.post(
        "/v1/identify", json={"userId": "u", "traits": {"email": SECRET_EMAIL}}, headers=WRITE
    )
    client.get(profile_url(f"email:{SECRET_EMAIL}", "traits"), headers=basic(TOKEN + "x"))
    client.get(profile_url(f"email:{SECRET_EMAIL}", "traits"), headers=READ)

    def broken(*args: Any) -> Any:
        raise RuntimeError(f"bug while reading {SECRET_EMAIL}")

    monkeypatch.setattr(profile_routes, "read", broken)
    failed = client.get(profile_url(f"email:{SECRET_EMAIL}", "traits"), headers=READ)
    assert failed.status_code == 500
    assert failed.json()["error"]["code"] == "server_error"
    assert SECRET_EMAIL not in failed.text
    text = rendered(caplog)
    assert "request rejected" in text and "request failed" in text
    assert "RuntimeError" in text and "frames" in text
    for secret in (SECRET_PAYLOAD, SECRET_EMAIL, WRITE_KEY, TOKEN):
        assert secret not in text, secret


def test_storage_urls_are_logged_without_passwords() -> None:
    assert redact_url("postgresql://app:s3cret@db:5432/ids") == "postgresql://app:***@db:5432/ids"
    assert redact_url("postgresql://app@db/ids") == "postgresql://app@db/ids"
    assert redact_url("sqlite:///data/idstitch.db") == "sqlite:///data/idstitch.db"
    assert redact_url("sqlite:////var/lib/idstitch.db") == "sqlite:////var/lib/idstitch.db"
    assert (  # a password given as a parameter is hidden too
        redact_url("postgresql://app@db/ids?password=s3cret&sslmode=require")
        == "postgresql://app@db/ids?password=***&sslmode=require"
    )


def test_the_database_driver_logs_json_lines_too(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("idstitch", "uvicorn", "uvicorn.error", "psycopg"):
        log = logging.getLogger(name)
        monkeypatch.setattr(log, "handlers", list(log.handlers))
        monkeypatch.setattr(log, "propagate", log.propagate)
        monkeypatch.setattr(log, "level", log.level)
    logs.setup(logging.INFO)
    logging.getLogger("psycopg").warning("error ignored terminating %s", "a pipeline")
    logging.getLogger("psycopg.pool").info("a routine pool message")  # below WARNING
    lines = capsys.readouterr().err.strip().splitlines()
    assert [json.loads(line)["logger"] for line in lines] == ["psycopg"]
    assert json.loads(lines[0])["message"] == "error ignored terminating a pipeline"
