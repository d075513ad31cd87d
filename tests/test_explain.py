"""Why two identifiers are one profile, and why not, on every store: `Engine.explain`,
`Engine.refusals` and `Store.shared_values`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import idstitch
from idstitch.cli import main as cli
from idstitch.engine import Engine
from idstitch.errors import ProfileNotFound
from tests.conftest import MakeEngine
from tests.helpers import at, msg


def _story(engine: Engine) -> None:
    """a1 logs in as u1; a2 browses alone, then logs in as u1 (a merge); a3 logs in as u1,
    then as u2 (refused: one user_id per profile); u1 renames to u9 by an alias."""
    send = engine.ingest
    send(msg("page", anonymousId="a1", messageId="m1", timestamp=at(0)))
    send(msg("identify", anonymousId="a1", userId="u1", messageId="m2", timestamp=at(1),
             traits={"email": "x@example.com"}))  # fmt: skip
    send(msg("track", anonymousId="a2", messageId="m3", timestamp=at(2)))
    send(msg("identify", anonymousId="a2", userId="u1", messageId="m4", timestamp=at(3)))
    send(msg("identify", anonymousId="a3", userId="u1", messageId="m5", timestamp=at(4)))
    send(msg("identify", anonymousId="a3", userId="u2", messageId="m6", timestamp=at(5)))
    send(msg("page", anonymousId="a9", messageId="m7", timestamp=at(6)))


def _steps(answer: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [(s["from"], s["to"], s["kind"], s["message_id"]) for s in answer["path"]]


def test_explain_gives_the_shortest_chain_of_messages(make_engine: MakeEngine) -> None:
    engine = make_engine()
    _story(engine)
    answer = engine.explain("anonymous_id:a1", "anonymous_id:a2")
    assert answer["together"] and answer["complete"] and answer["refusals"] == []
    assert _steps(answer) == [
        ("anonymous_id:a1", "user_id:u1", "attach", "m2"),
        ("user_id:u1", "anonymous_id:a2", "merge", "m4"),
    ]
    assert [s["source"] for s in answer["path"]] == ["api", "api"]
    assert answer["path"][1]["timestamp"] == at(3).replace("Z", ".000Z")
    one = engine.explain("user_id:u1", "email:x@example.com")
    assert _steps(one) == [("user_id:u1", "email:x@example.com", "attach", "m2")]
    # The same identifier: no step at all.
    assert engine.explain("user_id:u1", "user_id:u1")["path"] == []


def test_a_segment_id_stands_for_what_its_profile_first_held(make_engine: MakeEngine) -> None:
    engine = make_engine()
    _story(engine)
    merged = engine.merges("user_id:u1")
    assert len(merged) == 1
    away = merged[0]["from_segment_id"]  # the profile a2 made before it logged in
    answer = engine.explain(away, "anonymous_id:a1")
    assert answer["together"]
    assert _steps(answer) == [
        ("anonymous_id:a2", "user_id:u1", "merge", "m4"),
        ("user_id:u1", "anonymous_id:a1", "attach", "m2"),
    ]


def test_two_profiles_kept_apart_show_the_refusals_between_them(make_engine: MakeEngine) -> None:
    engine = make_engine()
    _story(engine)
    u1, u2 = (engine.profile(f"user_id:{u}")["segment_id"] for u in ("u1", "u2"))
    answer = engine.explain("user_id:u1", "user_id:u2")
    assert not answer["together"] and answer["path"] == []
    assert answer["segment_ids"] == [u1, u2]
    [refusal] = answer["refusals"]
    assert {k: refusal[k] for k in ("rule", "type", "value", "message_id", "source")} == {
        "rule": "limit_exceeded",
        "type": "anonymous_id",
        "value": "a3",
        "message_id": "m6",
        "source": "api",
    }
    assert (refusal["segment_id"], refusal["other_segment_id"]) == (u1, u2)
    # From the other side, the same refusal with the sides swapped.
    [back] = engine.explain("user_id:u2", "anonymous_id:a3")["refusals"]
    assert (back["segment_id"], back["other_segment_id"]) == (u2, u1)
    # Never near each other: apart, and nothing to show.
    never = engine.explain("anonymous_id:a9", "user_id:u2")
    assert never == {**never, "together": False, "path": [], "refusals": []}
    with pytest.raises(ProfileNotFound):
        engine.explain("user_id:u1", "user_id:nobody")


def test_a_profiles_refusals_come_from_both_sides(make_engine: MakeEngine) -> None:
    engine = make_engine()
    _story(engine)
    engine.ingest(msg("identify", userId="u1", traits={"email": "null"}, messageId="m8"))
    u1, u2 = (engine.profile(f"user_id:{u}")["segment_id"] for u in ("u1", "u2"))
    mine = engine.refusals("user_id:u1")
    # Newest first: its own message's blocked e-mail, then the refusal that kept u2 out.
    assert [(r["rule"], r["value"], r["message_id"]) for r in mine] == [
        ("blocked_value", "null", "m8"),
        ("limit_exceeded", "a3", "m6"),
    ]
    assert [(r["segment_id"], r["other_segment_id"]) for r in mine] == [(u1, None), (u1, u2)]
    theirs = engine.refusals("user_id:u2")
    assert [(r["rule"], r["segment_id"], r["other_segment_id"]) for r in theirs] == [
        ("limit_exceeded", u2, u1)
    ]
    assert engine.refusals("user_id:u1", limit=1) == mine[:1]
    assert engine.refusals("anonymous_id:a9") == []


def test_external_ids_name_the_profile_that_first_held_them(make_engine: MakeEngine) -> None:
    engine = make_engine()
    _story(engine)
    row = engine.reads.find("user_id:u1")
    away = engine.merges("user_id:u1")[0]["from_segment_id"]
    held = {(r.type, r.id): r.segment_id for r in engine.reads.external_ids(row)}
    assert held[("anonymous_id", "a2")] == away
    assert held[("anonymous_id", "a1")] == held[("user_id", "u1")] == row.segment_id


def test_shared_values_count_the_profiles_a_value_was_refused_from(
    make_engine: MakeEngine,
) -> None:
    engine = make_engine()
    for n in range(4):
        engine.ingest(msg("identify", userId=f"k{n}", anonymousId="kiosk"))
    engine.ingest(msg("identify", userId="s0", anonymousId="pair"))
    engine.ingest(msg("identify", userId="s1", anonymousId="pair"))
    found = engine.store.shared_values(2, 10)
    assert [(v.type, v.value, v.profiles, v.rules) for v in found] == [
        ("anonymous_id", "kiosk", 4, ["limit_exceeded"]),
        ("anonymous_id", "pair", 2, ["limit_exceeded"]),
    ]
    assert [v.value for v in engine.store.shared_values(3, 10)] == ["kiosk"]
    assert engine.store.shared_values(2, 1) == found[:1]


def test_the_cli_explains_and_lists_refusals(store_url: str, tmp_path: Path) -> None:
    config = tmp_path / "idstitch.toml"
    config.write_text(f'[storage]\nurl = "{store_url}"\n[identity]\npreset = "segment"\n')
    with idstitch.open(str(config)) as engine:
        _story(engine)
    runner = CliRunner()
    apart = runner.invoke(cli, ["explain", "--config", str(config), "user_id:u1", "user_id:u2"])
    assert apart.exit_code == 0, apart.output
    assert "are two profiles" in apart.stdout and "kept apart by:" in apart.stdout
    assert "anonymous_id:a3  limit_exceeded" in apart.stdout and "message m6" in apart.stdout
    together = runner.invoke(
        cli, ["explain", "--config", str(config), "--json", "anonymous_id:a1", "anonymous_id:a2"]
    )
    assert together.exit_code == 0, together.output
    answer = json.loads(together.stdout)
    assert _steps(answer) == [
        ("anonymous_id:a1", "user_id:u1", "attach", "m2"),
        ("user_id:u1", "anonymous_id:a2", "merge", "m4"),
    ]
    missing = runner.invoke(cli, ["explain", "--config", str(config), "user_id:u1", "user_id:zz"])
    assert missing.exit_code == 1 and "not found" in missing.stderr
    shown = runner.invoke(cli, ["profile", "--config", str(config), "user_id:u2"])
    assert shown.exit_code == 0, shown.output
    assert "refusals, newest first" in shown.stdout
    assert "anonymous_id:a3  limit_exceeded  (would have joined use_" in shown.stdout
