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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .report import evaluate_checkpoint

    evaluate_checkpoint(args)
    return 0
