"""Inpainting repair speed on CPU, printed as JSON (and saved to benchmarks/results/repair.json): the time
to repair one 64 px ShapesWorld image with n = 4 candidates (predict, mask, inpaint, score, judge).

    python benchmarks/bench_repair.py [--repeat 5]
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

from rhf_core.rahf import load_rahf  # noqa: E402
from rhf_core.repair import repair  # noqa: E402
from rhf_core.shapes.dataset import generate_sample  # noqa: E402
from rhf_core.t2i import load_generator  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rahf, gen = load_rahf(device="cpu"), load_generator(device="cpu")
    samples = [s for s in (generate_sample(i, seed=21) for i in range(60)) if s.region("implausibility").any()]
    times, stages = [], []
    for r in range(args.repeat + 1):
        s = samples[r % len(samples)]
        marks = {}
        t = time.perf_counter()
        res = repair(s.image(), s.prompt, threshold=0.5, threshold_mode="relative", dilation=3, n=4, seed=r,
                     predictor=rahf, generator=gen, progress=lambda stage, f: marks.setdefault(stage, time.perf_counter()))
        if r:  # the first run warms up
            times.append(time.perf_counter() - t)
            stages.append(marks.get("scoring", t) - marks.get("inpainting", t))
        assert not res.empty
    save_result("repair", {
        "predictor": str(rahf.name), "generator": gen.describe(), "image_px": 64, "candidates": 4, "steps": 25,
        "repair_seconds_median": round(float(np.median(times)), 3),
        "inpainting_seconds_median": round(float(np.median(stages)), 3),
        "repeat": args.repeat,
    })


if __name__ == "__main__":
    main()
