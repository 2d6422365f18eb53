"""Forward diffusion: real patches, a time slider, the schedule's curves and where the pixels drift."""
import random

import streamlit as st

from ddpm.data import CLASS_NAMES, to_hwc_numpy
from ddpm.explain import SCHEDULES, diffuse, pick_patches, signal_and_noise
from ddpm.figures import image_grid_figure, pixel_histogram_figure, schedule_curves_figure
from ddpm.schedules import NoiseSchedule
from pages._shared import keep_training_alive, real_images, show

keep_training_alive()
st.title("Forward diffusion")
st.write("Training a diffusion model starts by destroying images: each step mixes in a little Gaussian noise until "
         "only noise is left. Drag t and watch a real patch dissolve.")

real, data_warning = real_images()
if data_warning:
    st.info(f"The full PathMNIST file is not here, so real patches come from the {real.source}.")

c1, c2, c3 = st.columns([2, 1, 1])
tissue = c1.selectbox("Tissue class", ["any (random)", *CLASS_NAMES], key="fwd_tissue")
n = c2.slider("Patches", 1, 16, 8, key="fwd_n")
if c3.button("New draw", key="fwd_redraw") or "forward_seed" not in st.session_state:
    st.session_state["forward_seed"] = random.randrange(10_000)
name = st.radio("Noise schedule", list(SCHEDULES), index=0, horizontal=True, key="fwd_schedule")
schedules = {k: NoiseSchedule.from_config(cfg) for k, cfg in SCHEDULES.items()}
schedule = schedules[name]
T = schedule.num_timesteps
t = st.slider("t (0 = the clean patch, T = the end of the forward process)", 0, T, T // 4, key="fwd_t")

seed = st.session_state["forward_seed"]
patches, _ = pick_patches(real, None if tissue.startswith("any") else tissue, n, seed=seed)
x_t = diffuse(schedule, patches, t, seed=seed)
signal, noise, snr = signal_and_noise(schedule, t)

left, right = st.columns(2)
with left:
    show(image_grid_figure(to_hwc_numpy(x_t), title=f"x_t at t = {t}"), key="fwd_grid")
    st.caption("Shown clipped to the displayable range [-1, 1]; the histogram shows the real values.")
with right:
    show(pixel_histogram_figure(x_t.numpy(), diffuse(schedule, patches, 0).numpy(), t=t), key="fwd_hist")
m1, m2, m3 = st.columns(3)
m1.metric("signal kept √ᾱ_t", f"{signal:.3f}")
m2.metric("noise level √(1-ᾱ_t)", f"{noise:.3f}")
m3.metric("signal-to-noise ratio", "∞" if snr == float("inf") else f"{snr:.3g}")

show(schedule_curves_figure(schedules, t=t, highlight=name), key="fwd_curves")
end, end_noise, _ = signal_and_noise(schedule, T)
if end >= 0.01:
    st.warning(f"With the {name} schedule, x_T still holds **{end:.0%}** of the image: x_T = {end:.2f}·x_0 + "
               f"{end_noise:.2f}·ε. Yet sampling starts from pure noise, an input the model never saw "
               "at t = T in training (Lin et al. 2024).")
elif end > 0:
    st.info(f"With the {name} schedule, x_T is almost pure noise (√ᾱ_T = {end:.1e}): sampling's pure-noise start "
            "is only slightly off from what training saw.")
else:
    st.success(f"With the {name} schedule, x_T is pure noise (√ᾱ_T = 0): training ends exactly where sampling starts.")

with st.expander("The math"):
    st.latex(r"x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon,\qquad \varepsilon\sim\mathcal N(0, I),"
             r"\qquad \bar\alpha_t = \prod_{s\le t}(1-\beta_s)")
    st.write("One jump reaches any t, so training picks a random t per image. The linear schedule (Ho et al. 2020) "
             "grows β_t from 1e-4 to 0.02; the cosine one (Nichol & Dhariwal 2021) destroys detail more evenly; "
             "the zero-terminal-SNR rescale (Lin et al. 2024) makes x_T exactly noise.")
