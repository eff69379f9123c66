"""Home: what the studio does and what is loaded."""

import platform

import streamlit as st
import torch

from ui.settings import current_dataset, current_spec

st.title("Rich Human Feedback Studio")
st.write(
    "A workbench for **rich** human feedback on text-to-image models: not only which image is "
    "better, but *where* it is wrong (heatmaps of implausible and misaligned regions), *which "
    "words* of the prompt it fails, and how it scores on plausibility, alignment, aesthetics and "
    "overall quality."
)
st.page_link("app_pages/explorer.py", label="Dataset explorer: filter, browse and plot any rich-feedback dataset", icon=":material/photo_library:")

st.subheader("Loaded")
spec, _ = current_spec()
ds = current_dataset(stop_on_error=False)
device = f"CUDA ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else f"CPU ({platform.machine()})"
c1, c2, c3, c4 = st.columns(4)
if ds is not None:
    c1.metric("Dataset", ds.name, help=ds.spec)
    c2.metric("Records", f"{len(ds):,}", delta=f"{ds.n_skipped} rows skipped" if ds.n_skipped else None,
              delta_color="inverse")
else:
    c1.metric("Dataset", "—", help=spec)
c3.metric("Device", device)
c4.metric("PyTorch", torch.__version__)
st.caption(
    f"Dataset spec: `{spec}`. Change it in the sidebar; it is part of the URL, so links you share "
    "open the same dataset. Predictor (RAHF) and generator: none loaded yet."
)
