"""The identity graph in memory: who owns each identifier, and what each profile holds.

This is the snapshot the resolver reads. The SQLite store keeps one for the life of the
process (rebuilt at startup); the PostgreSQL store loads one per micro-batch. Merged profiles
are found through a union-find parent map, so a merge never rewrites identifier ownership.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec


class ProfileState(msgspec.Struct, gc=False):
    """What the resolver needs to know of one canonical profile.

    The graph holds one per profile for the life of the process: none of them may be seen by
    the cyclic garbage collector, or every collection walks them all (a 25 ms pause every
    second at 10,000 requests/s, measured). So this is a Struct the collector does not track,
    and `stamps` holds floats and tuples of floats, which it stops tracking after one look.
    Nothing here refers back to a profile, so no cycle can form.
    """

    pid: int
    segment_id: str
    created_at: float
    merges: int = 0
    n_ids: int = 0
    # type -> the event time(s) at which each of its values was first attached: a bare float
    # while the profile holds one value of the type (most do), else a tuple.
    stamps: dict[str, float | tuple[float, ...]] = msgspec.field(default_factory=dict)

    def count(self, type_: str, at: float, window: float | None) -> int:
        held = self.stamps.get(type_)
        if held is None:
            return 0
        if isinstance(held, float):
            return 1 if window is None or abs(held - at) < window else 0
        if window is None:
            return len(held)
        return sum(1 for s in held if abs(s - at) < window)

    def add(self, type_: str, stamp: float) -> None:
        stamp = float(stamp)
        held = self.stamps.get(type_)
        if held is None:
            self.stamps[type_] = stamp
        elif isinstance(held, float):
            self.stamps[type_] = (held, stamp)
        else:
            self.stamps[type_] = (*held, stamp)  # at most the type's limit (capped at 1,000)
        self.n_ids += 1


class Graph:
    """Identifier keys -> profile ids, and canonical profile states."""

    __slots__ = ("next_pid", "owners", "parent", "profiles")

    def __init__(self) -> None:
        self.owners: dict[str, int] = {}
        self.parent: dict[int, int] = {}
        self.profiles: dict[int, ProfileState] = {}
        self.next_pid = 1

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

    def owner(self, key: str) -> ProfileState | None:
        pid = self.owners.get(key)
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
        state = ProfileState(pid, segment_id, created_at)
        self.profiles[pid] = state
        return state

    def attach(self, state: ProfileState, key: str, type_: str, stamp: float) -> None:
        self.owners[key] = state.pid
        state.add(type_, stamp)

    def merge(self, into: ProfileState, others: Iterable[ProfileState]) -> None:
        for other in others:
            for type_, held in other.stamps.items():
                theirs = (held,) if isinstance(held, float) else held
                mine = into.stamps.get(type_)
                if mine is None:
                    into.stamps[type_] = held
                elif isinstance(mine, float):
                    into.stamps[type_] = (mine, *theirs)
                else:
                    into.stamps[type_] = (*mine, *theirs)
            into.n_ids += other.n_ids
            into.merges += other.merges + 1
            self.parent[other.pid] = into.pid
            del self.profiles[other.pid]

    def __len__(self) -> int:
        return len(self.profiles)
