"""Post-hoc heatmap calibration (`python -m rhf_core calibrate-rahf`).

A heatmap label is one rater panel's clicks, so the loss-minimising prediction is the *expected*
annotation: P(the map is non-empty) × E[heat | non-empty]. The network's maps carry the second factor
well (CC, NSS, AUC) but are too hot on images nobody flags, which costs MSE against the flat baselines.
Calibration multiplies each predicted map by the model's own confidence that the map is non-empty —
implausibility: 1 − the predicted plausibility; misalignment: the probability of the most misaligned
prompt word — and by one scale per map type, fitted by least squares on held-out (dev) labels.
A per-image factor leaves every per-map metric except MSE unchanged (CC, KLD, SIM, NSS, AUC-Judd)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rhf_core.dataset import HEATMAP_NAMES, Dataset
from rhf_core.errors import DatasetFormatError
from rhf_core.heatmaps import resize_heatmap
from rhf_core.rahf.common import heatmap_gate, scorable_records
from rhf_core.rahf.predictor import load_rahf


def fit_heatmap_scale(rahf, ds: Dataset, max_records: int = 0, batch_size: int = 64) -> dict[str, float]:
    """Least-squares scale of each gated map type against the labels of `ds` (records with images)."""
    recs = scorable_records(ds, max_records)
    saved, rahf.config.heatmap_scale = rahf.config.heatmap_scale, {}
    try:
        preds = rahf.predict([r.image for r in recs], [r.prompt for r in recs], batch_size=batch_size)
    finally:
        rahf.config.heatmap_scale = saved
    scales = {}
    for h in HEATMAP_NAMES:
        num = den = 0.0
        for r, p in zip(recs, preds):
            if h in r.heatmaps:
                q = p.heatmaps[h].astype(np.float64) * heatmap_gate(h, p.scores, p.words)
                # A label may be stored at another size than its image (RichHF: 512² maps of any image).
                label = resize_heatmap(r.heatmaps[h], (q.shape[1], q.shape[0]))
                num += float((q * label).sum())
                den += float((q * q).sum())
        if den > 0 and num > 0:
            scales[h] = num / den
    return scales


def calibrate_checkpoint(path: str | Path, ds: Dataset, max_records: int = 0, batch_size: int = 64) -> dict[str, float]:
    """Fit the scales on `ds` and write them into the checkpoint's config.json (atomically)."""
    rahf = load_rahf(path)
    scales = fit_heatmap_scale(rahf, ds, max_records, batch_size=batch_size)
    if not scales:
        raise DatasetFormatError(f"{ds.spec} has no heatmap labels to calibrate against")
    rahf.config.heatmap_scale = {h: round(s, 6) for h, s in scales.items()}
    rahf.config.save(Path(path))
    return rahf.config.heatmap_scale
