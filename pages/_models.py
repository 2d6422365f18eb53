"""Which model a page uses: the shipped ones, the visitor's finished run or upload, and the sidebar picker;
and the samples stored beside a model's weights for a fast first view."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import streamlit as st

from ddpm.checkpoints import SHIPPED_DIR, Checkpoint, CheckpointError, load_checkpoint, load_local
from ddpm.serving.preview import Preview, PreviewRequest, read_preview, weights_fingerprint
from ddpm.serving.uploads import MAX_UPLOAD_BYTES, load_upload
from pages._shared import caches, job_registry

MODEL_ENV = "DDPM_MODEL"  # which checkpoint is "the pretrained model": a shipped name, a folder or a Hub repo
PRETRAINED, PAPER, RUN, UPLOAD = "pretrained", "paper", "run", "upload"
MODEL_LABELS = {PRETRAINED: "Pretrained model (default)", PAPER: "Paper's setup (seed)",
                RUN: "Your training run", UPLOAD: "Your uploaded checkpoint"}


@dataclass(frozen=True)
class ActiveModel:
    key: str  # identifies the weights in caches: same key, same images
    label: str
    checkpoint: Checkpoint

    @property
    def conditional(self) -> bool:
        return self.checkpoint.model_config.num_classes is not None


@st.cache_resource(show_spinner="Loading the model…")
def _load_shipped(source: str) -> tuple[Checkpoint | None, str | None]:
    """(checkpoint, None) or (None, why not); failures are cached too, so the Hub is tried once."""
    try:
        return load_checkpoint(source), None
    except CheckpointError as err:
        return None, str(err)


@st.cache_resource(show_spinner=False)
def _fingerprint(weights_folder: str) -> str:
    return weights_fingerprint(weights_folder)


def model_fingerprint(model: ActiveModel) -> str | None:
    """sha256 of the model.safetensors in use (None for weights without a folder, e.g. an upload in memory)."""
    return None if model.checkpoint.path is None else _fingerprint(str(model.checkpoint.path))


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


# ---- samples made ahead of time (ddpm.serving.preview) -----------------------------------------------
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


