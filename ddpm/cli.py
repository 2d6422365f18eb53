"""Command line: ``python -m ddpm {train,sample,info,evaluate,push,download}``."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (resumable; Ctrl-C saves and stops)")
    p.add_argument("--preset", default="small", help="seed | small | large (default: small)")
    p.add_argument("--out", required=True, help="output folder for the checkpoint, state and loss log")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="total optimizer steps (default: the preset's)")
    length.add_argument("--epochs", type=float, help="total epochs over the training split")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--schedule", choices=["linear", "cosine"], help="noise schedule kind")
    p.add_argument("--timesteps", type=int, help="T, the number of diffusion steps")
    p.add_argument("--zero-terminal-snr", choices=["on", "off"], help="rescale the schedule to SNR(T) = 0")
    p.add_argument("--prediction", choices=["epsilon", "v_prediction"], help="what the network predicts")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"])
    p.add_argument("--data-dir", help="folder with pathmnist.npz (default: $DDPM_DATA_DIR, else ~/.medmnist)")
    p.add_argument("--size", type=int, default=28, choices=[28, 64, 128, 224], help="MedMNIST+ image size")
    p.add_argument("--subset", action="store_true", help="train on the bundled subset (no download needed)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--init-from", help="start from these weights (folder, shipped name or Hub repo id)")
    p.add_argument("--checkpoint-every", type=float, help="seconds between checkpoints (default 300)")
    p.add_argument("--num-classes", type=int, help="train a tissue-conditional model with this many classes "
                   "(9 for PathMNIST; default: the preset's); with --init-from an unconditional checkpoint, its "
                   "weights are kept and the class embedding starts at zero")
    p.add_argument("--p-uncond", type=float, help="conditional models: share of labels dropped to 'no class' (default 0.15)")
    p.add_argument("--lr-decay", choices=["none", "cosine"], help="learning-rate decay after warm-up (default: the preset's)")
    p.add_argument("--warmup-steps", type=int, help="learning-rate warm-up steps (default: the preset's)")
    p.add_argument("--ema-decay", type=float, help="EMA decay of the sampling weights (default: the preset's)")
    p.add_argument("--max-minutes", type=float, help="stop, save and exit after this many minutes of training")


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate images into FILE.npz and FILE.png")
    p.add_argument("--checkpoint", default=None, help="folder, shipped name (default, seed) or Hub repo id")
    p.add_argument("--sampler", choices=["ddpm", "ddim", "dpmpp"], default="dpmpp")
    p.add_argument("--steps", type=int, help="sampler steps (DDPM always uses all T; default 20 otherwise)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM η (0 deterministic, 1 ancestral)")
    p.add_argument("-n", type=int, default=64, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, help="images per network call (default 128 on CPU, 512 on GPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="samples", help="output path without extension (FILE -> FILE.npz, FILE.png)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ddpm", description="DDPM for PathMNIST: train, sample, evaluate.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_sample(sub)
    p = sub.add_parser("info", help="describe a checkpoint")
    p.add_argument("checkpoint", help="folder, shipped name or Hub repo id")
    p = sub.add_parser("pack-data", help="write a split as lossless shards for a machine without internet or medmnist")
    p.add_argument("--out", required=True, help="folder for the manifest and shards")
    p.add_argument("--data-dir", help="folder with pathmnist.npz (default: $DDPM_DATA_DIR, else ~/.medmnist)")
    p.add_argument("--split", default="train", choices=["train", "val", "test"])
    p.add_argument("--shard-mb", type=float, default=40.0, help="largest shard in MB (default 40)")
    p.add_argument("--method", type=int, default=4, choices=range(7), metavar="0-6",
                   help="WebP effort, always lossless (default 4: 1.27 KB a patch; 6 is 10x slower for 1%% less)")
    p = sub.add_parser("download", help="download PathMNIST with medmnist (needs internet)")
    p.add_argument("--data-dir")
    p.add_argument("--size", type=int, default=28, choices=[28, 64, 128, 224])
    from .evaluation.cli import add_evaluate_parser, add_train_encoder_parser
    add_evaluate_parser(sub)
    add_train_encoder_parser(sub)
    p = sub.add_parser("push", help="upload a checkpoint folder to the Hugging Face Hub")
    p.add_argument("folder")
    p.add_argument("--repo-id", required=True)
    p.add_argument("--private", action="store_true")
    p.add_argument("--token", help="Hub token (default: the one huggingface-cli login stored)")
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


def cmd_train(args: argparse.Namespace) -> int:
    import signal
    import threading

    import torch
    from tqdm.auto import tqdm

    from .checkpoints import load_checkpoint
    from .data import load_images, load_subset
    from .presets import get_preset
    from .training import Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    init_distributed(args.device)
    preset = get_preset(args.preset, args.size)
    sched = preset.schedule
    overrides = {k: v for k, v in {"kind": args.schedule, "num_timesteps": args.timesteps,
                                   "prediction_type": args.prediction}.items() if v is not None}
    if args.zero_terminal_snr:
        overrides["zero_terminal_snr"] = args.zero_terminal_snr == "on"
    sched = replace(sched, **overrides)
    if args.subset:
        data, warning = load_subset(), None
    else:
        data, warning = load_images("train", args.data_dir, args.size, allow_subset=False)
    tc = replace(preset.train, **{k: v for k, v in {"batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                                                   "precision": args.precision, "checkpoint_every_s": args.checkpoint_every,
                                                   "compile": args.compile or None, "p_uncond": args.p_uncond,
                                                   "lr_decay": args.lr_decay, "warmup_steps": args.warmup_steps,
                                                   "ema_decay": args.ema_decay}.items() if v is not None})
    model_cfg = preset.model if args.num_classes is None else replace(preset.model, num_classes=args.num_classes or None)
    if args.epochs is not None:
        tc = replace(tc, max_steps=max(1, round(args.epochs * (len(data) // tc.batch_size))))
    elif args.steps is not None:
        tc = replace(tc, max_steps=args.steps)
    init = load_checkpoint(args.init_from).model if args.init_from else None
    extra = {"preset": preset.name, "data": data.source}
    if model_cfg.num_classes:
        from .data import CLASS_NAMES

        if model_cfg.num_classes != len(CLASS_NAMES):
            raise ValueError(f"--num-classes {model_cfg.num_classes}: PathMNIST has {len(CLASS_NAMES)} tissue classes")
        extra["class_names"] = list(CLASS_NAMES)
    if args.init_from:
        extra["init_from"] = str(args.init_from)
    trainer = Trainer(model_cfg, sched, tc, data.images, out_dir=args.out, device=args.device, resume=args.resume,
                      init_model=init, extra_config=extra, labels=data.labels)
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
    from .checkpoints import load_checkpoint
    from .data import image_grid, to_hwc_numpy
    from .export import save_png
    from .pipeline import generate
    from .device import resolve_device

    ckpt = load_checkpoint(args.checkpoint)
    print(f"model from {ckpt.source}", file=sys.stderr)
    model = ckpt.model.to(resolve_device(args.device))
    images = to_hwc_numpy(generate(model, ckpt.schedule, args.n, args.sampler, args.steps, args.seed,
                                   args.batch_size, args.eta, progress=True))
    out = Path(args.out)
    out = out.with_suffix("") if out.suffix in (".npz", ".png") else out
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out.with_suffix(".npz"), images=images)
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
            "data": ckpt.config.get("data"), "weights_dtype": ckpt.config.get("weights_dtype")}


def cmd_info(args: argparse.Namespace) -> int:
    from .checkpoints import load_checkpoint

    print(json.dumps(checkpoint_summary(load_checkpoint(args.checkpoint)), indent=2))
    return 0


def cmd_pack_data(args: argparse.Namespace) -> int:
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
    print(push_to_hub(args.folder, args.repo_id, token=args.token, private=args.private))
    return 0


def main(argv: list[str] | None = None) -> int:
    from .checkpoints import CheckpointError
    from .data import DataNotFoundError
    from .training import NonFiniteLossError

    args = build_parser().parse_args(argv)
    commands = {"train": cmd_train, "sample": cmd_sample, "info": cmd_info, "download": cmd_download, "push": cmd_push,
                "pack-data": cmd_pack_data}
    if args.command in ("evaluate", "train-encoder"):
        from .evaluation.cli import cmd_evaluate, cmd_train_encoder
        commands.update({"evaluate": cmd_evaluate, "train-encoder": cmd_train_encoder})
    try:
        return commands[args.command](args)
    except (CheckpointError, DataNotFoundError, NonFiniteLossError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
