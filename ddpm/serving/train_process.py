"""The training job's own process: started by the job's worker thread (forked from the server's forkserver,
``processes``), at the lowest OS priority.

``main`` runs in the child.  It lowers its priority before anything heavy (nice 19: a live run takes
only the CPU that visitors leave), sets its torch threads, builds a Trainer on the images it was given
(a private shared-memory copy, never pickled through the pipe), trains, and sends what the page shows
through a one-way pipe: ``("running", device)``, ``("progress", TrainProgress)``, ``("samples", uint8
(n, H, W, 3), step)``, then one last ``("finished", steps)``, ``("stopped", steps)`` or ``("failed",
message)``.  It stops when the worker sets the shared stop event (the owner's Stop, the time cap, a
closed page, the server shutting down), saving what it has.  A watchdog thread ends it within a second
when the server process is gone (killed, so it could not ask), so it never outlives the server.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import WEIGHTS_NAME
from ..data import CLASS_NAMES, to_hwc_numpy
from ..pipeline import generate
from ..presets import SCHEDULES, get_preset
from ..sampling_spec import DEFAULT_SPEC
from ..schedules import ScheduleConfig
from ..training import NonFiniteLossError, Trainer, TrainProgress
from ..unet import UNetConfig, build_unet
from .processes import check_preloaded, watch_parent
from .train_request import TrainRequest

log = logging.getLogger(__name__)

NICE = 19  # the lowest priority: the scheduler gives a nice-0 visitor's sampling ~70× the share of a nice-19 thread


def train_threads(env: dict[str, str] | None = None) -> int:
    """Torch threads of the training process: ``DDPM_TRAIN_THREADS``, default 1.  At nice 19 on 2 busy cores a
    second thread made training 5× slower (one thread waits at each barrier for the other, which visitors
    preempt) without making sampling faster (README, "Where training runs")."""
    env = os.environ if env is None else env
    raw = env.get("DDPM_TRAIN_THREADS", "1").strip()
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"environment variable DDPM_TRAIN_THREADS={raw!r} must be a whole number ≥ 1")
    return int(raw)


@dataclass(frozen=True)
class InitWeights:
    """A pretrained checkpoint to start from, as plain data: its configs and a copy of its weights."""

    model_config: UNetConfig
    schedule_config: ScheduleConfig
    state_dict: dict[str, torch.Tensor]

    def model(self) -> torch.nn.Module:
        model = build_unet(self.model_config)
        model.load_state_dict(self.state_dict)
        return model


@dataclass(frozen=True)
class RunSpec:
    """Everything the child needs besides the data; plain, picklable values."""

    request: TrainRequest
    out_dir: Path
    device: str
    data_source: str | None
    threads: int
    init: InitWeights | None = None


def shared_copy(t: torch.Tensor | None) -> torch.Tensor | None:
    """A copy of ``t`` in shared memory: the child maps it instead of receiving its bytes through the pipe.
    A copy, because moving a tensor that visitors' threads are reading into shared memory would free
    the memory under them."""
    if t is None:
        return None
    return torch.empty_like(t).share_memory_().copy_(t)


def build_trainer(spec: RunSpec, images: torch.Tensor, labels: torch.Tensor | None) -> Trainer:
    req = spec.request
    preset = get_preset(req.preset)
    if spec.init is not None and req.from_pretrained:
        model_cfg, sched_cfg, init_model = spec.init.model_config, spec.init.schedule_config, spec.init.model()
    else:
        model_cfg, init_model = preset.model, None
        sched_cfg = SCHEDULES[req.schedule] if req.schedule else preset.schedule
    if req.conditional and model_cfg.num_classes is None:  # from unconditional weights: the class embedding starts at 0
        model_cfg = replace(model_cfg, num_classes=len(CLASS_NAMES))
    if model_cfg.num_classes is not None and labels is None:
        raise ValueError("a tissue-conditional run needs the patches' labels")
    extra: dict[str, Any] = {"preset": req.preset,
                             "description": "trained in the PathMNIST Diffusion Studio app"
                                            + (" from the pretrained model" if init_model is not None else "")}
    if spec.data_source:
        extra["data"] = spec.data_source
    if model_cfg.num_classes is not None:
        extra["class_names"] = list(CLASS_NAMES)
    return Trainer(model_cfg, sched_cfg, req.train_config(), images, out_dir=spec.out_dir, device=spec.device,
                   init_model=init_model, extra_config=extra,
                   labels=labels if model_cfg.num_classes is not None else None)


def preview(trainer: Trainer, request: TrainRequest):
    """Samples from the run's current sampling weights (EMA if any) with the default spec (a conditional run: plain
    conditional, tissues drawn from the prior) as uint8 (n, H, W, 3), then back to training mode."""
    spec = DEFAULT_SPEC.fitted(trainer.schedule.num_timesteps)
    images = to_hwc_numpy(generate(trainer.sampling_model(), trainer.schedule, request.num_samples, spec,
                                   seed=request.seed))
    trainer.model.train()
    return images


def lower_priority(nice: int = NICE) -> None:
    """Give this process, and every thread it already has (importing torch started some), the lowest priority;
    threads started later inherit it.  Linux's nice is per thread, hence one call per thread."""
    tasks = Path("/proc/self/task")
    for tid in sorted(int(t.name) for t in tasks.iterdir()) if tasks.is_dir() else [0]:
        os.setpriority(os.PRIO_PROCESS, tid, nice)


def main(conn, stop_event, parent_pid: int, spec: RunSpec, images: torch.Tensor,
         labels: torch.Tensor | None) -> None:
    """The child's whole life: lower priority, train, report; always ends with one final message."""
    lower_priority()  # first, so every thread torch starts from now on inherits it
    watch_parent(parent_pid, "ddpm-train-watchdog")
    check_preloaded()
    torch.set_num_threads(spec.threads)
    req = spec.request
    try:
        trainer = build_trainer(spec, images, labels)
        del images, labels  # the trainer holds them (or its device copy)
        conn.send(("running", str(trainer.device)))
        last_preview: list[int] = []

        def on_progress(p: TrainProgress) -> None:
            conn.send(("progress", p))
            if p.step % req.sample_every == 0 or p.step == p.max_steps:
                conn.send(("samples", preview(trainer, req), p.step))
                last_preview[:] = [p.step]

        result = trainer.train(callback=on_progress, stop_event=stop_event)
        if last_preview != [trainer.step]:
            conn.send(("samples", preview(trainer, req), trainer.step))
        conn.send(("stopped" if result.stopped else "finished", result.steps))
    except NonFiniteLossError as err:
        conn.send(("failed", str(err)))
    except Exception as err:  # the job's message is the only place a visitor can see what happened
        log.exception("training process of %s failed", spec.out_dir.name)
        saved = " The last checkpoint it saved is kept." if (spec.out_dir / WEIGHTS_NAME).is_file() else ""
        conn.send(("failed", f"training failed: {type(err).__name__}: {err}.{saved}"))
    finally:
        conn.close()
