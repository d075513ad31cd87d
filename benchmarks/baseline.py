"""A benchmark run side by side with an earlier release, in one run.

    python -m benchmarks baseline REV [--rounds 3] [engine|http|postgres|growth|quality] [ARGS...]
    make bench BASELINE=REV

REV (a tag or commit) is checked out in a temporary git worktree. Each round runs the same
benchmark command twice, once on REV's `idstitch` package and once on this checkout's,
alternating which goes first; both use this checkout's benchmark code, so they measure the
same thing. Each command's whole output is kept and printed; at the end one table gives, for
every figure both printed, the median over the rounds of each side and their ratio
(this checkout / REV). Use `--runs 1` in ARGS: the rounds here take the median.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("engine", "http", "postgres", "growth", "quality")
NUMBER = re.compile(r"^-?[\d,]*\.?\d+")


def figures(output: str) -> dict[str, list[float]]:
    """Each report row `label   value ...` whose value is a number, or numbers joined by
    ' / ', keyed by its label (an indented label is prefixed by the row above it)."""
    found: dict[str, list[float]] = {}
    section = ""
    for line in output.splitlines():
        parts = re.split(r"\s{2,}", line.strip())
        numbers = [NUMBER.match(v.strip()) for v in parts[1].split(" / ")] if parts[1:] else []
        if not numbers or not all(numbers) or line.startswith(("round ", "run ")):
            if not line.startswith(" "):
                section = ""  # a heading: the indented rows after it stand alone
            continue
        label = parts[0]
        if not line.startswith(" "):
            section = label
        elif section:
            label = f"{section[:26]} | {label}"
        found.setdefault(label, [float(m.group().replace(",", "")) for m in numbers if m])
    return found


def run(command: list[str], pythonpath: str, cwd: Path, out: Path) -> str:
    env = dict(os.environ, PYTHONPATH=pythonpath)
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    text = done.stdout + (f"\n[stderr]\n{done.stderr}" if done.returncode else "")
    out.write_text(text)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}); see {out}")
    return done.stdout


def table(rev: str, sides: dict[str, list[dict[str, list[float]]]]) -> list[str]:
    lines = [f"{'figure (median of rounds)':<56} {rev[:12]:>24} {'this checkout':>24} {'ratio':>6}"]
    base, here = sides["baseline"], sides["current"]
    for label in here[0]:
        if not all(label in r for r in base + here):
            continue
        width = min(len(r[label]) for r in base + here)
        old = [statistics.median(r[label][i] for r in base) for i in range(width)]
        new = [statistics.median(r[label][i] for r in here) for i in range(width)]
        ratio = f"{new[-1] / old[-1]:.2f}" if old[-1] else ""  # of the last number
        lines.append(
            f"{label[:56]:<56} {' / '.join(f'{v:,.5g}' for v in old):>24} "
            f"{' / '.join(f'{v:,.5g}' for v in new):>24} {ratio:>6}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Ours end where the benchmark's name starts: its options may share names with ours.
    at = next((i for i, a in enumerate(argv) if a in NAMES), len(argv))
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks baseline",
        usage="%(prog)s REV [--rounds N] [engine|http|postgres|growth] [ARGS...]",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("rev", help="the earlier release: a tag or commit")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side (3)")
    args = parser.parse_args(argv[:at])
    args.rest = argv[at:] or ["engine"]
    work = Path(tempfile.mkdtemp(prefix="idstitch-baseline-"))
    tree = work / "tree"
    try:
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), args.rev],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    except subprocess.CalledProcessError as err:
        shutil.rmtree(work, ignore_errors=True)
        print(f"cannot check out {args.rev!r}: {err.stderr.decode().strip()}", file=sys.stderr)
        return 2
    # REV's package first on the path, this checkout's benchmarks after it. Commands run in
    # an empty directory: `python -m` puts the working directory before PYTHONPATH.
    shadow = work / "package"
    shadow.mkdir()
    (shadow / "idstitch").symlink_to(tree / "idstitch")
    paths = {"baseline": f"{shadow}{os.pathsep}{ROOT}", "current": str(ROOT)}
    cwd = work / "cwd"
    cwd.mkdir()
    for side, expected in (("baseline", shadow), ("current", ROOT)):
        where = run(
            [sys.executable, "-c", "import idstitch; print(idstitch.__file__)"],
            paths[side],
            cwd,
            work / "which.txt",
        ).strip()
        if not where.startswith(str(expected)):
            raise SystemExit(f"the {side} side imports idstitch from {where}, not {expected}")
    command = [sys.executable, "-m", "benchmarks", *args.rest]
    sides: dict[str, list[dict[str, list[float]]]] = {"baseline": [], "current": []}
    try:
        for n in range(1, args.rounds + 1):
            order = ["baseline", "current"] if n % 2 else ["current", "baseline"]
            for side in order:
                print(f"== round {n}, {side} ({args.rev if side == 'baseline' else 'HEAD'})")
                output = run(command, paths[side], cwd, work / f"{side}-{n}.txt")
                print(output, flush=True)
                sides[side].append(figures(output))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT)
    print(f"command: {' '.join(command[1:])}; rounds: {args.rounds}, alternating which goes first")
    print("\n".join(table(args.rev, sides)))
    shutil.rmtree(work, ignore_errors=True)
    return 0
