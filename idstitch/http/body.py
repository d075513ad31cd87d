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
# A body must arrive within this long of the request head, or one client could hold a
# request (and its memory) open forever by sending a declared body byte by byte.
BODY_SECONDS = 60.0
# Concatenated gzip members a body may hold: clients send one; each costs a decompressor.
MAX_GZIP_MEMBERS = 64
# The request bodies the server holds at once, counted at their largest (the cap of their
# route, or their declared length when smaller and not compressed). Past it a request is
# answered 429 at once, before its body is read: a burst of clients cannot run the server
# out of memory, and they are told to retry while it is still cheap to tell them.
MAX_BODY_BYTES_IN_FLIGHT = 64 * 1024 * 1024


class BodyBudget:
    """Bytes of request bodies in flight (the event loop's own counter: no lock)."""

    def __init__(self, total: int = MAX_BODY_BYTES_IN_FLIGHT) -> None:
        self.total = total
        self.used = 0

    def reserve(self, scope: Scope, cap: int) -> int:
        """Reserve room for this request's body (raises Overloaded); release it when done."""
        amount = cap
        length = header(scope, b"content-length")
        if length is not None and length.isdigit() and header(scope, b"content-encoding") is None:
            amount = min(int(length), cap)
        if self.used and self.used + amount > self.total:
            raise Overloaded(
                f"{self.used:,} bytes of request bodies are being read or resolved; retry shortly."
            )
        self.used += amount
        return amount

    def release(self, amount: int) -> None:
        self.used -= amount


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


async def read_body(scope: Scope, receive: Receive, cap: int, *, single: bool = False) -> bytes:
    """The decoded body, at most `cap` bytes after decompression (raises PayloadTooLarge).

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
    try:
        async with asyncio.timeout(BODY_SECONDS):
            while more:
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
                chunks.append(chunk)
                more = message.get("more_body", False)
    except TimeoutError:
        raise InvalidMessage(
            f"the body did not arrive within {BODY_SECONDS:.0f} seconds; send it whole, or "
            "in smaller requests.",
            "body_timeout",
        ) from None
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return gunzip(body, cap, single) if gzipped else body


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
