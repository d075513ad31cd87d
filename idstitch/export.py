"""The identity graph as Segment's Profiles Sync tables, for a warehouse (`idstitch export`).

Append-only tables, a row per change at the `seq` of the message that made it (`since`
keeps the rows past a seq, so a warehouse loads them run after run):
    id_graph_updates             a user profile made, or moved by a merge
    external_id_mapping_updates  an identifier attached (CREATED) or removed by a repair
    profile_traits_updates       the traits one identify message set
Materialized tables, the state now, whole at every run:
    profile_merges, user_identifiers, user_traits

Each table goes to DIR/<table>.<format>, written beside its final name and moved there once
whole; the manifest (MANIFEST) goes last and names the `last_seq` the next run's `since`
takes. A repair is no message: its REMOVED row takes the seq after the last message stored
before it, and waits for a run that reaches that seq.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import heapq
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

import msgspec

from idstitch.core.identifiers import USERS
from idstitch.core.messages import format_time
from idstitch.errors import ConfigError, InvalidArgument
from idstitch.storage.base import Store
from idstitch.storage.export_reads import GraphUpdate, Trigger
from idstitch.storage.rewrite import Operation

if TYPE_CHECKING:
    import duckdb

Format = Literal["parquet", "csv", "jsonl"]
FORMATS: tuple[Format, ...] = ("parquet", "csv", "jsonl")
MANIFEST = "_idstitch_export.json"
INSTALL_HINT = "pip install 'idstitch[export]'"
# Repairs whose REMOVED rows these are; and those that rewrite the stored history.
REMOVING = ("delete_identifier", "unmerge")
REWRITING = ("unmerge", "rebuild")

Kind = Literal["text", "int", "time", "json"]
Row = tuple[Any, ...]
_json = msgspec.json.Encoder()


class Table(NamedTuple):
    name: str
    append_only: bool
    columns: tuple[tuple[str, Kind], ...]


def _columns(spec: str) -> tuple[tuple[str, Kind], ...]:
    """`name:kind` words (kind text when left out) as columns."""
    out: list[tuple[str, Kind]] = []
    for word in spec.split():
        name, _, kind = word.partition(":")
        out.append((name, cast(Kind, kind or "text")))
    return tuple(out)


# Segment's column names (section 8 of its Profiles Sync docs), lowercase.
ID_GRAPH = Table(
    "id_graph_updates",
    True,
    _columns(
        "segment_id canonical_segment_id triggering_event_type triggering_event_id "
        "timestamp:time received_at:time seq:int uuid_ts:time"
    ),
)
MAPPINGS = Table(
    "external_id_mapping_updates",
    True,
    _columns(
        "external_id_hash external_id_type external_id_value segment_id seq:int timestamp:time "
        "received_at:time triggering_event_id triggering_event_name triggering_event_type "
        "triggering_event_source_id uuid_ts:time __operation"
    ),
)
TRAIT_UPDATES = Table(
    "profile_traits_updates",
    True,
    _columns(
        "segment_id seq:int uuid_ts:time timestamp:time received_at:time triggering_event_id "
        "triggering_event_name triggering_event_type trigger_event_source_id traits:json"
    ),
)
MERGES = Table(
    "profile_merges",
    False,
    _columns(
        "canonical_segment_id segment_id seq:int received_at:time uuid_ts:time timestamp:time"
    ),
)
IDENTIFIERS = Table(
    "user_identifiers",
    False,
    _columns(
        "canonical_segment_id type value seq:int received_at:time uuid_ts:time timestamp:time"
    ),
)
TRAITS = Table(
    "user_traits",
    False,
    _columns(
        "canonical_segment_id name value:json seq:int received_at:time uuid_ts:time timestamp:time"
    ),
)
TABLES = (ID_GRAPH, MAPPINGS, TRAIT_UPDATES, MERGES, IDENTIFIERS, TRAITS)
_TABLE = {t.name: t for t in TABLES}


class Run(NamedTuple):
    """One export: the window of seqs it writes changes of, and its load time (`uuid_ts`)."""

    since: int
    upto: int
    stamp: float


# ---- checks at the edge -------------------------------------------------------------------


def parse_since(text: str) -> int:
    """`--since` as a seq: a whole number from 0 up."""
    if not text.isascii() or not text.isdigit():
        raise InvalidArgument(
            f"--since {text!r:.60} is not a seq; pass a whole number from 0 up, such as the "
            f"last_seq in the {MANIFEST} of an earlier export of this store."
        )
    return int(text)


def check_format(fmt: str) -> Format:
    for known in FORMATS:
        if fmt == known:
            return known
    raise InvalidArgument(
        f"the export format {fmt!r:.60} is unknown; pass one of {', '.join(FORMATS)}."
    )


def check_writer(fmt: Format) -> None:
    """Parquet is written with DuckDB, an extra: say how to install it."""
    if fmt != "parquet":
        return
    try:
        import duckdb  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"writing Parquet needs DuckDB, which is not installed; install it with "
            f"{INSTALL_HINT}, or pass --format csv or --format jsonl."
        ) from None


def prepare_directory(directory: str | Path) -> Path:
    """The directory the files go to, created when missing."""
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise InvalidArgument(
            f"{path} exists and is not a directory; name a directory (a missing one is created)."
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InvalidArgument(
            f"cannot create the directory {path} ({err.strerror}); name one you can write to."
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InvalidArgument(f"cannot write in {path}; name a directory you can write to.")
    return path


# ---- the export ---------------------------------------------------------------------------


def export(
    store: Store, directory: str | Path, fmt: str = "parquet", since: int = 0
) -> dict[str, Any]:
    """Write every table of TABLES to `directory` in `fmt`, the append-only ones with the
    changes of the messages past `since` only; returns the manifest (also written)."""
    started = time.time()
    chosen = check_format(fmt)
    if isinstance(since, bool) or not isinstance(since, int) or since < 0:
        raise InvalidArgument(f"since {since!r:.60} is not a seq; pass a whole number from 0 up.")
    check_writer(chosen)
    path = prepare_directory(directory)
    upto = store.last_seq()
    if since > upto:
        raise InvalidArgument(
            f"--since {since} is past the last message stored (seq {upto}); pass the last_seq "
            f"of an earlier export of this store, or 0 for everything."
        )
    run = Run(since, upto, started)
    operations = store.operations()
    removed, waiting = _removed(operations, run)
    # Profiles whose place no message explains, met while profile_merges is written (an
    # unmerge leaves few) and stated again in id_graph_updates, which is written after it.
    unexplained: list[GraphUpdate] = []
    sources: dict[str, Callable[[], Iterable[Row]]] = {
        MERGES.name: lambda: _members(store, run, unexplained),
        ID_GRAPH.name: lambda: _id_graph(store, run, unexplained),
        MAPPINGS.name: lambda: heapq.merge(removed, _created(store, run), key=lambda r: r[4]),
        TRAIT_UPDATES.name: lambda: _trait_updates(store, run),
        IDENTIFIERS.name: lambda: _identifiers(store, run),
        TRAITS.name: lambda: _traits(store, run),
    }
    counts = {}
    with _parquet_writer(chosen, path) as duck:
        for name, rows in sources.items():
            target = path / f"{name}.{chosen}"
            counts[name] = write_table(target, _TABLE[name], chosen, rows(), duck)
    tables = {
        t.name: {
            "file": f"{t.name}.{chosen}",
            "kind": "append-only" if t.append_only else "materialized",
            "rows": counts[t.name],
        }
        for t in TABLES
    }
    manifest = {
        "format": chosen,
        "since": since,
        "last_seq": upto,
        "exported_at": format_time(started),
        "seconds": round(time.time() - started, 3),
        "tables": tables,
        "repairs_waiting": waiting,
        "rewrites": sum(1 for op in operations if op.kind in REWRITING),
    }
    _replace(path / MANIFEST, lambda part: _write_bytes(part, _json.encode(manifest) + b"\n"))
    return manifest


# ---- rows ---------------------------------------------------------------------------------


def _id_graph(store: Store, run: Run, unexplained: list[GraphUpdate]) -> Iterator[Row]:
    for update in store.graph_updates(run.since, run.upto):
        yield _graph_row(update, run)
    if run.since == 0:
        # Where a profile points with no message to say so (an unmerge put it there): a
        # full export states it at its last seq, so that the latest row of each segment_id
        # names its canonical profile now.
        for update in unexplained:
            yield _graph_row(update, run)


def _graph_row(u: GraphUpdate, run: Run) -> Row:
    t = u.trigger
    event = (None, None) if t is None else (t.type, t.message_id)
    return (u.segment_id, u.canonical_segment_id, *event, *_times(t, run), run.stamp)


def _times(t: Trigger | None, run: Run) -> tuple[Any, ...]:
    """(timestamp, received_at, seq): a change no message made is at the run's last seq."""
    return (None, None, run.upto) if t is None else (t.timestamp, t.received_at, t.seq)


def external_id_hash(type_: str, value: str) -> str:
    """The key of an identifier across the mapping rows (SHA-256 of type and value)."""
    return hashlib.sha256(f"{type_}\x1f{value}".encode()).hexdigest()


def _created(store: Store, run: Run) -> Iterator[Row]:
    for held in store.identifier_updates(run.since, run.upto):
        t = held.trigger
        assert t is not None  # a change is read by its message
        yield (
            external_id_hash(held.type, held.value), held.type, held.value, held.segment_id,
            t.seq, t.timestamp, t.received_at, t.message_id, t.name, t.type, t.source_id,
            run.stamp, "CREATED",
        )  # fmt: skip


def _removed(operations: list[Operation], run: Run) -> tuple[list[Row], int]:
    """REMOVED rows of the repairs in the run's window, by seq, and how many repairs wait
    for a later run (no message is stored after them yet)."""
    rows: list[Row] = []
    waiting = 0
    for op in operations:
        if op.kind not in REMOVING or op.collection != USERS:
            continue
        after = _recorded_seq(op.detail)
        if after is None:
            # A record without its place in the history: full exports only, at their end.
            if run.since:
                continue
            seq = run.upto
        else:
            seq = after + 1
            if seq > run.upto:
                waiting += 1
                continue
            if seq <= run.since:
                continue
        rows.append(
            (
                external_id_hash(op.type, op.value), op.type, op.value, op.segment_id, seq,
                op.created_at, op.created_at, None, None, op.kind, None, run.stamp, "REMOVED",
            )
        )  # fmt: skip
    rows.sort(key=lambda r: r[4])
    return rows, waiting


def _recorded_seq(detail: str) -> int | None:
    """The last seq stored when a repair happened, when its record says."""
    try:
        found = msgspec.json.decode(detail)
    except msgspec.DecodeError:
        return None
    seq = found.get("seq") if isinstance(found, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def _trait_updates(store: Store, run: Run) -> Iterator[Row]:
    for u in store.trait_updates(run.since, run.upto):
        t = u.trigger
        yield (
            u.segment_id, t.seq, run.stamp, t.timestamp, t.received_at, t.message_id, t.name,
            t.type, t.source_id, _json.encode(u.traits).decode(),
        )  # fmt: skip


def _members(store: Store, run: Run, unexplained: list[GraphUpdate]) -> Iterator[Row]:
    last: tuple[str, str] | None = None
    for u in store.profile_members():
        if (u.canonical_segment_id, u.segment_id) == last:
            continue  # one row per profile, however many ways a merge chain reached it
        last = (u.canonical_segment_id, u.segment_id)
        if u.trigger is None and run.since == 0:
            unexplained.append(u)
        timestamp, received_at, seq = _times(u.trigger, run)
        yield (u.canonical_segment_id, u.segment_id, seq, received_at, run.stamp, timestamp)


def _identifiers(store: Store, run: Run) -> Iterator[Row]:
    for held in store.held_identifiers():
        yield _state_row(held.segment_id, held.type, held.value, held.trigger, run)


def _traits(store: Store, run: Run) -> Iterator[Row]:
    for trait in store.current_traits():
        yield _state_row(trait.canonical_segment_id, trait.key, trait.value, trait.trigger, run)


def _state_row(segment_id: str, name: str, value: str, t: Trigger | None, run: Run) -> Row:
    """A row of a materialized table: profile, name, value, then the message it comes from."""
    timestamp, received_at, seq = _times(t, run)
    return (segment_id, name, value, seq, received_at, run.stamp, timestamp)


# ---- files --------------------------------------------------------------------------------


def write_table(
    path: Path,
    table: Table,
    fmt: Format,
    rows: Iterable[Row],
    duck: duckdb.DuckDBPyConnection | None = None,
) -> int:
    """Write `rows` to `path`, whole or not at all (Parquet with `duck`); the number of
    rows."""
    count = 0

    def counted() -> Iterator[Row]:
        nonlocal count
        for row in rows:
            count += 1
            yield row

    if fmt == "csv":
        _replace(path, lambda part: _write_csv(part, table, counted()))
    elif fmt == "jsonl":
        _replace(path, lambda part: _write_jsonl(part, table, counted()))
    else:
        lines = path.with_name(f".{path.name}.jsonl")
        assert duck is not None
        try:
            _write_jsonl(lines, table, counted(), iso=False)
            _replace(path, lambda part: _to_parquet(duck, lines, part, table))
        finally:
            lines.unlink(missing_ok=True)
    return count


def _write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _replace(path: Path, write: Callable[[Path], None]) -> None:
    """`write` to a file beside `path`, then move it there: a reader never sees half."""
    part = path.with_name(f".{path.name}.part")
    try:
        write(part)
        part.replace(path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


# Rows encoded before each write to the file.
CHUNK = 1_000


def _write_jsonl(path: Path, table: Table, rows: Iterable[Row], *, iso: bool = True) -> None:
    """One JSON object a line: times as ISO-8601 UTC text (`iso`) or Unix seconds, JSON
    columns as the JSON they hold."""
    names = [name for name, _ in table.columns]
    times = _of_kind(table, "time")
    jsons = _of_kind(table, "json")
    encode = _json.encode
    with path.open("wb") as out:
        lines: list[bytes] = []
        for row in rows:
            cells = list(row)
            for n in times if iso else ():
                if cells[n] is not None:
                    cells[n] = _iso(cells[n])
            for n in jsons:
                if cells[n] is not None:
                    cells[n] = msgspec.Raw(cells[n].encode())
            lines.append(encode(dict(zip(names, cells, strict=True))))
            if len(lines) >= CHUNK:
                out.write(b"\n".join(lines) + b"\n")
                lines.clear()
        if lines:
            out.write(b"\n".join(lines) + b"\n")


def _write_csv(path: Path, table: Table, rows: Iterable[Row]) -> None:
    """A header line, then a line a row: times as ISO-8601 UTC text, JSON as its text."""
    times = _of_kind(table, "time")
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([name for name, _ in table.columns])
        for row in rows:
            cells = list(row)
            for n in times:
                if cells[n] is not None:
                    cells[n] = _iso(cells[n])
            writer.writerow(cells)


def _of_kind(table: Table, kind: Kind) -> list[int]:
    return [n for n, (_, k) in enumerate(table.columns) if k == kind]


# The text of whole seconds already formatted: a table's times cluster (uuid_ts is one).
_SECONDS: dict[int, str] = {}
_YEAR_1000, _YEAR_9999 = -30_610_224_000, 253_402_300_799


def _iso(seconds: float) -> str:
    """`core.messages.format_time`, at a fraction of its cost."""
    frac, whole_float = math.modf(seconds)  # rounded as datetime rounds it
    whole, rest = int(whole_float), round(frac * 1_000_000)
    if rest < 0 or rest >= 1_000_000:
        extra, rest = divmod(rest, 1_000_000)
        whole += extra
    text = _SECONDS.get(whole)
    if text is None:
        if len(_SECONDS) >= 65_536:
            _SECONDS.clear()
        # gmtime's years have four digits from 1000 on; format_time pads the others.
        text = _SECONDS[whole] = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
            if _YEAR_1000 <= whole <= _YEAR_9999
            else format_time(whole)[:-5]  # without ".000Z"
        )
    return f"{text}.{rest // 1000:03d}Z"


_DUCKDB_TYPES: dict[Kind, str] = {
    "text": "VARCHAR",
    "int": "BIGINT",
    "time": "DOUBLE",  # Unix seconds, made TIMESTAMPTZ by the query
    "json": "JSON",
}
# DuckDB's memory while it converts (it spills to disk past it).
DUCKDB_MEMORY = "256MB"


@contextlib.contextmanager
def _parquet_writer(fmt: Format, directory: Path) -> Iterator[duckdb.DuckDBPyConnection | None]:
    """The DuckDB connection that writes Parquet files (None for the other formats), for
    the whole run: it spills to a folder in `directory`, removed afterwards."""
    if fmt != "parquet":
        yield None
        return
    import duckdb

    spill = directory / ".idstitch-export.tmp"
    con = duckdb.connect(config={"memory_limit": DUCKDB_MEMORY, "temp_directory": str(spill)})
    try:
        yield con
    finally:
        con.close()
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(spill)


def _to_parquet(duck: duckdb.DuckDBPyConnection, source: Path, target: Path, table: Table) -> None:
    """The JSON lines at `source` (times in Unix seconds) as Parquet at `target`, typed by
    the table's columns."""
    columns = ", ".join(f"{_quoted(n)}: '{_DUCKDB_TYPES[k]}'" for n, k in table.columns)
    selected = ", ".join(
        f'to_timestamp("{n}") AS "{n}"' if k == "time" else f'"{n}"' for n, k in table.columns
    )
    duck.execute(
        f"COPY (SELECT {selected} FROM read_json({_quoted(str(source))}, "
        f"format = 'newline_delimited', columns = {{{columns}}})) "
        f"TO {_quoted(str(target))} (FORMAT parquet, COMPRESSION zstd)"
    )


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
