"""Shared fixtures. `make_engine` builds an engine on every store under test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from idstitch.config import settings_from
from idstitch.engine import Engine
from tests.storage import pgserver

MakeEngine = Callable[..., Engine]


def segment_unless_named(config: dict[str, Any] | None) -> dict[str, Any]:
    """The config, on Segment's preset unless it names one: the rule tests were written for
    Segment's rules (SPEC section 2), and keep them; tests/core/test_presets.py and the
    property search cover the idstitch preset, the default."""
    data = dict(config or {})
    identity = dict(data.get("identity", {}))
    identity.setdefault("preset", "segment")
    data["identity"] = identity
    return data


# Every store test runs on each store; PostgreSQL needs a server (see tests/storage/pgserver).
STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A store URL on a fresh PostgreSQL schema, dropped after the test."""
    with pgserver.fresh_schema() as url:
        yield url


@pytest.fixture
def store_url(request: pytest.FixtureRequest, tmp_path: Path, store_kind: str) -> str:
    """The URL of a fresh, empty store of the kind under test."""
    if store_kind == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'idstitch.db'}"


@pytest.fixture
def make_engine(store_url: str) -> Iterator[MakeEngine]:
    """`make_engine(config_dict)` -> an open Engine on a fresh store; closed after the test."""
    engines: list[Engine] = []

    def make(config: dict[str, Any] | None = None, **options: Any) -> Engine:
        data = segment_unless_named(config)
        data["storage"] = {"url": store_url}
        engine = Engine(settings_from(data), tune_gc=False, **options)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


@pytest.fixture
def engine(make_engine: MakeEngine) -> Engine:
    return make_engine()
