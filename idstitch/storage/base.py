"""The storage seam, in domain words.

Writes happen in micro-batches: `batch(keys)` opens one transaction and yields a snapshot of
the graph that covers every identifier key of the batch; the engine resolves each message
against it and hands the plans to `apply`; leaving the block commits durably (fsync) or rolls
everything back. Reads take a profile's canonical id as `find` returned it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from typing import Any, Literal

import msgspec

from idstitch.core.graph import Graph
from idstitch.core.identifiers import Identifier
from idstitch.core.plan import Plan
from idstitch.core.split import Split, StoredMessage
from idstitch.storage.export_reads import GraphUpdate, HeldIdentifier, TraitUpdate, TraitValue
from idstitch.storage.rewrite import MAX_SPLIT_MESSAGES, Operation, Rewrite

SortOrder = Literal["asc", "desc"]

# A store shared by several writers (PostgreSQL): how long a write waits on another writer's
# transaction before that writer is taken as stalled and its transaction is ended.
STALL_SECONDS = 10.0


class ProfileRow(msgspec.Struct, frozen=True):
    pid: int
    segment_id: str
    collection: str
    created_at: float
    merges: int
    first_message_id: str | None
    first_source_id: str | None


class TraitRow(msgspec.Struct, frozen=True):
    key: str
    value: Any
    timestamp: float
    source_id: str


class ExternalIdRow(msgspec.Struct, frozen=True):
    collection: str
    type: str
    id: str
    source_id: str
    first_message_id: str
    created_at: float
    # The profile that first held it: the profile itself, or one merged into it since.
    segment_id: str = ""


class EventRow(msgspec.Struct, frozen=True):
    seq: int
    source_id: str
    message_id: str
    type: str
    event: str | None
    timestamp: float
    received_at: float
    segment_id: str | None  # the canonical profile it belongs to now (merges followed)
    external_ids: list[tuple[str, str, str]]
    body: bytes


_ext_decoder = msgspec.json.Decoder(list[tuple[str, str, str]])

# The columns `event_row` reads, in its order; `p` is the event's canonical profile.
EVENT_COLUMNS = (
    "e.seq, e.source_id, e.message_id, e.type, e.event, e.timestamp, e.received_at, "
    "p.segment_id, e.external_ids, e.body"
)


def maybe_stored(why: str) -> str:
    """The error for a write that failed where the store may have kept it all the same."""
    return (
        f"{why}; the batch may or may not be stored. Retry it: messages with the same "
        "messageId are deduplicated."
    )


def events_column(collection: str) -> str:
    """The events column that names a profile of `collection`."""
    return "account_id" if collection == "accounts" else "profile_id"


def event_row(r: Sequence[Any]) -> EventRow:
    """An EventRow from a row of EVENT_COLUMNS."""
    return EventRow(
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], _ext_decoder.decode(r[8]), bytes(r[9])
    )


class LinkRow(msgspec.Struct, frozen=True):
    """A linked canonical profile and its paging position: the highest id among its member
    profiles that carry a link. A merge joins two positions into the later one, so a page
    boundary never hides the merged profile when one side of it was still to come, nor
    shows it again when both were already shown."""

    position: int
    profile: ProfileRow


class MergeRow(msgspec.Struct, frozen=True):
    from_segment_id: str
    into_segment_id: str
    message_id: str
    source_id: str
    timestamp: float
    rule: str | None  # what allowed it past a limit (`trusted_alias`), or None


class ViolationRow(msgspec.Struct, frozen=True):
    source_id: str
    message_id: str
    collection: str
    type: str
    value: str
    rule: str
    detail: str
    timestamp: float


class ProfileViolationRow(msgspec.Struct, frozen=True):
    """A refusal that involves a profile: `segment_id` is the canonical profile its message
    resolved to, `other_segment_id` the canonical profile the refused identifier or merge
    would have joined (each None when there was none). `id` orders them, newest last."""

    id: int
    violation: ViolationRow
    segment_id: str | None
    other_segment_id: str | None


# The columns of a ProfileViolationRow: `v` is the violation, `p` and `o` the profiles it
# names (their canonical segment_ids through `pc` and `oc`).
PROFILE_VIOLATION_COLUMNS = (
    "v.id, v.source_id, v.message_id, v.collection, v.type, v.value, v.rule, v.detail, "
    "v.timestamp, pc.segment_id, oc.segment_id"
)
PROFILE_VIOLATION_JOINS = (
    "LEFT JOIN profiles p ON p.id = v.profile_id LEFT JOIN profiles pc ON pc.id = p.canonical_id "
    "LEFT JOIN profiles o ON o.id = v.other_profile_id "
    "LEFT JOIN profiles oc ON oc.id = o.canonical_id"
)


def profile_violation_row(r: Sequence[Any]) -> ProfileViolationRow:
    return ProfileViolationRow(r[0], ViolationRow(*r[1:9]), r[9], r[10])


class SharedValueRow(msgspec.Struct, frozen=True):
    """An identifier that messages of several profiles carried while a rule kept it from
    joining them: `profiles` counts the distinct (canonical) profiles on either side of those
    refusals, `rules` names the rules."""

    collection: str
    type: str
    value: str
    profiles: int
    rules: list[str]


# The rules whose refusals say an identifier was seen with more than one profile.
JOIN_REFUSALS = (
    "limit_exceeded",
    "time_limit_exceeded",
    "conflict",
    "shared_device",
    "generic_identifier",
    "source_merge_denied",
)


def shared_values_query(mark: str) -> str:
    """The query of `Store.shared_values`, with `mark` for its two parameters (the least
    number of profiles, the number of rows) and one for each of JOIN_REFUSALS."""
    rules = ", ".join([mark] * len(JOIN_REFUSALS))
    return (
        "WITH sides AS ("
        "SELECT v.collection, v.type, v.value, v.rule, p.canonical_id AS who FROM violations v "
        f"JOIN profiles p ON p.id = v.profile_id WHERE v.rule IN ({rules}) "
        "UNION ALL SELECT v.collection, v.type, v.value, v.rule, o.canonical_id FROM violations v "
        f"JOIN profiles o ON o.id = v.other_profile_id WHERE v.rule IN ({rules})) "
        "SELECT collection, type, value, COUNT(DISTINCT who), {agg} FROM sides "
        f"GROUP BY collection, type, value HAVING COUNT(DISTINCT who) >= {mark} "
        f"ORDER BY 4 DESC, 2, 3 LIMIT {mark}"
    )


class Origin(msgspec.Struct, frozen=True):
    """A profile as it was made, canonical or merged away: a rebuild keeps its segment_id
    resolving by it."""

    segment_id: str
    collection: str
    created_at: float
    first_message_id: str | None
    first_source_id: str | None


class ChangeRow(msgspec.Struct, frozen=True):
    """One message's changes in the change feed (`core.changes`), at `position`."""

    position: tuple[int, int]  # (transaction, id): the feed's order
    segment_id: str
    changes: bytes  # a JSON list
    created_at: float


class BlockedRow(msgspec.Struct, frozen=True):
    """An identifier on the stored block list: which unmerge put it there, who, when."""

    collection: str
    type: str
    value: str
    segment_id: str | None  # the profile it was unmerged from
    actor: str | None
    created_at: float


# `Store.split_profile`'s callback: the profile's messages, a function that says which
# identifiers (slots) other profiles hold, the slots on the stored block list and the
# deletions (`Store.deletions`) -> the split (`core.split.split`, rules bound).
SplitWith = Callable[
    [
        list[StoredMessage],
        Callable[[list[Identifier]], set[int]],
        set[int],
        list[tuple[int, str, str, str]],
    ],
    Split,
]


def too_many_messages(segment_id: str) -> str:
    return (
        f"the profile {segment_id} holds more than {MAX_SPLIT_MESSAGES:,} messages, more than "
        "one unmerge resolves again; block the identifier in the config instead "
        "([identity.blocked_values_by_type]): new messages then leave it out."
    )


class Stats(msgspec.Struct, frozen=True):
    profiles: int
    identifiers: int
    events: int
    merges: int
    violations: int


class IndexLag(msgspec.Struct, frozen=True):
    """How far derived state (built behind the log) trails the acknowledged messages."""

    messages: int
    seconds: float


class Transaction(ABC):
    """One micro-batch: a graph snapshot plus the means to persist plans against it."""

    graph: Graph
    changes = False  # write the change feed's rows too (the store's `feed_changes`)

    @abstractmethod
    def seen(self, source_id: str, message_ids: list[str]) -> set[str]:
        """The message ids of `source_id` already stored (for deduplication)."""

    @abstractmethod
    def apply(self, plans: list[Plan]) -> None:
        """Persist the plans, in order; the enclosing `batch` commits them."""

    @abstractmethod
    def record_progress(self, name: str, offset: int) -> None:
        """Record an import's position (`import_offset`) in this same transaction: a batch
        and the position after it are stored together or not at all."""


class Store(ABC):
    url: str
    # Whether `batch` needs the identifier keys of the batch (a store whose graph is
    # complete in memory does not).
    needs_keys: bool = True
    # Whether a bounded read (one profile's traits, say) is a local call of well under a
    # millisecond, fit to run on the event loop; a networked store's reads go to threads.
    local_reads: bool = False
    # Whether batches write the change feed's rows (`outbox`): while webhooks are configured.
    feed_changes: bool = False

    @abstractmethod
    def batch(self, keys: Iterable[str]) -> AbstractContextManager[Transaction]:
        """A transaction whose graph covers `keys`; commits durably on a clean exit."""

    def write(self, keys: Iterable[str], work: Callable[[Transaction], None]) -> Future[None]:
        """Run `work` on a `batch(keys)` transaction and commit it; the future completes when
        the commit is durable (at once for a store that commits before returning).

        A store shared by several writers may run `work` again, on a fresh transaction, after
        a conflict; `work` must therefore start from scratch each time it is called.
        """
        with self.batch(keys) as tx:
            work(tx)
        done: Future[None] = Future()
        done.set_result(None)
        return done

    def index_lag(self) -> IndexLag:
        """How far derived state trails the log (none for a store that derives nothing)."""
        return IndexLag(0, 0.0)

    @abstractmethod
    def close(self) -> None: ...

    # Reads: profiles are addressed by the canonical pid that `find_*` returns.
    @abstractmethod
    def find_by_identifier(self, collection: str, type_: str, value: str) -> ProfileRow | None: ...

    @abstractmethod
    def find_by_segment_id(self, segment_id: str) -> ProfileRow | None: ...

    @abstractmethod
    def traits(
        self,
        pid: int,
        *,
        start: str = "",
        limit: int | None = None,
        keys: frozenset[str] | None = None,
    ) -> list[TraitRow]:
        """The profile's traits in key order (code point order), the newest value of each key
        across its members, removed ones left out: keys from `start` on, only `keys` when
        given, at most `limit`. A page reads about `limit` rows per member, not every trait."""

    @abstractmethod
    def external_ids(self, pid: int) -> list[ExternalIdRow]: ...

    @abstractmethod
    def events(
        self,
        pid: int,
        *,
        start: float | None = None,
        end: float | None = None,
        sort: SortOrder = "desc",
        after: tuple[float, int] | None = None,
        limit: int = 10,
        names: frozenset[str] | None = None,
        excluded: frozenset[str] | None = None,
    ) -> list[EventRow]:
        """Events of the profile (and of every profile merged into it), ordered by
        (timestamp, seq); `after` is the last (timestamp, seq) of the previous page. `names`
        keeps only events with one of those names (a track's event, a page's name),
        `excluded` leaves those out (events without a name stay)."""

    @abstractmethod
    def latest_arrival(self, pid: int) -> EventRow | None:
        """The event of the profile (merged profiles included) that was stored last."""

    @abstractmethod
    def links(
        self, pid: int, *, after: int | None = None, limit: int | None = None
    ) -> list[LinkRow]:
        """Canonical profiles of the other collection linked to this one, by position;
        `after` continues past a position, `limit` caps the rows."""

    @abstractmethod
    def merges(self, pid: int) -> list[MergeRow]: ...

    @abstractmethod
    def violations(self, limit: int = 100, rules: Sequence[str] = ()) -> list[ViolationRow]:
        """The newest violations, of the given rules only when `rules` names some."""

    @abstractmethod
    def profile_violations(
        self, pid: int, *, before: int | None = None, limit: int = 100
    ) -> list[ProfileViolationRow]:
        """The refusals whose message resolved to the profile (or a profile merged into it) or
        that would have joined it, newest first; `before` continues below a row's `id`."""

    @abstractmethod
    def shared_values(self, min_profiles: int = 3, limit: int = 100) -> list[SharedValueRow]:
        """Identifiers refused from, or kept from joining, at least `min_profiles` distinct
        profiles (JOIN_REFUSALS), most profiles first: the likely junk (a kiosk's cookie, a
        placeholder e-mail)."""

    # Repairs: changes no message made. Each runs alone (no batch beside it), durably, with
    # its audit record in the same transaction.
    @abstractmethod
    def remove_identifier(
        self, pid: int, collection: str, type_: str, value: str, operation: Operation
    ) -> bool:
        """Detach the identifier from the profile `pid` (as `find` returned it): lookups no
        longer find the profile by it, and a later message that carries it resolves afresh.
        False when the profile does not hold it."""

    @abstractmethod
    def split_profile(
        self, pid: int, blocked: Identifier, split_with: SplitWith, operation: Operation
    ) -> Rewrite:
        """Resolve the profile's messages again (`split_with`) with `blocked` on the stored
        block list, replace its rows with the parts, and record `operation` (its detail filled
        with the parts)."""

    @abstractmethod
    def blocked_identifiers(self) -> list[BlockedRow]:
        """The stored block list, oldest first."""

    # The whole history, for a replay under other rules (`idstitch rebuild`).
    @abstractmethod
    def history(self, after: int, limit: int) -> list[StoredMessage]:
        """The stored messages past `after` (a `seq`), in arrival order, at most `limit`."""

    @abstractmethod
    def deletions(self) -> list[tuple[int, str, str, str]]:
        """The identifiers deleted from profiles, in order: (the last `seq` stored when it
        was deleted, collection, type, value)."""

    @abstractmethod
    def operations(self) -> list[Operation]:
        """The audit records of the changes no message made, oldest first."""

    @abstractmethod
    def record_operation(
        self, operation: Operation, block: tuple[str, str, str] | None = None
    ) -> None:
        """Record `operation` as it is; with `block` (collection, type, value), put that
        identifier on the stored block list in its name (a rebuild carries both over)."""

    @abstractmethod
    def import_offsets(self) -> dict[str, int]:
        """Every import's recorded position: file -> byte offset."""

    @abstractmethod
    def origins(self) -> Iterator[Origin]:
        """Every profile's segment_id and the message that made it, merged-away ones too."""

    @abstractmethod
    def keep_segment_ids(self, kept: list[tuple[Origin, str]]) -> int:
        """For each (origin, into): unless a profile has origin's segment_id, add it as a
        profile merged into the profile `into` (a segment_id) now resolves to, so that it
        keeps resolving. The number added."""

    # The change feed (`[[webhooks]]`): rows written with the batches while `feed_changes`.
    @abstractmethod
    def changes_after(self, position: tuple[int, int], limit: int) -> list[ChangeRow]:
        """The feed's rows past `position`, in order, of finished transactions only."""

    @abstractmethod
    def changes_left(self, position: tuple[int, int]) -> int:
        """How many of the feed's rows lie past `position`."""

    @abstractmethod
    def feed_position(self, name: str) -> tuple[int, int] | None:
        """How far the receiver `name` got, or None before its first delivery."""

    @abstractmethod
    def set_feed_position(self, name: str, position: tuple[int, int]) -> None: ...

    @abstractmethod
    def forget_changes(self, position: tuple[int, int]) -> None:
        """Delete the feed's rows up to `position` (every receiver has them)."""

    @abstractmethod
    def keep_changes(self, rows: list[ChangeRow], positions: dict[str, tuple[int, int]]) -> None:
        """Store feed rows and receivers' positions as they were in another store (a
        rebuild carries what was not delivered yet)."""

    @abstractmethod
    def feeding(self, name: str) -> AbstractContextManager[bool]:
        """True inside when this process is the one to deliver to `name` (one at a time)."""

    @abstractmethod
    def partition(self) -> Iterator[tuple[str, str, str, str]]:
        """Every attached identifier (collection, type, value) with the segment_id of the
        canonical profile that holds it."""

    @abstractmethod
    def stats(self) -> Stats: ...

    @abstractmethod
    def healthy(self) -> bool: ...

    # Resumable imports.
    @abstractmethod
    def import_offset(self, name: str) -> int: ...

    @abstractmethod
    def set_import_offset(self, name: str, offset: int) -> None: ...

    # The export's reads (`idstitch export`): user profiles' changes at the seq of the
    # message that made each (`export_reads`), and their state now. Each streams on a
    # connection of its own, in bounded memory, and works on a store opened read-only.
    @abstractmethod
    def last_seq(self) -> int:
        """The highest seq such that every message up to it is stored and readable, and every
        message stored from now on gets a higher one: a cursor for the changes below."""

    @abstractmethod
    def graph_updates(self, after: int, upto: int) -> Iterator[GraphUpdate]:
        """User profiles made, and moved by merges (the merged profile and every profile
        merged into it before), by messages with a seq in (after, upto]; by seq, the
        profiles made by a message before those it moved."""

    @abstractmethod
    def identifier_updates(self, after: int, upto: int) -> Iterator[HeldIdentifier]:
        """The identifiers user profiles hold that messages with a seq in (after, upto]
        attached, with the profile holding each, by seq."""

    @abstractmethod
    def trait_updates(self, after: int, upto: int) -> Iterator[TraitUpdate]:
        """The identify messages with a seq in (after, upto] that set traits on a user
        profile, by seq."""

    @abstractmethod
    def profile_members(self) -> Iterator[GraphUpdate]:
        """Every user profile now, with its canonical profile and the message that put it
        there (None where no message explains it), by canonical profile."""

    @abstractmethod
    def held_identifiers(self) -> Iterator[HeldIdentifier]:
        """Every identifier user profiles hold now, with its canonical profile, by it."""

    @abstractmethod
    def current_traits(self) -> Iterator[TraitValue]:
        """Every canonical user profile's traits now (the newest value of each key across
        its profiles, removed ones left out), by profile and key."""
