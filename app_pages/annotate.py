"""Annotate: collect rich human feedback on images, one at a time, into a folder (`folder:DIR`).

Click points on the image for each heatmap type, toggle misaligned prompt words, rate the four
scores 1–5 and save; several annotators per image. Every save goes through
`rhf_core.annotation.add_annotation` (atomic, locked, double-click safe), which recomputes the
record's labels, so the folder opens in the explorer and trains RAHF at once. Clicks come from the
`streamlit-image-coordinates` component; its displayed coordinates are mapped back to the stored
image's pixels here.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image, ImageDraw
from streamlit_image_coordinates import streamlit_image_coordinates

from rhf_core import annotation as A
from rhf_core.dataset import HEATMAP_NAMES, SCORE_NAMES, tokenize_prompt
from rhf_core.errors import RHFError, SharedModeError
from rhf_core.heatmaps import RAPIDATA_SIGMA_FRAC, RICHHF_DISK_RADIUS_FRAC
from rhf_core.images import load_image
from rhf_core.shared import expand_path
from ui.loaders import load_dataset
from ui.settings import current_dataset, current_spec, error_text, policy

QP = "query-params"
SOURCES = ["Explorer's filtered set", "Error analysis (worst first)", "Image folder", "Uploads"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
COLORS = {"implausibility": (230, 40, 40), "misalignment": (30, 110, 245)}
OTHER_COLOR = (250, 170, 0)
LIKERT_HELP = "1 = worst, 5 = best (saved normalised to [0, 1] as (x − 1) / 4)."
MAX_FOLDER_IMAGES = 5000  # files listed from an image folder

st.title("Annotate")
POLICY = policy()
ss = st.session_state
ss.setdefault("ann_session", uuid.uuid4().hex[:12])  # makes idempotency keys unique per browser session
ss.setdefault("ann_points", {})  # form id → {type: [(x, y) in stored pixels]}
ss.setdefault("ann_history", {})  # form id → [type, …] in click order (for undo)
ss.setdefault("ann_round", {})  # item key → how many saves made on it here (a fresh form after each)
ss.setdefault("ann_seen_click", {})  # component key → unix_time of the last click used


@dataclass
class Item:
    """One image of the queue. `record_id` is its id in the target folder (None: the image's hash)."""

    key: str
    label: str
    load: Callable[[], Image.Image]
    prompt: str | None  # None: the annotator types it (a new image without a known prompt)
    record_id: str | None = None
    source: dict | None = None


# --- 1. Who, where, and which images ---------------------------------------------------------------

c1, c2, c3 = st.columns([1, 2, 1])
annotator = c1.text_input("Annotator", key="annotator", bind=QP, placeholder="your name",
                          help="Saved with every annotation; agreement compares annotators.").strip()
target_text = c2.text_input("Save to folder", key="ann_target", bind=QP, placeholder="/path/to/annotations",
                            help="A folder in the folder format (created if missing); open it as `folder:PATH`."
                                 + (" On this shared server: a folder inside the export folder." if POLICY.shared else ""))
display_w = c3.selectbox("Display width", [384, 512, 640, 768], index=1, key="ann_width",
                         help="On-screen size only; points are stored in the image's own pixels.")


def target_folder(text: str) -> Path | None:
    """The target folder checked (shared mode: inside the export root); None when not given."""
    text = str(text or "").strip()
    if not text:
        return None
    if not POLICY.shared:
        return expand_path(text)
    if POLICY.export_root is None:
        raise SharedModeError("this server has no export folder, so annotations cannot be saved here")
    real = POLICY.resolve(text, (POLICY.export_root,), "export")
    if real == POLICY.export_root:
        raise SharedModeError("name a folder inside the export folder, not the export folder itself")
    return real


try:
    TARGET = target_folder(target_text)
except RHFError as e:
    st.error(f"Save to folder: {error_text(e)}")
    TARGET = None
if TARGET is not None and TARGET.exists() and not TARGET.is_dir():
    st.error("Save to folder: that path is a file, not a folder.")
    TARGET = None


@st.cache_data(show_spinner=False, max_entries=16)
def folder_records(folder: str, stamp: tuple) -> dict:
    """Who annotated which record; `stamp` (the labels file's mtime and size) keys the cache."""
    return A.folder_records(folder)


@st.cache_data(show_spinner=False, max_entries=16)
def folder_agreement(folder: str, stamp: tuple):
    return A.agreement(folder)


def target_state():
    """(records, agreement) of the target folder as it is now; ({}, None) before its first save."""
    try:
        st_ = (TARGET / A.LABELS).stat()
    except (OSError, TypeError):  # no folder named yet, or nothing saved in it
        return {}, None
    stamp = (st_.st_mtime_ns, st_.st_size)
    records = folder_records(str(TARGET), stamp)
    try:
        return records, folder_agreement(str(TARGET), stamp)
    except RHFError as e:  # a hand-edited annotation the agreement cannot read
        st.warning(f"Agreement cannot be computed for this folder: {error_text(e)}")
        return records, None


RECORDS, AGREEMENT = target_state()
style_now = None
if TARGET is not None and (TARGET / A.CONFIG).is_file():
    try:
        style_now = A.folder_style(TARGET)
    except RHFError as e:
        st.error(error_text(e))
s1, s2 = st.columns([3, 2])
source = s1.segmented_control("Images from", SOURCES, key="ann_source", required=True,
                              default=None if "ann_source" in ss else SOURCES[0]) or SOURCES[0]
if style_now:
    s2.caption(f"Heatmaps in this folder: **{style_now}** "
               + ("(disks of radius 20/512 of the smaller side, as RichHF-18K)" if style_now == "richhf"
                  else "(Gaussians of σ = 5% of the smaller side, as Rapidata)"))
    style_new = style_now
else:
    style_new = s2.segmented_control(
        "Heatmap style of a new folder", list(A.STYLES), key="ann_style", required=True,
        default=None if "ann_style" in ss else A.DEFAULT_STYLE,
        help="richhf: each click is a disk of radius 20/512 of the smaller side (RichHF-18K); rapidata: a "
             "Gaussian of σ = 5% of it. Averaged over annotators either way.") or A.DEFAULT_STYLE


def dataset_items() -> tuple[list[Item], str]:
    """The explorer's filtered set of the sidebar dataset (all records when the explorer has not run)."""
    ds = current_dataset()
    positions = ss.get("explorer_positions")
    if positions is None or ss.get("explorer_spec") != ds.spec:
        positions, what = np.arange(len(ds)), "all records of the sidebar dataset (filter them on the explorer)"
    else:
        what = "the explorer's filtered set"
    return _record_items(ds, [int(p) for p in positions], _sidebar_spec(ds)), what


def _tag(text: str) -> str:
    """A short stand-in for a path or spec inside widget keys: keys show up in the page's HTML (and in the
    stored idempotency keys), and a shared server must not reveal its paths there."""
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _sidebar_spec(ds) -> str:
    """The sidebar dataset as the user named it (in shared mode ds.spec holds the resolved server path)."""
    return current_spec()[0] if POLICY.shared else ds.spec


def _record_items(ds, positions, shown_spec: str) -> list[Item]:
    """Queue items for records of `ds`; `shown_spec` is what a new record's meta.source names."""
    frame = ds.frame
    same_folder = TARGET is not None and getattr(ds, "root", None) is not None and \
        Path(ds.root).resolve() == TARGET.resolve()
    items = []
    for pos in positions:
        rec_id = str(frame["id"].iat[pos])

        def load(pos=pos):
            img = ds[pos].image
            if img is None:
                raise RHFError(f"{ds[pos].id} has no image (labels only)")
            return img

        items.append(Item(f"ds:{_tag(ds.spec)}:{rec_id}", rec_id, load, str(frame["prompt"].iat[pos]), rec_id,
                          None if same_folder else {"spec": POLICY.scrub(shown_spec), "id": rec_id}))
    return items


def analysis_items() -> tuple[list[Item], str]:
    """Live RAHF's error-analysis table of the sidebar dataset, most disagreeing first."""
    from rhf_core.rahf.analysis import DISAGREEMENT

    ds = current_dataset()
    stored = ss.get("live_analysis")
    if not stored or stored[0][0] != ds.spec:
        return [], ""
    table = stored[1]
    # "live_sort" is Live RAHF's widget: Streamlit drops its value once a run of this page ends, so the
    # column is remembered here, or the queue would reorder itself on the second run.
    by = ss.get("live_sort")
    if by in table:
        ss["ann_analysis_by"] = by
    else:
        by = ss.get("ann_analysis_by")
    if by not in table:
        by = next((c for c in DISAGREEMENT if c in table and table[c].notna().any()), None)
    if by is None:
        return [], ""
    ranked = table.sort_values(by, ascending=False, na_position="last")
    positions = [ds.index_of(str(i)) for i in ranked["id"]]
    return _record_items(ds, positions, _sidebar_spec(ds)), f"Live RAHF's error analysis, most disagreeing first by {DISAGREEMENT.get(by, by)}"


@st.cache_data(show_spinner=False, max_entries=8)
def list_images(folder: str, stamp: int) -> tuple[list[str], dict[str, str]]:
    """Image files of a folder (sorted, at most MAX_FOLDER_IMAGES) and prompts from `<stem>.txt` beside them;
    `stamp` (the folder's mtime) makes files added later show up."""
    root = Path(folder)
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())[:MAX_FOLDER_IMAGES]
    prompts = {}
    for p in files:
        txt = p.with_suffix(".txt")
        if txt.is_file():
            prompts[p.name] = txt.read_text(encoding="utf-8", errors="replace").strip()
    return [p.name for p in files], prompts


def folder_items() -> tuple[list[Item], str]:
    text = st.text_input("Image folder", key="ann_images", bind=QP, placeholder="/path/to/generated/images",
                         help="PNG, JPEG or WebP files; a `<name>.txt` beside an image holds its prompt. "
                              "A folder in the folder format (with labels.jsonl) is opened with its records.").strip()
    if not text:
        st.info("Name a folder of images to annotate.")
        return [], ""
    path = POLICY.data_path(text) if POLICY.shared else expand_path(text)
    if not path.is_dir():
        raise RHFError(f"{text} is not a folder")
    if (path / A.LABELS).is_file():
        ds = load_dataset(f"folder:{path}", None, _label=f"folder:{text}")
        return _record_items(ds, range(len(ds)), f"folder:{text}"), f"the records of folder:{text}"
    names, prompts = list_images(str(path), path.stat().st_mtime_ns)
    if not names:
        raise RHFError(f"{text} holds no PNG, JPEG or WebP images")
    items = [Item(f"file:{_tag(str(path))}/{n}", n, lambda p=path / n: load_image(p, max_side=None, name=p.name),
                  prompts.get(n), None, {"file": n}) for n in names]
    return items, f"{len(names):,} images of {text}"


def upload_items() -> tuple[list[Item], str]:
    files = st.file_uploader("Images (PNG, JPEG, WebP)", type=["png", "jpg", "jpeg", "webp"],
                             accept_multiple_files=True, key="ann_files")
    if not files:
        st.info("Upload the images to annotate.")
        return [], ""
    cap = POLICY.limit("uploads", 1000)
    items = []
    for f in files[:cap]:
        data = f.getvalue()
        digest = hashlib.sha1(data).hexdigest()[:16]
        items.append(Item(f"upload:{digest}", f.name, lambda d=data, n=f.name: load_image(d, max_side=None, name=n),
                          None, None, {"file": f.name}))
    if len(files) > cap:
        st.warning(f"The first {cap} uploads are queued (this server's limit).")
    return items, f"{len(items)} uploaded images"


try:
    ITEMS, WHAT = {"Explorer's filtered set": dataset_items, "Error analysis (worst first)": analysis_items,
                   "Image folder": folder_items, "Uploads": upload_items}[source]()
except RHFError as e:
    st.error(error_text(e))
    st.stop()
if source == SOURCES[1] and not ITEMS:
    st.info("No error analysis for this dataset yet: run one on the Live RAHF page (mode “Error analysis”), "
            "then come back; its ranking, worst first, becomes the queue.")
    st.stop()
if not ITEMS:
    if source == SOURCES[0]:
        st.info("No record matches the explorer's filters.")
    st.stop()

# The position in the queue, per queue (switching sources keeps each one's place).
queue_sig = hashlib.sha1((source + "|" + "|".join(i.key for i in ITEMS[:50]) + f"|{len(ITEMS)}").encode()).hexdigest()[:12]
pos_key = f"ann_pos_{queue_sig}"
ss.setdefault(pos_key, 0)
ss[pos_key] = min(max(int(ss[pos_key]), 0), len(ITEMS) - 1)
ITEM = ITEMS[ss[pos_key]]
FORM = f"{ITEM.key}#{ss['ann_round'].get(ITEM.key, 0)}"  # one annotation form; a fresh one after each save
ss["ann_points"].setdefault(FORM, {t: [] for t in HEATMAP_NAMES})
ss["ann_history"].setdefault(FORM, [])
POINTS = ss["ann_points"][FORM]


# --- 2. Actions (callbacks: they run before the page redraws, so the page shows their result) ----------

def go(step: int) -> None:
    ss[pos_key] = min(max(ss[pos_key] + step, 0), len(ITEMS) - 1)
    ss.pop("ann_message", None)


def undo() -> None:
    hist = ss["ann_history"][FORM]
    if hist:
        POINTS[hist.pop()].pop()


def clear_points() -> None:
    for t in POINTS:
        POINTS[t].clear()
    ss["ann_history"][FORM].clear()


def on_click(comp_key: str, size: tuple[int, int]) -> None:
    """A click on the displayed image → a point in the stored image's pixels, for the chosen type."""
    value = ss.get(comp_key)
    if not value or value.get("unix_time") == ss["ann_seen_click"].get(comp_key):
        return  # the component repeats its last value on every rerun: use each click once
    ss["ann_seen_click"][comp_key] = value.get("unix_time")
    w, h = size
    shown_w, shown_h = float(value.get("width") or 0), float(value.get("height") or 0)
    if shown_w <= 0 or shown_h <= 0:
        return
    x = min(max(float(value["x"]) * w / shown_w, 0.0), float(w))
    y = min(max(float(value["y"]) * h / shown_h, 0.0), float(h))
    kind = ss.get("ann_kind") or HEATMAP_NAMES[0]
    POINTS.setdefault(kind, []).append((round(x, 2), round(y, 2)))
    ss["ann_history"][FORM].append(kind)


def remove_point(widget_key: str) -> None:
    choice = ss.get(widget_key)
    if choice:
        kind, n = choice.rsplit(" ", 1)
        POINTS[kind].pop(int(n) - 1)
        hist = ss["ann_history"][FORM]
        # Forget that point's place in the undo order: drop the last history entry of that type.
        for i in range(len(hist) - 1, -1, -1):
            if hist[i] == kind:
                del hist[i]
                break
    ss[widget_key] = None


def set_kind(kind: str) -> None:
    ss["ann_kind"] = kind


def save(advance: bool) -> None:
    """Save this form's annotation; a readable message for every problem, nothing half done.

    Runs as a callback at the start of the next run, so what the user typed last (name, folder,
    prompt) is read from session state, not from the previous run's variables."""
    problems = []
    annotator = str(ss.get("annotator") or "").strip()
    try:
        target = target_folder(ss.get("ann_target"))
    except RHFError as e:
        ss["ann_message"] = ("error", f"Not saved: {error_text(e)}")
        return
    if not annotator:
        problems.append("enter your name in “Annotator”")
    if target is None:
        problems.append("name the folder to save to in “Save to folder”")
    prompt = PROMPT if PROMPT is not None else (str(ss.get(f"ann_prompt_{ITEM.key}") or "").strip() or None)
    scores = {s: ss.get(f"ann_{s}_{FORM}") for s in SCORE_NAMES}
    missing = [s for s, v in scores.items() if v is None]
    if missing:
        problems.append("rate " + ", ".join(missing))
    if prompt is None:
        problems.append("type the image's prompt")
    if problems:
        ss["ann_message"] = ("warning", "Not saved: " + "; ".join(problems) + ".")
        return
    words = ss.get(f"ann_words_{FORM}") or []
    try:
        records = A.folder_records(target)  # now, not as the page last drew it: another annotator may have saved
        img = ITEM.load()
        rec_id = ITEM.record_id or A.image_record_id(img)
        exists = rec_id in records
        # A folder's first save fixes its heatmap style; afterwards the folder's own style rules.
        style = None if (target / A.CONFIG).is_file() else (ss.get("ann_style") or A.DEFAULT_STYLE)
        saved = A.add_annotation(target, rec_id, None if exists else prompt, annotator, points=POINTS, words=words,
                                 scores=scores, image=None if exists else img, key=f"{ss['ann_session']}:{FORM}",
                                 style=style, source=ITEM.source)
    except RHFError as e:
        ss["ann_message"] = ("error", f"Not saved: {error_text(e)}")
        return
    # The explorer sees the new labels at once: ui.loaders keys a folder by its labels file's mtime.
    n_pts = sum(len(v) for v in POINTS.values())
    verb = "Already saved (a repeated click)" if saved.duplicate else "Saved"
    ss["ann_message"] = ("success", f"{verb}: `{saved.record_id}` by {annotator}, {n_pts} points, {len(words)} words; "
                                    f"the record now has {saved.n_annotators} annotator(s).")
    ss["ann_last_saved"] = saved.record_id
    ss["ann_round"][ITEM.key] = ss["ann_round"].get(ITEM.key, 0) + 1  # a fresh form for the next save here
    if advance:
        ss[pos_key] = min(ss[pos_key] + 1, len(ITEMS) - 1)


# --- 3. The image --------------------------------------------------------------------------------------

try:
    IMAGE = ITEM.load()
except RHFError as e:
    IMAGE = None
    load_error = error_text(e)
SIZE = IMAGE.size if IMAGE is not None else (0, 0)
rec_in_target = ITEM.record_id if ITEM.record_id is not None else (A.image_record_id(IMAGE) if IMAGE is not None else None)
known = RECORDS.get(rec_in_target) if rec_in_target else None
PROMPT = known["prompt"] if known else ITEM.prompt

nav = st.columns([1, 1, 1, 4], vertical_alignment="center")
nav[0].button("◀ Back", on_click=go, args=(-1,), disabled=ss[pos_key] == 0, shortcut="B", width="stretch")
nav[1].button("Skip ▶", on_click=go, args=(1,), disabled=ss[pos_key] >= len(ITEMS) - 1, shortcut="N", width="stretch")
nav[2].button("Save & next", type="primary", on_click=save, args=(True,), disabled=IMAGE is None,
              shortcut="S", width="stretch", key="ann_save")
nav[3].markdown(f"Image **{ss[pos_key] + 1:,}** of {len(ITEMS):,} · `{ITEM.label}` · {WHAT}")

message = ss.pop("ann_message", None)  # shown once: the next click or rerun clears it
if message:
    getattr(st, message[0])(message[1])

if IMAGE is None:
    st.error(f"This image cannot be shown: {load_error}. Skip it (N).")
    st.stop()


def marker_image(img: Image.Image, width: int) -> Image.Image:
    """The image at `width` with every point drawn: a dot, its number and the area it will mark
    (the disk, or a 1σ circle for Gaussians), in the colour of its type."""
    w, h = img.size
    scale = width / w
    shown = img.resize((width, max(1, round(h * scale))), Image.NEAREST if scale >= 1 else Image.LANCZOS)
    draw = ImageDraw.Draw(shown)
    side = min(w, h)
    reach = (RICHHF_DISK_RADIUS_FRAC if style_new == "richhf" else RAPIDATA_SIGMA_FRAC) * side * scale
    for kind, pts in POINTS.items():
        color = COLORS.get(kind, OTHER_COLOR)
        for n, (x, y) in enumerate(pts, start=1):
            cx, cy = x * scale, y * scale
            # A white halo under each mark keeps it visible on any image.
            draw.ellipse([cx - reach - 1, cy - reach - 1, cx + reach + 1, cy + reach + 1], outline=(255, 255, 255), width=4)
            draw.ellipse([cx - reach, cy - reach, cx + reach, cy + reach], outline=color, width=2)
            draw.ellipse([cx - 5, cy - 5, cx + 5, cy + 5], fill=color, outline=(255, 255, 255), width=2)
            draw.text((cx + 7, cy - 16), str(n), fill=(255, 255, 255), stroke_width=2, stroke_fill=color)
    return shown


left, right = st.columns([3, 2])
with left:
    kind = ss.get("ann_kind") or HEATMAP_NAMES[0]
    k1, k2, k3, k4 = st.columns(4)
    k1.button("Implausibility", type="primary" if kind == "implausibility" else "secondary", on_click=set_kind,
              args=("implausibility",), shortcut="I", width="stretch", help="Clicks mark implausible regions (I)")
    k2.button("Misalignment", type="primary" if kind == "misalignment" else "secondary", on_click=set_kind,
              args=("misalignment",), shortcut="M", width="stretch", help="Clicks mark misaligned regions (M)")
    k3.button("Undo point", on_click=undo, disabled=not ss["ann_history"][FORM], shortcut="U", width="stretch")
    k4.button("Clear points", on_click=clear_points, disabled=not any(POINTS.values()), width="stretch")
    comp_key = f"ann_click_{FORM}"
    streamlit_image_coordinates(marker_image(IMAGE, display_w), key=comp_key, width=display_w, cursor="crosshair",
                                on_click=lambda: on_click(comp_key, SIZE))
    counts = ", ".join(f"{len(v)} {t}" for t, v in POINTS.items())
    st.caption(f"Clicks now mark **{kind}** ({counts}). Stored image {SIZE[0]}×{SIZE[1]} px, shown at "
               f"{display_w} px wide. Shortcuts: I / M type, U undo, S save & next, N skip, B back.")
    labels = [f"{t} {n}" for t, v in POINTS.items() for n in range(1, len(v) + 1)]
    if labels:
        rm_key = f"ann_rm_{FORM}_{len(ss['ann_history'][FORM])}_{sum(len(v) for v in POINTS.values())}"
        st.pills("Remove a point", labels, key=rm_key, on_change=remove_point, args=(rm_key,),
                 help="Click a point's label (its type and the number drawn beside it) to remove it.")

with right:
    if PROMPT is None:
        PROMPT_FOR_WORDS = st.text_input("Prompt", key=f"ann_prompt_{ITEM.key}",
                                         placeholder="the prompt this image was made from",
                                         help="A new image without a prompt file: the first annotator types it.").strip()
    else:
        PROMPT_FOR_WORDS = PROMPT
        st.markdown(f"**Prompt:** {PROMPT or '*(none)*'}")
    tokens = tokenize_prompt(PROMPT_FOR_WORDS or "")
    if tokens:
        st.pills("Misaligned words (click to toggle)", list(range(len(tokens))), format_func=lambda i: tokens[i],
                 selection_mode="multi", key=f"ann_words_{FORM}")
    for s in SCORE_NAMES:
        st.segmented_control(s.capitalize(), [1, 2, 3, 4, 5], key=f"ann_{s}_{FORM}", help=LIKERT_HELP)
    if PROMPT is None:
        st.caption("The prompt is saved with the first annotation of this image.")
    if known:
        names = ", ".join(known["annotators"]) or "nobody yet"
        st.caption(f"In the target folder: `{rec_in_target}`, annotated by {names} ({known['n_annotations']} saves).")
    if AGREEMENT is not None and rec_in_target in set(AGREEMENT.records.get("id", [])):
        row = AGREEMENT.records.set_index("id").loc[rec_in_target]
        shown = pd.DataFrame({"measure": [k.replace("_", " ") for k in row.index if k != "n_annotators"],
                              "value": [float(row[k]) for k in row.index if k != "n_annotators"]})
        st.markdown(f"**Agreement on this image** ({int(row['n_annotators'])} annotators; — = undefined)")
        st.dataframe(shown.style.format({"value": "{:.3f}"}, na_rep="—"), hide_index=True, key="ann_rec_agreement")


# --- 4. Agreement over the folder ------------------------------------------------------------------------

st.divider()
if TARGET is None:
    st.caption("Name a folder in “Save to folder” to start saving; it is created if it does not exist.")
elif AGREEMENT is None or not len(AGREEMENT.records):
    st.caption(f"Nothing annotated in `{POLICY.scrub(TARGET)}` yet. Open it in the explorer as "
               f"`folder:{POLICY.scrub(TARGET)}`.")
else:
    f = AGREEMENT.folder
    st.markdown(f"**Agreement in the folder**: {int(f['n_records']):,} records annotated, {int(f['n_multi']):,} by two "
                "or more annotators. Spread = std of the ratings on the [0, 1] scale; CC = mean Pearson "
                "correlation of two annotators' heatmaps; Jaccard = overlap of their flagged words. "
                "— where undefined (one annotator, an empty map).")
    cols = st.columns(4)
    for col, s in zip(cols, SCORE_NAMES):
        v = f.get(f"spread_{s}", math.nan)
        col.metric(f"{s.capitalize()} spread", "—" if math.isnan(v) else f"{v:.3f}")
    cols = st.columns(4)
    for col, name in zip(cols, [f"cc_{t}" for t in HEATMAP_NAMES] + ["word_jaccard"]):
        v = f.get(name, math.nan)
        col.metric(name.replace("cc_", "CC ").replace("word_jaccard", "Word Jaccard"), "—" if math.isnan(v) else f"{v:.3f}")
    with st.expander("Per record"):
        st.dataframe(AGREEMENT.records, hide_index=True, key="ann_agreement_table")
    st.caption(f"Open the labels in the explorer with `folder:{POLICY.scrub(TARGET)}`; train with "
               f"`rhf train-rahf --data folder:{POLICY.scrub(TARGET)}`.")
