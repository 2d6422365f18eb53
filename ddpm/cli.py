"""Command line: ``python -m ddpm {train,sample,info,preview,evaluate,push,download,quiz-report}``."""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

from .cli_options import (PRECISIONS, PRESET_NAMES, HelpFormatter, add_reproducibility, add_sampling_options, device_name,
                          examples, finite_positive_float, positive_int, say_precision, seed_int, writable_folder)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (resumable; Ctrl-C saves and stops)", formatter_class=HelpFormatter,
                       description="Train a diffusion model on PathMNIST. Ctrl-C (or SIGTERM) saves and stops; "
                                   "--resume continues the run in --out exactly as its config.json describes it, on "
                                   "the data it trained on. An --out that already holds a run is refused unless "
                                   "--resume or --overwrite. Each checkpoint is saved as one unit: a kill resumes "
                                   "at the previous save or the new one.",
                       epilog=examples("python -m ddpm train --preset small --data-dir ~/.medmnist --out runs/mine",
                                        "python -m ddpm train --preset seed --subset --steps 102 --out runs/notebook",
                                        "python -m ddpm train --out runs/mine --resume --steps 30000",
                                        "torchrun --nproc_per_node 4 -m ddpm train --preset large --epochs 10 --out runs/ddp"))
    p.add_argument("--preset", choices=PRESET_NAMES, help="network, schedule and training recipe (default: small)")
    p.add_argument("--out", required=True, help="output folder for the checkpoint, state and loss log")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, help="total optimizer steps (default: the preset's)")
    length.add_argument("--epochs", type=finite_positive_float, help="total epochs over the training split, whatever the number of ranks")
    p.add_argument("--batch-size", type=positive_int, help="images per step and rank (default: the preset's)")
    p.add_argument("--lr", type=finite_positive_float, help="peak learning rate (default: the preset's)")
    p.add_argument("--schedule", choices=["linear", "cosine"], help="noise schedule kind (default: the preset's)")
    p.add_argument("--timesteps", type=int, help="T, the number of diffusion steps, 2 to 1000 (default: the preset's)")
    p.add_argument("--zero-terminal-snr", choices=["on", "off"], help="rescale the schedule to SNR(T) = 0 (default: the preset's)")
    p.add_argument("--prediction", choices=["epsilon", "v_prediction"], help="what the network predicts (default: the preset's)")
    p.add_argument("--precision", choices=PRECISIONS, help="autocast: auto uses bf16 where the hardware has it (default: the preset's)")
    p.add_argument("--data-dir", help="folder with pathmnist.npz (default: $DDPM_DATA_DIR, else ~/.medmnist)")
    p.add_argument("--size", type=int, choices=[28, 64, 128, 224], help="MedMNIST+ image size (default: 28)")
    p.add_argument("--subset", action="store_true", help="train on the bundled subset (no download needed)")
    p.add_argument("--device", default="auto", type=device_name, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--seed", type=seed_int, help="seed of the initial weights, data order and noise (default: the preset's)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue the run saved in --out; flags that contradict "
                       "its config.json, and other data than it trained on, are refused")
    start.add_argument("--overwrite", action="store_true", help="start a new run in an --out that holds one, deleting "
                       "the old run's checkpoint, loss log and evaluation first (without it such an --out is refused)")
    p.add_argument("--allow-data-change", action="store_true", help="with --resume: go on although the data (--subset / "
                   "--data-dir) is not what the run trained on")
    p.add_argument("--init-from", help="start from these weights (folder, shipped name or Hub repo id) of the same architecture")
    p.add_argument("--checkpoint-every", type=finite_positive_float, help="seconds between checkpoints (default: 300)")
    p.add_argument("--num-classes", type=int, help="train a tissue-conditional model with this many classes "
                   "(9 for PathMNIST; default: the preset's); with --init-from an unconditional checkpoint, its "
                   "weights are kept and the class embedding starts at zero")
    p.add_argument("--p-uncond", type=float, help="conditional models: share of labels dropped to 'no class' (default 0.15)")
    p.add_argument("--lr-decay", choices=["none", "cosine"], help="learning-rate decay after warm-up (default: the preset's)")
    p.add_argument("--warmup-steps", type=int, help="learning-rate warm-up steps (default: the preset's)")
    p.add_argument("--ema-decay", type=float, help="EMA decay of the sampling weights (default: the preset's)")
    p.add_argument("--max-minutes", type=finite_positive_float, help="stop, save and exit after this many minutes of training (default: no limit)")


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate images into FILE.npz and FILE.png", formatter_class=HelpFormatter,
                       description="Generate patches with a checkpoint. The same --seed, --precision and --batch-size "
                                   "give the same images on any CPU with fp32 (the default). Without options: the "
                                   "checkpoint's recommended sampler, steps and guidance, tissues drawn from the training prior.",
                       epilog=examples("python -m ddpm sample -n 64 --seed 0 --out samples",
                                        "python -m ddpm sample --class adipose --guidance 2 -n 16 --out adipose",
                                        "python -m ddpm sample --checkpoint runs/mine --sampler ddim --steps 50 --out ddim50",
                                        "python -m ddpm sample --precision bf16 --threads 2 -n 1000 --out many"))
    p.add_argument("--checkpoint", default=None, help="folder, shipped name (default, seed) or Hub repo id[@revision] "
                   "(default: the shipped default model)")
    add_sampling_options(p)
    p.add_argument("-n", type=int, default=64, help="number of images")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the initial noise and of every sampler draw")
    p.add_argument("--batch-size", type=positive_int, help="images per network call (default 128 on CPU, 512 on GPU)")
    p.add_argument("--device", default="auto", type=device_name, help="auto | cpu | cuda | cuda:N")
    add_reproducibility(p)
    p.add_argument("--out", default="samples", help="output path without extension (FILE -> FILE.npz, FILE.png)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ddpm", formatter_class=HelpFormatter,
                                     description="DDPM for PathMNIST: train, sample, evaluate, publish.",
                                     epilog=examples("python -m ddpm sample -n 16 --out samples",
                                                      "python -m ddpm train --preset small --subset --steps 200 --out runs/try",
                                                      "python -m ddpm info default",
                                                      "python -m ddpm COMMAND --help   # every option of a command"))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_sample(sub)
    p = sub.add_parser("info", help="describe a checkpoint", formatter_class=HelpFormatter,
                       description="Print what a checkpoint holds (network, schedule, training, data) as JSON.",
                       epilog=examples("python -m ddpm info default", "python -m ddpm info runs/mine"))
    p.add_argument("checkpoint", help="folder, shipped name or Hub repo id[@revision]")
    p = sub.add_parser("preview", help="store Home's first samples beside a checkpoint's weights (preview.npz)",
                       formatter_class=HelpFormatter,
                       description="Sample what Home shows first (16 patches, the checkpoint's recommended sampler, "
                                   "steps and guidance, seed 0, tissues drawn from the training prior) and store them "
                                   "with those settings and the sha256 of model.safetensors; Home shows them only while "
                                   "both still match. Rerun after retraining or changing the recommended settings.",
                       epilog=examples("python -m ddpm preview default", "python -m ddpm preview runs/mine"))
    p.add_argument("checkpoint", help="a local checkpoint folder, or a shipped name (checkpoints/<name>)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="how the network runs; auto: bf16 where the CPU has it, as the app samples")
    p = sub.add_parser("pack-data", help="write a split as lossless shards for a machine without internet or medmnist",
                       formatter_class=HelpFormatter,
                       epilog=examples("python -m ddpm pack-data --data-dir ~/.medmnist --out pack",
                                        "python -m ddpm pack-data --split val --out pack"))
    p.add_argument("--out", required=True, help="folder for the manifest and shards")
    p.add_argument("--data-dir", help="folder with pathmnist.npz (default: $DDPM_DATA_DIR, else ~/.medmnist)")
    p.add_argument("--split", default="train", choices=["train", "val", "test"], help="which split to pack")
    p.add_argument("--shard-mb", type=finite_positive_float, default=40.0, help="largest shard in MB")
    p.add_argument("--method", type=int, default=4, choices=range(7), metavar="0-6",
                   help="WebP effort, always lossless (4: 1.27 KB a patch; 6 is 10x slower for 1%% less)")
    p = sub.add_parser("download", help="download PathMNIST with medmnist (needs internet)", formatter_class=HelpFormatter,
                       epilog=examples("python -m ddpm download --data-dir ~/.medmnist",
                                        "python -m ddpm download --size 64"))
    p.add_argument("--data-dir", help="target folder (default: $DDPM_DATA_DIR, else ~/.medmnist)")
    p.add_argument("--size", type=int, default=28, choices=[28, 64, 128, 224], help="MedMNIST+ image size")
    from .evaluation.cli import add_evaluate_parser, add_train_encoder_parser
    add_evaluate_parser(sub)
    add_train_encoder_parser(sub)
    p = sub.add_parser("push", help="upload a checkpoint folder to the Hugging Face Hub", formatter_class=HelpFormatter,
                       description="Write the model card (README.md) into the folder and upload the checkpoint's own "
                                   "files (config.json, model.safetensors, training_log.csv, README.md, evaluation.json "
                                   "and .png; nothing else in the folder, nothing in its subfolders); pin the commit "
                                   "it prints in ddpm.checkpoints.HUB_REPOS to serve it.",
                       epilog=examples("python -m ddpm push checkpoints/default --repo-id you/ddpm-pathmnist --public",
                                        "python -m ddpm push runs/mine --repo-id you/test"))
    p.add_argument("folder", help="checkpoint folder (config.json + model.safetensors)")
    p.add_argument("--repo-id", required=True, help="Hub model repo, owner/name (created if needed)")
    visibility = p.add_mutually_exclusive_group()
    visibility.add_argument("--private", dest="public", action="store_false",
                            help="create the repo private (the default; an existing repo keeps its visibility)")
    visibility.add_argument("--public", dest="public", action="store_true",
                            help="create the repo public, readable by anyone (default: private)")
    p.set_defaults(public=False)
    p.add_argument("--token", help="Hub token (default: the one huggingface-cli login stored)")
    p = sub.add_parser("quiz-report", help="print how well visitors tell real from generated patches (the quiz's score)",
                       formatter_class=HelpFormatter,
                       description="Read the answers of the app's \"Real or generated?\" page and print the share of "
                                   "right answers, overall and by tissue, each with its 95% Wilson interval, as a "
                                   "Markdown table (50% is chance).",
                       epilog=examples("python -m ddpm quiz-report",
                                        "python -m ddpm quiz-report --db /data/ddpm/quiz.sqlite3 > bench/results/quiz.md",
                                        "python -m ddpm quiz-report --weights 3f2a9c"))
    p.add_argument("--db", help="the quiz's SQLite file (default: $DDPM_QUIZ_DB, else where the app keeps it)")
    p.add_argument("--weights", metavar="SHA256", help="only answers about the weights whose sha256 starts so "
                   "(default: every model's answers, listed by weights)")
    return parser


def init_distributed(device: str) -> None:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPU."""
    import os

    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")


def steps_for_epochs(epochs: float, num_images: int, batch_size: int, world_size: int) -> int:
    """Optimizer steps for ``epochs`` passes over the data when ``world_size`` ranks each take ``batch_size`` a step."""
    if not (math.isfinite(epochs) and epochs > 0):  # round(inf) overflows; 0 epochs would train one step
        raise ValueError(f"--epochs must be a finite number > 0, got {epochs}")
    per_epoch = num_images // (batch_size * world_size)
    if per_epoch < 1:
        raise ValueError(f"{num_images} images cannot fill one step of {batch_size} × {world_size} rank(s); lower --batch-size")
    return max(1, round(epochs * per_epoch))


#: train flags that describe the run itself: on --resume each must agree with the run's config.json
RUN_FLAGS = {  # flag: (section of config.json, key, flag value -> config value)
    "preset": (None, "preset", str), "size": ("model", "image_size", int),
    "num_classes": ("model", "num_classes", lambda v: v or None),
    "schedule": ("schedule", "kind", str), "timesteps": ("schedule", "num_timesteps", int),
    "zero_terminal_snr": ("schedule", "zero_terminal_snr", lambda v: v == "on"),
    "prediction": ("schedule", "prediction_type", str),
    "batch_size": ("training", "batch_size", int), "lr": ("training", "lr", float), "seed": ("training", "seed", int),
    "p_uncond": ("training", "p_uncond", float), "lr_decay": ("training", "lr_decay", str),
    "warmup_steps": ("training", "warmup_steps", int), "ema_decay": ("training", "ema_decay", float),
}


def resume_config(args: argparse.Namespace) -> dict:
    """The config.json of the run in ``args.out``, or a ValueError listing every given flag that contradicts it."""
    from .checkpoints import read_config

    run = read_config(Path(args.out))
    differences = []
    for flag, (section, key, to_config) in RUN_FLAGS.items():
        given = getattr(args, flag, None)
        if given is None:
            continue
        saved = run.get(key) if section is None else run.get(section, {}).get(key)
        if to_config(given) != saved:
            differences.append(f"--{flag.replace('_', '-')} {given} (the run has {key} = {saved!r})")
    if args.init_from:
        differences.append(f"--init-from {args.init_from} (a resumed run continues from its own weights)")
    if differences:
        raise ValueError(f"--resume continues {args.out} as its config.json describes it, and these flags contradict it: "
                         + "; ".join(differences) + ". Drop them, or train into a new --out.")
    return run


def cmd_train(args: argparse.Namespace) -> int:
    import signal
    import threading

    import torch
    from tqdm.auto import tqdm

    from .checkpoints import load_checkpoint
    from .data import load_images, load_subset
    from .presets import get_preset
    from .run_files import refuse_existing_run
    from .training import Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    writable_folder(Path(args.out))
    if args.allow_data_change and not args.resume:
        raise ValueError("--allow-data-change only applies with --resume (a new run records the data it trains on)")
    if not args.resume:
        refuse_existing_run(Path(args.out), args.overwrite)  # before any data is loaded; the trainer checks it too
    run = resume_config(args) if args.resume else None
    init_distributed(args.device)
    preset = get_preset(run.get("preset", "small") if run else (args.preset or "small"), args.size)
    if run:  # the run's own config.json is the truth; resume_config refused any flag that contradicts it
        from .checkpoints import CONFIG_NAME, CheckpointError, configs_from
        from .training import TrainConfig

        model_cfg, sched = configs_from(run, Path(args.out))
        try:
            tc = TrainConfig.from_dict(run.get("training", {}))
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{Path(args.out) / CONFIG_NAME}: invalid training section ({err}); restore the "
                                  "file from a copy of the run, or start a fresh run in another --out") from err
        tc = replace(tc, **{k: v for k, v in {"precision": args.precision, "checkpoint_every_s": args.checkpoint_every,
                                              "compile": args.compile or None}.items() if v is not None})
    else:
        sched = preset.schedule
        overrides = {k: v for k, v in {"kind": args.schedule, "num_timesteps": args.timesteps,
                                       "prediction_type": args.prediction}.items() if v is not None}
        if args.zero_terminal_snr:
            overrides["zero_terminal_snr"] = args.zero_terminal_snr == "on"
        sched = replace(sched, **overrides)
        tc = replace(preset.train, **{k: v for k, v in {"batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                                                       "precision": args.precision, "checkpoint_every_s": args.checkpoint_every,
                                                       "compile": args.compile or None, "p_uncond": args.p_uncond,
                                                       "lr_decay": args.lr_decay, "warmup_steps": args.warmup_steps,
                                                       "ema_decay": args.ema_decay}.items() if v is not None})
        model_cfg = preset.model if args.num_classes is None else replace(preset.model, num_classes=args.num_classes or None)
    size = model_cfg.image_size
    if args.subset:
        data, warning = load_subset(), None
    else:
        data, warning = load_images("train", args.data_dir, size, allow_subset=False)
    if args.epochs is not None:  # N epochs of the data, whatever the number of ranks sharing each epoch
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        tc = replace(tc, max_steps=steps_for_epochs(args.epochs, len(data), tc.batch_size, world))
    elif args.steps is not None:
        tc = replace(tc, max_steps=args.steps)
    init = load_checkpoint(args.init_from).model if args.init_from else None
    extra = {"preset": preset.name, "data": data.source}
    if run:
        extra.update({k: run[k] for k in ("class_names", "init_from", "description") if k in run})
    if model_cfg.num_classes:
        from .data import CLASS_NAMES

        if model_cfg.num_classes != len(CLASS_NAMES):
            raise ValueError(f"--num-classes {model_cfg.num_classes}: PathMNIST has {len(CLASS_NAMES)} tissue classes")
        extra["class_names"] = list(CLASS_NAMES)
    if args.init_from:
        extra["init_from"] = str(args.init_from)
    trainer = Trainer(model_cfg, sched, tc, data.images, out_dir=args.out, device=args.device, resume=args.resume,
                      init_model=init, extra_config=extra, labels=data.labels, overwrite=args.overwrite,
                      allow_data_change=args.allow_data_change)
    for warning in trainer.warnings if trainer.rank == 0 else []:
        print(f"warning: {warning}", file=sys.stderr)
    if trainer.rank == 0:
        print(f"preset {preset.name}: {sum(p.numel() for p in trainer.model.parameters()):,} parameters, "
              f"{len(data):,} images ({data.source}), device {trainer.device}, bf16 {trainer.bf16}; "
              f"effective batch {tc.batch_size} × {trainer.world_size} rank(s) = {tc.batch_size * trainer.world_size}, "
              f"lr {tc.lr} (not rescaled with the world size: pass --lr to change it); "
              f"{'conditional on ' + str(model_cfg.num_classes) + ' classes, p_uncond ' + str(tc.p_uncond) if model_cfg.num_classes else 'unconditional'}",
              file=sys.stderr)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    bar = tqdm(total=tc.max_steps, initial=trainer.step, unit="step", disable=trainer.rank != 0)

    def on_step(p):
        bar.update(p.step - bar.n)
        bar.set_postfix(loss=f"{p.loss:.4f}", img_s=f"{p.images_per_sec:.0f}")

    result = trainer.train(callback=on_step, stop_event=stop,
                           time_limit_s=args.max_minutes * 60 if args.max_minutes else None)
    bar.close()
    if trainer.rank == 0:
        print(f"{'stopped' if result.stopped else 'finished'} at step {result.steps}; checkpoint in {args.out}", file=sys.stderr)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np

    from .checkpoints import load_checkpoint
    from .data import image_grid, to_hwc_numpy
    from .export import save_png
    from .cli_options import describe_sampling, sampling_settings
    from .pipeline import generate
    from .device import resolve_device

    out = Path(args.out)
    out = out.with_suffix("") if out.suffix in (".npz", ".png") else out
    writable_folder(out.parent)
    device = resolve_device(args.device)
    say_precision(args, device)
    ckpt = load_checkpoint(args.checkpoint)
    spec, classes = sampling_settings(args, ckpt, args.n, args.seed)
    print(f"model from {ckpt.source}; {describe_sampling(spec, classes, args.tissue)}", file=sys.stderr)
    model = ckpt.model.to(device)
    images = to_hwc_numpy(generate(model, ckpt.schedule, args.n, spec, seed=args.seed, batch_size=args.batch_size,
                                   progress=True, precision=args.precision, classes=classes))
    out.parent.mkdir(parents=True, exist_ok=True)
    extra = {} if classes is None else {"labels": classes.numpy()}  # the tissue each image was asked to be
    np.savez_compressed(out.with_suffix(".npz"), images=images, **extra)
    save_png(image_grid(images[:256]), out.with_suffix(".png"), scale=2)
    print(f"wrote {out.with_suffix('.npz')} ({images.shape}) and {out.with_suffix('.png')}", file=sys.stderr)
    return 0


def checkpoint_summary(ckpt) -> dict:
    from .unet import count_parameters

    sched = ckpt.schedule
    return {"source": ckpt.source, "preset": ckpt.config.get("preset"), "parameters": count_parameters(ckpt.model),
            "model": ckpt.config["model"], "schedule": ckpt.config["schedule"],
            "terminal_signal_sqrt_alphas_cumprod_T": round(sched.terminal_signal, 6),
            "terminal_snr": sched.terminal_snr, "training": ckpt.config.get("training"),
            "data": ckpt.config.get("data"), "weights_dtype": ckpt.config.get("weights_dtype"),
            "class_names": ckpt.config.get("class_names"), "init_from": ckpt.config.get("init_from"),
            "sampling": ckpt.sampling.to_dict()}


def cmd_info(args: argparse.Namespace) -> int:
    from .checkpoints import load_checkpoint

    print(json.dumps(checkpoint_summary(load_checkpoint(args.checkpoint)), indent=2))
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    import torch

    from .checkpoints import SHIPPED_DIR, load_local
    from .serving.preview import home_request, make_preview, write_preview

    folder = Path(args.checkpoint).expanduser()
    folder = folder if folder.is_dir() else SHIPPED_DIR / args.checkpoint
    torch.set_num_threads(1)  # as the app samples: one intra-op thread
    ckpt = load_local(folder)
    preview = make_preview(ckpt, home_request(ckpt), args.precision)
    r = preview.request
    print(f"wrote {write_preview(folder, preview)}: {r.n} patches, {r.spec.describe()}, "
          f"seed {r.seed}, tissues {r.tissue}, {preview.precision}, weights sha256 {preview.fingerprint[:12]}…",
          file=sys.stderr)
    return 0


def cmd_pack_data(args: argparse.Namespace) -> int:
    import numpy as np

    from .data import load_pathmnist, to_hwc_numpy
    from .datapack import read_pack, write_pack

    data = load_pathmnist(args.split, args.data_dir)
    path = write_pack(to_hwc_numpy(data.images), data.labels.numpy(), args.out, args.split, args.shard_mb, args.method,
                      source=data.source)
    images, labels, desc = read_pack(args.out, args.split)  # prove the round trip before anyone relies on it
    if not (np.array_equal(images, to_hwc_numpy(data.images)) and np.array_equal(labels, data.labels.numpy())):
        raise ValueError(f"the pack in {args.out} does not read back bit-exact; do not use it")
    manifest = json.loads(path.read_text())
    sizes = ", ".join(f"{s['file']} {s['bytes'] / 1e6:.1f} MB" for s in manifest["shards"])
    print(f"wrote {path} ({desc}; read back bit-exact): {sizes}", file=sys.stderr)
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .data import download_pathmnist

    print(f"saved {download_pathmnist(args.data_dir, args.size)}", file=sys.stderr)
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .checkpoints import push_to_hub
    from .model_card import write_model_card

    print(f"wrote {write_model_card(args.folder, args.repo_id)}", file=sys.stderr)
    print(push_to_hub(args.folder, args.repo_id, token=args.token, private=not args.public))
    return 0


def cmd_quiz_report(args: argparse.Namespace) -> int:
    from .data import CLASS_NAMES
    from .quiz import default_db_path, open_report_db, report_markdown

    db = open_report_db(args.db or default_db_path())
    weights = db.weights()
    if args.weights:
        weights = [(w, n) for w, n in weights if w.startswith(args.weights.lower())]
        if not weights:
            raise ValueError(f"no answers about weights starting {args.weights!r} in {db.path}; "
                             f"the database has answers about {len(db.weights())} model(s)")
    total = sum(n for _, n in weights)
    about = ", ".join(f"`{w[:12]}…` ({n:,})" for w, n in weights) or "none yet"
    print(report_markdown(db.scores(args.weights), CLASS_NAMES,
                          f"**Real or generated?** {total:,} answer{'s' * (total != 1)} in {db.path.name}; "
                          f"weights sha256 (answers): {about}."))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # --help and usage errors end here, before torch is imported
    from .checkpoints import CheckpointError
    from .data import DataNotFoundError
    from .quiz import QuizDBError
    from .samplers import NonFiniteSampleError
    from .training import NonFiniteLossError

    commands = {"train": cmd_train, "sample": cmd_sample, "info": cmd_info, "download": cmd_download, "push": cmd_push,
                "pack-data": cmd_pack_data, "preview": cmd_preview, "quiz-report": cmd_quiz_report}
    if args.command in ("evaluate", "train-encoder"):
        from .evaluation.cli import cmd_evaluate, cmd_train_encoder
        commands.update({"evaluate": cmd_evaluate, "train-encoder": cmd_train_encoder})
    try:
        return commands[args.command](args)
    except (CheckpointError, DataNotFoundError, NonFiniteLossError, NonFiniteSampleError, QuizDBError, ValueError,
            OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
