"""The README's screenshots: every page of the app in Chromium at 1280×900, as docs/screenshots/<page>.png.

    python bench/screenshots.py [--out docs/screenshots] [--pages quiz compare]

It starts its own server the way a visitor meets the app (`streamlit run app.py`, offline, the shipped
default model and whatever data `ddpm` finds) and, on the Train page, trains the paper's network for a
few dozen steps so the loss curve and samples are there; on Real or generated? it answers one round (into a
throwaway database) so the score is there.  Needs Debian's `chromium` and the `playwright`
package (no `playwright install`).  PNGs are reduced to 256 colours to stay small in git.
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
from app_server import (CHROMIUM_ARGS, FIRST_LOAD_MS, JS_ERRORS, JS_IDLE, LOAD_MS, PAGES, REPO,  # noqa: E402
                        STEER_CHARTS, VIEWPORT, AppServer, chart_selector, find_chromium, key_selector,
                        start_training_run)

TRAIN_RUN = {"preset": "seed", "steps": 60, "batch": 32, "sample_every": 20}


def save_small_png(png: bytes, path: Path) -> int:
    """Write a screenshot as a 256-colour PNG; returns its size in bytes."""
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    image.save(path, optimize=True)
    return path.stat().st_size


def open_page(page, base_url: str, name: str, timeout_ms: int) -> None:
    path, title, charts = PAGES[name]
    charts = STEER_CHARTS if name == "steer" else charts  # the shipped default model is tissue-conditional
    page.goto(f"{base_url}/{path}")
    page.locator("h1", has_text=title).first.wait_for(timeout=timeout_ms)
    page.wait_for_function(JS_IDLE, timeout=timeout_ms)
    for key in charts:
        page.wait_for_selector(chart_selector(key), state="visible", timeout=timeout_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--pages", nargs="+", choices=list(PAGES), default=list(PAGES), help="which pages (default: all)")
    args = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        sys.exit("no Chromium found: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    log = Path(tempfile.gettempdir()) / "screenshots-server.log"
    quiz_db = Path(tempfile.mkdtemp(prefix="screenshots-quiz-")) / "quiz.sqlite3"  # not the real answers
    with AppServer({"DDPM_QUIZ_DB": str(quiz_db)}, log_path=log) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport=VIEWPORT).new_page()
        for i, name in enumerate(p for p in PAGES if p in args.pages):  # in the app's order: home first loads the model
            open_page(page, server.url, name, FIRST_LOAD_MS if i == 0 else LOAD_MS)
            if name == "train":
                start_training_run(page, **TRAIN_RUN)
                page.get_by_text("finished", exact=True).wait_for(timeout=5 * LOAD_MS)
                page.wait_for_selector(chart_selector("train_samples"), state="visible", timeout=LOAD_MS)
                page.wait_for_function(JS_IDLE, timeout=LOAD_MS)
                for scrolled in (".stMain", "[data-testid=stSidebarContent]"):  # the settings scrolled them
                    page.locator(scrolled).evaluate("e => e.scrollTo(0, 0)")
            if name == "quiz":  # the first round waits for the pool's first generated patches
                page.wait_for_selector(chart_selector("quiz_round"), state="visible", timeout=FIRST_LOAD_MS)
                page.locator(f"{key_selector('quiz_left')} button").click()
                page.wait_for_selector(chart_selector("quiz_scores"), state="visible", timeout=LOAD_MS)
                page.wait_for_function(JS_IDLE, timeout=LOAD_MS)
            page.wait_for_timeout(1000)  # let Plotly finish its transitions
            errors = page.evaluate(JS_ERRORS)
            if errors:
                sys.exit(f"{name}: the page shows errors, no screenshot taken: {errors}")
            size = save_small_png(page.screenshot(), args.out / f"{name}.png")
            print(f"{args.out / f'{name}.png'}: {size / 1024:.0f} KiB")
        browser.close()


if __name__ == "__main__":
    main()
