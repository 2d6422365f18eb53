"""Which inpainting method ``ddpm.editing.inpaint`` uses: plain replacement or RePaint's resampling, measured.

Real patches of the bundled subset (``--per-class`` of each tissue) get each preset mask (``editing.MASKS``); the
shipped default model fills the hole, asked for the patch's own tissue at the checkpoint's recommended guidance, with
DPM-Solver++ over 20 trailing steps, by each method of ``METHODS``. Scores on the filled pixels, against the hidden
truth (model units, data in [-1, 1]):

* ``mse``: mean squared error per pixel. A blurry fill scores well here (the mean is the MSE-optimal guess), so it is
  reported beside the kept pixels' mean colour as a trivial fill;
* ``mse_lowpass``: the same after a 5 × 5 box blur of both: does the fill carry on the colour and layout around it;
* ``seam``: mean |difference| between neighbouring pixels across the mask's edge, over the truth's own (1 = as
  smooth across the edge as real tissue; above 1, a visible seam).

    python bench/inpaint_check.py [--per-class 3] [--threads 1]   # writes bench/results/inpaint_check.{json,md}
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ddpm.checkpoints import load_checkpoint  # noqa: E402
from ddpm.data import load_subset, to_model_range  # noqa: E402
from ddpm.editing import MASKS, guided_model_for, inpaint_loop, preset_mask  # noqa: E402
from ddpm.samplers import get_sampler  # noqa: E402

RESULTS = Path(__file__).parent / "results"
STEPS = 20
#: name -> (sampler, its eta, steps, jumps, fresh noise for the kept pixels at every call)
METHODS = {
    "replacement, DPM-Solver++ (one ε)": ("dpmpp", 0.0, STEPS, 0, False),
    "replacement, DPM-Solver++ (fresh ε)": ("dpmpp", 0.0, STEPS, 0, True),
    "RePaint, DPM-Solver++, 1 jump": ("dpmpp", 0.0, STEPS, 1, False),
    "replacement, DDIM η=1": ("ddim", 1.0, STEPS, 0, True),
    "replacement, DDIM η=1, 40 steps": ("ddim", 1.0, 2 * STEPS, 0, True),
    "RePaint, DDIM η=1, 1 jump": ("ddim", 1.0, STEPS, 1, True),
    "RePaint, DDIM η=1, 2 jumps": ("ddim", 1.0, STEPS, 2, True),
    "RePaint, DDIM η=1, 3 jumps": ("ddim", 1.0, STEPS, 3, True),
}


def scores(filled: torch.Tensor, truth: torch.Tensor, fill: torch.Tensor) -> dict[str, float]:
    """mse, mse_lowpass and seam (see the module's docstring) of ``filled`` against ``truth``, both (B, 3, H, W)."""
    where = fill.expand_as(truth)
    mse = float(((filled - truth) ** 2)[where].mean())
    blur = lambda x: F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)  # noqa: E731
    mse_low = float(((blur(filled) - blur(truth)) ** 2)[where].mean())
    seams = []
    for x in (filled, truth):
        across = []
        for dim in (2, 3):
            a, b = fill.narrow(dim, 0, fill.shape[dim] - 1), fill.narrow(dim, 1, fill.shape[dim] - 1)
            edge = (a != b).expand(-1, 3, -1, -1)
            diff = (x.narrow(dim, 0, x.shape[dim] - 1) - x.narrow(dim, 1, x.shape[dim] - 1)).abs()
            across.append(diff[edge])
        seams.append(float(torch.cat(across).mean()))
    return {"mse": mse, "mse_lowpass": mse_low, "seam": seams[0] / seams[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint("default")
    model, schedule, guidance = ckpt.model.eval(), ckpt.schedule, ckpt.sampling.guidance
    real = load_subset()
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.cat([torch.nonzero(real.labels == c).flatten()[torch.randperm(int((real.labels == c).sum()), generator=g)
                                                                [:args.per_class]] for c in range(9)])
    truth = to_model_range(real.images[idx])  # (P, 3, 28, 28)
    labels = real.labels[idx]
    rows = []
    for name in MASKS:
        mask = preset_mask(name, 28, seed=args.seed)
        fill = mask.expand(len(idx), 1, 28, 28)
        kept_mean = (truth * ~fill).sum((2, 3), keepdim=True) / (~fill).sum((2, 3), keepdim=True)
        rows.append({"mask": name, "method": "kept pixels' mean colour",
                     **scores(torch.where(fill, kept_mean, truth), truth, fill), "calls": 0, "seconds": 0.0})
        for method, (sampler, eta, steps, jumps, fresh) in METHODS.items():
            algo = get_sampler(sampler, eta=eta)
            fn = guided_model_for(model, labels, guidance)
            calls = []
            started = time.perf_counter()
            with torch.inference_mode():
                out = inpaint_loop(fn, schedule, truth, fill, algo, algo.timesteps(schedule.num_timesteps, steps),
                                   torch.Generator().manual_seed(args.seed), jumps, fresh,
                                   callback=lambda done, total: calls.append(done))
            seconds = time.perf_counter() - started
            assert torch.equal(out[~fill.expand_as(out)], truth[~fill.expand_as(truth)])
            rows.append({"mask": name, "method": method, **scores(out.clamp(-1, 1), truth, fill),
                         "calls": len(calls), "seconds": round(seconds, 1)})
            print(json.dumps(rows[-1]), flush=True)
    methods = ["kept pixels' mean colour", *METHODS]
    mean = {m: {k: sum(r[k] for r in rows if r["method"] == m) / len(MASKS) for k in ("mse", "mse_lowpass", "seam")}
            for m in methods}
    calls = {m: next(r["calls"] for r in rows if r["method"] == m) for m in methods}
    result = {"when": datetime.now().isoformat(timespec="minutes"), "machine": f"{platform.machine()}, "
              f"{torch.get_num_threads()} thread(s)", "model": "checkpoints/default", "guidance": guidance,
              "patches": len(idx), "per_class": args.per_class, "seed": args.seed, "rows": rows, "mean": mean,
              "calls": calls}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "inpaint_check.json").write_text(json.dumps(result, indent=1))
    lines = [f"**Inpainting: replacement against RePaint.** Measured {result['when']} ({result['machine']}); the shipped "
             f"default model, {len(idx)} real patches of the bundled subset ({args.per_class} per tissue), each of the "
             f"{len(MASKS)} preset masks, asked for the patch's own tissue at guidance {guidance:g}. Mean over the masks "
             "(per mask in inpaint_check.json); errors on the filled pixels against the hidden truth, data in [-1, 1].",
             "", "| method | network calls | MSE | MSE after a 5×5 blur | seam (1 = as real) |", "|---|---|---|---|---|"]
    for m in methods:
        lines.append(f"| {m} | {calls[m]} | {mean[m]['mse']:.4f} | {mean[m]['mse_lowpass']:.4f} | {mean[m]['seam']:.2f} |")
    (RESULTS / "inpaint_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
