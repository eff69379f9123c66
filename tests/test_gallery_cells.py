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

    def preview(self, pos):
        self.reads += 1
        if pos == self.bad:
            raise RHFError(f"record {pos} cannot be read")
        return self.ds.preview(pos)


@pytest.fixture(scope="module")
def shapes():
    return open_dataset("shapes:n=12,seed=3")


def test_a_cell_is_drawn_once_per_dataset_object_and_overlay(shapes):
    ds = Counting(shapes)
    a = parts.gallery_cell(ds, 2, "none")
    assert parts.gallery_cell(ds, 2, "none") is a and ds.reads == 1
    rec = shapes[2]
    img = Image.open(io.BytesIO(a.png))
    # The 64 px image as it is (the page enlarges it), not a 192 px copy.
    assert np.array_equal(np.asarray(img.convert("RGB")), np.asarray(rec.image.convert("RGB"))) and a.small
    assert (a.id, a.prompt, a.scores, a.peak) == (rec.id, rec.prompt, rec.scores, None)
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


class Big:
    """One record with a large photograph-sized image."""

    def __init__(self, size):
        self.size = size

    def preview(self, pos):
        from rhf_core.dataset import Record

        img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (self.size[1], self.size[0], 3), dtype=np.uint8))
        return Record(id="big", prompt="a photo", scores={"plausibility": 0.5}, load_image=lambda: img)


@pytest.mark.parametrize("size, shape", [((1024, 768), (320, 240)), ((300, 900), (107, 320)), ((200, 200), (200, 200))])
def test_large_images_are_sent_at_most_twice_the_thumbnail_side(size, shape):
    cell = parts.gallery_cell(Big(size), 0, "none")
    img = Image.open(io.BytesIO(cell.png))
    assert img.size == shape and cell.small is False


def test_a_shapes_preview_is_the_record_without_its_feedback():
    """ShapesWorld's preview skips the raters' simulation: the same id, prompt, scores (from the frame)
    and image, bit for bit, on records of both splits and rater styles."""
    for spec in ("shapes:n=40,seed=5", "shapes:n=40,seed=6,raters=rapidata,size=48"):
        ds = open_dataset(spec)
        for pos in (0, 7, 23, 39, -1):
            full, quick = ds[pos], ds.preview(pos)
            assert (quick.id, quick.prompt, quick.scores) == (full.id, full.prompt, full.scores)
            assert np.array_equal(np.asarray(quick.image), np.asarray(full.image))
            assert quick.heatmaps == {} and quick.words == []
    with pytest.raises(RHFError, match="out of range"):
        ds.preview(40)


def test_a_folder_preview_is_the_whole_record(tmp_path):
    from rhf_core.data import export

    export(open_dataset("shapes:n=3,seed=2"), tmp_path / "f")
    ds = open_dataset(f"folder:{tmp_path / 'f'}")
    full, quick = ds[1], ds.preview(1)
    assert (quick.id, quick.prompt, quick.scores, quick.words) == (full.id, full.prompt, full.scores, full.words)
    assert quick.heatmaps.keys() == full.heatmaps.keys()
