"""Peak memory of RAHF training on generated RichHF-18K-format data (TFRecords + Pick-a-Pic parquet,
512 px images and 512×512 maps like the real set), printed as JSON and saved to
benchmarks/results/rahf_train.json.

Each run is a fresh process that trains a small scratch RAHF at `--size` px on N training records and
64 dev records (the dev split stays fixed, so only the training split grows), then validates and
calibrates on dev; its peak RSS (ru_maxrss) is reported with the decode time per record and the
on-disk cache size. The streaming path (the default `preload_mb`) should stay flat as N doubles; the
in-memory path (`preload_mb` above the split's size, the old behaviour) grows with N.

An epoch is capped at `--steps` optimiser steps (a 384 px step takes seconds on a CPU): every
O(N) part — the frame, the decode pass, the cache, the labels, the shuffled order — runs in full;
the uncapped rest of the epoch would read more rows of the same size.

    python benchmarks/bench_rahf_train.py [--counts 2000 4000] [--memory-counts 500 1000] [--size 384] [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save_result  # noqa: E402
from rhf_core.rahf.train import TrainConfig  # noqa: E402
from tests.test_rahf_scale import richhf_spec, write_richhf_records  # noqa: E402

DEV_RECORDS = 64

CHILD = r'''
import json, resource, sys, time
import rhf_core.rahf.train as T
from rhf_core.rahf import RAHFConfig, TextConfig, VisionConfig

a = json.loads(sys.argv[1])
model = RAHFConfig(image_size=a["size"], vision=VisionConfig(patch_size=32, dim=32, layers=1, heads=2),
                   text=TextConfig(vocab_buckets=256, dim=32, layers=1, heads=2), fusion_dim=32, fusion_layers=1,
                   fusion_heads=2)
cfg = T.TrainConfig(data=a["spec"], out=a["out"] + "/run", state_dir=a["out"] + "/state", epochs=1, batch_size=8,
                    model=model, preload_mb=a["preload_mb"])
timing = {}
real = T.split_arrays
def timed(ds, *args):
    t = time.perf_counter(); arr = real(ds, *args); timing.setdefault("decode_s", []).append(time.perf_counter() - t)
    return arr
T.split_arrays = timed
steps = [0]
def stop():
    steps[0] += 1
    return steps[0] >= a["steps"]
t0 = time.perf_counter()
T.train_rahf(cfg, resume=False, should_stop=stop)
print("RESULT " + json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                              "train_decode_s": timing["decode_s"][0], "total_s": time.perf_counter() - t0,
                              "steps": min(steps[0], a["steps"])}))
'''


def run(spec: str, out: Path, size: int, steps: int, preload_mb: float, cache_root: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RHF_CACHE_DIR": str(cache_root), "PYTHONPATH": str(ROOT)}
    args = json.dumps({"spec": spec, "out": str(out), "size": size, "steps": steps, "preload_mb": preload_mb})
    done = subprocess.run([sys.executable, "-c", CHILD, args], capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    cache = out / "state" / "decoded"
    result["cache_mb"] = round(sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2 ** 20, 1) if cache.exists() else 0
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", type=int, nargs="+", default=[2000, 4000], help="training records, streaming path")
    ap.add_argument("--memory-counts", type=int, nargs="*", default=[500, 1000], help="training records, in-memory path")
    ap.add_argument("--size", type=int, default=384, help="model input resolution (px)")
    ap.add_argument("--steps", type=int, default=12, help="optimiser steps per run (batch 8)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_rahf_train_") as tmp:
        tmp = Path(tmp)
        for path, counts, preload in (("streaming", args.counts, TrainConfig.preload_mb), ("in memory", args.memory_counts, 1e9)):
            for n in counts:
                data = tmp / f"data-{n}"
                if not data.exists():
                    t = time.perf_counter()
                    write_richhf_records(data, {"train": n, "dev": DEV_RECORDS}, side=512, seed=n, row_group=100)
                    print(f"generated {n} + {DEV_RECORDS} records in {time.perf_counter() - t:.0f} s", file=sys.stderr)
                spec = richhf_spec(data / "richhf", data / "pickapic")
                r = run(spec, tmp / f"run-{path[:3]}-{n}", args.size, args.steps, preload, tmp / "cache")
                r.update(path=path, train_records=n, decode_ms_per_record=round(1000 * r["train_decode_s"] / n, 2))
                print(json.dumps(r), file=sys.stderr)
                rows.append(r)
    save_result("rahf_train", {
        "what": f"peak RSS of train-rahf (one process, scratch RAHF at {args.size} px, batch 8, {args.steps} steps, "
                f"{DEV_RECORDS} dev records validated and calibrated) on generated RichHF-format data",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared)",
        "runs": rows,
    })


if __name__ == "__main__":
    main()
