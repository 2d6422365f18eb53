"""`python -m ddpm train` and the run in --out: no run is overwritten or resumed on other data without being asked."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from ddpm.checkpoints import CONFIG_NAME, LOG_NAME, STATE_CONFIG_NAME
from ddpm.cli import main
from ddpm.data import load_subset, to_hwc_numpy
from ddpm.datapack import write_pack

SEED_RUN = ["--preset", "seed", "--subset", "--batch-size", "16", "--device", "cpu"]


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    """`train` turns Ctrl-C and SIGTERM into "save and stop"; give pytest its own handlers back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def train(*args: str) -> int:
    return main(["train", *args])


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def log_steps(folder: Path) -> list[str]:
    return [line.split(",")[0] for line in (folder / LOG_NAME).read_text().splitlines()[1:]]


@pytest.fixture
def seed_run(tmp_path) -> Path:
    """The paper's network trained 3 steps on the bundled subset, as `train` writes it."""
    assert train(*SEED_RUN, "--steps", "3", "--out", str(tmp_path / "run")) == 0
    return tmp_path / "run"


def test_train_into_a_folder_holding_a_run_without_resume_is_refused_and_leaves_it_as_it_was(seed_run, capsys):
    before = folder_bytes(seed_run)
    capsys.readouterr()
    assert train("--preset", "small", "--subset", "--steps", "2", "--device", "cpu", "--out", str(seed_run)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {seed_run} already holds a training run")
    assert "Pass --resume to continue it, choose another --out to keep it, or pass --overwrite to replace it" in err
    assert folder_bytes(seed_run) == before


def test_overwrite_starts_a_new_run_whose_log_and_files_hold_nothing_of_the_old_one(seed_run, capsys):
    (seed_run / "evaluation.json").write_text("{}")
    assert train(*SEED_RUN, "--steps", "2", "--lr", "3e-4", "--out", str(seed_run), "--overwrite") == 0
    assert log_steps(seed_run) == ["1", "2"]
    config = json.loads((seed_run / CONFIG_NAME).read_text())
    assert (config["training"]["steps"], config["training"]["lr"]) == (2, 3e-4)
    assert json.loads((seed_run / STATE_CONFIG_NAME).read_text())["step"] == 2
    assert not (seed_run / "evaluation.json").exists()


def test_resume_and_overwrite_together_are_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        train("--out", str(tmp_path), "--resume", "--overwrite")
    assert exit_.value.code == 2
    assert "argument --overwrite: not allowed with argument --resume" in capsys.readouterr().err


@pytest.fixture
def other_data(tmp_path) -> Path:
    """A data folder holding a pack of 64 of the subset's patches: other data than the subset's 1,800."""
    data = load_subset()
    write_pack(to_hwc_numpy(data.images[:64]), data.labels[:64].numpy(), tmp_path / "other", workers=1)
    return tmp_path / "other"


def test_resume_on_other_data_is_refused_naming_both_unless_allow_data_change(seed_run, other_data, capsys):
    before = folder_bytes(seed_run)
    capsys.readouterr()
    assert train("--out", str(seed_run), "--resume", "--steps", "4", "--device", "cpu", "--data-dir", str(other_data)) == 2
    err = capsys.readouterr().err
    assert f"error: --resume: the run in {seed_run} trained on bundled subset" in err
    assert "(1,800 images" in err and "but this is PathMNIST train split (64 of 64 patches, lossless pack) (64 images" in err
    assert "pass --allow-data-change to continue on this data" in err
    assert folder_bytes(seed_run) == before

    assert train("--out", str(seed_run), "--resume", "--steps", "4", "--device", "cpu", "--data-dir", str(other_data),
                 "--allow-data-change") == 0
    assert "warning: the run in" in capsys.readouterr().err
    state = json.loads((seed_run / STATE_CONFIG_NAME).read_text())
    assert state["step"] == 4 and state["data"]["count"] == 64


def test_resume_of_a_run_without_a_recorded_data_identity_goes_on_with_a_warning(seed_run, capsys):
    state = json.loads((seed_run / STATE_CONFIG_NAME).read_text())
    del state["data"]
    (seed_run / STATE_CONFIG_NAME).write_text(json.dumps(state))
    assert train("--out", str(seed_run), "--resume", "--steps", "4", "--device", "cpu", "--subset") == 0
    assert "warning: " in (err := capsys.readouterr().err) and "records no data identity" in err
    assert json.loads((seed_run / STATE_CONFIG_NAME).read_text())["data"]["count"] == 1800


def test_allow_data_change_without_resume_is_refused(tmp_path, capsys):
    assert train(*SEED_RUN, "--out", str(tmp_path / "run"), "--allow-data-change") == 2
    assert "--allow-data-change only applies with --resume" in capsys.readouterr().err


def test_resume_with_a_malformed_training_section_in_config_json_names_the_file(seed_run, capsys):
    config = json.loads((seed_run / CONFIG_NAME).read_text())
    config["training"]["batch_size"] = "sixteen"
    (seed_run / CONFIG_NAME).write_text(json.dumps(config))
    assert train("--out", str(seed_run), "--resume", "--steps", "4", "--device", "cpu", "--subset") == 2
    err = capsys.readouterr().err
    assert f"error: {seed_run / CONFIG_NAME}: " in err and "training.batch_size" in err and "sixteen" in err
