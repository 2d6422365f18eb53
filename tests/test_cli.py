"""The command line end to end: train a few steps on the bundled subset, then sample, describe and fail clearly."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.checkpoints import CONFIG_NAME, LOG_NAME, OPTIMIZER_NAME, STATE_CONFIG_NAME, STATE_NAME, WEIGHTS_NAME
from ddpm.cli import main

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m ddpm ARGS`` in a child process (training installs signal handlers: keep them out of pytest)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ddpm", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """The paper's network trained for 3 steps on the bundled subset, as the CLI writes it."""
    out = tmp_path_factory.mktemp("cli") / "run"
    proc = run_cli("train", "--preset", "seed", "--subset", "--batch-size", "16", "--steps", "3", "--out", str(out),
                   "--device", "cpu", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert "finished at step 3" in proc.stderr
    return out


def test_train_writes_a_loadable_checkpoint_with_resumable_state_and_a_loss_log(trained_run):
    assert {p.name for p in trained_run.iterdir()} >= {CONFIG_NAME, WEIGHTS_NAME, STATE_NAME, STATE_CONFIG_NAME,
                                                       OPTIMIZER_NAME, LOG_NAME}
    config = json.loads((trained_run / CONFIG_NAME).read_text())
    assert config["preset"] == "seed" and "bundled subset" in config["data"]
    assert (config["training"]["steps"], config["training"]["batch_size"]) == (3, 16)
    assert config["schedule"] == {"kind": "linear", "num_timesteps": 200, "beta_start": 1e-4, "beta_end": 0.02,
                                  "cosine_s": 0.008, "zero_terminal_snr": False, "prediction_type": "epsilon"}
    rows = (trained_run / LOG_NAME).read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["step", "1", "2", "3"]


def test_train_resume_continues_the_run_in_the_output_folder(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    proc = run_cli("train", "--preset", "seed", "--subset", "--batch-size", "16", "--steps", "5", "--out", str(run),
                   "--device", "cpu", "--threads", "1", "--resume")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / STATE_CONFIG_NAME).read_text())["step"] == 5
    assert [r.split(",")[0] for r in (run / LOG_NAME).read_text().splitlines()] == ["step", "1", "2", "3", "4", "5"]


def test_sample_writes_uint8_images_to_npz_and_a_png_grid(trained_run, tmp_path, capsys):
    out = tmp_path / "samples"
    assert main(["sample", "--checkpoint", str(trained_run), "-n", "5", "--sampler", "ddim", "--steps", "4",
                 "--seed", "1", "--out", str(out), "--device", "cpu"]) == 0
    with np.load(out.with_suffix(".npz")) as f:
        images = f["images"]
    assert images.shape == (5, 28, 28, 3) and images.dtype == np.uint8
    assert images.std() > 0
    with Image.open(out.with_suffix(".png")) as png:
        assert png.mode == "RGB" and png.width > 28 * 2
    assert f"model from local folder {trained_run}" in capsys.readouterr().err


def test_sample_is_reproducible_from_its_seed_and_accepts_an_output_name_with_extension(trained_run, tmp_path):
    for name in ("a", "b.png"):
        assert main(["sample", "--checkpoint", str(trained_run), "-n", "3", "--steps", "3", "--seed", "7",
                     "--out", str(tmp_path / name), "--device", "cpu"]) == 0
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert np.array_equal(a["images"], b["images"])
    assert (tmp_path / "b.png").is_file()


def test_info_prints_the_checkpoint_summary_as_json(trained_run, capsys):
    assert main(["info", str(trained_run)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["parameters"] == 155_939 and summary["preset"] == "seed"
    assert summary["source"] == f"local folder {trained_run}"
    assert summary["terminal_signal_sqrt_alphas_cumprod_T"] == pytest.approx(0.36, abs=0.01)
    assert summary["terminal_snr"] > 0 and summary["weights_dtype"] == "float32"
    assert summary["training"]["steps"] == 3


def test_a_missing_checkpoint_path_exits_non_zero_with_a_clear_message(tmp_path):
    proc = run_cli("info", str(tmp_path / "no-such-run"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ")
    assert f"'{tmp_path / 'no-such-run'}' is neither a checkpoint folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_corrupt_checkpoint_exits_non_zero_naming_the_file(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / WEIGHTS_NAME).write_bytes(b"\0" * 100)
    assert main(["sample", "--checkpoint", str(run), "-n", "1", "--out", str(tmp_path / "s")]) == 2
    assert f"error: {run / WEIGHTS_NAME} is not a readable safetensors file" in capsys.readouterr().err
    assert not (tmp_path / "s.npz").exists()


def test_a_checkpoint_with_nan_weights_is_refused_not_sampled_into_black_images(trained_run, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    state = load_file(str(run / WEIGHTS_NAME))
    name = sorted(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)[0]
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(run / WEIGHTS_NAME))
    assert main(["sample", "--checkpoint", str(run), "-n", "1", "--steps", "2", "--out", str(tmp_path / "s"),
                 "--device", "cpu"]) == 2
    assert f"error: {run / WEIGHTS_NAME}: tensor {name!r} holds" in capsys.readouterr().err
    assert not (tmp_path / "s.npz").exists()


def test_ddpm_sampling_with_fewer_steps_than_T_is_refused_clearly(trained_run, tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(trained_run), "--sampler", "ddpm", "--steps", "50", "-n", "1",
                 "--out", str(tmp_path / "s"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "error: DDPM ancestral sampling uses all T = 200 steps; use 'ddim' or 'dpmpp' for fewer" in err
    assert not (tmp_path / "s.npz").exists()


@pytest.mark.parametrize("steps", ["0", "201"])
def test_out_of_range_step_counts_are_refused_not_silently_replaced(trained_run, tmp_path, capsys, steps):
    assert main(["sample", "--checkpoint", str(trained_run), "--sampler", "ddim", "--steps", steps, "-n", "1",
                 "--out", str(tmp_path / "s"), "--device", "cpu"]) == 2
    assert f"steps must be between 1 and T = 200, got {steps}" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--preset", "seed", "--batch-size", "5000"], "1800 images cannot fill one batch of 5000; lower --batch-size"),
    (["--preset", "seed", "--epochs", "1", "--batch-size", "5000"], "1800 images cannot fill one step of 5000"),
])
def test_train_with_bad_settings_exits_non_zero_before_training(tmp_path, capsys, args, message):
    assert main(["train", "--subset", "--out", str(tmp_path / "run"), "--device", "cpu", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_unknown_preset_is_refused_by_the_parser_naming_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--subset", "--out", "x", "--preset", "huge"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'huge'" in err and all(name in err for name in ("seed", "small", "large", "gpu"))


def test_the_clis_preset_names_are_the_presets():
    from ddpm.cli_options import PRESET_NAMES, SAMPLER_NAMES
    from ddpm.presets import PRESETS
    from ddpm.samplers import SAMPLERS

    assert PRESET_NAMES == tuple(PRESETS) and set(SAMPLER_NAMES) == set(SAMPLERS)


# ---- outputs, resume, init-from, precision --------------------------------------------------------
@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_an_out_that_cannot_be_written_is_a_clear_error_before_any_work(command, capsys):
    assert main([command, "--out", "/proc/nope/x.npz", "-n", "50"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write into /proc/nope") and "choose an --out" in err
    assert "model from" not in err  # refused before loading anything


def test_the_write_check_leaves_no_folder_behind(tmp_path):
    from ddpm.cli_options import writable_folder

    writable_folder(tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []


def test_resume_refuses_flags_that_contradict_the_runs_config_listing_each(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main(["train", "--subset", "--out", str(run), "--resume", "--timesteps", "100", "--batch-size", "32",
                 "--prediction", "v_prediction", "--preset", "small"]) == 2
    err = capsys.readouterr().err
    for part in ("--timesteps 100 (the run has num_timesteps = 200)", "--batch-size 32 (the run has batch_size = 16)",
                 "--prediction v_prediction (the run has prediction_type = 'epsilon')",
                 "--preset small (the run has preset = 'seed')", "Drop them, or train into a new --out"):
        assert part in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_resume_takes_the_runs_config_as_the_truth_without_repeating_its_flags(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    # no --preset seed, no --batch-size 16: the defaults (small, 128) would contradict the run, its config wins
    proc = run_cli("train", "--subset", "--out", str(run), "--resume", "--steps", "4", "--batch-size", "16",
                   "--device", "cpu", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    config = json.loads((run / CONFIG_NAME).read_text())
    assert config["preset"] == "seed" and config["model"]["architecture"] == "seed"
    assert (config["training"]["steps"], config["training"]["batch_size"]) == (4, 16)


def test_init_from_a_checkpoint_of_another_architecture_is_a_clear_error(trained_run, tmp_path):
    proc = run_cli("train", "--preset", "small", "--subset", "--init-from", str(trained_run), "--steps", "1",
                   "--out", str(tmp_path / "run"), "--device", "cpu", "--threads", "1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: the weights do not fit this network")
    assert "--init-from needs a checkpoint of the same architecture" in proc.stderr


def test_sample_says_its_precision_and_fp32_repeats_bit_for_bit(trained_run, tmp_path, capsys):
    for name in ("a", "b"):
        assert main(["sample", "--checkpoint", str(trained_run), "-n", "2", "--steps", "2", "--seed", "3",
                     "--out", str(tmp_path / name), "--device", "cpu", "--threads", "1"]) == 0
    assert "precision: fp32 (--precision fp32; same images on any CPU for the same seed), 1 CPU thread(s)" \
        in capsys.readouterr().err
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert np.array_equal(a["images"], b["images"])
    assert main(["sample", "--checkpoint", str(trained_run), "-n", "1", "--steps", "2", "--precision", "bf16",
                 "--out", str(tmp_path / "c"), "--device", "cpu"]) == 0
    assert "precision: bf16 autocast (--precision bf16" in capsys.readouterr().err


def test_steps_for_epochs_counts_the_data_once_per_epoch_whatever_the_ranks():
    from ddpm.cli import steps_for_epochs

    assert steps_for_epochs(1, 1800, 100, 1) == 18
    assert steps_for_epochs(1, 1800, 100, 2) == 9  # two ranks take 200 images a step
    assert steps_for_epochs(2.5, 1800, 100, 2) == 22


# ---- --help -----------------------------------------------------------------------------------------
COMMANDS = ["train", "sample", "info", "pack-data", "download", "evaluate", "train-encoder", "push", "quiz-report"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_of_every_command_has_help_its_default_and_examples(command, capsys):
    from ddpm.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    parser = sub.choices[command]
    for action in parser._actions:
        assert action.help, f"{command} {action.option_strings or action.dest} has no help line"
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    for action in parser._actions:
        if action.option_strings and action.default not in (None, False, "==SUPPRESS=="):
            assert "default" in (action.help or "") or f"(default: {action.default})" in " ".join(text.split())
        if action.choices is not None and action.metavar is None:
            assert "{" + ",".join(map(str, action.choices)) + "}" in text
    examples = text.split("examples:")[1].strip().splitlines()
    assert 2 <= len(examples) <= 4 and all(line.strip().startswith(("python -m ddpm", "torchrun")) for line in examples)


@pytest.mark.parametrize("args", [["--help"], ["sample", "--help"], ["train", "--help"], ["evaluate", "--help"]])
def test_help_imports_neither_torch_nor_numpy(args):
    script = ("import runpy, sys\n"
              f"sys.argv = ['ddpm', *{args!r}]\n"
              "try:\n    runpy.run_module('ddpm', run_name='__main__', alter_sys=True)\n"
              "except SystemExit:\n    pass\n"
              "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stderr.strip().splitlines()[-1] == "[]"
    assert "usage: python -m ddpm" in proc.stdout


# ---- option bounds: refused by the parser (exit 2, one line naming the option, the value and the range) ------------
REQUIRED = {"train": ["--out", "x"], "pack-data": ["--out", "x"]}
BAD_VALUES = [  # (command, option, value, the allowed range as the message says it)
    *[(c, "--threads", "-1", "a whole number ≥ 1") for c in ("train", "sample", "evaluate")],
    *[(c, "--threads", "0", "a whole number ≥ 1") for c in ("train", "sample", "evaluate")],
    *[(c, "--device", "banana", "auto, cpu, cuda or cuda:N") for c in ("train", "sample", "evaluate")],
    *[(c, "--seed", v, "a whole number from 0 to 4294967295") for c in ("train", "sample", "evaluate", "train-encoder")
      for v in ("1e20", "100000000000000000000", "-1", "1.5")],
    *[("train", "--epochs", v, "a finite number > 0") for v in ("inf", "nan", "0", "-2")],
    ("train", "--max-minutes", "-1", "a finite number > 0"),
    ("train", "--checkpoint-every", "nan", "a finite number > 0"),
    ("train", "--lr", "nan", "a finite number > 0"),
    ("train", "--steps", "0", "a whole number ≥ 1"),
    ("train", "--batch-size", "0", "a whole number ≥ 1"),
    ("sample", "--batch-size", "-4", "a whole number ≥ 1"),
    ("train-encoder", "--epochs", "0", "a whole number ≥ 1"),
    *[("pack-data", "--shard-mb", v, "a finite number > 0") for v in ("nan", "inf", "0")],
]


@pytest.mark.parametrize("command, option, value, allowed", BAD_VALUES)
def test_an_option_outside_its_range_is_a_usage_error_naming_option_value_and_range(command, option, value, allowed,
                                                                                     capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, *REQUIRED.get(command, []), f"{option}={value}"])
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"python -m ddpm {command}: error: argument {option}: must be {allowed}, got {value!r}"


@pytest.mark.parametrize("option, validator", [("--threads", "positive_int"), ("--seed", "seed_int"),
                                               ("--device", "device_name")])
def test_every_command_with_a_shared_option_bounds_it_with_the_same_type(option, validator):
    import argparse

    from ddpm import cli_options
    from ddpm.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    found = [(name, a.type) for name, parser in sub.choices.items() for a in parser._actions if option in a.option_strings]
    assert len(found) >= 3
    assert all(t is getattr(cli_options, validator) for _, t in found), found


def test_good_values_pass_the_option_types_unchanged():
    from ddpm.cli_options import device_name, finite_positive_float, positive_int, seed_int

    assert [positive_int("3"), seed_int("0"), seed_int("4294967295")] == [3, 0, 2**32 - 1]
    assert finite_positive_float("0.25") == 0.25 and finite_positive_float("1e-3") == 1e-3
    assert [device_name(d) for d in ("auto", "cpu", "cuda", "cuda:1")] == ["auto", "cpu", "cuda", "cuda:1"]


@pytest.mark.parametrize("args", [["sample", "--threads", "-1"], ["train", "--out", "x", "--epochs", "inf"],
                                  ["pack-data", "--out", "x", "--shard-mb", "nan"]])
def test_a_bad_option_value_ends_without_a_traceback_or_any_work(args, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ddpm", *args], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"python -m ddpm {args[0]}: error: argument ")
    assert list(tmp_path.iterdir()) == []


def test_steps_for_epochs_refuses_epochs_that_are_not_a_finite_positive_number():
    from ddpm.cli import steps_for_epochs

    for epochs in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="--epochs must be a finite number > 0"):
            steps_for_epochs(epochs, 1800, 100, 1)


# ---- sampling settings from the command line: refused, never silently wrong (issue 15) --------------
@pytest.mark.parametrize("guidance", ["nan", "inf", "-inf", "1e9", "-1", "6.5"])
def test_sample_refuses_a_guidance_that_is_not_finite_or_outside_0_to_6(tmp_path, capsys, guidance):
    assert main(["sample", "--checkpoint", "default", f"--guidance={guidance}", "-n", "2", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "guidance" in err and "must be a finite number in [0, 6]" in err
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("command, n", [("sample", "0"), ("sample", "-3"), ("evaluate", "0")])
def test_a_sample_count_below_one_is_a_clear_error_before_any_work(tmp_path, capsys, command, n):
    assert main([command, "--checkpoint", "default", "-n", n, "--out", str(tmp_path / "s")]) == 2
    assert f"-n must be at least 1, got {n}" in capsys.readouterr().err


def test_eta_belongs_to_ddim_and_a_bad_one_is_refused(tmp_path, capsys):
    out = str(tmp_path / "s")
    assert main(["sample", "--checkpoint", "default", "--sampler", "dpmpp", "--eta", "0.5", "-n", "1", "--out", out]) == 2
    assert "DDIM's setting" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", "default", "--sampler", "ddim", "--eta", "2", "-n", "1", "--out", out]) == 2
    assert "eta = 2.0 must be a number in [0, 1]" in capsys.readouterr().err
