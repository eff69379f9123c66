"""Live RAHF: predict rich feedback for uploaded images or dataset records, and find where the
predictor disagrees with the labels."""

import hashlib

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from rhf_core import metrics as M
from rhf_core.dataset import HEATMAP_NAMES, SCORE_NAMES, Record
from rhf_core.error_compare import DEFAULT_THRESHOLDS, VERDICTS, compare_errors
from rhf_core.errors import RHFError
from rhf_core.heatmaps import COLOR_MAPS
from rhf_core.images import load_image
from rhf_core.rahf.analysis import DISAGREEMENT, analyse, prediction_zip, record_metrics
from rhf_core.rahf.domain import check_domain, predictor_domain, trained_on_message, usable_stats
from ui.components import (
    format_metric,
    heat_colour_bar,
    highlighted_prompt,
    overlays_on_one_scale,
    record_view_image,
    remember,
    restore,
    thumbnail_uri,
)
from ui.loaders import load_predictor
from ui.settings import current_dataset, current_predictor, error_text, load_model_field, policy

MODES = ["Upload images", "Dataset record", "Error analysis"]
MAX_THUMBS = 100  # rows of an error table given a thumbnail: the most-disagreeing ones (~3.5 KB each)
VERDICT_COLOURS = dict(zip(VERDICTS, ("#2ca02c", "#1f77b4", "#ff7f0e", "#d62728")))

st.title("Live RAHF")
rahf = current_predictor()
domain_stats, no_check_reason = usable_stats(rahf)
st.caption(f"Predictor: `{rahf.name}` ({rahf.config.variant}, {rahf.config.image_size} px input) on {rahf.device}. "
           f"{trained_on_message(predictor_domain(rahf, domain_stats))}"
           + (" Each image is checked against it." if domain_stats else f" No domain check: {no_check_reason}."))
# Mode and heatmap come back as they were after a visit to another page (Streamlit drops the state of
# widgets a page switch leaves undrawn; `restore` refills it from a copy that is not a widget's).
restore("live_mode", MODES[0])
mode = remember("live_mode", st.segmented_control("Mode", MODES, key="live_mode", required=True))
c1, c2, c3 = st.columns(3)
restore("live_heat", HEATMAP_NAMES[0])
heat = remember("live_heat", c1.segmented_control("Heatmap", list(HEATMAP_NAMES), key="live_heat", required=True))
opacity = c2.slider("Opacity", 0.0, 1.0, 0.6, 0.05, key="live_opacity")
cmap = c3.selectbox("Colour map", COLOR_MAPS, key="live_cmap")


def as_record(pred, image, prompt: str, rec_id: str = "prediction") -> Record:
    """A prediction shaped like a record, so the explorer's render helpers draw it."""
    return Record(rec_id, prompt, pred.scores, pred.heatmaps, pred.words, {}, _image=image)


def show_domain(check) -> None:
    """Beside a result: a plain warning when the image is unlike the predictor's training images."""
    if check.status == "out":
        st.warning(check.message, icon="⚠️")
    elif check.status == "in":
        st.caption(f"Domain check: like the images it was trained on (distance {check.distance:.1f}, "
                   f"threshold {check.threshold:.1f}).")


def show_prediction(pred, image, prompt: str, check) -> None:
    show_domain(check)
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
    ready, prompts, digests = [], [], []
    for f in files:
        data = f.getvalue()
        digest = hashlib.sha1(data).hexdigest()
        # A prompt field is keyed by the file's content (and which copy of it), not its position, so
        # removing one file keeps the other files' prompts.
        key = f"{digest[:12]}_{digests.count(digest)}"
        digests.append(digest)
        try:
            img = load_image(data, name=f.name)
        except RHFError as e:
            st.error(error_text(e))  # the message already names the file
            continue
        col_img, col_prompt = st.columns([1, 4])
        col_img.image(img, width=96)
        prompt = col_prompt.text_input(f"Prompt for {f.name}", key=f"prompt_{key}", placeholder="the prompt it was generated from")
        ready.append((f.name, digest, img))
        prompts.append(prompt.strip())
    if not ready:
        return
    # A prediction belongs to exactly these files (by content), prompts and checkpoint: any change
    # makes the stored one stale, so it is neither shown nor offered for download.
    inputs_key = hashlib.sha1(repr(([(n, d) for n, d, _ in ready], prompts, rahf.weights_key)).encode()).hexdigest()
    missing = [name for (name, _, _), p in zip(ready, prompts) if not p]
    if st.button("Predict", type="primary", key="live_predict"):
        if missing:
            st.warning("Give every image its prompt first (alignment and keywords depend on it): " + ", ".join(missing))
            return
        bar = st.progress(0.0, text="Predicting…")
        try:  # e.g. a prompt without a word ("."): RAHF refuses it with a message
            preds = rahf.predict([im for _, _, im in ready], prompts, progress=lambda d, t: bar.progress(d / t, text=f"Predicted {d} / {t}"))
            checks = check_domain(rahf, [im for _, _, im in ready], domain_stats)
        except RHFError as e:
            st.error(error_text(e))
            return
        finally:
            bar.empty()
        st.session_state["live_results"] = (inputs_key, list(zip([n for n, _, _ in ready], [im for _, _, im in ready],
                                                                 prompts)), preds, checks)
    results = st.session_state.get("live_results")
    if results and results[0] != inputs_key:
        st.info("The images or prompts changed since the last prediction: press **Predict** to predict again.")
        return
    if results:
        _, items, preds, checks = results
        for (name, img, prompt), pred, check in zip(items, preds, checks):
            st.subheader(name)
            show_prediction(pred, img, prompt, check)
        st.download_button("Download predictions (JSON + heatmap PNGs)",
                           prediction_zip([(n.rsplit(".", 1)[0], p, pr) for (n, _, p), pr in zip(items, preds)]),
                           file_name="rahf-predictions.zip", mime="application/zip")


# --- 2. A dataset record beside its labels ------------------------------------------------------

def side_by_side(rec: Record) -> None:
    try:
        image = rec.image
        if image is not None:
            image = load_image(image, name=rec.id)
    except RHFError as e:
        st.error(error_text(e))
        return
    if image is None:
        st.warning(f"{rec.id} has no image to predict on (labels only).")
        return
    try:
        pred = rahf.predict([image], [rec.prompt])[0]
    except RHFError as e:  # e.g. a record whose prompt has no word
        st.error(f"`{rec.id}`: {error_text(e)}")
        return
    st.markdown(f"`{rec.id}`")
    show_domain(check_domain(rahf, [image], domain_stats)[0])
    gt_col, pred_col = st.columns(2)
    gt_col.image(record_view_image(rec, heat, opacity, cmap, 320), width="stretch", output_format="PNG",
                 caption=f"labelled {heat}" if heat in rec.heatmaps else f"{heat}: not collected")
    pred_col.image(record_view_image(as_record(pred, image, rec.prompt), heat, opacity, cmap, 320),
                   width="stretch", output_format="PNG", caption=f"predicted {heat}")
    gt_col.markdown(highlighted_prompt(rec), unsafe_allow_html=True)
    pred_col.markdown(highlighted_prompt(as_record(pred, image, rec.prompt)), unsafe_allow_html=True)
    table = pd.DataFrame({"labelled": [rec.scores.get(s, np.nan) for s in SCORE_NAMES],
                          "predicted": [pred.scores[s] for s in SCORE_NAMES]}, index=SCORE_NAMES)
    st.dataframe(table.style.format("{:.3f}"), width="stretch")
    m = record_metrics(pred, rec)
    shown = {k: v for k, v in m.items() if k.startswith(("cc_", "nss_", "auc_judd_", "mse_", "word_f1", "abs_err_"))}
    if shown:
        st.caption("Per-record metrics (— : undefined, e.g. word F1 when neither side flags a word)")
        st.dataframe(pd.DataFrame({"value": [format_metric(v) for v in shown.values()]}, index=list(shown)),
                     width="stretch")


def pick_random_record(ds) -> None:
    """Callback: runs before the next rerun draws the field, so it may set the field's value."""
    if len(ds):
        show_record(ds.ids[np.random.default_rng().integers(len(ds))])


def show_record(rec_id: str, mode: str | None = None) -> None:
    """Callback: point the record field (and, optionally, the mode) at `rec_id`."""
    st.session_state["live_record_id"] = st.session_state["_live_record_id"] = rec_id
    if mode:
        st.session_state["live_mode"] = st.session_state["_live_mode"] = mode


def record_mode() -> None:
    ds = current_dataset()
    # The field's value lives in session state only (no `value=`): a widget given both a default and a
    # session-state value logs "created with a default value but also had its value set via the
    # Session State API", and the random pick and "Open … side by side" write session state.
    restore("live_record_id", ds.ids[0] if len(ds) else "")
    rec_id = remember("live_record_id", st.text_input("Record id", key="live_record_id"))
    st.button("Random record", key="live_random", on_click=pick_random_record, args=(ds,))
    try:
        rec = ds.get(rec_id)
    except RHFError as e:
        st.error(error_text(e))
        return
    side_by_side(rec)


# --- 3. Error analysis over the explorer's filtered set -----------------------------------------

@st.cache_data(max_entries=20000, show_spinner=False)
def record_thumbnail(spec: str, n_records: int, rec_id: str, _ds) -> str | None:
    """The record's image as a small data-URI PNG; None without an image or when it is unreadable."""
    try:
        img = _ds.get(rec_id).image
    except RHFError:
        return None
    return None if img is None else thumbnail_uri(img)


def thumbnails(ids: list[str], ds) -> list[str | None]:
    """Thumbnails for the first MAX_THUMBS ids (a ShapesWorld image takes ~12 ms to render, so a
    20,000-row table is not given 20,000 of them); None for the rest."""
    return [record_thumbnail(ds.spec, len(ds), i, ds) if k < MAX_THUMBS else None for k, i in enumerate(ids)]


def image_column() -> dict:
    return {"image": st.column_config.ImageColumn("image", width="small",
                                                  help=f"The record's image (the first {MAX_THUMBS} rows)")}


def checkpoint_b():
    """The second checkpoint (B) typed on this page, checked as the sidebar's is (shared mode: only a
    folder inside the allowed model folders, no hub id); None, with the reason shown, when it fails."""
    return load_model_field("live_rahf_b", "checkpoint B", load_predictor, stop_on_error=False,
                            kind="RAHF checkpoint")


def run_analysis(model, ds, positions, name: str) -> pd.DataFrame:
    bar = st.progress(0.0, text=f"Predicting with {name}…")
    table = analyse(model, ds, positions, progress=lambda d, t: bar.progress(
        d / max(t, 1), text=f"{name}: predicted {d:,} / {t:,} new records"))
    bar.empty()
    return table


def error_scatter(rows: pd.DataFrame, column: str, threshold: float):
    """A's error against B's per record, coloured by verdict; the diagonal is "equally wrong"."""
    top = float(max(rows["error_a"].max(), rows["error_b"].max(), threshold, 1e-6)) * 1.05
    fig = px.scatter(rows, x="error_a", y="error_b", color="verdict", hover_data=["id", "prompt"],
                     category_orders={"verdict": list(VERDICTS)}, color_discrete_map=VERDICT_COLOURS,
                     labels={"error_a": f"A: {DISAGREEMENT[column]}", "error_b": f"B: {DISAGREEMENT[column]}"},
                     render_mode="svg" if len(rows) <= 5000 else "webgl", opacity=0.7,
                     title="Each record's error with A and with B (below the diagonal: B is closer)")
    fig.add_shape(type="line", x0=0, y0=0, x1=top, y1=top, line=dict(color="grey", dash="dot"))
    fig.add_hline(y=threshold, line=dict(color="grey", width=1, dash="dash"))
    fig.add_vline(x=threshold, line=dict(color="grey", width=1, dash="dash"))
    fig.update_xaxes(range=[0, top])
    fig.update_yaxes(range=[0, top])
    fig.update_layout(height=440, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def record_with_both(rec: Record, rahf_b) -> None:
    """One record's labels beside checkpoint A's and B's predictions, on the page's heatmap and scale."""
    try:
        image = load_image(rec.image, name=rec.id) if rec.image is not None else None
        if image is None:
            st.warning(f"{rec.id} has no image to predict on (labels only).")
            return
        preds = {name: model.predict([image], [rec.prompt])[0] for name, model in (("A", rahf), ("B", rahf_b))}
    except RHFError as e:
        st.error(f"`{rec.id}`: {error_text(e)}")
        return
    st.markdown(f"`{rec.id}` · {rec.prompt}")
    # One colour scale for the three maps: each scaled to its own peak, a flat, faint prediction would
    # look as hot as a sharp one.
    shown = [rec] + [as_record(p, image, rec.prompt) for p in preds.values()]
    images, vmax = overlays_on_one_scale(shown, heat, opacity, cmap, 256)
    captions = [f"labelled {heat}" if heat in rec.heatmaps else f"{heat}: not collected"]
    captions += [f"{name}: predicted {heat}" for name in preds]
    for img, caption, col in zip(images, captions, st.columns(3)):
        col.image(img, width="stretch", output_format="PNG", caption=caption)
    st.image(heat_colour_bar(vmax, cmap), output_format="PNG",
             caption=f"One scale for the three maps: 0 → {vmax:.3g}, the highest peak among them")
    scores = pd.DataFrame({"labelled": [rec.scores.get(s, np.nan) for s in SCORE_NAMES],
                           **{name: [p.scores[s] for s in SCORE_NAMES] for name, p in preds.items()}},
                          index=SCORE_NAMES)
    st.dataframe(scores.style.format("{:.3f}"), width="stretch")


def compare_section(table_a: pd.DataFrame, table_b: pd.DataFrame, column: str, ds, rahf_b) -> None:
    """Which records each checkpoint gets right on `column`, at a threshold the user sets."""
    st.subheader("Checkpoint A vs checkpoint B")
    st.caption(f"A: `{rahf.name}` (the sidebar's) · B: `{rahf_b.name}` · error: {DISAGREEMENT[column]} "
               "(the *Sort by* choice above) · a checkpoint gets a record right when its error is at most "
               "the threshold.")
    if rahf_b.weights_key == rahf.weights_key:
        st.info("A and B are the same weights: every record gets the same verdict from both.")
    threshold = st.number_input("Right when the error is at most", min_value=0.0, value=DEFAULT_THRESHOLDS[column],
                                step=0.05, key=f"live_cmp_threshold_{column}")
    try:
        cmp = compare_errors(table_a, table_b, column, threshold)
    except RHFError as e:
        st.error(error_text(e))
        return
    counts = cmp.counts()
    for (verdict, n), col in zip(counts.items(), st.columns(4)):
        col.metric(verdict[0].upper() + verdict[1:], f"{n:,}")  # "Only A", not capitalize()'s "Only a"
    rows = cmp.rows
    left_out = [f"{n:,} {what}" for n, what in ((cmp.n_undefined, "with the error undefined for A or B"),
                                                  (cmp.n_one_side, "predicted by one checkpoint only")) if n]
    if rows.empty:
        st.info("No record has this error defined for both checkpoints"
                + (f" ({'; '.join(left_out)})." if left_out else "."))
        return
    lower = cmp.better()
    st.caption(f"{len(rows):,} records; mean error A {rows['error_a'].mean():.3f}, B {rows['error_b'].mean():.3f}; "
               f"lower error with A on {lower['A lower']:,}, with B on {lower['B lower']:,}, "
               f"equal on {lower['equal']:,}"
               + (f". Left out: {'; '.join(left_out)}." if left_out else "."))
    st.plotly_chart(error_scatter(rows, column, threshold), key="live_cmp_scatter")
    shown = st.segmented_control("Records", ["all"] + list(VERDICTS), default="all", key="live_cmp_show",
                                 required=True) or "all"
    picked = rows if shown == "all" else rows[rows["verdict"] == shown]
    # Where the two differ most first: the records that tell the checkpoints apart.
    picked = picked.reindex(picked["difference"].abs().sort_values(ascending=False, kind="stable").index)
    view = picked[["id", "prompt", "verdict", "error_a", "error_b", "difference"]].reset_index(drop=True)
    view["image"] = thumbnails(view["id"].astype(str).tolist(), ds)
    # A selection is a row position: when the rows change (another threshold, column or filter) it is
    # cleared rather than left pointing at whichever record now sits in that row.
    rows_key = (column, threshold, shown, tuple(view["id"]))
    if st.session_state.get("live_cmp_rows") != rows_key:
        st.session_state["live_cmp_rows"] = rows_key
        st.session_state["live_cmp_table"] = {"selection": {"rows": [], "columns": []}}
    event = st.dataframe(view, hide_index=True, width="stretch", key="live_cmp_table", row_height=52,
                         on_select="rerun", selection_mode="single-row",
                 column_order=["image", "id", "prompt", "verdict", "error_a", "error_b", "difference"],
                 column_config={**image_column(), "difference": st.column_config.NumberColumn(
                     "B − A", help="> 0: A's error is lower", format="%.3f"),
                     "error_a": st.column_config.NumberColumn("error A", format="%.3f"),
                     "error_b": st.column_config.NumberColumn("error B", format="%.3f")})
    picked_rows = event.selection.rows if event else []
    if picked_rows and picked_rows[0] < len(view):
        record_with_both(ds.get(str(view["id"].iat[picked_rows[0]])), rahf_b)
    else:
        st.caption("Select a row to see that record's labels beside A's and B's predictions.")


def analysis_mode() -> None:
    ds = current_dataset()
    positions = st.session_state.get("explorer_positions")
    if positions is None or st.session_state.get("explorer_spec") != ds.spec:
        positions = np.arange(len(ds))
        source = "all records (filter them on the Dataset explorer page to narrow this down)"
    else:
        source = "the explorer's filtered set"
    cap = policy().limit("analysis_records", 20000)  # 2,000 on a shared server
    limit = st.number_input("At most this many records", 10, cap, min(500, max(len(positions), 10), cap), 50, key="live_limit")
    try:  # the widget bounds it; a crafted request could still ask for more
        policy().check_limit("analysis_records", int(limit), "records per error analysis")
    except RHFError as e:
        st.error(error_text(e))
        return
    positions = np.asarray(positions)[: int(limit)]
    restore("live_compare", False)  # both come back after a visit to another page (see `restore`)
    compare = remember("live_compare", st.toggle(
        "Compare with a second checkpoint (B)", key="live_compare",
        help="Run a second RAHF checkpoint over the same records and see which records each gets right."))
    rahf_b = None
    if compare:
        restore("live_rahf_b", "")
        remember("live_rahf_b", st.text_input(
            "Checkpoint B", key="live_rahf_b", placeholder="embedded (rahf-shapes)",
            help="A folder with config.json + model.safetensors"
                 + (" inside the allowed model folders" if policy().shared else "")
                 + ". Empty: the embedded ShapesWorld checkpoint. A is the sidebar's checkpoint."))
        rahf_b = checkpoint_b()
    st.write(f"Run the predictor{'s' if rahf_b else ''} over **{len(positions):,}** records: {source}. Results are "
             "cached on disk, so a second run over the same records is instant.")
    # A table belongs to exactly these records of this dataset and this checkpoint; its summary and
    # its rows are shown only while they still match. (The spec comes first: the Annotate page reads it.)
    inputs_key = (ds.spec, rahf.weights_key, hashlib.sha1(positions.astype(np.int64).tobytes()).hexdigest())
    key_b = inputs_key + (rahf_b.weights_key,) if rahf_b is not None else None
    if st.button("Run error analysis" + (" (A and B)" if rahf_b else ""), type="primary", key="live_run"):
        table_a = run_analysis(rahf, ds, positions, "A" if rahf_b else "the predictor")
        st.session_state["live_analysis"] = (inputs_key, table_a)
        if rahf_b is not None:
            st.session_state["live_analysis_b"] = (key_b, run_analysis(rahf_b, ds, positions, "B"))
    stored = st.session_state.get("live_analysis")
    if stored and stored[0] != inputs_key:
        st.info("The records or the checkpoint changed since the last run: press **Run error analysis** again.")
        return
    if not stored:
        return
    table = stored[1]
    options = [c for c in DISAGREEMENT if c in table and table[c].notna().any()]
    if not options:
        st.info("These records have no labels to compare with.")
        return
    by = st.selectbox("Sort by disagreement", options, format_func=DISAGREEMENT.get, key="live_sort")
    ranked = table.sort_values(by, ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    cols = ["id", "prompt", by] + [c for c in ("abs_err_plausibility", "abs_err_alignment", "cc_implausibility", "word_f1") if c in ranked and c != by]
    summary = {"records": len(table)}
    for s in SCORE_NAMES:
        if f"label_{s}" in table:
            both = table[[f"pred_{s}", f"label_{s}"]].dropna()
            summary[f"{s} SRCC"] = round(M.srcc(both.iloc[:, 0], both.iloc[:, 1]), 3)
    st.caption(" · ".join(f"{k}: {v}" for k, v in summary.items()))
    if rahf_b is not None:
        stored_b = st.session_state.get("live_analysis_b")
        if stored_b and stored_b[0] == key_b:
            compare_section(table, stored_b[1], by, ds, rahf_b)
            st.subheader(f"Checkpoint A (`{rahf.name}`) by disagreement")
        else:
            st.info("Press **Run error analysis (A and B)** to run checkpoint B over these records too.")
    view = ranked[cols].copy()
    if "word_f1" in view:  # undefined (no word flagged by either side) reads "—", never 0
        view["word_f1"] = [format_metric(v) for v in view["word_f1"]]
    # The selection follows the record, not the row: a table selection is a row position, so when the
    # order changes (another sort, another run) the selected record's new row is selected before drawing.
    ids = ranked["id"].astype(str).tolist()
    order = (inputs_key, by)
    selected = st.session_state.get("live_selected_id")
    if st.session_state.get("live_table_order") != order:
        st.session_state["live_table_order"] = order
        rows = [ids.index(selected)] if selected in ids else []
        st.session_state["live_table"] = {"selection": {"rows": rows, "columns": []}}
    view["image"] = thumbnails(ids, ds)
    event = st.dataframe(view, hide_index=True, on_select="rerun", selection_mode="single-row", key="live_table",
                         width="stretch", row_height=52, column_order=["image"] + cols, column_config=image_column())
    rows = event.selection.rows if event else []
    selected = st.session_state["live_selected_id"] = ids[rows[0]] if rows and rows[0] < len(ids) else None
    if "word_f1" in view:
        st.caption("word_f1 — : undefined (no word flagged by either the labels or the prediction).")
    if selected:
        st.button(f"Open {selected} side by side", on_click=show_record, args=(selected, "Dataset record"),
                  key="live_open")
        side_by_side(ds.get(selected))


if mode == "Dataset record":
    record_mode()
elif mode == "Error analysis":
    analysis_mode()
else:
    upload_mode()
