"""Cold start: seconds from launching `streamlit run app.py` to Home's title and first chart drawn in a browser.

    python bench/startup_time.py [--repeats 5]                  # writes bench/results/startup_time.{json,md}
    python bench/startup_time.py --before 3cefd11 --note "..."  # the same, interleaved with an older commit

Each repetition starts a fresh server (offline, HF_HUB_OFFLINE=1, the shipped default model and whatever
data `ddpm` finds), opens "/" in a fresh Chromium context as soon as the port answers, and records when
the server answered, when the title showed and when the first chart (16 generated beside 16 real patches)
was drawn: that last time includes importing torch, loading the model and the data, and sampling (or
reading the preview stored beside the weights).  Then a second visitor opens Home on the now-warm server
and presses "New samples", which always samples live.  Chromium is started once, before the clock.

With ``--before REF`` the commit REF is checked out into a temporary git worktree and servers are started
alternately from it and from this checkout (before, after, before, …), so both see the same load on the
machine; both medians are written.  Stop other work first where you can, and say in --note what still ran.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
from app_server import (ARTIFACTS, CHROMIUM_ARGS, FIRST_LOAD_MS, JS_IMAGE_CHART, LOAD_MS, PAGES, REPO,  # noqa: E402
                        VIEWPORT, AppServer, chart_selector, find_chromium)

RESULTS = Path(__file__).parent / "results"
HOME_TITLE = PAGES["home"][1]
COLUMNS = {"port_answers_s": "port answers (s)", "title_s": "title shown (s)", "first_chart_s": "first chart drawn (s)",
           "second_visitor_home_s": "second visitor's Home (s)", "new_samples_s": "New samples, live (s)"}


def open_home(browser, url: str, t0: float, press_new: bool = False) -> tuple[float, float, float | None]:
    """(seconds to the title, seconds to the first chart) since ``t0`` for a fresh visitor, and with ``press_new``
    the seconds from pressing "New samples" to the new draw on the chart."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.goto(url)
        page.locator("h1", has_text=HOME_TITLE).first.wait_for(timeout=FIRST_LOAD_MS)
        title = time.perf_counter() - t0
        page.wait_for_selector(chart_selector("home_grid"), state="visible", timeout=FIRST_LOAD_MS)
        chart = time.perf_counter() - t0
        if not press_new:
            return title, chart, None
        first = page.evaluate(JS_IMAGE_CHART, "home_grid")["annotations"][0]
        start = time.perf_counter()
        page.get_by_role("button", name="New samples").click()
        page.wait_for_function(f"() => {{ const c = ({JS_IMAGE_CHART})('home_grid'); "
                               f"return c && c.annotations[0] !== {json.dumps(first)} }}", timeout=LOAD_MS)
        return title, chart, time.perf_counter() - start
    finally:
        context.close()


def one_server(browser, repo: Path) -> dict:
    with AppServer(log_path=ARTIFACTS / "startup_time-server.log", repo=repo) as server:
        title_s, chart_s, _ = open_home(browser, server.url, server.started_at)
        _, warm_s, new_s = open_home(browser, server.url, time.perf_counter(), press_new=True)
    return {"port_answers_s": round(server.ready_s, 2), "title_s": round(title_s, 2), "first_chart_s": round(chart_s, 2),
            "second_visitor_home_s": round(warm_s, 2), "new_samples_s": round(new_s, 2)}


def commit_of(repo: Path) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def median_of(runs: list[dict]) -> dict:
    return {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh servers per checkout")
    parser.add_argument("--before", metavar="REF", help="also measure this older commit, interleaved with this checkout")
    parser.add_argument("--note", default="", help="conditions worth recording, e.g. what else ran on the machine")
    args = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        sys.exit("no Chromium found: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="startup-before-") as tmp:
        trees = {"after" if args.before else "this checkout": REPO}
        if args.before:
            before = Path(tmp) / "tree"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(before), args.before], check=True,
                           capture_output=True)
            trees = {"before": before, **trees}
        try:
            variants = {name: {"commit": commit_of(tree), "runs": []} for name, tree in trees.items()}
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
                for i in range(args.repeats):
                    for name, tree in trees.items():
                        variants[name]["runs"].append(one_server(browser, tree))
                        print(name, json.dumps(variants[name]["runs"][-1]), flush=True)
                browser.close()
        finally:
            if args.before:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(before)], check=False)
    for v in variants.values():
        v["median"] = median_of(v["runs"])
    command = ["streamlit", "run", "app.py", "--server.headless", "true", "--server.address", "127.0.0.1",
               "--server.fileWatcherType", "none"]
    report = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.machine(),
                       "cpu_cores": os.cpu_count(), "command": " ".join(command),
                       "env": {"HF_HUB_OFFLINE": "1", **{k: v for k, v in os.environ.items() if k.startswith("DDPM_")}},
                       "repeats": args.repeats, "interleaved": bool(args.before), "note": args.note,
                       "load_average_1_5_15_min": {"start": load_before, "end": [round(x, 2) for x in os.getloadavg()]}},
              "variants": variants}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "startup_time.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / "startup_time.md").write_text(markdown(report) + "\n")
    print(markdown(report))


def markdown(report: dict) -> str:
    m, variants = report["meta"], report["variants"]
    how = "alternately from each checkout (before, after, before, …)" if m["interleaved"] else ""
    lines = [f"**Start-up time.** Measured {m['date']} on {m['cpu_cores']} CPU cores ({m['machine']}): `{m['command']}` "
             f"with env {m['env']}, {m['repeats']} fresh servers per checkout{', started ' + how if how else ''}; "
             f"seconds since the launch, seen from Chromium. {m['note']} Load average (1, 5, 15 min) "
             f"{m['load_average_1_5_15_min']['start']} at the start, {m['load_average_1_5_15_min']['end']} at the end.", ""]
    for name, v in variants.items():
        med = v["median"]
        lines.append(f"- **{name}** (commit {v['commit']}): **Home's first chart drawn {med['first_chart_s']:.1f} s "
                     f"after launching the server** (median; port answering {med['port_answers_s']:.1f} s, title shown "
                     f"{med['title_s']:.1f} s); a second visitor then gets Home in {med['second_visitor_home_s']:.1f} s "
                     f"and live New samples in {med['new_samples_s']:.1f} s.")
    lines += ["", "| checkout | run | " + " | ".join(COLUMNS.values()) + " |", "|---|---:|" + "---:|" * len(COLUMNS)]
    for name, v in variants.items():
        for i, r in enumerate(v["runs"], 1):
            lines.append(f"| {name} | {i} | " + " | ".join(f"{r[k]:.2f}" for k in COLUMNS) + " |")
        lines.append(f"| {name} | median | " + " | ".join(f"**{v['median'][k]:.2f}**" for k in COLUMNS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
