"""Segment's browser library (analytics.js 2.0, npm `@segment/analytics-next`), served from
here, so that a page loads nothing from Segment.

- `GET /analytics.js/v1/{writeKey}/analytics.min.js`: what the classic snippet loads from
  Segment's CDN (the library's standalone build), with the write key set in it as Segment's
  CDN sets it. An unknown write key is a 401, as on the settings route.
- `GET /analytics-next/bundles/{file}`: the parts the library loads on demand (trackLink and
  trackForm, the `?ajs_uid=` query string, ...) and its UMD build `index.js`, for pages that
  use `AnalyticsBrowser.load` without a bundler.

The library takes the host it loads its parts and settings from (webpack's public path) once,
when its script runs: `window.analytics._cdn` if set, else the host of an https script whose
path has `/analytics.js/v1/`, else Segment's CDN. So the two entry scripts are served after
one statement that sets `_cdn` to where the script came from (its own `src`, less the path
idstitch serves it at) unless the page set it already. The vendored files are not edited:
see static/analytics-next/README.md, and scripts/update_analytics_js.py to update them.
"""

from __future__ import annotations

import functools
import gzip
import re
from dataclasses import dataclass
from importlib import resources

import msgspec

from idstitch.engine import Engine
from idstitch.http import tracking
from idstitch.http.asgi import Headers, Scope, Send, header, send_bytes
from idstitch.http.errors import NotFound

CLASSIC_PREFIX = "/analytics.js/v1/"
CLASSIC_SUFFIX = "/analytics.min.js"
BUNDLES_PREFIX = "/analytics-next/bundles/"
ENTRIES = ("standalone.js", "index.js")
JAVASCRIPT = b"text/javascript; charset=utf-8"
# The placeholder Segment's CDN replaces with the source's write key.
_KEY_PLACEHOLDER = b'window.analyticsWriteKey="__WRITE_KEY__"'
# A part's name carries its content's hash: a new library version gets new names.
_HASHED = re.compile(r"[\w-]+\.bundle\.[0-9a-f]{16,}\.js")
_IMMUTABLE = b"public, max-age=31536000, immutable"
# Short, for the entry scripts: their names stay, and they name the parts of their version.
_SHORT = b"public, max-age=300"


@dataclass(frozen=True)
class Asset:
    route: str  # the metrics label
    name: str  # a vendored file under bundles/
    write_key: str | None = None  # for analytics.min.js


def asset(path: str) -> Asset | None:
    """What `path` asks for, or None when it is not one of this module's paths."""
    if path.startswith(CLASSIC_PREFIX) and path.endswith(CLASSIC_SUFFIX):
        key = path[len(CLASSIC_PREFIX) : -len(CLASSIC_SUFFIX)]
        if key and "/" not in key:
            return Asset("browser_library", "standalone.js", key)
    elif path.startswith(BUNDLES_PREFIX):
        return Asset("browser_bundles", path[len(BUNDLES_PREFIX) :])
    return None


@functools.cache
def bundles() -> dict[str, bytes]:
    """Every vendored script by name; nothing else is ever served."""
    folder = resources.files("idstitch.http").joinpath("static", "analytics-next", "bundles")
    return {f.name: f.read_bytes() for f in folder.iterdir() if f.name.endswith(".js")}


def version() -> str:
    folder = resources.files("idstitch.http").joinpath("static", "analytics-next")
    return folder.joinpath("VERSION").read_text().strip()


def _preamble(served_at: str) -> bytes:
    """One ES5 statement: `_cdn` := the script's own URL up to `served_at`, on the global the
    snippet named (`data-global-segment-analytics-key`, else `analytics`), unless set."""
    marker = msgspec.json.encode(served_at).decode()
    return (
        "/* idstitch: load this library's parts and settings from where this script came from"
        " (window.analytics._cdn, unless the page set it). */\n"
        '!function(){try{var s=document.currentScript,u=s&&s.src||"",'
        f"i=u.indexOf({marker});if(i<1)return;"
        'var k=s.getAttribute("data-global-segment-analytics-key")||"analytics",'
        "a=window[k]=window[k]||[];a._cdn||(a._cdn=u.slice(0,i))}catch(e){}}();\n"
    ).encode()


@functools.lru_cache(maxsize=64)
def _body(name: str, write_key: str | None, zipped: bool) -> bytes:
    content = bundles()[name]
    if write_key is not None:
        key = msgspec.json.encode(write_key)
        content = content.replace(_KEY_PLACEHOLDER, b"window.analyticsWriteKey=" + key, 1)
        content = _preamble(CLASSIC_PREFIX) + content
    elif name in ENTRIES:
        content = _preamble(BUNDLES_PREFIX) + content
    return gzip.compress(content, 9, mtime=0) if zipped else content


def _accepts_gzip(scope: Scope) -> bool:
    """Whether `Accept-Encoding` names gzip with a weight above 0 (browsers all do)."""
    accepted = header(scope, b"accept-encoding") or b""
    for item in accepted.lower().split(b","):
        coding, _, params = item.partition(b";")
        if coding.strip() == b"gzip":
            weight = params.strip().removeprefix(b"q=").strip()
            try:
                return not weight or float(weight) > 0
            except ValueError:
                return False
    return False


async def serve(engine: Engine, scope: Scope, send: Send, wanted: Asset) -> int:
    """The script `wanted` names; 401 for an unknown write key, 404 for a file that is not a
    vendored one (the name is looked up, never joined to a path)."""
    if wanted.write_key is not None:
        tracking.source_for_key(engine, wanted.write_key, "the script path")
    elif wanted.name not in bundles():
        raise NotFound(
            f"no script {wanted.name!r} under {BUNDLES_PREFIX}: this server has the parts of "
            f"analytics.js {version()} only; load the library from this server too."
        )
    zipped = _accepts_gzip(scope)
    cache = _IMMUTABLE if _HASHED.fullmatch(wanted.name) else _SHORT
    headers: Headers = [
        (b"cache-control", cache),
        (b"access-control-allow-origin", b"*"),
        (b"x-content-type-options", b"nosniff"),
        (b"vary", b"Accept-Encoding"),
    ]
    if zipped:
        headers.append((b"content-encoding", b"gzip"))
    body = _body(wanted.name, wanted.write_key, zipped)
    await send_bytes(send, 200, body, JAVASCRIPT, headers)
    return 200
