"""Rejection sampling speed on CPU, printed as JSON (and saved to benchmarks/results/lee.json): the time
to rejection-sample 4 prompts × 16 images (keep 4) with each reward, and the share spent scoring.

    python benchmarks/bench_lee.py [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save_result  # noqa: E402

from rhf_core.reward import get_reward, rejection_sample  # noqa: E402
from rhf_core.t2i import load_generator  # noqa: E402

PROMPTS = ["two red circles on the grass", "a blue star", "three squares", "a triangle in the snow"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    gen = load_generator(device="cpu")
    gen.generate("one circle", n=2, steps=2)  # warm-up
    result = {"generator": gen.describe(), "prompts": len(PROMPTS), "n": 16, "k": 4, "steps": 25, "rewards": {}}
    for name in ("lee", "rahf-plausibility", "judge"):
        reward = get_reward(name)
        reward(gen.generate("one circle", n=2, steps=2)[0], ["one circle"] * 2)  # warm-up the reward
        runs = []
        for r in range(args.repeat):
            t: dict = {}
            rejection_sample(gen, PROMPTS, n=16, k=4, reward=reward, seed=r, timings=t)
            runs.append(t)
        gen_s = float(np.median([t["generate_s"] for t in runs]))
        score_s = float(np.median([t["score_s"] for t in runs]))
        result["rewards"][name] = {"total_seconds": round(gen_s + score_s, 3), "generate_seconds": round(gen_s, 3),
                                   "score_seconds": round(score_s, 3),
                                   "share_scoring": round(score_s / (gen_s + score_s), 4)}
    result.update(repeat=args.repeat, torch_threads=torch.get_num_threads(),
                  cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count(), torch=torch.__version__)
    save_result("lee", result)


if __name__ == "__main__":
    main()
