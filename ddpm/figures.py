"""Every figure of the app: functions that take arrays or dicts and return a Plotly figure.

Images arrive as uint8 (N, H, W, 3) numpy arrays (``data.to_hwc_numpy``) and are drawn as one
``go.Image`` per panel, encoded as a PNG data URI (compact, and the browser draws pixels crisply).
Nothing here imports Streamlit, nor torch (Home draws its grid's frame before the library loads torch);
tests check traces and frames directly.
"""
from __future__ import annotations

import base64
import math
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .imaging import frame_indices, image_grid, png_bytes, upscale

if TYPE_CHECKING:
    from .quiz import ScoreTable
    from .schedules import NoiseSchedule

REAL_COLOR = "#6c757d"
GENERATED_COLOR = "#b03a7a"  # eosin pink
PALETTE = ("#b03a7a", "#3a5ab0", "#2f9e6e", "#d98b2b")
CHANNEL_COLORS = ("#d62728", "#2ca02c", "#1f77b4")

#: What each evaluation metric means and which direction is better (keys of the evaluation report).
METRIC_INFO: dict[str, tuple[str, str]] = {
    "fd": ("Fréchet distance (encoder features)", "lower is better"),
    "kid_mean": ("kernel inception-style distance (KID)", "lower is better"),
    "precision": ("precision: samples that look real", "higher is better"),
    "recall": ("recall: real variety the samples cover", "higher is better"),
    "density": ("density", "about 1 is ideal"),
    "coverage": ("coverage", "higher is better"),
    "class_tv": ("tissue-mix distance (TV)", "lower is better"),
    "conditional_accuracy": ("asked-for tissue recognised (share)", "higher is better"),
    "memorization_share": ("share of near-copies (pixels)", "lower is better"),
    "memorization_share_encoder": ("share of near-copies (encoder)", "lower is better"),
}


def png_data_uri(image_hwc: np.ndarray) -> str:
    """A uint8 (H, W, 3) array as a ``data:image/png;base64,…`` URI."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image_hwc)).decode()


def _image_trace(image_hwc: np.ndarray, name: str = "") -> go.Image:
    return go.Image(source=png_data_uri(image_hwc), name=name, hoverinfo="skip")


def _hide_axes(fig: go.Figure) -> go.Figure:
    fig.update_xaxes(visible=False, showgrid=False)
    fig.update_yaxes(visible=False, showgrid=False)
    return fig


def _grid(images_hwc: np.ndarray, ncols: int | None) -> np.ndarray:
    images_hwc = np.asarray(images_hwc)
    if images_hwc.ndim != 4 or images_hwc.shape[-1] != 3 or images_hwc.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images_hwc.dtype} {images_hwc.shape}")
    return image_grid(images_hwc, ncols)


def image_grid_figure(images_hwc: np.ndarray, ncols: int | None = None, title: str | None = None,
                      height: int = 360) -> go.Figure:
    """One tiled grid of patches. images_hwc: (N, H, W, 3) uint8."""
    fig = go.Figure(_image_trace(_grid(images_hwc, ncols), title or "images"))
    fig.update_layout(title=title, height=height, margin=dict(l=0, r=0, t=40 if title else 0, b=0))
    return _hide_axes(fig)


def side_by_side_figure(left_hwc: np.ndarray, right_hwc: np.ndarray, left_title: str, right_title: str,
                        ncols: int | None = None, height: int = 380) -> go.Figure:
    """Two grids next to each other (e.g. generated | real), one image trace each."""
    fig = make_subplots(1, 2, subplot_titles=(left_title, right_title), horizontal_spacing=0.04)
    fig.add_trace(_image_trace(_grid(left_hwc, ncols), left_title), 1, 1)
    fig.add_trace(_image_trace(_grid(right_hwc, ncols), right_title), 1, 2)
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=40, b=0), showlegend=False)
    return _hide_axes(fig)


def side_by_side_frame(left_title: str, right_title: str, height: int = 380) -> go.Figure:
    """The frame of a ``side_by_side_figure`` before its images exist: both titles, an empty trace per panel."""
    fig = make_subplots(1, 2, subplot_titles=(left_title, right_title), horizontal_spacing=0.04)
    for col in (1, 2):
        fig.add_trace(go.Scatter(x=[], y=[], hoverinfo="skip"), 1, col)
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=40, b=0), showlegend=False)
    return _hide_axes(fig)


def tissue_rows_figure(generated_hwc: np.ndarray, real_hwc: np.ndarray, class_names: Sequence[str], per_class: int,
                       left_title: str = "generated", right_title: str = "real") -> go.Figure:
    """One row per tissue: ``per_class`` generated patches of it beside as many real ones, the tissue named at left.

    generated_hwc, real_hwc: (len(class_names) · per_class, H, W, 3) uint8, grouped by class in ``class_names`` order.
    """
    expected = len(class_names) * per_class
    if len(generated_hwc) != expected or len(real_hwc) != expected:
        raise ValueError(f"need {expected} patches on each side ({len(class_names)} tissues × {per_class}), "
                         f"got {len(generated_hwc)} generated and {len(real_hwc)} real")
    fig = side_by_side_figure(generated_hwc, real_hwc, left_title, right_title, ncols=per_class,
                              height=70 + 52 * len(class_names))
    h, pad = generated_hwc.shape[1], 2
    for row, name in enumerate(class_names):
        fig.add_annotation(x=0, y=pad + row * (h + pad) + h / 2, xref="paper", yref="y", text=name, showarrow=False,
                           xanchor="right", font=dict(size=11))  # in the left margin, outside the image's x range
    fig.update_layout(margin=dict(l=150, r=0, t=40, b=0))
    return fig


def schedule_curves_figure(schedules: Mapping[str, NoiseSchedule], t: int | None = None,
                           highlight: str | None = None) -> go.Figure:
    """ᾱ_t, √ᾱ_t and SNR(t) against t = 1 … T for each named schedule; a dotted line marks ``t``.

    One trace per schedule and panel (3 · len(schedules) traces); SNR is on a log axis, so a zero
    terminal SNR shows as the curve leaving the plot at t = T.
    """
    fig = make_subplots(1, 3, subplot_titles=("ᾱ_t (signal variance kept)", "√ᾱ_t (signal amplitude)",
                                              "SNR(t) = ᾱ_t / (1 - ᾱ_t)"), horizontal_spacing=0.07)
    for k, (name, sched) in enumerate(schedules.items()):
        ts = np.arange(1, sched.num_timesteps + 1)
        color = PALETTE[k % len(PALETTE)]
        faded = highlight is not None and name != highlight
        style = dict(color=color, width=1.5 if faded else 3, dash="dot" if faded else "solid")
        snr = sched.snr.numpy().copy()
        snr[snr <= 0] = np.nan  # log axis: SNR 0 is drawn as the curve's end
        for col, values in enumerate((sched.alphas_cumprod.numpy(), sched.sqrt_alphas_cumprod.numpy(), snr), start=1):
            fig.add_trace(go.Scatter(x=ts, y=values, name=name, legendgroup=name, showlegend=col == 1,
                                     line=style, mode="lines"), 1, col)
    if t is not None and t > 0:
        for col in (1, 2, 3):
            fig.add_vline(x=t, line=dict(color="black", dash="dot", width=1), row=1, col=col)
    fig.update_yaxes(type="log", row=1, col=3)
    fig.update_xaxes(title_text="t")
    fig.update_layout(height=330, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", yanchor="bottom", y=-0.35))
    return fig


def pixel_histogram_figure(x_t: np.ndarray, x_0: np.ndarray | None = None, t: int | None = None,
                           bins: int = 80, value_range: tuple[float, float] = (-4.0, 4.0)) -> go.Figure:
    """Histogram (density) of the pixel values of x_t in model units, with the N(0, 1) density it drifts to.

    Traces: "x_t" (bars), optionally "x_0" (outline bars, the clean data), and "N(0, 1)" (a line).
    """
    edges = np.linspace(*value_range, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    fig = go.Figure()
    if x_0 is not None:
        h0, _ = np.histogram(np.asarray(x_0, dtype=np.float64).ravel(), bins=edges, density=True)
        fig.add_trace(go.Bar(x=centres, y=h0, width=width, name="x_0 (clean patches)", marker_color=REAL_COLOR, opacity=0.35))
    h, _ = np.histogram(np.asarray(x_t, dtype=np.float64).ravel(), bins=edges, density=True)
    label = f"x_t at t = {t}" if t is not None else "x_t"
    fig.add_trace(go.Bar(x=centres, y=h, width=width, name=label, marker_color=GENERATED_COLOR, opacity=0.75))
    grid = np.linspace(*value_range, 200)
    fig.add_trace(go.Scatter(x=grid, y=np.exp(-grid**2 / 2) / math.sqrt(2 * math.pi), name="N(0, 1)",
                             line=dict(color="black", width=2)))
    fig.update_layout(barmode="overlay", height=330, margin=dict(l=10, r=10, t=30, b=10),
                      xaxis_title="pixel value (model units, data in [-1, 1])", yaxis_title="density",
                      yaxis_range=[0, 1.2], legend=dict(orientation="h", yanchor="bottom", y=1.0))
    return fig


def trajectory_times(timesteps: Sequence[int]) -> list[int]:
    """The paper time of the sample shown at each frame of a ``pipeline.Trajectory``.

    Frame 0 is x_T; after step i the sample sits at the next step's t (index + 1), and after the
    last step at t = 0.
    """
    n = len(timesteps)
    return [int(timesteps[0])] + [int(timesteps[i + 1]) + 1 if i + 1 < n else 0 for i in range(1, n)]


def denoising_animation_figure(samples: np.ndarray, pred_x0: np.ndarray, timesteps: Sequence[int],
                               ncols: int | None = None, max_frames: int = 50, frame_ms: int = 120,
                               height: int = 420) -> go.Figure:
    """x_t and the predicted x̂₀ side by side, one Plotly frame per shown step, with play / pause and a slider.

    samples, pred_x0: (S + 1, B, H, W, 3) uint8 as in ``pipeline.Trajectory``; timesteps: its ``timesteps``.
    Long runs (DDPM) are thinned to ``max_frames`` frames; the first (pure noise) and the last (the
    final images) are always kept. The figure opens on the final frame.
    """
    if samples.shape != pred_x0.shape or samples.shape[0] != len(timesteps):
        raise ValueError(f"samples {samples.shape}, pred_x0 {pred_x0.shape} and {len(timesteps)} timesteps do not match")
    times = trajectory_times(timesteps)
    shown = frame_indices(samples.shape[0], max_frames)
    total = samples.shape[0] - 1

    def panels(i: int) -> list[go.Image]:
        return [_image_trace(_grid(samples[i], ncols), "x_t"), _image_trace(_grid(pred_x0[i], ncols), "predicted x̂₀")]

    def label(i: int) -> str:
        return f"step {i}/{total} · t = {times[i]}"

    last = shown[-1]
    fig = make_subplots(1, 2, subplot_titles=("x_t: the sample being denoised", "x̂₀: the model's guess of the final image"),
                        horizontal_spacing=0.04)
    for col, trace in enumerate(panels(last), start=1):
        fig.add_trace(trace, 1, col)
    fig.frames = [go.Frame(data=panels(i), traces=[0, 1], name=str(i)) for i in shown]
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=40, b=10), showlegend=False,
                      **_play_controls([str(i) for i in shown], [label(i) for i in shown], frame_ms, len(shown) - 1))
    return _hide_axes(fig)


def _play_controls(names: Sequence[str], labels: Sequence[str], frame_ms: int, active: int,
                   tick_labels: bool = False) -> dict:
    """``updatemenus`` (▶ Play, ❚❚ Pause) and a ``sliders`` over the frames called ``names``, for ``update_layout``;
    the slider starts at frame ``active`` and shows the frame's label (its ticks too, with ``tick_labels``)."""
    play = dict(label="▶ Play", method="animate",
                args=[None, dict(frame=dict(duration=frame_ms, redraw=True), fromcurrent=True, mode="immediate",
                                 transition=dict(duration=0))])
    pause = dict(label="❚❚ Pause", method="animate",
                 args=[[None], dict(frame=dict(duration=0, redraw=False), mode="immediate", transition=dict(duration=0))])
    steps = [dict(label=label, method="animate",
                  args=[[name], dict(mode="immediate", frame=dict(duration=0, redraw=True), transition=dict(duration=0))])
             for name, label in zip(names, labels)]
    font = {} if tick_labels else dict(font=dict(color="rgba(0,0,0,0)"))  # ticks too dense to label
    return dict(updatemenus=[dict(type="buttons", direction="left", buttons=[play, pause], x=0, y=-0.02,
                                  xanchor="left", yanchor="top", pad=dict(t=10, r=10), showactive=False)],
                sliders=[dict(active=active, steps=steps, x=0.18, len=0.82, y=-0.02, yanchor="top",
                              currentvalue=dict(visible=True), pad=dict(t=10), **font)])


# ---- steering a tissue (ddpm.editing, the Steer tissue page) ---------------------------------------------------------
MASK_GREY = (128, 128, 128)


def masked_image(image_hwc: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The patch with its masked pixels (``mask`` (H, W) bool, True = to fill) painted mid-grey: what inpainting keeps."""
    image_hwc, mask = np.asarray(image_hwc), np.asarray(mask, dtype=bool)
    if image_hwc.shape[:2] != mask.shape:
        raise ValueError(f"the mask {mask.shape} must match the patch's height and width {image_hwc.shape[:2]}")
    out = image_hwc.copy()
    out[mask] = MASK_GREY
    return out


def image_row_figure(images_hwc: np.ndarray, titles: Sequence[str], height: int = 220,
                     ncols: int | None = None) -> go.Figure:
    """One titled panel per patch, in rows of ``ncols`` (default: all in one row). images_hwc: (N, H, W, 3) uint8, or
    a list of N (H, W, 3) patches."""
    images_hwc = np.asarray(images_hwc)
    _grid(images_hwc, 1)  # checks the dtype and layout
    if len(titles) != len(images_hwc):
        raise ValueError(f"need one title per patch: {len(images_hwc)} patches, {len(titles)} titles")
    ncols = ncols or len(images_hwc)
    nrows = math.ceil(len(images_hwc) / ncols)
    fig = make_subplots(nrows, ncols, subplot_titles=list(titles), horizontal_spacing=0.01,
                        vertical_spacing=0.12 / nrows)
    for i, image in enumerate(images_hwc):
        fig.add_trace(_image_trace(image, titles[i]), i // ncols + 1, i % ncols + 1)
    lines = max(str(t).count("<br>") + 1 for t in titles)  # titles broken over lines need room above the first row
    fig.update_annotations(font_size=12)
    fig.update_layout(height=height * nrows + 16 * (lines - 1), margin=dict(l=0, r=0, t=24 + 16 * lines, b=0),
                      showlegend=False)
    return _hide_axes(fig)


def sdedit_strength_figure(noised_hwc: np.ndarray, edited_hwc: np.ndarray, strengths: Sequence[float],
                           selected: float | None = None, height: int = 240) -> go.Figure:
    """SDEdit over a row of strengths: the noised input (top) above what the model made of it (bottom), one column per
    strength, the ``selected`` one's title marked. noised_hwc, edited_hwc: (S, H, W, 3) uint8."""
    if not len(noised_hwc) == len(edited_hwc) == len(strengths) > 0:
        raise ValueError(f"need one noised input and one result per strength: {len(noised_hwc)}, {len(edited_hwc)} "
                         f"and {len(strengths)} strengths")
    titles = [f"<b>▸ s = {s:g}</b>" if selected is not None and math.isclose(s, selected) else f"s = {s:g}"
              for s in strengths]
    _grid(np.asarray(noised_hwc), 1), _grid(np.asarray(edited_hwc), 1)  # check the dtype and layout
    fig = make_subplots(2, len(strengths), subplot_titles=titles + [""] * len(strengths), horizontal_spacing=0.01,
                        vertical_spacing=0.03, row_titles=["noised input", "result"])
    for i in range(len(strengths)):
        fig.add_trace(_image_trace(noised_hwc[i], f"noised s = {strengths[i]:g}"), 1, i + 1)
        fig.add_trace(_image_trace(edited_hwc[i], f"result s = {strengths[i]:g}"), 2, i + 1)
    fig.update_annotations(font_size=11)
    fig.update_layout(height=height, margin=dict(l=0, r=30, t=40, b=0), showlegend=False)
    return _hide_axes(fig)


def inpaint_figure(original_hwc: np.ndarray, mask: np.ndarray, fills_hwc: np.ndarray, height: int = 220) -> go.Figure:
    """The real patch, what inpainting keeps of it (the hole in grey) and each fill. original_hwc: (H, W, 3) or
    (1, H, W, 3) uint8; mask: (H, W) bool, True = filled; fills_hwc: (F, H, W, 3) uint8."""
    original = np.asarray(original_hwc).reshape(np.asarray(original_hwc).shape[-3:])
    images = np.concatenate([original[None], masked_image(original, mask)[None], np.asarray(fills_hwc)])
    titles = ["original", "kept (grey: to fill)", *(f"fill {i + 1}" for i in range(len(fills_hwc)))]
    return image_row_figure(images, titles, height)


def morph_animation_figure(images_hwc: np.ndarray, weights: Sequence[float], tissue_a: str, tissue_b: str,
                           frame_ms: int = 350, height: int = 420) -> go.Figure:
    """The same noise drawn between two tissues: one Plotly frame per weight (0 = ``tissue_a``, 1 = ``tissue_b``),
    with play / pause and a slider; opens on the first. images_hwc: (W, H, W, 3) uint8, one per weight."""
    if len(images_hwc) != len(weights) or not len(weights):
        raise ValueError(f"need one image per weight: {len(images_hwc)} images, {len(weights)} weights")
    _grid(np.asarray(images_hwc), 1)

    def label(w: float) -> str:
        return f"{1 - w:.0%} {tissue_a} · {w:.0%} {tissue_b}"

    names = [str(i) for i in range(len(weights))]
    fig = go.Figure(_image_trace(images_hwc[0], label(weights[0])))
    fig.frames = [go.Frame(data=[_image_trace(images_hwc[i], label(w))], traces=[0], name=names[i],
                           layout=dict(title_text=label(w))) for i, w in enumerate(weights)]
    controls = _play_controls(names, [f"{w:g}" for w in weights], frame_ms, 0, tick_labels=True)
    controls["sliders"][0]["currentvalue"] = dict(visible=True, prefix=f"weight of {tissue_b}: ")
    fig.update_layout(title=dict(text=label(weights[0]), x=0.5, xanchor="center"), height=height,
                      margin=dict(l=0, r=0, t=40, b=10), showlegend=False, **controls)
    fig.update_yaxes(scaleanchor="x")
    return _hide_axes(fig)


def tissue_panel_figure(images_hwc: np.ndarray, class_names: Sequence[str] | None = None, ncols: int | None = None,
                        height: int = 130) -> go.Figure:
    """One panel per tissue, titled with its name (``class_names`` default: PathMNIST's). images_hwc: (K, H, W, 3)."""
    if class_names is None:
        from .data import CLASS_NAMES

        class_names = CLASS_NAMES
    if len(images_hwc) != len(class_names):
        raise ValueError(f"need one patch per tissue ({len(class_names)}), got {len(images_hwc)}")
    return image_row_figure(images_hwc, [_short(name) for name in class_names], height, ncols)


def _short(name: str, width: int = 16) -> str:
    """A tissue's name broken over lines of about ``width`` characters, for narrow panel titles."""
    lines, line = [], ""
    for word in name.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "<br>".join([*lines, line])


def smooth(values: Sequence[float], weight: float = 0.95) -> np.ndarray:
    """Debiased exponential moving average (as TensorBoard's smoothing slider): s_i = EMA_i / (1 - weight^(i+1))."""
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    out, acc = np.empty(len(values)), 0.0
    for i, v in enumerate(values):
        acc = weight * acc + (1 - weight) * float(v)
        out[i] = acc / (1 - weight ** (i + 1))
    return out


def loss_curve_figure(steps: Sequence[int], losses: Sequence[float], smoothing: float = 0.95,
                      max_points: int = 2000, title: str | None = None) -> go.Figure:
    """Training loss against step: the raw values (thin) and their smoothed curve (thick), on a log axis."""
    steps, losses = np.asarray(steps), np.asarray(losses, dtype=np.float64)
    smoothed = smooth(losses, smoothing) if len(losses) else losses
    keep = np.asarray(frame_indices(len(steps), max_points), dtype=int) if len(steps) else np.zeros(0, int)
    fig = go.Figure([
        go.Scatter(x=steps[keep], y=losses[keep], name="loss (raw)", mode="lines", line=dict(color="#c7a0b8", width=1)),
        go.Scatter(x=steps[keep], y=smoothed[keep], name="loss (smoothed)", mode="lines", line=dict(color=GENERATED_COLOR, width=3)),
    ])
    fig.update_layout(title=title, height=320, margin=dict(l=10, r=10, t=40 if title else 10, b=10),
                      xaxis_title="step", yaxis_title="loss", yaxis_type="log",
                      legend=dict(orientation="h", yanchor="bottom", y=1.0))
    return fig


def class_histogram_figure(generated: Sequence[float], real: Sequence[float],
                           class_names: Sequence[str] | None = None,
                           labels: tuple[str, str] = ("generated (encoder's call)", "training data")) -> go.Figure:
    """Share of each tissue class among generated patches (as the encoder classifies them) and real ones
    (``class_names`` default: PathMNIST's)."""
    if class_names is None:
        from .data import CLASS_NAMES

        class_names = CLASS_NAMES
    if not len(generated) == len(real) == len(class_names):
        raise ValueError(f"need one share per class ({len(class_names)}), got {len(generated)} and {len(real)}")
    fig = go.Figure([
        go.Bar(x=list(class_names), y=list(generated), name=labels[0], marker_color=GENERATED_COLOR),
        go.Bar(x=list(class_names), y=list(real), name=labels[1], marker_color=REAL_COLOR),
    ])
    fig.update_layout(barmode="group", height=340, yaxis_title="share", yaxis_tickformat=".0%",
                      margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", yanchor="bottom", y=1.0))
    return fig


def color_histogram_figure(generated: np.ndarray, real: np.ndarray) -> go.Figure:
    """Per-channel intensity histograms (3, bins) of generated and real patches: one panel per channel,
    a solid line for generated and a dotted one for real (6 traces)."""
    generated, real = np.asarray(generated, dtype=float), np.asarray(real, dtype=float)
    if generated.shape != real.shape or generated.ndim != 2 or generated.shape[0] != 3:
        raise ValueError(f"need two (3, bins) histograms, got {generated.shape} and {real.shape}")
    bins = generated.shape[1]
    x = (np.arange(bins) + 0.5) * 256 / bins
    fig = make_subplots(1, 3, subplot_titles=("red", "green", "blue"), shared_yaxes=True, horizontal_spacing=0.03)
    for c, color in enumerate(CHANNEL_COLORS):
        fig.add_trace(go.Scatter(x=x, y=generated[c], name="generated", legendgroup="generated", showlegend=c == 0,
                                 line=dict(color=color, width=2.5)), 1, c + 1)
        fig.add_trace(go.Scatter(x=x, y=real[c], name="real", legendgroup="real", showlegend=c == 0,
                                 line=dict(color=color, width=2, dash="dot")), 1, c + 1)
    fig.update_xaxes(title_text="intensity", range=[0, 256])
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", yanchor="bottom", y=1.08))
    return fig


def memorization_figure(generated_hwc: np.ndarray, nearest_hwc: np.ndarray, distances: Sequence[float],
                        ratios: Sequence[float] | None = None, copy_ratio: float = 1 / 3) -> go.Figure:
    """Each generated patch (top row) above its nearest training patch (bottom row), titled with the
    pixel distance d (and the ratio to the second-nearest, flagged when under ``copy_ratio``)."""
    k = len(generated_hwc)
    if not k or len(nearest_hwc) != k or len(distances) != k or (ratios is not None and len(ratios) != k):
        raise ValueError("need as many nearest patches, distances (and ratios) as generated patches")
    titles = []
    for i in range(k):
        t = f"d = {distances[i]:.2f}"
        if ratios is not None:
            t += f"<br>ratio {ratios[i]:.2f}" + (" ⚠ copy?" if ratios[i] < copy_ratio else "")
        titles.append(t)
    fig = make_subplots(2, k, subplot_titles=titles + [""] * k, horizontal_spacing=0.01, vertical_spacing=0.04,
                        row_titles=["generated", "nearest training"])
    for i in range(k):
        fig.add_trace(_image_trace(generated_hwc[i], f"generated {i}"), 1, i + 1)
        fig.add_trace(_image_trace(nearest_hwc[i], f"nearest {i}"), 2, i + 1)
    fig.update_annotations(font_size=11)
    fig.update_layout(height=300, margin=dict(l=0, r=30, t=50, b=0), showlegend=False)
    return _hide_axes(fig)


def ratio_histogram_figure(counts: Sequence[int], copy_ratio: float = 1 / 3) -> go.Figure:
    """Histogram (20 bins on [0, 1]) of d₁/d₂, the nearest-over-second-nearest training distance; the
    dotted line is the copy threshold."""
    counts = np.asarray(counts)
    edges = np.linspace(0, 1, len(counts) + 1)
    fig = go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=edges[1] - edges[0],
                           marker_color=GENERATED_COLOR, name="generated patches"))
    fig.add_vline(x=copy_ratio, line=dict(color="black", dash="dot"), annotation_text="copy threshold")
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="d₁ / d₂ (nearest / second nearest)",
                      yaxis_title="patches", xaxis_range=[0, 1])
    return fig


def metrics_table_figure(report: Mapping) -> go.Figure:
    """A table of the evaluation metrics: generated, the real-versus-real floor and, if measured, the
    centre shift (another hospital's real patches). ``report`` is an evaluation report dict."""
    metrics, floor, shift = report.get("metrics", {}), report.get("floor", {}), report.get("centre_shift")
    keys = [k for k in METRIC_INFO if k in metrics]

    def fmt(d: Mapping | None, k: str) -> str:
        return "–" if not d or k not in d else f"{d[k]:.4g}"

    columns = [[METRIC_INFO[k][0] for k in keys], [METRIC_INFO[k][1] for k in keys],
               [fmt(metrics, k) for k in keys], [fmt(floor, k) for k in keys]]
    header = ["metric", "", "generated", "real vs real (floor)"]
    if shift:
        columns.append([fmt(shift, k) for k in keys])
        header.append("other centre (shift)")
    fig = go.Figure(go.Table(header=dict(values=header, fill_color="#f3e6ee", align="left", font=dict(size=13)),
                             cells=dict(values=columns, align="left", height=26)))
    fig.update_layout(height=60 + 27 * len(keys), margin=dict(l=0, r=0, t=0, b=0))
    return fig


# ---- Real or generated? ----------------------------------------------------------------------------------------------
QUIZ_SCALE = 8  # a 28-pixel patch shown 224 pixels wide
QUIZ_GAP = 16  # white pixels between the two patches


def quiz_pair_image(left_hwc: np.ndarray, right_hwc: np.ndarray, scale: int = QUIZ_SCALE, gap: int = QUIZ_GAP) -> np.ndarray:
    """The two patches of a round as ONE uint8 image: each enlarged ``scale`` times with crisp pixels by the same
    function, side by side with a white gap. Nothing but their pixels tells them apart."""
    left_hwc, right_hwc = np.asarray(left_hwc), np.asarray(right_hwc)
    if left_hwc.shape != right_hwc.shape or left_hwc.dtype != np.uint8 or right_hwc.dtype != np.uint8 \
            or left_hwc.ndim != 3 or left_hwc.shape[-1] != 3:
        raise ValueError(f"need two uint8 (H, W, 3) patches of one shape, got {left_hwc.dtype} {left_hwc.shape} and "
                         f"{right_hwc.dtype} {right_hwc.shape}")
    left, right = upscale(left_hwc, scale), upscale(right_hwc, scale)
    space = np.full((left.shape[0], gap, 3), 255, np.uint8)
    return np.concatenate([left, space, right], axis=1)


def quiz_round_figure(left_hwc: np.ndarray, right_hwc: np.ndarray, scale: int = QUIZ_SCALE) -> go.Figure:
    """A round of the quiz: both patches in one image trace (one PNG, no per-patch name or hover), "Left" and
    "Right" written under them in the same style."""
    pair = quiz_pair_image(left_hwc, right_hwc, scale)
    h, w = pair.shape[:2]
    fig = go.Figure(go.Image(source=png_data_uri(pair), hoverinfo="skip"))
    for x, text in ((w / 4 - QUIZ_GAP / 4, "Left"), (3 * w / 4 + QUIZ_GAP / 4, "Right")):
        fig.add_annotation(x=x, y=0, yref="paper", text=text, showarrow=False, yanchor="top", font=dict(size=15))
    fig.update_layout(width=w, height=h + 30, margin=dict(l=0, r=0, t=0, b=30), dragmode=False)
    fig.update_xaxes(range=[-0.5, w - 0.5])  # pixel edges: the image fills the plot at exactly ``scale`` screen pixels
    fig.update_yaxes(range=[h - 0.5, -0.5])
    return _hide_axes(fig)


def _answers(n: int) -> str:
    return f"{n:,} answer{'s' * (n != 1)}"


def quiz_score_figure(everyone: ScoreTable, class_names: Sequence[str], you: ScoreTable | None = None) -> go.Figure:
    """The share of right answers overall and by tissue, each with its 95% Wilson interval as an error bar, for all
    visitors (and ``you``, one visitor), beside the 50% chance line. Rows without answers have no point."""
    rows = [("all tissues", None)] + [(name, c) for c, name in enumerate(class_names)]
    fig = go.Figure()
    for offset, label, table, color in ((-0.15, "all visitors", everyone, GENERATED_COLOR),
                                        (0.15, "you", you, PALETTE[1])):
        if table is None:
            continue
        scores = [table.overall if c is None else table.by_tissue.get(c) for _, c in rows]
        share = [s.share if s and s.answers else None for s in scores]
        low = [s.share - s.interval[0] if s and s.answers else None for s in scores]
        high = [s.interval[1] - s.share if s and s.answers else None for s in scores]
        text = [f"{name}: {s.describe() if s else 'no answers yet'}" for (name, _), s in zip(rows, scores)]
        fig.add_trace(go.Scatter(
            x=share, y=[i + offset for i in range(len(rows))], mode="markers", marker=dict(color=color, size=9),
            error_x=dict(type="data", symmetric=False, array=high, arrayminus=low, color=color, thickness=1.5),
            name=f"{label} ({_answers(table.overall.answers)})", text=text, hovertemplate="%{text}<extra></extra>"))
    fig.add_vline(x=0.5, line=dict(color="black", dash="dash"), annotation_text="chance (50%)",
                  annotation_position="bottom right")
    fig.update_layout(height=120 + 28 * len(rows), margin=dict(l=10, r=10, t=40, b=10),
                      xaxis=dict(range=[0, 1], tickformat=".0%", title="share of right answers (95% interval)"),
                      yaxis=dict(tickvals=list(range(len(rows))), ticktext=[name for name, _ in rows], autorange="reversed"),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0))
    return fig
