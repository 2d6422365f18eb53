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


# ---- a manifest or shard from someone else: nothing is trusted -----------------------------------------------------
def rewrite_shard(pack: Path, k: int, **arrays) -> Path:
    """Replace arrays of shard ``k`` and record its new bytes and md5 in the manifest (as a careful forger would)."""
    import hashlib
    import io

    m = manifest(pack)
    path = pack / m["shards"][k]["file"]
    with np.load(path) as f:
        data = {name: f[name] for name in f.files}
    data.update(arrays)
    buf = io.BytesIO()
    np.savez(buf, **data)
    path.write_bytes(buf.getvalue())
    m["shards"][k].update(bytes=len(buf.getvalue()), md5=hashlib.md5(buf.getvalue()).hexdigest())
    write_manifest(pack, m)
    return path


def write_manifest(pack: Path, m: dict) -> None:
    (pack / manifest_name("train")).write_text(json.dumps(m))


def webp(side: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (200, 100, 150)).save(buf, "WEBP", lossless=True)
    return buf.getvalue()


def vp8l_claiming(data: bytes, width: int, height: int) -> bytes:
    """A lossless WebP whose header claims width × height (14 bits each after the 0x2f signature byte)."""
    assert data[12:16] == b"VP8L" and data[20] == 0x2F
    bits = int.from_bytes(data[21:25], "little")
    bits = (bits & ~((1 << 28) - 1)) | (width - 1) | ((height - 1) << 14)
    return data[:21] + bits.to_bytes(4, "little") + data[25:]


def one_tile_shard(pack: Path, tile: bytes) -> None:
    """Make shard 0 hold ``tile`` as its first tile (its other tiles kept)."""
    with np.load(pack / manifest(pack)["shards"][0]["file"]) as f:
        tiles, offsets = f["tiles"], f["offsets"]
    rest = tiles[offsets[1]:]
    new_tiles = np.concatenate([np.frombuffer(tile, np.uint8), rest])
    rewrite_shard(pack, 0, tiles=new_tiles, offsets=np.concatenate([[0], offsets[1:] - offsets[1] + len(tile)]))


def test_a_shard_path_outside_the_pack_folder_is_refused_not_followed(pack, tmp_path):
    m = manifest(pack)
    shutil.copy(pack / m["shards"][0]["file"], tmp_path / "outside.npz")
    for name in ("../outside.npz", str(tmp_path / "outside.npz")):
        m["shards"][0]["file"] = name
        write_manifest(pack, m)
        with pytest.raises(ValueError, match="names a shard outside its folder"):
            read_pack(pack, "train")


def test_a_shard_with_fewer_labels_than_patches_is_refused(pack):
    with np.load(pack / manifest(pack)["shards"][0]["file"]) as f:
        labels = f["labels"]
    rewrite_shard(pack, 0, labels=labels[:-5])
    with pytest.raises(ValueError, match=r"needs \d+ labels in 0-8 and has \d+"):
        read_pack(pack, "train")


def test_labels_outside_the_nine_tissues_are_refused(pack):
    with np.load(pack / manifest(pack)["shards"][1]["file"]) as f:
        labels = f["labels"].copy()
    labels[7] = 9
    rewrite_shard(pack, 1, labels=labels)
    with pytest.raises(ValueError, match="labels in 0-8"):
        read_pack(pack, "train")


def test_an_inflated_count_in_the_manifest_or_a_shard_is_refused(pack):
    m = manifest(pack)
    write_manifest(pack, {**m, "count": 1_000_000})
    with pytest.raises(ValueError, match="counts 1,000,000 patches but its shards hold 1,800"):
        read_pack(pack, "train")
    write_manifest(pack, m)
    rewrite_shard(pack, 0, count=np.int64(m["shards"][0]["count"] + 400))
    with pytest.raises(ValueError, match="where the manifest says"):
        read_pack(pack, "train")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns above 89 MP as it opens
@pytest.mark.parametrize("side, message", [(2 * 20 * 28, "tile 0 is 1120×1120 px where a tile of this pack is 560×560"),
                                           (12_000, "tile 0 is 12000×12000 px where a tile of this pack is 560×560"),
                                           (16_384, r"tile 0 is far larger than a tile of this pack \(560×560\)")])
def test_a_tile_larger_than_a_tile_of_the_pack_is_refused_before_it_is_decoded(pack, side, message, monkeypatch):
    from PIL import Image

    data = webp(side) if side < 2000 else vp8l_claiming(webp(560), side, side)  # a real tile, or a header that lies
    one_tile_shard(pack, data)
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self, *a: decoded.append(self.size))
    with pytest.raises(ValueError, match=message):
        read_pack(pack, "train")
    assert decoded == []


def test_a_manifest_that_is_not_a_pack_of_this_split_is_refused(pack):
    m = manifest(pack)
    for broken in ({**m, "image_size": 64}, {**m, "tile": 40}, {**m, "shards": [{"file": 1}]}, {**m, "count": "many"}):
        write_manifest(pack, broken)
        with pytest.raises(ValueError, match="does not describe a train pack of 28×28 patches"):
            read_pack(pack, "train")
    (pack / manifest_name("train")).write_text("[" * 100_000)
    with pytest.raises(ValueError, match="not a readable manifest"):
        read_pack(pack, "train")


def test_write_pack_refuses_a_shard_size_that_is_not_a_finite_positive_number(tmp_path, subset_arrays):
    images, labels = subset_arrays
    for shard_mb in (float("nan"), float("inf"), 0.0):
        with pytest.raises(ValueError, match="shard size must be a finite number of MB > 0"):
            write_pack(images[:10], labels[:10], tmp_path, shard_mb=shard_mb, workers=1)


def test_the_packs_number_of_classes_is_pathmnists():
    from ddpm.data import CLASS_NAMES
    from ddpm.datapack import NUM_CLASSES

    assert NUM_CLASSES == len(CLASS_NAMES)
