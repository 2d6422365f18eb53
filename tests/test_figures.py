"""Figure builders (ddpm.figures), the forward-process helpers (ddpm.explain) and exports, without Streamlit."""
from __future__ import annotations

import base64
import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm import figures
from ddpm.checkpoints import CheckpointError, make_config, save_checkpoint
from ddpm.data import CLASS_NAMES, ImageSet
from ddpm.explain import (SCHEDULES, diffuse, patches_like, pick_patches, preset_comparison, schedule_name,
                          signal_and_noise)
from ddpm.export import checkpoint_zip, trajectory_gif
from ddpm.imaging import png_bytes
from ddpm.schedules import NoiseSchedule, ScheduleConfig
from ddpm.serving.uploads import load_upload


def _images(n: int, size: int = 28, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _decode(source: str) -> np.ndarray:
    assert source.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))))


def test_image_grid_figure_is_one_image_trace_holding_the_tiled_patches():
    imgs = _images(6)
    fig = figures.image_grid_figure(imgs, ncols=3, title="grid")
    assert [t.type for t in fig.data] == ["image"]
    grid = _decode(fig.data[0].source)
    assert grid.shape == (2 * 30 + 2, 3 * 30 + 2, 3)  # 2 rows × 3 columns of 28 px with 2 px padding
    np.testing.assert_array_equal(grid[2:30, 2:30], imgs[0])


def test_image_figures_reject_float_or_channel_first_arrays_with_a_message():
    with pytest.raises(ValueError, match="uint8"):
        figures.image_grid_figure(np.zeros((2, 28, 28, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        figures.image_grid_figure(np.zeros((2, 3, 28, 28), np.uint8))


def test_side_by_side_figure_has_two_titled_image_panels():
    fig = figures.side_by_side_figure(_images(4), _images(4, seed=1), "generated", "real")
    assert [t.type for t in fig.data] == ["image", "image"]
    assert [a.text for a in fig.layout.annotations] == ["generated", "real"]


def test_schedule_curves_figure_draws_three_panels_per_schedule_and_marks_t():
    scheds = {k: NoiseSchedule.from_config(c) for k, c in SCHEDULES.items()}
    fig = figures.schedule_curves_figure(scheds, t=50, highlight="cosine")
    assert len(fig.data) == 3 * len(scheds)
    assert {t.name for t in fig.data} == set(SCHEDULES)
    first = fig.data[0]  # ᾱ of the paper's linear schedule over t = 1 … 200
    assert len(first.x) == 200 and first.x[0] == 1
    np.testing.assert_allclose(first.y, scheds["linear (paper)"].alphas_cumprod.numpy())
    assert [s.x0 for s in fig.layout.shapes] == [50, 50, 50]
    assert fig.layout.xaxis3.type is None and fig.layout.yaxis3.type == "log"
    widths = {t.name: t.line.width for t in fig.data}
    assert widths["cosine"] > widths["linear (paper)"]


def test_schedule_curves_drop_the_zero_snr_point_from_the_log_axis():
    fig = figures.schedule_curves_figure({"zt": NoiseSchedule.from_config(ScheduleConfig())})
    snr = np.asarray(fig.data[2].y, dtype=float)
    assert np.isnan(snr[-1]) and np.isfinite(snr[:-1]).all()


def test_pixel_histogram_figure_is_a_density_beside_the_standard_normal():
    x = np.random.default_rng(0).standard_normal(50_000)
    fig = figures.pixel_histogram_figure(x, x_0=np.zeros(10), t=200)
    assert [t.type for t in fig.data] == ["bar", "bar", "scatter"]
    assert fig.data[1].name == "x_t at t = 200" and fig.data[2].name == "N(0, 1)"
    width = fig.data[1].width
    assert sum(fig.data[1].y) * width == pytest.approx(1.0, abs=1e-3)
    centre = np.argmin(np.abs(np.asarray(fig.data[1].x)))
    assert fig.data[1].y[centre] == pytest.approx(1 / np.sqrt(2 * np.pi), rel=0.1)


def test_trajectory_times_follow_the_sample_not_the_denoised_step():
    # DDPM with T = 4: frames x_4, x_3, x_2, x_1, x_0
    assert figures.trajectory_times([4, 3, 2, 1, 0]) == [4, 3, 2, 1, 0]
    # a 2-step trailing sampler on T = 10 denoises indices 9 and 4: frames x_10, x_5, x_0
    assert figures.trajectory_times([10, 9, 4]) == [10, 5, 0]


def test_denoising_animation_has_a_frame_per_step_and_play_pause_and_slider():
    S, B = 5, 4
    samples, preds = np.stack([_images(B, seed=i) for i in range(S + 1)]), np.stack([_images(B, seed=10 + i) for i in range(S + 1)])
    fig = figures.denoising_animation_figure(samples, preds, [10, 9, 7, 5, 3, 1])
    assert [t.type for t in fig.data] == ["image", "image"]
    assert len(fig.frames) == S + 1 and [f.name for f in fig.frames] == [str(i) for i in range(S + 1)]
    assert all(len(f.data) == 2 and f.data[0].type == "image" for f in fig.frames)
    np.testing.assert_array_equal(_decode(fig.frames[2].data[1].source)[2:30, 2:30], preds[2][0])
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["▶ Play", "❚❚ Pause"] and buttons[0].method == "animate"
    slider = fig.layout.sliders[0]
    assert len(slider.steps) == S + 1 and slider.active == S
    assert list(slider.steps[3].args[0]) == ["3"] and slider.steps[3].label == "step 3/5 · t = 4"
    np.testing.assert_array_equal(_decode(fig.data[0].source)[2:30, 2:30], samples[-1][0])  # opens on the final images


def test_long_animations_are_thinned_but_keep_the_first_and_last_frames():
    S = 200
    samples = np.zeros((S + 1, 1, 4, 4, 3), np.uint8)
    fig = figures.denoising_animation_figure(samples, samples, list(range(S, -1, -1)), max_frames=30)
    names = [int(f.name) for f in fig.frames]
    assert len(names) == 30 and names[0] == 0 and names[-1] == S
    with pytest.raises(ValueError, match="do not match"):
        figures.denoising_animation_figure(samples, samples[:-1], list(range(S + 1)))


def test_smooth_is_a_debiased_ema_that_starts_at_the_first_value():
    values = [4.0, 2.0, 2.0, 2.0]
    out = figures.smooth(values, 0.5)
    assert out[0] == 4.0
    assert out[1] == pytest.approx((0.5 * 0.5 * 4 + 0.5 * 2) / (1 - 0.25))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        figures.smooth(values, 1.0)


def test_loss_curve_figure_has_raw_and_smoothed_traces_on_a_log_axis():
    steps, losses = list(range(1, 5001)), list(np.linspace(1, 0.1, 5000))
    fig = figures.loss_curve_figure(steps, losses, max_points=500)
    assert [t.name for t in fig.data] == ["loss (raw)", "loss (smoothed)"]
    assert len(fig.data[0].x) == 500 and fig.data[0].x[-1] == 5000
    assert fig.layout.yaxis.type == "log"
    empty = figures.loss_curve_figure([], [])
    assert len(empty.data) == 2 and len(empty.data[0].x) == 0


def test_side_by_side_frame_has_the_figures_titles_and_size_but_no_images():
    frame = figures.side_by_side_frame("generated", "real patches")
    full = figures.side_by_side_figure(_images(4), _images(4, seed=1), "generated", "real patches")
    assert [a.text for a in frame.layout.annotations] == [a.text for a in full.layout.annotations]
    assert frame.layout.height == full.layout.height
    assert [t.type for t in frame.data] == ["scatter", "scatter"] and all(len(t.x) == 0 for t in frame.data)


def test_class_histogram_figure_groups_generated_and_real_by_class():
    gen, real = np.full(9, 1 / 9), np.linspace(0, 2 / 9, 9)
    fig = figures.class_histogram_figure(gen, real)
    assert [t.type for t in fig.data] == ["bar", "bar"] and list(fig.data[0].x) == list(CLASS_NAMES)
    assert fig.layout.barmode == "group"
    with pytest.raises(ValueError, match="one share per class"):
        figures.class_histogram_figure(gen[:3], real)


def test_color_histogram_figure_has_generated_and_real_per_channel():
    h = np.full((3, 32), 1 / 32)
    fig = figures.color_histogram_figure(h, h * 0.5)
    assert len(fig.data) == 6 and [t.name for t in fig.data[:2]] == ["generated", "real"]
    assert [a.text for a in fig.layout.annotations] == ["red", "green", "blue"]
    with pytest.raises(ValueError, match=r"\(3, bins\)"):
        figures.color_histogram_figure(h, h[:, :16])


def test_memorization_figure_pairs_each_sample_with_its_neighbour_and_flags_copies():
    fig = figures.memorization_figure(_images(3), _images(3, seed=1), [0.5, 1.25, 2.0], [0.1, 0.8, 0.9])
    assert len(fig.data) == 6 and all(t.type == "image" for t in fig.data)
    titles = [a.text for a in fig.layout.annotations]
    assert titles[0] == "d = 0.50<br>ratio 0.10 ⚠ copy?" and "copy" not in titles[1]
    assert "generated" in titles and "nearest training" in titles
    with pytest.raises(ValueError, match="as many"):
        figures.memorization_figure(_images(3), _images(2), [1, 2, 3])


def test_ratio_histogram_marks_the_copy_threshold():
    fig = figures.ratio_histogram_figure(list(range(20)))
    assert fig.data[0].type == "bar" and len(fig.data[0].x) == 20
    assert fig.layout.shapes[0].x0 == pytest.approx(1 / 3)


def test_metrics_table_shows_generated_floor_and_centre_shift_columns():
    report = {"metrics": {"fd": 12.5, "precision": 0.7, "class_tv": 0.1},
              "floor": {"fd": 1.25, "precision": 0.8, "class_tv": 0.01},
              "centre_shift": {"fd": 30.0, "precision": 0.5, "class_tv": 0.2}}
    table = figures.metrics_table_figure(report).data[0]
    assert table.type == "table"
    assert list(table.header.values) == ["metric", "", "generated", "real vs real (floor)", "other centre (shift)"]
    assert list(table.cells.values[2]) == ["12.5", "0.7", "0.1"] and list(table.cells.values[3]) == ["1.25", "0.8", "0.01"]
    no_floor = figures.metrics_table_figure({"metrics": {"fd": 3.0}}).data[0]
    assert len(no_floor.header.values) == 4 and list(no_floor.cells.values[3]) == ["–"]


# ---- explain: the forward process at a slider's t ----------------------------------------------
def test_diffuse_at_zero_is_the_clean_patch_and_at_t_matches_the_closed_form():
    sched = NoiseSchedule.from_config(ScheduleConfig.paper())
    imgs = torch.from_numpy(_images(2).transpose(0, 3, 1, 2).copy())
    x0 = imgs.float() / 127.5 - 1
    torch.testing.assert_close(diffuse(sched, imgs, 0), x0)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
    a = sched.alphas_cumprod[99].item()
    torch.testing.assert_close(diffuse(sched, imgs, 100, seed=7), a**0.5 * x0 + (1 - a) ** 0.5 * eps)
    torch.testing.assert_close(diffuse(sched, imgs, 100, seed=7), diffuse(sched, imgs, 100, seed=7))
    with pytest.raises(ValueError, match="between 0 and T = 200"):
        diffuse(sched, imgs, 201)


def test_signal_and_noise_states_the_papers_36_percent_residual_at_T():
    paper = NoiseSchedule.from_config(ScheduleConfig.paper())
    signal, noise, snr = signal_and_noise(paper, 200)
    assert signal == pytest.approx(0.36, abs=0.01) and signal**2 + noise**2 == pytest.approx(1)
    assert signal_and_noise(paper, 0) == (1.0, 0.0, float("inf"))
    assert signal_and_noise(NoiseSchedule.from_config(ScheduleConfig()), 200)[0] == 0.0


def test_pick_patches_filters_by_tissue_and_names_the_allowed_classes():
    labels = torch.arange(18) % 9
    images = ImageSet(torch.arange(18, dtype=torch.uint8)[:, None, None, None].expand(18, 3, 2, 2).clone(), labels, "toy")
    picked, got = pick_patches(images, "mucus", 5, seed=1)
    assert len(picked) == 2 and (got == CLASS_NAMES.index("mucus")).all()
    assert len(pick_patches(images, None, 5)[0]) == 5
    with pytest.raises(ValueError, match="tissue must be one of"):
        pick_patches(images, "bone", 1)
    like = patches_like(images, [3, 3, 0])
    assert ((like[:, 0, 0, 0] % 9).tolist()) == [3, 3, 0]


def test_schedule_names_and_the_paper_table_come_from_the_configs():
    assert schedule_name(ScheduleConfig.paper()) == "linear (paper)"
    assert "T = 50" in schedule_name(ScheduleConfig(num_timesteps=50))
    rows = {r[""]: r for r in preset_comparison()}
    assert rows["noise schedule"]["paper (preset seed)"] == "linear, T = 200"
    assert "zero terminal SNR" in rows["noise schedule"]["this app (preset small)"]


# ---- exports and uploads ------------------------------------------------------------------------
def test_png_bytes_enlarges_with_crisp_pixels():
    img = _images(1)[0]
    out = np.asarray(Image.open(io.BytesIO(png_bytes(img, scale=3))))
    assert out.shape == (84, 84, 3)
    np.testing.assert_array_equal(out[::3, ::3], img)


def test_trajectory_gif_is_an_animated_gif_with_one_frame_per_step():
    samples = np.stack([_images(4, seed=i) for i in range(6)])
    gif = Image.open(io.BytesIO(trajectory_gif(samples, samples, scale=1)))
    assert gif.format == "GIF" and gif.n_frames == 6
    assert gif.size == (2 * (2 * 30 + 2) + 6, 2 * 30 + 2)  # two 2×2 grids and a 6 px gap


@pytest.fixture
def saved_run(tmp_path, tiny_config, tiny_schedule_config):
    from ddpm.unet import build_unet

    folder = tmp_path / "run"
    save_checkpoint(folder, build_unet(tiny_config), make_config(tiny_config, tiny_schedule_config))
    (folder / "training_log.csv").write_text("step,loss\n1,0.5\n")
    (folder / "training_state.json").write_text("{}")
    return folder


def test_checkpoint_zip_holds_weights_config_and_log_only(saved_run, tmp_path):
    names = zipfile.ZipFile(io.BytesIO(checkpoint_zip(saved_run))).namelist()
    assert sorted(names) == ["config.json", "model.safetensors", "training_log.csv"]
    with pytest.raises(CheckpointError, match="nothing has been saved"):
        checkpoint_zip(tmp_path)


def test_an_uploaded_zip_round_trips_into_a_model(saved_run):
    ckpt = load_upload([("run.zip", checkpoint_zip(saved_run))])
    assert ckpt.source == "your uploaded checkpoint" and ckpt.path is None
    assert ckpt.model_config.image_size == 28


def test_uploads_that_are_corrupt_incomplete_too_large_or_of_another_shape_are_refused(saved_run, tmp_path):
    config, weights = (saved_run / "config.json").read_bytes(), (saved_run / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="not a readable zip"):
        load_upload([("x.zip", b"not a zip")])
    with pytest.raises(CheckpointError, match="lacks"):
        load_upload([("config.json", config)])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_upload([("config.json", config), ("model.safetensors", weights[:100])])
    with pytest.raises(CheckpointError, match="limit is"):
        load_upload([("config.json", config), ("model.safetensors", weights)], max_bytes=1000)
    with pytest.raises(CheckpointError, match="not a checkpoint file"):
        load_upload([("model.pt", b"pickle")])
    from ddpm.unet import UNetConfig, build_unet

    big = UNetConfig(architecture="seed", image_size=64)
    save_checkpoint(tmp_path / "big", build_unet(big), make_config(big, ScheduleConfig(num_timesteps=20)))
    with pytest.raises(CheckpointError, match="3×64×64"):
        load_upload([("big.zip", checkpoint_zip(tmp_path / "big"))])
    message = None
    try:
        load_upload([("config.json", config), ("model.safetensors", weights[:100])])
    except CheckpointError as err:
        message = str(err)
    assert "/tmp" not in message and "ddpm-upload" not in message


# ---- steering a tissue ------------------------------------------------------------------------------------------------
def test_image_row_figure_is_one_titled_image_panel_per_patch_in_rows_of_ncols():
    imgs = _images(5)
    fig = figures.image_row_figure(imgs, list("abcde"), ncols=3)
    assert [t.type for t in fig.data] == ["image"] * 5
    assert [a.text for a in fig.layout.annotations] == list("abcde")
    np.testing.assert_array_equal(_decode(fig.data[3].source), imgs[3])  # each patch as it is, no padding
    assert fig.data[3].xaxis == "x4" and fig.layout.height == 2 * 220  # second row, titles of one line
    with pytest.raises(ValueError, match="one title per patch"):
        figures.image_row_figure(imgs, ["a"])


def test_sdedit_strength_figure_puts_each_noised_input_above_its_result_and_marks_the_selected_strength():
    noised, edited, strengths = _images(3), _images(3, seed=1), [0.0, 0.5, 1.0]
    fig = figures.sdedit_strength_figure(noised, edited, strengths, selected=0.5)
    assert [t.type for t in fig.data] == ["image"] * 6
    titles = [a.text for a in fig.layout.annotations]
    assert titles[:3] == ["s = 0", "<b>▸ s = 0.5</b>", "s = 1"] and {"noised input", "result"} <= set(titles)
    np.testing.assert_array_equal(_decode(fig.data[2].source), noised[1])
    np.testing.assert_array_equal(_decode(fig.data[3].source), edited[1])
    with pytest.raises(ValueError, match="one noised input and one result per strength"):
        figures.sdedit_strength_figure(noised, edited[:2], strengths)


def test_inpaint_figure_shows_the_original_the_kept_pixels_with_the_hole_in_grey_and_each_fill():
    original, fills = _images(1), _images(2, seed=3)
    mask = np.zeros((28, 28), bool)
    mask[7:21, 7:21] = True
    fig = figures.inpaint_figure(original, mask, fills)
    assert [a.text for a in fig.layout.annotations] == ["original", "kept (grey: to fill)", "fill 1", "fill 2"]
    kept = _decode(fig.data[1].source)
    assert (kept[mask] == figures.MASK_GREY).all()
    np.testing.assert_array_equal(kept[~mask], original[0][~mask])
    np.testing.assert_array_equal(_decode(fig.data[3].source), fills[1])
    with pytest.raises(ValueError, match="must match the patch's height and width"):
        figures.inpaint_figure(original, mask[:14], fills)


def test_morph_animation_has_a_frame_per_weight_a_labelled_slider_and_opens_on_the_first_tissue():
    imgs, weights = _images(5), [0.0, 0.25, 0.5, 0.75, 1.0]
    fig = figures.morph_animation_figure(imgs, weights, "adipose", "mucus")
    assert [t.type for t in fig.data] == ["image"] and len(fig.frames) == 5
    np.testing.assert_array_equal(_decode(fig.data[0].source), imgs[0])
    np.testing.assert_array_equal(_decode(fig.frames[3].data[0].source), imgs[3])
    assert fig.layout.title.text == "100% adipose · 0% mucus" and fig.frames[1].layout.title.text == "75% adipose · 25% mucus"
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["▶ Play", "❚❚ Pause"]
    slider = fig.layout.sliders[0]
    assert slider.active == 0 and [s.label for s in slider.steps] == ["0", "0.25", "0.5", "0.75", "1"]
    assert slider.currentvalue.prefix == "weight of mucus: "
    assert [list(s.args[0]) for s in slider.steps] == [[f.name] for f in fig.frames]
    with pytest.raises(ValueError, match="one image per weight"):
        figures.morph_animation_figure(imgs, weights[:2], "a", "b")


def test_tissue_panel_figure_is_one_panel_per_tissue_titled_with_its_name():
    imgs = _images(len(CLASS_NAMES))
    fig = figures.tissue_panel_figure(imgs)
    assert len(fig.data) == 9
    titles = [a.text.replace("<br>", " ") for a in fig.layout.annotations]
    assert titles == list(CLASS_NAMES)
    assert max(len(line) for a in fig.layout.annotations for line in a.text.split("<br>")) <= 16 + 12  # one long word
    with pytest.raises(ValueError, match="one patch per tissue"):
        figures.tissue_panel_figure(imgs[:3])
