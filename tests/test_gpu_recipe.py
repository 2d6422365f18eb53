"""The GPU session, rehearsed on the CPU: bench/gpu_session.sh stages a pack and trains the `gpu` preset from
it, and bench/gpu_speed.py's recipe picks the batch and torch.compile from a throughput table."""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ddpm.checkpoints import load_checkpoint
from ddpm.data import load_subset, to_hwc_numpy
from ddpm.datapack import manifest_name, write_pack
from ddpm.presets import PRESETS

ROOT = Path(__file__).resolve().parent.parent


def fake_python3(bin_dir: Path) -> Path:
    """``bin_dir/python3``: a script that execs this interpreter by the path it was started with. A symlink would not
    do: a venv's interpreter started through a link outside the venv does not find the venv (nor its packages)."""
    path = bin_dir / "python3"
    path.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    path.chmod(0o755)
    return path


def test_the_fake_python3_is_this_interpreter_with_its_packages(tmp_path):
    probe = "import sys, torch; print(sys.prefix); print(sys.path)"
    proc = subprocess.run([str(fake_python3(tmp_path)), "-c", probe], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == sys.prefix  # a venv's prefix, not its base Python's


@pytest.fixture
def session(tmp_path) -> tuple[Path, dict[str, str]]:
    """A stand-in for the repository as the GPU machine gets it: the script, the package and the shipped
    checkpoints (linked), and gpu_pack/ holding a pack of the bundled subset; nothing is written into the repo."""
    repo = tmp_path / "repo"
    (repo / "bench").mkdir(parents=True)
    shutil.copy(ROOT / "bench" / "gpu_session.sh", repo / "bench" / "gpu_session.sh")
    for name in ("ddpm", "checkpoints"):
        (repo / name).symlink_to(ROOT / name, target_is_directory=True)
    sub = load_subset()
    write_pack(to_hwc_numpy(sub.images), sub.labels.numpy(), repo / "gpu_pack", shard_mb=0.7, method=0, workers=1)
    bin_dir = tmp_path / "bin"  # the script calls `python3`: make it this interpreter
    bin_dir.mkdir()
    fake_python3(bin_dir)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "DATA": str(tmp_path / "data"),
           "OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1"}
    env.pop("REHEARSE", None)
    return repo, env


def run_script(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(repo / "bench" / "gpu_session.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_session_stages_the_pack_and_rehearses_training_the_gpu_preset_on_the_cpu(session):
    repo, env = session
    manifest = json.loads((repo / "gpu_pack" / manifest_name("train")).read_text())
    shards = [str(repo / "gpu_pack" / s["file"]) for s in manifest["shards"]]
    assert len(shards) >= 3
    data = Path(env["DATA"])
    for batch in (shards[:1], shards[1:]):  # one call per shard on the real machine; two calls here
        staged = run_script(repo, env, "stage", *batch)
        assert staged.returncode == 0, staged.stderr
    assert sorted(p.name for p in data.iterdir()) == sorted([manifest_name("train")] + [Path(s).name for s in shards])

    trained = run_script(repo, {**env, "REHEARSE": "1"}, "train", "2", "1", "--batch-size", "8", "--threads", "1")
    assert trained.returncode == 0, trained.stderr
    run = Path(env["OUT"]) / "run"
    ckpt = load_checkpoint(run)
    assert ckpt.model_config == PRESETS["gpu"].model and ckpt.model_config.num_classes == 9
    config = ckpt.config
    assert config["preset"] == "gpu" and config["init_from"] == "checkpoints/default"
    assert config["training"]["steps"] == 2 and config["training"]["batch_size"] == 8
    assert config["training"]["device"] == "cpu"
    assert config["data"] == "PathMNIST train split (1,800 of 1,800 patches, lossless pack)"
    assert "finished at step 2" in trained.stderr


def test_the_session_script_without_a_known_command_prints_its_usage_and_exits_2(session):
    repo, env = session
    proc = run_script(repo, env, "deploy")
    assert proc.returncode == 2 and proc.stderr.startswith("usage:")
    assert not Path(env["DATA"]).exists() and not Path(env["OUT"]).exists()


# ---- bench/gpu_speed.py: the recipe ---------------------------------------------------------------
@pytest.fixture(scope="module")
def gpu_speed():
    spec = importlib.util.spec_from_file_location("gpu_speed_bench", ROOT / "bench" / "gpu_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(batch: int, img_s: float, compile_model: bool = False, warmup_s: float = 5.0, preset: str = "gpu") -> dict:
    return {"preset": preset, "batch": batch, "compile": compile_model, "img_s": img_s, "warmup_s": warmup_s}


EAGER = [row(512, 9_000.0), row(1024, 10_000.0), row(2048, 10_500.0)]


def test_the_recipe_takes_the_smallest_batch_within_10_percent_of_the_most_images(gpu_speed):
    rows = EAGER + [row(256, 50_000.0, preset="seed")]  # other presets' rows do not count
    recipe = gpu_speed.choose(rows, train_seconds=100.0)
    assert recipe["batch"] == 1024  # 10,000 ≥ 0.9 × 10,500; 512's 9,000 is not
    assert recipe["compile"] is False
    assert recipe["images"] == pytest.approx(1_000_000.0)
    assert recipe["steps"] == 1_000_000 // 1024
    assert recipe["epochs"] == pytest.approx(1_000_000 / 89_996)
    assert gpu_speed.choose([row(512, 9_500.0)] + EAGER[1:], 100.0)["batch"] == 512  # 9,500 ≥ 9,450


def test_a_compiled_row_counts_its_compile_time_against_the_training_time(gpu_speed):
    # 13,000 img/s compiled: over 480 s, 60 s of warm-up leaves 5.46 M images, the most: chosen
    pays = gpu_speed.choose(EAGER + [row(1024, 13_000.0, True, warmup_s=60.0)], train_seconds=480.0)
    assert pays["compile"] is True and pays["batch"] == 1024
    assert pays["images"] == pytest.approx(13_000.0 * 420)
    assert pays["steps"] == int(13_000 * 420 // 1024)
    # 200 s of warm-up leaves 3.64 M: the eager rows train more
    slow = gpu_speed.choose(EAGER + [row(1024, 13_000.0, True, warmup_s=200.0)], train_seconds=480.0)
    assert slow["compile"] is False and slow["images"] == pytest.approx(10_000.0 * 480)
    # the H200 measurement of 2026-11-26: 2048 eager trains the most, 1024 compiled is within 10% and smaller
    h200 = [row(512, 11_136.0), row(1024, 16_712.0), row(2048, 18_608.0), row(1024, 20_332.0, True, warmup_s=54.6)]
    recipe = gpu_speed.choose(h200, train_seconds=480.0)
    assert (recipe["batch"], recipe["compile"]) == (1024, True)
