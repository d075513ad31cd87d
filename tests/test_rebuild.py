"""`idstitch rebuild --dry-run` on every store: the stored history resolved again under
another config's rules gives the partition a fresh store sent the same messages under those
rules gives, and the report counts what changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from benchmarks.messy import generate
from idstitch import rebuild
from idstitch.cli import main as cli
from idstitch.config import settings_from
from idstitch.engine import Engine
from tests.conftest import MakeEngine
from tests.core.pure import Core

Sent = list[tuple[str, dict[str, Any]]]


def _messy() -> Sent:
    """About 60 persons' messy traffic: heavy users, kiosks, shared phones, placeholders."""
    return list(generate(persons=60, seed=5).messages)


def _send(engine: Engine, sent: Sent) -> None:
    received = 1_800_000_000.0
    for source, message in sent:
        received += 1
        engine.ingest(message, source=source, received_at=received)


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


def test_a_replay_applies_deletions_and_unmerges_again(make_engine: MakeEngine) -> None:
    engine = make_engine({"identity": {"preset": "segment"}})
    engine.ingest({"type": "identify", "anonymousId": "kiosk", "userId": "ann", "messageId": "1"})
    engine.ingest({"type": "identify", "userId": "ann", "messageId": "2",
                   "traits": {"email": "ann@example.com"}})  # fmt: skip
    engine.ingest({"type": "track", "event": "E", "anonymousId": "kiosk", "messageId": "3",
                   "context": {"traits": {"email": "bob@example.com"}}})  # fmt: skip
    engine.delete_identifier("user_id:ann", "email", "ann@example.com")
    engine.unmerge("user_id:ann", "anonymous_id:kiosk")
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
    refused = runner.invoke(cli, ["rebuild", "--config", str(new)])
    assert refused.exit_code == 2 and "--dry-run" in refused.stderr
    # A dry run changes nothing: the store's own rules still see every profile unchanged.
    again = runner.invoke(cli, ["rebuild", "--config", str(old), "--dry-run", "--json"])
    kept = json.loads(again.stdout)
    assert kept["unchanged"] == kept["profiles_before"] == answer["profiles_before"]
