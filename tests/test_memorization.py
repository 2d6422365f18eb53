"""Memorization: chunked nearest neighbours against brute force, copies caught in every orientation, real patches not flagged."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpm.data import load_subset
from ddpm.evaluation.memorization import COPY_RATIO, Neighbours, dihedral_views, nearest_neighbours, pixel_neighbours


@pytest.fixture(scope="module")
def subset_halves() -> tuple[torch.Tensor, torch.Tensor]:
    """The bundled real patches split as load_reference splits them: (train half, held-out half), uint8 (900, 3, 28, 28)."""
    images = load_subset().images
    return images[:900], images[900:]


def brute_force_two_nearest(queries: torch.Tensor, bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = torch.cdist(queries.double(), bank.double(), compute_mode="donot_use_mm_for_euclid_dist")
    return d.topk(2, dim=1, largest=False)  # (values, indices), each (N, 2), ascending


# ---- nearest_neighbours ----------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 2, 7, 50, 51, 10_000])
def test_nearest_neighbours_matches_brute_force_cdist_for_any_chunk_size(chunk):
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(51, 16, generator=g)
    queries = torch.cat([torch.randn(29, 16, generator=g), bank[[3, 50]]])  # two exact members of the bank
    dist, idx = brute_force_two_nearest(queries, bank)
    nb = nearest_neighbours(queries, bank, chunk=chunk)
    np.testing.assert_array_equal(nb.index, idx[:, 0].numpy())
    np.testing.assert_allclose(nb.distance, dist[:, 0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nb.second_distance, dist[:, 1].numpy(), rtol=1e-5)
    assert nb.index[-2:].tolist() == [3, 50] and nb.distance[-2:].tolist() == [0.0, 0.0]


def test_nearest_neighbours_of_a_uint8_bank_scales_each_chunk_like_a_float_bank():
    g = torch.Generator().manual_seed(1)
    bank = torch.randint(0, 256, (40, 12), generator=g, dtype=torch.uint8)
    queries = torch.rand(10, 12, generator=g)
    as_uint8 = nearest_neighbours(queries, bank, chunk=16, bank_scale=1 / 255)
    as_float = nearest_neighbours(queries, bank.float() / 255, chunk=16)
    np.testing.assert_array_equal(as_uint8.index, as_float.index)
    np.testing.assert_allclose(as_uint8.distance, as_float.distance, rtol=1e-6)
    np.testing.assert_allclose(as_uint8.second_distance, as_float.second_distance, rtol=1e-6)


def test_second_neighbour_is_another_bank_row_even_when_the_nearest_is_in_an_earlier_chunk():
    bank = torch.tensor([[0.0], [10.0], [1.0], [20.0], [30.0]])
    nb = nearest_neighbours(torch.tensor([[0.4]]), bank, chunk=2)  # neighbours 0 (chunk 1) and 2 (chunk 2)
    assert nb.index.tolist() == [0]
    np.testing.assert_allclose([nb.distance[0], nb.second_distance[0]], [0.4, 0.6], rtol=1e-5)
    assert nb.ratio[0] == pytest.approx(0.4 / 0.6, rel=1e-5)


def test_copy_share_counts_ratios_under_the_threshold():
    nb = Neighbours(np.zeros(4, int), np.array([0.0, 1.0, 1.0, 3.0]), np.array([1.0, 2.0, 4.0, 3.0]))
    np.testing.assert_allclose(nb.ratio, [0.0, 0.5, 0.25, 1.0])
    assert nb.copy_share() == 0.5 and COPY_RATIO == pytest.approx(1 / 3)
    assert nb.copy_share(threshold=0.6) == 0.75


# ---- dihedral views --------------------------------------------------------------------------
def test_dihedral_views_of_an_asymmetric_image_are_eight_distinct_flips_and_rotations():
    x = torch.arange(9.0).reshape(1, 1, 3, 3).repeat(2, 3, 1, 1)  # (B, C, H, H), no symmetry at all
    views = dihedral_views(x)
    assert len(views) == 8 and all(v.shape == x.shape for v in views)
    assert len({tuple(v[0, 0].flatten().tolist()) for v in views}) == 8
    assert torch.equal(views[0], x)
    # the group is closed: transposes and vertical flips are in it too
    for other in (x.transpose(2, 3), x.flip(2), x.flip(2).flip(3)):
        assert any(torch.equal(v, other) for v in views)


# ---- pixel_neighbours ------------------------------------------------------------------------
def test_pixel_neighbours_flags_exact_and_rotated_or_flipped_copies_of_training_patches(subset_halves):
    train, _ = subset_halves
    sources = torch.arange(0, 800, 50)  # 16 training patches
    originals = train[sources]
    edits = [lambda x: x, lambda x: torch.rot90(x, 1, (2, 3)), lambda x: torch.rot90(x, 2, (2, 3)),
             lambda x: torch.rot90(x, 3, (2, 3)), lambda x: x.flip(3), lambda x: x.flip(2), lambda x: x.transpose(2, 3)]
    generated = torch.cat([edit(originals) for edit in edits]).contiguous()
    nb = pixel_neighbours(generated, train)
    np.testing.assert_array_equal(nb.index, sources.repeat(len(edits)).numpy())
    assert nb.distance.max() == 0.0 and nb.ratio.max() == 0.0 and nb.copy_share() == 1.0
    assert nb.second_distance.min() > 0.1  # the next-nearest training patch is a different one


def test_an_exact_copy_of_a_bright_flat_patch_stays_a_copy_beside_its_near_twin():
    # flat bright patches (background) are where float32 round-off of ‖q‖² - 2q·b + ‖b‖² is largest
    g = torch.Generator().manual_seed(0)
    patch = (225 + torch.randint(0, 4, (1, 3, 28, 28), generator=g)).to(torch.uint8)
    twin = patch.clone()
    twin.view(-1)[:24] += 3  # 24 of 2352 values differ by 3/255: L2 distance ≈ 0.058
    train = torch.cat([patch, twin, torch.zeros(1, 3, 28, 28, dtype=torch.uint8)])
    nb = pixel_neighbours(patch.clone(), train)
    assert nb.index.tolist() == [0] and nb.distance.tolist() == [0.0]
    assert nb.second_distance[0] == pytest.approx(np.sqrt(24) * 3 / 255, rel=1e-5)
    assert nb.copy_share() == 1.0


def test_without_dihedral_views_a_rotated_copy_is_not_recognised(subset_halves):
    train, _ = subset_halves
    rotated = torch.rot90(train[:20], 1, (2, 3)).contiguous()
    assert pixel_neighbours(rotated, train, dihedral=True).copy_share() == 1.0
    assert pixel_neighbours(rotated, train, dihedral=False).copy_share() == 0.0  # measured: smallest ratio 0.51


def test_pixel_neighbours_does_not_flag_held_out_real_patches(subset_halves):
    train, held = subset_halves
    nb = pixel_neighbours(held[:48], train)
    assert nb.copy_share() == 0.0
    assert nb.ratio.min() > COPY_RATIO and nb.distance.min() > 0.1  # distinct patches, not near-duplicates
    assert ((0 <= nb.index) & (nb.index < len(train))).all()
