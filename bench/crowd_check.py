"""A classroom at once: N visitors press Generate on Reverse denoising in the same second while one visitor trains.

    python bench/crowd_check.py [--crowds 10 8 16 32] [--solo 3] [--train-steps 500] [--note "..."]
                                # writes bench/results/crowd_check.{json,md}

One `streamlit run app.py` with a Space's limits (DDPM_HOSTED=1, offline, the shipped default model) and one
Chromium, one browser context per visitor (Playwright's async API). A first visitor opens "/" (loading the
model); one visitor starts a training run on Train and keeps it going through every phase. Then:

* solo: one visitor on Reverse denoising generates ``--solo`` times, each with a seed nobody else uses; the
  median is "one visitor's solo time", measured in this run, beside the same training run;
* for each N in ``--crowds``: N visitors open Reverse denoising, each types a seed nobody else uses, and all
  press Generate at once; each is timed from the click to the result drawn (the browser's view);
* the costliest request a visitor may make: one visitor starts a fresh evaluation on Compare at the largest
  size the server allows (300 patches hosted: about 9,000 GFLOP, the budget's 75%; an upload can cost no more
  than the budget), and while it runs the solo visitor generates ``--solo`` times again.

The server writes one JSON line per finished request (DDPM_REQUEST_LOG): how long it waited in line and how
long it computed, measured on the server, so the browser's own CPU (it shares these 2 cores here, not on a
real Space) can be told apart. Beside the latencies the table prints the physical line N × solo: with one
sampling worker nobody can do better than being served one after another. The server's memory is sampled every
0.5 s: for it and every descendant (its forkserver and the children forked from it), PSS and RSS from
/proc/PID/smaps_rollup (bench/server_memory.py). The tree's PSS is the memory it really holds, each page shared
by several processes (torch, imported once by the forkserver) counted once; the summed RSS counts such a page
once per process. The 2 GiB target is on the PSS. The trainer's loss curve is read before and after each phase
(the run must keep making progress). Stop other work first. Exit status 1 if any visitor failed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from app_server import (ARTIFACTS, CHROMIUM_ARGS, FIRST_LOAD_MS, JS_POINTS, REPO, VIEWPORT, AppServer,  # noqa: E402
                        chart_selector, find_chromium, key_selector)
from load_check import ACTION_MS, Session, check_page, cpu_seconds, idle, open_page, run_trainer  # noqa: E402
from server_memory import roles, sample  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SERVER_ENV = {"DDPM_HOSTED": "1"}
TARGET_MIB = 2048  # the server's memory (PSS of its process tree) with 32 visitors
SETUP = "opening and starting the training run"
CLICKS: dict[int, tuple[float, float]] = {}  # seed -> (click, result drawn), wall clock, for the timeline
TRAINER_ALONE_S = 15.0  # the training visitor's page measured alone this long, before the others come


def chromium_pids() -> list[int]:
    """Every Chromium process running now."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"chromium" in cmdline.read_bytes().split(b"\0")[0]:
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def renice_browser(nice: int) -> int:
    """Lower the priority of every Chromium process (those it starts later inherit it from their parents)."""
    count = 0
    for pid in chromium_pids():
        try:
            os.setpriority(os.PRIO_PROCESS, pid, nice)
            count += 1
        except OSError:
            continue
    return count


async def generate(session: Session, page, seed: int, label: str) -> float:
    """Type ``seed`` and press Generate; seconds from the click to the result drawn."""
    await page.locator(f"{key_selector('rev_seed')} input").fill(str(seed))
    start, clicked = time.perf_counter(), time.time()
    await page.get_by_role("button", name="Generate").click()
    await page.get_by_text(f"seed {seed}, ").first.wait_for(timeout=ACTION_MS)
    await page.wait_for_selector(chart_selector("rev_step"), state="visible", timeout=ACTION_MS)
    await idle(page)
    seconds = time.perf_counter() - start
    session.actions.append((label, seconds))
    CLICKS[seed] = (clicked, clicked + seconds)
    return seconds


async def start_costliest_request(browser, url: str):
    """A visitor starts Compare's fresh evaluation at its largest size; returns their browser context (open)."""
    context = await browser.new_context(viewport=VIEWPORT)
    page = await context.new_page()
    await open_page(page, url, "compare")
    thumb = page.locator(f"{key_selector('cmp_n')} input[type=range]")
    await thumb.focus()
    await thumb.press("End")
    await page.get_by_role("button", name="Run a fresh evaluation").click()
    await page.get_by_text("Sampling and scoring").first.wait_for(timeout=ACTION_MS)
    return context


async def training_points(page) -> int:
    """Points on the training page's loss curve (retried for a few seconds while its live view redraws it)."""
    for _ in range(20):
        points = int(await page.evaluate(JS_POINTS, "train_loss") or 0)
        if points >= 0:
            return points
        await asyncio.sleep(0.25)
    return points


async def crowd(browser, url: str, n: int, first_seed: int, server_pid: int) -> tuple[list[Session], dict]:
    """N visitors on Reverse, then Generate pressed by all at once; returns their sessions (one action each) and
    the CPU seconds by process (and "wall", seconds) from the clicks to the last result."""
    contexts = [await browser.new_context(viewport=VIEWPORT) for _ in range(n)]
    pages = [await c.new_page() for c in contexts]
    for p in pages:
        p.set_default_navigation_timeout(ACTION_MS)
    sessions = [Session(f"crowd {n} visitor {i}", "sampler") for i in range(n)]
    for s, p in zip(sessions, pages):
        p.on("pageerror", lambda err, s=s: s.errors.append(f"JavaScript: {err}"))
    await asyncio.gather(*(open_page(p, url, "reverse") for p in pages))
    for i, p in enumerate(pages):
        await p.locator(f"{key_selector('rev_seed')} input").fill(str(first_seed + i))

    async def press(i: int) -> None:
        s, p = sessions[i], pages[i]
        try:
            await generate(s, p, first_seed + i, "generate")
            await check_page(s, p, "after generating")
            s.result = f"seed {first_seed + i}"
        except Exception as err:  # recorded; the others go on
            s.errors.append(f"{type(err).__name__}: {str(err).splitlines()[0]}")

    def now() -> dict[str, float]:
        return {**cpu_by_process(server_pid), "Chromium": browser_cpu_s(), "whole machine": machine_cpu_s(),
                "wall": time.perf_counter()}

    before = now()
    await asyncio.gather(*(press(i) for i in range(n)))
    wait_cpu = cpu_between(before, now(), digits=1)
    for c in contexts:
        await c.close()
    return sessions, wait_cpu


def server_side(log_path: Path, seeds: set[int]) -> list[dict]:
    if not log_path.is_file():
        return []
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["kind"] == "trajectory" and r["seed"] in seeds]


def timeline(rows: list[dict]) -> dict:
    """Each visitor's wait split in four, from the browser's clock and the server's log (one machine, one clock):
    click to request in line (the page's script up to the submit), in line, computing, done to result drawn (the
    script drawing it, the browser rendering it)."""
    parts = {"click to submit": [], "queued": [], "computing": [], "done to drawn": []}
    for r in rows:
        if r["seed"] not in CLICKS or "submitted_unix" not in r or r["queued_s"] is None or r["compute_s"] is None:
            continue
        clicked, drawn = CLICKS[r["seed"]]
        parts["click to submit"].append(r["submitted_unix"] - clicked)
        parts["queued"].append(r["queued_s"])
        parts["computing"].append(r["compute_s"])
        parts["done to drawn"].append(drawn - r["finished_unix"])
    return {name: stats(values) for name, values in parts.items()}


def cpu_by_process(root_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the server and each of its descendants, by role."""
    used: dict[str, float] = {}
    for pid, role in roles(root_pid).items():
        seconds = cpu_seconds(pid)
        if seconds is not None:
            used[role] = used.get(role, 0.0) + seconds
    return used


def cpu_between(before: dict[str, float], after: dict[str, float], digits: int = 1) -> dict[str, float]:
    """What each counter of ``after`` grew since ``before`` (a process that started meanwhile: all of it)."""
    return {name: round(value - before.get(name, 0.0), digits) for name, value in after.items()}


async def sample_memory(pid: int, t0: float, phase: dict, series: list, peaks: dict, stop: asyncio.Event) -> None:
    """Every 0.5 s: the tree's PSS and RSS (MiB) into ``series``; per phase (``phase["name"]``), the reading of the
    highest PSS with every process in it, into ``peaks``."""
    while not stop.is_set():
        reading = sample(pid)
        pss, rss = round(reading["pss_kb"] / 1024, 1), round(reading["rss_kb"] / 1024, 1)
        series.append((round(time.perf_counter() - t0, 2), pss, rss))
        name = phase["name"]
        if name not in peaks or pss > peaks[name]["pss_mb"]:
            peaks[name] = {"pss_mb": pss, "rss_mb": rss, "processes": [
                {"role": p["role"], "pss_mb": round(p["Pss"] / 1024, 1), "rss_mb": round(p["Rss"] / 1024, 1)}
                for p in reading["processes"]]}
        peaks[name]["rss_peak_mb"] = max(rss, peaks[name].get("rss_peak_mb", 0.0))
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except asyncio.TimeoutError:
            pass


def browser_cpu_s() -> float:
    """CPU seconds (user + system) used so far by every Chromium process."""
    return sum(seconds for seconds in map(cpu_seconds, chromium_pids()) if seconds is not None)


def machine_cpu_s() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(v) for i, v in enumerate(fields) if i not in (3, 4))  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def stats(values) -> dict:
    a = np.asarray(list(values), dtype=float)
    if not len(a):
        return {}
    return {"n": int(len(a)), "median_s": round(float(np.median(a)), 2), "p90_s": round(float(np.percentile(a, 90)), 2),
            "max_s": round(float(a.max()), 2), "min_s": round(float(a.min()), 2)}


async def run(args) -> dict:
    from playwright.async_api import async_playwright

    log_path = Path(tempfile.mkdtemp(prefix="ddpm-crowd-")) / "requests.jsonl"
    ARTIFACTS.mkdir(exist_ok=True)
    server = AppServer({**SERVER_ENV, "DDPM_REQUEST_LOG": str(log_path)},
                       log_path=ARTIFACTS / "crowd_check-server.log", repo=args.repo).start()
    memory: list[tuple[float, float, float]] = []
    peaks: dict[str, dict] = {}
    now = {"name": SETUP}  # the phase under way, for the memory sampler
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_memory(server.pid, server.started_at, now, memory, peaks, stop))
    phases, trainer = [], Session("trainer", "trainer")
    load_start = os.getloadavg()
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=find_chromium(), args=CHROMIUM_ARGS)
            if args.browser_nice:
                renice_browser(args.browser_nice)
            first = await browser.new_context(viewport=VIEWPORT)
            page = await first.new_page()
            await page.goto(server.url)
            await page.wait_for_selector(chart_selector("home_grid"), state="visible", timeout=FIRST_LOAD_MS)
            await first.close()

            train_ctx = await browser.new_context(viewport=VIEWPORT)
            train_page = await train_ctx.new_page()
            training = asyncio.create_task(run_trainer(trainer, train_page, server.url, args.train_preset,
                                                       args.train_steps, args.train_batch))
            while not trainer.actions:  # until the first loss point is drawn
                if training.done():
                    training.result()
                await asyncio.sleep(1)

            # what the training visitor's page costs on its own: its live view redraws every few seconds
            await asyncio.sleep(3)
            cpu0 = {"Chromium": browser_cpu_s(), **cpu_by_process(server.pid)}
            await asyncio.sleep(TRAINER_ALONE_S)
            trainer_alone = {"seconds": TRAINER_ALONE_S, **cpu_between(
                cpu0, {"Chromium": browser_cpu_s(), **cpu_by_process(server.pid)}, digits=2)}

            solo_ctx = await browser.new_context(viewport=VIEWPORT)
            solo_page = await solo_ctx.new_page()
            solo = Session("solo visitor", "sampler")
            now["name"] = "solo"
            await open_page(solo_page, server.url, "reverse")
            before = await training_points(train_page)
            solo_times = [await generate(solo, solo_page, 500 + i, "solo generate") for i in range(args.solo)]
            await solo_ctx.close()
            solo_s = float(np.median(solo_times))
            phases.append({"name": "solo", "n": 1, "seeds": [500 + i for i in range(args.solo)],
                           "browser": stats(solo_times), "training_points": [before, await training_points(train_page)],
                           "errors": solo.errors})

            if not args.no_costliest:
                before = await training_points(train_page)
                now["name"] = "solo, beside the costliest request"
                heavy_ctx = await start_costliest_request(browser, server.url)
                await asyncio.sleep(5)  # the evaluation is under way in its lane
                during = Session("solo visitor during the costliest request", "sampler")
                solo_ctx = await browser.new_context(viewport=VIEWPORT)
                solo_page = await solo_ctx.new_page()
                await open_page(solo_page, server.url, "reverse")
                during_times = [await generate(during, solo_page, 700 + i, "generate") for i in range(args.solo)]
                await solo_ctx.close()
                await heavy_ctx.close()
                phases.append({"name": "solo, beside the costliest request", "n": 1,
                               "seeds": [700 + i for i in range(args.solo)], "browser": stats(during_times),
                               "training_points": [before, await training_points(train_page)], "errors": during.errors})

            for k, n in enumerate(args.crowds):
                first_seed = 10_000 * (k + 1)
                again = args.crowds[:k].count(n)
                now["name"] = f"crowd of {n}" + (f" (again, {again + 1})" if again else "")
                before = await training_points(train_page)
                t0 = time.perf_counter()
                cpu0, machine0 = cpu_by_process(server.pid), machine_cpu_s()
                sessions, wait_cpu = await crowd(browser, server.url, n, first_seed, server.pid)
                cpu1, machine1 = cpu_by_process(server.pid), machine_cpu_s()
                phases.append({"name": now["name"], "n": n, "seeds": list(range(first_seed, first_seed + n)),
                               "browser": stats(s.actions[0][1] for s in sessions if s.actions),
                               "latencies_s": sorted(round(s.actions[0][1], 2) for s in sessions if s.actions),
                               "wall_s": round(time.perf_counter() - t0, 1),
                               "training_points": [before, await training_points(train_page)],
                               "errors": [e for s in sessions for e in s.errors],
                               "cpu_s": {**cpu_between(cpu0, cpu1), "whole machine": round(machine1 - machine0, 1)},
                               "wait_cpu_s": wait_cpu,
                               "ok": all(s.result and not s.errors for s in sessions)})
            now["name"] = "after the crowds"
            training.cancel()
            await browser.close()
    finally:
        stop.set()
        await sampler
        server.stop()
    for phase in phases:
        rows = server_side(log_path, set(phase["seeds"]))
        phase["server"] = {"requests": len(rows), "queued": stats(r["queued_s"] for r in rows if r["queued_s"] is not None),
                           "compute": stats(r["compute_s"] for r in rows if r["compute_s"] is not None),
                           "statuses": sorted({r["status"] for r in rows})}
        phase["solo_line_s"] = round(phase["n"] * solo_s, 2)
        phase["timeline"] = timeline(rows)
    return {"phases": phases, "solo_s": solo_s, "trainer_alone": trainer_alone, "memory": memory,
            "memory_peaks": peaks, "trainer": trainer, "load": [load_start, os.getloadavg()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--crowds", type=int, nargs="+", default=[10, 8, 16, 32], help="visitors pressing Generate at once")
    parser.add_argument("--solo", type=int, default=3, help="solo runs measured first (their median is the solo time)")
    parser.add_argument("--no-costliest", action="store_true",
                        help="skip the phase beside the costliest request (to repeat the crowds quickly)")
    parser.add_argument("--train-preset", default="small")
    parser.add_argument("--train-steps", type=int, default=500)
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--browser-nice", type=int, default=0, help="run Chromium at this nice level: a visitor's browser "
                        "runs on their own machine, not on the Space's cores (default 0: it competes with the server)")
    parser.add_argument("--env", nargs="*", default=[], metavar="NAME=VALUE",
                        help="more environment for the server (e.g. DDPM_MAX_COMPUTE=1), recorded in the result")
    parser.add_argument("--repo", type=Path, default=REPO,
                        help="the checkout whose app is served (e.g. a git worktree of an older commit, to compare)")
    parser.add_argument("--note", default="", help="what else ran on the machine")
    parser.add_argument("--out", default="crowd_check", help="name of the result files in bench/results")
    args = parser.parse_args()
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--env takes NAME=VALUE, got {item!r}")
        SERVER_ENV[name] = value
    if find_chromium() is None:
        sys.exit("no Chromium found: apt-get install chromium")
    out = asyncio.run(run(args))
    series = out["memory"]
    pss, rss = [r[1] for r in series], [r[2] for r in series]
    at_peak = max(out["memory_peaks"], key=lambda name: out["memory_peaks"][name]["pss_mb"])
    report = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.machine(), "cpu_cores": os.cpu_count(),
                       "server_env": SERVER_ENV, "model": "shipped default (checkpoints/default), offline",
                       "sampling": recommended_sampling(),
                       "training": {"preset": args.train_preset, "steps": args.train_steps, "batch": args.train_batch},
                       "browser": "one headless Chromium, one context per visitor, on the same machine",
                       "load_average_1min_start_end": [round(out["load"][0][0], 2), round(out["load"][1][0], 2)],
                       "browser_nice": args.browser_nice,
                       "note": args.note, "app": git_describe(args.repo)},
              "solo_s": round(out["solo_s"], 2),
              "trainer_alone_cpu_s": out["trainer_alone"],
              "phases": out["phases"],
              "all_ok": all(p.get("ok", True) and not p["errors"] for p in out["phases"]),
              "trainer": {"actions": out["trainer"].actions, "errors": out["trainer"].errors},
              "memory": {"unit": "MiB of the server and all its descendants, from /proc/PID/smaps_rollup: PSS (each "
                                 "shared page counted once, split among its sharers) and RSS (summed VmRSS: a shared "
                                 "page counted once per process)",
                         "target_mib": TARGET_MIB, "target_on": "PSS", "peak_pss_mb": max(pss), "peak_rss_mb": max(rss),
                         "peak_phase": at_peak, "start_pss_mb": pss[0], "start_rss_mb": rss[0], "end_pss_mb": pss[-1],
                         "end_rss_mb": rss[-1], "by_phase": out["memory_peaks"],
                         "series_s_pss_rss": series}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / f"{args.out}.md").write_text(markdown(report) + "\n")
    print(markdown(report))
    sys.exit(0 if report["all_ok"] else 1)


def git_describe(repo: Path) -> str:
    """The served checkout's commit, and "+ changes" if its files differ from it."""
    def git(*a):
        return subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + (" + changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def recommended_sampling() -> str:
    """The shipped default's recommended sampling in words (what Reverse denoising's Generate runs by default)."""
    from ddpm.sampling_spec import SamplingSpec

    config = json.loads((REPO / "checkpoints" / "default" / "config.json").read_text())
    return SamplingSpec.recommended(config).describe()


def markdown(r: dict) -> str:
    m = r["meta"]
    lines = [f"**A classroom at once.** Measured {m['date']} on {m['cpu_cores']} CPU cores ({m['machine']}); {m['browser']}. "
             f"Server: `streamlit run app.py`, {m['model']}, env {m['server_env']} (the hosted limits: two one-thread sampling workers and a heavy lane). One visitor "
             f"trains throughout ({m['training']['preset']} preset, up to {m['training']['steps']} steps, batch "
             f"{m['training']['batch']}); the others press Generate on Reverse denoising (9 images, "
             f"{m.get('sampling') or recommended_sampling()}: the model's recommended sampling), each with a seed "
             f"nobody else uses, all in the same second. Chromium at nice "
             f"{m.get('browser_nice', 0)}. Load average (1 min) at start "
             f"and end: {m['load_average_1min_start_end']}. {m['note']}", "",
             f"One visitor's solo time in this run (median of the solo phase): **{r['solo_s']:.2f} s**. "
             f"All visitors got their result without an error: **{'yes' if r['all_ok'] else 'NO'}**. "
             + memory_summary(r["memory"]), "",
             "| phase | median (s) | last (s) | N × solo (s) | median / (N × solo) | last / (N × solo) | server: queued median / max (s) | server: computing median (s) | training loss points before → after |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for p in r["phases"]:
        b, line = p["browser"], p["solo_line_s"]
        q, c = p["server"]["queued"], p["server"]["compute"]
        lines.append(f"| {p['name']} | {b.get('median_s', float('nan')):.2f} | {b.get('max_s', float('nan')):.2f} | "
                     f"{line:.2f} | {b.get('median_s', 0) / line:.2f} | {b.get('max_s', 0) / line:.2f} | "
                     f"{q.get('median_s', float('nan')):.2f} / {q.get('max_s', float('nan')):.2f} | "
                     f"{c.get('median_s', float('nan')):.2f} | {p['training_points'][0]} → {p['training_points'][1]} |")
    for n in sorted({p["n"] for p in r["phases"] if p["name"].startswith("crowd")}):
        runs = [p for p in r["phases"] if p["name"].startswith("crowd") and p["n"] == n and p["browser"]]
        if len(runs) > 1:
            medians = [p["browser"]["median_s"] / p["solo_line_s"] for p in runs]
            lasts = [p["browser"]["max_s"] / p["solo_line_s"] for p in runs]
            lines.append(f"\nThe crowd of {n}, {len(runs)} times in this run: median / (N × solo) "
                         + ", ".join(f"{v:.2f}" for v in medians) + f" (their median **{np.median(medians):.2f}**); "
                         "last / (N × solo) " + ", ".join(f"{v:.2f}" for v in lasts)
                         + f" (their median **{np.median(lasts):.2f}**).")
    lines.append("\nCPU seconds used during each crowd (opening the pages, pressing Generate, drawing the results), by "
                 "process: " + "; ".join(f"{p['name']}: " + ", ".join(f"{k} {v:.0f}" for k, v in p["cpu_s"].items())
                                        for p in r["phases"] if "cpu_s" in p) + ".")
    if any(p.get("timeline") for p in r["phases"]):
        names = ["click to submit", "queued", "computing", "done to drawn"]
        lines += ["", "Where each visitor's wait went, median (max) in seconds: the page's script from the click to the "
                  "request in line, in line, computing in a worker, and from the result to it drawn in the browser "
                  "(the script drawing it, Chromium rendering it):", "",
                  "| phase | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for p in r["phases"]:
            t = p.get("timeline") or {}
            if t and t["queued"].get("n"):
                lines.append(f"| {p['name']} | " + " | ".join(
                    f"{t[k]['median_s']:.2f} ({t[k]['max_s']:.2f})" for k in names) + " |")
    alone = r.get("trainer_alone_cpu_s")
    if alone:
        lines.append(f"\nThe training visitor's page alone, {alone['seconds']:.0f} s before anyone else came (its live view "
                     "redrawing the loss curve and samples), CPU seconds: " + ", ".join(
                         f"{k} {v:.1f}" for k, v in alone.items() if k != "seconds") + ".")
    waits = [p for p in r["phases"] if p.get("wait_cpu_s")]
    if waits:
        lines.append("\nCPU seconds used from the clicks to the last result drawn, by process: " + "; ".join(
            f"{p['name']} ({p['wait_cpu_s']['wall']:.0f} s of wall time, {(os.cpu_count() or 1) * p['wait_cpu_s']['wall']:.0f} core-seconds): "
            + ", ".join(f"{k} {v:.1f}" for k, v in p["wait_cpu_s"].items() if k != "wall") for p in waits) + ".")
    by_phase = r["memory"].get("by_phase", {})
    if by_phase:
        lines += ["", "| phase | server memory peak: PSS (MiB) | RSS (MiB) | at the PSS peak, by process: PSS / RSS (MiB) |",
                  "|---|---:|---:|---|"]
    for name, peak in by_phase.items():
        each = "; ".join(f"{p['role']} {p['pss_mb']:.0f} / {p['rss_mb']:.0f}" for p in peak["processes"])
        lines.append(f"| {name} | {peak['pss_mb']:.0f} | {peak['rss_peak_mb']:.0f} | {each} |")
    for p in r["phases"]:
        if p.get("latencies_s"):
            lines.append(f"\n{p['name']}, every visitor's wait from the browser (s): {', '.join(map(str, p['latencies_s']))}"
                         + (f"; errors: {'; '.join(p['errors'])}" if p["errors"] else ""))
    return "\n".join(lines)


def memory_summary(memory: dict) -> str:
    """One sentence: the server's memory peak, PSS (the target's measure) and RSS."""
    if "peak_pss_mb" not in memory:  # a run from before PSS was measured
        return f"Server memory peak {memory['peak_mb']:.0f} MiB ({memory['unit']})."
    verdict = "under" if memory["peak_pss_mb"] < memory["target_mib"] else "**over**"
    return (f"Server memory peak (the server and every process under it): **{memory['peak_pss_mb']:.0f} MiB PSS**, "
            f"{verdict} the {memory['target_mib'] / 1024:g} GiB target (PSS counts each page once, however many "
            f"processes share it: torch, imported once by the forkserver its children are forked from), reached in "
            f"phase \"{memory['peak_phase']}\"; summed RSS peak {memory['peak_rss_mb']:.0f} MiB (a shared page "
            f"counted once per process).")


if __name__ == "__main__":
    main()
