"""Sidebar settings shared by every page (drawn by app.py before the page runs).

In shared-server mode (`RHF_SHARED=1`, see rhf_core/shared.py) every path typed here is checked
against the configured roots before anything is opened, and errors are shown without server paths.
"""

from __future__ import annotations

import streamlit as st

from rhf_core.data import DEFAULT_SPEC, read_spec
from rhf_core.dataset import Dataset
from rhf_core.errors import RHFError
from rhf_core.shared import current_policy
from ui.loaders import load_dataset

SPEC_HELP = (
    "`shapes` (embedded ShapesWorld; options like `shapes:n=20000,seed=1,raters=rapidata`), "
    "`richhf18k:/dir/with/tfrecords,pickapic=/pickapic/dir`, `rapidata:/parquet/dir` or `folder:/dir`; "
    "any of them may end in `,split=train|dev|test`."
)
SHARED_SPEC_HELP = (
    "`shapes` (embedded ShapesWorld; options like `shapes:n=5000,seed=1,raters=rapidata`), "
    "`richhf18k:DIR`, `rapidata:DIR` or `folder:DIR`, with DIR inside the folders this shared server "
    "allows (a relative DIR is read inside them); any of them may end in `,split=…`."
)


def policy():
    """The shared-server policy in force (local mode: checks nothing)."""
    return current_policy()


def error_text(e: BaseException) -> str:
    """An error's message as a page may show it: without server paths in shared mode."""
    return policy().scrub(e)


def _spec_names_pickapic(spec: str) -> tuple[bool, bool]:
    """(is a RichHF-18K spec, carries its own `pickapic=`) for the text typed so far (may be unfinished)."""
    try:
        parsed = read_spec(spec)
    except RHFError:  # half-typed: judge by the prefix, the spec's own error shows when it is opened
        return spec.lower().startswith("richhf"), False
    return parsed.source == "richhf18k", "pickapic" in parsed.options


def dataset_settings() -> None:
    """The dataset spec (bound to `?ds=` in the URL) and, for a RichHF-18K spec without its own
    `pickapic=`, a separate Pick-a-Pic field (bound to `?pickapic=`, kept for older links)."""
    shared = policy().shared
    with st.sidebar:
        st.text_input("Dataset", value=DEFAULT_SPEC, key="ds", help=SHARED_SPEC_HELP if shared else SPEC_HELP,
                      bind="query-params")
        richhf, own = _spec_names_pickapic(str(st.session_state.get("ds", "")).strip())
        if richhf and not own:
            st.text_input("Pick-a-Pic folder (prompts and images)", key="pickapic", bind="query-params",
                          help="Parquet files with caption/image_*_uid/jpg_* columns, or {uid}.png files "
                               "(or name it in the spec: `richhf18k:DIR,pickapic=DIR`).")
        if shared:
            st.caption("Shared server: paths only inside the allowed folders.")


def predictor_settings() -> None:
    """The RAHF checkpoint (bound to `?rahf=`); empty = the embedded ShapesWorld checkpoint."""
    with st.sidebar:
        st.text_input("RAHF checkpoint", key="rahf", bind="query-params", placeholder="embedded (rahf-shapes)",
                      help="A folder with config.json + model.safetensors, e.g. one written by "
                           "`python -m rhf_core train-rahf`. Empty: the embedded ShapesWorld checkpoint.")


def generator_settings() -> None:
    """The text-to-image pipeline (bound to `?gen=`); empty = the embedded ShapesWorld generator."""
    shared = policy().shared
    with st.sidebar:
        st.text_input("Generator", key="gen", bind="query-params", placeholder="embedded (t2i-shapes)",
                      help="A diffusers Stable-Diffusion-style pipeline: a local folder" +
                           (" inside the allowed model folders." if shared else " or a hub id you have downloaded.") +
                           " Empty: the embedded ShapesWorld generator.")


def load_model_field(key: str, what: str, loader, stop_on_error: bool, kind: str = ""):
    """`loader(value of the model-path field key)`, the value checked by the policy as a `kind` of model
    (default: `what`); a bad value shows a readable error (and stops the page with `stop_on_error`)."""
    pol = policy()
    value = str(st.session_state.get(key) or "").strip()
    try:
        return loader(pol.model_path(value, kind or what.removeprefix("the ")))
    except RHFError as e:
        # Shared mode never echoes the path: the user typed it, but the message must not confirm server paths.
        named = "" if pol.shared else f" `{value or 'embedded'}`"
        st.error(f"Could not load {what}{named}: {pol.scrub(e)}")
        if stop_on_error:
            st.stop()
        return None


def current_generator(stop_on_error: bool = True):
    """The generator named in the sidebar; a bad path shows a readable error."""
    from ui.loaders import load_generator

    return load_model_field("gen", "the generator", load_generator, stop_on_error)


def current_predictor(stop_on_error: bool = True):
    """The RAHF predictor named in the sidebar; a bad path shows a readable error."""
    from ui.loaders import load_predictor

    return load_model_field("rahf", "the RAHF checkpoint", load_predictor, stop_on_error)


def current_spec() -> tuple[str, str | None]:
    """The spec and Pick-a-Pic folder as typed in the sidebar (what the user sees; not yet checked).

    A spec that names its own `pickapic=` hides the separate field, so that field's value (perhaps
    left in the URL by an older link) is not used: the spec says everything."""
    spec = str(st.session_state.get("ds") or DEFAULT_SPEC).strip()
    richhf, own = _spec_names_pickapic(spec)
    pickapic = (st.session_state.get("pickapic") or None) if richhf and not own else None
    return spec, pickapic


def loaded_spec() -> tuple[str, str | None]:
    """The (spec, pickapic) `current_dataset` opened: in shared mode with paths resolved inside the roots.

    Pass these to cached loaders keyed by dataset (e.g. `load_mean_heatmap`); show `current_spec()`."""
    return policy().check_spec(*current_spec())


def current_dataset(stop_on_error: bool = True) -> Dataset | None:
    """The dataset named in the sidebar, with a progress bar while a large one is first built.

    A bad spec (or, in shared mode, a path outside the roots) shows a readable error and stops the
    page (or returns None)."""
    pol = policy()
    spec, pickapic = current_spec()
    try:
        checked, pick = pol.check_spec(spec, pickapic)
        ds = load_dataset(checked, pick, _label=spec)
    except RHFError as e:
        named = "" if pol.shared else f" `{spec}`"
        st.error(f"Could not open dataset{named}: {pol.scrub(e)}")
        if stop_on_error:
            st.stop()
        return None
    return ds
