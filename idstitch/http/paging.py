"""Query parameters and cursors of the Profile API.

Cursors are keyset positions (the sort key of the last item returned), never offsets, so a
page boundary stays put while profiles grow: paging never skips or repeats an item that
existed when the first page was read. Event, identifier and link cursors are opaque base64url
JSON, `[resource, profile tag, *position]`, bound to the resource and the profile that issued
them (a merge keeps them valid: the tags of merged-away profiles still match); the traits
cursor is the next trait key, as Segment's is.

Every parameter and cursor a client can send is checked here, so a bad one is a 400
`validation_error`, never a crash: `limit` takes ASCII digits only, and a cursor is bounded
in length, decoded into a flat list of scalars (no nesting to recurse into), and its integers
must fit a signed 64-bit column and its floats be finite.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
from typing import Any, Literal

import msgspec

from idstitch.core.messages import parse_time
from idstitch.errors import InvalidMessage
from idstitch.http.errors import ParameterError

Resource = Literal["traits", "external_ids", "events", "metadata", "links", "violations", "explain"]
RESOURCES: tuple[Resource, ...] = (
    "traits",
    "external_ids",
    "events",
    "metadata",
    "links",
    "violations",
    "explain",
)

# (default, maximum) of `limit` per resource (SPEC section 5): the default is 10 everywhere, as
# Segment's; the maximum is 100, except traits, which allow 200 as Segment's do.
LIMITS: dict[str, tuple[int, int]] = {
    "traits": (10, 200),
    "external_ids": (10, 100),
    "events": (10, 100),
    "links": (10, 100),
    "violations": (10, 100),
}


# `limit` is ASCII digits, few enough that int() is cheap (str.isdigit() also passes "²" and
# "٣", and int() of thousands of digits raises).
_LIMIT_TEXT = re.compile(r"[0-9]{1,6}")

# A legitimate cursor is well under this (an identifier cursor holds one type and one value
# of at most 1,000 characters); anything longer is refused before it is decoded.
MAX_CURSOR_LENGTH = 16_384
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Typed: nested arrays and objects are refused at depth one, so no input can recurse deeply.
_cursor_items = msgspec.json.Decoder(list[int | float | str])
_RESTART = "start without `next`"
# How much of a bad value an error message repeats.
_SHOWN = 40


class Options(msgspec.Struct, frozen=True):
    limit: int
    include: frozenset[str] | None = None
    exclude: frozenset[str] | None = None
    next: str = ""
    verbose: bool = False
    start: float | None = None
    end: float | None = None
    sort: Literal["asc", "desc"] = "desc"
    # Segment's `class` on traits: audiences and computed traits, which idstitch does not
    # make, so asking for either answers no traits.
    trait_class: str | None = None
    # `explain`: the other profile reference (`with`).
    other: str = ""


TRAIT_CLASSES = ("audience", "computed_trait")


def _fail(name: str, value: str, fix: str) -> ParameterError:
    shown = value if len(value) <= _SHOWN else value[:_SHOWN] + "..."
    return ParameterError(f"The parameter `{name}` has the invalid value {shown!r}; {fix}.")


def _limit(params: dict[str, str], resource: str) -> int:
    default, maximum = LIMITS[resource]
    text = params.get("limit")
    if text is None:
        return default
    if _LIMIT_TEXT.fullmatch(text) is None or not 1 <= int(text) <= maximum:
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
    sort = (params.get("sort") or "desc").lower() if is_events else "desc"
    if sort not in ("asc", "desc"):
        raise _fail("sort", sort, "use asc or desc")
    trait_class = (params.get("class") or None) if resource == "traits" else None
    if trait_class is not None and trait_class not in TRAIT_CLASSES:
        raise _fail("class", trait_class, f"use {' or '.join(TRAIT_CLASSES)}, or leave it out")
    other = params.get("with", "") if resource == "explain" else ""
    if resource == "explain" and not other.strip():
        raise ParameterError(
            "explain needs the other reference: add ?with=type:value (e.g. with=user_id:u123) "
            "or ?with=a segment_id."
        )
    return Options(
        other=other,
        # metadata has no pages: Segment takes only `verbose` there, so `limit` goes unread.
        limit=_limit(params, resource) if resource in LIMITS else 1,
        trait_class=trait_class,
        include=_names(params, "include"),
        exclude=_names(params, "exclude") if is_events else None,
        next=params.get("next", ""),
        verbose=_flag(params, "verbose"),
        start=_moment(params, "start") if is_events else None,
        end=_moment(params, "end") if is_events else None,
        sort="asc" if sort == "asc" else "desc",
    )


def profile_tag(segment_id: str) -> str:
    """A short tag of a profile's segment_id, carried in the cursors of its pages."""
    digest = hashlib.blake2b(segment_id.encode(), digest_size=6).digest()
    return base64.urlsafe_b64encode(digest).decode()


def encode_cursor(resource: str, tag: str, position: list[Any]) -> str:
    raw = msgspec.json.encode([resource, tag, *position])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _fits(value: Any, kind: type) -> bool:
    if not isinstance(value, kind) or isinstance(value, bool):
        return False
    if isinstance(value, int):
        return INT64_MIN <= value <= INT64_MAX
    if isinstance(value, float):
        return math.isfinite(value)
    return True


def decode_cursor(
    text: str, resource: str, kinds: tuple[type, ...]
) -> tuple[str, tuple[Any, ...]] | None:
    """The profile tag and the position in a `next` cursor of `resource` (None for an empty
    cursor). The position's items must have the given types and ranges, so a tampered cursor
    is a 400, not a crash; the caller checks the tag against the profile."""
    if not text:
        return None
    unchanged = f"pass the `cursor.next` value of the previous page unchanged, or {_RESTART}"
    if len(text) > MAX_CURSOR_LENGTH:
        raise _fail(
            "next", text, f"a cursor has at most {MAX_CURSOR_LENGTH} characters; {unchanged}"
        )
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        items: list[Any] | None = _cursor_items.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError, RecursionError):
        items = None
    if (
        items is None
        or len(items) < 2
        or not isinstance(items[0], str)
        or not isinstance(items[1], str)
    ):
        raise _fail("next", text, unchanged)
    if items[0] != resource:
        raise ParameterError(
            f"The `next` cursor belongs to another resource, not {resource}; pass a cursor "
            f"only to the resource whose page returned it, or {_RESTART}."
        )
    position = items[2:]
    if len(position) != len(kinds) or not all(
        _fits(v, k) for v, k in zip(position, kinds, strict=True)
    ):
        raise _fail("next", text, unchanged)
    return items[1], tuple(position)
