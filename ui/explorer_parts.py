"""The explorer's tag, saved-view, compare and patch panels (app_pages/explorer.py draws them).

Each panel is a function of the dataset and the filtered positions; widget keys are the URL
parameter names, as on the rest of the page.
"""

from __future__ import annotations

import io
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from rhf_core.dataset import Dataset
from rhf_core.embeddings import (
    dataset_umap,
    embeddings_path,
    frame_fingerprint,
    image_embedder,
    image_embeddings,
    more_like,
    pca_2d,
    text_search,
    umap_path,
)
from rhf_core.errors import RHFError
from rhf_core.explore import category_columns, heatmap_columns, score_columns, sortable_columns
from rhf_core.heatmaps import COLOR_MAPS, overlay_heatmap
from rhf_core.patches import SORT_KEYS, collect_patches, crop_patch
from rhf_core.tags import TagStore, tags_in_frame
from ui.components import (
    click_to_open,
    heat_colour_bar,
    heat_peak,
    overlays_on_one_scale,
    placeholder,
    record_view_image,
    score_line,
    upscale,
)
from ui.loaders import load_encoders
from ui.settings import current_predictor, error_text

QP = "query-params"
MAX_COMPARE = 4
MAX_PATCHES_SHOWN = 48
# The widget keys a saved view keeps besides the per-dataset filters (s_*, h_*, c_*).
VIEW_KEYS = ("q", "split", "fw", "tag_filter", "tag_all", "sort", "desc", "view", "per_page", "thumb_overlay",
             "overlay", "opacity", "cmap", "similar", "map_colour", "map_text", "map_sel", "cmp", "cmp_heat",
             "cmp_opacity", "cmp_cmap", "patch_heat", "patch_threshold", "patch_sort", "emb_src", "map_layout")
VIEW_PREFIXES = ("s_", "h_", "c_")


# --- what the sidebar offers, per dataset ---------------------------------------------------------------

@dataclass(frozen=True)
class FrameFacts:
    """What the filter sidebar and the map offer for a dataset: derived from its frame alone, so worked out
    once per loaded dataset object (category_columns scans every column: ~10 ms a rerun at 200,000)."""

    splits: list[str]
    scores: list[str]
    heatmaps: list[str]
    has_flagged: bool
    categories: dict[str, list]
    sortable: list[str]


_FACTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def frame_facts(ds: Dataset) -> FrameFacts:
    facts = _FACTS.get(ds)
    if facts is None:
        frame = ds.frame
        facts = FrameFacts(splits=sorted(frame["split"].dropna().astype(str).unique()), scores=score_columns(frame),
                           heatmaps=heatmap_columns(frame),
                           has_flagged=bool("n_flagged_words" in frame and frame["n_flagged_words"].any()),
                           categories=category_columns(frame), sortable=sortable_columns(frame))
        _FACTS[ds] = facts
    return facts


# --- gallery cells ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class GalleryCell:
    """What a gallery cell shows of a record: its thumbnail as PNG bytes and its caption's facts."""

    png: bytes
    id: str
    prompt: str
    scores: dict
    peak: float | None  # the overlay heatmap's peak, when the record has that heatmap
    small: bool = False  # the image is smaller than a thumbnail: the page enlarges it with crisp pixels


# Per loaded dataset object (the loaders keep one per spec; a reload is a new object, so nothing stale
# survives it), the last GALLERY_CELLS cells. A rerun (a filter, a slider, a page turn) otherwise
# re-rendered every ShapesWorld scene and re-encoded every PNG: 0.3–0.5 s of a 0.5 s rerun at 20K
# records (profiled; benchmarks/bench_explorer.py).
GALLERY_CELLS = 1024
_CELLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CELLS_LOCK = threading.Lock()


def gallery_cell(ds: Dataset, pos: int, overlay: str, side: int = 160) -> GalleryCell:
    """The record at `pos` as a gallery cell with `overlay` ("none" or a heatmap), from the cache when
    this dataset object drew it before. Raises what reading the record raises (RHFError)."""
    key = (int(pos), overlay, side)
    with _CELLS_LOCK:
        cells = _CELLS.setdefault(ds, OrderedDict())
        if key in cells:
            cells.move_to_end(key)
            return cells[key]
    # Without an overlay the thumbnail needs no heatmap: ds.preview skips what makes them where that costs.
    rec = ds.preview(int(pos)) if overlay == "none" else ds[int(pos)]
    img = record_view_image(rec, None if overlay == "none" else overlay, 0.7, "inferno", side, enlarge=False)
    # Encoded at (at most twice) thumbnail size, never enlarged here: a 64 px ShapesWorld image is 9x
    # fewer pixels to encode than the 192 px it used to be sent as (the browser enlarges it, crisply),
    # and a 1024 px photograph is not sent whole for a 160 px cell.
    if max(img.size) > 2 * side:
        img = img.copy()  # thumbnail() shrinks in place (never enlarges), and the record keeps its image
        img.thumbnail((2 * side, 2 * side), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)  # 2.4x faster than the default level 6, 23% larger
    cell = GalleryCell(buf.getvalue(), rec.id, rec.prompt, dict(rec.scores),
                       heat_peak(rec.heatmaps[overlay]) if overlay in rec.heatmaps else None,
                       small=max(img.size) < side)
    with _CELLS_LOCK:
        cells[key] = cell
        while len(cells) > GALLERY_CELLS:
            cells.popitem(last=False)
    return cell


def tag_store(ds: Dataset) -> TagStore:
    """The dataset's tag store; an exported folder's own `tags` column seeds it on first use."""
    store = TagStore(ds.spec)
    carried = tags_in_frame(ds.frame)
    if carried:
        store.seed(carried)
    return store


def selected_ids() -> list[str]:
    """Ids ticked in the gallery (their checkboxes' keys are `sel_<id>`)."""
    return sorted(k.removeprefix("sel_") for k, v in st.session_state.items() if k.startswith("sel_") and v)


# --- tags --------------------------------------------------------------------------------------

def tag_filter_sidebar(store: TagStore) -> frozenset[str] | None:
    """The sidebar's tag filter: ids carrying the chosen tags, or None when no tag is chosen."""
    try:
        counts = store.tag_counts()
    except RHFError as e:
        st.error(error_text(e))
        return None
    st.header("Tags")
    if not counts:
        st.caption("No record is tagged yet: tick records in the gallery, or open one, to tag it.")
    # The options are the plain tags: a bound multiselect keeps its option labels in the URL, so a
    # label with the record count in it would break shared links whenever the count changed.
    chosen = st.multiselect("Has tag", list(counts), key="tag_filter", bind=QP,
                            help=" · ".join(f"{t}: {n} records" for t, n in counts.items()) or None)
    match_all = st.toggle("Every chosen tag", key="tag_all", bind=QP, help="Off: records with any of them.")
    return frozenset(store.ids_with(chosen, match_all)) if chosen else None


def change_tags(store: TagStore, ids: list[str], tag: str, add: bool) -> None:
    """Button callback: add or remove `tag` on `ids`, and say what happened."""
    try:
        n = store.add(ids, tag) if add else store.remove(ids, tag)
    except RHFError as e:
        st.session_state["tag_message"] = ("error", error_text(e))
        return
    verb = "tagged" if add else "untagged"
    st.session_state["tag_message"] = ("success", f"{n} record{'s' * (n != 1)} {verb} `{tag.strip().lower()}`.")


def tag_message() -> None:
    kind, text = st.session_state.pop("tag_message", (None, None))
    if kind:
        getattr(st, kind)(text)


def tag_bar(store: TagStore, ids: list[str], key: str, what: str) -> None:
    """A tag name field with Tag / Untag buttons acting on `ids`."""
    c1, c2, c3 = st.columns([3, 1, 1], vertical_alignment="bottom")
    tag = c1.text_input(f"Tag {what}", key=f"tag_text_{key}", placeholder="e.g. hands, bad-count")
    disabled = not ids or not tag.strip()
    c2.button("Tag", key=f"tag_add_{key}", disabled=disabled, on_click=change_tags, args=(store, ids, tag, True),
              width="stretch")
    c3.button("Untag", key=f"tag_remove_{key}", disabled=disabled, on_click=change_tags,
              args=(store, ids, tag, False), width="stretch")
    tag_message()


def store_tags(store: TagStore) -> dict[str, list[str]]:
    """Record id → tags; none when the tags file is damaged (the sidebar says so)."""
    try:
        return store.tags()
    except RHFError:
        return {}


def record_tags(store: TagStore, rec_id: str) -> None:
    """The open record's tags, and a bar to change them."""
    try:
        tags = store.tags().get(rec_id, [])
    except RHFError as e:
        st.error(error_text(e))
        return
    st.markdown("**Tags:** " + (" ".join(f"`{t}`" for t in tags) if tags else "none"))
    tag_bar(store, [rec_id], "record", "this record")


# --- saved views -------------------------------------------------------------------------------

def current_view_params() -> dict:
    """The page's filters, sort, view and display settings, as a saved view keeps them."""
    out = {}
    for key, value in st.session_state.items():
        if key in VIEW_KEYS or key.startswith(VIEW_PREFIXES):
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


def open_view(store: TagStore) -> None:
    """Button callback: put a saved view's values into the widgets (and so into the URL)."""
    name = st.session_state.get("view_pick")
    try:
        params = store.views().get(name)
    except RHFError as e:
        st.session_state["view_message"] = ("error", error_text(e))
        return
    if params is None:
        return
    for key, value in params.items():
        # A range slider's value is a tuple; JSON brought it back as a list.
        st.session_state[key] = tuple(value) if key.startswith("s_") and isinstance(value, list) else value
    st.session_state["view_message"] = ("success", f"Opened view `{name}`.")


def save_view(store: TagStore) -> None:
    name = st.session_state.get("view_name", "")
    try:
        store.save_view(name, current_view_params())
    except RHFError as e:
        st.session_state["view_message"] = ("error", error_text(e))
        return
    st.session_state["view_message"] = ("success", f"Saved view `{' '.join(name.split())}`.")


def delete_view(store: TagStore) -> None:
    name = st.session_state.get("view_pick")
    try:
        store.delete_view(name)
    except RHFError as e:
        st.session_state["view_message"] = ("error", error_text(e))
        return
    st.session_state["view_message"] = ("success", f"Deleted view `{name}`.")


def saved_views_sidebar(store: TagStore) -> None:
    """Save the current filters, sort and view under a name; list and reopen saved ones."""
    st.header("Saved views")
    try:
        names = sorted(store.views())
    except RHFError as e:
        st.error(error_text(e))
        return
    # One above the other: the sidebar is too narrow for a name field and a button side by side.
    st.text_input("View name", key="view_name", placeholder="e.g. low plausibility hands")
    st.button("Save current view", key="view_save", on_click=save_view, args=(store,), width="stretch",
              disabled=not st.session_state.get("view_name", "").strip())
    if names:
        st.selectbox("Saved views", names, key="view_pick")
        c1, c2 = st.columns(2)
        c1.button("Open", key="view_open", on_click=open_view, args=(store,), width="stretch")
        c2.button("Delete", key="view_delete", on_click=delete_view, args=(store,), width="stretch")
    st.caption("The URL holds the same settings: copy it to share a view.")
    kind, text = st.session_state.pop("view_message", (None, None))
    if kind:
        getattr(st, kind)(text)


# --- compare -----------------------------------------------------------------------------------

def compare_ids(text: str) -> list[str]:
    return [t.strip() for t in str(text or "").split(",") if t.strip()]


def start_compare(ids: list[str]) -> None:
    """Button callback: open the Compare view on `ids`."""
    st.session_state["cmp"] = ", ".join(ids[:MAX_COMPARE])
    st.session_state["view"] = "Compare"


def compare_view(ds: Dataset, heatmaps: list[str]) -> None:
    """2–4 records side by side, their overlays on one colour scale."""
    text = st.text_input("Records to compare (ids, comma-separated)", key="cmp", bind=QP,
                         help=f"2 to {MAX_COMPARE} ids; or tick records in the gallery and press *Compare*.")
    ids = compare_ids(text)
    if not 2 <= len(ids) <= MAX_COMPARE:
        st.info(f"Name 2 to {MAX_COMPARE} records to compare (now {len(ids)}).")
        return
    if not heatmaps:
        st.info("This dataset has no heatmaps to compare.")
        return
    c1, c2, c3 = st.columns(3)
    heat = c1.segmented_control("Heatmap", heatmaps, default=heatmaps[0], key="cmp_heat", bind=QP,
                                required=True) or heatmaps[0]
    opacity = c2.slider("Opacity", 0.0, 1.0, 0.6, 0.05, key="cmp_opacity", bind=QP)
    cmap = c3.selectbox("Colour map", COLOR_MAPS, key="cmp_cmap", bind=QP)
    try:
        records = [ds.get(i) for i in ids]
        images, vmax = overlays_on_one_scale(records, heat, opacity, cmap, 256)
    except RHFError as e:
        st.error(error_text(e))
        return
    for rec, img, col in zip(records, images, st.columns(len(records))):
        peak = float(rec.heatmaps[heat].max()) if heat in rec.heatmaps else None
        col.image(img, caption=f"{rec.id} · peak {peak:.3g}" if peak is not None else f"{rec.id} · {heat}: not collected",
                  width="stretch", output_format="PNG")
        col.caption(f"{rec.prompt[:80]}  \n{score_line(rec.scores)}")
    st.image(heat_colour_bar(vmax, cmap), caption=f"One scale for all {len(records)}: 0 → {vmax:.3g}, "
             "the highest peak among them", output_format="PNG")


# --- patches -----------------------------------------------------------------------------------

@st.cache_data(max_entries=8, show_spinner="Finding blobs…")
def cached_patches(spec: str, positions_key: str, _ds: Dataset, _positions: np.ndarray, heat: str,
                   threshold: float, sort_by: str):
    return collect_patches(_ds, _positions, heat, threshold, sort_by)


def patches_view(ds: Dataset, positions: np.ndarray, positions_key: str, heatmaps: list[str]) -> None:
    """A grid of crops around every heatmap blob above a threshold, across the filtered set."""
    if not heatmaps or len(positions) == 0:
        st.info("No heatmaps in the filtered set.")
        return
    c1, c2, c3 = st.columns(3)
    heat = c1.selectbox("Heatmap", heatmaps, key="patch_heat", bind=QP)
    threshold = c2.slider("Heat above", 0.0, 0.95, 0.3, 0.05, key="patch_threshold", bind=QP)
    sort_by = c3.segmented_control("Sort by", SORT_KEYS, default="heat", key="patch_sort", bind=QP,
                                   required=True) or "heat"
    try:
        patches, scanned, problems = cached_patches(ds.spec, positions_key, ds, positions, heat, threshold, sort_by)
    except RHFError as e:
        st.error(error_text(e))
        return
    st.caption(f"**{len(patches):,}** blobs in the {scanned:,} records with {heat} maps"
               + (f" ({len(problems)} unreadable)" if problems else "")
               + f"; sorted by {'peak heat' if sort_by == 'heat' else 'area'}, largest first"
               + (f"; the first {MAX_PATCHES_SHOWN} shown." if len(patches) > MAX_PATCHES_SHOWN else "."))
    if not patches:
        st.info("No blob above this threshold: lower it.")
        return
    cols_per_row = 8
    shown = patches[:MAX_PATCHES_SHOWN]
    click_to_open("patch_clicks")  # a click on a crop presses its tile's Open button
    for start in range(0, len(shown), cols_per_row):
        for k, (col, p) in enumerate(zip(st.columns(cols_per_row), shown[start:start + cols_per_row])):
            with col, st.container(key=f"gcell_patch_{start + k}"):
                patch_tile(ds, p)
    st.image(heat_colour_bar(1.0, "inferno"), caption="Overlay scale: 0 → 1 (heat as stored)", output_format="PNG")


def patch_tile(ds: Dataset, p) -> None:
    try:
        rec = ds[p.position]
        hm = rec.heatmaps[p.heatmap]
        img = rec.image if rec.image is not None else placeholder(hm.shape[1], "")
        crop = crop_patch(overlay_heatmap(img, hm, 0.5, "inferno", normalize=False), p.blob, hm.shape)
    except RHFError as e:
        st.caption(f"{p.rec_id}: {error_text(e)}")
        return
    st.image(upscale(crop, 96), width="stretch", output_format="PNG")
    st.caption(f"heat {p.blob.peak:.2f} · {p.blob.area:.1%}")
    st.button("Open", key=f"patch_open_{p.rec_id}_{p.blob.box}", on_click=open_record, args=(p.rec_id,),
              width="stretch")


def open_record(rec_id: str) -> None:
    """Button callback: show the record `rec_id` in the Record view."""
    st.session_state["rec_id"] = rec_id
    st.session_state["view"] = "Record"


# --- embeddings: the map, "more like this" and text search --------------------------------------

AUTO_EMBED = 5000  # datasets up to this size are embedded on first use; larger ones wait for a button
MAX_SIMILAR = 8
MAX_TEXT_HITS = 24
MAP_HEIGHT = 560
# Options are their own labels: a bound widget keeps the label in the URL (?emb_src=RAHF&map_layout=UMAP).
SOURCES = ("CLIP", "RAHF")
LAYOUTS = ("PCA", "UMAP")


def source_choice(container=st) -> str:
    """The embeddings source, bound to `?emb_src=`; the Map view and "More like this" share it."""
    return container.selectbox(
        "Embeddings from", SOURCES, key="emb_src", bind=QP, persist_state="page",
        help="CLIP: the reward's CLIP image tower (text search works). RAHF: the image encoder of the RAHF "
             "checkpoint in the sidebar (its patch tokens, mean-pooled). Each is computed once per dataset "
             "and model and cached.")


@st.cache_resource(max_entries=4, show_spinner=False)
def cached_embedder(source: str, model_key: str, _model):
    """The embedder of a loaded model, built once: its weights fingerprint reads every tensor."""
    return image_embedder(_model)


def current_embedder(source: str):
    """The embedder of the chosen source: the reward's CLIP pair, or the sidebar's RAHF checkpoint
    (None, with the error shown, when that checkpoint does not load)."""
    if source == "RAHF":
        rahf = current_predictor(stop_on_error=False)
        return None if rahf is None else cached_embedder("rahf", rahf.weights_key, rahf)
    encoders = load_encoders()
    return cached_embedder("clip", encoders.name, encoders)


@st.cache_resource(max_entries=4, show_spinner=False)
def cached_embeddings(spec: str, fingerprint: str, _ds: Dataset, _embedder) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, PCA map) of a dataset's records: the disk cache, or computed with a progress bar."""
    bar = st.progress(0.0, text=f"Embedding {len(_ds):,} records…")

    def progress(done: int, total: int) -> None:
        bar.progress(done / total, text=f"Embedding records: {done:,} / {total:,}")

    emb = image_embeddings(_ds, _embedder, progress=progress)
    bar.empty()
    return emb, pca_2d(emb)


def dataset_embeddings(ds: Dataset, purpose: str, source: str):
    """(embeddings, PCA map, embedder) of the dataset by `source`, or None while a large uncached
    dataset waits for the button (or the RAHF checkpoint does not load)."""
    try:
        embedder = current_embedder(source)
        if embedder is None:
            return None
        path = embeddings_path(ds, embedder)
        go_key = f"{ds.spec}|{embedder.fingerprint}"
        if len(ds) > AUTO_EMBED and not path.exists() and st.session_state.get("embed_go") != go_key:
            st.info(f"{purpose} needs image embeddings of all {len(ds):,} records from {embedder.name}; "
                    "they are computed once and cached.")
            st.button(f"Compute embeddings ({len(ds):,} records)", key="embed_go_button",
                      on_click=st.session_state.__setitem__, args=("embed_go", go_key))
            return None
        emb, xy = cached_embeddings(ds.spec, frame_fingerprint(ds) + embedder.fingerprint, ds, embedder)
        return emb, xy, embedder
    except RHFError as e:
        st.error(error_text(e))
        return None


@st.cache_resource(max_entries=4, show_spinner=False)
def cached_umap(spec: str, fingerprint: str, _ds: Dataset, _embedder, _emb: np.ndarray) -> np.ndarray:
    """The UMAP layout: the disk cache, or computed (minutes for tens of thousands of records)."""
    return dataset_umap(_ds, _embedder, _emb)


def map_layout(ds: Dataset, embedder, emb: np.ndarray, xy_pca: np.ndarray, layout: str) -> tuple[np.ndarray, str]:
    """The map's 2-D coordinates and axis name: PCA, or UMAP (with a spinner the first time)."""
    if layout != "UMAP":
        return xy_pca, "PC"
    fingerprint = frame_fingerprint(ds) + embedder.fingerprint
    if umap_path(ds, embedder).exists():
        return cached_umap(ds.spec, fingerprint, ds, embedder, emb), "UMAP"
    with st.spinner(f"UMAP layout of {len(emb):,} records: computed once for this dataset and encoder, then "
                    "cached (20,000 records took 48–155 s on a busy 2-core machine, plus 25–50 s to compile "
                    "UMAP the first time in a server process)…", show_time=True):
        return cached_umap(ds.spec, fingerprint, ds, embedder, emb), "UMAP"


def map_colour_options(ds: Dataset) -> list[str]:
    facts = frame_facts(ds)
    return ["none"] + facts.sortable + list(facts.categories)


def map_traces(frame, inside: np.ndarray, colour: str) -> list[tuple[str, str, np.ndarray]]:
    """(kind, name, frame positions) of each trace the map draws, in drawing order: the records outside
    the filters, then those inside (one trace per value of a category colour). A box or lasso
    selection names points by (curve_number, point_index); these positions map them back to records,
    so the points carry no customdata (as per-point lists it cost ~5 s at 200,000 points)."""
    positions = np.arange(len(frame))
    traces = []
    out = positions[~inside]
    if len(out):
        traces.append(("out", "outside the filters", out))
    inn = positions[inside]
    if colour not in frame:
        return traces + [("plain", "matching", inn)]
    if pd.api.types.is_numeric_dtype(frame[colour]) and not pd.api.types.is_bool_dtype(frame[colour]):
        return traces + [("numeric", "matching", inn)]
    values = frame[colour].to_numpy()[inn].astype(str)  # a category: one trace (and legend entry) per value
    return traces + [("category", value, inn[values == value]) for value in sorted(pd.unique(values))]


def map_figure(xy: np.ndarray, frame, inside: np.ndarray, colour: str, axes: str = "PC") -> go.Figure:
    """A WebGL scatter of every record: those passing the filters coloured by `colour`, the rest grey
    (traces from `map_traces`)."""
    # Fixed-width unicode, not object: plotly deep-copies each trace's data, one memcpy instead of 200,000 strings.
    ids = frame["id"].astype(str).to_numpy().astype(str)
    fig = go.Figure()
    for kind, name, pos in map_traces(frame, inside, colour):
        common = dict(x=xy[pos, 0], y=xy[pos, 1], mode="markers", name=name, text=ids[pos])
        if kind == "out":
            fig.add_trace(go.Scattergl(**common, marker=dict(color="lightgrey", size=4),
                                       hovertemplate="%{text}<extra>filtered out</extra>"))
        elif kind == "numeric":
            fig.add_trace(go.Scattergl(**common, marker=dict(
                color=frame[colour].to_numpy()[pos].astype(float), colorscale="Viridis", size=5,
                colorbar=dict(title=colour.replace("_", " "))),
                hovertemplate=f"%{{text}}<br>{colour} %{{marker.color:.3f}}<extra></extra>"))
        elif kind == "category":
            fig.add_trace(go.Scattergl(**common, marker=dict(size=5), hovertemplate=f"%{{text}}<extra>{name}</extra>"))
        else:
            fig.add_trace(go.Scattergl(**common, marker=dict(size=5, color="#1f77b4"),
                                       hovertemplate="%{text}<extra></extra>"))
    fig.update_layout(height=MAP_HEIGHT, margin=dict(l=10, r=10, t=10, b=10), dragmode="lasso",
                      xaxis_title=f"{axes} 1", yaxis_title=f"{axes} 2", legend=dict(itemsizing="constant"))
    return fig


def store_map_selection(frame, traces: list[tuple[str, str, np.ndarray]]) -> None:
    """Chart callback: the records in the box/lasso become the map filter (an empty selection clears it).
    `traces` are the drawn chart's (`map_traces`), so (curve_number, point_index) names a record."""
    event = st.session_state.get("emb_map") or {}
    points = (event.get("selection") or {}).get("points") or []
    chosen = set()
    for p in points:
        curve, index = p.get("curve_number"), p.get("point_index")
        if isinstance(curve, int) and isinstance(index, int) and 0 <= curve < len(traces) \
                and 0 <= index < len(traces[curve][2]):
            chosen.add(str(frame["id"].iat[int(traces[curve][2][index])]))
    st.session_state["map_sel"] = sorted(chosen) if chosen else None


def map_selection(frame, positions: np.ndarray) -> np.ndarray:
    """`positions` narrowed to the records selected on the map (all of them when nothing is selected)."""
    chosen = st.session_state.get("map_sel")
    if not chosen:
        return positions
    keep = frame["id"].iloc[positions].astype(str).isin(set(chosen)).to_numpy()
    return positions[keep]


def clear_map_selection() -> None:
    st.session_state["map_sel"] = None


def map_view(ds: Dataset, base_positions: np.ndarray) -> None:
    """Every record on a 2-D map of its image embeddings; box/lasso selects records for the gallery."""
    c0, c1, c2 = st.columns(3, vertical_alignment="bottom")
    source = source_choice(c0)
    layout = c1.selectbox("Layout", LAYOUTS, key="map_layout", bind=QP, persist_state="page",
                          help="PCA: the two main directions of the embeddings, instant. UMAP: keeps "
                               "neighbourhoods, so clusters separate; computed once per dataset and encoder.")
    frame = ds.frame
    colour = c2.selectbox("Colour by", map_colour_options(ds), key="map_colour", bind=QP,
                          format_func=lambda c: c.replace("_", " "))
    got = dataset_embeddings(ds, "The map", source)
    if got is None:
        return
    emb, xy_pca, embedder = got
    try:
        xy, axes = map_layout(ds, embedder, emb, xy_pca, layout)
    except RHFError as e:
        st.error(error_text(e))
        xy, axes = xy_pca, "PC"
    inside = np.zeros(len(frame), dtype=bool)
    inside[base_positions] = True
    traces = map_traces(frame, inside, colour)
    st.plotly_chart(map_figure(xy, frame, inside, colour, axes), key="emb_map",
                    on_select=lambda: store_map_selection(frame, traces), selection_mode=("box", "lasso"))
    chosen = st.session_state.get("map_sel")
    st.caption(f"{'UMAP' if axes == 'UMAP' else 'PCA'} of {embedder.name} image embeddings ({emb.shape[1]} dims) "
               f"of all {len(frame):,} records; {int(inside.sum()):,} pass the filters (grey: the rest). Draw a "
               "box or lasso to filter the gallery to those records.")
    if chosen:
        st.button(f"Clear the map selection ({len(chosen):,} records)", key="map_clear", on_click=clear_map_selection)
    text_search_panel(ds, emb, embedder)


def text_search_panel(ds: Dataset, emb: np.ndarray, embedder) -> None:
    """Records whose images are nearest to a text query, through the CLIP text tower."""
    if not embedder.has_text:
        st.caption("Text search needs the reward's CLIP encoder: the RAHF image encoder has no text tower "
                   "aligned with its image embeddings. Choose the CLIP source above to search by text.")
        return
    query = st.text_input("Search images by text", key="map_text", bind=QP, placeholder="e.g. a red circle",
                          help="Ranks every record by the cosine similarity of its image to the text's embedding.")
    if not query.strip():
        return
    try:
        top, sims = text_search(emb, embedder, query, k=MAX_TEXT_HITS)
    except RHFError as e:
        st.error(error_text(e))
        return
    st.caption(f"The {len(top)} images nearest to “{query.strip()}”, most similar first")
    thumbnails(ds, top, sims, "text")
    st.button("Filter the gallery to these", key="text_to_filter", on_click=st.session_state.__setitem__,
              args=("map_sel", sorted(str(ds.frame["id"].iat[int(p)]) for p in top)))


def similar_records(ds: Dataset, position: int) -> None:
    """The record's nearest neighbours in image-embedding space, as thumbnails."""
    source = source_choice(st.columns(3)[0])
    got = dataset_embeddings(ds, "More like this", source)
    if got is None:
        return
    emb, _, embedder = got
    try:
        top, sims = cached_neighbours(frame_fingerprint(ds) + embedder.fingerprint, position, emb)
    except RHFError as e:
        st.error(error_text(e))
        return
    st.caption(f"The {len(top)} records whose images are nearest to this one (cosine similarity of "
               f"{embedder.name} image embeddings)")
    thumbnails(ds, top, sims, "similar")


@st.cache_data(max_entries=256, show_spinner=False)
def cached_neighbours(fingerprint: str, position: int, _emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A record's nearest neighbours, searched once per record: an exact search over 200,000 × 512
    embeddings costs ~47 ms of CPU (benchmarks/results/explorer_map.json), and the Record view reruns
    on every widget change."""
    return more_like(_emb, position, MAX_SIMILAR)


def thumbnails(ds: Dataset, positions: np.ndarray, sims: np.ndarray, key: str, per_row: int = 8) -> None:
    """Ranked records as thumbnails with their similarity; a click on one (or its button) opens it."""
    click_to_open(f"{key}_clicks")  # cells keyed gcell_<key>_<pos>: see CLICK_TO_OPEN_JS
    for start in range(0, len(positions), per_row):
        for col, pos, sim in zip(st.columns(per_row), positions[start:start + per_row], sims[start:start + per_row]):
            with col, st.container(key=f"gcell_{key}_{pos}"):
                rec_id = str(ds.frame["id"].iat[int(pos)])
                try:
                    rec = ds.preview(int(pos))  # image and prompt only
                    img = rec.image if rec.image is not None else placeholder(96, "no image")
                except RHFError as e:
                    st.caption(f"{rec_id}: {error_text(e)}")
                    continue
                st.image(upscale(img, 96), width="stretch", output_format="PNG")
                st.caption(f"{rec.prompt[:40] or rec_id}  \nsim {sim:.3f}")
                st.button("Open", key=f"{key}_open_{pos}", on_click=open_record, args=(rec_id,), width="stretch")
