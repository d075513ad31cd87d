"""The repair benchmark runs end to end on a tiny SQLite store and prints its tables."""

from __future__ import annotations

import re

import pytest

from benchmarks import __main__ as driver
from benchmarks import repair_bench


def _row(out: str, label: str) -> list[str]:
    """The cells of the table row that starts with `label`."""
    for line in out.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line) if c.strip()]
        if cells and cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no row {label!r} in:\n{out}")


def test_main_prints_explain_and_unmerge_tables(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["repair", "--sizes", "5,20", "--background", "300", "--kiosk", "10"]
    argv += ["--rounds", "1", "--repeat", "2", "--reads", "3"]
    assert driver.main(argv) == 0
    out = capsys.readouterr().out
    assert "explain(first, last) on a chain of N messages" in out
    # A chain of N messages: its two ends are N - 1 messages apart.
    assert _row(out, "5")[0] == "4" and _row(out, "20")[0] == "19"
    # The kiosk profile: its first page, its owner's login and 10 form e-mails, resolved
    # again into the owner's part and one part per e-mail (the page resolves to nothing).
    assert _row(out, "messages resolved again") == ["12"]
    assert _row(out, "parts") == ["11"]
    lag = int(_row(out, "index lag right after (messages)")[0].replace(",", ""))
    assert lag >= 300  # the whole log: the index is emptied and built again
    assert float(_row(out, "seconds until the index caught up")[0]) >= 0.0
    assert "summary:" in out and "SQLite: explain across 20 messages (19 on the path)" in out


def test_chain_and_kiosk_shapes() -> None:
    messages = repair_bench.chain(4, repair_bench.START)
    assert [m["anonymousId"] for m in messages] == [f"chain4-a{i}" for i in range(4)]
    assert messages[0]["userId"] == "chain4-user"
    assert [m["context"]["externalIds"][0]["id"] for m in messages[1:]] == [
        "chain4-a0",
        "chain4-a1",
        "chain4-a2",
    ]
    kiosk = repair_bench.kiosk(2, 3, repair_bench.START)
    assert len(kiosk) == 2 + 2 * 3
    assert {m["anonymousId"] for m in kiosk} == {"kiosk-2"}
    assert repair_bench.percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.95) == 5.0
    assert repair_bench.percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
