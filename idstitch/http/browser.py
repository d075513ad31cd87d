"""What analytics.js asks of a Segment endpoint besides the Tracking API.

- CORS: browsers post events from any origin. A preflight is answered for every header the
  page asks to send (analytics.js adds `X-Retry-Count` to each retry: a fixed list without it
  made the browser drop every retried event).
- `GET /v1/projects/{writeKey}/settings`: the source settings analytics.js loads from its CDN
  before it sends anything. Served here, `AnalyticsBrowser.load({writeKey, cdnURL})` with
  `cdnURL` set to idstitch is all a page needs: the settings point the library back here.
- `POST /v1/m`: the library's own usage counters. Accepted and discarded, so a page that sets
  `apiHost` in its load options does not log a CORS error for them.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

import msgspec

from idstitch.engine import Engine
from idstitch.http import tracking
from idstitch.http.asgi import Headers, Receive, Scope, Send, header, send_bytes
from idstitch.http.body import BodyBudget, read_body

SETTINGS_PREFIX = "/v1/projects/"
SETTINGS_SUFFIX = "/settings"
METRICS_PATH = "/v1/m"
METRICS_MAX_BYTES = 64 * 1024

_ALLOWED_HEADERS = b"Authorization, Content-Type, Content-Encoding, X-Retry-Count"
# A header list a browser may ask for: names only, bounded.
_HEADER_LIST = re.compile(
    rb"[A-Za-z0-9!#$%&'*+.^_`|~-]+(?:[ \t]*,[ \t]*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*"
)
_MAX_HEADER_LIST = 1024
# The host a settings document points back to: what the page reached us by.
_HOST = re.compile(r"[A-Za-z0-9.\-:\[\]]{1,255}")
_encoder = msgspec.json.Encoder()


def with_cors(send: Send) -> Send:
    """`send`, adding `Access-Control-Allow-Origin: *` to the response."""

    async def cors_send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [
                *message.get("headers", []),
                (b"access-control-allow-origin", b"*"),
            ]
        await send(message)

    return cors_send


def cors_methods(path: str) -> bytes | None:
    """The methods a browser may use on `path`, or None for a path without CORS."""
    if path in tracking.ROUTES or path == METRICS_PATH:
        return b"POST, OPTIONS"
    if settings_key(path) is not None:
        return b"GET, OPTIONS"
    return None


def preflight_headers(scope: Scope, methods: bytes) -> Headers:
    asked = header(scope, b"access-control-request-headers")
    allowed = _ALLOWED_HEADERS
    if asked is not None:
        asked = asked.strip()
        if len(asked) <= _MAX_HEADER_LIST and _HEADER_LIST.fullmatch(asked):
            allowed = asked
    return [
        (b"access-control-allow-methods", methods),
        (b"access-control-allow-headers", allowed),
        (b"access-control-max-age", b"86400"),
    ]


def settings_key(path: str) -> str | None:
    """The write key of a settings path, or None when `path` is not one."""
    if path.startswith(SETTINGS_PREFIX) and path.endswith(SETTINGS_SUFFIX):
        key = path[len(SETTINGS_PREFIX) : -len(SETTINGS_SUFFIX)]
        if key and "/" not in key:
            return key
    return None


def _origin(scope: Scope) -> tuple[str, str]:
    """(protocol, host) the request reached us by; `X-Forwarded-Proto: https` from a TLS proxy
    counts, so that a page served over https is not pointed at plain http."""
    forwarded = header(scope, b"x-forwarded-proto")
    secure = scope.get("scheme") == "https" or (
        forwarded is not None and forwarded.split(b",")[0].strip().lower() == b"https"
    )
    raw = header(scope, b"host")
    host = raw.decode("latin-1").strip() if raw else ""
    if not _HOST.fullmatch(host):
        server = scope.get("server") or ("127.0.0.1", 8088)
        host = f"{server[0]}:{server[1]}"
    return ("https" if secure else "http"), host


def settings_document(scope: Scope, write_key: str) -> dict[str, Any]:
    """Source settings in the shape of Segment's CDN, naming this server as the API host;
    remote metrics are off (sample rate 0)."""
    protocol, host = _origin(scope)
    return {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": f"{host}/v1",
                "protocol": protocol,
                "unbundledIntegrations": [],
                "addBundledMetadata": False,
                "maybeBundledConfigIds": {},
            }
        },
        "plan": {"track": {"__default": {"enabled": True, "integrations": {}}}},
        "enabledMiddleware": {},
        "middlewareSettings": {},
        "metrics": {"sampleRate": 0},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
    }


async def settings(engine: Engine, scope: Scope, send: Send, write_key: str) -> int:
    tracking.source_for_key(engine, write_key, "the settings path")
    body = _encoder.encode(settings_document(scope, write_key))
    await send_bytes(send, 200, body, headers=[(b"cache-control", b"no-store")])
    return 200


async def metrics(scope: Scope, receive: Receive, send: Send, budget: BodyBudget) -> int:
    hold = budget.hold(scope, verified=False)  # no key: these bodies carry none
    try:
        await read_body(scope, receive, METRICS_MAX_BYTES, hold)  # bounded, then dropped
    finally:
        hold.release()
    await send_bytes(send, 200, tracking.SUCCESS)
    return 200
