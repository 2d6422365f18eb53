"""Each sampler owns its steps (ddpm.samplers.SAMPLERS) and one SamplingSpec says how to sample (ddpm.sampling_spec)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from ddpm.checkpoints import SHIPPED_DIR, CheckpointError, load_local, make_config, save_checkpoint
from ddpm.cli_options import SAMPLER_NAMES
from ddpm.pipeline import generate, resolve_classes, trajectory
from ddpm.samplers import (SAMPLERS, NonFiniteSampleError, Sampler, get_sampler, guided_model, sample,
                           sample_progressive)
from ddpm.sampling_spec import MAX_GUIDANCE, SamplingSpec, SamplingSpecError
from ddpm.schedules import NoiseSchedule, ScheduleConfig
from ddpm.unet import UNetConfig, build_unet
from legacy_sampling import legacy_sample

SCHEDULE = NoiseSchedule.from_config(ScheduleConfig(num_timesteps=20))


# ---- the generic loop is the old loop, bit for bit -------------------------------------------------
@pytest.fixture(scope="module")
def shipped_default():
    if not (SHIPPED_DIR / "default").is_dir():
        pytest.skip("no shipped default model")
    return load_local(SHIPPED_DIR / "default")


@pytest.mark.parametrize("sampler, steps, eta", [("ddpm", None, 0.0), ("ddim", 20, 0.0), ("ddim", 10, 0.5),
                                                 ("dpmpp", 20, 0.0), ("dpmpp", 7, 0.0)])
@pytest.mark.parametrize("seed", [0, 3])
def test_the_shipped_default_gives_the_same_images_as_before_the_samplers_owned_their_steps(
        shipped_default, sampler, steps, eta, seed):
    ckpt = shipped_default
    labels = resolve_classes(ckpt.model_config.num_classes, 2, None, seed)
    fn = guided_model(ckpt.model.eval(), labels, 1.5, ckpt.model_config.num_classes)
    shape = (2, 3, 28, 28)
    with torch.inference_mode():
        old = legacy_sample(fn, ckpt.schedule, shape, sampler, steps, eta=eta, generator=torch.Generator().manual_seed(seed))
        new = generate(ckpt.model, ckpt.schedule, 2, SamplingSpec(sampler, steps, 1.5, eta), seed=seed,
                       classes=labels, precision="fp32")
    assert torch.equal(new, old)


# ---- the registry ------------------------------------------------------------------------------------
def test_the_registry_names_every_sampler_and_the_cli_offers_exactly_those():
    assert set(SAMPLERS) == {"ddpm", "ddim", "dpmpp"}
    assert SAMPLER_NAMES == tuple(SAMPLERS)  # the CLI's copy (it must answer --help without torch)
    assert all(cls.name == name and cls.label for name, cls in SAMPLERS.items())


@pytest.mark.parametrize("name, steps, expected", [("ddpm", None, 20), ("ddim", 5, 5), ("dpmpp", 20, 20),
                                                   ("dpmpp", 1, 1)])
def test_the_number_of_network_calls_comes_from_the_samplers_own_timesteps(name, steps, expected):
    spec = SamplingSpec(name, steps)
    assert spec.num_model_calls(20) == expected == len(SAMPLERS[name]().timesteps(20, steps))
    calls = []
    sample(lambda x, t: calls.append(1) or torch.zeros_like(x), SCHEDULE, (1, 1, 2, 2), spec.make_sampler(), spec.steps,
           generator=torch.Generator().manual_seed(0))
    assert len(calls) == expected


def test_a_new_sampler_is_one_class_and_the_generic_loop_runs_it():
    """x0-prediction Euler: jump straight to the predicted x̂₀ noised to the next level (deterministic DDIM, by hand)."""
    @dataclass(frozen=True)
    class ToyEuler(Sampler):
        name: ClassVar[str] = "toy"
        label: ClassVar[str] = "toy"

        def init_state(self) -> int:
            return 0

        def step(self, schedule, model_output, t, prev_t, sample, state, randn):
            x0 = model_output
            a = 1.0 if prev_t < 0 else float(schedule.alphas_cumprod[prev_t])
            return math.sqrt(a) * x0, x0, state + 1

    target = torch.full((1, 1, 2, 2), 0.25)
    steps = list(sample_progressive(lambda x, t: target, SCHEDULE, (1, 1, 2, 2), ToyEuler(), 4,
                                    generator=torch.Generator().manual_seed(0)))
    assert [s.t for s in steps] == [19, 14, 9, 4]
    assert torch.equal(steps[-1].prev_sample, target)


def test_eta_is_ddims_alone():
    assert get_sampler("ddim", eta=0.3).eta == 0.3
    with pytest.raises(ValueError, match="eta is DDIM's setting"):
        get_sampler("dpmpp", eta=0.3)
    with pytest.raises(ValueError, match="DDIM's setting"):
        SamplingSpec("ddpm", None, eta=0.5)


# ---- one sampling spec -------------------------------------------------------------------------------
@pytest.mark.parametrize("fields, message", [
    (dict(guidance=float("nan")), "guidance = nan must be a finite number in"),
    (dict(guidance=float("inf")), "guidance = inf"),
    (dict(guidance=1e9), r"guidance = 1000000000.0 must be a finite number in \[0, 6\]"),
    (dict(guidance=-0.5), "guidance = -0.5"),
    (dict(guidance="2"), "guidance = '2'"),
    (dict(guidance=True), "guidance = True"),
    (dict(sampler="euler"), "sampler = 'euler' must be one of ddpm, ddim, dpmpp"),
    (dict(sampler=["dpmpp"]), "sampler = \\['dpmpp'\\]"),
    (dict(steps=0), r"steps = 0 must be a whole number in \[1, 1000\]"),
    (dict(steps=2.5), "steps = 2.5"),
    (dict(steps="20"), "steps = '20'"),
    (dict(steps=5000), "steps = 5000"),
    (dict(sampler="ddim", eta=1.5), r"eta = 1.5 must be a number in \[0, 1\]"),
])
def test_a_spec_out_of_range_is_refused_naming_the_field_and_what_it_allows(fields, message):
    with pytest.raises(SamplingSpecError, match=message):
        SamplingSpec(**fields)


def test_the_spec_takes_a_checkpoints_recommendation_and_overrides_on_top():
    config = {"schedule": {"num_timesteps": 200}, "sampling": {"sampler": "dpmpp", "steps": 20, "guidance": 1.5,
                                                              "chosen_by": "a sweep"}}
    rec = SamplingSpec.recommended(config)
    assert rec == SamplingSpec("dpmpp", 20, 1.5)
    assert rec.replace(guidance=None, steps=None, sampler=None) == rec  # None: not given
    assert rec.replace(steps=10) == SamplingSpec("dpmpp", 10, 1.5)
    assert rec.replace(sampler="ddpm") == SamplingSpec("ddpm", None, 1.5)  # DDPM takes no step count
    assert SamplingSpec.recommended({"sampling": {"sampler": "ddpm", "guidance": 2.0}}) == SamplingSpec("ddpm", None, 2.0)
    assert SamplingSpec("ddim", 50).fitted(20) == SamplingSpec("ddim", 20)
    assert SamplingSpec("ddpm", None).fitted(20).steps is None


@pytest.mark.parametrize("section, message", [
    ({"guidance": float("nan")}, "guidance = nan"),
    ({"guidance": "lots"}, "guidance = 'lots'"),
    ({"sampler": "heun"}, "sampler = 'heun'"),
    ({"steps": 500}, "more than this model's T = 20"),
    ({"steps": "many"}, "steps = 'many'"),
    ({"temperature": 0.7}, r"unknown fields \['temperature'\]"),
    ("dpmpp", "must be a JSON object"),
    ([1, 2], "must be a JSON object"),
])
def test_a_checkpoint_whose_sampling_section_is_bad_is_refused_at_load_naming_the_file(tmp_path, tiny_config, section,
                                                                                       message):
    save_checkpoint(tmp_path, build_unet(tiny_config), make_config(tiny_config, ScheduleConfig(num_timesteps=20),
                                                                    sampling=section))
    with pytest.raises(CheckpointError, match=f"config.json: invalid sampling section: .*{message}"):
        load_local(tmp_path)


def test_the_guidance_bound_is_the_apps_slider():
    SamplingSpec(guidance=MAX_GUIDANCE)
    with pytest.raises(SamplingSpecError):
        SamplingSpec(guidance=MAX_GUIDANCE + 0.5)


# ---- a run that goes non-finite says so -------------------------------------------------------------
def test_sampling_that_turns_non_finite_stops_with_the_step_and_the_count():
    def model(x, t):  # fine for 2 steps, then NaN in image 1 only
        out = torch.zeros_like(x)
        if int(t[0]) < 15:
            out[1] = float("nan")
        return out

    with pytest.raises(NonFiniteSampleError, match=r"non-finite at step 2 of 4 \(t = 14\): 1 of 3 images"):
        sample(model, SCHEDULE, (3, 1, 2, 2), "ddim", 4, clip_sample=False, generator=torch.Generator().manual_seed(0))


def test_a_network_with_nan_weights_gives_an_error_never_black_images(tiny_config):
    net = build_unet(UNetConfig.from_dict(tiny_config.to_dict())).eval()
    with torch.no_grad():
        next(net.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteSampleError, match="step 1 of 3"):
        generate(net, SCHEDULE, 2, SamplingSpec("dpmpp", 3), precision="fp32")
    with pytest.raises(NonFiniteSampleError):
        trajectory(net, SCHEDULE, 2, SamplingSpec("ddim", 3), precision="fp32")
