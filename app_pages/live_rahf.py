"""Live RAHF: predict rich feedback for uploaded images or dataset records, and find where the
predictor disagrees with the labels."""

import hashlib

import numpy as np
import pandas as pd
import streamlit as st

from rhf_core import metrics as M
from rhf_core.dataset import HEATMAP_NAMES, SCORE_NAMES, Record
from rhf_core.errors import RHFError
from rhf_core.heatmaps import COLOR_MAPS
from rhf_core.images import load_image
from rhf_core.rahf.analysis import DISAGREEMENT, analyse, prediction_zip, record_metrics
from ui.components import highlighted_prompt, record_view_image
from ui.settings import current_dataset, current_predictor

MODES = ["Upload images", "Dataset record", "Error analysis"]

st.title("Live RAHF")
rahf = current_predictor()
st.caption(f"Predictor: `{rahf.name}` ({rahf.config.variant}, {rahf.config.image_size} px input) on {rahf.device}.")
mode = st.segmented_control("Mode", MODES, default=None if "live_mode" in st.session_state else MODES[0],
                            key="live_mode", required=True)
c1, c2, c3 = st.columns(3)
heat = c1.segmented_control("Heatmap", list(HEATMAP_NAMES), key="live_heat", required=True,
                            default=None if "live_heat" in st.session_state else HEATMAP_NAMES[0])
opacity = c2.slider("Opacity", 0.0, 1.0, 0.6, 0.05, key="live_opacity")
cmap = c3.selectbox("Colour map", COLOR_MAPS, key="live_cmap")


def as_record(pred, image, prompt: str, rec_id: str = "prediction") -> Record:
    """A prediction shaped like a record, so the explorer's render helpers draw it."""
    return Record(rec_id, prompt, pred.scores, pred.heatmaps, pred.words, {}, _image=image)


def show_prediction(pred, image, prompt: str) -> None:
    left, right = st.columns([3, 2])
    left.image(record_view_image(as_record(pred, image, prompt), heat, opacity, cmap, 384),
               caption=f"predicted {heat}", width="stretch", output_format="PNG")
    with right:
        for s, col in zip(SCORE_NAMES, st.columns(2) + st.columns(2)):
            col.metric(s.capitalize(), f"{pred.scores[s]:.2f}")
        st.markdown(highlighted_prompt(as_record(pred, image, prompt)), unsafe_allow_html=True)
        flagged = pred.misaligned_words
        st.caption("Predicted misaligned: " + (", ".join(f"**{w}**" for w in flagged) if flagged else "none"))


# --- 1. Uploads --------------------------------------------------------------------------------

def upload_mode() -> None:
    files = st.file_uploader("Images (PNG, JPEG, WebP)", type=["png", "jpg", "jpeg", "webp"],
                             accept_multiple_files=True, key="live_files")
    if not files:
        st.info("Upload one or more images, give each its prompt, then predict.")
        return
    ready, prompts = [], []
    for n, f in enumerate(files):
        key = f"{n}_{hashlib.sha1(f.getvalue()).hexdigest()[:12]}"
        try:
            img = load_image(f.getvalue(), name=f.name)
        except RHFError as e:
            st.error(f"{f.name}: {e}")
            continue
        col_img, col_prompt = st.columns([1, 4])
        col_img.image(img, width=96)
        prompt = col_prompt.text_input(f"Prompt for {f.name}", key=f"prompt_{key}", placeholder="the prompt it was generated from")
        ready.append((f.name, img))
        prompts.append(prompt.strip())
    if not ready:
        return
    missing = [name for (name, _), p in zip(ready, prompts) if not p]
    if st.button("Predict", type="primary", key="live_predict"):
        if missing:
            st.warning("Give every image its prompt first (alignment and keywords depend on it): " + ", ".join(missing))
            return
        bar = st.progress(0.0, text="Predicting…")
        preds = rahf.predict([im for _, im in ready], prompts, progress=lambda d, t: bar.progress(d / t, text=f"Predicted {d} / {t}"))
        bar.empty()
        st.session_state["live_results"] = (list(zip([n for n, _ in ready], [im for _, im in ready], prompts)), preds)
    results = st.session_state.get("live_results")
    if results:
        items, preds = results
        for (name, img, prompt), pred in zip(items, preds):
            st.subheader(name)
            show_prediction(pred, img, prompt)
        st.download_button("Download predictions (JSON + heatmap PNGs)",
                           prediction_zip([(n.rsplit(".", 1)[0], p, pr) for (n, _, p), pr in zip(items, preds)]),
                           file_name="rahf-predictions.zip", mime="application/zip")


# --- 2. A dataset record beside its labels ------------------------------------------------------

def side_by_side(rec: Record) -> None:
    try:
        image = rec.image
    except RHFError as e:
        st.error(str(e))
        return
    if image is None:
        st.warning(f"{rec.id} has no image to predict on (labels only).")
        return
    pred = rahf.predict([rec.image], [rec.prompt])[0]
    st.markdown(f"`{rec.id}`")
    gt_col, pred_col = st.columns(2)
    gt_col.image(record_view_image(rec, heat, opacity, cmap, 320), width="stretch", output_format="PNG",
                 caption=f"labelled {heat}" if heat in rec.heatmaps else f"{heat}: not collected")
    pred_col.image(record_view_image(as_record(pred, rec.image, rec.prompt), heat, opacity, cmap, 320),
                   width="stretch", output_format="PNG", caption=f"predicted {heat}")
    gt_col.markdown(highlighted_prompt(rec), unsafe_allow_html=True)
    pred_col.markdown(highlighted_prompt(as_record(pred, rec.image, rec.prompt)), unsafe_allow_html=True)
    table = pd.DataFrame({"labelled": [rec.scores.get(s, np.nan) for s in SCORE_NAMES],
                          "predicted": [pred.scores[s] for s in SCORE_NAMES]}, index=SCORE_NAMES)
    st.dataframe(table.style.format("{:.3f}"), width="stretch")
    m = record_metrics(pred, rec)
    shown = {k: v for k, v in m.items() if k.startswith(("cc_", "nss_", "auc_judd_", "mse_", "word_f1", "abs_err_"))}
    if shown:
        st.caption("Per-record metrics")
        st.dataframe(pd.DataFrame([shown]).T.rename(columns={0: "value"}), width="stretch")


def record_mode() -> None:
    ds = current_dataset()
    pick = st.session_state.pop("live_pick", None)
    if pick:
        st.session_state["live_record_id"] = pick
    default = st.session_state.get("live_record_id") or (ds.ids[0] if len(ds) else "")
    rec_id = st.text_input("Record id", value=default, key="live_record_id")
    if st.button("Random record", key="live_random"):
        rec_id = ds.ids[np.random.default_rng().integers(len(ds))]
        st.session_state["live_pick"] = rec_id
        st.rerun()
    try:
        rec = ds.get(rec_id)
    except RHFError as e:
        st.error(str(e))
        return
    side_by_side(rec)


# --- 3. Error analysis over the explorer's filtered set -----------------------------------------

def open_in_record_mode(rec_id: str) -> None:
    st.session_state["live_pick"] = rec_id
    st.session_state["live_mode"] = "Dataset record"


def analysis_mode() -> None:
    ds = current_dataset()
    positions = st.session_state.get("explorer_positions")
    if positions is None or st.session_state.get("explorer_spec") != ds.spec:
        positions = np.arange(len(ds))
        source = "all records (filter them on the Dataset explorer page to narrow this down)"
    else:
        source = "the explorer's filtered set"
    limit = st.number_input("At most this many records", 10, 20000, min(500, max(len(positions), 10)), 50, key="live_limit")
    positions = np.asarray(positions)[: int(limit)]
    st.write(f"Run the predictor over **{len(positions):,}** records: {source}. Results are cached on disk, "
             "so a second run over the same records is instant.")
    if st.button("Run error analysis", type="primary", key="live_run"):
        bar = st.progress(0.0, text="Predicting…")
        table = analyse(rahf, ds, positions, progress=lambda d, t: bar.progress(d / max(t, 1), text=f"Predicted {d:,} / {t:,} new records"))
        bar.empty()
        st.session_state["live_analysis"] = ((ds.spec, rahf.weights_key), table)
    stored = st.session_state.get("live_analysis")
    if not stored or stored[0] != (ds.spec, rahf.weights_key):
        return
    table = stored[1]
    options = [c for c in DISAGREEMENT if c in table and table[c].notna().any()]
    if not options:
        st.info("These records have no labels to compare with.")
        return
    by = st.selectbox("Sort by disagreement", options, format_func=DISAGREEMENT.get, key="live_sort")
    ranked = table.sort_values(by, ascending=False, na_position="last")
    cols = ["id", "prompt", by] + [c for c in ("abs_err_plausibility", "abs_err_alignment", "cc_implausibility", "word_f1") if c in ranked and c != by]
    summary = {"records": len(table)}
    for s in SCORE_NAMES:
        if f"label_{s}" in table:
            both = table[[f"pred_{s}", f"label_{s}"]].dropna()
            summary[f"{s} SRCC"] = round(M.srcc(both.iloc[:, 0], both.iloc[:, 1]), 3)
    st.caption(" · ".join(f"{k}: {v}" for k, v in summary.items()))
    event = st.dataframe(ranked[cols], hide_index=True, on_select="rerun", selection_mode="single-row",
                         key="live_table", width="stretch")
    rows = event.selection.rows if event else []
    if rows:
        rec_id = str(ranked.iloc[rows[0]]["id"])
        st.button(f"Open {rec_id} side by side", on_click=open_in_record_mode, args=(rec_id,), key="live_open")
        side_by_side(ds.get(rec_id))


if mode == "Dataset record":
    record_mode()
elif mode == "Error analysis":
    analysis_mode()
else:
    upload_mode()
