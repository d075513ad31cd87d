"""The identity rules a store's history was last resolved under: a rebuild records them
(`idstitch rebuild`), and a config whose rules differ is told so (`idstitch serve`,
`idstitch doctor`)."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import msgspec

from idstitch.core.rules import BlockList, IdentityRules
from idstitch.storage.base import Store


def _listed(blocklist: BlockList) -> list[str]:
    return sorted(blocklist.exact) + [f"/{p.pattern}/" for p in blocklist.patterns]


def rules_record(rules: IdentityRules) -> dict[str, Any]:
    """The identity rules as plain data: what a rebuild records as the store's rules."""
    return {
        "preset": rules.preset,
        "priority": list(rules.priority),
        "limits": {t: {"max": lim.max, "window": lim.window} for t, lim in rules.limits.items()},
        "blocked_values": _listed(rules.blocked),
        "blocked_values_by_type": {t: _listed(b) for t, b in rules.blocked_by_type.items()},
        "sources": {sid: vars(flags) for sid, flags in rules.sources.items()},
        "custom_types": list(rules.custom_types),
        "max_merges": rules.max_merges,
        "max_identifiers": rules.max_identifiers,
        "generic_after": rules.generic_after,
    }


def fingerprint(recorded: dict[str, Any]) -> str:
    return hashlib.sha256(msgspec.json.encode(recorded, order="sorted")).hexdigest()[:16]


def store_rules(store: Store) -> dict[str, Any] | None:
    """The rules of the store's last rebuild (its `rules` and `fingerprint`, when, by whom),
    or None if it was never rebuilt."""
    for op in reversed(store.operations()):
        if op.kind == "rebuild":
            detail = msgspec.json.decode(op.detail)
            return {
                "rules": detail.get("rules"),
                "fingerprint": detail.get("fingerprint"),
                "rebuilt_at": op.created_at,
                "actor": op.actor,
            }
    return None


def rules_drift(store: Store, rules: IdentityRules) -> str | None:
    """A sentence when `rules` are not the rules the store's history was last rebuilt
    under, or None."""
    recorded = store_rules(store)
    if recorded is None or recorded["fingerprint"] == fingerprint(rules_record(rules)):
        return None
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(recorded["rebuilt_at"]))
    return (
        f"the config's identity rules differ from the ones the store was rebuilt under on "
        f"{when} (rules {recorded['fingerprint']}); they apply to new messages only. "
        "`idstitch rebuild --dry-run` shows what they would change in the history, "
        "`idstitch rebuild` applies them to it."
    )
