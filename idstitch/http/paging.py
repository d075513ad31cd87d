"""Query parameters and cursors of the Profile API.

Cursors are keyset positions (the sort key of the last item returned), never offsets, so a
page boundary stays put while profiles grow: paging never skips or repeats an item that
existed when the first page was read. Event and identifier cursors are opaque base64url
JSON; the traits cursor is the next trait key, as Segment's is.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

import msgspec

from idstitch.core.messages import parse_time
from idstitch.errors import InvalidMessage
from idstitch.http.errors import ParameterError

Resource = Literal["traits", "external_ids", "events", "metadata", "links"]
RESOURCES: tuple[Resource, ...] = ("traits", "external_ids", "events", "metadata", "links")

# (default, maximum) of `limit` per resource (SPEC section 5): the default is 10 everywhere, as
# Segment's; the maximum is 100, except traits, which allow 200 as Segment's do.
LIMITS: dict[str, tuple[int, int]] = {
    "traits": (10, 200),
    "external_ids": (10, 100),
    "events": (10, 100),
    "metadata": (10, 100),
    "links": (10, 100),
}


class Options(msgspec.Struct, frozen=True):
    limit: int
    include: frozenset[str] | None = None
    exclude: frozenset[str] | None = None
    next: str = ""
    verbose: bool = False
    start: float | None = None
    end: float | None = None
    sort: Literal["asc", "desc"] = "desc"


def _fail(name: str, value: str, fix: str) -> ParameterError:
    return ParameterError(f"The parameter `{name}` has the invalid value {value!r}; {fix}.")


def _limit(params: dict[str, str], resource: str) -> int:
    default, maximum = LIMITS[resource]
    text = params.get("limit")
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= maximum:
        raise _fail("limit", text, f"use a whole number from 1 to {maximum}")
    return int(text)


def _flag(params: dict[str, str], name: str) -> bool:
    text = params.get(name, "false").lower()
    if text not in ("true", "false", "1", "0", ""):
        raise _fail(name, text, "use true or false")
    return text in ("true", "1")


def _names(params: dict[str, str], name: str) -> frozenset[str] | None:
    text = params.get(name)
    if text is None:
        return None
    names = frozenset(part.strip() for part in text.split(",") if part.strip())
    return names or None  # `include=` with nothing in it filters nothing


def _moment(params: dict[str, str], name: str) -> float | None:
    text = params.get(name)
    if not text:
        return None
    try:
        return parse_time(text, name)
    except InvalidMessage:
        raise _fail(name, text, "send an ISO-8601 date-time such as 2025-01-15T02:02:15Z") from None


def options(params: dict[str, str], resource: str) -> Options:
    """Parse and check the query parameters of one resource (raises ParameterError)."""
    is_events = resource == "events"
    sort = params.get("sort", "desc").lower() if is_events else "desc"
    if sort not in ("asc", "desc"):
        raise _fail("sort", sort, "use asc or desc")
    return Options(
        limit=_limit(params, resource),
        include=_names(params, "include"),
        exclude=_names(params, "exclude") if is_events else None,
        next=params.get("next", ""),
        verbose=_flag(params, "verbose"),
        start=_moment(params, "start") if is_events else None,
        end=_moment(params, "end") if is_events else None,
        sort="asc" if sort == "asc" else "desc",
    )


def encode_cursor(position: list[Any]) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(position)).rstrip(b"=").decode()


def decode_cursor(text: str, kinds: tuple[type, ...]) -> tuple[Any, ...] | None:
    """The position in a `next` cursor (None for an empty cursor); its items must have the
    given types, so a tampered cursor is a 400, not a crash."""
    if not text:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        position = msgspec.json.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        position = None
    if (
        not isinstance(position, list)
        or len(position) != len(kinds)
        or not all(
            isinstance(v, k) and not isinstance(v, bool)
            for v, k in zip(position, kinds, strict=True)
        )
    ):
        raise _fail("next", text, "pass the `cursor.next` value of the previous page unchanged")
    return tuple(position)
