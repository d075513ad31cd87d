"""uvicorn's httptools protocol with the two bounds it lacks: a request head must arrive
whole within `HEAD_SECONDS` and hold at most `MAX_HEAD_BYTES`.

Without them one client can hold a connection open forever by sending a head byte by byte,
or make the server buffer a header of any size (a 100 MB header was accepted and held).
A head over the size is refused as uvicorn refuses any malformed request (`400`, connection
closed); a head that is too slow has its connection closed. Idle keep-alive connections
are closed by uvicorn itself (`timeout_keep_alive`), and bodies have their own deadline
(`body.BODY_SECONDS`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD_SECONDS = 10.0
MAX_HEAD_BYTES = 64 * 1024  # request line and headers together


class HeadTooLarge(Exception):
    """Raised inside the parser's callback: httptools then reports a parse error, and uvicorn
    answers 400 and closes the connection."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    _head_bytes = 0  # of the current head's complete lines
    _head_timer: asyncio.TimerHandle | None = None
    # The parser keeps an unfinished header line to itself, so `on_header` never sees one
    # that does not end: bytes that arrive while a head is open and leave it open are counted
    # here too. A chunk that starts a head after a body or another request is not, so this
    # undercounts by at most one read (256 KiB), which still bounds what a connection holds.
    _in_head = True
    _open_head_bytes = 0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(HEAD_SECONDS, self._head_too_slow)

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise HeadTooLarge(f"the request head is over {MAX_HEAD_BYTES:,} bytes")

    def data_received(self, data: bytes) -> None:
        was_in_head = self._in_head
        super().data_received(data)
        if was_in_head and self._in_head and not self.transport.is_closing():
            self._open_head_bytes += len(data)
            if self._open_head_bytes > MAX_HEAD_BYTES:
                self.logger.warning("a request head over %d bytes was refused", MAX_HEAD_BYTES)
                self.send_400_response("Invalid HTTP request received.")

    def on_message_begin(self) -> None:
        # Every request of a pipelined connection has its own head to bound.
        self._in_head = True
        self._head_bytes = 0
        self._open_head_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        # A pipelined request whose head is already whole waits in `pipeline` (uvicorn starts
        # it now): only when none waits is the next head still to come.
        next_head_pending = not self.pipeline
        super().on_response_complete()
        if next_head_pending and not self.transport.is_closing():
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)
