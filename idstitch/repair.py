"""Undoing what went wrong: deleting one identifier from a profile (Segment's Delete Profile
Identifier API) and unmerging a profile by an identifier that is junk for it.

Both are changes no message made: each runs alone in the store (no batch beside it), is
durable when it returns, and leaves an audit record (`operations`: what, on which profile,
who, when). An unmerge also puts the identifier on the stored block list, so that no later
message joins the parts again through it.
"""

from __future__ import annotations

import time
from typing import Any

from idstitch.core.identifiers import USERS, Identifier, parse_ref
from idstitch.core.rules import IdentityRules
from idstitch.core.split import Split, StoredMessage, split
from idstitch.errors import IdentifierNotFound, RepairRefused
from idstitch.reads import ProfileReads
from idstitch.storage.base import Store
from idstitch.storage.rewrite import Operation

# Segment's Delete Profile Identifier API deletes no group_id (an account's identifier).
UNDELETABLE = ("group_id",)


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 1000 or "\x00" in value:
        raise RepairRefused(
            f"`{name}` must be a non-empty string of at most 1,000 characters without NUL, not "
            f"{value!r:.80}."
        )
    return value


def delete_identifier(
    store: Store, reads: ProfileReads, ref: str, items: Any, actor: str
) -> dict[str, Any]:
    """Delete one identifier from the user profile `ref` (`user_id:...`), as Segment's API:
    `items` is the request's `delete_external_ids`, a list of one {"id", "type"}."""
    parsed = parse_ref(ref, USERS)
    if not isinstance(parsed, tuple) or parsed[1] != "user_id":
        raise RepairRefused(
            f"address the profile by its user_id (user_id:...), not {ref[:200]!r}: identifiers "
            "are deleted from known users only."
        )
    if not isinstance(items, list) or len(items) != 1 or not isinstance(items[0], dict):
        count = len(items) if isinstance(items, list) else "no"
        raise RepairRefused(
            f"send exactly one identifier per request in `delete_external_ids` (got {count}): "
            '{"delete_external_ids": [{"id": "...", "type": "..."}]}.'
        )
    type_ = _text(items[0].get("type"), "delete_external_ids[0].type")
    value = _text(items[0].get("id"), "delete_external_ids[0].id")
    if type_ in UNDELETABLE:
        raise RepairRefused(
            f"a {type_} cannot be deleted: it names an account, not an identifier of a user.",
            "unsupported_eid_type",
        )
    if (type_, value) == ("user_id", parsed[2]):
        raise RepairRefused(
            f"user_id:{value[:200]} is the identifier the profile is addressed by, and a profile "
            "keeps at least one user_id; address it by another user_id it holds, or delete "
            "another identifier."
        )
    row = reads.find(ref, USERS)
    held = {(r.type, r.id) for r in reads.external_ids(row)}
    if (type_, value) not in held:
        raise IdentifierNotFound(
            f"the profile {row.segment_id} does not hold {type_}:{value[:200]}; list what it "
            "holds with GET .../external_ids."
        )
    operation = Operation(
        "delete_identifier", row.segment_id, USERS, type_, value, actor, time.time()
    )
    if not store.remove_identifier(row.pid, USERS, type_, value, operation):
        # Moved on meanwhile (a merge or another delete): say what is true now.
        raise IdentifierNotFound(f"the profile {row.segment_id} no longer holds {type_}:{value}.")
    return {"segment_id": row.segment_id, "deleted": {"type": type_, "id": value}}


def parse_identifier(text: str, collection: str) -> Identifier:
    """`type:value` as an identifier of `collection` (RepairRefused when it is not one)."""
    parsed = parse_ref(text, collection) if ":" in text else text
    if not isinstance(parsed, tuple):
        raise RepairRefused(
            f"name the identifier as type:value (e.g. anonymous_id:kiosk-1), not {text[:200]!r}."
        )
    return Identifier.of(collection, parsed[1], parsed[2])


def unmerge(
    store: Store,
    reads: ProfileReads,
    rules: IdentityRules,
    ref: str,
    identifier: Identifier | dict[str, Any] | str,
    actor: str,
    collection: str | None = None,
) -> dict[str, Any]:
    """Split the profile `ref` by `identifier`, junk for it (a kiosk's cookie, a shared
    inbox): its messages are resolved again under the current rules with the identifier
    blocked, and it becomes the parts those messages form. The part holding its oldest
    message keeps its segment_id; each merged-away segment_id follows the message that
    created it. Returns the parts."""
    row = reads.find(ref, collection)
    collection = row.collection
    if isinstance(identifier, dict):
        type_ = _text(identifier.get("type"), "identifier.type")
        value = _text(identifier.get("id"), "identifier.id")
        junk = Identifier.of(collection, type_, value)
    elif isinstance(identifier, str):
        junk = parse_identifier(identifier, collection)
    else:
        junk = identifier
    held = {(r.type, r.id) for r in reads.external_ids(row)}
    if (junk.type, junk.value) not in held:
        raise IdentifierNotFound(
            f"the profile {row.segment_id} does not hold {junk.type}:{junk.value[:200]}; an "
            "unmerge names one of its own identifiers (GET .../external_ids lists them)."
        )

    def split_with(
        messages: list[StoredMessage],
        foreign: Any,
        blocked: set[int],
        deleted: list[tuple[int, str, str, str]],
    ) -> Split:
        done = split(messages, collection, rules, junk, foreign, blocked, deleted)
        if not done.parts:
            raise RepairRefused(
                f"without {junk.type}:{junk.value[:200]} none of the profile's messages resolves "
                "to anything: there is nothing to split. Delete the identifier instead, or block "
                "it in the config."
            )
        return done

    operation = Operation(
        "unmerge", row.segment_id, collection, junk.type, junk.value, actor, time.time()
    )
    rw = store.split_profile(row.pid, junk, split_with, operation)
    return {
        "segment_id": row.segment_id,
        "blocked": {"collection": collection, "type": junk.type, "id": junk.value},
        "parts": [
            {
                "segment_id": segment_id,
                "collection": collection,
                "external_ids": [{"type": t, "id": v} for t, v in ids],
            }
            for _, segment_id, ids in rw.parts
        ],
    }
