"""Repairs on every store, through the library and the CLI: an unmerge survives a restart
(its block list too), a deleted identifier stays deleted, both leave an audit record, and
`idstitch unmerge` / `idstitch doctor` show them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import idstitch
from idstitch.cli import main as cli
from idstitch.engine import Engine
from idstitch.errors import ProfileNotFound
from tests.conftest import MakeEngine


def _kiosk(engine: Engine) -> None:
    """A kiosk's browser: Ann browses on it, then logs in; later Bob browses on it too and
    types his e-mail into a form. His browsing lands on Ann's profile (one cookie)."""
    send = engine.ingest
    send({"type": "page", "anonymousId": "kiosk", "messageId": "k1"})
    send({"type": "identify", "anonymousId": "kiosk", "userId": "ann", "messageId": "k2"})
    send({"type": "page", "anonymousId": "phone-ann", "messageId": "k3"})
    send({"type": "identify", "anonymousId": "phone-ann", "userId": "ann", "messageId": "k4"})
    send({"type": "identify", "anonymousId": "kiosk", "messageId": "k5",
          "traits": {"email": "bob@example.com"}})  # fmt: skip
    send({"type": "track", "anonymousId": "kiosk", "event": "Viewed", "messageId": "k6",
          "context": {"traits": {"email": "bob@example.com"}}})  # fmt: skip


def test_an_unmerge_and_its_block_list_survive_a_restart(make_engine: MakeEngine) -> None:
    engine = make_engine()
    _kiosk(engine)
    ann = engine.profile("user_id:ann")
    assert ann["segment_id"] == engine.profile("email:bob@example.com")["segment_id"]
    answer = engine.unmerge("user_id:ann", "anonymous_id:kiosk", actor="tester")
    parts = {
        p["segment_id"]: {(i["type"], i["id"]) for i in p["external_ids"]} for p in answer["parts"]
    }
    # Ann keeps her profile (its oldest message, k1, carried only the kiosk's cookie: the
    # part holding the oldest message that still resolves, k2, keeps the segment_id).
    assert parts[ann["segment_id"]] == {("user_id", "ann"), ("anonymous_id", "phone-ann")}
    [bob] = [sid for sid in parts if sid != ann["segment_id"]]
    assert parts[bob] == {("email", "bob@example.com")}
    engine.close()
    again = make_engine()
    assert again.profile("user_id:ann")["segment_id"] == ann["segment_id"]
    assert again.profile("email:bob@example.com")["segment_id"] == bob
    with_bob = [e["message_id"] for e in again.events("email:bob@example.com", sort="asc")]
    assert with_bob == ["k5", "k6"]
    # The kiosk's cookie links nothing now, after the restart too.
    again.ingest({"type": "identify", "anonymousId": "kiosk", "userId": "ann"})
    again.ingest({"type": "track", "anonymousId": "kiosk", "event": "E",
                  "context": {"traits": {"email": "bob@example.com"}}})  # fmt: skip
    assert again.profile("email:bob@example.com")["segment_id"] == bob
    with pytest.raises(ProfileNotFound):  # the blocked cookie finds no profile
        again.profile("anonymous_id:kiosk")
    [blocked] = again.blocked_identifiers()
    assert (blocked["type"], blocked["id"], blocked["actor"]) == ("anonymous_id", "kiosk", "tester")
    assert blocked["unmerged_from"] == ann["segment_id"]
    # The refusals say why a new message carrying it joined nothing.
    assert any(r["rule"] == "blocked_value" and r["id"] == "kiosk" for r in again.violations(10))


def test_a_deleted_identifier_stays_deleted_after_a_restart(make_engine: MakeEngine) -> None:
    engine = make_engine()
    _kiosk(engine)
    engine.delete_identifier("user_id:ann", "email", "bob@example.com", actor="tester")
    engine.close()
    again = make_engine()
    with pytest.raises(ProfileNotFound):  # the deleted identifier finds no profile
        again.profile("email:bob@example.com")
    ids = {(e["type"], e["id"]) for e in again.profile("user_id:ann")["external_ids"]}
    assert ("email", "bob@example.com") not in ids and ("anonymous_id", "kiosk") in ids


def test_the_cli_unmerges_and_doctor_shows_the_block_list(tmp_path: Path) -> None:
    config = tmp_path / "idstitch.toml"
    config.write_text(f'[storage]\nurl = "sqlite:///{tmp_path / "data.db"}"\n')
    with idstitch.open(str(config)) as engine:
        _kiosk(engine)
    runner = CliRunner()
    done = runner.invoke(
        cli,
        ["unmerge", "--config", str(config), "user_id:ann", "--identifier", "anonymous_id:kiosk"],
    )
    assert done.exit_code == 0, done.output
    assert "into 2 part(s)" in done.stdout and "email:bob@example.com" in done.stdout
    again = runner.invoke(
        cli,
        ["unmerge", "--config", str(config), "--json", "user_id:ann", "--identifier",
         "anonymous_id:phone-ann"],
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    assert [p["external_ids"] for p in json.loads(again.stdout)["parts"]] == [
        [{"type": "user_id", "id": "ann"}]
    ]
    missing = runner.invoke(
        cli, ["unmerge", "--config", str(config), "user_id:ann", "--identifier", "email:zz@x.io"]
    )
    assert missing.exit_code == 1 and "does not hold email:zz@x.io" in missing.stderr
    doctor = runner.invoke(cli, ["doctor", "--config", str(config)])
    assert doctor.exit_code == 0, doctor.output
    assert "stored block list, from unmerges (2):" in doctor.stdout
    assert "anonymous_id:kiosk  unmerged from use_" in doctor.stdout and "by cli:" in doctor.stdout
