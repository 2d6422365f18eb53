"""Reverse-process samplers: DDPM ancestral, DDIM, DPM-Solver++(2M).

The math of each update is a pure ``*_step`` function (the equation in its docstring) that turns one model
output into the next sample and returns x̂₀ "to preview progress", as diffusers' schedulers do. Each sampler
is a small class that owns its steps (its timesteps, its state between steps, its noise draws) and is
registered by name in ``SAMPLERS``; ``sample_progressive`` is one generic loop over any of them, yielding a
``SamplerStep`` per network evaluation. The final image, the progress bar, the app's animation and the
evaluation all consume that one generator.

Few-step samplers use "trailing" timestep spacing (Lin et al. 2024, §3.4), so their first step is
always at t = T-1: the step where a zero-terminal-SNR schedule has x_T = pure noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar, Iterator, Sequence

import torch

from .schedules import NoiseSchedule, eps_from_x0, extract, model_output_to_x0_eps

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DEFAULT_SAMPLER = "dpmpp"  # the sampler and step count used when nothing else is asked (ddpm.sampling_spec)
DEFAULT_STEPS = 20


@dataclass(frozen=True)
class SamplerStep:
    """One reverse step: ``t`` is the timestep just denoised, ``prev_sample`` the new (less noisy)
    sample, ``pred_original_sample`` the model's x̂₀ at ``t``. Tensors are (B, C, H, W)."""

    index: int
    num_steps: int
    t: int
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def classifier_free_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """uncond + s · (cond − uncond) (Ho & Salimans 2022, as in diffusers): s = 0 unconditional, s = 1 conditional."""
    return uncond + scale * (cond - uncond)


def guidance_applies(t: int, interval: tuple[int, int] | None) -> bool:
    """Whether guidance acts at timestep ``t``: at every step without a band, else for lo ≤ t ≤ hi.

    Guidance in a limited interval (Kynkäänniemi et al. 2024): at high noise it pulls every sample toward the
    class's mode (less variety), at low noise it only sharpens what is already decided; in between it helps most.
    """
    return interval is None or interval[0] <= t <= interval[1]


def guided_model(model: Callable[..., torch.Tensor], class_labels: torch.Tensor | None, scale: float,
                 num_classes: int | None, interval: tuple[int, int] | None = None) -> ModelFn:
    """The ``ModelFn`` a sampler calls for a class-conditional network under classifier-free guidance.

    ``model(x, t, labels)`` with labels (B,) in [0, K], K = ``num_classes`` meaning "no class", or (B, K+1)
    weights over the class embeddings (a mix of tissues, ``unet.ClassEmbedding``). ``class_labels=None`` gives
    the plain ``model(x, t)``. For s ∉ {0, 1} the conditional and unconditional predictions come from one
    forward pass over a batch of 2B, not two passes. With an ``interval`` (lo, hi) the scale applies only at
    timesteps lo ≤ t ≤ hi (``guidance_applies``); elsewhere the step takes the plain conditional prediction, one
    pass of batch B.
    """
    if class_labels is None:
        return model
    if num_classes is None:
        raise ValueError("this model is unconditional: it takes no tissue class (leave classes unset)")
    if scale < 0:
        raise ValueError(f"guidance scale must be ≥ 0, got {scale}")

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # t: (B,), one timestep for the whole batch
        labels = class_labels.to(x.device)
        s = scale if guidance_applies(int(t[0]), interval) else 1.0
        if s == 1.0:
            return model(x, t, labels)
        if s == 0.0:
            return model(x, t, no_class_like(labels, num_classes))
        out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, no_class_like(labels, num_classes)]))
        cond, uncond = out.float().chunk(2)
        return classifier_free_guidance(cond, uncond, s)

    return fn


def no_class_like(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """"No class" for every image, in the form of ``labels``: index K for (B,) indices, the one-hot of K for (B, K+1)
    weights."""
    if labels.is_floating_point():
        none = torch.zeros_like(labels)
        none[:, num_classes] = 1.0
        return none
    return torch.full_like(labels, num_classes)


def trailing_timesteps(num_timesteps: int, num_steps: int) -> list[int]:
    """``num_steps`` timesteps from T-1 down, evenly spaced (diffusers' ``timestep_spacing='trailing'``)."""
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"steps must be between 1 and T = {num_timesteps}, got {num_steps}")
    ratio = num_timesteps / num_steps
    ts = [int(round(num_timesteps - i * ratio)) - 1 for i in range(num_steps)]
    return sorted(set(ts), reverse=True)


def _maybe_clip(x0: torch.Tensor, clip: bool) -> torch.Tensor:
    return x0.clamp(-1, 1) if clip else x0


def ddpm_step(
    schedule: NoiseSchedule,
    model_output: torch.Tensor,
    t: int,
    sample: torch.Tensor,
    noise: torch.Tensor | None,
    clip_sample: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_{t-1} ~ q(x_{t-1} | x_t, x̂_0) with the posterior variance β̃_t (Ho et al. Alg. 2, σ² = β̃).

    Returns (prev_sample, pred_original_sample). ``noise`` is ignored at t = 0.
    """
    tt = torch.full((sample.shape[0],), t, dtype=torch.long)
    x0, _ = model_output_to_x0_eps(schedule, model_output, sample, tt)
    x0 = _maybe_clip(x0, clip_sample)
    mean = extract(schedule.posterior_mean_coef1, tt, sample) * x0 + extract(schedule.posterior_mean_coef2, tt, sample) * sample
    if t == 0:
        return mean, x0
    std = extract(schedule.posterior_variance.clamp(min=1e-20).sqrt(), tt, sample)
    return mean + std * noise, x0


def ddim_step(
    schedule: NoiseSchedule,
    model_output: torch.Tensor,
    t: int,
    prev_t: int,
    sample: torch.Tensor,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    clip_sample: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_{t'} = √ᾱ_{t'} x̂_0 + √(1-ᾱ_{t'} - σ²) ε̂ + σ z, σ = η √(β̃_{t→t'}) (Song et al. 2021, eq. 12).

    ``prev_t = -1`` means the data (ᾱ = 1). ε̂ is recomputed from the clipped x̂_0, as in
    improved-diffusion, so clipping keeps the update consistent.
    """
    tt = torch.full((sample.shape[0],), t, dtype=torch.long)
    x0, eps = model_output_to_x0_eps(schedule, model_output, sample, tt)
    if clip_sample:
        x0 = x0.clamp(-1, 1)
        eps = eps_from_x0(schedule, sample, tt, x0)
    a_t = float(schedule.alphas_cumprod[t])
    a_prev = 1.0 if prev_t < 0 else float(schedule.alphas_cumprod[prev_t])
    var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    sigma = eta * math.sqrt(max(var, 0.0))
    prev = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
    if sigma > 0:
        prev = prev + sigma * noise
    return prev, x0


def dpmpp_2m_step(
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    prev_x0: torch.Tensor | None,
    t: int,
    prev_t: int,
    last_t: int | None,
    sample: torch.Tensor,
) -> torch.Tensor:
    """One DPM-Solver++(2M) update from t to prev_t (Lu et al. 2022, Alg. 2, midpoint form).

    With α = √ᾱ, σ = √(1-ᾱ), λ = log(α/σ), h = λ_{t'} - λ_t:
        x_{t'} = (σ_{t'}/σ_t) x_t + α_{t'} (1 - e^{-h}) D,  D = x̂₀ + (x̂₀ - x̂₀_prev)/(2 r), r = h_prev / h.
    e^{-h} is computed as a ratio, so α_t = 0 (pure-noise start) and σ_{t'} = 0 (final step) are exact.
    The step is first order when there is no previous x̂₀, when it ends at the data (``prev_t = -1``),
    or when a λ is infinite.
    """
    a_t, s_t = _alpha_sigma(schedule, t)
    a_n, s_n = _alpha_sigma(schedule, prev_t)
    exp_neg_h = (s_n * a_t) / (a_n * s_t)
    d = x0
    if prev_x0 is not None and prev_t >= 0 and last_t is not None:
        a_l, s_l = _alpha_sigma(schedule, last_t)
        if min(a_t, a_l, s_n) > 0:
            h = math.log(a_n / s_n) - math.log(a_t / s_t)
            h_prev = math.log(a_t / s_t) - math.log(a_l / s_l)
            d = x0 + (x0 - prev_x0) * (h / (2 * h_prev))
    return (s_n / s_t) * sample + a_n * (1 - exp_neg_h) * d


def _alpha_sigma(schedule: NoiseSchedule, t: int) -> tuple[float, float]:
    if t < 0:
        return 1.0, 0.0
    a = float(schedule.alphas_cumprod[t])
    return math.sqrt(a), math.sqrt(1 - a)


# ---- each sampler owns its steps --------------------------------------------------------------------
@dataclass(frozen=True)
class Sampler:
    """One reverse-process algorithm: which timesteps it visits and how one model output becomes the next sample.

    A sampler is plain, immutable settings (``clip_sample`` and its own, such as DDIM's η); what changes from step
    to step travels in ``state``, which ``init_state`` makes and ``step`` returns anew. ``step`` draws its noise,
    if any, from ``randn()`` (a (B, C, H, W) standard normal), so the loop's random stream is the sampler's to use.
    A new sampler is one subclass added to ``SAMPLERS``; ``sample_progressive`` and everything built on it
    (step counts, the CLI's choices, the app's picker) follow from that.
    """

    name: ClassVar[str]
    label: ClassVar[str]  # for people: the app's picker and the CLI's help
    every_timestep: ClassVar[bool] = False  # True: the sampler always visits all T timesteps (no step count)
    clip_sample: bool = True

    def timesteps(self, num_timesteps: int, num_steps: int | None = None) -> list[int]:
        """The timesteps denoised, in order; ``num_steps=None`` is ``DEFAULT_STEPS`` (at most T)."""
        return trailing_timesteps(num_timesteps, min(DEFAULT_STEPS, num_timesteps) if num_steps is None else num_steps)

    def init_state(self) -> Any:
        return None

    def step(self, schedule: NoiseSchedule, model_output: torch.Tensor, t: int, prev_t: int, sample: torch.Tensor,
             state: Any, randn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """(prev_sample at ``prev_t``, pred_original_sample, new state); ``prev_t = -1`` is the data."""
        raise NotImplementedError


@dataclass(frozen=True)
class DDPM(Sampler):
    """Ancestral sampling over every timestep (Ho et al. 2020, Alg. 2)."""

    name: ClassVar[str] = "ddpm"
    label: ClassVar[str] = "DDPM (ancestral, all T steps)"
    every_timestep: ClassVar[bool] = True

    def timesteps(self, num_timesteps: int, num_steps: int | None = None) -> list[int]:
        if num_steps not in (None, num_timesteps):
            raise ValueError(f"DDPM ancestral sampling uses all T = {num_timesteps} steps; use 'ddim' or 'dpmpp' for fewer")
        return list(range(num_timesteps - 1, -1, -1))

    def step(self, schedule, model_output, t, prev_t, sample, state, randn):
        prev, x0 = ddpm_step(schedule, model_output, t, sample, randn() if t > 0 else None, self.clip_sample)
        return prev, x0, state


@dataclass(frozen=True)
class DDIM(Sampler):
    """DDIM over trailing timesteps (Song et al. 2021); η = 0 deterministic, η = 1 ancestral."""

    name: ClassVar[str] = "ddim"
    label: ClassVar[str] = "DDIM (deterministic)"
    eta: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")

    def step(self, schedule, model_output, t, prev_t, sample, state, randn):
        noise = randn() if self.eta > 0 else None
        prev, x0 = ddim_step(schedule, model_output, t, prev_t, sample, self.eta, noise, self.clip_sample)
        return prev, x0, state


@dataclass(frozen=True)
class DPMSolverPP2M(Sampler):
    """DPM-Solver++(2M) over trailing timesteps (Lu et al. 2022); its state is the previous x̂₀ and its t."""

    name: ClassVar[str] = "dpmpp"
    label: ClassVar[str] = "DPM-Solver++ (2M)"

    def init_state(self) -> tuple[torch.Tensor | None, int | None]:
        return None, None  # (prev_x0, last_t)

    def step(self, schedule, model_output, t, prev_t, sample, state, randn):
        prev_x0, last_t = state
        tt = torch.full((sample.shape[0],), t, dtype=torch.long)
        x0 = _maybe_clip(model_output_to_x0_eps(schedule, model_output, sample, tt)[0], self.clip_sample)
        return dpmpp_2m_step(schedule, x0, prev_x0, t, prev_t, last_t, sample), x0, (x0, t)


#: The registry: name -> sampler class. The CLI's --sampler choices and the app's picker are its keys.
SAMPLERS: dict[str, type[Sampler]] = {cls.name: cls for cls in (DDPM, DDIM, DPMSolverPP2M)}


def get_sampler(name: str, *, eta: float = 0.0, clip_sample: bool = True) -> Sampler:
    """The sampler called ``name`` with these settings; η belongs to the samplers that have it (DDIM): any other
    refuses η ≠ 0 rather than ignore it."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {tuple(SAMPLERS)}, got {name!r}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    cls = SAMPLERS[name]
    if _has_eta(cls):
        return cls(clip_sample=clip_sample, eta=eta)
    if eta != 0.0:
        owners = "/".join(n.upper() for n, c in SAMPLERS.items() if _has_eta(c))
        raise ValueError(f"eta is {owners}'s setting; {name!r} has none (leave eta at 0)")
    return cls(clip_sample=clip_sample)


def _has_eta(cls: type[Sampler]) -> bool:
    return "eta" in {f.name for f in fields(cls)}


def sample_progressive(
    model: ModelFn,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    sampler: str | Sampler = DEFAULT_SAMPLER,
    num_steps: int | None = None,
    *,
    eta: float = 0.0,
    clip_sample: bool = True,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    timesteps: Sequence[int] | None = None,
) -> Iterator[SamplerStep]:
    """Run a sampler from pure noise, yielding one SamplerStep per network evaluation.

    ``model(x_t, t)`` takes (B, C, H, W) and timesteps (B,) and returns the ε or v prediction.
    ``sampler`` is a name in ``SAMPLERS`` (with ``eta`` and ``clip_sample``) or a ``Sampler``; ``num_steps``
    defaults to the sampler's own (all T for DDPM, ``DEFAULT_STEPS`` otherwise).
    ``timesteps`` (decreasing) replaces the sampler's own: ``noise`` is then x at ``timesteps[0]``, which may be
    a partly noised image rather than pure noise (SDEdit starts there, ``editing.sdedit``).
    Random draws come from ``generator`` on the CPU, so a seed gives the same images on any device.
    """
    algo = sampler if isinstance(sampler, Sampler) else get_sampler(sampler, eta=eta, clip_sample=clip_sample)
    timesteps = algo.timesteps(schedule.num_timesteps, num_steps) if timesteps is None else list(timesteps)

    def randn() -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)

    x = noise.to(device) if noise is not None else randn()
    state = algo.init_state()
    n = len(timesteps)
    for i, t in enumerate(timesteps):
        prev_t = timesteps[i + 1] if i + 1 < n else -1
        out = model(x, torch.full((shape[0],), t, device=device, dtype=torch.long)).float()
        x, x0, state = algo.step(schedule, out, t, prev_t, x, state, randn)
        check_finite(x, i, n, t)
        yield SamplerStep(index=i, num_steps=n, t=t, prev_sample=x, pred_original_sample=x0)


class NonFiniteSampleError(FloatingPointError):
    """A sample became NaN or infinite while sampling (a broken network or an extreme setting)."""


def check_finite(x: torch.Tensor, index: int, num_steps: int, t: int) -> None:
    """Refuse to go on once any image of ``x`` (B, C, H, W) holds a NaN or ±inf: it would come out black or
    saturated, and look like a result."""
    bad = ~torch.isfinite(x).flatten(1).all(dim=1)
    if bool(bad.any()):
        raise NonFiniteSampleError(
            f"sampling went non-finite at step {index + 1} of {num_steps} (t = {t}): {int(bad.sum())} of {x.shape[0]} "
            "images hold NaN or infinite values, so no image is returned. The network's weights or the settings "
            "(guidance, steps) are broken; try the shipped model or the recommended settings.")


def sample(model: ModelFn, schedule: NoiseSchedule, shape: tuple[int, ...], sampler: str | Sampler = DEFAULT_SAMPLER,
           num_steps: int | None = None, **kwargs) -> torch.Tensor:
    """The final x_0 of ``sample_progressive`` (same arguments)."""
    step = None
    for step in sample_progressive(model, schedule, shape, sampler, num_steps, **kwargs):
        pass
    return step.prev_sample
