"""KSUIDs: 4-byte timestamp (seconds since 2014-05-13T16:53:20Z) + 16 random bytes, base-62.

The 27-character text form sorts by creation second, like Segment's own ids.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time

EPOCH = 1_400_000_000
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_PAIRS = [a + b for a in ALPHABET for b in ALPHABET]
_INDEX = {c: i for i, c in enumerate(ALPHABET)}
LENGTH = 27


class _RandomBytes:
    """os.urandom in chunks: one system call per 256 ids instead of one each (a system call
    in the writer thread lets other threads take the GIL). Emptied in a forked child, which
    must not reuse its parent's bytes."""

    CHUNK = 16 * 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chunk = b""
        self._at = 0

    def take16(self) -> bytes:
        with self._lock:
            at = self._at
            if at >= len(self._chunk):
                self._chunk, at = os.urandom(self.CHUNK), 0
            self._at = at + 16
            return self._chunk[at : at + 16]

    def forget(self) -> None:
        self._lock = threading.Lock()
        self._chunk, self._at = b"", 0


_random = _RandomBytes()
os.register_at_fork(after_in_child=_random.forget)


def ksuid(now: float | None = None) -> str:
    """A new KSUID in its 27-character text form."""
    return _text(int(time.time() if now is None else now), _random.take16())


def derived_ksuid(at: float, seed: bytes) -> str:
    """The KSUID of second `at` whose 16 payload bytes are a digest of `seed`: the same seed
    and second always give the same id."""
    return _text(int(at), hashlib.blake2b(seed, digest_size=16).digest())


def _text(unix_seconds: int, payload: bytes) -> str:
    number = (max(unix_seconds - EPOCH, 0) << 128) | int.from_bytes(payload, "big")
    chunks = []
    # Two base-62 digits per step: 14 steps cover 28 digits; the top one is always zero.
    for _ in range(14):
        number, rest = divmod(number, 3844)
        chunks.append(_PAIRS[rest])
    return "".join(reversed(chunks))[1:]


def timestamp_of(text: str) -> int:
    """The Unix second a KSUID was made in (raises ValueError for a malformed id)."""
    if len(text) != LENGTH:
        raise ValueError(f"a KSUID has {LENGTH} characters, got {len(text)}")
    number = 0
    for char in text:
        digit = _INDEX.get(char)
        if digit is None:
            raise ValueError(f"{char!r} is not a base-62 digit")
        number = number * 62 + digit
    return (number >> 128) + EPOCH


def is_ksuid(text: str) -> bool:
    return len(text) == LENGTH and all(c in _INDEX for c in text)


def segment_id(collection: str, now: float | None = None) -> str:
    """`use_` + a random KSUID for users, `acc_` + one for accounts."""
    return ("acc_" if collection == "accounts" else "use_") + ksuid(now)


def segment_id_for(collection: str, source_id: str, message_id: str, received_at: float) -> str:
    """The segment_id of the profile that message `message_id` of `source_id` creates in
    `collection`: the same whenever that message creates it (live traffic, an import of the
    same history, a rebuild), a different one for every other message (a 128-bit digest), and
    sorted by when the message was received, as Segment's ids sort by creation."""
    seed = "\x1f".join((collection, source_id, message_id)).encode("utf-8", "surrogatepass")
    return ("acc_" if collection == "accounts" else "use_") + derived_ksuid(received_at, seed)
