"""How long 16 tissue-guided samples take on this CPU, and what guidance costs.

Classifier-free guidance needs a conditional and an unconditional prediction per step; ``ddpm`` gets both
from one forward pass over a batch of 2B (``samplers.guided_model``). This measures, with the shipped
default model, DPM-Solver++ at 20 steps, 16 samples: plain conditional (s = 1, batch 16), guided at the checkpoint's
recommended scale in one batched pass (batch 32), for reference guided with two separate passes per step, and, when
the checkpoint recommends a guidance band, its recommended setting (guided only inside the band), each in fp32 and
bf16 autocast. Median of ``--repeats`` runs after one warm-up.

    python bench/guided_speed.py [--threads 2] [--repeats 5]   # writes bench/results/guided_speed.{json,md}
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ddpm.checkpoints import load_checkpoint  # noqa: E402
from ddpm.device import use_bf16  # noqa: E402
from ddpm.pipeline import generate, resolve_classes  # noqa: E402
from ddpm.samplers import classifier_free_guidance, sample  # noqa: E402
from ddpm.sampling_spec import SamplingSpec  # noqa: E402

RESULTS = Path(__file__).parent / "results"
N, STEPS = 16, 20


def two_pass(model, schedule, labels: torch.Tensor, precision: str, seed: int, guidance: float) -> torch.Tensor:
    """The naive way: a conditional and an unconditional forward pass per step (for comparison only)."""
    null = torch.full_like(labels, model.config.num_classes)
    bf16 = use_bf16(precision, torch.device("cpu"))

    def fn(x, t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            cond, uncond = model(x, t, labels).float(), model(x, t, null).float()
        return classifier_free_guidance(cond, uncond, guidance)

    with torch.inference_mode():
        return sample(fn, schedule, (len(labels), 3, 28, 28), num_steps=STEPS, generator=torch.Generator().manual_seed(seed))


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint("default")
    model, schedule = ckpt.model, ckpt.schedule
    labels = resolve_classes(model.config.num_classes, N, None, 0)
    g = ckpt.sampling.guidance
    if g in (0.0, 1.0):
        g = 2.0  # any other scale costs the same: a guided pass is what is measured
    rows = []
    for precision in ("fp32", "bf16"):
        if precision == "bf16" and not use_bf16("auto", torch.device("cpu")):
            continue
        cases = {
            "conditional (s = 1), batch 16": lambda: generate(model, schedule, N, SamplingSpec(steps=STEPS, guidance=1.0),
                                                              classes=labels, precision=precision),
            f"guided (s = {g:g}), one pass on batch 32": lambda: generate(model, schedule, N, SamplingSpec(steps=STEPS, guidance=g),
                                                                          classes=labels, precision=precision),
            f"guided (s = {g:g}), two passes of 16 (reference)": lambda: two_pass(model, schedule, labels, precision, 0, g),
        }
        if ckpt.sampling.guidance_interval is not None:  # the recommended setting: guided only inside its band
            rec = ckpt.sampling
            cases[f"recommended ({rec.describe()})"] = lambda: generate(model, schedule, N, rec, classes=labels,
                                                                        precision=precision)
        for name, fn in cases.items():
            seconds = timed(fn, args.repeats)
            rows.append({"case": name, "precision": precision, "seconds": round(seconds, 3)})
            print(json.dumps(rows[-1]), flush=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__, "threads": args.threads,
            "machine": platform.machine(), "model": ckpt.source, "n": N, "steps": STEPS, "repeats": args.repeats}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "guided_speed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [f"Measured {meta['date']} on {args.threads} CPU threads ({meta['machine']}), torch {meta['torch']}: "
             f"{N} samples of the default model with DPM-Solver++ at {STEPS} steps, tissues drawn from the training prior; "
             f"median of {args.repeats} runs after a warm-up.", "",
             "| case | precision | seconds |", "|---|---|---:|"]
    lines += [f"| {r['case']} | {r['precision']} | {r['seconds']:.2f} |" for r in rows]
    (RESULTS / "guided_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
