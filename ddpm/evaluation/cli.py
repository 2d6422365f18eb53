"""``python -m ddpm evaluate``."""
from __future__ import annotations

import argparse


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="measure a model's samples against real patches (JSON report + PNG panel)")
    p.add_argument("--checkpoint", default=None, help="folder, shipped name or Hub repo id")
    p.add_argument("--sampler", choices=["ddpm", "ddim", "dpmpp"], default="dpmpp")
    p.add_argument("--steps", type=int)
    p.add_argument("-n", type=int, default=10_000, help="number of generated samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir")
    p.add_argument("--encoder", default=None, help="encoder checkpoint folder (default: the shipped one)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="evaluation", help="output path without extension (-> .json, .png)")


def add_train_encoder_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-encoder", help="train the tissue encoder used by the metrics (full PathMNIST needed)")
    p.add_argument("--data-dir")
    p.add_argument("--out", default="checkpoints/encoder")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)


def cmd_train_encoder(args: argparse.Namespace) -> int:
    import json

    from .encoder import train_and_save_encoder

    metrics = train_and_save_encoder(args.data_dir, args.out, args.epochs, args.seed)
    print(json.dumps({k: metrics[k] for k in ("val", "test", "baseline")}, indent=1))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .report import evaluate_checkpoint

    evaluate_checkpoint(args)
    return 0
