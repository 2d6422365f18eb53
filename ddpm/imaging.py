"""Small helpers on uint8 (H, W, 3) images that the figures and the downloads both use."""
from __future__ import annotations

import io

import numpy as np


def upscale(image_hwc: np.ndarray, scale: int) -> np.ndarray:
    """``image_hwc`` enlarged ``scale`` times with crisp (nearest) pixels."""
    return image_hwc.repeat(scale, 0).repeat(scale, 1) if scale > 1 else image_hwc


def png_bytes(image_hwc: np.ndarray, scale: int = 1) -> bytes:
    """A uint8 (H, W, 3) array as PNG bytes, enlarged ``scale`` times with crisp (nearest) pixels."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(upscale(image_hwc, scale))).save(buf, format="PNG")
    return buf.getvalue()


def frame_indices(num_frames: int, max_frames: int) -> list[int]:
    """At most ``max_frames`` evenly spaced frame indices, always keeping the first and the last."""
    if num_frames <= max_frames:
        return list(range(num_frames))
    return sorted(set(np.linspace(0, num_frames - 1, max_frames).round().astype(int).tolist()))


def image_grid(images_hwc: np.ndarray, ncols: int | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile (N, H, W, 3) uint8 images into one (rows·(H+pad)+pad, cols·(W+pad)+pad, 3) array."""
    n, h, w, c = images_hwc.shape
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    for i, img in enumerate(images_hwc):
        r, col = divmod(i, ncols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img
    return grid
