"""The glue between a model and a sampler (ddpm.pipeline) that pages share."""
from __future__ import annotations

import pytest

from ddpm.pipeline import sampler_steps
from ddpm.schedules import NoiseSchedule, ScheduleConfig

SCHEDULE = NoiseSchedule.from_config(ScheduleConfig(num_timesteps=20))


@pytest.mark.parametrize("sampler, steps, expected", [
    ("ddpm", 5, None),  # DDPM always runs all T steps, whatever the slider says
    ("ddim", 5, 5), ("dpmpp", 50, 20), ("dpmpp", 0, 1), ("ddim", 20, 20),
])
def test_a_step_setting_becomes_the_samplers_steps_within_the_schedule(sampler, steps, expected):
    assert sampler_steps(SCHEDULE, sampler, steps) == expected
