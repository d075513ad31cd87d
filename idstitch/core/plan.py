"""Plans: what the resolver decided for one message, for a store to apply."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

Outcome = Literal["created", "attached", "merged", "unresolved", "duplicate"]


class Violation(msgspec.Struct, frozen=True):
    """An identifier (or a merge) refused by a rule; recorded, never raised."""

    collection: str
    type: str
    value: str
    rule: str
    detail: str
    # The store's id of the profile the refused identifier (or merge) would have joined, when
    # one held it: so that a profile's refusals can be listed from either side.
    other_pid: int | None = None


class SidePlan(msgspec.Struct):
    """The resolution of one collection (users or accounts) for one message."""

    collection: str
    outcome: Outcome
    segment_id: str | None = None
    pid: int | None = None  # the store's id for segment_id, when the snapshot knows it
    created: bool = False
    merged: list[tuple[int, str]] = msgspec.field(default_factory=list)  # (pid, segment_id)
    added: list[tuple[str, str]] = msgspec.field(default_factory=list)  # (type, value)
    identifiers: list[tuple[str, str]] = msgspec.field(default_factory=list)  # used, in order
    violations: list[Violation] = msgspec.field(default_factory=list)
    reason: str | None = None
    # The rule that allowed `merged` past a limit (`trusted_alias`), or None: the ordinary
    # rules allowed it.
    merge_rule: str | None = None


class Plan(msgspec.Struct):
    """Everything that one message changes."""

    source_id: str
    message_id: str
    type: str
    event: str | None
    timestamp: float
    received_at: float
    raw: bytes
    users: SidePlan | None = None
    accounts: SidePlan | None = None
    traits: dict[str, Any] | None = None  # goes to the user (identify) or account (group)
    violations: list[Violation] = msgspec.field(default_factory=list)  # extraction drops
    duplicate: bool = False

    @property
    def outcome(self) -> Outcome:
        if self.duplicate:
            return "duplicate"
        side = self.users or self.accounts
        return side.outcome if side is not None else "unresolved"

    def all_violations(self) -> list[Violation]:
        out = list(self.violations)
        for side in (self.users, self.accounts):
            if side is not None:
                out.extend(side.violations)
        return out
