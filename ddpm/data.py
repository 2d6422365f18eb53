"""PathMNIST: loading through medmnist, the bundled real subset, and pixel-range conversions.

Images are kept as one uint8 tensor (N, 3, H, W) in memory and scaled to [-1, 1] per batch; there
is no per-image PIL transform anywhere on the training path.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .imaging import image_grid  # noqa: F401  (re-exported: it lived here first)

#: PathMNIST's tissue classes (medmnist.INFO["pathmnist"]["label"], NCT-CRC-HE-100K).
CLASS_NAMES: tuple[str, ...] = (
    "adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
    "normal colon mucosa", "cancer-associated stroma", "colorectal adenocarcinoma epithelium",
)
#: Patches per class in PathMNIST's training split (pathmnist.npz, md5 a8b06965200029087d5bd730944a56c1).
TRAIN_CLASS_COUNTS: tuple[int, ...] = (9366, 9509, 10360, 10401, 8006, 12182, 7886, 9401, 12885)
SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_SIZES = {"train": 89_996, "val": 10_004, "test": 7_180}
SIZES: tuple[int, ...] = (28, 64, 128, 224)
DATA_DIR_ENV = "DDPM_DATA_DIR"
SUBSET_PATH = Path(__file__).parent / "assets" / "pathmnist_subset.npz"
DATA_CREDIT = (
    "PathMNIST (MedMNIST v2, Yang et al. 2023, CC BY 4.0), derived from NCT-CRC-HE-100K and CRC-VAL-HE-7K "
    "(Kather et al. 2019)."
)


class DataNotFoundError(FileNotFoundError):
    """The PathMNIST file is not where we looked; the message says how to get it."""


@dataclass(frozen=True)
class ImageSet:
    images: torch.Tensor  # (N, 3, H, W) uint8
    labels: torch.Tensor  # (N,) int64, index into CLASS_NAMES
    source: str  # human-readable: which file or subset these came from

    def __len__(self) -> int:
        return self.images.shape[0]


def class_prior() -> torch.Tensor:
    """The training split's class frequencies, (9,) float64 summing to 1."""
    counts = torch.tensor(TRAIN_CLASS_COUNTS, dtype=torch.float64)
    return counts / counts.sum()


def class_index(name_or_index: str | int) -> int:
    """A tissue class by name ("adipose"), by a unique prefix ("smooth") or by index ("5" or 5)."""
    text = str(name_or_index).strip().lower()
    if text.lstrip("-").isdigit():
        idx = int(text)
        if 0 <= idx < len(CLASS_NAMES):
            return idx
    else:
        matches = [i for i, n in enumerate(CLASS_NAMES) if n == text] or [i for i, n in enumerate(CLASS_NAMES) if n.startswith(text)]
        if len(matches) == 1:
            return matches[0]
    choices = ", ".join(f"{i} {n!r}" for i, n in enumerate(CLASS_NAMES))
    raise ValueError(f"unknown tissue class {name_or_index!r}; choose a name or index among: {choices}")


def default_data_dir() -> Path:
    """``$DDPM_DATA_DIR`` if set, else medmnist's default root (``~/.medmnist``)."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    return Path("~/.medmnist").expanduser()


def npz_name(size: int = 28) -> str:
    return "pathmnist.npz" if size == 28 else f"pathmnist_{size}.npz"


def _missing_message(root: Path, size: int) -> str:
    flag = "" if size == 28 else f"_{size}"
    try:
        from medmnist import INFO  # lazy: medmnist is not needed to train from a tensor or a pack

        where = f"download {INFO['pathmnist']['url' + flag]} (md5 {INFO['pathmnist']['MD5' + flag]}) and put it in {root}"
    except ImportError:
        where = f"copy pathmnist{flag}.npz from a machine that has it into {root}"
    return (
        f"PathMNIST file {root / npz_name(size)} not found (nor a pack made by `python -m ddpm pack-data`). Either run "
        f"`python -m ddpm download --data-dir {root}{'' if size == 28 else f' --size {size}'}` (needs internet), "
        f"or {where}, or point --data-dir / ${DATA_DIR_ENV} at the folder that holds it."
    )


def load_pathmnist(split: str = "train", data_dir: str | os.PathLike | None = None, size: int = 28) -> ImageSet:
    """One split of PathMNIST read by medmnist's own loader (cached per process), or from a lossless
    pack (``ddpm.datapack``) in the same folder when medmnist's file is not there.

    Raises DataNotFoundError with download instructions when the file is absent.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size}")
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    return _load_cached(split, str(root.resolve()), size)


@functools.lru_cache(maxsize=8)
def _load_cached(split: str, root: str, size: int) -> ImageSet:
    if not (Path(root) / npz_name(size)).is_file():
        from .datapack import has_pack, read_pack

        if has_pack(root, split, size):
            try:
                images, labels, source = read_pack(root, split, size)
            except FileNotFoundError as err:
                raise DataNotFoundError(str(err)) from err
            return ImageSet(to_chw_tensor(images), torch.from_numpy(labels), source)
        raise DataNotFoundError(_missing_message(Path(root), size))
    import medmnist

    ds = medmnist.PathMNIST(split=split, root=root, size=size, download=False)
    return ImageSet(to_chw_tensor(ds.imgs), torch.from_numpy(ds.labels.reshape(-1).astype(np.int64)),
                    f"PathMNIST {split} split ({len(ds.labels):,} patches, {npz_name(size)})")


def download_pathmnist(data_dir: str | os.PathLike | None = None, size: int = 28) -> Path:
    """Download PathMNIST with medmnist (md5-checked) into ``data_dir``; returns the file's path."""
    import medmnist

    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    root.mkdir(parents=True, exist_ok=True)
    medmnist.PathMNIST(split="val", root=str(root), size=size, download=True)
    return root / npz_name(size)


def load_subset() -> ImageSet:
    """The real patches shipped with the package: a class-stratified sample of the training split."""
    with np.load(SUBSET_PATH) as f:
        return ImageSet(to_chw_tensor(f["images"]), torch.from_numpy(f["labels"].astype(np.int64)),
                        f"bundled subset of the PathMNIST training split ({SUBSET_PATH.name}, {len(f['labels'])} patches)")


def load_images(split: str = "train", data_dir: str | os.PathLike | None = None, size: int = 28,
                allow_subset: bool = True) -> tuple[ImageSet, str | None]:
    """The requested split, or the bundled subset when the full file is missing.

    Returns (images, warning): warning is None when the full split was loaded, else says why the
    subset is used, so callers can show it rather than hide it.
    """
    try:
        return load_pathmnist(split, data_dir, size), None
    except DataNotFoundError as err:
        if not allow_subset or size != 28:
            raise
        return load_subset(), f"{err} Using the {len(load_subset())} bundled training patches instead."


def make_subset(images: np.ndarray, labels: np.ndarray, per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A class-stratified random sample: ``per_class`` images of each label, in a shuffled order."""
    rng = np.random.default_rng(seed)
    labels = labels.reshape(-1)
    idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)])
    rng.shuffle(idx)
    return images[idx], labels[idx]


def to_chw_tensor(images_hwc: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 array -> contiguous (N, 3, H, W) uint8 tensor."""
    if images_hwc.ndim == 3:  # grayscale MedMNIST sets
        images_hwc = images_hwc[..., None].repeat(3, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(images_hwc.transpose(0, 3, 1, 2)))


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] (B, 3, H, W) -> uint8 [0, 255], same layout."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_hwc_numpy(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float [-1, 1] or uint8 -> (B, H, W, 3) uint8 numpy, the layout of files and figures."""
    if images.dtype != torch.uint8:
        images = to_uint8(images)
    return images.permute(0, 2, 3, 1).cpu().numpy()


def dihedral_augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random element of the dihedral group D4 (flips and 90° rotations) per image. x: (B, C, H, H)."""
    where = generator.device if generator is not None else "cpu"
    flips = torch.rand(3, x.shape[0], 1, 1, 1, generator=generator, device=where).lt(0.5).to(x.device)
    x = torch.where(flips[0], x.flip(3), x)
    x = torch.where(flips[1], x.flip(2), x)
    return torch.where(flips[2], x.transpose(2, 3), x)
