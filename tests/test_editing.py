"""Steering a tissue-conditional model (ddpm.editing): SDEdit, inpainting, morphing and one noise as every tissue,
on a tiny conditional network with a short schedule, and a few checks on the shipped default model."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ddpm import editing
from ddpm.data import CLASS_NAMES, load_subset, to_model_range
from ddpm.pipeline import generate
from ddpm.sampling_spec import SamplingSpec
from ddpm.schedules import NoiseSchedule, ScheduleConfig
from ddpm.unet import UNetConfig, build_unet

T, STEPS = 20, 5
SHIPPED = Path(__file__).resolve().parent.parent / "checkpoints" / "default" / "model.safetensors"


def tiny_model(num_classes: int | None = 9, seed: int = 0) -> torch.nn.Module:
    """A two-level residual U-Net with every weight perturbed (the zero-initialised output layer and class embedding
    would otherwise hide the label), fp32."""
    torch.manual_seed(seed)
    model = build_unet(UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(14,),
                                  norm_groups=4, num_classes=num_classes))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_model()


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule.from_config(ScheduleConfig(num_timesteps=T))


@pytest.fixture(scope="module")
def patches() -> torch.Tensor:
    """Three real patches of the bundled subset in [-1, 1]: (3, 3, 28, 28)."""
    return to_model_range(load_subset().images[:3])


KW = dict(num_steps=STEPS, precision="fp32")


# ---- SDEdit ---------------------------------------------------------------------------------------------------------
def test_sdedit_at_strength_0_returns_the_input_exactly_and_calls_no_network(model, schedule, patches):
    calls = []
    out = editing.sdedit(model, schedule, patches, 0.0, classes="adipose", callback=lambda *a: calls.append(a), **KW)
    assert torch.equal(out, patches) and out is not patches and not calls


def test_sdedit_starts_at_strength_times_T_minus_1_and_takes_the_whole_range_steps_that_lie_below():
    assert editing.sdedit_timesteps(T, 1.0, STEPS) == [19, 15, 11, 7, 3]  # the default sampler's own trailing steps
    assert editing.sdedit_timesteps(T, 0.5, STEPS) == [10, 7, 3]  # round(0.5 · 19) = 10
    assert editing.sdedit_timesteps(T, 0.05, STEPS) == [1]
    assert editing.sdedit_timesteps(T, 0.0, STEPS) == []
    assert editing.sdedit_timesteps(200, 0.3, None) == [60, 49, 39, 29, 19, 9]  # 20 steps over T = 200


def test_sdedit_reports_one_callback_per_network_call(model, schedule, patches):
    calls = []
    editing.sdedit(model, schedule, patches, 0.5, classes=2, callback=lambda done, total: calls.append((done, total)),
                   **KW)
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_sdedit_at_strength_1_is_plain_conditional_sampling_from_the_noise_it_drew(model, schedule, patches):
    """With zero terminal SNR, x at t = T-1 is the noise alone: strength 1 forgets the patch."""
    out = editing.sdedit(model, schedule, patches, 1.0, classes=[0, 4, 8], guidance=2.0, seed=3, **KW)
    noise = torch.randn(patches.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(editing.sdedit_input(schedule, patches, 1.0, seed=3), noise)
    expected = editing.sample_from(model, schedule, noise, torch.tensor([0, 4, 8]), 2.0, **KW)
    assert torch.equal(out, expected)


def test_sdedit_keeps_more_of_the_patch_at_low_strength(model, schedule, patches):
    errors = [float((editing.sdedit(model, schedule, patches, s, classes=1, **KW) - patches).abs().mean())
              for s in (0.1, 0.5, 1.0)]
    assert errors[0] < errors[1] < errors[2], errors


def test_sdedit_input_is_q_sample_at_the_start_with_the_same_noise_for_every_strength(schedule, patches):
    noise = torch.randn(patches.shape, generator=torch.Generator().manual_seed(0))
    for s in (0.2, 0.7):
        t = round(s * (T - 1))
        a = schedule.alphas_cumprod[t].float()
        expected = a.sqrt() * patches + (1 - a).sqrt() * noise
        torch.testing.assert_close(editing.sdedit_input(schedule, patches, s), expected)
    assert torch.equal(editing.sdedit_input(schedule, patches, 0.0), patches)


@pytest.mark.parametrize("strength", [-0.1, 1.5, math.nan, math.inf, "0.5", True, None])
def test_sdedit_refuses_a_strength_outside_0_to_1_with_a_message(model, schedule, patches, strength):
    with pytest.raises(ValueError, match=r"strength must be a finite number in \[0, 1\]"):
        editing.sdedit(model, schedule, patches, strength, **KW)


def test_sdedit_takes_tissues_by_name_as_by_index(model, schedule, patches):
    by_name = editing.sdedit(model, schedule, patches, 0.6, classes="lymphocytes", **KW)
    assert torch.equal(by_name, editing.sdedit(model, schedule, patches, 0.6, classes=3, **KW))
    assert not torch.equal(by_name, editing.sdedit(model, schedule, patches, 0.6, classes=4, **KW))


@pytest.mark.parametrize("images, message", [
    (torch.zeros(2, 3, 14, 14), r"\(B, 3, 28, 28\)"),
    (torch.zeros(3, 28, 28), r"\(B, 3, 28, 28\)"),
    (torch.zeros(2, 3, 28, 28, dtype=torch.uint8), "to_model_range"),
    (torch.full((2, 3, 28, 28), 2.0), r"in \[-1, 1\]"),
    (torch.full((2, 3, 28, 28), math.nan), "finite"),
])
def test_edits_refuse_images_of_the_wrong_shape_or_range_saying_how_to_convert(model, schedule, images, message):
    with pytest.raises(ValueError, match=message):
        editing.sdedit(model, schedule, images, 0.5, **KW)
    with pytest.raises(ValueError, match=message):
        editing.inpaint(model, schedule, images, torch.ones(28, 28, dtype=torch.bool), **KW)


# ---- inpainting -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", editing.MASKS)
def test_preset_masks_are_28x28_bool_and_leave_pixels_on_both_sides(name):
    mask = editing.preset_mask(name)
    assert mask.shape == (28, 28) and mask.dtype == torch.bool
    assert 0.1 < mask.float().mean() < 0.9, float(mask.float().mean())
    assert torch.equal(mask, editing.preset_mask(name))


def test_preset_masks_are_where_their_names_say():
    assert int(editing.preset_mask("centre square").sum()) == 14 * 14 and editing.preset_mask("centre square")[14, 14]
    left = editing.preset_mask("left half")
    assert left[:, :14].all() and not left[:, 14:].any()
    ring = editing.preset_mask("ring")
    assert not ring[14, 14] and not ring[0, 0] and ring[14, 14 + 8]
    with pytest.raises(ValueError, match="mask must be one of"):
        editing.preset_mask("square")


@pytest.mark.parametrize("name", editing.MASKS)
def test_inpaint_gives_back_the_kept_pixels_exactly_and_fills_the_rest(model, schedule, patches, name):
    mask = editing.preset_mask(name)
    out = editing.inpaint(model, schedule, patches, mask, classes="mucus", guidance=1.5, **KW)
    assert out.shape == patches.shape and out.dtype == torch.float32
    assert torch.equal(out[:, :, ~mask], patches[:, :, ~mask])
    assert (out[:, :, mask] - patches[:, :, mask]).abs().mean() > 1e-3
    assert out.min() >= -1 and out.max() <= 1


def test_inpaint_takes_one_mask_per_image_and_counts_its_network_calls(model, schedule, patches):
    masks = torch.stack([editing.preset_mask(n) for n in editing.MASKS[:3]])[:, None]  # (3, 1, 28, 28)
    calls = []
    out = editing.inpaint(model, schedule, patches, masks, classes=0, callback=lambda d, t: calls.append((d, t)), **KW)
    for i in range(3):
        keep = ~masks[i, 0]
        assert torch.equal(out[i][:, keep], patches[i][:, keep])
    total = editing.inpaint_calls(T, STEPS)
    assert total == (STEPS - 1) * (1 + editing.INPAINT_JUMPS) + 1
    assert calls == [(i, total) for i in range(1, total + 1)]
    calls.clear()
    editing.inpaint(model, schedule, patches, masks, classes=0, jumps=0, callback=lambda d, t: calls.append(d), **KW)
    assert len(calls) == editing.inpaint_calls(T, STEPS, jumps=0) == STEPS


@pytest.mark.parametrize("mask, message", [
    (torch.ones(28, 28), "bool"),
    (torch.ones(14, 14, dtype=torch.bool), r"\(28, 28\) or \(3, 1, 28, 28\)"),
    (torch.ones(2, 1, 28, 28, dtype=torch.bool), r"\(28, 28\) or \(3, 1, 28, 28\)"),
    (torch.ones(3, 3, 28, 28, dtype=torch.bool), r"\(28, 28\) or \(3, 1, 28, 28\)"),
    ([[True]], "bool"),
])
def test_inpaint_refuses_a_mask_of_the_wrong_type_or_shape_with_the_shapes_it_takes(model, schedule, patches, mask,
                                                                                     message):
    with pytest.raises(ValueError, match=message):
        editing.inpaint(model, schedule, patches, mask, **KW)


def test_inpaint_refuses_jumps_outside_its_range(model, schedule, patches):
    with pytest.raises(ValueError, match="jumps must be"):
        editing.inpaint(model, schedule, patches, editing.preset_mask("ring"), jumps=-1, **KW)


# ---- morph and one noise as every tissue ----------------------------------------------------------------------------
@pytest.mark.parametrize("guidance", [1.0, 2.5, 0.0])
def test_morph_endpoints_are_exactly_plain_conditional_sampling_of_each_tissue_from_the_same_noise(model, schedule,
                                                                                                  guidance):
    out = editing.morph(model, schedule, "adipose", "debris", [0.0, 1.0], seed=5, guidance=guidance, **KW)
    x_T = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(5)).expand(2, -1, -1, -1)
    plain = editing.sample_from(model, schedule, x_T, torch.tensor([0, 2]), guidance, **KW)
    assert torch.equal(out, plain)
    if guidance != 0.0:
        assert not torch.equal(out[0], out[1])


def test_morph_in_between_weights_give_images_between_the_tissues(model, schedule):
    out = editing.morph(model, schedule, 0, 5, [0.0, 0.5, 1.0], **KW)
    assert out.shape == (3, 3, 28, 28)
    assert not torch.equal(out[1], out[0]) and not torch.equal(out[1], out[2])
    halfway = editing.tissue_weights(9, 0, 5, [0.25])
    assert halfway.shape == (1, 10) and halfway[0, 0] == 0.75 and halfway[0, 5] == 0.25 and halfway.sum() == 1


def test_morph_endpoints_match_generate_and_same_noise_up_to_float_rounding(model, schedule):
    """generate draws its first x_T from the seed as morph does, but runs a batch of one (and same_noise a batch of 9):
    CPU kernels may then sum in another order, so these agree to float rounding, not bit for bit."""
    out = editing.morph(model, schedule, 3, 7, [0.0, 1.0], seed=2, **KW)
    spec = SamplingSpec("dpmpp", STEPS)
    for i, tissue in enumerate((3, 7)):
        alone = generate(model, schedule, 1, spec, seed=2, classes=tissue, precision="fp32")
        torch.testing.assert_close(out[i:i + 1], alone, atol=1e-5, rtol=0)
    every = editing.same_noise(model, schedule, seed=2, **KW)
    torch.testing.assert_close(out, every[[3, 7]], atol=1e-5, rtol=0)


def test_same_noise_draws_one_noise_as_each_of_the_nine_tissues(model, schedule):
    out = editing.same_noise(model, schedule, seed=4, guidance=2.0, **KW)
    assert out.shape == (len(CLASS_NAMES), 3, 28, 28) and out.min() >= -1 and out.max() <= 1
    assert len({tuple(img.flatten()[:50].tolist()) for img in out}) == 9  # nine different images


@pytest.mark.parametrize("weights", [[], [1.2], [-0.1, 0.5], [math.nan], [math.inf]])
def test_morph_refuses_weights_outside_0_to_1(model, schedule, weights):
    with pytest.raises(ValueError, match=r"weights must be one or more finite numbers in \[0, 1\]"):
        editing.morph(model, schedule, 0, 1, weights, **KW)


def test_morph_refuses_an_unknown_tissue_naming_the_choices(model, schedule):
    with pytest.raises(ValueError, match="unknown tissue class 'bone'.*adipose"):
        editing.morph(model, schedule, "bone", 1, [0.5], **KW)


# ---- every edit: seeds, the unconditional model -----------------------------------------------------------------------
EDITS = {
    "sdedit": lambda m, s, x, **kw: editing.sdedit(m, s, x, 0.6, classes=4, **kw, **KW),
    "inpaint": lambda m, s, x, **kw: editing.inpaint(m, s, x, editing.preset_mask("ring"), classes=4, **kw, **KW),
    "morph": lambda m, s, x, **kw: editing.morph(m, s, 1, 6, [0.0, 0.3, 1.0], **kw, **KW),
    "same_noise": lambda m, s, x, **kw: editing.same_noise(m, s, **kw, **KW),
}


@pytest.mark.parametrize("name", EDITS)
def test_the_same_seed_gives_the_same_images_and_another_seed_other_ones(model, schedule, patches, name):
    edit = EDITS[name]
    first = edit(model, schedule, patches, seed=1, guidance=1.5)
    assert first.device.type == "cpu" and first.dtype == torch.float32 and first.shape[1:] == (3, 28, 28)
    assert torch.equal(first, edit(model, schedule, patches, seed=1, guidance=1.5))
    assert not torch.equal(first, edit(model, schedule, patches, seed=2, guidance=1.5))


@pytest.mark.parametrize("name", EDITS)
def test_an_unconditional_model_is_refused_naming_the_model_to_pick(schedule, patches, name):
    with pytest.raises(ValueError, match="unconditional: it takes no tissue.*load_checkpoint\\('default'\\)"):
        EDITS[name](tiny_model(num_classes=None), schedule, patches)


# ---- the shipped default model --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped():
    if not SHIPPED.is_file():
        pytest.skip("no shipped default model")
    from ddpm.checkpoints import load_local

    return load_local(SHIPPED.parent)


def test_shipped_model_morph_endpoints_are_exact_under_its_own_precision_and_guidance(shipped):
    """bf16 autocast where the CPU has it: the mixed embedding is summed in float32 outside autocast, so a one-hot mix
    is still bit for bit the tissue's own embedding."""
    guidance = shipped.sampling.guidance
    out = editing.morph(shipped.model, shipped.schedule, "mucus", "lymphocytes", [0.0, 1.0], seed=0,
                        guidance=guidance, num_steps=4)
    x_T = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(0)).expand(2, -1, -1, -1)
    plain = editing.sample_from(shipped.model, shipped.schedule, x_T, torch.tensor([4, 3]), guidance, num_steps=4)
    assert torch.equal(out, plain)


def test_shipped_model_sdedit_keeps_a_real_patch_at_low_strength_and_repaints_it_at_high(shipped, patches):
    low = editing.sdedit(shipped.model, shipped.schedule, patches[:2], 0.2, classes="adipose", num_steps=10)
    high = editing.sdedit(shipped.model, shipped.schedule, patches[:2], 0.9, classes="adipose", num_steps=10)
    low_error, high_error = ((x - patches[:2]).abs().mean() for x in (low, high))
    assert low_error < 0.1 < high_error, (float(low_error), float(high_error))


def test_edits_take_the_guidance_band_as_sampling_specs_have_it(model, schedule, patches):
    """A band covering every step is guidance at every step; a narrow one changes the images."""
    everywhere = editing.same_noise(model, schedule, guidance=3.0, **KW)
    assert torch.equal(everywhere, editing.same_noise(model, schedule, guidance=3.0, guidance_interval=(0, T - 1), **KW))
    assert not torch.equal(everywhere, editing.same_noise(model, schedule, guidance=3.0, guidance_interval=(0, 5), **KW))
    low = editing.sdedit(model, schedule, patches, 1.0, classes=2, guidance=3.0, guidance_interval=(0, 5), **KW)
    assert not torch.equal(low, editing.sdedit(model, schedule, patches, 1.0, classes=2, guidance=3.0, **KW))
