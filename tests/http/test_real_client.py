"""The official segment-analytics-python client against a real `idstitch serve`: it posts
`/v1/batch` with the write key both as HTTP Basic and in the body; the stitched profile is
then read back through the Profile API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from segment.analytics import Client  # type: ignore[import-untyped]

from tests.http.conftest import READ, SPACE, WRITE_KEY
from tests.http.live import running

pytestmark = pytest.mark.timeout(120)


def read(
    base: str, ref: str, resource: str, collection: str = "users", **params: Any
) -> dict[str, Any]:
    url = f"{base}/v1/spaces/{SPACE}/collections/{collection}/profiles/{ref}/{resource}"
    response = httpx.get(url, params=params, headers=READ)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_the_official_client_stitches_a_profile(tmp_path: Path) -> None:
    errors: list[Any] = []
    with running(tmp_path) as server:
        plain = Client(
            WRITE_KEY,
            host=server.url,
            upload_interval=0.05,
            max_retries=0,
            on_error=lambda error, items: errors.append(error),
        )
        zipped = Client(
            WRITE_KEY,
            host=server.url + "/",
            upload_interval=0.05,
            max_retries=0,
            gzip=True,
            on_error=lambda error, items: errors.append(error),
        )
        sent = [
            plain.page(anonymous_id="anon-laptop", name="Home"),
            plain.identify(
                user_id="ann",
                anonymous_id="anon-laptop",
                traits={"email": "Ann@Example.com", "name": "Ann"},
            ),
            plain.track(user_id="ann", event="Order Completed", properties={"total": 42}),
            plain.page(anonymous_id="anon-phone", name="Pricing"),
            plain.alias(previous_id="anon-phone", user_id="ann"),
            plain.group(user_id="ann", group_id="acme", traits={"name": "Acme", "seats": 5}),
        ]
        plain.flush()  # the two clients post concurrently: keep the story in order
        sent.append(zipped.track(user_id="ann", event="Compressed"))
        for client in (plain, zipped):
            client.flush()
            client.shutdown()
        assert errors == []
        assert all(ok for ok, _ in sent)

        ann = read(server.url, "user_id:ann", "metadata")["metadata"]
        ids = {
            (e["type"], e["id"])
            for e in read(server.url, "user_id:ann", "external_ids", limit=100)["data"]
        }
        assert ids == {
            ("user_id", "ann"),
            ("email", "ann@example.com"),
            ("anonymous_id", "anon-laptop"),
            ("anonymous_id", "anon-phone"),
        }
        # the phone's anonymous profile was merged in by the alias call
        phone = read(server.url, "anonymous_id:anon-phone", "metadata")["metadata"]
        assert phone["segment_id"] == ann["segment_id"]
        assert len(ann["merged_from"]) == 1
        assert read(server.url, "email:ann%40example.com", "traits")["traits"] == {
            "email": "Ann@Example.com",
            "name": "Ann",
        }
        events = read(server.url, "user_id:ann", "events", limit=100)["data"]
        assert {e["message_id"] for e in events} == {msg["messageId"] for _, msg in sent}
        assert sorted(e["type"] for e in events) == [
            "alias",
            "group",
            "identify",
            "page",
            "page",
            "track",
            "track",
        ]
        links = read(server.url, "user_id:ann", "links")["data"]
        assert [link["external_ids"][0]["id"] for link in links] == ["acme"]
        account = read(server.url, "group_id:acme", "traits", "accounts")["traits"]
        assert account == {"name": "Acme", "seats": 5}
