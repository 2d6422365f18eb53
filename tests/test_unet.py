"""The U-Nets: shapes for every preset, the paper network's size, configs, and that they can learn."""
from __future__ import annotations

import json
import math

import pytest
import torch

from ddpm.data import to_model_range
from ddpm.presets import PRESETS, get_preset
from ddpm.schedules import NoiseSchedule, ScheduleConfig
from ddpm.training import diffusion_loss
from ddpm.unet import (AttentionBlock, ClassEmbedding, ResUNet, SeedUNet, UNetConfig, build_unet, count_parameters,
                       load_weights_from, timestep_embedding)


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Add noise to every weight, so zero-initialised output layers do not hide the rest of the network."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_maps_a_28x28_batch_to_the_same_shape(name):
    torch.manual_seed(0)
    model = perturbed(build_unet(PRESETS[name].model))
    x = torch.randn(2, 3, 28, 28)
    with torch.inference_mode():
        out = model(x, torch.tensor([0, 199]))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["small", "seed"])
def test_presets_resized_to_64_map_a_64x64_batch_to_the_same_shape(name):
    preset = get_preset(name, 64)
    assert preset.model.image_size == 64
    if name == "small":
        assert preset.model.attention_resolutions == (16,)  # 7×7 at 28 px is the same level as 16×16 at 64 px
    model = perturbed(build_unet(preset.model))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert model(x, torch.tensor([5])).shape == x.shape


def test_get_preset_rejects_unknown_names_and_odd_sizes_for_the_seed_network():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        get_preset("huge")
    with pytest.raises(ValueError, match="even image size"):
        get_preset("seed", 27)


def test_seed_preset_is_the_papers_155939_parameter_network():
    model = build_unet(PRESETS["seed"].model)
    assert isinstance(model, SeedUNet)
    assert count_parameters(model) == 155_939  # ~0.16 M, as in the paper's notebook


def test_preset_sizes_match_their_descriptions():
    assert round(count_parameters(build_unet(PRESETS["small"].model)) / 1e6, 1) == 1.6
    assert round(count_parameters(build_unet(PRESETS["large"].model)) / 1e6, 1) == 6.5


@pytest.mark.parametrize("config", [UNetConfig(), PRESETS["seed"].model, PRESETS["large"].model,
                                    UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                                               attention_resolutions=(14,), norm_groups=4)])
def test_unet_config_round_trips_through_json(config):
    again = UNetConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert isinstance(again.channel_mults, tuple) and isinstance(again.attention_resolutions, tuple)


def test_unet_config_from_dict_names_unknown_keys():
    with pytest.raises(KeyError, match="depth"):
        UNetConfig.from_dict({**UNetConfig().to_dict(), "depth": 3})


@pytest.mark.parametrize("kwargs, message", [
    ({"architecture": "transformer"}, "architecture must be"),
    ({"image_size": 30}, "must be divisible by 4"),
])
def test_unet_config_rejects_invalid_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UNetConfig(**kwargs)


def test_network_is_rebuilt_from_its_config_alone(tiny_config, probe_input):
    a = perturbed(build_unet(tiny_config))
    b = build_unet(UNetConfig.from_dict(json.loads(json.dumps(a.config.to_dict()))))
    assert isinstance(b, ResUNet)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert list(a.state_dict()) == list(b.state_dict())
    assert any(isinstance(m, AttentionBlock) for m in b.down_attn)  # attention at 14×14 was built
    b.load_state_dict(a.state_dict())
    with torch.inference_mode():
        assert torch.equal(a(*probe_input), b.eval()(*probe_input))


def test_fresh_resunet_predicts_zero_and_every_block_starts_as_identity(tiny_config, probe_input):
    """Zero-initialised output convolutions (improved-diffusion's zero_module): the untrained net outputs 0."""
    model = build_unet(tiny_config).eval()
    with torch.inference_mode():
        assert torch.equal(model(*probe_input), torch.zeros_like(probe_input[0]))
        block = model.down_blocks[0]
        h = torch.randn(1, tiny_config.base_channels, 28, 28)
        assert torch.equal(block(h, torch.randn(1, tiny_config.time_embed_dim)), h)


def test_output_depends_on_the_timestep(tiny_config):
    model = perturbed(build_unet(tiny_config))
    x = torch.randn(1, 3, 28, 28).repeat(2, 1, 1, 1)
    with torch.inference_mode():
        out = model(x, torch.tensor([0, 150]))
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_timestep_embedding_is_cos_then_sin_of_geometric_frequencies():
    emb = timestep_embedding(torch.tensor([0, 7]), 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = [10_000 ** (-i / 4) for i in range(4)]
    expected = [math.cos(7 * f) for f in freqs] + [math.sin(7 * f) for f in freqs]
    torch.testing.assert_close(emb[1], torch.tensor(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("architecture", ["resunet", "seed"])
def test_one_optimizer_step_on_a_fixed_batch_lowers_the_diffusion_loss(architecture, tiny_config, tiny_images):
    config = tiny_config if architecture == "resunet" else PRESETS["seed"].model
    schedule = NoiseSchedule.from_config(ScheduleConfig() if architecture == "resunet" else ScheduleConfig.paper())
    torch.manual_seed(0)
    model = build_unet(config)
    g = torch.Generator().manual_seed(0)
    x0 = to_model_range(tiny_images[:8])
    t = torch.randint(0, schedule.num_timesteps, (8,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    before = diffusion_loss(model, schedule, x0, t, noise)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = diffusion_loss(model, schedule, x0, t, noise)
    assert after.item() < before.item() - 1e-3


# ---- tissue conditioning ------------------------------------------------------------------------------
def conditional(config: UNetConfig, num_classes: int = 9) -> UNetConfig:
    return UNetConfig.from_dict({**config.to_dict(), "num_classes": num_classes})


def test_class_embedding_starts_at_zero_with_one_extra_row_used_for_no_class():
    embed = ClassEmbedding(num_classes=3, dim=5)
    assert embed.embedding.weight.shape == (4, 5)
    assert torch.equal(embed.embedding.weight, torch.zeros(4, 5))
    with torch.no_grad():
        embed.embedding.weight.copy_(torch.arange(20, dtype=torch.float32).reshape(4, 5))
    out = embed(None, 2, torch.device("cpu"))
    assert torch.equal(out, embed.embedding.weight[[3, 3]])  # None means "no class": index num_classes
    assert torch.equal(embed(torch.tensor([2, 0]), 2, torch.device("cpu")), embed.embedding.weight[[2, 0]])


@pytest.mark.parametrize("num_classes", [0, 1001, 2.5, "9"])
def test_unet_config_rejects_num_classes_outside_1_to_1000(num_classes):
    with pytest.raises(ValueError, match="num_classes must be None"):
        UNetConfig(num_classes=num_classes)


@pytest.mark.parametrize("num_classes", [1, 1000])
def test_unet_config_accepts_num_classes_at_both_ends_and_builds_that_many_plus_one_embeddings(num_classes):
    model = build_unet(UNetConfig(architecture="seed", num_classes=num_classes))
    assert model.class_embed.embedding.num_embeddings == num_classes + 1


def test_a_config_dict_without_num_classes_loads_as_unconditional_and_a_conditional_one_round_trips(tiny_config):
    old = tiny_config.to_dict()
    del old["num_classes"]  # a config.json written before conditioning existed
    assert UNetConfig.from_dict(old).num_classes is None
    assert build_unet(UNetConfig.from_dict(old)).class_embed is None
    cond = conditional(tiny_config)
    assert UNetConfig.from_dict(json.loads(json.dumps(cond.to_dict()))) == cond
    assert cond.num_classes == 9


@pytest.mark.parametrize("architecture", ["resunet", "seed"])
def test_an_unconditional_network_given_class_labels_raises(architecture, tiny_config):
    config = tiny_config if architecture == "resunet" else PRESETS["seed"].model
    model = build_unet(config).eval()
    x, t = torch.randn(2, 3, 28, 28), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="unconditional"):
        model(x, t, torch.tensor([0, 1]))


@pytest.mark.parametrize("architecture", ["resunet", "seed"])
def test_a_conditional_network_loaded_from_unconditional_weights_computes_exactly_their_outputs_for_any_label(
        architecture, tiny_config, probe_input):
    config = tiny_config if architecture == "resunet" else PRESETS["seed"].model
    uncond = perturbed(build_unet(config), seed=1)
    cond = build_unet(conditional(config)).eval()
    load_weights_from(cond, uncond.state_dict())
    x, t = probe_input
    with torch.inference_mode():
        expected = uncond(x, t)
        assert expected.abs().max() > 1e-3  # perturbed: the comparison below is not 0 == 0
        for labels in (None, torch.tensor([0, 8]), torch.tensor([4, 4]), torch.tensor([9, 9])):
            assert torch.equal(cond(x, t, labels), expected), labels
    # and the label is really wired in: once the embedding moves, two classes give two outputs
    with torch.no_grad():
        cond.class_embed.embedding.weight.normal_(generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        a, b = cond(x, t, torch.tensor([0, 0])), cond(x, t, torch.tensor([5, 5]))
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("architecture", ["resunet", "seed"])
def test_class_weights_mix_the_embeddings_and_a_one_hot_row_is_bit_for_bit_its_index(architecture, tiny_config,
                                                                                      probe_input):
    config = tiny_config if architecture == "resunet" else PRESETS["seed"].model
    model = perturbed(build_unet(conditional(config)), seed=3)
    x, t = probe_input
    hard = torch.tensor([2, 9])  # a tissue, and "no class"
    one_hot = torch.nn.functional.one_hot(hard, 10).float()
    with torch.inference_mode():
        assert torch.equal(model(x, t, one_hot), model(x, t, hard))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the pipeline's precision where the CPU has bf16
            assert torch.equal(model(x, t, one_hot), model(x, t, hard))
        mix = torch.zeros(2, 10)
        mix[:, 2], mix[:, 7] = 0.25, 0.75
        embed = model.class_embed
        expected = 0.25 * embed.embedding.weight[2] + 0.75 * embed.embedding.weight[7]
        torch.testing.assert_close(embed(mix, 2, x.device), expected.expand(2, -1))
        assert not torch.equal(model(x, t, mix), model(x, t, torch.tensor([2, 2])))


def test_class_weights_of_the_wrong_width_are_refused_with_the_shape_expected(tiny_config, probe_input):
    model = build_unet(conditional(tiny_config)).eval()
    with pytest.raises(ValueError, match=r"class weights must be \(B, 10\)"):
        model(*probe_input, torch.ones(2, 9))


def test_load_weights_from_refuses_another_architecture_listing_the_differences(tiny_config):
    resunet = build_unet(conditional(tiny_config))
    with pytest.raises(ValueError, match=r"do not fit this network \(\d+ differences: .*(missing|unexpected)"):
        load_weights_from(resunet, build_unet(PRESETS["seed"].model).state_dict())
    wider = UNetConfig.from_dict({**tiny_config.to_dict(), "base_channels": 16})
    with pytest.raises(ValueError, match=r"conv_in.weight: \(16, 3, 3, 3\) vs \(8, 3, 3, 3\)"):
        load_weights_from(build_unet(tiny_config), build_unet(wider).state_dict())


def test_an_unconditional_network_refuses_conditional_weights_naming_the_class_embedding(tiny_config):
    with pytest.raises(ValueError, match="unexpected class_embed.embedding.weight"):
        load_weights_from(build_unet(tiny_config), build_unet(conditional(tiny_config)).state_dict())
