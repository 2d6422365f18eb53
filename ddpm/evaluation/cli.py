"""``python -m ddpm evaluate``."""
from __future__ import annotations

import argparse


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    from ..cli_options import HelpFormatter, add_reproducibility, add_sampling_options, device_name, examples, seed_int

    p = sub.add_parser("evaluate", help="measure a model's samples against real patches (JSON report + PNG panel)",
                       formatter_class=HelpFormatter,
                       description="Sample, then score the samples in the tissue encoder's feature space against "
                                   "PathMNIST, beside the real-versus-real floor (the bundled subset without the file).",
                       epilog=examples("python -m ddpm evaluate --checkpoint default -n 10000 --out eval",
                                        "python -m ddpm evaluate --checkpoint runs/mine --sampler ddim --steps 50 -n 2000 --out ddim50",
                                        "python -m ddpm evaluate -n 200 --data-dir ~/.medmnist --precision bf16 --out quick"))
    p.add_argument("--checkpoint", default=None, help="folder, shipped name or Hub repo id[@revision] "
                   "(default: the shipped default model)")
    add_sampling_options(p)
    p.add_argument("-n", type=int, default=10_000, help="number of generated samples (at least 50)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the samples and of the floor's draw")
    p.add_argument("--data-dir", help="folder with pathmnist.npz (default: $DDPM_DATA_DIR, else ~/.medmnist)")
    p.add_argument("--encoder", default=None, help="encoder checkpoint folder (default: the shipped one)")
    p.add_argument("--device", default="auto", type=device_name, help="auto | cpu | cuda | cuda:N")
    add_reproducibility(p)
    p.add_argument("--out", default="evaluation", help="output path without extension (-> .json, .png)")


def add_train_encoder_parser(sub: argparse._SubParsersAction) -> None:
    from ..cli_options import HelpFormatter, examples, positive_int, seed_int

    p = sub.add_parser("train-encoder", help="train the tissue encoder used by the metrics (full PathMNIST needed)",
                       formatter_class=HelpFormatter,
                       epilog=examples("python -m ddpm train-encoder --data-dir ~/.medmnist",
                                        "python -m ddpm train-encoder --epochs 3 --out runs/encoder"))
    p.add_argument("--data-dir", help="folder with pathmnist.npz (default: $DDPM_DATA_DIR, else ~/.medmnist)")
    p.add_argument("--out", default="checkpoints/encoder", help="folder for the encoder's weights and metrics")
    p.add_argument("--epochs", type=positive_int, default=12, help="training epochs")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the weights and the data order")


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
