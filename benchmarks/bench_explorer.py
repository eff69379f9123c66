"""Explorer responsiveness on 20,000 ShapesWorld records, printed as JSON (and saved to
benchmarks/results/explorer.json).

Times full script reruns of the explorer page through Streamlit's AppTest (server-side work: the
filter, the gallery's 24 thumbnails, or a record with its overlays), after one warm-up run:
- changing the prompt filter and re-rendering the gallery,
- moving a score slider,
- opening a record (detail view with three overlays and the word chart),
- stepping to the next record,
- the Patches view over the filtered set (blobs of up to 500 records; each threshold a new scan),
- the Compare view of 4 records on one scale,
- and, outside the app, tagging 1,000 records in a tag store that holds 5,000 tagged ones.

`--map` times the Map view's embeddings map instead (saved to benchmarks/results/explorer_map.json):
PCA of 20,000 synthetic 512-d unit embeddings, building the Scattergl figure, its JSON, and the time
headless Chromium (Playwright; software WebGL, no GPU) takes from `Plotly.newPlot` to the next frame.

    python benchmarks/bench_explorer.py [--n 20000] [--repeat 5] [--map]
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--map", action="store_true", help="time the embeddings map only")
    args = ap.parse_args()
    if args.map:
        save_result("explorer_map", time_map(args.n, args.repeat))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from streamlit.testing.v1 import AppTest

    from rhf_core.data import open_dataset

    spec = f"shapes:n={args.n},seed=0"
    t = time.perf_counter()
    ds = open_dataset(spec)  # builds (or reads) the cached frame, as the first visitor would
    build_s = time.perf_counter() - t

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.query_params["ds"] = spec
    at.run()
    at.switch_page("app_pages/explorer.py").run()
    assert not at.exception, at.exception

    words = ["red", "circle", "two", "sky", "star", "blue", "grass", "three"]
    filter_s, slider_s, open_s, next_s = [], [], [], []
    for i in range(args.repeat):
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
    patches_s, compare_s = [], []
    for i in range(args.repeat):
        patches_s.append(timed(lambda: at.slider(key="patch_threshold").set_value(0.1 + 0.05 * i).run()))
    at.segmented_control(key="view").set_value("Compare").run()
    for i in range(args.repeat):
        chosen = ", ".join(ds.ids[4 * i: 4 * i + 4])
        compare_s.append(timed(lambda: at.text_input(key="cmp").input(chosen).run()))
    assert not at.exception, at.exception
    tag_s = time_tagging(args.repeat)

    def summary(xs):
        return {"median_s": round(statistics.median(xs), 3), "max_s": round(max(xs), 3)}

    result = {
        "records": args.n,
        "first_open_s (frame built or read from cache)": round(build_s, 2),
        "filter_text_and_rerender_gallery": summary(filter_s),
        "move_score_slider_and_rerender_gallery": summary(slider_s),
        "open_record_with_overlays": summary(open_s),
        "next_record": summary(next_s),
        "patches_view_new_threshold (scan of up to 500 records)": summary(patches_s),
        "compare_4_records": summary(compare_s),
        "tag_1000_records_in_a_store_of_5000 (read, change, atomic write)": summary(tag_s),
        "note": "server-side script time per rerun (AppTest); the browser adds its own paint time",
    }
    save_result("explorer", result)


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


def time_map(n: int, repeat: int) -> dict:
    from rhf_core.embeddings import more_like, pca_2d
    from ui.explorer_parts import map_figure

    emb, frame, inside = synthetic_map_inputs(n)
    pca_s = [timed(lambda: pca_2d(emb)) for _ in range(repeat)]
    xy = pca_2d(emb)
    figure_s = [timed(lambda: map_figure(xy, frame, inside, "plausibility")) for _ in range(repeat)]
    fig = map_figure(xy, frame, inside, "plausibility")
    json_s = [timed(fig.to_json) for _ in range(repeat)]
    neighbours_s = [timed(lambda: more_like(emb, i, 8)) for i in range(repeat)]
    draw_s, webgl = browser_draw(fig.to_json(), repeat)

    def summary(xs):
        return {"median_s": round(statistics.median(xs), 4), "max_s": round(max(xs), 4)}

    return {
        "points": n, "embedding_dim": emb.shape[1],
        "pca_2d": summary(pca_s),
        "build_scattergl_figure": summary(figure_s),
        "figure_to_json": summary(json_s) | {"megabytes": round(len(fig.to_json()) / 1e6, 2)},
        "more_like_this_k8 (exact, brute force)": summary(neighbours_s),
        "browser_newPlot_to_next_frame": summary(draw_s) if draw_s else "not measured (no playwright/chromium)",
        "browser_webgl": webgl,
        "note": "synthetic 512-d embeddings; CPU only; headless Chromium with --disable-gpu (SwiftShader WebGL)",
    }


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
