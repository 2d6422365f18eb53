"""The controls pages share: the sampler names people read, and the tissue and guidance a conditional model takes."""
from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from ddpm.data import CLASS_NAMES
from ddpm.pipeline import PRIOR
from ddpm.samplers import SAMPLERS
from ddpm.sampling_spec import MAX_GUIDANCE
from pages._models import ActiveModel

SAMPLER_LABELS = {name: sampler.label for name, sampler in SAMPLERS.items()}


@dataclass(frozen=True)
class Tissue:
    """What a visitor asked a tissue-conditional model for: a class index or PRIOR, and the guidance scale."""

    tissue: int | str
    guidance: float

    def describe(self) -> str:
        what = "tissues drawn as often as in the training split" if self.tissue == PRIOR else CLASS_NAMES[self.tissue]
        return f"{what}, guidance {self.guidance:g}"


def tissue_picker(model: ActiveModel, key: str, container=st, allow_prior: bool = True, label: str = "Tissue",
                  default: int = 0) -> Tissue | None:
    """A tissue choice and a guidance slider for a tissue-conditional model (None, and nothing drawn, otherwise);
    ``allow_prior=False`` offers only the tissues themselves (``default`` first chosen)."""
    if not model.conditional:
        return None
    recommended = model.checkpoint.sampling.guidance
    c1, c2 = container.columns(2)
    options = [PRIOR, *range(len(CLASS_NAMES))] if allow_prior else list(range(len(CLASS_NAMES)))
    tissue = c1.selectbox(label, options, key=f"{key}_tissue", index=0 if allow_prior else default,
                          format_func=lambda o: "a mix, as in the training split" if o == PRIOR else CLASS_NAMES[o])
    guidance = c2.slider("Guidance scale", 0.0, MAX_GUIDANCE, recommended, step=0.5, key=f"{key}_guidance",
                         help=f"Classifier-free guidance: uncond + s·(cond − uncond). 0 ignores the tissue, 1 is the plain "
                              f"conditional model, higher sticks closer to the tissue at the cost of variety. "
                              f"{recommended:g} had the best FD in this model's guidance sweep.")
    return Tissue(tissue, float(guidance))


