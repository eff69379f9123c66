"""Rewards by name, one signature: `reward(images, prompts) -> np.ndarray` (higher is better).

    lee                 Lee et al.'s learned reward (the embedded ShapesWorld model by default)
    rahf-alignment      RAHF's predicted alignment score
    rahf-plausibility   RAHF's predicted plausibility score
    rahf-overall        RAHF's predicted overall score
    judge               the ShapesWorld judge: 1 aligned, 0 not, minus half the implausible share (ShapesWorld only)
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from PIL import Image

from rhf_core.reward.model import RewardError

REWARD_NAMES = ("lee", "rahf-alignment", "rahf-plausibility", "rahf-overall", "judge")
Reward = Callable[[Sequence[Image.Image], Sequence[str]], np.ndarray]


def judge_reward(images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
    from rhf_core.judge import judge
    from rhf_core.shapes.grammar import parse_prompt

    out = []
    for im, p in zip(images, prompts):
        spec = parse_prompt(p)
        if spec is None:
            raise RewardError(f"the judge reward only reads ShapesWorld prompts, not {p!r}")
        v = judge(im, spec)
        out.append(float(v.aligned) - 0.5 * float(v.implausibility.mean() > 0))
    return np.asarray(out, np.float32)


def get_reward(name: str, predictor=None, reward_model=None) -> Reward:
    """The reward called `name`; `predictor` (RAHF) and `reward_model` (Lee) default to the embedded ones."""
    if name == "judge":
        return judge_reward
    if name == "lee":
        if reward_model is None:
            from rhf_core.reward.model import load_reward_model

            reward_model = load_reward_model()
        return reward_model
    if name.startswith("rahf-") and name[5:] in ("alignment", "plausibility", "overall"):
        if predictor is None:
            from rhf_core.rahf import load_rahf

            predictor = load_rahf()
        score = name[5:]

        def rahf_reward(images, prompts):
            return np.asarray([p.scores[score] for p in predictor.predict(list(images), list(prompts))], np.float32)

        return rahf_reward
    raise RewardError(f"unknown reward {name!r}; choose one of {', '.join(REWARD_NAMES)}")
