"""`idstitch rebuild` on every store: the stored history resolved again under another
config's rules gives the partition a fresh store sent the same messages under those rules
gives, the dry run reports what the real run then does, old segment_ids keep resolving,
repairs are applied again, and a crash before the swap leaves the old graph."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from benchmarks.messy import generate
from idstitch import rebuild, store_rules
from idstitch.cli import main as cli
from idstitch.config import settings_from
from idstitch.engine import Engine
from idstitch.errors import ProfileNotFound
from idstitch.storage.base import Store
from tests.conftest import MakeEngine
from tests.core.pure import Core

Sent = list[tuple[str, dict[str, Any]]]


def _messy() -> Sent:
    """About 60 persons' messy traffic: heavy users, kiosks, shared phones, placeholders."""
    return list(generate(persons=60, seed=5).messages)


def _send(engine: Engine, sent: Sent) -> None:
    """As `ingest` one by one, each received a second after the one before (as the pure
    core of tests/core/pure.py numbers them), written a run of one source at a time."""
    received = 1_800_000_000.0
    run: list[Any] = []
    for n, (source, message) in enumerate(sent):
        received += 1
        run.append(engine.prepare(message, received_at=received))
        if n + 1 == len(sent) or sent[n + 1][0] != source:
            engine.submit(run, source).future.result()
            run = []


def _groups(partition: dict[tuple[str, str, str], str]) -> set[frozenset[tuple[str, str, str]]]:
    by: dict[str, set[tuple[str, str, str]]] = {}
    for ident, segment_id in partition.items():
        by.setdefault(segment_id, set()).add(ident)
    return {frozenset(ids) for ids in by.values()}


def test_a_replay_under_new_rules_equals_a_fresh_store_under_them(
    make_engine: MakeEngine,
) -> None:
    sent = _messy()
    engine = make_engine({"identity": {"preset": "segment"}})
    _send(engine, sent)
    before = {(c, t, v): s for c, t, v, s in engine.store.partition()}
    new_rules = settings_from({"identity": {"preset": "idstitch"}}).rules
    replayed, messages = rebuild.replay(engine.store, new_rules)
    assert messages == engine.store.stats().events
    answer = rebuild.report(engine.store, new_rules)
    same = rebuild.report(engine.store, engine.rules)
    # A fresh start under the new rules: the identity core sent the same messages.
    core = Core({"identity": {"preset": "idstitch"}})
    for source, message in sent:
        core.ingest(message, source=source)
    expected = {}
    for slot, ident in core.attached.items():
        state = core.graph.owner(slot)
        if state is not None:
            expected[ident] = state.segment_id
    # The same profiles, and the same segment_ids: each is made by the same message.
    assert replayed == expected
    assert _groups(replayed) != _groups(before)  # the presets do differ on this traffic
    assert answer["profiles_before"] == len(_groups(before))
    assert answer["profiles_after"] == len(_groups(expected))
    assert answer["split"] + answer["merged"] + answer["changed"] > 0
    assert answer["unchanged"] < answer["profiles_before"]
    assert 0 < len(answer["largest"]) <= 20
    biggest = answer["largest"][0]
    assert biggest["identifiers_moved"] == max(c["identifiers_moved"] for c in answer["largest"])
    # Under the store's own rules nothing changes.
    assert same["unchanged"] == same["profiles_before"] == same["profiles_after"]
    assert same["split"] == same["merged"] == same["changed"] == 0 and same["largest"] == []


def _repaired(make_engine: MakeEngine) -> Engine:
    """A kiosk's cookie joined to ann, then bob's e-mail typed on it; ann's e-mail deleted,
    then her profile unmerged by the cookie."""
    engine = make_engine({"identity": {"preset": "segment"}})
    engine.ingest({"type": "identify", "anonymousId": "kiosk", "userId": "ann", "messageId": "1"})
    engine.ingest({"type": "identify", "userId": "ann", "messageId": "2",
                   "traits": {"email": "ann@example.com"}})  # fmt: skip
    engine.ingest({"type": "track", "event": "E", "anonymousId": "kiosk", "messageId": "3",
                   "context": {"traits": {"email": "bob@example.com"}}})  # fmt: skip
    engine.delete_identifier("user_id:ann", "email", "ann@example.com")
    engine.unmerge("user_id:ann", "anonymous_id:kiosk")
    return engine


def test_a_replay_applies_deletions_and_unmerges_again(make_engine: MakeEngine) -> None:
    engine = _repaired(make_engine)
    report = rebuild.report(engine.store, engine.rules)
    assert report["unchanged"] == report["profiles_before"] == 2, report


def test_the_cli_reports_a_dry_run(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'data.db'}"
    old = tmp_path / "old.toml"
    old.write_text(f'[storage]\nurl = "{url}"\n[identity]\npreset = "segment"\n')
    new = tmp_path / "new.toml"
    new.write_text(f'[storage]\nurl = "{url}"\n[identity]\npreset = "idstitch"\n')
    with Engine(settings_from({"storage": {"url": url}, "identity": {"preset": "segment"}})) as e:
        _send(e, _messy())
        events = e.store.stats().events
    runner = CliRunner()
    shown = runner.invoke(cli, ["rebuild", "--config", str(new), "--dry-run"])
    assert shown.exit_code == 0, shown.output
    assert f"resolved {events:,} messages again" in shown.stdout and "split" in shown.stdout
    as_json = runner.invoke(cli, ["rebuild", "--config", str(new), "--dry-run", "--json"])
    answer = json.loads(as_json.stdout)
    assert set(answer) >= {"profiles_before", "profiles_after", "unchanged", "split", "merged",
                           "largest"}  # fmt: skip
    # A dry run changes nothing: the store's own rules still see every profile unchanged.
    again = runner.invoke(cli, ["rebuild", "--config", str(old), "--dry-run", "--json"])
    kept = json.loads(again.stdout)
    assert kept["unchanged"] == kept["profiles_before"] == answer["profiles_before"]
    # The real run, while a service holds the store: refused, nothing changed.
    with Engine(settings_from({"storage": {"url": url}})):
        busy = runner.invoke(cli, ["rebuild", "--config", str(new)])
    assert busy.exit_code == 2 and "another idstitch process is writing" in busy.stderr
    done = runner.invoke(cli, ["rebuild", "--config", str(new)])
    assert done.exit_code == 0, done.output
    assert "the new graph is in place" in done.stdout
    assert f"profiles {answer['profiles_before']:,} -> {answer['profiles_after']:,}" in done.stdout
    # Now the store's rules are the new ones: nothing more to change under them.
    after = json.loads(
        runner.invoke(cli, ["rebuild", "--config", str(new), "--dry-run", "--json"]).stdout
    )
    assert after["unchanged"] == after["profiles_before"] == answer["profiles_after"]
    # The old config's rules are not the store's any more: doctor says so.
    doctor = runner.invoke(cli, ["doctor", "--config", str(old)])
    assert "differ from the ones the store was rebuilt under" in doctor.output
    assert "rebuilt under" not in runner.invoke(cli, ["doctor", "--config", str(new)]).output


def _partition(store: Store) -> dict[tuple[str, str, str], str]:
    return {(c, t, v): s for c, t, v, s in store.partition()}


def test_a_rebuild_equals_a_fresh_import_under_the_new_rules(
    store_url: str, tmp_path: Path
) -> None:
    sent = _messy()
    old = settings_from({"storage": {"url": store_url}, "identity": {"preset": "segment"}})
    new = settings_from({"storage": {"url": store_url}, "identity": {"preset": "idstitch"}})
    with Engine(old) as engine:
        _send(engine, sent)
        before = _partition(engine.store)
        origins = list(engine.store.origins())
        dry = rebuild.report(engine.store, new.rules)
        stored = engine.store.stats().events  # retried messages are stored once
    answer = rebuild.run(new, actor="test")
    # The dry run said what the real run did.
    for key in ("profiles_before", "profiles_after", "unchanged", "split", "merged", "changed"):
        assert answer[key] == dry[key], key
    assert answer["largest"] == dry["largest"]
    assert answer["messages"] == stored
    fresh_url = f"sqlite:///{tmp_path / 'fresh.db'}"
    with Engine(
        settings_from({"storage": {"url": fresh_url}, "identity": {"preset": "idstitch"}})
    ) as fresh:
        _send(fresh, sent)
        expected = _partition(fresh.store)
    with Engine(new) as engine:
        rebuilt = _partition(engine.store)
        assert rebuilt == expected  # identifier for identifier, segment_id for segment_id
        assert _groups(rebuilt) != _groups(before)
        assert engine.store.stats().events == stored
        # Every old segment_id, merged away or not, still names a profile: the one holding
        # the message that made it.
        moved = 0
        for origin in origins:
            found = engine.store.find_by_segment_id(origin.segment_id)
            assert found is not None, origin
            moved += found.segment_id != origin.segment_id
        assert moved >= answer["kept_segment_ids"] > 0
        # The new rules are the store's now.
        assert engine.rules_drift() is None
        drift = store_rules.rules_drift(engine.store, old.rules)
        assert drift is not None and "idstitch rebuild" in drift
        # The store takes new messages as before.
        engine.ingest({"type": "identify", "userId": "after-rebuild", "messageId": "new-1"})
        assert engine.profile("user_id:after-rebuild")["segment_id"].startswith("use_")


def test_a_rebuild_applies_deletions_and_unmerges_again(make_engine: MakeEngine) -> None:
    engine = _repaired(make_engine)
    before = _partition(engine.store)
    blocked = [(b.collection, b.type, b.value) for b in engine.store.blocked_identifiers()]
    settings = engine.settings
    engine.close()
    answer = rebuild.run(settings, actor="test")
    assert answer["unchanged"] == answer["profiles_before"] == 2, answer
    assert answer["deletions_applied"] == 1
    with Engine(settings) as again:
        assert _partition(again.store) == before
        assert [(b.collection, b.type, b.value) for b in again.store.blocked_identifiers()] == (
            blocked
        )
        kinds = [op.kind for op in again.store.operations()]
        assert kinds == ["unmerge", "delete_identifier", "rebuild"]
        with pytest.raises(ProfileNotFound):
            again.profile("email:ann@example.com")
        # Still blocked: the kiosk's cookie joins nothing.
        again.ingest({"type": "identify", "anonymousId": "kiosk", "userId": "cy", "messageId": "4"})
        assert (
            again.profile("user_id:cy")["segment_id"] != again.profile("user_id:ann")["segment_id"]
        )


# A rebuild that dies: after its first batch is copied, or in the middle of its swap (SQLite:
# between renaming the index and the store; PostgreSQL: before the renames commit).
CRASH = """
import os, signal, sys
from idstitch import rebuild, store_rules
from idstitch.config import settings_from

def die(*_args, **_kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def after(original):
    def call(*args, **kwargs):
        original(*args, **kwargs)
        die()
    return call

if sys.argv[2] == "copying":
    rebuild._Copier._settle = after(rebuild._Copier._settle)
elif sys.argv[1].startswith("sqlite"):
    from idstitch.storage import sqlite_swap
    sqlite_swap._sync_directory = die
else:
    from idstitch.storage import pg_swap
    pg_swap.PostgresRebuilding.swap = after(pg_swap.PostgresRebuilding.swap)
settings = settings_from({"storage": {"url": sys.argv[1]}, "identity": {"preset": "idstitch"}})
rebuild.run(settings, actor="test")
"""


@pytest.mark.parametrize("where", ["copying", "swapping"])
def test_a_crash_leaves_the_old_graph_serving(store_url: str, where: str) -> None:
    old = settings_from({"storage": {"url": store_url}, "identity": {"preset": "segment"}})
    new = settings_from({"storage": {"url": store_url}, "identity": {"preset": "idstitch"}})
    with Engine(old) as engine:
        _send(engine, _messy())
        before = _partition(engine.store)
        expected = rebuild.report(engine.store, new.rules)
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH, store_url, where], capture_output=True, timeout=120
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr.decode()
    with Engine(old) as engine:
        assert _partition(engine.store) == before
        assert store_rules.store_rules(engine.store) is None  # never rebuilt
    # The next rebuild clears what the crashed one left and completes.
    answer = rebuild.run(new, actor="test")
    assert answer["profiles_after"] == expected["profiles_after"]
    with Engine(new) as engine:
        assert len(_groups(_partition(engine.store))) == expected["profiles_after"]
    if store_url.startswith("postgresql"):
        assert _schemas_beside(store_url) == []


def _schemas_beside(url: str) -> list[str]:
    """The schemas a rebuild of the store at `url` makes beside its own."""
    import psycopg

    with psycopg.connect(url) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname IN "
                "(current_schema() || '_rebuild', current_schema() || '_replaced')"
            )
        ]


@pytest.mark.postgres
def test_postgres_workers_write_on_through_a_rebuild(postgres_url: str) -> None:
    """Messages acknowledged while the graph is rebuilt are in the new graph: copied before
    the swap, or written to it after."""
    old = settings_from({"storage": {"url": postgres_url}, "identity": {"preset": "segment"}})
    new = settings_from({"storage": {"url": postgres_url}, "identity": {"preset": "idstitch"}})
    with Engine(old) as engine:
        _send(engine, _messy())
    acknowledged: list[str] = []
    done = threading.Event()

    def write() -> None:
        with Engine(old) as worker:
            n, last = 0, 0
            # On through the rebuild, then 20 more into the new graph.
            while not last or n < last:
                if done.is_set() and not last:
                    last = n + 20
                n += 1
                mid = f"during-{n}"
                worker.ingest({"type": "identify", "userId": f"w{n % 7}", "messageId": mid,
                               "anonymousId": f"a{n}"})  # fmt: skip
                acknowledged.append(mid)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        while len(acknowledged) < 5:
            time.sleep(0.01)
        rebuild.run(new, actor="test")
    finally:
        done.set()
        writer.join(timeout=60)
    with Engine(new) as engine:
        stored = set()
        after = 0
        while page := engine.store.history(after, 1000):
            stored.update(m.message_id for m in page)
            after = page[-1].seq
        assert set(acknowledged) <= stored
        for n in range(7):
            assert engine.profile(f"user_id:w{n}")["segment_id"]
