"""Reverse denoising: run a sampler once, then play and scrub every step of it."""
import streamlit as st

from ddpm.data import image_grid
from ddpm.export import trajectory_gif
from ddpm.figures import denoising_animation_figure, side_by_side_figure, trajectory_times
from ddpm.imaging import png_bytes
from ddpm.sampling_spec import SamplingSpec
from pages._shared import caches, keep_training_alive, show
from pages._models import model_picker
from pages._pickers import SAMPLER_LABELS, Tissue, tissue_picker
from pages._compute import cached_trajectory

DEFAULTS = {"seed": 0, "n": 9}

keep_training_alive()
st.title("Reverse denoising")
st.write("Sampling runs the forward process backwards: from pure noise, the network predicts the clean patch x̂₀ "
         "and the sampler takes a step towards it. Left, the sample; right, what the model currently believes it will become.")

model = model_picker()
T = model.checkpoint.schedule.num_timesteps
settings = st.session_state.setdefault("reverse", {**DEFAULTS, "spec": model.checkpoint.sampling})
spec: SamplingSpec = settings["spec"]
with st.form("reverse_settings"):
    c1, c2, c3, c4 = st.columns(4)
    sampler = c1.selectbox("Sampler", list(SAMPLER_LABELS), index=list(SAMPLER_LABELS).index(spec.sampler),
                           format_func=SAMPLER_LABELS.get, key="rev_sampler")
    steps = c2.slider("Steps (DDPM always uses T)", 2, T, min(spec.fitted(T).steps or T, T), key="rev_steps")
    seed = c3.number_input("Seed", 0, 2**31 - 1, settings["seed"], key="rev_seed")
    n = c4.slider("Images", 1, 16, settings["n"], key="rev_n")
    tissue = tissue_picker(model, "rev")
    if st.form_submit_button("Generate", type="primary"):
        settings.update(spec=SamplingSpec(sampler, steps).fitted(T), seed=int(seed), n=n, tissue=tissue)

asked: Tissue | None = settings.get("tissue") if model.conditional else None
if model.conditional and asked is None:  # the form's defaults until the visitor presses Generate
    asked = tissue
run = (settings["spec"].fitted(T), settings["seed"], settings["n"])
traj = cached_trajectory(model, *run, tissue=asked)
key = asked.key if asked else None
animation = caches().animations.get_or_compute((model.key, *run, key),
                                               lambda: denoising_animation_figure(traj.samples, traj.pred_x0, traj.timesteps))
show(animation, key="rev_animation")
st.caption(f"{SAMPLER_LABELS[traj.sampler]}, {traj.num_steps} network evaluations"
           f"{' (those where guidance acts on a batch twice the size: conditional and unconditional)' if asked and asked.guidance not in (0, 1) else ''}, "
           f"seed {settings['seed']}, {model.label.lower()}{f', {asked.describe()}' if asked else ''}. "
           "Press ▶ or drag the slider: every frame is already computed.")

times = trajectory_times(traj.timesteps)
i = st.slider("Inspect any step (no recomputation)", 0, traj.num_steps, traj.num_steps, key="rev_inspect")
show(side_by_side_figure(traj.samples[i], traj.pred_x0[i], f"x_t at step {i} (t = {times[i]})", "predicted x̂₀"),
     key="rev_step")

final = image_grid(traj.samples[-1])
d1, d2 = st.columns(2)
d1.download_button("Download the final grid (PNG)", png_bytes(final, scale=4), file_name="samples.png",
                   mime="image/png", key="rev_png", on_click="ignore")
d2.download_button("Download the animation (GIF)", lambda: trajectory_gif(traj.samples, traj.pred_x0),
                   file_name="denoising.gif", mime="image/gif", key="rev_gif", on_click="ignore")
