"""A lossless, sharded pack of one PathMNIST split, for machines without internet or medmnist.

A GPU lent for a few minutes has neither: the split travels as a few shards of lossless WebP tiles
(20×20 patches per tile; 1.25 KB a patch against 2.35 KB raw) and a manifest. Reading needs only
numpy and Pillow; each shard is a plain ``.npz`` (no pickle) that carries its own labels, so a folder
with only some of the shards still trains on the patches it has (the source string says how many).

    pathmnist_train_pack.json            manifest: split, count, tile size, shards with md5 and counts
    pathmnist_train-00000-of-00003.npz   tiles (WebP bytes, offsets), labels, first index
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

FORMAT = "ddpm-pathmnist-pack"
VERSION = 1
TILE = 20  # patches per tile side: 400 patches per WebP image


def manifest_name(split: str, size: int = 28) -> str:
    return f"pathmnist{'' if size == 28 else f'_{size}'}_{split}_pack.json"


def has_pack(root: str | os.PathLike, split: str, size: int = 28) -> bool:
    return (Path(root) / manifest_name(split, size)).is_file()


def _encode_tile(args: tuple[np.ndarray, int]) -> bytes:
    from PIL import Image

    tile, method = args
    buf = io.BytesIO()
    Image.fromarray(tile).save(buf, "WEBP", lossless=True, exact=True, quality=100, method=method)
    return buf.getvalue()


def _to_tile(patches: np.ndarray) -> np.ndarray:
    """(k ≤ TILE², H, W, 3) uint8 -> one (TILE·H, TILE·W, 3) image, row-major, zero-padded."""
    _, h, w, c = patches.shape
    full = np.zeros((TILE * TILE, h, w, c), np.uint8)
    full[: len(patches)] = patches
    return full.reshape(TILE, TILE, h, w, c).transpose(0, 2, 1, 3, 4).reshape(TILE * h, TILE * w, c)


def _from_tile(tile: np.ndarray, count: int, h: int) -> np.ndarray:
    w = tile.shape[1] // TILE
    return tile.reshape(TILE, h, TILE, w, -1).transpose(0, 2, 1, 3, 4).reshape(TILE * TILE, h, w, -1)[:count]


def write_pack(images_hwc: np.ndarray, labels: np.ndarray, out_dir: str | os.PathLike, split: str = "train",
               shard_mb: float = 40.0, method: int = 4, workers: int | None = None, source: str = "") -> Path:
    """Write (N, H, W, 3) uint8 patches and their labels as shards of at most ``shard_mb`` MB each.

    ``method`` is WebP's effort, always lossless: 4 (the default) gave 1.27 KB a patch at 1 ms, 6 gave 1.26 KB at
    10 ms, 0 gave 1.55 KB (PathMNIST subset, this CPU). Returns the manifest's path.
    """
    if images_hwc.dtype != np.uint8 or images_hwc.ndim != 4 or images_hwc.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3) uint8, got {images_hwc.dtype} {images_hwc.shape}")
    if len(labels) != len(images_hwc):
        raise ValueError(f"{len(labels)} labels for {len(images_hwc)} images")
    if not 0 <= method <= 6:
        raise ValueError(f"WebP method must be in [0, 6], got {method}")
    if not (math.isfinite(shard_mb) and shard_mb > 0):  # nan would compare False and put everything in one shard
        raise ValueError(f"shard size must be a finite number of MB > 0, got {shard_mb}")
    per_tile = TILE * TILE
    starts = list(range(0, len(images_hwc), per_tile))
    jobs = [(_to_tile(images_hwc[s:s + per_tile]), method) for s in starts]
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        blobs = list(pool.map(_encode_tile, jobs))
    limit = shard_mb * 1e6
    if max(len(b) for b in blobs) > limit:
        raise ValueError(f"--shard-mb {shard_mb} is smaller than one tile ({max(len(b) for b in blobs) / 1e6:.2f} MB)")
    groups: list[list[int]] = [[]]
    size = 0
    for i, blob in enumerate(blobs):
        if groups[-1] and size + len(blob) + 4096 > limit:  # 4 KB for the npz headers, offsets and labels' share
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += len(blob) + 8 + per_tile
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    h = images_hwc.shape[1]
    shards = []
    for k, group in enumerate(groups):
        first = starts[group[0]]
        count = min(len(images_hwc), starts[group[-1]] + per_tile) - first
        data = np.frombuffer(b"".join(blobs[i] for i in group), np.uint8)
        offsets = np.cumsum([0] + [len(blobs[i]) for i in group]).astype(np.int64)
        name = f"pathmnist{'' if h == 28 else f'_{h}'}_{split}-{k:05d}-of-{len(groups):05d}.npz"
        buf = io.BytesIO()
        np.savez(buf, tiles=data, offsets=offsets, labels=np.asarray(labels[first:first + count]).reshape(-1).astype(np.uint8),
                 first=np.int64(first), count=np.int64(count), image_size=np.int64(h))
        payload = buf.getvalue()
        _atomic_write(out / name, payload)
        shards.append({"file": name, "first": int(first), "count": int(count), "bytes": len(payload),
                       "md5": hashlib.md5(payload).hexdigest()})
    manifest = {"format": FORMAT, "version": VERSION, "split": split, "image_size": h, "count": int(len(images_hwc)),
                "tile": TILE, "webp_method": method, "source": source, "shards": shards}
    path = out / manifest_name(split, h)
    _atomic_write(path, (json.dumps(manifest, indent=1) + "\n").encode())
    return path


def read_pack(root: str | os.PathLike, split: str = "train", size: int = 28) -> tuple[np.ndarray, np.ndarray, str]:
    """(images (N, H, W, 3) uint8, labels (N,) int64, description) from every shard present in ``root``.

    A shard that is absent is skipped (and the description says so); a shard whose md5 does not match
    the manifest is an error, never silently used.
    """
    root = Path(root)
    manifest = json.loads((root / manifest_name(split, size)).read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"{root / manifest_name(split, size)} is not a version-{VERSION} {FORMAT} manifest")
    images, labels, present = [], [], []
    for shard in manifest["shards"]:
        path = root / shard["file"]
        if not path.is_file():
            continue
        payload = path.read_bytes()
        if hashlib.md5(payload).hexdigest() != shard["md5"]:
            raise ValueError(f"{path} is corrupt (md5 differs from the manifest); copy it again")
        imgs, labs = _decode_shard(payload)
        images.append(imgs)
        labels.append(labs)
        present.append(shard)
    if not present:
        raise FileNotFoundError(f"{root} holds the manifest of the {split} pack but none of its {len(manifest['shards'])} shards")
    n = sum(s["count"] for s in present)
    note = "" if len(present) == len(manifest["shards"]) else f", {len(present)} of {len(manifest['shards'])} shards"
    desc = f"PathMNIST {split} split ({n:,} of {manifest['count']:,} patches, lossless pack{note})"
    return np.concatenate(images), np.concatenate(labels), desc


def _decode_shard(payload: bytes) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    with np.load(io.BytesIO(payload), allow_pickle=False) as f:
        tiles, offsets, labels = f["tiles"], f["offsets"], f["labels"].astype(np.int64)
        count, h = int(f["count"]), int(f["image_size"])
    out = []
    for i in range(len(offsets) - 1):
        tile = np.asarray(Image.open(io.BytesIO(tiles[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
        out.append(_from_tile(tile, min(TILE * TILE, count - i * TILE * TILE), h))
    return np.concatenate(out), labels


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
