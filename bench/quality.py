"""The quality table: every shipped model and sampler under one protocol, beside the real-vs-real floor.

Rows: real-vs-real floor; centre shift (test vs val); the `seed` preset (the paper's DDPM, all 200
steps); the previous, unconditional default (from git history) with DPM-Solver++ 20; the default,
tissue-conditional model's guidance sweep with DPM-Solver++ 20 (classes drawn from the training prior),
then, at the sweep's best guidance, DDIM at 50 and 20 steps, DPM-Solver++ at 10 steps and DDPM over all
steps; then the guidance-band sweep (``BAND_SWEEP``: scale × band of timesteps on a coarse grid at n = 2,000 beside
every-step guidance, its best ``FINALISTS`` at the table's n) and DPM-Solver++ at 20 / 30 / 50 steps at the setting
it chooses. The recommended setting is the lowest FD at the table's n among every-step guidance and the finalists. Same reference (the validation split), same sample count, same encoder. Conditional rows also
report the conditional accuracy and a per-tissue table. Writes bench/results/quality.{json,md},
quality_samples.png (a grid per row beside real patches) and tissue_samples.png (per tissue, generated
beside real), and records the chosen setting in checkpoints/default/config.json ("sampling").

    python bench/quality.py --data-dir ../shared/data [-n 5000] [--rows SLUG ...]

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
import math
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ddpm.checkpoints import CONFIG_NAME, WEIGHTS_NAME, atomic_write_json, load_checkpoint  # noqa: E402
from ddpm.data import CLASS_NAMES, image_grid, to_hwc_numpy, to_uint8  # noqa: E402
from ddpm.export import save_png  # noqa: E402
from ddpm.evaluation.encoder import load_encoder  # noqa: E402
from ddpm.evaluation.report import METRIC_KEYS, evaluate_images, evaluation_panel, load_reference  # noqa: E402
from ddpm.pipeline import generate, resolve_classes  # noqa: E402
from ddpm.sampling_spec import SamplingSpec  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SAMPLES = RESULTS / "samples"
#: the previous default (unconditional `small`, 6,011 steps on 2 CPU cores), read from git history
PREVIOUS_DEFAULT = "git:2a64ec2:checkpoints/default"
GUIDANCE_SWEEP = (0.0, 1.0, 1.5, 2.0, 3.0, 4.0)
#: guidance only in a band of timesteps (Kynkäänniemi et al. 2024): a coarse grid of scale × band at COARSE_N samples
#: beside every-step guidance at the sweep's best scale; the FINALISTS best of it are then scored at the table's n.
#: The grid is small for 2 CPU cores: the four corners of scales 2 and 2.5 × bands 30-130 and 20-160 (the first
#: measurement on this model, issue 17), then, as 30-130 won, a higher scale in it and a band ending lower, then
#: the same two steps again from 30-100
BAND_SWEEP = tuple((g, band) for g in (2.0, 2.5) for band in ((30, 130), (20, 160))) + ((3.0, (30, 130)), (2.5, (30, 100)),
                                                                                        (3.0, (30, 100)), (2.5, (30, 70)))
COARSE_N, FINALISTS = 2000, 1
STEP_SWEEP = (20, 30, 50)  # DPM-Solver++ steps tried at the chosen setting; a winner other than 20 is scored at the table's n
SAMPLER_NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "dpmpp": "DPM-Solver++"}


@dataclass(frozen=True)
class Row:
    label: str  # which model, in words
    source: str  # checkpoint: shipped name, folder or git:REV:PATH
    sampler: str
    steps: int | None  # None: all T (DDPM)
    guidance: float | None = None  # None: an unconditional model
    n: int | None = None  # another sample count than the table's (said in the row's name)
    band: tuple[int, int] | None = None  # the timesteps guidance acts on (None: every step)

    @property
    def name(self) -> str:
        steps = "all steps" if self.steps is None else str(self.steps)
        g = "" if self.guidance is None else f", guidance {self.guidance:g}"
        g += f" for t in [{self.band[0]}, {self.band[1]}]" if self.band else ""
        return f"{self.label} {SAMPLER_NAMES[self.sampler]} {steps}{g}{f' (n = {self.n})' if self.n else ''}"

    @property
    def spec(self) -> SamplingSpec:
        return SamplingSpec(self.sampler, self.steps, 1.0 if self.guidance is None else self.guidance,
                            guidance_interval=self.band)


def sweep_row(guidance: float) -> Row:
    """The default model with the default sampler and steps at one guidance of the sweep."""
    return Row("default", "default", SamplingSpec().sampler, SamplingSpec().steps, guidance)


def band_row(guidance: float, band: tuple[int, int] | None, n: int | None = None, steps: int = 20) -> Row:
    """The default model with DPM-Solver++ at ``guidance`` applied in ``band`` (None: every step)."""
    return Row("default", "default", "dpmpp", steps, guidance, n=n, band=band)


def coarse_rows(guidance: float) -> list[Row]:
    """The band sweep's coarse grid at COARSE_N samples, with every-step guidance at ``guidance`` as its reference."""
    return [band_row(guidance, None, COARSE_N)] + [band_row(g, b, COARSE_N) for g, b in BAND_SWEEP]


def chosen_guidance(table: dict) -> float | None:
    """The sweep's guidance (at every step) with the lowest FD, once every sweep row is scored."""
    fds = {g: table["rows"].get(sweep_row(g).name, {}).get("fd") for g in GUIDANCE_SWEEP}
    return None if None in fds.values() else min(fds, key=fds.get)


def _fd(table: dict, row: Row) -> float | None:
    return table["rows"].get(row.name, {}).get("fd")


def finalist_rows(table: dict) -> list[Row]:
    """The FINALISTS banded settings with the lowest coarse FD, at the table's n (none until the grid is scored)."""
    guidance = chosen_guidance(table)
    if guidance is None:
        return []
    banded = coarse_rows(guidance)[1:]
    if any(_fd(table, r) is None for r in banded):
        return []
    return [band_row(r.guidance, r.band) for r in sorted(banded, key=lambda r: _fd(table, r))[:FINALISTS]]


def chosen_setting(table: dict) -> tuple[float, tuple[int, int] | None] | None:
    """(guidance, band) of the lowest FD at the table's n among every-step guidance and the band finalists."""
    candidates = [sweep_row(g) for g in GUIDANCE_SWEEP] + finalist_rows(table)
    if len(candidates) == len(GUIDANCE_SWEEP) or any(_fd(table, r) is None for r in candidates):
        return None
    best = min(candidates, key=lambda r: _fd(table, r))
    return best.guidance, best.band


def step_rows(table: dict) -> list[Row]:
    """DPM-Solver++ at each of STEP_SWEEP steps at the chosen setting, on the coarse grid's n (none before the choice)."""
    setting = chosen_setting(table)
    return [] if setting is None else [band_row(setting[0], setting[1], COARSE_N, k) for k in STEP_SWEEP]


def step_finalist(table: dict) -> Row | None:
    """The step count with the lowest coarse FD at the chosen setting, at the table's n, when it is not the 20 already
    there (None until the step rows are scored, or when 20 steps win)."""
    rows = step_rows(table)
    if not rows or any(_fd(table, r) is None for r in rows):
        return None
    best = min(rows, key=lambda r: _fd(table, r))
    return None if best.steps == rows[0].steps else band_row(best.guidance, best.band, None, best.steps)


def chosen_row(table: dict) -> Row | None:
    """The recommended setting's row: the band sweep's choice (or more steps of it, if they score a lower FD at the
    table's n), else the guidance sweep's."""
    setting, guidance, more = chosen_setting(table), chosen_guidance(table), step_finalist(table)
    if setting is not None:
        chosen = band_row(*setting)
        return more if more is not None and (_fd(table, more) or math.inf) < _fd(table, chosen) else chosen
    return None if guidance is None else sweep_row(guidance)


def rows_for(table: dict, guidance: float | None = None) -> list[Row]:
    """The table's rows as far as its scored rows define them: the guidance sweep; then, at its best guidance (or
    ``guidance``), other samplers and the band sweep's coarse grid; then the band finalists; then DPM-Solver++ at
    more steps at the chosen setting (on the coarse grid's n, beside its 20-step row)."""
    guidance = chosen_guidance(table) if guidance is None else guidance
    rows = [Row("seed (paper)", "seed", "ddpm", None), Row("previous default (unconditional, CPU)", PREVIOUS_DEFAULT, "dpmpp", 20)]
    rows += [sweep_row(g) for g in GUIDANCE_SWEEP]
    if guidance is not None:
        rows += [Row("default", "default", s, k, guidance) for s, k in (("dpmpp", 10), ("ddim", 20), ("ddim", 50))]
        rows += [Row("default", "default", "ddpm", None, guidance, n=1000)]
        rows += coarse_rows(guidance)
    rows += finalist_rows(table)
    rows += step_rows(table)
    rows += [r for r in [step_finalist(table)] if r is not None]
    return list(dict.fromkeys(rows))


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


#: images per network call: ddpm.pipeline.default_batch_size's CPU size, rounded to divide 5000 and its shards;
#: guided rows run the network on twice their batch, so they take half (batches of about 128 are fastest here)
BATCH = 125
BATCH_GUIDED = 64


@functools.lru_cache(maxsize=None)
def _checkpoint(source: str):
    """Each model loaded once per run (loading probes the Hub first); ``git:REV:PATH`` reads a checkpoint
    folder as it was at commit REV."""
    if source.startswith("git:"):
        _, rev, path = source.split(":", 2)
        folder = SAMPLES / f"git-{rev}-{slug(path)}"
        folder.mkdir(parents=True, exist_ok=True)
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            blob = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}/{name}"], capture_output=True, check=True).stdout
            (folder / name).write_bytes(blob)
        ckpt = load_checkpoint(folder)
        ckpt.source = f"{path} at commit {rev}"
        return ckpt
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
        labels = torch.from_numpy(f["labels"]) if "labels" in f and len(f["labels"]) else None
        return {"images": torch.from_numpy(f["images"]), "seconds": float(f["seconds"]), "source": str(f["source"]),
                "threads": int(f["torch_threads"]), "labels": labels}


def samples_for(row: Row, n: int, seed: int, fresh: bool, shard: tuple[int, int] = (0, 1)
                ) -> tuple[torch.Tensor, float, str, int | None, torch.Tensor | None]:
    """(uint8 images (n, 3, 28, 28), seconds per 1000 samples, checkpoint source, torch threads, requested
    classes (n,) or None), cached on disk.

    With ``shard=(i, k)`` only shard i of k (n // k images, the last takes the rest) is made and cached; a row
    whose k shard files are all present is assembled from them, its time the sum of theirs.
    """
    name, n = row.name, row.n or n
    ckpt = _checkpoint(row.source)
    fingerprint = weights_fingerprint(ckpt.model)
    path = cache_path(name, n, seed)
    index, count = shard
    if count == 1:
        cached = None if fresh else _read_cache(path, fingerprint)
        if cached is None:
            shards = sorted(SAMPLES.glob(cache_path(name, n, seed, "shard*of*").name),
                            key=lambda p: int(re.search(r"shard(\d+)of", p.name).group(1)))
            parts = [_read_cache(p, fingerprint) for p in shards] if shards and not fresh else []
            total = int(re.search(r"of(\d+)", shards[0].name).group(1)) if shards else 0
            if parts and len(parts) == total and all(parts):
                cached = {"images": torch.cat([p["images"] for p in parts]), "seconds": sum(p["seconds"] for p in parts),
                          "source": parts[0]["source"], "threads": max(p["threads"] for p in parts),
                          "labels": None if parts[0]["labels"] is None else torch.cat([p["labels"] for p in parts])}
                _write_cache(path, cached, fingerprint)
        if cached is None:
            cached = _sample(ckpt, row, n, seed)
            _write_cache(path, cached, fingerprint)
    else:
        if not 0 <= index < count or n < count:
            raise ValueError(f"shard {index}/{count} of {n} samples does not exist")
        part = cache_path(name, n, seed, f"shard{index}of{count}")
        cached = None if fresh else _read_cache(part, fingerprint)
        if cached is None:
            size = n // count if index < count - 1 else n - (count - 1) * (n // count)
            cached = _sample(ckpt, row, size, shard_seed(seed, index))
            _write_cache(part, cached, fingerprint)
    return (cached["images"], cached["seconds"] * 1000 / len(cached["images"]), cached["source"], cached["threads"],
            cached["labels"])


def _sample(ckpt, row: Row, n: int, seed: int) -> dict:
    """Samples of one row; a conditional model's classes are drawn from the training prior (seeded)."""
    labels = resolve_classes(ckpt.model_config.num_classes, n, None, seed)
    if (labels is None) != (row.guidance is None):
        raise ValueError(f"{ckpt.source}: a guidance scale goes with a conditional model, none with an unconditional one")
    t0 = time.time()
    batch = BATCH_GUIDED if row.spec.is_guided(labels is not None) else BATCH
    images = to_uint8(generate(ckpt.model, ckpt.schedule, n, row.spec, seed=seed, batch_size=batch, progress=True,
                               classes=labels))
    return {"images": images, "seconds": time.time() - t0, "source": ckpt.source, "threads": torch.get_num_threads(),
            "labels": labels}


def _write_cache(path: Path, cached: dict, fingerprint: str) -> None:
    SAMPLES.mkdir(parents=True, exist_ok=True)
    labels = np.zeros(0, np.int64) if cached["labels"] is None else cached["labels"].numpy()
    np.savez_compressed(path, images=cached["images"].numpy(), seconds=cached["seconds"], source=cached["source"],
                        torch_threads=cached["threads"], fingerprint=fingerprint, labels=labels)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir")
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", nargs="*", help="row slugs to run (default: all)")
    parser.add_argument("--list", action="store_true", help="print the rows' slugs and exit")
    parser.add_argument("--render", action="store_true", help="score nothing: rewrite quality.md, the grids and the "
                        "default's recommended sampling from quality.json and the cached samples")
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--checkpoint-reports", action="store_true",
                        help="also write the default's and the seed's canonical reports to checkpoints/<name>/evaluation.{json,png}")
    parser.add_argument("--samples-only", action="store_true", help="generate and cache the rows' samples; score nothing")
    parser.add_argument("--shard", default="0/1", help="with --samples-only: make shard I of K of each row (I/K)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--guidance", type=float, help="with --samples-only: make the rows after the sweep at this "
                        "guidance before the sweep is scored (they are scored once it chooses the same)")
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
    out_json = RESULTS / "quality.json"
    table = json.loads(out_json.read_text()) if out_json.is_file() else {"rows": {}}
    if args.guidance is not None and not args.samples_only:
        sys.exit("--guidance only makes samples ahead of the sweep's choice; the scored rows follow the choice")
    known = {slug(r.name): r for r in rows_for(table, args.guidance)}
    unknown = [r for r in args.rows or [] if r not in known]
    if unknown:
        sys.exit(f"unknown rows {unknown}; known now: {sorted(known)} (the rows after the sweep exist once it is scored)")
    selected = [known[r] for r in args.rows] if args.rows else list(known.values())
    if args.list:
        print("\n".join(slug(r.name) for r in rows_for(table, args.guidance)))
        return
    if args.samples_only:
        for row in selected:
            per_1000, threads = samples_for(row, args.n, args.seed, args.fresh, shard)[1::2]
            print(f"{row.name} shard {shard[0]}/{shard[1]}: {per_1000:.1f} s/1000 on {threads} thread(s)", flush=True)
        return
    data = load_reference(args.data_dir)
    if data.note:
        sys.exit(f"the quality table needs the full PathMNIST file: {data.note}")
    encoder = load_encoder()
    for row in [] if args.render else selected:
        images, per_1000, source, threads, labels = samples_for(row, args.n, args.seed, args.fresh)
        report = evaluate_images(images, data, encoder, seed=args.seed, with_floor="floor" not in table, progress=True,
                                 requested=labels, with_memorization=row.n != COARSE_N)  # coarse rows: no copy search
        if "floor" in report:
            table.update(floor=report["floor"], centre_shift=report.get("centre_shift"), protocol=report["protocol"],
                         floor_protocol=report["floor_protocol"])
        table["rows"][row.name] = {**report["metrics"], "seconds_per_1000": round(per_1000, 1), "torch_threads": threads,
                                   "checkpoint": source, "sampler": row.sampler, "steps": row.steps, "guidance": row.guidance,
                                   **({"guidance_interval": list(row.band)} if row.band else {}),
                                   "n": len(images), "class_hist": report["class_hist"]["generated"],
                                   **({"per_class": report["per_class"]} if "per_class" in report else {})}
        table["class_prior"] = report["class_hist"]["train_prior"]
        out_json.write_text(json.dumps(table, indent=1) + "\n")
        print(row.name, {k: report["metrics"].get(k) for k in METRIC_KEYS}, f"{per_1000:.1f} s/1000", flush=True)
        if args.checkpoint_reports and row in canonical_rows(table):
            shared = {k: table[k] for k in ("floor", "centre_shift", "floor_protocol") if table.get(k) is not None}
            write_checkpoint_report(row, {**shared, **report}, images, per_1000, source, threads, data, args)
    if chosen_row(table) is not None:
        record_sampling(table)
    table["date"] = time.strftime("%Y-%m-%d")
    out_json.write_text(json.dumps(table, indent=1) + "\n")
    write_markdown(table)
    write_grids(table, data, args)


def canonical_rows(table: dict) -> list[Row]:
    """The rows whose reports become checkpoints/<name>/evaluation.json: the seed's, and the default's at its
    recommended setting."""
    chosen = chosen_row(table)
    return [Row("seed (paper)", "seed", "ddpm", None)] + ([chosen] if chosen is not None else [])


def record_sampling(table: dict) -> None:
    """Write the sweeps' choice into the default's config.json, where `ddpm sample` and the app read it."""
    path = ROOT / "checkpoints" / "default" / CONFIG_NAME
    config = json.loads(path.read_text())
    row = chosen_row(table)
    best = table["rows"][row.name]
    sweep = ("guidance sweep" if chosen_setting(table) is None else "guidance and guidance-band sweeps"
             if row.steps == STEP_SWEEP[0] else "guidance, guidance-band and step sweeps")
    sampling = {**{k: v for k, v in row.spec.to_dict().items() if k != "eta" and v is not None},
                "chosen_by": f"lowest FD of the {sweep} in bench/results/quality.json (FD {best['fd']:.3g}, "
                             f"n = {best['n']})"}
    if config.get("sampling") != sampling:
        atomic_write_json(path, {**config, "sampling": sampling})


def write_grids(table: dict, data, args) -> None:
    """quality_samples.png (48 samples per scored row, then real ones) and tissue_samples.png (per tissue,
    generated at the chosen guidance beside real validation patches)."""
    grids = []
    for row in rows_for(table):  # rows scored in earlier runs keep their grid while their cached samples match the weights
        cached = _read_cache(cache_path(row.name, row.n or args.n, args.seed),
                             weights_fingerprint(_checkpoint(row.source).model)) if row.name in table["rows"] else None
        if cached is not None:
            grids.append((row.name, to_hwc_numpy(cached["images"][:48])))
    if grids:
        real = to_hwc_numpy(data.reference.images[:48])
        blocks = [image_grid(g, 12) for _, g in grids] + [image_grid(real, 12)]
        sep = np.full((blocks[0].shape[0], 10, 3), 255, np.uint8)
        save_png(np.concatenate(sum(([b, sep] for b in blocks), [])[:-1], axis=1), RESULTS / "quality_samples.png", scale=2)
        (RESULTS / "quality_samples.txt").write_text("left to right: " + ", ".join([n for n, _ in grids] + ["real (val)"]) + "\n")
    row = chosen_row(table)
    if row is None:
        return
    cached = _read_cache(cache_path(row.name, args.n, args.seed), weights_fingerprint(_checkpoint(row.source).model))
    if cached is None:
        return
    per = 12
    lines = []
    for c in range(len(CLASS_NAMES)):
        fake = cached["images"][cached["labels"] == c][:per]
        real = data.reference.images[data.reference.labels == c][:per]
        lines.append(image_grid(to_hwc_numpy(torch.cat([fake, real])), 2 * per))
    save_png(np.concatenate(lines), RESULTS / "tissue_samples.png", scale=2)
    (RESULTS / "tissue_samples.txt").write_text(
        f"one row per tissue ({', '.join(CLASS_NAMES)}): {per} samples of {row.name} asked for that tissue (the first "
        f"ones drawn in the row), then {per} real validation patches of it\n")


def write_checkpoint_report(row: Row, report: dict, images: torch.Tensor, per_1000: float, source: str,
                            threads: int | None, data, args) -> None:
    """The shipped model's own evaluation.json / evaluation.png (read by the app and the model card)."""
    folder = ROOT / "checkpoints" / row.source
    report = {**report, "sampling": {"checkpoint": source, "sampler": row.sampler, "steps": row.steps or "all",
                                     "guidance": row.guidance, "seed": args.seed,
                                     **({"guidance_interval": list(row.band)} if row.band else {}),
                                     "seconds_per_1000": round(per_1000, 1), "torch_threads": threads}}
    (folder / "evaluation.json").write_text(json.dumps(report, indent=1) + "\n")
    save_png(evaluation_panel(to_hwc_numpy(images), data, report), folder / "evaluation.png", scale=2)


def _fmt(m: dict | None, k: str) -> str:
    return f"{m[k]:.4g}" if m and k in m and m[k] is not None else "–"


def write_markdown(table: dict) -> None:
    keys = ("fd", "kid_mean", "precision", "recall", "density", "coverage", "class_tv", "conditional_accuracy",
            "memorization_share")
    lines = [f"n = {table['rows'][next(iter(table['rows']))]['n']} generated per row (unless the row says otherwise) against "
             f"{table['protocol']['reference']} ({table['protocol']['n_reference']} patches); {table['floor_protocol']}. "
             "Conditional rows draw their tissues from the training prior. Sampling time per 1,000 samples on this "
             f"machine's CPU, with the torch threads it had ({table.get('date')}).", "",
             "| row | " + " | ".join(keys) + " | s / 1000 samples | threads |", "|---" * (len(keys) + 3) + "|"]
    lines.append("| real-vs-real floor | " + " | ".join(_fmt(table["floor"], k) for k in keys) + " | – | – |")
    if table.get("centre_shift"):
        lines.append("| centre shift (test vs val) | " + " | ".join(_fmt(table["centre_shift"], k) for k in keys) + " | – | – |")
    order = [r.name for r in rows_for(table, None if chosen_guidance(table) is not None else GUIDANCE_SWEEP[0])]
    for name in sorted(table["rows"], key=lambda n: order.index(n) if n in order else len(order)):
        if name not in order:
            continue  # a row of an earlier protocol
        m = table["rows"][name]
        lines.append(f"| {name} | " + " | ".join(_fmt(m, k) for k in keys)
                     + f" | {m['seconds_per_1000']:.0f} | {m.get('torch_threads') or '?'} |")
    chosen = chosen_row(table)
    if chosen is not None:
        row = table["rows"][chosen.name]
        lines += ["", f"Per tissue, {chosen.name} (the recommended setting): FD of the "
                  "samples asked for each tissue against the validation patches of that tissue, beside the same FD for as "
                  "many training patches of it (the floor).", "",
                  "| tissue | n | FD | FD floor | conditional accuracy | copy share |", "|---|---:|---:|---:|---:|---:|"]
        for c in row.get("per_class", []):
            lines.append(f"| {c['class']} | {c['n']} | {_fmt(c, 'fd')} | {_fmt(c, 'fd_floor')} | "
                         f"{_fmt(c, 'conditional_accuracy')} | {_fmt(c, 'memorization_share')} |")
    (RESULTS / "quality.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
