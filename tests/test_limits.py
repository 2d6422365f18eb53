"""Bounded inputs (ddpm.limits): configs from outside are refused before any network or tensor exists,
with the same rules for a folder, an upload, the Hub, the CLI and the Python API."""
from __future__ import annotations

import io
import json
import typing
import zipfile

import pytest
import torch
from safetensors.torch import save

from ddpm import limits, unet
from ddpm.checkpoints import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, load_checkpoint, load_local, make_config
from ddpm.cli import main
from ddpm.limits import ConfigLimitError, check_model_config, check_schedule_config, parameter_count
from ddpm.presets import PRESETS
from ddpm.schedules import ScheduleConfig
from ddpm.unet import UNetConfig, build_unet, count_parameters
from ddpm.serving.uploads import load_upload

HUGE = {"base_channels": 2048, "num_res_blocks": 4}  # the issue's example: about 10 G parameters
HUGE_MESSAGE = r"model\.base_channels = 2048 is above the limit of 256"


@pytest.fixture
def no_network_built(monkeypatch):
    """Fail the test if any network is constructed (that is where the first tensors would be made)."""
    def refuse(self, config):
        raise AssertionError(f"a network was built for {config}")

    monkeypatch.setattr(unet.ResUNet, "__init__", refuse)
    monkeypatch.setattr(unet.SeedUNet, "__init__", refuse)


def huge_config_json() -> bytes:
    config = make_config(UNetConfig(), ScheduleConfig())
    config["model"].update(HUGE)
    return json.dumps(config).encode()


# ---- the parameter count from the config alone --------------------------------------------------
CONFIGS = [p.model for p in PRESETS.values()] + [
    UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(14,), norm_groups=4),
    UNetConfig(base_channels=16, channel_mults=(1, 3, 2), num_res_blocks=3, attention_resolutions=(28, 7), num_heads=2),
    UNetConfig(in_channels=1, base_channels=8, channel_mults=(2,), num_res_blocks=2, attention_resolutions=(),
               time_embed_dim=16, norm_groups=2),
    UNetConfig(architecture="seed", in_channels=1, time_embed_dim=64, image_size=64),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.architecture}-{c.base_channels}-{c.channel_mults}")
def test_the_parameter_count_from_the_config_is_the_built_networks(config):
    assert parameter_count(config) == count_parameters(build_unet(config)) == check_model_config(config)


@pytest.mark.skipif("num_classes" not in {f for f in UNetConfig.__dataclass_fields__}, reason="no class conditioning yet")
def test_the_parameter_count_includes_the_class_embeddings():
    config = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, norm_groups=4, num_classes=9)
    assert parameter_count(config) == count_parameters(build_unet(config))


def test_the_issues_huge_config_would_have_asked_for_about_ten_billion_parameters():
    too_big = dict(limits.DEFAULTS, **HUGE)
    # 2048 channels: every 3×3 conv of a level holds about (2048·mult)² · 9 weights
    assert 9e9 < parameter_count(too_big) < 11e9


# ---- one source for each bound ------------------------------------------------------------------
def test_the_defaults_limits_fills_in_are_the_config_dataclasses_defaults():
    # limits keeps copies (unet and schedules import limits, so importing them back would be a cycle): keep them equal
    assert limits.DEFAULTS == UNetConfig().to_dict()
    assert limits.SCHEDULE_DEFAULTS == ScheduleConfig().to_dict()
    assert limits.ARCHITECTURES == typing.get_args(unet.Architecture)


@pytest.mark.parametrize("field, value, message", [
    ("num_timesteps", 1, r"schedule\.num_timesteps = 1 is below the minimum of 2"),
    ("num_timesteps", 200.0, r"schedule\.num_timesteps = 200\.0 must be an integer in \[2, 1000\]"),
    ("cosine_s", float("nan"), r"schedule\.cosine_s = nan must be a number in \[0, 1\)"),
    ("beta_end", 1.5, r"schedule\.beta_end = 1\.5 must be a number in \[0, 1\)"),
])
def test_the_schedule_dataclass_refuses_what_a_config_json_would_with_the_same_message(field, value, message):
    with pytest.raises(ConfigLimitError, match=message):
        check_schedule_config({field: value})
    with pytest.raises(ConfigLimitError, match=message):
        ScheduleConfig(**{field: value})


# ---- each field, its value and its limit --------------------------------------------------------
@pytest.mark.parametrize("field, value, message", [
    ("base_channels", 2048, r"model\.base_channels = 2048 is above the limit of 256"),
    ("num_res_blocks", 50, r"model\.num_res_blocks = 50 is above the limit of 4"),
    ("channel_mults", [1, 2, 2, 2, 2, 2], r"model\.channel_mults has 6 entries; it must have 1 to 5"),
    ("channel_mults", [1, 64], r"model\.channel_mults\[1\] = 64 is above the limit of 8"),
    ("channel_mults", [], r"model\.channel_mults has 0 entries"),
    ("num_heads", 64, r"model\.num_heads = 64 is above the limit of 16"),
    ("image_size", 4096, r"model\.image_size = 4096 is above the limit of 256"),
    ("time_embed_dim", 100_000, r"model\.time_embed_dim = 100000 is above the limit of 1024"),
    ("base_channels", "32", r"model\.base_channels = '32' must be an integer"),
    ("base_channels", True, r"model\.base_channels = True must be an integer"),
    ("dropout", 1.5, r"model\.dropout = 1\.5 must be a number in \[0, 1\)"),
    ("num_heads", 3, r"model\.num_heads = 3 must divide every level's width \[32, 64\]"),
    ("norm_groups", 5, r"model\.norm_groups = 5 must divide"),
    ("num_classes", 5000, r"model\.num_classes = 5000 is above the limit of 1000"),
])
def test_a_field_out_of_bounds_is_named_with_its_value_and_limit(field, value, message):
    with pytest.raises(ConfigLimitError, match=message):
        check_model_config({field: value})


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigLimitError) as err:
        check_model_config({"base_channels": 2048, "num_res_blocks": 50})
    assert "base_channels = 2048" in str(err.value) and "num_res_blocks = 50" in str(err.value)


def test_fields_in_bounds_that_add_up_to_too_many_parameters_are_refused():
    config = {"base_channels": 256, "channel_mults": [1, 2, 4, 8], "num_res_blocks": 4}
    with pytest.raises(ConfigLimitError, match=r"asks for [\d,]+ parameters .* above the limit of 200,000,000"):
        check_model_config(config)
    assert check_model_config(config, max_parameters=2_000_000_000) == parameter_count(config)


def test_a_schedule_longer_than_the_limit_is_refused_in_json_and_in_the_api():
    with pytest.raises(ConfigLimitError, match=r"schedule\.num_timesteps = 10000 is above the limit of 1000"):
        check_schedule_config({"num_timesteps": 10_000})
    with pytest.raises(ConfigLimitError, match=r"schedule\.num_timesteps = 10000 is above the limit of 1000"):
        ScheduleConfig(num_timesteps=10_000)
    with pytest.raises(ConfigLimitError, match=r"schedule\.beta_end = nan"):
        check_schedule_config({"beta_end": float("nan")})
    check_schedule_config(ScheduleConfig(num_timesteps=1000))


# ---- the same rules wherever a config comes from ------------------------------------------------
def test_a_checkpoint_folder_with_a_huge_config_is_refused_before_the_network_is_built(tmp_path, no_network_built):
    (tmp_path / CONFIG_NAME).write_bytes(huge_config_json())
    (tmp_path / WEIGHTS_NAME).write_bytes(b"never read")
    with pytest.raises(CheckpointError, match=HUGE_MESSAGE):
        load_local(tmp_path)


def test_an_upload_with_a_huge_config_is_refused_before_the_network_is_built(no_network_built):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(CONFIG_NAME, huge_config_json())
        zf.writestr(WEIGHTS_NAME, b"never read")
    with pytest.raises(CheckpointError, match=HUGE_MESSAGE) as err:
        load_upload([("run.zip", buf.getvalue())])
    assert "ddpm-upload-" not in str(err.value)  # the message names the upload, not a temporary folder


def upload_of(config: UNetConfig, weights: dict) -> list[tuple[str, bytes]]:
    """config.json + model.safetensors of ``weights`` (tensors by name), as a visitor would upload them."""
    return [(CONFIG_NAME, json.dumps(make_config(config, ScheduleConfig(num_timesteps=20))).encode()),
            (WEIGHTS_NAME, save({k: v.contiguous() for k, v in weights.items()}))]


TINY = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(14,), norm_groups=4)


def _state_shapes(config: UNetConfig) -> dict:
    """The state dict's shapes, from a network built on the meta device (no memory)."""
    with torch.device("meta"):
        return {k: v.shape for k, v in build_unet(config).state_dict().items()}


TINY_SHAPES = _state_shapes(TINY)  # made before no_network_built forbids building


def test_an_upload_is_bounded_by_its_parameters_not_its_bytes(no_network_built):
    # the issue's upload: 46 M parameters fit the 52 MB cap as float8; the config alone is refused now
    big = UNetConfig(base_channels=88, channel_mults=(1, 2, 4), num_res_blocks=4, attention_resolutions=(28, 14, 7))
    assert 40e6 < parameter_count(big) < 50e6
    with pytest.raises(CheckpointError, match=r"describes a network of [\d,]+ parameters; uploads may have at most "
                                              r"13,107,200 \(52 MB of float32\)"):
        load_upload(upload_of(big, {"w": torch.zeros(1)}))


def test_an_upload_stored_as_float8_is_refused_naming_the_tensor_and_dtype(no_network_built):
    weights = {k: torch.zeros(s, dtype=torch.float8_e4m3fn if k == "conv_in.weight" else torch.float32)
               for k, s in TINY_SHAPES.items()}
    with pytest.raises(CheckpointError, match=r"tensor 'conv_in\.weight' of model\.safetensors is stored as F8_E4M3; "
                                              r"the app reads float32, float16, bfloat16 weights"):
        load_upload(upload_of(TINY, weights))


def test_an_upload_whose_weights_hold_more_values_than_its_config_has_parameters_is_refused(no_network_built):
    weights = {k: torch.zeros(s) for k, s in TINY_SHAPES.items()}
    weights["extra"] = torch.zeros(1000, 1000)  # a small config, a large file
    with pytest.raises(CheckpointError, match=rf"holds {parameter_count(TINY) + 10**6:,} values but the network in "
                                              rf"config\.json has {parameter_count(TINY):,} parameters"):
        load_upload(upload_of(TINY, weights))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_an_upload_in_half_precision_loads_as_float32(dtype):
    model = build_unet(TINY)
    torch.nn.init.normal_(model.conv_out.weight)  # zero at initialisation: give the cast something to round
    half = {k: v.to(getattr(torch, dtype)) for k, v in model.state_dict().items()}
    ckpt = load_upload(upload_of(TINY, half))
    assert ckpt.model.conv_out.weight.dtype == torch.float32
    assert torch.equal(ckpt.model.conv_out.weight, half["conv_out.weight"].float())


def test_a_hub_repo_with_a_huge_config_is_refused_before_its_weights_are_downloaded(fake_hub, no_network_built):
    fake_hub.add_repo("owner/huge", {CONFIG_NAME: huge_config_json(), WEIGHTS_NAME: b"x" * 1000})
    with pytest.raises(CheckpointError, match=HUGE_MESSAGE):
        load_checkpoint("owner/huge")
    assert not [path for _, path in fake_hub.requests if path.endswith(WEIGHTS_NAME)]


def test_the_python_api_refuses_a_huge_config_before_building(no_network_built):
    with pytest.raises(ConfigLimitError, match=HUGE_MESSAGE):
        build_unet(UNetConfig(**HUGE))


def test_the_cli_refuses_a_schedule_beyond_the_limit_with_a_message(tmp_path, capsys, no_network_built):
    assert main(["train", "--subset", "--timesteps", "5000", "--out", str(tmp_path / "run")]) == 2
    assert "schedule.num_timesteps = 5000 is above the limit of 1000" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
