"""Inpainting repair (RichHF sec. 5.3): heatmap → threshold → dilate → mask (white = repaint) →
inpaint n candidates inside the mask → keep the one RAHF predicts most plausible.

    from rhf_core.repair import repair
    result = repair(image, prompt, threshold=0.5, dilation=4, n=4, seed=0,
                    heatmap="implausibility", predictor=load_rahf(), generator=load_generator())
    result.mask, result.candidates, result.best

The heatmap comes from the predictor, from a labelled record's ground truth (`heatmap_array=`), or
the caller gives the mask itself (`mask=`). Every candidate equals the original outside the mask."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image

from rhf_core.errors import InvalidArgumentError
from rhf_core.heatmaps import heatmap_to_mask, mask_to_image, resize_heatmap
from rhf_core.images import load_image
from rhf_core.judge import judge
from rhf_core.rahf import load_rahf
from rhf_core.rahf.common import check_prompt_words
from rhf_core.shapes.dataset import generate_sample
from rhf_core.shapes.grammar import parse_prompt
from rhf_core.t2i import load_generator
from rhf_core.t2i.evaluate import evaluation_prompts
from rhf_core.t2i.generator import MAX_IMAGES_PER_CALL, GeneratorError, check_sampling, mask_array, whole_number

HEATMAP_TYPES = ("implausibility", "misalignment")
# How candidates are ranked (best first). RichHF kept the most plausible; an inpainter that paints
# background over the object is "plausible" too, so the second ranking also asks RAHF for alignment.
RANKINGS = {
    "plausibility": lambda c: c.plausibility,
    "plausibility+alignment": lambda c: c.plausibility + float(c.scores["alignment"]),
}


class RepairError(InvalidArgumentError):
    """A repair request that cannot be served (bad threshold, mask of the wrong size, ...)."""


_UNJUDGED = object()


@dataclass
class Candidate:
    image: Image.Image
    scores: dict[str, float]
    heatmaps: dict[str, np.ndarray]
    index: int  # sample index j (with the seed, reproduces this candidate)
    prompt: str = ""
    _judge: object = field(default=_UNJUDGED, repr=False)

    @property
    def plausibility(self) -> float:
        return float(self.scores["plausibility"])

    @property
    def judge(self):
        """The judge's verdict for a ShapesWorld prompt, else None; computed on first use (about a
        quarter of a second an image), so a page previewing a plan on every slider move never pays it."""
        if self._judge is _UNJUDGED:
            self._judge = judge_if_shapes(self.image, self.prompt)
        return self._judge


@dataclass
class RepairResult:
    image: Image.Image
    prompt: str
    heatmap: np.ndarray | None  # the map the mask was cut from (None for a user mask)
    heatmap_source: str  # "predicted", "ground truth" or "user mask"
    mask: np.ndarray  # bool H×W at the image's size, True = repaint
    before: Candidate  # the original, scored the same way as the candidates
    candidates: list[Candidate] = field(default_factory=list)  # best first
    message: str = ""

    @property
    def empty(self) -> bool:
        return not self.mask.any()

    @property
    def best(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None

    @property
    def mask_image(self) -> Image.Image:
        return mask_to_image(self.mask)

    @property
    def mask_share(self) -> float:
        return float(self.mask.mean())


def judge_if_shapes(image: Image.Image, prompt: str):
    """The judge's verdict when the prompt is a ShapesWorld prompt, else None."""
    spec = parse_prompt(prompt)
    return judge(image, spec) if spec is not None else None


def repair_mask(image_size: tuple[int, int], *, heatmap_array: np.ndarray | None = None, mask=None,
                threshold: float = 0.5, threshold_mode: str = "absolute", dilation: int = 4) -> np.ndarray:
    """The repaint mask at `image_size` = (w, h): a user mask as given, else the heatmap cut and dilated."""
    if mask is not None:
        try:
            return mask_array(mask, image_size)
        except GeneratorError as err:
            raise RepairError(str(err)) from err
    if heatmap_array is None:
        raise RepairError("no heatmap and no mask to repair from")
    try:
        return heatmap_to_mask(heatmap_array, threshold, threshold_mode, dilation, size=image_size)
    except InvalidArgumentError as err:
        raise RepairError(str(err)) from err


def _check_heatmap_array(heatmap_array) -> np.ndarray:
    """A ground-truth heatmap: 2-D, finite, in [0, 1]. Refused otherwise rather than clipped (a 0–255
    map would become solid, a NaN map empty)."""
    try:
        arr = np.asarray(heatmap_array, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise RepairError(f"heatmap_array must be a 2-D array of numbers ({e})") from None
    if arr.ndim != 2 or arr.size == 0:
        raise RepairError(f"heatmap_array must be a non-empty 2-D (H×W) array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise RepairError(f"heatmap_array has {int((~np.isfinite(arr)).sum())} NaN or infinite values")
    if arr.min() < 0 or arr.max() > 1:
        raise RepairError(f"heatmap_array values must be in [0, 1], got {arr.min():g} to {arr.max():g}")
    return arr


@dataclass
class RepairPlan:
    """Stage 1 of repair: the image decoded, predicted once, and the mask cut. A page previews it
    (heatmap, mask, share) and hands it unchanged to `run_repair`."""

    image: Image.Image
    prompt: str
    heatmap_type: str  # which predicted map the candidates are compared on
    heatmap: np.ndarray | None  # the map the mask was cut from, at the image's size (None for a user mask)
    heatmap_source: str  # "predicted", "ground truth" or "user mask"
    mask: np.ndarray  # bool H×W at the image's size, True = repaint
    before: Candidate  # the original, scored the same way as the candidates will be
    predictor: object = field(repr=False, default=None)

    @property
    def empty(self) -> bool:
        return not self.mask.any()

    @property
    def mask_share(self) -> float:
        return float(self.mask.mean())

    @property
    def message(self) -> str:
        if not self.empty:
            return ""
        peak = float(self.heatmap.max()) if self.heatmap is not None else 0.0
        return (f"the mask is empty: no pixel of the {self.heatmap_source} {self.heatmap_type} heatmap reaches the "
                f"threshold (its peak is {peak:.2f}); lower the threshold or use relative mode. Nothing was inpainted.")


def plan_repair(image, prompt: str, *, predictor=None, heatmap: str = "implausibility", threshold: float = 0.5,
                threshold_mode: str = "absolute", dilation: int = 4, heatmap_array: np.ndarray | None = None,
                mask=None) -> RepairPlan:
    """Check the arguments, decode the image, predict it once and cut the mask: from the predicted
    `heatmap`, from a labelled record's ground truth (`heatmap_array`) or as given (`mask`); the
    threshold is absolute or relative to the map's peak, the dilation in pixels of the image."""
    if heatmap not in HEATMAP_TYPES:
        raise RepairError(f"unknown heatmap type {heatmap!r}; use one of {', '.join(HEATMAP_TYPES)}")
    if not isinstance(prompt, str):
        raise RepairError(f"the prompt must be text, got {type(prompt).__name__}")
    if not prompt.strip():
        raise RepairError("empty prompt: the inpainting model and RAHF both need the image's prompt")
    try:
        check_prompt_words([prompt])
    except InvalidArgumentError as err:
        raise RepairError(str(err)) from None
    if not isinstance(threshold, (int, float, np.number)) or not 0.0 <= threshold <= 1.0:
        raise RepairError(f"threshold must be in [0, 1], got {threshold!r}")
    if threshold_mode not in ("absolute", "relative"):
        raise RepairError(f"unknown threshold mode {threshold_mode!r}; use 'absolute' or 'relative'")
    dilation = whole_number("dilation", dilation, 0, None, RepairError)
    if heatmap_array is not None and mask is None:
        heatmap_array = _check_heatmap_array(heatmap_array)
    # One entry for images: 16-bit, alpha, EXIF and lazily opened files are handled; a PIL image keeps its size.
    img = load_image(image, max_side=None) if isinstance(image, Image.Image) else load_image(image)
    user_mask = repair_mask(img.size, mask=mask) if mask is not None else None
    if predictor is None:
        predictor = load_rahf()
    pred = predictor.predict([img], [prompt])[0]
    before = Candidate(img, pred.scores, pred.heatmaps, -1, prompt)
    if user_mask is not None:
        return RepairPlan(img, prompt, heatmap, None, "user mask", user_mask, before, predictor)
    if heatmap_array is not None:
        source, used = "ground truth", resize_heatmap(heatmap_array, img.size)
    else:
        source, used = "predicted", pred.heatmaps[heatmap]
    m = repair_mask(img.size, heatmap_array=used, threshold=threshold, threshold_mode=threshold_mode, dilation=dilation)
    return RepairPlan(img, prompt, heatmap, used, source, m, before, predictor)


def rank_candidates(candidates: list[Candidate], rank: str = "plausibility") -> list[Candidate]:
    """`candidates` best first by `rank` (a new list; the same candidates re-ranked without re-running)."""
    if rank not in RANKINGS:
        raise RepairError(f"unknown ranking {rank!r}; use one of {', '.join(RANKINGS)}")
    return sorted(candidates, key=RANKINGS[rank], reverse=True)


def run_repair(plan: RepairPlan, *, generator=None, n: int = 4, seed: int = 0, steps: int = 25,
               guidance: float = 7.5, strength: float = 1.0, rank: str = "plausibility",
               progress: Callable[[str, float], None] | None = None) -> RepairResult:
    """Stages 2 and 3: inpaint n candidates inside the plan's mask, score them with the plan's predictor,
    rank them. An empty mask is reported (`result.message`) and nothing is inpainted."""
    seed, steps, guidance, strength = check_sampling(seed, steps, guidance, strength, error=RepairError)
    n = whole_number("n (candidates)", n, 1, MAX_IMAGES_PER_CALL, RepairError)
    if rank not in RANKINGS:
        raise RepairError(f"unknown ranking {rank!r}; use one of {', '.join(RANKINGS)}")
    result = RepairResult(plan.image, plan.prompt, plan.heatmap, plan.heatmap_source, plan.mask, plan.before)
    if plan.empty:
        result.message = plan.message
        return result
    report = progress or (lambda stage, frac: None)
    if generator is None:
        generator = load_generator()
    images = generator.inpaint(plan.image, plan.mask, plan.prompt, n=n, seed=seed, steps=steps, guidance=guidance,
                               strength=strength, progress=lambda d, t: report("inpainting", d / t))
    report("scoring", 1.0)
    preds = plan.predictor.predict(images, [plan.prompt] * len(images))
    cands = [Candidate(im, p.scores, p.heatmaps, j, plan.prompt) for j, (im, p) in enumerate(zip(images, preds))]
    result.candidates = rank_candidates(cands, rank)
    return result


def repair(image, prompt: str, threshold: float = 0.5, dilation: int = 4, n: int = 4, seed: int = 0,
           heatmap: str = "implausibility", predictor=None, generator=None, threshold_mode: str = "absolute",
           heatmap_array: np.ndarray | None = None, mask=None, steps: int = 25, guidance: float = 7.5,
           rank: str = "plausibility", strength: float = 1.0,
           progress: Callable[[str, float], None] | None = None) -> RepairResult:
    """The whole loop in one call: `plan_repair` then `run_repair` (see their docstrings).
    `rank`: "plausibility" (RichHF) or "plausibility+alignment" (sum of RAHF's two predicted scores).
    `strength`: how much of the diffusion the masked area goes through: 1.0 repaints it from noise,
    lower values start from the noised original and keep its layout (the object stays, reshaped)."""
    # Every argument is checked before any work (decoding, predicting, inpainting).
    check_sampling(seed, steps, guidance, strength, error=RepairError)
    whole_number("n (candidates)", n, 1, MAX_IMAGES_PER_CALL, RepairError)
    if rank not in RANKINGS:
        raise RepairError(f"unknown ranking {rank!r}; use one of {', '.join(RANKINGS)}")
    report = progress or (lambda stage, frac: None)
    report("predicting", 0.0)
    plan = plan_repair(image, prompt, predictor=predictor, heatmap=heatmap, threshold=threshold,
                       threshold_mode=threshold_mode, dilation=dilation, heatmap_array=heatmap_array, mask=mask)
    return run_repair(plan, generator=generator, n=n, seed=seed, steps=steps, guidance=guidance, strength=strength,
                      rank=rank, progress=progress)


# --- how much repair helps, on a fixed held-out set ------------------------------------------

def _implausible_images(kind: str, n: int, seed: int, generator) -> list[tuple[str, Image.Image, str, np.ndarray | None]]:
    """(id, image, prompt, ground-truth implausibility or None) for n images the judge finds implausible."""
    out = []
    if kind == "shapes":
        i = 0
        while len(out) < n and i < 50 * n:
            s = generate_sample(i, seed=seed)
            i += 1
            if not s.region("implausibility").any():
                continue
            img = s.image()
            if judge(img, s.spec).implausible:
                out.append((f"shapes-{seed}-{i - 1}", img, s.prompt, s.region("implausibility").astype(np.float32)))
    else:
        specs = evaluation_prompts(per_category=12, seed=seed)
        images = generator.generate([s.text for s in specs], n=4, seed=seed)
        for spec, imgs in zip(specs, images):
            for j, img in enumerate(imgs):
                if len(out) < n and judge(img, spec).implausible:
                    out.append((f"gen-{seed}-{spec.text}-{j}", img, spec.text, None))
    return out


def evaluate_repair(n: int = 40, seed: int = 7, threshold: float = 0.5, threshold_mode: str = "relative",
                    dilation: int = 3, candidates: int = 4, steps: int = 25, strength: float = 1.0, predictor=None,
                    generator=None) -> dict:
    """Share of judge-implausible images whose judge implausibility falls after repair, the mean change
    in predicted plausibility, and the alignment kept, on planted-defect renders and generator samples."""
    import time

    predictor = predictor or load_rahf()
    generator = generator or load_generator()
    out: dict = {"settings": {"n": n, "seed": seed, "threshold": threshold, "threshold_mode": threshold_mode,
                              "dilation": dilation, "candidates": candidates, "steps": steps, "strength": strength,
                              "predictor": str(getattr(predictor, "path", "")), "generator": generator.name}}
    t0 = time.time()
    for kind in ("shapes", "generated"):
        items = _implausible_images(kind, n, seed, generator)
        for source in (("predicted", "ground truth") if kind == "shapes" else ("predicted",)):
            rows: dict[str, list[dict]] = {}
            for _, img, prompt, gt in items:
                r = repair(img, prompt, threshold=threshold, threshold_mode=threshold_mode, dilation=dilation,
                           n=candidates, seed=seed, steps=steps, strength=strength, predictor=predictor,
                           generator=generator,
                           heatmap_array=gt if source == "ground truth" else None)
                b = r.before
                for name, key in RANKINGS.items():
                    a = max(r.candidates, key=key) if r.candidates else b
                    area_b, area_a = float(b.judge.implausibility.mean()), float(a.judge.implausibility.mean())
                    rows.setdefault(name, []).append({
                        "empty_mask": r.empty, "mask_share": r.mask_share, "area_before": area_b,
                        "area_after": area_a, "fell": area_a < area_b, "fixed": area_a == 0.0,
                        "aligned_before": b.judge.aligned, "aligned_after": a.judge.aligned,
                        "plaus_before": b.plausibility, "plaus_after": a.plausibility,
                        "align_before": float(b.scores["alignment"]), "align_after": float(a.scores["alignment"])})
            blocks = {name: _repair_summary(rs) for name, rs in rows.items()}
            main = blocks.pop("plausibility")
            for name, block in blocks.items():  # the same candidates, another ranking
                main[f"ranked by {name}"] = {k: v for k, v in block.items()
                                             if k not in ("images", "empty_masks", "mean_mask_share")}
            out[f"{kind} / {source} heatmap"] = main
    out["settings"]["seconds"] = round(time.time() - t0, 1)
    return out


def _repair_summary(rows: list[dict]) -> dict:
    mean = lambda key: round(float(np.mean([r[key] for r in rows])), 4) if rows else float("nan")  # noqa: E731
    change = lambda a, b: round(float(np.mean([r[a] - r[b] for r in rows])), 4) if rows else float("nan")  # noqa: E731
    return {
        "images": len(rows),
        "empty_masks": int(sum(r["empty_mask"] for r in rows)),
        "mean_mask_share": mean("mask_share"),
        "share_judge_implausibility_fell": mean("fell"),
        "share_judge_implausibility_gone": mean("fixed"),
        "mean_judge_implausible_area_before": mean("area_before"),
        "mean_judge_implausible_area_after": mean("area_after"),
        "aligned_before": mean("aligned_before"),
        "aligned_after": mean("aligned_after"),
        "mean_predicted_plausibility_before": mean("plaus_before"),
        "mean_predicted_plausibility_after": mean("plaus_after"),
        "mean_predicted_plausibility_change": change("plaus_after", "plaus_before"),
        "mean_predicted_alignment_change": change("align_after", "align_before"),
    }
