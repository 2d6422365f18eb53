"""The Hub model card: written from config.json (and evaluation.json), atomically, and pushed with the weights."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

import ddpm.checkpoints as checkpoints
from ddpm.checkpoints import CONFIG_NAME, WEIGHTS_NAME, load_checkpoint
from ddpm.cli import main
from ddpm.data import DATA_CREDIT
from ddpm.model_card import EVALUATION_NAME, model_card, write_model_card
from ddpm.training import Trainer
from ddpm.unet import count_parameters

#: The parts of a report.py evaluation.json that the card reads, with values exact in 4 significant digits.
EVALUATION = {
    "protocol": {"n_generated": 10000, "reference": "PathMNIST val split (10,004 patches, pathmnist.npz)"},
    "metrics": {"fd": 12.34, "kid_mean": 0.001234, "kid_std": 0.0001, "precision": 0.7125, "recall": 0.5432,
                "density": 0.9876, "coverage": 0.8765, "class_tv": 0.0456, "memorization_share": 0.0012,
                "memorization_share_encoder": 0.003},
    "floor": {"fd": 1.5, "kid_mean": 2.5e-05, "kid_std": 1e-05, "precision": 0.8, "recall": 0.79, "density": 1.01,
              "coverage": 0.95, "class_tv": 0.011, "memorization_share": 0.0, "memorization_share_encoder": 0.0},
    "sampling": {"sampler": "dpmpp", "steps": 20, "seconds_per_1000": 61.2},
}
TABLE_ROWS = ["| fd | 12.34 | 1.5 |", "| kid_mean | 0.001234 | 2.5e-05 |", "| precision | 0.7125 | 0.8 |",
              "| recall | 0.5432 | 0.79 |", "| density | 0.9876 | 1.01 |", "| coverage | 0.8765 | 0.95 |",
              "| class_tv | 0.0456 | 0.011 |", "| memorization_share | 0.0012 | 0 |"]


@pytest.fixture
def trained_folder(tmp_path, tiny_config, tiny_schedule_config, tiny_train_config, tiny_images) -> Path:
    """A checkpoint as the trainer writes it (config.json with its training section), after 2 steps."""
    folder = tmp_path / "run"
    Trainer(tiny_config, tiny_schedule_config, replace(tiny_train_config, max_steps=2), tiny_images, out_dir=folder,
            device="cpu", extra_config={"preset": "tiny", "data": "16 test images"}).train()
    return folder


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_the_card_has_hub_front_matter_with_licence_and_tags(trained_folder):
    meta = front_matter(model_card(trained_folder))
    assert meta["license"] == "cc-by-4.0" and meta["library_name"] == "ddpm"
    assert meta["pipeline_tag"] == "unconditional-image-generation"
    assert {"diffusion", "ddpm", "histopathology", "pathmnist"} <= set(meta["tags"])


def test_the_card_states_the_parameter_count_schedule_and_training_from_config_json(trained_folder):
    card = model_card(trained_folder)
    config = json.loads((trained_folder / CONFIG_NAME).read_text())
    parameters = count_parameters(load_checkpoint(trained_folder).model)
    assert config["training"]["parameters"] == parameters
    assert "# DDPM for PathMNIST (tiny preset)" in card
    assert f"- Network: resunet U-Net, {parameters:,} parameters" in card
    # the conftest schedule: cosine, T = 20, rescaled to zero terminal SNR, v-prediction
    assert ("- Schedule: cosine, T = 20, zero terminal SNR: True (√ᾱ_T = 0.000); the network predicts v_prediction."
            in card)
    assert "- Training: 2 steps (0.5 epochs, 8 images seen), adamw lr 0.001, batch 4, EMA 0.9" in card
    assert "fp32 on cpu" in card and "- Data: 16 test images" in card


def test_the_card_names_the_checkpoint_it_was_written_for_in_its_usage_example(trained_folder):
    assert f"load_checkpoint({str(trained_folder)!r})" in model_card(trained_folder)
    card = model_card(trained_folder, repo_id="owner/name")
    assert "load_checkpoint('owner/name')" in card and "python -m ddpm sample --checkpoint owner/name" in card


def test_the_card_credits_the_data_and_states_the_limits_of_use(trained_folder):
    card = model_card(trained_folder)
    assert DATA_CREDIT in card and "Data licence: CC BY 4.0" in card
    assert "Yang et al., *MedMNIST v2*" in card and "Kather et al." in card
    assert "## Intended use and limits" in card and "never diagnostic evidence" in card
    assert "## Evaluation" not in card  # no evaluation.json beside the weights: no numbers invented


def test_a_checkpoint_without_training_history_still_gets_a_card(make_tiny_checkpoint, tmp_path):
    folder, _ = make_tiny_checkpoint(tmp_path / "bare")
    card = model_card(folder)
    assert "- Network: resunet U-Net\n" in card and "- Training:" not in card
    assert "never diagnostic evidence" in card


def test_the_evaluation_table_shows_the_numbers_of_evaluation_json(trained_folder):
    (trained_folder / EVALUATION_NAME).write_text(json.dumps(EVALUATION))
    card = model_card(trained_folder)
    assert "## Evaluation" in card
    assert "10000 samples (dpmpp, 20 steps) against PathMNIST val split (10,004 patches, pathmnist.npz)" in card
    lines = card.splitlines()
    start = lines.index("| metric | model | real-vs-real floor |")
    assert lines[start + 1] == "|---|---:|---:|"
    assert lines[start + 2:start + 2 + len(TABLE_ROWS)] == TABLE_ROWS


def test_write_model_card_replaces_readme_atomically(trained_folder, monkeypatch):
    path = write_model_card(trained_folder, "owner/name")
    assert path == trained_folder / "README.md"
    assert path.read_text() == model_card(trained_folder, "owner/name")
    (trained_folder / EVALUATION_NAME).write_text(json.dumps(EVALUATION))

    def fail(src, dst):
        raise OSError("disk full")

    before = {p.name: p.read_bytes() for p in trained_folder.iterdir()}
    monkeypatch.setattr(checkpoints.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_model_card(trained_folder, "owner/name")
    assert {p.name: p.read_bytes() for p in trained_folder.iterdir()} == before  # old card kept, no temporary left
    monkeypatch.undo()
    write_model_card(trained_folder, "owner/name")
    assert "| fd | 12.34 | 1.5 |" in path.read_text()


def test_the_push_command_writes_the_card_and_uploads_it_with_weights_and_config(fake_hub, trained_folder, capsys):
    (trained_folder / EVALUATION_NAME).write_text(json.dumps(EVALUATION))
    assert main(["push", str(trained_folder), "--repo-id", "owner/name"]) == 0
    readme = trained_folder / "README.md"
    assert readme.read_text() == model_card(trained_folder, "owner/name")
    assert "/owner/name/commit/" in capsys.readouterr().out  # the commit URL is printed
    repo = fake_hub.repos["owner/name"]
    assert {"README.md", CONFIG_NAME, WEIGHTS_NAME, EVALUATION_NAME} <= set(repo)
    assert not {checkpoints.STATE_NAME, checkpoints.STATE_CONFIG_NAME} & set(repo)  # resumable state stays local
    assert repo["README.md"] == readme.read_bytes() and repo[WEIGHTS_NAME] == (trained_folder / WEIGHTS_NAME).read_bytes()
    assert ("POST", "/api/validate-yaml") in fake_hub.requests  # the Hub checked the card's front matter
    loaded = load_checkpoint("owner/name")
    local = load_checkpoint(trained_folder)
    assert loaded.source == "Hugging Face Hub owner/name"
    sa, sb = loaded.model.state_dict(), local.model.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("flags, private", [([], True), (["--private"], True), (["--public"], False)])
def test_the_push_command_creates_the_repo_private_unless_public_is_asked_for(fake_hub, trained_folder, flags, private):
    from ddpm.cli import build_parser

    assert main(["push", str(trained_folder), "--repo-id", "owner/name", *flags]) == 0
    assert fake_hub.private["owner/name"] is private
    push = next(a for a in build_parser()._actions if a.dest == "command").choices["push"]
    assert "(default: private)" in " ".join(push.format_help().split())


def test_the_fake_hub_rejects_a_card_whose_front_matter_is_not_yaml(fake_hub, make_tiny_checkpoint, tmp_path):
    from ddpm.checkpoints import push_to_hub

    folder, _ = make_tiny_checkpoint(tmp_path / "run")
    (folder / "README.md").write_text("---\nlicense: [unclosed\n---\n# card\n")
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        push_to_hub(folder, "owner/bad-card", token="hf_test")
    assert "README.md" not in fake_hub.repos.get("owner/bad-card", {})


def test_a_stored_evaluation_is_read_and_an_unreadable_one_is_an_error_naming_it(tmp_path):
    from ddpm.model_card import EVALUATION_NAME, read_evaluation

    assert read_evaluation(tmp_path) is None and read_evaluation(None) is None
    (tmp_path / EVALUATION_NAME).write_text('{"metrics": {"fd": 1.5}}')
    assert read_evaluation(tmp_path) == {"metrics": {"fd": 1.5}}
    (tmp_path / EVALUATION_NAME).write_text("{broken")
    with pytest.raises(ValueError, match=f"{tmp_path / EVALUATION_NAME} cannot be read"):
        read_evaluation(tmp_path)


def test_a_conditional_models_card_names_its_tissues_guidance_hardware_and_per_tissue_scores(
        tmp_path, tiny_config, tiny_schedule_config, tiny_train_config, tiny_images):
    folder = tmp_path / "cond"
    labels = torch.arange(len(tiny_images)) % 9
    names = [f"tissue {i}" for i in range(9)]
    Trainer(replace(tiny_config, num_classes=9), tiny_schedule_config, replace(tiny_train_config, max_steps=1),
            tiny_images, out_dir=folder, device="cpu", labels=labels,
            extra_config={"preset": "tiny", "class_names": names, "init_from": "an older run"}).train()
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["sampling"] = {"sampler": "dpmpp", "steps": 20, "guidance": 1.5, "chosen_by": "its sweep"}
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    per_class = [{"class": n, "n": 10, "fd": 2.0, "fd_floor": 0.5, "conditional_accuracy": 0.9} for n in names]
    report = {**EVALUATION, "metrics": {**EVALUATION["metrics"], "conditional_accuracy": 0.95},
              "sampling": {**EVALUATION["sampling"], "guidance": 1.5}, "per_class": per_class}
    (folder / EVALUATION_NAME).write_text(json.dumps(report))
    card = model_card(folder, "owner/cond")
    meta = front_matter(card)
    assert "pipeline_tag" not in meta and {"class-conditional", "classifier-free-guidance"} <= set(meta["tags"])
    assert "A tissue-conditional denoising diffusion model (9 tissues" in card
    assert "ckpt.sampling, seed=0, classes='adipose')" in card and "ckpt.sampling is dpmpp, 20 steps, guidance 1.5" in card
    assert "`--class NAME`" in card
    assert f"- Conditioning: 9 tissue classes ({', '.join(names)})" in card
    assert "on cpu (" in card and f"(torch {torch.__version__})" in card
    assert "- Started from: an older run." in card
    assert "- Recommended sampling: dpmpp, 20 steps, guidance 1.5 (its sweep)." in card
    assert "guidance 1.5, tissues drawn from the training prior" in card
    assert "| conditional_accuracy | 0.95 | – |" in card
    assert "| tissue 3 | 10 | 2 | 0.5 | 0.9 |" in card
