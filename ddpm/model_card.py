"""The Hub model card (README.md with YAML front matter), written from a checkpoint's own files.

Every number in the card comes from ``config.json`` and, when present, ``evaluation.json`` beside
the weights, so the card cannot drift from the model it describes.
"""
from __future__ import annotations

import json
from pathlib import Path

from .checkpoints import read_config
from .data import DATA_CREDIT
from .sampling_spec import SamplingSpec
from .schedules import NoiseSchedule, ScheduleConfig

EVALUATION_NAME = "evaluation.json"
ETHICS = """\
## Intended use and limits
- **Research and teaching only.** Synthetic patches are never diagnostic evidence: they must not be used to
  diagnose, to train a clinical system without independent validation, or be presented as real tissue.
- **Dataset bias.** PathMNIST comes from NCT-CRC-HE-100K: H&E slides of one centre (NCT Biobank and UMM pathology
  archive, Germany), Macenko stain-normalised, downsampled to 28×28. The model reproduces that centre's staining,
  scanner and patient population and the class balance of the training split; it knows nothing of other
  centres, stains, organs or resolutions (the test split, from another centre, measures that shift).
- **Transparency.** At 28×28 a patch shows texture and colour, not cellular detail; metrics are computed in the
  feature space of a small classifier trained on the same data (see the evaluation protocol), not judged by
  pathologists. Nearest training patches are reported for every evaluated sample so copying can be checked.
"""


def read_evaluation(folder: str | Path | None) -> dict | None:
    """The ``evaluation.json`` report stored beside a checkpoint's weights, or None when there is none.

    An unreadable file is an error that names it, never a silent None.
    """
    path = Path(folder) / EVALUATION_NAME if folder is not None else None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} cannot be read ({err}); run a fresh evaluation or re-download it") from err


def model_card(folder: str | Path, repo_id: str | None = None) -> str:
    """README.md text for the checkpoint in ``folder``."""
    folder = Path(folder)
    config = read_config(folder)
    sched_cfg = ScheduleConfig.from_dict(config["schedule"])
    sched = NoiseSchedule.from_config(sched_cfg)
    train = config.get("training", {})
    conditional = config["model"].get("num_classes") is not None
    spec = SamplingSpec.recommended(config)
    kind = (f"A tissue-conditional denoising diffusion model ({config['model']['num_classes']} tissues, classifier-free "
            "guidance)" if conditional else "An unconditional denoising diffusion model")
    call = f"generate(ckpt.model, ckpt.schedule, 16, ckpt.sampling, seed=0{', classes=' + repr('adipose') if conditional else ''})"
    lines = [
        "---", "license: cc-by-4.0", "library_name: ddpm",
        *([] if conditional else ["pipeline_tag: unconditional-image-generation"]),
        "tags:", "- diffusion", "- ddpm", "- histopathology", "- medmnist", "- pathmnist",
        *(["- class-conditional", "- classifier-free-guidance"] if conditional else []), "---", "",
        f"# DDPM for PathMNIST ({config.get('preset', 'custom')} preset)", "",
        f"{kind} that generates 28×28 RGB colorectal-tissue patches like those of PathMNIST. Made with the `ddpm` "
        "package of PathMNIST Diffusion Studio.", "",
        "## Use", "```python", "from ddpm import load_checkpoint, generate",
        f"ckpt = load_checkpoint({(repo_id or str(folder))!r})",
        f"images = {call}  # (16, 3, 28, 28) in [-1, 1]; ckpt.sampling is {spec.describe(conditional)}",
        "```", f"or `python -m ddpm sample --checkpoint {repo_id or folder} -n 64 --out samples`"
        + (" (`--class NAME` for one tissue; without it, tissues are drawn as often as in the training split)."
           if conditional else "."), "",
        "## Model", f"- Network: {config['model']['architecture']} U-Net, {train.get('parameters', '?'):,} parameters"
        if isinstance(train.get("parameters"), int) else f"- Network: {config['model']['architecture']} U-Net",
        f"- Schedule: {sched_cfg.kind}, T = {sched_cfg.num_timesteps}, zero terminal SNR: {sched_cfg.zero_terminal_snr} "
        f"(√ᾱ_T = {sched.terminal_signal:.3f}); the network predicts {sched_cfg.prediction_type}.",
    ]
    if conditional:
        names = config.get("class_names") or []
        lines.append(f"- Conditioning: {len(names) or config['model']['num_classes']} tissue classes"
                     + (f" ({', '.join(names)})" if names else "") + f", labels dropped to 'no class' in "
                     f"{train.get('p_uncond', '?')} of training examples; guidance uncond + s·(cond − uncond).")
    if train:
        seconds = train.get("train_seconds", 0)
        took = f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"
        where = train.get("device", "?") + (f" ({train['device_name']})" if train.get("device_name") else "")
        torch_note = f" (torch {train['torch']})" if train.get("torch") else ""
        lines += [f"- Training: {train.get('steps')} steps ({train.get('epochs')} epochs, {train.get('images_seen', 0):,} images seen), "
                  f"{train.get('optimizer')} lr {train.get('lr')}"
                  f"{' with cosine decay' if train.get('lr_decay') == 'cosine' else ''}, "
                  f"batch {train.get('effective_batch', train.get('batch_size'))}, "
                  f"EMA {train.get('ema_decay')}, loss weighting {train.get('loss_weighting')}, "
                  f"augmentation {'flips and 90° rotations' if train.get('augment') else 'none'}, "
                  f"{'bf16' if train.get('bf16') else 'fp32'}{', torch.compile' if train.get('compile') else ''} on "
                  f"{where}{torch_note}, "
                  f"{took} of training."]
    if config.get("init_from"):
        lines.append(f"- Started from: {config['init_from']}.")
    if config.get("sampling"):
        chosen_by = config["sampling"].get("chosen_by")
        lines.append(f"- Recommended sampling: {spec.describe(conditional)}" + (f" ({chosen_by})" if chosen_by else "") + ".")
    if config.get("data"):
        lines.append(f"- Data: {config['data']}")
    rep = read_evaluation(folder)
    if rep is not None:
        m, floor = rep["metrics"], rep.get("floor", {})
        sampling = rep.get("sampling", {})
        band = sampling.get("guidance_interval")
        guided = (f", guidance {sampling['guidance']:g}{f' for t in [{band[0]}, {band[1]}]' if band else ''}, tissues "
                  "drawn from the training prior") if sampling.get("guidance") is not None else ""
        lines += ["", "## Evaluation", f"{rep['protocol']['n_generated']} samples "
                  f"({sampling.get('sampler', '?')}, {sampling.get('steps', '?')} steps{guided}) against "
                  f"{rep['protocol']['reference']}, in the feature space of the shipped tissue encoder.", "",
                  "| metric | model | real-vs-real floor |", "|---|---:|---:|"]
        for key in ("fd", "kid_mean", "precision", "recall", "density", "coverage", "class_tv", "conditional_accuracy",
                    "memorization_share"):
            if key in m:
                lines.append(f"| {key} | {m[key]:.4g} | {f'{floor[key]:.4g}' if key in floor else '–'} |")
        if rep.get("per_class"):
            lines += ["", "Per tissue (samples asked for it against real patches of it):", "",
                      "| tissue | n | FD | FD floor | conditional accuracy |", "|---|---:|---:|---:|---:|"]
            for c in rep["per_class"]:
                fmt = lambda k: f"{c[k]:.4g}" if k in c else "–"  # noqa: E731
                lines.append(f"| {c['class']} | {c['n']} | {fmt('fd')} | {fmt('fd_floor')} | {fmt('conditional_accuracy')} |")
    lines += ["", "## Data and credit", DATA_CREDIT,
              "Data licence: CC BY 4.0. Cite Yang et al., *MedMNIST v2*, Scientific Data 2023, and Kather et al., "
              "*Predicting survival from colorectal cancer histology slides using deep learning*, PLOS Medicine 2019.", "",
              ETHICS]
    return "\n".join(lines) + "\n"


def write_model_card(folder: str | Path, repo_id: str | None = None) -> Path:
    from .checkpoints import atomic_write_bytes

    path = Path(folder) / "README.md"
    atomic_write_bytes(path, model_card(folder, repo_id).encode())
    return path

