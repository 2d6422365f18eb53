"""The Steer tissue page's requests (ddpm.serving.edit_request): bounded, priced by their network calls, computed by
a sampling worker exactly as ddpm.editing computes them in-process."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ddpm import editing
from ddpm.checkpoints import load_local, make_config, save_checkpoint
from ddpm.data import load_subset, to_hwc_numpy, to_model_range
from ddpm.sampling_spec import SamplingSpec
from ddpm.schedules import ScheduleConfig
from ddpm.serving.cost import check_request_cost, flops_per_pass, request_cost
from ddpm.serving.edit_request import (MAX_FILLS, MAX_STRENGTHS, MAX_WEIGHTS, MORPH_WEIGHTS, SDEDIT_STRENGTHS,
                                       EditRequest, EditResult, run_edit)
from ddpm.serving.sampling_service import SamplingService
from ddpm.serving.sampling_worker import ModelPayload, SampleRequest, run_request
from ddpm.serving.server_limits import HOSTED_LIMITS
from ddpm.unet import UNetConfig, build_unet

T, STEPS = 20, 4
SPEC = SamplingSpec("dpmpp", STEPS, guidance=1.5)
EDITS = {
    "sdedit": (EditRequest("sdedit", patch=7, strengths=(0.0, 0.4, 1.0)), 2),
    "inpaint": (EditRequest("inpaint", patch=11, mask="centre square", fills=2), 3),
    "morph": (EditRequest("morph", tissue_b=5, weights=(0.0, 0.5, 1.0)), 1),
    "same_noise": (EditRequest("same_noise"), None),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    config = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(14,),
                        norm_groups=4, num_classes=9)
    torch.manual_seed(0)
    model = build_unet(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("tiny-conditional")
    save_checkpoint(folder, model, make_config(config, ScheduleConfig(num_timesteps=T)))
    ckpt = load_local(folder)
    return ckpt, ModelPayload.from_checkpoint(ckpt)


def request_for(payload, name: str, seed: int = 3) -> SampleRequest:
    edit, classes = EDITS[name]
    return SampleRequest("edit", payload.key, SPEC, seed, edit.batch_size(9), classes, "fp32", edit)


def in_process(ckpt, name: str, seed: int = 3) -> np.ndarray:
    """What ddpm.editing gives for the request of ``name``, called directly."""
    edit, classes = EDITS[name]
    model, schedule = ckpt.model, ckpt.schedule
    kw = dict(guidance=1.5, seed=seed, num_steps=STEPS, precision="fp32")
    if edit.op in ("sdedit", "inpaint"):
        x0 = to_model_range(load_subset().images[edit.patch:edit.patch + 1])
    if edit.op == "sdedit":
        return to_hwc_numpy(torch.cat([editing.sdedit(model, schedule, x0, s, classes, **kw) for s in edit.strengths]))
    if edit.op == "inpaint":
        return to_hwc_numpy(editing.inpaint(model, schedule, x0.expand(2, -1, -1, -1), editing.preset_mask(edit.mask),
                                            classes, **kw))
    if edit.op == "morph":
        return to_hwc_numpy(editing.morph(model, schedule, classes, edit.tissue_b, edit.weights, **kw))
    return to_hwc_numpy(editing.same_noise(model, schedule, **kw))


@pytest.mark.parametrize("name", EDITS)
def test_run_edit_gives_what_the_editing_functions_give_and_reports_each_network_call(tiny, name):
    ckpt, payload = tiny
    request = request_for(payload, name)
    fractions = []
    result = run_request(ckpt, request, fractions.append)
    assert isinstance(result, EditResult)
    np.testing.assert_array_equal(result.images, in_process(ckpt, name))
    calls = request.edit.network_calls(T, STEPS)
    assert len(fractions) == calls and fractions[-1] == 1.0
    if name == "sdedit":
        np.testing.assert_array_equal(result.original, to_hwc_numpy(load_subset().images[7:8]))
        np.testing.assert_array_equal(result.noised[0], result.original[0])  # strength 0: the patch itself
        assert result.noised.shape == result.images.shape == (3, 28, 28, 3)
    if name == "inpaint":
        np.testing.assert_array_equal(result.mask, editing.preset_mask("centre square").numpy())
        assert (result.images[:, ~result.mask] == result.original[0][~result.mask]).all()


def test_a_sampling_worker_computes_an_edit_bit_for_bit_as_in_process(tiny):
    ckpt, payload = tiny
    service = SamplingService(workers=1, threads=1, heavy_after_s=None)
    try:
        result = service.run("ann", payload, request_for(payload, "morph"), 1.0)
    finally:
        service.shutdown()
    np.testing.assert_array_equal(result.images, in_process(ckpt, "morph"))


def test_a_request_priced_for_another_batch_is_refused(tiny):
    ckpt, payload = tiny
    request = dataclasses.replace(request_for(payload, "same_noise"), n=2)
    with pytest.raises(ValueError, match="runs on a batch of 9, but the request was priced for 2"):
        run_request(ckpt, request, lambda f: None)


def test_an_edit_of_a_patch_beyond_the_bundled_ones_is_refused(tiny):
    ckpt, payload = tiny
    request = dataclasses.replace(request_for(payload, "sdedit"), edit=EditRequest("sdedit", patch=10**6, strengths=(0.5,)))
    with pytest.raises(ValueError, match="not among the 1800 bundled real patches"):
        run_request(ckpt, request, lambda f: None)


def test_an_unconditional_model_is_refused_by_the_worker_with_editings_message(tmp_path):
    config = UNetConfig(architecture="seed")
    save_checkpoint(tmp_path, build_unet(config), make_config(config, ScheduleConfig(num_timesteps=T)))
    request = SampleRequest("edit", "k", SPEC, 0, 9, None, "fp32", EditRequest("same_noise"))
    with pytest.raises(ValueError, match="unconditional: it takes no tissue"):
        run_edit(load_local(tmp_path), request, lambda f: None)


@pytest.mark.parametrize("kwargs, message", [
    (dict(op="paint"), "op must be one of"),
    (dict(op="sdedit", strengths=(0.5,)), "needs the index of a bundled real patch"),
    (dict(op="sdedit", patch=-1, strengths=(0.5,)), "needs the index of a bundled real patch"),
    (dict(op="sdedit", patch=0), f"1 to {MAX_STRENGTHS} strengths"),
    (dict(op="sdedit", patch=0, strengths=(0.5, 1.5)), f"1 to {MAX_STRENGTHS} strengths in"),
    (dict(op="sdedit", patch=0, strengths=(0.1,) * (MAX_STRENGTHS + 1)), f"1 to {MAX_STRENGTHS} strengths"),
    (dict(op="sdedit", patch=0, strengths=(float("nan"),)), f"1 to {MAX_STRENGTHS} strengths"),
    (dict(op="inpaint", patch=0, mask="square"), "mask must be one of"),
    (dict(op="inpaint", patch=0, mask="ring", fills=MAX_FILLS + 1), f"1 to {MAX_FILLS} fills"),
    (dict(op="morph", weights=(0.5,)), "needs a second tissue"),
    (dict(op="morph", tissue_b=1, weights=(0.0,) * (MAX_WEIGHTS + 1)), f"1 to {MAX_WEIGHTS} weights"),
    (dict(op="morph", tissue_b=1, weights=(-0.5,)), f"1 to {MAX_WEIGHTS} weights in"),
])
def test_an_edit_outside_its_bounds_is_refused_naming_what_it_allows(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EditRequest(**kwargs)


def test_the_pages_own_edits_are_within_the_bounds_and_an_edit_travels_only_as_an_edit():
    EditRequest("sdedit", patch=0, strengths=SDEDIT_STRENGTHS)
    EditRequest("morph", tissue_b=0, weights=MORPH_WEIGHTS)
    with pytest.raises(ValueError, match="an edit request needs its EditRequest"):
        SampleRequest("edit", "k", SPEC, 0, 1)
    with pytest.raises(ValueError, match="only an edit request takes one"):
        SampleRequest("samples", "k", SPEC, 0, 1, edit=EditRequest("same_noise"))
    assert hash(EDITS["sdedit"][0]) == hash(EditRequest("sdedit", patch=7, strengths=(0.0, 0.4, 1.0)))  # a queue key


def test_an_edit_is_priced_by_its_network_calls_on_its_batch():
    model = UNetConfig(num_classes=9)
    sdedit = EditRequest("sdedit", patch=0, strengths=SDEDIT_STRENGTHS)
    calls = sdedit.network_calls(200, 20)
    assert calls == sum(len(editing.sdedit_timesteps(200, s, 20)) for s in SDEDIT_STRENGTHS)
    assert calls == sum(range(0, 21, 2))  # strength s takes 20·s of the 20 steps: 0 + 2 + … + 20 = 110
    cost = request_cost(model, SamplingSpec(guidance=1.5), sdedit.batch_size(9), 200, kind="edit", passes=calls)
    assert cost.flops == pytest.approx(flops_per_pass(model) * calls * 1 * 2, rel=1e-9)  # guided: a batch of 2
    inpaint = EditRequest("inpaint", patch=0, mask="ring", fills=3)
    assert inpaint.network_calls(200, 20) == editing.inpaint_calls(200, 20) == 19 * 2 + 1
    assert EditRequest("morph", tissue_b=1, weights=MORPH_WEIGHTS).batch_size(9) == len(MORPH_WEIGHTS)
    assert EditRequest("same_noise").batch_size(9) == 9 and EditRequest("same_noise").network_calls(200, 20) == 20
    with pytest.raises(ValueError, match="an edit, and only an edit, gives its network calls"):
        request_cost(model, SamplingSpec(), 1, 200, kind="edit")
    with pytest.raises(ValueError, match="an edit, and only an edit, gives its network calls"):
        request_cost(model, SamplingSpec(), 1, 200, passes=5)


def test_every_edit_of_the_page_fits_the_hosted_budget_with_the_shipped_model_at_its_recommended_settings():
    hosted, model = HOSTED_LIMITS, UNetConfig(num_classes=9)
    spec = SamplingSpec(guidance=1.5)  # checkpoints/default recommends DPM-Solver++ 20, guidance 1.5
    for edit in (EditRequest("sdedit", patch=0, strengths=SDEDIT_STRENGTHS),
                 EditRequest("inpaint", patch=0, mask="ring", fills=MAX_FILLS),
                 EditRequest("morph", tissue_b=1, weights=(0.5,) * MAX_WEIGHTS), EditRequest("same_noise")):
        cost = check_request_cost(model, spec, edit.batch_size(9), 200, hosted, kind="edit",
                                  passes=edit.network_calls(200, spec.steps))
        assert cost.expected_s < 20, (edit.op, cost.expected_s)  # the interactive lane, not the heavy one
