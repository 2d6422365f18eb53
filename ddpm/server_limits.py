"""What a visitor may ask of the app's server, read from the environment.

Streamlit's config.toml accepts no custom keys, so the limits are environment variables:
``DDPM_HOSTED`` (1/0; on by default on a Hugging Face Space, where ``SPACE_ID`` is set),
``DDPM_MAX_STEPS``, ``DDPM_MAX_BATCH``, ``DDPM_MAX_MINUTES``, ``DDPM_JOB_TIMEOUT_S`` and
``DDPM_MAX_EVAL`` (generated patches per on-demand evaluation).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Mapping

from .presets import PRESETS


def _env_number(env: Mapping[str, str], name: str, default, cast):
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} must be a positive number") from None
    if value <= 0:
        raise ValueError(f"environment variable {name}={raw!r} must be a positive number")
    return value


def is_hosted(env: Mapping[str, str] | None = None) -> bool:
    """``DDPM_HOSTED`` if set, else whether this is a Hugging Face Space (``SPACE_ID`` set)."""
    env = os.environ if env is None else env
    return env.get("DDPM_HOSTED", "1" if env.get("SPACE_ID") else "0").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class ServerLimits:
    """What a visitor may ask of the server. ``from_env`` reads the hosted caps."""

    hosted: bool = False
    max_steps: int = 100_000
    max_batch: int = 1024
    max_minutes: float | None = None
    heartbeat_timeout_s: float = 90.0
    presets: tuple[str, ...] = tuple(PRESETS)
    max_eval_samples: int = 2000  # generated patches per on-demand evaluation (Compare page)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ServerLimits":
        env = os.environ if env is None else env
        base = HOSTED_LIMITS if is_hosted(env) else cls()
        return replace(base,
                       max_steps=_env_number(env, "DDPM_MAX_STEPS", base.max_steps, int),
                       max_batch=_env_number(env, "DDPM_MAX_BATCH", base.max_batch, int),
                       max_minutes=_env_number(env, "DDPM_MAX_MINUTES", base.max_minutes, float),
                       heartbeat_timeout_s=_env_number(env, "DDPM_JOB_TIMEOUT_S", base.heartbeat_timeout_s, float),
                       max_eval_samples=_env_number(env, "DDPM_MAX_EVAL", base.max_eval_samples, int))


#: The caps on a shared 2-core Space: a few minutes of training, the two CPU-sized presets.
HOSTED_LIMITS = ServerLimits(hosted=True, max_steps=500, max_batch=64, max_minutes=15.0, presets=("seed", "small"),
                             max_eval_samples=300)
