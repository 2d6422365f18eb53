"""What a visitor may ask of the app's server, read from the environment.

Every limit is bounded wherever the app runs (limits fail closed): looser on a developer's own
machine, strict when hosted.  Streamlit's config.toml accepts no custom keys, so they are
environment variables: ``DDPM_HOSTED`` (1/0; on by default on a Hugging Face Space, where
``SPACE_ID`` is set), ``DDPM_MAX_STEPS``, ``DDPM_MAX_BATCH``, ``DDPM_MAX_MINUTES`` (a run's time cap:
the training slot is held no longer), ``DDPM_JOB_TIMEOUT_S`` (a run whose page stopped polling ends),
``DDPM_MAX_EVAL`` (generated patches per on-demand evaluation), ``DDPM_MAX_COMPUTE`` (sampling worker
processes: requests computing at once; more wait in line), ``DDPM_KEEP_RUNS_MIN`` (how long a
finished run's folder is kept for its download), ``DDPM_MAX_REQUEST_GFLOP`` (the most one sampling run,
trajectory or evaluation may cost, counted from the model's config: ``ddpm.serving.cost``) and
``DDPM_REQUEST_DEADLINE_S`` (the longest one may run, whatever its cost says).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Mapping

from ..presets import PRESETS


def _env_number(env: Mapping[str, str], name: str, default, cast):
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} must be a positive number") from None
    if not 0 < value < math.inf:
        raise ValueError(f"environment variable {name}={raw!r} must be a positive number")
    return value


def is_hosted(env: Mapping[str, str] | None = None) -> bool:
    """``DDPM_HOSTED`` if set, else whether this is a Hugging Face Space (``SPACE_ID`` set)."""
    env = os.environ if env is None else env
    return env.get("DDPM_HOSTED", "1" if env.get("SPACE_ID") else "0").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class ServerLimits:
    """What a visitor may ask of the server; the defaults are a developer's machine, ``HOSTED_LIMITS`` a Space."""

    hosted: bool = False
    max_steps: int = 20_000
    max_batch: int = 256
    max_minutes: float = 120.0  # a run's time cap, and so the longest anyone holds the training slot
    heartbeat_timeout_s: float = 90.0
    presets: tuple[str, ...] = tuple(PRESETS)
    max_eval_samples: int = 2000  # generated patches per on-demand evaluation (Compare page)
    max_compute: int = 2  # sampling worker processes: requests computing at once; more wait in line
    keep_runs_minutes: float = 60.0  # a finished or abandoned run's folder is deleted after this
    max_request_gflop: float = 100_000.0  # one request's cost (ddpm.serving.cost): the default model's 2,000-patch evaluation is 58,000
    request_deadline_s: float = 3600.0  # the most any one request runs, whatever its cost

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ServerLimits":
        env = os.environ if env is None else env
        base = HOSTED_LIMITS if is_hosted(env) else cls()
        return replace(base,
                       max_steps=_env_number(env, "DDPM_MAX_STEPS", base.max_steps, int),
                       max_batch=_env_number(env, "DDPM_MAX_BATCH", base.max_batch, int),
                       max_minutes=_env_number(env, "DDPM_MAX_MINUTES", base.max_minutes, float),
                       heartbeat_timeout_s=_env_number(env, "DDPM_JOB_TIMEOUT_S", base.heartbeat_timeout_s, float),
                       max_eval_samples=_env_number(env, "DDPM_MAX_EVAL", base.max_eval_samples, int),
                       max_compute=_env_number(env, "DDPM_MAX_COMPUTE", base.max_compute, int),
                       keep_runs_minutes=_env_number(env, "DDPM_KEEP_RUNS_MIN", base.keep_runs_minutes, float),
                       max_request_gflop=_env_number(env, "DDPM_MAX_REQUEST_GFLOP", base.max_request_gflop, float),
                       request_deadline_s=_env_number(env, "DDPM_REQUEST_DEADLINE_S", base.request_deadline_s, float))


#: The caps on a shared 2-core Space: a few minutes of training, the two CPU-sized presets, two one-thread sampling workers.
HOSTED_LIMITS = ServerLimits(hosted=True, max_steps=500, max_batch=64, max_minutes=15.0, presets=("seed", "small"),
                             max_eval_samples=300, max_compute=2, keep_runs_minutes=30.0, max_request_gflop=12_000.0,
                             request_deadline_s=900.0)
