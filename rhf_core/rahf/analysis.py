"""Error analysis: a predictor run over a set of labelled records, cached on disk, with per-record
disagreement between prediction and labels (the Live RAHF page's list)."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image

from rhf_core import metrics as M
from rhf_core.cache import cache_dir, cache_key, write_parquet
from rhf_core.dataset import HEATMAP_NAMES, SCORE_NAMES, Dataset, Record, tokenize_prompt
from rhf_core.errors import RHFError
from rhf_core.heatmaps import resize_heatmap
from rhf_core.rahf.predictor import RAHF, Prediction

# Columns of the disagreement list, and how each is read.
DISAGREEMENT = {
    **{f"abs_err_{s}": f"|predicted − labelled| {s}" for s in SCORE_NAMES},
    **{f"one_minus_cc_{h}": f"1 − CC, {h} heatmap" for h in HEATMAP_NAMES},
    "word_errors": "misaligned-word errors (false + missed)",
}


def record_metrics(pred: Prediction, rec: Record) -> dict:
    """Per-record agreement of a prediction with the record's labels (only what was labelled)."""
    row: dict = {}
    for s in SCORE_NAMES:
        row[f"pred_{s}"] = pred.scores[s]
        if s in rec.scores:
            row[f"label_{s}"] = rec.scores[s]
            row[f"abs_err_{s}"] = abs(pred.scores[s] - rec.scores[s])
    for h in HEATMAP_NAMES:
        if h in rec.heatmaps:
            gt = rec.heatmaps[h]
            p = pred.heatmaps[h]
            if p.shape != gt.shape:
                p = resize_heatmap(p, (gt.shape[1], gt.shape[0]))
            row[f"mse_{h}"] = float(np.mean((p - gt) ** 2))
            if gt.any():
                row[f"cc_{h}"] = M.cc(p, gt)
                row[f"one_minus_cc_{h}"] = 1.0 - row[f"cc_{h}"]
                row[f"nss_{h}"] = M.nss(p, gt > 0)
                row[f"auc_judd_{h}"] = M.auc_judd(p, gt > 0)
    if rec.words and len(rec.words) == len(pred.words):
        labelled = [s >= 0.5 for _, s in rec.words]
        predicted = [p >= 0.5 for _, p in pred.words]
        row["word_errors"] = int(sum(a != b for a, b in zip(labelled, predicted)))
        row["word_f1"] = M.token_metrics([[p for _, p in pred.words]], [[s for _, s in rec.words]])["f1"]
    row["pred_misaligned_words"] = " ".join(pred.misaligned_words)
    return row


def analyse(rahf: RAHF, ds: Dataset, positions, batch_size: int = 64,
            progress: Callable[[int, int], None] | None = None, use_cache: bool = True) -> pd.DataFrame:
    """Per-record metrics for the records at `positions`, computing only those not cached yet.

    The cache is one parquet file per (checkpoint, dataset spec) under cache/predictions/."""
    positions = np.asarray(positions, dtype=np.int64)
    ids = ds.frame["id"].astype(str).to_numpy()[positions]
    path = cache_dir("predictions") / f"{cache_key(rahf.weights_key)}-{cache_key(ds.spec, ds.frame['id'].tolist()[:50], len(ds))}.parquet"
    cached = pd.read_parquet(path) if use_cache and path.exists() else pd.DataFrame({"id": pd.Series(dtype=str)})
    have = set(cached["id"].astype(str))
    todo = [int(p) for p, i in zip(positions, ids) if i not in have]
    rows = []
    for start in range(0, len(todo), batch_size):
        chunk = []
        for p in todo[start:start + batch_size]:
            try:
                rec = ds[p]
                if rec.image is not None and tokenize_prompt(rec.prompt or ""):  # predict refuses a wordless prompt
                    chunk.append(rec)
            except RHFError:  # an unreadable image or heatmap: left out of the analysis
                continue
        preds = rahf.predict([r.image for r in chunk], [r.prompt for r in chunk], batch_size=batch_size)
        rows += [{"id": r.id, "prompt": r.prompt, **record_metrics(p, r)} for p, r in zip(preds, chunk)]
        if progress is not None:
            progress(min(start + batch_size, len(todo)), len(todo))
    if rows:
        cached = pd.concat([cached, pd.DataFrame(rows)], ignore_index=True)
        if use_cache:
            write_parquet(cached, path)
    wanted = pd.DataFrame({"id": ids})
    return wanted.merge(cached, on="id", how="inner")


def heatmap_png(heatmap: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.clip(heatmap * 255 + 0.5, 0, 255).astype(np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def prediction_zip(items: list[tuple[str, str, Prediction]]) -> bytes:
    """(name, prompt, prediction) → a zip of `<name>.json` and `<name>.<heatmap>.png` files."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, prompt, pred in items:
            zf.writestr(f"{name}.json", json.dumps({"prompt": prompt, **pred.to_json()}, indent=2))
            for h, hm in pred.heatmaps.items():
                zf.writestr(f"{name}.{h}.png", heatmap_png(hm))
    return buf.getvalue()
