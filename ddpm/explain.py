"""What the app's explanations need from the library: named schedules, the forward process at a
slider's t, real patches by tissue class, and the paper-versus-ours table.

The app's time slider runs t = 0 … T in the paper's numbering: t = 0 is the clean image x_0 and
t ≥ 1 is the schedule's index t - 1 (see ``schedules``).
"""
from __future__ import annotations

import math

import torch

from .data import CLASS_NAMES, ImageSet, to_model_range
from .presets import PRESETS, SCHEDULES
from .schedules import NoiseSchedule, ScheduleConfig, q_sample
from .unet import build_unet, count_parameters

def schedule_name(config: ScheduleConfig) -> str:
    """The display name of a schedule config, or a description when it is none of SCHEDULES."""
    for name, cfg in SCHEDULES.items():
        if cfg == config:
            return name
    zt = ", zero terminal SNR" if config.zero_terminal_snr else ""
    return f"{config.kind}{zt} (T = {config.num_timesteps}, {config.prediction_type})"


def check_time(schedule: NoiseSchedule, t: int) -> int:
    """t itself if 0 ≤ t ≤ T, else a ValueError naming the allowed range."""
    if not 0 <= int(t) <= schedule.num_timesteps:
        raise ValueError(f"t must be between 0 and T = {schedule.num_timesteps}, got {t}")
    return int(t)


def signal_and_noise(schedule: NoiseSchedule, t: int) -> tuple[float, float, float]:
    """(√ᾱ_t, √(1-ᾱ_t), SNR(t)) at paper time t; t = 0 gives (1, 0, inf)."""
    t = check_time(schedule, t)
    if t == 0:
        return 1.0, 0.0, math.inf
    i = t - 1
    return (float(schedule.sqrt_alphas_cumprod[i]), float(schedule.sqrt_one_minus_alphas_cumprod[i]),
            float(schedule.snr[i]))


def diffuse(schedule: NoiseSchedule, images: torch.Tensor, t: int, seed: int = 0) -> torch.Tensor:
    """x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε for uint8 images (B, 3, H, W); float (B, 3, H, W) in model units.

    The noise ε depends on ``seed`` only, so moving t keeps the same ε and the picture changes smoothly.
    """
    t = check_time(schedule, t)
    x0 = to_model_range(images)
    if t == 0:
        return x0
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    return q_sample(schedule, x0, torch.full((x0.shape[0],), t - 1, dtype=torch.long), noise)


def pick_patches(images: ImageSet, tissue: str | None, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random patches (uint8 (n, 3, H, W)) and their labels, of one tissue class or of any (None)."""
    if tissue is not None and tissue not in CLASS_NAMES:
        raise ValueError(f"tissue must be one of {CLASS_NAMES} or None, got {tissue!r}")
    pool = torch.arange(len(images)) if tissue is None else torch.nonzero(images.labels == CLASS_NAMES.index(tissue)).flatten()
    if len(pool) == 0:
        raise ValueError(f"no {tissue} patches in {images.source}")
    if n < 1:
        raise ValueError(f"number of patches must be at least 1, got {n}")
    g = torch.Generator().manual_seed(seed)
    idx = pool[torch.randperm(len(pool), generator=g)[:n]]
    return images.images[idx], images.labels[idx]


def patches_like(images: ImageSet, labels: list[int] | torch.Tensor, seed: int = 0) -> torch.Tensor:
    """One random real patch of each given class (uint8 (len(labels), 3, H, W)), for side-by-side views."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for label in [int(x) for x in labels]:
        pool = torch.nonzero(images.labels == label).flatten()
        pool = pool if len(pool) else torch.arange(len(images))
        out.append(images.images[pool[torch.randint(len(pool), (1,), generator=g)]])
    return torch.cat(out)


def preset_comparison() -> list[dict[str, str]]:
    """Rows comparing the paper's setup (preset ``seed``) with the app's default (preset ``small``)."""
    seed, ours = PRESETS["seed"], PRESETS["small"]

    def describe(p) -> dict[str, str]:
        s, tr = p.schedule, p.train
        return {
            "network": f"{p.model.architecture} U-Net, {count_parameters(build_unet(p.model)) / 1e6:.2f} M parameters",
            "noise schedule": f"{s.kind}, T = {s.num_timesteps}" + (", zero terminal SNR" if s.zero_terminal_snr else ""),
            "network predicts": "noise ε" if s.prediction_type == "epsilon" else "velocity v",
            "loss weighting": "min-SNR-γ" if tr.loss_weighting == "min_snr" else "uniform",
            "optimizer": f"{tr.optimizer} at {tr.lr:g}" + (f", {tr.warmup_steps} warm-up steps" if tr.warmup_steps else ""),
            "batch × steps": f"{tr.batch_size} × {tr.max_steps:,}",
            "EMA of weights": f"{tr.ema_decay}" if tr.ema_decay else "none",
            "gradient clipping": f"{tr.grad_clip}" if tr.grad_clip else "none",
            "augmentation": "flips and 90° rotations" if tr.augment else "none",
            "precision": tr.precision,
        }

    a, b = describe(seed), describe(ours)
    return [{"": k, "paper (preset seed)": a[k], "this app (preset small)": b[k]} for k in a]


def describe_checkpoint(checkpoint) -> dict[str, str]:
    """Plain facts about a loaded checkpoint for the model card: network, schedule, training, source."""
    cfg, training = checkpoint.model_config, checkpoint.config.get("training", {})
    facts = {
        "network": f"{cfg.architecture} U-Net, {count_parameters(checkpoint.model) / 1e6:.2f} M parameters",
        "schedule": schedule_name(checkpoint.schedule_config),
        "predicts": "noise ε" if checkpoint.schedule_config.prediction_type == "epsilon" else "velocity v",
        "preset": str(checkpoint.config.get("preset", "–")),
        "loaded from": checkpoint.source,
    }
    if training:
        facts["trained"] = (f"{training.get('steps', 0):,} steps of batch {training.get('batch_size', '?')} "
                            f"({training.get('epochs', '?')} epochs) on {training.get('device', '?')}")
    return facts
