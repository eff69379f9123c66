"""Filtering, sorting and dataset-level statistics over a dataset's frame (the explorer's logic).

Everything here works on `ds.frame` (scalars only), except `mean_heatmap`, which opens a bounded
sample of records. The page binds its widgets to the URL query string, so a shared link reopens the same view.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rhf_core.dataset import HEATMAP_NAMES, SCORE_NAMES, STANDARD_COLUMNS, Dataset
from rhf_core.heatmaps import resize_heatmap

# Frame columns every source has; anything else with few distinct values is a category filter.
_STANDARD = set(STANDARD_COLUMNS)
MAX_CATEGORIES = 40
TRI_STATE = ("any", "yes", "no")  # for has-heatmap and has-flagged-word filters


@dataclass
class ExplorerFilter:
    text: str = ""  # case-insensitive substring of the prompt (or an exact id)
    splits: tuple[str, ...] = ()  # empty = every split
    score_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    heatmaps: dict[str, str] = field(default_factory=dict)  # heatmap name → any / yes / no
    flagged: str = "any"  # has flagged words: any / yes / no
    categories: dict[str, tuple] = field(default_factory=dict)  # column → allowed values
    ids: frozenset[str] | None = None  # only these record ids (e.g. the ones with a tag); None = all
    sort_by: str = ""  # a column of the frame; "" = dataset order
    descending: bool = False


def score_columns(frame: pd.DataFrame) -> list[str]:
    """Canonical scores that at least one record has."""
    return [s for s in SCORE_NAMES if s in frame and frame[s].notna().any()]


def heatmap_columns(frame: pd.DataFrame) -> list[str]:
    """Heatmap types that at least one record has."""
    return [h for h in HEATMAP_NAMES if f"has_{h}" in frame and frame[f"has_{h}"].any()]


def category_columns(frame: pd.DataFrame) -> dict[str, list]:
    """Source-specific columns with few distinct values (e.g. category, background, generator)."""
    out = {}
    for col in frame.columns:
        if col in _STANDARD or col.startswith("_") or col == "tags":  # tags have their own filter
            continue
        values = frame[col].dropna().unique()
        if 1 < len(values) <= MAX_CATEGORIES and frame[col].dtype != float:
            out[col] = sorted(values.tolist(), key=str)
    return out


def sortable_columns(frame: pd.DataFrame) -> list[str]:
    cols = score_columns(frame) + [f"{h}_mass" for h in heatmap_columns(frame)]
    cols += [c for c in ("n_flagged_words", "max_word_strength") if c in frame]
    extra = [c for c in frame.columns if c not in _STANDARD and not c.startswith("_")
             and pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])]
    return cols + extra


def apply_filter(frame: pd.DataFrame, f: ExplorerFilter) -> np.ndarray:
    """Positions (into `frame`) of the records that pass, in the requested order."""
    keep = np.ones(len(frame), dtype=bool)
    if f.text:
        text = f.text.strip()
        keep &= (frame["prompt"].astype(str).str.contains(text, case=False, regex=False).to_numpy()
                 | (frame["id"].astype(str) == text).to_numpy())
    if f.splits:
        keep &= frame["split"].isin(f.splits).to_numpy()
    for name, (lo, hi) in f.score_ranges.items():
        if name in frame and (lo, hi) != (0.0, 1.0):
            values = frame[name].to_numpy(dtype=float)
            keep &= (values >= lo - 1e-9) & (values <= hi + 1e-9)  # NaN (not rated) drops out
    # Only "yes" and "no" filter. Anything else (None from a cleared widget or an empty `?h_…=` in
    # the URL) means "any": it used to fall through to "no" and show 0 records.
    for name, state in f.heatmaps.items():
        col = f"has_{name}"
        if state in ("yes", "no") and col in frame:
            has = frame[col].to_numpy(dtype=bool)
            keep &= has if state == "yes" else ~has
    if f.flagged in ("yes", "no") and "n_flagged_words" in frame:
        has = frame["n_flagged_words"].to_numpy() > 0
        keep &= has if f.flagged == "yes" else ~has
    for col, values in f.categories.items():
        if col in frame and values:
            keep &= frame[col].astype(str).isin([str(v) for v in values]).to_numpy()
    if f.ids is not None:
        keep &= frame["id"].astype(str).isin(f.ids).to_numpy()
    positions = np.flatnonzero(keep)
    if f.sort_by and f.sort_by in frame:
        values = frame[f.sort_by].to_numpy()[positions]
        order = pd.Series(values).sort_values(ascending=not f.descending, na_position="last", kind="stable").index
        positions = positions[np.asarray(order)]
    return positions


def most_flagged_words(frame: pd.DataFrame, top: int = 20) -> pd.DataFrame:
    """Words flagged (strength ≥ 0.5) most often across the frame's records, lower-cased."""
    counts: Counter = Counter()
    for text in frame.get("flagged_words", pd.Series(dtype=str)).dropna():
        counts.update({w.lower().strip(",.?!\":;") for w in str(text).split()})  # once per record
    counts.pop("", None)
    rows = counts.most_common(top)
    out = pd.DataFrame(rows, columns=["word", "records"])
    out["share"] = out["records"] / max(len(frame), 1)
    return out


def score_correlations(frame: pd.DataFrame) -> pd.DataFrame:
    """Spearman correlations between scores, heatmap masses and flagged-word counts."""
    cols = score_columns(frame) + [f"{h}_mass" for h in heatmap_columns(frame)]
    if "n_flagged_words" in frame and frame["n_flagged_words"].any():
        cols.append("n_flagged_words")
    return frame[cols].astype(float).corr(method="spearman")


def mean_heatmap(
    ds: Dataset, positions, name: str, size: tuple[int, int] = (64, 64), max_records: int = 300, seed: int = 0
) -> tuple[np.ndarray | None, int, int]:
    """Mean `name` heatmap over records at `positions` that have one, resized to `size`.

    Opens at most `max_records` of them (a seeded random sample). Returns (mean or None,
    records averaged, records with that heatmap)."""
    positions = np.asarray(positions, dtype=np.int64)
    col = f"has_{name}"
    if col not in ds.frame:
        return None, 0, 0
    has = positions[ds.frame[col].to_numpy(dtype=bool)[positions]]
    if len(has) == 0:
        return None, 0, 0
    chosen = has
    if len(has) > max_records:
        chosen = np.sort(np.random.default_rng(seed).choice(has, size=max_records, replace=False))
    total = np.zeros((size[1], size[0]), dtype=np.float64)
    for pos in chosen:
        total += resize_heatmap(ds[int(pos)].heatmaps[name], size)
    return (total / len(chosen)).astype(np.float32), len(chosen), len(has)
