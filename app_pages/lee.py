"""Ways to spend a reward, side by side on the same prompts and seeds: rejection sampling (best k of n),
reward-weighted fine-tuning (Lee et al. 2023), both together, and reward-guided sampling."""

import hashlib
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st
from PIL import Image

from rhf_core.align import FinetuneConfig, finetune, load_adapter_info, saved_steps
from rhf_core.cache import atomic_write_text, cache_dir, cache_key
from rhf_core.errors import RHFError
from rhf_core.reward.compare import run_comparison, summarize
from rhf_core.reward.experiment import experiment_prompts, heldout_prompts
from rhf_core.reward.rewards import (DEFAULT_HELD_OUT, REWARD_NAMES, SPEC_HELP, check_judge, held_out_specs,
                                     parse_reward_spec)
from rhf_core.shapes.grammar import CATEGORIES, parse_prompt
from rhf_core.shipped import ADAPTERS as SHIPPED
from ui.components import run_with_progress, upscale
from ui.loaders import load_encoders, load_reward
from ui.settings import current_generator, current_predictor, error_text, policy

OBJECTIVE_LABELS = {"rwr": "reward-weighted likelihood (Lee et al.)", "dpo": "Diffusion-DPO on reward pairs",
                    "draft": "reward backpropagation (DRaFT; lee reward)"}

SHAPES_PROMPT_SETS = ["Held-out seen prompts", "Unseen prompts"]
PROMPT_SETS = [*SHAPES_PROMPT_SETS, "The adapter's training prompts", "Free text", "Prompt file"]
# Guidance follows the reward's gradient: only differentiable rewards (never the judge).
GUIDE_REWARDS = [r for r in REWARD_NAMES if r != "judge"]

st.title("Ways to spend a reward")
st.caption("Spend a reward at inference time (generate n, keep the best k; or steer sampling up its gradient) "
           "or at training time (LoRA fine-tuning on the reward), on the same prompts and seeds, and see which "
           "buys more (Lee et al. 2023; reward guidance as in the RichHF paper).")
gen = current_generator()
rahf = current_predictor()
shapes = gen.is_shapes_world  # the judge and the grammar's prompt sets exist only there


def adapters() -> dict[str, str]:
    """label → folder of the adapters made for this generator, shipped first, then saved ones."""
    out = {}
    for root, kind in ((SHIPPED, "shipped"), (cache_dir("adapters"), "saved")):
        for p in sorted(root.glob("*")) if root.exists() else []:
            if not (p / "pytorch_lora_weights.safetensors").is_file():
                continue
            try:
                made_for = load_adapter_info(p).get("generator")
            except (RHFError, ValueError):  # no or unreadable adapter.json: not ours to offer
                continue
            if made_for == gen.name:
                out[f"{p.name} ({kind})"] = str(p)
    return out


def training_lock() -> threading.Lock:
    """Held while this session's fine-tune runs. Streamlit starts the rerun that Stop asks for while the
    stopped run is still unwinding (fast reruns), and the stopped run saves its finished steps as it
    unwinds: what it kept can be read, and a new run can resume it, only once it let go of this lock."""
    return st.session_state.setdefault("lee_ft_lock", threading.Lock())


def checked_spec(spec: str) -> str:
    """A reward spec with its folder checked (shared mode: inside the allowed model folders)."""
    kind, score, folder = parse_reward_spec(spec)
    if kind == "judge":
        check_judge(gen)  # refused at once off ShapesWorld, not after generating
    head = f"rahf-{score}" if kind == "rahf" else kind
    return f"{head}:{policy().model_path(folder, 'reward model')}" if folder else head


def reward_fn(spec: str):
    """The reward by spec: bare rahf-<score> with the sidebar's RAHF checkpoint."""
    return load_reward(spec, rahf.weights_key, gen.name, _predictor=rahf, _generator=gen)


def short(spec: str) -> str:
    """A spec as a column header: the folder's name, not its path."""
    head, _, folder = spec.partition(":")
    return f"{head}:{Path(folder).name}" if folder else head


def prompt_file_path(prompts: list[str]) -> str:
    """The prompts as a file under the cache (what a fine-tune reads and records), one per prompt set."""
    path = cache_dir("prompt-sets") / f"{cache_key('prompts', prompts)}.txt"
    if not path.is_file():
        atomic_write_text(path, "\n".join(prompts) + "\n")
    return str(path)


# --- inputs ----------------------------------------------------------------------------------------

found = adapters()
left, right = st.columns([3, 2])
with left:
    sets = PROMPT_SETS if shapes else PROMPT_SETS[2:]  # the grammar's splits mean nothing to another model
    which = st.radio("Prompts", sets, key="lee_set", horizontal=True)
    if which in ("Free text", "Prompt file"):
        if which == "Free text":
            example = ("two red circles on the grass\na blue star\nthree squares" if shapes
                       else "a photo of two brown bears in the forest\na red car parked on a street")
            lines = st.text_area("One prompt per line", example, key="lee_text", height=120).splitlines()
        else:
            upload = st.file_uploader("Prompt file (text, one prompt a line)", type=["txt"], key="lee_file")
            lines = upload.getvalue().decode("utf-8", errors="replace").splitlines() if upload else []
        # Each prompt once: the image grid picks a prompt by its text.
        prompts = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
        prompts = prompts[:policy().limit("prompts", max(1, len(prompts)))]
    else:
        cats = st.multiselect("Categories", CATEGORIES, default=list(CATEGORIES), key="lee_cats") if shapes else CATEGORIES
        if which.startswith("The adapter"):
            # Lee et al.'s "seen" prompts: the ones the fine-tuning used (the comparison draws new seeds).
            chosen = found.get(st.session_state.get("lee_adapter", ""), next(iter(found.values()), None))
            pool = experiment_prompts(chosen, 400).get("trained", []) if chosen else []
        else:
            pool = heldout_prompts(60)["seen" if which.startswith("Held-out") else "unseen"]
        # A prompt file of free text (an adapter's own prompts) has no grammar category: keep it.
        pool = [p for p in pool if (spec := parse_prompt(p)) is None or spec.category in cats]
        most = policy().limit("prompts", max(1, len(pool)))  # 16 on a shared server
        # A slider needs two ends: a set of one prompt (a small adapter's own) has nothing to choose.
        count = st.slider("Number of prompts", 1, most, min(8, most), key="lee_count") if most > 1 else most
        prompts = pool[:count]
    st.caption(f"{len(prompts)} prompts" + (": " + " · ".join(prompts[:6]) + (" …" if len(prompts) > 6 else "") if prompts else ""))
with right:
    c1, c2 = st.columns(2)
    n = c1.slider("n (samples per prompt)", 2, policy().limit("samples", 32), 16, key="lee_n")
    k = c2.slider("k (kept)", 1, 32, 4, key="lee_k")
    fresh = st.session_state.pop("lee_ft_select", None)
    if fresh in found:  # an adapter this session just trained: select it (before the box is drawn)
        st.session_state["lee_adapter"] = fresh
    adapter_label = st.selectbox("Fine-tuned adapter", list(found) or ["none found"], key="lee_adapter")
    info = load_adapter_info(found[adapter_label]) if adapter_label in found else {}
    trained_with = info.get("config", {}).get("reward", "")
    choices = (["adapter"] if trained_with else []) + [r for r in REWARD_NAMES if shapes or r != "judge"] + ["other"]
    picked = c1.selectbox("Reward (best-k and fine-tuning)", choices, key="lee_reward", help=SPEC_HELP,
                          format_func=lambda r: {"adapter": f"the adapter's ({short(trained_with)})",
                                                 "other": "other: a folder…"}.get(r, r))
    seed = c2.number_input("Seed", 0, 2**31 - 1, 0, key="lee_seed")
    typed = st.text_input("Reward spec", key="lee_reward_spec", placeholder="lee:/path/to/reward-folder",
                          help=SPEC_HELP) if picked == "other" else ""
    held_text = st.text_input("Held-out rewards (comma-separated)", ", ".join(DEFAULT_HELD_OUT), key="lee_held",
                              help="Scored on every kept image but never selected or trained with: a gain in the "
                                   f"training reward they do not share is the reward being gamed. {SPEC_HELP}.")
    guide_on = st.checkbox("Add a reward-guided arm", key="lee_guide_on",
                           help="Also sample the original model steered up a reward's gradient at every step "
                                "(same starting noise as original random); about 3× the sampling time.")
    g2, g3 = st.columns(2)
    guide_pick = g2.selectbox("Guided by", GUIDE_REWARDS, index=GUIDE_REWARDS.index("rahf-plausibility"),
                              key="lee_guide_reward", disabled=not guide_on)
    guide_scale = g3.slider("Guidance scale", 0.5, 10.0, 2.0, 0.5, key="lee_guide_scale", disabled=not guide_on,
                            help="Step size of the reward gradient. On ShapesWorld, scales were tuned on a separate "
                                 "prompt set (docs/experiments/guidance.md); large scales made images worse.")
try:
    reward_spec = checked_spec({"adapter": trained_with, "other": typed}.get(picked, picked))
    held_specs = [checked_spec(h) for h in held_out_specs(reward_spec, held_text)]
    guide_spec = checked_spec(guide_pick) if guide_on else ""
except RHFError as e:
    st.error(error_text(e))
    st.stop()

with st.expander("Fine-tune a new adapter now"):
    f1, f2, f3, f4 = st.columns(4)
    ft_name = f1.text_input("Name", "my-adapter", key="lee_ft_name")
    ft_beta = f2.number_input("β (pre-training loss weight)", 0.0, 10.0, 1.0, 0.5, key="lee_ft_beta")
    ft_steps = f3.number_input("Steps", 10, policy().limit("finetune_steps", 5000), 300, 50, key="lee_ft_steps")
    ft_prompts = f4.number_input("Training prompts", 10, 300, 100, 10, key="lee_ft_prompts") if shapes else len(prompts)
    ft_objective = st.radio("Objective", list(OBJECTIVE_LABELS), format_func=OBJECTIVE_LABELS.get, horizontal=True,
                            key="lee_ft_objective")
    trains_on = ("the grammar's training prompts (never the held-out ones)" if shapes
                 else f"the {len(prompts)} prompts above (a prompt set of its own keeps the comparison honest)")
    st.caption(f"Trains LoRA adapters on the UNet of **{gen.name}** with the **{short(reward_spec)}** reward on "
               f"{trains_on}. **Stop fine-tuning** keeps the steps finished so far; Fine-tune again with the same "
               "settings to resume.")
    running = st.session_state.pop("lee_ft_running", None)  # (name, steps) of a run this session started
    if running:  # the run ended without finishing: Stop (or any other widget) reran the page, which stops it
        name, total = running
        with st.spinner("Waiting for the stopped fine-tune to save its finished steps…"):
            with training_lock():
                kept = saved_steps(name)  # what the saved state holds, not what we hope it holds
        if kept:
            st.info(f"Fine-tuning `{name}` stopped; its saved state holds {kept} of {total} steps. Press "
                    "**Fine-tune** with the same settings to resume from there.")
        else:
            st.info(f"Fine-tuning `{name}` stopped before its first step finished: no step was kept. Press "
                    "**Fine-tune** to start again.")
    done = st.session_state.pop("lee_ft_done", None)
    if done:
        st.success(f"Saved the adapter to `{done}`; it is selected above.")
    if st.button("Fine-tune", key="lee_ft_run", disabled=not shapes and not prompts):
        name = "".join(ch for ch in ft_name if ch.isalnum() or ch in "-_") or "my-adapter"
        st.session_state["lee_ft_running"] = (name, int(ft_steps))
        stop_slot = st.empty()  # the Stop button lives only while the training runs
        stop_slot.button("Stop fine-tuning", key="lee_ft_stop")
        with training_lock():  # also waits for a stopped run that is still saving
            path = run_with_progress("Starting…", lambda progress: finetune(
                FinetuneConfig(name=name, reward=reward_spec, beta=float(ft_beta), steps=int(ft_steps),
                               prompts="train" if shapes else prompt_file_path(prompts),
                               n_prompts=int(ft_prompts), objective=ft_objective,
                               batch_size=8 if ft_objective == "draft" else 32),
                generator=gen, reward=reward_fn(reward_spec), progress=progress))
        stop_slot.empty()
        st.session_state.pop("lee_ft_running", None)
        if path is not None:
            # Rerun so the adapter list (read at the top) has the new adapter, selected.
            st.session_state["lee_ft_done"] = str(path)
            st.session_state["lee_ft_select"] = next((label for label, p in adapters().items()
                                                      if Path(p).resolve() == Path(path).resolve()), None)
            st.rerun()

if k > n:
    st.error(f"k must not exceed n: asked to keep the best {k} of {n}.")
    st.stop()
if not prompts:
    st.warning("The prompt set is empty: pick categories or write at least one prompt.")
    st.stop()
if not found:
    st.warning(f"No fine-tuned adapter made for {gen.name} found: fine-tune one above.")
    st.stop()
adapter = found[adapter_label]
st.caption(f"Adapter `{Path(adapter).name}`: {OBJECTIVE_LABELS.get(info['config'].get('objective', 'rwr'), '?')}, "
           f"β = {info['beta_used']}, {info['steps_done']} steps, reward "
           f"{short(info['config']['reward'])}, trained on {info['prompts']} prompts (mean reward of its samples "
           f"{info['reward_stats'].get('mean', float('nan')):.2f}).")
if not info.get("complete", True):  # stopped by the button, Streamlit's own Stop, or a crash
    st.warning(f"`{Path(adapter).name}` is unfinished: {info['steps_done']} of {info['config']['steps']} steps. "
               "Fine-tune again with the same settings to resume, or compare it as it is.")

# A result is shown only under the settings it was made with (k only picks among the n samples).
run_key = (gen.name, adapter, tuple(prompts), n, reward_spec, tuple(held_specs), int(seed), rahf.weights_key,
           guide_spec, float(guide_scale) if guide_spec else 0.0)
if st.button("Compare", type="primary", key="lee_run"):
    comp = run_with_progress("Starting…", lambda progress: run_comparison(
        gen, adapter, prompts, n=n, k=k, reward_name=reward_spec, reward=reward_fn(reward_spec), predictor=rahf,
        encoders=load_encoders(), seed=int(seed), progress=progress,
        held_out_rewards={h: reward_fn(h) for h in held_specs}, guide=guide_spec,
        guide_reward=reward_fn(guide_spec) if guide_spec else None, guide_scale=float(guide_scale)))
    if comp is None:
        st.stop()
    st.session_state["lee_result"] = (run_key, comp)

stored = st.session_state.get("lee_result")
if not stored or stored[0] != run_key or list(stored[1].prompts) != list(prompts):
    st.info("Press **Compare** to generate with both models (results are cached on disk: the same settings "
            "come back at once).")
    st.stop()
comp = stored[1]
comp.k = k  # k only picks among the n samples
summary = summarize(comp)
ARM_COLORS = dict(zip(comp.arms, px.colors.qualitative.Set2))
if comp.settings.get("cached"):
    st.caption("From the cache.")

# --- measures ----------------------------------------------------------------------------------------

st.subheader("Measures per arm")
rows = []
# Pooled over all n samples of the arm's model: the same for its random and best-k arms.
model_all_n = {comp.picks(arm)[0]: summary[arm].get("alignment_rate_all_n") for arm in comp.arms
               if "alignment_rate_all_n" in summary[arm]}
held_cols = {h: f"held-out {short(h)}" for h in comp.held_out}
for arm in comp.arms:
    s = summary[arm]
    row = {"arm": arm, f"reward {short(reward_spec)}": s["mean_reward"],
           **{col: s["held_out"][h]["mean"] for h, col in held_cols.items()}, "diversity": s["diversity"]}
    if comp.judged:  # the judge's columns exist only where a judge read the prompts
        row |= {"judge alignment": s["alignment_rate"], "model alignment (all n)": model_all_n.get(comp.picks(arm)[0]),
                "judge implausible share": s["judge_implausible_share"]}
    rows.append(row | {"win vs original random": s["win"], "tie": s["tie"], "loss": s["loss"]})
# Short headers (the full names are the tooltips) and 3 decimals: ten columns of long headers ran past
# the right edge of the page, hiding the last ones behind a scroll bar.
MEASURE_COLUMNS = {f"reward {short(reward_spec)}": "reward", **{c: f"H: {short(h)}" for h, c in held_cols.items()},
                   "diversity": "diversity", "judge alignment": "judge al.", "model alignment (all n)": "model al. (all n)",
                   "judge implausible share": "judge impl.", "win vs original random": "win", "tie": "tie", "loss": "loss"}
st.dataframe(pd.DataFrame(rows).set_index("arm"), width="stretch",
             column_config={name: st.column_config.NumberColumn(short_name, help=name, format="%.3f")
                            for name, short_name in MEASURE_COLUMNS.items()})
st.caption(f"Reward: **{short(reward_spec)}**, the one best-k selects by. Held-out (H): rewards nothing here was "
           "selected or trained with; a gain in the reward they do not share is the reward being gamed. Diversity: "
           "mean pairwise cosine distance of image embeddings within a prompt. Win rate: share of prompts where the "
           "arm's " + ("judge alignment (or reward, for prompts it cannot read)" if comp.judged else "reward") +
           " beats original random." + (" Judge alignment: share of the k kept images the ShapesWorld judge finds "
                                        "aligned; model alignment pools all n samples of each model." if comp.judged
                                        else " No judge: this generator's images have no ground truth here."))
measures = {"reward_gain": f"reward {short(reward_spec)}", "alignment_gain": "judge alignment"}
gains = []
for arm in comp.arms:
    measured = [(label, summary[arm].get(key)) for key, label in measures.items()]
    measured += [(f"held-out {short(h)}", v["gain"]) for h, v in summary[arm]["held_out"].items()]
    gains += [{"arm": arm, "measure": label, "against": g["against"], "gain": g["difference"],
               "95% interval": f"{g['ci95'][0]:+.3f} … {g['ci95'][1]:+.3f}",
               "verdict": "gain" if g["ci95"][0] > 0 else ("loss" if g["ci95"][1] < 0 else "within noise")}
              for label, g in measured if g]
if gains:
    st.dataframe(pd.DataFrame(gains).set_index("arm"), width="stretch",
                 column_config={"gain": st.column_config.NumberColumn(format="%+.3f")})
    st.caption("Gains per prompt, paired (same prompts and seeds), with a 95% bootstrap interval over prompts: a "
               "gain counts only when the interval stays above 0.")

p1, p2 = st.columns(2)
dist = pd.DataFrame([{"arm": arm, "reward": float(v)} for arm in comp.arms for v in comp.arm_values(arm, comp.rewards).ravel()])
p1.plotly_chart(px.box(dist, x="arm", y="reward", color="arm", color_discrete_map=ARM_COLORS, points="all",
                       title="Reward of the kept images").update_layout(showlegend=False, height=380),
                width="stretch")
cat_rows = [{"arm": arm, "category": cat, "alignment": v} for arm in comp.arms
            for cat, v in summary[arm].get("alignment_by_category", {}).items() if v == v]
if cat_rows:
    p2.plotly_chart(px.bar(pd.DataFrame(cat_rows), x="category", y="alignment", color="arm", barmode="group",
                           color_discrete_map=ARM_COLORS, range_y=[0, 1], title="Judge alignment per category")
                    .update_layout(height=380, legend=dict(orientation="h", y=-0.25)), width="stretch")
else:
    held = pd.DataFrame([{"arm": arm, "reward": short(h), "mean": summary[arm]["held_out"][h]["mean"]}
                         for arm in comp.arms for h in comp.held_out])
    if len(held):
        p2.plotly_chart(px.bar(held, x="reward", y="mean", color="arm", barmode="group", color_discrete_map=ARM_COLORS,
                               title="Held-out rewards of the kept images")
                        .update_layout(height=380, legend=dict(orientation="h", y=-0.25)), width="stretch")
    else:
        p2.info("No held-out reward named, and no judge for these prompts.")
wins = pd.DataFrame([{"arm": arm, "outcome": o, "share": summary[arm][o]} for arm in comp.arms[1:] for o in ("win", "tie", "loss")])
# Full width, one bar an arm: in a third of the page its arm names and legend were cut off.
st.plotly_chart(px.bar(wins, y="arm", x="share", color="outcome", orientation="h", range_x=[0, 1],
                       title="Against original random, per prompt: win / tie / loss",
                       color_discrete_map={"win": "#2ca02c", "tie": "#bbbbbb", "loss": "#d62728"})
                .update_layout(height=260, legend=dict(orientation="h", y=-0.3)), width="stretch")

# --- image grids ---------------------------------------------------------------------------------------

st.subheader("Images")
# Keyed by the result: a new comparison gets a new box. A box kept across results held its old prompt's
# label in the browser while the script read its index in the new list (another prompt's images).
result_key = hashlib.sha1(repr(run_key).encode()).hexdigest()[:12]
pi = st.selectbox("Prompt", range(len(comp.prompts)), format_func=lambda i: comp.prompts[i], key=f"lee_prompt_{result_key}")
st.caption(f"The kept images of each arm for “{comp.prompts[pi]}”.")
for arm in comp.arms:
    st.markdown(f"**{arm}**")
    model, idx = comp.picks(arm)
    cols = st.columns(max(k, 4))
    for col, j in zip(cols, idx[pi]):
        al = comp.aligned[model][pi, j]
        mark = "" if np.isnan(al) else (" · judge ✓" if al else " · judge ✗")
        col.image(upscale(Image.fromarray(comp.images[model][pi, j]), 128), width="stretch",
                  caption=f"#{j} · reward {comp.rewards[model][pi, j]:.2f}{mark}")
