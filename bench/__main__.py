"""Run the benchmarks and print their tables: `python -m bench [scenario ...] [--quick]`."""

from __future__ import annotations

import argparse
import sys

from bench import report

SCENARIOS = {"report": report.main}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenarios", nargs="*", help=f"any of {', '.join(SCENARIOS)} (all)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI (< 1 minute)")
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario {', '.join(sorted(unknown))}")
    failures = 0
    for name in args.scenarios or list(SCENARIOS):
        failures += SCENARIOS[name](quick=args.quick)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
