"""Does the model copy its training patches? Nearest training neighbours of every generated patch.

For each generated patch: the distance to its nearest training patch d₁, to the second nearest d₂,
and the ratio d₁/d₂.  A ratio under 1/3 is the usual copy criterion (a sample much closer to one
training patch than to any other; Yoon et al. 2023, after Somepalli et al. 2023).  Since the model
trains with flips and 90° rotations, each generated patch is compared in all 8 orientations.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

COPY_RATIO = 1 / 3


@dataclass(frozen=True)
class Neighbours:
    index: np.ndarray  # (N,) nearest training patch
    distance: np.ndarray  # (N,) d₁
    second_distance: np.ndarray  # (N,) d₂ (to another training patch)

    @property
    def ratio(self) -> np.ndarray:
        return self.distance / np.maximum(self.second_distance, 1e-12)

    def copy_share(self, threshold: float = COPY_RATIO) -> float:
        return float((self.ratio < threshold).mean())


def dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips/rotations of a batch of square images (B, C, H, H)."""
    views = []
    for k in range(4):
        r = torch.rot90(x, k, dims=(2, 3))
        views += [r, r.flip(3)]
    return views


def nearest_neighbours(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 20_000, bank_scale: float = 1.0,
                       progress: bool = False) -> Neighbours:
    """Two nearest rows of ``bank`` (M, D) for each row of ``queries`` (N, D), Euclidean, chunked over the bank.

    The bank may stay uint8: each chunk is converted to float (times ``bank_scale``) only when used.
    """
    q = queries.float()
    q2 = (q * q).sum(1, keepdim=True)
    best = torch.full((q.shape[0], 2), float("inf"))
    best_idx = torch.zeros((q.shape[0], 2), dtype=torch.long)
    for start in tqdm(range(0, bank.shape[0], chunk), desc="nearest neighbours", disable=not progress):
        b = bank[start:start + chunk].float() * bank_scale
        d2 = (q2 - 2 * q @ b.T + (b * b).sum(1)[None]).clamp_(min=0)  # (N, chunk) squared distances
        vals, idx = torch.topk(d2, min(2, b.shape[0]), dim=1, largest=False)
        cand, cand_idx = torch.cat([best, vals], 1), torch.cat([best_idx, idx + start], 1)
        order = cand.argsort(1)[:, :2]
        best, best_idx = cand.gather(1, order), cand_idx.gather(1, order)
    # ‖q‖² - 2q·b + ‖b‖² loses ~1e-4·‖q‖² to float32 cancellation (an exact copy came out ≈0.02 from its source, a
    # ratio of 0.1 beside a similar patch): recompute the two kept distances directly, then re-sort them
    exact = torch.stack([(q - bank[best_idx[:, j]].float() * bank_scale).pow(2).sum(1) for j in range(2)], 1)
    best = torch.where(best.isfinite(), exact, best)
    order = best.argsort(1)
    best, best_idx = best.gather(1, order), best_idx.gather(1, order)
    return Neighbours(best_idx[:, 0].numpy(), best[:, 0].sqrt().numpy(), best[:, 1].sqrt().numpy())


def pixel_neighbours(generated: torch.Tensor, train: torch.Tensor, dihedral: bool = True,
                     progress: bool = False) -> Neighbours:
    """Nearest training patches in pixel space ([0, 1] scale, L2 over all 3·H·W values), the best over
    the 8 orientations of each generated patch when ``dihedral``. Both (N, 3, H, W) uint8."""
    bank = train.reshape(train.shape[0], -1)  # stays uint8: 90k patches as float32 would take 850 MB
    views = dihedral_views(generated) if dihedral else [generated]
    result = None
    for v in views:
        nb = nearest_neighbours(v.reshape(v.shape[0], -1).float() * (1 / 255), bank, bank_scale=1 / 255, progress=progress)
        result = nb if result is None else _merge(result, nb)
    return result


def _merge(a: Neighbours, b: Neighbours) -> Neighbours:
    """Per query, keep the orientation whose nearest neighbour is closer."""
    take_b = b.distance < a.distance
    pick = lambda x, y: np.where(take_b, y, x)  # noqa: E731
    return Neighbours(pick(a.index, b.index), pick(a.distance, b.distance), pick(a.second_distance, b.second_distance))
