"""Glue between a model and a sampler: batched generation and whole trajectories.

Both consume ``samplers.sample_progressive``; nothing here is math.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .data import CLASS_NAMES, class_index, class_prior, to_hwc_numpy
from .device import Precision, use_bf16
from .samplers import guided_model, sample_progressive
from .sampling_spec import DEFAULT_SPEC, SamplingSpec
from .schedules import NoiseSchedule

PRIOR = "prior"  # a tissue request: draws from the training split's class frequencies
#: A tissue request: None or PRIOR (draws from the training prior), one class (index or name) for every image,
#: or one index per image.
Classes = Union[int, str, Sequence[int], torch.Tensor, None]


def resolve_classes(num_classes: int | None, n: int, classes: Classes = None, seed: int = 0) -> torch.Tensor | None:
    """The (n,) class labels to ask for, or None for an unconditional model.

    ``classes``: None or PRIOR (draws from the training split's class frequencies, seeded), one class
    (index or name) for all n, or a sequence of n indices.
    """
    from_prior = classes is None or (isinstance(classes, str) and classes == PRIOR)
    if num_classes is None:
        if not from_prior:
            raise ValueError("this model is unconditional: it cannot be asked for a tissue class (leave classes unset)")
        return None
    pathmnist = num_classes == len(CLASS_NAMES)  # names and prior are PathMNIST's; other class counts use indices
    if from_prior:
        prior = class_prior() if pathmnist else torch.full((num_classes,), 1.0 / num_classes)
        return torch.multinomial(prior, n, replacement=True, generator=torch.Generator().manual_seed(seed + 7_777_777))
    if isinstance(classes, (int, str)):
        idx = class_index(classes) if pathmnist else int(classes)
        if not 0 <= idx < num_classes:
            raise ValueError(f"class {classes!r} is outside [0, {num_classes - 1}]")
        return torch.full((n,), idx, dtype=torch.long)
    labels = torch.as_tensor(classes, dtype=torch.long).reshape(-1)
    if labels.shape[0] != n or (n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes)):
        got = f"[{int(labels.min())}, {int(labels.max())}]" if labels.numel() else "none"
        raise ValueError(f"classes must be {n} indices in [0, {num_classes - 1}], got {labels.shape[0]} in {got}")
    return labels


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def generate(model: nn.Module, schedule: NoiseSchedule, n: int, spec: SamplingSpec = DEFAULT_SPEC, *, seed: int = 0,
             classes: Classes = None, batch_size: int | None = None, progress: bool = False, callback=None,
             precision: Precision = "auto") -> torch.Tensor:
    """``n`` images in [-1, 1], shape (n, C, H, W), on the CPU. Same seed, batch size and precision, same images.

    ``spec`` says how (sampler, steps, guidance; a checkpoint's own is ``checkpoint.sampling``). The network runs
    under bf16 autocast where the hardware has it (``precision="auto"``); the sampler's own arithmetic stays
    float32. ``callback(done_calls, total_calls)`` follows every network evaluation. A tissue-conditional model
    takes ``classes`` (see ``resolve_classes``; default: draws from the training prior, ``resolve_classes(...,
    seed=seed)`` gives the same draws); an unconditional one ignores the guidance.
    """
    if n < 1:
        raise ValueError(f"number of images must be at least 1, got {n}")
    model.eval()
    device = _model_device(model)
    batch_size = default_batch_size(device) if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    cfg = model.config
    labels = resolve_classes(cfg.num_classes, n, classes, seed)
    generator = torch.Generator().manual_seed(seed)
    sampler = spec.make_sampler()
    calls = spec.num_model_calls(schedule.num_timesteps)
    batches = [min(batch_size, n - i) for i in range(0, n, batch_size)]
    out = []
    bar = tqdm(total=calls * len(batches), desc=f"{spec.sampler} sampling", unit="step", disable=not progress)
    done = 0
    for start, b in zip(range(0, n, batch_size), batches):
        shape = (b, cfg.in_channels, cfg.image_size, cfg.image_size)
        fn = guided_model(_autocast(model, precision, device), None if labels is None else labels[start:start + b],
                          spec.guidance, cfg.num_classes, spec.guidance_interval)
        step = None
        for step in sample_progressive(fn, schedule, shape, sampler, spec.steps, generator=generator, device=device):
            done += 1
            bar.update(1)
            if callback is not None:
                callback(done, calls * len(batches))
        out.append(step.prev_sample.float().cpu())
    bar.close()
    return torch.cat(out)


def default_batch_size(device: torch.device) -> int:
    """Images per network call: small on CPU, where batches of 125 ran 1.2× faster than 500 (they stay in
    cache; 2 cores, bf16, 2026-11-25), large on a GPU."""
    return 128 if device.type == "cpu" else 512


def _autocast(model: nn.Module, precision: Precision, device: torch.device):
    """The network as a function run under bf16 autocast when ``precision`` asks for it (or "auto" finds it fast)."""
    enabled = use_bf16(precision, device)

    def fn(x: torch.Tensor, t: torch.Tensor, *class_labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled):
            return model(x, t, *class_labels)

    return fn


@dataclass(frozen=True)
class Trajectory:
    """A whole reverse run stored as uint8 frames, for scrubbing without re-running the network.

    ``samples[0]`` is x_T (pure noise); ``samples[i]`` for i ≥ 1 is the sample after step i, and
    ``pred_x0[i]`` the x̂₀ predicted at that step (``pred_x0[0]`` is mid-grey: nothing is predicted yet).
    Arrays are (num_steps + 1, B, H, W, 3) uint8; ``timesteps[i]`` is the t denoised at step i.
    """

    timesteps: list[int]
    samples: np.ndarray
    pred_x0: np.ndarray
    sampler: str

    @property
    def num_steps(self) -> int:
        return len(self.timesteps) - 1


@torch.inference_mode()
def trajectory(model: nn.Module, schedule: NoiseSchedule, n: int, spec: SamplingSpec = DEFAULT_SPEC, *, seed: int = 0,
               classes: Classes = None, callback=None, precision: Precision = "auto") -> Trajectory:
    """Run one sampler on ``n`` images and keep every step (x_t and x̂₀) as uint8 (arguments as in ``generate``)."""
    model.eval()
    cfg = model.config
    labels = resolve_classes(cfg.num_classes, n, classes, seed)
    shape = (n, cfg.in_channels, cfg.image_size, cfg.image_size)
    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn(shape, generator=generator)
    samples, preds, ts = [to_hwc_numpy(x_T)], [np.full_like(to_hwc_numpy(x_T), 128)], [schedule.num_timesteps]
    total = spec.num_model_calls(schedule.num_timesteps)
    device = _model_device(model)
    fn = guided_model(_autocast(model, precision, device), labels, spec.guidance, cfg.num_classes,
                      spec.guidance_interval)
    for step in sample_progressive(fn, schedule, shape, spec.make_sampler(), spec.steps,
                                   generator=generator, noise=x_T, device=device):
        samples.append(to_hwc_numpy(step.prev_sample))
        preds.append(to_hwc_numpy(step.pred_original_sample))
        ts.append(step.t)
        if callback is not None:
            callback(step.index + 1, total)
    return Trajectory(ts, np.stack(samples), np.stack(preds), spec.sampler)
