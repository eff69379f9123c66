"""Home: what the studio does and what is loaded."""

import platform

import streamlit as st
import torch

from ui.settings import current_dataset, current_generator, current_predictor, current_spec, policy

st.title("Rich Human Feedback Studio")
st.write(
    "A workbench for **rich** human feedback on text-to-image models: not only which image is "
    "better, but *where* it is wrong (heatmaps of implausible and misaligned regions), *which "
    "words* of the prompt it fails, and how it scores on plausibility, alignment, aesthetics and "
    "overall quality."
)
st.page_link("app_pages/explorer.py", label="Dataset explorer: filter, browse and plot any rich-feedback dataset", icon=":material/photo_library:")
st.page_link("app_pages/live_rahf.py", label="Live RAHF: predict heatmaps, scores and misaligned words for your images", icon=":material/center_focus_strong:")
st.page_link("app_pages/lee.py", label="Ways to spend a reward: best k of n, reward guidance or fine-tuning (Lee et al.)", icon=":material/compare:")
st.page_link("app_pages/repair.py", label="Inpainting repair: mask what RAHF flags, inpaint, keep the most plausible", icon=":material/healing:")

st.subheader("Loaded")
spec, _ = current_spec()
ds = current_dataset(stop_on_error=False)
if torch.cuda.is_available():
    device, device_help = "CUDA", torch.cuda.get_device_name(0)
else:
    device, device_help = "CPU", f"{platform.machine()}, {torch.get_num_threads()} threads"
c1, c2, c3 = st.columns(3)
c4, c5, c6 = st.columns(3)
if ds is not None:
    c1.metric("Dataset", ds.name, help=spec if policy().shared else ds.spec)  # shared: never the resolved path
    c2.metric("Records", f"{len(ds):,}", delta=f"{ds.n_skipped} rows skipped" if ds.n_skipped else None,
              delta_color="inverse")
else:
    c1.metric("Dataset", "—", help=None if policy().shared else spec)
rahf = current_predictor(stop_on_error=False)
c3.metric("Predictor (RAHF)", rahf.name if rahf else "—", help=f"{rahf.config.variant}, {rahf.config.image_size} px" if rahf else None)
gen = current_generator(stop_on_error=False)
c6.metric("Generator", gen.name if gen else "—", help=gen.describe() if gen else None)
c4.metric("Device", device, help=device_help)
c5.metric("PyTorch", torch.__version__)
# A refused spec on a shared server is not repeated back (it may name a server path).
shown = "" if ds is None and policy().shared else f"Dataset spec: `{spec}`. "
st.caption(
    f"{shown}Dataset, predictor and generator are set in the sidebar and are part of the URL, "
    "so links you share open the same ones."
    + (" This is a shared server: data and models open only from the folders it allows, and exports go to "
       "its export folder or a download." if policy().shared else "")
)
