"""Run the benchmarks and print their tables: `python -m bench [scenario ...] [--quick]`.

`--smoke` runs each scenario at the smallest sizes that still make every check, for the test
of the harness (tests/test_bench_quick.py); its figures mean nothing.

Scenarios (docs/benchmarks.md): throughput, ttft, sweep, dbwork, pages, report, logins,
search. Each
prints its own table; a summary of every figure against its target closes the run. The exit
status is 1 when a chunk was lost or reordered or a query count grew with the data, never
because of a timing.
"""

from __future__ import annotations

import argparse
import sys
import time

from bench import dbwork, finder, harness, logins, pages, report, sweep, throughput, ttft

SCENARIOS = {
    "throughput": throughput.main,
    "ttft": ttft.main,
    "sweep": sweep.main,
    "dbwork": dbwork.main,
    "pages": pages.main,
    "report": report.main,
    "logins": logins.main,
    "search": finder.main,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenarios", nargs="*", help=f"any of {', '.join(SCENARIOS)} (all)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI (< 1 minute)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the smallest sizes that still run every check (quick mode, smaller): whether "
        "the harness works, for the tests",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="leave Daphne, the client and the upstream to the scheduler (default: Daphne "
        "on a core of its own when there are two or more)",
    )
    parser.add_argument(
        "--services",
        action="store_true",
        help="run the relay scenarios (throughput, ttft, sweep, logins) on PostgreSQL and Redis "
        "on 127.0.0.1 (a fresh database and Redis prefix) instead of SQLite and the in-memory "
        "channel layer",
    )
    parser.add_argument(
        "--levels",
        metavar="N,N,...",
        help="the sweep's numbers of streams (default 100,250,500,1000; quick: 20,50)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="sample Daphne with py-spy during the largest relay run of each relay scenario "
        "and write the stacks and their summary to DIR (the figures of such a run are "
        "slightly slowed by the sampling)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario {', '.join(sorted(unknown))}")
    harness.OPTIONS["pin"] = not args.no_pin
    harness.OPTIONS["profile_dir"] = args.profile
    harness.OPTIONS["quick"] = args.quick or args.smoke
    harness.OPTIONS["smoke"] = args.smoke
    harness.OPTIONS["services"] = args.services
    if args.levels:
        try:
            harness.OPTIONS["levels"] = [int(n) for n in args.levels.split(",")]
        except ValueError:
            parser.error("--levels takes numbers separated by commas, such as 250,1000")
    print(harness.machine(), flush=True)
    if not harness.have_psutil():
        print("!! psutil is not installed: CPU and memory figures are left out", flush=True)
    started = time.monotonic()
    failures = 0
    for name in args.scenarios or list(SCENARIOS):
        failures += SCENARIOS[name](quick=harness.OPTIONS["quick"])
    _print_summary(time.monotonic() - started)
    print(f"load average at the end: {harness.load()}")
    if args.json:
        harness.write_json(args.json)
    if failures:
        print(f"!! {failures} check(s) failed: something was lost or reordered, or not flat")
    return 1 if failures else 0


def _print_summary(elapsed: float) -> None:
    rows = harness.SUMMARY
    if not rows:
        return
    widths = [max(len(str(row[i])) for row in [*rows, _HEAD]) for i in range(5)]
    print("Summary")
    line = "  ".join(f"{h:<{w}}" for h, w in zip(_HEAD, widths, strict=True))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(f"{c:<{w}}" for c, w in zip(row, widths, strict=True)))
    print(f"({elapsed:.0f} s in all)")
    print()


_HEAD = ("scenario", "figure", "value", "target", "")

if __name__ == "__main__":
    sys.exit(main())
