"""`python -m benchmarks [engine|http|postgres|growth|quality|repair|rebuild] [options]`: the
engine benchmark by default.

`python -m benchmarks baseline REV NAME [options]` runs one of them beside release REV.

Each benchmark is a module of this package with a `main(argv)`; `--help` after the name
shows its options.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "engine": "benchmarks.engine_bench",
    "http": "benchmarks.http_bench",
    "postgres": "benchmarks.postgres_bench",
    "growth": "benchmarks.growth",
    "baseline": "benchmarks.baseline",
    "quality": "benchmarks.quality",
    "repair": "benchmarks.repair_bench",
    "rebuild": "benchmarks.rebuild_bench",
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    name = "engine"
    if args and args[0] in BENCHMARKS:
        name = args.pop(0)
    elif args and not args[0].startswith("-"):
        print(
            f"unknown benchmark {args[0]!r}; choose one of {', '.join(BENCHMARKS)}.",
            file=sys.stderr,
        )
        return 2
    try:
        module = importlib.import_module(BENCHMARKS[name])
    except ModuleNotFoundError as err:
        if err.name != BENCHMARKS[name]:
            raise
        print(f"the {name} benchmark is not available in this checkout.", file=sys.stderr)
        return 2
    result = module.main(args)
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
