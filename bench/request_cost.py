"""What the app's requests cost (``ddpm.serving.cost``) and how fast this CPU serves them: the numbers behind the
hosted budget (``ServerLimits.max_request_gflop``) and the deadline (``ddpm.serving.cost.CPU_GFLOPS``).

Part one counts, from the shipped checkpoints' configs, each request the app makes with its recommended
settings: Home's 16 samples, Reverse's 16-image trajectory at every sampler (DDPM, and DDIM / DPM-Solver++ at
2, 20 and all T steps, at the slider's highest guidance), Compare's grids and its evaluation at the hosted and
the developer DDPM_MAX_EVAL. Part two times the shipped default model sampling 16 images with DPM-Solver++ 20
(guidance 1) at 1 and 2 threads, fp32 and bf16, and an evaluation's nearest-neighbour search for 100 patches on
one thread, and divides the counted FLOPs by the time (about a minute in all);
the 1-minute load average before and after is printed beside it, since other processes share the cores.

    python bench/request_cost.py [--repeats 3] [--out DIR]   # writes DIR/request_cost.{json,md}
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ddpm.checkpoints import SHIPPED_DIR, load_local  # noqa: E402
from ddpm.data import SPLIT_SIZES  # noqa: E402
from ddpm.serving.cost import CPU_GFLOPS, SCORING_GFLOPS, deadline_s, reference_encoding_flops, request_cost  # noqa: E402
from ddpm.pipeline import generate  # noqa: E402
from ddpm.sampling_spec import MAX_GUIDANCE, SamplingSpec  # noqa: E402
from ddpm.serving.server_limits import HOSTED_LIMITS, ServerLimits  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def app_requests(name: str) -> list[dict]:
    """The requests the app makes of a shipped model, each with its cost."""
    ckpt = load_local(SHIPPED_DIR / name)
    T, rec, conditional = ckpt.schedule.num_timesteps, ckpt.sampling.fitted(ckpt.schedule.num_timesteps), ckpt.model_config.num_classes is not None
    top = MAX_GUIDANCE if conditional else 1.0
    asks = [("Home: 16 samples, recommended", "samples", rec, 16),
            ("Compare: 16 samples", "samples", rec, 16)]
    if conditional:
        asks.append(("Compare: 4 per tissue (36)", "samples", rec, 36))
    asks.append(("Reverse: 16, DDPM (all T)", "trajectory", SamplingSpec("ddpm", None, top), 16))
    for sampler in ("ddim", "dpmpp"):
        for steps in (2, 20, T):
            asks.append((f"Reverse: 16, {sampler} {steps} steps", "trajectory", SamplingSpec(sampler, steps, top), 16))
    for limits, where in ((HOSTED_LIMITS, "hosted"), (ServerLimits(), "developer")):
        asks.append((f"Compare: evaluation of {limits.max_eval_samples} ({where})", "evaluation", rec,
                     limits.max_eval_samples))
    rows = []
    for what, kind, spec, n in asks:
        cost = request_cost(ckpt.model_config, spec, n, T, kind)
        rows.append({"model": name, "request": what, "spec": spec.describe(conditional), "gflop": round(cost.gflop, 1),
                     "scoring_gflop": round(cost.scoring_flops / 1e9, 1), "hosted_deadline_s": deadline_s(cost, HOSTED_LIMITS)})
    return rows


def throughput(repeats: int) -> list[dict]:
    ckpt = load_local(SHIPPED_DIR / "default")
    spec = SamplingSpec("dpmpp", 20, 1.0)
    cost = request_cost(ckpt.model_config, spec, 16, ckpt.schedule.num_timesteps)
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for precision in ("fp32", "bf16"):
            generate(ckpt.model, ckpt.schedule, 2, SamplingSpec("dpmpp", 2, 1.0), precision=precision)  # warm-up
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                generate(ckpt.model, ckpt.schedule, 16, spec, seed=0, precision=precision)
                best = min(best, time.perf_counter() - t0)
            rows.append({"threads": threads, "precision": precision, "seconds": round(best, 2),
                         "gflop": round(cost.gflop, 1), "gflop_per_s": round(cost.gflop / best, 1)})
            print(rows[-1], flush=True)
    return rows


def scoring_throughput() -> dict:
    """An evaluation's nearest-neighbour search (ddpm.evaluation.memorization.pixel_neighbours) on one thread:
    100 patches against a random uint8 bank the size of PathMNIST's training split."""
    from ddpm.evaluation.memorization import pixel_neighbours

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    bank = torch.randint(0, 256, (SPLIT_SIZES["train"], 3, 28, 28), dtype=torch.uint8, generator=g)
    queries = torch.randint(0, 256, (100, 3, 28, 28), dtype=torch.uint8, generator=g)
    t0 = time.perf_counter()
    pixel_neighbours(queries, bank)
    seconds = time.perf_counter() - t0
    gflop = 100 * 8 * SPLIT_SIZES["train"] * 2 * 3 * 28 * 28 / 1e9
    return {"patches": 100, "seconds": round(seconds, 1), "gflop": round(gflop), "gflop_per_s": round(gflop / seconds, 1)}


def markdown(result: dict) -> str:
    lines = ["# What the app's requests cost", "", f"Written by `bench/request_cost.py` on {result['date']} "
             f"({result['machine']}, torch {result['torch']}). FLOPs are counted from each model's config "
             "(`ddpm.serving.cost`, equal to torch's FlopCounterMode on the network). Hosted budget "
             f"{result['hosted_budget_gflop']:,.0f} GFLOP per request, developer default {result['developer_budget_gflop']:,.0f}; "
             f"the deadline assumes {result['cpu_gflops_constant']} GFLOP/s for network passes and "
             f"{result['scoring_gflops_constant']} for scoring.", "",
             "| model | request | settings | GFLOP | of which scoring | hosted deadline (s) |", "|---|---|---|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['request']} | {r['spec']} | {r['gflop']:,.1f} | {r['scoring_gflop']:,.1f} | "
              f"{r['hosted_deadline_s']:.0f} |" for r in result["requests"]]
    lines += ["", f"An evaluation's first run in a process also encodes PathMNIST's splits once: "
              f"{result['reference_encoding_gflop']:,.0f} GFLOP, not counted per request.", "",
              "## Throughput: the default model, 16 images, DPM-Solver++ 20, guidance 1", "",
              f"Best of {result['repeats']} runs each. Load average (1 min) before: {result['load_before']}, after: "
              f"{result['load_after']}, on {os.cpu_count()} cores: other processes were running, so the cores were shared.", "",
              "| threads | precision | seconds | GFLOP | GFLOP/s |", "|---:|---|---:|---:|---:|"]
    lines += [f"| {r['threads']} | {r['precision']} | {r['seconds']} | {r['gflop']} | {r['gflop_per_s']} |"
              for r in result["throughput"]]
    sc = result["scoring"]
    lines += ["", f"Scoring (nearest-neighbour search, 1 thread): {sc['patches']} patches against {SPLIT_SIZES['train']:,} in "
              f"{sc['seconds']} s, {sc['gflop']} GFLOP, {sc['gflop_per_s']} GFLOP/s."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    requests = app_requests("default") + app_requests("seed")
    load_before = round(os.getloadavg()[0], 2)
    speed = throughput(args.repeats)
    scoring = scoring_throughput()
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "torch": torch.__version__, "hosted_budget_gflop": HOSTED_LIMITS.max_request_gflop,
              "developer_budget_gflop": ServerLimits().max_request_gflop, "cpu_gflops_constant": CPU_GFLOPS,
              "scoring_gflops_constant": SCORING_GFLOPS, "scoring": scoring,
              "requests": requests, "reference_encoding_gflop": round(reference_encoding_flops() / 1e9),
              "repeats": args.repeats, "load_before": load_before, "load_after": round(os.getloadavg()[0], 2), "throughput": speed}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "request_cost.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "request_cost.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
