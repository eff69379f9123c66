"""The Lee et al. results in miniature, on fresh samples (`python -m rhf_core eval-lee --json …`):
rejection sampling n → k against random k, the fine-tuned model against the original, and the β
ablation (fidelity, diversity).

Every arm is scored with the reward it was selected by (the adapter's training reward unless another is
named) and with held-out rewards it was neither selected nor trained with (RAHF plausibility and
alignment by default): a gain in the training reward that the held-out rewards do not share is the
reward being gamed, not the images improving. Prompts:

- `--prompts FILE` (one prompt a line): any generator, any prompts; no judge unless the generator is a
  ShapesWorld one, and then only for prompts of its grammar;
- otherwise ShapesWorld's three splits, judged: `trained` (prompts the fine-tuning used, new seeds: Lee et
  al.'s *seen*), `seen` (seen categories no training step used) and `unseen` (the grammar's held-out
  combinations).

The JSON is written (atomically) before anything is printed: a formatting problem never costs a run."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rhf_core.cache import atomic_write_text, json_text
from rhf_core.reward.compare import ARMS, paired_bootstrap, run_comparison, summarize
from rhf_core.align import FinetuneConfig, fine_tune_prompts, load_adapter_info
from rhf_core.reward.model import RewardError
from rhf_core.reward.rewards import get_reward, get_rewards, held_out_specs
from rhf_core.reward.train import default_prompt_split
from rhf_core.t2i import load_generator


@dataclass
class LeeEvalConfig:
    # Adapter folders, comma-separated; every one is measured on the same prompts and seeds.
    adapters: str = "rhf_core/assets/adapters/lee-shapes,rhf_core/assets/adapters/lee-shapes-beta0"
    # A text file, one prompt a line (any generator). Empty: ShapesWorld's trained / seen / unseen splits.
    prompts: str = ""
    # Prompts per split (the first of the file's).
    n_prompts: int = 12
    # Samples per prompt and model, and how many best-k keeps.
    n: int = 16
    k: int = 4
    # The reward best-k selects by. Empty: the first adapter's training reward.
    reward: str = ""
    # Held-out rewards, comma-separated, reported beside it (the selection reward is dropped from them).
    held_out: str = "rahf-plausibility,rahf-alignment"
    # The generator the adapters were trained on (empty: the embedded one).
    generator: str = ""
    seed: int = 11
    # Where the results go (written before anything is printed); empty: not written.
    json: str = ""


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


def read_prompt_file(path: str | Path, n_prompts: int) -> list[str]:
    """The first `n_prompts` non-empty lines of a text file, each once."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RewardError(f"prompt file not found: {path}")
    prompts = list(dict.fromkeys(line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()))
    if not prompts:
        raise RewardError(f"{path} holds no prompts (one a line)")
    return prompts[:n_prompts]


def lee_experiment(adapters: list[str], n_prompts: int = 40, n: int = 16, k: int = 4, reward_name: str = "",
                   seed: int = 11, generator=None, predictor=None, encoders=None, prompts_file: str = "",
                   held_out: list[str] | str | None = None, json_path: str = "") -> dict:
    """Measure each adapter against its original model on the same prompts and seeds; with `json_path`,
    the result is written there before it is returned."""
    if not adapters:
        raise RewardError("no adapter to evaluate: name at least one adapter folder")
    generator = generator or load_generator()
    t0 = time.time()
    infos = {a: load_adapter_info(a) for a in adapters}
    reward_name = reward_name or infos[adapters[0]].get("config", {}).get("reward", "lee")
    if prompts_file:
        splits = {"prompts": read_prompt_file(prompts_file, n_prompts)}
    elif generator.is_shapes_world:
        # Every adapter is measured on the same prompts: the first adapter's training prompts.
        splits = experiment_prompts(adapters[0], n_prompts)
    else:
        raise RewardError(f"{generator.name} is not a ShapesWorld generator, and the default prompt splits are "
                          "ShapesWorld's grammar: give a prompt file (--prompts FILE, one prompt a line)")
    reward = get_reward(reward_name, predictor=predictor, generator=generator)
    held_specs = held_out_specs(reward_name, held_out)
    out: dict = {"settings": {"n": n, "k": k, "reward": reward_name, "held_out": held_specs, "seed": seed,
                              "prompts_per_split": n_prompts, "prompt_file": str(prompts_file) if prompts_file else None,
                              "generator": generator.name, "judge": generator.is_shapes_world}, "adapters": {}}
    for adapter in adapters:
        info = infos[adapter]
        trained_with = info.get("config", {}).get("reward", "")
        # An adapter trained with another reward than the selection one is scored with its own too.
        specs = held_specs + ([trained_with] if trained_with and trained_with not in held_specs + [reward_name] else [])
        held_rewards = get_rewards(specs, predictor=predictor, generator=generator)
        res = {"beta": info["beta_used"], "steps": info["steps_done"], "trained_with": trained_with, "splits": {}}
        for split, prompts in splits.items():
            c = run_comparison(generator, adapter, prompts, n=n, k=k, reward_name=reward_name, reward=reward,
                               predictor=predictor, encoders=encoders, seed=seed, held_out_rewards=held_rewards)
            res["splits"][split] = summarize(c)
        out["adapters"][Path(adapter).name] = res
    out["claims"] = claims(out)
    out["settings"]["seconds"] = round(time.time() - t0, 1)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json_path, json_text(out))
    return out


def run_lee_eval(cfg: LeeEvalConfig, generator=None, predictor=None, encoders=None) -> dict:
    """`eval-lee`: the experiment of `cfg`, its JSON written before the caller prints anything."""
    return lee_experiment([a.strip() for a in cfg.adapters.split(",") if a.strip()], n_prompts=cfg.n_prompts, n=cfg.n,
                          k=cfg.k, reward_name=cfg.reward, seed=cfg.seed,
                          generator=generator or load_generator(cfg.generator or None), predictor=predictor,
                          encoders=encoders, prompts_file=cfg.prompts, held_out=cfg.held_out, json_path=cfg.json)


def claims(result: dict) -> dict:
    """The paper's qualitative results, checked on these numbers: each claim holds only when the 95%
    paired-bootstrap interval over prompts of its difference lies on the claimed side of 0 (a +0.003
    on 24 prompts is noise, not a win). Each entry: holds, difference, ci95. Claims on the judge's
    alignment appear only where it judged; claims on the rewards (selection and held-out) always."""
    def verdict(gain: dict | None, sign: int = 1) -> dict:
        if gain is None:
            return {"holds": False, "difference": None, "ci95": None}
        lo, hi = gain["ci95"]
        return {"holds": bool(lo > 0 if sign > 0 else hi < 0), "difference": gain["difference"], "ci95": gain["ci95"]}

    def values(arms: dict, what: str) -> np.ndarray:
        return np.array(arms["fine-tuned random"]["per_prompt"][what], dtype=float)

    def judged(arms: dict) -> bool:
        return "alignment_gain" in arms["original best-k"]

    c: dict = {}
    names = list(result["adapters"])
    first = result["adapters"][names[0]]["splits"]
    for split, arms in first.items():
        if judged(arms):
            c[f"{split}: rejection sampling beats random (alignment)"] = verdict(arms["original best-k"].get("alignment_gain"))
        if "reward_gain" in arms["original best-k"]:
            c[f"{split}: rejection sampling beats random (selection reward)"] = verdict(arms["original best-k"]["reward_gain"])
            for spec, h in arms["original best-k"].get("held_out", {}).items():
                c[f"{split}: rejection sampling beats random (held-out {spec})"] = verdict(h["gain"])
    for name in names:
        for split, arms in result["adapters"][name]["splits"].items():
            fine = arms["fine-tuned random"]
            if judged(arms):
                c[f"{split}: {name} fine-tuned beats original (alignment, all n samples)"] = verdict(fine.get("alignment_gain"))
                original = arms.get("original random", {}).get("per_prompt", {}).get("implausible_all_n")
                if original is not None and "implausible_all_n" in fine.get("per_prompt", {}):
                    # RichHF's claim for a plausibility-filtered fine-tune: fewer artifacts, by the judge.
                    c[f"{split}: {name} fine-tuned is judged implausible less often than original (all n samples)"] = \
                        verdict(paired_bootstrap(values(arms, "implausible_all_n") - np.array(original, dtype=float)),
                                sign=-1)
            if "reward_gain" in fine:
                c[f"{split}: {name} fine-tuned beats original (selection reward, all n samples)"] = verdict(fine["reward_gain"])
                for spec, h in fine.get("held_out", {}).items():
                    c[f"{split}: {name} fine-tuned beats original (held-out {spec}, all n samples)"] = verdict(h["gain"])
    betas = {name: r["beta"] for name, r in result["adapters"].items()}
    zero = [n for n, b in betas.items() if b == 0]
    pos = [n for n, b in betas.items() if b > 0]
    if zero and pos:
        for split in first:
            a, b = result["adapters"][zero[0]]["splits"][split], result["adapters"][pos[0]]["splits"][split]
            c[f"{split}: β>0 keeps more diversity than β=0"] = verdict(
                paired_bootstrap(values(b, "diversity") - values(a, "diversity")))
            if "implausible_all_n" in b["fine-tuned random"]["per_prompt"]:
                c[f"{split}: β>0 keeps more fidelity than β=0 (lower judge implausible share, all n)"] = verdict(
                    paired_bootstrap(values(b, "implausible_all_n") - values(a, "implausible_all_n")), sign=-1)
    return c


def _num(value, width: int, fmt: str = ".3f") -> str:
    """A number in a fixed-width column; blank where there is none (no judge, no judged prompt)."""
    return f"{value:{width}{fmt}}" if isinstance(value, (int, float)) and value == value else " " * width


def format_experiment(result: dict) -> str:
    """A plain-text table per adapter: rewards (selection, then held-out), diversity, win rate, and the
    judge's columns only where it judged."""
    held = result["settings"].get("held_out", [])
    judge = result["settings"].get("judge", True)
    lines = [f"selection reward: {result['settings']['reward']}; held-out rewards: {', '.join(held) or 'none'}"]
    for name, r in result["adapters"].items():
        lines.append(f"adapter {name} (β = {r['beta']}, {r['steps']} steps, trained with {r.get('trained_with') or '?'})")
        head = f"  {'split':8s} {'arm':18s} {'reward':>7s}" + "".join(f" {'H' + str(i + 1):>7s}" for i in range(len(held)))
        head += f" {'divers.':>7s} {'win':>5s}" + (f" {'aligned':>7s} {'all n':>6s} {'implaus.':>8s}" if judge else "")
        lines.append(head)
        for split, arms in r["splits"].items():
            for arm in ARMS:
                a = arms[arm]
                row = f"  {split:8s} {arm:18s} {_num(a['mean_reward'], 7)}"
                row += "".join(f" {_num(a['held_out'].get(h, {}).get('mean'), 7)}" for h in held)
                row += f" {_num(a['diversity'], 7)} {_num(a['win'], 5, '.2f')}"
                if judge:
                    row += (f" {_num(a.get('alignment_rate'), 7)} {_num(a.get('alignment_rate_all_n'), 6)}"
                            f" {_num(a.get('judge_implausible_share'), 8)}")
                lines.append(row)
    for i, h in enumerate(held):
        lines.append(f"  H{i + 1} = {h}")
    lines.append("claims (held only when the 95% bootstrap interval over prompts excludes 0):")
    for k, v in result["claims"].items():
        ci = f"{v['difference']:+.3f}, 95% CI {v['ci95'][0]:+.3f} … {v['ci95'][1]:+.3f}" if v["ci95"] else "no prompts to measure"
        lines.append(f"  [{'x' if v['holds'] else ' '}] {k}  ({ci})")
    return "\n".join(lines)
