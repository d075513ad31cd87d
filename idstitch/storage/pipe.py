"""Messages over an OS pipe between the engine and its SQLite child processes.

Each message is a 4-byte big-endian length and that many bytes (a pickle, for `send`/`recv`).
Written for the committer, which starts as a plain script on every engine start: this needs
`os`, `pickle`, `select` and `struct` only, where `multiprocessing.connection` costs the child
about 15 ms of imports. Nothing is read ahead of the message asked for, so `poll` on the file
descriptor is exact.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
from typing import Any

_HEADER = struct.Struct("!I")
_SMALL = 64 * 1024  # up to this size, header and body go in one write


class Pipe:
    """One end of a pipe: readable or writable, as the file descriptor was opened."""

    def __init__(self, fd: int):
        self.fd = fd
        self.closed = False

    # ---- writing ------------------------------------------------------------------------------
    def send(self, obj: Any) -> None:
        self.send_bytes(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))

    def send_bytes(self, data: bytes) -> None:
        if len(data) > 0xFFFFFFFF:
            raise ValueError(f"a message of {len(data)} bytes is over the 4 GiB a pipe carries")
        header = _HEADER.pack(len(data))
        if len(data) <= _SMALL:
            self._write_all(header + data)
        else:  # no copy of a large body just to put 4 bytes in front of it
            self._write_all(header)
            self._write_all(data)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    # ---- reading ------------------------------------------------------------------------------
    def recv(self) -> Any:
        return pickle.loads(self.recv_bytes())

    def recv_bytes(self) -> bytes:
        """The next message; EOFError when the other end closed the pipe."""
        (size,) = _HEADER.unpack(self._read_exactly(_HEADER.size))
        return self._read_exactly(size)

    def _read_exactly(self, size: int) -> bytes:
        first = os.read(self.fd, size)
        if len(first) == size:
            return first
        chunks = [first]
        got = len(first)
        while True:
            if not chunks[-1]:
                raise EOFError("the other end of the pipe is closed")
            if got == size:
                return b"".join(chunks)
            chunk = os.read(self.fd, size - got)
            chunks.append(chunk)
            got += len(chunk)

    def poll(self, timeout: float = 0.0) -> bool:
        """True when a message (or the end of the pipe) is there to read within `timeout`."""
        # poll(2), not select(2): a descriptor numbered past 1024 (a busy server) is fine.
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)
