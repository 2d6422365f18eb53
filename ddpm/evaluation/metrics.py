"""Distribution metrics between two sets of feature vectors or images.

All take numpy arrays: features (N, D) float, images (N, 3, H, W) or (N, H, W, 3) uint8, class
probabilities (N, K).  Each function is one published formula; the docstring names it.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import linalg


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """‖μ_r - μ_f‖² + Tr(Σ_r + Σ_f - 2 (Σ_r Σ_f)^½)  (Heusel et al. 2017), in the given feature space."""
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)  # no `disp`: deprecated in SciPy 1.16, removed in 1.18
    if not np.isfinite(covmean).all():  # singular product: nudge the diagonals (as pytorch-fid does)
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def kernel_distance(real: np.ndarray, fake: np.ndarray, num_subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """KID: unbiased MMD² with the cubic polynomial kernel k(x, y) = (xᵀy / d + 1)³ (Bińkowski et al. 2018),
    averaged over random subsets. Returns (mean, std) over the subsets."""
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(real), len(fake))
    d = real.shape[1]
    values = []
    for _ in range(num_subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = fake[rng.choice(len(fake), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        values.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                      - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def _pairwise(a: np.ndarray, b: np.ndarray) -> torch.Tensor:
    return torch.cdist(torch.from_numpy(a).float(), torch.from_numpy(b).float())


def _kth_neighbour_radius(x: np.ndarray, k: int) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row."""
    return _pairwise(x, x).kthvalue(k + 1, dim=1).values  # +1: the row itself is at distance 0


def precision_recall_density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """k-NN manifold metrics. Precision / recall: Kynkäänniemi et al. 2019; density / coverage: Naeem et al. 2020.

    precision = share of fake samples inside some real k-NN ball; recall = share of real inside some fake ball;
    density = mean number of real balls holding a fake sample, / k; coverage = share of real balls holding a fake.
    """
    r_real, r_fake = _kth_neighbour_radius(real, k), _kth_neighbour_radius(fake, k)
    d = _pairwise(real, fake)  # (N_real, N_fake)
    inside_real = d < r_real[:, None]
    return {
        "precision": float(inside_real.any(0).float().mean()),
        "recall": float((d < r_fake[None, :]).any(1).float().mean()),
        "density": float(inside_real.float().sum(0).mean() / k),
        "coverage": float((d.min(1).values < r_real).float().mean()),
    }


def class_histogram(probs: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Share of samples whose most probable class is each class. probs: (N, K)."""
    k = num_classes or probs.shape[1]
    return np.bincount(probs.argmax(1), minlength=k) / len(probs)


def label_histogram(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels.reshape(-1), minlength=num_classes) / labels.size


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """TV(p, q) = ½ Σ |p_i - q_i| between two histograms."""
    return float(0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum())


def color_histograms(images_nchw: np.ndarray, bins: int = 32) -> np.ndarray:
    """Per-channel intensity histograms (3, bins), each summing to 1. images: (N, 3, H, W) uint8."""
    return np.stack([np.histogram(images_nchw[:, c], bins=bins, range=(0, 256))[0] / images_nchw[:, c].size
                     for c in range(images_nchw.shape[1])])
