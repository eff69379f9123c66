"""The tag store (tags and saved views on disk, per dataset) and heatmap blobs / patches."""

from collections import deque

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from rhf_core.data import export, open_dataset
from rhf_core.errors import DatasetFormatError, InvalidArgumentError
from rhf_core.patches import Blob, collect_patches, crop_patch, find_blobs, patch_box
from rhf_core.tags import TagStore, normalize_tag, tags_in_frame, with_tags

PROPS = settings(max_examples=60, derandomize=True, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])

tag_text = st.text(st.sampled_from("abcXYZ019 .:/+#-_"), min_size=1, max_size=12).filter(lambda t: t.strip())
ids = st.sampled_from([f"r{i}" for i in range(6)])
ops = st.lists(st.tuples(st.booleans(), st.lists(ids, min_size=1, max_size=4), tag_text), max_size=12)


# --- tags --------------------------------------------------------------------------------------

@PROPS
@given(ops=ops)
def test_tag_store_matches_a_dict_of_sets_and_survives_reopening(tmp_path_factory, ops):
    folder = tmp_path_factory.mktemp("tags")
    store, model = TagStore("shapes:n=6", folder), {}
    for add, rec_ids, tag in ops:
        t = normalize_tag(tag)
        before = sum(t in model.get(r, set()) for r in set(rec_ids))
        n = store.add(rec_ids, tag) if add else store.remove(rec_ids, tag)
        for r in set(rec_ids):
            model.setdefault(r, set())
            (model[r].add if add else model[r].discard)(t)
        assert n == (len(set(rec_ids)) - before if add else before)
    expected = {r: sorted(ts) for r, ts in model.items() if ts}
    again = TagStore("shapes:n=6", folder)  # a new session reads the file
    assert again.tags() == expected
    for tag in {t for ts in expected.values() for t in ts}:
        assert again.ids_with([tag]) == {r for r, ts in expected.items() if tag in ts}
        assert again.tag_counts()[tag] == len(again.ids_with([tag]))
    assert TagStore("shapes:n=7", folder).tags() == {}  # another dataset has its own tags


@PROPS
@given(tag=st.text(max_size=60))
def test_normalize_tag_is_idempotent_or_refuses(tag):
    try:
        t = normalize_tag(tag)
    except InvalidArgumentError as e:
        assert "tag" in str(e)
        return
    assert t == normalize_tag(t) and t == t.strip().lower() and 0 < len(t) <= 40 and "," not in t


def test_ids_with_any_or_every_tag(tmp_path):
    store = TagStore("x", tmp_path)
    store.add(["a", "b"], "hands")
    store.add(["b", "c"], "blur")
    assert store.ids_with(["hands", "blur"]) == {"a", "b", "c"}
    assert store.ids_with(["hands", "blur"], match_all=True) == {"b"}
    assert store.ids_with([]) == set()


def test_a_damaged_tags_file_is_refused_and_kept(tmp_path):
    store = TagStore("x", tmp_path)
    store.path.write_text('{"tags": {"a": "not a list"}, "views": {}}')
    with pytest.raises(DatasetFormatError, match="not a tags file"):
        store.add(["a"], "t")
    assert "not a list" in store.path.read_text()  # not overwritten
    store.path.write_text("{half a file")
    with pytest.raises(DatasetFormatError, match="unreadable"):
        store.tags()


@PROPS
@given(params=st.dictionaries(st.sampled_from(["q", "s_plausibility", "desc", "split"]),
                              st.one_of(st.text(max_size=5), st.booleans(),
                                        st.tuples(st.floats(0, 1), st.floats(0, 1)),
                                        st.lists(st.text(max_size=3), max_size=3)), max_size=4))
def test_saved_views_round_trip_as_json(tmp_path_factory, params):
    store = TagStore("x", tmp_path_factory.mktemp("views"))
    store.save_view("  my   view ", params)
    back = TagStore("x", store.path.parent).views()["my view"]
    assert back == {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}
    assert store.delete_view("my view") and store.views() == {}


def test_a_view_name_must_be_short_and_not_empty(tmp_path):
    store = TagStore("x", tmp_path)
    for bad in ("", "   ", "v" * 61):
        with pytest.raises(InvalidArgumentError, match="view name"):
            store.save_view(bad, {})


def test_tags_travel_through_export_and_seed_the_exported_folder(tmp_path):
    ds = open_dataset("shapes:n=5,seed=3")
    tags = {ds[1].id: ["hands", "odd"], ds[4].id: ["odd"]}
    out = export(with_tags(ds, tags), tmp_path / "out")
    back = open_dataset(f"folder:{out}")
    assert back.get(ds[1].id).meta["tags"] == ["hands", "odd"] and "tags" not in back.get(ds[0].id).meta
    assert tags_in_frame(back.frame) == tags
    store = TagStore(back.spec, tmp_path / "store")
    assert store.seed(tags_in_frame(back.frame)) == 2 and store.tags() == tags
    assert store.seed({"z": ["new"]}) == 0  # only an empty store is seeded


# --- blobs and patches -------------------------------------------------------------------------

def components(mask: np.ndarray) -> list[set]:
    """8-connected components by breadth-first search: an oracle independent of scipy."""
    seen, out = np.zeros_like(mask), []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        comp, todo = set(), deque([(y, x)])
        seen[y, x] = True
        while todo:
            cy, cx = todo.popleft()
            comp.add((cy, cx))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        todo.append((ny, nx))
        out.append(comp)
    return out


heatmaps = arrays(np.float32, st.tuples(st.integers(1, 12), st.integers(1, 12)),
                  elements=st.sampled_from([0.0, 0.1, 0.35, 0.6, 0.9, 1.0]))


@PROPS
@given(heat=heatmaps, threshold=st.sampled_from([0.0, 0.2, 0.5, 0.95]))
def test_blobs_are_the_connected_regions_above_the_threshold(heat, threshold):
    blobs = find_blobs(heat, threshold)
    comps = components(heat > threshold)
    assert len(blobs) == len(comps)
    assert sorted(round(b.area * heat.size) for b in blobs) == sorted(len(c) for c in comps)
    assert [b.peak for b in blobs] == sorted((b.peak for b in blobs), reverse=True)
    expected = sorted((float(max(heat[p] for p in c)), min(p[1] for p in c), min(p[0] for p in c),
                       max(p[1] for p in c) + 1, max(p[0] for p in c) + 1) for c in comps)
    assert sorted((b.peak, *map(int, b.box)) for b in blobs) == [(e[0], *map(int, e[1:])) for e in expected]
    for b in blobs:
        assert threshold < b.mean <= b.peak <= 1.0


def test_blob_threshold_and_shape_are_checked():
    with pytest.raises(InvalidArgumentError, match=r"\[0, 1\)"):
        find_blobs(np.zeros((4, 4)), 1.0)
    with pytest.raises(InvalidArgumentError, match="2-D"):
        find_blobs(np.zeros(4), 0.5)
    assert find_blobs(np.full((3, 3), np.nan), 0.0) == []  # NaN is no heat


@PROPS
@given(box=st.tuples(st.integers(0, 15), st.integers(0, 15), st.integers(1, 16), st.integers(1, 16)),
       size=st.tuples(st.integers(1, 200), st.integers(1, 200)))
def test_a_patch_box_is_a_square_inside_the_image_around_the_blob(box, size):
    x0, y0 = min(box[0], box[2] - 1), min(box[1], box[3] - 1)
    blob = Blob((x0, y0, box[2], box[3]), 1.0, 1.0, 0.1)
    left, top, right, bottom = patch_box(blob, (16, 16), size)
    w, h = size
    assert 0 <= left < right <= w and 0 <= top < bottom <= h
    assert right - left == bottom - top  # square, so that patches line up in a grid
    # The blob's centre (scaled to the image) is inside the patch.
    cx, cy = (x0 + box[2]) / 2 * w / 16, (y0 + box[3]) / 2 * h / 16
    assert left - 1 <= cx <= right + 1 and top - 1 <= cy <= bottom + 1
    assert crop_patch(Image.new("RGB", size), blob, (16, 16)).size == (right - left, bottom - top)


def test_patches_across_shapesworld_sorted_by_heat_or_size():
    ds = open_dataset("shapes:n=40,seed=2")
    by_heat, scanned, problems = collect_patches(ds, np.arange(len(ds)), "implausibility", 0.3)
    assert scanned == int(ds.frame["has_implausibility"].sum()) and problems == []
    assert len(by_heat) >= 10 and [p.blob.peak for p in by_heat] == sorted((p.blob.peak for p in by_heat), reverse=True)
    by_size, _, _ = collect_patches(ds, np.arange(len(ds)), "implausibility", 0.3, sort_by="size")
    assert sorted(by_size, key=lambda p: (p.rec_id, p.blob.box)) == sorted(by_heat, key=lambda p: (p.rec_id, p.blob.box))
    assert [p.blob.area for p in by_size] == sorted((p.blob.area for p in by_size), reverse=True)
    for p in by_heat[:5]:  # each blob really is hot in its record's map
        x0, y0, x1, y1 = p.blob.box
        assert ds[p.position].heatmaps["implausibility"][y0:y1, x0:x1].max() == pytest.approx(p.blob.peak)
    with pytest.raises(InvalidArgumentError, match="heat or size"):
        collect_patches(ds, [0], "implausibility", 0.3, sort_by="mass")
