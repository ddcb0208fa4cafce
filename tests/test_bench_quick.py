"""The benchmark harness (issue 7) runs end to end and finds nothing wrong.

It runs `python -m bench --smoke`: every scenario, at the smallest sizes that still make
every check (`--quick` took over a minute of the suite). It asserts only what is
deterministic: every chunk relayed in order with none lost, and query counts that stay flat
as answers and pages grow. No timing is asserted.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.live import ROOT

SCENARIOS = [
    "1 throughput",
    "2 ttft",
    "3 sweep",
    "4 dbwork",
    "5 pages",
    "6 report",
    "7 logins",
    "search",
]


def test_the_benchmark_harness_runs_every_scenario_and_finds_nothing_lost_or_growing() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard, not a deadline
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert "LOST, REORDERED OR FAILED" not in result.stdout
    summary = result.stdout.partition("\nSummary\n")[2]
    rows = [line.split("  ")[0] for line in summary.splitlines()]
    assert set(SCENARIOS) <= set(rows), summary
    # Each relay scenario's check that nothing was lost, and each flat query count, held.
    assert summary.count("held") == 8 and "MISSED" not in summary, summary
