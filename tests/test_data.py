"""PathMNIST loading (through medmnist), the bundled subset, pixel-range helpers and the D4 augmentation."""
from __future__ import annotations

import medmnist
import numpy as np
import pytest
import torch

from ddpm.data import (
    CLASS_NAMES,
    SPLIT_SIZES,
    TRAIN_CLASS_COUNTS,
    DataNotFoundError,
    class_index,
    class_prior,
    default_data_dir,
    dihedral_augment,
    image_grid,
    load_images,
    load_pathmnist,
    load_subset,
    make_subset,
    to_hwc_numpy,
    to_model_range,
    to_uint8,
)


def write_fake_pathmnist(root, sizes=None, name="pathmnist.npz", hw=28) -> dict[str, np.ndarray]:
    """A small file with medmnist's keys and layout: {split}_images (N, H, W, 3) uint8, {split}_labels (N, 1)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (sizes or {"train": 12, "val": 5, "test": 4}).items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, hw, hw, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 9, (n, 1), dtype=np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / name, **arrays)
    return arrays


def test_class_names_are_medmnists_pathmnist_labels_in_order():
    labels = medmnist.INFO["pathmnist"]["label"]
    assert CLASS_NAMES == tuple(labels[str(i)] for i in range(len(labels)))


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_load_pathmnist_reads_a_medmnist_file_as_uint8_nchw_with_labels(tmp_path, split):
    arrays = write_fake_pathmnist(tmp_path)
    data = load_pathmnist(split, tmp_path)
    expected = arrays[f"{split}_images"]
    assert data.images.dtype == torch.uint8 and data.images.shape == (len(expected), 3, 28, 28)
    assert data.images.is_contiguous()
    assert np.array_equal(data.images.permute(0, 2, 3, 1).numpy(), expected)
    assert data.labels.dtype == torch.int64
    assert data.labels.tolist() == arrays[f"{split}_labels"].reshape(-1).tolist()
    assert len(data) == len(expected)
    assert data.source == f"PathMNIST {split} split ({len(expected)} patches, pathmnist.npz)"


def test_load_pathmnist_reads_the_larger_medmnist_plus_file_for_size_64(tmp_path):
    write_fake_pathmnist(tmp_path, {"train": 3, "val": 2, "test": 2}, name="pathmnist_64.npz", hw=64)
    assert load_pathmnist("val", tmp_path, size=64).images.shape == (2, 3, 64, 64)


def test_missing_file_raises_data_not_found_saying_how_to_download_and_where_to_put_it(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_pathmnist("train", tmp_path)
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert f"python -m ddpm download --data-dir {tmp_path}" in message
    assert medmnist.INFO["pathmnist"]["url"] in message and medmnist.INFO["pathmnist"]["MD5"] in message
    assert f"put it in {tmp_path}" in message and "$DDPM_DATA_DIR" in message


def test_missing_64_pixel_file_points_at_the_64_pixel_download(tmp_path):
    with pytest.raises(DataNotFoundError, match="pathmnist_64.npz") as err:
        load_pathmnist("train", tmp_path, size=64)
    assert "--size 64" in str(err.value) and medmnist.INFO["pathmnist"]["url_64"] in str(err.value)


@pytest.mark.parametrize("kwargs, message", [({"split": "validation"}, "split must be one of"),
                                             ({"size": 32}, "size must be one of")])
def test_load_pathmnist_rejects_unknown_splits_and_sizes(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_pathmnist(data_dir=tmp_path, **kwargs)


def test_data_dir_defaults_to_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    write_fake_pathmnist(tmp_path)
    assert len(load_pathmnist("test")) == 4


def test_load_images_falls_back_to_the_bundled_subset_with_a_warning(tmp_path):
    data, warning = load_images("train", tmp_path)
    assert len(data) == 1800 and "bundled subset" in data.source
    assert warning is not None
    assert str(tmp_path / "pathmnist.npz") in warning and "not found" in warning
    assert "Using the 1800 bundled training patches instead" in warning


def test_load_images_uses_the_full_file_when_present_and_can_refuse_the_subset(tmp_path):
    write_fake_pathmnist(tmp_path / "full")
    data, warning = load_images("train", tmp_path / "full")
    assert warning is None and len(data) == 12
    with pytest.raises(DataNotFoundError):
        load_images("train", tmp_path / "empty", allow_subset=False)
    with pytest.raises(DataNotFoundError):  # the subset is 28×28 only
        load_images("train", tmp_path / "empty", size=64)


def test_bundled_subset_is_stratified_real_patches_of_all_nine_classes():
    subset = load_subset()
    assert subset.images.dtype == torch.uint8 and subset.images.shape == (1800, 3, 28, 28)
    counts = torch.bincount(subset.labels, minlength=len(CLASS_NAMES))
    assert counts.tolist() == [200] * 9
    assert subset.images.float().std() > 20  # real tissue, not a constant placeholder
    assert len({bytes(img.numpy()) for img in subset.images}) == 1800  # no duplicates


def test_make_subset_takes_the_same_number_of_distinct_images_per_class():
    labels = np.repeat(np.arange(3), [10, 20, 30])[:, None]
    images = np.arange(60)[:, None, None, None] * np.ones((1, 2, 2, 3), dtype=np.int64)
    sub_images, sub_labels = make_subset(images, labels, per_class=4, seed=1)
    assert np.bincount(sub_labels).tolist() == [4, 4, 4]
    ids = sub_images[:, 0, 0, 0]
    assert len(set(ids.tolist())) == 12 and np.array_equal(labels[ids, 0], sub_labels)


def test_to_model_range_and_to_uint8_round_trip_every_byte():
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).repeat(2, 3, 1, 1)
    scaled = to_model_range(x)
    assert scaled.dtype == torch.float32
    assert scaled.min().item() == -1.0 and scaled.max().item() == 1.0
    assert torch.equal(to_uint8(scaled), x)
    assert x.dtype == torch.uint8 and x.max() == 255  # the input is left alone


def test_to_uint8_clamps_out_of_range_values_and_to_hwc_numpy_moves_channels_last():
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 7.0]).reshape(1, 1, 1, 5).repeat(1, 3, 1, 1)
    assert to_uint8(x)[0, 0, 0].tolist() == [0, 0, 128, 255, 255]
    hwc = to_hwc_numpy(x)
    assert hwc.shape == (1, 1, 5, 3) and hwc.dtype == np.uint8


def _d4(img: torch.Tensor) -> list[torch.Tensor]:
    """The 8 symmetries of the square: 4 rotations, each with and without a mirror. img: (C, H, H)."""
    rotations = [torch.rot90(img, k, dims=(1, 2)) for k in range(4)]
    return rotations + [r.flip(2) for r in rotations]


def test_dihedral_augment_applies_only_symmetries_of_the_square_and_uses_all_eight():
    x = torch.randint(0, 256, (64, 3, 6, 6), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    out = dihedral_augment(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    used = set()
    for img, aug in zip(x, out):
        matches = [k for k, t in enumerate(_d4(img)) if torch.equal(aug, t)]
        assert len(matches) == 1
        used.add(matches[0])
    assert used == set(range(8))
    assert torch.equal(out, dihedral_augment(x, torch.Generator().manual_seed(1)))  # seeded


def test_image_grid_tiles_images_with_padding():
    images = np.zeros((5, 4, 4, 3), dtype=np.uint8)
    grid = image_grid(images, ncols=3, pad=1)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 3)
    assert grid[1:5, 1:5].max() == 0 and grid[0].min() == 255


def test_train_class_counts_add_up_to_the_training_split_and_give_the_prior():
    assert sum(TRAIN_CLASS_COUNTS) == SPLIT_SIZES["train"] == 89_996
    assert len(TRAIN_CLASS_COUNTS) == len(CLASS_NAMES)
    prior = class_prior()
    assert prior.sum().item() == pytest.approx(1.0)
    assert prior[8].item() == pytest.approx(12_885 / 89_996)


@pytest.mark.parametrize("given, index", [("adipose", 0), (" Mucus ", 4), ("smooth", 5), ("normal", 6), ("cancer", 7),
                                          (3, 3), ("8", 8), ("0", 0)])
def test_class_index_takes_a_name_a_unique_prefix_or_an_index(given, index):
    assert class_index(given) == index


@pytest.mark.parametrize("given", ["c", "muscle", "", "9", -1, 12])
def test_class_index_refuses_unknown_or_ambiguous_classes_listing_every_choice(given):
    with pytest.raises(ValueError, match="unknown tissue class") as err:
        class_index(given)
    assert all(f"{i} {name!r}" in str(err.value) for i, name in enumerate(CLASS_NAMES))
