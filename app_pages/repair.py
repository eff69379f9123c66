"""Inpainting repair: from a heatmap to a mask to repaired candidates, ranked by predicted plausibility."""

import hashlib
import io

import numpy as np
import streamlit as st
from PIL import Image

from rhf_core.dataset import HEATMAP_NAMES, SCORE_NAMES
from rhf_core.errors import RHFError
from rhf_core.heatmaps import colorize_heatmap, overlay_heatmap
from rhf_core.images import load_image
from rhf_core.rahf.domain import check_domain, predictor_domain, trained_on_message, usable_stats
from rhf_core.repair import plan_repair, rank_candidates, run_repair
from ui.components import colour_bar, heat_peak, overlay_on_scale, run_with_progress, upscale
from ui.settings import current_dataset, current_generator, current_predictor, error_text, policy

SOURCES = ["Dataset record", "Generate", "Upload"]
MASK_SOURCES = ["Predicted heatmap", "Ground-truth heatmap", "Upload a mask"]
VIEW = 320  # pixels a side for images on this page

st.title("Inpainting repair")
st.caption("Predict where an image is wrong, cut the heatmap into a mask, inpaint candidates inside it, "
           "and keep the one RAHF predicts most plausible (RichHF, sec. 5.3). Every pixel outside the mask "
           "stays exactly as it was.")
rahf = current_predictor()
gen = current_generator()
domain_stats, no_check_reason = usable_stats(rahf)
st.caption(f"Predictor `{rahf.name}` · generator {gen.describe()}. {trained_on_message(predictor_domain(rahf, domain_stats))}"
           + ("" if domain_stats else f" No domain check: {no_check_reason}."))


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def mask_overlay(img: Image.Image, mask: np.ndarray) -> Image.Image:
    """The image with the repaint area tinted and its outline drawn."""
    from scipy import ndimage

    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    tint = np.array([255, 40, 200], np.float32)
    out = np.where(mask[..., None], arr * 0.45 + tint * 0.55, arr)
    edge = mask & ~ndimage.binary_erosion(mask)
    out[edge] = tint
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


# --- 1. The image and its prompt -----------------------------------------------------------------

def pick_random_record(ds) -> None:
    """Callback: runs before the next rerun draws the field, so it may set the field's value."""
    if len(ds):
        st.session_state["rep_record_id"] = ds.ids[np.random.default_rng().integers(len(ds))]


def choose_source():
    """(image, prompt, ground-truth heatmaps, label) or None when nothing is chosen yet."""
    # A constant default: one that changes between reruns makes the browser reset the control to
    # nothing (a required control then read None). persist_state keeps the choice while hidden.
    source = st.segmented_control("Image", SOURCES, key="rep_source", required=True, default=SOURCES[0],
                                  persist_state="session")
    if source == "Upload":
        f = st.file_uploader("An image (PNG, JPEG, WebP)", type=["png", "jpg", "jpeg", "webp"], key="rep_file")
        prompt = st.text_input("Its prompt", key="rep_upload_prompt", placeholder="the prompt it was generated from")
        if f is None:
            st.info("Upload an image and give its prompt.")
            return None
        try:
            img = load_image(f.getvalue(), name=f.name)
        except RHFError as e:
            st.error(error_text(e))  # the message already names the file
            return None
        return img, prompt.strip(), {}, f.name
    if source == "Generate":
        c1, c2 = st.columns([4, 1])
        prompt = c1.text_input("Prompt", value="two red circles on the grass", key="rep_gen_prompt")
        seed = c2.number_input("Seed", 0, 2**31 - 1, 0, key="rep_gen_seed")
        if not prompt.strip():
            st.warning("Write a prompt to generate from.")
            return None
        key = (gen.name, gen.adapter, prompt.strip(), int(seed))
        if st.session_state.get("rep_gen_key") != key:
            with st.spinner("Generating…"):
                try:
                    st.session_state["rep_gen_image"] = load_image(
                        gen.generate(prompt.strip(), n=1, seed=int(seed))[0][0], name="the generated image")
                except RHFError as e:
                    st.error(error_text(e))
                    return None
            st.session_state["rep_gen_key"] = key
        return st.session_state["rep_gen_image"], prompt.strip(), {}, f"generated (seed {seed})"
    ds = current_dataset()
    c1, c2 = st.columns([4, 1])
    # The field's value lives in session state only (no `value=`): a widget given both a default and a
    # session-state value logs a warning, and the random pick below writes session state.
    if "rep_record_id" not in st.session_state:
        st.session_state["rep_record_id"] = ds.ids[0] if len(ds) else ""
    rec_id = c1.text_input("Record id", key="rep_record_id", persist_state="session")
    c2.button("Random record", key="rep_random", on_click=pick_random_record, args=(ds,))
    try:
        rec = ds.get(rec_id)
        img = rec.image
        if img is not None:
            img = load_image(img, name=rec.id)
    except RHFError as e:
        st.error(error_text(e))
        return None
    if img is None:
        st.warning(f"{rec.id} has no image (labels only): pick another record.")
        return None
    return img, rec.prompt, rec.heatmaps, rec.id


chosen = choose_source()
if chosen is None:
    st.stop()
image, prompt, truth, label = chosen
if not prompt:
    st.warning("Give the image's prompt: RAHF and the inpainting model both need it.")
    st.stop()

# --- 2. Heatmap → mask, previewed live ----------------------------------------------------------

c1, c2, c3 = st.columns(3)
heat_type = c1.segmented_control("Heatmap", list(HEATMAP_NAMES), key="rep_heat", required=True,
                                 default=HEATMAP_NAMES[0], persist_state="session")  # constant: see rep_source
mask_options = [m for m in MASK_SOURCES if m != "Ground-truth heatmap" or heat_type in truth]
if st.session_state.get("rep_mask_source") not in mask_options:
    st.session_state.pop("rep_mask_source", None)
mask_source = c2.radio("Mask from", mask_options, key="rep_mask_source")
mode = c3.radio("Threshold", ["relative", "absolute"], key="rep_mode", horizontal=True,
                help="relative: a share of the heatmap's own peak; absolute: a heat value in [0, 1]")
s1, s2 = st.columns(2)
threshold = s1.slider("Threshold", 0.0, 1.0, 0.5, 0.01, key="rep_threshold",
                      disabled=mask_source == "Upload a mask")
max_dilation = max(4, max(image.size) // 8)
dilation = s2.slider("Dilation (pixels of the image)", 0, max_dilation, min(3, max_dilation), key="rep_dilation",
                     disabled=mask_source == "Upload a mask")

user_mask = None
if mask_source == "Upload a mask":
    mf = st.file_uploader("Mask PNG (white = repaint, same size as the image)", type=["png"], key="rep_mask_file")
    if mf is None:
        st.info(f"Upload a grayscale PNG of {image.size[0]}×{image.size[1]} pixels.")
        st.stop()
    try:
        user_mask = load_image(mf.getvalue(), name=mf.name).convert("L")  # white = repaint
    except RHFError as e:
        st.error(error_text(e))  # the message already names the file
        st.stop()
# Stage 1 of the library's pipeline: predict once and cut the mask; the page previews the plan and
# hands it, unchanged, to run_repair.
try:
    plan = plan_repair(image, prompt, predictor=rahf, heatmap=heat_type, threshold=threshold, threshold_mode=mode,
                       dilation=dilation, mask=user_mask,
                       heatmap_array=truth[heat_type] if mask_source == "Ground-truth heatmap" else None)
except RHFError as e:  # e.g. a prompt without a word ("."), a mask of the wrong size
    st.error(error_text(e))
    st.stop()
heatmap, mask = plan.heatmap, plan.mask
# An image unlike the predictor's training images gets heatmaps and scores that mean nothing: say so
# beside them, and below never present its score change as an improvement.
domain_check = check_domain(rahf, [image], domain_stats)[0]
if domain_check.status == "out":
    st.warning(domain_check.message, icon="⚠️")

p1, p2, p3 = st.columns(3)
p1.image(upscale(image, VIEW), caption=f"{label}: {prompt}", width="stretch")
if heatmap is not None:
    p2.image(upscale(overlay_heatmap(image, heatmap, opacity=0.7), VIEW), width="stretch",
             caption=f"{mask_source.lower()}: {heat_type} (peak {heatmap.max():.2f})")
else:
    p2.image(upscale(colorize_heatmap(mask.astype(np.float32)), VIEW), width="stretch", caption="uploaded mask")
p3.image(upscale(mask_overlay(image, mask), VIEW), width="stretch",
         caption=f"mask: {mask.mean():.1%} of the image ({int(mask.sum()):,} pixels)")
if not mask.any():
    st.warning("The mask is empty: no pixel reaches the threshold. Lower it, switch to relative mode, or "
               "upload a mask. Nothing to inpaint.")
    st.stop()

# --- 3. Inpaint candidates ----------------------------------------------------------------------

r1, r2, r3, r4 = st.columns(4)
n = r1.number_input("Candidates", 1, policy().limit("candidates", 16), 4, key="rep_n")  # 8 on a shared server
seed = r2.number_input("Seed", 0, 2**31 - 1, 0, key="rep_seed")
steps = r3.number_input("Steps", 2, 100, 25, key="rep_steps")
strength = r4.slider("Strength", 0.3, 1.0, 1.0, 0.05, key="rep_strength",
                     help="1.0 repaints the masked area from noise (it may paint the object away); lower values "
                          "start from the noised original, so the object stays and is reshaped.")
run_key = hashlib.sha1(b"".join([png_bytes(image), np.packbits(mask).tobytes(),
                                 repr((prompt, int(n), int(seed), int(steps), float(strength), gen.name, gen.adapter,
                                       rahf.weights_key)).encode()])).hexdigest()
if st.button("Repair", type="primary", key="rep_run"):
    try:  # the widget bounds it; a crafted request could still ask for more
        policy().check_limit("candidates", int(n), "repair candidates")
    except RHFError as e:
        st.error(error_text(e))
        st.stop()
    result = run_with_progress("Inpainting…", lambda progress: run_repair(
        plan, generator=gen, n=int(n), seed=int(seed), steps=int(steps), strength=float(strength),
        progress=progress), percent=False)
    if result is None:
        st.stop()
    st.session_state["rep_result"] = (run_key, result)

stored = st.session_state.get("rep_result")
if not stored:
    st.stop()
if stored[0] != run_key:
    st.info("The image, mask or settings changed since the last repair: press Repair to run again.")
    st.stop()
result = stored[1]
RANK_LABELS = {"plausibility": "predicted plausibility (RichHF)",
               "plausibility+alignment": "predicted plausibility + alignment"}
rank = st.radio("Keep the candidate with the highest", list(RANK_LABELS), format_func=RANK_LABELS.get,
                horizontal=True, key="rep_rank",
                help="An inpainter that paints background over the object looks plausible too; adding RAHF's "
                     "alignment score prefers candidates that keep what the prompt asks for. Re-ranks without "
                     "re-running.")
candidates = rank_candidates(result.candidates, rank)  # a display order; the stored result is not changed


def verdict_text(v) -> str:
    if v is None:
        return ""
    bits = ["aligned" if v.aligned else f"misaligned ({', '.join(v.misaligned_words)})",
            f"implausible area {v.implausibility.mean():.1%}" if v.implausible else "no implausible region"]
    return "judge: " + "; ".join(bits)


best = candidates[0]
# One colour scale for every predicted map below (before, after, candidates), so they compare: the
# hottest of them sets its top. Each map scaled to its own peak would make faint maps look hot.
vmax = max(heat_peak(c.heatmaps[heat_type]) for c in [result.before, *candidates])
st.subheader("Before and after")
b1, b2, b3, b4 = st.columns(4)
b1.image(upscale(overlay_on_scale(result.image, result.before.heatmaps[heat_type], vmax), VIEW),
         caption=f"before: predicted {heat_type} (peak {heat_peak(result.before.heatmaps[heat_type]):.2f})",
         width="stretch")
b2.image(upscale(overlay_on_scale(best.image, best.heatmaps[heat_type], vmax), VIEW), width="stretch",
         caption=f"after (best candidate #{best.index}): predicted {heat_type} "
                 f"(peak {heat_peak(best.heatmaps[heat_type]):.2f})")
b3.image(upscale(result.image, VIEW), caption="original", width="stretch")
b4.image(upscale(best.image, VIEW), caption="repaired", width="stretch")
cols = st.columns(len(SCORE_NAMES))
for s, col in zip(SCORE_NAMES, cols):
    col.metric(s.capitalize(), f"{best.scores[s]:.2f}", delta=f"{best.scores[s] - result.before.scores[s]:+.2f}",
               delta_color="off" if domain_check.status == "out" else "normal")
if domain_check.status == "out":
    st.warning("The predicted scores above compare two images this predictor does not know: their change is "
               "not an improvement, only a number. " + domain_check.message, icon="⚠️")
if result.before.judge is not None:
    st.caption(f"Before — {verdict_text(result.before.judge)}  \nAfter — {verdict_text(best.judge)}")
d1, d2 = st.columns(2)
d1.download_button("Download the repaired image", png_bytes(best.image), file_name="repaired.png", mime="image/png")
d2.download_button("Download the mask", png_bytes(result.mask_image), file_name="mask.png", mime="image/png")
b1.image(colour_bar(vmax), width="stretch",
         caption=f"colour scale of every predicted {heat_type} map on this page: 0 … {vmax:.2f}")

st.subheader(f"Candidates, best first by {RANK_LABELS[rank]}")
per_row = 4
for start in range(0, len(candidates), per_row):
    for cand, col in zip(candidates[start:start + per_row], st.columns(per_row)):
        col.image(upscale(cand.image, VIEW // 2), width="stretch",
                  caption=f"#{cand.index} · plausibility {cand.plausibility:.2f} · "
                          f"alignment {cand.scores['alignment']:.2f}")
        col.image(upscale(overlay_on_scale(cand.image, cand.heatmaps[heat_type], vmax), VIEW // 2), width="stretch",
                  caption=f"predicted {heat_type} (peak {heat_peak(cand.heatmaps[heat_type]):.2f}, "
                          f"scale 0 … {vmax:.2f})")
        if cand.judge is not None:
            col.caption(verdict_text(cand.judge))
