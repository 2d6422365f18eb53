"""The quality table: every shipped model and sampler under one protocol, beside the real-vs-real floor.

Rows: real-vs-real floor; centre shift (test vs val); the `seed` preset (the paper's DDPM, all 200
steps); the default model with DDPM over all steps, DDIM at 50 and 20 steps, DPM-Solver++ at 20 and
10 steps.  Same reference (the validation split), same sample count, same encoder.  Writes
bench/results/quality.{json,md} and quality_samples.png (a grid per row beside real patches).

    python bench/quality.py --data-dir ../shared/data [-n 5000] [--rows default-dpmpp-20 ...]

Generated samples are kept in bench/results/samples/ (git-ignored) with their wall time, so an
interrupted run resumes where it stopped; pass --fresh to regenerate.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ddpm.checkpoints import load_checkpoint  # noqa: E402
from ddpm.data import image_grid, to_hwc_numpy, to_uint8  # noqa: E402
from ddpm.export import save_png  # noqa: E402
from ddpm.evaluation.encoder import load_encoder  # noqa: E402
from ddpm.evaluation.report import METRIC_KEYS, evaluate_images, evaluation_panel, load_reference  # noqa: E402
from ddpm.pipeline import generate  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SAMPLES = RESULTS / "samples"
#: the row whose report becomes each shipped model's checkpoints/<name>/evaluation.json (with --checkpoint-reports)
CANONICAL = {"seed": "seed (paper) DDPM 200", "default": "default DPM-Solver++ 20"}
#: (row name, checkpoint, sampler, steps)
ROWS = [
    ("seed (paper) DDPM 200", "seed", "ddpm", None),
    ("default DDPM all steps", "default", "ddpm", None),
    ("default DDIM 50", "default", "ddim", 50),
    ("default DDIM 20", "default", "ddim", 20),
    ("default DPM-Solver++ 20", "default", "dpmpp", 20),
    ("default DPM-Solver++ 10", "default", "dpmpp", 10),
]


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def samples_for(row: tuple, n: int, seed: int, fresh: bool) -> tuple[torch.Tensor, float, str, int | None]:
    """(uint8 images (n, 3, 28, 28), seconds per 1000 samples, checkpoint source, torch threads), cached on disk."""
    name, source, sampler, steps = row
    path = SAMPLES / f"{slug(name)}-n{n}-seed{seed}.npz"
    if path.is_file() and not fresh:
        with np.load(path) as f:
            threads = int(f["torch_threads"]) if "torch_threads" in f else None
            return torch.from_numpy(f["images"]), float(f["seconds_per_1000"]), str(f["source"]), threads
    ckpt = load_checkpoint(source)
    t0 = time.time()
    images = to_uint8(generate(ckpt.model, ckpt.schedule, n, sampler, steps, seed=seed, batch_size=500, progress=True))
    per_1000 = (time.time() - t0) * 1000 / n
    SAMPLES.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=images.numpy(), seconds_per_1000=per_1000, source=ckpt.source,
                        torch_threads=torch.get_num_threads())
    return images, per_1000, ckpt.source, torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir")
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", nargs="*", help="row slugs to run (default: all)")
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--checkpoint-reports", action="store_true",
                        help="also write the canonical rows' reports to checkpoints/<name>/evaluation.{json,png}")
    args = parser.parse_args()
    data = load_reference(args.data_dir)
    if data.note:
        sys.exit(f"the quality table needs the full PathMNIST file: {data.note}")
    encoder = load_encoder()
    out_json = RESULTS / "quality.json"
    table = json.loads(out_json.read_text()) if out_json.is_file() else {"rows": {}}
    for row in ROWS:
        if args.rows and slug(row[0]) not in args.rows:
            continue
        images, per_1000, source, threads = samples_for(row, args.n, args.seed, args.fresh)
        report = evaluate_images(images, data, encoder, seed=args.seed, with_floor="floor" not in table, progress=True)
        if "floor" in report:
            table.update(floor=report["floor"], centre_shift=report.get("centre_shift"), protocol=report["protocol"],
                         floor_protocol=report["floor_protocol"])
        table["rows"][row[0]] = {**report["metrics"], "seconds_per_1000": round(per_1000, 1), "torch_threads": threads,
                                 "checkpoint": source,
                                 "sampler": row[2], "steps": row[3], "n": args.n,
                                 "class_hist": report["class_hist"]["generated"]}
        table["class_prior"] = report["class_hist"]["train_prior"]
        if args.checkpoint_reports and CANONICAL.get(row[1]) == row[0]:
            shared = {k: table[k] for k in ("floor", "centre_shift", "floor_protocol") if table.get(k) is not None}
            write_checkpoint_report(row, {**shared, **report}, images, per_1000, source, threads, data, args)
        out_json.write_text(json.dumps(table, indent=1) + "\n")
        print(row[0], {k: report["metrics"][k] for k in METRIC_KEYS}, f"{per_1000:.1f} s/1000", flush=True)
    table["date"] = time.strftime("%Y-%m-%d")
    out_json.write_text(json.dumps(table, indent=1) + "\n")
    write_markdown(table)
    grids = [(row[0], to_hwc_numpy(samples_for(row, args.n, args.seed, False)[0][:48])) for row in ROWS if row[0] in table["rows"]]
    if grids:
        real = to_hwc_numpy(data.reference.images[:48])
        blocks = [image_grid(g, 12) for _, g in grids] + [image_grid(real, 12)]
        sep = np.full((blocks[0].shape[0], 10, 3), 255, np.uint8)
        save_png(np.concatenate(sum(([b, sep] for b in blocks), [])[:-1], axis=1), RESULTS / "quality_samples.png", scale=2)
        (RESULTS / "quality_samples.txt").write_text("left to right: " + ", ".join([n for n, _ in grids] + ["real (val)"]) + "\n")


def write_checkpoint_report(row: tuple, report: dict, images: torch.Tensor, per_1000: float, source: str,
                            threads: int | None, data, args) -> None:
    """The shipped model's own evaluation.json / evaluation.png (read by the app and the model card)."""
    folder = ROOT / "checkpoints" / row[1]
    report = {**report, "sampling": {"checkpoint": source, "sampler": row[2], "steps": row[3] or "all", "seed": args.seed,
                                     "seconds_per_1000": round(per_1000, 1), "torch_threads": threads}}
    (folder / "evaluation.json").write_text(json.dumps(report, indent=1) + "\n")
    save_png(evaluation_panel(to_hwc_numpy(images), data, report), folder / "evaluation.png", scale=2)


def write_markdown(table: dict) -> None:
    keys = ("fd", "kid_mean", "precision", "recall", "density", "coverage", "class_tv", "memorization_share")
    lines = [f"n = {next(iter(table['rows'].values()), {}).get('n', '?')} generated per row against "
             f"{table['protocol']['reference']} ({table['protocol']['n_reference']} patches); {table['floor_protocol']}. "
             f"Sampling time per 1,000 samples on this machine's CPU, with the torch threads it had ({table.get('date')}).", "",
             "| row | " + " | ".join(keys) + " | s / 1000 samples | threads |", "|---" * (len(keys) + 3) + "|"]
    fmt = lambda m, k: f"{m[k]:.4g}" if m and k in m and m[k] is not None else "–"  # noqa: E731
    lines.append("| real-vs-real floor | " + " | ".join(fmt(table["floor"], k) for k in keys) + " | – | – |")
    if table.get("centre_shift"):
        lines.append("| centre shift (test vs val) | " + " | ".join(fmt(table["centre_shift"], k) for k in keys) + " | – | – |")
    for name, m in table["rows"].items():
        lines.append(f"| {name} | " + " | ".join(fmt(m, k) for k in keys)
                     + f" | {m['seconds_per_1000']:.0f} | {m.get('torch_threads') or '?'} |")
    (RESULTS / "quality.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
