"""The identity core without a store: what the engine runs between preparing messages and the
store's transaction (`resolve_messages` on a `Graph`), driven directly. A case costs
microseconds instead of an engine and a database, so the rule cases run here, and a smaller
set runs end to end on every store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from idstitch.config import settings_from
from idstitch.core.graph import Graph, ProfileState
from idstitch.core.identifiers import ACCOUNTS, USERS, Extractor, key_of, parse_ref, slot_of
from idstitch.core.ksuid import segment_id_for
from idstitch.core.messages import encode, prepare
from idstitch.core.planner import resolve_messages
from idstitch.engine import Resolution
from idstitch.errors import ProfileNotFound
from tests.conftest import segment_unless_named


class Core:
    """`ingest`, `ingest_batch` and `profile` as the engine offers them, on the core alone."""

    def __init__(self, config: dict[str, Any] | None = None):
        self.rules = settings_from(segment_unless_named(config)).rules
        self.extractor = Extractor(self.rules)
        self.graph = Graph()
        self.seen: dict[str, set[str]] = {}
        # Every identifier a plan attached, by graph slot (the graph keeps only the slots).
        self.attached: dict[int, tuple[str, str, str]] = {}
        # Every segment_id a profile ever had -> its pid (merged-away ones too, as the
        # engine's merge history resolves them).
        self.pids: dict[str, int] = {}
        self.received_at = 1_800_000_000.0

    def ingest(self, message: dict[str, Any] | str, *, source: str = "default") -> Resolution:
        [result] = self.ingest_batch([message], source=source)
        return result

    def ingest_batch(
        self, messages: list[dict[str, Any] | str], *, source: str = "default"
    ) -> list[Resolution]:
        items = []
        for message in messages:
            self.received_at += 1
            raw = message.encode() if isinstance(message, str) else encode(message)
            prepared = prepare(raw, received_at=self.received_at)
            items.append((prepared, self.extractor.extract(prepared.message, prepared.type)))
        seen = self.seen.setdefault(source, set())
        plans = resolve_messages(items, source, self.graph, self.rules, seen, segment_id_for)
        for plan in plans:
            for side in (plan.users, plan.accounts):
                if side is not None:
                    self.pids.update((sid, pid) for pid, sid in side.merged)
        self.pids.update((state.segment_id, pid) for pid, state in self.graph.profiles.items())
        for plan in plans:
            for side, collection in ((plan.users, USERS), (plan.accounts, ACCOUNTS)):
                for type_, value in side.added if side is not None else ():
                    slot = slot_of(key_of(collection, type_, value))
                    self.attached[slot] = (collection, type_, value)
        return [Resolution.of(plan) for plan in plans]

    def profile(self, ref: str) -> dict[str, Any]:
        """The profile's segment_id and external ids, in the shape `Engine.profile` gives."""
        state = self._find(ref)
        held = [
            {"collection": c, "type": t, "id": v}
            for slot, (c, t, v) in self.attached.items()
            if self.graph.owner(slot) is state
        ]
        collection = ACCOUNTS if state.segment_id.startswith("acc_") else USERS
        return {"segment_id": state.segment_id, "collection": collection, "external_ids": held}

    def _find(self, ref: str) -> ProfileState:
        parsed = parse_ref(ref)
        if isinstance(parsed, str):  # a segment_id
            if parsed in self.pids:
                return self.graph.profiles[self.graph.find(self.pids[parsed])]
        else:
            collection, type_, value = parsed
            for coll in (collection, ACCOUNTS) if collection == USERS else (collection,):
                state = self.graph.owner(slot_of(key_of(coll, type_, value)))
                if state is not None:
                    return state
        raise ProfileNotFound(f"no profile matches {ref!r}.")


MakeCore = Callable[..., Core]
