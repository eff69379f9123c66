"""Simulated annotators: ground truth → rich feedback, the way people produce it.

Each rater has a personal bias (shared over the four criteria) and per-answer noise on 1–5 Likert
scores; clicks points inside each defect they notice (with misses and occasional stray clicks);
and selects misaligned prompt words with some probability. Aggregation follows the real datasets:

- `richhf` style: 3 raters; scores are the mean rating mapped to [0, 1] by (s − 1) / 4; each click
  becomes a disk of radius 20/512 of the side; heatmaps average the raters' maps (RichHF-18K).
  RichHF raters dot an artifact with points rather than click it once, so a rater who notices a
  defect clicks about as many points as disks it takes to cover it (± 50%, 1 to 10).
- `rapidata` style: 15–25 raters; Gaussian clicks with σ = 5% of the side; heatmaps exist only for
  images whose mean rating on that criterion is low (Rapidata annotated areas only for those).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rhf_core.dataset import tokenize_prompt
from rhf_core.heatmaps import RICHHF_DISK_RADIUS_FRAC, annotators_to_heatmap
from rhf_core.shapes.render import Defect, Scene


FUNCTION_WORDS = {"a", "an", "the", "in", "on"}


@dataclass(frozen=True)
class RaterStyle:
    name: str
    raters: tuple[int, int]  # inclusive range of raters per image
    heatmap_kind: str  # "disk" (RichHF) or "gaussian" (Rapidata)
    max_clicks_per_defect: int
    bias_sd: float  # per-rater offset, Likert points
    noise_sd: float  # per-answer noise, Likert points
    notice_prob: float  # chance a rater notices (clicks) a given defect
    stray_click_prob: float  # chance of one click on nothing, per rater and heatmap
    word_prob: float  # chance a rater selects a misaligned word
    stray_word_prob: float  # chance per rater of selecting one aligned word
    # Rapidata collected area clicks only for low-scoring images; None = always collected.
    heatmap_below: float | None = None
    # > 0: clicks per noticed defect ≈ this × (defect area / click disk area), capped at
    # max_clicks_per_defect; 0: uniform between 1 and max_clicks_per_defect.
    clicks_per_disk: float = 0.0


STYLES = {
    "richhf": RaterStyle("richhf", (3, 3), "disk", 10, 0.35, 0.5, 0.85, 0.05, 0.8, 0.05, clicks_per_disk=1.0),
    "rapidata": RaterStyle("rapidata", (15, 25), "gaussian", 2, 0.45, 0.6, 0.7, 0.08, 0.7, 0.08, heatmap_below=0.8),
}


@dataclass
class Feedback:
    scores: dict[str, float]
    heatmaps: dict[str, np.ndarray]
    words: list[tuple[str, float]]
    meta: dict


def true_likert(scene: Scene, defects: list[Defect]) -> dict[str, float]:
    """The 1–5 value a perfectly attentive, unbiased rater would give on each criterion."""
    imp = sum(d.severity for d in defects if d.type == "implausibility")
    mis = sum(d.severity for d in defects if d.type == "misalignment")
    n_imp = sum(d.type == "implausibility" for d in defects)
    plaus = np.clip(5.0 - imp - 0.4 * min(scene.aesthetics.blur, 1.0), 1, 5)
    align = np.clip(5.0 - mis, 1, 5)
    aes = np.clip(1.0 + 4.0 * scene.aesthetics.quality - 0.35 * n_imp, 1, 5)
    overall = 0.35 * plaus + 0.35 * align + 0.3 * aes
    return {"plausibility": float(plaus), "alignment": float(align), "aesthetics": float(aes), "overall": float(overall)}


def _click(region_pixels: tuple[np.ndarray, np.ndarray], rng: np.random.Generator) -> tuple[float, float]:
    """A click on a uniformly chosen pixel of the region (pixels as from np.nonzero)."""
    ys, xs = region_pixels
    i = rng.integers(len(xs))
    return float(xs[i] + rng.uniform(0.1, 0.9)), float(ys[i] + rng.uniform(0.1, 0.9))


def _n_clicks(region_pixels: tuple[np.ndarray, np.ndarray], style: RaterStyle, side: int,
              rng: np.random.Generator) -> int:
    """How many points one rater clicks on a defect they noticed."""
    if style.clicks_per_disk <= 0:
        return int(rng.integers(1, style.max_clicks_per_defect + 1))
    disk_area = np.pi * (RICHHF_DISK_RADIUS_FRAC * side) ** 2
    n = style.clicks_per_disk * len(region_pixels[0]) / disk_area * rng.uniform(0.5, 1.5)
    return int(np.clip(round(n), 1, style.max_clicks_per_defect))


def annotate(
    scene: Scene, defects: list[Defect], prompt: str, style: RaterStyle, rng: np.random.Generator
) -> Feedback:
    size = (scene.size, scene.size)
    k = int(rng.integers(style.raters[0], style.raters[1] + 1))
    truth = true_likert(scene, defects)

    # 1. Likert ratings: truth + rater bias + noise, rounded and clipped to 1..5.
    bias = rng.normal(0, style.bias_sd, size=k)
    ratings = {
        name: np.clip(np.rint(value + bias + rng.normal(0, style.noise_sd, size=k)), 1, 5).astype(int)
        for name, value in truth.items()
    }
    means = {name: float(r.mean()) for name, r in ratings.items()}
    scores = {name: (m - 1.0) / 4.0 for name, m in means.items()}

    # 2. Clicks per heatmap type.
    heatmaps: dict[str, np.ndarray] = {}
    clicks_meta: dict[str, int] = {}
    for hm_name, defect_type, criterion in (
        ("implausibility", "implausibility", "plausibility"),
        ("misalignment", "misalignment", "alignment"),
    ):
        if style.heatmap_below is not None and scores[criterion] >= style.heatmap_below:
            continue  # not collected for this image
        regions = [np.nonzero(d.region) for d in defects if d.type == defect_type and d.region.any()]
        per_rater = []
        for _ in range(k):
            pts = []
            for region in regions:
                if rng.random() < style.notice_prob:
                    for _ in range(_n_clicks(region, style, scene.size, rng)):
                        pts.append(_click(region, rng))
            if rng.random() < style.stray_click_prob:
                pts.append(tuple(rng.uniform(0, scene.size, size=2)))
            per_rater.append(pts)
        heatmaps[hm_name] = annotators_to_heatmap(per_rater, size, kind=style.heatmap_kind)
        clicks_meta[hm_name] = sum(len(p) for p in per_rater)

    # 3. Misaligned words: the tokens the defects contradict, each selected with some probability.
    tokens = tokenize_prompt(prompt)
    bad = {w for d in defects if d.type == "misalignment" for w in d.words}
    counts = np.zeros(len(tokens), dtype=int)
    for _ in range(k):
        for i, tok in enumerate(tokens):
            if tok in bad and rng.random() < style.word_prob:
                counts[i] += 1
        if rng.random() < style.stray_word_prob:
            # People second-guess content words, not "a" or "the".
            good = [i for i, t in enumerate(tokens) if t not in bad and t not in FUNCTION_WORDS]
            if good:
                counts[good[rng.integers(len(good))]] += 1
    counts = np.minimum(counts, k)
    words = [(tok, float(c) / k) for tok, c in zip(tokens, counts)]

    meta = {
        "raters": k,
        "rater_style": style.name,
        "likert_true": {n: round(v, 3) for n, v in truth.items()},
        "likert_mean": {n: round(v, 4) for n, v in means.items()},
        "ratings": {n: r.tolist() for n, r in ratings.items()},
        "word_votes": counts.tolist(),
        "clicks": clicks_meta,
    }
    return Feedback(scores, heatmaps, words, meta)
