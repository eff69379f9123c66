"""Does RAHF-guided sampling help, by the judge? The pre-registered study of issue #21
(`rhf study-guidance`; the result is docs/experiments/guidance.md).

Decided before anything was measured, and fixed here:

- **Prompts.** Held-out ShapesWorld prompts the generator's reward work never trained on: the first
  `n_prompts` of the `seen` split (seen object/colour/background combinations) and of the `unseen` split
  (the grammar's held-out combinations). Scales are tuned on a *separate* set: the first `tune_prompts` of
  the reward model's training prompts, with their own seed, never on the measured prompts.
- **Arms.** Unguided sampling, and one arm per guidance reward, all with the same starting noise (paired
  seeds: sample j of prompt p starts from the same latent in every arm), the same steps and classifier-free
  guidance.
- **Measures.** The judge (ShapesWorld's exact reading of an image against its prompt): its implausible
  share (share of samples with an implausible object) and its alignment rate. `rahf-plausibility` is
  expected to lower the implausible share, `rahf-alignment` to raise alignment; each arm's other measure is
  reported too (side effects). A claim holds when the 95% paired-bootstrap interval over prompts of
  (guided − unguided), per-prompt rates over the n samples, lies on the claimed side of 0.
- **Scale.** For each reward, the candidate scale with the best mean paired change of its own target
  measure on the tuning set; ties go to the smaller scale.
- **Cost.** Seconds per image of each arm, in the same process, same batch size.

Every (arm, prompt set) result is kept on disk as it finishes, so a run that is stopped resumes where it
stopped; the JSON is written atomically before anything is printed."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rhf_core.cache import atomic_write_text, cache_dir, cache_key, json_text
from rhf_core.judge import JUDGE_VERSION, judge
from rhf_core.reward.compare import paired_bootstrap
from rhf_core.reward.model import RewardError
from rhf_core.reward.rewards import get_reward
from rhf_core.reward.train import default_prompt_split
from rhf_core.t2i import load_generator

# Each reward's target: the judge measure it should move, and the direction that is better.
TARGETS = {"rahf-plausibility": ("implausible", -1), "rahf-alignment": ("aligned", +1)}


@dataclass
class GuidanceStudyConfig:
    # Guidance rewards, comma-separated (differentiable ones: rahf-<score>[:DIR], lee[:DIR]).
    rewards: str = "rahf-plausibility,rahf-alignment"
    # Candidate guidance scales tried on the tuning set, comma-separated.
    scales: str = "1,2,4"
    # Tuning set: prompts (from the reward model's training prompts) and samples per prompt.
    tune_prompts: int = 8
    tune_n: int = 8
    # Measured prompts per split (held-out seen and unseen) and samples per prompt.
    n_prompts: int = 40
    n: int = 16
    steps: int = 25
    guidance: float = 7.5
    # The part of the schedule guidance acts in, "start,end" fractions.
    guidance_steps: str = "0,1"
    grad_clip: float = 0.0
    seed: int = 23
    batch_size: int = 64
    # The generator (empty: the embedded ShapesWorld one; the judge needs a ShapesWorld generator).
    generator: str = ""
    # Where the result goes (written before anything is printed).
    json: str = "cache/studies/guidance.json"


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise RewardError(f"{name} must be numbers separated by commas, got {text!r}") from None
    if not values:
        raise RewardError(f"{name} is empty")
    return values


def study_prompts(cfg: GuidanceStudyConfig) -> dict[str, list[str]]:
    """The tuning set and the two measured splits (fixed by the config alone)."""
    sets = default_prompt_split()
    if cfg.n_prompts > min(len(sets["seen"]), len(sets["unseen"])):
        raise RewardError(f"n_prompts={cfg.n_prompts}: the held-out splits have {len(sets['seen'])} seen and "
                          f"{len(sets['unseen'])} unseen prompts")
    return {"tune": sets["train"][:cfg.tune_prompts], "seen": sets["seen"][:cfg.n_prompts],
            "unseen": sets["unseen"][:cfg.n_prompts]}


def judge_arm(generator, prompts: list[str], n: int, seed: int, cfg: GuidanceStudyConfig, reward=None,
              scale: float = 0.0, store: Path | None = None) -> dict:
    """Generate n samples per prompt (guided by `reward` at `scale`, or unguided) and judge them:
    {"aligned": P×n, "implausible": P×n, "seconds_per_image": …}; kept in `store` once done."""
    if store is not None and store.is_file():
        return json.loads(store.read_text())
    lo, hi = _floats(cfg.guidance_steps, "guidance_steps")
    kwargs = {} if reward is None else {"reward_guidance": reward, "reward_scale": scale,
                                        "guidance_steps": (lo, hi), "grad_clip": cfg.grad_clip}
    t0 = time.perf_counter()
    images = generator.generate(prompts, n=n, seed=seed, steps=cfg.steps, guidance=cfg.guidance,
                                batch_size=cfg.batch_size, **kwargs)
    seconds = time.perf_counter() - t0
    verdicts = [[judge(im, p) for im in row] for p, row in zip(prompts, images)]
    out = {"aligned": [[float(v.aligned) for v in row] for row in verdicts],
           "implausible": [[float(v.implausible) for v in row] for row in verdicts],
           "seconds_per_image": round(seconds / (len(prompts) * n), 4)}
    if store is not None:
        store.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(store, json_text(out))
    return out


def _rates(arm: dict, measure: str) -> np.ndarray:
    return np.asarray(arm[measure], dtype=float).mean(axis=1)  # per prompt, over its n samples


def pick_scale(tuning: dict[str, dict], unguided: dict, measure: str, sign: int) -> tuple[float, dict]:
    """The scale whose mean paired change of `measure` is best in direction `sign` (ties: the smaller)."""
    changes = {s: float(np.mean(_rates(arm, measure) - _rates(unguided, measure))) for s, arm in tuning.items()}
    best = min(changes, key=lambda s: (-sign * changes[s], float(s)))
    return float(best), {str(s): round(c, 4) for s, c in changes.items()}


def run_guidance_study(cfg: GuidanceStudyConfig, generator=None, progress=print) -> dict:
    """The whole study of `cfg`: tune each reward's scale, measure every arm, write the JSON."""
    generator = generator or load_generator(cfg.generator or None)
    if not generator.is_shapes_world:
        raise RewardError(f"{generator.name} is not a ShapesWorld generator: this study is measured by the judge, "
                          "which reads ShapesWorld images only")
    rewards = [r.strip() for r in cfg.rewards.split(",") if r.strip()]
    unknown = [r for r in rewards if r.split(":")[0] not in TARGETS]
    if unknown:
        raise RewardError(f"no judge measure is registered for {unknown}: the study measures {sorted(TARGETS)}")
    scales = _floats(cfg.scales, "scales")
    # Loaded once, before any clock starts: an arm's seconds per image are sampling and guidance only.
    reward_objects = {r: generator.guidance_reward(get_reward(r, generator=generator)) for r in rewards}
    sets = study_prompts(cfg)
    key = cache_key("guidance-study", generator.fingerprint(), JUDGE_VERSION,
                    {k: v for k, v in asdict(cfg).items() if k not in ("json", "rewards", "scales")})
    root = cache_dir("studies", key)
    t0 = time.time()
    tune_seed = cfg.seed + 1000  # tuning samples share no starting noise with the measured ones

    def arm(split, reward=None, scale=0.0):
        name = "unguided" if reward is None else f"{reward}@{scale:g}"
        n, seed = (cfg.tune_n, tune_seed) if split == "tune" else (cfg.n, cfg.seed)
        progress(f"{split}: {name} ({len(sets[split])} prompts × {n})")
        return judge_arm(generator, sets[split], n, seed, cfg, reward and reward_objects[reward], scale,
                         root / f"{split}--{name.replace(':', '_').replace('/', '_')}.json")

    out: dict = {"settings": {**asdict(cfg), "generator": generator.name, "judge_version": JUDGE_VERSION,
                              "prompts": sets}, "tuning": {}, "arms": {}, "claims": {}}
    base_tune = arm("tune")
    picked = {}
    for reward in rewards:
        measure, sign = TARGETS[reward.split(":")[0]]
        tuned = {s: arm("tune", reward, s) for s in scales}
        picked[reward], changes = pick_scale(tuned, base_tune, measure, sign)
        out["tuning"][reward] = {"measure": measure, "better": "lower" if sign < 0 else "higher",
                                 "mean_change_by_scale": changes, "picked_scale": picked[reward]}
    for split in ("seen", "unseen"):
        base = arm(split)
        out["arms"].setdefault("unguided", {})[split] = _arm_summary(base)
        for reward in rewards:
            guided = arm(split, reward, picked[reward])
            name = f"{reward} @ {picked[reward]:g}"
            out["arms"].setdefault(name, {})[split] = {**_arm_summary(guided), "change": {
                m: paired_bootstrap(_rates(guided, m) - _rates(base, m)) for m in ("implausible", "aligned")},
                "time_ratio": round(guided["seconds_per_image"] / max(base["seconds_per_image"], 1e-9), 2)}
    out["claims"] = study_claims(out, rewards, picked)
    out["settings"]["seconds"] = round(time.time() - t0, 1)
    if cfg.json:
        Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cfg.json, json_text(out))
    return out


def _arm_summary(arm: dict) -> dict:
    return {"implausible_share": round(float(np.mean(arm["implausible"])), 4),
            "alignment": round(float(np.mean(arm["aligned"])), 4), "seconds_per_image": arm["seconds_per_image"]}


def study_claims(out: dict, rewards: list[str], picked: dict) -> dict:
    """Each reward's pre-registered claim per split: holds when its interval is on the claimed side of 0."""
    claims = {}
    for reward in rewards:
        measure, sign = TARGETS[reward.split(":")[0]]
        name = f"{reward} @ {picked[reward]:g}"
        for split, res in out["arms"][name].items():
            gain = res["change"][measure]
            holds = bool(gain and (gain["ci95"][1] < 0 if sign < 0 else gain["ci95"][0] > 0))
            claims[f"{reward} {'lowers' if sign < 0 else 'raises'} judge {measure} ({split})"] = {
                "holds": holds, **(gain or {})}
    return claims


def format_study(out: dict) -> str:
    """The study as Markdown tables (arms × splits, then the claims)."""
    lines = ["| arm | split | implausible share | judge alignment | Δ implausible (95% CI) | Δ alignment (95% CI) "
             "| s / image | × unguided |", "|---|---|---|---|---|---|---|---|"]
    for name, splits in out["arms"].items():
        for split, r in splits.items():
            ch = r.get("change", {})

            def fmt(g):
                return "" if not g else f"{g['difference']:+.3f} [{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}]"
            lines.append(f"| {name} | {split} | {r['implausible_share']:.3f} | {r['alignment']:.3f} | "
                         f"{fmt(ch.get('implausible'))} | {fmt(ch.get('aligned'))} | {r['seconds_per_image']:.3f} | "
                         f"{r.get('time_ratio', 1.0):.2f} |")
    lines += ["", "| claim | holds | difference | 95% CI |", "|---|---|---|---|"]
    for claim, c in out["claims"].items():
        lines.append(f"| {claim} | {'yes' if c['holds'] else 'no'} | {c.get('difference', float('nan')):+.3f} | "
                     f"{c.get('ci95')} |")
    return "\n".join(lines)
