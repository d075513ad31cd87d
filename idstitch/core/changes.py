"""What one message changed in the graph, as the change feed tells it (`[[webhooks]]`).

Three kinds, named by the `events` a webhook subscribes to:
- merge: `profile.merged`, profiles merged into the one the message resolved to (an
  unmerge sends `profile.unmerged`, with the parts it made);
- identifier: `identifiers.added`, identifiers the message attached (a deletion by the
  Profile API sends `identifiers.removed`);
- traits: `traits.updated`, the traits an identify (user) or group (account) call set.
"""

from __future__ import annotations

from typing import Any

import msgspec

from idstitch.core.plan import Plan

KIND_OF = {
    "profile.merged": "merge",
    "profile.unmerged": "merge",
    "identifiers.added": "identifier",
    "identifiers.removed": "identifier",
    "traits.updated": "traits",
}


def changes_of(plan: Plan) -> list[dict[str, Any]]:
    """The changes `plan` makes, in the order a receiver should apply them: merges first
    (the later ones name the surviving profile)."""
    out: list[dict[str, Any]] = []
    origin = {
        "message_id": plan.message_id,
        "source_id": plan.source_id,
        "message_type": plan.type,
        "timestamp": plan.timestamp,
    }
    for side in (plan.users, plan.accounts):
        if side is None or side.segment_id is None or side.outcome == "unresolved":
            continue
        base = {"collection": side.collection, "segment_id": side.segment_id}
        if side.merged:
            merged = [segment_id for _, segment_id in side.merged]
            out.append({"type": "profile.merged", **base, "merged_segment_ids": merged, **origin})
        if side.added:
            ids = [{"type": t, "id": v} for t, v in side.added]
            out.append({"type": "identifiers.added", **base, "identifiers": ids, **origin})
        owner = "users" if plan.type == "identify" else "accounts"
        if plan.traits and side.collection == owner:
            out.append({"type": "traits.updated", **base, "traits": plan.traits, **origin})
    return out


def removal(collection: str, segment_id: str, type_: str, value: str, at: float) -> bytes:
    """The change feed's row for an identifier deleted from a profile (the Profile API)."""
    change = {
        "type": "identifiers.removed",
        "collection": collection,
        "segment_id": segment_id,
        "identifiers": [{"type": type_, "id": value}],
        "timestamp": at,
    }
    return msgspec.json.encode([change])


def unmerged(
    collection: str,
    segment_id: str,
    parts: list[tuple[int, str, list[tuple[str, str]]]],
    blocked: tuple[str, str],
    at: float,
) -> bytes:
    """The change feed's row for an unmerge: the profile `segment_id` is now `parts`, each
    with its identifiers, and `blocked` links nothing any more."""
    change = {
        "type": "profile.unmerged",
        "collection": collection,
        "segment_id": segment_id,
        "parts": [
            {"segment_id": sid, "identifiers": [{"type": t, "id": v} for t, v in ids]}
            for _, sid, ids in parts
        ],
        "blocked": {"type": blocked[0], "id": blocked[1]},
        "timestamp": at,
    }
    return msgspec.json.encode([change])
