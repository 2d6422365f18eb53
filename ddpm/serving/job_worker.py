"""The worker thread of a training job: starts the job's training process and keeps the job's record current.

The training itself runs in a process of its own (``train_process``, forked from the server's forkserver:
``processes``), at the lowest OS priority. This thread, in the server's process, hands it a shared-memory copy
of the images and the run's settings, then relays what it sends (progress, preview samples, the outcome) into
the job's record under its lock, so snapshots and pages read the job as they always did. It is also the one
place that asks the run to stop for the server: when nobody has polled it for ``heartbeat_timeout_s`` (the
visitor left) and at the time cap, both checked every ``POLL_S`` even while a step never reports. A run asked
to stop (by these, its owner or the shutdown) that has not ended ``grace_s`` later is terminated, then killed,
and fails saying so; a process that dies without a last word fails too.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from multiprocessing.connection import Connection

import torch

from ..checkpoints import WEIGHTS_NAME, Checkpoint
from ..training import TrainProgress
from .job_state import Job
from .processes import child, context
from .server_limits import ServerLimits
from .train_process import InitWeights, RunSpec, main, shared_copy, train_threads

log = logging.getLogger(__name__)

POLL_S = 0.25  # how often the worker looks at the time cap, the heartbeat and the process while nothing arrives
STOP_GRACE_S = 60.0  # a run asked to stop gets this long (a step, a save, a preview, at nice 19 on busy cores) to end


def abandoned(job: Job, limits: ServerLimits) -> str | None:
    """Why the job must stop now because its page was closed, or None."""
    if time.time() - job.last_heartbeat > limits.heartbeat_timeout_s:
        return f"stopped because its page was closed (no sign of it for {limits.heartbeat_timeout_s:.0f} s)"
    return None


def time_cap_reason(limits: ServerLimits) -> str:
    return f"stopped at this server's limit of {limits.max_minutes:g} minutes per run"


def eta(job: Job, p: TrainProgress, limits: ServerLimits) -> float:
    """Seconds left: the trainer's estimate, or less when the time cap ends the run first."""
    return max(0.0, min(p.eta_s, job.started_at + limits.max_minutes * 60 - time.time()))


def spawn(job: Job, device: str, images: torch.Tensor, init: Checkpoint | None, data_source: str | None,
          labels: torch.Tensor | None) -> tuple[mp.process.BaseProcess, Connection]:
    """Start the job's training process; returns it and the receiving end of its pipe."""
    weights = None
    if init is not None and job.request.from_pretrained:  # a copy: the shared model stays the visitors' alone
        weights = InitWeights(init.model_config, init.schedule_config,
                              {k: v.detach().clone() for k, v in init.model.state_dict().items()})
    spec = RunSpec(job.request, job.out_dir, device, data_source, train_threads(), weights)
    receive, send = context().Pipe(duplex=False)
    process = child(main, (send, job.stop_event, os.getpid(), spec, shared_copy(images), shared_copy(labels)),
                    f"ddpm-train-{job.id[:8]}")
    process.start()  # the copies travel as shared-memory handles; start() drops its references to them
    send.close()  # ours: the child's end closing (or dying) is then an EOF here
    return process, receive


def supervise(job: Job, process, conn: Connection, limits: ServerLimits, grace_s: float = STOP_GRACE_S) -> None:
    """Relay ``process``'s messages into ``job`` until it ends; stop it at the time cap or when abandoned."""
    cap_at = job.started_at + limits.max_minutes * 60
    asked_at = None
    ended = False
    while not ended:
        if conn.poll(POLL_S):
            try:
                ended = apply(job, conn.recv(), limits)
            except EOFError:  # gone without a last word: killed, out of memory, a crash in native code
                process.join(grace_s)
                with job.lock:
                    job.status = "failed"
                    job.message = (f"the training process ended unexpectedly (exit code {process.exitcode})."
                                   + saved_note(job))
                ended = True
            if ended:
                break
        now = time.time()  # checked after every message too: a run reporting every few ms is still capped
        if not job.stop_event.is_set():  # asked once: a stop already asked (by anyone) is not asked again
            reason = time_cap_reason(limits) if now >= cap_at else abandoned(job, limits)
            if reason:
                job.request_stop(reason)
        if job.stop_event.is_set():
            asked_at = asked_at or now
            if now - asked_at > grace_s:
                end_process(process)
                with job.lock:
                    job.status = "failed"
                    job.message = (f"{job.stop_reason or 'stopped'}, but the training process did not stop within "
                                   f"{grace_s:g} s, so it was ended." + saved_note(job))
                ended = True
    process.join(grace_s)
    if process.is_alive():
        end_process(process)
    conn.close()


def end_process(process) -> None:
    """Terminate, then kill if it still runs after 2 s."""
    process.terminate()
    process.join(2.0)
    if process.is_alive():
        process.kill()
        process.join()


def saved_note(job: Job) -> str:
    return " The last checkpoint it saved is kept." if (job.out_dir / WEIGHTS_NAME).is_file() else ""


def apply(job: Job, message: tuple, limits: ServerLimits) -> bool:
    """Write one message from the training process into the job's record; True when it was the last."""
    kind, *body = message
    with job.lock:
        if kind == "running":
            job.device = body[0]
            if job.status == "starting":
                job.status, job.message = "running", f"training on {body[0].split(':')[0].upper()}"
        elif kind == "progress":
            p: TrainProgress = body[0]
            job.step, job.max_steps = p.step, p.max_steps
            job.loss_steps.append(p.step)
            job.losses.append(p.loss)
            job.images_per_sec, job.eta_s = p.images_per_sec, eta(job, p, limits)
        elif kind == "samples":
            job.samples, job.samples_step = body
        elif kind == "stopped":
            job.status = "stopped"
            job.message = f"{job.stop_reason or 'stopped'} at step {body[0]:,}; what it learned is saved"
        elif kind == "finished":
            job.status, job.message = "finished", f"finished {body[0]:,} steps"
        elif kind == "failed":
            job.status, job.message = "failed", body[0]
        else:
            raise ValueError(f"unknown message from a training process: {kind!r}")
    return kind in ("stopped", "finished", "failed")


def run_job(job: Job, limits: ServerLimits, device: str, images: torch.Tensor, init: Checkpoint | None,
            data_source: str | None, labels: torch.Tensor | None = None) -> None:
    """The body of a job's thread: start its process, relay until it ends, end with a status and a message."""
    try:
        process, conn = spawn(job, device, images, init, data_source, labels)
        with job.lock:
            job.process = process
        supervise(job, process, conn, limits, grace_s=STOP_GRACE_S)
    except Exception as err:  # the job's message is the only place a visitor can see what happened
        log.exception("training job %s failed", job.id)
        with job.lock:
            job.status, job.message = "failed", f"training failed: {type(err).__name__}: {err}.{saved_note(job)}"
    finally:
        with job.lock:
            job.finished_at, job.eta_s = time.time(), None
