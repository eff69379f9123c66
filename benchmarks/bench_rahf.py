"""RAHF inference speed on CPU for the embedded checkpoint, printed as JSON (and saved to
benchmarks/results/rahf.json): p50/p90 latency of one prediction, and batched throughput.

    python benchmarks/bench_rahf.py [--checkpoint DIR] [--repeat 30]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rhf_core.data import open_dataset  # noqa: E402
from rhf_core.rahf import load_rahf  # noqa: E402


from common import save_result  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="")
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    model = load_rahf(args.checkpoint or None, device="cpu")
    ds = open_dataset("shapes:n=300,seed=9")
    recs = [ds[i] for i in range(256)]
    images, prompts = [r.image for r in recs], [r.prompt for r in recs]
    model.predict(images[:4], prompts[:4])  # warm-up
    single = []
    for i in range(args.repeat):
        t = time.perf_counter()
        model.predict([images[i]], [prompts[i]])
        single.append(time.perf_counter() - t)
    batched = {}
    for bs in (16, 64):
        t = time.perf_counter()
        model.predict(images, prompts, batch_size=bs)
        batched[f"batch_{bs}_images_per_s"] = round(len(images) / (time.perf_counter() - t), 1)
    result = {
        "checkpoint": str(model.path),
        "parameters": int(sum(p.numel() for p in model.model.parameters())),
        "weights_mb": round(os.path.getsize(Path(model.path) / "model.safetensors") / 2**20, 2),
        "device": "cpu", "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "single_image_latency_p50_ms": round(1000 * float(np.median(single)), 2),
        "single_image_latency_p90_ms": round(1000 * float(np.percentile(single, 90)), 2),
        **batched,
    }
    save_result("rahf", result)


if __name__ == "__main__":
    main()
