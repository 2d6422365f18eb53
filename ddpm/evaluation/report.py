"""The evaluation protocol: generated patches against PathMNIST, with the real-versus-real floor.

Protocol (one source of truth for bench/quality.py, the CLI and the app):
* Feature space: the shipped tissue encoder's penultimate layer (``encoder.py``).
* Reference: the validation split (10,004 patches, same centre as training).
* Floor: as many training patches as generated ones, scored against the same reference.
* Centre shift: the test split (another clinical centre) against the reference.
* Memorization: nearest training patch of every generated patch in pixel space (8 orientations)
  and in encoder space; the floor's memorization uses held-out validation patches.
Without the full data file, the bundled subset is split in two halves (train / reference) and the
report says so.
"""
from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import CLASS_NAMES, DataNotFoundError, ImageSet, load_pathmnist, load_subset
from .encoder import TissueEncoder, encoder_outputs, load_encoder
from .memorization import COPY_RATIO, Neighbours, nearest_neighbours, pixel_neighbours
from .metrics import (class_histogram, color_histograms, frechet_distance, kernel_distance, label_histogram,
                      precision_recall_density_coverage, total_variation)

METRIC_KEYS = ("fd", "kid_mean", "kid_std", "precision", "recall", "density", "coverage", "class_tv",
               "memorization_share", "memorization_share_encoder")
MIN_PER_CLASS = 50  # fewer samples of a tissue than this: its per-tissue FD is not reported
NEAREST_SHOWN = 64  # samples whose nearest training patch the report keeps for display


@dataclass(frozen=True)
class ReferenceData:
    train: ImageSet
    reference: ImageSet
    test: ImageSet | None
    note: str | None  # set when the bundled subset stands in for the full data


def load_reference(data_dir: str | None = None) -> ReferenceData:
    """Train / val / test splits, or halves of the bundled subset when the full file is absent."""
    try:
        return ReferenceData(load_pathmnist("train", data_dir), load_pathmnist("val", data_dir),
                             load_pathmnist("test", data_dir), None)
    except DataNotFoundError as err:
        sub = load_subset()
        half = len(sub) // 2
        split = lambda sl, name: ImageSet(sub.images[sl], sub.labels[sl], f"{sub.source}, {name}")  # noqa: E731
        return ReferenceData(split(slice(0, half), "first half as train"), split(slice(half, None), "second half as reference"),
                             None, f"{err} Using the bundled subset's halves: numbers are indicative only.")


@functools.lru_cache(maxsize=4)
def _encoded(encoder: TissueEncoder, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:  # tensors hash by identity
    return encoder_outputs(encoder, images)


def encode(encoder: TissueEncoder, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Encoder features and class probabilities; cached for the (large, reused) reference tensors."""
    return _encoded(encoder, images) if images.shape[0] > 2000 else encoder_outputs(encoder, images)


def distribution_metrics(ref_feats: np.ndarray, feats: np.ndarray, probs: np.ndarray, prior: np.ndarray) -> dict:
    """FD, KID, precision / recall / density / coverage against the reference, and the class-histogram TV."""
    kid_mean, kid_std = kernel_distance(ref_feats, feats)
    return {"fd": frechet_distance(ref_feats, feats), "kid_mean": kid_mean, "kid_std": kid_std,
            **precision_recall_density_coverage(ref_feats, feats),
            "class_tv": total_variation(class_histogram(probs, len(prior)), prior)}


def memorization_metrics(images: torch.Tensor, feats: np.ndarray, train: ImageSet, train_feats: np.ndarray,
                         progress: bool = False) -> tuple[dict, Neighbours]:
    """Copy shares (pixel space over 8 orientations, and encoder space) and nearest-neighbour statistics."""
    pix = pixel_neighbours(images, train.images, progress=progress)
    enc = nearest_neighbours(torch.from_numpy(feats), torch.from_numpy(train_feats))
    return {"memorization_share": pix.copy_share(), "memorization_share_encoder": enc.copy_share(),
            "median_nn_ratio": float(np.median(pix.ratio)), "median_nn_pixel_l2": float(np.median(pix.distance))}, pix


def conditional_accuracy(probs: np.ndarray, requested: np.ndarray) -> float:
    """Share of generated patches that the encoder assigns to the tissue they were asked to be."""
    return float((probs.argmax(1) == requested).mean())


def per_class_metrics(ref_feats: np.ndarray, ref_labels: np.ndarray, feats: np.ndarray, probs: np.ndarray,
                      requested: np.ndarray, copy_ratio: np.ndarray | None, train_feats: np.ndarray, train_labels: np.ndarray,
                      seed: int = 0) -> list[dict]:
    """Per tissue c: FD of the samples asked to be c against the reference patches of class c, the floor of
    that FD (as many training patches of class c), conditional accuracy and copy share. (A row per class.)"""
    rng = np.random.default_rng(seed)
    rows = []
    for c, name in enumerate(CLASS_NAMES):
        mine = requested == c
        n = int(mine.sum())
        row = {"class": name, "n": n}
        if n:
            row["conditional_accuracy"] = conditional_accuracy(probs[mine], requested[mine])
            if copy_ratio is not None:
                row["memorization_share"] = float((copy_ratio[mine] < COPY_RATIO).mean())
        ref_c = ref_feats[ref_labels == c]
        if n >= MIN_PER_CLASS and len(ref_c) >= MIN_PER_CLASS:
            row["fd"] = frechet_distance(ref_c, feats[mine])
            pool = np.flatnonzero(train_labels == c)
            row["fd_floor"] = frechet_distance(ref_c, train_feats[rng.choice(pool, min(n, len(pool)), replace=False)])
        rows.append({k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in row.items()})
    return rows


def _rounded(d: dict) -> dict:
    return {k: float(f"{float(v):.6g}") for k, v in d.items()}  # 6 significant digits: KID values are small


def evaluate_images(generated: torch.Tensor, data: ReferenceData | None = None, encoder: TissueEncoder | None = None,
                    seed: int = 0, with_floor: bool = True, progress: bool = False, callback=None,
                    requested: torch.Tensor | None = None, with_memorization: bool = True) -> dict:
    """The full report for generated uint8 images (N, 3, 28, 28): metrics, floor, centre shift, histograms.

    ``requested`` (N,): the tissue each sample was asked to be (a conditional model); adds the conditional
    accuracy and a per-tissue table. ``callback(fraction, message)`` reports progress for UIs.
    ``with_memorization=False`` leaves out the search of every sample's nearest training patch (most of the
    scoring time: a sweep's coarse rows compare settings of one model, whose copies the chosen row checks).
    """
    if generated.dtype != torch.uint8 or generated.ndim != 4 or generated.shape[1] != 3:
        raise ValueError(f"generated images must be uint8 (N, 3, H, W), got {generated.dtype} {tuple(generated.shape)}")
    if generated.shape[0] < 50:
        raise ValueError(f"at least 50 generated images are needed for meaningful statistics, got {generated.shape[0]}")
    tell = callback or (lambda f, m: None)
    data = data or load_reference()
    encoder = encoder or load_encoder()
    n = generated.shape[0]
    tell(0.05, "encoding reference patches")
    ref_feats, _ = encode(encoder, data.reference.images)
    train_feats, train_probs = encode(encoder, data.train.images)
    tell(0.25, "encoding generated patches")
    fake_feats, fake_probs = encoder_outputs(encoder, generated)
    prior = label_histogram(data.train.labels.numpy(), len(CLASS_NAMES))
    tell(0.35, "scoring generated patches")
    metrics = distribution_metrics(ref_feats, fake_feats, fake_probs, prior)
    memo, pix = (memorization_metrics(generated, fake_feats, data.train, train_feats, progress=progress)
                 if with_memorization else ({}, None))
    if requested is not None:
        if requested.shape != (n,):
            raise ValueError(f"requested must hold one class per generated image ({n}), got {tuple(requested.shape)}")
        metrics["conditional_accuracy"] = conditional_accuracy(fake_probs, requested.numpy())
    report = {
        "protocol": {"feature_space": "ddpm tissue encoder (penultimate layer, 256-d)", "reference": data.reference.source,
                     "n_reference": len(data.reference), "n_generated": n, "train": data.train.source,
                     "kid": "cubic polynomial kernel, 100 subsets of ≤1000", "prdc_k": 5,
                     "memorization": f"share of samples with nearest/second-nearest training distance < {COPY_RATIO:.3f} "
                                     "(pixel L2 over 8 orientations; also in encoder space)", "note": data.note},
        "metrics": _rounded({**metrics, **memo}),
        "class_names": list(CLASS_NAMES),
        "class_hist": {"generated": class_histogram(fake_probs, len(CLASS_NAMES)).tolist(), "train_prior": prior.tolist()},
        "color_hist": {"generated": color_histograms(generated.numpy()).tolist(),
                       "reference": color_histograms(data.reference.images.numpy()).tolist()},
    }
    if pix is not None:
        report["nearest"] = {"index": pix.index[:NEAREST_SHOWN].tolist(),
                             "pixel_l2": pix.distance[:NEAREST_SHOWN].round(4).tolist(),
                             "ratio": pix.ratio[:NEAREST_SHOWN].round(4).tolist()}
        report["ratio_histogram"] = np.histogram(pix.ratio, bins=20, range=(0, 1))[0].tolist()
    if requested is not None:
        report["requested_hist"] = label_histogram(requested.numpy(), len(CLASS_NAMES)).tolist()
        report["per_class"] = per_class_metrics(ref_feats, data.reference.labels.numpy(), fake_feats, fake_probs,
                                                requested.numpy(), None if pix is None else pix.ratio, train_feats,
                                                data.train.labels.numpy(), seed)
    if with_floor:
        tell(0.6, "real-versus-real floor")
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(data.train), generator=g)[:min(n, len(data.train))]
        floor = distribution_metrics(ref_feats, train_feats[idx.numpy()], train_probs[idx.numpy()], prior)
        # a training patch's nearest training patch is itself: the floor's memorization uses held-out patches
        held = data.reference.images[torch.randperm(len(data.reference), generator=g)[:min(n, 2000, len(data.reference))]]
        floor.update(memorization_metrics(held, encoder_outputs(encoder, held)[0], data.train, train_feats)[0])
        report["floor"] = _rounded(floor)
        report["floor_protocol"] = (f"{len(idx)} random training patches against the reference; memorization from "
                                    f"{len(held)} held-out reference patches against the training split")
        if data.test is not None:
            tell(0.85, "centre shift (test split)")
            test_feats, test_probs = encode(encoder, data.test.images)
            report["centre_shift"] = _rounded(distribution_metrics(ref_feats, test_feats, test_probs, prior))
    tell(1.0, "done")
    return report


def evaluation_panel(generated_hwc: np.ndarray, data: ReferenceData, report: dict, n: int = 64) -> np.ndarray:
    """One image: generated patches | real reference patches, then 16 samples above their nearest training patch."""
    from ..data import image_grid, to_hwc_numpy

    fake_grid, real_grid = image_grid(generated_hwc[:n], 8), image_grid(to_hwc_numpy(data.reference.images[:n]), 8)
    rows = max(fake_grid.shape[0], real_grid.shape[0])  # fewer than n generated: pad the shorter grid with white
    fake_grid, real_grid = (np.pad(g, ((0, rows - g.shape[0]), (0, 0), (0, 0)), constant_values=255) for g in (fake_grid, real_grid))
    top = np.concatenate([fake_grid, np.full((rows, 12, 3), 255, np.uint8), real_grid], axis=1)
    k = 16
    nn_idx = report["nearest"]["index"][:k]
    pairs = np.concatenate([generated_hwc[:k], to_hwc_numpy(data.train.images[torch.tensor(nn_idx)])])
    bottom = image_grid(pairs, k)
    pad = np.full((bottom.shape[0], top.shape[1] - bottom.shape[1], 3), 255, np.uint8) if top.shape[1] > bottom.shape[1] else None
    bottom = np.concatenate([bottom, pad], 1) if pad is not None else bottom[:, :top.shape[1]]
    return np.concatenate([top, np.full((12, top.shape[1], 3), 255, np.uint8), bottom])


def sample_and_evaluate(model: torch.nn.Module, schedule, n: int, spec=None, *, seed: int = 0,
                        data: ReferenceData | None = None, encoder: TissueEncoder | None = None,
                        progress: bool = False, callback=None, precision: str = "auto",
                        classes=None) -> tuple[dict, torch.Tensor]:
    """Generate ``n`` patches with ``model`` and score them: (report with its "sampling" section, uint8 (n, 3, H, W)).

    The one sample-then-score flow of the CLI, the app and bench: ``callback(fraction, message)``
    follows both halves (sampling to 0.5, scoring to 1). ``spec`` is a ``SamplingSpec`` (default: the default
    one). A tissue-conditional model takes ``classes`` (default: drawn from the training prior); the report then
    has the conditional accuracy.
    """
    from ..data import to_uint8
    from ..pipeline import generate, resolve_classes
    from ..sampling_spec import DEFAULT_SPEC

    spec = spec or DEFAULT_SPEC
    tell = callback or (lambda f, m: None)
    requested = resolve_classes(model.config.num_classes, n, classes, seed)
    t0 = time.time()
    images = to_uint8(generate(model, schedule, n, spec, seed=seed, progress=progress, precision=precision,
                               callback=lambda done, total: tell(0.5 * done / total, f"sampling: step {done}/{total}"),
                               classes=requested))
    seconds = time.time() - t0
    report = evaluate_images(images, data, encoder, seed=seed, progress=progress, requested=requested,
                             callback=lambda f, message: tell(0.5 + 0.5 * f, f"evaluating: {message}"))
    report["sampling"] = {"sampler": spec.sampler, "steps": spec.num_model_calls(schedule.num_timesteps), "seed": seed,
                          "guidance": spec.guidance if requested is not None else None,
                          **({"guidance_interval": list(spec.guidance_interval)}
                             if spec.guidance_interval and requested is not None else {}),
                          **({"eta": spec.eta} if spec.eta else {}),
                          "seconds": round(seconds, 1), "seconds_per_1000": round(seconds * 1000 / n, 1),
                          "device": str(next(model.parameters()).device), "torch_threads": torch.get_num_threads(),
                          "precision": precision}
    return report, images


def evaluate_checkpoint(args) -> dict:
    """``python -m ddpm evaluate``: sample, time, score, write ``OUT.json`` and ``OUT.png``."""
    from ..checkpoints import load_checkpoint
    from ..data import to_hwc_numpy
    from ..device import resolve_device
    from ..export import save_png

    from ..cli_options import describe_sampling, sampling_settings, say_precision, writable_folder

    out = Path(args.out)
    writable_folder(out.parent)
    device = resolve_device(args.device)
    say_precision(args, device)
    ckpt = load_checkpoint(args.checkpoint)
    spec, classes = sampling_settings(args, ckpt, args.n, args.seed)
    print(f"model from {ckpt.source}; {describe_sampling(spec, classes, args.tissue)}")
    data = load_reference(args.data_dir)
    if data.note:
        print(f"warning: {data.note}")
    encoder = load_encoder(args.encoder)
    model = ckpt.model.to(device)
    report, images = sample_and_evaluate(model, ckpt.schedule, args.n, spec, seed=args.seed, data=data, encoder=encoder,
                                         progress=True, precision=args.precision, classes=classes)
    report["sampling"] = {"checkpoint": ckpt.source, **report["sampling"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    save_png(evaluation_panel(to_hwc_numpy(images), data, report), out.with_suffix(".png"), scale=2)
    rows = [("generated", report["metrics"]), ("real-vs-real floor", report.get("floor", {}))]
    for name, m in rows:
        print(f"{name:>20}: " + ", ".join(f"{k}={m[k]:.4g}" for k in METRIC_KEYS if k in m))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return report
