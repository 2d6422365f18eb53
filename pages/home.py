"""Home: what the app is, fresh samples beside real patches, the model in use, the way in."""
import random

import streamlit as st

from ddpm.data import CLASS_NAMES, DATA_CREDIT, to_hwc_numpy
from ddpm.explain import describe_checkpoint, pick_patches
from ddpm.figures import side_by_side_figure
from pages._shared import PRIOR, cached_samples, keep_training_alive, model_picker, real_images, show, tissue_picker

keep_training_alive()
st.title("PathMNIST Diffusion Studio")
st.write("A denoising diffusion model that learned to paint 28×28 colorectal tissue patches. Here it runs, "
         "trains and is measured live: watch noise turn into tissue, then see how close it comes to the real thing.")

model = model_picker()
tissue = tissue_picker(model, "home")
if st.button("New samples", key="home_new") or "home_seed" not in st.session_state:
    st.session_state["home_seed"] = random.randrange(1000)
seed = st.session_state["home_seed"]

real, data_warning = real_images()
generated = cached_samples(model, n=16, seed=seed, tissue=tissue)
asked = None if tissue is None or tissue.tissue == PRIOR else CLASS_NAMES[tissue.tissue]
real_patches, _ = pick_patches(real, asked, 16, seed=seed)
show(side_by_side_figure(generated, to_hwc_numpy(real_patches), f"generated (seed {seed})",
                         f"real {asked or 'PathMNIST'} patches", ncols=4), key="home_grid")
what = "" if tissue is None else f"; {tissue.describe()}"
st.caption(f"Left: 16 patches from {model.label.lower()} (DPM-Solver++, 20 steps{what}). Right: 16 real patches. {DATA_CREDIT}")
if data_warning:
    st.caption(f"Real patches: {real.source}.")

with st.expander("The model in use", expanded=True):
    st.markdown("\n".join(f"- **{k}**: {v}" for k, v in describe_checkpoint(model.checkpoint).items()))

st.subheader("Where to go next")
cols = st.columns(5)
cols[0].page_link("pages/forward.py", label="Forward diffusion: how noise erases a patch", icon=":material/blur_on:")
cols[1].page_link("pages/reverse.py", label="Reverse denoising: watch samples appear", icon=":material/auto_fix_high:")
cols[2].page_link("pages/train.py", label="Train: your own run, live", icon=":material/model_training:")
cols[3].page_link("pages/compare.py", label="Compare: generated against real", icon=":material/compare:")
cols[4].page_link("pages/about.py", label="About: data, method, limits", icon=":material/info:")
