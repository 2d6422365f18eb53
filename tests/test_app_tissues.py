"""The app with a tissue-conditional model: a tissue picker and a guidance slider on Home, Reverse denoising and
Compare (one row per tissue there), hidden for an unconditional model. A tiny conditional network, offline."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

from ddpm.checkpoints import make_config, save_checkpoint
from ddpm.data import CLASS_NAMES
from ddpm.schedules import ScheduleConfig
from ddpm.unet import UNetConfig, build_unet

APP = str(Path(__file__).resolve().parent.parent / "app.py")
T = 10


def tiny(folder: Path, num_classes: int | None) -> Path:
    torch.manual_seed(0)
    cfg = UNetConfig(architecture="seed", channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(),
                     num_classes=num_classes)
    extra = {"sampling": {"sampler": "dpmpp", "steps": 5, "guidance": 2.5}} if num_classes else {}
    save_checkpoint(folder, build_unet(cfg), make_config(cfg, ScheduleConfig(num_timesteps=T), preset="seed", **extra))
    return folder


@pytest.fixture()
def app_on(tmp_path, monkeypatch):
    """An offline server whose pretrained model is a tiny conditional (or unconditional) network."""
    def start(num_classes: int | None, page: str | None = None) -> AppTest:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("DDPM_MODEL", str(tiny(tmp_path / f"model-{num_classes}", num_classes)))
        monkeypatch.setenv("DDPM_DATA_DIR", str(tmp_path / "no-data"))
        monkeypatch.setenv("DDPM_HOSTED", "0")
        st.cache_resource.clear()
        at = AppTest.from_file(APP, default_timeout=120).run()
        if page:
            at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    yield start
    import pages._shared as shared

    shared.job_registry().shutdown()
    st.cache_resource.clear()


def chart(at: AppTest, key: str) -> dict:
    found = [c for c in at.get("plotly_chart") if c.key == key]
    assert found, f"no chart {key!r}; charts: {[c.key for c in at.get('plotly_chart')]}"
    return json.loads(found[0].proto.spec)


def captions(at: AppTest) -> str:
    return "\n".join(str(c.value) for c in at.caption)


def test_home_offers_the_tissues_and_the_checkpoints_recommended_guidance_and_samples_what_is_asked(app_on):
    at = app_on(9)
    tissue, guidance = at.selectbox(key="home_tissue"), at.slider(key="home_guidance")
    assert tissue.value == "prior" and guidance.value == 2.5  # the checkpoint's "sampling" section
    assert len(tissue.options) == 1 + len(CLASS_NAMES)
    assert "tissues drawn as often as in the training split, guidance 2.5" in captions(at)
    tissue.set_value(5).run()
    at.slider(key="home_guidance").set_value(4.0).run()
    assert not at.exception
    assert "smooth muscle, guidance 4" in captions(at)
    grid = chart(at, "home_grid")
    assert grid["layout"]["annotations"][1]["text"] == "real smooth muscle patches"


def test_compare_shows_one_row_per_tissue_generated_beside_real(app_on):
    at = app_on(9, "compare")
    rows = chart(at, "cmp_tissues")
    names = [a["text"] for a in rows["layout"]["annotations"]][2:]  # after the two panel titles
    assert names == list(CLASS_NAMES)
    assert [t["type"] for t in rows["data"]] == ["image", "image"]
    at.selectbox(key="cmp_tissue").set_value(0).run()  # one tissue asked for: the per-tissue rows give way
    assert "cmp_tissues" not in [c.key for c in at.get("plotly_chart")]


def test_reverse_denoising_samples_the_tissue_set_in_its_form(app_on):
    at = app_on(9, "reverse")
    at.selectbox(key="rev_tissue").set_value(0)
    at.slider(key="rev_guidance").set_value(3.0)
    next(b for b in at.button if b.label == "Generate").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "adipose, guidance 3" in captions(at) and "twice the size" in captions(at)


@pytest.mark.parametrize("page", [None, "reverse", "compare"])
def test_an_unconditional_model_shows_no_tissue_picker(app_on, page):
    at = app_on(None, page)
    assert not [w for w in at.selectbox if w.label == "Tissue"]
    assert not [w for w in at.slider if w.label == "Guidance scale"]


def test_compares_nearest_training_patches_are_those_of_the_samples_drawn_for_the_tissue_asked(app_on):
    import pages._shared as shared

    at = app_on(9, "compare")
    at.selectbox(key="cmp_tissue").set_value(0).run()
    at.selectbox(key="cmp_tissue").set_value(1).run()
    assert not at.exception
    neighbours = shared.caches().neighbours
    assert len(neighbours) == 3  # the prior's samples, then tissue 0's, then tissue 1's: each its own search
