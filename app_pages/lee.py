"""Rejection sampling vs reward-weighted fine-tuning (Lee et al. 2023), side by side on the same prompts."""

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st
from PIL import Image

from rhf_core.cache import cache_dir
from rhf_core.reward import REWARD_NAMES, get_reward
from rhf_core.reward.compare import ARMS, run_comparison, summarize
from rhf_core.reward.experiment import experiment_prompts, heldout_prompts
from rhf_core.reward.finetune import FinetuneConfig, finetune, load_adapter_info
from rhf_core.shapes.grammar import CATEGORIES, parse_prompt
from ui.components import run_with_progress, upscale
from ui.loaders import load_encoders, load_reward_model
from ui.settings import current_generator, current_predictor

OBJECTIVE_LABELS = {"rwr": "reward-weighted likelihood (Lee et al.)", "dpo": "Diffusion-DPO on reward pairs",
                    "draft": "reward backpropagation (DRaFT; lee reward)"}

SHIPPED = Path(__file__).resolve().parents[1] / "rhf_core" / "assets" / "adapters"
PROMPT_SETS = ["Held-out seen prompts", "Unseen prompts", "The adapter's training prompts", "Free text"]
ARM_COLORS = dict(zip(ARMS, px.colors.qualitative.Set2))

st.title("Rejection sampling vs fine-tuning")
st.caption("Spend a reward at inference time (generate n, keep the best k) or at training time (LoRA "
           "fine-tuning on the reward), on the same prompts and seeds, and see which buys more (Lee et al. 2023).")
gen = current_generator()
rahf = current_predictor()


def adapters() -> dict[str, str]:
    """label → folder, shipped first, then saved ones."""
    out = {}
    for root, kind in ((SHIPPED, "shipped"), (cache_dir("adapters"), "saved")):
        for p in sorted(root.glob("*")) if root.exists() else []:
            if (p / "pytorch_lora_weights.safetensors").is_file():
                out[f"{p.name} ({kind})"] = str(p)
    return out


def reward_fn(name: str):
    if name == "lee":
        return get_reward("lee", reward_model=load_reward_model())
    return get_reward(name, predictor=rahf)


# --- inputs ----------------------------------------------------------------------------------------

found = adapters()
left, right = st.columns([3, 2])
with left:
    which = st.radio("Prompts", PROMPT_SETS, key="lee_set", horizontal=True)
    if which == "Free text":
        text = st.text_area("One prompt per line", "two red circles on the grass\na blue star\nthree squares",
                            key="lee_text", height=120)
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        cats = st.multiselect("Categories", CATEGORIES, default=list(CATEGORIES), key="lee_cats")
        if which.startswith("The adapter"):
            # Lee et al.'s "seen" prompts: the ones the fine-tuning used (the comparison draws new seeds).
            chosen = found.get(st.session_state.get("lee_adapter", ""), next(iter(found.values()), None))
            pool = experiment_prompts(chosen, 400).get("trained", []) if chosen else []
        else:
            pool = heldout_prompts(60)["seen" if which.startswith("Held-out") else "unseen"]
        # A prompt file of free text (an adapter's own prompts) has no grammar category: keep it.
        pool = [p for p in pool if (spec := parse_prompt(p)) is None or spec.category in cats]
        count = st.slider("Number of prompts", 1, max(1, len(pool)), min(8, max(1, len(pool))), key="lee_count")
        prompts = pool[:count]
    st.caption(f"{len(prompts)} prompts" + (": " + " · ".join(prompts[:6]) + (" …" if len(prompts) > 6 else "") if prompts else ""))
with right:
    c1, c2 = st.columns(2)
    n = c1.slider("n (samples per prompt)", 2, 32, 16, key="lee_n")
    k = c2.slider("k (kept)", 1, 32, 4, key="lee_k")
    reward_name = c1.selectbox("Reward", REWARD_NAMES, key="lee_reward")
    seed = c2.number_input("Seed", 0, 2**31 - 1, 0, key="lee_seed")
    adapter_label = st.selectbox("Fine-tuned adapter", list(found) or ["none found"], key="lee_adapter")

with st.expander("Fine-tune a new adapter now"):
    f1, f2, f3, f4 = st.columns(4)
    ft_name = f1.text_input("Name", "my-adapter", key="lee_ft_name")
    ft_beta = f2.number_input("β (pre-training loss weight)", 0.0, 10.0, 1.0, 0.5, key="lee_ft_beta")
    ft_steps = f3.number_input("Steps", 10, 5000, 300, 50, key="lee_ft_steps")
    ft_prompts = f4.number_input("Training prompts", 10, 300, 100, 10, key="lee_ft_prompts")
    ft_objective = st.radio("Objective", list(OBJECTIVE_LABELS), format_func=OBJECTIVE_LABELS.get, horizontal=True,
                            key="lee_ft_objective")
    st.caption(f"Trains LoRA adapters on the UNet with the **{reward_name}** reward on the grammar's training prompts "
               "(never the held-out ones). **Stop fine-tuning** keeps every finished step; Fine-tune again with the same "
               "settings to resume.")
    if st.session_state.get("lee_ft_stop"):  # pressing it reran the page, which stopped the training
        st.info("Fine-tuning stopped; every finished step is kept. Press **Fine-tune** with the same settings to resume.")
    if st.button("Fine-tune", key="lee_ft_run"):
        name = "".join(ch for ch in ft_name if ch.isalnum() or ch in "-_") or "my-adapter"
        st.button("Stop fine-tuning", key="lee_ft_stop")
        path = run_with_progress("Starting…", lambda progress: finetune(
            FinetuneConfig(name=name, reward=reward_name, beta=float(ft_beta), steps=int(ft_steps), n_prompts=int(ft_prompts),
                           objective=ft_objective, batch_size=8 if ft_objective == "draft" else 32),
            generator=gen, reward=reward_fn(reward_name), progress=progress))
        if path is not None:
            st.success(f"Saved the adapter to `{path}`; pick it above.")

if k > n:
    st.error(f"k must not exceed n: asked to keep the best {k} of {n}.")
    st.stop()
if not prompts:
    st.warning("The prompt set is empty: pick categories or write at least one prompt.")
    st.stop()
if not found:
    st.warning("No fine-tuned adapter found: fine-tune one above.")
    st.stop()
adapter = found[adapter_label]
info = load_adapter_info(adapter)
st.caption(f"Adapter `{Path(adapter).name}`: {OBJECTIVE_LABELS.get(info['config'].get('objective', 'rwr'), '?')}, "
           f"β = {info['beta_used']}, {info['steps_done']} steps, reward "
           f"{info['config']['reward']}, trained on {info['prompts']} prompts (mean reward of its samples "
           f"{info['reward_stats'].get('mean', float('nan')):.2f}).")
if not info.get("complete", True):  # stopped by the button, Streamlit's own Stop, or a crash
    st.warning(f"`{Path(adapter).name}` is unfinished: {info['steps_done']} of {info['config']['steps']} steps. "
               "Fine-tune again with the same settings to resume, or compare it as it is.")

run_key = (gen.name, adapter, tuple(prompts), n, reward_name, int(seed))
if st.button("Compare", type="primary", key="lee_run"):
    comp = run_with_progress("Starting…", lambda progress: run_comparison(
        gen, adapter, prompts, n=n, k=k, reward_name=reward_name, reward=reward_fn(reward_name), predictor=rahf,
        encoders=load_encoders(), seed=int(seed), progress=progress))
    if comp is None:
        st.stop()
    st.session_state["lee_result"] = (run_key, comp)

stored = st.session_state.get("lee_result")
if not stored or stored[0] != run_key:
    st.info("Press **Compare** to generate with both models (results are cached on disk: the same settings "
            "come back at once).")
    st.stop()
comp = stored[1]
comp.k = k  # k only picks among the n samples
summary = summarize(comp)
if comp.settings.get("cached"):
    st.caption("From the cache.")

# --- measures ----------------------------------------------------------------------------------------

st.subheader("Measures per arm")
rows = []
# Pooled over all n samples of the arm's model: the same for its random and best-k arms.
model_all_n = {arm.rsplit(" ", 1)[0]: summary[arm].get("alignment_rate_all_n") for arm in ARMS if arm.endswith("random")}
for arm in ARMS:
    s = summary[arm]
    rows.append({"arm": arm, "mean reward": s["mean_reward"], "judge alignment": s["alignment_rate"],
                 "model alignment (all n)": model_all_n.get(arm.rsplit(" ", 1)[0]), "diversity": s["diversity"],
                 "judge implausible share": s["judge_implausible_share"],
                 "RAHF plausibility": s["rahf_plausibility"], "win vs original random": s["win"],
                 "tie": s["tie"], "loss": s["loss"]})
st.dataframe(pd.DataFrame(rows).set_index("arm"), width="stretch")
st.caption("Judge alignment: share of the k kept images the ShapesWorld judge finds aligned (blank for prompts it "
           "cannot read); model alignment pools all n samples of each model, the less noisy estimate of what a random k "
           "gets. Diversity: mean pairwise cosine distance of image embeddings within a prompt. Win rate: "
           "share of prompts where the arm's judge alignment (or reward, off ShapesWorld) beats original random.")
gains = [{"arm": arm, "against": g["against"], "alignment gain": g["difference"],
          "95% interval": f"{g['ci95'][0]:+.3f} … {g['ci95'][1]:+.3f}",
          "verdict": "gain" if g["ci95"][0] > 0 else ("loss" if g["ci95"][1] < 0 else "within noise")}
         for arm in ARMS if (g := summary[arm].get("alignment_gain"))]
if gains:
    st.dataframe(pd.DataFrame(gains).set_index("arm"), width="stretch")
    st.caption("Alignment gain per judged prompt, paired (same prompts and seeds), with a 95% bootstrap interval "
               "over prompts: a gain counts only when the interval stays above 0.")

p1, p2, p3 = st.columns(3)
dist = pd.DataFrame([{"arm": arm, "reward": float(v)} for arm in ARMS for v in comp.arm_values(arm, comp.rewards).ravel()])
p1.plotly_chart(px.box(dist, x="arm", y="reward", color="arm", color_discrete_map=ARM_COLORS, points="all",
                       title="Reward of the kept images").update_layout(showlegend=False, height=380),
                width="stretch")
cat_rows = [{"arm": arm, "category": cat, "alignment": v} for arm in ARMS
            for cat, v in summary[arm]["alignment_by_category"].items() if v == v]
if cat_rows:
    p2.plotly_chart(px.bar(pd.DataFrame(cat_rows), x="category", y="alignment", color="arm", barmode="group",
                           color_discrete_map=ARM_COLORS, range_y=[0, 1], title="Judge alignment per category")
                    .update_layout(height=380, legend=dict(orientation="h", y=-0.25)), width="stretch")
else:
    p2.info("The judge reads only ShapesWorld prompts: no per-category alignment for these prompts.")
wins = pd.DataFrame([{"arm": arm, "outcome": o, "share": summary[arm][o]} for arm in ARMS[1:] for o in ("win", "tie", "loss")])
p3.plotly_chart(px.bar(wins, x="arm", y="share", color="outcome", title="Against original random, per prompt",
                       color_discrete_map={"win": "#2ca02c", "tie": "#bbbbbb", "loss": "#d62728"})
                .update_layout(height=380, legend=dict(orientation="h", y=-0.25)), width="stretch")

# --- image grids ---------------------------------------------------------------------------------------

st.subheader("Images")
pi = st.selectbox("Prompt", range(len(comp.prompts)), format_func=lambda i: comp.prompts[i], key="lee_prompt")
for arm in ARMS:
    st.markdown(f"**{arm}**")
    model, idx = comp.picks(arm)
    cols = st.columns(max(k, 4))
    for col, j in zip(cols, idx[pi]):
        al = comp.aligned[model][pi, j]
        mark = "" if np.isnan(al) else (" · judge ✓" if al else " · judge ✗")
        col.image(upscale(Image.fromarray(comp.images[model][pi, j]), 128), width="stretch",
                  caption=f"#{j} · reward {comp.rewards[model][pi, j]:.2f}{mark}")
