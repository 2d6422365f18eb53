"""A visitor's request for a training run, checked against the server's limits and the trainer's own rules."""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..presets import SCHEDULES, get_preset
from .server_limits import ServerLimits
from ..training import TrainConfig


@dataclass(frozen=True)
class TrainRequest:
    """What a visitor asked for. ``schedule`` is a key of ``presets.SCHEDULES`` (None: the preset's);
    a run from the pretrained model keeps that model's network and schedule."""

    preset: str = "small"
    steps: int = 200
    batch_size: int = 32
    lr: float = 5e-4
    schedule: str | None = None
    from_pretrained: bool = False
    sample_every: int = 50
    num_samples: int = 8
    seed: int = 0
    conditional: bool = False  # train on the tissue labels (classifier-free guidance); the gpu preset always is

    def train_config(self) -> TrainConfig:
        """The trainer's settings for this run: the preset's, with the visitor's steps, batch, learning rate and
        seed; a short run keeps at most a fifth of itself for the learning-rate warm-up. Raises ValueError from
        TrainConfig's own checks."""
        base = get_preset(self.preset).train
        return replace(base, max_steps=self.steps, batch_size=self.batch_size, lr=self.lr, seed=self.seed,
                       warmup_steps=min(base.warmup_steps, self.steps // 5), checkpoint_every_s=60.0)

    def validate(self, limits: ServerLimits) -> None:
        """Raise ValueError naming every setting outside what ``limits`` allow; once the preset, steps and batch
        size are within them, the trainer's own rules (the learning rate's) are checked by building the
        TrainConfig the run would train with."""
        problems = []
        if self.preset not in limits.presets:
            problems.append(f"preset must be one of {list(limits.presets)}, got {self.preset!r}")
        if not 1 <= self.steps <= limits.max_steps:
            problems.append(f"steps must be between 1 and {limits.max_steps:,}, got {self.steps}")
        if not 1 <= self.batch_size <= limits.max_batch:
            problems.append(f"batch size must be between 1 and {limits.max_batch}, got {self.batch_size}")
        if not problems:
            try:
                self.train_config()
            except ValueError as err:
                problems.append(str(err))
        if self.schedule is not None and self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if self.from_pretrained and self.schedule is not None:
            problems.append("a run from the pretrained model keeps its schedule; leave the schedule unset")
        if not 1 <= self.sample_every <= 100_000 or not 1 <= self.num_samples <= 64:
            problems.append("sample_every must be ≥ 1 and num_samples between 1 and 64")
        if problems:
            raise ValueError("; ".join(problems))
