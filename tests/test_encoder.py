"""The tissue encoder: shapes, save/load round trip, errors that name the file, colour jitter, metrics, a tiny training run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ddpm.checkpoints import CONFIG_NAME, WEIGHTS_NAME, CheckpointError
from ddpm.data import CLASS_NAMES, load_subset
from ddpm.evaluation.encoder import (EncoderConfig, TissueEncoder, classification_metrics, color_jitter, encoder_outputs,
                                     load_encoder, save_encoder, train_encoder)

NARROW = EncoderConfig(channels=(4, 8, 16), feature_dim=32)  # every layer of the real one, a fraction of the work


def randomised(encoder: TissueEncoder, seed: int = 0) -> TissueEncoder:
    """Give the BatchNorm running statistics non-default values, so a round trip must carry buffers too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in encoder.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(1 + torch.rand(m.running_var.shape, generator=g))
    return encoder.eval()


@pytest.fixture
def probe_images() -> torch.Tensor:
    return torch.rand(3, 3, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1  # (B, 3, 28, 28) in [-1, 1]


def test_the_default_encoder_gives_nine_logits_and_a_256_d_embedding(probe_images):
    torch.manual_seed(0)
    encoder = TissueEncoder(EncoderConfig()).eval()
    with torch.inference_mode():
        logits, embed = encoder(probe_images), encoder.embed(probe_images)
        head_of_embed = encoder.head(embed)
    assert logits.shape == (3, len(CLASS_NAMES)) == (3, 9)
    assert embed.shape == (3, 256)
    torch.testing.assert_close(head_of_embed, logits)  # the logits are the head applied to the embedding


def test_encoder_outputs_returns_features_and_probabilities_for_uint8_images():
    images = torch.randint(0, 256, (5, 3, 28, 28), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    torch.manual_seed(0)
    feats, probs = encoder_outputs(TissueEncoder(NARROW), images, batch_size=2)
    assert feats.shape == (5, 32) and feats.dtype == np.float64
    assert probs.shape == (5, 9)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


def test_save_then_load_encoder_gives_identical_outputs(tmp_path, probe_images):
    torch.manual_seed(0)
    encoder = randomised(TissueEncoder(NARROW))
    save_encoder(tmp_path / "enc", encoder, {"val": {"acc": 0.5}})
    loaded = load_encoder(tmp_path / "enc")
    assert loaded.config == NARROW and not loaded.training
    config = json.loads((tmp_path / "enc" / CONFIG_NAME).read_text())
    assert config["kind"] == "tissue-encoder" and config["metrics"] == {"val": {"acc": 0.5}}
    assert config["class_names"] == list(CLASS_NAMES)
    with torch.inference_mode():
        assert torch.equal(loaded(probe_images), encoder(probe_images))
        assert torch.equal(loaded.embed(probe_images), encoder.embed(probe_images))


def _garbage_weights(folder):
    (folder / WEIGHTS_NAME).write_bytes(b"not safetensors" * 20)


def _truncated_weights(folder):
    data = (folder / WEIGHTS_NAME).read_bytes()
    (folder / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])


def _config_of_a_wider_encoder(folder):
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["encoder"]["channels"] = [8, 16, 32]
    (folder / CONFIG_NAME).write_text(json.dumps(config))


def _unknown_config_key(folder):
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["encoder"]["depth"] = 4
    (folder / CONFIG_NAME).write_text(json.dumps(config))


ENCODER_CASES = {
    "missing folder": (lambda f: None, "missing", CONFIG_NAME, "is missing: no tissue encoder there"),
    "garbage weights": (_garbage_weights, "enc", WEIGHTS_NAME, "not a readable safetensors file"),
    "truncated weights": (_truncated_weights, "enc", WEIGHTS_NAME, "corrupt or truncated"),
    "weights of another shape": (_config_of_a_wider_encoder, "enc", WEIGHTS_NAME, "wrong shapes"),
    "missing weights": (lambda f: (f / WEIGHTS_NAME).unlink(), "enc", WEIGHTS_NAME, "is missing"),
    "invalid JSON config": (lambda f: (f / CONFIG_NAME).write_text("{"), "enc", CONFIG_NAME, "not a tissue-encoder config"),
    "unknown config key": (_unknown_config_key, "enc", CONFIG_NAME, "unknown encoder config keys"),
}


@pytest.mark.parametrize("case", list(ENCODER_CASES))
def test_a_broken_encoder_folder_raises_checkpoint_error_naming_the_file(case, tmp_path):
    damage, folder_name, file_name, message = ENCODER_CASES[case]
    torch.manual_seed(0)
    save_encoder(tmp_path / "enc", TissueEncoder(NARROW), {})
    folder = tmp_path / folder_name
    damage(folder)
    with pytest.raises(CheckpointError, match=message) as err:
        load_encoder(folder)
    assert str(folder / file_name) in str(err.value)


def test_color_jitter_stays_in_range_changes_the_image_and_follows_the_generator():
    x = torch.rand(8, 3, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x[0] = 1.0  # saturated images must stay in range too
    x[1] = -1.0
    out = color_jitter(x, torch.Generator().manual_seed(1), strength=0.3)
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    assert (out - x).abs().mean() > 0.01
    assert torch.equal(out, color_jitter(x, torch.Generator().manual_seed(1), strength=0.3))
    assert not torch.equal(out, color_jitter(x, torch.Generator().manual_seed(2), strength=0.3))


def test_color_jitter_of_strength_zero_is_the_identity():
    x = torch.rand(4, 3, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.testing.assert_close(color_jitter(x, torch.Generator().manual_seed(1), strength=0.0), x, rtol=0, atol=1e-6)


def test_classification_metrics_of_perfect_and_of_constant_predictions():
    labels = np.repeat(np.arange(9), 3)
    perfect = np.eye(9)[labels] * 0.9 + 0.1 / 9
    assert classification_metrics(perfect, labels) == {"acc": 1.0, "auc": 1.0}
    always_first = np.tile(np.eye(9)[0], (len(labels), 1))  # says class 0 for everything: right 1 time in 9
    assert classification_metrics(always_first, labels) == {"acc": round(1 / 9, 4), "auc": 0.5}
    assert classification_metrics(perfect, labels[:, None]) == {"acc": 1.0, "auc": 1.0}  # medmnist's (N, 1) labels


def test_train_encoder_runs_an_epoch_on_a_tiny_subset_and_reports_validation_accuracy(capsys):
    sub = load_subset()
    per_class = [np.flatnonzero(sub.labels.numpy() == c) for c in range(9)]
    train_idx = torch.from_numpy(np.concatenate([i[:8] for i in per_class]))  # 72 patches, 8 per class
    val_idx = torch.from_numpy(np.concatenate([i[8:10] for i in per_class]))  # every class present, as AUC needs
    encoder, info = train_encoder(sub.images[train_idx], sub.labels[train_idx], sub.images[val_idx], sub.labels[val_idx],
                                  epochs=1, batch_size=24, config=NARROW)
    assert isinstance(encoder, TissueEncoder) and not encoder.training and encoder.config == NARROW
    (epoch,) = info["history"]
    assert epoch["epoch"] == 1 and np.isfinite(epoch["train_loss"]) and epoch["train_loss"] > 0
    assert 0 <= epoch["val_acc"] <= 1 and 0 <= epoch["val_auc"] <= 1
    assert info["best_val_acc"] == epoch["val_acc"]
    _, probs = encoder_outputs(encoder, sub.images[val_idx])  # the returned weights are the ones that scored it
    assert classification_metrics(probs, sub.labels[val_idx].numpy())["acc"] == epoch["val_acc"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epoch"] == 1  # one JSON line per epoch
