"""Sidebar settings shared by every page (drawn by app.py before the page runs)."""

from __future__ import annotations

import streamlit as st

from rhf_core.data import DEFAULT_SPEC
from rhf_core.dataset import Dataset
from rhf_core.errors import RHFError
from ui.loaders import load_dataset

SPEC_HELP = (
    "`shapes` (embedded ShapesWorld; options like `shapes:n=20000,seed=1,raters=rapidata`), "
    "`richhf18k:/dir/with/tfrecords`, `rapidata:/parquet/dir` or `folder:/dir`."
)


def dataset_settings() -> None:
    """The dataset spec (bound to `?ds=` in the URL) and, for RichHF-18K, the Pick-a-Pic path."""
    with st.sidebar:
        st.text_input("Dataset", value=DEFAULT_SPEC, key="ds", help=SPEC_HELP, bind="query-params")
        if str(st.session_state.get("ds", "")).lower().startswith("richhf"):
            st.text_input("Pick-a-Pic folder (prompts and images)", key="pickapic", bind="query-params",
                          help="Parquet files with caption/image_*_uid/jpg_* columns, or {uid}.png files.")


def predictor_settings() -> None:
    """The RAHF checkpoint (bound to `?rahf=`); empty = the embedded ShapesWorld checkpoint."""
    with st.sidebar:
        st.text_input("RAHF checkpoint", key="rahf", bind="query-params", placeholder="embedded (rahf-shapes)",
                      help="A folder with config.json + model.safetensors, e.g. one written by "
                           "`python -m rhf_core train-rahf`. Empty: the embedded ShapesWorld checkpoint.")


def generator_settings() -> None:
    """The text-to-image pipeline (bound to `?gen=`); empty = the embedded ShapesWorld generator."""
    with st.sidebar:
        st.text_input("Generator", key="gen", bind="query-params", placeholder="embedded (t2i-shapes)",
                      help="A diffusers Stable-Diffusion-style pipeline: a local folder or a hub id you have "
                           "downloaded. Empty: the embedded ShapesWorld generator.")


def _load_from_sidebar(key: str, what: str, loader, stop_on_error: bool):
    """`loader(value of the sidebar field key)`; a bad value shows a readable error (and stops the page)."""
    value = str(st.session_state.get(key) or "").strip()
    try:
        return loader(value)
    except RHFError as e:
        st.error(f"Could not load {what} `{value or 'embedded'}`: {e}")
        if stop_on_error:
            st.stop()
        return None


def current_generator(stop_on_error: bool = True):
    """The generator named in the sidebar; a bad path shows a readable error."""
    from ui.loaders import load_generator

    return _load_from_sidebar("gen", "the generator", load_generator, stop_on_error)


def current_predictor(stop_on_error: bool = True):
    """The RAHF predictor named in the sidebar; a bad path shows a readable error."""
    from ui.loaders import load_predictor

    return _load_from_sidebar("rahf", "the RAHF checkpoint", load_predictor, stop_on_error)


def current_spec() -> tuple[str, str | None]:
    spec = str(st.session_state.get("ds") or DEFAULT_SPEC).strip()
    pickapic = st.session_state.get("pickapic") or None
    return spec, pickapic


def current_dataset(stop_on_error: bool = True) -> Dataset | None:
    """The dataset named in the sidebar, with a progress bar while a large one is first built.

    A bad spec shows a readable error and stops the page (or returns None)."""
    spec, pickapic = current_spec()
    try:
        ds = load_dataset(spec, pickapic)
    except RHFError as e:
        st.error(f"Could not open dataset `{spec}`: {e}")
        if stop_on_error:
            st.stop()
        return None
    return ds
