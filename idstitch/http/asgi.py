"""The raw ASGI vocabulary the routes share: headers, query strings, JSON responses.

The hot routes speak ASGI directly (no Request/Response objects) because per-request
framework overhead is a visible share of a single-event request.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import msgspec

# The ASGI 3 callable's arguments, as the specification names them.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

__all__ = ["Receive", "Scope", "Send", "basic_user", "header", "query", "send_bytes", "send_json"]

Headers = list[tuple[bytes, bytes]]

_encoder = msgspec.json.Encoder()
JSON = b"application/json"


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a header (`name` in lower case, as ASGI delivers names)."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def basic_user(scope: Scope) -> str | None:
    """The user name of an `Authorization: Basic` header; None when there is no Basic header.

    Raises ValueError when a Basic header is present but cannot be decoded.
    """
    value = header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, credentials = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("the Authorization header is not valid HTTP Basic") from None
    # Segment also accepts the key without the colon (a legacy allowance).
    return decoded.partition(":")[0]


def query(scope: Scope) -> dict[str, str]:
    """Query parameters; a repeated name keeps its last value."""
    raw: bytes = scope.get("query_string", b"")
    if not raw:
        return {}
    return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    headers: Headers | None = None,
) -> None:
    start: Headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
    ]
    if headers:
        start.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, payload: Any, headers: Headers | None = None) -> None:
    await send_bytes(send, status, _encoder.encode(payload), JSON, headers)
