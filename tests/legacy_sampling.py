"""The sampling loop as it was before each sampler owned its steps (ddpm 2026-11-26, samplers.sample_progressive),
kept verbatim as the reference that tests/test_sampler_registry.py holds the generic loop to, bit for bit."""
from __future__ import annotations

import torch

from ddpm.samplers import _maybe_clip, ddim_step, ddpm_step, dpmpp_2m_step, trailing_timesteps
from ddpm.schedules import model_output_to_x0_eps


def legacy_sample(model, schedule, shape, sampler="dpmpp", num_steps=None, *, eta=0.0, clip_sample=True,
                  generator=None, noise=None, device="cpu") -> torch.Tensor:
    T = schedule.num_timesteps
    if sampler == "ddpm":
        timesteps = list(range(T - 1, -1, -1))
    else:
        timesteps = trailing_timesteps(T, min(20, T) if num_steps is None else num_steps)

    def randn() -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)

    x = noise.to(device) if noise is not None else randn()
    prev_x0, last_t = None, None
    n = len(timesteps)
    for i, t in enumerate(timesteps):
        prev_t = timesteps[i + 1] if i + 1 < n else -1
        out = model(x, torch.full((shape[0],), t, device=device, dtype=torch.long)).float()
        if sampler == "ddpm":
            x, x0 = ddpm_step(schedule, out, t, x, randn() if t > 0 else None, clip_sample)
        elif sampler == "ddim":
            x, x0 = ddim_step(schedule, out, t, prev_t, x, eta, randn() if eta > 0 else None, clip_sample)
        else:
            tt = torch.full((shape[0],), t, dtype=torch.long)
            x0 = model_output_to_x0_eps(schedule, out, x, tt)[0]
            x0 = _maybe_clip(x0, clip_sample)
            x = dpmpp_2m_step(schedule, x0, prev_x0, t, prev_t, last_t, x)
            prev_x0, last_t = x0, t
    return x
