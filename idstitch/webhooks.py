"""The change feed's delivery: each change, after its commit, POSTed to every `[[webhooks]]`
receiver that asked for its kind, signed in the Standard Webhooks format.

The changes are rows the write path stored in the same transaction as the messages that
made them (`outbox`), so a change is never sent for a write that did not happen and never
lost once it did. One thread per receiver delivers them in the feed's order, one at a time
(so each profile's changes arrive in order), retries a failed delivery with backoff until it
succeeds, and records how far it got now and then: after a crash the receiver may get the
last few changes again (at least once: `webhook-id` stays the same, for receivers to drop
repeats). With PostgreSQL, one worker at a time delivers to each receiver.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
from standardwebhooks import Webhook as Signer

from idstitch.config import Webhook
from idstitch.core.changes import KIND_OF
from idstitch.storage.base import Store

log = logging.getLogger("idstitch.webhooks")

PAGE = 200  # feed rows read at a time
SAVE_EVERY = 1.0  # seconds between records of how far a receiver got
POLL = 0.1  # seconds between looks for new changes
FIRST_RETRY, LAST_RETRY = 0.5, 60.0  # backoff after a failed delivery, doubling
TIMEOUT = 10.0  # seconds a receiver has to answer
LOCK_RETRY = 5.0  # seconds between tries to become the one delivering (PostgreSQL)
PRUNE_EVERY = 10.0  # seconds between deletions of rows every receiver has

_decode = msgspec.json.Decoder(list[dict[str, Any]]).decode
_encode = msgspec.json.Encoder().encode


class FeedStats:
    """What /metrics shows of one receiver."""

    def __init__(self) -> None:
        self.delivered = 0
        self.failed = 0
        self.backlog = 0
        self.last_success = 0.0


def payload(change: dict[str, Any], created_at: float) -> bytes:
    """A change as a Standard Webhooks payload: type, timestamp, data."""
    data = {k: v for k, v in change.items() if k != "type"}
    when = datetime.fromtimestamp(created_at, UTC).isoformat().replace("+00:00", "Z")
    return _encode({"type": change["type"], "timestamp": when, "data": data})


class Feed:
    """Deliveries to one receiver, from a thread of its own."""

    def __init__(
        self,
        store: Store,
        webhook: Webhook,
        closing: threading.Event,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.store = store
        self.webhook = webhook
        self.name = webhook.name
        self.closing = closing
        self.stats = FeedStats()
        self.signer = Signer(webhook.secret)
        self.wanted = set(webhook.events)
        self.client = httpx.Client(
            timeout=TIMEOUT,
            transport=transport,
            headers={"content-type": "application/json", "user-agent": "idstitch-webhooks"},
        )
        self.position: tuple[int, int] | None = None
        self.thread = threading.Thread(target=self._run, name=f"idstitch-{self.name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.closing.is_set():
                with self.store.feeding(self.name) as mine:
                    if mine:
                        self._deliver_all()
                        return
                self.closing.wait(LOCK_RETRY)
        except Exception:  # a store gone for good: say so, do not take the process down
            log.exception("webhook deliveries to %s stopped", _where(self.webhook.url))
        finally:
            self.client.close()

    def _deliver_all(self) -> None:
        store = self.store
        position = store.feed_position(self.name) or (0, 0)
        self.position = saved = position
        saved_at = counted_at = 0.0
        while not self.closing.is_set():
            now = time.monotonic()
            try:
                rows = store.changes_after(position, PAGE)
                if now - counted_at >= SAVE_EVERY:  # a count, not on every look
                    self.stats.backlog, counted_at = store.changes_left(position), now
            except Exception as err:
                log.warning("reading the change feed failed (%s); trying again", err)
                self.closing.wait(FIRST_RETRY)
                continue
            for row in rows:
                if not self._deliver(row.position, row.changes, row.created_at):
                    break  # closing: this row goes again next time
                position = self.position = row.position
                self.stats.backlog = max(0, self.stats.backlog - 1)
            if position != saved and (len(rows) < PAGE or now - saved_at >= SAVE_EVERY):
                self._save(position)
                saved, saved_at = position, now
            if len(rows) < PAGE:
                self.closing.wait(POLL)
        if position != saved:
            self._save(position)

    def _deliver(self, position: tuple[int, int], changes: bytes, created_at: float) -> bool:
        """Send one row's changes of the kinds wanted; False if closing came first."""
        for n, change in enumerate(_decode(changes)):
            if KIND_OF.get(change.get("type", "")) in self.wanted:
                msg_id = f"msg_{position[0]}_{position[1]}_{n}"
                if not self._send(msg_id, payload(change, created_at)):
                    return False
        return True

    def _save(self, position: tuple[int, int]) -> None:
        try:
            self.store.set_feed_position(self.name, position)
        except Exception as err:  # delivered again after a restart: at least once
            log.warning("recording webhook progress failed: %s", err)

    def _send(self, msg_id: str, body: bytes) -> bool:
        """POST until the receiver takes it (2xx); False if the process is closing first."""
        delay = FIRST_RETRY
        while not self.closing.is_set():
            now = datetime.now(UTC)
            headers = {
                "webhook-id": msg_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": self.signer.sign(msg_id, now, body),
            }
            try:
                answer = self.client.post(self.webhook.url, content=body, headers=headers)
                if 200 <= answer.status_code < 300:
                    self.stats.delivered += 1
                    self.stats.last_success = time.time()
                    return True
                problem = f"it answered {answer.status_code}"
            except httpx.HTTPError as err:
                problem = f"{type(err).__name__}: {err}"
            self.stats.failed += 1
            log.warning(
                "webhook %s: delivery of %s failed (%s); retrying in %.1f s",
                _where(self.webhook.url),
                msg_id,
                problem,
                delay,
            )
            self.closing.wait(delay * random.uniform(0.8, 1.2))
            delay = min(LAST_RETRY, delay * 2)
        return False


def _where(url: str) -> str:
    """A receiver's URL without its query (which may carry a token)."""
    return url.split("?", 1)[0]


class Dispatcher:
    """Every configured receiver's feed, and the deletion of rows all of them have."""

    def __init__(
        self,
        store: Store,
        webhooks: tuple[Webhook, ...],
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.store = store
        self.closing = threading.Event()
        self.feeds = [Feed(store, w, self.closing, transport) for w in webhooks]
        self._pruner = threading.Thread(target=self._prune, name="idstitch-feed-prune", daemon=True)

    def start(self) -> None:
        for feed in self.feeds:
            feed.start()
        self._pruner.start()

    def close(self) -> None:
        self.closing.set()
        for feed in self.feeds:
            feed.thread.join(timeout=TIMEOUT + 5)
        if self._pruner.is_alive():
            self._pruner.join(timeout=5)

    def _prune(self) -> None:
        while not self.closing.wait(PRUNE_EVERY):
            self.prune()

    def prune(self) -> None:
        """Delete the rows every configured receiver has been sent."""
        try:
            positions = [self.store.feed_position(f.name) for f in self.feeds]
            if positions and all(p is not None for p in positions):
                self.store.forget_changes(min(p for p in positions if p is not None))
        except Exception as err:
            log.warning("deleting delivered changes failed: %s", err)
