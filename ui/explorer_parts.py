"""The explorer's tag, saved-view, compare and patch panels (app_pages/explorer.py draws them).

Each panel is a function of the dataset and the filtered positions; widget keys are the URL
parameter names, as on the rest of the page.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from rhf_core.dataset import Dataset
from rhf_core.errors import RHFError
from rhf_core.heatmaps import COLOR_MAPS, overlay_heatmap
from rhf_core.patches import SORT_KEYS, collect_patches, crop_patch
from rhf_core.tags import TagStore, tags_in_frame
from ui.components import heat_colour_bar, overlays_on_one_scale, placeholder, score_line, upscale
from ui.settings import error_text

QP = "query-params"
MAX_COMPARE = 4
MAX_PATCHES_SHOWN = 48
# The widget keys a saved view keeps besides the per-dataset filters (s_*, h_*, c_*).
VIEW_KEYS = ("q", "split", "fw", "tag_filter", "tag_all", "sort", "desc", "view", "per_page", "thumb_overlay",
             "overlay", "opacity", "cmap", "cmp", "cmp_heat", "cmp_opacity", "cmp_cmap", "patch_heat", "patch_threshold", "patch_sort")
VIEW_PREFIXES = ("s_", "h_", "c_")


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
    for start in range(0, len(shown), cols_per_row):
        for col, p in zip(st.columns(cols_per_row), shown[start:start + cols_per_row]):
            with col:
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
