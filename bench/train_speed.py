"""Training and sampling throughput of every preset on this machine, beside diffusers' UNet2DModel.

One run measures, side by side: the machine's own dense-conv throughput (a large 3×3 convolution,
forward + backward, fp32 and bf16), then for each network its FLOPs per training image (counted by
torch's FlopCounterMode), training images/s in fp32 and bf16 autocast (batch 128, AdamW), the GFLOP/s
that reaches and its share of the conv throughput, and sampling throughput (network evaluations per
second on a batch of 256 in inference mode).

    python bench/train_speed.py [--quick]     # writes bench/results/train_speed.{json,md}

Stop other work first (a background training run takes its share of the cores).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ddpm.presets import PRESETS  # noqa: E402
from ddpm.device import cpu_has_fast_bf16  # noqa: E402
from ddpm.unet import build_unet, count_parameters  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def diffusers_unet() -> torch.nn.Module:
    """diffusers' UNet2DModel sized like the `small` preset (32/64/64 channels, 2 blocks, attention at 7×7)."""
    import diffusers.utils.import_utils as iu

    iu._torchvision_available = False
    from diffusers import UNet2DModel

    net = UNet2DModel(sample_size=28, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64), layers_per_block=2,
                      down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                      up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=64)

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, t):
            return self.net(x, t).sample

    return Wrapped()


def timed(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def conv_throughput(bf16: bool, iters: int) -> float:
    """GFLOP/s of a dense 3×3 conv (64 → 64 channels, 64 × 28 × 28 maps), forward + backward."""
    x = torch.randn(128, 64, 28, 28, requires_grad=True)
    w = torch.randn(64, 64, 3, 3, requires_grad=True)
    flops = 3 * 2 * 128 * 64 * 64 * 9 * 28 * 28  # forward, grad-input, grad-weight

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = F.conv2d(x, w, padding=1)
        y.float().sum().backward()

    return flops / timed(step, 2, iters) / 1e9


def train_flops_per_image(model: torch.nn.Module, size: int) -> float:
    x, t = torch.randn(4, 3, size, size), torch.randint(0, 200, (4,))
    with FlopCounterMode(display=False) as counter:
        model(x, t).square().mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 4


def train_rate(model: torch.nn.Module, bf16: bool, iters: int, batch: int = 128) -> float:
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    x, t = torch.randn(batch, 3, 28, 28), torch.randint(0, 200, (batch,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = (model(x, t).float() - x).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return batch / timed(step, 2, iters)


@torch.inference_mode()
def sample_rate(model: torch.nn.Module, bf16: bool, iters: int, batch: int = 256) -> float:
    """Image-steps per second (one network evaluation of one image) in inference mode."""
    model.eval()
    x, t = torch.randn(batch, 3, 28, 28), torch.full((batch,), 100)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(x, t)

    rate = batch / timed(step, 1, iters)
    model.train()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer iterations (noisier)")
    args = parser.parse_args()
    iters = 3 if args.quick else 8
    torch.manual_seed(0)
    conv = {"fp32": conv_throughput(False, iters), "bf16": conv_throughput(True, iters)}
    nets = {f"ddpm {name}": build_unet(p.model) for name, p in PRESETS.items()}
    nets["diffusers UNet2DModel (small-sized)"] = diffusers_unet()
    rows = []
    for name, net in nets.items():
        flops = train_flops_per_image(net, 28)
        row = {"model": name, "parameters": count_parameters(net), "train_gflop_per_image": flops / 1e9}
        for prec in ("fp32", "bf16"):
            rate = train_rate(net, prec == "bf16", iters)
            row[f"train_img_s_{prec}"] = rate
            row[f"train_gflops_{prec}"] = rate * flops / 1e9
            row[f"share_of_conv_{prec}"] = rate * flops / 1e9 / conv[prec]
            row[f"sample_img_steps_s_{prec}"] = sample_rate(net, prec == "bf16", max(2, iters // 2))
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    meta = {"machine": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__, "cpu_fast_bf16": cpu_has_fast_bf16(), "date": time.strftime("%Y-%m-%d"),
            "conv_gflops": conv, "batch_train": 128, "batch_sample": 256}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_speed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [f"Measured {meta['date']} on {meta['cpu_threads']} CPU threads, torch {meta['torch']} "
             f"(bf16-capable CPU: {meta['cpu_fast_bf16']}). Dense 3×3 conv fwd+bwd: "
             f"{conv['fp32']:.0f} GFLOP/s fp32, {conv['bf16']:.0f} GFLOP/s bf16.", "",
             "| model | params | train GFLOP/img | train img/s fp32 | train img/s bf16 | GFLOP/s bf16 | % of conv (bf16) | sampling img·steps/s bf16 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['parameters'] / 1e6:.2f} M | {r['train_gflop_per_image']:.3f} | {r['train_img_s_fp32']:.0f} | "
                     f"{r['train_img_s_bf16']:.0f} | {r['train_gflops_bf16']:.0f} | {100 * r['share_of_conv_bf16']:.0f}% | "
                     f"{r['sample_img_steps_s_bf16']:.0f} |")
    (RESULTS / "train_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
