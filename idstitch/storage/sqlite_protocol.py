"""What the engine and the SQLite committer process say to each other, as typed messages.

Each side sends pickled tuples over an OS pipe (`pipe.Pipe`, length-prefixed frames):
a message travels as `(type name, *fields)` and is rebuilt into its type on the other side
(`to_wire`, `from_wire`), so that the committer, a plain script that starts in milliseconds,
needs nothing but the standard library and this module.

    engine -> committer   Write | Offset | Execute | Reset | Stop
    committer -> engine   Done | Failed

A `Write` holds one micro-batch's rows for the log and the graph tables, in the column order
of `storage.rows` (events without their traits, which are derived). The committer coalesces
whatever is queued into one transaction, commits it with `synchronous=FULL`, and only then
answers `Done` with the job ids it made durable. After a failed transaction every later
`Write` is refused until a `Reset` arrives: those batches were resolved on top of the failed
one and must not be stored without it.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Write(NamedTuple):
    job: int
    events: list[tuple[Any, ...]]
    profiles: list[tuple[Any, ...]]
    repoint: list[tuple[int, int]]
    merge_counts: list[tuple[int, int]]
    merges: list[tuple[Any, ...]]
    identifiers: list[tuple[Any, ...]]
    links: list[tuple[Any, ...]]
    violations: list[tuple[Any, ...]]
    # Imports' positions in their files, recorded in the same transaction: (name, offset, at).
    progress: list[tuple[str, int, float]] = []
    # The change feed's rows (`rows.BatchRows.outbox`), when webhooks are configured.
    outbox: list[tuple[Any, ...]] = []


class Offset(NamedTuple):
    """An import's position in a file: everything before `offset` is stored."""

    job: int
    name: str
    offset: int
    at: float


class Execute(NamedTuple):
    """A repair (an identifier deleted, a profile split): statements run in order, each with
    its rows (`executemany`), in one transaction with nothing else."""

    job: int
    steps: list[tuple[str, list[tuple[Any, ...]]]]


class Reset(NamedTuple):
    """Every job sent before this one is settled; writes are accepted again."""

    job: int


class Stop(NamedTuple):
    """Finish what is queued, then exit."""


Job = Write | Offset | Execute | Reset | Stop


class Done(NamedTuple):
    jobs: list[int]


class Failed(NamedTuple):
    jobs: list[int]
    reason: str


Reply = Done | Failed

_TYPES: dict[str, Any] = {
    t.__name__: t for t in (Write, Offset, Execute, Reset, Stop, Done, Failed)
}


def to_wire(message: Job | Reply) -> tuple[Any, ...]:
    return (type(message).__name__, *message)


def from_wire(wire: tuple[Any, ...]) -> Any:
    """The message `to_wire` made (raises KeyError or TypeError for anything else)."""
    kind: Any = _TYPES[wire[0]]
    return kind(*wire[1:])
