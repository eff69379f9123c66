"""Reward-guided vs unguided sampling time on the embedded generator, printed as JSON (and saved to
benchmarks/results/guidance.json): 16 samples × 25 steps, the same seeds, guided by a differentiable
reward at every step (one VAE decode + reward forward/backward per step on top of the UNet).

    python benchmarks/bench_guidance.py [--generator DIR] [--reward rahf-plausibility] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save_result  # noqa: E402

from rhf_core.reward.rewards import get_reward  # noqa: E402
from rhf_core.t2i import load_generator  # noqa: E402

PROMPT = "two red circles on the grass"


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", default="")
    ap.add_argument("--reward", default="rahf-plausibility")
    ap.add_argument("--scale", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    gen = load_generator(args.generator or None, device="cpu")
    reward = get_reward(args.reward)
    gen.generate("one circle", n=2, steps=2)  # warm-up, both paths
    gen.generate("one circle", n=2, steps=2, reward_guidance=reward, reward_scale=args.scale)
    plain, guided = [], []
    for r in range(args.repeat):  # interleaved, so a busy machine slows both alike
        plain.append(timed(lambda: gen.generate(PROMPT, n=16, seed=r, steps=25, guidance=7.5)))
        guided.append(timed(lambda: gen.generate(PROMPT, n=16, seed=r, steps=25, guidance=7.5,
                                                 reward_guidance=reward, reward_scale=args.scale)))
    p, g = float(np.median(plain)), float(np.median(guided))
    save_result("guidance", {
        "generator": gen.describe(),
        "reward": args.reward,
        "reward_scale": args.scale,
        "samples_16_steps_25_unguided_seconds_median": round(p, 3),
        "samples_16_steps_25_guided_seconds_median": round(g, 3),
        "guided_over_unguided_ratio": round(g / p, 2),
        "unguided_seconds_all": [round(x, 3) for x in plain],
        "guided_seconds_all": [round(x, 3) for x in guided],
        "repeat": args.repeat,
    })


if __name__ == "__main__":
    main()
