"""The Lee et al. results in miniature, measured by the judge on fresh samples
(`python -m rhf_core eval-lee --json …`): rejection sampling 16 → 4 against random 4, the fine-tuned
model against the original, and the β ablation (fidelity, diversity), on three prompt splits:

- `trained`: prompts the fine-tuning used, with new seeds: what Lee et al. call *seen* prompts;
- `seen`: prompts of the seen categories that no training step used (held out);
- `unseen`: prompts with the grammar's held-out combinations (Lee et al.'s *unseen*)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from rhf_core.reward.compare import ARMS, paired_bootstrap, run_comparison, summarize
from rhf_core.reward.finetune import FinetuneConfig, fine_tune_prompts, load_adapter_info
from rhf_core.reward.model import RewardError
from rhf_core.reward.train import default_prompt_split


def heldout_prompts(n_prompts: int) -> dict[str, list[str]]:
    """Seen-combination prompts used by no training step, and unseen-combination prompts."""
    sets = default_prompt_split()
    return {"seen": sets["seen"][:n_prompts], "unseen": sets["unseen"][:n_prompts]}


def experiment_prompts(adapter: str, n_prompts: int) -> dict[str, list[str]]:
    """The adapter's own fine-tuning prompts (`trained`, when they can still be read) and the held-out
    splits, `n_prompts` each."""
    cfg = FinetuneConfig(**{k: v for k, v in load_adapter_info(adapter).get("config", {}).items()
                            if k in FinetuneConfig.__dataclass_fields__})
    try:
        trained = {"trained": fine_tune_prompts(cfg)[:n_prompts]}
    except RewardError:  # a prompt file that is gone: report the held-out splits only
        trained = {}
    return {**trained, **heldout_prompts(n_prompts)}


def lee_experiment(adapters: list[str], n_prompts: int = 40, n: int = 16, k: int = 4, reward_name: str = "lee",
                   seed: int = 11, generator=None, predictor=None, encoders=None) -> dict:
    from rhf_core.t2i import load_generator

    generator = generator or load_generator()
    t0 = time.time()
    out: dict = {"settings": {"n": n, "k": k, "reward": reward_name, "seed": seed, "prompts_per_split": n_prompts,
                              "generator": generator.name}, "adapters": {}}
    # Every adapter is measured on the same prompts: the first adapter's training prompts.
    splits = experiment_prompts(adapters[0], n_prompts) if adapters else {}
    for adapter in adapters:
        info = load_adapter_info(adapter)
        res = {"beta": info["beta_used"], "steps": info["steps_done"], "splits": {}}
        for split, prompts in splits.items():
            c = run_comparison(generator, adapter, prompts, n=n, k=k, reward_name=reward_name, predictor=predictor,
                               encoders=encoders, seed=seed)
            res["splits"][split] = summarize(c)
        out["adapters"][Path(adapter).name] = res
    out["claims"] = claims(out)
    out["settings"]["seconds"] = round(time.time() - t0, 1)
    return out


def claims(result: dict) -> dict:
    """The paper's qualitative results, checked on these numbers: each claim holds only when the 95%
    paired-bootstrap interval over prompts of its difference lies on the claimed side of 0 (a +0.003
    on 24 prompts is noise, not a win). Each entry: holds, difference, ci95."""
    def verdict(gain: dict | None, sign: int = 1) -> dict:
        if gain is None:
            return {"holds": False, "difference": None, "ci95": None}
        lo, hi = gain["ci95"]
        return {"holds": bool(lo > 0 if sign > 0 else hi < 0), "difference": gain["difference"], "ci95": gain["ci95"]}

    def values(arms: dict, what: str) -> np.ndarray:
        return np.array(arms["fine-tuned random"]["per_prompt"][what], dtype=float)

    c: dict = {}
    names = list(result["adapters"])
    first = result["adapters"][names[0]]["splits"]
    for split, arms in first.items():
        c[f"{split}: rejection sampling beats random (alignment)"] = verdict(arms["original best-k"].get("alignment_gain"))
    for name in names:
        for split, arms in result["adapters"][name]["splits"].items():
            c[f"{split}: {name} fine-tuned beats original (alignment, all n samples)"] = verdict(
                arms["fine-tuned random"].get("alignment_gain"))
    betas = {name: r["beta"] for name, r in result["adapters"].items()}
    zero = [n for n, b in betas.items() if b == 0]
    pos = [n for n, b in betas.items() if b > 0]
    if zero and pos:
        for split in first:
            a, b = result["adapters"][zero[0]]["splits"][split], result["adapters"][pos[0]]["splits"][split]
            c[f"{split}: β>0 keeps more diversity than β=0"] = verdict(
                paired_bootstrap(values(b, "diversity") - values(a, "diversity")))
            c[f"{split}: β>0 keeps more fidelity than β=0 (lower judge implausible share, all n)"] = verdict(
                paired_bootstrap(values(b, "implausible_all_n") - values(a, "implausible_all_n")), sign=-1)
    return c


def format_experiment(result: dict) -> str:
    lines = []
    for name, r in result["adapters"].items():
        lines.append(f"adapter {name} (β = {r['beta']}, {r['steps']} steps)")
        lines.append(f"  {'split':7s} {'arm':20s} {'reward':>7s} {'aligned':>8s} {'all n':>6s} {'divers.':>8s} {'implaus.':>8s} "
                     f"{'RAHF-pl':>8s} {'win':>5s}")
        for split, arms in r["splits"].items():
            for arm in ARMS:
                a = arms[arm]
                all_n = f"{a['alignment_rate_all_n']:6.3f}" if "alignment_rate_all_n" in a else f"{'':6s}"
                lines.append(f"  {split:7s} {arm:20s} {a['mean_reward']:7.3f} {a['alignment_rate']:8.3f} {all_n} {a['diversity']:8.3f} "
                             f"{a['judge_implausible_share']:8.3f} {a['rahf_plausibility']:8.3f} {a['win']:5.2f}")
    lines.append("claims (held only when the 95% bootstrap interval over prompts excludes 0):")
    for k, v in result["claims"].items():
        ci = f"{v['difference']:+.3f}, 95% CI {v['ci95'][0]:+.3f} … {v['ci95'][1]:+.3f}" if v["ci95"] else "no judged prompts"
        lines.append(f"  [{'x' if v['holds'] else ' '}] {k}  ({ci})")
    return "\n".join(lines)
