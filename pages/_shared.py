"""What every page shares: the page setup, the server-wide resources and registries, the visitor, the heartbeat.

The rest of what pages share is split by concern: ``pages._models`` (which model is in use: the picker, uploads,
the stored preview), ``pages._pickers`` (the tissue and guidance controls) and ``pages._compute`` (heavy work:
submitted to the sampling workers, waited for with the visitor's place, cached for the whole server).

Heavy objects live in ``st.cache_resource`` (one per server, shared by every visitor); the few
per-visitor values live in ``st.session_state`` under these keys:

    visitor            who this visitor is (ddpm.serving.job_state.Visitor: 128 random bits; others see a short name)
    model_name         the model picked in the sidebar (kept across pages; widget key model_picker)
    uploaded_model     (digest, Checkpoint) of a checkpoint this visitor uploaded (memory only)
    train_job          id of this visitor's training job in the registry
    train_seen_active  whether the Train page last saw that job running (to redraw when it ends)
    reverse            the Reverse page's sampling settings
    home_seed          the Home page's sample draw
    forward_seed       the Forward page's patch / noise draw
    evaluation         {model key: report} of evaluations this visitor ran
    quiz               this visitor's "Real or generated?" (ddpm.serving.quiz_rounds.QuizSession: patches seen, answers)
"""
from __future__ import annotations

import os

import streamlit as st
import torch
from streamlit.runtime.pages_manager import PagesManager

from ddpm.data import ImageSet, load_images, load_subset
from ddpm.quiz import QuizDB, QuizDBError, default_db_path, hub_sync_from_env
from ddpm.serving.job_state import Visitor
from ddpm.serving.jobs import JobRegistry
from ddpm.serving.quiz_rounds import Quiz
from ddpm.serving.result_cache import ResultCaches
from ddpm.serving.server_limits import ServerLimits

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

PLOTLY_CONFIG = {"displaylogo": False, "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d"]}


# ---- server-wide resources --------------------------------------------------------------------
@st.cache_resource(show_spinner="Loading PathMNIST…")
def real_images() -> tuple[ImageSet, str | None]:
    """The training split (or the bundled subset, with the reason as the second item)."""
    return load_images("train")


@st.cache_resource(show_spinner=False)
def bundled_real_images() -> ImageSet:
    """The real patches shipped with the package (1,800, class-stratified): enough for a 16-patch grid, and read
    in milliseconds where the full split takes seconds."""
    return load_subset()


@st.cache_resource(show_spinner="Loading PathMNIST's validation split…")
def validation_images() -> tuple[ImageSet, str | None]:
    """The validation split (or the bundled subset, with the reason as the second item): the quiz's real patches."""
    return load_images("val")


@st.cache_resource(show_spinner=False)
def _quiz() -> Quiz:
    db = QuizDB(default_db_path())  # a QuizDBError is not cached: the next visitor tries again
    hub, note = hub_sync_from_env(db)
    return Quiz(db, hub=hub, hub_note=note)


def quiz_service() -> tuple[Quiz | None, str | None]:
    """(the server's quiz: open rounds, rate limits, the answers database; None) or (None, why it cannot run)."""
    try:
        return _quiz(), None
    except QuizDBError as err:
        return None, str(err)


@st.cache_resource
def job_registry() -> JobRegistry:
    return JobRegistry(ServerLimits.from_env())


@st.cache_resource
def caches() -> ResultCaches:
    """Finished results for the whole server, one cache per kind (models, trajectories, animations, samples,
    nearest neighbours), each with its own size."""
    return ResultCaches()


def limits() -> ServerLimits:
    return job_registry().limits


def visitor() -> Visitor:
    if "visitor" not in st.session_state:
        st.session_state["visitor"] = Visitor.new()
    return st.session_state["visitor"]


def show(fig, key: str, where=st, width: str = "stretch") -> None:
    """Draw a Plotly figure (in ``where``: a container or an ``st.empty`` slot, else the page); ``width="content"``
    keeps the figure's own width."""
    where.plotly_chart(fig, key=key, config=PLOTLY_CONFIG, width=width)


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

