"""Heavy work for the pages: every sampling run, trajectory and evaluation is priced, submitted to the sampling
workers (ddpm.serving), waited for with the visitor's place and ETA, and cached for the whole server. The
script thread only submits, waits and draws."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import streamlit as st

from ddpm.checkpoints import SHIPPED_DIR, Checkpoint, CheckpointError
from ddpm.model_card import EVALUATION_NAME, read_evaluation
from ddpm.pipeline import Trajectory
from ddpm.samplers import DEFAULT_SAMPLER
from ddpm.sampling_spec import EVERY_STEP, SamplingSpec
from ddpm.serving.cost import RequestTooCostlyError, check_request_cost, deadline_s
from ddpm.serving.edit_request import EditRequest, EditResult
from ddpm.serving.queue import Position, RequestCancelled, WaitingBar
from ddpm.serving.quiz_pool import QuizPool, service_generator
from ddpm.serving.result_cache import ResultCache
from ddpm.serving.sampling_service import RequestFailed, SamplingService
from ddpm.serving.sampling_worker import ModelPayload, SampleRequest
from pages._models import ActiveModel
from pages._pickers import Tissue
from pages._shared import caches, limits, visitor

REQUEST_LOG_ENV = "DDPM_REQUEST_LOG"  # a file: one JSON line per finished request (time queued, time computing)
#: torch threads per sampling worker. One: on 2 cores shared with the server, a training run and (in the bench) the
#: browser, a crowd of 10 waited a median 38.2 s with one two-thread worker, 20.8 s with one one-thread worker and
#: 17.6 s with two (bench/crowd_check.py, 2026-12-01); alone on a quiet machine two threads are faster (1.1 s
#: against 1.9 s for Reverse's 9 images).
THREADS_ENV = "DDPM_SAMPLING_THREADS"


@st.cache_resource(show_spinner=False)
def sampling_service() -> SamplingService:
    """The worker processes that compute every visitor's samples, trajectories and evaluations, in one fair line."""
    return SamplingService(workers=limits().max_compute, threads=int(os.environ.get(THREADS_ENV) or 1),
                           max_deadline_s=limits().request_deadline_s, log_path=os.environ.get(REQUEST_LOG_ENV) or None)


@st.cache_resource(show_spinner=False, max_entries=8)
def _payload(model_key: str, _checkpoint: Checkpoint) -> ModelPayload:
    """The model as the workers receive it (config + weights bytes), made once per model."""
    return ModelPayload.from_checkpoint(_checkpoint)


@st.cache_resource(show_spinner=False, max_entries=2, on_release=QuizPool.close)
def _quiz_pool(model_key: str, _checkpoint: Checkpoint) -> QuizPool:
    return QuizPool(service_generator(sampling_service(), _payload(model_key, _checkpoint), _checkpoint, limits()),
                    _checkpoint.model_config.num_classes)


def quiz_pool(model: ActiveModel) -> QuizPool:
    """The quiz's generated patches for a tissue-conditional model, made ahead of time by the sampling workers and
    refilled in the background (ddpm.serving.quiz_pool): one pool per model for the whole server."""
    return _quiz_pool(model.key, model.checkpoint)


@st.cache_resource(show_spinner="Loading the tissue encoder…")
def tissue_encoder():
    """(encoder, None) or (None, why not): the evaluation package and its weights are optional."""
    try:
        from ddpm.evaluation.encoder import load_encoder

        return load_encoder(), None
    except (ImportError, CheckpointError) as err:
        return None, f"the tissue encoder is not available ({err})"


def _request(model: ActiveModel, spec: SamplingSpec | None, tissue: Tissue | None) -> tuple[SamplingSpec, int | str | None]:
    """(spec, classes) to run: ``spec`` (default: the model's recommended one) fitted to the model's T, with the
    visitor's guidance when a tissue was picked (an unconditional model has none to apply)."""
    spec = (spec or model.checkpoint.sampling).fitted(model.checkpoint.schedule.num_timesteps)
    if tissue is None:
        return spec.replace(guidance=1.0), None
    return spec.replace(guidance=tissue.guidance, guidance_interval=tissue.interval or EVERY_STEP), tissue.tissue


# ---- evaluation reports (the one place that knows the evaluation package's API) ---------------
def evaluation_report(model: ActiveModel) -> tuple[dict | None, str | None]:
    """(report, where it came from): this visitor's fresh evaluation of the model, else the precomputed
    evaluation.json beside its weights (or beside the shipped copy), else (None, None)."""
    fresh = st.session_state.get("evaluation", {}).get(model.key)
    if fresh is not None:
        return fresh, "your evaluation in this session"
    for folder in (model.checkpoint.path, SHIPPED_DIR / model.key.removeprefix("shipped:")):
        try:
            stored = read_evaluation(folder)
        except ValueError as err:
            st.warning(str(err))
            continue
        if stored is not None:
            return stored, f"precomputed ({Path(folder).name}/{EVALUATION_NAME})"
    return None, None


def run_evaluation(model: ActiveModel, n: int, tissue: Tissue | None = None, bar=None) -> dict:
    """Generate ``n`` patches and score them in a sampling worker (``bar`` shows the place and progress); stores the
    report for this visitor."""
    spec, classes = _request(model, None, tissue)
    report = from_workers(model, SampleRequest("evaluation", model.key, spec, 1, n, classes), "Sampling and scoring…",
                          bar)
    st.session_state.setdefault("evaluation", {})[model.key] = report
    return report


# ---- heavy computations: submitted to the sampling workers, waited for with the visitor's place ------
def from_workers(model: ActiveModel, request: SampleRequest, text: str, bar=None):
    """The result of ``request`` from the sampling workers; meanwhile ``bar`` shows the visitor's place, the ETA and
    the progress. A failure is shown on the page, which stops there."""
    checkpoint = model.checkpoint
    payload = _payload(model.key, checkpoint)
    request = dataclasses.replace(request, model_key=payload.key)  # the workers know models by their weights' sha256
    T = checkpoint.schedule.num_timesteps
    passes = request.edit.network_calls(T, request.spec.steps) if request.edit else None
    try:
        cost = check_request_cost(checkpoint.model_config, request.spec, request.n, T, limits(), kind=request.kind,
                                  conditional=model.conditional, passes=passes)
    except RequestTooCostlyError as err:
        st.error(f"This server does not run that: {err}")
        st.stop()
    bar = bar or st.progress(0.0, text=text)
    waiting = WaitingBar(text, limits().max_compute)

    def on_wait(position: Position) -> None:
        drawn = waiting.update(position)
        if drawn is not None:  # a visitor who left or clicked again is noticed here, and leaves the line
            bar.progress(*drawn)

    try:
        value = sampling_service().run(visitor().id, payload, request, cost.flops, on_wait, deadline_s(cost, limits()),
                                       cost.expected_s)
    except (RequestFailed, RequestCancelled) as err:
        bar.empty()
        st.error(f"This could not be computed: {err}")
        st.stop()
    bar.empty()
    return value


def _cached(cache: ResultCache, key: tuple, model: ActiveModel, request: SampleRequest, text: str):
    hit = cache.get(key)
    if hit is None:
        hit = from_workers(model, request, text)
        cache.put(key, hit)
    return hit


def cached_trajectory(model: ActiveModel, spec: SamplingSpec, seed: int, n: int,
                      tissue: Tissue | None = None) -> Trajectory:
    """The whole reverse run, computed once per (model, spec, seed, n, tissue) for the whole server."""
    spec, classes = _request(model, spec, tissue)
    return _cached(caches().trajectories, (model.key, spec, seed, n, classes), model,
                   SampleRequest("trajectory", model.key, spec, seed, n, classes), "Denoising…")


def cached_samples(model: ActiveModel, n: int, seed: int, spec: SamplingSpec | None = None,
                   tissue: Tissue | None = None) -> np.ndarray:
    """``n`` generated patches, uint8 (n, H, W, 3), computed once per (model, spec, seed, n, tissue) with ``spec``
    (default: the model's recommended one); ``tissue.tissue`` may also be a list of class indices, one per patch."""
    spec, classes = _request(model, spec, tissue)
    key_classes = tuple(classes) if isinstance(classes, (list, tuple)) else classes
    return _cached(caches().samples, (model.key, spec, seed, n, key_classes), model,
                   SampleRequest("samples", model.key, spec, seed, n, key_classes), "Sampling…")


def cached_edit(model: ActiveModel, edit: EditRequest, seed: int, tissue: Tissue) -> EditResult:
    """An edit of the Steer tissue page (``ddpm.serving.edit_request``), computed once per (model, spec, seed, tissue,
    edit) for the whole server with the model's recommended steps and the visitor's guidance and its band;
    ``tissue.tissue`` is the tissue asked for (the morph's first one)."""
    spec = model.checkpoint.sampling.replace(sampler=DEFAULT_SAMPLER, eta=0.0).fitted(model.checkpoint.schedule.num_timesteps)
    spec = spec.replace(guidance=tissue.guidance, guidance_interval=tissue.interval or EVERY_STEP)
    classes = None if edit.op == "same_noise" else tissue.tissue
    n = edit.batch_size(model.checkpoint.model_config.num_classes)
    return _cached(caches().edits, (model.key, spec, seed, classes, edit), model,
                   SampleRequest("edit", model.key, spec, seed, n, classes, edit=edit), "Steering…")
