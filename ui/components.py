"""Small render helpers shared by the pages (record images, overlays, highlighted prompts)."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.express as px
from PIL import Image

from rhf_core.dataset import FLAGGED_WORD_STRENGTH, SCORE_NAMES, Record
from rhf_core.heatmaps import overlay_heatmap

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


def record_view_image(rec: Record, heatmap: str | None, opacity: float, cmap: str, min_side: int) -> Image.Image:
    """The record's image (or a placeholder) with one heatmap overlaid, enlarged for display."""
    img = rec.image
    if img is None:
        if heatmap and heatmap in rec.heatmaps:  # labels-only: show the heatmap on grey
            h, w = rec.heatmaps[heatmap].shape
            img = Image.new("RGB", (w, h), (128, 128, 128))
        else:
            return placeholder(min_side)
    if heatmap and heatmap in rec.heatmaps:
        img = overlay_heatmap(img, rec.heatmaps[heatmap], opacity=opacity, cmap=cmap)
    return upscale(img, min_side)


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


def word_strength_chart(rec: Record):
    df = pd.DataFrame(
        {"position": range(len(rec.words)), "token": [t for t, _ in rec.words], "strength": [s for _, s in rec.words]}
    )
    df["label"] = [f"{i}:{t}" for i, t in zip(df["position"], df["token"])]
    fig = px.bar(df, x="label", y="strength", range_y=[0, 1], color="strength", color_continuous_scale="Reds",
                 range_color=[0, 1], labels={"label": "token", "strength": "misalignment strength"})
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=10, b=10), coloraxis_showscale=False)
    fig.update_xaxes(tickvals=df["label"], ticktext=df["token"])
    return fig


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
        st.error(str(e))
        return None
    bar.empty()
    return result
