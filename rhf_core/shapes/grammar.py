"""ShapesWorld prompts: the compositional categories of Lee et al. 2023 (count, colour, background,
combination) over a small vocabulary, with some attribute pairs held out as *unseen* prompts."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import product

import numpy as np

COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
WORD_COUNTS = {w: n for n, w in COUNT_WORDS.items()} | {"a": 1, "an": 1}

# Saturated object colours, each far (RGB distance ≥ 70) from every background colour.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (245, 215, 30),
    "green": (40, 180, 60),
    "blue": (40, 90, 225),
    "purple": (140, 60, 190),
    "pink": (245, 120, 190),
    "brown": (130, 80, 40),
}

SHAPES = ("circle", "square", "triangle", "star")
PLURALS = {s: s + "s" for s in SHAPES}

# Backgrounds: phrase in the prompt, the words a wrong background contradicts, base colour.
BACKGROUNDS: dict[str, dict] = {
    "grass": {"phrase": "on the grass", "words": ["grass"], "rgb": (96, 140, 72)},
    "night sky": {"phrase": "in the night sky", "words": ["night", "sky"], "rgb": (18, 22, 52)},
    "sand": {"phrase": "on the sand", "words": ["sand"], "rgb": (212, 190, 146)},
    "ocean": {"phrase": "in the ocean", "words": ["ocean"], "rgb": (40, 110, 150)},
    "snow": {"phrase": "in the snow", "words": ["snow"], "rgb": (230, 235, 245)},
}

CATEGORIES = ("count", "color", "background", "combination")

# Held-out attribute pairs: a prompt containing any of them is *unseen* (Lee et al. report seen and
# unseen prompts separately). Each shape loses two colours, one count and one background.
UNSEEN_COLOR_SHAPE = {
    ("yellow", "circle"), ("purple", "circle"),
    ("green", "square"), ("orange", "square"),
    ("red", "triangle"), ("pink", "triangle"),
    ("blue", "star"), ("brown", "star"),
}
UNSEEN_COUNT_SHAPE = {(4, "circle"), (3, "square"), (4, "triangle"), (2, "star")}
UNSEEN_BACKGROUND_SHAPE = {("sand", "circle"), ("night sky", "square"), ("ocean", "triangle"), ("grass", "star")}


@dataclass(frozen=True)
class PromptSpec:
    """What a prompt asks for; `None` means the prompt does not say."""

    shape: str
    count: int | None = None
    color: str | None = None
    background: str | None = None

    @property
    def category(self) -> str:
        said = [self.count is not None, self.color is not None, self.background is not None]
        if sum(said) > 1:
            return "combination"
        if self.count is not None:
            return "count"
        if self.color is not None:
            return "color"
        if self.background is not None:
            return "background"
        return "shape"

    @property
    def n_objects(self) -> int:
        return self.count if self.count is not None else 1

    @property
    def count_word(self) -> str:
        if self.count is not None:
            return COUNT_WORDS[self.count]
        following = self.color or self.shape
        return "an" if following[0] in "aeiou" else "a"

    @property
    def text(self) -> str:
        n = self.n_objects
        noun = PLURALS[self.shape] if n > 1 else self.shape
        words = [self.count_word]
        if self.color:
            words.append(self.color)
        words.append(noun)
        if self.background:
            words.append(BACKGROUNDS[self.background]["phrase"])
        return " ".join(words)

    @property
    def unseen(self) -> bool:
        return is_unseen(self.shape, self.count, self.color, self.background)

    def to_dict(self) -> dict:
        return asdict(self)


def is_unseen(shape: str, count: int | None, color: str | None, background: str | None) -> bool:
    return (
        (color, shape) in UNSEEN_COLOR_SHAPE
        or (count, shape) in UNSEEN_COUNT_SHAPE
        or (background, shape) in UNSEEN_BACKGROUND_SHAPE
    )


def all_prompts() -> list[PromptSpec]:
    """Every prompt of the grammar, in a fixed order."""
    out = []
    for shape, count in product(SHAPES, COUNT_WORDS):
        out.append(PromptSpec(shape, count=count))
    for shape, color in product(SHAPES, COLORS):
        out.append(PromptSpec(shape, color=color))
    for shape, bg in product(SHAPES, BACKGROUNDS):
        out.append(PromptSpec(shape, background=bg))
    for shape, count, color, bg in product(SHAPES, COUNT_WORDS, COLORS, BACKGROUNDS):
        out.append(PromptSpec(shape, count=count, color=color, background=bg))
    return out


def prompts_by(category: str | None = None, unseen: bool | None = None) -> list[PromptSpec]:
    return [
        p for p in all_prompts()
        if (category is None or p.category == category) and (unseen is None or p.unseen == unseen)
    ]


def sample_prompt(rng: np.random.Generator, unseen: bool, category_weights=None) -> PromptSpec:
    """Draw a category, then a prompt of that category from the seen or unseen set."""
    weights = category_weights or {"count": 0.25, "color": 0.25, "background": 0.2, "combination": 0.3}
    cats = list(weights)
    p = np.array([weights[c] for c in cats], dtype=np.float64)
    while True:
        cat = cats[rng.choice(len(cats), p=p / p.sum())]
        pool = _pool(cat, unseen)
        if pool:
            return pool[rng.integers(len(pool))]


_POOLS: dict = {}


def _pool(category: str, unseen: bool) -> list[PromptSpec]:
    key = (category, unseen)
    if key not in _POOLS:
        _POOLS[key] = prompts_by(category, unseen)
    return _POOLS[key]


def parse_prompt(text: str) -> PromptSpec | None:
    """Read a grammar prompt back into its spec; None if the text is not a ShapesWorld prompt."""
    words = text.lower().strip().rstrip(".").split()
    if not words:
        return None
    count = None
    i = 0
    if words[0] in WORD_COUNTS:
        count = WORD_COUNTS[words[0]] if words[0] in COUNT_WORDS.values() else None
        i = 1
    color = None
    if i < len(words) and words[i] in COLORS:
        color = words[i]
        i += 1
    if i >= len(words):
        return None
    noun = words[i]
    shape = next((s for s in SHAPES if noun in (s, PLURALS[s])), None)
    if shape is None:
        return None
    rest = " ".join(words[i + 1:])
    background = None
    if rest:
        background = next((b for b, d in BACKGROUNDS.items() if d["phrase"] == rest), None)
        if background is None:
            return None
    return PromptSpec(shape, count=count, color=color, background=background)
