"""Perturbed prompts for Lee et al.'s prompt-classification loss (their Algorithm 2).

ShapesWorld prompts: each perturbation replaces the count, colour, shape or background of the
prompt (one attribute, chosen among those the prompt names, plus shape) with another value, so the
negatives are the hard ones a reward must tell apart. Free-form prompts: number words, colour words
and nouns from a list are swapped for others of the same kind."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

from rhf_core.shapes.grammar import BACKGROUNDS, COLORS, COUNT_WORDS, SHAPES, PromptSpec, parse_prompt

FREE_NUMBERS = ["one", "two", "three", "four", "five", "six"]
FREE_COLORS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"]
FREE_NOUNS = ["dog", "cat", "lion", "apple", "vase", "cup", "chair", "bird", "cake", "bicycle", "tree", "donut",
              "box", "plate", "clock", "car", "airplane", "bear", "horse", "tiger", "rabbit", "rose", "wolf",
              "circle", "square", "triangle", "star"]


def _perturb_spec(spec: PromptSpec, rng: np.random.Generator) -> PromptSpec:
    attrs = ["shape"] + [a for a in ("count", "color", "background") if getattr(spec, a) is not None]
    attr = attrs[rng.integers(len(attrs))]
    if attr == "shape":
        return replace(spec, shape=str(rng.choice([s for s in SHAPES if s != spec.shape])))
    if attr == "count":
        return replace(spec, count=int(rng.choice([c for c in COUNT_WORDS if c != spec.count])))
    if attr == "color":
        return replace(spec, color=str(rng.choice([c for c in COLORS if c != spec.color])))
    return replace(spec, background=str(rng.choice([b for b in BACKGROUNDS if b != spec.background])))


def _perturb_free(prompt: str, rng: np.random.Generator) -> str | None:
    tokens = re.findall(r"\w+|\W+", prompt)
    slots = []
    for i, t in enumerate(tokens):
        low = t.lower()
        for vocab in (FREE_NUMBERS, FREE_COLORS, FREE_NOUNS):
            base = low[:-1] if vocab is FREE_NOUNS and low.endswith("s") and low[:-1] in vocab else low
            if base in vocab:
                slots.append((i, vocab, base, base != low))
    if not slots:
        return None
    i, vocab, base, plural = slots[rng.integers(len(slots))]
    new = str(rng.choice([w for w in vocab if w != base])) + ("s" if plural else "")
    if tokens[i][:1].isupper():
        new = new.capitalize()
    tokens[i] = new
    return "".join(tokens)


def perturbed_prompts(prompt: str, n: int, rng: np.random.Generator | int = 0) -> list[str]:
    """n distinct prompts that differ from `prompt` in one count, colour, shape/noun or background.

    Fewer than n when the prompt has fewer distinct perturbations; [] when it has nothing to perturb."""
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    spec = parse_prompt(prompt)
    out: list[str] = []
    seen = {prompt.strip().lower()}
    for _ in range(40 * max(n, 1)):
        if len(out) >= n:
            break
        text = _perturb_spec(spec, rng).text if spec is not None else _perturb_free(prompt, rng)
        if text is None:
            break
        if text.lower() not in seen:
            seen.add(text.lower())
            out.append(text)
    return out
