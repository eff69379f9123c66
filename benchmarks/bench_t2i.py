"""Embedded generator speed on CPU, printed as JSON (and saved to benchmarks/results/t2i.json):
images per second for 16 samples × 25 steps at 64 px, and the time of one 4-candidate inpaint.

    python benchmarks/bench_t2i.py [--generator DIR] [--repeat 3]
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

from rhf_core.t2i import load_generator  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", default="")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    gen = load_generator(args.generator or None, device="cpu")
    gen.generate("one circle", n=2, steps=2)  # warm-up
    times = []
    for r in range(args.repeat):
        t = time.perf_counter()
        gen.generate("two red circles on the grass", n=16, seed=r, steps=25, guidance=7.5)
        times.append(time.perf_counter() - t)
    image = gen.generate("a blue square", n=1, seed=0, steps=25)[0][0]
    mask = np.zeros((64, 64), bool)
    mask[16:40, 16:40] = True
    inpaint = []
    for r in range(args.repeat):
        t = time.perf_counter()
        gen.inpaint(image, mask, "a blue square", n=4, seed=r, steps=25)
        inpaint.append(time.perf_counter() - t)
    med = float(np.median(times))
    save_result("t2i", {
        "generator": gen.describe(),
        "samples_16_steps_25_seconds_median": round(med, 3),
        "images_per_second": round(16 / med, 2),
        "inpaint_n4_steps_25_seconds_median": round(float(np.median(inpaint)), 3),
        "repeat": args.repeat,
    })


if __name__ == "__main__":
    main()
