"""The trainer on a tiny network: progress, stopping, exact resume, the loss log, the NaN guard, inputs."""
from __future__ import annotations

import csv
import shutil
import json
import math
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ddpm import checkpoints as ckpt
from ddpm.checkpoints import CheckpointError, load_checkpoint
from ddpm.data import CLASS_NAMES, load_subset, to_model_range
from ddpm.schedules import NoiseSchedule, ScheduleConfig
from ddpm.training import NonFiniteLossError, TrainConfig, Trainer, TrainProgress, diffusion_loss, read_training_log
from ddpm.unet import UNetConfig, build_unet


@pytest.fixture
def make_trainer(tiny_config, tiny_schedule_config, tiny_train_config, tiny_images):
    def make(out_dir: Path | None = None, resume: bool = False, images: torch.Tensor | None = None,
             overwrite: bool = False, **train_overrides) -> Trainer:
        return Trainer(tiny_config, tiny_schedule_config, replace(tiny_train_config, **train_overrides),
                       tiny_images if images is None else images, out_dir=out_dir, device="cpu", resume=resume,
                       overwrite=overwrite)

    return make


def log_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / ckpt.LOG_NAME).open() as f:
        return list(csv.DictReader(f))


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_training_lowers_the_loss_on_a_fixed_evaluation_batch(make_trainer, tiny_images, tiny_schedule_config):
    trainer = make_trainer(lr=3e-3, max_steps=25, warmup_steps=0, ema_decay=None, augment=False, loss_weighting="none")
    schedule = NoiseSchedule.from_config(tiny_schedule_config)
    g = torch.Generator().manual_seed(123)
    x0 = to_model_range(tiny_images)
    t = torch.randint(0, schedule.num_timesteps, (len(x0),), generator=g)
    noise = torch.randn(x0.shape, generator=g)

    def eval_loss() -> float:
        with torch.no_grad():
            return diffusion_loss(trainer.model, schedule, x0, t, noise).item()

    before = eval_loss()
    result = trainer.train()
    after = eval_loss()
    assert result.steps == 25 and not result.stopped
    assert math.isfinite(result.final_loss)
    assert after < 0.8 * before


def test_callback_receives_train_progress_after_every_step(make_trainer):
    trainer = make_trainer()
    seen: list[TrainProgress] = []
    trainer.train(callback=seen.append)
    assert [p.step for p in seen] == [1, 2, 3, 4, 5, 6]
    assert all(isinstance(p, TrainProgress) and p.max_steps == 6 for p in seen)
    assert all(math.isfinite(p.loss) and p.images_per_sec > 0 and p.elapsed_s >= 0 for p in seen)
    # linear warm-up over 2 steps, then the configured rate
    assert [p.lr for p in seen] == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3])
    assert seen[-1].eta_s == 0


def test_stop_event_ends_training_early_and_still_saves(make_trainer, tmp_path):
    trainer = make_trainer(tmp_path)
    stop = threading.Event()

    def on_step(p: TrainProgress) -> None:
        if p.step == 2:
            stop.set()

    result = trainer.train(callback=on_step, stop_event=stop)
    assert result.stopped and result.steps == 2
    assert json.loads((tmp_path / ckpt.STATE_CONFIG_NAME).read_text())["step"] == 2
    assert json.loads((tmp_path / ckpt.CONFIG_NAME).read_text())["training"]["steps"] == 2
    assert [r["step"] for r in log_rows(tmp_path)] == ["1", "2"]
    assert load_checkpoint(tmp_path).model is not None


def test_saved_checkpoint_holds_the_ema_weights_for_sampling(make_trainer, tmp_path):
    trainer = make_trainer(tmp_path, max_steps=3)
    trainer.train()
    loaded = load_checkpoint(tmp_path)
    assert_same_weights(loaded.model, trainer.ema.model)
    raw = load_file(str(tmp_path / ckpt.STATE_NAME))
    assert all(torch.equal(raw[k], v) for k, v in trainer.model.state_dict().items())
    assert not all(torch.equal(raw[k], v) for k, v in trainer.ema.model.state_dict().items())  # EMA ≠ raw weights
    training = loaded.config["training"]
    assert (training["steps"], training["batch_size"], training["num_train_images"]) == (3, 4, 16)


def test_initial_weights_come_from_the_config_seed_not_the_global_rng(make_trainer):
    torch.manual_seed(1)
    a = make_trainer()
    torch.manual_seed(2)
    b = make_trainer()
    c = make_trainer(seed=4)
    assert_same_weights(a.model, b.model)
    assert not torch.equal(a.model.conv_in.weight, c.model.conv_in.weight)


def test_resume_continues_from_the_saved_step_with_the_same_weights_as_an_uninterrupted_run(make_trainer, tmp_path):
    straight = make_trainer(tmp_path / "straight")
    straight.train()

    first = make_trainer(tmp_path / "resumed")
    first.train(max_steps=3)
    second = make_trainer(tmp_path / "resumed", resume=True)
    assert second.step == 3
    result = second.train()
    assert result.steps == 6

    assert_same_weights(second.model, straight.model)
    assert_same_weights(second.ema.model, straight.ema.model)
    for name in (ckpt.WEIGHTS_NAME, ckpt.STATE_NAME, ckpt.OPTIMIZER_NAME):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name
    assert [r["loss"] for r in log_rows(tmp_path / "resumed")] == [r["loss"] for r in log_rows(tmp_path / "straight")]


def test_loss_log_has_one_row_per_step_and_resume_drops_rows_after_the_saved_step(make_trainer, tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path)
    trainer.train(max_steps=3)
    assert [r["step"] for r in log_rows(tmp_path)] == ["1", "2", "3"]

    with monkeypatch.context() as m:  # a crash after step 5: steps 4-5 were logged but never saved
        m.setattr(Trainer, "save", lambda self: None)
        trainer.train(max_steps=5)
    crashed = log_rows(tmp_path)
    assert [r["step"] for r in crashed] == ["1", "2", "3", "4", "5"]

    resumed = make_trainer(tmp_path, resume=True)
    assert resumed.step == 3
    assert [r["step"] for r in log_rows(tmp_path)] == ["1", "2", "3"]
    resumed.train(max_steps=5)
    rows = log_rows(tmp_path)
    assert [r["step"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert [r["loss"] for r in rows] == [r["loss"] for r in crashed]  # steps 4-5 were retrained identically
    assert list(rows[0]) == ["step", "loss", "lr", "images_per_sec", "elapsed_s"]
    assert read_training_log(tmp_path)["step"] == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_non_finite_loss_raises_naming_the_step_and_leaves_the_last_checkpoint_untouched(make_trainer, tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.train(max_steps=2)
    saved = file_bytes(tmp_path)
    with torch.no_grad():
        trainer.model.conv_in.weight[0, 0, 0, 0] = float("nan")

    with pytest.raises(NonFiniteLossError) as err:
        trainer.train(max_steps=5)
    message = str(err.value)
    assert "at step 3" in message
    assert str(tmp_path) in message and "(step 2) was kept" in message
    assert "learning rate" in message  # says what to do next
    assert file_bytes(tmp_path) == saved  # same files, byte for byte, and no temp files


def test_with_loss_reads_every_4_steps_a_nan_is_caught_at_the_next_read_naming_the_step_it_began(make_trainer, tmp_path,
                                                                                                   monkeypatch):
    """The CUDA path reads losses back every ``sync_every`` steps: a NaN at step 6 is only seen at the read after
    step 8.  Steps 6 to 8 were applied to the weights in memory, so nothing is saved after them: the error names
    step 6 and the checkpoint on disk stays the one written at the read after step 4."""
    trainer = make_trainer(tmp_path, checkpoint_every_s=0.0)
    trainer.sync_every = 4
    real_step = trainer.train_step

    def poisoned(step: int) -> torch.Tensor:
        if step == 5:  # the 6th step: a weight goes bad, every loss from here on is NaN
            with torch.no_grad():
                trainer.model.conv_in.weight[0, 0, 0, 0] = float("nan")
        return real_step(step)

    monkeypatch.setattr(trainer, "train_step", poisoned)
    seen = []
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 6; .*\(step 4\) was kept"):
        trainer.train(callback=lambda p: seen.append(p.step), max_steps=12)
    assert seen == [4] and trainer.step == 8  # one report before the NaN; caught at the read after step 8
    state = json.loads((tmp_path / ckpt.STATE_CONFIG_NAME).read_text())
    saved = load_checkpoint(tmp_path).model
    assert state["step"] == 4 and all(torch.isfinite(p).all() for p in saved.parameters())
    assert [int(r["step"]) for r in log_rows(tmp_path)] == [1, 2, 3, 4]  # no NaN row reaches the log


def test_an_ema_update_moves_each_weight_by_one_minus_the_warmed_up_decay(tiny_config):
    from ddpm.training import EMA
    from ddpm.unet import build_unet

    torch.manual_seed(0)
    model = build_unet(tiny_config)
    ema = EMA(model, decay=0.9)
    start = [p.detach().clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    live = [p.detach().clone() for p in model.parameters()]
    ema.update(model, step=0)  # warm-up: d = min(0.9, (1 + 0)/(10 + 0)) = 0.1
    for e, s0, m in zip(ema.model.parameters(), start, live):
        torch.testing.assert_close(e, 0.1 * s0 + 0.9 * m)
    after_first = [p.detach().clone() for p in ema.model.parameters()]
    ema.update(model, step=1000)  # (1 + 1000)/(10 + 1000) > 0.9: the decay itself
    for e, s1, m in zip(ema.model.parameters(), after_first, live):
        torch.testing.assert_close(e, 0.9 * s1 + 0.1 * m)
    assert all(torch.equal(p, m) for p, m in zip(model.parameters(), live))  # the live model is only read
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_non_finite_loss_without_an_output_folder_says_nothing_was_saved(make_trainer, monkeypatch):
    import ddpm.training

    real = ddpm.training.diffusion_loss
    calls = []

    def nan_on_second_call(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(ddpm.training, "diffusion_loss", nan_on_second_call)
    trainer = make_trainer()
    with pytest.raises(NonFiniteLossError, match=r"at step 2; .*nothing was saved"):
        trainer.train()
    assert trainer.step == 1  # the NaN step was never applied


def test_resume_without_optimizer_moments_restarts_warmup_from_the_saved_step(make_trainer, tmp_path):
    make_trainer(tmp_path).train(max_steps=3)
    raw = load_file(str(tmp_path / ckpt.STATE_NAME))
    (tmp_path / ckpt.OPTIMIZER_NAME).unlink()  # shipped checkpoints leave the Adam moments out

    resumed = make_trainer(tmp_path, resume=True)
    assert resumed.step == 3 and resumed.warmup_offset == 3
    assert all(torch.equal(raw[k], v) for k, v in resumed.model.state_dict().items())
    assert resumed.lr_at(3) == pytest.approx(0.5e-3) and resumed.lr_at(4) == pytest.approx(1e-3)
    result = resumed.train(max_steps=5)
    assert result.steps == 5 and math.isfinite(result.final_loss)
    assert (tmp_path / ckpt.OPTIMIZER_NAME).is_file()


def test_resume_from_an_empty_folder_is_a_checkpoint_error(make_trainer, tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        make_trainer(tmp_path, resume=True)


def test_batches_of_an_epoch_use_each_image_at_most_once(make_trainer, tiny_images):
    trainer = make_trainer(images=tiny_images[:10], batch_size=3)
    assert trainer.steps_per_epoch == 3
    epochs = [torch.cat([trainer.batch_indices(s) for s in range(e * 3, e * 3 + 3)]) for e in range(3)]
    for idx in epochs:
        assert len(idx) == 9 and len(set(idx.tolist())) == 9 and 0 <= idx.min() and idx.max() < 10
    assert not torch.equal(epochs[0], epochs[1])  # a new permutation each epoch
    again = make_trainer(images=tiny_images[:10], batch_size=3)
    assert torch.equal(again.batch_indices(4), trainer.batch_indices(4))  # seeded: reproducible
    other_seed = make_trainer(images=tiny_images[:10], batch_size=3, seed=99)
    assert not torch.equal(other_seed.batch_indices(0), trainer.batch_indices(0))


@pytest.mark.parametrize("images, message", [
    (torch.zeros(16, 3, 28, 28), "uint8"),
    (torch.zeros(16, 1, 28, 28, dtype=torch.uint8), r"\(N, 3, H, W\)"),
    (torch.zeros(16, 28, 28, dtype=torch.uint8), "uint8 tensor"),
    (torch.zeros(16, 3, 32, 32, dtype=torch.uint8), "built for 28"),
    (torch.zeros(3, 3, 28, 28, dtype=torch.uint8), "cannot fill one batch of 4"),
])
def test_trainer_rejects_bad_images_with_value_error(make_trainer, images, message):
    with pytest.raises(ValueError, match=message):
        make_trainer(images=images)


@pytest.mark.parametrize("field, value", [
    ("lr", 0.0), ("lr", 0.5), ("batch_size", 0), ("max_steps", 0), ("warmup_steps", -1), ("ema_decay", 1.0),
    ("grad_clip", 0.0), ("optimizer", "sgd"), ("loss_weighting", "p2"), ("precision", "fp16"),
])
def test_train_config_rejects_out_of_range_values_naming_them(field, value):
    with pytest.raises(ValueError, match=f"invalid training settings: {field}="):
        TrainConfig(**{field: value})


def test_train_config_round_trips_and_ignores_the_counters_saved_beside_it(tiny_train_config):
    saved = {**tiny_train_config.to_dict(), "steps": 6, "epochs": 1.5, "device": "cpu"}
    assert TrainConfig.from_dict(json.loads(json.dumps(saved))) == tiny_train_config


# ---- tissue-conditional training ------------------------------------------------------------------
@pytest.fixture
def conditional_config(tiny_config) -> UNetConfig:
    return UNetConfig.from_dict({**tiny_config.to_dict(), "num_classes": 9})


@pytest.fixture
def make_conditional_trainer(conditional_config, tiny_schedule_config, tiny_train_config, tiny_images):
    def make(labels: torch.Tensor | None = None, out_dir: Path | None = None, **train_overrides) -> Trainer:
        labels = torch.arange(len(tiny_images)) % 9 if labels is None else labels
        return Trainer(conditional_config, tiny_schedule_config, replace(tiny_train_config, **train_overrides), tiny_images,
                       out_dir=out_dir, device="cpu", labels=labels)

    return make


@pytest.mark.parametrize("labels, message", [
    (None, "needs one label per image; got none for 16 images"),
    (torch.zeros(15, dtype=torch.long), r"needs one label per image; got \(15,\)"),
    (torch.full((16,), 9), r"labels must lie in \[0, 8\], got \[9, 9\]"),
    (torch.tensor([-1] + [0] * 15), r"labels must lie in \[0, 8\], got \[-1, 0\]"),
])
def test_a_conditional_model_without_valid_labels_is_refused_before_training(conditional_config, tiny_schedule_config,
                                                                           tiny_train_config, tiny_images, labels, message):
    with pytest.raises(ValueError, match=message):
        Trainer(conditional_config, tiny_schedule_config, tiny_train_config, tiny_images, device="cpu", labels=labels)


def record_labels(trainer: Trainer) -> list[torch.Tensor]:
    """Wrap the trainer's network call; returns the list every train step's labels are appended to."""
    seen, inner = [], trainer.forward

    def forward(x, t, labels=None):
        seen.append(labels.clone())
        return inner(x, t, labels)

    trainer.forward = forward
    return seen


def test_with_p_uncond_1_every_label_reaching_the_model_is_no_class(make_conditional_trainer):
    trainer = make_conditional_trainer(p_uncond=1.0)
    seen = record_labels(trainer)
    trainer.train(max_steps=3)
    assert len(seen) == 3
    assert all(s.tolist() == [9] * 4 for s in seen)


def test_with_p_uncond_0_the_model_sees_each_images_own_label(make_conditional_trainer):
    labels = torch.arange(16) % 9
    trainer = make_conditional_trainer(labels=labels, p_uncond=0.0)
    seen = record_labels(trainer)
    trainer.train(max_steps=3)
    assert len(seen) == 3
    for step, s in enumerate(seen):
        assert s.tolist() == labels[trainer.batch_indices(step)].tolist()
        assert 9 not in s.tolist()


def test_a_conditional_trainer_initialised_from_unconditional_weights_computes_what_they_computed(tiny_config, probe_input):
    torch.manual_seed(5)
    init = build_unet(tiny_config).eval()
    with torch.no_grad():
        for p in init.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trainer = Trainer(UNetConfig.from_dict({**tiny_config.to_dict(), "num_classes": 9}), ScheduleConfig(num_timesteps=20),
                      TrainConfig(batch_size=4, precision="fp32"), torch.zeros(8, 3, 28, 28, dtype=torch.uint8),
                      device="cpu", init_model=init, labels=torch.zeros(8, dtype=torch.long))
    x, t = probe_input
    with torch.inference_mode():
        assert torch.equal(trainer.model.eval()(x, t, torch.tensor([3, 9])), init(x, t))


def test_cosine_decay_starts_at_lr_after_warm_up_halves_midway_and_ends_near_zero(make_trainer):
    trainer = make_trainer(lr=1e-3, warmup_steps=10, max_steps=110, lr_decay="cosine")
    assert trainer.lr_at(4) == pytest.approx(5e-4)  # warm-up is unchanged
    assert trainer.lr_at(9) == pytest.approx(1e-3)  # end of warm-up
    assert trainer.lr_at(10) == pytest.approx(1e-3)
    assert trainer.lr_at(60) == pytest.approx(5e-4)  # half-way through the decay
    assert trainer.lr_at(110) == pytest.approx(0.0, abs=1e-12)
    decay = [trainer.lr_at(s) for s in range(10, 111)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert make_trainer(lr=1e-3, warmup_steps=10, max_steps=110).lr_at(100) == pytest.approx(1e-3)  # "none": constant


@pytest.mark.parametrize("field, value", [("p_uncond", 1.5), ("p_uncond", -0.1), ("lr_decay", "x")])
def test_train_config_rejects_p_uncond_outside_0_1_and_unknown_lr_decay(field, value):
    with pytest.raises(ValueError, match=f"invalid training settings: {field}="):
        TrainConfig(**{field: value})


def test_a_time_limit_of_zero_stops_at_once_and_reports_stopped(make_trainer, tmp_path):
    trainer = make_trainer(tmp_path)
    result = trainer.train(time_limit_s=0)
    assert result.stopped and result.steps == 0 and trainer.step == 0
    assert json.loads((tmp_path / ckpt.CONFIG_NAME).read_text())["training"]["steps"] == 0  # saved all the same


def test_a_conditional_run_on_the_bundled_subset_saves_a_loadable_nine_class_checkpoint(conditional_config,
                                                                                      tiny_schedule_config, tmp_path):
    data = load_subset()
    trainer = Trainer(conditional_config, tiny_schedule_config,
                      TrainConfig(batch_size=8, max_steps=2, warmup_steps=1, precision="fp32", ema_decay=0.9),
                      data.images, out_dir=tmp_path, device="cpu", labels=data.labels,
                      extra_config={"class_names": list(CLASS_NAMES)})
    result = trainer.train()
    assert result.steps == 2 and not result.stopped
    config = json.loads((tmp_path / ckpt.CONFIG_NAME).read_text())
    assert config["model"]["num_classes"] == 9 and config["training"]["steps"] == 2
    assert config["training"]["num_train_images"] == len(data) == 1800
    loaded = load_checkpoint(tmp_path)
    assert loaded.model_config.num_classes == 9
    assert loaded.model.class_embed.embedding.num_embeddings == 10
    assert_same_weights(loaded.model, trainer.sampling_model())


# ---- the run's folder: a new run, a resume on other data, files that cannot be read -------------------
def test_a_new_run_into_a_folder_that_holds_a_run_is_refused_naming_the_folder_and_the_ways_on(make_trainer, tmp_path):
    make_trainer(tmp_path).train(max_steps=2)
    saved = file_bytes(tmp_path)
    with pytest.raises(FileExistsError) as err:
        make_trainer(tmp_path, lr=2e-3)
    message = str(err.value)
    assert f"{tmp_path} already holds a training run" in message
    assert all(way in message for way in ("--resume", "another --out", "--overwrite"))
    assert file_bytes(tmp_path) == saved


def test_overwrite_replaces_the_old_run_without_mixing_its_log_or_evaluation_into_the_new_one(make_trainer, tmp_path):
    make_trainer(tmp_path).train(max_steps=5)
    (tmp_path / "evaluation.json").write_text("{}")  # evaluated from the old weights
    (tmp_path / "notes.txt").write_text("mine")
    trainer = make_trainer(tmp_path, overwrite=True, seed=11)
    assert trainer.step == 0
    trainer.train(max_steps=2)
    assert [r["step"] for r in log_rows(tmp_path)] == ["1", "2"]
    assert json.loads((tmp_path / ckpt.CONFIG_NAME).read_text())["training"]["seed"] == 11
    assert not (tmp_path / "evaluation.json").exists() and (tmp_path / "notes.txt").read_text() == "mine"


def test_resume_on_other_data_is_refused_unless_allowed_and_then_the_new_data_is_recorded(make_trainer, tiny_config,
                                                                                           tiny_schedule_config,
                                                                                           tiny_train_config, tiny_images,
                                                                                           tmp_path):
    make_trainer(tmp_path).train(max_steps=2)
    other = tiny_images.flip(0)

    def resume(**kwargs) -> Trainer:
        return Trainer(tiny_config, tiny_schedule_config, tiny_train_config, other, out_dir=tmp_path, device="cpu",
                       resume=True, extra_config={"data": "other patches"}, **kwargs)

    with pytest.raises(ValueError, match=r"--resume: the run in .* trained on unnamed data \(16 images.* but this is "
                                         r"other patches \(16 images.*--allow-data-change"):
        resume()
    trainer = resume(allow_data_change=True)
    assert trainer.step == 2 and "going on with the new data" in trainer.warnings[0]
    trainer.train(max_steps=3)
    assert resume().step == 3  # the data it now trains on is recorded


def test_resume_of_a_run_saved_without_a_data_identity_goes_on_with_a_warning(make_trainer, tmp_path):
    make_trainer(tmp_path).train(max_steps=2)
    state = json.loads((tmp_path / ckpt.STATE_CONFIG_NAME).read_text())
    del state["data"]
    (tmp_path / ckpt.STATE_CONFIG_NAME).write_text(json.dumps(state))
    trainer = make_trainer(tmp_path, resume=True)
    assert trainer.step == 2
    assert trainer.warnings == [f"{tmp_path / ckpt.STATE_CONFIG_NAME} records no data identity (saved by an older "
                                "ddpm), so ddpm cannot check that this data (16 images) is what the run trained on; it "
                                "is recorded from the next save on"]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def edit_state(**changes):
    def edit(path: Path) -> None:
        state = json.loads(path.read_text())
        state.update(changes)
        path.write_text(json.dumps({k: v for k, v in state.items() if v is not DROP}))

    return edit


DROP = object()


@pytest.mark.parametrize("name, damage, message", [
    (ckpt.OPTIMIZER_NAME, truncate, "optimizer.safetensors cannot be read (Error while deserializing header"),
    (ckpt.OPTIMIZER_NAME, lambda p: save_file({"moments": torch.zeros(2)}, str(p)),
     "optimizer.safetensors does not fit this network's optimizer"),
    (ckpt.STATE_NAME, truncate, "training_state.safetensors cannot be read (Error while deserializing header"),
    (ckpt.WEIGHTS_NAME, truncate, "model.safetensors is not a readable safetensors file"),
    (ckpt.STATE_CONFIG_NAME, truncate, "training_state.json is not readable JSON"),
    (ckpt.STATE_CONFIG_NAME, lambda p: p.unlink(), "training_state.json is missing beside training_state.safetensors"),
    (ckpt.STATE_CONFIG_NAME, lambda p: p.write_text("[1, 2]"), "training_state.json must hold a JSON object"),
    (ckpt.STATE_CONFIG_NAME, edit_state(step=DROP), "training_state.json has no step"),
    (ckpt.STATE_CONFIG_NAME, edit_state(step="3"), "training_state.json holds invalid step='3'"),
    (ckpt.STATE_CONFIG_NAME, edit_state(step=-1), "training_state.json holds invalid step=-1"),
    (ckpt.STATE_CONFIG_NAME, edit_state(param_groups={"lr": 1}), "training_state.json holds invalid param_groups"),
    (ckpt.STATE_CONFIG_NAME, edit_state(param_groups=[{"lr": 1e-3}]),
     "optimizer.safetensors does not fit this network's optimizer with the param_groups of"),
    (ckpt.STATE_CONFIG_NAME, edit_state(train_seconds=float("nan")), "training_state.json holds invalid train_seconds=nan"),
    (ckpt.LOG_NAME, lambda p: p.write_bytes(b"\xff\xfe\x00"), "training_log.csv cannot be read"),
])
def test_every_file_read_on_resume_that_is_damaged_is_a_checkpoint_error_naming_it(make_trainer, tmp_path, name,
                                                                                    damage, message):
    make_trainer(tmp_path).train(max_steps=2)
    damage(tmp_path / name)
    with pytest.raises(CheckpointError) as err:
        make_trainer(tmp_path, resume=True)
    assert f"{tmp_path}/{message}" in str(err.value)


def test_resume_of_a_set_half_written_by_an_older_ddpm_is_refused_not_trained_twice(make_trainer, tmp_path):
    make_trainer(tmp_path).train(max_steps=2)
    config = json.loads((tmp_path / ckpt.CONFIG_NAME).read_text())
    config["training"]["steps"] = 3  # config.json of step 3 beside the state of step 2: a save killed half-way
    (tmp_path / ckpt.CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json is at step 3 but .*training_state.json at step 2"):
        make_trainer(tmp_path, resume=True)


def test_a_shipped_checkpoint_without_a_commit_record_or_optimizer_moments_resumes(tmp_path):
    from ddpm.checkpoints import SHIPPED_DIR, configs_from, read_config

    run = tmp_path / "seed"
    shutil.copytree(SHIPPED_DIR / "seed", run)
    config = read_config(run)
    model_config, schedule_config = configs_from(config, run)
    steps = config["training"]["steps"]
    train = replace(TrainConfig.from_dict(config["training"]), batch_size=8, max_steps=steps + 1, precision="fp32")
    data = load_subset()
    trainer = Trainer(model_config, schedule_config, train, data.images, out_dir=run, device="cpu", resume=True,
                      labels=data.labels, extra_config={"data": data.source})
    assert trainer.step == steps and trainer.warmup_offset == steps
    assert "records no data identity" in trainer.warnings[0]
    assert trainer.train().steps == steps + 1
    assert json.loads((run / ckpt.STATE_CONFIG_NAME).read_text())["data"]["count"] == len(data)


def stop_after_step(trainer: Trainer, monkeypatch, stop_at: int, poison_at: int | None = None) -> threading.Event:
    """Wrap train_step: set the returned event once step ``stop_at`` (1-based) is done; from step ``poison_at`` on,
    a weight is NaN (so is every loss)."""
    stop, real_step = threading.Event(), trainer.train_step

    def step_then_maybe_stop(step: int) -> torch.Tensor:
        if poison_at is not None and step + 1 == poison_at:
            with torch.no_grad():
                trainer.model.conv_in.weight[0, 0, 0, 0] = float("nan")
        loss = real_step(step)
        if step + 1 == stop_at:
            stop.set()
        return loss

    monkeypatch.setattr(trainer, "train_step", step_then_maybe_stop)
    return stop


def test_with_loss_reads_every_4_steps_a_stop_between_reads_logs_the_unread_steps_before_saving_them(make_trainer,
                                                                                                    tmp_path,
                                                                                                    monkeypatch):
    trainer = make_trainer(tmp_path)
    trainer.sync_every = 4
    seen = []
    result = trainer.train(callback=lambda p: seen.append(p.step), stop_event=stop_after_step(trainer, monkeypatch, 6),
                           max_steps=12)
    assert result.stopped and result.steps == 6 and seen == [4, 6]
    assert json.loads((tmp_path / ckpt.STATE_CONFIG_NAME).read_text())["step"] == 6
    assert [int(r["step"]) for r in log_rows(tmp_path)] == [1, 2, 3, 4, 5, 6]  # the saved steps are all logged


def test_with_loss_reads_every_4_steps_a_nan_between_reads_then_a_stop_is_refused_not_saved(make_trainer, tmp_path,
                                                                                          monkeypatch):
    trainer = make_trainer(tmp_path, checkpoint_every_s=0.0)
    trainer.sync_every = 4
    stop = stop_after_step(trainer, monkeypatch, 6, poison_at=5)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 5; .*\(step 4\) was kept"):
        trainer.train(stop_event=stop, max_steps=12)
    assert json.loads((tmp_path / ckpt.STATE_CONFIG_NAME).read_text())["step"] == 4
    assert all(torch.isfinite(p).all() for p in load_checkpoint(tmp_path).model.parameters())
