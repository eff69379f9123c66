"""The one module of cached loaders every page uses, so each heavy object loads once per server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from rhf_core.data import open_dataset, parse_spec
from rhf_core.dataset import Dataset
from rhf_core.errors import RHFError
from rhf_core.explore import mean_heatmap
from rhf_core.sources.folder import LABELS


def _labels_version(spec: str) -> tuple[int, int] | None:
    """For a `folder:` spec, (mtime_ns, size) of its labels.jsonl; None for other sources.

    Part of the dataset cache key, so a folder that changes on disk (an annotation saved by this or
    another server process, an export) is reopened instead of served stale."""
    try:
        source, arg = parse_spec(spec)
        if source != "folder":
            return None
        stat = (Path(arg).expanduser() / LABELS).stat()
        return stat.st_mtime_ns, stat.st_size
    except (RHFError, OSError):
        return None  # open_dataset reports the problem


def load_dataset(spec: str, pickapic: str | None = None, _label: str | None = None) -> Dataset:
    """Open a dataset by spec, with a progress bar while a large index is first built.

    `_label` (not part of the cache key) is what the bar names: the spec as the user typed it, since
    in shared mode `spec` holds the resolved server path. Errors propagate as `RHFError`."""
    return _open_dataset(spec, pickapic, _labels_version(spec), _label)


@st.cache_resource(show_spinner=False, max_entries=4)
def _open_dataset(spec: str, pickapic: str | None, version, _label: str | None) -> Dataset:
    options = {"pickapic": pickapic} if pickapic and spec.lower().startswith("richhf") else {}
    label = _label or spec
    bar = st.progress(0.0, text=f"Opening {label}…")

    def progress(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"Building the index of {label}: {done:,} / {total:,} records")

    try:
        return open_dataset(spec, progress=progress, **options)
    finally:
        bar.empty()


@st.cache_data(show_spinner=False, max_entries=32)
def load_mean_heatmap(spec: str, pickapic: str | None, positions_key: str, _positions: np.ndarray, name: str):
    """Mean heatmap of a filtered set; `positions_key` (a hash of the positions) keys the cache."""
    ds = load_dataset(spec, pickapic)
    return mean_heatmap(ds, _positions, name)


@st.cache_resource(show_spinner="Loading the RAHF predictor…", max_entries=2)
def load_predictor(path: str = ""):
    """The RAHF checkpoint at `path`, or the embedded one (errors propagate as `RHFError`)."""
    from rhf_core.rahf import load_rahf

    return load_rahf(path or None)


@st.cache_resource(show_spinner="Loading the text-to-image generator…", max_entries=2)
def load_generator(name_or_path: str = ""):
    """The diffusers pipeline at `name_or_path` (folder or hub id), or the embedded one."""
    from rhf_core.t2i import load_generator as load

    return load(name_or_path or None)


@st.cache_resource(show_spinner="Loading the reward model…", max_entries=2)
def load_reward_model(path: str = ""):
    """Lee et al.'s reward model at `path`, or the embedded ShapesWorld one."""
    from rhf_core.reward import load_reward_model as load

    return load(path or None)


@st.cache_resource(show_spinner="Loading the reward…", max_entries=8)
def load_reward(spec: str, predictor_key: str = "", generator_key: str = "", _predictor=None, _generator=None):
    """The reward `spec` names (lee, lee:DIR, rahf-<score>[:DIR], judge). A bare rahf-<score> scores with
    `_predictor` (the sidebar's RAHF, keyed by `predictor_key`); judge is refused for a generator that is not
    a ShapesWorld one (keyed by `generator_key`). Errors propagate as `RHFError`."""
    from rhf_core.reward.rewards import get_reward

    return get_reward(spec, predictor=_predictor, generator=_generator)


@st.cache_resource(show_spinner="Loading the image encoders…", max_entries=2)
def load_encoders(name_or_path: str = ""):
    from rhf_core.reward.encoders import load_encoders as load

    return load(name_or_path or None)
