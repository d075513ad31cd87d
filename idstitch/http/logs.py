"""Structured logs: one JSON object per line on stderr.

Log lines carry route names, status codes, error codes and source ids, never request
bodies, write keys, access tokens or profile references (a reference can be an email).
Exception messages can quote a payload, so a traceback is logged as frames only.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()

logger = logging.getLogger("idstitch.http")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        moment = time.gmtime(record.created)
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", moment) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            out["error"] = record.exc_info[0].__name__
            out["frames"] = [
                f"{frame.filename}:{frame.lineno} in {frame.name}"
                for frame in traceback.extract_tb(record.exc_info[2])
            ]
        return _encoder.encode(out).decode()


def setup(level: int = logging.INFO) -> None:
    """Send idstitch's and the server's logs to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("idstitch", "uvicorn", "uvicorn.error"):
        log = logging.getLogger(name)
        log.handlers[:] = [handler] if name in ("idstitch", "uvicorn") else []
        log.setLevel(level)
        log.propagate = name == "uvicorn.error"
    # The PostgreSQL driver and its pool warn on their own (a connection lost, a pipeline
    # aborted): as JSON lines too, not Python's bare last-resort text.
    driver = logging.getLogger("psycopg")
    driver.handlers[:] = [handler]
    driver.setLevel(max(level, logging.WARNING))
    driver.propagate = False
    # uvicorn's access log would print request paths, and a path can hold an email.
    logging.getLogger("uvicorn.access").disabled = True


def event(message: str, level: int = logging.INFO, **fields: Any) -> None:
    logger.log(level, message, extra={"fields": fields})


class Sampled:
    """Logs at most one line per key and interval, counting what it held back, so a
    misconfigured client sending thousands of bad requests cannot flood the log."""

    def __init__(self, interval: float = 10.0):
        self.interval = interval
        self._last: dict[tuple[Any, ...], float] = {}
        self._held: dict[tuple[Any, ...], int] = {}

    def event(
        self, message: str, key: tuple[Any, ...], level: int = logging.INFO, **fields: Any
    ) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            fields["suppressed"] = held
        event(message, level, **fields)
