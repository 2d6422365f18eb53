"""The sampling settings as one value: which sampler, how many steps, how much guidance, and where.

``SamplingSpec()`` is the one default (``samplers.DEFAULT_SAMPLER`` with ``samplers.DEFAULT_STEPS``, guidance 1);
``SamplingSpec.recommended(config)`` is what a checkpoint's config.json recommends in its "sampling" section
(chosen by its own guidance sweep, bench/quality.py), and ``spec.replace(...)`` applies a caller's overrides.
The CLI, the pages, the job worker, the preview and the model card all go through this class, so a new
setting (a guidance band, say) is one field here.

A spec is checked when it is made, whatever it came from (a CLI flag, a slider, an uploaded config): the
sampler must be in ``samplers.SAMPLERS``, the steps a whole number in [1, MAX_TIMESTEPS], the guidance a
finite number in [0, MAX_GUIDANCE], η one in [0, 1] (DDIM's alone) and the guidance band two whole timesteps
0 ≤ lo ≤ hi < MAX_TIMESTEPS.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from .limits import MAX_TIMESTEPS
from .samplers import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS, Sampler, get_sampler, guidance_applies

MAX_GUIDANCE = 6.0  # the app's slider goes this far; beyond it samples only saturate (bench/results/quality.md)
#: Keys of a config's "sampling" section that are notes for people, not settings
NOTE_KEYS = ("chosen_by",)


class SamplingSpecError(ValueError):
    """A sampling setting is out of range or of the wrong type; the message names each field and what it allows."""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class SamplingSpec:
    """How to sample: ``sampler`` (a name in ``SAMPLERS``), ``steps`` (None: the sampler's own count, all T for
    DDPM), classifier-free ``guidance`` (1 = plain conditional; ignored by an unconditional model), DDIM's ``eta``,
    and ``guidance_interval`` (lo, hi): the timesteps lo ≤ t ≤ hi where the guidance acts (None: every step;
    outside the band a step takes the plain conditional prediction, one pass of batch B instead of 2B)."""

    sampler: str = DEFAULT_SAMPLER
    steps: int | None = DEFAULT_STEPS
    guidance: float = 1.0
    eta: float = 0.0
    guidance_interval: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.sampler, str) or self.sampler not in SAMPLERS:
            problems.append(f"sampler = {self.sampler!r} must be one of {', '.join(SAMPLERS)}")
        if self.steps is not None and not (isinstance(self.steps, int) and not isinstance(self.steps, bool)
                                           and 1 <= self.steps <= MAX_TIMESTEPS):
            problems.append(f"steps = {self.steps!r} must be a whole number in [1, {MAX_TIMESTEPS}]")
        if not (_is_number(self.guidance) and math.isfinite(self.guidance) and 0 <= self.guidance <= MAX_GUIDANCE):
            problems.append(f"guidance = {self.guidance!r} must be a finite number in [0, {MAX_GUIDANCE:g}]")
        interval = self.guidance_interval
        if interval is not None:
            if (isinstance(interval, (list, tuple)) and len(interval) == 2 and all(_is_whole(v) for v in interval)
                    and 0 <= interval[0] <= interval[1] < MAX_TIMESTEPS):
                object.__setattr__(self, "guidance_interval", (int(interval[0]), int(interval[1])))  # JSON gives a list
            else:
                problems.append(f"guidance_interval = {str(interval)[:40]} must be two whole timesteps lo ≤ hi in "
                                f"[0, {MAX_TIMESTEPS - 1}], or null for every step")
        if not (_is_number(self.eta) and 0 <= self.eta <= 1):
            problems.append(f"eta = {self.eta!r} must be a number in [0, 1]")
        elif not problems:
            try:
                get_sampler(self.sampler, eta=self.eta)  # the sampler decides whether it has an η
            except ValueError as err:
                problems.append(str(err))
        if problems:
            raise SamplingSpecError("; ".join(problems))
        object.__setattr__(self, "guidance", float(self.guidance))
        object.__setattr__(self, "eta", float(self.eta))

    @classmethod
    def recommended(cls, config: Mapping[str, Any] | None) -> "SamplingSpec":
        """The spec a checkpoint's config recommends in its "sampling" section (each field it leaves out takes the
        default; a sampler that visits every timestep gets no step count). Refused with a SamplingSpecError
        when the section is not an object, names an unknown field, or a value is out of range, including more
        steps than the schedule's T."""
        section = (config or {}).get("sampling") or {}
        if not isinstance(section, Mapping):
            raise SamplingSpecError(f"the sampling section must be a JSON object, got {type(section).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k)[:40] for k in section if k not in fields and k not in NOTE_KEYS)
        if unknown:
            raise SamplingSpecError(f"the sampling section has unknown fields {unknown}; it may hold {sorted(fields)}")
        values = {k: v for k, v in section.items() if k in fields}
        if values.get("sampler") in SAMPLERS and SAMPLERS[values["sampler"]].every_timestep:
            values.setdefault("steps", None)
        spec = cls(**values)
        schedule = (config or {}).get("schedule")
        T = schedule.get("num_timesteps") if isinstance(schedule, Mapping) else None
        if isinstance(T, int) and spec.steps is not None and spec.steps > T:
            raise SamplingSpecError(f"steps = {spec.steps} is more than this model's T = {T}")
        if isinstance(T, int) and spec.guidance_interval is not None and spec.guidance_interval[1] >= T:
            raise SamplingSpecError(f"guidance_interval = {list(spec.guidance_interval)} reaches past this model's last "
                                    f"timestep, T − 1 = {T - 1}")
        return spec

    def replace(self, **overrides: Any) -> "SamplingSpec":
        """This spec with the fields given (a None means "not given" and keeps the field; ``EVERY_STEP`` as the
        guidance interval removes the band). Choosing a sampler that visits every timestep without giving steps
        drops the step count."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if given.get("guidance_interval") is EVERY_STEP:
            given["guidance_interval"] = None
        sampler = given.get("sampler", self.sampler)
        if sampler in SAMPLERS and SAMPLERS[sampler].every_timestep and "steps" not in given:
            given["steps"] = None
        return dataclasses.replace(self, **given)

    def fitted(self, num_timesteps: int) -> "SamplingSpec":
        """The spec a model with ``num_timesteps`` can run: no step count for a sampler that visits every
        timestep, else the steps within [1, T] (a slider set for a larger T)."""
        if self.make_sampler().every_timestep:
            return dataclasses.replace(self, steps=None)
        return dataclasses.replace(self, steps=min(self.steps or DEFAULT_STEPS, num_timesteps))

    def make_sampler(self, clip_sample: bool = True) -> Sampler:
        return get_sampler(self.sampler, eta=self.eta, clip_sample=clip_sample)

    def timesteps(self, num_timesteps: int) -> list[int]:
        """The timesteps this spec denoises for a schedule of T = ``num_timesteps`` (a ValueError if it cannot)."""
        return self.make_sampler().timesteps(num_timesteps, self.steps)

    def num_model_calls(self, num_timesteps: int) -> int:
        """Network evaluations of one sampling run (``num_guided_calls`` of them on a batch of 2B)."""
        return len(self.timesteps(num_timesteps))

    def is_guided(self, conditional: bool) -> bool:
        """Whether some network calls run the conditional and unconditional predictions (a batch of 2B)."""
        return conditional and self.guidance not in (0.0, 1.0)

    def num_guided_calls(self, num_timesteps: int, conditional: bool = True) -> int:
        """How many of the run's network calls are guided (a batch of 2B): those at timesteps inside the band."""
        if not self.is_guided(conditional):
            return 0
        return sum(guidance_applies(t, self.guidance_interval) for t in self.timesteps(num_timesteps))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (the band as a list, as config.json stores it)."""
        d = dataclasses.asdict(self)
        d["guidance_interval"] = None if self.guidance_interval is None else list(self.guidance_interval)
        return d

    def describe(self, conditional: bool = True) -> str:
        """In words, e.g. "dpmpp, 20 steps, guidance 2.5 for t in [30, 130]"."""
        what = f"{self.sampler}, {'all' if self.steps is None else self.steps} steps"
        what += f", η {self.eta:g}" if self.eta else ""
        if not conditional:
            return what
        band = self.guidance_interval
        return what + f", guidance {self.guidance:g}" + (f" for t in [{band[0]}, {band[1]}]" if band and
                                                         self.guidance != 1 else "")


DEFAULT_SPEC = SamplingSpec()
#: ``spec.replace(guidance_interval=EVERY_STEP)``: guidance at every step (a None would mean "keep the band")
EVERY_STEP = (0, MAX_TIMESTEPS - 1)
