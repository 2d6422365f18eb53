"""Compare: generated against real patches, measured, with the real-versus-real floor and a memorization check."""
import streamlit as st

from ddpm.data import CLASS_NAMES, to_chw_tensor, to_hwc_numpy
from ddpm.explain import patches_like, pick_patches
from ddpm.figures import (class_histogram_figure, color_histogram_figure, memorization_figure, metrics_table_figure,
                          quiz_score_figure, ratio_histogram_figure, side_by_side_figure, tissue_rows_figure)
from ddpm.pipeline import PRIOR
from pages._shared import caches, keep_training_alive, limits, quiz_service, real_images, show
from pages._models import model_fingerprint, model_picker
from pages._pickers import Tissue, tissue_picker
from pages._compute import cached_samples, evaluation_report, run_evaluation, tissue_encoder

PER_TISSUE = 4  # generated and real patches per tissue row

keep_training_alive()
st.title("Compare")
st.write("Does it look like tissue, and which tissue? Generated patches beside real ones, then numbers measured in a "
         "tissue classifier's feature space, each next to the score real patches get against each other (the floor).")

model = model_picker()
tissue = tissue_picker(model, "cmp")
real, data_warning = real_images()
encoder, encoder_error = tissue_encoder()
generated = cached_samples(model, 16, seed=0, tissue=tissue)

st.subheader("Generated beside real")
if tissue is not None and tissue.tissue == PRIOR:
    asked = [c for c in range(len(CLASS_NAMES)) for _ in range(PER_TISSUE)]
    by_tissue = cached_samples(model, len(asked), seed=0, tissue=Tissue(asked, tissue.guidance, tissue.interval))
    show(tissue_rows_figure(by_tissue, to_hwc_numpy(patches_like(real, asked, seed=0)), CLASS_NAMES, PER_TISSUE,
                            f"generated, asked for each tissue (guidance {tissue.guidance:g})", "real, the same tissue"),
         key="cmp_tissues")
    st.caption("One row per tissue: the model was asked for that tissue; the real patches are random ones of it.")
if encoder is not None:
    from ddpm.evaluation.encoder import encoder_outputs

    labels = encoder_outputs(encoder, to_chw_tensor(generated))[1].argmax(1)
    real_side, title = patches_like(real, labels, seed=0), "real, the same tissue classes"
    st.caption("The encoder's call for each generated patch, row by row: " + ", ".join(CLASS_NAMES[i] for i in labels) + ".")
else:
    real_side, title = pick_patches(real, None, 16, seed=0)[0], "real, random classes"
    st.caption(f"Real patches are random: {encoder_error}.")
show(side_by_side_figure(generated, to_hwc_numpy(real_side), f"generated ({model.label.lower()})", title, ncols=4),
     key="cmp_pairs")

st.subheader("Memorization: each sample beside its nearest training patch")
try:
    from ddpm.evaluation.memorization import pixel_neighbours

    nn = caches().neighbours.get_or_compute((model.key, tissue, len(real)),  # what `generated` and `real` come from
                                            lambda: pixel_neighbours(to_chw_tensor(generated[:8]), real.images))
    show(memorization_figure(generated[:8], to_hwc_numpy(real.images[nn.index]), nn.distance, nn.ratio), key="cmp_memo")
    st.caption(f"d: pixel distance to the nearest of {len(real):,} training patches (values in [0, 1], best of the 8 flips "
               "and rotations). ratio: nearest over second-nearest distance; under 1/3 suggests a copy.")
except ImportError as err:
    st.info(f"The memorization check needs ddpm.evaluation ({err}).")

st.subheader("Metrics")
report, origin = evaluation_report(model)
metrics_col, people_col = st.columns([3, 2])
with metrics_col:
    if report is None:
        st.info("No evaluation of this model is stored yet: run one below.")
    else:
        note = report.get("protocol", {}).get("note")
        st.caption(f"From {origin}: {report.get('protocol', {}).get('n_generated', '?')} generated patches. " + (note or ""))
        show(metrics_table_figure(report), key="cmp_metrics")
with people_col:
    quiz, quiz_error = quiz_service()
    weights = model_fingerprint(model)
    people = quiz.db.scores(weights) if quiz is not None and weights is not None else None
    if people is not None and people.overall.answers:
        show(quiz_score_figure(people, CLASS_NAMES), key="cmp_people")
        n = people.overall.answers
        st.caption(f"People, in Real or generated?: {n:,} answer{'s' * (n != 1)} about these weights (sha256 "
                   f"{weights[:12]}…): {people.overall.describe()}; 50% is chance.")
    else:
        st.caption("People: no visitor has answered Real or generated? about this model's weights yet"
                   + (f" ({quiz_error})" if quiz_error else "") + "; the quiz always shows the pretrained model.")
if report is not None:
    c1, c2 = st.columns(2)
    with c1:
        show(class_histogram_figure(report["class_hist"]["generated"], report["class_hist"]["train_prior"]), key="cmp_classes")
    with c2:
        show(ratio_histogram_figure(report["ratio_histogram"]), key="cmp_ratio")
    show(color_histogram_figure(report["color_hist"]["generated"], report["color_hist"]["reference"]), key="cmp_colors")

with st.form("cmp_eval"):
    cap = max(50, limits().max_eval_samples)
    n = st.slider("Generated patches for a fresh evaluation", 50, cap, min(200, cap), step=50, key="cmp_n")
    submitted = st.form_submit_button("Run a fresh evaluation")
if submitted:
    run_evaluation(model, n, tissue, st.progress(0.0, text="Sampling and scoring…"))
    st.rerun()
