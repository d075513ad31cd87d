"""The SQLite store's two child processes: the committer and the indexer.

Each runs a module of this package with pipes of its own: the committer as a plain script
(`python -I -S`, the standard library only: it starts in milliseconds), the indexer as a
module. Both ignore SIGINT and
SIGTERM and run in a session of their own: the engine decides when they end (a terminal's
Ctrl-C reaches the engine, which drains, then stops them), never a signal sent to a whole
process group in the middle of a commit.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys

from idstitch.storage.pipe import Pipe


def widen(fd: int) -> None:
    """Give a pipe room for a whole batch's rows (about 1 KB a message): with the default
    64 KiB, sending a batch blocks the writer thread while the child reads it piece by piece.
    Linux only; elsewhere, or past the system's cap, the default."""
    setsize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsize is None:
        return
    for size in (4 << 20, 1 << 20):
        try:
            fcntl.fcntl(fd, setsize, size)
            return
        except OSError:
            continue


class Child:
    """A child process, the pipe to it and, when it answers, the pipe from it."""

    def __init__(self, command: list[str], *, replies: bool, keep_fd: int | None = None):
        from_parent, to_child = os.pipe()
        widen(to_child)
        passed = [from_parent]
        from_child = to_parent = -1
        if replies:
            from_child, to_parent = os.pipe()
            passed.append(to_parent)
        if keep_fd is not None:
            # The child inherits the writer lock too: the lock lasts as long as either
            # process, so a new engine cannot load the graph while an old child of a killed
            # engine still writes.
            passed.append(keep_fd)
        fds = [str(from_parent)] + ([str(to_parent)] if replies else [])
        try:
            self.process = subprocess.Popen(
                [sys.executable, *command, *fds],
                pass_fds=tuple(passed),
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        finally:
            os.close(from_parent)
            if replies:
                os.close(to_parent)
        self.pipe = Pipe(to_child)
        self.replies = Pipe(from_child) if replies else None
        self.gone = False  # its replies ended: nothing sent to it will be answered

    def running(self) -> bool:
        return not self.gone and self.process.poll() is None

    def close_pipes(self) -> None:
        with contextlib.suppress(OSError):
            self.pipe.close()
        if self.replies is not None:
            with contextlib.suppress(OSError):
                self.replies.close()
