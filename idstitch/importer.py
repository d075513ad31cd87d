"""Backfill: JSON-lines files (plain or gzip) and directories of them, through the same
resolution as live traffic, resumable after an interruption.

Progress is recorded per file as the byte offset (in the decompressed stream) up to which
every message has been durably acknowledged. A message without `messageId` gets one derived
from its bytes, so a re-run deduplicates it like any other. The offset only ever covers whole
lines: when a file cannot be read to its end (a truncated or corrupt gzip stream, an I/O
error), the lines read before the damage are imported, the offset stops after the last whole
line, and a re-run on the repaired file continues from there.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, cast

import msgspec

from idstitch.core.identifiers import Extracted, is_text
from idstitch.core.messages import Prepared
from idstitch.engine import Engine, Ticket
from idstitch.errors import InvalidMessage
from idstitch.storage.base import Store

SUFFIXES = (".json", ".jsonl", ".ndjson", ".gz", ".log", ".txt")
MAX_LINE_BYTES = 1024 * 1024
MAX_REPORTED_LINES = 20  # invalid lines described one by one; the rest are only counted


class ImportSummary(msgspec.Struct):
    files: int = 0
    events: int = 0
    created: int = 0
    merges: int = 0
    violations: int = 0
    duplicates: int = 0
    invalid: int = 0
    skipped_bytes: int = 0
    seconds: float = 0.0
    errors: list[str] = msgspec.field(default_factory=list)  # the first invalid lines
    damaged: list[str] = msgspec.field(default_factory=list)  # files not read to their end

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def find_files(paths: list[str | Path]) -> list[Path]:
    """Files named on the command line, and the data files inside named directories."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():

            def unreadable(err: OSError) -> None:
                raise InvalidMessage(
                    f"{err.filename} cannot be read ({err.strerror}); fix its permissions or "
                    "leave it out.",
                    "path_unreadable",
                )

            for root, dirs, files in os.walk(path, onerror=unreadable):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.extend(
                    Path(root) / f
                    for f in sorted(files)
                    if not f.startswith(".") and f.endswith(SUFFIXES)
                )
        elif path.is_file():
            found.append(path)
        elif not path.exists():
            raise InvalidMessage(f"{path} does not exist; check the path.", "path_not_found")
        else:
            raise InvalidMessage(
                f"{path} is neither a file nor a directory; check the path.", "path_not_found"
            )
    return found


class _Unreadable(Exception):
    """A file that cannot be opened as what its name or first bytes say it is."""


def _open(path: Path) -> tuple[IO[bytes], IO[bytes]]:
    """(decompressed stream, raw file) — the raw file's position drives the progress bar."""
    raw = path.open("rb")
    magic = raw.read(2)
    raw.seek(0)
    if magic == b"\x1f\x8b":
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw)), raw
    if magic and path.name.lower().endswith(".gz"):
        raw.close()
        raise _Unreadable(
            f"{path} is named .gz but is not gzip data; nothing was imported from it."
        )
    return raw, raw


def _first_line_digest(path: Path) -> str:
    """A file's position is recorded under its path and this digest of its first line: a file
    replaced by another one at the same path is read from its start, where one that grew is
    read on from where the last run stopped. Lines read twice are skipped as duplicates."""
    stream, raw = _open(path)
    with raw, stream:
        try:
            head = stream.readline(4096)
        except READ_ERRORS:
            head = b""  # the import itself reports the damage
    return hashlib.blake2b(head, digest_size=8).hexdigest()


_BOM = b"\xef\xbb\xbf"  # UTF-8's byte-order mark


def _progress_name(source: str, path: Path) -> str:
    """The name a file's position is kept under. A very long path, or one that is not UTF-8,
    goes by its digest: PostgreSQL's B-tree refuses entries over 2,704 bytes, and neither
    store keeps a name that is not text."""
    where = str(path.resolve())
    if not is_text(where) or len(where.encode()) > 600:
        where = "blake2b:" + hashlib.blake2b(os.fsencode(where), digest_size=16).hexdigest()
    return f"{source}|{where}|{_first_line_digest(path)}"


def _skip(stream: IO[bytes], offset: int) -> int:
    """Read past the first `offset` bytes (whole lines, as recorded); returns how many lines
    they held, so that a resumed import still names lines by their number in the file."""
    left, lines = offset, 0
    while left > 0:
        chunk = stream.read(min(left, 1 << 20))
        if not chunk:
            break
        left -= len(chunk)
        lines += chunk.count(b"\n")
    return lines


# What reading a damaged file raises: a truncated gzip stream (EOFError), a bad gzip header
# or checksum (gzip.BadGzipFile, an OSError), corrupt deflate data (zlib.error), an I/O error.
READ_ERRORS = (EOFError, OSError, zlib.error)
_LINE_LIMIT = MAX_LINE_BYTES + 2  # the longest accepted line plus "\r\n"


class _Lines:
    """(line number, offset after the line, line, line length) for each complete line of
    `stream` after `start`; `line` is None for a line longer than MAX_LINE_BYTES (it is never
    held in memory whole). A read error ends the iteration and is kept in `error`: the line
    being read when it happened is not yielded, so the offsets only ever cover whole lines."""

    def __init__(self, stream: IO[bytes], start: int) -> None:
        self.stream = stream
        self.start = start
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[tuple[int, int, bytes | None, int]]:
        offset = self.start
        readline = self.stream.readline
        try:
            number = _skip(self.stream, self.start)
            while True:
                line = readline(_LINE_LIMIT)
                if not line:
                    return
                number += 1
                length = len(line)
                if length < _LINE_LIMIT or line.endswith(b"\n"):
                    offset += length
                    yield number, offset, line, length
                    continue
                while not line.endswith(b"\n"):  # too long: count it, do not keep it
                    line = readline(_LINE_LIMIT)
                    if not line:
                        break
                    length += len(line)
                offset += length
                yield number, offset, None, length
        except READ_ERRORS as err:
            self.error = err


def _damage(path: Path, err: BaseException, imported: int) -> str:
    """One sentence for a file that could not be read to its end."""
    lines = f"{imported:,} line{'' if imported == 1 else 's'}"
    if isinstance(err, EOFError | zlib.error | gzip.BadGzipFile):
        problem = f"is truncated or corrupt (gzip: {err})"
    else:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        problem = f"could not be read to its end ({reason})"
    return (
        f"{path} {problem}; the {lines} before the damage were imported"
        " and a re-run resumes after them."
    )


Progress = Callable[[int], None]


def _line_id(text: bytes, line_no: int) -> str:
    """The messageId of a line without one: the same for the same line of the same file, so
    a re-run skips it, and apart for two identical lines, which are two messages."""
    digest = hashlib.blake2b(b"%d\n" % line_no, digest_size=16)
    digest.update(text)
    return "import-" + digest.hexdigest()


def import_paths(
    engine: Engine,
    paths: list[str | Path],
    *,
    source: str = "import",
    batch_size: int = 5000,
    window: int = 4,
    progress: Progress | None = None,
    indexing: Progress | None = None,
) -> ImportSummary:
    """Import every message under `paths`; `progress(bytes_read)` is called as files advance,
    then `indexing(messages left)` while the store's derived state catches up.

    Invalid lines are counted and skipped (the first MAX_REPORTED_LINES are described in
    `errors`). A file that cannot be read to its end (truncated or corrupt gzip, I/O error)
    keeps what was read before the damage, records its resume offset there, is described in
    `damaged`, and the other files are still imported.
    """
    summary = ImportSummary()
    started = time.perf_counter()
    files = find_files(paths)
    summary.files = len(files)
    for path in files:
        _import_file(engine, path, source, batch_size, window, progress, summary)
    wait_for_index(engine.store, indexing)
    summary.seconds = time.perf_counter() - started
    return summary


INDEX_STALL_SECONDS = 60.0


def wait_for_index(store: Store, report: Progress | None = None) -> None:
    """Until the store's derived state covers everything stored (`report(messages left)` as
    it goes): reads after an import are then fast from the first one. An indexer that makes
    no progress for a minute is left to finish on its own; reads are right meanwhile."""
    last, since = -1, time.monotonic()
    while (left := store.index_lag().messages) > 0:
        if report is not None:
            report(left)
        if left != last:
            last, since = left, time.monotonic()
        elif time.monotonic() - since > INDEX_STALL_SECONDS:
            return
        time.sleep(0.05)


def _import_file(
    engine: Engine,
    path: Path,
    source: str,
    batch_size: int,
    window: int,
    progress: Progress | None,
    summary: ImportSummary,
) -> None:
    store = engine.store
    try:
        name = _progress_name(source, path)
        resume = store.import_offset(name)
        stream, raw = _open(path)
    except _Unreadable as err:
        summary.damaged.append(str(err))
        return
    except OSError as err:
        reason = err.strerror or str(err)
        summary.damaged.append(f"{path} cannot be opened ({reason}); nothing was imported from it.")
        return
    with raw, stream:
        summary.skipped_bytes += resume
        inflight: deque[Ticket] = deque()
        items: list[tuple[Prepared, Extracted]] = []
        last_offset = recorded = resume
        accepted = 0
        lines = _Lines(stream, resume)
        for line_no, offset, line, length in lines:
            last_offset = offset
            try:
                if line is None:
                    raise InvalidMessage(
                        f"the line is {length:,} bytes long; the limit is {MAX_LINE_BYTES:,}."
                    )
                text = line.strip()
                if line_no == 1 and text.startswith(_BOM):
                    text = text[len(_BOM) :].strip()  # files written by Windows tools
                if not text:
                    continue
                if len(text) > MAX_LINE_BYTES:
                    raise InvalidMessage(
                        f"the line is {len(text):,} bytes long; the limit is {MAX_LINE_BYTES:,}."
                    )
                items.append(
                    engine.prepare(
                        text,
                        keep_received_at=True,
                        fallback_id=functools.partial(_line_id, text, line_no),
                    )
                )
                accepted += 1
            except InvalidMessage as err:
                summary.invalid += 1
                if len(summary.errors) < MAX_REPORTED_LINES:
                    summary.errors.append(f"{path}:{line_no}: {err}")
            if len(items) >= batch_size:
                # The position after these lines is stored in the same commit as they are.
                inflight.append(engine.submit(items, source, (name, offset)))
                recorded = offset
                items = []
                if progress is not None:
                    progress(raw.tell())
                while len(inflight) >= window:
                    _settle(inflight.popleft(), summary)
        if items:
            inflight.append(engine.submit(items, source, (name, last_offset)))
            recorded = last_offset
        while inflight:
            _settle(inflight.popleft(), summary)
        if last_offset != recorded:  # the file ends with blank or invalid lines
            store.set_import_offset(name, last_offset)
        if progress is not None:
            progress(raw.tell())
        if lines.error is not None:
            summary.damaged.append(_damage(path, lines.error, accepted))


def _settle(ticket: Ticket, summary: ImportSummary) -> None:
    plans = ticket.future.result()
    for plan in plans:
        summary.events += 1
        if plan.duplicate:
            summary.duplicates += 1
            continue
        for side in (plan.users, plan.accounts):
            if side is not None:
                summary.created += side.created
                summary.merges += len(side.merged)
        summary.violations += len(plan.all_violations())
