"""MedMNIST+ resolution: the loader and the U-Nets also take 64×64 PathMNIST."""
from __future__ import annotations

import json

import numpy as np
import torch

from ddpm.cli import main
from ddpm.data import load_pathmnist
from ddpm.presets import get_preset
from ddpm.schedules import ScheduleConfig
from ddpm.training import TrainConfig, Trainer
from ddpm.unet import UNetConfig, build_unet


def _write_fake_pathmnist_64(root, n=24):
    """A file shaped like medmnist's pathmnist_64.npz (same keys, uint8 (N, 64, 64, 3), labels (N, 1))."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 9, (n, 1), dtype=np.uint8)
    np.savez(root / "pathmnist_64.npz", **arrays)


def test_loader_reads_the_64_pixel_file_through_medmnist(tmp_path):
    _write_fake_pathmnist_64(tmp_path)
    data = load_pathmnist("train", tmp_path, size=64)
    assert data.images.shape == (24, 3, 64, 64) and data.images.dtype == torch.uint8
    assert "pathmnist_64.npz" in data.source


def test_presets_rescale_attention_to_the_new_size():
    preset = get_preset("small", 64)
    assert preset.model.image_size == 64 and preset.model.attention_resolutions == (16,)
    out = build_unet(preset.model)(torch.randn(2, 3, 64, 64), torch.tensor([0, 199]))
    assert out.shape == (2, 3, 64, 64)


def test_a_tiny_64_pixel_model_trains_a_few_steps(tmp_path):
    _write_fake_pathmnist_64(tmp_path)
    data = load_pathmnist("train", tmp_path, size=64)
    config = UNetConfig(image_size=64, base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1,
                        attention_resolutions=(16,), norm_groups=4)
    trainer = Trainer(config, ScheduleConfig(), TrainConfig(batch_size=4, max_steps=3, warmup_steps=0, precision="fp32"),
                      data.images, out_dir=tmp_path / "run", device="cpu")
    result = trainer.train()
    assert result.steps == 3 and np.isfinite(result.final_loss)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["image_size"] == 64


def test_cli_trains_at_size_64(tmp_path):
    _write_fake_pathmnist_64(tmp_path)
    out = tmp_path / "cli-run"
    assert main(["train", "--preset", "seed", "--size", "64", "--data-dir", str(tmp_path), "--steps", "2",
                 "--batch-size", "4", "--out", str(out), "--device", "cpu"]) == 0
    assert json.loads((out / "config.json").read_text())["model"]["image_size"] == 64
