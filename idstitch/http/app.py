"""The ASGI application: one small dispatcher over the Tracking API, the Profile API and the
operations routes, plus the lifespan that starts and stops them.

Routes are declared once, in `routes.ROUTES`, which gives the dispatch below (a dictionary
lookup for exact paths such as the ingest routes, then the templated ones) and
`/openapi.json`; errors of every route are mapped onto statuses in `errors` and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec

from idstitch.checks import redact_url
from idstitch.engine import Engine
from idstitch.errors import IdstitchError, StorageError
from idstitch.http import (
    browser,
    docs,
    explorer,
    library,
    logs,
    profile_api,
    repairs,
    routes,
    tracking,
)
from idstitch.http.asgi import JSON, Receive, Scope, Send, query, send_bytes, send_json
from idstitch.http.body import BodyBudget, unread_body
from idstitch.http.errors import (
    MethodNotAllowed,
    NotFound,
    profile_body,
    retry_headers,
    status_of,
    tracking_body,
)
from idstitch.http.metrics import HttpMetrics, render
from idstitch.http.routes import Handler, Route, Table
from idstitch.storage.base import IndexLag

# What a handler answers: the request's name in metrics and logs, and its status.
Served = tuple[str, int]
HandlerFn = Callable[[Route, Scope, Receive, Send], Awaitable[Served]]
# Reads whose cost grows with a profile's history run on the read threads; on a local store
# the bounded ones run inline, because a thread hop costs more than they do: measured at 16
# connections on /traits, p95 3.5 ms inline against 6.5 ms through the pool, at 15 % more
# requests/s. A networked store's reads all go to the threads (Store.local_reads).
_OFFLOADED = frozenset({"events", "links"})
_INTERNAL = "the server failed on this request; the failure is logged. Retry later."
# What a caller is told when the store fails (the reason goes to the log). A write that
# failed or timed out may still have been committed: resending is what makes it safe.
_STORE_FAILED_WRITE = (
    "the store could not confirm this request; it may or may not be stored. Resending it is "
    "safe: messages with the same messageId are stored once (the server's log has the reason)."
)
_STORE_FAILED_READ = (
    "the store could not answer this request; retry shortly (the server's log has the reason)."
)


class App:
    """`App(engine)` is an ASGI callable. With `owns_engine`, shutting the app down (SIGTERM
    under a server) closes the engine once in-flight requests have drained."""

    def __init__(self, engine: Engine, *, owns_engine: bool = False, read_threads: int = 4):
        self.engine = engine
        self.owns_engine = owns_engine
        self.http = HttpMetrics()
        self.rejections = logs.Sampled()
        self.failures = logs.Sampled()
        self.bodies = BodyBudget()
        self._reads = ThreadPoolExecutor(read_threads, thread_name_prefix="idstitch-read")
        self.routes = Table()
        self._handlers: dict[Handler, HandlerFn] = {
            "tracking": self._tracking,
            "browser_metrics": self._browser_metrics,
            "browser_settings": self._browser_settings,
            "library": self._library,
            "explorer_graph": self._explorer_graph,
            "explorer_page": self._explorer_page,
            "explorer_explain": self._explorer_explain,
            "profile_api": self._profile_api,
            "profile_repairs": self._profile_repairs,
            "healthz": self._healthz,
            "metrics": self._metrics,
            "openapi": self._openapi_document,
            "docs": self._docs_page,
            "root": self._root,
        }
        document = routes.document()
        self._openapi = msgspec.json.encode(document)
        self._docs = docs.page(document).encode()
        self._explorer = {
            explorer.PAGE_PATH: (explorer.page(), b"text/html; charset=utf-8"),
            explorer.SCRIPT_PATH: (explorer.script(), b"text/javascript; charset=utf-8"),
            explorer.LIBRARY_PATH: (explorer.library(), b"text/javascript; charset=utf-8"),
        }
        self._sampler: asyncio.Task[None] | None = None
        # Request ids: a random prefix per process and a counter (uuid4 costs a syscall).
        self._id_prefix = secrets.token_hex(6)
        self._ids = itertools.count(1)

    def _request_id(self) -> bytes:
        return f"{self._id_prefix}-{next(self._ids):x}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:  # websockets: not served
            await send({"type": "websocket.close", "code": 1000})

    # ---- requests ------------------------------------------------------------------------
    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        route = "unknown"
        status = 500
        found = self.routes.find(path)
        # The Profile API family (an access token, its error shape) is known by its route.
        token_route = found is not None and found.token
        if not token_route and path.startswith("/v1/"):
            # analytics.js posts straight from browsers, from any origin (as to Segment);
            # the Profile API is for servers, with tokens that never belong in a page.
            send = browser.with_cors(send)
            allow = browser.cors_methods(path) if method == "OPTIONS" else None
            if allow is not None:
                await send_bytes(
                    send, 204, b"", b"text/plain", browser.preflight_headers(scope, allow)
                )
                self.http.observe("preflight", 204, time.perf_counter() - started)
                return
        try:
            if found is None:
                raise NotFound(f"no route {path}; see /docs for the routes.")
            route = found.name
            if found.token:
                # The token first, as Segment: without one, nothing about the routes is told.
                profile_api.authenticate(self.engine.settings, scope)
            if method not in found.methods:
                where = "the Profile API" if found.handler == "profile_api" else path
                raise MethodNotAllowed(where, method, ", ".join(found.methods))
            route, status = await self._handlers[found.handler](found, scope, receive, send)
        except IdstitchError as err:
            status = status_of(err)
            await self._fail(send, err, status, route, token_route, unread_body(scope))
        except Exception:
            status = 500
            logs.logger.exception("request failed", extra={"fields": {"route": route}})
            body = (
                {"error": {"code": "server_error", "message": _INTERNAL}}
                if token_route
                else ({"success": False, "code": "internal_error", "message": _INTERNAL})
            )
            with contextlib.suppress(Exception):
                await send_json(send, 500, body)
        finally:
            self.http.observe(route, status, time.perf_counter() - started)

    # ---- handlers, by Route.handler -------------------------------------------------------
    async def _tracking(self, found: Route, scope: Scope, receive: Receive, send: Send) -> Served:
        kind = tracking.ROUTES[scope["path"]]
        status = await tracking.handle(self.engine, scope, receive, send, kind, self.bodies)
        return found.name, status

    async def _browser_metrics(
        self, found: Route, scope: Scope, receive: Receive, send: Send
    ) -> Served:
        return found.name, await browser.metrics(scope, receive, send, self.bodies)

    async def _browser_settings(
        self, found: Route, scope: Scope, receive: Receive, send: Send
    ) -> Served:
        write_key = browser.settings_key(scope["path"])
        assert write_key is not None  # the route matched
        return found.name, await browser.settings(self.engine, scope, send, write_key)

    async def _library(self, found: Route, scope: Scope, receive: Receive, send: Send) -> Served:
        script = library.asset(scope["path"])
        assert script is not None  # the route matched
        return found.name, await library.serve(self.engine, scope, send, script)

    async def _explorer_graph(
        self, found: Route, scope: Scope, receive: Receive, send: Send
    ) -> Served:
        loop = asyncio.get_running_loop()
        graph = await loop.run_in_executor(
            self._reads, explorer.graph, self.engine.reads, query(scope), self.engine.rules.rank
        )
        # Profile data: never kept in the browser's disk cache.
        headers = [(b"request-id", self._request_id()), (b"cache-control", b"no-store")]
        await send_json(send, 200, graph, headers)
        return found.name, 200

    async def _explorer_explain(
        self, found: Route, scope: Scope, receive: Receive, send: Send
    ) -> Served:
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(
            self._reads, explorer.explanation, self.engine.reads, query(scope)
        )
        headers = [(b"request-id", self._request_id()), (b"cache-control", b"no-store")]
        await send_json(send, 200, answer, headers)
        return found.name, 200

    async def _explorer_page(
        self, found: Route, scope: Scope, receive: Receive, send: Send
    ) -> Served:
        content, kind = self._explorer[scope["path"]]
        await send_bytes(send, 200, content, kind, list(explorer.HEADERS))
        return found.name, 200

    async def _fail(
        self,
        send: Send,
        err: IdstitchError,
        status: int,
        route: str,
        profile_api: bool,
        close: bool = False,
    ) -> None:
        headers = retry_headers(status)
        if close:
            headers.append((b"connection", b"close"))
        if status == 401 and route not in (
            "browser_settings",
            "browser_library",
            "explorer_graph",
            "explorer_explain",
        ):
            # Not for what pages fetch (analytics.js and its settings, the explorer's graph):
            # the browser would open its own sign-in dialog over the page.
            headers.append((b"www-authenticate", b'Basic realm="idstitch"'))
        elif isinstance(err, MethodNotAllowed):
            headers.append((b"allow", err.allow.encode()))
        if isinstance(err, StorageError):
            # The reason is for the operator, in the log: it names paths, hosts and database
            # names that a caller (a browser holding a write key) has no use for.
            self.failures.event(
                "store failed",
                ("store", route),
                level=logging.WARNING,
                route=route,
                reason=str(err)[:1000],
            )
            err = StorageError(_STORE_FAILED_READ if profile_api else _STORE_FAILED_WRITE)
        if profile_api:
            headers.append((b"request-id", self._request_id()))
            body = profile_body(err, status)
        else:
            body = tracking_body(err)
        index = getattr(err, "index", None)
        # The code and index only: a message can quote the payload it rejects.
        self.rejections.event(
            "request rejected",
            (route, status, err.code),
            route=route,
            status=status,
            code=err.code,
            index=index,
        )
        with contextlib.suppress(Exception):
            await send_json(send, status, body, headers)

    async def _profile_repairs(
        self, found: Route, scope: Scope, receive: Receive, send: Send
    ) -> Served:
        route, answer = await repairs.handle(self.engine, scope, receive, self.bodies, self._reads)
        await send_json(send, 200, answer, [(b"request-id", self._request_id())])
        return route, 200

    async def _profile_api(
        self, found: Route, scope: Scope, receive: Receive, send: Send
    ) -> Served:
        target = profile_api.parse_path(scope)
        route = f"profiles.{target.resource}"
        settings = self.engine.settings
        if target.space != settings.space_id:
            raise NotFound(
                f"space {target.space!r} does not exist; this server's space is "
                f"{settings.space_id!r} (space_id in the config)."
            )
        args = (self.engine.reads, settings.space_id, target, query(scope))
        if target.resource in _OFFLOADED or not self.engine.reads.local:
            loop = asyncio.get_running_loop()
            body = await loop.run_in_executor(self._reads, profile_api.read, *args)
        else:
            body = profile_api.read(*args)
        await send_json(send, 200, body, [(b"request-id", self._request_id())])
        return route, 200

    # The operations routes answer HEAD too: load balancers probe health with it (the server
    # sends no body).
    async def _healthz(self, found: Route, scope: Scope, receive: Receive, send: Send) -> Served:
        # Not on the read threads: slow Profile API reads must not make health wait.
        healthy, lag = await asyncio.to_thread(self._health)
        status = 200 if healthy else 503
        body: dict[str, Any] = {"status": "ok" if healthy else "unavailable"}
        if lag is not None:
            body["index_lag"] = {"messages": lag.messages, "seconds": round(lag.seconds, 3)}
        await send_json(send, status, body)
        return found.name, status

    async def _metrics(self, found: Route, scope: Scope, receive: Receive, send: Send) -> Served:
        lag, blocked, feeds = await asyncio.to_thread(self._store_gauges)
        text = render(self.engine.metrics, self.http, lag, blocked, feeds)
        await send_bytes(send, 200, text.encode(), b"text/plain; version=0.0.4; charset=utf-8")
        return found.name, 200

    async def _openapi_document(
        self, found: Route, scope: Scope, receive: Receive, send: Send
    ) -> Served:
        await send_bytes(send, 200, self._openapi, JSON)
        return found.name, 200

    async def _docs_page(self, found: Route, scope: Scope, receive: Receive, send: Send) -> Served:
        await send_bytes(send, 200, self._docs, b"text/html; charset=utf-8")
        return found.name, 200

    async def _root(self, found: Route, scope: Scope, receive: Receive, send: Send) -> Served:
        await send_bytes(send, 307, b"", b"text/plain", [(b"location", b"/docs")])
        return found.name, 307

    def _store_gauges(self) -> tuple[IndexLag | None, int | None, list[dict[str, Any]]]:
        """The index lag, the length of the stored block list (None: the store could not
        say) and the webhooks' backlogs."""
        try:
            blocked: int | None = len(self.engine.blocked_identifiers())
        except IdstitchError:
            blocked = None
        try:
            feeds = self.engine.webhook_feeds()
        except IdstitchError:
            feeds = []
        return self._index_lag(), blocked, feeds

    def _health(self) -> tuple[bool, IndexLag | None]:
        return self.engine.healthy(), self._index_lag()

    def _index_lag(self) -> IndexLag | None:
        """How far derived state trails the log; None when the store cannot say (it is then
        unhealthy, which /healthz reports on its own)."""
        try:
            return self.engine.index_lag()
        except StorageError:
            return None

    # ---- lifespan ------------------------------------------------------------------------
    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._sampler = asyncio.create_task(self._sample())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _sample(self) -> None:
        while True:
            self.http.events.sample(self.engine.metrics.events)
            await asyncio.sleep(1.0)

    async def shutdown(self) -> None:
        """Stop the sampler and the read threads; close the engine if this app owns it (its
        writer finishes every queued message first)."""
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        self._reads.shutdown(wait=True)
        if self.owns_engine:
            await asyncio.to_thread(self.engine.close)
            logs.event("store closed", storage=redact_url(self.engine.storage_url))


def create_app(engine: Engine, *, owns_engine: bool = False, **options: Any) -> App:
    return App(engine, owns_engine=owns_engine, **options)


__all__ = ["App", "create_app"]
