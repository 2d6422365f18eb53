"""Files a visitor can take away: PNG grids, an animated GIF of a reverse run, a zipped checkpoint."""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np

from . import checkpoints as ckpt
from .data import image_grid
from .imaging import frame_indices, png_bytes, upscale

#: What a downloaded checkpoint holds: the Hugging Face layout plus the loss log.
CHECKPOINT_FILES = (ckpt.CONFIG_NAME, ckpt.WEIGHTS_NAME, ckpt.LOG_NAME)


def save_png(image_hwc: np.ndarray, path: str | os.PathLike, scale: int = 1) -> None:
    """Write ``png_bytes(image_hwc, scale)`` to ``path``."""
    Path(path).write_bytes(png_bytes(image_hwc, scale))


def trajectory_gif(samples: np.ndarray, pred_x0: np.ndarray, ncols: int | None = None, scale: int = 2,
                   frame_ms: int = 100, hold_last_ms: int = 1500, max_frames: int = 50) -> bytes:
    """An animated GIF of a reverse run: x_t grid | x̂₀ grid per frame, looping, the final frame held.

    samples, pred_x0: (S + 1, B, H, W, 3) uint8 (``pipeline.Trajectory``); at most ``max_frames`` frames.
    """
    from PIL import Image

    frames = []
    for i in frame_indices(samples.shape[0], max_frames):
        left, right = image_grid(samples[i], ncols), image_grid(pred_x0[i], ncols)
        gap = np.full((left.shape[0], 6, 3), 255, np.uint8)
        frames.append(Image.fromarray(upscale(np.concatenate([left, gap, right], axis=1), scale)))
    durations = [frame_ms] * (len(frames) - 1) + [hold_last_ms]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0,
                   optimize=False)
    return buf.getvalue()


def checkpoint_zip(folder: str | os.PathLike) -> bytes:
    """The checkpoint in ``folder`` (config.json, model.safetensors, training_log.csv if present) as zip bytes."""
    folder = Path(folder)
    if not (folder / ckpt.WEIGHTS_NAME).is_file():
        raise ckpt.CheckpointError(f"no {ckpt.WEIGHTS_NAME} in {folder}: nothing has been saved yet")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in CHECKPOINT_FILES:
            if (folder / name).is_file():
                zf.write(folder / name, arcname=name)
    return buf.getvalue()
