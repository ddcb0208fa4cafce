"""Scenario 1: one stream of 5,000 instant chunks, through the relay and read directly.

The upstream writes every chunk as fast as its socket takes it. Throughput is chunks over
the time from the request (the `send` frame; the POST) to the arrival of the last chunk.
Runs alternate direct and relay reads, each in a new conversation; each relay run is
checked chunk by chunk (nothing lost, doubled or reordered; coalesced frames are fine) and
against the answer the app saved.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics

from bench.harness import (
    OPTIONS,
    CpuMeter,
    Tab,
    ask_text,
    check_order,
    client_anywhere,
    direct,
    direct_client,
    have_psutil,
    pct,
    quiet,
    relay_rig,
    summary,
    summary_losses,
)
from bench.harness import RESULTS as ALL_RESULTS
from bench.profile import profiled

NAME = "1 throughput"


def main(quick: bool = False) -> int:
    chunks, runs = (1000, 3) if quick else (5000, 10)
    if OPTIONS["smoke"]:
        chunks, runs = 200, 1
    print(f"-- scenario 1: one stream of {chunks:,} instant chunks, {runs} runs...", flush=True)
    with relay_rig(users=1) as (upstream, app, app_cpus), app.serve(app_cpus):
        result = asyncio.run(_measure(upstream, app, chunks, runs))
    ALL_RESULTS["throughput"] = result
    _print(result)
    return len(result["errors"])


async def _measure(upstream, app, chunks: int, runs: int) -> dict:
    errors: list[str] = []
    meter = (
        CpuMeter({"daphne": app.pid, "upstream": upstream.pid, "client": os.getpid()})
        if (have_psutil())
        else None
    )
    cpu = {"daphne": 0.0, "upstream": 0.0, "client": 0.0}
    relay_wall = 0.0
    direct_rates, relay_rates, ratios, frames = [], [], [], []
    tab = await Tab.open(app.url, app.cookies[0])
    async with direct_client(4) as client:
        # Warm both sides with one answer of the full size (the day's totals, the pools,
        # and the memory a 5,000-chunk answer needs): the first ones ran ~8% slower.
        await tab.ask(ask_text(chunks), new=True)
        await direct(client, upstream.base_url, ask_text(chunks))
        with profiled(app.pid, "throughput"):
            for run in range(runs):
                order = ("direct", "relay") if run % 2 == 0 else ("relay", "direct")
                durations = {}
                for kind in order:
                    quiet()
                    if kind == "direct":
                        with client_anywhere():
                            got = await direct(client, upstream.base_url, ask_text(chunks))
                        seen = got.chunks(direct=True)
                    else:
                        if meter:
                            meter.start()
                        got = await tab.ask(ask_text(chunks), new=True)
                        if meter:
                            meter.stop()
                            relay_wall += meter.wall
                            for name in cpu:
                                cpu[name] += meter.cpu[name]
                        seen = got.chunks(direct=False)
                        frames.append(len(got.frames))
                        errors += _check_saved(app, got)
                    problem = check_order(seen, chunks)
                    if problem:
                        errors.append(f"{kind} run {run}: {problem}")
                    durations[kind] = seen[-1][2] - got.sent if seen else float("inf")
                direct_rates.append(chunks / durations["direct"])
                relay_rates.append(chunks / durations["relay"])
                ratios.append(durations["direct"] / durations["relay"])
    await tab.close()
    return {
        "chunks": chunks,
        "runs": runs,
        "direct_chunks_per_s": direct_rates,
        "relay_chunks_per_s": relay_rates,
        "ratio": ratios,
        "relay_frames": frames,
        "cpu_percent": {k: 100 * v / relay_wall for k, v in cpu.items()} if meter else None,
        "errors": errors,
    }


def _check_saved(app, got) -> list[str]:
    """The answer the app saved is the text the tab received, complete."""
    text = "".join(json.loads(raw)["content"] for _, raw in got.frames)
    row = app.saved_answer(got.message_id)
    if got.end is None or got.end.get("state") != "complete":
        return [f"answer {got.message_id} ended {got.end}"]
    if row is None or row[1] != "complete" or row[0] != text:
        return [f"answer {got.message_id}: the saved text differs from the text relayed"]
    return []


def _print(r: dict) -> None:
    ratio_p50 = statistics.median(r["ratio"])
    ratio_slow = pct(r["ratio"], 1)  # the slow tail of a throughput is its low end
    print()
    print(f"Scenario 1: one stream of {r['chunks']:,} instant chunks ({r['runs']} runs)")
    header = f"{'':<28} {'p50':>10} {'p99 (slow)':>11}"
    print(header)
    print("-" * len(header))
    for label, values in (
        ("direct httpx, chunks/s", r["direct_chunks_per_s"]),
        ("relay, chunks/s", r["relay_chunks_per_s"]),
    ):
        print(f"{label:<28} {statistics.median(values):>10,.0f} {pct(values, 1):>11,.0f}")
    print(f"{'relay / direct':<28} {ratio_p50:>10.2f} {ratio_slow:>11.2f}   target >= 0.9")
    print(f"delta frames per relayed answer: {statistics.median(r['relay_frames']):,.0f}")
    if r["cpu_percent"]:
        c = r["cpu_percent"]
        print(
            f"CPU while relaying (% of one core): Daphne {c['daphne']:.0f}, "
            f"upstream {c['upstream']:.0f}, client {c['client']:.0f}"
        )
    for error in r["errors"]:
        print(f"!! LOST, REORDERED OR FAILED: {error}")
    print()
    summary(
        NAME,
        f"relay/direct throughput, {r['chunks']:,} chunks",
        f"p50 {ratio_p50:.2f}, p99 {ratio_slow:.2f}",
        ">= 0.9",
        ratio_slow >= 0.9,
    )
    summary_losses(NAME, r["errors"])
