"""Evaluation metrics of the RichHF paper (Liang et al. 2024, sec. 5.1).

Scores: PLCC (Pearson) and SRCC (Spearman). Heatmaps: MSE over all samples and over samples whose
ground truth is empty; CC, KLD, SIM, NSS and AUC-Judd over samples with non-empty ground truth,
with the MIT saliency benchmark's definitions (Bylinskii et al. 2018). For NSS and AUC-Judd, the
"fixations" are the pixels where the ground-truth heatmap is non-zero. Keywords: precision, recall
and F1 of the misaligned class, pooled over all tokens.

A metric that is undefined on its input (a constant series, no flagged word on either side) is NaN,
never 0, and the aggregations here skip NaN values (`np.nanmean`), so "undefined" does not read as
"as bad as it gets".
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from rhf_core.errors import InvalidArgumentError

EPS = np.finfo(np.float64).eps


def _pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
    try:
        pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"scores must be numbers ({e})") from None
    if pred.ndim != 1 or pred.shape != target.shape:
        raise InvalidArgumentError(f"need two 1-D series of the same length, got shapes {pred.shape} and {target.shape}")
    return pred, target


def _maps(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.shape != gt.shape:
        raise InvalidArgumentError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    return pred, gt


def plcc(pred, target) -> float:
    pred, target = _pair(pred, target)
    if len(pred) < 2 or pred.std() == 0 or target.std() == 0:
        return float("nan")
    return float(stats.pearsonr(pred, target).statistic)


def srcc(pred, target) -> float:
    pred, target = _pair(pred, target)
    if len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(target) == 0:
        return float("nan")
    return float(stats.spearmanr(pred, target).statistic)


# --- saliency metrics on one map pair -------------------------------------------------------

def cc(pred: np.ndarray, gt: np.ndarray) -> float:
    """Pearson correlation between the two maps' pixels."""
    p, g = (a.ravel() for a in _maps(pred, gt))
    if p.std() == 0 or g.std() == 0:
        return 0.0
    return float(np.corrcoef(p, g)[0, 1])


def kld(pred: np.ndarray, gt: np.ndarray) -> float:
    """KL divergence of the prediction from the ground truth, both normalised to sum 1."""
    pred, gt = _maps(pred, gt)
    p = pred.astype(np.float64) / (pred.sum() + EPS)
    g = gt.astype(np.float64) / (gt.sum() + EPS)
    return float(np.sum(g * np.log(EPS + g / (p + EPS))))


def sim(pred: np.ndarray, gt: np.ndarray) -> float:
    """Histogram intersection of the two maps normalised to sum 1."""
    pred, gt = _maps(pred, gt)
    p = pred.astype(np.float64) / (pred.sum() + EPS)
    g = gt.astype(np.float64) / (gt.sum() + EPS)
    return float(np.minimum(p, g).sum())


def nss(pred: np.ndarray, fixations: np.ndarray) -> float:
    """Mean of the standardised prediction at the fixated pixels."""
    p, fixations = _maps(pred, fixations)
    sd = p.std()
    if sd == 0 or not fixations.any():
        return 0.0
    return float(((p - p.mean()) / sd)[fixations.astype(bool)].mean())


def auc_judd(pred: np.ndarray, fixations: np.ndarray) -> float:
    """AUC-Judd: thresholds at the prediction's values on fixations; true positives are fixations
    above the threshold, false positives the other pixels above it (Judd et al. 2009)."""
    p, fixations = _maps(pred, fixations)
    p = p.ravel()
    # As the MIT benchmark does, a tiny fixed jitter breaks ties, so a flat map scores 0.5.
    p = p + np.random.default_rng(0).random(p.size) * 1e-7
    fix = fixations.astype(bool).ravel()
    n_fix, n_pix = int(fix.sum()), p.size
    if n_fix == 0 or n_fix == n_pix:
        return float("nan")
    thresholds = np.sort(p[fix])[::-1]
    sorted_all = np.sort(p)[::-1]
    tp = np.arange(1, n_fix + 1) / n_fix
    above = np.searchsorted(-sorted_all, -thresholds, side="right")  # pixels ≥ each threshold
    fp = (above - np.arange(1, n_fix + 1)) / (n_pix - n_fix)
    tp = np.concatenate([[0.0], tp, [1.0]])
    fp = np.concatenate([[0.0], fp, [1.0]])
    return float(np.trapezoid(tp, fp))


def heatmap_metrics(preds: list[np.ndarray], gts: list[np.ndarray]) -> dict[str, float]:
    """The paper's heatmap table row for one heatmap type over a set of samples."""
    if len(preds) != len(gts):
        raise InvalidArgumentError(f"{len(preds)} predictions for {len(gts)} ground-truth maps")
    mse_all, mse_empty = [], []
    rows = {"cc": [], "kld": [], "sim": [], "nss": [], "auc_judd": []}
    for p, g in zip(preds, gts):
        p, g = _maps(p, g)
        err = float(np.mean((p.astype(np.float64) - g) ** 2))
        mse_all.append(err)
        if not g.any():
            mse_empty.append(err)
            continue
        fix = g > 0
        rows["cc"].append(cc(p, g))
        rows["kld"].append(kld(p, g))
        rows["sim"].append(sim(p, g))
        rows["nss"].append(nss(p, fix))
        auc = auc_judd(p, fix)
        if not np.isnan(auc):
            rows["auc_judd"].append(auc)
    out = {
        "mse_all": _nanmean(mse_all),
        "mse_empty_gt": _nanmean(mse_empty),
    }
    # A sample whose metric is undefined (NaN, e.g. a NaN pixel) is skipped, not averaged in.
    out.update({k: _nanmean(v) for k, v in rows.items()})
    out["n_samples"] = len(gts)
    out["n_nonempty"] = len(rows["cc"])
    return out


def _nanmean(values) -> float:
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def token_metrics(pred_probs: list[list[float]], gt_strengths: list[list[float]], threshold: float = 0.5) -> dict:
    """Precision, recall and F1 of 'misaligned' over all tokens pooled (RichHF sec. 5.1).

    Each is NaN where it is undefined: precision when no word is predicted misaligned, recall when
    none is labelled so, F1 when neither side flags any word (2·tp + fp + fn = 0). F1 is 0 only when
    one side flags words and the other gets none of them. A token whose probability or label is NaN is
    unknown and left out."""
    if not isinstance(threshold, (int, float, np.number)) or not 0.0 <= threshold <= 1.0:
        raise InvalidArgumentError(f"threshold must be in [0, 1], got {threshold!r}")
    if len(pred_probs) != len(gt_strengths):
        raise InvalidArgumentError(f"{len(pred_probs)} predicted prompts for {len(gt_strengths)} labelled ones")
    tp = fp = fn = 0
    for p, g in zip(pred_probs, gt_strengths):
        if len(p) != len(g):
            raise InvalidArgumentError(f"{len(p)} token predictions for {len(g)} labels")
        try:
            p, g = np.asarray(p, np.float64).reshape(-1), np.asarray(g, np.float64).reshape(-1)
        except (TypeError, ValueError) as e:
            raise InvalidArgumentError(f"token probabilities and labels must be numbers ({e})") from None
        known = ~(np.isnan(p) | np.isnan(g))
        p, g = p[known] >= threshold, g[known] >= threshold
        tp += int((p & g).sum())
        fp += int((p & ~g).sum())
        fn += int((~p & g).sum())
    nan = float("nan")
    precision = tp / (tp + fp) if tp + fp else nan
    recall = tp / (tp + fn) if tp + fn else nan
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else nan
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def rater_noise_ceiling(ratings: list[list[float]]) -> dict[str, float]:
    """Agreement of one rater with the mean of the others (leave-one-out), averaged over raters.

    `ratings[i]` are the raters' scores of image i (same number of raters per image)."""
    arr = np.asarray(ratings, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise InvalidArgumentError("need at least two ratings per image")
    k = arr.shape[1]
    s, p = [], []
    for j in range(k):
        others = np.delete(arr, j, axis=1).mean(axis=1)
        s.append(srcc(arr[:, j], others))
        p.append(plcc(arr[:, j], others))
    return {"srcc": float(np.nanmean(s)), "plcc": float(np.nanmean(p))}
