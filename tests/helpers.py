"""Small helpers shared by the scenario tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


class Profiles(Protocol):
    """An Engine, or the pure core of tests/core/pure.py."""

    def profile(self, ref: str) -> dict[str, Any]: ...


def at(days: float = 0, seconds: float = 0) -> str:
    """An ISO timestamp `days` after T0."""
    return (T0 + timedelta(days=days, seconds=seconds)).isoformat().replace("+00:00", "Z")


def ids(engine: Profiles, ref: str) -> set[str]:
    """The identifiers of the profile `ref` resolves to, as `type:value` strings."""
    return {f"{e['type']}:{e['id']}" for e in engine.profile(ref)["external_ids"]}


def sid(engine: Profiles, ref: str) -> str:
    return str(engine.profile(ref)["segment_id"])


def msg(type_: str, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type_}
    if type_ == "track":
        out["event"] = fields.pop("event", "Something Happened")
    out.update(fields)
    return out
