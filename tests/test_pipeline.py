"""The glue between a model and a sampler (ddpm.pipeline) that pages share."""
from __future__ import annotations

import pytest
import torch

from ddpm.data import CLASS_NAMES, class_prior
from ddpm.pipeline import generate, resolve_classes
from ddpm.sampling_spec import SamplingSpec
from ddpm.schedules import NoiseSchedule, ScheduleConfig
from ddpm.unet import UNetConfig, build_unet

SCHEDULE = NoiseSchedule.from_config(ScheduleConfig(num_timesteps=20))


@pytest.mark.parametrize("sampler, steps, expected", [
    ("ddpm", 5, None),  # DDPM always runs all T steps, whatever the slider says
    ("ddim", 5, 5), ("dpmpp", 50, 20), ("dpmpp", 1, 1), ("ddim", 20, 20),
])
def test_a_step_setting_becomes_the_samplers_steps_within_the_schedule(sampler, steps, expected):
    spec = SamplingSpec(sampler, None if sampler == "ddpm" else max(steps, 1)).fitted(SCHEDULE.num_timesteps)
    assert spec.steps == expected


# ---- tissue classes and guidance ------------------------------------------------------------------
def test_without_classes_the_draws_follow_the_training_prior_and_the_seed():
    labels = resolve_classes(9, 20_000, None, seed=0)
    assert labels.shape == (20_000,) and labels.dtype == torch.long
    hist = torch.bincount(labels, minlength=9).double() / 20_000
    assert (hist - class_prior()).abs().max() < 0.01  # 5 standard errors of a share near 0.11
    assert torch.equal(resolve_classes(9, 20_000, "prior", seed=0), labels)  # "prior" is the default spelled out
    assert torch.equal(resolve_classes(9, 50, None, seed=3), resolve_classes(9, 50, None, seed=3))
    assert not torch.equal(resolve_classes(9, 50, None, seed=3), resolve_classes(9, 50, None, seed=4))


@pytest.mark.parametrize("classes, index", [("adipose", 0), ("smooth", 5), ("Smooth Muscle", 5), (5, 5), ("5", 5),
                                            ("colorectal", 8)])
def test_one_class_by_name_prefix_or_index_is_asked_for_every_image(classes, index):
    assert resolve_classes(9, 4, classes).tolist() == [index] * 4


@pytest.mark.parametrize("classes", ["muscle", "c", "9", -1, 9])
def test_an_unknown_or_ambiguous_class_raises_listing_the_nine_names(classes):
    with pytest.raises(ValueError) as err:
        resolve_classes(9, 4, classes)
    assert all(name in str(err.value) for name in CLASS_NAMES)


def test_a_per_image_sequence_is_used_as_given_and_checked():
    assert resolve_classes(9, 3, [8, 0, 4]).tolist() == [8, 0, 4]
    assert resolve_classes(9, 2, torch.tensor([1, 1])).tolist() == [1, 1]
    with pytest.raises(ValueError, match=r"3 indices in \[0, 8\], got 2"):
        resolve_classes(9, 3, [1, 2])
    with pytest.raises(ValueError, match=r"got 3 in \[0, 9\]"):
        resolve_classes(9, 3, [0, 9, 1])
    with pytest.raises(ValueError, match=r"got 2 in \[-1, 0\]"):
        resolve_classes(9, 2, [0, -1])


def test_an_unconditional_model_takes_no_class_but_accepts_the_default():
    assert resolve_classes(None, 4, None) is None
    assert resolve_classes(None, 4, "prior") is None
    for classes in ("adipose", 3, [0, 1, 2, 3]):
        with pytest.raises(ValueError, match="unconditional"):
            resolve_classes(None, 4, classes)


@pytest.fixture
def conditional_net(tiny_config) -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_unet(UNetConfig.from_dict({**tiny_config.to_dict(), "num_classes": 9})).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))  # class embedding included: the label changes the output
    return net


def test_generate_with_a_conditional_model_is_reproducible_and_conditions_each_image_on_its_class(conditional_net):
    run = lambda classes, seed=0, guidance=1.0: generate(conditional_net, SCHEDULE, 3,  # noqa: E731
                                                         SamplingSpec("dpmpp", 3, guidance), seed=seed,
                                                         precision="fp32", classes=classes)
    a = run([0, 4, 8])
    assert a.shape == (3, 3, 28, 28)
    assert torch.equal(a, run([0, 4, 8]))
    assert (a - run([0, 4, 8], seed=1)).abs().mean() > 0.1
    b = run([0, 0, 8])  # only the middle image asks for another tissue
    torch.testing.assert_close(b[[0, 2]], a[[0, 2]], rtol=0, atol=1e-5)
    assert (b[1] - a[1]).abs().mean() > 1e-3
    guided = run([0, 4, 8], guidance=3.0)
    assert (guided - a).abs().mean() > 1e-3
    # guidance 0 ignores the classes asked for
    assert torch.equal(run([0, 4, 8], guidance=0.0), run([5, 5, 5], guidance=0.0))


def test_generate_without_classes_draws_them_from_the_prior_with_the_same_seed(conditional_net):
    drawn = resolve_classes(9, 3, None, seed=2)
    a = generate(conditional_net, SCHEDULE, 3, SamplingSpec("ddim", 2), seed=2, precision="fp32")
    b = generate(conditional_net, SCHEDULE, 3, SamplingSpec("ddim", 2), seed=2, precision="fp32", classes=drawn)
    assert torch.equal(a, b)


def test_recommended_sampling_falls_back_to_the_defaults_and_honours_a_checkpoints_choice():
    assert SamplingSpec.recommended(None) == SamplingSpec()
    assert SamplingSpec.recommended({"model": {}}) == SamplingSpec()
    assert SamplingSpec.recommended({"sampling": None}) == SamplingSpec()
    chosen = SamplingSpec.recommended({"sampling": {"guidance": 2.0, "steps": 10, "chosen_by": "sweep"}})
    assert chosen == SamplingSpec("dpmpp", 10, 2.0)
    assert SamplingSpec() == SamplingSpec("dpmpp", 20, 1.0, 0.0)  # the one default
