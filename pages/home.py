"""Home: what the app is, samples beside real patches (made ahead of time for the first view, else live),
the model in use, the way in."""
import random

import streamlit as st

from ddpm.figures import side_by_side_figure, side_by_side_frame  # Plotly and NumPy only: no torch yet

st.title("PathMNIST Diffusion Studio")
st.write("A denoising diffusion model that learned to paint 28×28 colorectal tissue patches. Here it runs, "
         "trains and is measured live: watch noise turn into tissue, then see how close it comes to the real thing.")
# The grid's empty frame goes out before the library imports torch (about a second on first load): the browser
# fetches its chart code (Plotly.js, 4.7 MB) meanwhile instead of afterwards (bench/startup_time.py).
controls, grid = st.container(), st.empty()
grid.plotly_chart(side_by_side_frame("generated", "real patches"))

from ddpm.data import CLASS_NAMES, DATA_CREDIT, to_hwc_numpy  # noqa: E402
from ddpm.explain import describe_checkpoint, pick_patches  # noqa: E402
from ddpm.serving.preview import PREVIEW_NAME, PREVIEW_SEED, home_request  # noqa: E402
from ddpm.pipeline import PRIOR  # noqa: E402
from ddpm.sampling_spec import EVERY_STEP  # noqa: E402
from pages._shared import bundled_real_images, keep_training_alive, show  # noqa: E402
from pages._models import model_picker, stored_preview  # noqa: E402
from pages._pickers import SAMPLER_LABELS, tissue_picker  # noqa: E402
from pages._compute import cached_samples  # noqa: E402

keep_training_alive()
model = model_picker(drawn_ahead=grid)
tissue = tissue_picker(model, "home", controls)
if controls.button("New samples", key="home_new"):
    st.session_state["home_seed"] = random.randrange(1, 1000)  # never the preview's seed: New samples is always live
seed = st.session_state.setdefault("home_seed", PREVIEW_SEED)

# The first view asks for what `python -m ddpm preview` sampled ahead of time; it is shown only if these very
# weights made it with these very settings, else (and for any other seed, tissue or guidance) we sample live.
wanted = (tissue.tissue, tissue.guidance, tissue.interval or EVERY_STEP) if tissue else ()
request = home_request(model.checkpoint, seed, *wanted)
preview = stored_preview(model, request)
if preview is not None:
    generated = preview.images
else:
    generated = cached_samples(model, n=request.n, seed=seed, spec=request.spec, tissue=tissue)
real = bundled_real_images()
asked = None if tissue is None or tissue.tissue == PRIOR else CLASS_NAMES[tissue.tissue]
real_patches, _ = pick_patches(real, asked, 16, seed=seed)
show(side_by_side_figure(generated, to_hwc_numpy(real_patches), f"generated (seed {seed})",
                         f"real {asked or 'PathMNIST'} patches", ncols=4), key="home_grid", where=grid)
settings = f"{SAMPLER_LABELS[request.spec.sampler]}, {request.spec.steps or 'all T'} steps"
settings += "" if tissue is None else f"; {tissue.describe()}"
if preview is not None:
    st.caption(f"Left: 16 patches made ahead of time by these same weights ({model.label.lower()}; sha256 "
               f"{preview.fingerprint[:12]}… of the model.safetensors in use, checked) with {settings}, seed {seed}, "
               f"{preview.precision}, and stored beside them in {PREVIEW_NAME}. Press New samples, or change the tissue "
               f"or guidance, to sample live. Right: 16 real patches from the {real.source}. {DATA_CREDIT}")
else:
    st.caption(f"Left: 16 patches sampled live from {model.label.lower()} ({settings}). "
               f"Right: 16 real patches from the {real.source}. {DATA_CREDIT}")

with st.expander("The model in use", expanded=True):
    st.markdown("\n".join(f"- **{k}**: {v}" for k, v in describe_checkpoint(model.checkpoint).items()))

st.subheader("Where to go next")
cols = st.columns(6)
cols[0].page_link("pages/forward.py", label="Forward diffusion: how noise erases a patch", icon=":material/blur_on:")
cols[1].page_link("pages/reverse.py", label="Reverse denoising: watch samples appear", icon=":material/auto_fix_high:")
cols[2].page_link("pages/steer.py", label="Steer tissue: repaint, fill, morph", icon=":material/tune:")
cols[3].page_link("pages/train.py", label="Train: your own run, live", icon=":material/model_training:")
cols[4].page_link("pages/compare.py", label="Compare: generated against real", icon=":material/compare:")
cols[5].page_link("pages/about.py", label="About: data, method, limits", icon=":material/info:")
