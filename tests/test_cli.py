"""The command line as a user runs it: import (plain, gzip, directories, resume), profile."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from idstitch.cli import main


def write_lines(path: Path, messages: list[dict[str, object]], compress: bool = False) -> None:
    data = "".join(json.dumps(m) + "\n" for m in messages).encode()
    path.write_bytes(gzip.compress(data) if compress else data)


def config_file(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "idstitch.toml"
    path.write_text(f'[storage]\nurl = "sqlite:///{tmp_path / "data.db"}"\n{extra}')
    return path


def track(i: int, **fields: object) -> dict[str, object]:
    return {
        "type": "track",
        "event": "Viewed",
        "anonymousId": f"a{i}",
        "messageId": f"m{i}",
        "timestamp": "2025-01-01T00:00:00Z",
        **fields,
    }


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_help_documents_every_command() -> None:
    code, out = run("--help")
    assert code == 0
    for command in ("serve", "import", "profile", "migrate"):
        assert command in out
    for command, words in (
        ("import", ["--source", "resumes", ".gz"]),
        ("profile", ["--json", "type:value", "Exit status"]),
        ("serve", ["--host", "--port", "write key"]),
    ):
        code, out = run(command, "--help")
        assert code == 0
        for word in words:
            assert word in out, (command, word)


def test_import_plain_gzip_and_directories_then_profile_json(tmp_path: Path) -> None:
    cfg = config_file(tmp_path)
    data = tmp_path / "in"
    (data / "sub").mkdir(parents=True)
    write_lines(data / "a.jsonl", [track(1), track(2, userId="u1"), track(3, userId="u1")])
    write_lines(
        data / "sub" / "b.jsonl.gz",
        [
            {
                "type": "identify",
                "userId": "u1",
                "traits": {"email": "U1@X.com", "plan": "pro"},
                "messageId": "m4",
            }
        ],
        compress=True,
    )
    (data / "notes.md").write_text("not data")
    code, out = run("import", "--config", str(cfg), "--source", "backfill", str(data))
    assert code == 0, out
    assert "events" in out and "4" in out
    assert "profiles created" in out
    code, out = run("profile", "--config", str(cfg), "--json", "email:u1@x.com", "user_id:none")
    assert code == 1  # one REF was not found
    first, second = (json.loads(line) for line in out.strip().splitlines())
    assert set(first) == {
        "ref",
        "segment_id",
        "collection",
        "traits",
        "external_ids",
        "links",
        "metadata",
    }
    assert first["ref"] == "email:u1@x.com"
    assert first["traits"] == {"email": "U1@X.com", "plan": "pro"}
    assert {(e["type"], e["id"]) for e in first["external_ids"]} == {
        ("anonymous_id", "a2"),
        ("anonymous_id", "a3"),
        ("user_id", "u1"),
        ("email", "u1@x.com"),
    }
    assert all(
        set(e) == {"type", "id", "collection", "source_id", "created_at"}
        for e in first["external_ids"]
    )
    assert {e["source_id"] for e in first["external_ids"]} == {"backfill"}
    assert second == {"ref": "user_id:none", "error": "not_found"}
    code, out = run("profile", "--config", str(cfg), "anonymous_id:a1")
    assert code == 0 and "anonymous_id" in out


def test_import_resumes_and_skips_what_is_stored(tmp_path: Path) -> None:
    cfg = config_file(tmp_path)
    path = tmp_path / "events.jsonl"
    write_lines(path, [track(i) for i in range(50)])
    code, out = run("import", "--config", str(cfg), "--batch-size", "7", str(path))
    assert code == 0, out
    with path.open("a") as f:
        for i in range(50, 60):
            f.write(json.dumps(track(i)) + "\n")
        f.write(json.dumps({"type": "page", "anonymousId": "no-id"}) + "\n")
    code, out = run("import", "--config", str(cfg), str(path))
    assert code == 0, out
    lines = {
        row.split("│")[1].strip(): row.split("│")[2].strip()
        for row in out.splitlines()
        if row.count("│") == 3
    }
    assert lines["events"] == "11"
    assert lines["resumed past"].endswith("bytes") and lines["resumed past"] != "0 bytes"
    # A fresh source reads everything again; messages without messageId get a stable one,
    # so a re-run under that source deduplicates them too.
    code, out = run("import", "--config", str(cfg), "--source", "again", str(path))
    assert code == 0
    code, out = run("import", "--config", str(cfg), "--source", "again", str(path))
    lines = {
        row.split("│")[1].strip(): row.split("│")[2].strip()
        for row in out.splitlines()
        if row.count("│") == 3
    }
    assert lines["events"] == "0"


def test_import_reports_invalid_lines_without_stopping(tmp_path: Path) -> None:
    cfg = config_file(tmp_path)
    path = tmp_path / "events.jsonl"
    path.write_text(
        json.dumps(track(1))
        + "\n{broken\n"
        + json.dumps({"type": "track"})
        + "\n"
        + json.dumps(track(2))
        + "\n"
    )
    result = CliRunner().invoke(main, ["import", "--config", str(cfg), str(path)])
    assert result.exit_code == 0
    assert "invalid lines" in result.output
    assert "events.jsonl:2" in result.output and "events.jsonl:3" in result.output


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ('[identity]\npriority = "user_id"\n', ["identity.priority", "must be a list"]),
        ("[identity.limits]\nemail = { max = 0 }\n", ["identity.limits.email.max"]),
        ("not toml = = =\n", ["not valid TOML"]),
        ('[storage]\nurl = "mysql://x"\n', ["mysql://x"]),
    ],
)
def test_bad_config_exits_non_zero_with_one_sentence(
    tmp_path: Path, config: str, words: list[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(config)
    result = CliRunner().invoke(main, ["profile", "--config", str(path), "user_id:x"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.output


def test_missing_paths_and_config_are_clear(tmp_path: Path) -> None:
    cfg = config_file(tmp_path)
    code, out = run("import", "--config", str(cfg), str(tmp_path / "nope.jsonl"))
    assert code == 2 and "neither a file nor a directory" in out
    code, out = run("profile", "--config", str(tmp_path / "missing.toml"), "user_id:x")
    assert code == 2 and "does not exist" in out


def test_migrate_reports_applied_migrations(tmp_path: Path) -> None:
    cfg = config_file(tmp_path)
    code, out = run("migrate", "--config", str(cfg))
    assert code == 0 and "0001_initial" in out
    code, out = run("migrate", "--config", str(cfg))
    assert code == 0 and "up to date" in out
