"""Named recipes: a network, a noise schedule and training hyper-parameters that belong together.

* ``seed``  - the tutorial paper exactly: its network, T = 200 linear β in [1e-4, 0.02], ε-prediction,
  Adam 2e-4, batch 128, 2 epochs = 1,406 steps, fp32, no EMA, no clipping, no augmentation.
  Note: the paper's own notebook breaks out of each epoch after 51 steps (102 steps in all); the
  preset trains the 2 full epochs the paper's text describes. ``--steps 102`` reproduces the notebook.
* ``small`` - the default: a 1.6 M-parameter residual U-Net (GroupNorm, attention at 7×7), cosine
  schedule rescaled to zero terminal SNR, v-prediction with min-SNR-5 weighting, AdamW 5e-4 with
  warm-up, EMA 0.999, gradient clipping, dihedral augmentation, bf16 autocast on CPU.
* ``large`` - a 6.5 M-parameter version of ``small`` for GPU training (attention at 14×14 and 7×7).
* ``gpu``   - the recipe for a few minutes of one GPU: ``small``'s network (so the 2-core Space samples it
  as fast), conditional on the 9 tissues (labels dropped 15% of the time for classifier-free guidance),
  batch 1024, AdamW 1e-3 with warm-up and a cosine decay to 0, EMA 0.9995, bf16. The batch and the
  choice of torch.compile come from ``bench/gpu_speed.py``; ``--steps`` is set from its images/s.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .schedules import ScheduleConfig
from .training import TrainConfig
from .unet import UNetConfig

PAPER_STEPS = 1406  # 2 epochs of floor(89,996 / 128) = 703 full batches


@dataclass(frozen=True)
class Preset:
    name: str
    model: UNetConfig
    schedule: ScheduleConfig
    train: TrainConfig
    description: str


PRESETS: dict[str, Preset] = {
    "seed": Preset(
        "seed",
        UNetConfig(architecture="seed", base_channels=32, channel_mults=(1, 2), num_res_blocks=1,
                   attention_resolutions=(), time_embed_dim=128),
        ScheduleConfig.paper(),
        TrainConfig(optimizer="adam", lr=2e-4, batch_size=128, max_steps=PAPER_STEPS, warmup_steps=0,
                    weight_decay=0.0, ema_decay=None, grad_clip=None, loss_weighting="none",
                    augment=False, precision="fp32"),
        "The tutorial paper's DDPM, exactly (its notebook stops each epoch after 51 steps; this trains both full epochs).",
    ),
    "small": Preset(
        "small",
        UNetConfig(),
        ScheduleConfig(),
        TrainConfig(),
        "Default: residual U-Net, cosine zero-terminal-SNR schedule, v-prediction, min-SNR, EMA; sized for 2 CPU cores.",
    ),
    "large": Preset(
        "large",
        UNetConfig(base_channels=64, attention_resolutions=(14, 7), num_heads=4, dropout=0.1),
        ScheduleConfig(),
        TrainConfig(lr=2e-4, batch_size=256, max_steps=40_000, warmup_steps=1000, ema_decay=0.9995),
        "GPU: the small recipe at 4× the width-squared (6.5 M parameters), attention at 14×14 and 7×7.",
    ),
    "gpu": Preset(
        "gpu",
        UNetConfig(num_classes=9),
        ScheduleConfig(),
        TrainConfig(lr=1e-3, batch_size=1024, max_steps=30_000, warmup_steps=1000, ema_decay=0.9995, lr_decay="cosine",
                    checkpoint_every_s=60.0),
        "GPU minutes: the small network, tissue-conditional (classifier-free guidance), batch 1024, cosine decay, EMA 0.9995.",
    ),
}


#: The schedules a visitor can pick, by display name (all T = 200, the paper's T).
SCHEDULES: dict[str, ScheduleConfig] = {
    "linear (paper)": ScheduleConfig.paper(),
    "cosine": ScheduleConfig(kind="cosine", zero_terminal_snr=False, prediction_type="epsilon"),
    "cosine, zero terminal SNR": ScheduleConfig(),
}


def get_preset(name: str, image_size: int | None = None) -> Preset:
    """A preset by name, optionally re-sized (e.g. 64 for MedMNIST+ PathMNIST-64)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    preset = PRESETS[name]
    if image_size and image_size != preset.model.image_size:
        if preset.model.architecture == "seed" and image_size % 2:
            raise ValueError(f"the seed network needs an even image size, got {image_size}")
        attn = tuple(r * image_size // preset.model.image_size for r in preset.model.attention_resolutions)
        preset = replace(preset, model=replace(preset.model, image_size=image_size, attention_resolutions=attn))
    return preset
