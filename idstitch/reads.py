"""The engine's reads, in one façade: what the HTTP layer (Profile API, explorer) asks of the
store, by profile. The HTTP layer reads through `Engine.reads` and never touches the store,
so that every read has one way in (and one place to change it).

Profiles are addressed by the `ProfileRow` that `find` returns: its canonical profile, which
the store follows through merges.
"""

from __future__ import annotations

from typing import Any, TypedDict, Unpack

from idstitch import profiles
from idstitch.storage.base import (
    EventRow,
    ExternalIdRow,
    LinkRow,
    MergeRow,
    ProfileRow,
    ProfileViolationRow,
    SortOrder,
    Store,
)


class EventQuery(TypedDict, total=False):
    """The options of `Store.events`: a time range, an order, a position, a page size, and
    event names to keep or leave out."""

    start: float | None
    end: float | None
    sort: SortOrder
    after: tuple[float, int] | None
    limit: int
    names: frozenset[str] | None
    excluded: frozenset[str] | None


class ProfileReads:
    def __init__(self, store: Store):
        self._store = store

    @property
    def local(self) -> bool:
        """Reads are in-process and cheap (SQLite): bounded ones need no thread of their own."""
        return self._store.local_reads

    def find(self, ref: str, collection: str | None = None) -> ProfileRow:
        """The canonical profile a reference names (ProfileNotFound, InvalidReference)."""
        return profiles.find(self._store, ref, collection)

    def traits(
        self,
        row: ProfileRow,
        verbose: bool = False,
        *,
        start: str = "",
        limit: int | None = None,
        keys: frozenset[str] | None = None,
    ) -> dict[str, Any]:
        return profiles.traits(self._store, row, verbose, start=start, limit=limit, keys=keys)

    def metadata(self, row: ProfileRow) -> dict[str, Any]:
        return profiles.metadata(self._store, row)

    def external_ids(self, row: ProfileRow) -> list[ExternalIdRow]:
        return self._store.external_ids(row.pid)

    def events(self, row: ProfileRow, **query: Unpack[EventQuery]) -> list[EventRow]:
        return self._store.events(row.pid, **query)

    def links(
        self, row: ProfileRow, *, after: int | None = None, limit: int | None = None
    ) -> list[LinkRow]:
        return self._store.links(row.pid, after=after, limit=limit)

    def merges(self, row: ProfileRow) -> list[MergeRow]:
        return self._store.merges(row.pid)

    def violations(
        self, row: ProfileRow, *, before: int | None = None, limit: int = 100
    ) -> list[ProfileViolationRow]:
        return self._store.profile_violations(row.pid, before=before, limit=limit)
