"""Issue 16, long answers: what a streaming answer costs the browser's main thread per frame.

    python -m bench.render [--sizes 2000,20000,100000] [--piece 40] [--delay-ms 10] [--json FILE]

Headless Debian Chromium (Playwright) opens the chat page of the app under Daphne (a fresh
SQLite file, the in-memory channel layer: tests.live.live_app), logs in as alice and asks
once per size. The loopback upstream of the tests (tests/fake_upstream.py, in this process)
streams an answer of realistic mixed Markdown (paragraphs, lists, code, headings, quotes)
of that many characters in `--piece`-character pieces every `--delay-ms` milliseconds.

An init script, run before the page's own scripts, measures in the page:

- after one answer that warms the page up (not measured), each animation frame callback (requestAnimationFrame is wrapped: the page renders in
  them), timed with performance.now(): the "render ms per frame" columns;
- every long task (PerformanceObserver, type "longtask": a main-thread task over 50 ms),
  the end's full render included;
- with chat.js as of issue 16, the characters each frame handed to markdown-it
  (window.__renderStats, tests/test_render_browser.py), and the time of one full render
  of the whole answer (the render an ended answer gets once).

The main thread's total task time while the answer streamed (Chrome's Performance domain,
`TaskDuration`, over CDP) divided by the frames is the "busy ms per frame": style, layout
and paint included. Nothing here fails on a timing; the table is for docs/benchmarks.md.

To measure another commit (the full re-render before issue 16, say), run this file from an
export of that commit: `git archive COMMIT | tar -x -C /tmp/snap`, copy bench/render.py
into /tmp/snap/bench/ and run `python -m bench.render` there (the app is served from the
directory the bench runs in).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from bench.harness import load, machine, pct  # noqa: E402
from tests.browser import CHROMIUM, CHROMIUM_ARGS, log_in, wait_ready  # noqa: E402
from tests.fake_upstream import FakeUpstream, Reply, chunk, sse, usage_chunk  # noqa: E402
from tests.live import live_app  # noqa: E402

SIZES = [2_000, 20_000, 100_000]
ANSWER = "article.message[data-role=assistant]"

MEASURE = """
window.__renderStats = { check: false };
window.__bench = { frames: [], longtasks: [] };
const pageRequestFrame = window.requestAnimationFrame.bind(window);
window.requestAnimationFrame = (callback) => pageRequestFrame((time) => {
  const started = performance.now();
  try {
    callback(time);
  } finally {
    window.__bench.frames.push(performance.now() - started);
  }
});
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) window.__bench.longtasks.push(entry.duration);
}).observe({ type: "longtask", buffered: true });
"""

# Blocks of an answer as models write them; {n} numbers them.
BLOCKS = [
    "Here is how step {n} works. The function reads its input, checks that each value is in "
    "range, and only then writes anything: a **failed check** changes nothing, and the "
    "caller gets a clear error. See [the guide](https://example.com/guide/{n}) for more.",
    "- read the input once\n- check every value before writing\n"
    "- write in one transaction, so that a failure leaves nothing half done\n- report what changed",
    "```python\ndef step_{n}(rows: list[dict]) -> int:\n    checked = [check(row) for row in rows]\n"
    "    with transaction():\n        for row in checked:\n            save(row)\n"
    "    return len(checked)\n```",
    "### Step {n}: what can go wrong",
    "1. The input is empty: nothing is written.\n2. A value is out of range: the error names it.\n"
    "3. The database is down: the whole step is retried later.",
    "> Note: step {n} takes `O(n)` time and constant memory, whatever the size of the input.",
    "In short, *step {n}* is safe to run twice: the second run finds nothing to do and says "
    "so. The next step builds on it.",
]


def answer_text(length: int) -> str:
    out: list[str] = []
    size, n = 0, 0
    while size < length:
        block = BLOCKS[n % len(BLOCKS)].format(n=n)
        out.append(block)
        size += len(block) + 2
        n += 1
    return "\n\n".join(out)[:length]


def streamed(text: str, piece: int, delay: float) -> Reply:
    events = [sse(chunk(text[i : i + piece]), done=False) for i in range(0, len(text), piece)]
    events.append(sse(chunk(finish="stop"), usage_chunk(10, len(text) // 4)))
    return Reply(pieces=events, delay=delay)


def task_seconds(cdp: Any) -> dict[str, float]:
    metrics = cdp.send("Performance.getMetrics")["metrics"]
    wanted = ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration")
    return {m["name"]: m["value"] for m in metrics if m["name"] in wanted}


def measure(page: Any, cdp: Any, url: str, fake: FakeUpstream, size: int, args: Any) -> dict:
    text = answer_text(size)
    fake.queue(streamed(text, args.piece, args.delay_ms / 1000))
    page.goto(url + "/")
    wait_ready(page)
    before = task_seconds(cdp)
    started = time.monotonic()
    page.fill("#prompt", f"An answer of {size} characters")
    page.keyboard.press("Enter")
    answer = page.locator(ANSWER).last
    answer.wait_for()
    deadline = time.monotonic() + 600
    while answer.get_attribute("data-state") == "streaming":
        assert time.monotonic() < deadline, "the answer did not end"
        time.sleep(0.1)
    wall = time.monotonic() - started
    time.sleep(0.5)  # the end's render and its long task, if any, are reported
    after = task_seconds(cdp)
    result = page.evaluate(
        """(text) => {
          const stats = window.__renderStats;
          const out = {frames: window.__bench.frames, longtasks: window.__bench.longtasks,
                       chars: null, full_ms: null,
                       same: document.querySelector("article.message[data-role=assistant] .content").textContent.length};
          if (stats && stats.fullRender) {
            out.chars = stats.frames.map((frame) => frame.chars);
            const times = [];
            for (let i = 0; i < 3; i++) {
              const started = performance.now();
              const html = stats.fullRender(text);
              times.push(performance.now() - started);
              out.same = html === document.querySelector("article.message[data-role=assistant] .content").innerHTML;
            }
            out.full_ms = times.sort((a, b) => a - b)[1];
          }
          return out;
        }""",
        text,
    )
    frames = result["frames"]
    busy = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return {
        "size": size,
        "wall_s": wall,
        "frames": len(frames),
        "p50_ms": statistics.median(frames) if frames else float("nan"),
        "p95_ms": pct(frames, 95),
        "max_ms": max(frames, default=float("nan")),
        "busy_per_frame_ms": 1000 * busy.get("TaskDuration", 0) / max(1, len(frames)),
        "layout_style_s": busy.get("LayoutDuration", 0) + busy.get("RecalcStyleDuration", 0),
        "script_s": busy.get("ScriptDuration", 0),
        "task_s": busy.get("TaskDuration", 0),
        "longtasks": len(result["longtasks"]),
        "longtask_ms": sum(result["longtasks"]),
        "longtask_max_ms": max(result["longtasks"], default=0),
        "chars_max": max(result["chars"]) if result["chars"] else None,
        "chars_p50": statistics.median(result["chars"]) if result["chars"] else None,
        "full_render_ms": result["full_ms"],
        "end_equals_full_render": result["same"] if result["chars"] is not None else None,
    }


def print_table(rows: list[dict], args: Any, version: str) -> None:
    print()
    print(
        f"Long answers in headless Chromium {version}: pieces of {args.piece} characters "
        f"every {args.delay_ms:g} ms"
    )
    head = (
        f"{'answer chars':>12} {'frames':>6} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} "
        f"{'busy/frame':>10} {'long tasks':>10} {'long ms':>8} {'parsed/frame max':>16} "
        f"{'full render ms':>14}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        chars = "-" if r["chars_max"] is None else f"{r['chars_max']:,}"
        full = "-" if r["full_render_ms"] is None else f"{r['full_render_ms']:.1f}"
        print(
            f"{r['size']:>12,} {r['frames']:>6} {r['p50_ms']:>7.2f} {r['p95_ms']:>7.2f} "
            f"{r['max_ms']:>7.1f} {r['busy_per_frame_ms']:>10.2f} {r['longtasks']:>10} "
            f"{r['longtask_ms']:>8.0f} {chars:>16} {full:>14}"
        )
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        ratio = last["p50_ms"] / first["p50_ms"] if first["p50_ms"] else float("nan")
        ratio95 = last["p95_ms"] / first["p95_ms"] if first["p95_ms"] else float("nan")
        print(
            f"render ms per frame at {last['size']:,} / at {first['size']:,}: p50 {ratio:.2f}x, "
            f"p95 {ratio95:.2f}x (target: within 2x)"
        )
    for r in rows:
        if r["end_equals_full_render"] is False:
            print(f"!! the ended answer of {r['size']:,} differs from its full render")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.render", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="answer lengths")
    parser.add_argument("--piece", type=int, default=40, help="characters per upstream piece")
    parser.add_argument("--delay-ms", type=float, default=10, help="between pieces")
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    from playwright.sync_api import sync_playwright

    harness.OPTIONS["pin"] = False  # one browser, one Daphne: the scheduler places them
    print(machine(), flush=True)
    fake = FakeUpstream()
    rows = []
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-render-") as tmp,
            live_app(Path(tmp), fake.base_url, DJANGO_LOG_LEVEL="WARNING") as url,
            sync_playwright() as p,
        ):
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.add_init_script(MEASURE)
            page = context.new_page()
            cdp = context.new_cdp_session(page)
            cdp.send("Performance.enable")
            log_in(page, url, "alice", "alice-password-1")
            # Not measured: the first answer warms the JIT, highlight.js's grammars and Daphne.
            measure(page, cdp, url, fake, 2_000, args)
            for size in sizes:
                print(f"-- an answer of {size:,} characters (load average {load()})...", flush=True)
                rows.append(measure(page, cdp, url, fake, size, args))
            version = browser.version
            browser.close()
    finally:
        fake.close()
    print_table(rows, args, version)
    print(f"load average at the end: {load()}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
