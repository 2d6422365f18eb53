"""The server's training-job registry: at most one active job, each trained in a process of its own.

The registry only keeps the books: who holds the training slot, which run folders exist and when
they go, and whose each run is: a visitor (``job_state.Visitor``, 128 random bits) can stop, keep
alive or replace only their own runs.  Each job has a worker thread in the server's process
(``job_worker``) that starts the job's training process (``train_process``, at the lowest OS
priority, so visitors' sampling comes first) and relays its progress and previews into the job's
record (``job_state``); it stops the run at the server's time cap and when its page stopped polling.
No training process outlives the server: ``shutdown`` (also run at interpreter exit) stops and joins
every one, killing any that does not end in time, and a process whose server was killed ends itself
within a second.  Run folders of finished or abandoned runs are deleted ``keep_s`` after they end (a
janitor thread looks every few seconds), all of them at ``shutdown``, and the folders a killed server
left behind when the next registry starts.  What a request may ask is ``train_request``/``server_limits``.
"""
from __future__ import annotations

import atexit
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..checkpoints import Checkpoint
from .job_state import ACTIVE, Job, JobSnapshot, Visitor
from .job_worker import end_process, run_job
from .server_limits import ServerLimits
from .train_request import TrainRequest


ROOT_PREFIX = "ddpm-app-runs-"  # then the server's process id: a root whose process is gone was abandoned


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_abandoned_roots(tmp: str | os.PathLike | None = None) -> list[Path]:
    """Delete the run roots of servers that were killed before they could clean up; returns what was removed."""
    removed = []
    for root in Path(tmp or tempfile.gettempdir()).glob(f"{ROOT_PREFIX}*"):
        m = re.match(rf"{ROOT_PREFIX}(\d+)-", root.name)
        if root.is_dir() and m and not _pid_alive(int(m.group(1))):
            shutil.rmtree(root, ignore_errors=True)
            removed.append(root)
    return removed


def _shutdown_at_exit(ref: "weakref.ref[JobRegistry]") -> None:
    registry = ref()
    if registry is not None:
        registry.shutdown(timeout=10.0)


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
    """The server's training jobs: at most one active at a time, each trained in its own process.

    ``images`` given to ``start`` are uint8 (N, 3, H, W), handed to the process as a shared-memory copy;
    ``init`` is a loaded Checkpoint to fine-tune (only read: the process gets a copy of its weights).  Finished runs stay downloadable until their
    owner starts another or ``keep_s`` (default: the limits' ``keep_runs_minutes``) passes.  The job
    table is read and written only under ``_lock``.
    """

    def __init__(self, limits: ServerLimits | None = None, root: str | os.PathLike | None = None,
                 device: str = "auto", keep_s: float | None = None):
        self.limits = limits or ServerLimits.from_env()
        self.device = device
        self.keep_s = self.limits.keep_runs_minutes * 60 if keep_s is None else keep_s
        self._root = Path(root) if root is not None else None
        self._own_root = root is None  # a temporary root is ours to delete at shutdown
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._janitor: threading.Thread | None = None
        if self._own_root:
            remove_abandoned_roots()
        atexit.register(_shutdown_at_exit, weakref.ref(self))

    # ---- the page's side ----------------------------------------------------------------------
    def start(self, request: TrainRequest, owner: Visitor, images: torch.Tensor, init: Checkpoint | None = None,
              data_source: str | None = None, labels: torch.Tensor | None = None) -> JobSnapshot:
        """Start a job, or raise JobBusyError (someone else's job is running) / ValueError (bad request).
        ``labels`` (one per image) are needed by a tissue-conditional run."""
        request.validate(self.limits)
        if request.from_pretrained and init is None:
            raise ValueError("from_pretrained needs the pretrained checkpoint (init)")
        with self._lock:
            running = next((j for j in self._jobs.values() if j.status in ACTIVE), None)
            if running is not None:
                raise JobBusyError(running.snapshot())
            self._forget_old(owner)
            job_id = secrets.token_hex(16)
            out_dir = Path(tempfile.mkdtemp(prefix=f"run-{job_id}-", dir=self._root_dir()))
            job = Job(job_id, owner, request, out_dir, time.time(), max_steps=request.steps, last_heartbeat=time.time())
            job.thread = threading.Thread(target=run_job,
                                          args=(job, self.limits, self.device, images, init, data_source, labels),
                                          daemon=True, name=f"ddpm-train-{job_id}")
            self._jobs[job_id] = job
            job.thread.start()
            self._start_janitor()
        return job.snapshot()

    def get(self, job_id: str | None) -> JobSnapshot | None:
        with self._lock:
            job = self._jobs.get(job_id) if job_id else None
        return job.snapshot() if job else None

    def active(self) -> JobSnapshot | None:
        """The running job, whoever owns it, or None."""
        with self._lock:
            job = next((j for j in self._jobs.values() if j.status in ACTIVE), None)
        return job.snapshot() if job else None

    def heartbeat(self, job_id: str, owner: Visitor) -> None:
        """The owner's page is still open: keep the job alive for another ``heartbeat_timeout_s``."""
        job = self._owned(job_id, owner)
        if job is not None:
            with job.lock:
                job.last_heartbeat = time.time()

    def stop(self, job_id: str, owner: Visitor, reason: str = "stopped by you") -> None:
        """Ask the owner's job to stop after the current step; it saves what it has and ends as "stopped"."""
        job = self._owned(job_id, owner)
        if job is not None:
            job.request_stop(reason)

    def wait(self, job_id: str, timeout: float | None = None) -> JobSnapshot:
        """Block until the job has ended (or ``timeout`` seconds have passed); returns its snapshot."""
        with self._lock:
            job = self._jobs[job_id]
        if job.thread is not None:
            job.thread.join(timeout)
        return job.snapshot()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop every job, wait up to ``timeout`` s in all for their processes to save and end (then end them),
        and delete every run folder (and the root, if temporary)."""
        self._closed.set()
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.request_stop("the server is shutting down")
        deadline = time.time() + timeout
        for job in jobs:
            if job.thread is not None:
                job.thread.join(max(0.0, deadline - time.time()))
            with job.lock:
                process = job.process
            if process is not None and process.is_alive():
                end_process(process)
            shutil.rmtree(job.out_dir, ignore_errors=True)
        with self._lock:
            self._jobs.clear()
        if self._own_root and self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)

    def sweep(self) -> None:
        """Delete the folders of runs that ended more than ``keep_s`` ago, whoever owns them."""
        with self._lock:
            now = time.time()
            for job_id, job in list(self._jobs.items()):
                if job.status not in ACTIVE and now - (job.finished_at or now) > self.keep_s:
                    self._jobs.pop(job_id, None)  # gone from the books first, then from the disk
                    shutil.rmtree(job.out_dir, ignore_errors=True)

    # ---- bookkeeping --------------------------------------------------------------------------
    def _owned(self, job_id: str, owner: Visitor) -> Job | None:
        """The job, if it is still on the books; PermissionError if it is another visitor's."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None and job.owner != owner:
            raise PermissionError(f"run {job_id} is another visitor's: a visitor can stop or keep alive only their own run")
        return job

    def _start_janitor(self) -> None:
        if self._janitor is None:
            every = min(60.0, max(0.05, self.keep_s / 4))
            self._janitor = threading.Thread(target=self._janitor_loop, args=(every,), daemon=True, name="ddpm-runs-janitor")
            self._janitor.start()

    def _janitor_loop(self, every: float) -> None:
        while not self._closed.wait(every):
            self.sweep()

    def _root_dir(self) -> Path:
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix=f"{ROOT_PREFIX}{os.getpid()}-"))
        self._root.mkdir(parents=True, exist_ok=True)
        return self._root

    def _forget_old(self, owner: Visitor) -> None:
        """Delete the owner's previous finished run and anyone's run older than keep_s (lock held)."""
        now = time.time()
        for job_id, job in list(self._jobs.items()):
            if job.status not in ACTIVE and (job.owner == owner or now - (job.finished_at or now) > self.keep_s):
                shutil.rmtree(job.out_dir, ignore_errors=True)
                del self._jobs[job_id]
