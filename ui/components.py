"""Small render helpers shared by the pages (record images, overlays, highlighted prompts)."""

from __future__ import annotations

import base64
import functools
import html
import io

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from rhf_core.dataset import FLAGGED_WORD_STRENGTH, SCORE_NAMES, Record
from rhf_core.heatmaps import colorize_heatmap, overlay_heatmap, resize_heatmap
from ui.settings import error_text

SHORT = {"plausibility": "Pl", "alignment": "Al", "aesthetics": "Ae", "overall": "Ov"}


def upscale(img: Image.Image, min_side: int) -> Image.Image:
    """Enlarge small images (ShapesWorld is 64 px) with crisp pixels; leave large ones alone."""
    if min(img.size) >= min_side:
        return img
    k = int(np.ceil(min_side / min(img.size)))
    return img.resize((img.width * k, img.height * k), Image.NEAREST)


def placeholder(size: int = 160, text: str = "no image") -> Image.Image:
    img = Image.new("RGB", (size, size), (236, 236, 236))
    from PIL import ImageDraw

    ImageDraw.Draw(img).text((size // 2 - 24, size // 2 - 6), text, fill=(120, 120, 120))
    return img


def record_view_image(rec: Record, heatmap: str | None, opacity: float, cmap: str, min_side: int,
                      enlarge: bool = True) -> Image.Image:
    """The record's image (or a `min_side` placeholder) with one heatmap overlaid, enlarged for display
    unless `enlarge` is False."""
    img = rec.image
    if img is None:
        if heatmap and heatmap in rec.heatmaps:  # labels-only: show the heatmap on grey
            h, w = rec.heatmaps[heatmap].shape
            img = Image.new("RGB", (w, h), (128, 128, 128))
        else:
            return placeholder(min_side)
    if heatmap and heatmap in rec.heatmaps:
        img = overlay_heatmap(img, rec.heatmaps[heatmap], opacity=opacity, cmap=cmap)
    return upscale(img, min_side) if enlarge else img


def heat_peak(heatmap: np.ndarray | None) -> float:
    return float(np.max(heatmap)) if heatmap is not None and np.size(heatmap) else 0.0


def overlay_on_scale(image: Image.Image, heatmap: np.ndarray, vmax: float, opacity: float = 0.6,
                     cmap: str = "inferno") -> Image.Image:
    """`image` with `heatmap` overlaid on the fixed colour scale [0, vmax] (heat ≥ vmax at the top of the map).

    Maps that are compared with each other (before / after / candidates) must share one scale: each one
    normalised by its own peak would make a faint map look as hot as a strong one, and raw colouring of
    a faint map is near black."""
    heat = resize_heatmap(heatmap, image.size)
    scale = vmax if vmax > 0 else 1.0  # an all-zero map stays cold whatever the scale
    return overlay_heatmap(image, np.clip(heat / scale, 0.0, 1.0), opacity=opacity, cmap=cmap, normalize=False)


def colour_bar(vmax: float, cmap: str = "inferno", width: int = 320, height: int = 12) -> Image.Image:
    """A horizontal colour bar for the scale [0, vmax], labelled at both ends."""
    from PIL import ImageDraw

    bar = colorize_heatmap(np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1)), cmap)
    out = Image.new("RGB", (width, height + 14), (255, 255, 255))
    out.paste(bar, (0, 0))
    draw = ImageDraw.Draw(out)
    draw.text((1, height + 1), "0", fill=(60, 60, 60))
    label = f"{vmax:.2f}"
    draw.text((width - 7 * len(label) - 1, height + 1), label, fill=(60, 60, 60))
    return out


def format_metric(value, undefined: str = "—") -> str:
    """A metric for display; NaN / None (undefined, e.g. word F1 when no word is flagged by either side)
    becomes `undefined`, never 0."""
    if value is None:
        return undefined
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return undefined if v != v else f"{v:.3f}"


def score_line(scores: dict) -> str:
    return " · ".join(f"{SHORT[n]} {scores[n]:.2f}" for n in SCORE_NAMES if n in scores and scores[n] == scores[n])


def highlighted_prompt(rec: Record) -> str:
    """HTML of the prompt's tokens, each shaded red by its misalignment strength."""
    if not rec.words:
        return f"<p style='font-size:1.15rem'>{html.escape(rec.prompt) or '<i>(no prompt)</i>'}</p>"
    spans = []
    for token, s in rec.words:
        weight = "600" if s >= FLAGGED_WORD_STRENGTH else "400"
        spans.append(
            f"<span title='misalignment {s:.2f}' style='background: rgba(220,38,38,{0.12 + 0.78 * s if s > 0 else 0:.2f});"
            f" padding: 2px 4px; border-radius: 4px; font-weight:{weight}'>{html.escape(token)}</span>"
        )
    return "<p style='font-size:1.15rem; line-height:2'>" + " ".join(spans) + "</p>"


def word_strength_chart(rec: Record) -> go.Figure:
    """Bars of each prompt token's misalignment strength on [0, 1], shaded on the same red scale.
    (graph_objects, not plotly.express: px.bar spent ~0.1 s of a 0.17 s record view at 200,000 records.)"""
    tokens = [t for t, _ in rec.words]
    strength = [float(s) for _, s in rec.words]
    labels = [f"{i}:{t}" for i, t in enumerate(tokens)]  # unique x values: a prompt can repeat a word
    fig = go.Figure(go.Bar(x=labels, y=strength, marker=dict(color=strength, colorscale="Reds", cmin=0, cmax=1),
                           hovertemplate="token=%{x}<br>misalignment strength=%{y}<extra></extra>"))
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=10, b=10),
                      yaxis=dict(range=[0, 1], title="misalignment strength"),
                      xaxis=dict(title="token", tickvals=labels, ticktext=tokens))
    return fig


def restore(key: str, default) -> None:
    """Before drawing the widget `key` (given no default of its own): refill its value from the copy
    `remember` kept, else `default`. Streamlit drops a widget's state when a run does not draw it (a
    page switch, a mode that hides it); a widget default that changes between reruns instead makes the
    browser reset the widget to nothing."""
    import streamlit as st

    if key not in st.session_state:
        st.session_state[key] = st.session_state.get(f"_{key}", default)


def remember(key: str, value):
    """Keep `value` of widget `key` under a key no widget owns (see `restore`); returns it."""
    import streamlit as st

    st.session_state[f"_{key}"] = value
    return value


def run_with_progress(start: str, job, percent: bool = True):
    """Run `job(progress)` under a progress bar fed by `progress(stage, fraction)`; a `RHFError` becomes a
    readable error on the page and None is returned. Any other exception (Streamlit stopping the script
    included) passes through."""
    import streamlit as st

    from rhf_core.errors import RHFError

    bar = st.progress(0.0, text=start)

    def progress(stage: str, fraction: float) -> None:
        bar.progress(min(fraction, 1.0), text=f"{stage.capitalize()}… {fraction:.0%}" if percent else f"{stage.capitalize()}…")

    try:
        result = job(progress)
    except RHFError as e:
        bar.empty()
        st.error(error_text(e))
        return None
    bar.empty()
    return result


def value_label(value: float) -> str:
    """A heat value for a colour bar's end: three significant digits, so 0.0042 does not read 0.00."""
    return "0" if value == 0 else f"{value:.3g}"


def heat_colour_bar(vmax: float, cmap: str = "inferno", width: int = 220, vmin: float = 0.0) -> Image.Image:
    """A colour bar labelled with the value range it stands for, [vmin, vmax], under a heatmap.

    Like `colour_bar`, but the labels keep three significant digits (RichHF and Rapidata maps peak
    far below 1) and the bar is drawn at 2× so the labels stay legible when the page scales it."""
    from PIL import ImageDraw

    scale = 2
    w, h = width * scale, 10 * scale
    bar = colorize_heatmap(np.tile(np.linspace(0.0, 1.0, w, dtype=np.float32), (h, 1)), cmap)
    out = Image.new("RGB", (w, h + 12 * scale), (255, 255, 255))
    out.paste(bar, (0, 0))
    draw = ImageDraw.Draw(out)
    low, high = value_label(vmin), value_label(vmax)
    draw.text((2, h + 2), low, fill=(40, 40, 40), font_size=10 * scale)
    draw.text((w - int(6.2 * scale * len(high)) - 2, h + 2), high, fill=(40, 40, 40), font_size=10 * scale)
    return out


def overlays_on_one_scale(records: list[Record], heatmap: str, opacity: float, cmap: str,
                          min_side: int) -> tuple[list[Image.Image], float]:
    """Each record's image with its `heatmap` overlaid on one shared scale [0, the highest peak among
    them], so a faint map looks faint beside a strong one; returns (images, that peak). A record
    without the map shows its image alone; one without an image shows the map on grey."""
    vmax = max((heat_peak(r.heatmaps.get(heatmap)) for r in records), default=0.0)
    out = []
    for rec in records:
        img = rec.image
        hm = rec.heatmaps.get(heatmap)
        if img is None:
            img = Image.new("RGB", hm.shape[::-1] if hm is not None else (64, 64), (128, 128, 128))
        if hm is not None:
            img = overlay_on_scale(img, hm, vmax, opacity, cmap)
        out.append(upscale(img, min_side))
    return out, vmax


# A click on an image inside a container keyed `gcell_…` presses the button in it whose key holds
# `open_` (the gallery's `open_…`, the patch grid's `patch_open_…`, "More like this" and text search's
# `similar_open_…` / `text_open_…`). Streamlit images cannot take a
# click (`st.image(link=…)` opens a new browser tab, and a link to `?id=…` would start a new
# session), so this script, mounted as a JavaScript-only `st.components.v2` component (it runs in
# the app's page, not an iframe), forwards the click. One listener on the document catches clicks
# on thumbnails drawn after it; the cleanup removes it when the grid is not drawn.
CLICK_TO_OPEN_JS = """
export default function () {
  if (!document.getElementById("rhf-click-to-open")) {
    const style = document.createElement("style");
    style.id = "rhf-click-to-open";
    // Cells keyed …_pixelart hold an image smaller than it is shown (ShapesWorld's 64 px): the browser
    // enlarges it with crisp pixels, as upscale() does on the server for the larger views.
    style.textContent = "[class*='st-key-gcell_'] [data-testid='stImage'] img { cursor: pointer; }"
      + " [class*='st-key-gcell_'][class*='_pixelart'] [data-testid='stImage'] img { image-rendering: pixelated; }";
    document.head.appendChild(style);
  }
  const onClick = (event) => {
    // Each grid on the page mounts this script; the first listener to see a click handles it.
    if (event.rhfClickToOpen) return;
    event.rhfClickToOpen = true;
    const img = event.target.closest ? event.target.closest("[data-testid='stImage'] img") : null;
    const cell = img ? img.closest("[class*='st-key-gcell_']") : null;
    const open = cell ? cell.querySelector("[class*='open_'] button") : null;
    if (open) open.click();
  };
  document.addEventListener("click", onClick);
  return () => document.removeEventListener("click", onClick);
}
"""


@functools.cache
def _click_to_open_component():
    import streamlit as st

    return st.components.v2.component("rhf_click_to_open", js=CLICK_TO_OPEN_JS)


def click_to_open(key: str) -> None:
    """Make the thumbnails in `gcell_…` containers open their record when clicked (see CLICK_TO_OPEN_JS)."""
    _click_to_open_component()(key=key, height=0)


def thumbnail_uri(img: Image.Image, side: int = 48) -> str:
    """`img` as a small PNG data URI (longest side at most `side` px), for st.column_config.ImageColumn:
    a table cell takes a URL, and a data URI travels inside the table, with no file to serve."""
    thumb = img.convert("RGB")
    thumb.thumbnail((side, side), Image.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
