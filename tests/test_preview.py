"""ddpm.serving.preview: samples stored beside the weights that made them, shown only while weights and settings match."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm.checkpoints import SHIPPED_DIR, WEIGHTS_NAME, load_local, make_config, save_checkpoint
from ddpm.cli import main
from ddpm.data import to_hwc_numpy
from ddpm.pipeline import generate
from ddpm.sampling_spec import SamplingSpec
from ddpm.serving.preview import (PREVIEW_NAME, PRIOR, home_request, load_preview, make_preview, read_preview,
                          weights_fingerprint, write_preview)
from ddpm.schedules import ScheduleConfig
from ddpm.unet import UNetConfig, build_unet


def tiny_checkpoint(folder: Path, num_classes: int | None = 9, seed: int = 0, guidance: float | None = None):
    torch.manual_seed(seed)
    cfg = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(), norm_groups=4,
                     num_classes=num_classes)
    extra = {} if guidance is None else {"sampling": {"sampler": "ddim", "steps": 4, "guidance": guidance}}
    save_checkpoint(folder, build_unet(cfg), make_config(cfg, ScheduleConfig(num_timesteps=20), **extra))
    return load_local(folder)


@pytest.fixture
def ckpt(tmp_path):
    return tiny_checkpoint(tmp_path / "model", guidance=2.0)


def test_the_fingerprint_is_the_sha256_of_the_weights_file_and_changes_with_the_weights(tmp_path):
    import hashlib

    a, b = tiny_checkpoint(tmp_path / "a", seed=0), tiny_checkpoint(tmp_path / "b", seed=1)
    assert weights_fingerprint(a.path) == hashlib.sha256((a.path / WEIGHTS_NAME).read_bytes()).hexdigest()
    assert weights_fingerprint(a.path) != weights_fingerprint(b.path)


def test_home_request_takes_the_checkpoints_recommended_sampler_steps_and_guidance(ckpt, tmp_path):
    request = home_request(ckpt)
    assert (request.spec, request.seed, request.n, request.tissue) == (SamplingSpec("ddim", 4, 2.0), 0, 16, PRIOR)
    assert home_request(ckpt, seed=5, tissue=3, guidance=0.5).tissue == "3"
    unconditional = tiny_checkpoint(tmp_path / "u", num_classes=None)
    assert home_request(unconditional, tissue=3, guidance=4.0).spec.guidance == 1.0  # it has no tissue to guide towards
    assert home_request(unconditional).spec == SamplingSpec()


def test_a_preview_holds_exactly_what_generate_makes_for_the_same_request(ckpt):
    request = home_request(ckpt, n=4)
    preview = make_preview(ckpt, request, precision="fp32")
    live = generate(ckpt.model, ckpt.schedule, 4, SamplingSpec("ddim", 4, 2.0), seed=0, precision="fp32", classes=PRIOR)
    np.testing.assert_array_equal(preview.images, to_hwc_numpy(live))
    assert preview.images.dtype == np.uint8 and preview.images.shape == (4, 28, 28, 3)
    assert preview.classes.shape == (4,) and preview.precision == "fp32"


def test_a_written_preview_reads_back_for_the_same_weights_and_settings(ckpt):
    request = home_request(ckpt, n=4)
    written = make_preview(ckpt, request, precision="fp32")
    path = write_preview(ckpt.path, written)
    assert path == ckpt.path / PREVIEW_NAME
    read = read_preview(ckpt.path, weights_fingerprint(ckpt.path), request)
    assert read is not None and read.request == request and read.fingerprint == written.fingerprint
    np.testing.assert_array_equal(read.images, written.images)
    np.testing.assert_array_equal(read.classes, written.classes)


def test_a_preview_of_other_weights_is_never_returned(ckpt, tmp_path):
    request = home_request(ckpt, n=4)
    write_preview(ckpt.path, make_preview(ckpt, request, precision="fp32"))
    retrained = tiny_checkpoint(tmp_path / "model", seed=1, guidance=2.0)  # same folder, new weights
    assert read_preview(retrained.path, weights_fingerprint(retrained.path), request) is None


@pytest.mark.parametrize("change, spec_change", [(dict(seed=1), {}), ({}, dict(guidance=3.0)), (dict(tissue="2"), {}),
                                                 ({}, dict(steps=5)), ({}, dict(sampler="dpmpp")), (dict(n=3), {}),
                                                 ({}, dict(eta=0.5))])
def test_a_preview_made_with_other_settings_is_never_returned(ckpt, change, spec_change):
    request = home_request(ckpt, n=4)
    write_preview(ckpt.path, make_preview(ckpt, request, precision="fp32"))
    other = replace(request, spec=replace(request.spec, **spec_change), **change)
    assert other != request
    assert read_preview(ckpt.path, weights_fingerprint(ckpt.path), other) is None


def test_no_preview_is_none_and_a_broken_one_says_how_to_rewrite_it(ckpt):
    request = home_request(ckpt)
    assert read_preview(ckpt.path, weights_fingerprint(ckpt.path), request) is None
    (ckpt.path / PREVIEW_NAME).write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="python -m ddpm preview"):
        read_preview(ckpt.path, weights_fingerprint(ckpt.path), request)


def test_the_cli_writes_the_preview_home_asks_for(ckpt, capsys):
    assert main(["preview", str(ckpt.path), "--precision", "fp32"]) == 0
    assert "sha256" in capsys.readouterr().err
    preview = read_preview(ckpt.path, weights_fingerprint(ckpt.path), home_request(ckpt))
    assert preview is not None and preview.images.shape == (16, 28, 28, 3) and preview.precision == "fp32"


@pytest.mark.skipif(not (SHIPPED_DIR / "default" / PREVIEW_NAME).is_file(), reason="no shipped preview")
def test_the_shipped_preview_was_made_by_the_shipped_default_weights_with_its_recommended_settings():
    default = SHIPPED_DIR / "default"
    stored = load_preview(default / PREVIEW_NAME)
    assert stored.fingerprint == weights_fingerprint(default), \
        "checkpoints/default was retrained after its preview: rerun `python -m ddpm preview default`"
    assert stored.request == home_request(load_local(default)), \
        "the recommended sampling settings changed after the preview: rerun `python -m ddpm preview default`"
