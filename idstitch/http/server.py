"""`idstitch serve`: load (or create) the config, open the engine, run the HTTP server.

One process, one engine: the embedded store's graph lives in this process and its writer
thread is the only writer. uvicorn runs the app on uvloop with httptools. On SIGTERM or
SIGINT it stops accepting connections, waits for in-flight requests to be answered, and
the app's shutdown then closes the engine, which commits every queued message first.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
from types import FrameType

import uvicorn

from idstitch.checks import redact_url
from idstitch.config import DEFAULT_CONFIG, Settings, load, write_default
from idstitch.engine import Engine
from idstitch.errors import ConfigError
from idstitch.http import logs
from idstitch.http.app import App
from idstitch.http.protocol import GuardedHttpToolsProtocol

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8088
# How long a shutdown waits for in-flight requests before cancelling them.
DRAIN_SECONDS = 30


def settings_for(config_path: str | None) -> Settings:
    """The settings to serve; with no path, ./idstitch-data/idstitch.toml, created (with a
    random write key and access token, printed this once) if it does not exist yet."""
    if config_path is not None:
        return load(config_path)
    if DEFAULT_CONFIG.exists():
        return load(DEFAULT_CONFIG)
    settings, write_key, token = write_default(DEFAULT_CONFIG)
    print(
        f"Created {DEFAULT_CONFIG} with a new source and access token.\n"
        f"  write key:    {write_key}\n"
        f"  access token: {token}\n"
        f"They are shown only this once; they are also in {DEFAULT_CONFIG} (mode 600).",
        flush=True,
    )
    return settings


def listen(host: str, port: int) -> socket.socket:
    """Bind the listening socket up front, so a taken port is one clear sentence before the
    store is opened, not a log line after."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as err:
        raise ConfigError(
            f"cannot listen on {host}:{port} ({err.strerror or err}); pass a valid --host."
        ) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRNOTAVAIL:
            fix = "pass a --host this machine has (127.0.0.1, or 0.0.0.0 for every address)"
        elif err.errno == errno.EACCES:
            fix = "choose a --port from 1024 up, or run with the right to bind low ports"
        else:
            fix = "stop the process using it or choose another --port"
        raise ConfigError(
            f"cannot listen on {host}:{port} ({err.strerror or err}); {fix}."
        ) from None
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, remembering the signal that stopped it: the process then ends by
    that signal itself (see `serve`), whatever uvicorn's and asyncio's handlers made of it."""

    stopped_by: int | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.stopped_by is None:
            self.stopped_by = sig
        super().handle_exit(sig, frame)


def server_for(app: App, host: str, port: int) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=GuardedHttpToolsProtocol,  # httptools, with a bound on request heads
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,  # client addresses are never used; skip the middleware
        timeout_graceful_shutdown=DRAIN_SECONDS,
    )
    return _Server(config)


def serve(config_path: str | None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Run the HTTP service until SIGTERM or SIGINT; raises ConfigError or StorageError
    (before binding the port) when the config or the store is unusable."""
    settings = settings_for(config_path)
    sock = listen(host, port)
    logs.setup(logging.INFO)
    try:
        engine = Engine(settings, tune_gc=True)  # this process is idstitch's own
    except BaseException:
        sock.close()
        raise
    app = App(engine, owns_engine=True)
    logs.event(
        "serving",
        host=host,
        port=port,
        space_id=settings.space_id,
        storage=redact_url(settings.storage_url),
        sources=[s.id for s in settings.sources],
        config=str(settings.path) if settings.path else None,
    )
    for sid in settings.unmatched_source_rules():
        logs.event(
            "source rules match no write key",
            logging.WARNING,
            source=sid,
            fix=f"[identity.sources.{sid}] applies only to a [[sources]] entry with id "
            f"{sid!r} (or to `idstitch import --source {sid}`); correct the id if it is a typo",
        )
    drift = engine.rules_drift()
    if drift is not None:
        logs.event("identity rules changed since the last rebuild", logging.WARNING, fix=drift)
    server = server_for(app, host, port)
    try:
        server.run(sockets=[sock])
    finally:
        # A failed startup never reaches the app's shutdown; close() is idempotent.
        engine.close()
    stopped_by = getattr(server, "stopped_by", None)
    if stopped_by is not None:
        # uvicorn raises the signal again once it has drained, and asyncio's runner turns a
        # SIGINT into KeyboardInterrupt (the CLI ends by it), but the runner can also swallow
        # it as a cancellation when it lands just as the server finishes: the process then
        # exited 0. End by the signal here, as a service manager or a shell expects.
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(stopped_by, signal.SIG_DFL)
        os.kill(os.getpid(), stopped_by)


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "serve"]
