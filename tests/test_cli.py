"""The command line as a user runs it: import (plain, gzip, directories, resume), profile."""

from __future__ import annotations

import gzip
import json
import tomllib
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner

import idstitch
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
        "refusals",
    }
    assert first["refusals"] == []
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


def test_identical_lines_without_message_id_are_two_messages(tmp_path: Path) -> None:
    """SPEC 3 assigns a messageId to a message without one: two identical lines are two
    events, while importing the same file again (under another name) adds nothing."""
    cfg = config_file(tmp_path)
    line = {"type": "track", "event": "Click", "anonymousId": "same"}
    line["timestamp"] = "2024-01-01T00:00:00Z"
    path = tmp_path / "events.jsonl"
    write_lines(path, [line, line])
    code, out = run("import", "--config", str(cfg), str(path))
    assert code == 0, out
    assert summary(out)["duplicates skipped"] == "0"
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(path.read_bytes())
    code, out = run("import", "--config", str(cfg), str(copy))
    assert code == 0, out
    assert summary(out)["duplicates skipped"] == "2"
    with idstitch.open(cfg) as engine:
        assert len(engine.events("anonymous_id:same")) == 2


def summary(out: str) -> dict[str, str]:
    return {
        row.split("│")[1].strip(): row.split("│")[2].strip()
        for row in out.splitlines()
        if row.count("│") == 3
    }


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_a_resumed_import_names_invalid_lines_by_their_number_in_the_file(
    tmp_path: Path, suffix: str
) -> None:
    cfg = config_file(tmp_path)
    path = tmp_path / f"events{suffix}"
    first = [json.dumps(track(i)) for i in range(30)]
    more = [json.dumps(track(30)), "{broken", json.dumps(track(31))]

    def write(lines: list[str]) -> None:
        data = ("\n".join(lines) + "\n").encode()
        path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)

    write(first)
    code, out = run("import", "--config", str(cfg), str(path))
    assert code == 0, out
    write(first + more)  # the file grew: the re-run resumes after line 30
    code, out = run("import", "--config", str(cfg), str(path))
    assert code == 1, out
    assert f"skipped {path}:32:" in out, out
    assert summary_rows(out)["events"] == "2"


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
    assert result.exit_code == 1  # the valid lines are imported, but some input was bad
    assert "invalid lines" in result.output
    assert "events.jsonl:2" in result.output and "events.jsonl:3" in result.output
    rows = summary_rows(result.output)
    assert rows["events"] == "2" and rows["invalid lines"] == "2"
    assert result.output.strip().endswith("2 lines were skipped as invalid (see above).")
    # The import went to the end of the file: a re-run resumes there and finds nothing new.
    code, out = run("import", "--config", str(cfg), str(path))
    assert code == 0 and summary_rows(out)["events"] == "0"


def summary_rows(out: str) -> dict[str, str]:
    return {
        row.split("│")[1].strip(): row.split("│")[2].strip()
        for row in out.splitlines()
        if row.count("│") == 3
    }


def error_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("error:")]


def test_import_of_clean_files_exits_0_without_messages(tmp_path: Path) -> None:
    cfg = config_file(tmp_path)
    path = tmp_path / "events.jsonl.gz"
    write_lines(path, [track(i) for i in range(5)], compress=True)
    for expected in ("5", "0"):  # the second run finds nothing new: still a success
        code, out = run("import", "--config", str(cfg), "--source", "s", str(path))
        assert code == 0, out
        assert summary_rows(out)["events"] == expected
        assert "error" not in out and "\nskipped" not in out


def test_import_of_only_invalid_lines_exits_1_and_bounds_the_messages(tmp_path: Path) -> None:
    cfg = config_file(tmp_path)
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(f"not json {i}\n" for i in range(500)))
    code, out = run("import", "--config", str(cfg), str(path))
    assert code == 1
    assert "Traceback" not in out
    assert summary_rows(out)["invalid lines"] == "500"
    shown = [line for line in out.splitlines() if line.startswith(f"skipped {path}:")]
    assert len(shown) == 20
    assert "skipped 480 more invalid lines" in out
    assert error_lines(out) == ["error: 500 lines were skipped as invalid (see above)."]
    assert "not json 3" not in out  # never the line's content


def test_import_reports_an_overlong_line_and_goes_on(tmp_path: Path) -> None:
    cfg = config_file(tmp_path)
    path = tmp_path / "long.jsonl"
    long_line = json.dumps(track(1, properties={"blob": "x" * (1024 * 1024 + 10)}))
    path.write_text(json.dumps(track(0)) + "\n" + long_line + "\n" + json.dumps(track(2)) + "\n")
    code, out = run("import", "--config", str(cfg), str(path))
    assert code == 1
    assert f"{path}:2: the line is" in out and "xxxx" not in out
    assert summary_rows(out)["events"] == "2"


def truncated_gzip(path: Path, count: int) -> tuple[bytes, int]:
    """Writes the first half of the gzip of `count` track lines; returns the whole gzip and the
    number of complete lines in the readable half."""
    data = "".join(
        json.dumps({"type": "track", "event": "E", "userId": f"tg{i}", "messageId": f"m{i}"}) + "\n"
        for i in range(count)
    ).encode()
    whole = gzip.compress(data)
    path.write_bytes(whole[: len(whole) // 2])
    readable = zlib.decompressobj(wbits=31).decompress(whole[: len(whole) // 2])
    return whole, readable.count(b"\n")


def test_import_of_a_truncated_gzip_keeps_the_readable_lines(tmp_path: Path) -> None:
    cfg = config_file(tmp_path)
    trunc = tmp_path / "trunc.jsonl.gz"
    _, readable = truncated_gzip(trunc, 2000)
    assert 0 < readable < 2000
    other = tmp_path / "other.jsonl"  # named after the damaged file: still imported
    write_lines(other, [track(i) for i in range(3)])
    code, out = run("import", "--config", str(cfg), "--no-progress", str(trunc), str(other))
    assert code == 1
    assert "Traceback" not in out and "Aborted" not in out
    assert summary_rows(out)["events"] == f"{readable + 3:,}"
    assert error_lines(out) == [
        f"error: {trunc} is truncated or corrupt (gzip: Compressed file ended before the"
        f" end-of-stream marker was reached); the {readable:,} lines before the damage were"
        " imported and a re-run resumes after them."
    ]
    code, out = run("profile", "--config", str(cfg), "user_id:tg0", f"user_id:tg{readable - 1}")
    assert code == 0
    code, out = run("profile", "--config", str(cfg), f"user_id:tg{readable}")
    assert code == 1  # the line cut by the damage was not imported


def test_import_resumes_after_a_truncated_gzip_is_replaced_by_the_whole_file(
    tmp_path: Path,
) -> None:
    cfg = config_file(tmp_path)
    path = tmp_path / "events.jsonl.gz"
    whole, readable = truncated_gzip(path, 2000)
    code, out = run("import", "--config", str(cfg), "--batch-size", "64", str(path))
    assert code == 1 and summary_rows(out)["events"] == f"{readable:,}"
    code, out = run("import", "--config", str(cfg), "--batch-size", "64", str(path))
    assert code == 1 and summary_rows(out)["events"] == "0"  # still damaged, nothing new
    path.write_bytes(whole)
    code, out = run("import", "--config", str(cfg), "--batch-size", "64", str(path))
    assert code == 0, out
    rows = summary_rows(out)
    assert rows["events"] == f"{2000 - readable:,}"  # exactly the rest: no line skipped...
    assert rows["duplicates skipped"] == "0"  # ...and none read twice
    assert rows["profiles created"] == f"{2000 - readable:,}"
    code, out = run("profile", "--config", str(cfg), f"user_id:tg{readable}", "user_id:tg1999")
    assert code == 0
    code, out = run("import", "--config", str(cfg), str(path))
    assert code == 0 and summary_rows(out)["events"] == "0"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\x00garbage" + bytes(range(256)) * 20, "is named .gz but is not gzip data"),
        (b"\x1f\x8b" + bytes(range(256)) * 20, "is truncated or corrupt (gzip: "),
    ],
)
def test_import_of_a_garbage_gz_file_is_one_clear_sentence(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    cfg = config_file(tmp_path)
    path = tmp_path / "garbage.jsonl.gz"
    path.write_bytes(content)
    code, out = run("import", "--config", str(cfg), "--no-progress", str(path))
    assert code == 1
    assert "Traceback" not in out and "Aborted" not in out and "\nskipped" not in out
    (line,) = error_lines(out)
    assert line.startswith(f"error: {path} {problem}")
    assert summary_rows(out)["events"] == "0"


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ('[identity]\npriority = "user_id"\n', ["identity.priority", "which is not a list"]),
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
    assert code == 2 and "does not exist" in out
    code, out = run("profile", "--config", str(tmp_path / "missing.toml"), "user_id:x")
    assert code == 2 and "does not exist" in out


def test_migrate_reports_applied_migrations(tmp_path: Path) -> None:
    cfg = config_file(tmp_path)
    code, out = run("migrate", "--config", str(cfg))
    assert code == 0 and "0001_initial" in out
    code, out = run("migrate", "--config", str(cfg))
    assert code == 0 and "up to date" in out


def test_profile_reads_beside_a_running_writer(tmp_path: Path) -> None:
    """`idstitch profile` while the service (here, an open engine) holds the writer lock:
    it reads at once instead of waiting for the lock."""
    import time

    import idstitch

    config = config_file(tmp_path)
    with idstitch.open(str(config), tune_gc=False) as engine:
        engine.ingest({"type": "identify", "userId": "busy1", "traits": {"plan": "pro"}})
        started = time.monotonic()
        code, out = run("profile", "--config", str(config), "--json", "user_id:busy1")
        assert time.monotonic() - started < 10
    assert code == 0, out
    assert json.loads(out)["traits"] == {"plan": "pro"}


def test_profile_of_a_store_that_does_not_exist_finds_nothing(tmp_path: Path) -> None:
    config = config_file(tmp_path)
    result = CliRunner().invoke(main, ["profile", "--config", str(config), "--json", "user_id:x"])
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"ref": "user_id:x", "error": "not_found"}
    assert "no idstitch store" in result.stderr and "data.db" in result.stderr
    assert not (tmp_path / "data.db").exists()  # looking did not create it
    bad = CliRunner().invoke(main, ["profile", "--config", str(config), "no-colon"])
    assert bad.exit_code == 1 and "neither" in bad.output  # malformed: said, and not found


def test_a_config_that_is_not_utf8_is_one_sentence(tmp_path: Path) -> None:
    cfg = tmp_path / "latin1.toml"
    cfg.write_bytes('space_id = "café"\n'.encode("latin-1"))
    code, out = run("profile", "--config", str(cfg), "user_id:u1")
    assert code == 2
    assert "is not UTF-8 text" in out and "Traceback" not in out


def test_a_config_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    cfg = tmp_path / "bom.toml"
    cfg.write_bytes(b"\xef\xbb\xbf" + config_file(tmp_path).read_bytes())
    code, out = run("profile", "--config", str(cfg), "user_id:u1")
    assert code == 1, out  # read, and nothing is stored yet


def test_serve_without_a_config_where_none_can_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "idstitch-data").write_text("a file, not a directory")
    code, out = run("serve", "--port", "1")
    assert code == 2
    assert "cannot create the default config" in out and "Traceback" not in out


@pytest.mark.parametrize("where", ["file/x.db", "dir.db"])
def test_profile_names_a_store_path_that_can_never_hold_a_store(tmp_path: Path, where: str) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir.db").mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[storage]\nurl = "sqlite:///{tmp_path / where}"\n')
    code, out = run("profile", "--config", str(cfg), "user_id:u1")
    assert code == 2
    assert "is not a" in out and "yet" not in out
    long = tmp_path / "c2.toml"
    long.write_text(f'[storage]\nurl = "sqlite:///{tmp_path / ("a" * 300)}/x.db"\n')
    code, out = run("profile", "--config", str(long), "user_id:u1")
    assert code == 2 and "cannot be used" in out


@pytest.mark.parametrize("source", ["", " ", "a\tb"])
def test_import_refuses_a_source_id_a_store_cannot_keep(tmp_path: Path, source: str) -> None:
    path = tmp_path / "e.jsonl"
    write_lines(path, [track(1)])
    code, out = run("import", "--config", str(config_file(tmp_path)), "--source", source, str(path))
    assert code == 2 and "--source" in out


def test_import_reads_a_replaced_file_from_its_start(tmp_path: Path) -> None:
    cfg = config_file(tmp_path)
    path = tmp_path / "day.jsonl"
    write_lines(path, [track(i) for i in range(20)])
    assert run("import", "--config", str(cfg), str(path))[0] == 0
    write_lines(path, [track(i) for i in range(100, 105)])  # another file, the same name
    code, out = run("import", "--config", str(cfg), str(path))
    assert code == 0, out
    assert summary(out)["events"] == "5"
    with path.open("a") as f:  # a file that grew is read on from where the last run stopped
        f.write(json.dumps(track(200)) + "\n")
    code, out = run("import", "--config", str(cfg), str(path))
    assert summary(out)["events"] == "1"


def test_profile_json_answers_every_ref_even_after_a_malformed_one(tmp_path: Path) -> None:
    cfg = config_file(tmp_path)
    path = tmp_path / "e.jsonl"
    write_lines(path, [track(1, userId="u1"), track(2, userId="u2")])
    assert run("import", "--config", str(cfg), str(path))[0] == 0
    result = CliRunner().invoke(
        main, ["profile", "--config", str(cfg), "--json", "user_id:u1", "nocolon", "user_id:u2"]
    )
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line.get("error") for line in lines] == [None, "not_found", None]
    assert lines[1]["ref"] == "nocolon"


def test_profile_json_answers_refs_that_are_not_utf8(tmp_path: Path) -> None:
    # Command-line bytes that are not UTF-8 arrive as lone surrogates; JSON cannot carry them.
    cfg = config_file(tmp_path)
    path = tmp_path / "e.jsonl"
    write_lines(path, [track(1, userId="u1")])
    assert run("import", "--config", str(cfg), str(path))[0] == 0
    refs = ["user_id:\udcff", "\udcff", "user_id:\x00", "user_id:u1"]
    result = CliRunner().invoke(main, ["profile", "--config", str(cfg), "--json", *refs])
    assert result.exit_code == 1, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line.get("error") for line in lines] == ["not_found"] * 3 + [None]
    assert [line["ref"] for line in lines[:3]] == ["user_id:\ufffd", "\ufffd", "user_id:\x00"]


def test_import_reads_past_a_byte_order_mark_at_the_start_of_a_file(tmp_path: Path) -> None:
    cfg = config_file(tmp_path)
    path = tmp_path / "excel.jsonl"
    body = "".join(json.dumps(track(i, userId=f"u{i}")) + "\r\n" for i in range(3))
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    code, out = run("import", "--config", str(cfg), str(path))
    assert code == 0, out
    assert "invalid lines      │ 0" in out
    code, out = run("profile", "--config", str(cfg), "--json", "user_id:u0")
    assert code == 0, out


def test_doctor_lists_likely_junk_with_the_lines_that_block_it(tmp_path: Path) -> None:
    config = config_file(tmp_path, '[identity]\npreset = "idstitch"\n')
    tablet = {"device": {"id": "tablet-1", "type": "ios"}}
    with idstitch.open(str(config), tune_gc=False) as engine:
        engine.ingest({"type": "identify", "userId": "alice", "context": tablet})
        engine.ingest({"type": "identify", "userId": "bob", "context": tablet, "messageId": "m2"})
        for n in range(4):
            engine.ingest({"type": "identify", "userId": f"u{n}", "traits": {"email": "a@a.com"}})
        # A kiosk's browser, where four people log in one after the other.
        for n in range(4):
            engine.ingest({"type": "identify", "userId": f"k{n}", "anonymousId": "kiosk"})
        code, out = run("doctor", "--config", str(config))
    assert code == 0, out
    assert "preset 'idstitch', generic_after 2" in out
    assert "ios.id:tablet-1  2 profiles" in out and "shared_device" in out
    # Seen with a third known user, each stopped linking: the fourth was not refused.
    assert "email:a@a.com  3 profiles" in out and "generic_identifier" in out
    assert "anonymous_id:kiosk  3 profiles  conflict, generic_identifier, limit_exceeded" in out
    toml = out[out.index("[identity.blocked_values_by_type]") :]
    blocked = tomllib.loads(toml.replace("\n  ", "\n"))["identity"]["blocked_values_by_type"]
    assert blocked == {"anonymous_id": ["kiosk"], "email": ["a@a.com"], "ios.id": ["tablet-1"]}
    code, out = run("doctor", "--config", str(config), "--json")
    assert code == 0, out
    lines = [json.loads(line) for line in out.splitlines()]
    found = {(v["type"], v["value"], v["count"]) for v in lines}
    # The tablet met two profiles only, but the rules already stopped it.
    assert found == {
        ("anonymous_id", "kiosk", 3),
        ("email", "a@a.com", 3),
        ("ios.id", "tablet-1", 2),
    }


def test_doctor_counts_the_profiles_a_value_was_refused_from(tmp_path: Path) -> None:
    config = config_file(tmp_path, '[identity]\npreset = "segment"\n')
    with idstitch.open(str(config), tune_gc=False) as engine:
        for n in range(5):  # a kiosk: five people log in on one browser
            engine.ingest({"type": "identify", "userId": f"k{n}", "anonymousId": "kiosk"})
        for n in range(2):  # a cookie two people shared: below the default of 3
            engine.ingest({"type": "identify", "userId": f"s{n}", "anonymousId": "pair"})
    code, out = run("doctor", "--config", str(config), "--json")
    assert code == 0, out
    assert [json.loads(line) for line in out.splitlines()] == [
        {
            "type": "anonymous_id",
            "value": "kiosk",
            "count": 5,
            "collection": "users",
            "rules": ["limit_exceeded"],
            "stopped_linking": False,
        }
    ]
    code, out = run("doctor", "--config", str(config), "--json", "--min-profiles", "2")
    assert [json.loads(line)["value"] for line in out.splitlines()] == ["kiosk", "pair"]


def test_doctor_of_a_segment_store_with_nothing_stored(tmp_path: Path) -> None:
    config = config_file(tmp_path, '[identity]\npreset = "segment"\n')
    result = CliRunner().invoke(main, ["doctor", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # no store, so no junk: no line at all
    assert "data.db" in result.stderr
    assert not (tmp_path / "data.db").exists()
    result = CliRunner().invoke(main, ["doctor", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "preset 'segment'" in result.stdout
    assert "no identifier was kept from joining 3 or more profiles" in result.stdout
