"""Fixtures of the core's tests."""

from __future__ import annotations

import pytest

from tests.core.pure import Core, MakeCore


@pytest.fixture
def make_core() -> MakeCore:
    """The identity core without a store (tests/core/pure.py): the rule and resolution cases
    run there; the ones that read events or traits, and a merge across profiles, run on every
    store."""
    return lambda config=None: Core(config)
