"""The trainer: ε/v regression with EMA, clipping, bf16 autocast, NaN guard, stop event and resume.

The whole split lives in memory as one uint8 tensor (N, 3, H, W) on the training device; a batch is
an index into it, scaled to [-1, 1] and optionally flipped/rotated on the fly.  Under torchrun each
rank trains on a disjoint shard of every epoch; gradients are all-reduced by DistributedDataParallel
and only rank 0 writes files.  The run's files (the atomic checkpoint set, the loss log, the data
identity checked on resume) are ``run_files``' business; the trainer only trains.
"""
from __future__ import annotations

import copy
import math
import os
import platform
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoints as ckpt
from . import run_files as rf
from .config import ConfigMixin
from .data import dihedral_augment, to_model_range
from .device import Precision, resolve_device, use_bf16
from .schedules import NoiseSchedule, ScheduleConfig, min_snr_weight, q_sample, training_target
from .run_files import read_training_log  # noqa: F401  (re-exported: it lived here first)
from .unet import UNetConfig, build_unet, count_parameters, load_weights_from


GPU_SYNC_EVERY = 25  # on a GPU the loss is read back (a device sync) only every this many steps


@dataclass(frozen=True)
class TrainConfig(ConfigMixin):
    optimizer: Literal["adam", "adamw"] = "adamw"
    lr: float = 5e-4
    batch_size: int = 128
    max_steps: int = 20_000
    warmup_steps: int = 500
    weight_decay: float = 0.0
    ema_decay: float | None = 0.999
    grad_clip: float | None = 1.0
    loss_weighting: Literal["none", "min_snr"] = "min_snr"
    min_snr_gamma: float = 5.0
    augment: bool = True  # random flips and 90° rotations (tissue has no orientation)
    precision: Precision = "auto"
    seed: int = 0
    checkpoint_every_s: float = 300.0
    compile: bool = False
    p_uncond: float = 0.15  # conditional models: share of labels dropped to "no class" (classifier-free guidance)
    lr_decay: Literal["none", "cosine"] = "none"  # cosine: from lr after warm-up down to 0 at max_steps

    def __post_init__(self) -> None:
        checks = {
            "optimizer": self.optimizer in ("adam", "adamw"),
            "lr": 0 < self.lr <= 1e-1,
            "batch_size": 1 <= self.batch_size <= 8192,
            "max_steps": 1 <= self.max_steps <= 10_000_000,
            "warmup_steps": self.warmup_steps >= 0,
            "ema_decay": self.ema_decay is None or 0 < self.ema_decay < 1,
            "grad_clip": self.grad_clip is None or self.grad_clip > 0,
            "loss_weighting": self.loss_weighting in ("none", "min_snr"),
            "precision": self.precision in ("auto", "bf16", "fp32"),
            "p_uncond": 0.0 <= self.p_uncond <= 1.0,
            "lr_decay": self.lr_decay in ("none", "cosine"),
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError("invalid training settings: " + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad)
                             + " (lr in (0, 0.1], batch_size in [1, 8192], max_steps >= 1, ema_decay in (0, 1), "
                               "optimizer adam|adamw, loss_weighting none|min_snr, precision auto|bf16|fp32, "
                               "p_uncond in [0, 1], lr_decay none|cosine)")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Lenient: a checkpoint's "training" section also holds facts (steps, images seen) beside the settings."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class TrainProgress:
    step: int
    max_steps: int
    loss: float
    lr: float
    images_per_sec: float
    elapsed_s: float

    @property
    def eta_s(self) -> float:
        return (self.max_steps - self.step) * (self.elapsed_s / max(self.step, 1))


@dataclass(frozen=True)
class TrainResult:
    steps: int
    stopped: bool  # True when the stop event ended the run early
    final_loss: float
    images_per_sec: float
    out_dir: Path | None


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


def diffusion_loss(model: nn.Module, schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor,
                   noise: torch.Tensor, weighting: str = "none", gamma: float = 5.0,
                   class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of w(t)·‖f(x_t, t[, y]) - target‖² / D, target ε or v (Ho et al. eq. 14)."""
    x_t = q_sample(schedule, x0, t, noise)
    out = model(x_t, t) if class_labels is None else model(x_t, t, class_labels)
    per_sample = F.mse_loss(out.float(), training_target(schedule, x0, noise, t), reduction="none").mean((1, 2, 3))
    if weighting == "min_snr":
        per_sample = per_sample * min_snr_weight(schedule, t, gamma)
    return per_sample.mean()


class EMA:
    """Exponential moving average of a model's weights, with the usual warm-up min(d, (1+n)/(10+n))."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()], 1 - d)


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class Trainer:
    """Trains one diffusion model on an in-memory uint8 image tensor.

    ``out_dir`` (optional) receives the checkpoint, the resumable training state and the loss log;
    ``resume=True`` continues from what is there (refused when ``images``/``labels`` are not the data the
    run trained on, unless ``allow_data_change``); without it a folder that holds a run is refused unless
    ``overwrite``, which deletes the old run's files first.  ``init_model`` starts from given weights (for
    fine-tuning a pretrained model, or a conditional model from an unconditional one); the trainer
    always trains its own copy.  A conditional model (``model_config.num_classes``) needs ``labels``.
    ``warnings`` collects what a caller should show (a resume whose data cannot be checked, or changed).
    """

    def __init__(self, model_config: UNetConfig, schedule_config: ScheduleConfig, train_config: TrainConfig,
                 images: torch.Tensor, out_dir: str | os.PathLike | None = None, device: str | torch.device = "auto",
                 resume: bool = False, init_model: nn.Module | None = None, extra_config: dict | None = None,
                 labels: torch.Tensor | None = None, overwrite: bool = False, allow_data_change: bool = False):
        if model_config.num_classes is not None:
            if labels is None or labels.shape != (images.shape[0],):
                raise ValueError(f"a conditional model ({model_config.num_classes} classes) needs one label per image; "
                                 f"got {'none' if labels is None else tuple(labels.shape)} for {images.shape[0]} images")
            if int(labels.min()) < 0 or int(labels.max()) >= model_config.num_classes:
                raise ValueError(f"labels must lie in [0, {model_config.num_classes - 1}], "
                                 f"got [{int(labels.min())}, {int(labels.max())}]")
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != model_config.in_channels:
            raise ValueError(f"images must be a uint8 tensor (N, {model_config.in_channels}, H, W), got {images.dtype} {tuple(images.shape)}")
        if images.shape[-1] != model_config.image_size:
            raise ValueError(f"images are {images.shape[-1]}×{images.shape[-2]} but the model is built for {model_config.image_size}")
        self.rank, self.world_size = _dist_info()
        if images.shape[0] < train_config.batch_size * self.world_size:
            raise ValueError(f"{images.shape[0]} images cannot fill one batch of {train_config.batch_size}"
                             f"{f' on each of {self.world_size} ranks' if self.world_size > 1 else ''}; lower --batch-size")
        self.model_config, self.schedule_config, self.config = model_config, schedule_config, train_config
        self.device = resolve_device(device)
        if self.device.type == "cuda" and self.world_size > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        self.bf16 = use_bf16(train_config.precision, self.device)
        self.schedule = NoiseSchedule.from_config(schedule_config)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        if self.out_dir is not None and not resume:
            rf.refuse_existing_run(self.out_dir, overwrite)
            if self.rank == 0:
                rf.clear_run(self.out_dir)
        self.extra_config = extra_config or {}
        self.warnings: list[str] = []
        self.data_identity = (rf.data_identity(images, labels, self.extra_config.get("data"))
                              if self.out_dir is not None else None)
        self.images = images.to(self.device)
        self.labels = labels.long().to(self.device) if model_config.num_classes is not None else None
        self._perm: tuple[int, torch.Tensor] | None = None  # (epoch, its permutation)
        self.steps_per_epoch = images.shape[0] // (train_config.batch_size * self.world_size)

        with torch.random.fork_rng(devices=[]):  # initial weights come from the config's seed, not the global RNG
            torch.manual_seed(train_config.seed)
            self.model = build_unet(model_config).to(self.device)
        if init_model is not None:
            load_weights_from(self.model, init_model.state_dict())
        self.sync_every = 1 if self.device.type == "cpu" else GPU_SYNC_EVERY  # steps between reads of the loss
        self.channels_last = self.device.type == "cuda"  # measured: a win on GPUs, a loss on this CPU
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        opt_cls = torch.optim.AdamW if train_config.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(self.model.parameters(), lr=train_config.lr, weight_decay=train_config.weight_decay,
                                 fused=self.device.type == "cuda" or None)
        self.ema = EMA(self.model, train_config.ema_decay) if train_config.ema_decay else None
        self.step = 0
        self.images_seen = 0
        self.warmup_offset = 0  # a resume without optimizer moments warms up again from its step
        self.train_seconds = 0.0
        if resume:
            self._load_state(allow_data_change)
        self.ddp_model = self.model
        if self.world_size > 1:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.forward = torch.compile(self.ddp_model) if train_config.compile else self.ddp_model

    # ---- data ---------------------------------------------------------------------------------
    def batch_indices(self, step: int) -> torch.Tensor:
        """This rank's indices for ``step``: epoch e is one permutation seeded by (seed, e), cut into
        world_size·batch blocks; rank r takes the r-th batch of each block, so shards never overlap."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(self.images.shape[0], generator=g).to(self.device))
        perm = self._perm[1]
        b = self.config.batch_size
        start = (pos * self.world_size + self.rank) * b
        return perm[start:start + b]

    def get_batch(self, step: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x0 in [-1, 1], labels or None) for ``step``; labels are not yet dropped to "no class"."""
        idx = self.batch_indices(step)
        x = to_model_range(self.images[idx])
        x = dihedral_augment(x, generator) if self.config.augment else x
        x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        return x, (self.labels[idx] if self.labels is not None else None)

    # ---- one step -----------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Linear warm-up over ``warmup_steps`` (restarted at a resume without optimizer moments), then
        constant or a cosine decay to 0 at ``max_steps``."""
        cfg, warm = self.config, self.config.warmup_steps
        lr = cfg.lr * min(1.0, (step + 1 - self.warmup_offset) / warm) if warm else cfg.lr
        if cfg.lr_decay == "cosine" and step >= warm:
            progress = min(1.0, (step - warm) / max(cfg.max_steps - warm, 1))
            lr *= 0.5 * (1 + math.cos(math.pi * progress))
        return lr

    def _step_generator(self, step: int) -> torch.Generator:
        """This step's random draws: on the CPU a CPU generator (as always); on a GPU one on the device,
        so that noise for a large batch is not made on the host and copied over every step."""
        seed = self.config.seed * 7_919 + step * 131 + self.rank
        return torch.Generator(device=self.device).manual_seed(seed)

    def train_step(self, step: int) -> torch.Tensor:
        """One whole update for ``step``: loss, backward, gradient clipping, optimizer step, EMA.

        Returns the loss, detached.  Where the loss is read every step (``sync_every == 1``, the CPU) a
        NaN/inf loss raises NonFiniteLossError here, before the update is applied; elsewhere reading it
        would stall the device, so ``train`` checks it every ``sync_every`` steps, after the updates.
        """
        g = self._step_generator(step)
        x0, labels = self.get_batch(step, g)
        dev = self.device
        t = torch.randint(0, self.schedule.num_timesteps, (x0.shape[0],), generator=g, device=dev)
        noise = torch.randn(x0.shape, generator=g, device=dev)
        if labels is not None:  # classifier-free guidance: drop the label to "no class" with probability p_uncond
            drop = torch.rand(labels.shape[0], generator=g, device=dev) < self.config.p_uncond
            labels = torch.where(drop, torch.full_like(labels, self.model_config.num_classes), labels)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = diffusion_loss(self.forward, self.schedule, x0, t, noise, self.config.loss_weighting,
                                  self.config.min_snr_gamma, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loss = loss.detach()
        if self.sync_every == 1 and not torch.isfinite(loss):
            self._raise_non_finite(step, float(loss))
        if self.config.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        if self.ema:
            self.ema.update(self.model, step)
        return loss

    # ---- the loop -----------------------------------------------------------------------------
    def train(self, callback: Callable[[TrainProgress], None] | None = None,
              stop_event: threading.Event | None = None, max_steps: int | None = None,
              time_limit_s: float | None = None) -> TrainResult:
        """Train until ``max_steps`` (default: the config's), until ``stop_event`` is set, or until
        ``time_limit_s`` seconds of this call have passed (then it saves and returns, stopped).

        A NaN/inf loss raises NonFiniteLossError naming the first step that had one.  Weights are saved
        only after every loss up to them was read back and found finite (at a read, at most every
        ``checkpoint_every_s``, and at the end), so nothing is saved after the NaN: the checkpoint on
        disk is the last one written before it, and the loss log ends at the read before it.  When the
        loss is read decides what the trainer in memory holds by then:
        - on the CPU (``sync_every == 1``) the loss is read at every step and the NaN is caught before
          its update: the weights in memory are still those of the step before it;
        - on a GPU it is read every ``sync_every`` (GPU_SYNC_EVERY) steps and at ``max_steps``, so the
          update of the NaN step and those after it up to that read (1 to ``sync_every`` updates) have
          been applied to the weights in memory, which are then not to be used.
        """
        max_steps = max_steps or self.config.max_steps
        self.model.train()
        pending: list[tuple[int, torch.Tensor]] = []  # (step, loss) not yet read back from the device
        start, last_save, images_done, last_loss = time.time(), time.time(), 0, float("nan")
        rate_t0, rate_step = time.time(), self.step
        stopped = False

        def read_back() -> float:
            """Read the pending losses (one device sync), refuse a NaN, log them, report; returns the time."""
            nonlocal pending, last_loss
            values = torch.stack([l for _, l in pending]).float().tolist()
            bad = [s for (s, _), v in zip(pending, values) if not math.isfinite(v)]
            if bad:
                self._raise_non_finite(bad[0] - 1, float("nan"))
            now = time.time()
            rate = (self.step - rate_step) * self.config.batch_size * self.world_size / max(now - rate_t0, 1e-9)
            rows = [(s, v, self.lr_at(s - 1)) for (s, _), v in zip(pending, values)]
            if self.out_dir is not None and self.rank == 0:
                rf.append_log(self.out_dir, rows, rate, now - start + self.train_seconds)
            last_loss, pending = values[-1], []
            if callback is not None:
                callback(TrainProgress(self.step, max_steps, last_loss, self.lr_at(self.step - 1), rate, now - start))
            return now

        while self.step < max_steps:
            if (stop_event is not None and stop_event.is_set()) or (
                    time_limit_s is not None and time.time() - start >= time_limit_s):
                stopped = True
                break
            loss = self.train_step(self.step)
            self.step += 1
            images_done += self.config.batch_size * self.world_size
            self.images_seen += self.config.batch_size * self.world_size
            pending.append((self.step, loss))
            if len(pending) >= self.sync_every or self.step == max_steps:
                now = read_back()
                if now - last_save > self.config.checkpoint_every_s:
                    self.save()
                    last_save = time.time()
                if now - rate_t0 > 10:  # a moving window for images/s
                    rate_t0, rate_step = now, self.step
        if pending:  # stopped between two reads (a GPU): check and log those steps before saving their weights
            read_back()
        self.train_seconds += time.time() - start
        self.save()
        elapsed = time.time() - start
        return TrainResult(self.step, stopped, last_loss, images_done / max(elapsed, 1e-9), self.out_dir)

    def _raise_non_finite(self, step: int, value: float) -> None:
        where = (f"the last good checkpoint in {self.out_dir} (step {rf.saved_step(self.out_dir)}) was kept"
                 if self.out_dir else "nothing was saved (no output folder)")
        raise NonFiniteLossError(f"loss became {value} at step {step + 1}; training stopped and {where}. "
                                 "Lower the learning rate, keep gradient clipping on, or use --precision fp32.")

    # ---- files --------------------------------------------------------------------------------
    def sampling_model(self) -> nn.Module:
        """The weights to sample with: the EMA if there is one, else the raw model (in eval mode)."""
        return (self.ema.model if self.ema else self.model).eval()

    def checkpoint_config(self) -> dict:
        return ckpt.make_config(self.model_config, self.schedule_config, **self.extra_config, training={
            **self.config.to_dict(), "steps": self.step, "epochs": round(self.step / max(self.steps_per_epoch, 1), 3),
            "images_seen": self.images_seen, "world_size": self.world_size,
            "effective_batch": self.config.batch_size * self.world_size,
            "train_seconds": round(self.train_seconds, 1), "device": str(self.device.type), "bf16": self.bf16,
            "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else platform.processor() or "CPU",
            "torch": torch.__version__,
            "num_train_images": int(self.images.shape[0]), "parameters": count_parameters(self.model)})

    def save(self) -> None:
        """Write the sampling weights, config and resumable state as one unit (rank 0 only; see run_files)."""
        if self.out_dir is None or self.rank != 0:
            return
        state = rf.RunState(step=self.step, images_seen=self.images_seen, warmup_offset=self.warmup_offset,
                            train_seconds=self.train_seconds, world_size=self.world_size,
                            train=self.config.to_dict(), data=self.data_identity)
        rf.save_run(self.out_dir, self.sampling_model(), self.model, self.optimizer, self.checkpoint_config(), state)
        self.model.train()

    def _load_state(self, allow_data_change: bool) -> None:
        """Continue the run in ``out_dir``: its raw weights, EMA, optimizer moments, counters and log."""
        folder = self.out_dir
        if folder is None or not ((folder / ckpt.STATE_NAME).is_file() or (folder / rf.COMMIT_NAME).is_file()):
            raise ckpt.CheckpointError(f"nothing to resume in {folder}: no {ckpt.STATE_NAME}; start without --resume "
                                       "(with --overwrite to replace what is there) or point --out at an earlier run")
        if self.rank == 0:
            rf.recover(folder)  # finish a save a kill interrupted after its commit; drop orphan temporaries
        if self.world_size > 1:
            torch.distributed.barrier()
        state = rf.read_state(folder)
        rf.check_step_agrees(folder, state)
        warning = rf.check_same_data(folder, state.data, self.data_identity, allow_data_change)
        self.warnings += [warning] if warning else []
        rf.load_raw_weights(self.model, folder, self.device)
        if self.ema:  # the EMA weights are the checkpoint's sampling weights
            ckpt.load_state_dict_checked(self.ema.model, folder / ckpt.WEIGHTS_NAME)
        if rf.load_optimizer(self.optimizer, folder, state.param_groups, self.device):
            self.warmup_offset = state.warmup_offset
        else:  # shipped checkpoints leave the Adam moments out: re-estimate them under a fresh warm-up
            self.warmup_offset = state.step
        self.step, self.train_seconds = state.step, float(state.train_seconds)
        self.images_seen = (state.images_seen if state.images_seen is not None
                            else self.step * self.config.batch_size * state.world_size)
        if self.rank == 0:
            rf.truncate_log(folder, self.step)
