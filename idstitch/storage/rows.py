"""Turning a batch of plans into table rows, the same way for every SQL store."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from idstitch.core.changes import changes_of
from idstitch.core.graph import Graph
from idstitch.core.plan import Plan

_json = msgspec.json.Encoder()


def stable_hash(text: str) -> int:
    """A signed 64-bit hash that is the same in every process (Python's `hash` is not).

    It only narrows index lookups: every hit is compared on the full value, so a collision
    costs a row read, never a wrong answer. CRC-32 and Adler-32 are both C-fast.
    """
    data = text.encode()
    return ((zlib.crc32(data) << 32) | zlib.adler32(data)) - (1 << 63)


def message_hash(source_id: str, message_id: str) -> int:
    return stable_hash(source_id + "\x1f" + message_id)


def identifier_hash(collection: str, type_: str, value: str) -> int:
    return stable_hash(collection + "\x1f" + type_ + "\x1f" + value)


@dataclass
class BatchRows:
    """Everything one micro-batch writes, in the order it must be written."""

    events: list[tuple[Any, ...]] = field(default_factory=list)
    profiles: list[tuple[Any, ...]] = field(default_factory=list)
    repoint: list[tuple[int, int]] = field(default_factory=list)  # (into, from) in order
    merge_counts: list[tuple[int, int]] = field(default_factory=list)  # (merges, pid)
    merges: list[tuple[Any, ...]] = field(default_factory=list)
    identifiers: list[tuple[Any, ...]] = field(default_factory=list)
    traits: list[tuple[Any, ...]] = field(default_factory=list)
    links: list[tuple[Any, ...]] = field(default_factory=list)
    violations: list[tuple[Any, ...]] = field(default_factory=list)
    message_keys: list[tuple[str, str]] = field(default_factory=list)  # (source, message id)
    outbox: list[tuple[Any, ...]] = field(default_factory=list)


def rows_from_plans(
    plans: list[Plan],
    graph: Graph,
    seq: int,
    hashes: Mapping[tuple[str, str], int] | None = None,
    *,
    traits: bool = True,
    changes: bool = False,
) -> tuple[BatchRows, int]:
    """Rows for `plans`, numbering events from `seq`; returns the rows and the next seq.
    `hashes` holds message hashes the store already computed, by (source, message id);
    `traits=False` leaves out the trait rows (a store that derives them from the log);
    `changes=True` adds the change feed's rows (`outbox`, for webhooks).

    Column orders:
      events      (seq, msg_hash, source_id, message_id, type, event, timestamp, received_at,
                   profile_id, account_id, reason, external_ids, body)
      profiles    (id, segment_id, collection, canonical_id, created_at, first_message_id,
                   first_source_id)
      merges      (from_id, into_id, message_id, source_id, timestamp, rule)
      identifiers (key_hash, collection, type, value, profile_id, source_id, first_message_id,
                   created_at)
      traits      (profile_id, key, value-json-or-None, timestamp, seq, source_id)
      links       (user_id, account_id, source_id, created_at)
      violations  (source_id, message_id, collection, type, value, rule, detail, timestamp,
                   profile_id, other_profile_id)
      outbox      (segment_id, changes JSON, created_at)
    """
    rows = BatchRows()
    targets: set[int] = set()
    for plan in plans:
        if plan.duplicate:
            continue
        source, mid, ts = plan.source_id, plan.message_id, plan.timestamp
        rows.message_keys.append((source, mid))
        users, accounts = plan.users, plan.accounts
        user_pid = users.pid if users is not None and users.outcome != "unresolved" else None
        account_pid = (
            accounts.pid if accounts is not None and accounts.outcome != "unresolved" else None
        )
        promoted: list[tuple[str, str, str]] = []
        for side in (users, accounts):
            if side is None or side.pid is None or side.outcome == "unresolved":
                continue
            pid, coll = side.pid, side.collection
            promoted.extend((coll, t, v) for t, v in side.identifiers)
            if side.created:
                rows.profiles.append(
                    (pid, side.segment_id, coll, pid, plan.received_at, mid, source)
                )
            for other, _ in side.merged:
                rows.repoint.append((pid, other))
                rows.merges.append((other, pid, mid, source, ts, side.merge_rule))
                targets.add(pid)
            rows.identifiers.extend(
                (identifier_hash(coll, t, v), coll, t, v, pid, source, mid, ts)
                for t, v in side.added
            )
        reason = None
        if user_pid is None and account_pid is None:
            reason = (users.reason if users is not None else None) or "no usable identifiers"
        msg_hash = hashes.get((source, mid)) if hashes is not None else None
        if msg_hash is None:
            msg_hash = message_hash(source, mid)
        rows.events.append(
            (
                seq,
                msg_hash,
                source,
                mid,
                plan.type,
                None if plan.event is None else stored_text(plan.event),
                ts,
                plan.received_at,
                user_pid,
                account_pid,
                reason,
                _json.encode(promoted),
                plan.raw,
            )
        )
        owner = user_pid if plan.type == "identify" else account_pid
        if traits and plan.traits and owner is not None:
            for key, value in plan.traits.items():
                encoded = None if value is None else _json.encode(value).decode()
                rows.traits.append((owner, key, encoded, ts, seq, source))
        if user_pid is not None and account_pid is not None:
            rows.links.append((user_pid, account_pid, source, plan.received_at))
        rows.violations.extend(
            (
                source,
                mid,
                v.collection,
                v.type,
                v.value,
                v.rule,
                v.detail,
                ts,
                account_pid if v.collection == "accounts" else user_pid,
                v.other_pid,
            )
            for v in plan.all_violations()
        )
        if changes:
            made = changes_of(plan)
            if made:
                rows.outbox.append((made[0]["segment_id"], _json.encode(made), plan.received_at))
        seq += 1
    for pid in targets:
        state = graph.profiles.get(pid)
        if state is not None:
            rows.merge_counts.append((state.merges, pid))
    return rows, seq


def stored_text(name: str) -> str:
    """An event name as every store keeps it: a NUL, which PostgreSQL text cannot hold, as
    U+FFFD. The event name is the only text column a NUL reaches: identifier values, trait
    keys and message ids holding one are refused, violations show it escaped, and the
    stored body keeps the message as sent."""
    return name.replace("\x00", "\ufffd") if "\x00" in name else name


def stored_names(names: frozenset[str]) -> list[str]:
    """Event names to filter on, as `stored_text` keeps them, in order."""
    return sorted(map(stored_text, names))
