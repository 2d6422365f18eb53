"""The server's training-job registry: at most one active job, each in its own worker thread.

The registry only keeps the books: who holds the training slot, which run folders exist and when
they go.  What a request may ask is ``train_request``/``server_limits``; what a job's thread does is
``job_worker``; a job's state is ``job_state``.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import torch

from .checkpoints import Checkpoint
from .job_state import ACTIVE, Job, JobSnapshot
from .job_worker import run_job
from .server_limits import ServerLimits
from .train_request import TrainRequest


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


class JobRegistry:
    """The server's training jobs: at most one active at a time, each in its own worker thread.

    ``images`` given to ``start`` are uint8 (N, 3, H, W); ``init`` is a loaded Checkpoint to fine-tune
    (it is only read: the trainer copies its weights).  Finished runs stay downloadable until their
    owner starts another or ``keep_s`` passes.
    """

    def __init__(self, limits: ServerLimits | None = None, root: str | os.PathLike | None = None,
                 device: str = "auto", keep_s: float = 3600.0):
        self.limits = limits or ServerLimits.from_env()
        self.device = device
        self.keep_s = keep_s
        self._root = Path(root) if root is not None else None
        self._jobs: dict[str, Job] = {}
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
            job = Job(job_id, owner, request, out_dir, time.time(), max_steps=request.steps, last_heartbeat=time.time())
            job.thread = threading.Thread(target=run_job, args=(job, self.limits, self.device, images, init, data_source),
                                          daemon=True, name=f"ddpm-train-{job_id}")
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
            job.request_stop(reason)

    def wait(self, job_id: str, timeout: float | None = None) -> JobSnapshot:
        """Block until the job has ended (or ``timeout`` seconds have passed); returns its snapshot."""
        job = self._jobs[job_id]
        if job.thread is not None:
            job.thread.join(timeout)
        return job.snapshot()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop every job, wait for the workers and delete every run folder."""
        for job in list(self._jobs.values()):
            job.request_stop("the server is shutting down")
        for job in list(self._jobs.values()):
            if job.thread is not None:
                job.thread.join(timeout)
            shutil.rmtree(job.out_dir, ignore_errors=True)
        self._jobs.clear()

    # ---- bookkeeping --------------------------------------------------------------------------
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
