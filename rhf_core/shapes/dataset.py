"""ShapesWorld as a dataset: record i is generated from (seed, i) alone, so any record can be rebuilt
on demand; only the scalar frame is computed up front and cached under `cache/frames/`."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image

from rhf_core.cache import cache_key, cached_frame
from rhf_core.dataset import SCORE_NAMES, Dataset, Record, frame_row
from rhf_core.errors import DatasetSpecError
from rhf_core.shapes.annotators import STYLES, Feedback, annotate
from rhf_core.shapes.grammar import PromptSpec, sample_prompt
from rhf_core.shapes.render import Defect, Scene, render, sample_scene

# Bump when generation changes, so cached frames are rebuilt. WORLD_VERSION seeds every record
# (bumping it changes scenes and prompts); ANNOTATION_VERSION only the simulated feedback, which is
# drawn last from each record's generator, so scenes stay as they were.
WORLD_VERSION = 1
ANNOTATION_VERSION = 2  # 2: RichHF raters dot each defect with points to cover it (was one click)

# How many defects of each type an image gets (probabilities for 0, 1, 2, ...).
IMPLAUSIBLE_COUNTS = (0.45, 0.35, 0.15, 0.05)
MISALIGNED_COUNTS = (0.5, 0.38, 0.12)
UNSEEN_SHARE = 0.15  # share of records drawn from unseen prompts (all in the test split)


@dataclass
class Sample:
    """Everything about one ShapesWorld record, including the exact defect regions."""

    index: int
    spec: PromptSpec
    split: str
    scene: Scene
    defects: list[Defect]
    feedback: Feedback

    @property
    def prompt(self) -> str:
        return self.spec.text

    def image(self) -> Image.Image:
        return render(self.scene)

    def region(self, defect_type: str) -> np.ndarray:
        """Union of the regions of all defects of a type (bool H×W)."""
        out = np.zeros((self.scene.size, self.scene.size), dtype=bool)
        for d in self.defects:
            if d.type == defect_type:
                out |= d.region
        return out


def generate_sample(index: int, seed: int = 0, size: int = 64, raters: str = "richhf") -> Sample:
    """Record `index` of the world with this seed: prompt, scene, defects, simulated feedback."""
    rng, spec, split, scene, defects = _sample_scene(index, seed, size)
    feedback = annotate(scene, defects, spec.text, STYLES[raters], rng)
    return Sample(index, spec, split, scene, defects, feedback)


def _sample_scene(index: int, seed: int, size: int):
    """The first draws of record `index`: prompt, split, scene and defects, and the generator, whose
    next draws are the simulated raters'. Drawing the image needs nothing more (a gallery thumbnail)."""
    rng = np.random.default_rng([WORLD_VERSION, seed, index])
    unseen = rng.random() < UNSEEN_SHARE
    spec = sample_prompt(rng, unseen=unseen)
    if unseen:
        split = "test"
    else:
        u = rng.random()
        split = "train" if u < 0.8 else ("dev" if u < 0.9 else "test")
    n_imp = int(rng.choice(len(IMPLAUSIBLE_COUNTS), p=IMPLAUSIBLE_COUNTS))
    n_mis = int(rng.choice(len(MISALIGNED_COUNTS), p=MISALIGNED_COUNTS))
    scene, defects = sample_scene(spec, rng, size=size, n_implausible=n_imp, n_misaligned=n_mis)
    return rng, spec, split, scene, defects


FRAME_CHUNK = 1000  # records per unit of work when building the frame
# Hard cap on a world's size, so `?ds=shapes:n=100000000` is refused instead of tying up the server.
# Records cost about 7 ms each on one core: a million is already an hour of CPU and a ~1 GB frame.
# (A shared server caps n far lower, see rhf_core/shared.py.)
MAX_N = 1_000_000
PARALLEL_ABOVE = 4000  # worlds at least this large are generated on several processes
MAX_WORKERS = 8


def record_id(seed: int, i: int) -> str:
    return f"shapes-{seed}-{i:06d}"


def frame_rows(seed: int, size: int, raters: str, start: int, stop: int) -> list[dict]:
    """Frame rows of records start..stop-1 (a picklable unit of work for a process pool)."""
    rows = []
    for i in range(start, stop):
        s = generate_sample(i, seed, size, raters)
        fb = s.feedback
        rows.append(frame_row(
            record_id(seed, i), s.prompt, s.split, fb.scores, fb.heatmaps, fb.words,
            category=s.spec.category,
            prompt_split="unseen" if s.spec.unseen else "seen",
            background=s.scene.background,
            n_objects=len(s.scene.objects),
            n_implausibility_defects=sum(d.type == "implausibility" for d in s.defects),
            n_misalignment_defects=sum(d.type == "misalignment" for d in s.defects),
            defect_kinds=",".join(sorted(d.kind for d in s.defects)),
            raters=fb.meta["raters"],
        ))
    return rows


class ShapesDataset(Dataset):
    """`open_dataset("shapes", n=500, seed=0, size=64, raters="richhf"|"rapidata")`."""

    name = "ShapesWorld"

    def __init__(self, n: int = 2000, seed: int = 0, size: int = 64, raters: str = "richhf",
                 progress: Callable[[int, int], None] | None = None, cache: bool = True):
        super().__init__()
        for name, value in (("n", n), ("seed", seed), ("size", size)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise DatasetSpecError(f"shapes: {name} must be a whole number, got {value!r}")
        if n <= 0:
            raise DatasetSpecError(f"shapes: n must be a positive number of records, got {n}")
        if n > MAX_N:
            raise DatasetSpecError(f"shapes: n is at most {MAX_N:,} records, got {n:,}")
        if seed < 0:  # numpy seeds are non-negative; it raised a bare ValueError
            raise DatasetSpecError(f"shapes: seed must be 0 or more, got {seed}")
        if not isinstance(raters, str) or raters not in STYLES:
            raise DatasetSpecError(f"shapes: raters must be one of {sorted(STYLES)}, got {raters!r}")
        if not 16 <= size <= 1024:
            raise DatasetSpecError(f"shapes: size must be between 16 and 1024 pixels, got {size}")
        self.n, self.seed, self.size, self.raters = int(n), int(seed), int(size), raters
        self.spec = f"shapes:n={n},seed={seed},size={size},raters={raters}"
        build = lambda: self._build_frame(progress)  # noqa: E731
        if cache:
            key = cache_key("shapes", WORLD_VERSION, ANNOTATION_VERSION, self.n, self.seed, self.size, raters)
            self._frame = cached_frame("shapes", key, build)
        else:
            self._frame = build()

    def _build_frame(self, progress) -> pd.DataFrame:
        """One row per record. Large worlds are generated in parallel chunks, one per CPU."""
        chunks = [(start, min(start + FRAME_CHUNK, self.n)) for start in range(0, self.n, FRAME_CHUNK)]
        workers = min(os.cpu_count() or 1, MAX_WORKERS, len(chunks))
        args = (self.seed, self.size, self.raters)
        parts: dict[int, list[dict]] = {}
        done = 0
        if workers <= 1 or self.n < PARALLEL_ABOVE:
            for start, stop in chunks:
                parts[start] = frame_rows(*args, start, stop)
                done += stop - start
                if progress is not None:
                    progress(done, self.n)
        else:
            # fork, not spawn/forkserver: those re-import the caller's __main__, which breaks any
            # script without an `if __name__ == "__main__"` guard. The workers only run numpy and
            # PIL code on modules already imported, so forking a threaded server is safe here.
            ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futures = {pool.submit(frame_rows, *args, start, stop): (start, stop) for start, stop in chunks}
                for fut in as_completed(futures):
                    start, stop = futures[fut]
                    parts[start] = fut.result()
                    done += stop - start
                    if progress is not None:
                        progress(done, self.n)
        return pd.DataFrame([row for start in sorted(parts) for row in parts[start]])

    def _id(self, i: int) -> str:
        return record_id(self.seed, i)

    def sample(self, pos: int) -> Sample:
        """The full ground truth of record `pos`, with exact defect regions."""
        return generate_sample(pos, self.seed, self.size, self.raters)

    def _preview(self, pos: int) -> Record:
        # The scene alone (the raters' simulation is ~40% of a record) and the scores from the frame,
        # which holds the same floats: 24 new thumbnails after a filter change are ~15 ms cheaper.
        _, spec, _, scene, _ = _sample_scene(pos, self.seed, self.size)
        frame = self._frame
        scores = {name: float(frame[name].iat[pos]) for name in SCORE_NAMES
                  if name in frame and not pd.isna(frame[name].iat[pos])}
        return Record(id=self._id(pos), prompt=spec.text, scores=scores, load_image=lambda: render(scene))

    def _load(self, pos: int) -> Record:
        s = self.sample(pos)
        fb = s.feedback
        meta = {
            "source": "shapes",
            "split": s.split,
            "category": s.spec.category,
            "prompt_split": "unseen" if s.spec.unseen else "seen",
            "prompt_spec": s.spec.to_dict(),
            "scene": s.scene.to_dict(),
            "defects": [d.to_dict() for d in s.defects],
            **fb.meta,
        }
        scene = s.scene
        return Record(
            id=self._id(pos),
            prompt=s.prompt,
            scores=dict(fb.scores),
            heatmaps=dict(fb.heatmaps),
            words=list(fb.words),
            meta=meta,
            load_image=lambda: render(scene),
        )
