"""Where the hosted server's memory goes: every serving process at work at once, without a browser.

    python bench/server_memory.py [--hold 12] [--note "..."]   # writes bench/results/server_memory.{json,md}

A stand-in for `streamlit run app.py` with DDPM_HOSTED=1 (``--serve``, started by this script as a child of
its own, so the bench's memory is not counted): it imports Streamlit and torch as the server does, holds what
the pages hold (the shipped default model, its payload for the workers, the training images), and starts the
app's serving pieces with the hosted limits (``SamplingService`` as ``pages._compute`` builds it, the training
``JobRegistry`` as ``pages._shared`` does). Then, one phase at a time, each held ``--hold`` seconds once under
way: the service idle; two visitors generating on Reverse without a pause (9 images, DPM-Solver++ 20, guidance
1.5: both interactive lanes busy); a third visitor's costliest request (a 300-patch evaluation, the heavy lane);
a training run (small preset, batch 32, at nice 19).

Every 0.5 s this script reads, for the server and each of its descendants, VmRSS and PSS (proportional set
size, /proc/PID/smaps_rollup). RSS counts a page shared by several processes once per process (torch's
libraries mapped by each, pages a forked child still shares with its parent); PSS divides each shared page
among its sharers, so the PSS of a process tree is the memory it really holds. Both totals are reported;
PSS is the honest one. The server's own growth with many browser sessions (Streamlit's session state, the
result caches) is not here: bench/crowd_check.py measures the whole. Nor is what the real server's children
paid for its main script, app.py, which multiprocessing imports again in each of them (a Streamlit import each,
until app.py ran only as Streamlit's ``__main__``): the stand-in's main script is this light one.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
PHASES = ("idle", "two visitors generating", "+ the costliest request (heavy lane)", "+ a training run")
MEMORY_FIELDS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Private_Clean", "Private_Dirty")


# ---- the stand-in server (--serve) -----------------------------------------------------------------
def serve(hold_s: float) -> None:
    """The hosted server's serving pieces at work, phase by phase; prints "phase <name>" as each starts."""
    sys.path.insert(0, str(REPO))
    import streamlit  # noqa: F401  (the real server has it loaded)
    import torch

    from ddpm.checkpoints import SHIPPED_DIR, load_local
    from ddpm.data import load_images
    from ddpm.pipeline import PRIOR
    from ddpm.serving.cost import check_request_cost, deadline_s
    from ddpm.serving.jobs import JobRegistry
    from ddpm.serving.job_state import Visitor
    from ddpm.serving.sampling_service import SamplingService
    from ddpm.serving.sampling_worker import ModelPayload, SampleRequest
    from ddpm.serving.server_limits import HOSTED_LIMITS
    from ddpm.serving.train_request import TrainRequest

    torch.set_num_threads(1)  # as pages/_shared.py
    limits = HOSTED_LIMITS
    checkpoint = load_local(SHIPPED_DIR / "default")
    payload = ModelPayload.from_checkpoint(checkpoint)
    images, _ = load_images("train")
    service = SamplingService(workers=limits.max_compute, threads=1, max_deadline_s=limits.request_deadline_s)
    registry = JobRegistry(limits)
    T = checkpoint.schedule.num_timesteps
    stop = threading.Event()

    def submit(visitor, kind: str, n: int, seed: int, classes):
        spec = checkpoint.sampling.fitted(T)
        cost = check_request_cost(checkpoint.model_config, spec, n, T, limits, kind=kind)
        request = SampleRequest(kind, payload.key, spec, seed, n, classes)
        return service.submit(visitor, payload, request, cost.flops, deadline_s(cost, limits), cost.expected_s)

    def generating(visitor: str, first_seed: int) -> None:
        seed = first_seed
        while not stop.is_set():
            service.wait(visitor, submit(visitor, "trajectory", 9, seed, 3))
            seed += 1

    def phase(name: str, under_way=lambda: True) -> None:
        print("phase", name, flush=True)
        end = time.monotonic() + 120
        while not under_way() and time.monotonic() < end:
            time.sleep(0.2)
        print("under way", name, flush=True)
        time.sleep(hold_s)

    phase(PHASES[0])
    visitors = [threading.Thread(target=generating, args=(f"visitor {i}", 1000 * i), daemon=True) for i in (1, 2)]
    for v in visitors:
        v.start()
    phase(PHASES[1], lambda: service.queue.running == 2)
    heavy = submit("visitor 3", "evaluation", limits.max_eval_samples, 1, PRIOR)  # Compare's default tissue choice
    phase(PHASES[2], lambda: heavy.status == "running" and heavy.progress > 0)
    trainer = Visitor.new()
    job = registry.start(TrainRequest("small", limits.max_steps, 32), trainer, images.images)
    phase(PHASES[3], lambda: (registry.get(job.id).step or 0) > 0)
    print("done", flush=True)
    stop.set()
    registry.shutdown(timeout=30)
    service.shutdown(timeout=10)


# ---- the measurement ---------------------------------------------------------------------------------
def tree(root: int) -> dict[int, int]:
    """``root`` and all its descendants, each with its parent's pid."""
    parents, todo = {root: 0}, [root]
    while todo:
        pid = todo.pop()
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                for child in (task / "children").read_text().split():
                    parents[int(child)] = pid
                    todo.append(int(child))
        except OSError:
            continue
    return parents


def memory_kb(pid: int) -> dict[str, int] | None:
    """RSS, PSS and their parts (kB) from /proc/PID/smaps_rollup; None if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines()[1:]:
        name, _, rest = line.partition(":")
        if name in MEMORY_FIELDS:
            values[name] = int(rest.split()[0])
    return values or None


def roles(root: int) -> dict[int, str]:
    """What each process of the server's tree is: the server, the forkserver, the resource tracker, or a child
    the server started (forked from the forkserver, or spawned), told apart by its priority."""
    found = {}
    for pid, parent in tree(root).items():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            nice = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
        except OSError:
            continue
        if pid == root:
            found[pid] = "server"
        elif "resource_tracker" in cmd:
            found[pid] = "resource tracker"
        elif "forkserver" in cmd and parent == root:
            found[pid] = "forkserver"
        else:
            found[pid] = ("training (nice 19)" if nice >= 19 else "heavy-lane worker (nice 10)" if nice >= 10
                          else "sampling worker")
    return found


def sample(root: int) -> dict:
    """One reading: every process of the tree (role, kB) and the tree's totals."""
    processes = []
    for pid, what in roles(root).items():
        kb = memory_kb(pid)
        if kb is not None:
            processes.append({"pid": pid, "role": what, **kb})
    return {"processes": processes, "rss_kb": sum(p["Rss"] for p in processes),
            "pss_kb": sum(p["Pss"] for p in processes)}


def measure(hold_s: float) -> dict:
    server = subprocess.Popen([sys.executable, __file__, "--serve", "--hold", str(hold_s)], stdout=subprocess.PIPE,
                              text=True, cwd=REPO, env={**os.environ, "DDPM_HOSTED": "1", "HF_HUB_OFFLINE": "1"})
    current = {"phase": "starting", "under_way": False}

    def follow() -> None:
        for line in server.stdout:
            line = line.strip()
            if line.startswith("phase "):
                current.update(phase=line.removeprefix("phase "), under_way=False)
            elif line.startswith("under way "):
                current["under_way"] = True
            elif line == "done":
                current["phase"] = "done"

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    readings: dict[str, list[dict]] = {name: [] for name in PHASES}
    started = time.monotonic()
    while server.poll() is None:
        phase, under_way = current["phase"], current["under_way"]
        if phase in readings and under_way:
            readings[phase].append({"t_s": round(time.monotonic() - started, 1), **sample(server.pid)})
        time.sleep(0.5)
    reader.join(5)
    if server.returncode != 0:
        sys.exit(f"the stand-in server exited with code {server.returncode}")
    return {"phases": {name: summary(rows) for name, rows in readings.items()}}


def summary(rows: list[dict]) -> dict:
    """A phase's peak tree PSS and RSS, and each process at the reading of the PSS peak and at its own peak."""
    if not rows:
        return {}
    at_peak = max(rows, key=lambda r: r["pss_kb"])
    own_peak: dict[str, dict] = {}
    for r in rows:
        for p in r["processes"]:
            key = f"{p['role']} (pid {p['pid']})"
            if key not in own_peak or p["Pss"] > own_peak[key]["Pss"]:
                own_peak[key] = {k: p[k] for k in MEMORY_FIELDS if k in p}
    mib = lambda kb: round(kb / 1024, 1)  # noqa: E731
    return {"readings": len(rows),
            "peak_pss_mib": mib(at_peak["pss_kb"]), "peak_rss_mib": mib(max(r["rss_kb"] for r in rows)),
            "at_pss_peak": [{"role": p["role"], "pid": p["pid"], **{k: mib(p[k]) for k in MEMORY_FIELDS if k in p}}
                            for p in at_peak["processes"]],
            "each_process_peak": {k: {f: mib(v) for f, v in kb.items()} for k, kb in own_peak.items()}}


def markdown(r: dict) -> str:
    m = r["meta"]
    lines = [f"**Where the server's memory goes.** Measured {m['date']} on {m['cpu_cores']} CPU cores ({m['machine']}), "
             f"{m['design']}. A stand-in for the hosted server (`python bench/server_memory.py --serve`: Streamlit and "
             f"torch imported, the shipped default model and the training images held, the app's SamplingService and "
             f"JobRegistry with the hosted limits), its phases one after another, each held {m['hold_s']:g} s once under "
             f"way; every 0.5 s, RSS and PSS (/proc/PID/smaps_rollup) of the server and each descendant. PSS counts "
             f"a page shared by several processes once in all (RSS once per process): the tree's PSS is the memory it "
             f"holds. No browser sessions: the server's growth with them is in crowd_check. {m['note']}", "",
             "| phase | tree PSS peak (MiB) | tree RSS peak (MiB) | processes at the PSS peak: RSS / PSS (MiB) |",
             "|---|---:|---:|---|"]
    for name, s in r["phases"].items():
        if not s:
            lines.append(f"| {name} | – | – | not reached |")
            continue
        each = "; ".join(f"{p['role']} {p['Rss']:.0f} / {p['Pss']:.0f}" for p in s["at_pss_peak"])
        lines.append(f"| {name} | {s['peak_pss_mib']:.0f} | {s['peak_rss_mib']:.0f} | {each} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hold", type=float, default=12.0, help="seconds each phase is measured once under way")
    parser.add_argument("--serve", action="store_true", help="be the stand-in server (this script starts it)")
    parser.add_argument("--design", default="", help="what the serving processes are, in words, for the report")
    parser.add_argument("--out", default="server_memory", help="name of the result files in bench/results")
    parser.add_argument("--note", default="", help="what else ran on the machine")
    args = parser.parse_args()
    if args.serve:
        serve(args.hold)
        return
    out = measure(args.hold)
    report = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.machine(),
                       "cpu_cores": os.cpu_count(), "hold_s": args.hold, "design": args.design, "note": args.note,
                       "unit": "MiB; RSS = VmRSS, PSS = proportional set size, both from /proc/PID/smaps_rollup"},
              **out}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / f"{args.out}.md").write_text(markdown(report) + "\n")
    print(markdown(report))


if __name__ == "__main__":
    main()
