"""Cold start: seconds from launching `streamlit run app.py` to Home's title and first chart drawn in a browser.

    python bench/startup_time.py [--repeats 5]     # writes bench/results/startup_time.{json,md}

Each repetition starts a fresh server (offline, HF_HUB_OFFLINE=1, the shipped default model and whatever
data `ddpm` finds), opens "/" in a fresh Chromium context as soon as the port answers, and records when
the server answered, when the title showed and when the first chart (16 generated beside 16 real patches)
was drawn: that last time includes importing torch, loading the model and the data, and sampling.  Then a
second visitor opens Home on the now-warm server.  Chromium is started once, before the clock.
Stop other work first (a background training run takes its share of the cores).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
from app_server import (ARTIFACTS, CHROMIUM_ARGS, FIRST_LOAD_MS, PAGES, VIEWPORT, AppServer,  # noqa: E402
                        chart_selector, find_chromium)

RESULTS = Path(__file__).parent / "results"
HOME_TITLE = PAGES["home"][1]


def open_home(browser, url: str, t0: float) -> tuple[float, float]:
    """(seconds to the title, seconds to the first chart) since ``t0``, for a fresh visitor."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.goto(url)
        page.locator("h1", has_text=HOME_TITLE).first.wait_for(timeout=FIRST_LOAD_MS)
        title = time.perf_counter() - t0
        page.wait_for_selector(chart_selector("home_grid"), state="visible", timeout=FIRST_LOAD_MS)
        return title, time.perf_counter() - t0
    finally:
        context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--note", default="", help="conditions worth recording, e.g. what else ran on the machine")
    args = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        sys.exit("no Chromium found: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    runs = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        for i in range(args.repeats):
            with AppServer(log_path=ARTIFACTS / "startup_time-server.log") as server:
                title_s, chart_s = open_home(browser, server.url, server.started_at)
                start = time.perf_counter()
                _, warm_s = open_home(browser, server.url, start)
            runs.append({"port_answers_s": round(server.ready_s, 2), "title_s": round(title_s, 2),
                         "first_chart_s": round(chart_s, 2), "second_visitor_home_s": round(warm_s, 2)})
            print(json.dumps(runs[-1]), flush=True)
        browser.close()
    median = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
    report = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.machine(),
                       "cpu_cores": os.cpu_count(), "command": " ".join(server.command),
                       "env": {"HF_HUB_OFFLINE": "1", **{k: v for k, v in os.environ.items() if k.startswith("DDPM_")}},
                       "repeats": args.repeats, "note": args.note},
              "median": median, "runs": runs}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "startup_time.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / "startup_time.md").write_text(markdown(report) + "\n")
    print(markdown(report))


def markdown(report: dict) -> str:
    m, median, runs = report["meta"], report["median"], report["runs"]
    lines = [f"**Start-up time.** Measured {m['date']} on {m['cpu_cores']} CPU cores ({m['machine']}): `{m['command']}` "
             f"with env {m['env']}, "
             f"{m['repeats']} fresh servers; seconds since the launch, seen from Chromium. {m['note']}", "",
             f"**Median: Home's first chart drawn {median['first_chart_s']:.1f} s after launching the server** "
             f"(port answering {median['port_answers_s']:.1f} s, title shown {median['title_s']:.1f} s). "
             f"A second visitor then gets Home in {median['second_visitor_home_s']:.1f} s.", "",
             "| run | port answers (s) | title shown (s) | first chart drawn (s) | second visitor's Home (s) |",
             "|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(runs, 1):
        lines.append(f"| {i} | {r['port_answers_s']:.2f} | {r['title_s']:.2f} | {r['first_chart_s']:.2f} | "
                     f"{r['second_visitor_home_s']:.2f} |")
    lines.append(f"| median | {median['port_answers_s']:.2f} | {median['title_s']:.2f} | {median['first_chart_s']:.2f} | "
                 f"{median['second_visitor_home_s']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
