"""The Steer tissue page through AppTest: a tiny conditional network (offline, T = 10) for what it draws and how its
controls behave, the shipped default model for a render, and the unconditional seed model for its message."""
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
from ddpm.serving.edit_request import MORPH_WEIGHTS, SDEDIT_STRENGTHS
from ddpm.unet import UNetConfig, build_unet

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "app.py")
T = 10
CHARTS = ["steer_sdedit", "steer_strengths", "steer_inpaint", "steer_morph", "steer_tissues"]


def tiny(folder: Path, num_classes: int | None) -> Path:
    torch.manual_seed(0)
    cfg = UNetConfig(architecture="seed", channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(),
                     num_classes=num_classes)
    model = build_unet(cfg)
    with torch.no_grad():  # the class embedding starts at zero: give it values, so tissues differ
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sampling = {"sampler": "dpmpp", "steps": 4, "guidance": 2.0 if num_classes else 1.0}
    save_checkpoint(folder, model, make_config(cfg, ScheduleConfig(num_timesteps=T), preset="seed", sampling=sampling))
    return folder


@pytest.fixture()
def steer(tmp_path, monkeypatch):
    """Open the Steer tissue page of an offline server whose pretrained model is ``model`` (a folder or a shipped
    name); the caches and the job registry are reset around the test."""
    def open_with(model: str | Path) -> AppTest:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("DDPM_MODEL", str(model))
        monkeypatch.setenv("DDPM_DATA_DIR", str(tmp_path / "no-data"))
        monkeypatch.setenv("DDPM_HOSTED", "0")
        st.cache_resource.clear()
        at = AppTest.from_file(APP, default_timeout=180).run()
        at.switch_page("pages/steer.py").run()
        assert not at.exception, [e.value for e in at.exception]
        assert at.title[0].value == "Steer tissue"
        return at

    yield open_with
    import pages._shared as shared

    shared.job_registry().shutdown()
    st.cache_resource.clear()


def chart(at: AppTest, key: str) -> dict:
    found = [c for c in at.get("plotly_chart") if c.key == key]
    assert found, f"no chart {key!r}; charts: {[c.key for c in at.get('plotly_chart')]}"
    return json.loads(found[0].proto.spec)


def annotations(at: AppTest, key: str) -> list[str]:
    return [a["text"] for a in chart(at, key)["layout"]["annotations"]]


def test_steer_page_draws_every_section_and_its_strength_slider_reads_the_cached_row(steer, tmp_path, monkeypatch):
    import pages._compute as compute

    calls = []
    real = compute.from_workers
    def record(model, request, *a):
        if request.kind == "edit":  # Home, opened first, samples
            calls.append(request)
        return real(model, request, *a)

    monkeypatch.setattr(compute, "from_workers", record)
    at = steer(tiny(tmp_path / "model", 9))
    assert [c.key for c in at.get("plotly_chart")] == CHARTS
    assert sorted(r.edit.op for r in calls) == ["inpaint", "morph", "same_noise", "sdedit"]
    assert {r.spec.steps for r in calls} == {4}  # the checkpoint's steps
    assert {r.spec.guidance for r in calls} == {2.0}  # and its guidance, the slider's default
    assert annotations(at, "steer_sdedit")[1].startswith("noised to s = 0.8") and len(chart(at, "steer_strengths")["data"]) == 22
    assert len(chart(at, "steer_inpaint")["data"]) == 2 + 3
    morph = chart(at, "steer_morph")
    assert len(morph["frames"]) == len(MORPH_WEIGHTS) and morph["layout"]["title"]["text"] == "100% lymphocytes · 0% adipose"
    assert [a.replace("<br>", " ") for a in annotations(at, "steer_tissues")] == list(CLASS_NAMES)

    n = len(calls)
    at.select_slider(key="steer_strength").set_value(0.3).run()
    assert not at.exception and len(calls) == n  # the whole row of strengths was computed at once
    assert annotations(at, "steer_sdedit")[1].startswith("noised to s = 0.3")
    assert "<b>▸ s = 0.3</b>" in annotations(at, "steer_strengths")

    at.radio(key="steer_mask").set_value("ring").run()
    assert not at.exception and [r.edit.op for r in calls[n:]] == ["inpaint"] and calls[-1].edit.mask == "ring"
    at.selectbox(key="steer_morph_b").set_value(CLASS_NAMES.index("mucus")).run()
    assert chart(at, "steer_morph")["layout"]["title"]["text"] == "100% lymphocytes · 0% mucus"
    assert calls[-1].edit.op == "morph" and calls[-1].edit.tissue_b == CLASS_NAMES.index("mucus")
    at.selectbox(key="steer_tissue").set_value(4).run()  # steer towards mucus: the real-patch edits are redone
    assert {r.edit.op for r in calls[-2:]} == {"sdedit", "inpaint"} and calls[-1].classes == 4
    assert annotations(at, "steer_sdedit")[2] == "repainted as mucus"
    assert all(r.edit.strengths == SDEDIT_STRENGTHS for r in calls if r.edit.op == "sdedit")


def test_steer_page_with_an_unconditional_model_says_which_model_to_pick(steer, tmp_path):
    at = steer(tiny(tmp_path / "seed-like", None))
    message = "\n".join(str(i.value) for i in at.info)
    assert "unconditional" in message and "Pick the pretrained model (default)" in message
    assert not at.get("plotly_chart")


def test_steer_page_with_the_shipped_seed_model_explains_instead_of_failing(steer):
    if not (REPO / "checkpoints" / "seed" / "model.safetensors").is_file():
        pytest.skip("no shipped seed model")
    at = steer("seed")
    assert "unconditional" in "\n".join(str(i.value) for i in at.info)


def test_steer_page_renders_every_section_with_the_shipped_default_model(steer):
    if not (REPO / "checkpoints" / "default" / "model.safetensors").is_file():
        pytest.skip("no shipped default model")
    at = steer("default")
    assert [c.key for c in at.get("plotly_chart")] == CHARTS
    assert not at.error
