"""Ten rounds of "Real or generated?" as a visitor plays them on the hosted app, timed in the browser.

    python bench/quiz_check.py [--rounds 10] [--data-dir ../shared/data] [--note "..."]
                               # writes bench/results/quiz_check.{json,md}

One `streamlit run app.py` with a Space's limits (DDPM_HOSTED=1, offline, the shipped default model, a throwaway
answer database) and one headless Chromium. The visitor opens the page cold (the pool of generated patches is
made on the first visit), then answers each round as soon as its buttons show, no faster than the server's rate
limit allows (``quiz_rounds.ANSWER_EVERY_S``), and presses Next round. Timed: the first round's wait (page open to
buttons), each later round's wait (Next round to buttons), each answer's wait (click to verdict), and the whole ten
rounds. Stop other work first: the browser shares the cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
from app_server import (CHROMIUM_ARGS, FIRST_LOAD_MS, JS_IDLE, LOAD_MS, REPO, VIEWPORT, AppServer,  # noqa: E402
                        chart_selector, find_chromium, key_selector)

RESULTS = REPO / "bench" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(REPO))
    from ddpm.serving.quiz_rounds import ANSWER_EVERY_S

    chromium = find_chromium()
    if chromium is None:
        sys.exit("needs Debian's chromium (apt-get install chromium)")
    db = Path(tempfile.mkdtemp()) / "quiz.sqlite3"
    env = {**os.environ, "DDPM_HOSTED": "1", "HF_HUB_OFFLINE": "1", "DDPM_QUIZ_DB": str(db),
           **({"DDPM_DATA_DIR": args.data_dir} if Path(args.data_dir).is_dir() else {})}
    waits, answers = [], []
    with AppServer(env) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport=VIEWPORT).new_page()
        ready = lambda: (page.wait_for_selector(chart_selector("quiz_round"), state="visible", timeout=FIRST_LOAD_MS),  # noqa: E731
                         page.wait_for_selector(key_selector("quiz_left") + " button", state="visible", timeout=LOAD_MS),
                         page.wait_for_function(f"() => ({JS_IDLE})()", timeout=LOAD_MS))
        t0 = time.perf_counter()
        page.goto(f"{server.url}/quiz")
        ready()
        first = time.perf_counter() - t0
        started, answered_at = time.perf_counter(), -ANSWER_EVERY_S
        for i in range(args.rounds):
            if i:
                t = time.perf_counter()
                page.locator(key_selector("quiz_next") + " button").click()
                page.wait_for_selector(key_selector("quiz_next"), state="detached", timeout=LOAD_MS)
                ready()
                waits.append(time.perf_counter() - t)
            time.sleep(max(0.0, answered_at + ANSWER_EVERY_S + 0.05 - time.monotonic()))
            t = time.perf_counter()
            page.locator(key_selector(f"quiz_{('left', 'right')[i % 2]}") + " button").click()
            answered_at = time.monotonic()
            page.get_by_text("the generated patch is on the").wait_for(timeout=LOAD_MS)
            answers.append(time.perf_counter() - t)
        total = time.perf_counter() - started
        browser.close()
    from ddpm.quiz import QuizDB

    stored = len(QuizDB(db).rows_after(0))
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{os.cpu_count()} CPUs ({platform.machine()})",
              "rounds": args.rounds, "stored": stored, "first_round_s": round(first, 2),
              "ten_rounds_s": round(total, 2), "next_round_s": [round(w, 2) for w in waits],
              "answer_s": [round(a, 2) for a in answers], "rate_limit_s": ANSWER_EVERY_S, "note": args.note}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quiz_check.json").write_text(json.dumps(result, indent=1) + "\n")
    md = [f"Measured {result['date']} on {result['machine']}, one headless Chromium on the same machine; `streamlit run "
          f"app.py` with DDPM_HOSTED=1, offline, the shipped default model. {args.note}".strip(), "",
          "| what | seconds |", "|---|---:|",
          f"| page opened cold to the first round's buttons (the pool is made) | {first:.1f} |",
          f"| {args.rounds} rounds, first round shown to the last verdict (answers no faster than one per "
          f"{ANSWER_EVERY_S:g} s) | {total:.1f} |",
          f"| Next round to the next round's buttons, median (max) | {statistics.median(waits):.2f} ({max(waits):.2f}) |",
          f"| an answer to its verdict, median (max) | {statistics.median(answers):.2f} ({max(answers):.2f}) |", "",
          f"Answers stored: {stored} of {args.rounds}."]
    (RESULTS / "quiz_check.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
