"""The lossless data pack (ddpm.datapack): bit-exact round trip, partial and corrupt shards, and loading through ddpm.data."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm.data import DataNotFoundError, load_pathmnist, load_subset, to_hwc_numpy
from ddpm.datapack import manifest_name, read_pack, write_pack

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def subset_arrays() -> tuple[np.ndarray, np.ndarray]:
    sub = load_subset()
    return to_hwc_numpy(sub.images), sub.labels.numpy()


@pytest.fixture(scope="module")
def written_pack(tmp_path_factory, subset_arrays) -> Path:
    """The 1,800 shipped patches packed once (WebP method 0: fast) into several 0.7 MB shards."""
    images, labels = subset_arrays
    out = tmp_path_factory.mktemp("pack")
    write_pack(images, labels, out, "train", shard_mb=0.7, method=0, workers=1, source="the bundled subset")
    return out


@pytest.fixture
def pack(written_pack, tmp_path) -> Path:
    """A fresh copy of the pack that a test may damage."""
    return Path(shutil.copytree(written_pack, tmp_path / "pack"))


def manifest(folder: Path) -> dict:
    return json.loads((folder / manifest_name("train")).read_text())


def test_a_pack_of_the_subset_reads_back_bit_exact_from_several_shards(pack, subset_arrays):
    images, labels = subset_arrays
    shards = manifest(pack)["shards"]
    assert len(shards) >= 3
    assert [s["first"] for s in shards] == [0] + list(np.cumsum([s["count"] for s in shards[:-1]]))
    assert all((pack / s["file"]).stat().st_size == s["bytes"] <= 0.7e6 for s in shards)
    got_images, got_labels, desc = read_pack(pack, "train")
    assert got_images.dtype == np.uint8 and got_images.shape == images.shape
    assert np.array_equal(got_images, images)
    assert got_labels.dtype == np.int64 and np.array_equal(got_labels, labels)
    assert desc == "PathMNIST train split (1,800 of 1,800 patches, lossless pack)"


def test_a_missing_shard_is_skipped_and_the_description_says_how_many_were_read(pack, subset_arrays):
    images, labels = subset_arrays
    shards = manifest(pack)["shards"]
    gone = shards[1]
    (pack / gone["file"]).unlink()
    got_images, got_labels, desc = read_pack(pack, "train")
    keep = np.r_[0:gone["first"], gone["first"] + gone["count"]:len(images)]
    assert np.array_equal(got_images, images[keep]) and np.array_equal(got_labels, labels[keep])
    assert f"{len(shards) - 1} of {len(shards)} shards" in desc
    assert f"{len(keep):,} of 1,800 patches" in desc


def test_a_corrupted_shard_raises_instead_of_being_used(pack):
    path = pack / manifest(pack)["shards"][0]["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        read_pack(pack, "train")


def test_a_manifest_without_any_shard_is_file_not_found(pack):
    for shard in manifest(pack)["shards"]:
        (pack / shard["file"]).unlink()
    with pytest.raises(FileNotFoundError, match="none of its"):
        read_pack(pack, "train")
    with pytest.raises(DataNotFoundError, match="none of its"):  # and through ddpm.data, the error its callers catch
        load_pathmnist("train", pack)


def test_write_pack_refuses_bad_input(tmp_path, subset_arrays):
    images, labels = subset_arrays
    with pytest.raises(ValueError, match="uint8"):
        write_pack(images.astype(np.float32), labels, tmp_path)
    with pytest.raises(ValueError, match="labels for"):
        write_pack(images, labels[:-1], tmp_path)
    with pytest.raises(ValueError, match="method"):
        write_pack(images, labels, tmp_path, method=7)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_load_pathmnist_reads_a_pack_folder_without_the_npz_as_the_same_tensors(pack):
    assert not (pack / "pathmnist.npz").exists()
    sub = load_subset()
    data = load_pathmnist("train", pack)
    assert torch.equal(data.images, sub.images) and torch.equal(data.labels, sub.labels)
    assert data.images.is_contiguous() and data.labels.dtype == torch.int64
    assert "lossless pack" in data.source


def test_pack_data_command_without_data_exits_2_saying_the_file_is_missing(tmp_path):
    empty, out = tmp_path / "empty", tmp_path / "out"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "ddpm", "pack-data", "--data-dir", str(empty), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: PathMNIST file") and "not found" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
