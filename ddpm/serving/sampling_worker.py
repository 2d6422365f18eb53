"""The sampling worker: a process of its own that runs heavy requests (samples, trajectories, evaluations) one
at a time, for ``SamplingService``.

It gets the models it needs as ``ModelPayload`` (config + safetensors bytes, keyed by the weights' sha256) and
keeps the last few; a request names its model by that key. It stops a request between two network calls
when the server asks (nobody waits for it any more) or when the request's deadline passes, and it exits when
its server does: on EOF of its pipe, or when a watchdog sees that its parent process is gone (killed).

Messages, server -> worker: ("run", seq, SampleRequest, ModelPayload | None, deadline_s)
worker -> server: ("missing", seq) | ("progress", seq, fraction) | ("done", seq, result, seconds)
                  | ("error", seq, message) | ("cancelled", seq, reason)
"""
from __future__ import annotations

import functools
import hashlib
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..sampling_spec import SamplingSpec
from .edit_request import EditRequest
from .processes import check_preloaded, watch_parent

KINDS = ("samples", "trajectory", "evaluation", "edit")
MODELS_KEPT = 4  # models a worker keeps loaded (the shipped two, a visitor's run and an upload)


class Cancelled(Exception):
    """Raised between two network calls of a request that must stop; its message says why."""


@dataclass(frozen=True)
class ModelPayload:
    """A model as the worker receives it: its config.json (as a dict) and its weights as safetensors bytes."""

    key: str  # sha256 of ``weights``: the same key, the same network
    config: dict
    weights: bytes

    @classmethod
    def from_checkpoint(cls, checkpoint) -> "ModelPayload":
        from safetensors.torch import save

        state = {k: v.detach().contiguous().cpu() for k, v in checkpoint.model.state_dict().items()}
        weights = save(state)
        return cls(hashlib.sha256(weights).hexdigest(), dict(checkpoint.config), weights)


@dataclass(frozen=True)
class SampleRequest:
    """What to compute: ``kind`` in KINDS, with the model's key, the spec, the seed, the number of images and the
    tissues asked for (None, ``pipeline.PRIOR``, one class, or a tuple of one class per image); an "edit" says which
    in ``edit`` (``edit_request``: there ``n`` is its batch)."""

    kind: str
    model_key: str
    spec: SamplingSpec
    seed: int
    n: int
    classes: int | str | tuple[int, ...] | None = None
    precision: str = "auto"
    edit: EditRequest | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not (isinstance(self.n, int) and self.n >= 1):
            raise ValueError(f"a request needs at least one image, got n = {self.n!r}")
        if (self.kind == "edit") != isinstance(self.edit, EditRequest):
            raise ValueError("an edit request needs its EditRequest, and only an edit request takes one")


def load_payload(payload: ModelPayload):
    """A ``Checkpoint`` (model in eval mode, schedule) from a payload, checked as any checkpoint is."""
    import torch
    from safetensors.torch import load

    from ..checkpoints import Checkpoint, configs_from
    from ..unet import build_unet

    model_config, schedule_config = configs_from(payload.config, Path("the model sent to the worker"))
    model = build_unet(model_config)
    model.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in load(payload.weights).items()})
    return Checkpoint(model.eval(), model_config, schedule_config, payload.config, "the sampling worker")


def run_request(checkpoint, request: SampleRequest, report: Callable[[float], None]) -> Any:
    """Compute ``request`` with ``checkpoint``: uint8 (n, H, W, 3) samples, a ``Trajectory``, an evaluation report
    or an ``edit_request.EditResult``. ``report(fraction)`` follows every network call; it may raise ``Cancelled``
    to stop the run."""
    from ..data import to_hwc_numpy
    from ..pipeline import generate, trajectory
    from .edit_request import run_edit

    if request.kind == "edit":
        return run_edit(checkpoint, request, report)
    model, schedule = checkpoint.model, checkpoint.schedule
    classes = list(request.classes) if isinstance(request.classes, tuple) else request.classes
    if request.kind == "samples":
        images = generate(model, schedule, request.n, request.spec, seed=request.seed, classes=classes,
                          precision=request.precision, callback=lambda done, total: report(done / total))
        return to_hwc_numpy(images)
    if request.kind == "trajectory":
        return trajectory(model, schedule, request.n, request.spec, seed=request.seed, classes=classes,
                          precision=request.precision, callback=lambda done, total: report(done / total))
    from ..evaluation.report import sample_and_evaluate

    data, encoder = _evaluation_inputs()
    report_, _ = sample_and_evaluate(model, schedule, request.n, request.spec, seed=request.seed, classes=classes,
                                     data=data, encoder=encoder, precision=request.precision,
                                     callback=lambda fraction, message: report(fraction))
    return report_


@functools.lru_cache(maxsize=1)
def _evaluation_inputs():
    """The reference patches and the tissue encoder, loaded once per worker (the training split takes seconds)."""
    from ..evaluation.encoder import load_encoder
    from ..evaluation.report import load_reference

    return load_reference(), load_encoder()


def serve(conn, cancel_event, threads: int, parent_pid: int, nice: int = 0) -> None:
    """The worker process's main loop (the target of ``multiprocessing.Process``); ``nice`` lowers its priority."""
    watch_parent(parent_pid, "ddpm-sampling-watchdog")
    check_preloaded()
    if nice:
        os.nice(nice)  # before torch starts its threads, so they inherit it
    import torch

    torch.set_num_threads(threads)
    models: OrderedDict[str, Any] = OrderedDict()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the server closed its end
        if message[0] == "stop":
            return
        _, seq, request, payload, deadline_s = message
        if payload is not None:
            try:
                models[payload.key] = load_payload(payload)
            except Exception as err:  # noqa: BLE001 - a broken model is the request's error, not the worker's end
                conn.send(("error", seq, f"the model could not be loaded: {err}"))
                continue
            while len(models) > MODELS_KEPT:
                models.popitem(last=False)
        if request.model_key not in models:
            conn.send(("missing", seq))
            continue
        models.move_to_end(request.model_key)
        _run(conn, seq, models[request.model_key], request, cancel_event, deadline_s)


def _run(conn, seq: int, checkpoint, request: SampleRequest, cancel_event, deadline_s: float) -> None:
    started = time.monotonic()
    last_sent = [0.0]

    def report(fraction: float) -> None:
        if cancel_event.is_set():
            raise Cancelled("nobody waits for this request any more")
        if time.monotonic() - started > deadline_s:
            raise Cancelled(f"the request ran past its deadline of {deadline_s:.0f} s and was stopped")
        now = time.monotonic()
        if now - last_sent[0] > 0.5 or fraction >= 1.0:  # progress twice a second: each one redraws a page
            last_sent[0] = now
            conn.send(("progress", seq, fraction))

    try:
        result = run_request(checkpoint, request, report)
    except Cancelled as why:
        conn.send(("cancelled", seq, str(why)))
        return
    except Exception as err:  # noqa: BLE001 - every failure reaches the visitor as a message
        known = isinstance(err, (ValueError, ArithmeticError))  # our own refusals and non-finite samples say it all
        conn.send(("error", seq, str(err) if known else f"{type(err).__name__}: {err}"))
        return
    conn.send(("done", seq, result, time.monotonic() - started))
