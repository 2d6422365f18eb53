"""bench/quality.py's sample cache: shards assemble into a row, and samples of other weights are never reused."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def quality(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("quality_bench", ROOT / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "quality_bench", module)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "SAMPLES", tmp_path)
    monkeypatch.setattr(module, "BATCH", 2)
    return module


ROW = ("default DPM-Solver++ 10", "seed", "dpmpp", 2)  # the tiny seed network keeps the test fast


def test_shards_assemble_into_the_row_with_the_sum_of_their_times(quality, tmp_path):
    for index in range(3):
        images, _, _, threads = quality.samples_for(ROW, 5, 0, False, shard=(index, 3))
        assert images.shape == ((1 if index < 2 else 3), 3, 28, 28) and images.dtype == torch.uint8
        assert threads == torch.get_num_threads()
    parts = [np.load(tmp_path / f"default-dpm-solver-10-n5-seed0-shard{i}of3.npz") for i in range(3)]
    images, per_1000, _, _ = quality.samples_for(ROW, 5, 0, False)
    assert torch.equal(images, torch.from_numpy(np.concatenate([p["images"] for p in parts])))
    assert per_1000 == pytest.approx(sum(float(p["seconds"]) for p in parts) * 1000 / 5)
    # shard 0 keeps the row's seed; the others draw other noise
    whole = quality.samples_for(ROW, 5, 0, True)[0]
    diff = (whole.int() - images.int()).abs().float()
    assert diff[0].max() <= 2  # bf16 kernels may round differently for another batch size
    assert diff[1].mean() > 10


def test_samples_of_other_weights_are_regenerated(quality, tmp_path, monkeypatch):
    first = quality.samples_for(ROW, 2, 0, False)[0]
    cache = tmp_path / "default-dpm-solver-10-n2-seed0.npz"
    with np.load(cache) as f:
        stored = dict(f)
    np.savez(cache, **{**stored, "images": np.zeros_like(stored["images"])})  # a cache we can recognise
    assert quality.samples_for(ROW, 2, 0, False)[0].sum() == 0  # same weights: the cache is used
    monkeypatch.setattr(quality, "weights_fingerprint", lambda model: "retrained")
    again = quality.samples_for(ROW, 2, 0, False)[0]
    assert torch.equal(again, first)  # regenerated (same seed, same weights underneath)
    with np.load(cache) as f:
        assert str(f["fingerprint"]) == "retrained"


def test_fingerprint_changes_with_any_weight(quality):
    from ddpm.checkpoints import load_checkpoint

    model = load_checkpoint("seed").model
    before = quality.weights_fingerprint(model)
    assert quality.weights_fingerprint(model) == before
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-3
    assert quality.weights_fingerprint(model) != before
