"""Backfill: JSON-lines files (plain or gzip) and directories of them, through the same
resolution as live traffic, resumable after an interruption.

Progress is recorded per file as the byte offset (in the decompressed stream) up to which
every message has been durably acknowledged. A message without `messageId` gets one derived
from its bytes, so a re-run deduplicates it like any other.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, cast

import msgspec

from idstitch.core.identifiers import Extracted
from idstitch.core.messages import Prepared
from idstitch.engine import Engine, Ticket
from idstitch.errors import InvalidMessage
from idstitch.storage.base import Store

SUFFIXES = (".json", ".jsonl", ".ndjson", ".gz", ".log", ".txt")
MAX_LINE_BYTES = 1024 * 1024


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
    errors: list[str] = msgspec.field(default_factory=list)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def find_files(paths: list[str | Path]) -> list[Path]:
    """Files named on the command line, and the data files inside named directories."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.extend(
                    Path(root) / f
                    for f in sorted(files)
                    if not f.startswith(".") and f.endswith(SUFFIXES)
                )
        elif path.is_file():
            found.append(path)
        else:
            raise InvalidMessage(
                f"{path} is neither a file nor a directory; check the path.", "path_not_found"
            )
    return found


def _open(path: Path) -> tuple[IO[bytes], IO[bytes]]:
    """(decompressed stream, raw file) — the raw file's position drives the progress bar."""
    raw = path.open("rb")
    if raw.read(2) == b"\x1f\x8b":
        raw.seek(0)
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw)), raw
    raw.seek(0)
    return raw, raw


def _skip(stream: IO[bytes], offset: int) -> None:
    if offset <= 0:
        return
    if isinstance(stream, io.BufferedReader):
        stream.seek(offset)
        return
    left = offset
    while left:
        chunk = stream.read(min(left, 1 << 20))
        if not chunk:
            break
        left -= len(chunk)


def _lines(stream: IO[bytes], start: int) -> Iterator[tuple[int, bytes]]:
    """(offset after the line, line) pairs."""
    offset = start
    for line in stream:
        offset += len(line)
        yield offset, line


Progress = Callable[[int], None]


def _content_id(text: bytes) -> str:
    return "import-" + hashlib.blake2b(text, digest_size=16).hexdigest()


def import_paths(
    engine: Engine,
    paths: list[str | Path],
    *,
    source: str = "import",
    batch_size: int = 1000,
    window: int = 4,
    progress: Progress | None = None,
) -> ImportSummary:
    """Import every message under `paths`; `progress(bytes_read)` is called as files advance."""
    summary = ImportSummary()
    started = time.perf_counter()
    files = find_files(paths)
    summary.files = len(files)
    store = engine.store
    for path in files:
        name = f"{source}|{path.resolve()}"
        resume = store.import_offset(name)
        stream, raw = _open(path)
        with raw, stream:
            _skip(stream, resume)
            summary.skipped_bytes += resume
            inflight: deque[tuple[Ticket, int]] = deque()
            items: list[tuple[Prepared, Extracted]] = []
            line_no = 0
            last_offset = resume
            for offset, line in _lines(stream, resume):
                line_no += 1
                last_offset = offset
                text = line.strip()
                if not text:
                    continue
                try:
                    if len(text) > MAX_LINE_BYTES:
                        raise InvalidMessage(f"the line is {len(text)} bytes long")
                    items.append(
                        engine.prepare(
                            text,
                            keep_received_at=True,
                            fallback_id=functools.partial(_content_id, text),
                        )
                    )
                except InvalidMessage as err:
                    summary.invalid += 1
                    if len(summary.errors) < 10:
                        summary.errors.append(f"{path.name}:{line_no}: {err}")
                if len(items) >= batch_size:
                    inflight.append((engine.submit(items, source), offset))
                    items = []
                    if progress is not None:
                        progress(raw.tell())
                    while len(inflight) >= window:
                        _settle(inflight.popleft(), summary, store, name)
            if items:
                inflight.append((engine.submit(items, source), last_offset))
            while inflight:
                _settle(inflight.popleft(), summary, store, name)
            store.set_import_offset(name, last_offset)
            if progress is not None:
                progress(raw.tell())
    summary.seconds = time.perf_counter() - started
    return summary


def _settle(entry: tuple[Ticket, int], summary: ImportSummary, store: Store, name: str) -> None:
    ticket, offset = entry
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
    store.set_import_offset(name, offset)
