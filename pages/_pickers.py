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
    """What a visitor asked a tissue-conditional model for: a class index or PRIOR, the guidance scale, and the
    timesteps (lo, hi) it acts on (None: every step)."""

    tissue: int | str
    guidance: float
    interval: tuple[int, int] | None

    def describe(self) -> str:
        what = "tissues drawn as often as in the training split" if self.tissue == PRIOR else CLASS_NAMES[self.tissue]
        band = f" for t in [{self.interval[0]}, {self.interval[1]}]" if self.interval and self.guidance != 1 else ""
        return f"{what}, guidance {self.guidance:g}{band}"

    @property
    def key(self) -> tuple:
        """What the images depend on, for cache keys."""
        return (self.tissue if isinstance(self.tissue, (int, str)) else tuple(self.tissue), self.guidance, self.interval)


def tissue_picker(model: ActiveModel, key: str, container=st, allow_prior: bool = True, label: str = "Tissue",
                  default: int = 0) -> Tissue | None:
    """A tissue choice, a guidance slider and the band of timesteps it acts on, for a tissue-conditional model
    (None, and nothing drawn, otherwise); ``allow_prior=False`` offers only the tissues themselves (``default``
    first chosen)."""
    if not model.conditional:
        return None
    recommended = model.checkpoint.sampling.guidance
    T = model.checkpoint.schedule.num_timesteps
    band = model.checkpoint.sampling.guidance_interval or (0, T - 1)
    c1, c2 = container.columns(2)
    options = [PRIOR, *range(len(CLASS_NAMES))] if allow_prior else list(range(len(CLASS_NAMES)))
    tissue = c1.selectbox(label, options, key=f"{key}_tissue", index=0 if allow_prior else default,
                          format_func=lambda o: "a mix, as in the training split" if o == PRIOR else CLASS_NAMES[o])
    guidance = c2.slider("Guidance scale", 0.0, MAX_GUIDANCE, recommended, step=0.5, key=f"{key}_guidance",
                         help=f"Classifier-free guidance: uncond + s·(cond − uncond). 0 ignores the tissue, 1 is the plain "
                              f"conditional model, higher sticks closer to the tissue at the cost of variety. "
                              f"{recommended:g} had the best FD in this model's guidance sweep.")
    lo, hi = container.slider("Guidance acts at timesteps", 0, T - 1, (min(band[0], T - 1), min(band[1], T - 1)),
                              key=f"{key}_band", disabled=guidance == 1.0,
                              help="Outside this band each step takes the plain conditional prediction (one network pass "
                                   "instead of two). Guidance at high noise (large t) pulls every sample toward the "
                                   "tissue's most typical look; at low noise it barely changes anything; in between "
                                   "it helps most (Kynkäänniemi et al. 2024). The whole range is guidance at every step. "
                                   + (f"This model's sweep chose [{band[0]}, {band[1]}]."
                                      if model.checkpoint.sampling.guidance_interval else ""))
    return Tissue(tissue, float(guidance), None if (lo, hi) == (0, T - 1) else (int(lo), int(hi)))


