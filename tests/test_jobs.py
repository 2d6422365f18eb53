"""The training-job registry (ddpm.serving.jobs), with tiny runs of the seed preset.

A real run spawns a training process (2-4 s to import torch), so only the tests about what that
process does spawn one; the registry's books and the worker's rules are tested with runs played by a
thread (``stand_in``) that speaks the process's messages.
"""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from ddpm.serving import job_worker
from ddpm.checkpoints import WEIGHTS_NAME, Checkpoint, load_local, make_config
from ddpm.serving.job_state import Visitor
from ddpm.serving.jobs import ROOT_PREFIX, JobBusyError, JobRegistry, remove_abandoned_roots
from ddpm.serving.server_limits import HOSTED_LIMITS, ServerLimits
from ddpm.serving.train_request import TrainRequest
from ddpm.serving.train_process import train_threads
from ddpm.training import TrainConfig, TrainProgress
from ddpm.presets import get_preset
from ddpm.unet import build_unet
from process_tree import alive, descendants

ROOT = Path(__file__).resolve().parent.parent
SEED = get_preset("seed")
TINY = dict(preset="seed", batch_size=4, lr=1e-3, sample_every=2, num_samples=2)
A, B = Visitor("a" * 32), Visitor("b" * 32)


@pytest.fixture
def registry(tmp_path):
    reg = JobRegistry(ServerLimits(), root=tmp_path / "runs", device="cpu")
    yield reg
    reg.shutdown()


# ---- processes ----------------------------------------------------------------------------------
def _nice_of_every_thread(pid: int) -> set[int]:
    return {int((task / "stat").read_text().rsplit(")", 1)[1].split()[16]) for task in Path(f"/proc/{pid}/task").iterdir()}


def _training_processes() -> list:
    return [p for p in multiprocessing.active_children() if p.name.startswith("ddpm-train-")]


class ThreadProcess:
    """A training process played by a thread: ``body(send, job, ended)`` sends what the process would and
    returns its exit code; ``terminate``/``kill`` set ``ended`` (exit code -9) and the body ends when it looks."""

    def __init__(self, body, job):
        self.receive, send = multiprocessing.Pipe(duplex=False)
        self.ended, self.exitcode = threading.Event(), None
        self._thread = threading.Thread(target=self._run, args=(body, send, job), daemon=True)
        self._thread.start()

    def _run(self, body, send, job) -> None:
        code = body(send, job, self.ended)
        send.close()
        self.exitcode = -9 if self.ended.is_set() else code

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def terminate(self) -> None:
        self.ended.set()

    kill = terminate


def steps_until_stopped(send, job, ended) -> int:
    """A run: one report per step (10 ms each) until its steps or a stop, then its weights and the outcome."""
    send.send(("running", "cpu"))
    step = 0
    while step < job.request.steps and not job.stop_event.is_set() and not ended.is_set():
        step += 1
        send.send(("progress", TrainProgress(step, job.request.steps, 0.5, 1e-3, 100.0, 0.01 * step)))
        time.sleep(0.01)
    (job.out_dir / WEIGHTS_NAME).write_bytes(b"stand-in")
    send.send(("stopped" if job.stop_event.is_set() else "finished", step))
    return 0


def never_reports(send, job, ended) -> int:
    """A step that never ends and never looks at the stop event."""
    send.send(("running", "cpu"))
    ended.wait(60)
    return 0


def dies(send, job, ended) -> int:
    """Killed from outside (out of memory, say) after it started: no last word."""
    send.send(("running", "cpu"))
    ended.set()
    return -9


@pytest.fixture
def stand_in(monkeypatch):
    """``stand_in(body)``: the registry's runs are played by ``ThreadProcess(body)``; returns the list of them."""
    processes = []

    def use(body):
        def spawn(job, *args):
            processes.append(ThreadProcess(body, job))
            return processes[-1], processes[-1].receive

        monkeypatch.setattr(job_worker, "spawn", spawn)
        return processes

    return use


@pytest.fixture
def books(tmp_path, stand_in):
    """A registry whose runs are stand-ins: for what the registry books, not what training does."""
    stand_in(steps_until_stopped)
    reg = JobRegistry(ServerLimits(), root=tmp_path / "runs", device="cpu")
    yield reg
    reg.shutdown()


def _pretrained(fill: float | None = None) -> Checkpoint:
    torch.manual_seed(0)
    model = build_unet(SEED.model).eval()
    if fill is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(fill)
    return Checkpoint(model, SEED.model, SEED.schedule, make_config(SEED.model, SEED.schedule), "test")


def _wait_until(predicate, timeout: float = 60.0) -> None:
    end = time.time() + timeout
    while not predicate():
        if time.time() > end:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def test_a_job_trains_in_its_own_process_and_publishes_losses_samples_and_a_checkpoint(registry, tiny_images):
    request = TrainRequest(steps=4, schedule="cosine", **TINY)
    snap = registry.start(request, A, tiny_images, data_source="toy")
    assert snap.active and snap.owner == "visitor aaaa"
    done = registry.wait(snap.id, timeout=120)
    assert done.status == "finished" and done.message == "finished 4 steps"
    assert done.step == 4 and done.loss_steps == (1, 2, 3, 4) and len(done.losses) == 4
    assert all(loss > 0 for loss in done.losses) and done.images_per_sec > 0 and done.device == "cpu"
    assert done.samples.shape == (2, 28, 28, 3) and done.samples.dtype.name == "uint8" and done.samples_step == 4
    assert done.has_checkpoint and not done.active and done.ends_at == done.finished_at
    saved = load_local(done.out_dir)
    assert saved.config["training"]["steps"] == 4 and saved.config["data"] == "toy"
    assert saved.schedule_config.kind == "cosine"
    assert TrainConfig.from_dict(saved.config["training"]) == request.train_config()  # what was checked is what ran
    assert registry.active() is None
    assert _training_processes() == []  # nothing of the run outlives it


def test_a_live_run_is_alone_runs_at_the_lowest_priority_shows_previews_and_stops_when_asked(registry, tiny_images):
    first = registry.start(TrainRequest(steps=20_000, **TINY), A, tiny_images)
    _wait_until(lambda: registry.get(first.id).samples_step is not None)
    running = registry.get(first.id)
    assert running.status == "running" and running.step >= 2 and running.samples.shape == (2, 28, 28, 3)
    assert 0 < running.eta_s and running.losses
    [process] = _training_processes()
    assert os.getpriority(os.PRIO_PROCESS, process.pid) == 19
    assert _nice_of_every_thread(process.pid) == {19}  # torch's threads too: they were started after the nice
    with pytest.raises(JobBusyError, match=r"visitor aaaa is training a model \(step [\d,]+ of 20,000\); it should end around") as err:
        registry.start(TrainRequest(steps=4, **TINY), B, tiny_images)
    assert err.value.holder.id == first.id
    registry.stop(first.id, A)
    stopped = registry.wait(first.id, timeout=60)
    assert stopped.status == "stopped" and stopped.message.startswith("stopped by you at step")
    assert stopped.has_checkpoint  # stopping saves what the run has
    assert load_local(stopped.out_dir).config["training"]["steps"] == stopped.step
    assert not process.is_alive() and not alive(process.pid)


def test_the_time_cap_ends_a_run_with_a_message(tmp_path, tiny_images):
    reg = JobRegistry(ServerLimits(max_minutes=0.002), root=tmp_path, device="cpu")
    try:
        snap = reg.start(TrainRequest(steps=20_000, **TINY), A, tiny_images)
        done = reg.wait(snap.id, timeout=60)
        assert done.status == "stopped" and "limit of 0.002 minutes" in done.message and done.has_checkpoint
    finally:
        reg.shutdown()


def test_a_job_whose_page_stopped_polling_ends_by_itself(tmp_path, tiny_images, stand_in):
    stand_in(steps_until_stopped)
    reg = JobRegistry(ServerLimits(heartbeat_timeout_s=0.3), root=tmp_path, device="cpu")
    try:
        snap = reg.start(TrainRequest(steps=20_000, **TINY), A, tiny_images)
        done = reg.wait(snap.id, timeout=60)
        assert done.status == "stopped" and "page was closed" in done.message and done.step < 20_000
    finally:
        reg.shutdown()


def test_heartbeats_keep_a_job_alive(tmp_path, tiny_images, stand_in):
    stand_in(steps_until_stopped)
    reg = JobRegistry(ServerLimits(heartbeat_timeout_s=1.0), root=tmp_path, device="cpu")
    try:
        snap = reg.start(TrainRequest(steps=20_000, **TINY), A, tiny_images)
        for _ in range(30):  # 1.5 s of polling, longer than the timeout
            reg.heartbeat(snap.id, A)
            time.sleep(0.05)
        assert reg.get(snap.id).status == "running"
    finally:
        reg.shutdown()


def test_the_time_cap_stops_a_step_that_never_reports_and_ends_a_process_that_does_not_stop(tmp_path, tiny_images,
                                                                                            stand_in, monkeypatch):
    from ddpm.serving.job_state import Job

    stops, request_stop = [], Job.request_stop

    def noted_request_stop(job, reason):
        stops.append(reason)
        request_stop(job, reason)

    monkeypatch.setattr(Job, "request_stop", noted_request_stop)
    monkeypatch.setattr(job_worker, "STOP_GRACE_S", 0.5)
    processes = stand_in(never_reports)
    limits = ServerLimits(max_minutes=0.005)
    reg = JobRegistry(limits, root=tmp_path, device="cpu")
    try:
        snap = reg.start(TrainRequest(steps=20_000, **{**TINY, "sample_every": 1000}), A, tiny_images)
        done = reg.wait(snap.id, timeout=60)
        assert done.status == "failed" and done.message == (
            "stopped at this server's limit of 0.005 minutes per run, but the training process did not stop "
            "within 0.5 s, so it was ended.")
        assert stops == [job_worker.time_cap_reason(limits)]  # asked once, though checked every POLL_S
        assert reg.active() is None and not processes[0].is_alive()
    finally:
        reg.shutdown()


def test_a_training_process_that_dies_without_a_word_fails_its_job(registry, tiny_images, stand_in):
    stand_in(dies)
    done = registry.wait(registry.start(TrainRequest(steps=20_000, **TINY), A, tiny_images).id, timeout=60)
    assert done.status == "failed" and done.message == "the training process ended unexpectedly (exit code -9)."
    assert registry.active() is None


def test_a_finished_runs_folder_is_deleted_after_a_while_without_anyone_starting_another(tmp_path, tiny_images,
                                                                                        stand_in):
    stand_in(steps_until_stopped)
    reg = JobRegistry(ServerLimits(), root=tmp_path, device="cpu", keep_s=2.0)
    try:
        done = reg.wait(reg.start(TrainRequest(steps=1, **TINY), A, tiny_images).id, timeout=60)
        assert done.status == "finished"
        _wait_until(lambda: reg.get(done.id) is None, timeout=30)  # off the books first, then off the disk
        _wait_until(lambda: not done.out_dir.exists(), timeout=30)
    finally:
        reg.shutdown()


SERVER = (  # a server in miniature: a registry with one long run going, then the last line of the brief
    "import multiprocessing, time, torch\n"
    "from ddpm.serving.job_state import Visitor\n"
    "from ddpm.serving.jobs import JobRegistry\n"
    "from ddpm.serving.server_limits import ServerLimits\n"
    "from ddpm.serving.train_request import TrainRequest\n"
    "reg = JobRegistry(ServerLimits(), device='cpu')\n"
    "images = torch.randint(0, 256, (8, 3, 28, 28), dtype=torch.uint8)\n"
    "snap = reg.start(TrainRequest(preset='seed', steps=20000, batch_size=4, sample_every=1000), Visitor.new(), images)\n"
    "while not reg.get(snap.id).step: time.sleep(0.05)\n"
    "print(snap.out_dir.parent, *[p.pid for p in multiprocessing.active_children()], flush=True)\n"
)


def test_a_server_that_exits_stops_its_training_process_and_deletes_the_run_folders(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", SERVER], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    root, *pids = out.stdout.split()
    root = Path(root)
    assert root.parent == tmp_path and root.name.startswith(ROOT_PREFIX)
    assert not root.exists()
    assert len(pids) == 1
    _wait_until(lambda: not alive(int(pids[0])), timeout=10)


def test_a_killed_server_leaves_no_process_behind(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    server = subprocess.Popen([sys.executable, "-c", SERVER + "time.sleep(600)\n"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        _, pid = server.stdout.readline().split()
        below = descendants(server.pid)
        assert int(pid) in below  # the training process (and the multiprocessing helpers, if any)
        server.kill()
        server.wait(10)
        _wait_until(lambda: not any(alive(p) for p in below), timeout=10)
    finally:
        server.kill()
        server.wait()


def test_a_training_process_whose_server_was_killed_mid_step_ends_by_itself(tmp_path):
    child = ("import sys, time\n"  # a step that never reports: only the watchdog can notice the server is gone
             "from ddpm.serving.processes import watch_parent\n"
             "watch_parent(int(sys.argv[1]), 'test-watchdog')\n"
             "print('watching', flush=True)\n"
             "time.sleep(600)\n")
    server = ("import os, subprocess, sys, time\n"
              f"child = subprocess.Popen([sys.executable, '-c', {child!r}, str(os.getpid())])\n"
              "print(child.pid, flush=True)\n"
              "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", server], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        pid = int(proc.stdout.readline())
        assert proc.stdout.readline().strip() == "watching" and alive(pid)
        proc.kill()
        proc.wait(10)
        _wait_until(lambda: not alive(pid), timeout=10)
    finally:
        proc.kill()
        proc.wait()


def test_the_run_folders_of_a_killed_server_are_deleted_by_the_next_one(tmp_path):
    dead = tmp_path / f"{ROOT_PREFIX}{2**22 + 12345}-abc"  # above Linux's default pid_max: no such process
    (dead / "run-x").mkdir(parents=True)
    alive = tmp_path / f"{ROOT_PREFIX}{os.getpid()}-abc"
    alive.mkdir()
    assert remove_abandoned_roots(tmp_path) == [dead]
    assert not dead.exists() and alive.exists()


def test_a_nan_loss_fails_the_job_with_the_trainers_message(registry, tiny_images):
    broken = _pretrained(fill=float("nan"))
    snap = registry.start(TrainRequest(steps=4, from_pretrained=True, **TINY), A, tiny_images, init=broken)
    done = registry.wait(snap.id, timeout=60)
    assert done.status == "failed" and "loss became nan at step 1" in done.message
    assert registry.active() is None  # the server is free again


def test_an_exception_in_the_training_process_fails_the_job_with_what_happened(registry, tiny_images):
    snap = registry.start(TrainRequest(steps=4, **{**TINY, "batch_size": 64}), A, tiny_images)
    done = registry.wait(snap.id, timeout=60)
    assert done.status == "failed" and "16 images cannot fill one batch of 64" in done.message
    assert not done.has_checkpoint


def test_a_run_from_the_pretrained_model_trains_a_copy_and_leaves_the_shared_one_alone(registry, tiny_images):
    shared = _pretrained()
    before = {k: v.clone() for k, v in shared.model.state_dict().items()}
    snap = registry.start(TrainRequest(steps=3, from_pretrained=True, **TINY), A, tiny_images, init=shared)
    done = registry.wait(snap.id, timeout=60)
    assert done.status == "finished"
    for k, v in shared.model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    trained = load_local(done.out_dir).model.state_dict()
    assert any(not torch.equal(trained[k], before[k]) for k in before)


def test_requests_outside_the_limits_are_refused_naming_the_allowed_values(registry, tiny_images):
    with pytest.raises(ValueError, match=r"steps must be between 1 and 500.*batch size must be between 1 and 64"):
        TrainRequest(preset="small", steps=501, batch_size=128).validate(HOSTED_LIMITS)
    with pytest.raises(ValueError, match=r"preset must be one of \['seed', 'small'\]"):
        TrainRequest(preset="large").validate(HOSTED_LIMITS)
    with pytest.raises(ValueError, match="schedule must be one of"):
        TrainRequest(schedule="sigmoid").validate(ServerLimits())
    with pytest.raises(ValueError, match="keeps its schedule"):
        TrainRequest(schedule="cosine", from_pretrained=True).validate(ServerLimits())
    with pytest.raises(ValueError, match="needs the pretrained checkpoint"):
        registry.start(TrainRequest(steps=2, from_pretrained=True, **TINY), A, tiny_images)
    assert registry.active() is None


@pytest.mark.parametrize("lr", [0.5, 0.0, -1e-3, float("nan"), float("inf")])
def test_a_request_is_checked_by_building_the_trainers_config_and_says_what_the_trainer_says(lr):
    request = TrainRequest(preset="seed", lr=lr)
    with pytest.raises(ValueError) as trainer:
        TrainConfig(lr=lr)
    assert f"lr={lr!r} (lr in (0, 0.1]" in str(trainer.value)
    with pytest.raises(ValueError) as refused:
        request.validate(ServerLimits())
    assert str(refused.value) == str(trainer.value)
    TrainRequest(preset="seed", lr=0.1).validate(ServerLimits())


def test_a_request_over_the_servers_limits_is_not_also_refused_again_by_the_trainer():
    with pytest.raises(ValueError) as err:
        TrainRequest(preset="seed", steps=0, batch_size=0).validate(ServerLimits())
    assert "steps must be between 1 and" in str(err.value) and "invalid training settings" not in str(err.value)


def test_every_limit_is_bounded_without_any_environment_and_stricter_when_hosted():
    local, hosted = ServerLimits.from_env({}), ServerLimits.from_env({"DDPM_HOSTED": "1"})
    assert local == ServerLimits() and not local.hosted
    numbers = ("max_steps", "max_batch", "max_minutes", "heartbeat_timeout_s", "max_eval_samples", "max_compute",
               "keep_runs_minutes")
    for name in numbers:
        assert 0 < getattr(local, name) < float("inf") and getattr(hosted, name) <= getattr(local, name), name
    assert local.max_steps <= 20_000 and local.max_minutes <= 120  # the large preset cannot run for ever
    assert set(hosted.presets) < set(local.presets)
    with pytest.raises(ValueError, match="DDPM_MAX_MINUTES='inf' must be a positive number"):
        ServerLimits.from_env({"DDPM_MAX_MINUTES": "inf"})


def test_hosted_caps_come_from_the_environment():
    hosted = ServerLimits.from_env({"DDPM_HOSTED": "1"})
    assert hosted.hosted and hosted.max_steps == 500 and hosted.max_batch == 64 and hosted.max_minutes == 15
    assert ServerLimits.from_env({"SPACE_ID": "someone/space"}).hosted  # on a Hugging Face Space by default
    assert not ServerLimits.from_env({"SPACE_ID": "someone/space", "DDPM_HOSTED": "0"}).hosted
    custom = ServerLimits.from_env({"DDPM_HOSTED": "1", "DDPM_MAX_STEPS": "50", "DDPM_MAX_BATCH": "16",
                                    "DDPM_MAX_MINUTES": "2.5", "DDPM_JOB_TIMEOUT_S": "30", "DDPM_MAX_EVAL": "100",
                                    "DDPM_MAX_COMPUTE": "3", "DDPM_KEEP_RUNS_MIN": "5"})
    assert (custom.max_steps, custom.max_batch, custom.max_minutes, custom.heartbeat_timeout_s, custom.max_eval_samples,
            custom.max_compute, custom.keep_runs_minutes) == (50, 16, 2.5, 30.0, 100, 3, 5.0)
    with pytest.raises(ValueError, match="DDPM_MAX_STEPS='many' must be a positive number"):
        ServerLimits.from_env({"DDPM_MAX_STEPS": "many"})
    with pytest.raises(ValueError, match="DDPM_MAX_BATCH='0'"):
        ServerLimits.from_env({"DDPM_MAX_BATCH": "0"})


def test_starting_again_deletes_the_owners_previous_run_and_shutdown_deletes_all(books, tiny_images):
    first = books.wait(books.start(TrainRequest(steps=1, **TINY), A, tiny_images).id, timeout=60)
    assert first.out_dir.is_dir()
    second = books.wait(books.start(TrainRequest(steps=1, **TINY), A, tiny_images).id, timeout=60)
    assert not first.out_dir.exists() and books.get(first.id) is None and second.out_dir.is_dir()
    books.shutdown()
    assert not second.out_dir.exists()


# ---- the job table's lock -----------------------------------------------------------------------
class OwnedLock:
    """A lock that knows which thread holds it (threading.Lock only knows that someone does)."""

    def __init__(self):
        self._lock, self.holder = threading.Lock(), None

    def __enter__(self):
        self._lock.acquire()
        self.holder = threading.get_ident()

    def __exit__(self, *exc):
        self.holder = None
        self._lock.release()


class CheckedTable(dict):
    """The books's job table, noting every access made without the books's lock held by the caller."""

    def __init__(self, lock: OwnedLock):
        super().__init__()
        self.lock, self.unlocked = lock, []

    def _check(self, what: str) -> None:
        if self.lock.holder != threading.get_ident():
            self.unlocked.append(what)


for _name in ("get", "__getitem__", "__setitem__", "__delitem__", "__contains__", "__iter__", "__len__", "values",
              "items", "keys", "pop", "clear"):
    def _checked(self, *args, _name=_name):
        self._check(_name)
        return getattr(dict, _name)(self, *args)

    setattr(CheckedTable, _name, _checked)


def test_every_read_and_write_of_the_job_table_holds_the_registrys_lock(tmp_path, tiny_images, stand_in):
    stand_in(steps_until_stopped)
    reg = JobRegistry(ServerLimits(), root=tmp_path, device="cpu", keep_s=3600)
    reg._lock = OwnedLock()
    reg._jobs = table = CheckedTable(reg._lock)
    try:
        snap = reg.start(TrainRequest(steps=20_000, **{**TINY, "sample_every": 1000}), A, tiny_images)
        assert reg.get(snap.id).owner == A.name and reg.active().id == snap.id
        reg.heartbeat(snap.id, A)
        reg.stop(snap.id, A)
        assert reg.wait(snap.id, timeout=60).status == "stopped"
        reg.sweep()
        reg.shutdown()
        assert table.unlocked == [] and len(dict.keys(table)) == 0
    finally:
        reg.shutdown()


# ---- visitors: who owns which run ---------------------------------------------------------------
def test_a_new_visitor_has_128_random_bits_and_a_short_name_for_others():
    a, b = Visitor.new(), Visitor.new()
    assert len(a.id) == 32 and int(a.id, 16) >= 0 and a.id != b.id
    assert a.name == f"visitor {a.id[:4]}"


def test_two_visitors_with_the_same_name_cannot_delete_stop_or_keep_alive_each_others_runs(books, tiny_images):
    first, second = Visitor("abcd" + "0" * 28), Visitor("abcd" + "1" * 28)
    assert first.name == second.name  # what others see collides; who owns what does not
    done = books.wait(books.start(TrainRequest(steps=1, **TINY), first, tiny_images).id, timeout=60)
    assert done.status == "finished" and done.has_checkpoint

    running = books.start(TrainRequest(steps=20_000, **{**TINY, "sample_every": 1000}), second, tiny_images)
    assert books.get(done.id) is not None and done.out_dir.is_dir()  # the other's Start left the finished run alone
    with pytest.raises(PermissionError, match="another visitor's"):
        books.stop(running.id, first)
    with pytest.raises(PermissionError, match="another visitor's"):
        books.heartbeat(running.id, first)
    assert books.get(running.id).status in ("starting", "running")
    with pytest.raises(JobBusyError) as busy:
        books.start(TrainRequest(steps=1, **TINY), first, tiny_images)
    assert second.name in str(busy.value) and second.id not in str(busy.value)  # others see the name, never the id

    books.stop(running.id, second)
    assert books.wait(running.id, timeout=60).status == "stopped"
    again = books.start(TrainRequest(steps=1, **TINY), second, tiny_images)  # replaces only second's own run
    assert books.get(running.id) is None and books.get(done.id) is not None and done.out_dir.is_dir()
    books.wait(again.id, timeout=60)


def test_the_training_process_uses_one_thread_unless_told_and_refuses_a_bad_count():
    assert train_threads({}) == 1 and train_threads({"DDPM_TRAIN_THREADS": "2"}) == 2
    with pytest.raises(ValueError, match=r"DDPM_TRAIN_THREADS='0' must be a whole number"):
        train_threads({"DDPM_TRAIN_THREADS": "0"})
