"""Building a store's graph again beside it, then putting the new one in its place
(`idstitch rebuild`).

The new graph is built in a store of its own (SQLite: a file beside the store's; PostgreSQL:
a schema beside its schema), through the ordinary write path. Until the swap the old graph
is untouched and serves; a crash before it leaves the new one half built, and the next
rebuild deletes it. The swap itself is one step the old store survives a crash in.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator

from idstitch.storage.base import Store


class Rebuilding(ABC):
    """The store being rebuilt (`source`, for reads) and where its new graph is built
    (`open_target`). Use as a context manager: what was not swapped in is deleted on exit."""

    source: Store
    swapped = False

    @abstractmethod
    def open_target(self) -> Store:
        """The empty store the new graph is built in."""

    @abstractmethod
    def alone(self) -> contextlib.AbstractContextManager[None]:
        """No write reaches the source inside: the last messages are copied and the swap
        made there."""

    @abstractmethod
    def swap(self) -> None:
        """Put the target in the source's place (inside `alone`, with the target closed)."""

    @abstractmethod
    def discard(self) -> None:
        """Delete the target, if it is there."""

    @abstractmethod
    def release(self) -> None:
        """Close the source and give up what `alone` or the constructor took."""

    def __enter__(self) -> Rebuilding:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if not self.swapped:
                self.discard()
        finally:
            self.release()


@contextlib.contextmanager
def nothing() -> Iterator[None]:
    yield
