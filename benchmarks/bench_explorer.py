"""Explorer responsiveness at 20,000 and 200,000 records, printed as JSON (and saved to
benchmarks/results/explorer.json).

Times full script reruns of the explorer page through Streamlit's AppTest (server-side work: the
filter, the gallery's 24 thumbnails, or a record with its overlays), after one warm-up run:
- changing the prompt filter and re-rendering the gallery,
- moving a score slider,
- opening a record (detail view with three overlays and the word chart),
- stepping to the next record,
- the Patches view over the filtered set (blobs of up to 500 records; each threshold a new scan),
- the Compare view of 4 records on one scale,
- the Map view's rerun with the embeddings already cached (a colour change),
- and, outside the app, tagging 1,000 records in a tag store that holds 5,000 tagged ones.
The 20,000 records are ShapesWorld (`shapes:n=20000,seed=0`); the 200,000 are a synthetic folder
dataset: 1,000 exported ShapesWorld records (images and heatmaps) listed 200 times under new ids,
so the frame, filters and gallery do the work of 200,000 records. The Map view's embeddings are
synthetic unit vectors written to the embeddings cache (embedding 200,000 images on CPU would take
hours; the rerun reads the cache either way). Targets (issue #24): a filter change or slider move
≤ 0.15 s at 20,000 and ≤ 0.30 s at 200,000; opening a record ≤ 0.10 s.

`--map` times the Map view's embeddings map instead (saved to benchmarks/results/explorer_map.json):
PCA of 20,000 synthetic 512-d unit embeddings, building the Scattergl figure, its JSON, the time
headless Chromium (Playwright; software WebGL, no GPU) takes from `Plotly.newPlot` to the next
frame (target ≤ 1 s), exact top-k neighbours at 20,000 and 200,000 × 512, the UMAP layout of the
20,000 (`--umap`, minutes), and embedding records with the shipped CLIP and RAHF image encoders.

    python benchmarks/bench_explorer.py [--n 20000] [--large 200000] [--repeat 5] [--map [--umap]]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


from common import save_result  # noqa: E402


TARGETS = {"filter_text_and_rerender_gallery": {20000: 0.15, 200000: 0.30},
           "move_score_slider_and_rerender_gallery": {20000: 0.15, 200000: 0.30},
           "open_record_with_overlays": {20000: 0.10, 200000: 0.10}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--large", type=int, default=200000, help="records of the synthetic folder (0: skip)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--map", action="store_true", help="time the embeddings map only")
    ap.add_argument("--umap", action="store_true", help="with --map: also the UMAP layout of --n points")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.map:
        save_result("explorer_map", time_map(args.n, args.repeat, args.umap))
        return
    result = {f"{args.n} records (shapes)": time_app(f"shapes:n={args.n},seed=0", args.repeat)}
    if args.large:
        result[f"{args.large} records (synthetic folder)"] = time_app(synthetic_folder(args.large), args.repeat)
    result["tag_1000_records_in_a_store_of_5000 (read, change, atomic write)"] = summary(time_tagging(args.repeat))
    result["note"] = ("server-side script time per rerun (AppTest with one script cache for all runs, as a "
                      "server has; median and max of --repeat); the browser adds its own paint time. target: "
                      "issue #24's bound; meets: median within it")
    save_result("explorer", result)


def summary(xs, digits: int = 3) -> dict:
    return {"median_s": round(statistics.median(xs), digits), "max_s": round(max(xs), digits)}


def server_like_script_cache() -> None:
    """One script cache for all AppTest runs, as a server keeps one. AppTest makes a new cache per
    run, so every run recompiled app.py and the page through Streamlit's magic AST pass: 0.13-0.25 s
    of each measured rerun here (cProfile), which a running server spends once."""
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache
    from streamlit.testing.v1 import app_test, local_script_runner

    shared = ScriptCache()
    app_test.ScriptCache = local_script_runner.ScriptCache = lambda: shared


def time_app(spec: str, repeat: int) -> dict:
    """Rerun times of the explorer on `spec` (see the module docstring)."""
    from streamlit.testing.v1 import AppTest

    from rhf_core.data import open_dataset

    server_like_script_cache()

    t = time.perf_counter()
    ds = open_dataset(spec)  # builds (or reads) the cached frame, as the first visitor would
    build_s = time.perf_counter() - t
    seed_map_cache(ds)

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=900)
    at.query_params["ds"] = spec
    at.run()
    at.switch_page("app_pages/explorer.py").run()
    assert not at.exception, at.exception

    words = ["red", "circle", "two", "sky", "star", "blue", "grass", "three"]
    filter_s, slider_s, open_s, next_s = [], [], [], []
    for i in range(repeat):
        at.segmented_control(key="view").set_value("Gallery").run()
        filter_s.append(timed(lambda: at.text_input(key="q").input(words[i % len(words)]).run()))
        slider_s.append(timed(lambda: at.slider(key="s_plausibility").set_range(0.0, 0.5 + 0.05 * i).run()))
        button = next(b for b in at.button if b.key and b.key.startswith("open_"))
        open_s.append(timed(lambda: button.click().run()))
        nxt = next(b for b in at.button if b.label == "Next ▶")
        next_s.append(timed(lambda: nxt.click().run()))
        assert not at.exception, at.exception

    at.text_input(key="q").input("").run()
    at.slider(key="s_plausibility").set_range(0.0, 1.0).run()
    at.segmented_control(key="view").set_value("Patches").run()
    patches_s, compare_s, map_s = [], [], []
    for i in range(repeat):
        patches_s.append(timed(lambda: at.slider(key="patch_threshold").set_value(0.1 + 0.05 * i).run()))
    at.segmented_control(key="view").set_value("Compare").run()
    for i in range(repeat):
        chosen = ", ".join(ds.ids[4 * i: 4 * i + 4])
        compare_s.append(timed(lambda: at.text_input(key="cmp").input(chosen).run()))
    at.segmented_control(key="view").set_value("Map").run()  # the first visit reads the cache and fits PCA
    assert at.get("plotly_chart"), "the Map view drew no chart"
    for i in range(repeat):
        colour = ("plausibility", "alignment")[i % 2]
        map_s.append(timed(lambda: at.selectbox(key="map_colour").set_value(colour).run()))
    assert not at.exception, at.exception

    timings = {"filter_text_and_rerender_gallery": filter_s, "move_score_slider_and_rerender_gallery": slider_s,
               "open_record_with_overlays": open_s, "next_record": next_s,
               "patches_view_new_threshold (scan of up to 500 records)": patches_s, "compare_4_records": compare_s,
               "map_view_colour_change (embeddings cached)": map_s}
    out = {"records": len(ds), "spec": spec if spec.startswith("shapes") else "folder: (synthetic, see docstring)",
           "first_open_s (frame built or read from cache)": round(build_s, 2)}
    for name, xs in timings.items():
        out[name] = summary(xs)
        bound = TARGETS.get(name, {}).get(200000 if len(ds) > 20000 else 20000)
        if bound is not None:
            out[name] |= {"target_s": bound, "meets": statistics.median(xs) <= bound}
    return out


def synthetic_folder(n: int, base: int = 1000) -> str:
    """A folder spec of `n` records: `base` exported ShapesWorld records listed n/base times under new
    ids (made once under the runtime cache; real images and heatmaps, shared between copies)."""
    import json

    from rhf_core.cache import atomic_write_text, cache_dir
    from rhf_core.data import export, open_dataset

    root = cache_dir("bench", f"explorer-{n}-of-{base}")
    labels = root / "labels.jsonl"
    if not labels.exists():
        src = root / "base"  # inside the folder: the reader refuses paths that leave it
        if not (src / "labels.jsonl").exists():
            export(open_dataset(f"shapes:n={base},seed=0"), src, overwrite=True)
        lines = (src / "labels.jsonl").read_text().splitlines()
        out = []
        for i in range(n):
            entry = json.loads(lines[i % len(lines)])
            entry["id"] = f"s{i:06d}"
            entry["image"] = f"base/{entry['image']}" if entry["image"] else None
            entry["heatmaps"] = {k: f"base/{v}" for k, v in entry["heatmaps"].items()}
            out.append(json.dumps(entry))
        atomic_write_text(labels, "\n".join(out) + "\n")
    return f"folder:{root}"


def seed_map_cache(ds, seed: int = 0) -> None:
    """Synthetic unit embeddings of `ds` written where the Map view looks for the shipped CLIP's ones,
    so the Map rerun is timed on a cached visit without embedding every image first."""
    import numpy as np

    from rhf_core.embeddings import embeddings_path, save_cached
    from rhf_core.reward.encoders import load_encoders

    encoders = load_encoders(device="cpu")
    path = embeddings_path(ds, encoders)
    if not path.exists():
        emb = np.random.default_rng(seed).normal(size=(len(ds), encoders.dim)).astype(np.float32)
        save_cached(path, emb / np.linalg.norm(emb, axis=1, keepdims=True))


def time_tagging(repeat: int) -> list[float]:
    """Seconds to tag 1,000 records when 5,000 already carry tags (a temporary store, not cache/)."""
    import tempfile

    from rhf_core.tags import TagStore

    with tempfile.TemporaryDirectory() as tmp:
        store = TagStore("bench", tmp)
        store.add([f"r{i}" for i in range(5000)], "seen")
        return [timed(lambda: store.add([f"r{j}" for j in range(1000 * i, 1000 * (i + 1))], f"t{i}"))
                for i in range(repeat)]


def synthetic_map_inputs(n: int, dim: int = 512, seed: int = 0):
    """Unit embeddings in 20 noisy clusters (like prompts' groups), a score column and 70 % passing."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    emb = (centres[rng.integers(20, size=n)] + 0.7 * rng.normal(size=(n, dim))).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    frame = pd.DataFrame({"id": [f"r{i:06d}" for i in range(n)], "plausibility": rng.random(n)})
    return emb, frame, rng.random(n) < 0.7


def time_map(n: int, repeat: int, with_umap: bool) -> dict:
    from rhf_core.embeddings import more_like, pca_2d
    from ui.explorer_parts import map_figure

    emb, frame, inside = synthetic_map_inputs(n)
    pca_s = [timed(lambda: pca_2d(emb)) for _ in range(repeat)]
    xy = pca_2d(emb)
    figure_s = [timed(lambda: map_figure(xy, frame, inside, "plausibility")) for _ in range(repeat)]
    fig = map_figure(xy, frame, inside, "plausibility")
    json_s = [timed(fig.to_json) for _ in range(repeat)]
    draw_s, webgl = browser_draw(fig.to_json(), repeat)
    result = {
        "points": n, "embedding_dim": emb.shape[1],
        "pca_2d": summary(pca_s, 4),
        "build_scattergl_figure": summary(figure_s, 4),
        "figure_to_json": summary(json_s, 4) | {"megabytes": round(len(fig.to_json()) / 1e6, 2)},
        "browser_newPlot_to_next_frame": (summary(draw_s, 4) | {"target_s": 1.0, "meets": statistics.median(draw_s) <= 1.0}
                                          if draw_s else "not measured (no playwright/chromium)"),
        "browser_webgl": webgl,
    }
    for rows in (n, 10 * n):  # exact top-k cosine: one matrix-vector product over normalised float32 rows
        big = emb if rows == n else synthetic_map_inputs(rows)[0]
        more_like(big, 0, 8)  # touch the pages once
        wall, cpu = [], []
        for i in range(max(repeat, 10)):
            t, c = time.perf_counter(), time.process_time()
            more_like(big, 1 + 997 * i, 8)
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        result[f"more_like_this_k8 at {rows} x {big.shape[1]} (exact, brute force)"] = summary(wall, 4) | {
            "cpu_median_s (all BLAS threads)": round(statistics.median(cpu), 4)}
        del big
    if with_umap:
        from rhf_core.embeddings import umap_2d

        t = time.perf_counter()
        import umap  # noqa: F401  (numba's import cost, paid once per process)

        import_s = time.perf_counter() - t
        umap_2d(emb[:200])  # the first fit compiles numba code: timed separately
        compile_s = time.perf_counter() - t - import_s
        result[f"umap_2d at {n} x {emb.shape[1]} (unseeded, all cores)"] = {
            "seconds": round(timed(lambda: umap_2d(emb)), 1), "import_s": round(import_s, 1),
            "first_fit_compile_s (200 points)": round(compile_s, 1)}
    result["embed_records_per_s"] = embedding_rates()
    result["note"] = ("synthetic 512-d embeddings (20 noisy clusters); CPU only; headless Chromium with "
                      "--disable-gpu (SwiftShader WebGL); embedding rates on 256 ShapesWorld records")
    return result


def embedding_rates(n: int = 256) -> dict:
    """Records per second through each embeddings source (images rendered beforehand, not timed)."""
    from rhf_core.data import open_dataset
    from rhf_core.embeddings import image_embedder, record_images
    from rhf_core.rahf import load_rahf
    from rhf_core.reward.encoders import load_encoders

    ds = open_dataset(f"shapes:n={n},seed=7")
    out = {}
    for name, model in (("shipped CLIP (clip-shapes)", load_encoders(device="cpu")),
                        ("shipped RAHF image encoder (rahf-shapes)", load_rahf(device="cpu"))):
        embedder = image_embedder(model)
        images, _ = record_images(ds, 0, n, embedder.input_size)
        embedder.embed_images(images[:8])  # warm-up
        out[name] = round(n / timed(lambda: embedder.embed_images(images, batch_size=64)), 1)
    return out


def browser_draw(fig_json: str, repeat: int) -> tuple[list[float], bool | None]:
    """Seconds from Plotly.newPlot to the frame after it resolves, in headless Chromium, per page load."""
    import tempfile

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return [], None
    from plotly.offline import get_plotlyjs

    sys.path.insert(0, str(ROOT / "tests"))
    from browser_support import CHROMIUM, CHROMIUM_ARGS

    html = ("<html><body><div id='g' style='width:900px;height:560px'></div><script>" + get_plotlyjs()
            + "</script><script>const fig = " + fig_json + "; window.drawn = null; const t0 = performance.now();"
            "Plotly.newPlot('g', fig.data, fig.layout).then(() => requestAnimationFrame(() => {"
            "window.drawn = (performance.now() - t0) / 1000; }));</script></body></html>")
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        page_path = Path(tmp) / "map.html"
        page_path.write_text(html)
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        out = []
        for _ in range(repeat):
            page.goto(page_path.as_uri())
            page.wait_for_function("window.drawn !== null", timeout=60000)
            out.append(float(page.evaluate("window.drawn")))
        webgl = bool(page.evaluate("!!document.createElement('canvas').getContext('webgl')"))
        assert page.evaluate("document.querySelectorAll('#g canvas').length") > 0, "no WebGL canvas was drawn"
        browser.close()
    return out, webgl


if __name__ == "__main__":
    main()
