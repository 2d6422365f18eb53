"""What a visitor may ask the Steer tissue page to compute (``ddpm.editing``), bounded, and how a worker computes it.

An edit travels as a ``SampleRequest`` of kind "edit" whose ``edit`` field says which one: SDEdit of a real patch
over a row of strengths, inpainting of a real patch under a preset mask, a morph between two tissues, or one noise as
every tissue. Real patches are named by their index in the bundled subset (``data.load_subset``), which every worker
reads itself, and masks by name, so a request is a few numbers: hashable (the fair queue and the result cache key on
it), cheap to send, and unable to carry an anonymous visitor's arbitrary tensor. Every size a visitor can change is
capped here (``MAX_STRENGTHS``, ``MAX_FILLS``, ``MAX_WEIGHTS``); what the request costs is priced from
``batch_size`` and ``network_calls`` like any other (``cost.request_cost``).

The request's ``classes`` is the tissue asked for (SDEdit, inpainting) or the morph's first tissue, its ``spec`` gives
the steps and guidance (edits use their own samplers: ``editing``), its ``seed`` the noise and its ``n`` the batch,
which must be ``batch_size`` (a worker refuses a request priced for another batch).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..editing import MASKS, inpaint_calls, sdedit_timesteps
from ..samplers import DEFAULT_SAMPLER, get_sampler

EDITS = ("sdedit", "inpaint", "morph", "same_noise")
#: The strengths the page computes in one request, so its slider scrubs without recomputing: 0, 0.1, …, 1
SDEDIT_STRENGTHS = tuple(i / 10 for i in range(11))
#: The morph's weights the page animates: 0, 1/8, …, 1
MORPH_WEIGHTS = tuple(i / 8 for i in range(9))
MAX_STRENGTHS = 11
MAX_FILLS = 4
MAX_WEIGHTS = 11


@dataclass(frozen=True)
class EditRequest:
    """One edit: ``op`` in EDITS; ``patch`` the real patch's index in the bundled subset (sdedit, inpaint);
    ``strengths`` SDEdit's row; ``mask`` inpainting's preset (``editing.MASKS``) and ``fills`` how many fills of the
    patch (each from its own noise); ``tissue_b`` and ``weights`` the morph's second tissue and its weights."""

    op: str
    patch: int | None = None
    strengths: tuple[float, ...] = ()
    mask: str | None = None
    fills: int = 1
    tissue_b: int | None = None
    weights: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if self.op not in EDITS:
            problems.append(f"op must be one of {EDITS}, got {self.op!r}")
        needs_patch = self.op in ("sdedit", "inpaint")
        if needs_patch and not (_is_int(self.patch) and self.patch >= 0):
            problems.append(f"{self.op} needs the index of a bundled real patch (a whole number ≥ 0), got {self.patch!r}")
        if self.op == "sdedit" and not (1 <= len(self.strengths) <= MAX_STRENGTHS
                                        and all(_in_unit(s) for s in self.strengths)):
            problems.append(f"sdedit takes 1 to {MAX_STRENGTHS} strengths in [0, 1], got {self.strengths!r}")
        if self.op == "inpaint":
            if self.mask not in MASKS:
                problems.append(f"inpaint's mask must be one of {MASKS}, got {self.mask!r}")
            if not (_is_int(self.fills) and 1 <= self.fills <= MAX_FILLS):
                problems.append(f"inpaint makes 1 to {MAX_FILLS} fills, got {self.fills!r}")
        if self.op == "morph":
            if not (_is_int(self.tissue_b) and self.tissue_b >= 0):
                problems.append(f"morph needs a second tissue (an index ≥ 0), got {self.tissue_b!r}")
            if not (1 <= len(self.weights) <= MAX_WEIGHTS and all(_in_unit(w) for w in self.weights)):
                problems.append(f"morph takes 1 to {MAX_WEIGHTS} weights in [0, 1], got {self.weights!r}")
        if problems:
            raise ValueError("; ".join(problems))

    def batch_size(self, num_classes: int) -> int:
        """Images the network runs on at once (the request's ``n``): the patch once for SDEdit (one run per strength),
        each fill, each weight, or each of the ``num_classes`` tissues."""
        return {"sdedit": 1, "inpaint": self.fills, "morph": len(self.weights), "same_noise": num_classes}[self.op]

    def network_calls(self, num_timesteps: int, num_steps: int | None) -> int:
        """Network evaluations of the whole request, each on a batch of ``batch_size`` (twice that when guided)."""
        if self.op == "sdedit":
            return sum(len(sdedit_timesteps(num_timesteps, s, num_steps)) for s in self.strengths)
        if self.op == "inpaint":
            return inpaint_calls(num_timesteps, num_steps)
        return len(get_sampler(DEFAULT_SAMPLER).timesteps(num_timesteps, num_steps))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _in_unit(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1


@dataclass(frozen=True)
class EditResult:
    """What an edit gives back, uint8 (N, H, W, 3) arrays as figures take them: ``images`` the edits in the request's
    order (a strength, fill, weight or tissue each); for SDEdit and inpainting the real ``original`` (1, H, W, 3),
    SDEdit's ``noised`` inputs (one per strength) and inpainting's ``mask`` ((H, W) bool, True = filled)."""

    images: np.ndarray
    original: np.ndarray | None = None
    noised: np.ndarray | None = None
    mask: np.ndarray | None = None


@functools.lru_cache(maxsize=1)
def _bundled():
    from ..data import load_subset

    return load_subset()


def run_edit(checkpoint, request, report: Callable[[float], None]) -> EditResult:
    """Compute the edit of ``request`` (a SampleRequest of kind "edit") with ``checkpoint``; ``report(fraction)``
    follows every network call."""
    import torch

    from .. import editing
    from ..data import to_hwc_numpy, to_model_range

    model, schedule, edit, spec = checkpoint.model, checkpoint.schedule, request.edit, request.spec
    num_classes = editing.check_steerable(model)
    if request.n != edit.batch_size(num_classes):
        raise ValueError(f"this {edit.op} runs on a batch of {edit.batch_size(num_classes)}, but the request was "
                         f"priced for {request.n}")
    T, steps, kw = schedule.num_timesteps, spec.steps, dict(precision=request.precision)
    total, done = edit.network_calls(T, steps), [0]

    def callback(*_) -> None:
        done[0] += 1
        report(done[0] / total)

    common = dict(guidance=spec.guidance, guidance_interval=spec.guidance_interval, seed=request.seed, num_steps=steps,
                  callback=callback, **kw)
    if edit.op in ("sdedit", "inpaint"):
        real = _bundled()
        if edit.patch >= len(real):
            raise ValueError(f"patch {edit.patch} is not among the {len(real)} bundled real patches")
        x0 = to_model_range(real.images[edit.patch:edit.patch + 1])  # (1, 3, H, W)
        original = to_hwc_numpy(real.images[edit.patch:edit.patch + 1])
    if edit.op == "sdedit":
        noised = [editing.sdedit_input(schedule, x0, s, request.seed) for s in edit.strengths]
        images = [editing.sdedit(model, schedule, x0, s, request.classes, **common) for s in edit.strengths]
        return EditResult(to_hwc_numpy(torch.cat(images)), original, to_hwc_numpy(torch.cat(noised)))
    if edit.op == "inpaint":
        mask = editing.preset_mask(edit.mask, x0.shape[-1], seed=request.seed)
        images = editing.inpaint(model, schedule, x0.expand(edit.fills, -1, -1, -1), mask, request.classes, **common)
        return EditResult(to_hwc_numpy(images), original, mask=mask.numpy())
    if edit.op == "morph":
        images = editing.morph(model, schedule, request.classes, edit.tissue_b, edit.weights, **common)
        return EditResult(to_hwc_numpy(images))
    return EditResult(to_hwc_numpy(editing.same_noise(model, schedule, **common)))
