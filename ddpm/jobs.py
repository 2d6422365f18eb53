"""Work the app shares across visitors: the training-job registry and a cache of finished computations.

``JobRegistry`` owns at most one training job per server.  The job trains in a worker thread on its
own copy of the weights (``Trainer`` builds its own network), writes into a temporary folder, and
publishes progress as ``JobSnapshot``s that a page polls.  The worker never touches the UI.  A job
ends when it reaches its steps, when its owner stops it, when nobody has polled it for
``heartbeat_timeout_s`` (the visitor left), when the hosted time cap is reached, or on an error
(NaN loss included); the error becomes the job's message and the last saved checkpoint is kept.

Limits come from the environment (Streamlit's config.toml accepts no custom keys):
``DDPM_HOSTED`` (1/0; on by default on a Hugging Face Space, where ``SPACE_ID`` is set),
``DDPM_MAX_STEPS``, ``DDPM_MAX_BATCH``, ``DDPM_MAX_MINUTES``, ``DDPM_JOB_TIMEOUT_S`` and
``DDPM_MAX_EVAL`` (generated patches per on-demand evaluation).
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping

import numpy as np
import torch

from .checkpoints import WEIGHTS_NAME, Checkpoint
from .data import to_hwc_numpy
from .explain import SCHEDULES
from .pipeline import generate
from .presets import PRESETS, get_preset
from .training import NonFiniteLossError, Trainer, TrainProgress

log = logging.getLogger(__name__)

ACTIVE = ("starting", "running", "stopping")
PREVIEW_SAMPLER, PREVIEW_STEPS = "dpmpp", 20


def _env_number(env: Mapping[str, str], name: str, default, cast):
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} must be a positive number") from None
    if value <= 0:
        raise ValueError(f"environment variable {name}={raw!r} must be a positive number")
    return value


@dataclass(frozen=True)
class JobLimits:
    """What a visitor may ask of the server. ``from_env`` reads the hosted caps."""

    hosted: bool = False
    max_steps: int = 100_000
    max_batch: int = 1024
    max_minutes: float | None = None
    heartbeat_timeout_s: float = 90.0
    presets: tuple[str, ...] = tuple(PRESETS)
    max_eval_samples: int = 2000  # generated patches per on-demand evaluation (Compare page)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "JobLimits":
        env = os.environ if env is None else env
        hosted = env.get("DDPM_HOSTED", "1" if env.get("SPACE_ID") else "0").strip().lower() in ("1", "true", "yes", "on")
        base = HOSTED_LIMITS if hosted else cls()
        return replace(base,
                       max_steps=_env_number(env, "DDPM_MAX_STEPS", base.max_steps, int),
                       max_batch=_env_number(env, "DDPM_MAX_BATCH", base.max_batch, int),
                       max_minutes=_env_number(env, "DDPM_MAX_MINUTES", base.max_minutes, float),
                       heartbeat_timeout_s=_env_number(env, "DDPM_JOB_TIMEOUT_S", base.heartbeat_timeout_s, float),
                       max_eval_samples=_env_number(env, "DDPM_MAX_EVAL", base.max_eval_samples, int))


#: The caps on a shared 2-core Space: a few minutes of training, the two CPU-sized presets.
HOSTED_LIMITS = JobLimits(hosted=True, max_steps=500, max_batch=64, max_minutes=15.0, presets=("seed", "small"),
                          max_eval_samples=300)


@dataclass(frozen=True)
class TrainRequest:
    """What a visitor asked for. ``schedule`` is a key of ``explain.SCHEDULES`` (None: the preset's);
    a run from the pretrained model keeps that model's network and schedule."""

    preset: str = "small"
    steps: int = 200
    batch_size: int = 32
    lr: float = 5e-4
    schedule: str | None = None
    from_pretrained: bool = False
    sample_every: int = 50
    num_samples: int = 8
    seed: int = 0

    def validate(self, limits: JobLimits) -> None:
        """Raise ValueError naming every setting outside what ``limits`` allow."""
        problems = []
        if self.preset not in limits.presets:
            problems.append(f"preset must be one of {list(limits.presets)}, got {self.preset!r}")
        if not 1 <= self.steps <= limits.max_steps:
            problems.append(f"steps must be between 1 and {limits.max_steps:,}, got {self.steps}")
        if not 1 <= self.batch_size <= limits.max_batch:
            problems.append(f"batch size must be between 1 and {limits.max_batch}, got {self.batch_size}")
        if not 0 < self.lr <= 0.1:
            problems.append(f"learning rate must be in (0, 0.1], got {self.lr}")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if self.from_pretrained and self.schedule is not None:
            problems.append("a run from the pretrained model keeps its schedule; leave the schedule unset")
        if not 1 <= self.sample_every <= 100_000 or not 1 <= self.num_samples <= 64:
            problems.append("sample_every must be ≥ 1 and num_samples between 1 and 64")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class JobSnapshot:
    """A consistent copy of a job's state for the page to draw."""

    id: str
    owner: str
    request: TrainRequest
    status: str  # starting | running | stopping | finished | stopped | failed
    message: str
    step: int
    max_steps: int
    loss_steps: tuple[int, ...]
    losses: tuple[float, ...]
    images_per_sec: float
    eta_s: float | None
    started_at: float
    finished_at: float | None
    samples: np.ndarray | None  # (num_samples, H, W, 3) uint8 from the run's current sampling weights
    samples_step: int | None
    out_dir: Path
    device: str

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def has_checkpoint(self) -> bool:
        return (self.out_dir / WEIGHTS_NAME).is_file()

    @property
    def ends_at(self) -> float | None:
        """Expected end (Unix time) while running, the real end once done, None before the first step."""
        if self.finished_at is not None:
            return self.finished_at
        return time.time() + self.eta_s if self.eta_s is not None else None


class JobBusyError(RuntimeError):
    """Another visitor's job holds the server; the message says whose and when it should end."""

    def __init__(self, holder: JobSnapshot):
        self.holder = holder
        end = holder.ends_at
        when = ("when it reaches its step limit" if end is None else
                f"around {datetime.fromtimestamp(end, timezone.utc):%H:%M} UTC "
                f"(in about {max(1, math.ceil((end - time.time()) / 60))} min)")
        super().__init__(f"{holder.owner} is training a model (step {holder.step:,} of {holder.max_steps:,}); it should "
                         f"end {when}. One training job runs at a time on this server: try again then.")


@dataclass
class _Job:
    id: str
    owner: str
    request: TrainRequest
    out_dir: Path
    started_at: float
    stop_event: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    status: str = "starting"
    message: str = "preparing the data and the network"
    step: int = 0
    max_steps: int = 0
    loss_steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    images_per_sec: float = 0.0
    eta_s: float | None = None
    finished_at: float | None = None
    samples: np.ndarray | None = None
    samples_step: int | None = None
    last_heartbeat: float = 0.0
    stop_reason: str | None = None
    device: str = "?"
    thread: threading.Thread | None = None

    def snapshot(self) -> JobSnapshot:
        with self.lock:
            return JobSnapshot(self.id, self.owner, self.request, self.status, self.message, self.step, self.max_steps,
                               tuple(self.loss_steps), tuple(self.losses), self.images_per_sec, self.eta_s,
                               self.started_at, self.finished_at, self.samples, self.samples_step, self.out_dir,
                               self.device)


class JobRegistry:
    """The server's training jobs: at most one active at a time, each in its own worker thread.

    ``images`` given to ``start`` are uint8 (N, 3, H, W); ``init`` is a loaded Checkpoint to fine-tune
    (it is only read: the trainer copies its weights).  Finished runs stay downloadable until their
    owner starts another or ``keep_s`` passes.
    """

    def __init__(self, limits: JobLimits | None = None, root: str | os.PathLike | None = None,
                 device: str = "auto", keep_s: float = 3600.0):
        self.limits = limits or JobLimits.from_env()
        self.device = device
        self.keep_s = keep_s
        self._root = Path(root) if root is not None else None
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()

    # ---- the page's side ----------------------------------------------------------------------
    def start(self, request: TrainRequest, owner: str, images: torch.Tensor, init: Checkpoint | None = None,
              data_source: str | None = None) -> JobSnapshot:
        """Start a job, or raise JobBusyError (someone else's job is running) / ValueError (bad request)."""
        request.validate(self.limits)
        if request.from_pretrained and init is None:
            raise ValueError("from_pretrained needs the pretrained checkpoint (init)")
        with self._lock:
            running = next((j for j in self._jobs.values() if j.status in ACTIVE), None)
            if running is not None:
                raise JobBusyError(running.snapshot())
            self._forget_old(owner)
            job_id = uuid.uuid4().hex[:8]
            out_dir = Path(tempfile.mkdtemp(prefix=f"run-{job_id}-", dir=self._root_dir()))
            job = _Job(job_id, owner, request, out_dir, time.time(), max_steps=request.steps, last_heartbeat=time.time())
            job.thread = threading.Thread(target=self._run, args=(job, images, init, data_source), daemon=True,
                                          name=f"ddpm-train-{job_id}")
            self._jobs[job_id] = job
            job.thread.start()
        return job.snapshot()

    def get(self, job_id: str | None) -> JobSnapshot | None:
        job = self._jobs.get(job_id) if job_id else None
        return job.snapshot() if job else None

    def active(self) -> JobSnapshot | None:
        """The running job, whoever owns it, or None."""
        job = next((j for j in list(self._jobs.values()) if j.status in ACTIVE), None)
        return job.snapshot() if job else None

    def heartbeat(self, job_id: str) -> None:
        """The owner's page is still open: keep the job alive for another ``heartbeat_timeout_s``."""
        job = self._jobs.get(job_id)
        if job is not None:
            with job.lock:
                job.last_heartbeat = time.time()

    def stop(self, job_id: str, reason: str = "stopped by you") -> None:
        """Ask the job to stop after the current step; it saves what it has and ends as "stopped"."""
        job = self._jobs.get(job_id)
        if job is not None:
            self._request_stop(job, reason)

    def wait(self, job_id: str, timeout: float | None = None) -> JobSnapshot:
        """Block until the job has ended (or ``timeout`` seconds have passed); returns its snapshot."""
        job = self._jobs[job_id]
        if job.thread is not None:
            job.thread.join(timeout)
        return job.snapshot()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop every job, wait for the workers and delete every run folder."""
        for job in list(self._jobs.values()):
            self._request_stop(job, "the server is shutting down")
        for job in list(self._jobs.values()):
            if job.thread is not None:
                job.thread.join(timeout)
            shutil.rmtree(job.out_dir, ignore_errors=True)
        self._jobs.clear()

    # ---- the worker's side --------------------------------------------------------------------
    def _root_dir(self) -> Path:
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="ddpm-app-runs-"))
        self._root.mkdir(parents=True, exist_ok=True)
        return self._root

    def _forget_old(self, owner: str) -> None:
        """Delete the owner's previous finished run and anyone's run older than keep_s (lock held)."""
        now = time.time()
        for job_id, job in list(self._jobs.items()):
            if job.status not in ACTIVE and (job.owner == owner or now - (job.finished_at or now) > self.keep_s):
                shutil.rmtree(job.out_dir, ignore_errors=True)
                del self._jobs[job_id]

    @staticmethod
    def _request_stop(job: _Job, reason: str) -> None:
        with job.lock:
            if job.status in ACTIVE and not job.stop_event.is_set():
                job.stop_reason = reason
                job.status = "stopping"
                job.stop_event.set()

    def _expired(self, job: _Job) -> str | None:
        now = time.time()
        if now - job.last_heartbeat > self.limits.heartbeat_timeout_s:
            return f"stopped because its page was closed (no sign of it for {self.limits.heartbeat_timeout_s:.0f} s)"
        if self.limits.max_minutes and now - job.started_at > self.limits.max_minutes * 60:
            return f"stopped at this server's limit of {self.limits.max_minutes:g} minutes per run"
        return None

    def _eta(self, job: _Job, p: TrainProgress) -> float:
        """Seconds left: the trainer's estimate, or less when the time cap ends the run first."""
        if self.limits.max_minutes is None:
            return p.eta_s
        return max(0.0, min(p.eta_s, job.started_at + self.limits.max_minutes * 60 - time.time()))

    def _build_trainer(self, job: _Job, images: torch.Tensor, init: Checkpoint | None,
                       data_source: str | None) -> Trainer:
        req = job.request
        preset = get_preset(req.preset)
        if init is not None and req.from_pretrained:
            model_cfg, sched_cfg, init_model = init.model_config, init.schedule_config, init.model
        else:
            model_cfg, init_model = preset.model, None
            sched_cfg = SCHEDULES[req.schedule] if req.schedule else preset.schedule
        # a short run keeps at most a fifth of itself for the learning-rate warm-up
        train_cfg = replace(preset.train, max_steps=req.steps, batch_size=req.batch_size, lr=req.lr, seed=req.seed,
                            warmup_steps=min(preset.train.warmup_steps, req.steps // 5), checkpoint_every_s=60.0)
        extra: dict[str, Any] = {"preset": req.preset,
                                 "description": "trained in the PathMNIST Diffusion Studio app"
                                                + (" from the pretrained model" if init_model is not None else "")}
        if data_source:
            extra["data"] = data_source
        return Trainer(model_cfg, sched_cfg, train_cfg, images, out_dir=job.out_dir, device=self.device,
                       init_model=init_model, extra_config=extra)

    def _preview(self, job: _Job, trainer: Trainer) -> None:
        """Samples from the run's current sampling weights (EMA if any), then back to training mode."""
        req = job.request
        model = trainer.sampling_model()
        steps = min(PREVIEW_STEPS, trainer.schedule.num_timesteps)
        images = to_hwc_numpy(generate(model, trainer.schedule, req.num_samples, PREVIEW_SAMPLER, steps, seed=req.seed))
        trainer.model.train()
        with job.lock:
            job.samples, job.samples_step = images, trainer.step

    def _run(self, job: _Job, images: torch.Tensor, init: Checkpoint | None, data_source: str | None) -> None:
        req = job.request
        try:
            trainer = self._build_trainer(job, images, init, data_source)
            with job.lock:
                job.device = str(trainer.device)
                if job.status == "starting":
                    job.status, job.message = "running", f"training on {trainer.device.type.upper()}"

            def on_progress(p: TrainProgress) -> None:
                with job.lock:
                    job.step, job.max_steps = p.step, p.max_steps
                    job.loss_steps.append(p.step)
                    job.losses.append(p.loss)
                    job.images_per_sec, job.eta_s = p.images_per_sec, self._eta(job, p)
                if p.step % req.sample_every == 0 or p.step == p.max_steps:
                    self._preview(job, trainer)
                reason = self._expired(job)
                if reason:
                    self._request_stop(job, reason)

            result = trainer.train(callback=on_progress, stop_event=job.stop_event)
            if job.samples_step != trainer.step:
                self._preview(job, trainer)
            with job.lock:
                if result.stopped:
                    job.status = "stopped"
                    job.message = f"{job.stop_reason or 'stopped'} at step {result.steps:,}; what it learned is saved"
                else:
                    job.status, job.message = "finished", f"finished {result.steps:,} steps"
        except NonFiniteLossError as err:
            with job.lock:
                job.status, job.message = "failed", str(err)
        except Exception as err:  # the job's message is the only place a visitor can see what happened
            log.exception("training job %s failed", job.id)
            with job.lock:
                saved = " The last checkpoint it saved is kept." if (job.out_dir / WEIGHTS_NAME).is_file() else ""
                job.status, job.message = "failed", f"training failed: {type(err).__name__}: {err}.{saved}"
        finally:
            with job.lock:
                job.finished_at, job.eta_s = time.time(), None


class ResultCache:
    """A thread-safe LRU of finished computations (e.g. sampling trajectories), shared by all visitors.

    ``get_or_compute(key, fn)`` runs ``fn`` in the caller's thread at most once per key at a time; a
    second caller with the same key waits for the first and gets its result.  Errors are not cached.
    """

    def __init__(self, max_entries: int = 32):
        self.max_entries = max_entries
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._key_locks: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        return None

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._data:
                    return self._data[key]
            value = compute()
            with self._lock:
                self._data[key] = value
                while len(self._data) > self.max_entries:
                    self._data.popitem(last=False)
                self._key_locks.pop(key, None)
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
