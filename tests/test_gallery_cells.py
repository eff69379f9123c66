"""The explorer's gallery-cell cache (ui/explorer_parts.py): a rerun re-draws nothing it drew, a
reloaded dataset draws again, and the cache stays bounded."""

import io

import numpy as np
import pytest
from PIL import Image

import ui.explorer_parts as parts
from rhf_core.data import open_dataset
from rhf_core.errors import RHFError


class Counting:
    """A dataset that counts record reads (and fails on one position), around a real one."""

    def __init__(self, ds, bad=None):
        self.ds, self.reads, self.bad = ds, 0, bad

    def __getitem__(self, pos):
        self.reads += 1
        if pos == self.bad:
            raise RHFError(f"record {pos} cannot be read")
        return self.ds[pos]


@pytest.fixture(scope="module")
def shapes():
    return open_dataset("shapes:n=12,seed=3")


def test_a_cell_is_drawn_once_per_dataset_object_and_overlay(shapes):
    ds = Counting(shapes)
    a = parts.gallery_cell(ds, 2, "none")
    assert parts.gallery_cell(ds, 2, "none") is a and ds.reads == 1
    rec = shapes[2]
    img = Image.open(io.BytesIO(a.png))
    assert min(img.size) >= 160 and (a.id, a.prompt, a.scores, a.peak) == (rec.id, rec.prompt, rec.scores, None)
    heat = next(iter(rec.heatmaps))
    b = parts.gallery_cell(ds, 2, heat)
    assert ds.reads == 2 and b.png != a.png and b.peak == pytest.approx(float(np.max(rec.heatmaps[heat])))
    again = Counting(shapes)  # a reloaded dataset is a new object: drawn again, never served stale
    assert parts.gallery_cell(again, 2, "none").png == a.png and again.reads == 1


def test_unreadable_records_raise_and_are_not_cached(shapes):
    ds = Counting(shapes, bad=5)
    for _ in range(2):
        with pytest.raises(RHFError, match="record 5 cannot be read"):
            parts.gallery_cell(ds, 5, "none")
    assert ds.reads == 2


def test_the_cache_keeps_the_most_recent_cells(shapes, monkeypatch):
    monkeypatch.setattr(parts, "GALLERY_CELLS", 3)
    ds = Counting(shapes)
    for pos in range(5):
        parts.gallery_cell(ds, pos, "none")
    parts.gallery_cell(ds, 4, "none")
    assert ds.reads == 5  # the newest is still there
    parts.gallery_cell(ds, 0, "none")
    assert ds.reads == 6  # the oldest was dropped
