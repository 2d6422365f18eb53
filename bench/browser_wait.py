"""What a waiting visitor's browser tab costs: Chromium's CPU while ten tabs wait for a Streamlit script.

    python bench/browser_wait.py [--tabs 10] [--seconds 12]   # writes bench/results/browser_wait.{json,md}

A tiny Streamlit app (written to a temporary folder) has one button; pressed, its script waits ``--seconds``
behind a progress bar, as a visitor of the real app waits for the sampling workers. ``--tabs`` tabs of one
headless Chromium press it at once, and the CPU-seconds every Chromium process used meanwhile are summed
(/proc/PID/stat). Four variants: Streamlit's own style and settings or the app's (``pages/_style.py``: no
progress-bar animation; the app's .streamlit/config.toml: no top bar, so no running icon redrawn by a 200-ms timer),
and the bar redrawn once a second or never. The difference between
redrawn and never, divided by the redraws, is what one redraw costs the browser; ``WaitingBar``
(ddpm/serving/queue.py) spends redraws by that price. The browser shares the machine's cores with the server
here, as in bench/crowd_check.py (on a Space it runs on each visitor's machine). Stop other work first.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from app_server import CHROMIUM_ARGS, REPO, VIEWPORT, AppServer, find_chromium  # noqa: E402
from crowd_check import browser_cpu_s  # noqa: E402

RESULTS = Path(__file__).parent / "results"
APP = f'''
import os, sys, time
sys.path.insert(0, {str(REPO)!r})
import streamlit as st
from pages._style import QUIET_WHILE_RUNNING

if os.environ["WAIT_STYLE"] == "app":
    st.html(QUIET_WHILE_RUNNING)
st.title("Waiting")
if st.button("Go"):
    bar = st.progress(0.0, text="waiting")
    seconds, every = float(os.environ["WAIT_SECONDS"]), float(os.environ["WAIT_REDRAW_S"])
    start = time.monotonic()
    while (left := seconds - (time.monotonic() - start)) > 0:
        time.sleep(min(every, left) if every else left)
        if every:
            done = min(1.0, (time.monotonic() - start) / seconds)
            bar.progress(done, text=f"waiting {{done:.0%}}")
    st.write("done")
'''
VARIANTS = [("Streamlit's style", "streamlit", 1.0), ("the app's style", "app", 1.0),
            ("Streamlit's style", "streamlit", 0.0), ("the app's style", "app", 0.0)]


async def measure(folder: Path, style: str, redraw_s: float, tabs: int, seconds: float) -> dict:
    from playwright.async_api import async_playwright

    env = {"WAIT_STYLE": style, "WAIT_SECONDS": str(seconds + 4), "WAIT_REDRAW_S": str(redraw_s)}
    config = folder / ".streamlit" / "config.toml"
    config.parent.mkdir(exist_ok=True)
    if style == "app":
        shutil.copyfile(REPO / ".streamlit" / "config.toml", config)
    else:
        config.unlink(missing_ok=True)
    with AppServer(env, repo=folder).start() as server:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=find_chromium(), args=CHROMIUM_ARGS)
            pages = []
            for _ in range(tabs):
                page = await (await browser.new_context(viewport=VIEWPORT)).new_page()
                await page.goto(server.url)
                pages.append(page)
            for page in pages:
                await page.get_by_role("button", name="Go").wait_for(timeout=60_000)
            await asyncio.sleep(3)
            before = browser_cpu_s()
            await asyncio.sleep(seconds)
            idle = browser_cpu_s() - before
            await asyncio.gather(*(page.get_by_role("button", name="Go").click() for page in pages))
            await asyncio.sleep(2)  # every script under way
            before = browser_cpu_s()
            await asyncio.sleep(seconds)
            waiting = browser_cpu_s() - before
            await browser.close()
    return {"idle_cpu_s": round(idle, 2), "waiting_cpu_s": round(waiting, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tabs", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--note", default="", help="what else ran on the machine")
    args = parser.parse_args()
    if find_chromium() is None:
        sys.exit("no Chromium found: apt-get install chromium")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ddpm-browser-wait-") as tmp:
        (Path(tmp) / "app.py").write_text(APP)
        for name, style, redraw_s in VARIANTS:
            result = asyncio.run(measure(Path(tmp), style, redraw_s, args.tabs, args.seconds))
            rows.append({"style": name, "redraw_s": redraw_s, **result})
            print(rows[-1], flush=True)
    by = {(r["style"], r["redraw_s"]): r["waiting_cpu_s"] for r in rows}
    redraws = args.tabs * args.seconds  # one a second per tab
    per_redraw = {style: round(1000 * (by[(style, 1.0)] - by[(style, 0.0)]) / redraws, 1)
                  for style in ("Streamlit's style", "the app's style")}
    report = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.machine(),
                       "cpu_cores": os.cpu_count(), "tabs": args.tabs, "seconds": args.seconds, "note": args.note},
              "rows": rows, "per_redraw_ms": per_redraw}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "browser_wait.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / "browser_wait.md").write_text(markdown(report) + "\n")
    print(markdown(report))


def markdown(r: dict) -> str:
    m = r["meta"]
    lines = [f"Measured {m['date']} on {m['cpu_cores']} CPU cores ({m['machine']}): {m['tabs']} tabs of one headless "
             f"Chromium wait {m['seconds']:.0f} s for a Streamlit script behind a progress bar; Chromium's CPU-seconds "
             f"in that time (all its processes). {m['note']}", "",
             "| style | progress bar redrawn | Chromium CPU-s, tabs idle | Chromium CPU-s, tabs waiting |",
             "|---|---|---:|---:|"]
    for row in r["rows"]:
        lines.append(f"| {row['style']} | {'once a second' if row['redraw_s'] else 'never'} | "
                     f"{row['idle_cpu_s']:.1f} | {row['waiting_cpu_s']:.1f} |")
    lines.append("")
    lines.append("One redraw of the bar costs the browser about " + " and ".join(
        f"{ms:.0f} ms of CPU with {style}" for style, ms in r["per_redraw_ms"].items()) + ".")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
