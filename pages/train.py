"""Train: a run of your own in a background worker, with a live loss curve and samples as it learns."""
import streamlit as st

from ddpm.explain import SCHEDULES
from ddpm.export import checkpoint_zip
from ddpm.figures import image_grid_figure, loss_curve_figure, side_by_side_figure
from ddpm.serving.jobs import JobBusyError, TrainRequest
from ddpm.presets import PRESETS
from pages._shared import job_registry, keep_training_alive, limits, real_images, show, visitor
from pages._models import load_model, PRETRAINED, RUN
from pages._compute import cached_samples

PRESET_OWN = "the preset's own"
BATCHES = (8, 16, 32, 64, 128, 256, 512, 1024)
LIVE_EVERY_S = 2.0  # the live view's redraws while the run is going (see the fragment below)

keep_training_alive()
st.title("Train")
st.write("Train a diffusion model yourself and watch it learn: the loss falls, and samples drawn from its current "
         "weights every few steps go from noise to tissue-coloured texture. It trains a private copy in the background.")

registry, lim = job_registry(), limits()
real, data_warning = real_images()
with st.sidebar:
    st.header("Your training run")
    start_from = st.radio("Start from", ["scratch", "the pretrained model"], key="train_init")
    from_pretrained = start_from != "scratch"
    preset = st.selectbox("Preset", lim.presets, index=lim.presets.index("small") if "small" in lim.presets else 0,
                          help="\n\n".join(f"**{k}**: {PRESETS[k].description}" for k in lim.presets), key="train_preset")
    schedule = st.selectbox("Noise schedule", [PRESET_OWN, *SCHEDULES], key="train_schedule", disabled=from_pretrained,
                            help="A run from the pretrained model keeps its schedule.")
    steps = st.number_input("Steps", 1, lim.max_steps, min(200, lim.max_steps), key="train_steps")
    batch = st.select_slider("Batch size", [b for b in BATCHES if b <= lim.max_batch], min(32, lim.max_batch),
                             key="train_batch")
    conditional = st.checkbox("Tissue-conditional (learn the 9 tissues, classifier-free guidance)", key="train_conditional",
                              value=True, help="Trains on the patches' tissue labels, dropping them 15% of the time so the "
                                               "same network also learns the unconditional model; samples can then be asked "
                                               "for a tissue. From an unconditional model, its weights are kept and the "
                                               "tissue embedding starts at zero.")
    lr = st.number_input("Learning rate", 1e-6, 0.1, PRESETS["small"].train.lr, step=1e-4, format="%.1e", key="train_lr")
    sample_every = st.number_input("Preview samples every N steps", 1, 100_000, 50, key="train_sample_every")
    start = st.button("Start training", type="primary", key="train_start")
    st.caption(f"On this {'shared ' if lim.hosted else ''}server a run is capped at {lim.max_steps:,} steps, "
               f"batch {lim.max_batch} and {lim.max_minutes:g} minutes.")
if data_warning:
    st.info(f"Training data: the {real.source} (the full PathMNIST file is not on this server).")

if start:
    init, error = load_model(PRETRAINED) if from_pretrained else (None, None)
    request = TrainRequest(preset=preset, steps=int(steps), batch_size=int(batch), lr=float(lr),
                           schedule=None if from_pretrained or schedule == PRESET_OWN else schedule,
                           from_pretrained=from_pretrained, sample_every=int(sample_every), conditional=conditional)
    try:
        if from_pretrained and init is None:
            raise ValueError(f"the pretrained model is not available: {error}")
        snap = registry.start(request, visitor(), real.images, init.checkpoint if init else None, data_source=real.source,
                              labels=real.labels)
        st.session_state["train_job"] = snap.id
    except JobBusyError as err:
        st.warning(str(err))
    except ValueError as err:
        st.error(f"These settings cannot be used: {err}")

job_id = st.session_state.get("train_job")
holder = registry.active()
if holder is not None and holder.id != job_id:
    st.info(str(JobBusyError(holder)))
if registry.get(job_id) is None:
    st.info("No run yet: choose the settings in the sidebar and press **Start training**.")
    st.stop()


def live_view() -> None:
    snap = registry.get(job_id)
    if snap is None:  # the run was cleared away meanwhile
        return
    if snap.active:
        registry.heartbeat(job_id, visitor())
    elif st.session_state.get("train_seen_active"):
        st.session_state["train_seen_active"] = False
        st.rerun(scope="app")  # the run just ended: redraw the whole page with its downloads
    st.session_state["train_seen_active"] = snap.active
    (st.error if snap.status == "failed" else st.info if snap.active else st.success)(
        f"**{snap.status}** · {snap.message}")
    st.progress(snap.step / max(snap.max_steps, 1), text=f"step {snap.step:,} of {snap.max_steps:,}")
    m1, m2, m3 = st.columns(3)
    m1.metric("loss (last step)", f"{snap.losses[-1]:.4f}" if snap.losses else "–")
    m2.metric("images / s", f"{snap.images_per_sec:.0f}")
    m3.metric("time left", f"{int(snap.eta_s // 60)} min {int(snap.eta_s % 60):02d} s" if snap.active and snap.eta_s else "–")
    if snap.active:
        st.button("Stop training", key="train_stop", on_click=registry.stop, args=(job_id, visitor()))
    left, right = st.columns([3, 2])
    with left:
        show(loss_curve_figure(snap.loss_steps, snap.losses), key="train_loss")
    with right:
        if snap.samples is not None:
            show(image_grid_figure(snap.samples, title=f"samples at step {snap.samples_step:,} ({snap.device})", height=320),
                 key="train_samples")


# Every 2 s: each rerun redraws the loss curve and the samples in the visitor's browser. Measured once on 2 cores
# (the page alone, one Chromium): 3.8 CPU-seconds of Chromium in 20 s at 1 s, 2.0 at 2 s; in bench/crowd_check.py
# the browser shares the cores with everyone's sampling (its "training visitor's page alone" line).
st.fragment(live_view, run_every=LIVE_EVERY_S if registry.get(job_id).active else None)()

snap = registry.get(job_id)
if not snap.active and snap.has_checkpoint:
    st.download_button("Download this run's checkpoint (.zip: safetensors + config.json + loss log)",
                       lambda: checkpoint_zip(snap.out_dir), file_name=f"ddpm-run-{snap.id}.zip",
                       mime="application/zip", key="train_download", on_click="ignore")
    run, _ = load_model(RUN)
    base, base_error = load_model(PRETRAINED)
    if run is not None and base is not None:
        show(side_by_side_figure(cached_samples(run, 16, seed=0), cached_samples(base, 16, seed=0),
                                 "your run", "the pretrained model", ncols=4), key="train_compare")
        st.caption("Same seed, same sampler (DPM-Solver++, 20 steps): the only difference is the weights. "
                   "Your run is now also available as a model on the other pages.")
    elif base_error:
        st.caption(f"No comparison with the pretrained model: {base_error}")
