"""Guidance in a band of noise levels (Kynkäänniemi et al. 2024): the scale acts only at timesteps lo ≤ t ≤ hi,
the plain conditional prediction elsewhere (ddpm.samplers.guided_model, SamplingSpec.guidance_interval)."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from ddpm.cli_options import add_sampling_options, sampling_settings
from ddpm.pipeline import generate, trajectory
from ddpm.samplers import SAMPLERS, guidance_applies, guided_model, sample_progressive
from ddpm.sampling_spec import EVERY_STEP, SamplingSpec, SamplingSpecError
from ddpm.schedules import NoiseSchedule, ScheduleConfig
from ddpm.serving.cost import request_cost
from ddpm.unet import UNetConfig, build_unet

T = 20
SCHEDULE = NoiseSchedule.from_config(ScheduleConfig(num_timesteps=T))
NULL = 9
STEPS = {"ddpm": None, "ddim": 7, "dpmpp": 7}


class RecordingModel:
    """A stand-in conditional network whose output depends on x, t and the label; records (batch, t) per call."""

    def __init__(self):
        self.calls: list[tuple[int, int]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.shape[0], int(t[0])))
        return 0.5 * x * (1 + 0.1 * labels.float())[:, None, None, None] + 0.01 * t.float()[:, None, None, None]


@pytest.fixture(scope="module")
def tiny_conditional():
    torch.manual_seed(0)
    net = build_unet(UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, norm_groups=4,
                                attention_resolutions=(), time_embed_dim=16, num_classes=NULL)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the class embedding too: guidance changes the images
    return net


def run(spec: SamplingSpec, sampler: str, model=None, labels=torch.tensor([1, 4, 7]), image=(1, 4, 4)):
    model = model or RecordingModel()
    fn = guided_model(model, labels, spec.guidance, NULL, spec.guidance_interval)
    steps = list(sample_progressive(fn, SCHEDULE, (len(labels), *image), sampler, spec.steps,
                                    generator=torch.Generator().manual_seed(0)))
    return steps[-1].prev_sample, getattr(model, "calls", None)


# ---- the band's semantics ----------------------------------------------------------------------------
def test_guidance_applies_inside_the_band_ends_included_and_everywhere_without_one():
    assert [guidance_applies(t, (3, 5)) for t in range(2, 7)] == [False, True, True, True, False]
    assert all(guidance_applies(t, None) for t in range(T))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_band_covering_every_step_equals_guidance_at_every_step_exactly(sampler):
    everywhere = SamplingSpec(sampler, STEPS[sampler], 2.5)
    banded = everywhere.replace(guidance_interval=(0, T - 1))
    assert torch.equal(run(banded, sampler)[0], run(everywhere, sampler)[0])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_an_empty_band_equals_guidance_1_exactly(sampler):
    spec = SamplingSpec(sampler, STEPS[sampler], 3.0, guidance_interval=(T + 50, T + 60))  # no step falls in it
    plain = SamplingSpec(sampler, STEPS[sampler], 1.0)
    out, calls = run(spec, sampler)
    assert torch.equal(out, run(plain, sampler)[0])
    assert {b for b, _ in calls} == {3}  # never a batch of 2B
    assert spec.num_guided_calls(T) == 0


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_inside_the_band_a_step_runs_a_batch_of_2b_and_outside_one_of_b(sampler):
    spec = SamplingSpec(sampler, STEPS[sampler], 2.0, guidance_interval=(5, 12))
    _, calls = run(spec, sampler)
    assert calls == [(6 if 5 <= t <= 12 else 3, t) for t in spec.timesteps(T)]
    assert spec.num_guided_calls(T) == sum(b == 6 for b, _ in calls) > 0
    assert spec.num_model_calls(T) == len(calls)


def test_on_a_real_network_a_partial_band_gives_images_between_no_guidance_and_guidance_everywhere(tiny_conditional):
    labels, image = torch.tensor([2, 6]), (3, 28, 28)
    spec = SamplingSpec("dpmpp", 6, 3.0)
    with torch.inference_mode():
        full = run(spec, "dpmpp", tiny_conditional, labels, image)[0]
        band = run(spec.replace(guidance_interval=(5, 14)), "dpmpp", tiny_conditional, labels, image)[0]
        plain = run(spec.replace(guidance=1.0), "dpmpp", tiny_conditional, labels, image)[0]
    assert not torch.equal(band, full) and not torch.equal(band, plain)


def test_generate_and_trajectory_apply_the_band(tiny_conditional):
    everywhere = SamplingSpec("dpmpp", 5, 2.0)
    with torch.inference_mode():
        a = generate(tiny_conditional, SCHEDULE, 2, everywhere, classes=[1, 3], precision="fp32")
        b = generate(tiny_conditional, SCHEDULE, 2, everywhere.replace(guidance_interval=(0, T - 1)), classes=[1, 3],
                     precision="fp32")
        c = generate(tiny_conditional, SCHEDULE, 2, everywhere.replace(guidance_interval=(0, 3)), classes=[1, 3],
                     precision="fp32")
        traj = trajectory(tiny_conditional, SCHEDULE, 2, everywhere.replace(guidance_interval=(0, 3)), classes=[1, 3],
                          precision="fp32")
    assert torch.equal(a, b) and not torch.equal(a, c)
    from ddpm.data import to_hwc_numpy
    assert (traj.samples[-1] == to_hwc_numpy(c)).all()


# ---- the spec ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("band", [(5, 3), (-1, 4), (0, 1000), (1.5, 4), (True, 3), "0 10", (1, 2, 3), [float("nan"), 3]])
def test_a_bad_band_is_refused_naming_the_field(band):
    with pytest.raises(SamplingSpecError, match="guidance_interval"):
        SamplingSpec(guidance=2.0, guidance_interval=band)


def test_a_band_round_trips_through_json_and_a_config_may_recommend_it():
    spec = SamplingSpec("dpmpp", 20, 2.5, guidance_interval=(30, 130))
    again = SamplingSpec(**json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.guidance_interval == (30, 130)
    config = {"schedule": {"num_timesteps": 200}, "sampling": {"guidance": 2.5, "guidance_interval": [30, 130]}}
    assert SamplingSpec.recommended(config).guidance_interval == (30, 130)
    with pytest.raises(SamplingSpecError, match="T − 1 = 199"):
        SamplingSpec.recommended({**config, "sampling": {"guidance": 2.5, "guidance_interval": [30, 200]}})
    assert "for t in [30, 130]" in spec.describe()


def test_replace_keeps_the_band_unless_asked_and_every_step_removes_it():
    spec = SamplingSpec(guidance=2.5, guidance_interval=(30, 130))
    assert spec.replace(guidance=2.0).guidance_interval == (30, 130)
    assert spec.replace(guidance_interval=EVERY_STEP).guidance_interval is None
    assert spec.replace(guidance_interval=(10, 20)).guidance_interval == (10, 20)


# ---- the cost follows the band ------------------------------------------------------------------------------
def test_a_banded_request_costs_one_pass_outside_the_band_and_two_inside():
    cfg = UNetConfig(num_classes=9)
    everywhere = SamplingSpec("dpmpp", 20, 2.5)
    banded = everywhere.replace(guidance_interval=(30, 130))
    plain = everywhere.replace(guidance=1.0)
    full, band, one = (request_cost(cfg, s, 16, 200) for s in (everywhere, banded, plain))
    inside = banded.num_guided_calls(200)
    assert 0 < inside < 20 and band.guided_passes == inside and full.guided_passes == 20
    per_pass = one.network_flops / 20
    assert band.network_flops == pytest.approx(per_pass * (20 + inside))
    assert full.network_flops == pytest.approx(2 * one.network_flops)
    assert f"{inside} of the steps twice for guidance" in band.describe()


# ---- the CLI ---------------------------------------------------------------------------------------------------
class FakeCheckpoint:
    source = "a test checkpoint"

    def __init__(self, num_classes=9, sampling=SamplingSpec(guidance=2.5, guidance_interval=(30, 130))):
        self.model_config = UNetConfig(num_classes=num_classes)
        self.schedule = NoiseSchedule.from_config(ScheduleConfig(num_timesteps=200))
        self.sampling = sampling


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_sampling_options(p)
    return p.parse_args(argv)


def test_the_cli_takes_the_checkpoints_band_or_the_one_given():
    assert sampling_settings(parse(), FakeCheckpoint(), 4, 0)[0].guidance_interval == (30, 130)
    assert sampling_settings(parse("--guidance-interval", "20", "160"), FakeCheckpoint(), 4, 0)[0].guidance_interval == (20, 160)
    assert sampling_settings(parse("--guidance-interval", "0", "199"), FakeCheckpoint(), 4, 0)[0].num_guided_calls(200) == 20


@pytest.mark.parametrize("argv, message", [(("--guidance-interval", "50", "10"), "0 ≤ LO ≤ HI ≤ T − 1 = 199"),
                                           (("--guidance-interval", "10", "200"), "0 ≤ LO ≤ HI ≤ T − 1 = 199")])
def test_the_cli_refuses_a_band_outside_the_models_timesteps(argv, message):
    with pytest.raises(ValueError, match=message):
        sampling_settings(parse(*argv), FakeCheckpoint(), 4, 0)


@pytest.mark.parametrize("value", ["-1", "1000", "nan", "x"])
def test_the_cli_refuses_a_band_end_that_is_not_a_timestep(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse("--guidance-interval", "0", value)
    assert exit_.value.code == 2 and "--guidance-interval" in capsys.readouterr().err


def test_the_cli_refuses_a_band_for_an_unconditional_model():
    with pytest.raises(ValueError, match="unconditional.*--guidance-interval"):
        sampling_settings(parse("--guidance-interval", "0", "10"), FakeCheckpoint(None, SamplingSpec()), 4, 0)
