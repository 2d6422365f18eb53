"""Eight visitors at once on one app server: one trains, seven sample on Reverse denoising and scrub its steps.

    python bench/load_check.py [--sessions 8] [--scrubs 20] [--train-preset small --train-steps 100 --train-batch 32]
                               # writes bench/results/load_check.{json,md}

One `streamlit run app.py` (offline, the shipped default model, the caps of a hosted Space: DDPM_HOSTED=1) and
one Chromium with a browser context per visitor, all driven at once (Playwright's async API).  After one
visitor has opened "/" (as a Space's first visitor does, which also loads the model):

* the trainer opens Train, starts a run and waits for it to finish and for the comparison with the
  pretrained model to appear;
* each sampler opens Reverse denoising, generates with its own seed (so no two share the cached
  trajectory), then clicks the "Inspect any step" slider at random places ``--scrubs`` times, each time
  waiting for the step chart to show the new step.

Every action is timed from the browser's side (from the click to the result drawn and the script run
ended); every session must get its result with no exception, error box, dialog or JavaScript error on the
page.  The server's resident memory (VmRSS of it and its children, from /proc) is sampled every 0.5 s.
The browser shares the machine with the server: on 2 cores the latencies include Chromium's own work.
Stop other work first (a background training run takes its share of the cores).  Exit status 1 if any
session failed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
from app_server import (ARTIFACTS, CHROMIUM_ARGS, FIRST_LOAD_MS, JS_ERRORS, JS_IDLE, JS_IMAGE_CHART,  # noqa: E402
                        JS_POINTS, PAGES, VIEWPORT, AppServer, chart_selector, find_chromium, key_selector,
                        process_tree_rss_mb)

RESULTS = Path(__file__).parent / "results"
ACTION_MS = 600_000  # one action may wait this long on a saturated 2-core machine before it counts as failed
SERVER_ENV = {"DDPM_HOSTED": "1", "DDPM_TORCH_THREADS": "1"}
JS_STEP_SHOWN = f"""step => {{ const c = ({JS_IMAGE_CHART})('rev_step');
  return !!c && c.annotations[0].startsWith('x_t at step ' + step + ' ') }}"""


@dataclass
class Session:
    name: str
    role: str
    actions: list[tuple[str, float]] = field(default_factory=list)  # (action, seconds)
    errors: list[str] = field(default_factory=list)
    result: str | None = None  # what the visitor finally saw, in words

    async def timed(self, action: str, coro):
        start = time.perf_counter()
        value = await coro
        self.actions.append((action, time.perf_counter() - start))
        return value


async def idle(page) -> None:
    await page.wait_for_function(JS_IDLE, timeout=ACTION_MS)


async def check_page(session: Session, page, when: str) -> None:
    shown = await page.evaluate(JS_ERRORS)
    session.errors += [f"{when}: {text}" for text in shown]


async def open_page(page, base_url: str, name: str) -> None:
    path, title, charts = PAGES[name]
    await page.goto(f"{base_url}/{path}")
    await page.locator("h1", has_text=title).first.wait_for(timeout=ACTION_MS)
    await idle(page)
    for key in charts:
        await page.wait_for_selector(chart_selector(key), state="visible", timeout=ACTION_MS)


async def run_sampler(session: Session, page, base_url: str, seed: int, scrubs: int) -> None:
    await session.timed("open Reverse denoising", open_page(page, base_url, "reverse"))
    await check_page(session, page, "after opening")
    seed_box = page.locator(f"{key_selector('rev_seed')} input")
    await seed_box.fill(str(seed))

    async def generate():
        await page.get_by_role("button", name="Generate").click()
        await page.get_by_text(f"seed {seed}, ").first.wait_for(timeout=ACTION_MS)
        await page.wait_for_selector(chart_selector("rev_step"), state="visible", timeout=ACTION_MS)
        await idle(page)

    await session.timed("generate (new seed)", generate())
    await check_page(session, page, "after generating")
    slider = page.locator(f"{key_selector('rev_inspect')} input[type=range]")
    track = page.locator(f"{key_selector('rev_inspect')} [data-testid=stSlider] [data-orientation=horizontal]").nth(1)
    rng = random.Random(seed)
    shown = int(await slider.input_value())
    for i in range(scrubs):
        box = await track.bounding_box()

        async def scrub():
            await track.click(position={"x": box["width"] * rng.uniform(0.01, 0.99), "y": box["height"] / 2})
            step = int(await slider.input_value())
            await page.wait_for_function(JS_STEP_SHOWN, arg=step, timeout=ACTION_MS)
            await idle(page)
            return step

        before = len(session.actions)
        step = await session.timed("scrub the step slider", scrub())
        if step == shown:  # the click landed on the step already shown: nothing was asked of the server
            del session.actions[before:]
        shown = step
        await check_page(session, page, f"after scrub {i + 1}")
    chart = await page.evaluate(JS_IMAGE_CHART, "rev_step")
    if chart and all(chart["sources"]):
        session.result = f"seed {seed}: {len(session.actions) - 2} scrubs, last shown '{chart['annotations'][0]}'"


async def run_trainer(session: Session, page, base_url: str, preset: str, steps: int, batch: int) -> None:
    await session.timed("open Train", open_page(page, base_url, "train"))
    await check_page(session, page, "after opening")

    def keyed(key: str, inside: str):
        return page.locator(f"{key_selector(key)} {inside}")

    await keyed("train_preset", "[role=combobox]").click()
    await page.get_by_role("option", name=preset, exact=True).click()
    await idle(page)
    await keyed("train_steps", "input").fill(str(steps))
    await keyed("train_steps", "input").press("Enter")
    await idle(page)
    batch_slider = keyed("train_batch", "input[type=range]")
    batch_shown = keyed("train_batch", "[data-testid=stSliderThumbValue]")
    await batch_slider.focus()
    await batch_slider.press("Home")
    for _ in range(12):  # the batch sizes are 8, 16, 32, …: step right until the wanted one shows
        if (await batch_shown.inner_text()).strip() == str(batch):
            break
        await batch_slider.press("ArrowRight")
    else:
        raise ValueError(f"batch {batch} is not offered on this server")
    await idle(page)

    start = time.perf_counter()
    await keyed("train_start", "button").click()
    await page.wait_for_function(f"() => ({JS_POINTS})('train_loss') > 0", timeout=ACTION_MS)
    session.actions.append(("training: start to first loss point", time.perf_counter() - start))
    sizes = set()
    while not await page.get_by_text("finished", exact=True).count():
        for status in ("failed", "stopped"):
            if await page.get_by_text(status, exact=True).count():
                raise RuntimeError(f"the training run {status}")
        sizes.add(await page.evaluate(JS_POINTS, "train_loss"))
        if time.perf_counter() - start > ACTION_MS / 1000:
            raise TimeoutError("the training run did not finish")
        await asyncio.sleep(2)
    session.actions.append(("training: start to finished", time.perf_counter() - start))
    await session.timed("training: finished to comparison drawn",
                        page.wait_for_selector(chart_selector("train_compare"), state="visible", timeout=ACTION_MS))
    await check_page(session, page, "after training")
    points = await page.evaluate(JS_POINTS, "train_loss")
    session.result = (f"{preset} preset, {points} loss points (the live curve was seen at {len(sizes)} "
                      f"different lengths), finished, comparison drawn")


async def sample_memory(pid: int, t0: float, series: list, stop: asyncio.Event) -> None:
    while not stop.is_set():
        series.append((round(time.perf_counter() - t0, 2), round(process_tree_rss_mb(pid), 1)))
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except asyncio.TimeoutError:
            pass


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by process ``pid`` (None if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def run(args) -> dict:
    from playwright.async_api import async_playwright

    sessions = [Session("visitor 0", "trainer")] + [Session(f"visitor {i}", "sampler") for i in range(1, args.sessions)]
    memory: list[tuple[float, float]] = []
    ARTIFACTS.mkdir(exist_ok=True)
    server = AppServer(SERVER_ENV, log_path=ARTIFACTS / "load_check-server.log").start()
    t0 = server.started_at
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_memory(server.pid, t0, memory, stop))
    marks = {"server answering": round(server.ready_s, 2)}
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=find_chromium(), args=CHROMIUM_ARGS)
            first = await browser.new_context(viewport=VIEWPORT)
            start = time.perf_counter()
            page = await first.new_page()
            await page.goto(server.url)
            await page.wait_for_selector(chart_selector("home_grid"), state="visible", timeout=FIRST_LOAD_MS)
            marks["first visitor's Home drawn (model loaded)"] = round(time.perf_counter() - t0, 2)
            first_home_s = time.perf_counter() - start
            await first.close()
            cpu_before = cpu_seconds(server.pid)

            async def visit(i: int, session: Session):
                context = await browser.new_context(viewport=VIEWPORT)
                page = await context.new_page()
                page.on("pageerror", lambda err: session.errors.append(f"JavaScript: {err}"))
                try:
                    if session.role == "trainer":
                        await run_trainer(session, page, server.url, args.train_preset, args.train_steps, args.train_batch)
                    else:
                        await run_sampler(session, page, server.url, seed=1000 + i, scrubs=args.scrubs)
                except Exception as err:  # a failed session is recorded, the others go on
                    session.errors.append(f"{type(err).__name__}: {str(err).splitlines()[0]}")
                    await page.screenshot(path=ARTIFACTS / f"load_check-{session.name.replace(' ', '_')}.png")
                finally:
                    await context.close()

            marks["visitors start"] = round(time.perf_counter() - t0, 2)
            started = time.perf_counter()
            await asyncio.gather(*(visit(i, s) for i, s in enumerate(sessions)))
            wall = time.perf_counter() - started
            marks["visitors done"] = round(time.perf_counter() - t0, 2)
            cpu_used = cpu_seconds(server.pid) - cpu_before
            await browser.close()
    finally:
        stop.set()
        await sampler
        server.stop()
    return {"sessions": sessions, "memory": memory, "marks": marks, "wall_s": wall, "first_home_s": first_home_s,
            "server_cpu_s": cpu_used}


def stats(values: list[float]) -> dict:
    a = np.asarray(values)
    return {"n": len(a), "median_s": round(float(np.median(a)), 3), "p90_s": round(float(np.percentile(a, 90)), 3),
            "max_s": round(float(a.max()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=8, help="visitors at once: one trainer, the rest sample")
    parser.add_argument("--scrubs", type=int, default=20, help="slider clicks per sampling visitor")
    parser.add_argument("--train-preset", default="small")
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--note", default="", help="conditions worth recording, e.g. what else ran on the machine")
    args = parser.parse_args()
    if find_chromium() is None:
        sys.exit("no Chromium found: apt-get install chromium")
    out = asyncio.run(run(args))
    sessions, memory = out["sessions"], out["memory"]
    by_action: dict[str, list[float]] = {}
    for s in sessions:
        for action, seconds in s.actions:
            by_action.setdefault(action, []).append(seconds)
    ok = all(s.result and not s.errors for s in sessions)
    rss = [m for _, m in memory]
    report = {
        "meta": {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.machine(), "cpu_cores": os.cpu_count(),
                 "server_env": SERVER_ENV, "model": "shipped default (checkpoints/default), offline",
                 "sessions": args.sessions, "scrubs_per_sampler": args.scrubs,
                 "training": {"preset": args.train_preset, "steps": args.train_steps, "batch": args.train_batch},
                 "browser": "one Chromium (headless), one context per visitor, on the same machine",
                 "note": args.note},
        "all_sessions_ok": ok,
        "wall_s": round(out["wall_s"], 1),
        "first_home_s": round(out["first_home_s"], 2),
        "server_cpu_s_during_visits": round(out["server_cpu_s"], 1),
        "actions": {a: stats(v) for a, v in by_action.items()},
        "sessions": [{"name": s.name, "role": s.role, "ok": bool(s.result and not s.errors), "result": s.result,
                      "errors": s.errors, "actions": [(a, round(v, 3)) for a, v in s.actions]} for s in sessions],
        "memory": {"unit": "MiB, VmRSS of the server process and its children", "marks_s": out["marks"],
                   "start_mb": rss[0], "peak_mb": max(rss), "end_mb": rss[-1], "series": memory},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "load_check.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / "load_check.md").write_text(markdown(report) + "\n")
    print(markdown(report))
    sys.exit(0 if ok else 1)


def markdown(r: dict) -> str:
    m, mem = r["meta"], r["memory"]
    lines = [f"**Load check, {m['sessions']} visitors on one server.** Measured {m['date']} on {m['cpu_cores']} CPU "
             f"cores ({m['machine']}); {m['browser']}. Server: `streamlit run app.py`, {m['model']}, "
             f"env {m['server_env']}. One visitor trains "
             f"({m['training']['preset']} preset, {m['training']['steps']} steps, batch {m['training']['batch']}); "
             f"{m['sessions'] - 1} generate on Reverse denoising (each its own seed) and click the step slider "
             f"{m['scrubs_per_sampler']} times. Times are seen from the browser: from the click to the result drawn. "
             f"{m['note']}", "",
             f"**All sessions got their result without an error: {'yes' if r['all_sessions_ok'] else 'NO'}.** "
             f"Visits took {r['wall_s']:.0f} s of wall time; the server used {r['server_cpu_s_during_visits']:.0f} "
             f"CPU seconds meanwhile. The first visitor's Home page (model load included) took {r['first_home_s']:.1f} s.", "",
             "| action | n | median (s) | p90 (s) | max (s) |", "|---|---:|---:|---:|---:|"]
    for action, s in r["actions"].items():
        lines.append(f"| {action} | {s['n']} | {s['median_s']:.2f} | {s['p90_s']:.2f} | {s['max_s']:.2f} |")
    lines += ["", "| visitor | role | ok | result / errors |", "|---|---|---|---|"]
    for s in r["sessions"]:
        lines.append(f"| {s['name']} | {s['role']} | {'yes' if s['ok'] else 'NO'} | "
                     f"{s['result'] or ''}{'; '.join(s['errors'])} |")
    marks = ", ".join(f"{k} at {v:.0f} s" for k, v in mem["marks_s"].items())
    series = mem["series"]
    every = series[:: max(1, len(series) // 12)] + [series[-1]]
    lines += ["", f"Server memory ({mem['unit']}): {mem['start_mb']:.0f} MiB when it first answered, peak "
              f"{mem['peak_mb']:.0f} MiB, {mem['end_mb']:.0f} MiB at the end ({marks}). Over time (s: MiB): "
              + ", ".join(f"{t:.0f}: {mb:.0f}" for t, mb in every) + "; every 0.5 s in load_check.json."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
