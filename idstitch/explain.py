"""Why identifiers are one profile, and why they are not.

A profile is joined by messages: every message names the identifiers it used (its event's
`external_ids`), and those all belong to one profile. So the identifiers of a profile and the
messages that carried two of them at once form a graph, and a shortest chain of messages
between two identifiers is why they are one person. Two profiles that stayed apart are kept
apart by refusals: each names the profile its message went to and the profile the refused
identifier (or merge) would have joined.

Everything here reads through `ProfileReads`; nothing is written.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from idstitch.core.identifiers import parse_ref
from idstitch.core.messages import format_time
from idstitch.reads import ProfileReads
from idstitch.storage.base import EventRow, ProfileRow, ProfileViolationRow

# What one answer reads at most: the messages of a profile (a path needs them all to be
# the shortest; a profile with more says its answer may be incomplete), and its refusals.
MAX_MESSAGES = 20_000
MAX_REFUSALS = 10_000
_PAGE = 1_000


def node(type_: str, value: str) -> str:
    return f"{type_}:{value}"


def messages(reads: ProfileReads, row: ProfileRow, limit: int = MAX_MESSAGES) -> Iterator[EventRow]:
    """The profile's messages, oldest first, at most `limit` of them."""
    after: tuple[float, int] | None = None
    left = limit
    while left > 0:
        page = reads.events(row, sort="asc", after=after, limit=min(_PAGE, left))
        yield from page
        if len(page) < min(_PAGE, left):
            return
        left -= len(page)
        after = (page[-1].timestamp, page[-1].seq)


def carried(event: EventRow, collection: str) -> list[str]:
    """The identifiers of `collection` that a message used, highest priority first."""
    return [node(t, v) for c, t, v in event.external_ids if c == collection]


def refusal(found: ProfileViolationRow, asked: ProfileRow) -> dict[str, Any]:
    """A refusal as seen from the profile `asked`: `other_segment_id` is the other side."""
    v = found.violation
    mine, other = found.segment_id, found.other_segment_id
    if mine != asked.segment_id:
        mine, other = other, mine
    return {
        "rule": v.rule,
        "collection": v.collection,
        "type": v.type,
        "value": v.value,
        "detail": v.detail,
        "message_id": v.message_id,
        "source": v.source_id,
        "timestamp": format_time(v.timestamp),
        "segment_id": asked.segment_id,
        "other_segment_id": other if other != asked.segment_id else None,
    }


def refusals(
    reads: ProfileReads, row: ProfileRow, limit: int = MAX_REFUSALS
) -> Iterator[ProfileViolationRow]:
    """The profile's refusals, newest first, at most `limit` of them."""
    before: int | None = None
    left = limit
    while left > 0:
        page = reads.violations(row, before=before, limit=min(_PAGE, left))
        yield from page
        if len(page) < min(_PAGE, left):
            return
        left -= len(page)
        before = page[-1].id


def kind(event: EventRow, merge_messages: set[tuple[str, str]]) -> str:
    if (event.source_id, event.message_id) in merge_messages:
        return "merge"
    return "alias" if event.type == "alias" else "attach"


def _step(a: str, b: str, event: EventRow, kind: str) -> dict[str, Any]:
    return {
        "from": a,
        "to": b,
        "kind": kind,
        "message_id": event.message_id,
        "source": event.source_id,
        "timestamp": format_time(event.timestamp),
        "message_type": event.type,
    }


def _starts(reads: ProfileReads, row: ProfileRow, ref: str) -> set[str]:
    """The identifiers a reference stands for: itself, or, for a segment_id, those its
    profile first held (the profile itself or one merged into it)."""
    parsed = parse_ref(ref, row.collection)
    if isinstance(parsed, tuple):
        return {node(parsed[1], parsed[2])}
    return {node(r.type, r.id) for r in reads.external_ids(row) if r.segment_id == parsed}


def shortest_path(
    events: list[EventRow], collection: str, starts: set[str], goals: set[str], merges: set[Any]
) -> list[dict[str, Any]] | None:
    """The fewest messages that chain an identifier of `starts` to one of `goals` (each
    message links every pair of identifiers it used); ties go to the earlier messages."""
    if starts & goals:
        return []
    by_node: dict[str, list[int]] = {}
    carried_by = [carried(e, collection) for e in events]
    for i, ids in enumerate(carried_by):
        for ident in ids:
            by_node.setdefault(ident, []).append(i)
    came: dict[str, tuple[str, int] | None] = {s: None for s in sorted(starts)}
    queue = deque(sorted(starts))
    used: set[int] = set()
    while queue:
        here = queue.popleft()
        for i in by_node.get(here, ()):
            if i in used:
                continue
            used.add(i)
            for there in carried_by[i]:
                if there in came:
                    continue
                came[there] = (here, i)
                if there in goals:
                    steps = []
                    at = there
                    while (back := came[at]) is not None:
                        prev, j = back
                        steps.append(_step(prev, at, events[j], kind(events[j], merges)))
                        at = prev
                    return steps[::-1]
                queue.append(there)
    return None


def explain(
    reads: ProfileReads, ref: str, other: str, collection: str | None = None
) -> dict[str, Any]:
    """Are `ref` and `other` one profile, and why (the messages that joined them) or why not
    (the refusals between their two profiles)? Both are `type:value` or a segment_id, of
    `collection` (without one, `ref` is looked up as `find` does, `other` in its collection)."""
    first = reads.find(ref, collection)
    second = reads.find(other, first.collection)
    answer: dict[str, Any] = {
        "together": first.pid == second.pid or first.segment_id == second.segment_id,
        "segment_ids": [first.segment_id, second.segment_id],
        "path": [],
        "refusals": [],
        "complete": True,
    }
    if answer["together"]:
        events = list(messages(reads, first, MAX_MESSAGES + 1))
        answer["complete"] = len(events) <= MAX_MESSAGES
        merges = {(m.source_id, m.message_id) for m in reads.merges(first)}
        path = shortest_path(
            events[:MAX_MESSAGES],
            first.collection,
            _starts(reads, first, ref),
            _starts(reads, first, other),
            merges,
        )
        if path is None:  # messages left out, or removed from the store since
            answer["complete"] = False
        else:
            answer["path"] = path
        return answer
    found = list(refusals(reads, first, MAX_REFUSALS + 1))
    answer["complete"] = len(found) <= MAX_REFUSALS
    answer["refusals"] = [
        refusal(f, first)
        for f in found[:MAX_REFUSALS]
        if second.segment_id in (f.segment_id, f.other_segment_id)
    ]
    return answer
