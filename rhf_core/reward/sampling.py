"""Rejection sampling (Lee et al. sec. 5): generate n images per prompt, keep the k with the highest reward."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from rhf_core.reward.model import RewardError


@dataclass
class Sampled:
    prompt: str
    images: list[Image.Image]  # all n, in sample order (sample j reproduces with the seed)
    rewards: np.ndarray  # n rewards
    best: np.ndarray  # indices of the k best, highest reward first

    @property
    def best_images(self) -> list[Image.Image]:
        return [self.images[i] for i in self.best]

    @property
    def best_rewards(self) -> np.ndarray:
        return self.rewards[self.best]


def top_k(rewards: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest rewards, largest first (ties keep sample order)."""
    return np.argsort(-np.asarray(rewards), kind="stable")[:k]


def rejection_sample(generator, prompts: Sequence[str], n: int = 16, k: int = 4, reward: Callable | None = None,
                     seed: int = 0, steps: int = 25, guidance: float = 7.5,
                     progress: Callable[[str, float], None] | None = None, timings: dict | None = None) -> list[Sampled]:
    """The best k of n samples per prompt by `reward(images, prompts)`, with all n kept for plots."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise RewardError("the prompt set is empty")
    if not 1 <= k <= n:
        raise RewardError(f"k must be between 1 and n: asked for the best {k} of {n}")
    if reward is None:
        raise RewardError("no reward given")
    report = progress or (lambda stage, f: None)
    t0 = time.perf_counter()
    images = generator.generate(list(prompts), n=n, seed=seed, steps=steps, guidance=guidance,
                                progress=lambda d, t: report("generating", d / t))
    t1 = time.perf_counter()
    report("scoring", 0.0)
    flat = [im for imgs in images for im in imgs]
    scores = np.asarray(reward(flat, [p for p in prompts for _ in range(n)]), dtype=np.float32).reshape(len(prompts), n)
    t2 = time.perf_counter()
    if timings is not None:
        timings.update(generate_s=t1 - t0, score_s=t2 - t1)
    return [Sampled(p, imgs, sc, top_k(sc, k)) for p, imgs, sc in zip(prompts, images, scores)]
