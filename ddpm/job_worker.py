"""The worker thread of a training job: builds a Trainer on its own copy of the weights, trains,
publishes progress and preview samples into the job's record, and never touches the UI.

A run ends at its steps, when its owner stops it, when nobody has polled it for
``heartbeat_timeout_s`` (the visitor left), at the server's time cap, or on an error (NaN loss
included); the error becomes the job's message and the last saved checkpoint is kept.  The time cap
is one timer per run (it fires even while a step never reports), cancelled and joined when the run ends.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Any

import torch

from .checkpoints import WEIGHTS_NAME, Checkpoint
from .data import CLASS_NAMES, to_hwc_numpy
from .job_state import Job
from .pipeline import generate
from .presets import SCHEDULES, get_preset
from .sampling_spec import DEFAULT_SPEC
from .server_limits import ServerLimits
from .training import NonFiniteLossError, Trainer, TrainProgress

log = logging.getLogger(__name__)

def abandoned(job: Job, limits: ServerLimits) -> str | None:
    """Why the job must stop now because its page was closed, or None (the time cap is ``time_cap_timer``'s)."""
    if time.time() - job.last_heartbeat > limits.heartbeat_timeout_s:
        return f"stopped because its page was closed (no sign of it for {limits.heartbeat_timeout_s:.0f} s)"
    return None


def time_cap_reason(limits: ServerLimits) -> str:
    return f"stopped at this server's limit of {limits.max_minutes:g} minutes per run"


def time_cap_timer(job: Job, limits: ServerLimits) -> threading.Timer:
    """A started timer that asks the job to stop when the server's time cap, counted from its start, passes."""
    left = max(0.0, job.started_at + limits.max_minutes * 60 - time.time())
    timer = threading.Timer(left, job.request_stop, args=(time_cap_reason(limits),))
    timer.name, timer.daemon = f"ddpm-time-cap-{job.id[:8]}", True
    timer.start()
    return timer


def eta(job: Job, p: TrainProgress, limits: ServerLimits) -> float:
    """Seconds left: the trainer's estimate, or less when the time cap ends the run first."""
    return max(0.0, min(p.eta_s, job.started_at + limits.max_minutes * 60 - time.time()))


def build_trainer(job: Job, images: torch.Tensor, init: Checkpoint | None, data_source: str | None,
                  device: str, labels: torch.Tensor | None = None) -> Trainer:
    req = job.request
    preset = get_preset(req.preset)
    if init is not None and req.from_pretrained:
        model_cfg, sched_cfg, init_model = init.model_config, init.schedule_config, init.model
    else:
        model_cfg, init_model = preset.model, None
        sched_cfg = SCHEDULES[req.schedule] if req.schedule else preset.schedule
    if req.conditional and model_cfg.num_classes is None:  # from unconditional weights: the class embedding starts at 0
        model_cfg = replace(model_cfg, num_classes=len(CLASS_NAMES))
    if model_cfg.num_classes is not None and labels is None:
        raise ValueError("a tissue-conditional run needs the patches' labels")
    train_cfg = req.train_config()
    extra: dict[str, Any] = {"preset": req.preset,
                             "description": "trained in the PathMNIST Diffusion Studio app"
                                            + (" from the pretrained model" if init_model is not None else "")}
    if data_source:
        extra["data"] = data_source
    if model_cfg.num_classes is not None:
        extra["class_names"] = list(CLASS_NAMES)
    return Trainer(model_cfg, sched_cfg, train_cfg, images, out_dir=job.out_dir, device=device,
                   init_model=init_model, extra_config=extra,
                   labels=labels if model_cfg.num_classes is not None else None)


def preview(job: Job, trainer: Trainer) -> None:
    """Samples from the run's current sampling weights (EMA if any) with the default spec (a conditional run: plain
    conditional, tissues drawn from the prior), then back to training mode."""
    req = job.request
    model = trainer.sampling_model()
    spec = DEFAULT_SPEC.fitted(trainer.schedule.num_timesteps)
    images = to_hwc_numpy(generate(model, trainer.schedule, req.num_samples, spec, seed=req.seed))
    trainer.model.train()
    with job.lock:
        job.samples, job.samples_step = images, trainer.step


def run_job(job: Job, limits: ServerLimits, device: str, images: torch.Tensor, init: Checkpoint | None,
            data_source: str | None, labels: torch.Tensor | None = None) -> None:
    """The body of a job's thread: train, keep the record current, end with a status and a message."""
    req = job.request
    cap = time_cap_timer(job, limits)
    try:
        trainer = build_trainer(job, images, init, data_source, device, labels)
        with job.lock:
            job.device = str(trainer.device)
            if job.status == "starting":
                job.status, job.message = "running", f"training on {trainer.device.type.upper()}"

        def on_progress(p: TrainProgress) -> None:
            with job.lock:
                job.step, job.max_steps = p.step, p.max_steps
                job.loss_steps.append(p.step)
                job.losses.append(p.loss)
                job.images_per_sec, job.eta_s = p.images_per_sec, eta(job, p, limits)
            if p.step % req.sample_every == 0 or p.step == p.max_steps:
                preview(job, trainer)
            reason = abandoned(job, limits)
            if reason:
                job.request_stop(reason)

        result = trainer.train(callback=on_progress, stop_event=job.stop_event)
        if job.samples_step != trainer.step:
            preview(job, trainer)
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
        cap.cancel()
        cap.join()  # nothing of the run outlives it
        with job.lock:
            job.finished_at, job.eta_s = time.time(), None
