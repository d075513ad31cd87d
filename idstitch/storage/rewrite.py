"""Turning a split (`core.split`) into the rows that replace a profile's, the same way for
every SQL store: which profile each message, identifier, trait and merge belongs to now.

The profile's ids are kept where they can be: the part holding its oldest message keeps its
canonical id (and segment_id); a part created by the message that created one of the
profile's merged-away profiles takes that profile's id, so its segment_id names the part;
every other profile the re-resolution made gets a new id. A merged-away profile whose
message is now in another part follows that part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from idstitch.core.graph import Graph, ProfileState
from idstitch.core.identifiers import USERS, key_of, slot_of
from idstitch.core.ksuid import segment_id_for
from idstitch.core.plan import SidePlan
from idstitch.core.split import Split
from idstitch.storage.rows import identifier_hash

_json = msgspec.json.Encoder()


class Member(msgspec.Struct, frozen=True):
    """One profile of the one being split (itself, or one merged into it)."""

    pid: int
    segment_id: str
    created_at: float
    first_message_id: str | None
    first_source_id: str | None


@dataclass
class Rewrite:
    """Everything a split changes, as rows in the column orders of `storage.rows`."""

    collection: str
    members: list[int]  # every old profile id: their merges, identifiers, traits go
    profiles: list[tuple[Any, ...]] = field(default_factory=list)  # new rows
    canonical: list[tuple[int, int, int]] = field(default_factory=list)  # (canonical, merges, id)
    merges: list[tuple[Any, ...]] = field(default_factory=list)
    identifiers: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)  # (profile, reason, ids, seq)
    traits: list[tuple[Any, ...]] = field(default_factory=list)
    links: list[tuple[Any, ...]] = field(default_factory=list)
    # The parts, oldest first: (profile id, segment_id, external ids as (type, value)).
    parts: list[tuple[int, str, list[tuple[str, str]]]] = field(default_factory=list)
    # For a store that keeps the graph in memory: its new states, owners and parents.
    states: list[ProfileState] = field(default_factory=list)
    owners: dict[int, int] = field(default_factory=dict)  # slot -> first holder
    parents: dict[int, int] = field(default_factory=dict)  # merged-away id -> canonical id


def _side(plan_side: SidePlan | None) -> SidePlan | None:
    if plan_side is None or plan_side.outcome == "unresolved" or plan_side.pid is None:
        return None
    return plan_side


def rewrite(
    done: Split,
    collection: str,
    canonical: Member,
    members: list[Member],
    new_pid: Callable[[], int],
) -> Rewrite:
    graph: Graph = done.graph
    out = Rewrite(collection, [m.pid for m in members])
    by_segment = {m.segment_id: m for m in members}
    sides = [_side(p.users if collection == USERS else p.accounts) for p in done.plans]
    # Scratch profile id -> real id, and each scratch profile's first message.
    real: dict[int, int] = {}
    named: dict[int, str] = {}  # scratch pid -> its segment_id, where not the one it made
    created: dict[int, int] = {}  # scratch pid -> message position that created it
    for n, side in enumerate(sides):
        if side is not None and side.created:
            assert side.pid is not None
            created[side.pid] = n
    first_part = done.parts[0] if done.parts else None
    for scratch, n in created.items():
        plan = done.plans[n]
        side = sides[n]
        assert side is not None and side.segment_id is not None
        if scratch == first_part:
            real[scratch] = canonical.pid
            continue
        member = by_segment.get(side.segment_id)
        if member is not None and member.pid != canonical.pid:
            real[scratch] = member.pid
            continue
        pid = real[scratch] = new_pid()
        if member is not None:
            # The profile's own segment_id, made again by a message that is not the first to
            # resolve now (messages imported with their own, out-of-order receive times): the
            # first part keeps it, so this one is named afresh.
            named[scratch] = segment_id_for(
                collection, plan.source_id, plan.message_id + "\x1fsplit", plan.received_at
            )
        # Its canonical id is set with the others' below, once every part has its id.
        out.profiles.append(
            (pid, named.get(scratch, side.segment_id), collection, pid, plan.received_at,
             plan.message_id, plan.source_id)
        )  # fmt: skip
    # Part canonical ids, and where every old profile goes now.
    where: dict[str, int] = {}  # message id (by source) -> real part id
    for n, side in enumerate(sides):
        if side is not None:
            assert side.pid is not None
            m = done.messages[n]
            where[f"{m.source_id}\x1f{m.message_id}"] = real[graph.find(side.pid)]
    merges_of = {real[pid]: graph.profiles[pid].merges for pid in done.parts}
    seen: set[int] = set()
    for scratch, pid in real.items():
        top = real[graph.find(scratch)]
        out.canonical.append((top, merges_of.get(pid, 0), pid))
        seen.add(pid)
        if top != pid:
            out.parents[pid] = top
    first_real = real[first_part] if first_part is not None else canonical.pid
    for member in members:
        if member.pid in seen:
            continue
        # Not made again: it follows the message that created it (to the first part when
        # that message resolves to nothing now).
        key = f"{member.first_source_id}\x1f{member.first_message_id}"
        top = where.get(key, first_real)
        out.canonical.append((top, 0, member.pid))
        if top != member.pid:
            out.parents[member.pid] = top
    # The canonical profile row keeps its segment_id even when a part took another's.
    if first_part is not None:
        for state_pid in done.parts:
            state = graph.profiles[state_pid]
            pid = real[state_pid]
            segment_id = (
                canonical.segment_id
                if state_pid == first_part
                else named.get(state_pid, state.segment_id)
            )
            out.states.append(ProfileState(pid, segment_id, state.packed, state.merges))
    # Merges, identifiers, events, traits and links, in message order.
    latest: dict[tuple[int, str], tuple[Any, ...]] = {}
    held: dict[int, list[tuple[str, str]]] = {}
    for n, side in enumerate(sides):
        m = done.messages[n]
        plan = done.plans[n]
        # The other collection's identifiers stay as the message used them.
        kept = [e for e in m.external_ids if e[0] != collection]
        if side is None:
            resolved = plan.users if collection == USERS else plan.accounts
            why = None
            if m.linked is None:  # resolved to nothing at all now
                why = (resolved.reason if resolved is not None else None) or "no usable identifiers"
            out.events.append((None, why, _json.encode(kept).decode(), m.seq))
            continue
        assert side.pid is not None
        pid = real[side.pid]
        for other, _ in side.merged:
            out.merges.append(
                (real[other], pid, m.message_id, m.source_id, m.timestamp, side.merge_rule)
            )
        for type_, value in side.added:
            slot = slot_of(key_of(collection, type_, value))
            if slot not in graph.owners:
                continue  # deleted from its profile since (`Store.deletions`)
            out.identifiers.append(
                (
                    identifier_hash(collection, type_, value),
                    collection,
                    type_,
                    value,
                    pid,
                    m.source_id,
                    m.message_id,
                    m.timestamp,
                )
            )
            out.owners[slot] = pid
            held.setdefault(real[graph.find(side.pid)], []).append((type_, value))
        used = [(collection, t, v) for t, v in side.identifiers]
        ordered = used + kept if collection == USERS else kept + used
        out.events.append((pid, None, _json.encode(ordered).decode(), m.seq))
        owner_kind = "identify" if collection == USERS else "group"
        if m.type == owner_kind and plan.traits:
            for key, value in plan.traits.items():
                encoded = None if value is None else _json.encode(value).decode()
                row = (pid, key, encoded, m.timestamp, m.seq, m.source_id)
                old = latest.get((pid, key))
                if old is None or (m.timestamp, m.seq) >= (old[3], old[4]):
                    latest[(pid, key)] = row
        if m.linked is not None:
            pair = (pid, m.linked) if collection == USERS else (m.linked, pid)
            out.links.append((*pair, m.source_id, m.received_at))
    out.traits = list(latest.values())
    for state in out.states:
        out.parts.append((state.pid, state.segment_id, held.get(state.pid, [])))
    return out


# Profiles one unmerge resolves again at most: their messages are read and resolved in one go.
MAX_SPLIT_MESSAGES = 200_000


class Operation(msgspec.Struct, frozen=True):
    """The audit record of a change no message made (`operations` table)."""

    kind: str  # "delete_identifier" or "unmerge"
    segment_id: str
    collection: str
    type: str
    value: str
    actor: str
    created_at: float
    detail: str = "{}"  # JSON: what the change did


def operation_rows(op: Operation) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """The statement that records `op` (with `?` marks; see `marked`)."""
    return [
        (
            "INSERT INTO operations (kind, segment_id, collection, type, value, actor, detail, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    op.kind,
                    op.segment_id,
                    op.collection,
                    op.type,
                    op.value,
                    op.actor,
                    op.detail,
                    op.created_at,
                )
            ],
        )
    ]


def split_detail(rw: Rewrite, seq: int) -> str:
    """An unmerge's audit detail: the parts it made, and where in the history it happened
    (the last seq stored)."""
    parts = [{"segment_id": sid, "identifiers": len(ids)} for _, sid, ids in rw.parts]
    return _json.encode({"parts": parts, "seq": seq}).decode()


Step = tuple[str, list[tuple[Any, ...]]]


def split_statements(
    rw: Rewrite,
    blocked: tuple[str, str, str],
    op: Operation,
    delete_identifiers: Step,
    *,
    key_hashes: bool,
) -> list[Step]:
    """The statements that replace the profile's rows with `rw` (with `?` marks), block the
    identifier and record the operation, in order. `delete_identifiers` removes the
    profile's identifier rows (each store finds them its own way); `key_hashes`: the
    identifiers table has SQLite's `key_hash` column."""
    members = [(m,) for m in rw.members]
    events_column = "account_id" if rw.collection == "accounts" else "profile_id"
    links_column = "account_id" if rw.collection == "accounts" else "user_id"
    identifiers = rw.identifiers if key_hashes else [r[1:] for r in rw.identifiers]
    columns = "collection, type, value, profile_id, source_id, first_message_id, created_at"
    if key_hashes:
        columns = "key_hash, " + columns
    marks = ", ".join("?" * len(columns.split(",")))
    steps: list[Step] = [
        (
            "INSERT INTO profiles (id, segment_id, collection, canonical_id, created_at, "
            "first_message_id, first_source_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rw.profiles,
        ),
        ("UPDATE profiles SET canonical_id = ?, merges = ? WHERE id = ?", rw.canonical),
        # A merge into one of the profile's profiles is from another of them.
        ("DELETE FROM merges WHERE into_id = ?", members),
        (
            "INSERT INTO merges (from_id, into_id, message_id, source_id, timestamp, rule) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            rw.merges,
        ),
        delete_identifiers,
        (f"INSERT INTO identifiers ({columns}) VALUES ({marks})", identifiers),
        (
            f"UPDATE events SET {events_column} = ?, reason = ?, external_ids = ? WHERE seq = ?",
            rw.events,
        ),
        (f"DELETE FROM links WHERE {links_column} = ?", members),
        (
            "INSERT INTO links (user_id, account_id, source_id, created_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            rw.links,
        ),
        *operation_rows(op),
        *block_rows(blocked, op.created_at),
    ]
    return [(sql, rows) for sql, rows in steps if rows]


def block_rows(blocked: tuple[str, str, str], created_at: float) -> list[Step]:
    """The statement that puts `blocked` (collection, type, value) on the stored block list,
    in the name of the operation recorded just before it."""
    return [
        (
            "INSERT INTO blocked_identifiers (collection, type, value, operation_id, created_at) "
            "VALUES (?, ?, ?, (SELECT max(id) FROM operations), ?) ON CONFLICT DO NOTHING",
            [(*blocked, created_at)],
        )
    ]


def marked(steps: list[Step], mark: str) -> list[Step]:
    """`steps` with their `?` marks as `mark` (PostgreSQL's `%s`)."""
    return [(sql.replace("?", mark), rows) for sql, rows in steps]


# The rule a rebuild's kept segment_ids are recorded under in `merges`.
KEPT_BY_REBUILD = "rebuild"


def keep_statements(profiles: list[tuple[Any, ...]], merges: list[tuple[Any, ...]]) -> list[Step]:
    """The rows of segment_ids a rebuild keeps resolving: (id, segment_id, collection,
    canonical_id, created_at, first_message_id, first_source_id) profiles, and the merges
    (from_id, into_id, message_id, source_id, timestamp, rule) that point them on."""
    steps: list[Step] = [
        (
            "INSERT INTO profiles (id, segment_id, collection, canonical_id, created_at, "
            "first_message_id, first_source_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
            profiles,
        ),
        (
            "INSERT INTO merges (from_id, into_id, message_id, source_id, timestamp, rule) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            merges,
        ),
    ]
    return [(sql, rows) for sql, rows in steps if rows]
