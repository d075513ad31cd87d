"""The baseline: a naive in-memory union-find over the same messages.

`union_find` decodes each message with msgspec (identity fields only), takes userId, anonymousId,
previousId, the e-mail and the device id, and unions them all: no blocked values, no limits,
no storage. It is what "just connect the ids" costs, and it over-merges: shared computers
and junk ids glue different people into one component.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec


class _Traits(msgspec.Struct):
    email: Any = None


class _Device(msgspec.Struct):
    id: Any = None


class _Context(msgspec.Struct):
    traits: _Traits | None = None
    device: _Device | None = None


class _Message(msgspec.Struct):
    userId: Any = None
    anonymousId: Any = None
    previousId: Any = None
    traits: _Traits | None = None
    context: _Context | None = None


@dataclass
class UnionFindRun:
    rate: float
    identifiers: int
    components: int
    largest: int


def union_find(lines: Iterable[bytes], count: int | None = None) -> UnionFindRun:
    """Decode each message (msgspec, identity fields only), take userId, anonymousId,
    previousId, e-mail and device id, and union them all: no rules, no limits, no storage."""
    decode = msgspec.json.Decoder(_Message).decode
    index: dict[str, int] = {}
    parent: list[int] = []
    size: list[int] = []
    events = 0
    started = time.perf_counter()
    for line in lines:
        if not line.strip():
            continue
        events += 1
        m = decode(line)
        ids = []
        if m.userId is not None:
            ids.append("u" + str(m.userId))
        if m.anonymousId is not None:
            ids.append("a" + str(m.anonymousId))
        if m.previousId is not None:
            ids.append("p" + str(m.previousId))
        if m.traits is not None and m.traits.email is not None:
            ids.append("e" + str(m.traits.email))
        c = m.context
        if c is not None:
            if c.traits is not None and c.traits.email is not None:
                ids.append("e" + str(c.traits.email))
            if c.device is not None and c.device.id is not None:
                ids.append("d" + str(c.device.id))
        first = -1
        for key in ids:
            node = index.get(key)
            if node is None:
                node = len(parent)
                index[key] = node
                parent.append(node)
                size.append(1)
            while parent[node] != node:  # find, with path halving
                parent[node] = parent[parent[node]]
                node = parent[node]
            if first < 0:
                first = node
            elif node != first:  # union by size
                if size[node] > size[first]:
                    node, first = first, node
                parent[node] = first
                size[first] += size[node]
    seconds = time.perf_counter() - started
    roots = [i for i, p in enumerate(parent) if p == i]
    return UnionFindRun(
        rate=(count or events) / seconds,
        identifiers=len(parent),
        components=len(roots),
        largest=max((size[r] for r in roots), default=0),
    )


def stdlib_stitch(lines: Iterable[bytes]) -> UnionFindRun:
    """What a user would write in an afternoon: `json.loads` per line, the same identifiers,
    a dict-based union-find. No rules, nothing durable."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    events = 0
    started = time.perf_counter()
    for line in lines:
        if not line.strip():
            continue
        events += 1
        m = json.loads(line)
        context = m.get("context") or {}
        ids = [
            prefix + str(value)
            for prefix, value in (
                ("u", m.get("userId")),
                ("a", m.get("anonymousId")),
                ("p", m.get("previousId")),
                ("e", (m.get("traits") or {}).get("email")),
                ("e", (context.get("traits") or {}).get("email")),
                ("d", (context.get("device") or {}).get("id")),
            )
            if value is not None
        ]
        for key in ids:
            parent.setdefault(key, key)
        for key in ids[1:]:
            a, b = find(ids[0]), find(key)
            if a != b:
                parent[b] = a
    seconds = time.perf_counter() - started
    roots = [k for k in parent if parent[k] == k]
    sizes: dict[str, int] = {}
    for k in parent:
        root = find(k)
        sizes[root] = sizes.get(root, 0) + 1
    return UnionFindRun(
        rate=events / seconds,
        identifiers=len(parent),
        components=len(roots),
        largest=max(sizes.values(), default=0),
    )


def file_lines(path: Path) -> Iterable[bytes]:
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        yield from fh
