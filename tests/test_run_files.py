"""The run's files: a save killed at any of its writes, recovery, orphans, the loss log, the data identity."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ddpm import checkpoints as ckpt
from ddpm import run_files as rf
from ddpm.checkpoints import CheckpointError
from ddpm.training import Trainer

REPO = Path(__file__).resolve().parent.parent
COMPARED = (ckpt.WEIGHTS_NAME, ckpt.STATE_NAME, ckpt.OPTIMIZER_NAME)


@pytest.fixture
def make_trainer(tiny_config, tiny_schedule_config, tiny_train_config, tiny_images):
    def make(out_dir: Path | None = None, resume: bool = False, **train_overrides) -> Trainer:
        return Trainer(tiny_config, tiny_schedule_config, replace(tiny_train_config, **train_overrides), tiny_images,
                       out_dir=out_dir, device="cpu", resume=resume)

    return make


@pytest.fixture
def straight_run(make_trainer, tmp_path) -> Path:
    """The tiny run trained to step 6 without interruption: what every interrupted run must end as."""
    make_trainer(tmp_path / "straight").train()
    return tmp_path / "straight"


def log_losses(folder: Path) -> list[tuple[str, str]]:
    with (folder / ckpt.LOG_NAME).open() as f:
        return [(r["step"], r["loss"]) for r in csv.DictReader(f)]


def assert_ends_as(folder: Path, straight: Path) -> None:
    for name in COMPARED:
        assert (folder / name).read_bytes() == (straight / name).read_bytes(), name
    assert log_losses(folder) == log_losses(straight)  # every step logged once, with the same loss


class Killed(BaseException):
    """Stands for the process dying: nothing after it runs."""


def kill_at(monkeypatch, k: int, folder: Path, crash: Path) -> list[str]:
    """Make the k-th operation of run_files on the folder (write, rename or remove) a kill: ``crash`` receives a
    copy of the folder as the kill leaves it on disk. Returns the names of the operations seen."""
    calls: list[str] = []

    def wrap(name: str):
        real = getattr(rf, name)

        def op(*args):
            calls.append(name)
            if len(calls) == k:
                shutil.copytree(folder, crash)
                raise Killed
            return real(*args)

        return op

    for name in ("_write", "_rename", "_remove"):
        monkeypatch.setattr(rf, name, wrap(name))
    return calls


def test_a_save_killed_at_any_of_its_writes_resumes_at_the_old_or_new_step_and_ends_as_an_uninterrupted_run(
        make_trainer, straight_run, tmp_path, monkeypatch):
    base = tmp_path / "base"
    make_trainer(base).train(max_steps=3)  # a run saved at step 3; its next save (step 5) is killed
    resumed_at = []
    for k in range(1, 40):
        work, crash = tmp_path / f"work{k}", tmp_path / f"crash{k}"
        shutil.copytree(base, work)
        trainer = make_trainer(work, resume=True)
        with monkeypatch.context() as m:
            calls = kill_at(m, k, work, crash)
            try:
                trainer.train(max_steps=5)
            except Killed:
                pass
        if not crash.exists():  # the save finished in fewer than k operations: every one has been killed
            break
        resumed = make_trainer(crash, resume=True)
        resumed_at.append(resumed.step)
        assert not rf.orphans(crash) and not (crash / rf.COMMIT_NAME).exists()
        assert [int(s) for s, _ in log_losses(crash)] == list(range(1, resumed.step + 1))
        resumed.train()
        assert_ends_as(crash, straight_run)
    # 5 temporaries, the commit record written then renamed (the commit), 5 renames, the record removed
    assert calls == ["_write"] * 6 + ["_rename"] * 6 + ["_remove"]
    assert resumed_at == [3] * 7 + [5] * 6  # the old step up to the commit, the new one from it on


def test_finishing_a_committed_save_is_itself_safe_to_kill_at_each_of_its_steps(make_trainer, straight_run, tmp_path,
                                                                                monkeypatch):
    committed = tmp_path / "committed"
    trainer = make_trainer(tmp_path / "run")
    trainer.train(max_steps=3)
    with monkeypatch.context() as m:
        kill_at(m, 8, tmp_path / "run", committed)  # the commit record is in place, no file renamed yet
        with pytest.raises(Killed):
            trainer.train(max_steps=5)
    for k in range(1, 40):
        work, crash = tmp_path / f"work{k}", tmp_path / f"crash{k}"
        shutil.copytree(committed, work)
        with monkeypatch.context() as m:
            calls = kill_at(m, k, work, crash)
            try:
                rf.recover(work)
            except Killed:
                pass
        if not crash.exists():
            break
        resumed = make_trainer(crash, resume=True)
        assert resumed.step == 5
        resumed.train()
        assert_ends_as(crash, straight_run)
    assert calls == ["_rename"] * 5 + ["_remove"] and k == 7


def test_a_save_killed_by_a_real_exit_after_its_commit_is_finished_on_resume(make_trainer, straight_run, tmp_path):
    run = tmp_path / "run"
    make_trainer(run).train(max_steps=3)
    script = f"""
import os, torch
from dataclasses import replace
from ddpm import run_files as rf
from ddpm.schedules import ScheduleConfig
from ddpm.training import Trainer, TrainConfig
from ddpm.unet import UNetConfig
torch.set_num_threads(1)
real, renames = rf._rename, []
def rename(src, dst):
    renames.append(dst)
    if len(renames) == 3:  # the commit record is in place and one file of the set renamed over the old one
        os._exit(9)
    real(src, dst)
rf._rename = rename
model = UNetConfig.from_dict({make_trainer().model_config.to_dict()!r})
train = TrainConfig.from_dict({make_trainer().config.to_dict()!r})
images = torch.load({str(tmp_path / 'images.pt')!r})
Trainer(model, ScheduleConfig(num_timesteps=20), train, images, out_dir={str(run)!r}, device="cpu", resume=True).train(max_steps=5)
"""
    torch.save(make_trainer().images, tmp_path / "images.pt")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert proc.returncode == 9, proc.stderr
    assert (run / rf.COMMIT_NAME).is_file() and rf.orphans(run)  # the kill left a half-applied save behind
    resumed = make_trainer(run, resume=True)
    assert resumed.step == 5 and not rf.orphans(run) and not (run / rf.COMMIT_NAME).exists()
    resumed.train()
    assert_ends_as(run, straight_run)


def test_recover_removes_orphan_temporaries_of_the_runs_files_only(tmp_path):
    ours = [".model.safetensors.3-ab12cd34.tmp", ".training_log.csv.x1y2.tmp", f".{rf.COMMIT_NAME}.5-00ff00ff.tmp"]
    theirs = ["notes.tmp", ".pathmnist_train-00000-of-00001.npz.tmp", "model.safetensors"]
    for name in ours + theirs:
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in rf.orphans(tmp_path)] == sorted(ours)
    rf.recover(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(theirs)


def test_a_committed_save_whose_files_were_changed_since_is_a_checkpoint_error(make_trainer, tmp_path, monkeypatch):
    make_trainer(tmp_path).train(max_steps=2)
    with monkeypatch.context() as m:  # leave the commit record behind, as a kill after the renames would
        m.setattr(rf, "_remove", lambda path: None)
        rf.write_set(tmp_path, 2, {ckpt.CONFIG_NAME: (tmp_path / ckpt.CONFIG_NAME).read_bytes()})
    (tmp_path / ckpt.CONFIG_NAME).write_text("{}")
    with pytest.raises(CheckpointError, match=f"{tmp_path / ckpt.CONFIG_NAME} is not the file the interrupted save"):
        rf.recover(tmp_path)


def test_an_unreadable_commit_record_is_a_checkpoint_error_naming_it(tmp_path):
    (tmp_path / rf.COMMIT_NAME).write_text('{"step": 3, "fi')
    with pytest.raises(CheckpointError, match=f"{tmp_path / rf.COMMIT_NAME} records an interrupted save but cannot be read"):
        rf.recover(tmp_path)


def test_truncating_the_log_drops_rows_past_the_step_and_a_last_row_torn_by_a_kill(tmp_path):
    rf.append_log(tmp_path, [(1, 0.5, 1e-3), (2, 0.4, 1e-3), (3, 0.3, 1e-3)], rate=10.0, elapsed=1.0)
    with (tmp_path / ckpt.LOG_NAME).open("a") as f:
        f.write("4,0.2")  # an append cut short
    rf.truncate_log(tmp_path, 3)
    assert [s for s, _ in log_losses(tmp_path)] == ["1", "2", "3"]
    rf.truncate_log(tmp_path, 2)
    assert [s for s, _ in log_losses(tmp_path)] == ["1", "2"]
    assert not rf.orphans(tmp_path)


def test_a_log_row_that_is_not_the_last_and_is_malformed_is_a_checkpoint_error_naming_the_line(tmp_path):
    rf.append_log(tmp_path, [(1, 0.5, 1e-3)], rate=10.0, elapsed=1.0)
    with (tmp_path / ckpt.LOG_NAME).open("a") as f:
        f.write("garbage\n2,0.4,0.001,10.0,2.0\n")
    with pytest.raises(CheckpointError, match=f"{tmp_path / ckpt.LOG_NAME} line 3 is not a log row"):
        rf.truncate_log(tmp_path, 2)


def test_the_data_identity_depends_on_the_content_not_on_the_source_name(tiny_images):
    labels = torch.arange(16) % 9
    a = rf.data_identity(tiny_images, labels, "PathMNIST train split (16 patches, pathmnist.npz)")
    b = rf.data_identity(tiny_images.clone(), labels.clone(), "PathMNIST train split (16 of 16 patches, lossless pack)")
    assert a["fingerprint"] == b["fingerprint"] and a["count"] == 16 and a["image_shape"] == [3, 28, 28]
    assert rf.check_same_data(Path("run"), a, b, allow_change=False) is None
    other_label = labels.clone()
    other_label[5] = 0
    changed_image = tiny_images.clone()
    changed_image[15, 0, 0, 0] += 1
    fewer = rf.data_identity(tiny_images[:12], labels[:12], a["source"])
    for other in (rf.data_identity(tiny_images, other_label, a["source"]), fewer,
                  rf.data_identity(changed_image, labels, a["source"])):
        assert other["fingerprint"] != a["fingerprint"]
    with pytest.raises(ValueError, match=r"trained on PathMNIST train split .*\(16 images.* but this is .*\(12 images"):
        rf.check_same_data(Path("run"), a, fewer, allow_change=False)


def test_the_files_derived_from_a_runs_weights_are_the_ones_the_modules_that_write_them_name():
    from ddpm.model_card import EVALUATION_NAME
    from ddpm.serving.preview import PREVIEW_NAME

    assert {EVALUATION_NAME, PREVIEW_NAME} <= set(rf.DERIVED_NAMES)


@pytest.mark.parametrize("entries", [
    {"model.safetensors": {"tmp": "../../elsewhere", "bytes": 1, "sha256": "0"}},
    {"../model.safetensors": {"tmp": ".../model.safetensors.1.tmp", "bytes": 1, "sha256": "0"}},
    {"notes.txt": {"tmp": ".notes.txt.1.tmp", "bytes": 1, "sha256": "0"}},
])
def test_a_commit_record_may_only_move_temporaries_of_the_set_onto_the_set(tmp_path, entries):
    import json

    (tmp_path / rf.COMMIT_NAME).write_text(json.dumps({"step": 1, "files": entries}))
    with pytest.raises(CheckpointError, match="names files outside the checkpoint set"):
        rf.recover(tmp_path)
