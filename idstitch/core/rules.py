"""Identity rules: priority, limits with windows, blocked values, per-source permissions, caps."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

WindowName = Literal["ever", "annually", "monthly", "weekly", "daily"]
PresetName = Literal["segment", "idstitch"]
# The idstitch preset measures better than Segment's rules on both precision and recall
# (benchmarks/quality.py; docs/resolution.md has the table).
DEFAULT_PRESET: PresetName = "idstitch"
DAY = 86_400.0
WINDOWS: dict[str, float | None] = {
    "ever": None,
    "annually": 365 * DAY,
    "monthly": 30 * DAY,
    "weekly": 7 * DAY,
    "daily": DAY,
}

DEFAULT_PRIORITY: tuple[str, ...] = (
    "user_id",
    "email",
    "android.id",
    "ios.id",
    "android.idfa",
    "ios.idfa",
    "android.push_token",
    "ios.push_token",
    "ga_client_id",
    "anonymous_id",
)
BUILTIN_TYPES = frozenset((*DEFAULT_PRIORITY, "group_id"))

DEFAULT_BLOCKED_EXACT: tuple[str, ...] = (
    "-1",
    "null",
    "none",
    "nil",
    "nan",
    "undefined",
    "anonymous",
    "guest",
    "unknown",
    "[object object]",
    "true",
    "false",
)
DEFAULT_BLOCKED_REGEX: tuple[str, ...] = (r"^[0-]*$",)
MAX_VALUE_LENGTH = 1000
MAX_TYPE_LENGTH = 100


@dataclass(frozen=True)
class Limit:
    max: int
    window: WindowName = "ever"

    @property
    def seconds(self) -> float | None:
        return WINDOWS[self.window]

    def describe(self) -> str:
        return f"{self.max} {self.window}"


def default_limit(type_: str) -> Limit:
    if type_ == "user_id":
        return Limit(1, "ever")
    if type_ in ("email", "ios.id", "android.id", "ios.push_token", "android.push_token"):
        return Limit(5, "annually")
    if type_ in ("anonymous_id", "ga_client_id", "ios.idfa", "android.idfa"):
        return Limit(5, "weekly")
    return Limit(5, "ever")


@dataclass(frozen=True)
class BlockList:
    """Exact values (case-insensitive, also in quotes) and regular expressions."""

    exact: frozenset[str] = frozenset()
    patterns: tuple[re.Pattern[str], ...] = ()

    def blocks(self, value: str) -> str | None:
        """The matching entry, or None. `value` is already trimmed."""
        folded = value.casefold()
        if folded in self.exact:
            return folded
        if len(folded) >= 2 and folded[0] == folded[-1] and folded[0] in "\"'":
            inner = folded[1:-1].strip()
            if inner in self.exact:
                return inner
            for pattern in self.patterns:
                if pattern.search(inner):
                    return pattern.pattern
        for pattern in self.patterns:
            if pattern.search(value):
                return pattern.pattern
        return None

    def __or__(self, other: BlockList) -> BlockList:
        return BlockList(self.exact | other.exact, self.patterns + other.patterns)

    @classmethod
    def build(cls, exact: Iterable[str] = (), regex: Iterable[str] = ()) -> BlockList:
        return cls(
            frozenset(v.strip().casefold() for v in exact),
            tuple(re.compile(r) for r in regex),
        )


DEFAULT_BLOCKLIST = BlockList.build(DEFAULT_BLOCKED_EXACT, DEFAULT_BLOCKED_REGEX)
# The idstitch preset also blocks what clients write for a missing value in other languages
# and tools: Objective-C's `(null)` and `<null>`, `NSNull`, `n/a`, `#N/A` from spreadsheets,
# Google Analytics' `(not set)`.
PLACEHOLDER_BLOCKED_EXACT: tuple[str, ...] = (
    "(null)",
    "<null>",
    "nsnull",
    "(none)",
    "n/a",
    "#n/a",
    "(not set)",
    "not set",
    "(undefined)",
)
PLACEHOLDER_BLOCKLIST = BlockList.build(PLACEHOLDER_BLOCKED_EXACT)


# Segment's server-side libraries, as they name themselves in `context.library.name`.
SERVER_LIBRARIES = frozenset(
    (
        "analytics-node",
        "@segment/analytics-node",
        "analytics-python",
        "analytics-ruby",
        "analytics-go",
        "analytics-java",
        "analytics-php",
        "analytics-dotnet",
        "analytics.net",
        "analytics-kotlin-server",
    )
)
# Browser cookies: under the idstitch preset a login is evidence for them, not a count, and a
# profile without a user_id holds at most ANONYMOUS_COOKIES of a type (`resolver._over_limit`).
COOKIE_TYPES = frozenset(("anonymous_id", "ga_client_id"))
ANONYMOUS_COOKIES = 3
# A phone's ids: under the idstitch preset, one seen with a second known user is shared.
DEVICE_TYPES = frozenset(t for t in DEFAULT_PRIORITY if t.startswith(("android.", "ios.")))
CONFLICT = "conflict"
GENERIC = "generic_identifier"
SHARED_DEVICE = "shared_device"
TRUSTED_ALIAS = "trusted_alias"  # the rule of a merge an alias from a trusted source made


@dataclass(frozen=True)
class SourceRules:
    create: bool = True
    add: bool = True
    merge: bool = True
    # An alias from one user_id to another may merge past the user_id limit: None follows
    # the preset (idstitch: when the message comes from a server-side library).
    trust_alias: bool | None = None


ALLOW_ALL = SourceRules()


@dataclass(frozen=True)
class IdentityRules:
    """Everything the resolver needs to decide; built once from the config."""

    priority: tuple[str, ...] = ()
    limits: Mapping[str, Limit] = field(default_factory=dict)
    blocked: BlockList = DEFAULT_BLOCKLIST
    blocked_by_type: Mapping[str, BlockList] = field(default_factory=dict)
    sources: Mapping[str, SourceRules] = field(default_factory=dict)
    custom_types: tuple[str, ...] = ()
    max_merges: int = 100
    max_identifiers: int = 1000
    preset: PresetName = DEFAULT_PRESET
    # The idstitch preset: a value seen with this many known users besides its profile's
    # own stops linking (a phone's ids: with one).
    generic_after: int = 2
    _ranks: dict[str, tuple[int, int, str]] = field(default_factory=dict, compare=False, repr=False)
    _default_limits: dict[str, Limit] = field(default_factory=dict, compare=False, repr=False)

    def rank(self, type_: str) -> tuple[int, int, str]:
        """Sort key: configured order, then the default order, then unranked types A to Z."""
        cached = self._ranks.get(type_)
        if cached is not None:
            return cached
        if type_ in self.priority:
            key = (0, self.priority.index(type_), "")
        elif type_ in DEFAULT_PRIORITY:
            key = (1, DEFAULT_PRIORITY.index(type_), "")
        elif type_ == "group_id":
            # The account's own id, named by the call itself: the last an account side gives
            # up (only accounts carry it, so it never competes with user_id).
            key = (1, -1, "")
        else:
            key = (2, 0, type_)
        self._ranks[type_] = key
        return key

    def ordered_types(self, types: Iterable[str]) -> list[str]:
        return sorted(set(types), key=self.rank)

    def limit(self, type_: str) -> Limit:
        found = self.limits.get(type_)
        if found is None:
            found = self._default_limits.get(type_)
            if found is None:
                found = self._default_limits[type_] = default_limit(type_)
        return found

    def source(self, source_id: str) -> SourceRules:
        return self.sources.get(source_id, ALLOW_ALL)

    @property
    def idstitch(self) -> bool:
        """The idstitch preset's rules apply (docs/resolution.md, Presets)."""
        return self.preset == "idstitch"

    def shared_after(self, type_: str) -> int | None:
        """How many other known users a value of `type_` may be seen with before it stops
        linking (None: it never does, under Segment's preset)."""
        if not self.idstitch:
            return None
        return 1 if type_ in DEVICE_TYPES else self.generic_after

    def trusts_alias(self, source_id: str, library: object) -> bool:
        """May this message's alias merge two user_ids past the user_id limit?"""
        trust = self.source(source_id).trust_alias
        if trust is not None:
            return trust
        return self.idstitch and library in SERVER_LIBRARIES

    def blocked_by(self, type_: str, value: str) -> str | None:
        """The blocked entry that matches `value` for `type_`, or None."""
        hit = self.blocked.blocks(value)
        if hit is None and self.idstitch:
            hit = PLACEHOLDER_BLOCKLIST.blocks(value)
        if hit is None and self.blocked_by_type:
            per_type = self.blocked_by_type.get(type_)
            if per_type is not None:
                hit = per_type.blocks(value)
        return hit
