"""Shared fixtures. `make_engine` builds an engine on every store under test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from idstitch.config import settings_from
from idstitch.engine import Engine

MakeEngine = Callable[..., Engine]

STORES = ["sqlite"]


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_engine(tmp_path: Path, store_kind: str) -> Iterator[MakeEngine]:
    """`make_engine(config_dict)` -> an open Engine on a fresh store; closed after the test."""
    engines: list[Engine] = []

    def make(config: dict[str, Any] | None = None, **options: Any) -> Engine:
        data = dict(config or {})
        if store_kind == "sqlite":
            data["storage"] = {"url": f"sqlite:///{tmp_path / 'idstitch.db'}"}
        engine = Engine(settings_from(data), tune_gc=False, **options)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


@pytest.fixture
def engine(make_engine: MakeEngine) -> Engine:
    return make_engine()
