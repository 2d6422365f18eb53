"""Training throughput of each preset on one CUDA GPU, and the share of the GPU's dense bf16 peak it reaches.

Uses the real trainer (bf16 autocast, channels-last, the split held on the GPU as uint8, EMA with
foreach ops, loss read back every 25 steps) on synthetic uint8 data of PathMNIST's shape.  The peak
is both the vendor figure for the device (dense, no sparsity) and a measured large bf16 matmul.

    python bench/gpu_speed.py [--compile] [--steps 200]   # writes bench/results/gpu_speed.{json,md}

Without a GPU it says so and writes nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
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


def vendor_peak(name: str) -> float | None:
    for key, value in VENDOR_PEAK_BF16.items():
        if all(part in name for part in key.split()):
            return value
    if "H100" in name:  # an H100 whose form factor the name does not say: assume SXM
        return VENDOR_PEAK_BF16["H100 SXM"]
    return None


def matmul_tflops(n: int = 8192, iters: int = 50) -> float:
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
    with FlopCounterMode(display=False) as counter:
        model(x, t).square().mean().backward()
    return counter.get_total_flops() / 2


def measure(preset_name: str, steps: int, compile_model: bool, batch: int | None) -> dict:
    from dataclasses import replace

    preset = PRESETS[preset_name]
    train = replace(preset.train, precision="bf16", compile=compile_model, batch_size=batch or max(preset.train.batch_size, 256),
                    checkpoint_every_s=1e9, warmup_steps=0)
    images = torch.randint(0, 256, (50_000, 3, 28, 28), dtype=torch.uint8)
    trainer = Trainer(preset.model, preset.schedule, train, images, device="cuda")
    trainer.train(max_steps=20)  # warm-up (and compilation)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    trainer.train(max_steps=20 + steps)
    torch.cuda.synchronize()
    rate = steps * train.batch_size / (time.perf_counter() - t0)
    flops = train_flops_per_image(preset.model)
    return {"preset": preset_name, "batch": train.batch_size, "compile": compile_model, "img_s": rate,
            "train_gflop_per_image": flops / 1e9, "achieved_tflops": rate * flops / 1e12}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--batch", type=int)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("No CUDA GPU is available on this machine: nothing measured, nothing written. "
              "Run this on a GPU machine; CPU figures are in bench/results/train_speed.md.")
        return
    name = torch.cuda.get_device_name()
    peak, measured = vendor_peak(name), matmul_tflops()
    rows = []
    for preset in PRESETS:
        row = measure(preset, args.steps, args.compile, args.batch)
        row["share_of_vendor_peak"] = row["achieved_tflops"] / peak if peak else None
        row["share_of_matmul"] = row["achieved_tflops"] / measured
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"device": name, "torch": torch.__version__, "vendor_peak_bf16_tflops": peak, "matmul_bf16_tflops": measured,
            "date": time.strftime("%Y-%m-%d")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "_compiled" if args.compile else ""
    (RESULTS / f"gpu_speed{suffix}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [f"{name}, torch {meta['torch']}, {meta['date']}: dense bf16 peak {peak} TFLOP/s (data sheet), "
             f"{measured:.0f} TFLOP/s measured on an 8192² bf16 matmul. torch.compile: {args.compile}.", "",
             "| preset | batch | GFLOP/img (train) | img/s | TFLOP/s | % of peak | % of matmul |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        share = f"{100 * r['share_of_vendor_peak']:.1f}%" if r["share_of_vendor_peak"] else "n/a"
        lines.append(f"| {r['preset']} | {r['batch']} | {r['train_gflop_per_image']:.2f} | {r['img_s']:.0f} | "
                     f"{r['achieved_tflops']:.1f} | {share} | {100 * r['share_of_matmul']:.1f}% |")
    (RESULTS / f"gpu_speed{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
