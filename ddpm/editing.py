"""Steering a tissue-conditional model: repaint a real patch as a tissue (SDEdit), fill a hole so that it agrees with
the pixels kept (inpainting), morph one noise between two tissues, and draw one noise as every tissue.

Every function takes images (B, 3, H, W) in [-1, 1] (``data.to_model_range`` of uint8 patches), tissues as names or
indices (``pipeline.resolve_classes``), a classifier-free ``guidance`` scale (and the ``guidance_interval`` it acts
in, as ``SamplingSpec`` has it) and ``num_steps`` of the default sampler (DPM-Solver++ over trailing timesteps), and
returns (B, 3, H, W) in [-1, 1] on the CPU; the same seed gives the same
images. The network runs under bf16 autocast where the hardware has it, as in ``pipeline.generate``, and
``callback(done, total)`` follows every network evaluation. An unconditional model is refused: it has no tissue to
be steered towards.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from .device import Precision
from .pipeline import Classes, _autocast, _model_device, resolve_classes
from .samplers import (DEFAULT_SAMPLER, ModelFn, Sampler, check_finite, get_sampler, guided_model,
                       sample_progressive)
from .schedules import NoiseSchedule, q_sample, q_sample_from

Callback = Callable[[int, int], None]
Interval = tuple[int, int] | None  # the timesteps lo ≤ t ≤ hi where guidance acts (SamplingSpec.guidance_interval)
#: The preset masks of ``preset_mask`` (True = the pixels to fill), named as the app shows them.
MASKS = ("centre square", "left half", "random blocks", "ring")
#: Inpainting's sampler and resampling rounds per step (``inpaint``: why, and the measurement)
INPAINT_SAMPLER = get_sampler("ddim", eta=1.0)
INPAINT_JUMPS = 1
MAX_JUMPS = 10


def check_steerable(model: nn.Module) -> int:
    """The model's number of tissues K; a ValueError for an unconditional model, which takes no tissue."""
    num_classes = model.config.num_classes
    if num_classes is None:
        raise ValueError("this model is unconditional: it takes no tissue, so it cannot be steered towards one; "
                         "use a tissue-conditional model such as the shipped default (load_checkpoint('default'), "
                         "the app's pretrained model) rather than the paper's seed model")
    return num_classes


def _check_images(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    cfg = model.config
    want = (cfg.in_channels, cfg.image_size, cfg.image_size)
    if not (torch.is_tensor(images) and images.is_floating_point() and images.ndim == 4
            and tuple(images.shape[1:]) == want and images.shape[0] >= 1):
        got = f"{images.dtype} {tuple(images.shape)}" if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images must be a float tensor (B, {', '.join(map(str, want))}) in [-1, 1], got {got}; "
                         "convert uint8 patches with ddpm.data.to_model_range")
    images = images.detach().float().cpu()
    if not bool(torch.isfinite(images).all()) or float(images.abs().max()) > 1.0 + 1e-6:
        raise ValueError("images must be finite and in [-1, 1] (the model's range); convert uint8 patches with "
                         "ddpm.data.to_model_range")
    return images


def _run(model: nn.Module, schedule: NoiseSchedule, x: torch.Tensor, labels: torch.Tensor, guidance: float,
         num_steps: int | None, timesteps: Sequence[int] | None, generator: torch.Generator,
         callback: Callback | None, precision: Precision, interval: Interval) -> torch.Tensor:
    """The default sampler from ``x`` (x_T, or x at ``timesteps[0]``) with ``labels`` (B,) or (B, K+1): images on CPU."""
    device = _model_device(model)
    model.eval()
    fn = guided_model_for(model, labels, guidance, precision, interval)
    sampler = get_sampler(DEFAULT_SAMPLER)
    total = len(sampler.timesteps(schedule.num_timesteps, num_steps) if timesteps is None else timesteps)
    step = None
    for step in sample_progressive(fn, schedule, tuple(x.shape), sampler, num_steps, generator=generator,
                                   noise=x, device=device, timesteps=timesteps):
        if callback is not None:
            callback(step.index + 1, total)
    return step.prev_sample.float().cpu()


def guided_model_for(model: nn.Module, labels: torch.Tensor, guidance: float, precision: Precision = "auto",
                     interval: Interval = None) -> ModelFn:
    """``samplers.guided_model`` of the network under ``precision``'s autocast, guided in ``interval`` (None: at
    every step; ``SamplingSpec.guidance_interval``): the ModelFn every edit samples with."""
    return guided_model(_autocast(model, precision, _model_device(model)), labels, guidance, model.config.num_classes,
                        interval)


def sample_from(model: nn.Module, schedule: NoiseSchedule, noise: torch.Tensor, class_labels: torch.Tensor,
                guidance: float = 1.0, num_steps: int | None = None, *, guidance_interval: Interval = None,
                callback: Callback | None = None, precision: Precision = "auto") -> torch.Tensor:
    """Plain conditional sampling from a given x_T ``noise`` (B, C, H, W): ``class_labels`` (B,) tissue indices or
    (B, K+1) weights over the class embeddings (``unet.ClassEmbedding``). Returns (B, C, H, W) in [-1, 1] on CPU."""
    num_classes = check_steerable(model)
    cfg = model.config
    want = (cfg.in_channels, cfg.image_size, cfg.image_size)
    if not (torch.is_tensor(noise) and noise.ndim == 4 and tuple(noise.shape[1:]) == want):
        raise ValueError(f"noise must be a tensor (B, {', '.join(map(str, want))}), got "
                         f"{tuple(noise.shape) if torch.is_tensor(noise) else type(noise).__name__}")
    _check_labels(class_labels, noise.shape[0], num_classes)
    with torch.inference_mode():
        return _run(model, schedule, noise.float(), class_labels, guidance, num_steps, None, torch.Generator(),
                    callback, precision, guidance_interval)


def _check_labels(labels: torch.Tensor, n: int, num_classes: int) -> None:
    hard = torch.is_tensor(labels) and not labels.is_floating_point() and tuple(labels.shape) == (n,)
    soft = torch.is_tensor(labels) and labels.is_floating_point() and tuple(labels.shape) == (n, num_classes + 1)
    if not (hard or soft) or (hard and n and not 0 <= int(labels.min()) <= int(labels.max()) <= num_classes):
        raise ValueError(f"class labels must be ({n},) indices in [0, {num_classes}] or ({n}, {num_classes + 1}) weights, "
                         f"got {labels.dtype if torch.is_tensor(labels) else type(labels).__name__} "
                         f"{tuple(labels.shape) if torch.is_tensor(labels) else ''}")


# ---- SDEdit (Meng et al. 2022) ------------------------------------------------------------------------------------
def check_strength(strength: float) -> float:
    if not (isinstance(strength, (int, float)) and not isinstance(strength, bool) and math.isfinite(strength)
            and 0.0 <= strength <= 1.0):
        raise ValueError(f"strength must be a finite number in [0, 1] (0 keeps the patch, 1 starts from pure noise), "
                         f"got {strength!r}")
    return float(strength)


def sdedit_timesteps(num_timesteps: int, strength: float, num_steps: int | None = None) -> list[int]:
    """The timesteps SDEdit denoises, in order: its start t₀ = round(strength · (T − 1)), then those of the default
    sampler's ``num_steps`` trailing steps over the whole range that lie below t₀, less one closer to t₀ than half a
    step (it would be a sliver of a step: 60 → 59 among steps of 10). Empty for strength 0."""
    strength = check_strength(strength)
    if strength == 0.0:
        return []
    start = round(strength * (num_timesteps - 1))
    grid = get_sampler(DEFAULT_SAMPLER).timesteps(num_timesteps, num_steps)
    half_step = num_timesteps / len(grid) / 2
    return [start, *(t for t in grid if t <= start - half_step)]


def sdedit_input(schedule: NoiseSchedule, images: torch.Tensor, strength: float, seed: int = 0) -> torch.Tensor:
    """Where SDEdit starts: x_{t₀} = √ᾱ_{t₀} x₀ + √(1 − ᾱ_{t₀}) ε with ε drawn from ``seed`` (the images themselves
    for strength 0). images: (B, C, H, W) in [-1, 1] -> (B, C, H, W), the same ε for every strength."""
    timesteps = sdedit_timesteps(schedule.num_timesteps, strength)
    if not timesteps:
        return images.clone()
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return q_sample(schedule, images, torch.full((images.shape[0],), timesteps[0], dtype=torch.long), noise)


def sdedit(model: nn.Module, schedule: NoiseSchedule, images: torch.Tensor, strength: float, classes: Classes = None,
           guidance: float = 1.0, seed: int = 0, num_steps: int | None = None, *, guidance_interval: Interval = None,
           callback: Callback | None = None, precision: Precision = "auto") -> torch.Tensor:
    """Repaint real patches as the tissue asked for (SDEdit, Meng et al. 2022): noise them to level ``strength``
    (0 = untouched, 1 = pure noise; t₀ = round(strength · (T − 1))) with ``q_sample`` and denoise from there with
    the default sampler over ``sdedit_timesteps``. Below t₀ the noise hides only detail, so low strengths keep the
    patch's layout and colour and repaint its texture; high strengths keep little but the colour balance.

    images: (B, C, H, W) in [-1, 1]; ``num_steps``: steps over the whole range (the run takes the share of them that
    lies below t₀). Returns (B, C, H, W) in [-1, 1] on CPU: for strength 0, the input itself.
    """
    timesteps = sdedit_timesteps(schedule.num_timesteps, strength, num_steps)
    num_classes = check_steerable(model)
    images = _check_images(model, images)
    if not timesteps:
        return images.clone()
    labels = resolve_classes(num_classes, images.shape[0], classes, seed)
    with torch.inference_mode():
        x = sdedit_input(schedule, images, strength, seed)
        return _run(model, schedule, x, labels, guidance, num_steps, timesteps, torch.Generator().manual_seed(seed),
                    callback, precision, guidance_interval)


# ---- inpainting ---------------------------------------------------------------------------------------------------
def preset_mask(name: str, size: int = 28, seed: int = 0) -> torch.Tensor:
    """One of ``MASKS`` as an (H, W) bool mask, True = the pixels to fill: the centre square (half the side), the left
    half, random blocks (a 4 × 4 grid of blocks, each filled with probability 0.35, drawn from ``seed``) or a ring
    (radii 0.2 to 0.4 of the side, around the centre)."""
    if name not in MASKS:
        raise ValueError(f"mask must be one of {MASKS}, got {name!r}")
    mask = torch.zeros(size, size, dtype=torch.bool)
    if name == "centre square":
        mask[size // 4:size - size // 4, size // 4:size - size // 4] = True
    elif name == "left half":
        mask[:, :size // 2] = True
    elif name == "random blocks":
        g = torch.Generator().manual_seed(seed)
        blocks = torch.rand(4, 4, generator=g) < 0.35
        blocks.view(-1)[torch.randint(16, (1,), generator=g)] = True  # never an empty mask
        mask = blocks.repeat_interleave(math.ceil(size / 4), 0).repeat_interleave(math.ceil(size / 4), 1)[:size, :size]
    else:
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        r = ((yy - (size - 1) / 2) ** 2 + (xx - (size - 1) / 2) ** 2).sqrt() / size
        mask = (r >= 0.2) & (r <= 0.4)
    return mask.contiguous()


def _check_mask(mask: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    b, _, h, w = images.shape
    if not (torch.is_tensor(mask) and mask.dtype == torch.bool):
        got = mask.dtype if torch.is_tensor(mask) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor (True = fill), got {got}; e.g. preset_mask('centre square')")
    if tuple(mask.shape) == (h, w):
        return mask.expand(b, 1, h, w)
    if tuple(mask.shape) == (b, 1, h, w):
        return mask
    raise ValueError(f"mask must be ({h}, {w}) or ({b}, 1, {h}, {w}) for these images, got {tuple(mask.shape)}")


def inpaint_calls(num_timesteps: int, num_steps: int | None = None, jumps: int = INPAINT_JUMPS) -> int:
    """Network evaluations of one ``inpaint``: each step but the last is run 1 + ``jumps`` times."""
    steps = len(INPAINT_SAMPLER.timesteps(num_timesteps, num_steps))
    return (steps - 1) * (1 + jumps) + 1


def inpaint_loop(fn, schedule: NoiseSchedule, images: torch.Tensor, fill: torch.Tensor, sampler: Sampler,
                 timesteps: Sequence[int], generator: torch.Generator, jumps: int = 0, fresh_known_noise: bool = False,
                 device: torch.device | str = "cpu", callback: Callback | None = None) -> torch.Tensor:
    """Fill ``fill`` (B, 1, H, W; True = fill) of ``images`` (B, C, H, W) with the sampler (RePaint's Algorithm 1,
    Lugmayr et al. 2022, on the sampler's step grid).

    Before each network call the kept pixels are replaced by the original noised to the current level,
    √ᾱ_t x₀ + √(1 − ᾱ_t) ε: one ε for the whole run (the path a deterministic sampler would take through them), or a
    fresh one each time (``fresh_known_noise``, as RePaint with its ancestral sampler). With ``jumps`` > 0 each step
    t → t' is followed by going back up, x_t ~ q(x_t | x_t') (``q_sample_from``), and redone, ``jumps`` times: the
    fill gets to see its surroundings again before it commits (RePaint's resampling). Returns x₀ (B, C, H, W) on
    ``device``, with the kept pixels exactly the original's.
    """
    shape = tuple(images.shape)

    def randn() -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(device)

    images, fill = images.to(device), fill.to(device)
    x, eps_known = randn(), randn()
    state, calls, n = sampler.init_state(), 0, len(timesteps)
    total = (n - 1) * (1 + jumps) + 1
    for i, t in enumerate(timesteps):
        prev_t = timesteps[i + 1] if i + 1 < n else -1
        tt = torch.full((shape[0],), t, dtype=torch.long, device=device)
        for u in range(1 + jumps if prev_t >= 0 else 1):
            known = q_sample(schedule, images, tt, randn() if fresh_known_noise else eps_known)
            x = torch.where(fill, x, known)
            out = fn(x, tt).float()
            x_prev, _, new_state = sampler.step(schedule, out, t, prev_t, x, state, randn)
            check_finite(x_prev, i, n, t)
            calls += 1
            if callback is not None:
                callback(calls, total)
            if u < jumps and prev_t >= 0:
                x = q_sample_from(schedule, x_prev, prev_t, t, randn())
        x, state = x_prev, new_state
    return torch.where(fill, x, images)


def inpaint(model: nn.Module, schedule: NoiseSchedule, images: torch.Tensor, mask: torch.Tensor,
            classes: Classes = None, guidance: float = 1.0, seed: int = 0, num_steps: int | None = None, *,
            jumps: int = INPAINT_JUMPS, guidance_interval: Interval = None, callback: Callback | None = None,
            precision: Precision = "auto") -> torch.Tensor:
    """Fill the masked pixels of real patches so that they agree with the pixels kept, as the tissue asked for.

    RePaint (Lugmayr et al. 2022; ``inpaint_loop``) with ``jumps`` resampling rounds per step, on ancestral DDIM
    (η = 1) over ``num_steps`` trailing steps, not the deterministic default sampler. Why, measured
    (bench/results/inpaint_check.md: 27 real patches × 4 masks, the shipped model, 20 steps): plain replacement on
    DPM-Solver++ leaves a seam (neighbour differences across the mask's edge 1.50× the real tissue's) and errs most
    (low-pass MSE 0.027 against the hidden truth); ancestral replacement 1.15× and 0.016; RePaint with one jump on it
    1.04× and 0.012, where replacement given the same 40 network calls as steps stays at 1.21× and 0.016: the
    resampling, not the compute, harmonises. A deterministic path commits to its layout in the first steps, before
    it has seen much of the pixels around the hole; fresh noise at every step, and going back up a step, let the
    fill correct itself towards them. More jumps gained little (3: 0.96×, 0.013) for twice the calls again.

    images: (B, C, H, W) in [-1, 1]; mask: (H, W) or (B, 1, H, W) bool, True = fill. Returns (B, C, H, W) in [-1, 1]
    on CPU whose kept pixels are exactly the input's.
    """
    num_classes = check_steerable(model)
    images = _check_images(model, images)
    fill = _check_mask(mask, images)
    if not (isinstance(jumps, int) and not isinstance(jumps, bool) and 0 <= jumps <= MAX_JUMPS):
        raise ValueError(f"jumps must be a whole number in [0, {MAX_JUMPS}], got {jumps!r}")
    labels = resolve_classes(num_classes, images.shape[0], classes, seed)
    model.eval()
    with torch.inference_mode():
        out = inpaint_loop(guided_model_for(model, labels, guidance, precision, guidance_interval), schedule, images, fill,
                           INPAINT_SAMPLER, INPAINT_SAMPLER.timesteps(schedule.num_timesteps, num_steps),
                           torch.Generator().manual_seed(seed), jumps, fresh_known_noise=True,
                           device=_model_device(model), callback=callback)
    return torch.where(fill, out.float().cpu(), images)


# ---- one noise, many tissues --------------------------------------------------------------------------------------
def _noise(model: nn.Module, n: int, seed: int) -> torch.Tensor:
    """One x_T drawn from ``seed`` (as ``pipeline.generate`` draws its first image), repeated n times: (n, C, H, W)."""
    cfg = model.config
    x_T = torch.randn((1, cfg.in_channels, cfg.image_size, cfg.image_size), generator=torch.Generator().manual_seed(seed))
    return x_T.expand(n, -1, -1, -1).contiguous()


def tissue_weights(num_classes: int, tissue_a: int | str, tissue_b: int | str, weights: Sequence[float]) -> torch.Tensor:
    """(W, K+1) class weights that go from tissue a (weight 0) to tissue b (weight 1): row i is (1 − wᵢ) e_a + wᵢ e_b."""
    w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    if w.numel() < 1 or not bool(torch.isfinite(w).all()) or float(w.min()) < 0 or float(w.max()) > 1:
        raise ValueError(f"weights must be one or more finite numbers in [0, 1] (0 = tissue a, 1 = tissue b), "
                         f"got {list(weights)!r}")
    a, b = (int(resolve_classes(num_classes, 1, tissue)[0]) for tissue in (tissue_a, tissue_b))
    out = torch.zeros(w.numel(), num_classes + 1, dtype=torch.float64)
    out[:, a] += 1 - w
    out[:, b] += w
    return out.float()


def morph(model: nn.Module, schedule: NoiseSchedule, tissue_a: int | str, tissue_b: int | str,
          weights: Sequence[float], seed: int = 0, guidance: float = 1.0, num_steps: int | None = None, *,
          guidance_interval: Interval = None, callback: Callback | None = None,
          precision: Precision = "auto") -> torch.Tensor:
    """The same starting noise rendered between two tissues, one image per weight (0 = tissue a, 1 = tissue b): the
    network is given the mix (1 − w) e_a + w e_b of their class embeddings (``tissue_weights``), and guidance pushes
    away from "no class" towards that mix. A weight of 0 or 1 gives exactly what plain conditional sampling of that
    tissue from the same noise gives (``sample_from`` with its index). Returns (W, C, H, W) in [-1, 1] on CPU."""
    num_classes = check_steerable(model)
    labels = tissue_weights(num_classes, tissue_a, tissue_b, weights)
    return sample_from(model, schedule, _noise(model, len(labels), seed), labels, guidance, num_steps,
                       guidance_interval=guidance_interval, callback=callback, precision=precision)


def same_noise(model: nn.Module, schedule: NoiseSchedule, seed: int = 0, guidance: float = 1.0,
               num_steps: int | None = None, *, guidance_interval: Interval = None, callback: Callback | None = None,
               precision: Precision = "auto") -> torch.Tensor:
    """One x_T (drawn from ``seed``) sampled as each of the K tissues: (K, C, H, W) in [-1, 1] on CPU, row k tissue k.
    What the tissue label changes, and what the noise already decided."""
    num_classes = check_steerable(model)
    return sample_from(model, schedule, _noise(model, num_classes, seed), torch.arange(num_classes), guidance,
                       num_steps, guidance_interval=guidance_interval, callback=callback, precision=precision)
