"""The Profile API's repairs, beside its reads (same token, same error shape):

- `POST /v1/spaces/{space}/collections/users/profiles/user_id:{id}/external_ids/delete`,
  Segment's Delete Profile Identifier API: `{"delete_external_ids": [{"id", "type"}]}`;
- `POST /v1/spaces/{space}/collections/{collection}/profiles/{ref}/unmerge`:
  `{"identifier": {"type", "id"}}`.

Both run in a thread (a repair reads and writes the store, under its exclusive lock).
"""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import Executor
from typing import Any
from urllib.parse import unquote_to_bytes

import msgspec

from idstitch.core.identifiers import USERS
from idstitch.engine import Engine
from idstitch.errors import RepairRefused
from idstitch.http.asgi import Receive, Scope, basic_user
from idstitch.http.body import BodyBudget, read_body
from idstitch.http.errors import NotFound
from idstitch.http.profile_api import COLLECTIONS, PREFIX

DELETE = ("external_ids", "delete")
UNMERGE = ("unmerge",)
# A repair's body names one identifier: a few kilobytes at most.
MAX_BODY = 64 * 1024
_body = msgspec.json.Decoder(dict[str, Any])


def matches(path: str) -> bool:
    return path.startswith(PREFIX) and (
        path.endswith("/external_ids/delete") or path.endswith("/unmerge")
    )


def actor(scope: Scope) -> str:
    """Who asked, for the audit record: the access token's fingerprint, never the token."""
    token = basic_user(scope) or ""  # checked before the handler runs
    return "access_token:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def _target(scope: Scope) -> tuple[str, str, str, tuple[str, ...]]:
    raw: bytes | None = scope.get("raw_path")
    path = raw.split(b"?", 1)[0] if raw is not None else scope["path"].encode()
    parts = [unquote_to_bytes(p).decode("utf-8", "replace") for p in path.split(b"/")]
    # "", "v1", "spaces", space, "collections", collection, "profiles", ref, action...
    action = tuple(parts[8:])
    if len(parts) < 9 or parts[4] != "collections" or parts[6] != "profiles" or not parts[7]:
        raise NotFound(
            "no route matches this path; the repairs are POST /v1/spaces/{space_id}/collections/"
            "users/profiles/user_id:{id}/external_ids/delete and POST .../profiles/{ref}/unmerge."
        )
    if parts[5] not in COLLECTIONS:
        raise NotFound(f"collection {parts[5]!r} does not exist; use users or accounts.")
    return parts[3], parts[5], parts[7], action


async def handle(
    engine: Engine,
    scope: Scope,
    receive: Receive,
    budget: BodyBudget,
    pool: Executor,
) -> tuple[str, dict[str, Any]]:
    """(route name, answer) for one repair request."""
    space, collection, ref, action = _target(scope)
    if space != engine.settings.space_id:
        raise NotFound(
            f"space {space!r} does not exist; this server's space is "
            f"{engine.settings.space_id!r} (space_id in the config)."
        )
    hold = budget.hold(scope, verified=True)
    try:
        raw = await read_body(scope, receive, MAX_BODY, hold, single=True)
    finally:
        hold.release()
    try:
        body = _body.decode(raw)
    except msgspec.DecodeError as err:
        raise RepairRefused(f"the body is not a JSON object ({err}); send JSON.") from None
    who = actor(scope)
    loop = asyncio.get_running_loop()
    if action == DELETE:
        if collection != USERS:
            raise RepairRefused(
                "identifiers are deleted from users only: use /collections/users/profiles/"
                "user_id:{id}/external_ids/delete."
            )
        items = body.get("delete_external_ids")
        answer = await loop.run_in_executor(
            pool, lambda: engine.delete_external_ids(ref, items, actor=who)
        )
        return "profiles.delete_external_ids", answer
    if action == UNMERGE:
        identifier = body.get("identifier")
        if not isinstance(identifier, dict):
            raise RepairRefused(
                'name the junk identifier: {"identifier": {"type": "anonymous_id", "id": "..."}}.'
            )
        answer = await loop.run_in_executor(
            pool, lambda: engine.unmerge(ref, identifier, actor=who, collection=collection)
        )
        return "profiles.unmerge", answer
    raise NotFound(
        f"no repair {'/'.join(action)!r}; use external_ids/delete or unmerge after the "
        "profile reference."
    )
