"""Noise schedules and the closed-form Gaussian algebra of diffusion.

Everything here is plain data and pure functions on tensors; nothing is an ``nn.Module``.

Notation (code name -> symbol, Ho et al. 2020; Salimans & Ho 2022 for v):

    betas                  β_t
    alphas                 α_t = 1 - β_t
    alphas_cumprod         ᾱ_t = Π_{s<=t} α_s
    sqrt_alphas_cumprod    √ᾱ_t          (signal level, "α" in DPM-Solver)
    sqrt_one_minus_...     √(1 - ᾱ_t)    (noise level, "σ" in DPM-Solver)
    snr                    ᾱ_t / (1 - ᾱ_t)

Timesteps are indices ``t = 0 … T-1`` as in diffusers: index ``t`` is the paper's step ``t + 1``,
and ``x_0`` (the data) sits "before" index 0.  Schedules are built in float64 and every formula casts
the coefficient to the dtype of the tensor it multiplies.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from .config import ConfigMixin
from .limits import check_schedule_config

ScheduleKind = Literal["linear", "cosine"]
PredictionType = Literal["epsilon", "v_prediction"]
SCHEDULE_KINDS: tuple[str, ...] = ("linear", "cosine")
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class ScheduleConfig(ConfigMixin):
    """Everything that defines the forward process and what the network predicts.

    The defaults are the project's: cosine ᾱ (Nichol & Dhariwal 2021) rescaled to zero terminal SNR
    (Lin et al. 2024), so x_T is exactly pure noise, with v-prediction so that x̂₀ stays defined at
    SNR 0.  The paper's setup is ``ScheduleConfig.paper()``.
    """

    kind: ScheduleKind = "cosine"
    num_timesteps: int = 200
    beta_start: float = 1e-4  # linear only
    beta_end: float = 0.02  # linear only
    cosine_s: float = 0.008  # cosine only
    zero_terminal_snr: bool = True
    prediction_type: PredictionType = "v_prediction"
    config_name = "schedule"

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"schedule kind must be one of {SCHEDULE_KINDS}, got {self.kind!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        check_schedule_config(self)  # T and the β range: the same bounds as a config.json's
        if self.kind == "linear" and not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if self.zero_terminal_snr and self.prediction_type == "epsilon":
            raise ValueError(
                "prediction_type='epsilon' with zero_terminal_snr=True leaves x̂₀ undefined at t = T "
                "(x̂₀ = (x_t - √(1-ᾱ)ε̂)/√ᾱ divides by √ᾱ_T = 0); use prediction_type='v_prediction'"
            )

    @classmethod
    def paper(cls) -> "ScheduleConfig":
        """The tutorial paper's schedule: T = 200, linear β from 1e-4 to 0.02, ε-prediction."""
        return cls(kind="linear", num_timesteps=200, beta_start=1e-4, beta_end=0.02,
                   zero_terminal_snr=False, prediction_type="epsilon")


def linear_betas(num_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """β_t spaced linearly from beta_start to beta_end (Ho et al. 2020). Shape (T,), float64."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def cosine_alphas_cumprod(num_timesteps: int, s: float = 0.008) -> torch.Tensor:
    """ᾱ_t = f(t)/f(0), f(t) = cos²(((t/T + s)/(1 + s))·π/2) (Nichol & Dhariwal 2021, eq. 17).

    Returns ᾱ at indices 1…T of the paper (our 0…T-1), with β clipped to 0.999 as in the paper.
    """
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, dim=0)


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Shift and scale √ᾱ so that √ᾱ_T = 0 and √ᾱ_1 is unchanged (Lin et al. 2024, Algorithm 1)."""
    sqrt_ac = alphas_cumprod.sqrt()
    first, last = sqrt_ac[0].clone(), sqrt_ac[-1].clone()
    sqrt_ac = (sqrt_ac - last) * first / (first - last)
    return sqrt_ac**2


@dataclass(frozen=True)
class NoiseSchedule:
    """The tables derived from a ScheduleConfig (all float64, shape (T,))."""

    config: ScheduleConfig
    betas: torch.Tensor = field(repr=False)
    alphas_cumprod: torch.Tensor = field(repr=False)

    @classmethod
    def from_config(cls, config: ScheduleConfig) -> "NoiseSchedule":
        if config.kind == "linear":
            alphas_cumprod = torch.cumprod(1 - linear_betas(config.num_timesteps, config.beta_start, config.beta_end), 0)
        else:
            alphas_cumprod = cosine_alphas_cumprod(config.num_timesteps, config.cosine_s)
        if config.zero_terminal_snr:
            alphas_cumprod = rescale_zero_terminal_snr(alphas_cumprod)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        betas = 1 - alphas_cumprod / prev
        return cls(config=config, betas=betas, alphas_cumprod=alphas_cumprod)

    @property
    def num_timesteps(self) -> int:
        return self.config.num_timesteps

    @property
    def prediction_type(self) -> str:
        return self.config.prediction_type

    @property
    def alphas(self) -> torch.Tensor:
        return 1 - self.betas

    @property
    def alphas_cumprod_prev(self) -> torch.Tensor:
        """ᾱ_{t-1}, with ᾱ before the first step equal to 1 (x_0 is the data)."""
        return torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])

    @property
    def sqrt_alphas_cumprod(self) -> torch.Tensor:
        return self.alphas_cumprod.sqrt()

    @property
    def sqrt_one_minus_alphas_cumprod(self) -> torch.Tensor:
        return (1 - self.alphas_cumprod).sqrt()

    @property
    def snr(self) -> torch.Tensor:
        """SNR(t) = ᾱ_t / (1 - ᾱ_t)."""
        return self.alphas_cumprod / (1 - self.alphas_cumprod)

    @property
    def terminal_signal(self) -> float:
        """√ᾱ_T: the share of the image still in x_T. 0 means x_T is pure noise."""
        return float(self.alphas_cumprod[-1].sqrt())

    @property
    def terminal_snr(self) -> float:
        return float(self.snr[-1])

    @property
    def posterior_variance(self) -> torch.Tensor:
        """β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t)  (Ho et al. eq. 7)."""
        return self.betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)

    @property
    def posterior_mean_coef1(self) -> torch.Tensor:
        """Coefficient of x_0 in μ̃_t: √ᾱ_{t-1} β_t / (1 - ᾱ_t)."""
        return self.alphas_cumprod_prev.sqrt() * self.betas / (1 - self.alphas_cumprod)

    @property
    def posterior_mean_coef2(self) -> torch.Tensor:
        """Coefficient of x_t in μ̃_t: √α_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t)."""
        return self.alphas.sqrt() * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)


def extract(table: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """table[t] reshaped to broadcast against ``like`` (B, …) and cast to its dtype and device."""
    if not torch.is_tensor(t):
        t = torch.full((like.shape[0],), int(t), dtype=torch.long)
    out = table.to(like.device)[t.to(like.device)].to(like.dtype)
    return out.reshape(-1, *([1] * (like.ndim - 1)))


def q_sample(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε  (Ho et al. eq. 4). x0, noise: (B, C, H, W); t: (B,)."""
    return extract(schedule.sqrt_alphas_cumprod, t, x0) * x0 + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise


def q_sample_from(schedule: NoiseSchedule, x_s: torch.Tensor, s: int, t: int, noise: torch.Tensor) -> torch.Tensor:
    """x_t ~ q(x_t | x_s) for s < t: √(ᾱ_t/ᾱ_s) x_s + √(1 - ᾱ_t/ᾱ_s) ε, the forward process run on from step s
    (s = -1 is the data, where this is ``q_sample``). Going back up a step, as RePaint's resampling does.
    x_s, noise: (B, C, H, W)."""
    if not -1 <= s < t < schedule.num_timesteps:
        raise ValueError(f"need -1 ≤ s < t < T = {schedule.num_timesteps}, got s = {s}, t = {t}")
    a_s = 1.0 if s < 0 else float(schedule.alphas_cumprod[s])
    ratio = float(schedule.alphas_cumprod[t]) / a_s
    return math.sqrt(ratio) * x_s + math.sqrt(max(1.0 - ratio, 0.0)) * noise


def q_posterior_mean_variance(
    schedule: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_{t-1} | x_t, x_0) (Ho et al. eqs. 6-7)."""
    mean = extract(schedule.posterior_mean_coef1, t, x_t) * x0 + extract(schedule.posterior_mean_coef2, t, x_t) * x_t
    return mean, extract(schedule.posterior_variance, t, x_t)


def v_target(schedule: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """v = √ᾱ_t ε - √(1-ᾱ_t) x_0  (Salimans & Ho 2022, §4)."""
    return extract(schedule.sqrt_alphas_cumprod, t, x0) * noise - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * x0


def x0_from_eps(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x̂_0 = (x_t - √(1-ᾱ_t) ε̂) / √ᾱ_t. Undefined where ᾱ_t = 0."""
    return (x_t - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / extract(schedule.sqrt_alphas_cumprod, t, x_t)


def eps_from_x0(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """ε̂ = (x_t - √ᾱ_t x̂_0) / √(1-ᾱ_t)."""
    return (x_t - extract(schedule.sqrt_alphas_cumprod, t, x_t) * x0) / extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t)


def x0_from_v(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """x̂_0 = √ᾱ_t x_t - √(1-ᾱ_t) v̂. Defined at every t, SNR 0 included."""
    return extract(schedule.sqrt_alphas_cumprod, t, x_t) * x_t - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * v


def eps_from_v(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """ε̂ = √(1-ᾱ_t) x_t + √ᾱ_t v̂."""
    return extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t + extract(schedule.sqrt_alphas_cumprod, t, x_t) * v


def model_output_to_x0_eps(
    schedule: NoiseSchedule, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂_0, ε̂) from the network's output under the schedule's prediction type."""
    if schedule.prediction_type == "epsilon":
        return x0_from_eps(schedule, x_t, t, model_output), model_output
    return x0_from_v(schedule, x_t, t, model_output), eps_from_v(schedule, x_t, t, model_output)


def training_target(schedule: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the network is trained to output: ε, or v."""
    return noise if schedule.prediction_type == "epsilon" else v_target(schedule, x0, noise, t)


def min_snr_weight(schedule: NoiseSchedule, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample loss weight of min-SNR-γ (Hang et al. 2023), for the schedule's prediction type.

    ε-loss = SNR·(x̂₀ loss) and v-loss = (SNR+1)·(x̂₀ loss); min-SNR caps that implicit x̂₀ weight at γ:
    ε → min(SNR, γ)/SNR; v → min(SNR+1, γ)/(SNR+1), which keeps weight 1 at SNR 0 so the first
    reverse step from pure noise is still learned.
    """
    snr = schedule.snr.to(torch.float32)[t.cpu()].to(t.device)
    implicit = snr if schedule.prediction_type == "epsilon" else snr + 1
    return implicit.clamp(max=gamma) / implicit
