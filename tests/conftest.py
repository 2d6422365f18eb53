"""Shared fixtures: tiny networks, tiny schedules, a few images and checkpoint folders.

Everything here is sized to run in milliseconds on one CPU thread (a training run may share the
machine), and nothing needs the full PathMNIST file or the network.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import scipy.linalg  # noqa: F401  (loads SciPy's own OpenBLAS now, so threadpool_limits below reaches it)
import torch
from threadpoolctl import threadpool_limits

from ddpm.checkpoints import make_config, save_checkpoint
from ddpm.schedules import ScheduleConfig
from ddpm.training import TrainConfig
from ddpm.unet import UNetConfig, build_unet

from hub_server import fake_hub  # noqa: F401  (re-exported fixture)

torch.set_num_threads(1)
# NumPy's and SciPy's OpenBLAS too: on a busy CPU their threads made evaluate_images (KID, sqrtm) 5x slower
threadpool_limits(1)


@pytest.fixture(scope="session", autouse=True)
def quiz_answers_in_a_throwaway_file(tmp_path_factory):
    """The app's quiz answers (DDPM_QUIZ_DB) go to a file of this test session, never to ~/.local/share/ddpm; a test
    may point it elsewhere."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DDPM_QUIZ_DB", str(tmp_path_factory.mktemp("quiz") / "quiz.sqlite3"))
        yield


@pytest.fixture
def tiny_config() -> UNetConfig:
    """A two-level residual U-Net with attention at 14×14: every code path of ResUNet, ~72k parameters."""
    return UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(14,), norm_groups=4)


@pytest.fixture
def tiny_schedule_config() -> ScheduleConfig:
    """The project's default schedule (cosine, zero terminal SNR, v-prediction) with T = 20."""
    return ScheduleConfig(num_timesteps=20)


@pytest.fixture
def tiny_train_config() -> TrainConfig:
    """Every trainer feature on (AdamW, warm-up, EMA, clipping, min-SNR, augmentation) in fp32 so runs are exact."""
    return TrainConfig(lr=1e-3, batch_size=4, max_steps=6, warmup_steps=2, ema_decay=0.9, grad_clip=1.0,
                       loss_weighting="min_snr", augment=True, precision="fp32", seed=3)


@pytest.fixture
def tiny_images() -> torch.Tensor:
    """16 uint8 (3, 28, 28) images: smooth colour gradients plus noise, so there is something to learn."""
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, 28)
    base = (ramp[None, :, None] + ramp[None, None, :]) / 2  # (1, 28, 28)
    colours = torch.rand(16, 3, 1, 1, generator=g)
    x = 255 * (0.6 * colours * base + 0.4 * torch.rand(16, 3, 28, 28, generator=g))
    return x.round().clamp(0, 255).to(torch.uint8)


@pytest.fixture
def make_tiny_checkpoint(tiny_config, tiny_schedule_config):
    """Factory: write a checkpoint of a fresh tiny network (seeded) into a folder; returns (folder, model)."""

    def make(folder: Path, seed: int = 0, **save_kwargs) -> tuple[Path, torch.nn.Module]:
        torch.manual_seed(seed)
        model = build_unet(tiny_config).eval()
        with torch.no_grad():  # the resunet starts with zeroed output layers; give every weight a value
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        save_checkpoint(folder, model, make_config(tiny_config, tiny_schedule_config), **save_kwargs)
        return Path(folder), model

    return make


@pytest.fixture
def probe_input(tiny_config) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed (x_t, t) pair to compare two networks' outputs."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, tiny_config.in_channels, 28, 28, generator=g), torch.tensor([0, 13])
