"""What a request costs, in floating-point operations counted from the config alone, and whether the server runs it.

One network pass costs the FLOPs of ``limits.layers(config)``: each convolution and linear layer at the
resolution it runs at (2·k²·C_in·C_out per pixel) and attention's QKᵀ and AV products (4·(HW)²·C), exactly what
torch's FlopCounterMode counts (tests/test_cost.py); group norms, activations and additions are left out (a few
percent). A request multiplies that by its network passes (``spec.num_model_calls(T)``) and its batch (n
images, twice that for the passes classifier-free guidance acts on: every pass, or those inside its band). An evaluation adds its scoring: the tissue encoder on the
generated and held-out patches, their nearest-neighbour searches over the training split (8 orientations in
pixel space, and in feature space) and the metrics' products against the reference split.

``check_request_cost`` refuses a request beyond ``ServerLimits.max_request_gflop`` before it runs, in words a
visitor can act on; ``deadline_s`` is how long it may then run (from the CPU speed measured by
bench/request_cost.py, results in bench/results/request_cost.md).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any

from ..data import SPLIT_SIZES
from ..evaluation.encoder import EncoderConfig
from ..limits import DEFAULTS, Layer, layers, parameter_count
from ..samplers import SAMPLERS
from ..sampling_spec import SamplingSpec
from .server_limits import ServerLimits

KINDS = ("samples", "trajectory", "evaluation", "edit")
#: GFLOP/s of one request on one CPU thread, the slowest one-thread run of bench/request_cost.py: 40-66 in fp32, 76-115
#: in bf16 over four runs (the default model, 16 images, DPM-Solver++ 20, on the 2-core dev machine at load 2-4;
#: results/request_cost.md holds the last). Two threads on busy cores fell to 7-22: the app runs one per computation.
CPU_GFLOPS = 40.0
#: GFLOP/s of an evaluation's scoring on one thread: its nearest-neighbour search converts the uint8 training split to
#: float for every orientation, so it runs far below a network pass (12.6-15.6 for 100 patches, the same bench)
SCORING_GFLOPS = 10.0
DEADLINE_FACTOR = 4.0  # a request may run 4× its expected time on one thread (other visitors share the cores)
DEADLINE_FLOOR_S = 120.0  # small requests still get time to wait for a core: the Reverse page's trajectory, shared
#: by ten visitors opening the page at once beside the browser that drew them (bench/crowd_check.py), took 16-26 s and
#: once 30.3 s, when a 30-s floor cancelled it for all ten
_KID_SUBSETS, _KID_SUBSET_SIZE, _HELD_OUT = 100, 1000, 2000  # as ddpm.evaluation.report / metrics use them


class RequestTooCostlyError(ValueError):
    """A request would cost more than the server allows; the message names its cost, the budget and what to change."""


@dataclass(frozen=True)
class RequestCost:
    """The FLOPs of one request: the network's passes, plus an evaluation's scoring (0 otherwise)."""

    kind: str
    network_flops: float
    scoring_flops: float
    passes: int  # network evaluations per image
    images: int  # n
    guided_passes: int  # of those, the passes that run a batch of 2n (conditional and unconditional)
    parameters: int
    sampler: str

    @property
    def guided(self) -> bool:
        return self.guided_passes > 0

    @property
    def flops(self) -> float:
        return self.network_flops + self.scoring_flops

    @property
    def gflop(self) -> float:
        return self.flops / 1e9

    @property
    def expected_s(self) -> float:
        """Seconds on one CPU thread at the measured speeds (``CPU_GFLOPS``, ``SCORING_GFLOPS``)."""
        return self.network_flops / (CPU_GFLOPS * 1e9) + self.scoring_flops / (SCORING_GFLOPS * 1e9)

    def describe(self) -> str:
        """In words, e.g. "DDPM over 1000 steps × 32 images, each twice for guidance, on a 46 M-parameter network"."""
        name = SAMPLERS[self.sampler].label.split(" (")[0]
        twice = ("" if not self.guided else ", each twice for guidance," if self.guided_passes == self.passes
                 else f", {self.guided_passes} of the steps twice for guidance,")
        what = (f"{name} over {self.passes} step{'s' * (self.passes != 1)} × {self.images} image"
                f"{'s' * (self.images != 1)}{twice} on a {_millions(self.parameters)}-parameter network")
        if self.scoring_flops:
            what += f", then about {_gflop(self.scoring_flops)} GFLOP to score them"
        return what


def _millions(count: int) -> str:
    return f"{count / 1e6:.2g} M" if count >= 1e5 else f"{count:,}"


def _gflop(flops: float) -> str:
    g = flops / 1e9
    return f"{g:,.0f}" if g >= 10 else f"{g:.2g}"


def flops_per_pass(model_config: Any) -> int:
    """FLOPs of one network pass on one image, from the config alone (``limits.layers``; no network is built)."""
    return sum(layer.flops for layer in layers(model_config))


def encoder_flops(config: EncoderConfig | None = None, image_size: int = 28) -> int:
    """FLOPs of the tissue encoder on one image (ddpm.evaluation.encoder.TissueEncoder: two 3×3 convs per stage,
    2× max-pooling between stages, a feature layer and the classifier)."""
    config = config or EncoderConfig()
    total, cin, res = 0, 3, image_size
    for i, c in enumerate(config.channels):
        total += Layer("conv", cin, c, 3, res * res).flops + Layer("conv", c, c, 3, res * res).flops
        cin, res = c, res // 2 if i < len(config.channels) - 1 else res
    return total + Layer("conv", cin, config.feature_dim).flops + Layer("conv", config.feature_dim, config.num_classes).flops


def scoring_flops(n: int, train_size: int = SPLIT_SIZES["train"], reference_size: int = SPLIT_SIZES["val"],
                  image_size: int = 28, channels: int = 3, encoder: EncoderConfig | None = None) -> float:
    """FLOPs of scoring ``n`` generated patches (ddpm.evaluation.report.evaluate_images with its floor), against a
    training split of ``train_size`` and a reference split of ``reference_size`` (PathMNIST's by default).

    Not counted: encoding the reference splits themselves, done once per process and cached
    (``reference_encoding_flops``)."""
    encoder = encoder or EncoderConfig()
    held = min(n, _HELD_OUT, reference_size)  # the floor's held-out patches go through the same searches
    queries, d, f = n + held, channels * image_size * image_size, encoder.feature_dim
    encode = queries * encoder_flops(encoder, image_size)
    search = queries * train_size * (8 * 2 * d + 2 * f)  # pixel space over 8 orientations, then feature space
    kid = 3 * _KID_SUBSETS * 3 * 2 * f * min(_KID_SUBSET_SIZE, n, reference_size) ** 2
    prdc = 3 * 2 * f * (reference_size ** 2 + reference_size * n)  # 3 metric sets: generated, floor, centre shift
    return float(encode + search + kid + prdc)


def reference_encoding_flops(encoder: EncoderConfig | None = None) -> float:
    """The one-time cost of encoding PathMNIST's three splits, paid by the first evaluation of each process."""
    return float(sum(SPLIT_SIZES.values()) * encoder_flops(encoder))


def request_cost(model_config: Any, spec: SamplingSpec, n: int, num_timesteps: int, kind: str = "samples",
                 conditional: bool | None = None, passes: int | None = None) -> RequestCost:
    """The FLOPs of sampling ``n`` images with ``spec`` (for a schedule of T = ``num_timesteps``): a "samples"
    grid, a "trajectory" (the same passes), an "evaluation" (plus its scoring) or an "edit" (``passes`` network
    calls on a batch of n, ``edit_request.EditRequest.network_calls``; otherwise the spec's). ``conditional``
    defaults to whether the config has tissue classes; guidance doubles a pass's batch only for a conditional model,
    and only for the passes inside its band (``spec.num_guided_calls``; an edit's passes are all counted as guided
    when its spec is: an upper bound)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"number of images must be a whole number ≥ 1, got {n!r}")
    if (kind == "edit") != (passes is not None) or not (passes is None or (isinstance(passes, int) and passes >= 1)):
        raise ValueError(f"an edit, and only an edit, gives its network calls (a whole number ≥ 1), got {passes!r}")
    cfg = {**DEFAULTS, **(asdict(model_config) if is_dataclass(model_config) else model_config)}
    conditional = cfg.get("num_classes") is not None if conditional is None else conditional
    if passes is None:
        passes = spec.num_model_calls(num_timesteps)
        guided_passes = spec.num_guided_calls(num_timesteps, conditional)
    else:
        guided_passes = passes if spec.is_guided(conditional) else 0
    network = float(flops_per_pass(cfg)) * (passes + guided_passes) * n
    scoring = scoring_flops(n, image_size=cfg["image_size"], channels=cfg["in_channels"]) if kind == "evaluation" else 0.0
    return RequestCost(kind, network, scoring, passes, n, guided_passes, parameter_count(cfg), spec.sampler)


def _advice(cost: RequestCost) -> str:
    ways = []
    if SAMPLERS[cost.sampler].every_timestep:
        ways.append("DPM-Solver++ (20 steps)")
    elif cost.passes > 20:
        ways.append("fewer steps")
    if cost.images > 1:
        ways.append("fewer images")
    if cost.guided:
        ways.append("guidance 1 (one pass per image)")
    if not ways:
        ways.append("a smaller model")
    return ", ".join(ways[:-1]) + (" or " if len(ways) > 1 else "") + ways[-1]


def check_request_cost(model_config: Any, spec: SamplingSpec, n: int, num_timesteps: int, limits: ServerLimits,
                       kind: str = "samples", conditional: bool | None = None, passes: int | None = None) -> RequestCost:
    """The request's cost (``request_cost``), or a RequestTooCostlyError when it is above ``limits.max_request_gflop``.

    The message names the cost and what makes it up, the budget, and what the visitor can change, e.g. "this
    request needs about 4,400 GFLOP (DDPM over 1000 steps × 32 images on a 46 M-parameter network); this server
    allows 300 GFLOP per request: choose DPM-Solver++ (20 steps) or fewer images".
    """
    cost = request_cost(model_config, spec, n, num_timesteps, kind, conditional, passes)
    if cost.gflop > limits.max_request_gflop:
        raise RequestTooCostlyError(
            f"this request needs about {_gflop(cost.flops)} GFLOP ({cost.describe()}); this server allows "
            f"{limits.max_request_gflop:,.0f} GFLOP per request: choose {_advice(cost)}")
    return cost


def deadline_s(cost: RequestCost | float, limits: ServerLimits) -> float:
    """Seconds a request may run before it is cancelled: ``DEADLINE_FACTOR`` × its expected time on one thread
    (``RequestCost.expected_s``; a bare FLOP count is taken as network passes at ``CPU_GFLOPS``), at least
    ``DEADLINE_FLOOR_S``, at most ``limits.request_deadline_s``."""
    if not isinstance(cost, RequestCost):
        if not (isinstance(cost, (int, float)) and math.isfinite(cost) and cost >= 0):
            raise ValueError(f"a request's cost must be a finite number of FLOPs ≥ 0, got {cost!r}")
        cost = RequestCost("samples", float(cost), 0.0, 0, 0, 0, 0, "dpmpp")
    return min(limits.request_deadline_s, max(DEADLINE_FLOOR_S, DEADLINE_FACTOR * cost.expected_s))
