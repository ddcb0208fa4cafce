"""Scenario 3: concurrency sweep, one Daphne process, every stream at 20 chunks/s.

At each level a fresh Daphne process gets N tabs (N websockets, spread over 20 users); each
tab asks for one answer of `seconds` × 20 chunks, the N requests starting evenly over
`spread` seconds. Then the same N streams are read directly with httpx, started the same
way. A chunk's delivery delay is its arrival at the client minus the moment the upstream
wrote it; every chunk counts but the first of each stream (that one is the time to first
token, scenario 2).
Added latency = relay percentile minus direct percentile.

Daphne's CPU is its CPU time over the relay run's wall time (100% = one core); memory per
stream is (Daphne's peak resident memory during the run − its memory before the tabs
connected) / N. The upstream's lag (how late it wrote chunks against its schedule) and the
client's CPU say whether the load generator kept up.
"""

from __future__ import annotations

import asyncio
import os
import time

from bench.harness import (
    OPTIONS,
    CpuMeter,
    Tab,
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

NAME = "3 sweep"
RATE = 20.0  # chunks per second per stream


def main(quick: bool = False) -> int:
    levels = OPTIONS.get("levels") or ([20, 50] if quick else [100, 250, 500, 1000])
    seconds, spread = (2.0, 0.5) if quick else (10.0, 2.0)
    if OPTIONS["smoke"]:
        levels, seconds, spread = OPTIONS.get("levels") or [4, 8], 0.5, 0.1
    print(
        f"-- scenario 3: {levels} streams at {RATE:g} chunks/s for {seconds:g} s each...",
        flush=True,
    )
    results, errors = {}, []
    with relay_rig(users=20) as (upstream, app, app_cpus):
        for n in levels:
            with app.serve(app_cpus):
                level = asyncio.run(
                    _level(upstream, app, n, seconds, spread, profile=n == levels[-1])
                )
            results[n] = level
            errors += level["errors"]
            _print_level(n, level)
    ALL_RESULTS["sweep"] = {"seconds": seconds, "spread": spread, "levels": results}
    _print(results, seconds)
    return len(errors)


async def _run(n: int, spread: float, start_one) -> tuple[list, float]:
    """Start n streams evenly over `spread` seconds; (their results, wall time)."""
    began = time.monotonic()

    async def one(i: int):
        await asyncio.sleep(i * spread / n)
        return await start_one(i)

    got = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    return list(got), time.monotonic() - began


class _QueueSampler:
    """The longest queue of any channel in Redis (channels_redis keeps one sorted set per
    channel under the app's prefix), sampled every 0.1 s during a relay run."""

    def __init__(self, url: str, prefix: str) -> None:
        import redis.asyncio as redis

        self.client = redis.Redis.from_url(url)
        self.prefix = prefix
        self.peak = 0
        self.samples = 0
        self.task: asyncio.Task | None = None

    @classmethod
    def start(cls, env: dict[str, str]) -> _QueueSampler:
        sampler = cls(env["REDIS_URL"], env.get("REDIS_PREFIX", "grokchat"))
        sampler.task = asyncio.create_task(sampler._run())
        return sampler

    async def _run(self) -> None:
        while True:
            keys = [
                key
                async for key in self.client.scan_iter(match=f"{self.prefix}*", count=1000)
                if b":group:" not in key
            ]
            if keys:
                async with self.client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.zcard(key)
                    sizes = await pipe.execute()
                self.peak = max(self.peak, *sizes)
            self.samples += 1
            await asyncio.sleep(0.1)

    async def stop(self) -> dict:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.client.aclose()
        return {"peak_messages_per_channel": self.peak, "samples": self.samples}


def _delays(answers: list, direct_read: bool, chunks: int, errors: list[str], kind: str):
    """Delivery delays of every chunk but each stream's first, and the upstream's lag
    behind its schedule."""
    delays, lag = [], []
    for answer in answers:
        seen = answer.chunks(direct=direct_read)
        problem = check_order(seen, chunks)
        if problem:
            errors.append(f"{kind}: {problem}")
            continue
        if answer.end is None or answer.end.get("state") != "complete":
            errors.append(f"{kind}: an answer ended {answer.end}")
        first = seen[0][1]
        for seq, stamp, arrived in seen[1:]:
            lag.append(stamp - first - seq / RATE)
            delays.append(arrived - stamp)
    return delays, lag


async def _level(
    upstream, app, n: int, seconds: float, spread: float, profile: bool = False
) -> dict:
    chunks = int(seconds * RATE)
    text = ask_text(chunks, RATE)
    errors: list[str] = []
    meter = (
        CpuMeter({"daphne": app.pid, "upstream": upstream.pid, "client": os.getpid()})
        if have_psutil()
        else None
    )
    # Warm the process (imports, the upstream pool, the day's totals) with one short answer.
    warm = await Tab.open(app.url, app.cookies[0])
    await warm.ask(ask_text(3), new=True)
    await warm.close()
    await asyncio.sleep(0.5)
    rss_before = meter.rss("daphne") if meter else 0
    connect_started = time.monotonic()
    tabs = await open_tabs(app.url, app.cookies, n)
    connect_s = time.monotonic() - connect_started
    out: dict = {"streams": n, "chunks_per_stream": chunks, "connect_s": connect_s}

    quiet()
    if meter:
        meter.start()
    sampler = _QueueSampler.start(app.env) if app.env.get("REDIS_URL") else None
    with profiled(app.pid if profile else 0, f"sweep-{n}-streams"):
        answers, wall = await _run(n, spread, lambda i: tabs[i].ask(text, new=True))
    if sampler is not None:
        out["redis_queue"] = await sampler.stop()
    if meter:
        meter.stop()
        out["relay_cpu_percent"] = {k: meter.percent(k) for k in meter.procs}
        out["rss_before_mb"] = rss_before / 2**20
        out["rss_peak_mb"] = meter.peak_rss["daphne"] / 2**20
        out["rss_per_stream_kb"] = (meter.peak_rss["daphne"] - rss_before) / n / 1024
    answers = split_failures(answers, f"relay, {n} streams", app, errors)
    relay, relay_lag = _delays(answers, False, chunks, errors, f"relay, {n} streams")
    out["relay_wall_s"] = wall
    await close_tabs(tabs)

    async with direct_client(n + 10) as client:
        quiet()
        if meter:
            meter.start()
        with client_anywhere():
            answers, wall = await _run(n, spread, lambda i: direct(client, upstream.base_url, text))
        if meter:
            meter.stop()
            out["direct_cpu_percent"] = {k: meter.percent(k) for k in ("upstream", "client")}
    answers = split_failures(answers, f"direct, {n} streams", None, errors)
    reference, direct_lag = _delays(answers, True, chunks, errors, f"direct, {n} streams")
    out.update(
        direct_wall_s=wall,
        relay_p50_s=pct(relay, 50),
        relay_p99_s=pct(relay, 99),
        direct_p50_s=pct(reference, 50),
        direct_p99_s=pct(reference, 99),
        samples=len(relay),
        upstream_lag_p99_s={"relay": pct(relay_lag, 99), "direct": pct(direct_lag, 99)},
        errors=errors,
    )
    out["added_p50_s"] = out["relay_p50_s"] - out["direct_p50_s"]
    out["added_p99_s"] = out["relay_p99_s"] - out["direct_p99_s"]
    return out


def _print_level(n: int, r: dict) -> None:
    cpu = r.get("relay_cpu_percent")
    print(
        f"   {n} streams: added p50 {ms(r['added_p50_s'])} ms, p99 {ms(r['added_p99_s'])} ms"
        + (f", Daphne CPU {cpu['daphne']:.0f}%" if cpu else "")
        + (
            f", longest Redis channel queue {r['redis_queue']['peak_messages_per_channel']}"
            f" messages ({r['redis_queue']['samples']} samples)"
            if "redis_queue" in r
            else ""
        ),
        flush=True,
    )


def _print(results: dict, seconds: float) -> None:
    print()
    print(
        f"Scenario 3: concurrency sweep, one Daphne process, {RATE:g} chunks/s per stream, "
        f"{seconds:g} s streams (delays in ms)"
    )
    header = (
        f"{'streams':>7} {'chunks':>8}  {'direct p50':>10} {'p99':>6}  {'relay p50':>9} "
        f"{'p99':>7}  {'added p50':>9} {'added p99':>9}  {'Daphne CPU':>10} {'RSS/stream':>10}"
        f"  {'load gen CPU':>12} {'upstream lag p99':>16}"
    )
    print(header)
    print("-" * len(header))
    for n, r in results.items():
        cpu = r.get("relay_cpu_percent")
        daphne = f"{cpu['daphne']:.0f}%" if cpu else "-"
        rss = f"{r['rss_per_stream_kb']:.0f} KiB" if cpu else "-"
        load = f"{cpu['client'] + cpu['upstream']:.0f}%" if cpu else "-"
        lag = r["upstream_lag_p99_s"]
        print(
            f"{n:>7} {r['samples']:>8,}  {ms(r['direct_p50_s']):>10} {ms(r['direct_p99_s']):>6}  "
            f"{ms(r['relay_p50_s']):>9} {ms(r['relay_p99_s']):>7}  {ms(r['added_p50_s']):>9} "
            f"{ms(r['added_p99_s']):>9}  {daphne:>10} {rss:>10}  {load:>12} "
            f"{ms(lag['relay']) + ' ms':>16}"
        )
    print(
        "target: 1,000 streams with added p99 <= 50 ms. Load gen CPU: client + upstream during "
        "the relay run (they share one core when pinned)."
    )
    errors = [e for r in results.values() for e in r["errors"]]
    for error in errors:
        print(f"!! LOST, REORDERED OR FAILED: {error}")
    print()
    for n, r in results.items():
        cpu = r.get("relay_cpu_percent")
        extra = (
            f"; Daphne CPU {cpu['daphne']:.0f}%, {r['rss_per_stream_kb']:.0f} KiB/stream"
            if cpu
            else ""
        )
        summary(
            NAME,
            f"added inter-chunk latency, {n} streams",
            f"p50 {ms(r['added_p50_s'])} ms, p99 {ms(r['added_p99_s'])} ms{extra}",
            "p99 <= 50 ms" if n == 1000 else "",
            r["added_p99_s"] <= 0.050 if n == 1000 else None,
        )
    summary_losses(NAME, errors)
