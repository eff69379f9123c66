"""Rejection sampling against reward-weighted fine-tuning, on the same prompts and seeds (Lee et al.).

Four arms, k images per prompt each, and a fifth when a guidance reward is given:
    original random     samples 0..k-1 of the original model
    original best-k     the k of n original samples with the highest reward (rejection sampling)
    fine-tuned random   samples 0..k-1 of the fine-tuned model (the same seeds)
    fine-tuned best-k   rejection sampling on the fine-tuned model
    guided by R @ s     samples 0..k-1 of the original model steered at sampling time by reward R's
                        gradient at scale s (the same starting noise as original random)
Measured per arm: mean reward (the one best-k selects by, by default the adapter's training reward) and
held-out rewards it was not selected or trained with (RAHF plausibility and alignment by default), each
with a paired-bootstrap gain; diversity (mean pairwise cosine distance of image embeddings within a
prompt); win rate against original random; and, only where a judge exists (a ShapesWorld generator and
prompts), the judge's alignment rate, overall and per category, and its implausible share."""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from rhf_core.cache import atomic_savez, cache_dir, cache_key, weights_fingerprint
from rhf_core.judge import JUDGE_VERSION, judge
from rhf_core.reward.encoders import load_encoders
from rhf_core.reward.model import RewardError
from rhf_core.reward.rewards import get_reward, get_rewards, held_out_specs, score_all
from rhf_core.reward.sampling import top_k
from rhf_core.shapes.grammar import parse_prompt

ARMS = ("original random", "original best-k", "fine-tuned random", "fine-tuned best-k")


@dataclass
class Comparison:
    prompts: list[str]
    n: int
    k: int
    reward_name: str
    images: dict[str, np.ndarray]  # "original"/"fine-tuned": P×n×H×W×3 uint8
    rewards: dict[str, np.ndarray]  # P×n
    aligned: dict[str, np.ndarray]  # P×n float (NaN where no judge reads the prompt)
    implausible: dict[str, np.ndarray]  # P×n float (NaN likewise)
    held_out: dict[str, dict[str, np.ndarray]]  # held-out reward spec → model → P×n
    embeddings: dict[str, np.ndarray]  # P×n×D image embeddings
    settings: dict

    @property
    def guided_arm(self) -> str | None:
        """The reward-guided arm's name (its reward and scale), or None when there is none."""
        if "guided" not in self.images:
            return None
        return guided_arm_name(self.settings["guide"], self.settings["guide_scale"])

    @property
    def arms(self) -> tuple[str, ...]:
        return ARMS + ((self.guided_arm,) if self.guided_arm else ())

    @property
    def judged(self) -> bool:
        """Whether the judge read any prompt: its measures are reported only then."""
        return bool(not np.isnan(self.aligned["original"]).all())

    def picks(self, arm: str) -> tuple[str, np.ndarray]:
        """(model, P×k sample indices) of an arm."""
        if arm == self.guided_arm:
            return "guided", np.tile(np.arange(self.k), (len(self.prompts), 1))
        if arm not in ARMS:
            raise KeyError(f"no arm {arm!r} in this comparison: {list(self.arms)}")
        model = "original" if arm.startswith("original") else "fine-tuned"
        if arm.endswith("random"):
            return model, np.tile(np.arange(self.k), (len(self.prompts), 1))
        return model, np.stack([top_k(r, self.k) for r in self.rewards[model]])

    def arm_values(self, arm: str, what: dict[str, np.ndarray]) -> np.ndarray:
        model, idx = self.picks(arm)
        return np.take_along_axis(what[model], idx, axis=1)

    def arm_images(self, arm: str, p: int) -> list[tuple[Image.Image, float]]:
        model, idx = self.picks(arm)
        return [(Image.fromarray(self.images[model][p, j]), float(self.rewards[model][p, j])) for j in idx[p]]


def guided_arm_name(spec: str, scale: float) -> str:
    return f"guided by {spec} @ {float(scale):g}"


def diversity(emb: np.ndarray) -> float:
    """Mean pairwise cosine distance of a prompt's k image embeddings (rows L2-normalised)."""
    pairs = list(combinations(range(len(emb)), 2))
    return float(np.mean([1.0 - float(emb[a] @ emb[b]) for a, b in pairs])) if pairs else 0.0


def paired_bootstrap(diff, resamples: int = 4000, seed: int = 0) -> dict | None:
    """Mean of per-prompt paired differences with its 95% percentile-bootstrap interval, prompts
    resampled with replacement (prompts the judge cannot read, NaN, left out; None when none is left).
    A difference counts only when the interval excludes 0: 24 prompts × 16 samples leave a standard
    error of about 0.03 on an alignment rate."""
    d = np.asarray(diff, dtype=float)
    d = d[~np.isnan(d)]
    if d.size == 0:
        return None
    means = d[np.random.default_rng(seed).integers(d.size, size=(resamples, d.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"difference": round(float(d.mean()), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)], "prompts": int(d.size)}


# Each arm's alignment gain is measured against the arm it should beat, prompt by prompt; a random k is
# compared through its model's rate over all n samples (its expectation, n / k times less noisy).
GAIN_AGAINST = {"original best-k": "original, all n", "fine-tuned random": "original, all n",
                "fine-tuned best-k": "original best-k"}


def _gains(c: Comparison, values: dict[str, np.ndarray]) -> dict[str, dict | None]:
    """Each arm's paired-bootstrap gain in `values` (model → P×n) over the arm GAIN_AGAINST names."""
    per = {"original, all n": values["original"].mean(1)}
    for arm in c.arms:
        per[arm] = c.arm_values(arm, values).mean(1)
    # A random k is measured by its model's rate over all n samples (the same expectation, less noise).
    all_n = {"fine-tuned random": values["fine-tuned"].mean(1)}
    against = dict(GAIN_AGAINST)
    if c.guided_arm:
        all_n[c.guided_arm] = values["guided"].mean(1)
        against[c.guided_arm] = "original, all n"
    out = {}
    for arm, base in against.items():
        gain = paired_bootstrap(all_n.get(arm, per[arm]) - per[base])
        out[arm] = gain and {"against": base, **gain}
    return out


def summarize(c: Comparison) -> dict:
    """Per arm: rewards (selection and held-out) with their gains, diversity, win rate; the judge's
    measures only when it read some prompt (no judge, no judge keys: nothing to misread as 0)."""
    cats = [getattr(parse_prompt(p), "category", None) for p in c.prompts]
    base = c.arm_values("original random", c.aligned).mean(1)
    base_r = c.arm_values("original random", c.rewards).mean(1)
    reward_gain = _gains(c, c.rewards)
    held_gain = {spec: _gains(c, v) for spec, v in c.held_out.items()}
    out = {}
    for arm in c.arms:
        al = c.arm_values(arm, c.aligned)
        rew = c.arm_values(arm, c.rewards)
        model, idx = c.picks(arm)
        emb = np.take_along_axis(c.embeddings[model], idx[..., None], axis=1)
        per_prompt_al = al.mean(1)
        divs = [diversity(e) for e in emb]
        judged = ~np.isnan(per_prompt_al)
        # Win rate against original random: judge alignment where the judge reads the prompt, else reward.
        mine = np.where(judged, per_prompt_al, rew.mean(1))
        theirs = np.where(judged, base, base_r)
        held = {spec: c.arm_values(arm, v) for spec, v in c.held_out.items()}
        res = {
            "mean_reward": round(float(rew.mean()), 4),
            "reward_gain": reward_gain.get(arm),
            "held_out": {spec: {"mean": round(float(v.mean()), 4), "gain": held_gain[spec].get(arm)}
                         for spec, v in held.items()},
            "diversity": round(float(np.mean(divs)), 4),
            "win": round(float(np.mean(mine > theirs)), 4), "tie": round(float(np.mean(mine == theirs)), 4),
            "loss": round(float(np.mean(mine < theirs)), 4),
            # per prompt, for paired comparisons between arms and between adapters (NaN → None in JSON)
            "per_prompt": {"reward": _listed(rew.mean(1)), "diversity": _listed(divs),
                           "held_out": {spec: _listed(v.mean(1)) for spec, v in held.items()}},
        }
        if c.judged:
            res["alignment_rate"] = round(float(np.nanmean(al)), 4) if judged.any() else None
            res["alignment_by_category"] = {cat: round(float(np.nanmean(al[[x == cat for x in cats]])), 4)
                                            for cat in sorted({x for x in cats if x})}
            res["judge_implausible_share"] = round(float(np.nanmean(c.arm_values(arm, c.implausible))), 4)
            res["per_prompt"]["alignment"] = _listed(per_prompt_al)
            res["per_prompt"]["implausible"] = _listed(c.arm_values(arm, c.implausible).mean(1))
            if arm.endswith("random") or arm == c.guided_arm:
                # A random k's expected alignment is the model's rate over all n samples: n / k times the
                # images behind the same number, so model-vs-model differences stand out of the noise.
                res["alignment_rate_all_n"] = round(float(np.nanmean(c.aligned[model])), 4)
                res["judge_implausible_share_all_n"] = round(float(np.nanmean(c.implausible[model])), 4)
                res["per_prompt"]["alignment_all_n"] = _listed(c.aligned[model].mean(1))
                res["per_prompt"]["implausible_all_n"] = _listed(c.implausible[model].mean(1))
        out[arm] = res
    if c.judged:
        for arm, gain in _gains(c, c.aligned).items():
            out[arm]["alignment_gain"] = gain
    return out


def _listed(values) -> list:
    return [None if np.isnan(v) else round(float(v), 4) for v in np.asarray(values, dtype=float)]


def _weights(reward) -> list:
    """What identifies a reward's scores for a cache key: its weights' files, or its kind when weightless."""
    path = getattr(reward, "path", None)
    return weights_fingerprint(path) if path else [type(reward).__name__, getattr(reward, "__name__", "")]


def _key(generator, adapter: str, prompts, n, reward_name, seed, steps, guidance, reward, held_out: dict,
         use_judge: bool, encoders) -> str:
    # Every reward scores every image, and the encoders embed them for diversity: new weights of any of them
    # must not be served stale numbers.
    return cache_key("compare", generator.fingerprint(), weights_fingerprint(adapter), list(prompts), n, reward_name,
                     seed, steps, guidance, JUDGE_VERSION if use_judge else "no judge", _weights(reward),
                     {spec: _weights(r) for spec, r in held_out.items()},
                     getattr(encoders, "name", None) or "embedded encoders")


def generate_cached(generator, adapter: str | None, prompts: list[str], n: int, seed: int, steps: int,
                    guidance: float, progress: Callable[[int, int], None] | None = None,
                    guide: tuple | None = None) -> list[list[Image.Image]]:
    """`n` images per prompt from the generator, with the adapter loaded or (None) without; cached on disk
    by weights and settings, so new scoring models (a retrained RAHF or reward) re-score, not re-generate,
    and every adapter's comparison shares the original model's images. `guide` = (spec, reward, scale):
    reward-guided sampling of the original model (the reward's weights are part of the cache key)."""
    guide_key = [guide[0], _weights(guide[1]), float(guide[2])] if guide else None
    key = cache_key("generations", generator.fingerprint(), weights_fingerprint(adapter) if adapter else "original",
                    list(prompts), n, seed, steps, guidance, *([guide_key] if guide else []))
    path = cache_dir("generations") / f"{key}.npz"
    if path.is_file():
        images = np.load(path, allow_pickle=False)["images"]
        return [[Image.fromarray(im) for im in row] for row in images]
    try:
        if adapter:
            generator.load_lora(adapter)
        else:
            generator.unload_lora()
        extra = {"reward_guidance": guide[1], "reward_scale": float(guide[2])} if guide else {}
        imgs = generator.generate(prompts, n=n, seed=seed, steps=steps, guidance=guidance, progress=progress, **extra)
    finally:
        generator.unload_lora()
    atomic_savez(path, images=np.stack([[np.asarray(im.convert("RGB")) for im in row] for row in imgs]))
    return imgs


def run_comparison(generator, adapter: str, prompts: list[str], n: int = 16, k: int = 4, reward_name: str = "lee",
                   reward: Callable | None = None, predictor=None, encoders=None, seed: int = 0, steps: int = 25,
                   guidance: float = 7.5, progress: Callable[[str, float], None] | None = None,
                   held_out: list[str] | str | None = None, held_out_rewards: dict | None = None,
                   use_judge: bool | None = None, guide: str = "", guide_reward=None,
                   guide_scale: float = 0.0) -> Comparison:
    """Generate with the original model and with the adapter, score with the selection reward and the
    held-out ones, judge (ShapesWorld only) and embed; cached on disk (k only picks among the n samples,
    so any k reuses the same run).

    `reward_name` is the selection reward's spec (`reward` stands in for it, e.g. a page's loaded model);
    `held_out` the held-out specs (default rahf-plausibility, rahf-alignment, never the selection reward),
    `held_out_rewards` loaded ones by spec; `predictor` stands in for the embedded RAHF. `use_judge`: judge
    the images (default: only for a ShapesWorld generator, the only one whose scenes it can read).
    `guide` (a differentiable reward's spec; `guide_reward` stands in for it) adds the reward-guided arm at
    `guide_scale`: n more samples of the original model, from the same starting noise."""
    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise RewardError("the prompt set is empty: pick a prompt set or write at least one prompt")
    if not 1 <= k <= n:
        raise RewardError(f"k must be between 1 and n: asked for the best {k} of {n}")
    if not adapter or not (Path(adapter) / "pytorch_lora_weights.safetensors").is_file():
        raise RewardError(f"no fine-tuned adapter at {adapter!r}: pick a shipped or saved one, or fine-tune now")
    report = progress or (lambda stage, f: None)
    use_judge = getattr(generator, "is_shapes_world", False) if use_judge is None else use_judge
    reward = reward or get_reward(reward_name, predictor=predictor, generator=generator)
    if held_out_rewards is None:
        held_out_rewards = get_rewards(held_out_specs(reward_name, held_out), predictor=predictor, generator=generator)
    guided = None
    if guide:
        guide_reward = generator.guidance_reward(guide_reward or get_reward(guide, predictor=predictor,
                                                                            generator=generator))
        guided = (guide, guide_reward, float(guide_scale))
    key = _key(generator, adapter, prompts, n, reward_name, seed, steps, guidance, reward, held_out_rewards, use_judge,
               encoders)
    if guided:
        key = cache_key(key, guide, _weights(guide_reward), float(guide_scale))
    path = cache_dir("comparisons") / f"{key}.npz"
    models = ("original", "fine-tuned", "guided") if guided else ("original", "fine-tuned")
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        get = lambda name: {m: z[f"{name}_{i}"] for i, m in enumerate(models)}  # noqa: E731
        return Comparison(prompts, n, k, reward_name, get("images"), get("rewards"), get("aligned"), get("implausible"),
                          {spec: get(f"heldout{j}") for j, spec in enumerate(held_out_rewards)}, get("embeddings"),
                          json.loads(str(z["settings"])) | {"cached": True})
    encoders = encoders or load_encoders()
    specs = [parse_prompt(p) if use_judge else None for p in prompts]
    res: dict[str, dict] = {x: {} for x in ("images", "rewards", "aligned", "implausible", "embeddings")}
    held: dict[str, dict] = {spec: {} for spec in held_out_rewards}
    for model in models:
        imgs = generate_cached(generator, adapter if model == "fine-tuned" else None, prompts, n, seed, steps, guidance,
                               progress=lambda d, t, m=model: report(f"generating ({m})", d / t),
                               guide=guided if model == "guided" else None)
        flat = [im for row in imgs for im in row]
        flat_p = [p for p in prompts for _ in range(n)]
        # Scoring reports as it goes: the judge, image by image, is most of its time (about 0.25 s an
        # image on a laptop CPU; 2 × 48 images sat at "Scoring… 0%" for 50 s). The shares below follow
        # the stages' measured times: reward 5%, judge 65%, held-out rewards 25%, embeddings 5%.
        stage = f"scoring ({model})"
        report(stage, 0.0)
        res["rewards"][model] = np.asarray(reward(flat, flat_p), np.float32).reshape(len(prompts), n)
        report(stage, 0.05)
        verdicts = []
        for i, (im, s) in enumerate(zip(flat, [s for s in specs for _ in range(n)])):
            verdicts.append(judge(im, s) if s is not None else None)
            report(stage, 0.05 + 0.65 * (i + 1) / len(flat))
        res["aligned"][model] = np.array([float(v.aligned) if v else np.nan for v in verdicts]).reshape(len(prompts), n)
        res["implausible"][model] = np.array([float(v.implausible) if v else np.nan for v in verdicts]).reshape(len(prompts), n)
        for spec, v in score_all(held_out_rewards, flat, flat_p).items():
            held[spec][model] = v.reshape(len(prompts), n)
        report(stage, 0.95)
        res["embeddings"][model] = encoders.embed_images(flat).reshape(len(prompts), n, -1)
        report(stage, 1.0)
        res["images"][model] = np.stack([np.asarray(im.convert("RGB")) for im in flat]).reshape(len(prompts), n, *np.asarray(flat[0]).shape)
    settings = {"generator": generator.name, "adapter": str(adapter), "seed": seed, "steps": steps, "guidance": guidance,
                "reward": reward_name, "held_out": list(held_out_rewards), "judge": bool(use_judge),
                **({"guide": guide, "guide_scale": float(guide_scale)} if guided else {})}
    arrays = {f"{name}_{i}": res[name][m] for name in res for i, m in enumerate(models)}
    arrays |= {f"heldout{j}_{i}": held[spec][m] for j, spec in enumerate(held) for i, m in enumerate(models)}
    atomic_savez(path, settings=np.array(json.dumps(settings)), **arrays)
    return Comparison(prompts, n, k, reward_name, res["images"], res["rewards"], res["aligned"], res["implausible"],
                      held, res["embeddings"], settings | {"cached": False})
