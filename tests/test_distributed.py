"""Data-parallel training with gloo on CPU processes, and resuming it with another world size."""
from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from ddpm.schedules import ScheduleConfig
from ddpm.training import TrainConfig, Trainer
from ddpm.unet import UNetConfig

MODEL = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(), norm_groups=4)
TRAIN = TrainConfig(batch_size=4, max_steps=3, warmup_steps=0, precision="fp32", augment=True, checkpoint_every_s=1e9)


def _images(n: int = 40) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 28, 28), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def _worker(rank: int, world: int, init_file: str, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        trainer = Trainer(MODEL, ScheduleConfig(), TRAIN, _images(), out_dir=os.path.join(tmp, "run"), device="cpu")
        indices = [trainer.batch_indices(s).tolist() for s in range(trainer.steps_per_epoch)]
        trainer.train()
        save_file({k: v.contiguous() for k, v in trainer.model.state_dict().items()}, os.path.join(tmp, f"rank{rank}.safetensors"))
        with open(os.path.join(tmp, f"indices{rank}.json"), "w") as f:
            json.dump(indices, f)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, str(tmp / "init"), str(tmp)), nprocs=2, join=True)
    return tmp


def test_two_gloo_ranks_end_with_identical_weights(two_rank_run):
    a, b = load_file(str(two_rank_run / "rank0.safetensors")), load_file(str(two_rank_run / "rank1.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    initial = Trainer(MODEL, ScheduleConfig(), TRAIN, _images(), device="cpu").model.state_dict()
    assert any(not torch.equal(a[k], initial[k]) for k in a), "the weights did not move"


def test_ranks_draw_disjoint_shards_of_each_epoch(two_rank_run):
    r0 = json.loads((two_rank_run / "indices0.json").read_text())
    r1 = json.loads((two_rank_run / "indices1.json").read_text())
    seen0, seen1 = {i for b in r0 for i in b}, {i for b in r1 for i in b}
    assert not seen0 & seen1
    assert len(seen0) == len(seen1) == sum(map(len, r0)) == 20  # 40 images, 2 ranks, batch 4: 5 steps per epoch


def test_only_rank_zero_writes_one_checkpoint(two_rank_run):
    run = two_rank_run / "run"
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["config.json", "model.safetensors", "optimizer.safetensors", "training_log.csv", "training_state.json",
         "training_state.safetensors"])
    state = json.loads((run / "training_state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 3 and state["images_seen"] == 3 * 4 * 2
    config = json.loads((run / "config.json").read_text())
    assert config["training"]["effective_batch"] == 8
    log_steps = [int(line.split(",")[0]) for line in (run / "training_log.csv").read_text().splitlines()[1:]]
    assert log_steps == [1, 2, 3]


def test_a_two_rank_run_resumes_in_one_process(two_rank_run):
    run = two_rank_run / "run"
    trainer = Trainer(MODEL, ScheduleConfig(), TRAIN, _images(), out_dir=run, device="cpu", resume=True)
    saved = load_file(str(two_rank_run / "rank0.safetensors"))
    assert trainer.step == 3
    assert all(torch.equal(trainer.model.state_dict()[k], saved[k]) for k in saved)
    trainer.train(max_steps=5)
    state = json.loads((run / "training_state.json").read_text())
    assert state["step"] == 5 and state["world_size"] == 1 and state["images_seen"] == 3 * 8 + 2 * 4


def _cli_worker(rank: int, world: int, port: int, out: str) -> None:
    """One torchrun rank of `python -m ddpm train --epochs 1`: the environment torchrun sets, then the CLI."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    from ddpm.cli import main

    code = main(["train", "--preset", "seed", "--subset", "--epochs", "1", "--batch-size", "100", "--device", "cpu",
                 "--threads", "1", "--out", out])
    if code:
        raise SystemExit(code)


def test_epochs_under_two_ranks_means_that_many_passes_over_the_data_not_twice_as_many(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_cli_worker, args=(2, port, str(tmp_path / "run")), nprocs=2, join=True)
    training = json.loads((tmp_path / "run" / "config.json").read_text())["training"]
    # 1,800 subset patches, 2 ranks × 100 a step: one epoch is 9 steps (18 would be two epochs)
    assert (training["steps"], training["world_size"], training["epochs"]) == (9, 2, 1.0)
    assert training["images_seen"] == 1800
