"""The identity graph in memory: who owns each identifier, and what each profile holds.

This is the snapshot the resolver reads. The SQLite store keeps one for the life of the
process (rebuilt at startup); the PostgreSQL store loads one per micro-batch. Merged profiles
are found through a union-find parent map, so a merge never rewrites identifier ownership.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable, Iterator

import msgspec

# Identifier types by small integer code, for the packed stamps below. Codes live as long as
# the process and are never stored.
_TYPE_CODES: dict[str, int] = {}
_TYPE_NAMES: list[str] = []
_register = threading.Lock()


def type_code(type_: str) -> int:
    code = _TYPE_CODES.get(type_)
    if code is None:
        with _register:
            code = _TYPE_CODES.get(type_)
            if code is None:
                code = _TYPE_CODES[type_] = len(_TYPE_NAMES)
                _TYPE_NAMES.append(type_)
    return code


# One attached identifier: its type's code and the event time it was first attached at.
_ENTRY = struct.Struct("<Id")
_CREATED = struct.Struct("<d")


class ProfileState(msgspec.Struct, gc=False):
    """What the resolver needs to know of one canonical profile.

    The graph holds one per profile for the life of the process: none of them may be seen by
    the cyclic garbage collector, or every collection walks them all (a 25 ms pause every
    second at 10,000 requests/s, measured). So this is a Struct the collector does not track.
    Nothing here refers back to a profile, so no cycle can form.

    `packed` holds the time the profile was created, then, for every identifier it holds, that
    identifier's type and the event time at which it was first attached (12 bytes each), all in
    one bytes object: a dict of tuples of floats cost ten times that, and with a million
    identifiers memory is what runs out first.
    """

    pid: int
    segment_id: str
    packed: bytes
    merges: int = 0

    @classmethod
    def new(cls, pid: int, segment_id: str, created_at: float, merges: int = 0) -> ProfileState:
        return cls(pid, segment_id, _CREATED.pack(created_at), merges)

    @property
    def created_at(self) -> float:
        created: float = _CREATED.unpack_from(self.packed)[0]
        return created

    @property
    def n_ids(self) -> int:
        return (len(self.packed) - _CREATED.size) // _ENTRY.size

    def _entries(self) -> Iterator[tuple[int, float]]:
        return _ENTRY.iter_unpack(memoryview(self.packed)[_CREATED.size :])

    def count(self, type_: str, at: float, window: float | None) -> int:
        """How many values of `type_` the profile holds, counting only those attached less
        than `window` seconds before or after `at` when a window is given."""
        code = _TYPE_CODES.get(type_)
        if code is None:
            return 0
        n = 0
        for held, stamp in self._entries():
            if held == code and (window is None or abs(stamp - at) < window):
                n += 1
        return n

    def holds(self, type_: str) -> bool:
        """Whether the profile holds a value of `type_` (stops at the first)."""
        code = _TYPE_CODES.get(type_)
        return code is not None and any(held == code for held, _ in self._entries())

    def types(self) -> set[str]:
        return {_TYPE_NAMES[code] for code, _ in self._entries()}

    def add(self, type_: str, stamp: float) -> None:
        self.packed += _ENTRY.pack(type_code(type_), stamp)

    def remove(self, type_: str, stamp: float) -> None:
        """Forget one identifier of `type_` (the one attached at `stamp`, if one was)."""
        code = _TYPE_CODES.get(type_)
        entries = list(self._entries())
        at = next((n for n, e in enumerate(entries) if e == (code, stamp)), None)
        if at is None:
            at = next((n for n, (held, _) in enumerate(entries) if held == code), None)
        if at is None:
            return
        start = _CREATED.size + at * _ENTRY.size
        self.packed = self.packed[:start] + self.packed[start + _ENTRY.size :]

    def absorb(self, other: ProfileState) -> None:
        """Take every identifier of `other` (merged into this one)."""
        self.packed += memoryview(other.packed)[_CREATED.size :]

    def held(self) -> dict[str, list[float]]:
        """Type -> the stamps of its values (for checks and tests)."""
        out: dict[str, list[float]] = {}
        for code, stamp in self._entries():
            out.setdefault(_TYPE_NAMES[code], []).append(stamp)
        return out


class Graph:
    """Identifier keys -> profile ids, and canonical profile states."""

    __slots__ = ("blocked", "conflicts", "next_pid", "owners", "parent", "profiles")

    def __init__(self) -> None:
        # Identifier slot (`identifiers.slot_of`) -> the profile that first held it.
        self.owners: dict[int, int] = {}
        self.parent: dict[int, int] = {}
        self.profiles: dict[int, ProfileState] = {}
        self.next_pid = 1
        # Identifier slot -> the known users (`user_id:value`) it was seen with whose profile
        # does not hold it: the `conflict` violations recorded for it (the idstitch preset).
        self.conflicts: dict[int, set[str]] = {}
        # Identifier slots on the stored block list (an unmerge named them junk): they link
        # nothing, whatever the configured rules say.
        self.blocked: set[int] = set()

    def find(self, pid: int) -> int:
        parent = self.parent
        root = pid
        while root in parent:
            root = parent[root]
        while pid != root:  # path compression
            nxt = parent[pid]
            parent[pid] = root
            pid = nxt
        return root

    def owner(self, slot: int) -> ProfileState | None:
        pid = self.owners.get(slot)
        if pid is None:
            return None
        if pid in self.parent:
            pid = self.find(pid)
        return self.profiles[pid]

    def state(self, pid: int) -> ProfileState:
        return self.profiles[self.find(pid)]

    # Mutations, applied after the resolver decided (see resolver.apply_plan).
    def create(self, segment_id: str, created_at: float, pid: int | None = None) -> ProfileState:
        if pid is None:
            pid = self.next_pid
        self.next_pid = max(self.next_pid, pid + 1)
        state = ProfileState.new(pid, segment_id, created_at)
        self.profiles[pid] = state
        return state

    def attach(self, state: ProfileState, slot: int, type_: str, stamp: float) -> None:
        self.owners[slot] = state.pid
        state.add(type_, stamp)

    def merge(self, into: ProfileState, others: Iterable[ProfileState]) -> None:
        for other in others:
            into.absorb(other)
            into.merges += other.merges + 1
            self.parent[other.pid] = into.pid
            del self.profiles[other.pid]

    def detach(self, slot: int, type_: str, stamp: float = float("nan")) -> None:
        """Forget who holds an identifier (deleted from its profile); its profile forgets
        one value of its type (the one attached at `stamp`, when given)."""
        state = self.owner(slot)
        if state is not None:
            del self.owners[slot]
            state.remove(type_, stamp)

    def add_conflict(self, slot: int, other: str) -> None:
        self.conflicts.setdefault(slot, set()).add(other)

    def __len__(self) -> int:
        return len(self.profiles)
