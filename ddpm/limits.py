"""Bounds on every model and schedule setting that can come from outside: a config.json (folder, upload,
Hub), the CLI, a job request or the Python API.

A config is checked as plain data, before any network or tensor exists: each field's type and range,
then the parameter count, summed over the layers ``layers(config)`` lists (no network is built; ``cost``
sums their FLOPs from the same list).
``{"base_channels": 2048, "num_res_blocks": 4}`` would ask for about 10 G parameters (37 GiB); it is
refused here with a message that names the field, its value and the limit.  The bounds are generous
for the CPU and GPU recipes of ``presets`` (the ``large`` preset has 6.5 M parameters).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, Mapping

MAX_IMAGE_SIZE = 256  # MedMNIST+ goes up to 224
MAX_IN_CHANNELS = 4
MAX_BASE_CHANNELS = 256
MAX_LEVELS = 5  # len(channel_mults)
MAX_CHANNEL_MULT = 8
MAX_RES_BLOCKS = 4
MAX_ATTENTION_LEVELS = 4  # len(attention_resolutions)
MAX_HEADS = 16
MAX_TIME_EMBED_DIM = 1024
MAX_NORM_GROUPS = 64
MAX_CLASSES = 1000
MAX_PARAMETERS = 200_000_000  # 0.8 GB of float32 weights
MAX_TIMESTEPS = 1000  # the DDPM paper's T; a DDPM trajectory costs T network calls

ARCHITECTURES = ("seed", "resunet")
# UNetConfig's and ScheduleConfig's defaults, for the fields a config.json leaves out. They are copies, not imports:
# unet and schedules import this module (their dataclasses check themselves here), so reading their defaults from
# here would be an import cycle. tests/test_limits.py keeps each copy equal to its dataclass.
DEFAULTS: dict[str, Any] = {"architecture": "resunet", "image_size": 28, "in_channels": 3, "base_channels": 32,
                            "channel_mults": (1, 2, 2), "num_res_blocks": 2, "attention_resolutions": (7,),
                            "num_heads": 1, "time_embed_dim": 128, "dropout": 0.0, "norm_groups": 8, "num_classes": None}
SCHEDULE_DEFAULTS: dict[str, Any] = {"kind": "cosine", "num_timesteps": 200, "beta_start": 1e-4, "beta_end": 0.02,
                                     "cosine_s": 0.008, "zero_terminal_snr": True, "prediction_type": "v_prediction"}


class ConfigLimitError(ValueError):
    """A config asks for more than this library builds; the message names each field, value and limit."""


def _as_dict(config: Any) -> Mapping[str, Any]:
    if is_dataclass(config):
        return asdict(config)
    if not isinstance(config, Mapping):
        raise ConfigLimitError(f"a config must be a JSON object, got {type(config).__name__}")
    return config


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _int_in(problems: list[str], section: str, name: str, value: Any, low: int, high: int) -> None:
    if not _is_int(value):
        problems.append(f"{section}.{name} = {value!r} must be an integer in [{low}, {high}]")
    elif value > high:
        problems.append(f"{section}.{name} = {value} is above the limit of {high}")
    elif value < low:
        problems.append(f"{section}.{name} = {value} is below the minimum of {low}")


def _int_list(problems: list[str], section: str, name: str, value: Any, lengths: tuple[int, int], low: int,
              high: int) -> None:
    if not isinstance(value, (list, tuple)):
        problems.append(f"{section}.{name} = {value!r} must be a list of integers")
    elif not lengths[0] <= len(value) <= lengths[1]:
        problems.append(f"{section}.{name} has {len(value)} entries; it must have {lengths[0]} to {lengths[1]}")
    else:
        for i, v in enumerate(value):
            _int_in(problems, section, f"{name}[{i}]", v, low, high)


def _raise(problems: list[str]) -> None:
    if problems:
        raise ConfigLimitError("; ".join(problems))


# ---- the network's layers, from the config alone (mirrors unet.SeedUNet / unet.ResUNet) ------------
@dataclass(frozen=True)
class Layer:
    """One layer of the network a config describes, as plain numbers.

    ``kind``: "conv" (a linear layer is a 1×1 conv at one position), "norm" (GroupNorm's scale and shift),
    "attention" (the QKᵀ and AV products of self-attention over ``positions`` pixels; its 1×1 convs are
    "conv" layers) or "embedding" (``cin`` rows of ``cout`` values). ``positions``: the pixels a conv computes
    (its input's pixels for the seed network's transposed conv).
    """

    kind: str
    cin: int
    cout: int = 0
    k: int = 1
    positions: int = 1

    @property
    def parameters(self) -> int:
        if self.kind == "conv":
            return self.cin * self.cout * self.k * self.k + self.cout
        return {"norm": 2 * self.cin, "embedding": self.cin * self.cout}.get(self.kind, 0)

    @property
    def flops(self) -> int:
        """Multiply-adds × 2 for one image; norms and embedding look-ups count 0 (as torch's FlopCounterMode)."""
        if self.kind == "conv":
            return 2 * self.cin * self.cout * self.k * self.k * self.positions
        if self.kind == "attention":  # QKᵀ: (HW)²·C multiply-adds over all heads, and as many for AV
            return 4 * self.positions ** 2 * self.cin
        return 0


def _linear(cin: int, cout: int) -> Layer:
    return Layer("conv", cin, cout)


def _res_block(cin: int, cout: int, emb: int, res: int) -> list[Layer]:
    pix = res * res
    skip = [Layer("conv", cin, cout, 1, pix)] if cin != cout else []
    return [Layer("norm", cin), Layer("conv", cin, cout, 3, pix), _linear(emb, cout), Layer("norm", cout),
            Layer("conv", cout, cout, 3, pix), *skip]


def _attention(c: int, res: int) -> list[Layer]:
    pix = res * res
    return [Layer("norm", c), Layer("conv", c, 3 * c, 1, pix), Layer("attention", c, positions=pix),
            Layer("conv", c, c, 1, pix)]


def layers(config: Any) -> list[Layer]:
    """Every layer with weights or matrix products of the network ``config`` describes, built from the config alone."""
    cfg = {**DEFAULTS, **_as_dict(config)}
    c, emb, size = cfg["in_channels"], cfg["time_embed_dim"], cfg["image_size"]
    classes = cfg.get("num_classes")
    out = [Layer("embedding", classes + 1, emb)] if classes is not None else []  # the last one is "no class"
    if cfg["architecture"] == "seed":
        full, half = size * size, (size // 2) ** 2
        return out + [_linear(32, emb), _linear(emb, emb), Layer("conv", c, 32, 3, full), Layer("conv", 32, 32, 3, full),
                      Layer("conv", 32, 64, 4, half), Layer("conv", 64, 64, 3, half),
                      Layer("conv", 64, 32, 4, half),  # the transposed conv: 4×4 per input pixel
                      Layer("conv", 32, 32, 3, full), Layer("conv", 32, c, 3, full), _linear(emb, 32), _linear(emb, 64)]
    ch, mults, blocks = cfg["base_channels"], tuple(cfg["channel_mults"]), cfg["num_res_blocks"]
    attn_at, res = set(cfg["attention_resolutions"]), size
    out += [_linear(ch, emb), _linear(emb, emb), Layer("conv", c, ch, 3, size * size)]
    skips, cur = [ch], ch
    for level, mult in enumerate(mults):
        for _ in range(blocks):
            out += _res_block(cur, ch * mult, emb, res) + (_attention(ch * mult, res) if res in attn_at else [])
            cur = ch * mult
            skips.append(cur)
        if level < len(mults) - 1:
            res //= 2
            out.append(Layer("conv", cur, cur, 3, res * res))  # stride 2
            skips.append(cur)
    out += _res_block(cur, cur, emb, res) + _attention(cur, res) + _res_block(cur, cur, emb, res)
    for level, mult in reversed(list(enumerate(mults))):
        for _ in range(blocks + 1):
            out += _res_block(cur + skips.pop(), ch * mult, emb, res) + (_attention(ch * mult, res) if res in attn_at else [])
            cur = ch * mult
        if level > 0:
            res *= 2
            out.append(Layer("conv", cur, cur, 3, res * res))  # after the nearest-neighbour upsampling
    return out + [Layer("norm", cur), Layer("conv", cur, c, 3, size * size)]


def parameter_count(config: Any) -> int:
    """Trainable parameters of the network ``config`` describes, counted without building it."""
    return sum(layer.parameters for layer in layers(config))


# ---- the checks -------------------------------------------------------------------------------------
def check_model_config(config: Any, max_parameters: int = MAX_PARAMETERS) -> int:
    """Refuse a model config (dict or UNetConfig) outside the bounds; returns its parameter count.

    Raises ConfigLimitError naming every field out of bounds with its value and the limit.
    """
    full = {**DEFAULTS, **_as_dict(config)}
    s, problems = "model", []
    if full["architecture"] not in ARCHITECTURES:
        problems.append(f"model.architecture = {full['architecture']!r} must be one of {list(ARCHITECTURES)}")
    _int_in(problems, s, "image_size", full["image_size"], 4, MAX_IMAGE_SIZE)
    _int_in(problems, s, "in_channels", full["in_channels"], 1, MAX_IN_CHANNELS)
    _int_in(problems, s, "base_channels", full["base_channels"], 1, MAX_BASE_CHANNELS)
    _int_list(problems, s, "channel_mults", full["channel_mults"], (1, MAX_LEVELS), 1, MAX_CHANNEL_MULT)
    _int_in(problems, s, "num_res_blocks", full["num_res_blocks"], 1, MAX_RES_BLOCKS)
    _int_list(problems, s, "attention_resolutions", full["attention_resolutions"], (0, MAX_ATTENTION_LEVELS), 1,
              MAX_IMAGE_SIZE)
    _int_in(problems, s, "num_heads", full["num_heads"], 1, MAX_HEADS)
    _int_in(problems, s, "time_embed_dim", full["time_embed_dim"], 2, MAX_TIME_EMBED_DIM)
    _int_in(problems, s, "norm_groups", full["norm_groups"], 1, MAX_NORM_GROUPS)
    if full.get("num_classes") is not None:
        _int_in(problems, s, "num_classes", full["num_classes"], 1, MAX_CLASSES)
    if not (_is_number(full["dropout"]) and 0 <= full["dropout"] < 1):
        problems.append(f"model.dropout = {full['dropout']!r} must be a number in [0, 1)")
    _raise(problems)
    if full["architecture"] == "resunet":  # GroupNorm and the attention heads split every level's width evenly
        widths = sorted({full["base_channels"] * m for m in full["channel_mults"]})
        if any(w % full["norm_groups"] for w in [full["base_channels"], *widths]):
            problems.append(f"model.norm_groups = {full['norm_groups']} must divide base_channels and every level's "
                            f"width {widths}")
        if any(w % full["num_heads"] for w in widths):
            problems.append(f"model.num_heads = {full['num_heads']} must divide every level's width {widths}")
    _raise(problems)
    count = parameter_count(full)
    if count > max_parameters:
        raise ConfigLimitError(f"model config asks for {count:,} parameters ({count * 4 / 2**30:.1f} GiB in float32), "
                               f"above the limit of {max_parameters:,}: lower base_channels, channel_mults or num_res_blocks")
    return count


def check_schedule_config(config: Any) -> None:
    """Refuse a schedule config (dict or ScheduleConfig) whose T or β range is out of bounds."""
    cfg, problems = {**SCHEDULE_DEFAULTS, **_as_dict(config)}, []
    _int_in(problems, "schedule", "num_timesteps", cfg["num_timesteps"], 2, MAX_TIMESTEPS)
    for name in ("beta_start", "beta_end", "cosine_s"):
        value = cfg[name]
        if not (_is_number(value) and 0 <= value < 1):
            problems.append(f"schedule.{name} = {value!r} must be a number in [0, 1)")
    _raise(problems)


def check_checkpoint_config(config: Mapping[str, Any], max_parameters: int = MAX_PARAMETERS) -> int:
    """Both sections of a checkpoint's config.json; returns the model's parameter count."""
    check_schedule_config(config.get("schedule", {}))
    return check_model_config(config.get("model", {}), max_parameters)
