"""What `idstitch export` reads of a store, in the words of Segment's Profiles Sync tables:
the user profiles' changes, each at the `seq` of the message that made it, and their state
now. The row types and the SQL both stores share; each store brings the one join that
differs (`Join`: how a graph row finds the stored message named by its source and message
id) and streams the rows on a connection of its own.

Changes come from the graph tables as they are now. A profile made: its `profiles` row and
first message. A merge: its `merges` row, for the merged profile and, as Segment writes
them, for every profile merged into that one before (they point on too). An identifier
attached: its `identifiers` row and first message. Traits set: the identify messages
themselves, from the log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import msgspec

from idstitch.storage.rows import message_hash


class Trigger(msgspec.Struct, frozen=True):
    """The stored message behind a change: its place in the log and what it was."""

    seq: int
    message_id: str
    type: str
    name: str | None  # a track's event, a page's or screen's name
    source_id: str
    timestamp: float
    received_at: float


class GraphUpdate(msgspec.Struct, frozen=True):
    """A user profile and the canonical profile it points at: made (both the same), or
    moved by a merge. `trigger` is None where no message explains where it points (an
    unmerge or a rebuild put it there)."""

    segment_id: str
    canonical_segment_id: str
    trigger: Trigger | None


class HeldIdentifier(msgspec.Struct, frozen=True):
    """An identifier a user profile holds: `segment_id` is the profile that holds it (its
    first holder) or, read as the state now, its canonical profile."""

    segment_id: str
    type: str
    value: str
    trigger: Trigger | None


class TraitUpdate(msgspec.Struct, frozen=True):
    """The traits an identify message set on the user profile it resolved to (None: a
    trait removed)."""

    segment_id: str
    traits: dict[str, Any]
    trigger: Trigger


class TraitValue(msgspec.Struct, frozen=True):
    """A canonical user profile's trait now: the newest value across its profiles, as JSON."""

    canonical_segment_id: str
    key: str
    value: str
    trigger: Trigger | None


# (source column, message id column, left join) -> a join that names that message `e`.
Join = Callable[[str, str, bool], str]

# The columns of a Trigger, from `e`, and as the recursive queries carry them on.
TRIGGER = "e.seq, e.message_id, e.type, e.event, e.source_id, e.timestamp, e.received_at"
CARRIED = "t_seq, t_message, t_type, t_name, t_source, t_timestamp, t_received"
_CARRIED_FROM_C = ", ".join(f"c.{name}" for name in CARRIED.split(", "))


def trigger(r: Sequence[Any]) -> Trigger | None:
    """A Trigger from the seven columns of TRIGGER (None when a left join found none)."""
    return None if r[0] is None else Trigger(*r[:7])


def sqlite_message_hash(source_id: str | None, message_id: str | None) -> int | None:
    """`storage.rows.message_hash` as a SQL function (None for a profile with no first
    message)."""
    if source_id is None or message_id is None:
        return None
    return message_hash(source_id, message_id)


def graph_updates_sql(join: Join, mark: str) -> str:
    """User profiles made and moved by messages of a window of seqs, by seq (made first);
    parameters: (after, upto) twice. A merge moves the merged profile and every profile
    merged into it before; UNION, not UNION ALL, ends the recursion whatever the rows."""
    return (
        "WITH RECURSIVE top AS ("
        f"SELECT m.from_id, m.into_id, {_carried()} FROM merges m "
        f"{join('m.source_id', 'm.message_id', False)} "
        f"WHERE e.seq > {mark} AND e.seq <= {mark}), "
        f"moved(member, into_id, {CARRIED}) AS (SELECT from_id, into_id, {CARRIED} FROM top "
        f"UNION SELECT m.from_id, c.into_id, {_CARRIED_FROM_C} FROM moved c "
        "JOIN merges m ON m.into_id = c.member) "
        f"SELECT 1 AS k, d.segment_id, i.segment_id, {_CARRIED_FROM_C} FROM moved c "
        "JOIN profiles d ON d.id = c.member JOIN profiles i ON i.id = c.into_id "
        "WHERE d.collection = 'users' "
        f"UNION ALL SELECT 0, p.segment_id, p.segment_id, {TRIGGER} FROM profiles p "
        f"{join('p.first_source_id', 'p.first_message_id', False)} "
        f"WHERE p.collection = 'users' AND e.seq > {mark} AND e.seq <= {mark} "
        "ORDER BY 4, 1, 2, 3"
    )


def _carried() -> str:
    return ", ".join(
        f"{column} AS {name}"
        for column, name in zip(TRIGGER.split(", "), CARRIED.split(", "), strict=True)
    )


def graph_update(r: Sequence[Any]) -> GraphUpdate:
    """A GraphUpdate from a row of `members_sql`, or of `graph_updates_sql` past its sort
    key."""
    return GraphUpdate(r[0], r[1], trigger(r[2:]))


def members_sql(join: Join) -> str:
    """Every user profile with its canonical profile and the message that put it there: the
    merge that moved it there (itself, or a profile it had merged into), or, for a canonical
    profile, the message that made it. By canonical profile."""
    source = "CASE WHEN p.id = p.canonical_id THEN p.first_source_id ELSE h.source_id END"
    message = "CASE WHEN p.id = p.canonical_id THEN p.first_message_id ELSE h.message_id END"
    return (
        "WITH RECURSIVE chain(member, into_id, source_id, message_id) AS ("
        "SELECT from_id, into_id, source_id, message_id FROM merges UNION "
        "SELECT m.from_id, c.into_id, c.source_id, c.message_id FROM chain c "
        "JOIN merges m ON m.into_id = c.member) "
        f"SELECT p.segment_id, c.segment_id, {TRIGGER} FROM profiles p "
        "JOIN profiles c ON c.id = p.canonical_id LEFT JOIN chain h ON p.id <> p.canonical_id "
        "AND h.member = p.id AND h.into_id = p.canonical_id "
        f"{join(source, message, True)} WHERE p.collection = 'users' ORDER BY 2, 1"
    )


def identifiers_sql(join: Join, mark: str, *, now: bool) -> str:
    """The identifiers user profiles hold. `now`: with their canonical profile, by it;
    otherwise with the profile that holds them, those attached by messages of a window of
    seqs (parameters: after, upto), by seq."""
    if now:
        return (
            f"SELECT c.segment_id, i.type, i.value, {TRIGGER} FROM identifiers i "
            "JOIN profiles h ON h.id = i.profile_id JOIN profiles c ON c.id = h.canonical_id "
            f"{join('i.source_id', 'i.first_message_id', True)} "
            "WHERE i.collection = 'users' ORDER BY 1, 2, 3"
        )
    return (
        f"SELECT h.segment_id, i.type, i.value, {TRIGGER} FROM identifiers i "
        "JOIN profiles h ON h.id = i.profile_id "
        f"{join('i.source_id', 'i.first_message_id', False)} "
        f"WHERE i.collection = 'users' AND e.seq > {mark} AND e.seq <= {mark} ORDER BY 4, 2, 3"
    )


def held_identifier(r: Sequence[Any]) -> HeldIdentifier:
    return HeldIdentifier(r[0], r[1], r[2], trigger(r[3:]))


def trait_messages_sql(mark: str) -> str:
    """The identify messages of a window of seqs (after, upto) that resolved to a user
    profile, by seq, with their bodies."""
    return (
        f"SELECT p.segment_id, {TRIGGER}, e.body FROM events e "
        "JOIN profiles p ON p.id = e.profile_id "
        f"WHERE e.seq > {mark} AND e.seq <= {mark} AND e.type = 'identify' "
        "AND p.collection = 'users' ORDER BY e.seq"
    )


class _Traits(msgspec.Struct):
    traits: dict[str, Any] | None = None


_traits_of = msgspec.json.Decoder(_Traits).decode


def trait_updates(rows: Iterable[Sequence[Any]]) -> Iterator[TraitUpdate]:
    """TraitUpdates from rows of `trait_messages_sql`: those that set traits, decoded one
    at a time (never a page of bodies at once). A body that cannot be read sets nothing."""
    for r in rows:
        try:
            traits = _traits_of(bytes(r[8])).traits
        except msgspec.DecodeError:
            continue
        if traits:
            found = trigger(r[1:8])
            assert found is not None
            yield TraitUpdate(r[0], traits, found)


def current_traits_sql(traits: str) -> str:
    """Every trait row of user profiles (from `traits`, a table or subquery with traits'
    columns), with the canonical profile, newest first within each (profile, key)."""
    return (
        f"SELECT c.segment_id, t.key, t.value, {TRIGGER} FROM {traits} t "
        "JOIN profiles p ON p.id = t.profile_id JOIN profiles c ON c.id = p.canonical_id "
        "JOIN events e ON e.seq = t.seq WHERE p.collection = 'users' "
        "ORDER BY 1, 2, t.timestamp DESC, t.seq DESC"
    )


def newest_traits(rows: Iterable[Sequence[Any]]) -> Iterator[TraitValue]:
    """The first row of each (profile, key) of `current_traits_sql`, removed ones (a null
    value) left out: the newest value wins, as in `Store.traits`."""
    last: tuple[str, str] | None = None
    for r in rows:
        key = (r[0], r[1])
        if key == last:
            continue
        last = key
        if r[2] is not None:
            yield TraitValue(r[0], r[1], r[2], trigger(r[3:]))
