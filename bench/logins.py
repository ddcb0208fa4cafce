"""Scenario 7: another user's time to first token while a burst of failed logins comes in.

One tab asks for short answers one after another: first for BASELINE_SECONDS with nothing
else going on, then while LOGINS failed logins arrive evenly over SPAN_SECONDS (40 in 8 s),
each from a loopback address and a username of its own, so that the login throttle (on, as
shipped) counts none twice and every one costs a password hash. A login is a GET of the
form and a POST of an unknown username (Django hashes a dummy password then, as for a
wrong one). Time to first token is from the `send` frame to the first `delta`; the figures
during the burst are those of the answers asked before the last login was answered, and
"added" is their percentile minus the baseline's.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from bench.harness import (
    OPTIONS,
    CpuMeter,
    Tab,
    ask_text,
    have_psutil,
    ms,
    pct,
    quiet,
    relay_rig,
    summary,
    summary_losses,
)
from bench.harness import RESULTS as ALL_RESULTS

NAME = "7 logins"
CHUNKS = 3
TARGET_MS = 100


def main(quick: bool = False) -> int:
    logins, span, baseline = (10, 2.0, 2.0) if quick else (40, 8.0, 8.0)
    if OPTIONS["smoke"]:
        logins, span, baseline = 3, 0.5, 0.5
    print(
        f"-- scenario 7: time to first token while {logins} failed logins come in {span:g} s...",
        flush=True,
    )
    with relay_rig(users=2) as (_upstream, app, app_cpus), app.serve(app_cpus):
        result = asyncio.run(_measure(app, logins, span, baseline))
    ALL_RESULTS["logins"] = result
    _print(result)
    return len(result["errors"])


async def _measure(app, logins: int, span: float, baseline_seconds: float) -> dict:
    errors: list[str] = []
    tab = await Tab.open(app.url, app.cookies[0])
    await tab.ask(ask_text(CHUNKS), new=True)  # warm: the conversation and the upstream pool
    await _log_in(app.url, 0, errors)  # warm: the login page
    quiet()
    started = time.monotonic()
    baseline = await _asks(tab, lambda: time.monotonic() - started >= baseline_seconds, errors)
    meter = CpuMeter({"daphne": app.pid}) if have_psutil() else None
    if meter:
        meter.start()
    burst = asyncio.ensure_future(_burst(app.url, logins, span, errors))
    during = await _asks(tab, burst.done, errors)
    login_seconds = await burst
    if meter:
        meter.stop()
    await tab.close()
    return {
        "logins": logins,
        "span_s": span,
        "baseline_s": baseline,
        "during_s": during,
        "login_s": login_seconds,
        "daphne_cpu_percent": meter.percent("daphne") if meter else None,
        "errors": errors,
    }


async def _asks(tab: Tab, done, errors: list[str]) -> list[float]:
    """Times to first token of answers asked one after another until done() is true."""
    out: list[float] = []
    while not done():
        try:
            answer = await tab.ask(ask_text(CHUNKS))
        except Exception as exc:
            errors.append(f"an answer failed: {type(exc).__name__}: {exc}")
            break
        chunks = answer.chunks(direct=False)
        if len(chunks) != CHUNKS:
            errors.append(f"{len(chunks)} chunks arrived for {CHUNKS}")
            continue
        out.append(chunks[0][2] - answer.sent)
    return out


async def _burst(url: str, logins: int, span: float, errors: list[str]) -> list[float]:
    """`logins` failed logins started evenly over `span` seconds; each one's seconds."""
    tasks = []
    for i in range(logins):
        tasks.append(asyncio.ensure_future(_log_in(url, i + 1, errors)))
        await asyncio.sleep(span / logins)
    return [s for s in await asyncio.gather(*tasks) if s is not None]


async def _log_in(url: str, n: int, errors: list[str]) -> float | None:
    """One failed login from 127.0.0.<n + 2>: GET the form, POST it; the POST's seconds."""
    transport = httpx.AsyncHTTPTransport(local_address=f"127.0.0.{n + 2}")
    async with httpx.AsyncClient(
        base_url=url, transport=transport, timeout=120, trust_env=False
    ) as client:
        try:
            await client.get("/accounts/login/")
            sent = time.monotonic()
            response = await client.post(
                "/accounts/login/",
                data={
                    "username": f"nobody{n:04d}",
                    "password": "not-the-password",
                    "csrfmiddlewaretoken": client.cookies["csrftoken"],
                },
            )
        except (httpx.HTTPError, KeyError) as exc:
            errors.append(f"login {n} failed: {type(exc).__name__}: {exc}")
            return None
        seconds = time.monotonic() - sent
    # A refused login shows the form again (200); 429 would mean the throttle spared a hash.
    if response.status_code != 200 or b"Please enter a correct" not in response.content:
        errors.append(f"login {n}: HTTP {response.status_code}, not the refused form")
    return seconds


def _print(r: dict) -> None:
    base, during, logins = r["baseline_s"], r["during_s"], r["login_s"]
    added50 = (pct(during, 50) - pct(base, 50)) * 1000
    added99 = (pct(during, 99) - pct(base, 99)) * 1000
    r["added_p50_ms"], r["added_p99_ms"] = added50, added99
    print()
    print(
        f"Scenario 7: time to first token of one user's answers while {r['logins']} failed "
        f"logins come in {r['span_s']:g} s (ms)"
    )
    header = f"{'':>16} {'answers':>7} {'p50':>7} {'p99':>7} {'max':>7}"
    print(header)
    print("-" * len(header))
    for label, values in (("before the burst", base), ("during the burst", during)):
        print(
            f"{label:>16} {len(values):>7} {ms(pct(values, 50)):>7} {ms(pct(values, 99)):>7} "
            f"{ms(max(values, default=float('nan'))):>7}"
        )
    print(f"added: p50 {added50:.1f} ms, p99 {added99:.1f} ms (target: both < {TARGET_MS} ms)")
    cpu = r["daphne_cpu_percent"]
    print(
        f"logins: {len(logins)} answered, POST to response p50 {ms(pct(logins, 50))} ms, "
        f"max {ms(max(logins, default=float('nan')))} ms"
        + ("" if cpu is None else f"; Daphne's CPU during the burst {cpu:.0f}% of a core")
    )
    for error in r["errors"]:
        print(f"!! LOST, REORDERED OR FAILED: {error}")
    print()
    summary(
        NAME,
        f"added time to first token, {r['logins']} logins in {r['span_s']:g} s",
        f"p50 {added50:.1f} ms, p99 {added99:.1f} ms",
        f"p50 and p99 < {TARGET_MS} ms",
        added50 < TARGET_MS and added99 < TARGET_MS,
    )
    summary_losses(NAME, r["errors"])
