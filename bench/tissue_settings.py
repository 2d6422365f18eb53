"""Does each tissue want its own guidance? Per-tissue settings against one setting for all, on the band sweep's grid.

    python bench/tissue_settings.py --data-dir ../shared/data   # after bench/quality.py scored the coarse grid
                                                                # writes bench/results/tissue_settings.{json,md}

The coarse rows of bench/quality.py's band sweep (every-step guidance at the sweep's scale and each scale × band
of ``BAND_SWEEP``, n = 2,000, seed 0) share their starting noise and their tissues: every row asks for the same
tissue at sample i from the same x_T, and DPM-Solver++ draws no noise after x_T. So the row that per-tissue
settings would give is made of the rows already sampled: sample i taken from the row chosen for its tissue.

Each tissue's setting is the one with the lowest per-tissue FD, chosen on half of that tissue's samples (even
indices) and scored, like the single setting it competes with, on the other half (odd indices), so neither
side is scored on the samples that chose it. Winning here is what earns per-tissue settings a row on the quality
table, where the recommendation is decided.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from quality import COARSE_N, RESULTS, chosen_guidance, coarse_rows, samples_for  # noqa: E402
from ddpm.data import CLASS_NAMES  # noqa: E402
from ddpm.evaluation.encoder import encoder_outputs, load_encoder  # noqa: E402
from ddpm.evaluation.metrics import frechet_distance  # noqa: E402
from ddpm.evaluation.report import evaluate_images, load_reference  # noqa: E402

KEYS = ("fd", "recall", "precision", "class_tv", "conditional_accuracy")


def per_tissue_fd(feats: np.ndarray, labels: np.ndarray, ref_feats: np.ndarray, ref_labels: np.ndarray,
                  mask: np.ndarray) -> dict[int, float]:
    """FD of the samples of each tissue (within ``mask``) against the reference patches of that tissue."""
    return {c: frechet_distance(ref_feats[ref_labels == c], feats[mask & (labels == c)]) for c in range(len(CLASS_NAMES))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    table = json.loads((RESULTS / "quality.json").read_text())
    guidance = chosen_guidance(table)
    rows = coarse_rows(guidance)
    if any(r.name not in table["rows"] for r in rows):
        sys.exit("score the band sweep's coarse grid first: python bench/quality.py --data-dir DIR")
    data = load_reference(args.data_dir)
    encoder = load_encoder()
    ref_feats = encoder_outputs(encoder, data.reference.images)[0]
    ref_labels = data.reference.labels.numpy()
    samples = {}
    for row in rows:
        images, _, _, _, labels = samples_for(row, COARSE_N, args.seed, False)
        samples[row] = (images, labels)
    labels = next(iter(samples.values()))[1]
    if any(not torch.equal(lab, labels) for _, lab in samples.values()):
        sys.exit("the coarse rows asked for different tissues: they were not sampled with one seed")
    lab = labels.numpy()
    choose, held = np.arange(len(lab)) % 2 == 0, np.arange(len(lab)) % 2 == 1
    feats = {row: encoder_outputs(encoder, images)[0] for row, (images, _) in samples.items()}
    fd_choose = {row: per_tissue_fd(f, lab, ref_feats, ref_labels, choose) for row, f in feats.items()}
    best = {c: min(rows, key=lambda r: fd_choose[r][c]) for c in range(len(CLASS_NAMES))}
    composite = torch.stack([samples[best[int(c)]][0][i] for i, c in enumerate(lab)])
    single_fd = {row: frechet_distance(ref_feats, f[choose]) for row, f in feats.items()}
    single = min(rows, key=single_fd.get)  # the best single setting, chosen on the same half
    idx = torch.from_numpy(np.flatnonzero(held))
    scored = {}
    for name, images in (("per-tissue settings", composite), (f"one setting: {single.name}", samples[single][0])):
        report = evaluate_images(images[idx], data, encoder, seed=args.seed, with_floor=False, requested=labels[idx],
                                 with_memorization=False)
        scored[name] = {**{k: report["metrics"][k] for k in KEYS},
                        "per_tissue_fd": {c["class"]: c.get("fd") for c in report["per_class"]}}
    keep = scored["per-tissue settings"]["fd"] < scored[f"one setting: {single.name}"]["fd"]
    result = {"date": time.strftime("%Y-%m-%d"), "n_choose": int(choose.sum()), "n_scored": int(held.sum()),
              "chosen": {CLASS_NAMES[c]: best[c].name for c in best}, "rows": scored, "per_tissue_wins": bool(keep)}
    (RESULTS / "tissue_settings.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"Per-tissue guidance settings against one setting for all ({result['date']}): each tissue's setting chosen "
             f"by its lowest per-tissue FD on {result['n_choose']} samples of the band sweep's coarse grid (n = "
             f"{COARSE_N}, even indices); both sides scored on the other {result['n_scored']} (odd indices) against the "
             "validation split.", "", "| tissue | chosen setting |", "|---|---|"]
    lines += [f"| {t} | {name} |" for t, name in result["chosen"].items()]
    lines += ["", "| | " + " | ".join(KEYS) + " |", "|---" * (len(KEYS) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{m[k]:.4g}" for k in KEYS) + " |" for name, m in scored.items()]
    lines += ["", f"Per-tissue settings {'beat' if keep else 'do not beat'} one setting for all on FD on the held-out "
                  "half. The recommendation changes only on the quality table (bench/quality.py, n = 5000 at the "
                  "recommended steps), which has no per-tissue row yet: per-tissue settings need per-image guidance "
                  "in a SamplingSpec first."]
    (RESULTS / "tissue_settings.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
