"""Rewards by spec, one signature: `reward(images, prompts) -> np.ndarray` (higher is better).

    lee                   Lee et al.'s learned reward: the embedded ShapesWorld model
    lee:DIR               a reward model folder written by `train-reward` (head.safetensors + config.json)
    rahf-<score>          the embedded RAHF checkpoint's predicted score
    rahf-<score>:DIR      any RAHF checkpoint folder's predicted score (e.g. converted published weights)
    judge                 the ShapesWorld judge: 1 aligned, 0 not, minus half when it finds an implausible
                          region (ShapesWorld generators and prompts only)

<score> is one of plausibility, alignment, aesthetics, overall. Every reward carries `.spec` (what it
was asked for by), `.name` (short, for tables), `.path` (its weights' folder, None when embedded-by-
default or weightless) and `.differentiable` (whether `score_pixels` can backpropagate through it:
the lee rewards, and rahf-<score> for a trained or embedded RAHF; not the judge, not the published port)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from rhf_core.dataset import SCORE_NAMES
from rhf_core.judge import judge
from rhf_core.rahf import CheckpointError, load_rahf
from rhf_core.reward.model import RewardError, load_reward_model
from rhf_core.shapes.grammar import parse_prompt

# The specs that name an embedded model (the page's choices; any `:DIR` form is accepted too).
REWARD_NAMES = ("lee", *(f"rahf-{s}" for s in ("alignment", "plausibility", "overall", "aesthetics")), "judge")
SPEC_HELP = ("lee, lee:DIR (a train-reward folder), rahf-<score> or rahf-<score>:DIR (a RAHF checkpoint; score = "
             f"{', '.join(SCORE_NAMES)}), or judge (ShapesWorld only)")
# Held-out rewards reported beside the training reward when none are named.
DEFAULT_HELD_OUT = ("rahf-plausibility", "rahf-alignment")


def parse_reward_spec(spec: str) -> tuple[str, str, str]:
    """'rahf-alignment:/ck' → ('rahf', 'alignment', '/ck'); 'lee' → ('lee', '', ''). Refuses anything else,
    naming the forms that exist."""
    if not isinstance(spec, str) or not spec.strip():
        raise RewardError(f"empty reward: name one of {SPEC_HELP}")
    head, _, folder = spec.strip().partition(":")
    head, folder = head.strip().lower(), folder.strip()
    if head == "lee":
        return "lee", "", folder
    if head == "judge":
        if folder:
            raise RewardError("the judge reward has no weights: write `judge`, without a folder")
        return "judge", "", ""
    if head.startswith("rahf-") and head[5:] in SCORE_NAMES:
        return "rahf", head[5:], folder
    raise RewardError(f"unknown reward {spec!r}; use {SPEC_HELP}")


def judge_reward(images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
    out = []
    for im, p in zip(images, prompts):
        spec = parse_prompt(p)
        if spec is None:
            raise RewardError(f"the judge reward only reads ShapesWorld prompts, not {p!r}: use lee:DIR or a "
                              "rahf-<score> reward for other prompts")
        v = judge(im, spec)
        out.append(float(v.aligned) - 0.5 * float(v.implausibility.mean() > 0))
    return np.asarray(out, np.float32)


def check_judge(generator) -> None:
    """Refuse the judge for a generator that is not a ShapesWorld one (None: no generator to check)."""
    if generator is not None and not getattr(generator, "is_shapes_world", True):
        raise RewardError(f"the judge reward knows only ShapesWorld scenes, and {generator.name} is not a "
                          "ShapesWorld generator: use lee:DIR (a reward trained with train-reward --data) or "
                          "rahf-<score>[:DIR]")


class Reward:
    """A non-differentiable reward by spec (RAHF scores, the judge): callable, with its spec and weights."""

    differentiable = False

    def __init__(self, spec: str, fn: Callable, path: Path | None = None, predictor=None, score: str = ""):
        self.spec, self.fn, self.path = spec, fn, path
        self.predictor, self.score = predictor, score  # RAHF rewards: score_all predicts once per checkpoint
        self.__name__ = spec  # cache keys that name a reward function read this

    @property
    def name(self) -> str:
        head, _, folder = self.spec.partition(":")
        return f"{head}:{Path(folder).name}" if folder else head

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        if len(images) != len(prompts):
            raise RewardError(f"{len(images)} images but {len(prompts)} prompts")
        if not len(images):
            return np.zeros(0, np.float32)
        return np.asarray(self.fn(list(images), list(prompts)), np.float32)

    def __repr__(self) -> str:
        return f"<Reward {self.spec}>"


class RAHFReward(Reward):
    """A RAHF score by spec. Differentiable when its predictor has a pixel path (`RAHF.score_pixels`: the
    embedded and any trained checkpoint); the published port's predictor has none, so it is not."""

    def __init__(self, spec: str, predictor, score: str):
        def fn(images, prompts):
            return [p.scores[score] for p in predictor.predict(images, prompts)]

        super().__init__(spec, fn, Path(predictor.path) if getattr(predictor, "path", None) else None, predictor, score)

    @property
    def differentiable(self) -> bool:
        return callable(getattr(self.predictor, "score_pixels", None))

    def score_pixels(self, pixels, prompts: Sequence[str]):
        """The score of B×3×H×W pixels in [0, 1], differentiable in them (see `RAHF.score_pixels`)."""
        if not self.differentiable:
            raise RewardError(f"{self.spec} has no differentiable pixel path (the published port's predictor "
                              "is PIL-based): use a trained RAHF checkpoint (rahf-<score>:DIR) or lee")
        return self.predictor.score_pixels(pixels, prompts, self.score)


def rahf_reward(spec: str, predictor, score: str) -> Reward:
    return RAHFReward(spec, predictor, score)


def get_reward(spec: str, predictor=None, reward_model=None, generator=None, _loaded: dict | None = None):
    """The reward `spec` names (see the module docstring). `predictor` (RAHF) and `reward_model` (Lee) stand
    in for the embedded ones of the bare `rahf-<score>` and `lee` specs (a page's loaded models); with a
    `generator` that is not a ShapesWorld one, `judge` is refused (it can read nothing else)."""
    kind, score, folder = parse_reward_spec(spec)
    spec = spec.strip()
    loaded = {} if _loaded is None else _loaded
    if kind == "judge":
        check_judge(generator)
        return Reward("judge", judge_reward)
    if kind == "lee":
        if not folder and reward_model is not None:
            model = reward_model
        else:
            key = ("lee", str(Path(folder).expanduser().resolve()) if folder else "")
            if key not in loaded:
                loaded[key] = load_reward_model(Path(folder).expanduser() if folder else None)
            model = loaded[key]
        model.spec = spec
        return model
    if not folder and predictor is not None:
        return rahf_reward(spec, predictor, score)
    key = ("rahf", str(Path(folder).expanduser().resolve()) if folder else "")
    if key not in loaded:
        try:
            loaded[key] = load_rahf(Path(folder).expanduser() if folder else None)
        except CheckpointError as e:
            raise RewardError(f"reward {spec!r}: {e}") from e
    return rahf_reward(spec, loaded[key], score)


def get_rewards(specs: Sequence[str], predictor=None, reward_model=None, generator=None) -> dict:
    """spec → reward for several specs, each checkpoint loaded once (rahf-plausibility:DIR and
    rahf-alignment:DIR share one RAHF)."""
    loaded: dict = {}
    return {s: get_reward(s, predictor, reward_model, generator, _loaded=loaded) for s in dict.fromkeys(specs)}


def held_out_specs(training: str, held_out: Sequence[str] | str | None = None) -> list[str]:
    """The held-out rewards to report beside `training`: those named (a list or 'a,b'), else
    DEFAULT_HELD_OUT; the training reward itself is never its own held-out check."""
    if isinstance(held_out, str):
        held_out = [h for h in (x.strip() for x in held_out.split(",")) if h]
    chosen = list(held_out) if held_out else list(DEFAULT_HELD_OUT)
    for s in chosen:
        parse_reward_spec(s)
    return [s for s in dict.fromkeys(chosen) if s.strip() != training.strip()]


def score_all(rewards: dict, images: Sequence[Image.Image], prompts: Sequence[str]) -> dict[str, np.ndarray]:
    """spec → scores of every image; RAHF rewards of one checkpoint share a single prediction pass."""
    out: dict[str, np.ndarray] = {}
    passes: dict[int, list] = {}
    for spec, r in rewards.items():
        if isinstance(r, Reward) and r.predictor is not None:
            passes.setdefault(id(r.predictor), []).append((spec, r))
        else:
            out[spec] = np.asarray(r(images, prompts), np.float32)
    for group in passes.values():
        preds = group[0][1].predictor.predict(list(images), list(prompts)) if len(images) else []
        for spec, r in group:
            out[spec] = np.asarray([p.scores[r.score] for p in preds], np.float32)
    return {s: out[s] for s in rewards}
