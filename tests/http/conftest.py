"""Fixtures for the HTTP tests: an app on a fresh engine, driven in-process."""

from __future__ import annotations

import base64
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.exceptions import StarletteDeprecationWarning

from idstitch.engine import Engine
from idstitch.http.app import App
from tests.conftest import MakeEngine

# Starlette 1.10 wants httpx2 behind its TestClient and warns once, at import, when it finds
# httpx (what the dev extras install). The client works the same; silence that one warning.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient as TestClient

WRITE_KEY = "wk-web-0123456789abcdef"
OTHER_KEY = "wk-mobile-0123456789abcdef"
TOKEN = "tok-0123456789abcdef0123"
SPACE = "spa_test"

CONFIG: dict[str, Any] = {
    "space_id": SPACE,
    "sources": [
        {"id": "web", "write_key": WRITE_KEY},
        {"id": "mobile", "write_key": OTHER_KEY},
    ],
    "access_tokens": [{"token": TOKEN}],
}


def basic(user: str, password: str = "") -> dict[str, str]:
    credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {credentials}"}


WRITE = basic(WRITE_KEY)
READ = basic(TOKEN)


def profile_url(ref: str, resource: str, collection: str = "users", space: str = SPACE) -> str:
    return f"/v1/spaces/{space}/collections/{collection}/profiles/{ref}/{resource}"


@pytest.fixture(params=["sqlite"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """The HTTP layer is the same over every store: run it on SQLite. The Profile API tests
    opt back in to every store, because they read through each store's queries."""
    return str(request.param)


@pytest.fixture
def engine(make_engine: MakeEngine) -> Engine:
    return make_engine(CONFIG)


@pytest.fixture
def app(engine: Engine) -> App:
    return App(engine)


@pytest.fixture
def client(app: App) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client
