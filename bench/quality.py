"""The quality table: every shipped model and sampler under one protocol, beside the real-vs-real floor.

Rows: real-vs-real floor; centre shift (test vs val); the `seed` preset (the paper's DDPM, all 200
steps); the default model with DDPM over all steps, DDIM at 50 and 20 steps, DPM-Solver++ at 20 and
10 steps.  Same reference (the validation split), same sample count, same encoder.  Writes
bench/results/quality.{json,md} and quality_samples.png (a grid per row beside real patches).

    python bench/quality.py --data-dir ../shared/data [-n 5000] [--rows default-dpmpp-20 ...]

Generated samples are kept in bench/results/samples/ (git-ignored) with their wall time and a
fingerprint of the weights that made them, so an interrupted run resumes where it stopped and a retrained
checkpoint is never scored with old samples; pass --fresh to regenerate.

On 2 CPU cores two one-thread processes sample about 1.2× faster than one two-thread process, so the
table is generated in parallel jobs and scored once (a row may be split into shards; its time is the
sum of its shards' times):

    python bench/quality.py --samples-only --threads 1 --rows default-ddpm-all-steps --shard 0/2 &
    python bench/quality.py --samples-only --threads 1 --rows default-ddpm-all-steps --shard 1/2 &
    wait; python bench/quality.py --data-dir ../shared/data
"""
from __future__ import annotations

import argparse
import functools
import hashlib
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


#: images per network call: ddpm.pipeline.default_batch_size's CPU size, rounded to divide 5000 and its shards
BATCH = 125


@functools.lru_cache(maxsize=None)
def _checkpoint(source: str):
    """Each shipped model loaded once per run (loading probes the Hub first)."""
    return load_checkpoint(source)


def cache_path(name: str, n: int, seed: int, shard: str = "") -> Path:
    """Where a row's samples (``shard=""``) or one shard of them (``"shard0of2"``; ``"shard*"`` to glob) are cached."""
    return SAMPLES / f"{slug(name)}-n{n}-seed{seed}{'-' + shard if shard else ''}.npz"


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the weights, stored beside cached samples so a retrained checkpoint never reuses them."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def shard_seed(seed: int, shard: int) -> int:
    """Shard 0 keeps the row's seed (an unsharded row is shard 0 of 1); other shards draw fresh noise."""
    return seed + 1_000_003 * shard


def _read_cache(path: Path, fingerprint: str) -> dict | None:
    if not path.is_file():
        return None
    with np.load(path) as f:
        if "fingerprint" not in f or str(f["fingerprint"]) != fingerprint:
            print(f"{path.name}: made by other weights; regenerating", flush=True)
            return None
        return {"images": torch.from_numpy(f["images"]), "seconds": float(f["seconds"]), "source": str(f["source"]),
                "threads": int(f["torch_threads"])}


def samples_for(row: tuple, n: int, seed: int, fresh: bool, shard: tuple[int, int] = (0, 1)
                ) -> tuple[torch.Tensor, float, str, int | None]:
    """(uint8 images (n, 3, 28, 28), seconds per 1000 samples, checkpoint source, torch threads), cached on disk.

    With ``shard=(i, k)`` only shard i of k (n // k images, the last takes the rest) is made and cached; a row
    whose k shard files are all present is assembled from them, its time the sum of theirs.
    """
    name, source, sampler, steps = row
    ckpt = _checkpoint(source)
    fingerprint = weights_fingerprint(ckpt.model)
    path = cache_path(name, n, seed)
    index, count = shard
    if count == 1:
        cached = None if fresh else _read_cache(path, fingerprint)
        if cached is None:
            shards = sorted(SAMPLES.glob(cache_path(name, n, seed, "shard*of*").name))
            parts = [_read_cache(p, fingerprint) for p in shards] if shards and not fresh else []
            total = int(re.search(r"of(\d+)", shards[0].name).group(1)) if shards else 0
            if parts and len(parts) == total and all(parts):
                cached = {"images": torch.cat([p["images"] for p in parts]), "seconds": sum(p["seconds"] for p in parts),
                          "source": parts[0]["source"], "threads": max(p["threads"] for p in parts)}
                _write_cache(path, cached, fingerprint)
        if cached is None:
            cached = _sample(ckpt, sampler, steps, n, seed)
            _write_cache(path, cached, fingerprint)
    else:
        if not 0 <= index < count or n < count:
            raise ValueError(f"shard {index}/{count} of {n} samples does not exist")
        part = cache_path(name, n, seed, f"shard{index}of{count}")
        cached = None if fresh else _read_cache(part, fingerprint)
        if cached is None:
            size = n // count if index < count - 1 else n - (count - 1) * (n // count)
            cached = _sample(ckpt, sampler, steps, size, shard_seed(seed, index))
            _write_cache(part, cached, fingerprint)
    return cached["images"], cached["seconds"] * 1000 / len(cached["images"]), cached["source"], cached["threads"]


def _sample(ckpt, sampler: str, steps: int | None, n: int, seed: int) -> dict:
    t0 = time.time()
    images = to_uint8(generate(ckpt.model, ckpt.schedule, n, sampler, steps, seed=seed, batch_size=BATCH, progress=True))
    return {"images": images, "seconds": time.time() - t0, "source": ckpt.source, "threads": torch.get_num_threads()}


def _write_cache(path: Path, cached: dict, fingerprint: str) -> None:
    SAMPLES.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=cached["images"].numpy(), seconds=cached["seconds"], source=cached["source"],
                        torch_threads=cached["threads"], fingerprint=fingerprint)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir")
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", nargs="*", help="row slugs to run (default: all)")
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--checkpoint-reports", action="store_true",
                        help="also write the canonical rows' reports to checkpoints/<name>/evaluation.{json,png}")
    parser.add_argument("--samples-only", action="store_true", help="generate and cache the rows' samples; score nothing")
    parser.add_argument("--shard", default="0/1", help="with --samples-only: make shard I of K of each row (I/K)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        shard = tuple(int(v) for v in args.shard.split("/"))
        assert len(shard) == 2 and 0 <= shard[0] < shard[1]
    except (ValueError, AssertionError):
        sys.exit(f"--shard takes I/K with 0 <= I < K, got {args.shard!r}")
    if shard[1] > 1 and not args.samples_only:
        sys.exit("--shard makes part of a row's samples; use it with --samples-only, then score the rows in one run")
    if args.samples_only:
        for row in ROWS:
            if not args.rows or slug(row[0]) in args.rows:
                _, per_1000, _, threads = samples_for(row, args.n, args.seed, args.fresh, shard)
                print(f"{row[0]} shard {shard[0]}/{shard[1]}: {per_1000:.1f} s/1000 on {threads} thread(s)", flush=True)
        return
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
    grids = []
    for row in ROWS:  # rows scored in earlier runs keep their grid while their cached samples match the weights
        cached = _read_cache(cache_path(row[0], args.n, args.seed),
                             weights_fingerprint(_checkpoint(row[1]).model)) if row[0] in table["rows"] else None
        if cached is not None:
            grids.append((row[0], to_hwc_numpy(cached["images"][:48])))
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
    order = [row[0] for row in ROWS]
    for name, m in sorted(table["rows"].items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)):
        lines.append(f"| {name} | " + " | ".join(fmt(m, k) for k in keys)
                     + f" | {m['seconds_per_1000']:.0f} | {m.get('torch_threads') or '?'} |")
    (RESULTS / "quality.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
