"""The Profile API: `GET /v1/spaces/{space}/collections/{users|accounts}/profiles/{ref}/{resource}`.

Each resource renders from `idstitch.profiles` (the functions the CLI and the Python API
use) and pages with keyset cursors (see `paging`). `cursor.url` always names the profile
by its canonical segment_id, whichever reference found it. A cursor is bound to the resource
and the profile whose page returned it; one used elsewhere is a 400.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

from idstitch import explain, profiles
from idstitch.checks import same_secret
from idstitch.config import Settings
from idstitch.core.identifiers import ACCOUNTS, USERS
from idstitch.errors import AuthenticationError
from idstitch.http.asgi import Scope, basic_user
from idstitch.http.errors import NotFound, ParameterError
from idstitch.http.paging import (
    RESOURCES,
    Options,
    decode_cursor,
    encode_cursor,
    options,
    profile_tag,
)
from idstitch.reads import ProfileReads
from idstitch.storage.base import ProfileRow

PREFIX = "/v1/spaces/"
COLLECTIONS = (USERS, ACCOUNTS)
ROUTE_HELP = (
    "the Profile API path is /v1/spaces/{space_id}/collections/{users|accounts}/profiles/"
    "{ref}/{traits|external_ids|events|metadata|links|violations|explain}"
)


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed Profile API request: which space, collection, reference and resource."""

    space: str
    collection: str
    ref: str
    resource: str


def parse_path(scope: Scope) -> Target:
    """Split the raw path, so an encoded `/` (`%2F`) inside a reference stays in it."""
    raw: bytes | None = scope.get("raw_path")
    path = raw.split(b"?", 1)[0] if raw is not None else scope["path"].encode()
    parts = [unquote_to_bytes(part).decode("utf-8", "replace") for part in path.split(b"/")]
    # "", "v1", "spaces", space, "collections", collection, "profiles", ref, resource
    if (
        len(parts) != 9
        or parts[1:3] != ["v1", "spaces"]
        or parts[4] != "collections"
        or (parts[6] != "profiles")
    ):
        raise NotFound(f"no route matches this path; {ROUTE_HELP}.")
    space, collection, ref, resource = (parts[i] for i in (3, 5, 7, 8))
    if resource not in RESOURCES:
        raise NotFound(
            f"{resource!r} is not a profile resource; use one of {', '.join(RESOURCES)}."
        )
    if collection not in COLLECTIONS:
        raise NotFound(f"collection {collection!r} does not exist; use users or accounts.")
    if not ref:
        raise NotFound(f"the profile reference is empty; {ROUTE_HELP}.")
    return Target(space, collection, ref, resource)


def authenticate(settings: Settings, scope: Scope) -> None:
    try:
        token = basic_user(scope)
    except ValueError as err:
        raise AuthenticationError(
            f"{err}; send `Authorization: Basic base64(token + ':')`."
        ) from None
    if not token:
        raise AuthenticationError(
            "no access token: send it as the HTTP Basic user name with an empty password "
            "(curl -u TOKEN:)."
        )
    if not settings.access_tokens:
        raise AuthenticationError(
            "no access tokens are configured; add [[access_tokens]] to the config."
        )
    # Compare with every token so the time taken does not reveal which one matched.
    matched = False
    for candidate in settings.access_tokens:
        matched |= same_secret(candidate, token)
    if not matched:
        raise AuthenticationError(
            "this access token is not one of the server's; use a token from [[access_tokens]] "
            "in the config."
        )


def _cursor(url: str, has_more: bool, next_: str) -> dict[str, Any]:
    return {"url": url, "has_more": has_more, "next": next_}


def _position(
    reads: ProfileReads, row: ProfileRow, o: Options, resource: str, kinds: tuple[type, ...]
) -> tuple[Any, ...] | None:
    """The position in `o.next`, refused unless it is a cursor of this resource and profile.

    A cursor names its profile by a tag of the canonical segment_id when it was issued; after
    a merge that profile may be merged away, so the tags of `merged_from` match too (looked
    up only when the tag differs), and paging carries on across merges."""
    cursor = decode_cursor(o.next, resource, kinds)
    if cursor is None:
        return None
    tag, position = cursor
    if tag != profile_tag(row.segment_id) and tag not in {
        profile_tag(m.from_segment_id) for m in reads.merges(row)
    }:
        raise ParameterError(
            "The `next` cursor belongs to another profile; pass a cursor only to the profile "
            "whose page returned it, or start without `next`."
        )
    return position


def _next(row: ProfileRow, resource: str, position: list[Any]) -> str:
    return encode_cursor(resource, profile_tag(row.segment_id), position)


def _traits(reads: ProfileReads, row: ProfileRow, o: Options, url: str) -> dict[str, Any]:
    items: list[tuple[str, Any]] = []
    if o.trait_class is None:  # no audiences or computed traits are made here: none to read
        found = reads.traits(row, o.verbose, start=o.next, limit=o.limit + 1, keys=o.include)
        items = list(found.items())
    page = items[: o.limit]
    has_more = len(items) > o.limit
    cursor = _cursor(url, has_more, items[o.limit][0] if has_more else "")
    cursor["limit"] = o.limit
    return {"traits": dict(page), "cursor": cursor}


def _external_ids(reads: ProfileReads, row: ProfileRow, o: Options, url: str) -> dict[str, Any]:
    after = _position(reads, row, o, "external_ids", (float, str, str))
    rows = sorted(reads.external_ids(row), key=lambda r: (r.created_at, r.type, r.id))
    chosen = [
        r
        for r in rows
        if (o.include is None or r.type in o.include)
        and (after is None or (r.created_at, r.type, r.id) > after)
    ]
    page = chosen[: o.limit]
    has_more = len(chosen) > o.limit
    last = page[-1] if page else None
    next_ = (
        _next(row, "external_ids", [last.created_at, last.type, last.id])
        if has_more and last
        else ""
    )
    return {
        "data": [profiles.external_id(r) for r in page],
        "cursor": _cursor(url, has_more, next_),
    }


def _events(reads: ProfileReads, row: ProfileRow, o: Options, url: str) -> dict[str, Any]:
    position = _position(reads, row, o, "events", (float, int))
    after = (position[0], position[1]) if position is not None else None
    chosen = reads.events(
        row,
        start=o.start,
        end=o.end,
        sort=o.sort,
        after=after,
        limit=o.limit + 1,  # one more: is there a next page?
        names=o.include,
        excluded=o.exclude,
    )
    page = chosen[: o.limit]
    has_more = len(chosen) > o.limit
    next_ = _next(row, "events", [page[-1].timestamp, page[-1].seq]) if has_more else ""
    return {"data": [profiles.event(e) for e in page], "cursor": _cursor(url, has_more, next_)}


def _metadata(reads: ProfileReads, row: ProfileRow, o: Options, url: str) -> dict[str, Any]:
    return {"metadata": reads.metadata(row)}


def _links(reads: ProfileReads, row: ProfileRow, o: Options, url: str) -> dict[str, Any]:
    position = _position(reads, row, o, "links", (int,))
    after = None if position is None else int(position[0])
    linked = reads.links(row, after=after, limit=o.limit + 1)  # one more: is there a next?
    page = linked[: o.limit]
    has_more = len(linked) > o.limit
    other = USERS if row.collection == ACCOUNTS else ACCOUNTS
    data = []
    for link in page:
        p = link.profile
        ids = [
            {k: v for k, v in profiles.external_id(r).items() if k != "first_message_id"}
            for r in reads.external_ids(p)
            if o.include is None or r.type in o.include
        ]
        data.append({"to_collection": other, "segment_id": p.segment_id, "external_ids": ids})
    next_ = _next(row, "links", [page[-1].position]) if has_more else ""
    return {"data": data, "cursor": _cursor(url, has_more, next_)}


def _violations(reads: ProfileReads, row: ProfileRow, o: Options, url: str) -> dict[str, Any]:
    position = _position(reads, row, o, "violations", (int,))
    before = None if position is None else int(position[0])
    found = reads.violations(row, before=before, limit=o.limit + 1)  # one more: a next page?
    page = found[: o.limit]
    has_more = len(found) > o.limit
    next_ = _next(row, "violations", [page[-1].id]) if has_more else ""
    return {
        "data": [explain.refusal(f, row) for f in page],
        "cursor": _cursor(url, has_more, next_),
    }


Renderer = Callable[[ProfileReads, ProfileRow, Options, str], dict[str, Any]]
RENDERERS: dict[str, Renderer] = {
    "traits": _traits,
    "external_ids": _external_ids,
    "events": _events,
    "metadata": _metadata,
    "links": _links,
    "violations": _violations,
}


def read(reads: ProfileReads, space: str, target: Target, params: dict[str, str]) -> dict[str, Any]:
    """The response body for one request (synchronous: it runs the reads)."""
    opts = options(params, target.resource)
    if target.resource == "explain":  # two references: the path's and `with`
        return explain.explain(reads, target.ref, opts.other, target.collection)
    row = reads.find(target.ref, target.collection)
    url = (
        f"/v1/spaces/{space}/collections/{target.collection}/profiles/{row.segment_id}/"
        f"{target.resource}"
    )
    return RENDERERS[target.resource](reads, row, opts, url)
