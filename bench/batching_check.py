"""Does batching visitors' requests through the network pay on this machine, and would it keep their images?

    python bench/batching_check.py [--visitors 10] [--n 9] [--threads 2] [--repeats 3]
                                   # writes bench/results/batching_check.{json,md}

Ten visitors on Reverse denoising each ask for 9 images of the default model (its recommended DPM-Solver++ 20,
guidance 1.5: a network batch of 18 per step). Served one after another, the first waits one run and the median
visitor about five; served as one batch of 90 images (network batch 180), everyone waits for the whole batch.
Batching pays only if the batch is so much faster that even the median visitor gains. The script times both
(median of ``--repeats``, after a warm-up) and checks the other condition: that a visitor's rows of a batched
network call are bit-identical to the same rows run alone (else their images would differ from a solo run
with the same seed). Stop other work first.
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
from ddpm.checkpoints import load_checkpoint  # noqa: E402
from ddpm.device import use_bf16  # noqa: E402
from ddpm.pipeline import generate  # noqa: E402
from guided_speed import timed  # noqa: E402  (the median of repeated runs after a warm-up, as the speed benches time)

RESULTS = Path(__file__).parent / "results"


def rows_identical(model, batch: int, total: int, precision: str) -> bool:
    """Whether the first ``batch`` rows of one network call on ``total`` rows equal a call on those rows alone."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(total, 3, 28, 28, generator=g)
    t = torch.randint(0, 200, (total,), generator=g)
    labels = torch.randint(0, 9, (total,), generator=g)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        together = model(x, t, labels).float()[:batch]
        alone = model(x[:batch], t[:batch], labels[:batch]).float()
    return bool(torch.equal(together, alone))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--visitors", type=int, default=10)
    parser.add_argument("--n", type=int, default=9, help="images per visitor")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint("default")
    model, schedule, spec = ckpt.model.eval(), ckpt.schedule, ckpt.sampling
    precision = "bf16" if use_bf16("auto", torch.device("cpu")) else "fp32"
    load_before = os.getloadavg()[0]
    one = timed(lambda: generate(model, schedule, args.n, spec, seed=1, classes=4, precision=precision), args.repeats)
    total = args.visitors * args.n
    batched = timed(lambda: generate(model, schedule, total, spec, seed=1, classes=4, batch_size=total,
                                     precision=precision), args.repeats)
    sequential = args.visitors * one
    median_seq = (args.visitors + 1) / 2 * one  # the median visitor's wait served one after another
    identical = {p: rows_identical(model, 2 * args.n, 2 * total, p) for p in ("fp32", "bf16")}
    result = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.machine(), "cores": os.cpu_count(),
                       "threads": args.threads, "precision": precision, "torch": torch.__version__,
                       "load_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                       "spec": spec.describe(), "note": args.note},
              "one_request_s": round(one, 3), "sequential_s": round(sequential, 3), "batched_s": round(batched, 3),
              "batch_speedup": round(sequential / batched, 3), "median_visitor_sequential_s": round(median_seq, 3),
              "median_visitor_batched_s": round(batched, 3), "rows_bit_identical": identical,
              "pays": bool(batched < median_seq and all(identical.values()))}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "batching_check.json").write_text(json.dumps(result, indent=1) + "\n")
    m = result["meta"]
    md = [f"Measured {m['date']} on {m['cores']} cores ({m['machine']}), {m['threads']} torch threads, {m['precision']}, "
          f"torch {m['torch']}, load (1 min) before/after {m['load_1min_before_after']}; the default model, {m['spec']}, "
          f"{args.visitors} visitors × {args.n} images. {m['note']}", "",
          "| serving | the median visitor waits (s) | the last visitor waits (s) |", "|---|---:|---:|",
          f"| one after another (first come, first served) | {median_seq:.2f} | {sequential:.2f} |",
          f"| one batch of {total} images | {batched:.2f} | {batched:.2f} |", "",
          f"The batch is {result['batch_speedup']:.2f}× faster than the requests one after another; a visitor's rows of a "
          f"batched network call are bit-identical to the same rows alone: fp32 {identical['fp32']}, bf16 "
          f"{identical['bf16']}. Batching across visitors pays here: **{'yes' if result['pays'] else 'no'}**."]
    (RESULTS / "batching_check.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
