"""Training throughput on one CUDA GPU: the numbers the ``gpu`` recipe is chosen from.

Uses the real trainer (bf16 autocast, channels-last, the split held on the GPU as uint8, random draws
on the device, EMA with foreach ops, loss read back every 25 steps) on synthetic uint8 data and labels
of PathMNIST's shape. Rows: the ``gpu`` preset's network at several batch sizes, eager and under
torch.compile (with its compile time), and the other presets at one batch for reference. The share of
peak is against both the data sheet's dense bf16 figure and a measured large bf16 matmul.

    python bench/gpu_speed.py [--steps 60] [--out DIR]   # writes DIR/gpu_speed.{json,md} (default bench/results)

It ends with the recipe: of the rows that train within 10% of the most images in 8 minutes (compile time
counted), the smallest batch, and the steps that fit. Without a GPU it says so and writes nothing
(``--from-json`` re-renders an earlier result).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ddpm.presets import PRESETS  # noqa: E402
from ddpm.training import Trainer  # noqa: E402
from ddpm.unet import build_unet  # noqa: E402

RESULTS = Path(__file__).parent / "results"
#: Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, without sparsity.
VENDOR_PEAK_BF16 = {"H100 SXM": 989.4, "H100 PCIe": 756.5, "H100 NVL": 835.5, "H200": 989.4, "A100": 312.0, "L4": 121.0}
TRAIN_SECONDS = 480.0  # the training budget the recipe is sized for (one 10-minute device call, with margin)


def vendor_peak(name: str) -> float | None:
    for key, value in VENDOR_PEAK_BF16.items():
        if all(part in name for part in key.split()):
            return value
    if "H100" in name:  # an H100 whose form factor the name does not say: assume SXM
        return VENDOR_PEAK_BF16["H100 SXM"]
    return None


def matmul_tflops(n: int = 8192, iters: int = 30) -> float:
    a, b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16), torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12


def train_flops_per_image(model_config) -> float:
    model = build_unet(model_config)
    x, t = torch.randn(2, 3, model_config.image_size, model_config.image_size), torch.randint(0, 200, (2,))
    labels = torch.zeros(2, dtype=torch.long) if model_config.num_classes else None
    with FlopCounterMode(display=False) as counter:
        (model(x, t) if labels is None else model(x, t, labels)).square().mean().backward()
    return counter.get_total_flops() / 2


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(preset_name: str, batch: int, compile_model: bool, steps: int, warmup: int = 15, device: str = "cuda") -> dict:
    preset = PRESETS[preset_name]
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if compile_model:
        torch._dynamo.reset()
    train = replace(preset.train, precision="bf16", compile=compile_model, batch_size=batch, checkpoint_every_s=1e9,
                    warmup_steps=0, lr_decay="none")
    n = max(20_000, 4 * batch)
    images = torch.randint(0, 256, (n, 3, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 9, (n,)) if preset.model.num_classes else None
    trainer = Trainer(preset.model, preset.schedule, train, images, device=device, labels=labels)
    t0 = time.perf_counter()
    trainer.train(max_steps=warmup)  # warm-up (and compilation)
    _sync(device)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainer.train(max_steps=warmup + steps)
    _sync(device)
    per_step = (time.perf_counter() - t0) / steps
    mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    return {"preset": preset_name, "batch": batch, "compile": compile_model, "img_s": batch / per_step,
            "warmup_s": first - warmup * per_step, "peak_mem_gib": mem}


def choose(rows: list[dict], train_seconds: float = TRAIN_SECONDS) -> dict:
    """The recipe: among the ``gpu`` rows (eager or compiled), the images each trains in ``train_seconds``
    (a compiled row loses its compile time); of those within 10% of the most, the smallest batch (more, smaller
    steps at about the same speed)."""
    candidates = [r for r in rows if r["preset"] == "gpu"]
    images = {id(r): r["img_s"] * max(train_seconds - (r["warmup_s"] if r["compile"] else 0.0), 0.0) for r in candidates}
    most = max(images.values())
    pick = min((r for r in candidates if images[id(r)] >= 0.9 * most), key=lambda r: (r["batch"], -images[id(r)]))
    n = images[id(pick)]
    return {"batch": pick["batch"], "compile": pick["compile"], "images": n, "steps": int(n // pick["batch"]),
            "epochs": n / 89_996, "train_seconds": train_seconds}


def write_results(meta: dict, rows: list[dict], out: Path) -> None:
    """gpu_speed.json (meta, rows, recipe) and gpu_speed.md."""
    recipe = choose(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_speed.json").write_text(json.dumps({"meta": meta, "rows": rows, "recipe": recipe}, indent=1) + "\n")
    peak, measured = meta["vendor_peak_bf16_tflops"], meta["matmul_bf16_tflops"]
    lines = [f"Measured {meta['date']} on one {meta['device']}, torch {meta['torch']}: dense bf16 peak {peak} TFLOP/s (data sheet), "
             f"{measured:.0f} TFLOP/s measured on an 8192² bf16 matmul. bf16 autocast, channels-last, {meta['timed_steps']} timed "
             "steps per row after 15 warm-up steps (warm-up s: the first 15 steps beyond their steady-state time, i.e. compilation).",
             "", "| preset | batch | torch.compile | GFLOP/img (train) | img/s | TFLOP/s | % of peak | % of matmul | warm-up s | GPU GiB |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        share = f"{100 * r['share_of_vendor_peak']:.1f}%" if r["share_of_vendor_peak"] else "n/a"
        lines.append(f"| {r['preset']} | {r['batch']} | {'yes' if r['compile'] else 'no'} | {r['train_gflop_per_image']:.2f} | "
                     f"{r['img_s']:.0f} | {r['achieved_tflops']:.1f} | {share} | {100 * r['share_of_matmul']:.1f}% | "
                     f"{r['warmup_s']:.1f} | {r['peak_mem_gib']:.1f} |")
    lines += ["", f"Recipe for {recipe['train_seconds']:.0f} s of training (the smallest batch within 10% of the most images "
              f"trained, compile time counted): batch {recipe['batch']}, torch.compile {'on' if recipe['compile'] else 'off'}, "
              f"{recipe['steps']:,} steps ≈ {recipe['epochs']:.0f} epochs of the training split."]
    (out / "gpu_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="timed steps per row (after 15 warm-up steps)")
    parser.add_argument("--batches", default="512,1024,2048", help="batch sizes for the gpu preset")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    parser.add_argument("--out", default=str(RESULTS), help="folder for gpu_speed.json and gpu_speed.md")
    parser.add_argument("--rehearse", action="store_true", help="run every code path on the CPU with tiny sizes "
                        "(to check the script before spending GPU minutes); writes to --out")
    parser.add_argument("--from-json", help="rewrite gpu_speed.md (and the recipe) from an earlier gpu_speed.json; no GPU needed")
    args = parser.parse_args()
    if args.from_json:
        earlier = json.loads(Path(args.from_json).read_text())
        write_results(earlier["meta"], earlier["rows"], Path(args.out))
        return
    device = "cpu" if args.rehearse else "cuda"
    if not args.rehearse and not torch.cuda.is_available():
        print("No CUDA GPU is available on this machine: nothing measured, nothing written. "
              "Run this on a GPU machine; CPU figures are in bench/results/train_speed.md.")
        return
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (rehearsal)"
    peak, measured = (vendor_peak(name), matmul_tflops()) if device == "cuda" else (None, 1.0)
    batches = [int(b) for b in args.batches.split(",")]
    plan = [("gpu", b, False) for b in batches] + [("seed", 1024, False), ("large", 1024, False)]
    if not args.no_compile:
        plan.insert(len(batches), ("gpu", 1024 if 1024 in batches else batches[0], True))
    flops = {p: train_flops_per_image(PRESETS[p].model) for p in {p for p, _, _ in plan}}
    rows = []
    for preset, batch, comp in plan:
        try:
            row = measure(preset, batch, comp, args.steps, warmup=2 if args.rehearse else 15, device=device)
        except Exception as err:  # a failed compile must not cost the other rows
            print(f"{preset} batch {batch} compile {comp}: failed: {err!r}", flush=True)
            continue
        row["train_gflop_per_image"] = flops[preset] / 1e9
        row["achieved_tflops"] = row["img_s"] * flops[preset] / 1e12
        row["share_of_vendor_peak"] = row["achieved_tflops"] / peak if peak else None
        row["share_of_matmul"] = row["achieved_tflops"] / measured
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"device": name, "torch": torch.__version__, "vendor_peak_bf16_tflops": peak, "matmul_bf16_tflops": measured,
            "date": time.strftime("%Y-%m-%d"), "timed_steps": args.steps}
    write_results(meta, rows, Path(args.out))


if __name__ == "__main__":
    main()
