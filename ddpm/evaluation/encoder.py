"""A compact tissue classifier trained on PathMNIST, used as the feature space of the metrics.

Inception features judge 28×28 histology poorly; a network trained on this very data knows what
separates mucosa from stroma.  Its penultimate activations (after global average pooling) are the
embedding for FD / KID / precision-recall / memorization; its softmax says which tissue a generated
patch looks like.  Trained with dihedral flips and stain-like colour jitter, selected on the
validation split; the test split (another clinical centre) is reported, never used for choices.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .. import checkpoints as ckpt
from ..config import ConfigMixin
from ..data import CLASS_NAMES, dihedral_augment, to_model_range

ENCODER_DIR = ckpt.SHIPPED_DIR / "encoder"
#: MedMNIST v2 (Yang et al. 2023), Table: ResNet-18 (28) on PathMNIST's test split.
BASELINE = {"model": "MedMNIST v2 ResNet-18 (28)", "test_acc": 0.907, "test_auc": 0.983}


@dataclass(frozen=True)
class EncoderConfig(ConfigMixin):
    channels: tuple[int, ...] = (32, 64, 128)
    feature_dim: int = 256
    num_classes: int = len(CLASS_NAMES)
    dropout: float = 0.2
    config_name = "encoder"

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))  # JSON gives a list


class TissueEncoder(nn.Module):
    """conv-BN-ReLU ×2 per stage (28 → 14 → 7), global average pool, a linear feature layer, classifier."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        layers, cin = [], 3
        for i, c in enumerate(config.channels):
            layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if i < len(config.channels) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = c
        self.body = nn.Sequential(*layers)
        self.features = nn.Sequential(nn.Linear(cin, config.feature_dim), nn.BatchNorm1d(config.feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.feature_dim, config.num_classes))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, 28, 28) in [-1, 1] -> (B, feature_dim) penultimate features."""
        return self.features(self.body(x).mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def color_jitter(x: torch.Tensor, generator: torch.Generator, strength: float = 0.1) -> torch.Tensor:
    """Stain-like colour variation on [-1, 1] images: per-image brightness, contrast, saturation and
    per-channel gains, each drawn around identity with spread ``strength``."""
    b = x.shape[0]
    r = lambda *s: (torch.rand(*s, generator=generator) * 2 - 1) * strength  # noqa: E731
    img = (x + 1) / 2
    img = img * (1 + r(b, 3, 1, 1)) + r(b, 1, 1, 1)  # channel gains (stain), brightness
    mean = img.mean((1, 2, 3), keepdim=True)
    img = (img - mean) * (1 + r(b, 1, 1, 1)) + mean  # contrast
    gray = img.mean(1, keepdim=True)
    img = (img - gray) * (1 + 2 * r(b, 1, 1, 1)) + gray  # saturation
    return img.clamp(0, 1) * 2 - 1


@torch.inference_mode()
def encoder_outputs(encoder: TissueEncoder, images: torch.Tensor, batch_size: int = 1000,
                    progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D), class probabilities (N, 9)) for uint8 images (N, 3, 28, 28)."""
    encoder.eval()
    feats, probs = [], []
    for i in tqdm(range(0, images.shape[0], batch_size), desc="encoding", disable=not progress):
        f = encoder.embed(to_model_range(images[i:i + batch_size]))
        feats.append(f.numpy().astype(np.float64))
        probs.append(F.softmax(encoder.head(f), dim=1).numpy())
    return np.concatenate(feats), np.concatenate(probs)


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy and macro one-vs-rest AUC, computed by medmnist's own evaluator functions."""
    from medmnist.evaluator import getACC, getAUC

    return {"acc": round(float(getACC(labels, probs, "multi-class")), 4),
            "auc": round(float(getAUC(labels, probs, "multi-class")), 4)}


def train_encoder(train_images: torch.Tensor, train_labels: torch.Tensor, val_images: torch.Tensor,
                  val_labels: torch.Tensor, epochs: int = 12, batch_size: int = 256, lr: float = 3e-3,
                  seed: int = 0, config: EncoderConfig = EncoderConfig()) -> tuple[TissueEncoder, dict]:
    """Train with AdamW + one-cycle cosine, label smoothing, flips/rotations and colour jitter.

    Keeps the epoch with the best validation accuracy. Returns (encoder, history).
    """
    if train_images.shape[0] < batch_size:
        raise ValueError(f"{train_images.shape[0]} training images cannot fill one batch of {batch_size}; lower batch_size")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = TissueEncoder(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps_per_epoch = train_images.shape[0] // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    best, best_state, history = -1.0, None, []
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(train_images.shape[0], generator=g)
        t0, total = time.time(), 0.0
        for i in tqdm(range(steps_per_epoch), desc=f"encoder epoch {epoch + 1}/{epochs}", leave=False):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            x = color_jitter(dihedral_augment(to_model_range(train_images[idx]), g), g)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x).float(), train_labels[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        _, probs = encoder_outputs(model, val_images)
        val = classification_metrics(probs, val_labels.numpy())
        history.append({"epoch": epoch + 1, "train_loss": round(total / steps_per_epoch, 4), **{f"val_{k}": v for k, v in val.items()},
                        "seconds": round(time.time() - t0, 1)})
        print(json.dumps(history[-1]), flush=True)
        if val["acc"] > best:
            best, best_state = val["acc"], {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model.eval(), {"history": history, "best_val_acc": best}


def save_encoder(folder: str | Path, encoder: TissueEncoder, metrics: dict) -> Path:
    folder = Path(folder)
    ckpt.atomic_save_tensors(encoder.state_dict(), folder / ckpt.WEIGHTS_NAME, metadata={"format": "pt"})
    ckpt.atomic_write_json(folder / ckpt.CONFIG_NAME, {"format_version": ckpt.FORMAT_VERSION, "library": "ddpm",
                                                       "kind": "tissue-encoder", "encoder": encoder.config.to_dict(),
                                                       "class_names": list(CLASS_NAMES), "metrics": metrics})
    return folder


def load_encoder(folder: str | Path | None = None) -> TissueEncoder:
    """The shipped tissue encoder (or one saved with ``save_encoder``), in eval mode."""
    folder = Path(folder) if folder is not None else ENCODER_DIR
    path = folder / ckpt.CONFIG_NAME
    if not path.is_file():
        raise ckpt.CheckpointError(f"{path} is missing: no tissue encoder there. Train one with "
                                   f"`python -m ddpm train-encoder --out {folder}`.")
    try:
        config = json.loads(path.read_text())
        enc_config = EncoderConfig.from_dict(config["encoder"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ckpt.CheckpointError(f"{path} is not a tissue-encoder config ({err}); re-download or retrain it.") from err
    model = TissueEncoder(enc_config)
    ckpt.load_state_dict_checked(model, folder / ckpt.WEIGHTS_NAME)
    return model.eval()


def train_and_save_encoder(data_dir: str | None, out: str | Path, epochs: int = 12, seed: int = 0) -> dict:
    """Train on the full training split, select on val, report val and test, save to ``out``."""
    from ..data import load_pathmnist

    tr, va, te = (load_pathmnist(s, data_dir) for s in ("train", "val", "test"))
    t0 = time.time()
    encoder, info = train_encoder(tr.images, tr.labels, va.images, va.labels, epochs=epochs, seed=seed)
    metrics = {"val": classification_metrics(encoder_outputs(encoder, va.images)[1], va.labels.numpy()),
               "test": classification_metrics(encoder_outputs(encoder, te.images)[1], te.labels.numpy()),
               "baseline": BASELINE, "train_seconds": round(time.time() - t0), "epochs": epochs,
               "parameters": sum(p.numel() for p in encoder.parameters()), "history": info["history"]}
    save_encoder(out, encoder, metrics)
    return metrics
