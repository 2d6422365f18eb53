"""Steer tissue: repaint a real patch as a tissue (SDEdit), fill a hole (inpainting), morph one noise between two
tissues, and draw one noise as every tissue. Each section is one request to the sampling workers, cached."""
import streamlit as st

from ddpm.data import CLASS_NAMES
from ddpm.editing import MASKS, sdedit_timesteps
from ddpm.figures import (image_row_figure, inpaint_figure, morph_animation_figure, sdedit_strength_figure,
                          tissue_panel_figure)
from ddpm.serving.edit_request import MORPH_WEIGHTS, SDEDIT_STRENGTHS, EditRequest
from pages._compute import cached_edit
from pages._models import model_picker
from pages._pickers import Tissue, tissue_picker
from pages._shared import bundled_real_images, keep_training_alive, show

FILLS = 3  # fills of the patch shown, each from its own noise
DEFAULTS = {"source": CLASS_NAMES.index("colorectal adenocarcinoma epithelium"), "strength": 0.8,
            "morph_a": CLASS_NAMES.index("lymphocytes"), "morph_b": CLASS_NAMES.index("adipose")}

keep_training_alive()
st.title("Steer tissue")
st.write("The tissue label is one input of the network among others: hand it a real patch half-erased by noise, a "
         "patch with a hole, a blend of two labels or the same noise under every label, and you see what the label "
         "decides and what the noise, or the patch, had already decided.")

model = model_picker()
if not model.conditional:
    st.info(f"The {model.label.lower()} is unconditional: it takes no tissue, so there is nothing to steer. Pick "
            "the pretrained model (default) in the sidebar, or a run of yours trained with tissue labels.")
    st.stop()

real = bundled_real_images()
c1, c2, c3 = st.columns(3)
source = c1.selectbox("A real patch of", range(len(CLASS_NAMES)), index=DEFAULTS["source"],
                      format_func=CLASS_NAMES.__getitem__, key="steer_source")
pool = [i for i, label in enumerate(real.labels.tolist()) if label == source]
k = c2.number_input(f"which of the {len(pool)} bundled ones", 0, len(pool) - 1, 0, key="steer_patch")
seed = int(c3.number_input("Seed", 0, 2**31 - 1, 0, key="steer_seed"))
patch = pool[int(k)]
target = tissue_picker(model, "steer", allow_prior=False, label="Steer it towards")
asked = CLASS_NAMES[target.tissue]

st.subheader("SDEdit: repaint the patch as a tissue")
st.write("Noise the patch up to strength s, then denoise it as the tissue asked for (Meng et al. 2022). The noise "
         "erases fine detail first: even when the noised input looks like confetti, its coarse layout and colours are "
         "still in there and the model keeps them, repainting only texture; near 1 the patch is forgotten.")
strength = st.select_slider("Strength s (0 keeps the patch, 1 starts from pure noise)", SDEDIT_STRENGTHS,
                            value=DEFAULTS["strength"], format_func=lambda s: f"{s:g}", key="steer_strength")
sd = cached_edit(model, EditRequest("sdedit", patch=patch, strengths=SDEDIT_STRENGTHS), seed, target)
i = SDEDIT_STRENGTHS.index(strength)
start = (sdedit_timesteps(model.checkpoint.schedule.num_timesteps, strength) or [-1])[0] + 1  # paper time
show(image_row_figure([sd.original[0], sd.noised[i], sd.images[i]],
                      ["the real patch", f"noised to s = {strength:g} (t = {start})", f"repainted as {asked}"], 260),
     key="steer_sdedit")
show(sdedit_strength_figure(sd.noised, sd.images, SDEDIT_STRENGTHS, selected=strength), key="steer_strengths")
st.caption(f"Every strength from the same noise (seed {seed}), asked for {target.describe()}; the slider reads this "
           "row, nothing is recomputed.")

st.subheader("Inpainting: fill a hole so that it agrees with what is kept")
st.write("The kept pixels are put back, noised to the current level, before every step, so the model only paints "
         "the hole, and it sees the surroundings it has to match; it goes back up one step and redoes it each time "
         "(RePaint, Lugmayr et al. 2022) so the fill can still correct itself.")
mask_name = st.radio("Mask", MASKS, horizontal=True, key="steer_mask")
ip = cached_edit(model, EditRequest("inpaint", patch=patch, mask=mask_name, fills=FILLS), seed, target)
show(inpaint_figure(ip.original, ip.mask, ip.images), key="steer_inpaint")
st.caption(f"{FILLS} fills, each from its own noise (seed {seed}), asked for {target.describe()}; the kept pixels "
           "are the original's, exactly.")

st.subheader("Morph: one noise between two tissues")
st.write("The class label enters the network as a learned vector; blend two tissues' vectors and render the same "
         "starting noise with each blend. The ends are exactly what asking for either tissue gives.")
m1, m2 = st.columns(2)
tissue_a = m1.selectbox("From", range(len(CLASS_NAMES)), index=DEFAULTS["morph_a"], format_func=CLASS_NAMES.__getitem__,
                        key="steer_morph_a")
tissue_b = m2.selectbox("To", range(len(CLASS_NAMES)), index=DEFAULTS["morph_b"], format_func=CLASS_NAMES.__getitem__,
                        key="steer_morph_b")
mo = cached_edit(model, EditRequest("morph", tissue_b=tissue_b, weights=MORPH_WEIGHTS), seed,
                 Tissue(tissue_a, target.guidance, target.interval))
show(morph_animation_figure(mo.images, MORPH_WEIGHTS, CLASS_NAMES[tissue_a], CLASS_NAMES[tissue_b]), key="steer_morph")
st.caption(f"{len(MORPH_WEIGHTS)} blends of one noise (seed {seed}), guidance {target.guidance:g}. Press ▶ or drag "
           "the slider: every frame is already computed.")

st.subheader("The same noise as every tissue")
sn = cached_edit(model, EditRequest("same_noise"), seed, target)
show(tissue_panel_figure(sn.images), key="steer_tissues")
st.caption(f"One starting noise (seed {seed}) asked for each of the {len(CLASS_NAMES)} tissues, guidance "
           f"{target.guidance:g}: what stays the same across the row, the noise decided; what changes, the label.")
