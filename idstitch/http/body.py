"""Reading a request body under a size cap, and gzip with a cap on decompression.

Limits apply to the decompressed bytes, so a small gzip body cannot expand into an
unbounded amount of memory: decompression stops one byte past the cap.
"""

from __future__ import annotations

import asyncio
import zlib

from idstitch.errors import InvalidMessage, Overloaded, PayloadTooLarge
from idstitch.http.asgi import Receive, Scope, header
from idstitch.http.errors import UnsupportedEncoding

# gzip adds a few bytes per block to data that does not compress; allow for it.
_GZIP_SLACK = 64 * 1024
# A body must arrive whole within this long of the request head.
BODY_SECONDS = 60.0
# ... and, after the first `BODY_GRACE_SECONDS`, at no less than `MIN_BODY_RATE` bytes/s on
# average: a client that declares a large body and sends a byte now and then is cut off
# within seconds, not after a minute. Segment's libraries send a whole body at once; a
# 500 KiB batch over a 2G link (about 6 KB/s) still passes.
BODY_GRACE_SECONDS = 5.0
MIN_BODY_RATE = 1024
# Concatenated gzip members a body may hold: clients send one; each costs a decompressor.
MAX_GZIP_MEMBERS = 64
# The request bodies the server holds at once, counted as their bytes arrive (and at their
# decompressed size once inflated). Past it a request is answered 429: a burst of clients
# cannot run the server out of memory, and they are told to retry.
MAX_BODY_BYTES_IN_FLIGHT = 64 * 1024 * 1024
# Of that, bodies whose write key is not known yet (no Authorization header: the key is in
# the body) may hold half, and those from one client address an eighth: clients without a
# key cannot take the room of requests whose key the server already checked, and one
# address cannot take all the room of the others.
UNVERIFIED_SHARE = 2
PEER_SHARE = 8


# Set in the scope once the whole body was received (see `unread_body`).
BODY_READ = "idstitch.body_read"


def unread_body(scope: Scope) -> bool:
    """Whether the request declared a body that was not read whole: answering it early must
    close the connection, or a client trickling the rest would keep it open for ever."""
    if scope.get(BODY_READ):
        return False
    length = header(scope, b"content-length")
    if length is not None:
        return length.strip() not in (b"", b"0")
    return header(scope, b"transfer-encoding") is not None


class BodyBudget:
    """Bytes of request bodies in flight (the event loop's own counters: no lock)."""

    def __init__(self, total: int = MAX_BODY_BYTES_IN_FLIGHT) -> None:
        self.total = total
        self.unverified_total = total // UNVERIFIED_SHARE
        self.peer_total = total // PEER_SHARE
        self.used = 0
        self.unverified = 0
        self.by_peer: dict[str, int] = {}  # unverified bytes per client address

    def hold(self, scope: Scope, *, verified: bool) -> BodyHold:
        """An empty share for one request's body; it grows as the body arrives."""
        client = scope.get("client")
        peer = str(client[0]) if client else ""
        return BodyHold(self, peer, verified)


class BodyHold:
    """One request's share of the budget: what its body holds now. Release it when done."""

    __slots__ = ("amount", "budget", "peer", "verified")

    def __init__(self, budget: BodyBudget, peer: str, verified: bool) -> None:
        self.budget = budget
        self.peer = peer
        self.verified = verified
        self.amount = 0

    def grow(self, size: int) -> None:
        """Count `size` more bytes (raises Overloaded, counting nothing, when they do not fit)."""
        b = self.budget
        if b.used + size > b.total:
            raise Overloaded(
                f"{b.used:,} bytes of request bodies are being read or resolved; retry shortly."
            )
        if not self.verified:
            if b.unverified + size > b.unverified_total:
                raise Overloaded(
                    f"{b.unverified:,} bytes of request bodies without an Authorization header "
                    "are being read; retry shortly, or send the write key as the HTTP Basic "
                    "user name."
                )
            held = b.by_peer.get(self.peer, 0)
            if held + size > b.peer_total:
                raise Overloaded(
                    f"this client address holds {held:,} bytes of request bodies not yet "
                    "authenticated; retry shortly, or send the write key as the HTTP Basic "
                    "user name."
                )
            b.unverified += size
            b.by_peer[self.peer] = held + size
        b.used += size
        self.amount += size

    def resize(self, size: int) -> None:
        """Count the body at `size` bytes from now on (its decompressed size, say)."""
        if size > self.amount:
            self.grow(size - self.amount)
        elif size < self.amount:
            self._give_back(self.amount - size)

    def verify(self) -> None:
        """The body's write key was checked: its bytes no longer count as unverified."""
        if not self.verified:
            self._unverified_back(self.amount)
            self.verified = True

    def release(self) -> None:
        self._give_back(self.amount)

    def _give_back(self, size: int) -> None:
        if not self.verified:
            self._unverified_back(size)
        self.budget.used -= size
        self.amount -= size

    def _unverified_back(self, size: int) -> None:
        b = self.budget
        b.unverified -= size
        left = b.by_peer.get(self.peer, 0) - size
        if left > 0:
            b.by_peer[self.peer] = left
        else:
            b.by_peer.pop(self.peer, None)


def _too_large(amount: str, cap: int, single: bool, *, compressed: bool = False) -> PayloadTooLarge:
    """The 413 for a body of `amount` ("40,000 bytes", "more than 32,768 bytes after
    decompression"); `compressed` when `amount` counts gzip bytes, refused before inflating."""
    unit = "message" if single else "request"
    limit = f"the limit is {cap:,} bytes per {unit}" + (
        " after decompression" if compressed else ""
    )
    if single:
        return PayloadTooLarge(f"the message is {amount}; {limit}. Trim its properties or traits.")
    return PayloadTooLarge(
        f"the request body is {amount}; {limit}. Send fewer messages per request."
    )


async def read_body(
    scope: Scope, receive: Receive, cap: int, hold: BodyHold, *, single: bool = False
) -> bytes:
    """The decoded body, at most `cap` bytes after decompression (raises PayloadTooLarge),
    counted in `hold` as it arrives (raises Overloaded when the budget is full).

    `single` words the 413 for a one-message route, where the body is the message."""
    # Every Content-Encoding header counts (a second one, or a list, is another encoding).
    codings = b",".join(v for k, v in scope["headers"] if k == b"content-encoding")
    tokens = [t.strip().lower() for t in codings.split(b",") if t.strip()]
    encoding = tokens[0] if len(tokens) == 1 else (b"identity" if not tokens else codings)
    if encoding not in (b"identity", b"gzip", b"x-gzip"):
        raise UnsupportedEncoding(
            f"Content-Encoding {encoding.decode('latin-1')!r} is not supported; send the body "
            "uncompressed or with gzip."
        )
    gzipped = encoding != b"identity"
    wire_cap = cap + _GZIP_SLACK if gzipped else cap
    length = header(scope, b"content-length")
    if length is not None and length.isdigit() and int(length) > wire_cap:
        sent = f"{int(length):,} bytes" + (" compressed" if gzipped else "")
        raise _too_large(sent, cap, single, compressed=gzipped)
    chunks: list[bytes] = []
    size = 0
    more = True
    loop = asyncio.get_running_loop()
    started = loop.time()
    last = started + BODY_SECONDS
    try:
        async with asyncio.timeout(None) as deadline:
            while more:
                # The next bytes are due when the average since the head would fall below
                # the minimum rate (never before the grace period ends, never after the last
                # moment for the whole body).
                due = started + max(BODY_GRACE_SECONDS, size / MIN_BODY_RATE)
                deadline.reschedule(min(due, last))
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise InvalidMessage(
                        "the client closed the connection before sending the body."
                    )
                chunk: bytes = message.get("body", b"")
                size += len(chunk)
                if size > wire_cap:
                    over = f"more than {wire_cap:,} bytes" + (" compressed" if gzipped else "")
                    raise _too_large(over, cap, single, compressed=gzipped)
                hold.grow(len(chunk))
                chunks.append(chunk)
                more = message.get("more_body", False)
    except TimeoutError:
        if loop.time() >= last:
            why = f"did not arrive within {BODY_SECONDS:.0f} seconds"
        else:
            why = f"arrived slower than {MIN_BODY_RATE:,} bytes per second ({size:,} bytes so far)"
        raise InvalidMessage(
            f"the body {why}; send it whole, or in smaller requests.", "body_timeout"
        ) from None
    scope[BODY_READ] = True
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if not gzipped:
        return body
    inflated = gunzip(body, cap, single)
    hold.resize(len(inflated))
    return inflated


def gunzip(data: bytes, cap: int, single: bool = False) -> bytes:
    """Decompress a gzip body, refusing to produce more than `cap` bytes. Concatenated gzip
    members (RFC 1952) are all read, as `gzip -d` does; bytes after the last member that do
    not start another one are refused rather than dropped."""
    parts: list[bytes] = []
    size = 0
    rest = data
    while True:
        if len(parts) == MAX_GZIP_MEMBERS:
            raise InvalidMessage(
                f"the body holds more than {MAX_GZIP_MEMBERS} gzip members; compress it as one.",
                "invalid_gzip",
            )
        inflater = zlib.decompressobj(wbits=31)
        try:
            out = inflater.decompress(rest, cap + 1 - size)
        except zlib.error as err:
            raise InvalidMessage(
                f"the body is not valid gzip ({err}); compress it with gzip or drop "
                "the Content-Encoding header.",
                "invalid_gzip",
            ) from None
        size += len(out)
        if size > cap or inflater.unconsumed_tail:
            raise _too_large(f"more than {cap:,} bytes after decompression", cap, single)
        if not inflater.eof:
            raise InvalidMessage(
                "the gzip body is truncated; send the complete compressed body.", "invalid_gzip"
            )
        parts.append(out)
        rest = inflater.unused_data
        if not rest:
            break
        if not rest.startswith(b"\x1f\x8b"):
            raise InvalidMessage(
                f"{len(rest):,} bytes follow the gzip body; send only the compressed body.",
                "invalid_gzip",
            )
    return parts[0] if len(parts) == 1 else b"".join(parts)
