"""Samples made ahead of time and stored beside the weights that made them, for a fast first impression.

``checkpoints/<name>/preview.npz`` holds ``n`` uint8 images, the tissue class each was asked to be, the
sampler, steps, guidance, seed and precision used, and the sha256 of the ``model.safetensors`` bytes that
made them. ``read_preview`` returns it only when the fingerprint and every setting match what is asked
for, so retrained weights or changed recommended settings are never shown with an old preview.

    python -m ddpm preview default      # writes checkpoints/default/preview.npz
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import WEIGHTS_NAME, Checkpoint, atomic_write_bytes
from ..data import to_hwc_numpy
from ..device import Precision, use_bf16
from ..pipeline import PRIOR, generate, resolve_classes
from ..sampling_spec import SamplingSpec

PREVIEW_NAME = "preview.npz"
PREVIEW_COUNT = 16  # Home's grid
PREVIEW_SEED = 0  # Home's first draw


@dataclass(frozen=True)
class PreviewRequest:
    """What a page would sample: the same request gives the same images (up to ``precision``)."""

    spec: SamplingSpec
    seed: int = PREVIEW_SEED
    n: int = PREVIEW_COUNT
    tissue: str = PRIOR  # PRIOR, or a class index written as text


@dataclass(frozen=True)
class Preview:
    images: np.ndarray  # (n, H, W, 3) uint8
    classes: np.ndarray  # (n,) int64: the tissue each image was asked to be; empty for an unconditional model
    request: PreviewRequest
    precision: str  # "bf16" or "fp32": how the network ran
    fingerprint: str  # sha256 of the model.safetensors bytes that made the images


def weights_fingerprint(folder: str | os.PathLike) -> str:
    """sha256 (hex) of ``folder/model.safetensors``: the exact weights, whatever folder or name they have."""
    digest = hashlib.sha256()
    with open(Path(folder) / WEIGHTS_NAME, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def home_request(checkpoint: Checkpoint, seed: int = PREVIEW_SEED, tissue: int | str = PRIOR,
                 guidance: float | None = None, guidance_interval: tuple[int, int] | None = None,
                 n: int = PREVIEW_COUNT) -> PreviewRequest:
    """What Home samples: the checkpoint's recommended sampler and steps, its recommended guidance and band unless
    ``guidance`` or ``guidance_interval`` is given (1 for an unconditional model, which has none), ``tissue`` a class
    index or PRIOR."""
    if checkpoint.model_config.num_classes is None:
        tissue, guidance, guidance_interval = PRIOR, 1.0, None
    spec = checkpoint.sampling.replace(guidance=guidance, guidance_interval=guidance_interval)
    spec = spec.fitted(checkpoint.schedule.num_timesteps)
    return PreviewRequest(spec, seed, n, str(tissue))


def request_classes(request: PreviewRequest) -> int | str:
    """The ``classes`` argument of ``pipeline.generate`` for a request: PRIOR or one class index."""
    return PRIOR if request.tissue == PRIOR else int(request.tissue)


def make_preview(checkpoint: Checkpoint, request: PreviewRequest, precision: Precision = "auto") -> Preview:
    """Sample ``request`` with the checkpoint's network on the CPU, exactly as ``pipeline.generate`` does for a page."""
    if checkpoint.path is None:
        raise ValueError("this checkpoint has no folder, so its weights cannot be fingerprinted; save it first")
    classes = resolve_classes(checkpoint.model_config.num_classes, request.n, request_classes(request), request.seed)
    images = generate(checkpoint.model, checkpoint.schedule, request.n, request.spec, seed=request.seed,
                      precision=precision, classes=classes)
    used = "bf16" if use_bf16(precision, torch.device("cpu")) else "fp32"
    labels = np.zeros(0, np.int64) if classes is None else classes.numpy().astype(np.int64)
    return Preview(to_hwc_numpy(images), labels, request, used, weights_fingerprint(checkpoint.path))


def write_preview(folder: str | os.PathLike, preview: Preview) -> Path:
    """Store ``preview`` as ``folder/preview.npz`` (written to a temp file, then renamed into place)."""
    r, spec = preview.request, preview.request.spec
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=preview.images, classes=preview.classes, sampler=spec.sampler,
                        steps=-1 if spec.steps is None else spec.steps, guidance=spec.guidance, eta=spec.eta,
                        guidance_interval=np.array(spec.guidance_interval or (-1, -1), np.int64), seed=r.seed, tissue=r.tissue,
                        precision=preview.precision, fingerprint=preview.fingerprint)
    path = Path(folder) / PREVIEW_NAME
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_preview(path: str | os.PathLike) -> Preview:
    """The preview stored at ``path``; ValueError if the file is not one."""
    try:
        with np.load(path, allow_pickle=False) as f:
            steps = int(f["steps"])
            band = [int(v) for v in f["guidance_interval"]] if "guidance_interval" in f.files else [-1, -1]
            spec = SamplingSpec(str(f["sampler"]), None if steps < 0 else steps, float(f["guidance"]),
                                float(f["eta"]) if "eta" in f.files else 0.0, None if band[0] < 0 else tuple(band))
            request = PreviewRequest(spec, int(f["seed"]), int(f["images"].shape[0]), str(f["tissue"]))
            return Preview(f["images"], f["classes"], request, str(f["precision"]), str(f["fingerprint"]))
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"{path} is not a readable preview ({err}); delete it or rewrite it with "
                         f"`python -m ddpm preview <checkpoint>`") from err


def read_preview(folder: str | os.PathLike, fingerprint: str, request: PreviewRequest) -> Preview | None:
    """The preview in ``folder`` if it was made by the weights with ``fingerprint`` for exactly ``request``, else None
    (none stored, other weights, other settings). A file that cannot be read raises ValueError."""
    path = Path(folder) / PREVIEW_NAME
    if not path.is_file():
        return None
    preview = load_preview(path)
    if preview.fingerprint != fingerprint or preview.request != request:
        return None
    return preview
