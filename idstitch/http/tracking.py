"""The Tracking API: `POST /v1/{identify,track,page,screen,group,alias,batch,import}`.

A request is authenticated, read, decoded and every message in it validated before any of
it is submitted, so a 400 or 413 applies nothing. `200 {"success": true}` is sent only when
the engine's future completes, i.e. once the whole request is resolved and fsync'd.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future
from typing import Any

import msgspec

from idstitch.config import Source
from idstitch.core.messages import (
    MAX_BATCH_ITEMS,
    MAX_MESSAGE_BYTES,
    MAX_REQUEST_BYTES,
    check_size,
    decode_batch,
    merge_batch_defaults,
    parse_time,
)
from idstitch.engine import Engine, Item
from idstitch.errors import AuthenticationError, InvalidMessage, PayloadTooLarge, StorageError
from idstitch.http.asgi import Receive, Scope, Send, basic_user, send_bytes
from idstitch.http.body import BodyBudget, read_body
from idstitch.storage.base import maybe_stored

# route path -> the message type it implies (None: a batch of typed messages)
ROUTES: dict[str, str | None] = {
    "/v1/identify": "identify",
    "/v1/track": "track",
    "/v1/page": "page",
    "/v1/screen": "screen",
    "/v1/group": "group",
    "/v1/alias": "alias",
    "/v1/batch": None,
    "/v1/import": None,
}
# analytics.js (the browser library) posts to the first letter of the call's type, and to
# `/v1/b` when it batches; these answer exactly as the long forms do.
SHORT_ROUTES: dict[str, str] = {
    "/v1/i": "/v1/identify",
    "/v1/t": "/v1/track",
    "/v1/p": "/v1/page",
    "/v1/s": "/v1/screen",
    "/v1/g": "/v1/group",
    "/v1/a": "/v1/alias",
    "/v1/b": "/v1/batch",
}
# The route's name in metrics and logs: the long form's, whichever path was used.
ROUTE_NAMES: dict[str, str] = {path: path[4:] for path in ROUTES} | {
    short: long[4:] for short, long in SHORT_ROUTES.items()
}
ROUTES.update({short: ROUTES[long] for short, long in SHORT_ROUTES.items()})

SUCCESS = b'{"success":true}'


class _KeyOnly(msgspec.Struct):
    """Just enough of a single message to authenticate it by its body."""

    writeKey: Any = None


_key_decoder = msgspec.json.Decoder(_KeyOnly)


def source_for_key(engine: Engine, key: Any, where: str) -> Source:
    """The source whose write key `key` is (found in `where`); raises AuthenticationError."""
    if not isinstance(key, str) or not key:
        raise AuthenticationError(
            "no write key: send it as the HTTP Basic user name (empty password) or as "
            "`writeKey` in the body."
        )
    source = engine.settings.source_for_key(key)
    if source is None:
        raise AuthenticationError(
            f"the write key in {where} is not one of the server's; use the write_key of one "
            "of the [[sources]] in the config."
        )
    return source


def authenticate_header(engine: Engine, scope: Scope) -> Source | None:
    """The source named by a Basic header, which decides alone when present."""
    try:
        key = basic_user(scope)
    except ValueError as err:
        raise AuthenticationError(
            f"{err}; send `Authorization: Basic base64(writeKey + ':')`."
        ) from None
    if key is None:
        return None
    return source_for_key(engine, key, "the Authorization header")


def _body_key(raw: bytes) -> Any:
    try:
        return _key_decoder.decode(raw).writeKey
    except msgspec.DecodeError as err:
        raise InvalidMessage(
            f"the body is not a JSON object ({err}); send one message as a JSON object.",
            "invalid_json",
        ) from None


def prepare_single(
    engine: Engine, raw: bytes, type_: str, source: Source | None, received_at: float
) -> tuple[Source, list[Item]]:
    if source is None:
        source = source_for_key(engine, _body_key(raw), "the body")
    return source, [engine.prepare(raw, type_=type_, received_at=received_at)]


def prepare_batch(
    engine: Engine, raw: bytes, source: Source | None, received_at: float
) -> tuple[Source, list[Item]]:
    batch = decode_batch(raw)
    if source is None:
        source = source_for_key(engine, batch.writeKey, "the body")
    messages = batch.batch or []
    if not messages:
        raise InvalidMessage(
            'the batch is empty; send {"batch": [message, ...]} with at least one message.',
            "empty_batch",
        )
    if len(messages) > MAX_BATCH_ITEMS:
        raise PayloadTooLarge(
            f"the batch holds {len(messages):,} messages; the limit is {MAX_BATCH_ITEMS:,} "
            "per request. Split it into smaller batches.",
            "too_many_messages",
        )
    sent_at = None
    if batch.sentAt:  # parsed once for every item, and checked even if each has its own
        try:
            sent_at = parse_time(batch.sentAt, "sentAt")
        except InvalidMessage as err:
            raise InvalidMessage(f"top level of the batch: {err}", err.code) from None
    shared = bool(batch.context or batch.integrations)
    items: list[Item] = []
    for index, message in enumerate(messages):
        try:
            check_size(message)
            item = bytes(message)
            if not item.lstrip().startswith(b"{"):
                raise InvalidMessage(
                    "the message is not a JSON object; send each batch item as an object.",
                    "invalid_message",
                )
            if shared:  # the limit applies to the item as received, checked above
                item = merge_batch_defaults(message, batch)
            items.append(
                engine.prepare(item, received_at=received_at, sent_at=sent_at, max_bytes=None)
            )
        except InvalidMessage as err:
            raise err.at_index(index) from None
    return source, items


# A request waits at most this long for its durable commit (a stalled store, a stopped
# disk): then 503, and the body's share of the budget is freed. Segment's own libraries give
# up after 10 to 15 s and retry.
ACK_TIMEOUT = 30.0


def _copy(target: asyncio.Future[None], source: Future[Any]) -> None:
    if target.cancelled():
        return
    error = source.exception()
    if error is not None:
        target.set_exception(error)
    else:
        target.set_result(None)


def settled(future: Future[Any]) -> asyncio.Future[None]:
    """An awaitable that completes with the engine's future. Unlike `asyncio.wrap_future`, a
    cancelled request (a client gone, a shutdown timeout) never cancels the engine's future,
    which the writer thread completes on its own schedule."""
    loop = asyncio.get_running_loop()
    target: asyncio.Future[None] = loop.create_future()
    future.add_done_callback(lambda done: loop.call_soon_threadsafe(_copy, target, done))
    return target


async def handle(
    engine: Engine,
    scope: Scope,
    receive: Receive,
    send: Send,
    type_: str | None,
    budget: BodyBudget,
) -> int:
    """Answer one Tracking API request; returns the status sent. Raises IdstitchError for
    the caller to map onto an error response."""
    received_at = time.time()
    source = authenticate_header(engine, scope)
    single = type_ is not None
    cap = MAX_MESSAGE_BYTES if single else MAX_REQUEST_BYTES
    # Counted as its bytes arrive, so a slow client holds only what it sent; one whose key
    # is in the body counts against the smaller share of unverified bodies until it is known.
    hold = budget.hold(scope, verified=source is not None)
    try:
        raw = await read_body(scope, receive, cap, hold, single=single)
        if type_ is not None:
            source, items = prepare_single(engine, raw, type_, source, received_at)
        else:
            source, items = prepare_batch(engine, raw, source, received_at)
        hold.verify()
        del raw
        ticket = engine.submit(items, source.id)
        try:
            await asyncio.wait_for(settled(ticket.future), ACK_TIMEOUT)
        except TimeoutError:
            raise StorageError(
                maybe_stored(f"the store did not confirm the write within {ACK_TIMEOUT:g} s")
            ) from None
    finally:
        hold.release()
    await send_bytes(send, 200, SUCCESS)
    return 200
