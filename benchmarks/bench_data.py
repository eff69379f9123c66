"""Data-layer timings, printed as JSON (and saved to benchmarks/results/data.json).

1. Opening a 20,000-record ShapesWorld dataset and building its frame: cold (generating every
   record) and warm (frame read back from cache/).
2. Decoding one 1024×1024 float16 list heatmap from a Rapidata-style parquet row: our
   pyarrow/numpy path versus the plain `np.array(row[...])` on the same row.

    python benchmarks/bench_data.py [--n 20000]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rhf_core.data import open_dataset  # noqa: E402
from rhf_core.sources.rapidata import decode_heatmap  # noqa: E402


def best_of(fn, repeat=5):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_shapes(n: int) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        os.environ["RHF_CACHE_DIR"] = cache
        t = time.perf_counter()
        ds = open_dataset("shapes", n=n, seed=0)
        _ = ds.frame
        cold = time.perf_counter() - t
        t = time.perf_counter()
        ds = open_dataset("shapes", n=n, seed=0)
        warm = time.perf_counter() - t
        f = ds.frame
        t = time.perf_counter()
        mask = (f["plausibility"] < 0.5) & f["prompt"].str.contains("red") & f["has_implausibility"]
        filtered = f[mask].sort_values("implausibility_mass", ascending=False)
        filter_s = time.perf_counter() - t
        rec_s = best_of(lambda: ds[123].image, 20)
    return {
        "records": n,
        "open_and_build_frame_cold_s": round(cold, 3),
        "open_frame_from_cache_s": round(warm, 4),
        "filter_and_sort_frame_s": round(filter_s, 5),
        "filtered_rows": int(len(filtered)),
        "load_one_record_with_image_s": round(rec_s, 5),
    }


def bench_heatmap_decode(side: int = 1024) -> dict:
    rng = np.random.default_rng(0)
    heat = rng.random((side, side)).astype(np.float16)
    rows = pa.ListArray.from_arrays(np.arange(0, side * side + 1, side, dtype=np.int32), pa.array(heat.ravel()))
    column = pa.ListArray.from_arrays(np.array([0, side], dtype=np.int32), rows)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "train-0.parquet"
        pq.write_table(pa.table({"alignment_heatmap": column}), path)
        table = pq.read_table(path)
    scalar = table.column("alignment_heatmap")[0]
    ours = best_of(lambda: decode_heatmap(scalar))
    row = table.slice(0, 1).to_pylist()[0]  # what a row-dict API (e.g. datasets) hands you
    plain = best_of(lambda: np.array(row["alignment_heatmap"]), 3)
    plain_with_conversion = best_of(lambda: np.array(table.slice(0, 1).to_pylist()[0]["alignment_heatmap"]), 3)
    np.testing.assert_allclose(decode_heatmap(scalar), np.array(row["alignment_heatmap"], dtype=np.float32))
    return {
        "heatmap_side": side,
        "ours_pyarrow_numpy_s": round(ours, 5),
        "plain_np_array_of_row_s": round(plain, 4),
        "plain_including_to_pylist_s": round(plain_with_conversion, 4),
        "speedup_vs_np_array": round(plain / ours, 1),
        "speedup_vs_to_pylist_plus_np_array": round(plain_with_conversion / ours, 1),
    }


from common import save_result  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    args = ap.parse_args()
    result = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "shapesworld": bench_shapes(args.n),
        "rapidata_heatmap_decode": bench_heatmap_decode(),
    }
    save_result("data", result)


if __name__ == "__main__":
    main()
