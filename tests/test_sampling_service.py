"""Heavy requests in worker processes (ddpm.serving.sampling_service): same images as in-process, first come first
served, cancelled when nobody waits or past a deadline, and no worker outlives its server."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from ddpm.checkpoints import load_local
from ddpm.data import to_hwc_numpy
from ddpm.pipeline import generate, trajectory
from ddpm.sampling_spec import SamplingSpec
from ddpm.serving.queue import RequestCancelled
from ddpm.serving.sampling_service import RequestFailed, SamplingService
from ddpm.serving.sampling_worker import ModelPayload, SampleRequest
from process_tree import alive, descendants

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from ddpm.checkpoints import make_config, save_checkpoint
    from ddpm.schedules import ScheduleConfig
    from ddpm.unet import UNetConfig, build_unet
    import torch

    config = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(14,),
                        norm_groups=4)
    torch.manual_seed(0)
    model = build_unet(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("tiny")
    save_checkpoint(folder, model, make_config(config, ScheduleConfig(num_timesteps=20)))
    ckpt = load_local(folder)
    return ckpt, ModelPayload.from_checkpoint(ckpt)


@pytest.fixture(scope="module")
def service():
    svc = SamplingService(workers=1, threads=1)
    yield svc
    svc.shutdown()


def request(payload, kind="samples", n=3, seed=0, spec=SamplingSpec("dpmpp", 5), **kw) -> SampleRequest:
    return SampleRequest(kind, payload.key, spec, seed, n, precision="fp32", **kw)


def test_a_workers_samples_and_trajectories_are_bit_identical_to_in_process_ones(service, tiny):
    ckpt, payload = tiny
    got = service.run("ann", payload, request(payload, seed=4), 1.0)
    expected = to_hwc_numpy(generate(ckpt.model, ckpt.schedule, 3, SamplingSpec("dpmpp", 5), seed=4, precision="fp32"))
    np.testing.assert_array_equal(got, expected)
    traj = service.run("ann", payload, request(payload, "trajectory", n=2, seed=1, spec=SamplingSpec("ddim", 4)), 1.0)
    local = trajectory(ckpt.model, ckpt.schedule, 2, SamplingSpec("ddim", 4), seed=1, precision="fp32")
    np.testing.assert_array_equal(traj.samples, local.samples)
    assert traj.timesteps == local.timesteps


def test_visitors_are_served_in_the_order_they_arrived(service, tiny):
    _, payload = tiny
    tickets = [service.submit(f"v{i}", payload, request(payload, n=8, seed=10 + i), 1.0) for i in range(4)]
    results = [service.wait(f"v{i}", t) for i, t in enumerate(tickets)]
    assert all(r.shape == (8, 28, 28, 3) for r in results)
    finished = [t.finished_at for t in tickets]
    assert finished == sorted(finished)
    assert all(t.queued_s is not None and t.compute_s is not None for t in tickets)


def test_a_request_nobody_waits_for_is_stopped_and_frees_the_worker(service, tiny):
    _, payload = tiny
    long = service.submit("ann", payload, request(payload, n=2000, spec=SamplingSpec("ddpm", None)), 1.0)
    while long.status == "queued":
        time.sleep(0.05)
    service.queue.leave("ann", long)  # ann left the page
    assert long.done.wait(30) and long.status == "cancelled" and "nobody waits" in long.error
    quick = service.run("bob", payload, request(payload, n=1, seed=99), 1.0)
    assert quick.shape == (1, 28, 28, 3)


def test_a_new_click_replaces_the_visitors_request_in_flight(service, tiny):
    _, payload = tiny
    first = service.submit("ann", payload, request(payload, n=2000, spec=SamplingSpec("ddpm", None), seed=5), 1.0)
    second = service.submit("ann", payload, request(payload, n=1, seed=6), 1.0)
    with pytest.raises(RequestCancelled):
        service.wait("ann", first)
    assert service.wait("ann", second).shape == (1, 28, 28, 3)


def test_a_request_past_its_deadline_is_stopped_with_a_message(tiny):
    _, payload = tiny
    svc = SamplingService(workers=1, threads=1, max_deadline_s=0.5)
    try:
        with pytest.raises(RequestCancelled, match="past its deadline of 0 s|past its deadline of 1 s"):
            svc.run("ann", payload, request(payload, n=4000, spec=SamplingSpec("ddpm", None)), 1.0)
        svc.max_deadline_s = 600
        assert svc.run("ann", payload, request(payload, n=1), 1.0).shape == (1, 28, 28, 3)
    finally:
        svc.shutdown()


def test_a_worker_that_dies_fails_its_request_and_is_replaced(service, tiny):
    _, payload = tiny
    ticket = service.submit("ann", payload, request(payload, n=2000, spec=SamplingSpec("ddpm", None), seed=7), 1.0)
    while ticket.status == "queued":
        time.sleep(0.05)
    os.kill(service.worker_pids[0], signal.SIGKILL)
    with pytest.raises(RequestFailed, match="stopped unexpectedly"):
        service.wait("ann", ticket)
    assert service.run("ann", payload, request(payload, n=1, seed=8), 1.0).shape == (1, 28, 28, 3)


def test_a_failing_request_says_why(service, tiny):
    _, payload = tiny
    with pytest.raises(RequestFailed, match="unconditional"):
        service.run("ann", payload, request(payload, classes=3), 1.0)


SERVER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from ddpm.serving.sampling_service import SamplingService
    if __name__ == "__main__":  # a child imports this file again, as multiprocessing does
        svc = SamplingService(workers=2, threads=1)
        print(*svc.worker_pids, flush=True)
        time.sleep(float(sys.argv[1]))
""")


def _wait_gone(pids: list[int], seconds: float = 15.0) -> list[int]:
    end = time.monotonic() + seconds
    while time.monotonic() < end and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


@pytest.mark.parametrize("how", ["exits", "is killed"])
def test_no_worker_nor_the_forkserver_outlives_its_server(tmp_path, how):
    script = tmp_path / "server.py"
    script.write_text(SERVER.format(root=str(ROOT)))
    server = subprocess.Popen([sys.executable, str(script), "0.5" if how == "exits" else "60"],
                              stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in server.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)  # the heavy lane's worker starts with its first request
        everyone = descendants(server.pid)  # the workers, the forkserver they were forked from, its resource tracker
        assert set(pids) < everyone
        if how == "is killed":
            server.send_signal(signal.SIGKILL)
        server.wait(60)
        assert _wait_gone(sorted(everyone)) == []
    finally:
        server.kill()
        server.wait()


def test_workers_are_forked_from_one_forkserver_that_imported_torch_for_all_of_them(tiny):
    _, payload = tiny
    svc = SamplingService(workers=2, threads=1, heavy_after_s=None)
    try:
        parents = {int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) for pid in svc.worker_pids}
        assert len(parents) == 1 and os.getpid() not in parents
        forkserver = parents.pop()
        assert b"forkserver" in Path(f"/proc/{forkserver}/cmdline").read_bytes()
        assert "libtorch_cpu" in Path(f"/proc/{forkserver}/maps").read_text()  # torch, once, for every child
        assert svc.run("ann", payload, request(payload, n=1), 1.0).shape == (1, 28, 28, 3)
    finally:
        svc.shutdown()


@pytest.mark.parametrize("where", ["the repository", "elsewhere"])
def test_a_child_forked_without_the_preload_says_so_in_the_log(tmp_path, where):
    script = tmp_path / "server.py"
    script.write_text(SERVER.format(root=str(ROOT)))
    cwd = ROOT if where == "the repository" else tmp_path  # the forkserver imports from the server's working folder
    out = subprocess.run([sys.executable, str(script), "3"], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    warned = "forked without ddpm.serving.preload" in out.stderr
    assert warned == (where == "elsewhere"), out.stderr[-2000:]



def test_a_heavy_request_runs_in_its_own_lane_at_a_lower_priority_and_never_holds_up_generate(service, tiny):
    _, payload = tiny
    heavy = service.submit("ann", payload, request(payload, n=2000, spec=SamplingSpec("ddpm", None), seed=21), 1.0,
                           expected_s=1e6)
    assert heavy.payload.lane == "heavy"
    while heavy.status == "queued":
        time.sleep(0.05)
    end = time.monotonic() + 30  # the heavy lane's process starts with its first request, then lowers its priority
    while time.monotonic() < end and not (len(service.worker_pids) == 2 and os.getpriority(
            os.PRIO_PROCESS, service.worker_pids[-1]) >= os.getpriority(os.PRIO_PROCESS, os.getpid()) + 10):
        time.sleep(0.1)
    assert len(service.worker_pids) == 2
    assert os.getpriority(os.PRIO_PROCESS, service.worker_pids[-1]) >= os.getpriority(os.PRIO_PROCESS, os.getpid()) + 10
    quick = service.run("bob", payload, request(payload, n=2, seed=22), 1.0, expected_s=0.1)
    assert quick.shape == (2, 28, 28, 3) and heavy.status == "running"  # bob did not wait for ann's evaluation
    service.submit("ann", payload, request(payload, n=1, seed=23), 1.0, expected_s=0.1)  # ann asks for something else
    assert heavy.done.wait(30) and heavy.status == "cancelled"  # her heavy request is nobody's any more
