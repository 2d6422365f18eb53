"""Do the edits of ``ddpm.editing`` give the tissue asked for? The shipped tissue encoder judges, on the shipped model.

    python bench/editing_check.py [--data-dir ../shared/data] [--per-tissue 10] [--seeds 10]
                                  # writes bench/results/editing_check.{json,md}

With the default model at its recommended sampling (``checkpoint.sampling``: steps, guidance and its band):

* same noise as every tissue: ``--seeds`` noises, each drawn as the 9 tissues; the share the encoder calls the tissue
  asked for;
* SDEdit: ``--per-tissue`` real validation patches of each tissue (the bundled subset without the data file), each
  repainted as another tissue (drawn at random, seeded) at strengths 0.6, 0.8 and 1; the share called the target
  tissue, and the share still called the source tissue;
* morph: one noise per pair of tissues (``--seeds`` pairs drawn at random) at weights 0, 0.5 and 1; the share called
  tissue a at 0 and tissue b at 1, and the share of b at 0.5;
* inpainting: the same real patches with each preset mask filled as their own tissue; the share called their tissue
  (the real patches' own share beside it) and whether every kept pixel came back exactly.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ddpm import editing  # noqa: E402
from ddpm.checkpoints import load_checkpoint  # noqa: E402
from ddpm.data import CLASS_NAMES, to_model_range, to_uint8  # noqa: E402
from ddpm.evaluation.encoder import encoder_outputs, load_encoder  # noqa: E402
from ddpm.evaluation.report import load_reference  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STRENGTHS = (0.6, 0.8, 1.0)
K = len(CLASS_NAMES)


def called(encoder, images: torch.Tensor) -> np.ndarray:
    """The encoder's tissue for each image in [-1, 1] (B, 3, H, W)."""
    return encoder_outputs(encoder, to_uint8(images))[1].argmax(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--per-tissue", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    t0 = time.time()
    ckpt, encoder = load_checkpoint("default"), load_encoder()
    model, schedule, spec = ckpt.model.eval(), ckpt.schedule, ckpt.sampling
    common = dict(guidance=spec.guidance, num_steps=spec.steps, guidance_interval=spec.guidance_interval)
    rng = np.random.default_rng(0)
    data = load_reference(args.data_dir)
    real = data.reference
    idx = np.concatenate([rng.choice(np.flatnonzero(real.labels.numpy() == c), args.per_tissue, replace=False)
                          for c in range(K)])
    source = real.labels.numpy()[idx]
    images = to_model_range(real.images[torch.from_numpy(idx)])
    result = {"date": time.strftime("%Y-%m-%d"), "model": ckpt.source, "sampling": spec.describe(),
              "real": real.source, "patches": len(idx)}

    same = [called(encoder, editing.same_noise(model, schedule, seed=s, **common)) for s in range(args.seeds)]
    result["same_noise"] = {"images": K * args.seeds,
                            "share_called_as_asked": float(np.mean([(c == np.arange(K)).mean() for c in same]))}

    target = (source + rng.integers(1, K, len(source))) % K  # another tissue than the patch's own
    result["sdedit"] = {}
    for s in STRENGTHS:
        out = called(encoder, editing.sdedit(model, schedule, images, s, classes=target.tolist(), **common))
        result["sdedit"][str(s)] = {"share_called_target": float((out == target).mean()),
                                    "share_still_source": float((out == source).mean())}

    pairs = [rng.choice(K, 2, replace=False) for _ in range(args.seeds)]
    ends = np.array([called(encoder, editing.morph(model, schedule, int(a), int(b), [0.0, 0.5, 1.0], seed=i, **common))
                     for i, (a, b) in enumerate(pairs)])  # (pairs, 3)
    a, b = np.array(pairs).T
    result["morph"] = {"pairs": len(pairs), "share_a_at_0": float((ends[:, 0] == a).mean()),
                       "share_b_at_1": float((ends[:, 2] == b).mean()), "share_b_at_half": float((ends[:, 1] == b).mean())}

    result["inpaint"] = {"real_share_called_own": float((called(encoder, images) == source).mean())}
    for name in editing.MASKS:
        mask = editing.preset_mask(name)
        filled = editing.inpaint(model, schedule, images, mask, classes=source.tolist(), **common)
        kept = bool(torch.equal(to_uint8(filled)[..., ~mask], to_uint8(images)[..., ~mask]))
        result["inpaint"][name] = {"share_called_own": float((called(encoder, filled) == source).mean()),
                                   "kept_pixels_exact": kept, "filled_share": float(mask.float().mean())}
    result["seconds"] = round(time.time() - t0, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "editing_check.json").write_text(json.dumps(result, indent=1) + "\n")
    pct = lambda v: f"{100 * v:.0f}%"  # noqa: E731
    md = [f"Measured {result['date']}: the shipped default ({result['sampling']}), judged by the shipped tissue encoder; "
          f"{result['patches']} real patches ({args.per_tissue} per tissue) from the {real.source}.", "",
          "| edit | what the encoder says |", "|---|---|",
          f"| one noise as each of the 9 tissues ({args.seeds} noises) | {pct(result['same_noise']['share_called_as_asked'])} "
          "called the tissue asked for |"]
    for s, r in result["sdedit"].items():
        md.append(f"| SDEdit at strength {s}, each patch repainted as another tissue | {pct(r['share_called_target'])} "
                  f"called the target tissue, {pct(r['share_still_source'])} still the source |")
    m = result["morph"]
    md.append(f"| morph, {m['pairs']} pairs of tissues at weights 0 / 0.5 / 1 | {pct(m['share_a_at_0'])} called a at 0, "
              f"{pct(m['share_b_at_1'])} called b at 1, {pct(m['share_b_at_half'])} called b at 0.5 |")
    for name in editing.MASKS:
        r = result["inpaint"][name]
        md.append(f"| inpainting, {name} ({pct(r['filled_share'])} of the pixels) filled as the patch's own tissue | "
                  f"{pct(r['share_called_own'])} called its tissue (the real patches: "
                  f"{pct(result['inpaint']['real_share_called_own'])}); kept pixels exact: "
                  f"{'yes' if r['kept_pixels_exact'] else 'NO'} |")
    (RESULTS / "editing_check.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
