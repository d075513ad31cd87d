"""The rebuild benchmark runs end to end on tiny SQLite stores and prints its tables."""

from __future__ import annotations

import re

import pytest

from benchmarks import __main__ as driver


def _row(out: str, label: str) -> list[str]:
    """The cells of the first table row that starts with `label`."""
    for line in out.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line) if c.strip()]
        if cells and cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no row {label!r} in:\n{out}")


def _number(cell: str) -> float:
    return float(cell.replace(",", ""))


def test_main_prints_rebuild_feed_and_delivery_tables(capsys: pytest.CaptureFixture[str]) -> None:
    assert driver.main(["rebuild", "--events", "300", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "1. rebuild against import" in out and "2. the change feed" in out
    assert "3. webhook delivery" in out
    for label in ("import (segment)", "rebuild --dry-run (idstitch)", "rebuild (idstitch)"):
        assert _number(_row(out, label)[0]) > 0
    assert _number(_row(out, "rebuild / import")[0]) > 0
    # The stream has no retried message at this size: every line is stored and resolved.
    assert _row(out, "lines imported") == ["300"]
    assert _row(out, "messages resolved again") == ["300"]
    assert _row(out, "by the dry run") == ["300"]
    assert _number(_row(out, "no webhooks")[0]) > 0
    assert _number(_row(out, "one webhook, not delivering")[0]) > 0
    assert _number(_row(out, "feed rows written")[0]) > 0
    # The same messages under the same rules: the same changes, with or without an import
    # running beside the deliveries.
    delivered = _row(out, "changes delivered")[0]
    assert _number(delivered) > 0
    assert _row(out, "a backlog alone: changes delivered") == [delivered]
    assert "summary:" in out and "SQLite: rebuild" in out


def test_rounds_below_one_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        driver.main(["rebuild", "--rounds", "0"])
    assert exit_.value.code == 2
    assert "--rounds must be at least 1" in capsys.readouterr().err
