"""How good is a ShapesWorld generator? The judge's alignment rate per prompt category on seen and
unseen prompts, per-attribute accuracy (count, colour, shape, background) and judge implausibility."""

from __future__ import annotations

import time

import numpy as np

from rhf_core.judge import judge
from rhf_core.shapes.grammar import CATEGORIES, PromptSpec, prompts_by
from rhf_core.t2i.generator import load_generator

ATTRIBUTES = ("count", "color", "shape", "background")


def evaluation_prompts(per_category: int = 12, seed: int = 1) -> list[PromptSpec]:
    """A fixed draw of `per_category` seen and as many unseen prompts from each category."""
    rng = np.random.default_rng(seed)
    out = []
    for cat in CATEGORIES:
        for unseen in (False, True):
            pool = prompts_by(cat, unseen)
            take = rng.choice(len(pool), size=min(per_category, len(pool)), replace=False)
            out += [pool[int(i)] for i in sorted(take)]
    return out


def attribute_errors(spec: PromptSpec, verdict) -> dict[str, bool]:
    """Which attributes the prompt names that the image gets right (only those the prompt names, and shape)."""
    objs = verdict.scene["objects"]
    out = {"shape": bool(objs) and all(o["shape"] == spec.shape for o in objs)}
    if spec.count is not None:
        out["count"] = len(objs) == spec.n_objects
    if spec.color is not None:
        out["color"] = bool(objs) and all(o["color"] == spec.color for o in objs)
    if spec.background is not None:
        out["background"] = verdict.scene["background"] == spec.background
    return out


def judge_samples(specs: list[PromptSpec], images: list[list]) -> list[dict]:
    rows = []
    for spec, imgs in zip(specs, images):
        for j, img in enumerate(imgs):
            v = judge(img, spec)
            rows.append({"prompt": spec.text, "category": spec.category, "unseen": spec.unseen,
                         "single_object": spec.n_objects == 1, "j": j, "aligned": v.aligned,
                         "implausible": v.implausible, "implausible_area": float(v.implausibility.mean()),
                         "n_objects": len(v.scene["objects"]), **{f"ok_{k}": x for k, x in attribute_errors(spec, v).items()}})
    return rows


def summarize(rows: list[dict]) -> dict:
    import pandas as pd

    df = pd.DataFrame(rows)

    def block(d):
        res = {"n_images": int(len(d)), "alignment_rate": round(float(d["aligned"].mean()), 4),
               "implausible_rate": round(float(d["implausible"].mean()), 4),
               "mean_implausible_area": round(float(d["implausible_area"].mean()), 5)}
        for a in ATTRIBUTES:
            col = f"ok_{a}"
            if col in d and d[col].notna().any():
                res[f"{a}_accuracy"] = round(float(d[col].dropna().astype(float).mean()), 4)
        return res

    out = {"overall": block(df)}
    for split, unseen in (("seen", False), ("unseen", True)):
        d = df[df["unseen"] == unseen]
        out[split] = {"all": block(d), **{c: block(d[d["category"] == c]) for c in CATEGORIES if (d["category"] == c).any()},
                      "single_object": block(d[d["single_object"]])}
    return out


def evaluate_generator(name_or_path=None, per_prompt: int = 4, per_category: int = 12, seed: int = 1,
                       steps: int = 25, guidance: float = 7.5, generator=None) -> dict:
    gen = generator or load_generator(name_or_path)
    specs = evaluation_prompts(per_category, seed)
    t0 = time.time()
    images = gen.generate([s.text for s in specs], n=per_prompt, seed=seed, steps=steps, guidance=guidance)
    seconds = time.time() - t0
    result = summarize(judge_samples(specs, images))
    result["settings"] = {"generator": gen.name, "adapter": gen.adapter, "prompts": len(specs),
                          "per_prompt": per_prompt, "seed": seed, "steps": steps, "guidance": guidance,
                          "generation_seconds": round(seconds, 1), "device": gen.device.type}
    return result


def format_table(result: dict) -> str:
    lines = [f"{'':14s} {'split':7s} {'n':>5s} {'aligned':>8s} {'count':>6s} {'colour':>6s} {'shape':>6s} "
             f"{'bg':>6s} {'implaus.':>8s}"]
    for split in ("seen", "unseen"):
        for key, b in result[split].items():
            cells = [f"{b.get(a + '_accuracy', float('nan')):6.2f}" for a in ATTRIBUTES]
            lines.append(f"{key:14s} {split:7s} {b['n_images']:5d} {b['alignment_rate']:8.2f} {' '.join(cells)} "
                         f"{b['implausible_rate']:8.2f}")
    o = result["overall"]
    lines.append(f"overall: alignment {o['alignment_rate']:.3f}, implausible {o['implausible_rate']:.3f} of images")
    return "\n".join(lines)


def sample_grid(generator, prompts: list[str], n: int = 4, seed: int = 0, scale: int = 2):
    """A PIL grid: one row per prompt, n samples, each with the judge's verdict under it
    (green ✓ aligned / red ✗ with the misaligned words; '!' marks an implausible region)."""
    from PIL import Image, ImageDraw

    images = generator.generate(prompts, n=n, seed=seed)
    side = generator.image_size * scale
    label_w, cap_h = 210, 14
    grid = Image.new("RGB", (label_w + n * (side + 4), len(prompts) * (side + cap_h + 6)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (p, row) in enumerate(zip(prompts, images)):
        y = i * (side + cap_h + 6)
        draw.text((4, y + side // 2 - 6), p, fill="black")
        for j, im in enumerate(row):
            x = label_w + j * (side + 4)
            grid.paste(im.resize((side, side), Image.NEAREST), (x, y))
            v = judge(im, p)
            text = ("ok" if v.aligned else "x " + ",".join(v.misaligned_words)) + (" !" if v.implausible else "")
            draw.text((x, y + side + 1), text[:22], fill=(0, 130, 0) if v.aligned else (200, 0, 0))
    return grid
