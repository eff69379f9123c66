"""Dataset explorer: filter, sort, browse, inspect and plot any rich-feedback dataset.

Every filter, the view, the page and the open record are bound to the URL query string, so a
shared link reopens the same view.
"""

import hashlib
import io
import os
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from rhf_core.data import export
from rhf_core.errors import RHFError
from rhf_core.explore import (
    TRI_STATE,
    ExplorerFilter,
    apply_filter,
    heatmap_columns,
    most_flagged_words,
    score_columns,
    score_correlations,
)
from rhf_core.heatmaps import COLOR_MAPS, colorize_heatmap
from rhf_core.tags import with_tags
from ui.components import (
    click_to_open,
    heat_colour_bar,
    heat_peak,
    highlighted_prompt,
    placeholder,
    record_view_image,
    score_line,
    upscale,
    word_strength_chart,
)
from ui.explorer_parts import (
    clear_map_selection,
    compare_view,
    frame_facts,
    gallery_cell,
    map_selection,
    map_view,
    open_record,
    patches_view,
    record_tags,
    saved_views_sidebar,
    selected_ids,
    similar_records,
    start_compare,
    store_tags,
    tag_bar,
    tag_filter_sidebar,
    tag_store,
)
from ui.loaders import load_mean_heatmap
from ui.settings import current_dataset, current_spec, error_text, loaded_spec, policy

QP = "query-params"
VIEWS = ["Gallery", "Map", "Record", "Compare", "Patches", "Plots", "Export"]
MAX_DOWNLOAD = 2000
MAX_SKIPPED_SHOWN = 1000  # rows of the skipped-rows table; the count says how many there are

st.title("Dataset explorer")
ds = current_dataset()
frame = ds.frame
POLICY = policy()
spec, pickapic = loaded_spec()  # what was opened (shared mode: resolved paths); keys the cached loaders
# What the page may show as the dataset's name: in shared mode the spec as typed, never the resolved path.
shown_spec = current_spec()[0] if POLICY.shared else ds.spec
store = tag_store(ds)


# --- 1. Filters (sidebar) --------------------------------------------------------------------

def initial(key: str, value):
    """A widget's default only on its first run; afterwards its state (or the URL) rules."""
    return None if key in st.session_state else value


def tri_state(label: str, key: str) -> str:
    """An any / yes / no control bound to the URL; returns "any" whenever the control is unset.

    The control can come back unset (None) despite `required=True`: an empty `?h_…=` in the URL clears
    it, and whenever Streamlit falls back to the widget's default on a run where the key is already
    in Session State (back/forward, a run cut short on a loaded server) the default was `initial()`'s
    None. The filter read None as "no", so 0 records matched. Now None filters nothing, and the next
    run draws "any" selected."""
    if key in st.session_state and st.session_state[key] not in TRI_STATE:
        st.session_state[key] = "any"
    value = st.segmented_control(label, TRI_STATE, default=initial(key, "any"), key=key, bind=QP, required=True)
    return value if value in TRI_STATE else "any"


def filter_sidebar() -> ExplorerFilter:
    f = ExplorerFilter()
    with st.sidebar:
        st.header("Filters")
        f.text = st.text_input("Prompt contains", key="q", bind=QP, placeholder="e.g. red, circle or an id")
        facts = frame_facts(ds)
        if len(facts.splits) > 1:
            f.splits = tuple(st.multiselect("Split", facts.splits, key="split", bind=QP))
        for name in facts.scores:
            f.score_ranges[name] = st.slider(name.capitalize(), 0.0, 1.0, (0.0, 1.0), step=0.05,
                                             key=f"s_{name}", bind=QP)
        for name in facts.heatmaps:
            f.heatmaps[name] = tri_state(f"Has {name} heatmap", f"h_{name}")
        if facts.has_flagged:
            f.flagged = tri_state("Has flagged words", "fw")
        for col, values in facts.categories.items():
            label = col.replace("_", " ").capitalize()
            f.categories[col] = tuple(st.multiselect(label, values, key=f"c_{col}", bind=QP))
        f.ids = tag_filter_sidebar(store)
        st.header("Sort")
        f.sort_by = st.selectbox("Sort by", [""] + facts.sortable, key="sort", bind=QP,
                                 format_func=lambda c: "dataset order" if c == "" else c.replace("_", " "))
        f.descending = st.toggle("Descending", key="desc", bind=QP)
        saved_views_sidebar(store)
    return f


filters = filter_sidebar()
t0 = time.perf_counter()
filtered_positions = apply_filter(frame, filters)  # the sidebar's filters: the map greys out the rest
positions = map_selection(frame, filtered_positions)  # and a box/lasso on the map narrows them further
filter_ms = (time.perf_counter() - t0) * 1000
# Other pages (Live RAHF's error analysis) work on the set filtered here.
st.session_state["explorer_positions"] = positions
st.session_state["explorer_spec"] = ds.spec

summary = f"**{len(positions):,}** of {len(frame):,} records match"
if ds.n_skipped:
    summary += f" · {ds.n_skipped:,} source rows skipped"
st.markdown(summary, help=f"{shown_spec}; filtering took {filter_ms:.0f} ms")
if st.session_state.get("map_sel"):
    st.button(f"Selected on the map: {len(st.session_state['map_sel']):,} records · clear", key="map_clear_top",
              on_click=clear_map_selection)


def skipped_rows() -> None:
    """Where and why each unusable source row was skipped (first MAX_SKIPPED_SHOWN of them)."""
    rows = [{"where": POLICY.scrub(s.where), "why": POLICY.scrub(s.reason)} for s in ds.skipped[:MAX_SKIPPED_SHOWN]]
    with st.expander(f"{ds.n_skipped:,} source rows were skipped while reading"):
        st.dataframe(pd.DataFrame(rows, columns=["where", "why"]), hide_index=True, key="skipped_table")
        if ds.n_skipped > MAX_SKIPPED_SHOWN:
            st.caption(f"The first {MAX_SKIPPED_SHOWN:,} of {ds.n_skipped:,}.")


if ds.n_skipped:
    skipped_rows()

view = st.segmented_control("View", VIEWS, default=initial("view", "Gallery"), key="view", bind=QP,
                            required=True) or "Gallery"  # None (an empty `?view=`): the gallery


# The open record lives in `?id=`. It is kept by hand rather than bound to its text field, because
# it is set from buttons while that field is not on the page, and a bound URL parameter only
# follows changes made while its widget is drawn.
if "rec_id" not in st.session_state:
    st.session_state["rec_id"] = str(st.query_params.get("id", ""))


# --- 2. Gallery ------------------------------------------------------------------------------

def clear_ticks(ids: list[str]) -> None:
    for rec_id in ids:
        st.session_state[f"sel_{rec_id}"] = False


def selection_bar() -> None:
    """Tag or compare the records ticked in the gallery (ticks survive paging and filtering)."""
    ids = selected_ids()
    with st.container(border=True):
        tag_bar(store, ids, "gallery", f"the {len(ids)} ticked record{'s' * (len(ids) != 1)}")
        c1, c2, c3 = st.columns([1, 1, 3], vertical_alignment="center")
        c1.button("Compare ticked", disabled=not 2 <= len(ids) <= 4, on_click=start_compare, args=(ids,),
                  help="2 to 4 ticked records side by side, on one colour scale")
        c2.button("Clear ticks", disabled=not ids, on_click=clear_ticks, args=(ids,))
        c3.caption(", ".join(f"`{i}`" for i in ids[:8]) + (" …" if len(ids) > 8 else "") if ids
                   else "Tick records below to tag or compare them.")


def forget_unticked(shown: set[str]) -> None:
    """Drop the tick-box state of unticked records not on this page (a box that comes back starts unticked
    anyway). Each box kept its `sel_<id>` key once drawn, and Streamlit scans every key of Session State for
    each text or select box it draws: a session that had paged through thousands of records paid that on
    every rerun."""
    stale = [k for k, v in st.session_state.items() if k.startswith("sel_") and not v and k[4:] not in shown]
    for k in stale:
        del st.session_state[k]


def turn_page(step: int, n_pages: int) -> None:
    """Button callback: the gallery's page `step` pages on, within 1..n_pages."""
    page = int(st.session_state.get("page", 1) or 1)
    st.session_state["page"] = min(max(page + step, 1), n_pages)


def gallery() -> None:
    if len(positions) == 0:
        st.info("No record matches these filters.")
        return
    selection_bar()
    tags = store_tags(store)
    c1, c2, c3, c4, c5 = st.columns([4, 4, 8, 1.5, 1.5], vertical_alignment="bottom")
    per_page = c1.selectbox("Per page", [12, 24, 48, 96], index=1, key="per_page", bind=QP)
    overlay = c2.selectbox("Thumbnail overlay", ["none"] + frame_facts(ds).heatmaps, key="thumb_overlay", bind=QP)
    n_pages = max(1, int(np.ceil(len(positions) / per_page)))
    if int(st.session_state.get("page", 1) or 1) > n_pages:
        st.session_state["page"] = 1
    with c3:
        page = st.pagination(n_pages, key="page", bind=QP)
    # k / j turn the page (Streamlit's button shortcuts: quiet while a text box has focus).
    c4.button("", key="page_prev", icon=":material/chevron_left:", shortcut="K", disabled=page <= 1,
              on_click=turn_page, args=(-1, n_pages), help="Previous page (k)", width="stretch")
    c5.button("", key="page_next", icon=":material/chevron_right:", shortcut="J", disabled=page >= n_pages,
              on_click=turn_page, args=(1, n_pages), help="Next page (j)", width="stretch")
    chunk = positions[(page - 1) * per_page: page * per_page]
    forget_unticked({str(frame["id"].iat[int(p)]) for p in chunk})
    cols_per_row = 6
    click_to_open("gallery_clicks")  # a click on a thumbnail presses its cell's Open button (cells: gcell_…)
    for start in range(0, len(chunk), cols_per_row):
        cols = st.columns(cols_per_row)
        for col, pos in zip(cols, chunk[start:start + cols_per_row]):
            try:
                rec = gallery_cell(ds, int(pos), overlay)  # cached: a rerun re-draws nothing it drew
            except RHFError as e:
                with col, st.container(key=f"gcell_{pos}"):
                    st.image(placeholder(160, "unreadable"), width="stretch")
                    st.caption(f"{frame['id'].iat[int(pos)]}: {error_text(e)}")
                continue
            # …_pixelart: the page shows a small image enlarged with crisp pixels (see CLICK_TO_OPEN_JS).
            with col, st.container(key=f"gcell_{pos}_pixelart" if rec.small else f"gcell_{pos}"):
                # PNG named: with "auto" Streamlit decodes the bytes and re-encodes them as JPEG on every
                # rerun (≈1 ms a cell, and JPEG rings around ShapesWorld's hard edges); named, it sends them as they are.
                st.image(rec.png, width="stretch", output_format="PNG")
                peak = f"  \n{overlay} 0 → {rec.peak:.3g}" if rec.peak is not None else ""
                rec_tags = "  \n" + " ".join(f"`{t}`" for t in tags[rec.id]) if rec.id in tags else ""
                st.caption(f"{rec.prompt[:60] or rec.id}  \n{score_line(rec.scores)}{peak}{rec_tags}")
                # One flex row, not st.columns(2): two blocks fewer per cell, 48 fewer per page.
                with st.container(horizontal=True, vertical_alignment="center"):
                    st.checkbox("Tick", key=f"sel_{rec.id}", persist_state="page")
                    st.button("Open", key=f"open_{pos}_{rec.id}", on_click=open_record, args=(rec.id,),
                              width="stretch")
    if overlay != "none":
        st.image(heat_colour_bar(1.0, "inferno"), output_format="PNG",
                 caption="Each thumbnail's colours run from 0 to its own peak (the value under it)")
    st.caption(f"Page {page} of {n_pages} · keys j / k: next / previous page · click a thumbnail to open it")


# --- 3. Record detail ------------------------------------------------------------------------

def record_detail() -> None:
    rec_id = str(st.session_state.get("rec_id") or "")
    if not rec_id and len(positions):
        rec_id = str(frame["id"].iat[int(positions[0])])
    if not rec_id:
        st.info("No record matches these filters.")
        return
    try:
        pos = ds.index_of(rec_id)
    except RHFError as e:
        st.error(error_text(e))
        return
    order = np.flatnonzero(positions == pos)
    if len(order):
        nav1, nav2, nav3 = st.columns([1, 1, 4], vertical_alignment="center")
        k = int(order[0])
        prev_id = str(frame["id"].iat[int(positions[k - 1])]) if k > 0 else None
        next_id = str(frame["id"].iat[int(positions[k + 1])]) if k + 1 < len(positions) else None
        # ←/→ press these buttons (Streamlit's own shortcuts, which stay quiet while a text box has focus).
        nav1.button("◀ Previous", disabled=prev_id is None, on_click=open_record, args=(prev_id,), width="stretch",
                    key="rec_prev", shortcut="Left")
        nav2.button("Next ▶", disabled=next_id is None, on_click=open_record, args=(next_id,), width="stretch",
                    key="rec_next", shortcut="Right")
        nav3.markdown(f"Record **{k + 1:,}** of {len(positions):,} · `{rec_id}`")
    else:
        st.caption(f"`{rec_id}` is outside the current filters; previous/next follow the filtered list.")
    try:
        rec = ds[pos]
    except RHFError as e:
        st.error(error_text(e))
        return
    st.query_params["id"] = rec.id

    st.markdown(highlighted_prompt(rec), unsafe_allow_html=True)
    available = [h for h in ("implausibility", "misalignment") if h in rec.heatmaps]
    c1, c2, c3 = st.columns(3)
    options = available + ["none"]
    if st.session_state.get("overlay") not in options:
        st.session_state["overlay"] = options[0]
    heat = c1.segmented_control("Overlay", options, key="overlay", bind=QP, required=True) or options[0]
    opacity = c2.slider("Opacity", 0.0, 1.0, 0.6, 0.05, key="opacity", bind=QP)
    cmap = c3.selectbox("Colour map", COLOR_MAPS, key="cmap", bind=QP)
    left, right = st.columns([3, 2])
    try:
        main = record_view_image(rec, None if heat == "none" else heat, opacity, cmap, 448)
        side = [(h, record_view_image(rec, h, opacity, cmap, 220)) for h in ("implausibility", "misalignment")]
    except RHFError as e:
        st.error(error_text(e))
        return
    with left:
        st.image(main, caption=f"{heat} overlay" if heat != "none" else "image", width="stretch", output_format="PNG")
        if heat in rec.heatmaps:
            st.image(heat_colour_bar(heat_peak(rec.heatmaps[heat]), cmap), output_format="PNG")
    with right:
        for (h, img), col in zip(side, st.columns(2)):
            present = h in rec.heatmaps
            col.image(img, caption=h if present else f"{h}: not collected", width="stretch", output_format="PNG")
            if present:  # overlays are scaled to each map's peak: the bar says what the top colour means
                col.image(heat_colour_bar(heat_peak(rec.heatmaps[h]), cmap, width=110), output_format="PNG")
        scores = [(n, rec.scores.get(n)) for n in ("plausibility", "alignment", "aesthetics", "overall")]
        for (n, v), col in zip(scores, st.columns(4)):
            col.metric(n.capitalize(), "—" if v is None else f"{v:.2f}")
        masses = {h: float(rec.heatmaps[h].mean()) for h in rec.heatmaps}
        st.caption("Heatmap mass: " + (", ".join(f"{h} {m:.4f}" for h, m in masses.items()) or "none collected"))
    record_tags(store, rec.id)
    if st.toggle("More like this", key="similar", bind=QP, help="The records whose images are nearest to this one"):
        similar_records(ds, pos)
    if any(strength > 0 for _, strength in rec.words):
        st.plotly_chart(word_strength_chart(rec), key="word_chart")
    elif rec.words:
        st.caption("No annotator flagged a word of this prompt.")
    with st.expander("Raw source fields"):
        st.json(POLICY.scrub_obj(rec.meta), expanded=1)


# --- 4. Dataset plots ------------------------------------------------------------------------

def on_scatter_select() -> None:
    event = st.session_state.get("scatter")
    points = (event or {}).get("selection", {}).get("points", []) if event else []
    if points and points[0].get("customdata"):
        open_record(str(points[0]["customdata"][0]))


def plots() -> None:
    filtered = frame.iloc[positions]  # here, not every rerun: a copy of every column (~20 ms at 200,000 rows)
    if len(filtered) == 0:
        st.info("No record matches these filters.")
        return
    scores = score_columns(filtered)
    heats = heatmap_columns(filtered)
    if scores:
        # Counts are binned here, so the browser gets 20 bars per score, not every record.
        st.markdown("**Score histograms**")
        edges = np.linspace(0, 1, 21)
        for name, col in zip(scores, st.columns(len(scores))):
            counts = np.histogram(filtered[name].dropna(), bins=edges)[0].astype(float)
            fig = px.bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, labels={"x": name, "y": "records"})
            fig.update_traces(width=0.045)
            fig.update_xaxes(range=[0, 1])
            fig.update_layout(height=220, margin=dict(l=10, r=10, t=10, b=10))
            col.plotly_chart(fig, key=f"hist_{name}")
    c1, c2 = st.columns(2)
    with c1:
        corr = score_correlations(filtered)
        if len(corr.columns) > 1:
            fig = px.imshow(corr, text_auto=".2f", zmin=-1, zmax=1, color_continuous_scale="RdBu",
                            title="Spearman correlations")
            fig.update_layout(height=380, margin=dict(l=10, r=10, t=40, b=10))
            st.plotly_chart(fig, key="corr")
    with c2:
        words = most_flagged_words(filtered)
        if len(words):
            fig = px.bar(words.iloc[::-1], x="records", y="word", orientation="h",
                         title="Most-flagged words (strength ≥ 0.5)", hover_data=["share"])
            fig.update_yaxes(tickmode="array", tickvals=words["word"], title=None)  # label every bar
            fig.update_layout(height=380, margin=dict(l=10, r=10, t=40, b=10))
            st.plotly_chart(fig, key="words")
        else:
            st.info("No flagged words in the filtered set.")
    if heats:
        key = hashlib.sha1(positions.tobytes()).hexdigest()
        cols = st.columns(len(heats))
        for h, col in zip(heats, cols):
            mean, used, total = load_mean_heatmap(spec, pickapic, key, positions, h)
            if mean is not None:
                peak = float(mean.max())
                img = upscale(colorize_heatmap(mean / peak if peak > 0 else mean, "inferno"), 320)
                col.markdown(f"**Mean {h} heatmap**")
                col.image(img, width=320, output_format="PNG")
                col.image(heat_colour_bar(peak, "inferno", width=160), width=320, output_format="PNG")
                col.caption(f"Averaged over {used:,} of the {total:,} filtered records with this heatmap"
                            + (" (a random sample)" if used < total else "")
                            + f"; colours scaled to the peak, {peak:.4f} (black = 0).")
        if scores:
            c1, c2 = st.columns(2)
            x = c1.selectbox("Score (x)", scores, key="sx")
            y = c2.selectbox("Heatmap mass (y)", [f"{h}_mass" for h in heats], key="sy")
            data = filtered[["id", "prompt", x, y]].dropna()
            fig = px.scatter(data, x=x, y=y, custom_data=["id"], hover_data=["prompt"], opacity=0.5,
                             render_mode="svg" if len(data) <= 5000 else "webgl", title=f"{y.replace('_', ' ')} vs {x} — click a point to open it")
            fig.update_layout(height=420, margin=dict(l=10, r=10, t=40, b=10))
            st.plotly_chart(fig, key="scatter", on_select=on_scatter_select, selection_mode="points")


# --- 5. Export -------------------------------------------------------------------------------

def local_export_target(text: str, overwrite: bool) -> Path:
    """Local mode: any folder the server can write, but an existing non-empty one only when the user
    ticked Overwrite (a relative path is taken against the working directory and shown in full)."""
    out = Path(text.strip()).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise RHFError(f"`{out}` is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise RHFError(f"`{out}` already exists and is not empty; tick *Overwrite* to replace the files "
                       "the export writes there, or choose a new folder")
    return out


def export_to_folder(subset) -> None:
    """Export to a folder on the server: anywhere (local mode), or a new folder under the export root
    (shared mode, never overwriting)."""
    if POLICY.shared:
        if POLICY.export_root is None:
            st.caption("This shared server keeps no exports: use the zip download below.")
            return
        path = st.text_input("New folder in this server's export folder", placeholder="my-export", key="export_path")
        overwrite = False
    else:
        path = st.text_input("Folder on the server", placeholder="/path/to/new/folder", key="export_path")
        overwrite = st.checkbox("Overwrite", key="export_overwrite",
                                help="Allow a folder that already holds files; the export replaces the ones it writes.")
    if not st.button("Export to folder", disabled=not path.strip()):
        return
    try:
        POLICY.check_limit("export_records", len(subset), "records in one export")
        target = POLICY.export_path(path) if POLICY.shared else local_export_target(path, overwrite)
    except RHFError as e:
        st.error(f"Export refused: {error_text(e)}")
        return
    bar = st.progress(0.0, text="Exporting…")
    try:
        out = export(subset, target, overwrite=overwrite,
                     progress=lambda d, t: bar.progress(d / t, text=f"Exporting {d:,} / {t:,}"))
    except (RHFError, OSError) as e:
        st.error(f"Export failed: {error_text(e)}")
    else:
        if POLICY.shared:
            st.success(f"Wrote {len(subset):,} records to `{os.path.relpath(out, POLICY.export_root)}` "
                       "in the server's export folder.")
        else:
            st.success(f"Wrote {len(subset):,} records to `{out}`; open it with `folder:{out}`.")
    finally:
        bar.empty()  # the bar used to stay at "Exporting N / N" after the export finished


def export_view() -> None:
    subset = with_tags(ds.subset(positions), store_tags(store))  # tags travel as meta["tags"] and a `tags` column
    if len(subset) == 0:
        st.info("No record matches these filters: nothing to export.")
        return
    st.write(f"Export the **{len(subset):,}** filtered records to the folder format "
             "(`labels.jsonl` + images + heatmaps), readable with `folder:PATH`.")
    export_to_folder(subset)
    max_download = POLICY.limit("download_records", MAX_DOWNLOAD)
    if len(subset) > max_download:
        st.caption(f"Download is offered for up to {max_download:,} records; narrow the filters"
                   + ("." if POLICY.shared else " or export to a folder."))
    elif st.button("Prepare a zip download"):
        with st.spinner("Packing…"), tempfile.TemporaryDirectory() as tmp:
            try:
                export(subset, Path(tmp) / "export")
            except (RHFError, OSError) as e:
                st.error(f"Export failed: {error_text(e)}")
                return
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
                for p in sorted((Path(tmp) / "export").rglob("*")):
                    if p.is_file():
                        zf.write(p, p.relative_to(Path(tmp) / "export"))
        st.download_button("Download zip", buf.getvalue(), file_name="rich-feedback-export.zip",
                           mime="application/zip")


if view == "Record":
    st.text_input("Record id", key="rec_id", help="Type an id to jump to it; the URL follows (?id=…).")
    record_detail()  # puts the shown record in ?id=
else:
    st.query_params.pop("id", None)
if view == "Compare":
    compare_view(ds, frame_facts(ds).heatmaps)
elif view == "Patches":
    patches_view(ds, positions, hashlib.sha1(positions.tobytes()).hexdigest(),
                 heatmap_columns(frame.iloc[positions]))
elif view == "Plots":
    plots()
elif view == "Export":
    export_view()
elif view == "Map":
    map_view(ds, filtered_positions)
elif view == "Gallery":
    gallery()
