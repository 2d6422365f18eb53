"""What every page shares: the cached model, data and registries, the model picker, cached sampling.

Heavy objects live in ``st.cache_resource`` (one per server, shared by every visitor); the few
per-visitor values live in ``st.session_state`` under these keys:

    visitor            who this visitor is (ddpm.job_state.Visitor: 128 random bits; others see a short name)
    model_name         the model picked in the sidebar (kept across pages; widget key model_picker)
    uploaded_model     (digest, Checkpoint) of a checkpoint this visitor uploaded (memory only)
    train_job          id of this visitor's training job in the registry
    train_seen_active  whether the Train page last saw that job running (to redraw when it ends)
    reverse            the Reverse page's sampling settings
    home_seed          the Home page's sample draw
    forward_seed       the Forward page's patch / noise draw
    evaluation         {model key: report} of evaluations this visitor ran
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st
import torch
from streamlit.runtime.pages_manager import PagesManager

from ddpm.checkpoints import SHIPPED_DIR, Checkpoint, CheckpointError, load_checkpoint, load_local
from ddpm.data import CLASS_NAMES, ImageSet, load_images, load_subset, to_hwc_numpy
from ddpm.job_state import Visitor
from ddpm.jobs import JobRegistry
from ddpm.model_card import EVALUATION_NAME, read_evaluation
from ddpm.pipeline import PRIOR, Trajectory
from ddpm.preview import Preview, PreviewRequest, read_preview, weights_fingerprint
from ddpm.result_cache import ResultCache, ResultCaches
from ddpm.samplers import SAMPLERS
from ddpm.sampling_spec import MAX_GUIDANCE, SamplingSpec
from ddpm.cost import RequestTooCostlyError, check_request_cost, deadline_s
from ddpm.server_limits import ServerLimits
from ddpm.serving.queue import Position, RequestCancelled
from ddpm.serving.sampling_service import RequestFailed, SamplingService
from ddpm.serving.sampling_worker import ModelPayload, SampleRequest
from ddpm.uploads import MAX_UPLOAD_BYTES, load_upload

# Streamlit decides when it starts, from the mere presence of a pages/ folder beside app.py, to run sessions in its
# old file-based mode until app.py's st.navigation has run once. A first visitor arriving on a deep link (/forward)
# would get pages/forward.py alone, with a sidebar listing the files of pages/. This module is imported by every
# page, so switch to app.py's navigation here and rerun: the page is the same, its URL path unchanged.
if PagesManager.uses_pages_directory:
    PagesManager.uses_pages_directory = False
    st.rerun()

# One intra-op thread per computation: visitors' sampling and a training job run side by side on a
# 2-core Space, and two-thread OpenMP teams on busy cores spend most of their time waiting on each
# other. DDPM_TORCH_THREADS overrides it, e.g. on a machine with more cores.
torch.set_num_threads(int(os.environ.get("DDPM_TORCH_THREADS", "1")))

MODEL_ENV = "DDPM_MODEL"  # which checkpoint is "the pretrained model": a shipped name, a folder or a Hub repo
PLOTLY_CONFIG = {"displaylogo": False, "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d"]}
PRETRAINED, PAPER, RUN, UPLOAD = "pretrained", "paper", "run", "upload"
MODEL_LABELS = {PRETRAINED: "Pretrained model (default)", PAPER: "Paper's setup (seed)",
                RUN: "Your training run", UPLOAD: "Your uploaded checkpoint"}
SAMPLER_LABELS = {name: sampler.label for name, sampler in SAMPLERS.items()}


@dataclass(frozen=True)
class ActiveModel:
    key: str  # identifies the weights in caches: same key, same images
    label: str
    checkpoint: Checkpoint

    @property
    def conditional(self) -> bool:
        return self.checkpoint.model_config.num_classes is not None


@dataclass(frozen=True)
class Tissue:
    """What a visitor asked a tissue-conditional model for: a class index or PRIOR, and the guidance scale."""

    tissue: int | str
    guidance: float

    def describe(self) -> str:
        what = "tissues drawn as often as in the training split" if self.tissue == PRIOR else CLASS_NAMES[self.tissue]
        return f"{what}, guidance {self.guidance:g}"


# ---- server-wide resources --------------------------------------------------------------------
@st.cache_resource(show_spinner="Loading the model…")
def _load_shipped(source: str) -> tuple[Checkpoint | None, str | None]:
    """(checkpoint, None) or (None, why not); failures are cached too, so the Hub is tried once."""
    try:
        return load_checkpoint(source), None
    except CheckpointError as err:
        return None, str(err)


@st.cache_resource(show_spinner="Loading PathMNIST…")
def real_images() -> tuple[ImageSet, str | None]:
    """The training split (or the bundled subset, with the reason as the second item)."""
    return load_images("train")


@st.cache_resource(show_spinner=False)
def bundled_real_images() -> ImageSet:
    """The real patches shipped with the package (1,800, class-stratified): enough for a 16-patch grid, and read
    in milliseconds where the full split takes seconds."""
    return load_subset()


@st.cache_resource(show_spinner=False)
def _fingerprint(weights_folder: str) -> str:
    return weights_fingerprint(weights_folder)


@st.cache_resource
def job_registry() -> JobRegistry:
    return JobRegistry(ServerLimits.from_env())


@st.cache_resource
def caches() -> ResultCaches:
    """Finished results for the whole server, one cache per kind (models, trajectories, animations, samples,
    nearest neighbours), each with its own size."""
    return ResultCaches()


@st.cache_resource(show_spinner="Loading the tissue encoder…")
def tissue_encoder():
    """(encoder, None) or (None, why not): the evaluation package and its weights are optional."""
    try:
        from ddpm.evaluation.encoder import load_encoder

        return load_encoder(), None
    except (ImportError, CheckpointError) as err:
        return None, f"the tissue encoder is not available ({err})"


@st.cache_resource(show_spinner=False)
def sampling_service() -> SamplingService:
    """The worker processes that compute every visitor's samples, trajectories and evaluations, in one fair line."""
    return SamplingService(workers=limits().max_compute, max_deadline_s=limits().request_deadline_s)


@st.cache_resource(show_spinner=False, max_entries=8)
def _payload(model_key: str, _checkpoint: Checkpoint) -> ModelPayload:
    """The model as the workers receive it (config + weights bytes), made once per model."""
    return ModelPayload.from_checkpoint(_checkpoint)


def limits() -> ServerLimits:
    return job_registry().limits


def visitor() -> Visitor:
    if "visitor" not in st.session_state:
        st.session_state["visitor"] = Visitor.new()
    return st.session_state["visitor"]


def show(fig, key: str, where=st) -> None:
    """Draw a Plotly figure (in ``where``: a container or an ``st.empty`` slot, else the page)."""
    where.plotly_chart(fig, key=key, config=PLOTLY_CONFIG)


# ---- the model in use -------------------------------------------------------------------------
def _run_checkpoint() -> tuple[str, Checkpoint] | None:
    """(job id, checkpoint) of this visitor's finished training run, if it saved one."""
    snap = job_registry().get(st.session_state.get("train_job"))
    if snap is None or snap.active or not snap.has_checkpoint:
        return None
    return snap.id, caches().models.get_or_compute(snap.id, lambda: load_local(snap.out_dir, source="your training run"))


def load_model(choice: str) -> tuple[ActiveModel | None, str | None]:
    """The model behind a picker choice, or (None, why it is not available)."""
    if choice == RUN:
        run = _run_checkpoint()
        if run is None:
            return None, "you have no finished training run with a saved checkpoint"
        return ActiveModel(f"run:{run[0]}", MODEL_LABELS[RUN], run[1]), None
    if choice == UPLOAD:
        if "uploaded_model" not in st.session_state:
            return None, "you have not uploaded a checkpoint"
        digest, ckpt = st.session_state["uploaded_model"]
        return ActiveModel(f"upload:{digest}", MODEL_LABELS[UPLOAD], ckpt), None
    source = os.environ.get(MODEL_ENV, "default") if choice == PRETRAINED else "seed"
    ckpt, error = _load_shipped(source)
    if ckpt is None:
        return None, error
    return ActiveModel(f"shipped:{source}", MODEL_LABELS[choice], ckpt), None


def _upload_box() -> None:
    with st.sidebar.expander("Use your own checkpoint"):
        files = st.file_uploader(f"A .zip from the Train page, or config.json + model.safetensors "
                                 f"(at most {MAX_UPLOAD_BYTES // 2**20} MB). Kept in memory for this session only.",
                                 type=["zip", "json", "safetensors"], accept_multiple_files=True, key="model_upload")
        if not files:
            return
        payload = [(f.name, f.getvalue()) for f in files]
        digest = hashlib.sha256(b"".join(d for _, d in payload)).hexdigest()[:12]
        if st.session_state.get("uploaded_model", (None,))[0] == digest:
            return
        try:
            st.session_state["uploaded_model"] = (digest, load_upload(payload))
            st.session_state["model_name"] = st.session_state["model_picker"] = UPLOAD
            st.success("Checkpoint loaded and now in use.")
        except CheckpointError as err:
            st.error(f"This upload cannot be used: {err}")


def model_picker(drawn_ahead=None) -> ActiveModel:
    """Sidebar model choice (shared by the pages that sample); stops the page with a message if it cannot load,
    emptying ``drawn_ahead`` (an ``st.empty`` slot the page filled before loading the model), if given."""
    _upload_box()
    options = [PRETRAINED, PAPER]
    if _run_checkpoint() is not None:
        options.append(RUN)
    if "uploaded_model" in st.session_state:
        options.append(UPLOAD)
    wanted = st.session_state.get("model_name", PRETRAINED)
    if st.session_state.get("model_picker") not in options:
        st.session_state["model_picker"] = wanted if wanted in options else PRETRAINED
    choice = st.sidebar.selectbox("Model", options, format_func=MODEL_LABELS.get, key="model_picker")
    st.session_state["model_name"] = choice
    model, error = load_model(choice)
    if model is None:
        if drawn_ahead is not None:
            drawn_ahead.empty()
        st.error(f"The {MODEL_LABELS[choice].lower()} cannot be loaded: {error}")
        st.stop()
    for warning in model.checkpoint.warnings:
        st.sidebar.caption(f"Note: {warning}; using the copy shipped with the app.")
    return model


def tissue_picker(model: ActiveModel, key: str, container=st) -> Tissue | None:
    """A tissue choice and a guidance slider for a tissue-conditional model (None, and nothing drawn, otherwise)."""
    if not model.conditional:
        return None
    recommended = model.checkpoint.sampling.guidance
    c1, c2 = container.columns(2)
    tissue = c1.selectbox("Tissue", [PRIOR, *range(len(CLASS_NAMES))], key=f"{key}_tissue",
                          format_func=lambda o: "a mix, as in the training split" if o == PRIOR else CLASS_NAMES[o])
    guidance = c2.slider("Guidance scale", 0.0, MAX_GUIDANCE, recommended, step=0.5, key=f"{key}_guidance",
                         help=f"Classifier-free guidance: uncond + s·(cond − uncond). 0 ignores the tissue, 1 is the plain "
                              f"conditional model, higher sticks closer to the tissue at the cost of variety. "
                              f"{recommended:g} had the best FD in this model's guidance sweep.")
    return Tissue(tissue, float(guidance))


def _request(model: ActiveModel, spec: SamplingSpec | None, tissue: Tissue | None) -> tuple[SamplingSpec, int | str | None]:
    """(spec, classes) to run: ``spec`` (default: the model's recommended one) fitted to the model's T, with the
    visitor's guidance when a tissue was picked (an unconditional model has none to apply)."""
    spec = (spec or model.checkpoint.sampling).fitted(model.checkpoint.schedule.num_timesteps)
    if tissue is None:
        return spec.replace(guidance=1.0), None
    return spec.replace(guidance=tissue.guidance), tissue.tissue


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


# ---- samples made ahead of time (ddpm.preview) -----------------------------------------------
def stored_preview(model: ActiveModel, request: PreviewRequest) -> Preview | None:
    """The preview stored beside the model's weights (or beside the shipped copy of the same weights) if those
    exact weights made it for exactly ``request``; None otherwise, and then the page samples live."""
    if model.checkpoint.path is None:
        return None
    fingerprint = _fingerprint(str(model.checkpoint.path))
    for folder in dict.fromkeys((model.checkpoint.path, SHIPPED_DIR / model.key.removeprefix("shipped:"))):
        try:
            preview = read_preview(folder, fingerprint, request)
        except ValueError as err:
            st.warning(f"{err}; sampling live instead.")
            continue
        if preview is not None:
            return preview
    return None


# ---- heavy computations: submitted to the sampling workers, waited for with the visitor's place ------
def _waiting_text(position: Position, text: str) -> tuple[float, str]:
    eta = "" if position.eta_s is None else f", about {max(1, round(position.eta_s))} s"
    if position.running:
        return position.progress, f"{text} {position.progress:.0%}{eta}"
    ahead = position.ahead
    return 0.0, (f"Waiting for your turn: {ahead} request{'s' if ahead != 1 else ''} ahead of yours{eta} "
                 f"(this server computes {limits().max_compute} at a time, first come first served)…")


def from_workers(model: ActiveModel, request: SampleRequest, text: str, bar=None):
    """The result of ``request`` from the sampling workers; meanwhile ``bar`` shows the visitor's place, the ETA and
    the progress. A failure is shown on the page, which stops there."""
    checkpoint = model.checkpoint
    payload = _payload(model.key, checkpoint)
    request = SampleRequest(request.kind, payload.key, request.spec, request.seed, request.n, request.classes,
                            request.precision)
    try:
        cost = check_request_cost(checkpoint.model_config, request.spec, request.n, checkpoint.schedule.num_timesteps,
                                  limits(), kind=request.kind, conditional=model.conditional)
    except RequestTooCostlyError as err:
        st.error(f"This server does not run that: {err}")
        st.stop()
    bar = bar or st.progress(0.0, text=text)

    def on_wait(position: Position) -> None:
        bar.progress(*_waiting_text(position, text))

    try:
        value = sampling_service().run(visitor().id, payload, request, cost.flops, on_wait, deadline_s(cost, limits()))
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


# ---- the training job's heartbeat, from whichever page the visitor is on -----------------------
@st.fragment(run_every=15)
def _heartbeat() -> None:
    job_id = st.session_state.get("train_job")
    if job_id:
        job_registry().heartbeat(job_id, visitor())


def keep_training_alive() -> None:
    """While this visitor's job runs, tell the registry they are still here (every 15 s, any page)."""
    snap = job_registry().get(st.session_state.get("train_job"))
    if snap is not None and snap.active:
        job_registry().heartbeat(snap.id, visitor())
        _heartbeat()

