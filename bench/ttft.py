"""Scenario 2: time to first token added by the relay, at 1, 50 and 200 concurrent streams.

Warm: every tab is connected and has a conversation (one answer already streamed in it),
and the direct client holds as many keep-alive connections as there are streams, before
anything is timed. In each round, N tabs send at once and N direct requests are issued at
once (the two bursts alternate which goes first). The relay's time to first token is from
sending the `send` frame to the first `delta`; the reference is from issuing the POST to
the first SSE event. Added = relay percentile minus direct percentile, over every stream
of every round at that concurrency.
"""

from __future__ import annotations

import asyncio
import os

from bench.harness import (
    OPTIONS,
    CpuMeter,
    ask_text,
    check_order,
    client_anywhere,
    close_tabs,
    direct,
    direct_client,
    have_psutil,
    ms,
    open_tabs,
    pct,
    quiet,
    relay_rig,
    split_failures,
    summary,
    summary_losses,
)
from bench.harness import RESULTS as ALL_RESULTS
from bench.profile import profiled

NAME = "2 ttft"
CHUNKS = 3  # a short answer: what is timed is its first chunk


def main(quick: bool = False) -> int:
    rounds = {1: 10, 10: 3} if quick else {1: 200, 50: 8, 200: 4}
    if OPTIONS["smoke"]:
        rounds = {1: 2, 4: 1}
    levels = list(rounds)
    print(f"-- scenario 2: time to first token at {levels} concurrent streams...", flush=True)
    with relay_rig(users=20) as (upstream, app, app_cpus), app.serve(app_cpus):
        result = asyncio.run(_measure(upstream, app, rounds))
    ALL_RESULTS["ttft"] = result
    _print(result)
    return len(result["errors"])


async def _measure(upstream, app, rounds: dict[int, int]) -> dict:
    most = max(rounds)
    errors: list[str] = []
    tabs = await open_tabs(app.url, app.cookies, most)
    meter = CpuMeter({"daphne": app.pid, "client": os.getpid()}) if have_psutil() else None
    levels = {}
    async with direct_client(most + 10) as client:
        # Warm: a conversation per tab, the app's upstream pool, the direct pool.
        await asyncio.gather(*(tab.ask(ask_text(CHUNKS), new=True) for tab in tabs))
        await asyncio.gather(
            *(direct(client, upstream.base_url, ask_text(CHUNKS)) for _ in range(most))
        )
        for n, count in rounds.items():
            relay, reference = [], []
            cpu, wall = 0.0, 0.0
            quiet()
            with profiled(app.pid, f"ttft-{n}-streams"):
                for run in range(count):
                    for kind in ("direct", "relay") if run % 2 == 0 else ("relay", "direct"):
                        if kind == "direct":
                            with client_anywhere():
                                got = await asyncio.gather(
                                    *(
                                        direct(client, upstream.base_url, ask_text(CHUNKS))
                                        for _ in range(n)
                                    ),
                                    return_exceptions=True,
                                )
                            got = split_failures(got, f"direct, {n} streams", None, errors)
                        else:
                            if meter:
                                meter.start()
                            got = await asyncio.gather(
                                *(tab.ask(ask_text(CHUNKS)) for tab in tabs[:n]),
                                return_exceptions=True,
                            )
                            if meter:
                                meter.stop()
                                cpu, wall = cpu + meter.cpu["daphne"], wall + meter.wall
                            got = split_failures(got, f"relay, {n} streams", app, errors)
                        for answer in got:
                            seen = answer.chunks(direct=kind == "direct")
                            problem = check_order(seen, CHUNKS)
                            if problem:
                                errors.append(f"{kind}, {n} streams: {problem}")
                                continue
                            (relay if kind == "relay" else reference).append(
                                seen[0][2] - answer.sent
                            )
            levels[n] = {
                "relay_s": relay,
                "direct_s": reference,
                "daphne_cpu_percent": 100 * cpu / wall if wall else None,
            }
    await close_tabs(tabs)
    return {"levels": levels, "errors": errors}


def _print(r: dict) -> None:
    print()
    print("Scenario 2: time to first token, warm connections (ms)")
    header = (
        f"{'streams':>7} {'samples':>7}  {'direct p50':>10} {'p99':>6}  {'relay p50':>9} "
        f"{'p99':>7}  {'added p50':>9} {'added p99':>9}  {'Daphne CPU':>10}"
    )
    print(header)
    print("-" * len(header))
    for n, level in r["levels"].items():
        relay, direct_ = level["relay_s"], level["direct_s"]
        added50 = pct(relay, 50) - pct(direct_, 50)
        added99 = pct(relay, 99) - pct(direct_, 99)
        level["added_p50_ms"], level["added_p99_ms"] = added50 * 1000, added99 * 1000
        cpu = level["daphne_cpu_percent"]
        print(
            f"{n:>7} {len(relay):>7}  {ms(pct(direct_, 50)):>10} {ms(pct(direct_, 99)):>6}  "
            f"{ms(pct(relay, 50)):>9} {ms(pct(relay, 99)):>7}  {ms(added50):>9} {ms(added99):>9}"
            f"  {'' if cpu is None else f'{cpu:.0f}%':>10}"
        )
    print("targets at 200 streams: added p50 <= 3 ms, added p99 <= 15 ms")
    for error in r["errors"]:
        print(f"!! LOST, REORDERED OR FAILED: {error}")
    print()
    for n, level in r["levels"].items():
        last = n == 200  # the target is set at 200 streams
        summary(
            NAME,
            f"added time to first token, {n} streams",
            f"p50 {level['added_p50_ms']:.1f} ms, p99 {level['added_p99_ms']:.1f} ms",
            "p50 <= 3 ms, p99 <= 15 ms" if last else "",
            (level["added_p50_ms"] <= 3 and level["added_p99_ms"] <= 15) if last else None,
        )
    summary_losses(NAME, r["errors"])
