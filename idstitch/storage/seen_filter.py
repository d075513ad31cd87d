"""Which messages may already be stored: a growing Bloom filter over message hashes.

Deduplication is all-time (SPEC: "however long ago it came"), so the store must answer "was
(source, messageId) stored before?" for every message. Almost every answer is "no", and a
Bloom filter gives that answer from memory, without a SQL probe per message. A "maybe" goes to
the table as before, so the filter only saves work: it never decides that a message is a
duplicate. Two bytes per stored message; about 0.5 % of new messages get a "maybe" per layer.

The filter grows by stacking: when the newest layer holds its capacity, a layer four times as
large is added. A lookup asks every layer; there are few (log4 of the growth).
"""

from __future__ import annotations

BITS_PER_ENTRY = 16
GROWTH = 4


class _Layer:
    __slots__ = ("bits", "capacity", "count", "size")

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.size = capacity * BITS_PER_ENTRY
        self.bits = bytearray((self.size + 7) // 8)
        self.count = 0


class SeenFilter:
    def __init__(self, capacity: int = 1 << 20):
        self._layers = [_Layer(capacity)]

    # Three probes by double hashing from the two 32-bit halves of the message hash (CRC-32 and
    # Adler-32, see rows.stable_hash); written out because this runs for every message.
    def add(self, message_hash: int) -> None:
        layer = self._layers[-1]
        if layer.count >= layer.capacity:
            layer = _Layer(layer.capacity * GROWTH)
            self._layers.append(layer)
        h = message_hash & 0xFFFF_FFFF_FFFF_FFFF
        a, b, size, bits = h >> 32, (h & 0xFFFF_FFFF) | 1, layer.size, layer.bits
        p = a % size
        bits[p >> 3] |= 1 << (p & 7)
        p = (a + b) % size
        bits[p >> 3] |= 1 << (p & 7)
        p = (a + 2 * b) % size
        bits[p >> 3] |= 1 << (p & 7)
        layer.count += 1

    def may_contain(self, message_hash: int) -> bool:
        h = message_hash & 0xFFFF_FFFF_FFFF_FFFF
        a, b = h >> 32, (h & 0xFFFF_FFFF) | 1
        for layer in self._layers:
            size, bits = layer.size, layer.bits
            p = a % size
            if not bits[p >> 3] & (1 << (p & 7)):
                continue
            p = (a + b) % size
            if not bits[p >> 3] & (1 << (p & 7)):
                continue
            p = (a + 2 * b) % size
            if bits[p >> 3] & (1 << (p & 7)):
                return True
        return False

    def __len__(self) -> int:
        return sum(layer.count for layer in self._layers)

    @property
    def nbytes(self) -> int:
        return sum(len(layer.bits) for layer in self._layers)
