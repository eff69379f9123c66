"""Rich Human Feedback Studio: the Streamlit entry point (home page)."""

import streamlit as st

from rhf_core.data import DEFAULT_SPEC

st.set_page_config(page_title="Rich Human Feedback Studio", layout="wide")
st.title("Rich Human Feedback Studio")
st.write(
    "A workbench for rich human feedback on text-to-image models: heatmaps of implausible and "
    "misaligned regions, per-word misalignment and Likert scores."
)
st.caption(f"Default dataset: `{DEFAULT_SPEC}` (the embedded ShapesWorld; works offline).")
