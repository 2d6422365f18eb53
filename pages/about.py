"""About / model card: the data, the method, what we changed from the seed paper and why, limits and ethics."""
import streamlit as st

from ddpm.data import CLASS_NAMES, DATA_CREDIT, SPLIT_SIZES
from ddpm.explain import describe_checkpoint, preset_comparison
from ddpm.schedules import NoiseSchedule, ScheduleConfig
from pages._shared import keep_training_alive
from pages._models import load_model, PRETRAINED

keep_training_alive()
st.title("About this model")
st.write("A model card: what the model learned from, how it was built, what it cannot do, and how its images may "
         "and may not be used.")

st.header("Data")
st.markdown(f"""
**PathMNIST**: {SPLIT_SIZES['train']:,} training, {SPLIT_SIZES['val']:,} validation and {SPLIT_SIZES['test']:,} test
patches of haematoxylin-and-eosin stained colorectal tissue, 3×28×28, in {len(CLASS_NAMES)} classes:
{', '.join(CLASS_NAMES)}. The training and validation patches come from one centre (NCT-CRC-HE-100K), the test
patches from another (CRC-VAL-HE-7K), so the test split measures a shift between hospitals.

*Credit and licence*: {DATA_CREDIT} MedMNIST is released under CC BY 4.0: use it with this attribution.
The app ships a class-balanced subset of the training split so that it runs offline; with the full file it uses all of it.
""")

st.header("Method")
st.markdown("""
A denoising diffusion probabilistic model (Ho et al. 2020). Training adds Gaussian noise to a real patch at a random
step t and teaches a U-Net to undo it; sampling starts from pure noise and removes it step by step. Three samplers share
one trained network: DDPM (ancestral, all T steps), DDIM (deterministic, few steps; Song et al. 2021) and
DPM-Solver++ (2M) (Lu et al. 2022), which gives good patches in about 20 steps.
""")
st.subheader("The seed paper's setup, and what we changed")
st.table(preset_comparison())
PAPER_SIGNAL = NoiseSchedule.from_config(ScheduleConfig.paper()).terminal_signal
st.markdown(f"""
Why each change:
- **Zero terminal SNR** (Lin et al. 2024). The paper's linear schedule leaves about {PAPER_SIGNAL:.0%} of the image in x_T (√ᾱ_T = {PAPER_SIGNAL:.2f}), but
  sampling starts from pure noise, so the first steps see inputs unlike any in training. Rescaling makes x_T pure noise.
- **Cosine schedule** (Nichol & Dhariwal 2021). It spends fewer steps on nearly destroyed images, where little is learned.
- **v-prediction** (Salimans & Ho 2022). With SNR 0 at t = T, predicting the noise leaves x̂₀ undefined; predicting
  v = √ᾱ·ε − √(1−ᾱ)·x₀ keeps it defined at every t.
- **min-SNR-γ loss weighting** (Hang et al. 2023). It balances easy and hard steps, which makes training converge faster.
- **A residual U-Net with GroupNorm and attention** (the DDPM / ADM design). The paper's 0.16 M-parameter network
  learns the colours but not the structure of the tissue.
- **EMA of the weights, learning-rate warm-up, gradient clipping**. These give steadier samples from a short run.
- **Flips and 90° rotations**. Tissue has no orientation, so they multiply the data and reduce copying.
- **bf16 on CPU and few-step samplers**. These are what make training and a live demo possible on two CPU cores.
""")

st.header("The model in use")
model, error = load_model(PRETRAINED)
if model is None:
    st.warning(f"The pretrained model is not available here: {error}")
else:
    st.markdown("\n".join(f"- **{k}**: {v}" for k, v in describe_checkpoint(model.checkpoint).items()))

st.header("Limitations")
st.markdown("""
- 28×28 pixels is very coarse: nuclei are a pixel or two, and glands only barely show. Features that pathologists
  read at 20× are not there to learn.
- The model is small and was trained for hours on a CPU. Its samples get the colours and textures roughly right, and
  much of the structure wrong.
- The metrics live in the feature space of a small classifier trained on the same data, so they rank models and
  are not absolute quality. Without the full data file they use the bundled subset and are indicative only.
- The training patches come from one centre, with its stain, scanner and patients. Other centres' tissue looks different.
""")

st.header("Ethics of synthetic medical images")
st.markdown("""
- **Never diagnostic evidence.** A generated patch shows no patient. It must not be used to diagnose, to document a
  case, or as ground truth for a clinical tool that has not been validated on real data.
- **Bias.** The model reproduces its data: its class mix, one centre's staining and its patient population. The Compare
  page shows where the class mix and colours drift. Under-represented tissue is generated worse.
- **Transparency.** Label synthetic images as synthetic wherever they go. This page, the configs and the training logs
  say how the model was made. The evaluation reports its real-versus-real floor so that numbers are not oversold.
- **Privacy.** The memorization check on the Compare page looks for samples that copy a training patch. The data is
  public and de-identified, but a model that copies can leak what it saw.
""")
