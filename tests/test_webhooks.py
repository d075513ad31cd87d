"""The change feed: merges, identifiers and traits POSTed to `[[webhooks]]` receivers after
their commit, signed (Standard Webhooks), in order per profile, at least once, through a
receiver that is down for a while and a restart, on every store."""

from __future__ import annotations

import base64
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks import Webhook as Verifier

from idstitch import webhooks
from idstitch.config import settings_from
from idstitch.engine import Engine
from idstitch.errors import ConfigError

SECRET = "whsec_" + base64.b64encode(b"a test secret of 32 bytes long!!").decode()
WAIT = 30.0  # seconds a test waits for deliveries before it fails


class Receiver:
    """A real HTTP receiver on a free port: records what it is sent, verifies signatures,
    and answers 503 while `failing`."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.failing = False
        self.delay = 0.0  # seconds, at most, an answer takes
        self.bad_signatures = 0
        verifier = Verifier(SECRET)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if owner.delay:
                    time.sleep(random.uniform(0, owner.delay))
                if owner.failing:
                    self.send_response(503)
                    self.end_headers()
                    return
                try:
                    verifier.verify(body, dict(self.headers))
                except Exception:
                    owner.bad_signatures += 1
                owner.ids.append(self.headers["webhook-id"])
                owner.received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT
        while not check():
            assert time.monotonic() < deadline, f"still waiting; received {self.received}"
            time.sleep(0.02)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhooks, "FIRST_RETRY", 0.05)
    monkeypatch.setattr(webhooks, "LAST_RETRY", 0.2)
    monkeypatch.setattr(webhooks, "PRUNE_EVERY", 0.2)


def _config(url: str, store_url: str, events: list[str] | None = None) -> dict[str, Any]:
    hook: dict[str, Any] = {"url": url, "secret": SECRET}
    if events is not None:
        hook["events"] = events
    return {"storage": {"url": store_url}, "identity": {"preset": "segment"}, "webhooks": [hook]}


def _profiles(data: dict[str, Any]) -> set[str]:
    """The segment_ids a change names."""
    named = {data["segment_id"], *data.get("merged_segment_ids", [])}
    return named | {p["segment_id"] for p in data.get("parts", [])}


def _assert_in_order(received: list[dict[str, Any]], expected: list[Any]) -> None:
    """`received` holds the `expected` changes, (type, message_id), once each, and every two
    of them that name a profile in common in the order of `expected` (changes of unrelated
    profiles may go out side by side)."""
    got = [(r["type"], r["data"].get("message_id")) for r in received]
    assert sorted(got, key=str) == sorted(expected, key=str)
    named = {item: _profiles(r["data"]) for item, r in zip(got, received, strict=True)}
    for i, first in enumerate(expected):
        for then in expected[i + 1 :]:
            if named[first] & named[then]:
                assert got.index(first) < got.index(then), (first, then, got)


# What the story's messages change, in the order they made the changes.
STORY = [
    ("identifiers.added", "m1"),
    ("identifiers.added", "m2"),
    ("traits.updated", "m2"),
    ("identifiers.added", "m3"),
    ("profile.merged", "m4"),
]


def _story(engine: Engine) -> None:
    """An anonymous visitor, who signs up, then is merged with a second device."""
    engine.ingest({"type": "page", "anonymousId": "a1", "messageId": "m1"})
    engine.ingest({"type": "identify", "anonymousId": "a1", "userId": "u1", "messageId": "m2",
                   "traits": {"plan": "pro"}})  # fmt: skip
    engine.ingest({"type": "page", "anonymousId": "a2", "messageId": "m3"})
    engine.ingest({"type": "track", "event": "E", "anonymousId": "a2", "userId": "u1",
                   "messageId": "m4"})  # fmt: skip


def test_changes_reach_the_receiver_signed_and_in_order(receiver: Receiver, store_url: str) -> None:
    with Engine(settings_from(_config(receiver.url, store_url))) as engine:
        _story(engine)
        survivor = engine.profile("user_id:u1")["segment_id"]
        receiver.wait_for(lambda: any(r["type"] == "profile.merged" for r in receiver.received))
    assert receiver.bad_signatures == 0
    _assert_in_order(receiver.received, STORY)
    added = [i for r in receiver.received if r["type"] == "identifiers.added"
             for i in r["data"]["identifiers"]]  # fmt: skip
    assert {"type": "user_id", "id": "u1"} in added
    merged = receiver.received[-1]["data"]  # it waited for every change of both profiles
    assert merged["segment_id"] == survivor and len(merged["merged_segment_ids"]) == 1
    [traits] = [r["data"] for r in receiver.received if r["type"] == "traits.updated"]
    assert traits["traits"] == {"plan": "pro"}
    assert all(r["timestamp"].endswith("Z") for r in receiver.received)
    assert len(set(receiver.ids)) == len(receiver.ids)


def test_a_receiver_gets_only_the_kinds_it_asked_for(receiver: Receiver, tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'data.db'}"
    with Engine(settings_from(_config(receiver.url, url, ["merge"]))) as engine:
        _story(engine)
        receiver.wait_for(lambda: len(receiver.received) >= 1)
        engine.ingest({"type": "identify", "userId": "u9", "messageId": "m9"})
        assert engine.dispatcher is not None
        feed = engine.dispatcher.feeds[0]
        receiver.wait_for(lambda: feed.position is not None and feed.stats.backlog == 0)
    assert [r["type"] for r in receiver.received] == ["profile.merged"]


def test_a_receiver_that_was_down_gets_everything_also_after_a_restart(
    receiver: Receiver, store_url: str
) -> None:
    settings = settings_from(_config(receiver.url, store_url))
    receiver.failing = True
    with Engine(settings) as engine:
        _story(engine)
        assert engine.dispatcher is not None
        feed = engine.dispatcher.feeds[0]
        receiver.wait_for(lambda: feed.stats.failed >= 3)
        assert receiver.received == []
        assert engine.store.changes_left(feed.position or (0, 0)) == 4
    # Stopped while the receiver was down: the changes wait in the store.
    with Engine(settings, webhooks=False) as engine:
        assert engine.store.changes_left(engine.store.feed_position(feed.name) or (0, 0)) == 4
    receiver.failing = False
    with Engine(settings) as engine:
        receiver.wait_for(lambda: len(receiver.received) == 5)
        engine.ingest({"type": "identify", "userId": "u2", "messageId": "m5"})
        receiver.wait_for(lambda: len(receiver.received) == 6)
        assert engine.dispatcher is not None
        feed = engine.dispatcher.feeds[0]
        receiver.wait_for(lambda: engine.store.feed_position(feed.name) == feed.position)
        engine.dispatcher.prune()
        assert engine.store.changes_after((0, 0), 10) == []  # delivered rows are deleted
    _assert_in_order(receiver.received, [*STORY, ("identifiers.added", "m5")])


def test_without_webhooks_nothing_is_written_to_the_feed(make_engine: Any) -> None:
    engine = make_engine()
    _story(engine)
    assert engine.dispatcher is None and not engine.store.feed_changes
    assert engine.store.changes_after((0, 0), 10) == []


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        ({"url": "ftp://example.com/x", "secret": SECRET}, "webhooks[0].url"),
        ({"url": "http://example.com/x", "secret": "whsec_c2hvcnQ="}, "webhooks[0].secret"),
        ({"url": "http://example.com/x", "secret": "not-whsec-at-all"}, "webhooks[0].secret"),
        ({"url": "http://example.com/x", "secret": SECRET, "events": ["merges"]}, "events"),
        ({"url": "http://example.com/x", "secret": SECRET, "events": []}, "events"),
    ],
)
def test_bad_webhook_settings_are_refused_with_the_key(hook: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        settings_from({"webhooks": [hook]})
    assert hook["secret"] not in str(err.value)


def test_a_webhook_secret_is_never_shown() -> None:
    settings = settings_from({"webhooks": [{"url": "http://example.com/x", "secret": SECRET}]})
    assert SECRET not in repr(settings)


def test_metrics_show_the_backlog(receiver: Receiver, tmp_path: Any) -> None:
    from idstitch.http.app import App
    from tests.http.conftest import READ, TestClient

    receiver.failing = True
    config = _config(receiver.url, f"sqlite:///{tmp_path / 'data.db'}")
    config["access_tokens"] = [{"token": "tok-0123456789abcdef0123"}]
    with Engine(settings_from(config)) as engine:
        _story(engine)
        with TestClient(App(engine)) as client:
            text = client.get("/metrics", headers=READ).text
            name = engine.settings.webhooks[0].name
            port = receiver.url.split(":")[2].split("/")[0]
            labels = f'webhook="{name}",host="http://127.0.0.1:{port}"'
            assert f"idstitch_webhook_backlog{{{labels}}} 4" in text
            receiver.failing = False
            receiver.wait_for(lambda: len(receiver.received) == 5)
            assert engine.dispatcher is not None
            feed = engine.dispatcher.feeds[0]
            receiver.wait_for(lambda: feed.stats.delivered == 5)
            receiver.wait_for(lambda: engine.store.feed_position(name) == feed.position)
            text = client.get("/metrics", headers=READ).text
            assert f"idstitch_webhook_backlog{{{labels}}} 0" in text
            assert f"idstitch_webhook_deliveries_total{{{labels}}} 5" in text


@pytest.mark.postgres
def test_one_postgres_worker_at_a_time_delivers(receiver: Receiver, postgres_url: str) -> None:
    settings = settings_from(_config(receiver.url, postgres_url))
    with Engine(settings) as first, Engine(settings) as second:
        _story(first)
        second.ingest({"type": "identify", "userId": "u2", "messageId": "m5"})
        receiver.wait_for(lambda: len(receiver.received) == 6)
        feeds = [e.dispatcher.feeds[0] for e in (first, second) if e.dispatcher is not None]
        receiver.wait_for(lambda: sum(f.stats.delivered for f in feeds) == 6)
        assert sorted(f.stats.delivered for f in feeds) == [0, 6]
    assert len(set(receiver.ids)) == 6


def test_a_deletion_is_sent_and_a_rebuild_keeps_what_was_not_delivered(
    receiver: Receiver, store_url: str
) -> None:
    from idstitch import rebuild

    settings = settings_from(_config(receiver.url, store_url))
    receiver.failing = True
    with Engine(settings) as engine:
        _story(engine)
        engine.delete_identifier("user_id:u1", "anonymous_id", "a1")
    rebuild.run(settings, actor="test")
    receiver.failing = False
    with Engine(settings) as engine:
        receiver.wait_for(lambda: len(receiver.received) == 6)
        engine.ingest({"type": "identify", "userId": "u3", "messageId": "m6"})
        receiver.wait_for(lambda: len(receiver.received) == 7)
    # What was waiting, in order, once each (the copied history sent nothing again), then
    # what came after the rebuild.
    expected = [*STORY, ("identifiers.removed", None), ("identifiers.added", "m6")]
    _assert_in_order(receiver.received, expected)
    [removed] = [r["data"] for r in receiver.received if r["type"] == "identifiers.removed"]
    assert removed["identifiers"] == [{"type": "anonymous_id", "id": "a1"}]


def test_an_unmerge_sends_the_parts(receiver: Receiver, store_url: str) -> None:
    with Engine(settings_from(_config(receiver.url, store_url, ["merge"]))) as engine:
        engine.ingest({"type": "identify", "anonymousId": "kiosk", "userId": "ann",
                       "messageId": "k1"})  # fmt: skip
        engine.ingest({"type": "track", "event": "E", "anonymousId": "kiosk", "messageId": "k2",
                       "context": {"traits": {"email": "bob@example.com"}}})  # fmt: skip
        before = engine.profile("user_id:ann")["segment_id"]
        answer = engine.unmerge("user_id:ann", "anonymous_id:kiosk")
        receiver.wait_for(lambda: len(receiver.received) == 1)
    change = receiver.received[0]
    assert change["type"] == "profile.unmerged"
    assert change["data"]["segment_id"] == before
    assert change["data"]["blocked"] == {"type": "anonymous_id", "id": "kiosk"}
    parts = {p["segment_id"]: p["identifiers"] for p in change["data"]["parts"]}
    assert parts == {p["segment_id"]: p["external_ids"] for p in answer["parts"]}
    assert len(parts) == 2


# Acknowledges messages whose changes cannot be delivered yet, says so, and waits to be killed.
KILLED = """
import sys, time
from idstitch.config import settings_from
from idstitch.engine import Engine
config = {"storage": {"url": sys.argv[1]}, "identity": {"preset": "segment"},
          "webhooks": [{"url": sys.argv[2], "secret": sys.argv[3]}]}
engine = Engine(settings_from(config))
for n in range(20):
    engine.ingest({"type": "identify", "userId": f"k{n}", "messageId": f"k{n}"})
print("acknowledged", flush=True)
time.sleep(600)
"""


def test_changes_of_acknowledged_messages_survive_kill_9(
    receiver: Receiver, store_url: str
) -> None:
    receiver.failing = True
    with subprocess.Popen(
        [sys.executable, "-c", KILLED, store_url, receiver.url, SECRET],
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "acknowledged"
        finally:
            child.kill()  # SIGKILL
            child.wait(timeout=30)
    receiver.failing = False
    with Engine(settings_from(_config(receiver.url, store_url))):
        receiver.wait_for(lambda: len({r["data"]["message_id"] for r in receiver.received}) == 20)
    assert {r["data"]["message_id"] for r in receiver.received} == {f"k{n}" for n in range(20)}


def test_many_profiles_go_out_side_by_side_each_in_order(
    receiver: Receiver, store_url: str
) -> None:
    """Messy traffic (merges, shared devices, several sources) to a receiver that answers
    slowly: deliveries overlap, and each profile's changes still arrive in the feed's order."""
    from benchmarks.messy import generate

    settings = settings_from(_config(receiver.url, store_url))
    with Engine(settings, webhooks=False) as engine:
        for source, message in generate(persons=40, seed=3).messages:
            engine.ingest(message, source=source)
        expected = [
            (change["type"], change.get("message_id"))
            for row in engine.store.changes_after((0, 0), 100_000)
            for change in json.loads(row.changes)
        ]
    assert sum(t == "profile.merged" for t, _ in expected) >= 3
    receiver.delay = 0.004
    with Engine(settings) as engine:
        receiver.wait_for(lambda: len(receiver.received) == len(expected))
    _assert_in_order(receiver.received, expected)
    got = [(r["type"], r["data"].get("message_id")) for r in receiver.received]
    assert got != expected  # they did overlap: unrelated profiles' changes went out of order
