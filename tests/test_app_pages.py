"""Every page of the Streamlit app through streamlit.testing.v1.AppTest: widgets changed, outputs asserted.

The app runs offline (HF_HUB_OFFLINE=1) on a tiny checkpoint written here (the paper's small network,
T = 20) and on the bundled data subset, so each page renders in about a second.
"""
from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

from ddpm.checkpoints import make_config, save_checkpoint
from ddpm.export import checkpoint_zip
from ddpm.schedules import ScheduleConfig
from ddpm.unet import UNetConfig, build_unet

APP = str(Path(__file__).resolve().parent.parent / "app.py")
T = 20
TIMEOUT = 120


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = UNetConfig(architecture="seed", channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=())
    folder = tmp_path_factory.mktemp("model")
    save_checkpoint(folder, build_unet(cfg), make_config(cfg, ScheduleConfig(num_timesteps=T), preset="seed"))
    return folder


@pytest.fixture(scope="module", autouse=True)
def offline_app(model_dir, tmp_path_factory):
    """Environment of an offline server on the tiny model; caches and jobs are reset around the module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("DDPM_MODEL", str(model_dir))
        mp.setenv("DDPM_DATA_DIR", str(tmp_path_factory.mktemp("no-data")))
        mp.setenv("DDPM_HOSTED", "0")
        st.cache_resource.clear()
        yield
        import pages._shared as shared

        shared.job_registry().shutdown()
        st.cache_resource.clear()


def open_page(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    if page:
        at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def chart(at: AppTest, key: str) -> dict:
    found = [c for c in at.get("plotly_chart") if c.key == key]
    assert found, f"no chart {key!r}; charts: {[c.key for c in at.get('plotly_chart')]}"
    return json.loads(found[0].proto.spec)


def values(v) -> list:
    """A trace's array as a list: Plotly writes numpy arrays as base64 ``bdata``."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).tolist()
    return list(v)


def chart_keys(at: AppTest) -> list[str]:
    return [c.key for c in at.get("plotly_chart")]


def texts(at: AppTest, kind: str) -> str:
    return "\n".join(str(e.value) for e in getattr(at, kind))


def clicked(at: AppTest, label: str) -> AppTest:
    next(b for b in at.button if b.label == label).click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


# ---- Home ---------------------------------------------------------------------------------------
def test_home_shows_generated_beside_real_the_model_and_links_to_every_page(monkeypatch):
    monkeypatch.setattr("random.randrange", lambda *bounds: 2)
    at = open_page()
    assert at.title[0].value == "PathMNIST Diffusion Studio"
    grid = chart(at, "home_grid")
    assert [t["type"] for t in grid["data"]] == ["image", "image"]
    assert grid["layout"]["annotations"][0]["text"] == "generated (seed 0)"  # the first view is seed 0, for everyone
    assert "sampled live" in texts(at, "caption")  # this tiny model has no preview beside it
    assert "local folder" in texts(at, "markdown") and "seed U-Net" in texts(at, "markdown")
    assert len(at.get("page_link")) == 6
    assert chart_keys(at) == ["home_grid"]  # the frame drawn before the model loaded was replaced, not kept
    at = clicked(at, "New samples")
    assert chart(at, "home_grid")["layout"]["annotations"][0]["text"] == "generated (seed 2)"
    assert chart_keys(at) == ["home_grid"]


def left_grid(at: AppTest) -> np.ndarray:
    """The generated grid Home drew, decoded from its PNG data URI: (rows, cols, 3) uint8."""
    from PIL import Image

    source = chart(at, "home_grid")["data"][0]["source"]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).convert("RGB"))


def model_with_preview(folder: Path, preview_of: Path | None = None, seed: int = 0) -> Path:
    """A tiny model in ``folder`` and beside it the preview of ``preview_of``'s weights (its own by default),
    with every patch painted the colour (7, 77, 177) so the test can tell stored patches from sampled ones."""
    from ddpm.checkpoints import load_local
    from ddpm.serving.preview import home_request, make_preview, write_preview

    torch.manual_seed(seed)
    cfg = UNetConfig(architecture="seed", channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=())
    save_checkpoint(folder, build_unet(cfg), make_config(cfg, ScheduleConfig(num_timesteps=T), preset="seed"))
    maker = load_local(preview_of or folder)
    preview = make_preview(maker, home_request(maker), precision="fp32")
    painted = np.empty_like(preview.images)
    painted[...] = (7, 77, 177)
    write_preview(folder, replace(preview, images=painted))
    return folder


def test_home_first_shows_the_preview_made_by_these_weights_says_so_and_new_samples_are_live(tmp_path, monkeypatch):
    from ddpm.serving.preview import weights_fingerprint

    folder = model_with_preview(tmp_path / "with-preview")
    monkeypatch.setenv("DDPM_MODEL", str(folder))
    monkeypatch.setattr("random.randrange", lambda *bounds: 5)
    at = open_page()
    caption = texts(at, "caption")
    assert "made ahead of time by these same weights" in caption and weights_fingerprint(folder)[:12] in caption
    assert "seed 0" in caption and "20 steps" in caption and "preview.npz" in caption
    assert (left_grid(at)[5, 5] == (7, 77, 177)).all()  # a pixel inside the first patch: the stored one
    at = clicked(at, "New samples")
    assert "sampled live" in texts(at, "caption") and "made ahead of time" not in texts(at, "caption")
    assert chart(at, "home_grid")["layout"]["annotations"][0]["text"] == "generated (seed 5)"
    assert not (left_grid(at)[5, 5] == (7, 77, 177)).all()


def test_home_never_shows_a_preview_made_by_other_weights(tmp_path, monkeypatch):
    other = model_with_preview(tmp_path / "other", seed=1)
    folder = model_with_preview(tmp_path / "retrained", preview_of=other, seed=2)
    monkeypatch.setenv("DDPM_MODEL", str(folder))
    at = open_page()
    assert "sampled live" in texts(at, "caption") and "made ahead of time" not in texts(at, "caption")
    assert not (left_grid(at)[5, 5] == (7, 77, 177)).all()


def test_home_takes_its_real_patches_from_the_bundled_subset_not_the_full_split(monkeypatch):
    def full_split(*args, **kwargs):
        raise AssertionError("Home read the full training split")

    monkeypatch.setattr("ddpm.data.load_pathmnist", full_split)
    st.cache_resource.clear()
    at = open_page()
    assert "bundled subset of the PathMNIST training split" in texts(at, "caption")
    assert chart(at, "home_grid")["data"][1]["type"] == "image"


@pytest.mark.skipif(not (Path(APP).parent / "checkpoints" / "default" / "model.safetensors").is_file(),
                    reason="no shipped default model yet")
def test_offline_the_shipped_model_is_used_and_the_page_says_so(monkeypatch):
    monkeypatch.delenv("DDPM_MODEL")
    at = open_page()
    facts = texts(at, "markdown")
    assert "shipped copy" in facts and "checkpoints/default" in facts
    assert "Hub" in texts(at, "caption")  # the sidebar notes that the Hub was not used
    assert chart(at, "home_grid")["data"][0]["type"] == "image"


def test_a_model_that_cannot_load_is_explained_not_a_traceback(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    monkeypatch.setenv("DDPM_MODEL", str(tmp_path))
    at = open_page()
    assert "cannot be loaded" in texts(at, "error") and "not valid JSON" in texts(at, "error")
    assert not at.get("plotly_chart")


# ---- Forward ------------------------------------------------------------------------------------
def test_forward_page_scrubs_t_and_states_the_papers_residual_signal():
    at = open_page("forward")
    assert [t["type"] for t in chart(at, "fwd_hist")["data"]] == ["bar", "bar", "scatter"]
    assert len(chart(at, "fwd_curves")["data"]) == 9
    assert chart(at, "fwd_grid")["data"][0]["type"] == "image"
    at.slider(key="fwd_t").set_value(200).run()
    assert chart(at, "fwd_hist")["data"][1]["name"] == "x_t at t = 200"
    assert at.metric[0].value == "0.364"
    assert "36%" in texts(at, "warning")
    at.radio(key="fwd_schedule").set_value("cosine, zero terminal SNR").run()
    assert at.metric[0].value == "0.000" and "pure noise" in texts(at, "success")
    at.slider(key="fwd_t").set_value(0).run()
    assert at.metric[0].value == "1.000" and at.metric[2].value == "∞"
    at.selectbox(key="fwd_tissue").set_value("mucus").run()
    at.slider(key="fwd_n").set_value(3).run()
    assert not at.exception and chart(at, "fwd_grid")["data"][0]["type"] == "image"
    assert "bundled subset" in texts(at, "info")  # the full data file is absent and the page says so


# ---- Reverse ------------------------------------------------------------------------------------
def test_reverse_page_animates_every_step_and_scrubs_without_resampling(monkeypatch):
    import pages._compute as compute

    calls = []
    real = compute.from_workers
    monkeypatch.setattr(compute, "from_workers", lambda model, request, *a: calls.append(request) or real(model, request, *a))
    at = open_page("reverse")
    anim = chart(at, "rev_animation")
    assert [t["type"] for t in anim["data"]] == ["image", "image"] and len(anim["frames"]) == T + 1
    assert [b["label"] for b in anim["layout"]["updatemenus"][0]["buttons"]] == ["▶ Play", "❚❚ Pause"]
    assert len(anim["layout"]["sliders"][0]["steps"]) == T + 1

    at.slider(key="rev_inspect").set_value(3).run()
    assert chart(at, "rev_step")["layout"]["annotations"][0]["text"].startswith("x_t at step 3")
    assert len(at.get("download_button")) == 2

    at.selectbox(key="rev_sampler").set_value("ddim")
    at.slider(key="rev_steps").set_value(5)
    at = clicked(at, "Generate")
    assert len(chart(at, "rev_animation")["frames"]) == 6
    at.slider(key="rev_inspect").set_value(2).run()
    assert not at.exception and "x_t at step 2" in chart(at, "rev_step")["layout"]["annotations"][0]["text"]
    n_calls = len(calls)
    at.slider(key="rev_inspect").set_value(4).run()
    assert len(calls) == n_calls  # scrubbing reads the cached trajectory
    assert {r.kind for r in calls} == {"trajectory"}  # computed by the sampling workers, not the page


def test_reverse_page_runs_full_ddpm_and_shares_the_cache_across_visitors(monkeypatch):
    import pages._compute as compute

    at = open_page("reverse")
    at.selectbox(key="rev_sampler").set_value("ddpm")
    at.slider(key="rev_n").set_value(2)
    at = clicked(at, "Generate")
    assert len(chart(at, "rev_animation")["frames"]) == T + 1
    calls = []
    monkeypatch.setattr(compute, "from_workers", lambda *a, **k: calls.append(1))
    other = open_page("reverse")  # another visitor, default settings: served from the shared cache
    assert len(chart(other, "rev_animation")["frames"]) == T + 1 and not calls


def test_an_uploaded_checkpoint_is_checked_then_used(model_dir):
    at = open_page("reverse")
    at.file_uploader(key="model_upload").set_value(("broken.zip", b"not a zip", "application/zip")).run()
    assert "This upload cannot be used" in texts(at, "error") and "not a readable zip" in texts(at, "error")
    good = checkpoint_zip(model_dir)
    at.file_uploader(key="model_upload").set_value(("run.zip", good, "application/zip")).run()
    assert not at.exception
    assert at.selectbox(key="model_picker").value == "upload"
    assert len(chart(at, "rev_animation")["frames"]) == T + 1
    assert "your uploaded checkpoint" in texts(at, "caption") and at.session_state["model_name"] == "upload"


def test_any_failing_upload_is_one_message_on_the_page_never_a_traceback(model_dir):
    from safetensors.torch import load, save
    from test_uploads import bad_crc, patch_headers, zipped

    files = {name: (model_dir / name).read_bytes() for name in ("config.json", "model.safetensors")}
    config = json.loads(files["config.json"])
    state = load(files["model.safetensors"])
    nan_weights = save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()})
    uploads = {
        "bad-crc.zip": (bad_crc(files), "Bad CRC-32"),
        "encrypted.zip": (patch_headers(zipped(files), flags=0x1), "encrypted"),
        "nested.zip": (zipped({**files, "config.json": b"[" * 100_000 + b"]" * 100_000}), "nested too deeply"),
        "training.zip": (zipped({**files, "config.json": json.dumps({**config, "training": "x"}).encode()}),
                         '"training" must be an object'),
        "huge.zip": (zipped({**files, "config.json": json.dumps({**config, "data": "A" * 5_000_000}).encode()}),
                     '"data" must be text of at most'),
        "nan.zip": (zipped({**files, "model.safetensors": nan_weights}), "NaN or infinite"),
    }
    at = open_page()  # Home: it also describes the model in use from its config's optional sections
    for name, (data, detail) in uploads.items():
        at.file_uploader(key="model_upload").set_value((name, data, "application/zip")).run()
        assert not at.exception, (name, [e.value for e in at.exception])
        errors = [str(e.value) for e in at.error]
        assert len(errors) == 1 and errors[0].startswith("This upload cannot be used: ") and detail in errors[0], name
        assert "Checkpoint loaded" not in texts(at, "success") and "uploaded_model" not in at.session_state


# ---- Steer tissue (a conditional model's page: tests/test_app_steer.py) -----------------------------------------
def test_steer_page_with_this_unconditional_model_explains_and_draws_nothing():
    at = open_page("steer")
    assert "it takes no tissue" in texts(at, "info") and not at.get("plotly_chart")


# ---- Train --------------------------------------------------------------------------------------
def _wait_for_job(job_id: str, timeout: float = 120) -> None:
    import pages._shared as shared

    shared.job_registry().wait(job_id, timeout=timeout)


def test_train_page_runs_a_job_in_the_background_and_shows_its_loss_samples_and_download():
    at = open_page("train")
    assert "No run yet" in texts(at, "info")
    at.selectbox(key="train_preset").set_value("seed")
    at.number_input(key="train_steps").set_value(3)
    at.select_slider(key="train_batch").set_value(8)
    at.number_input(key="train_sample_every").set_value(1)
    at = clicked(at, "Start training")
    job_id = at.session_state["train_job"]
    _wait_for_job(job_id)
    at.run()
    assert not at.exception
    loss = chart(at, "train_loss")
    assert [t["name"] for t in loss["data"]] == ["loss (raw)", "loss (smoothed)"] and values(loss["data"][0]["x"]) == [1, 2, 3]
    assert chart(at, "train_samples")["data"][0]["type"] == "image"
    assert "finished" in texts(at, "success")
    assert at.get("download_button")
    compare = chart(at, "train_compare")
    assert [a["text"] for a in compare["layout"]["annotations"]] == ["your run", "the pretrained model"]
    # the finished run becomes a model the other pages can use
    at.switch_page("pages/reverse.py").run()
    at.selectbox(key="model_picker").set_value("run").run()
    assert not at.exception and "your training run" in texts(at, "caption")


def test_train_page_stops_a_run_and_shows_the_busy_server_to_others(tiny_images):
    import pages._shared as shared
    from ddpm.serving.job_state import Visitor
    from ddpm.serving.train_request import TrainRequest

    registry, someone = shared.job_registry(), Visitor("ffff" + "0" * 28)
    other = registry.start(TrainRequest(preset="seed", steps=20_000, batch_size=4), someone, tiny_images)
    try:
        at = open_page("train")
        assert "visitor ffff is training a model" in texts(at, "info")
        at = clicked(at, "Start training")
        assert "One training job runs at a time" in texts(at, "warning")
    finally:
        registry.stop(other.id, someone)
        registry.wait(other.id, timeout=60)

    at.selectbox(key="train_preset").set_value("seed")
    at.number_input(key="train_steps").set_value(20_000)
    at.select_slider(key="train_batch").set_value(8)
    at = clicked(at, "Start training")
    job_id = at.session_state["train_job"]
    assert chart_keys(at).count("train_loss") == 1 and at.button(key="train_stop")
    at.button(key="train_stop").click().run()
    _wait_for_job(job_id)
    at.run()
    assert "stopped by you" in texts(at, "success")
    assert registry.active() is None


# ---- Compare ------------------------------------------------------------------------------------
REPORT = {
    "protocol": {"n_generated": 100, "note": None},
    "metrics": {"fd": 10.0, "kid_mean": 0.01, "precision": 0.5, "recall": 0.4, "density": 0.8, "coverage": 0.6,
                "class_tv": 0.2, "memorization_share": 0.0},
    "floor": {"fd": 1.0, "kid_mean": 0.001, "precision": 0.7, "recall": 0.7, "density": 1.0, "coverage": 0.9,
              "class_tv": 0.01, "memorization_share": 0.0},
    "class_names": [], "class_hist": {"generated": [1 / 9] * 9, "train_prior": [1 / 9] * 9},
    "color_hist": {"generated": [[1 / 32] * 32] * 3, "reference": [[1 / 32] * 32] * 3},
    "nearest": {"index": [0], "pixel_l2": [1.0], "ratio": [0.9]}, "ratio_histogram": [1] * 20,
}


def test_compare_page_shows_pairs_memorization_and_runs_the_real_evaluation(model_dir):
    at = open_page("compare")
    assert chart(at, "cmp_pairs")["data"][0]["type"] == "image"
    memo = chart(at, "cmp_memo")
    assert len(memo["data"]) == 16 and memo["layout"]["annotations"][0]["text"].startswith("d = ")
    assert "No evaluation of this model is stored yet" in texts(at, "info")
    assert "cmp_metrics" not in chart_keys(at)

    # the app's own path, nothing stood in: the tiny model samples 50 patches, the shipped tissue encoder scores
    # them against the bundled subset (no PathMNIST file here), with the real-versus-real floor
    at.slider(key="cmp_n").set_value(50)
    at = clicked(at, "Run a fresh evaluation")
    report = next(iter(at.session_state["evaluation"].values()))
    assert report["protocol"]["n_generated"] == 50 and "bundled subset" in report["protocol"]["note"]
    assert (report["sampling"]["sampler"], report["sampling"]["seed"]) == ("dpmpp", 1)
    assert all(np.isfinite(report["metrics"][k]) and np.isfinite(report["floor"][k]) for k in ("fd", "precision", "recall"))
    assert report["floor"]["fd"] < report["metrics"]["fd"]  # an untrained tiny model is far from real patches
    table = chart(at, "cmp_metrics")["data"][0]
    assert table["type"] == "table" and table["cells"]["values"][2][0] == f"{report['metrics']['fd']:.4g}"
    assert len(chart(at, "cmp_classes")["data"]) == 2 and len(chart(at, "cmp_colors")["data"]) == 6
    assert "your evaluation in this session" in texts(at, "caption")


def test_compare_page_reads_a_precomputed_evaluation_at_once(model_dir):
    (model_dir / "evaluation.json").write_text(json.dumps({**REPORT, "centre_shift": REPORT["floor"]}))
    try:
        at = open_page("compare")
        assert len(chart(at, "cmp_metrics")["data"][0]["header"]["values"]) == 5
        assert "precomputed" in texts(at, "caption")
    finally:
        (model_dir / "evaluation.json").unlink()


# ---- About --------------------------------------------------------------------------------------
def test_about_page_is_a_model_card():
    at = open_page("about")
    headers = [h.value for h in at.header]
    assert headers == ["Data", "Method", "The model in use", "Limitations", "Ethics of synthetic medical images"]
    body = texts(at, "markdown")
    assert "CC BY 4.0" in body and "Never diagnostic evidence" in body and "36%" in body
    assert len(at.table) == 1


def test_every_page_is_reachable_by_its_url_path():
    at = open_page()
    for page in ("forward", "reverse", "steer", "train", "quiz", "compare", "about", "home"):
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception and at.title[0].value


def test_the_quiz_explains_that_it_needs_a_tissue_conditional_model():
    at = open_page("quiz")  # this module's tiny model is unconditional
    assert at.title[0].value == "Real or generated?" and not at.button
    assert "needs a tissue-conditional model" in texts(at, "info") and "DDPM_MODEL" in texts(at, "info")


def test_a_child_process_of_the_server_importing_app_py_again_runs_nothing_and_imports_no_streamlit():
    """multiprocessing runs the server's main script again in every child it starts, as ``__mp_main__``."""
    code = "import runpy, sys; runpy.run_path('app.py', run_name='__mp_main__'); print('streamlit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(APP).parent, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_the_servers_config_names_only_streamlits_options_no_gc_after_each_run_and_no_running_icon():
    """Streamlit only logs a warning for an unknown key: each one is checked here. A full collection after every
    script run (Streamlit's default) held the server's GIL for a few hundred ms per run, and the top bar's running
    icon re-renders five times a second in every waiting tab (see the file's comments)."""
    import tomllib

    from streamlit import config

    settings = tomllib.loads((Path(APP).parent / ".streamlit" / "config.toml").read_text())
    known = config.get_config_options()
    names = [f"{section}.{key}" for section, values in settings.items() for key in values]
    assert [name for name in names if name not in known] == []
    assert settings["runner"]["postScriptGC"] is False
    assert settings["ui"]["hideTopBar"] is True
