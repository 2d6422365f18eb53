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
NUM_CLASSES = 9  # PathMNIST's tissues (ddpm.data.CLASS_NAMES; named here so that reading needs no torch)


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
    the manifest is an error, never silently used. Nothing in the manifest or a shard is trusted: shard files are
    plain names inside ``root``, counts agree with each other and with what decodes, labels are tissues 0-8, and a
    tile's header must give the size a tile of this pack has before it is decoded.
    """
    root = Path(root)
    path = root / manifest_name(split, size)
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{path} is not a readable manifest ({type(err).__name__}); copy the pack again") from None
    shards = _checked_manifest(manifest, path, split, size)
    images, labels, present = [], [], []
    for shard in shards:
        path = root / shard["file"]
        if not path.is_file():
            continue
        if path.stat().st_size != shard["bytes"]:
            raise ValueError(f"{path} is corrupt (its size differs from the manifest); copy it again")
        payload = path.read_bytes()
        if hashlib.md5(payload).hexdigest() != shard["md5"]:
            raise ValueError(f"{path} is corrupt (md5 differs from the manifest); copy it again")
        try:
            imgs, labs = _decode_shard(payload, shard["count"], size)
        except ValueError as err:
            raise ValueError(f"{path}: {err}; the pack was not written by `python -m ddpm pack-data`, or is damaged") from None
        images.append(imgs)
        labels.append(labs)
        present.append(shard)
    if not present:
        raise FileNotFoundError(f"{root} holds the manifest of the {split} pack but none of its {len(shards)} shards")
    n = sum(s["count"] for s in present)
    note = "" if len(present) == len(shards) else f", {len(present)} of {len(shards)} shards"
    desc = f"PathMNIST {split} split ({n:,} of {manifest['count']:,} patches, lossless pack{note})"
    return np.concatenate(images), np.concatenate(labels), desc


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _checked_manifest(manifest, path: Path, split: str, size: int) -> list[dict]:
    """The manifest's shards, once the manifest is known to describe this split and size consistently."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"{path} is not a version-{VERSION} {FORMAT} manifest")
    shards = manifest.get("shards")
    fields = {"file": str, "first": int, "count": int, "bytes": int, "md5": str}
    if (manifest.get("split") != split or manifest.get("image_size") != size or manifest.get("tile") != TILE
            or not _is_count(manifest.get("count")) or not isinstance(shards, list)
            or not all(isinstance(s, dict) and all(isinstance(s.get(k), t) for k, t in fields.items()) for s in shards)):
        raise ValueError(f"{path} does not describe a {split} pack of {size}×{size} patches in tiles of {TILE}×{TILE} "
                         "(split, image_size, tile, count or a shard's file, first, count, bytes, md5 is wrong)")
    first = 0
    for s in shards:
        name = s["file"]
        if Path(name).name != name or name in ("", ".", "..") or "\\" in name:  # a file of this folder, nothing else
            raise ValueError(f"{path} names a shard outside its folder ({name[:80]!r}); a pack's shards are files "
                             "beside its manifest")
        if s["first"] != first or s["count"] < 1 or s["bytes"] < 0:
            raise ValueError(f"{path}: shard {name} starts at {s['first']} with {s['count']} patches; the shards must "
                             f"cover the patches in order (this one should start at {first})")
        first += s["count"]
    if first != manifest["count"]:
        raise ValueError(f"{path} counts {manifest['count']:,} patches but its shards hold {first:,}")
    return shards


def _decode_shard(payload: bytes, count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The shard's (count, size, size, 3) patches and (count,) labels; a ValueError when anything disagrees."""
    from PIL import Image

    with np.load(io.BytesIO(payload), allow_pickle=False) as f:
        tiles, offsets, labels = f["tiles"], f["offsets"].astype(np.int64), f["labels"].astype(np.int64)
        stored = (int(f["count"]), int(f["image_size"]))
    if stored != (count, size):
        raise ValueError(f"it holds {stored[0]} patches of {stored[1]} px where the manifest says {count} of {size} px")
    if len(labels) != count or (count and not (0 <= labels.min() and labels.max() < NUM_CLASSES)):
        raise ValueError(f"it needs {count} labels in 0-{NUM_CLASSES - 1} and has {len(labels)} "
                         f"in {labels.min() if len(labels) else '-'}-{labels.max() if len(labels) else '-'}")
    per_tile = TILE * TILE
    if (len(offsets) != -(-count // per_tile) + 1 or offsets[0] != 0 or offsets[-1] != len(tiles)
            or np.any(np.diff(offsets) <= 0)):
        raise ValueError(f"its tile offsets do not cut {len(tiles):,} bytes into the {-(-count // per_tile)} tiles "
                         f"that {count} patches need")
    side = TILE * size  # every tile, the last one zero-padded, is exactly this wide and high
    out = []
    for i in range(len(offsets) - 1):
        try:
            im = Image.open(io.BytesIO(tiles[offsets[i]:offsets[i + 1]].tobytes()), formats=["WEBP"])
        except Image.DecompressionBombError as err:  # over twice Pillow's own limit: refused by Pillow as it opens
            raise ValueError(f"tile {i} is far larger than a tile of this pack ({side}×{side}): {err}") from None
        with im:
            if im.size != (side, side):  # read from the header: a bomb is refused before it is decoded
                raise ValueError(f"tile {i} is {im.size[0]}×{im.size[1]} px where a tile of this pack is {side}×{side}")
            tile = np.asarray(im.convert("RGB"))
        out.append(_from_tile(tile, min(per_tile, count - i * per_tile), size))
    return np.concatenate(out), labels


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
