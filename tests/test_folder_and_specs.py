import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rhf_core.data import export, open_dataset, parse_spec
from rhf_core.errors import (
    DatasetNotFoundError,
    DatasetSpecError,
    ImageLoadError,
    RecordNotFoundError,
    RHFError,
)


def _same_records(a, b):
    assert len(a) == len(b)
    for i in range(len(a)):
        ra, rb = a[i], b[i]
        assert (ra.id, ra.prompt, ra.scores, ra.words, ra.meta) == (rb.id, rb.prompt, rb.scores, rb.words, rb.meta)
        assert ra.heatmaps.keys() == rb.heatmaps.keys()
        for k in ra.heatmaps:
            assert rb.heatmaps[k].dtype == np.float32
            np.testing.assert_array_equal(ra.heatmaps[k], rb.heatmaps[k])
        ia, ib = ra.image, rb.image
        assert (ia is None) == (ib is None)
        if ia is not None:
            np.testing.assert_array_equal(np.asarray(ia), np.asarray(ib))


@pytest.mark.parametrize("raters", ["richhf", "rapidata"])
def test_export_then_open_reads_back_identically(tmp_path, raters):
    ds = open_dataset("shapes", n=25, seed=5, raters=raters)
    out = export(ds, tmp_path / "export")
    back = open_dataset(f"folder:{out}")
    _same_records(ds, back)
    pd.testing.assert_frame_equal(ds.frame, back.frame, check_dtype=False)
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_export_of_a_filtered_subset_and_refusal_to_overwrite(tmp_path):
    ds = open_dataset("shapes", n=40, seed=2)
    sub = ds.subset(ds.frame.index[ds.frame["plausibility"] < 0.7])
    assert 0 < len(sub) < len(ds)
    out = export(sub, tmp_path / "low")
    back = open_dataset(f"folder:{out}")
    assert back.ids == sub.ids and (back.frame["plausibility"] < 0.7).all()
    with pytest.raises(RHFError, match="overwrite"):
        export(sub, out)
    export(ds.subset([0]), out, overwrite=True)
    assert len(open_dataset(f"folder:{out}")) == 1


def test_hand_written_folder_with_bad_lines(tmp_path):
    Image.new("RGB", (6, 4), (7, 8, 9)).save(tmp_path / "a.png")
    Image.fromarray(np.full((4, 6), 255, np.uint8), "L").save(tmp_path / "a_heat.png")
    (tmp_path / "not-an-image.png").write_text("hello")
    lines = [
        {"id": "a", "image": "a.png", "prompt": "a thing", "scores": {"overall": 0.5},
         "heatmaps": {"implausibility": "a_heat.png"}, "words": [["a", 0.0], ["thing", 1.0]], "split": "test"},
        "{this is not json",
        {"id": "b", "image": "missing.png", "prompt": "lost image"},
        {"id": "c", "image": "not-an-image.png", "prompt": "bad bytes"},
        {"id": "d", "prompt": 42},
        {"id": "e", "prompt": "bad words", "words": [["x"]]},
    ]
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines)
    (tmp_path / "labels.jsonl").write_text(text)
    ds = open_dataset(f"folder:{tmp_path}")
    assert ds.ids == ["a", "b", "c"] and ds.n_skipped == 3
    assert {s.where for s in ds.skipped} == {"labels.jsonl line 2", "labels.jsonl line 5", "labels.jsonl line 6"}
    a = ds.get("a")
    assert a.image.getpixel((0, 0)) == (7, 8, 9) and a.heatmaps["implausibility"].max() == 1.0
    assert a.flagged_words == ["thing"] and ds.frame.loc[0, "split"] == "test"
    with pytest.raises(ImageLoadError, match="missing"):
        ds.get("b").image
    with pytest.raises(ImageLoadError, match="not an image"):
        ds.get("c").image


def test_spec_parsing_and_errors(tmp_path):
    assert parse_spec("shapes") == ("shapes", "")
    assert parse_spec("RichHF:/x") == ("richhf18k", "/x")
    ds = open_dataset("shapes:n=12,seed=4")
    assert len(ds) == 12 and ds[0].id == "shapes-4-000000"
    for bad, match in [("", "empty"), ("   ", "empty"), ("imagenet:/x", "unknown dataset spec"),
                       ("shapes:n", "key=value"), ("folder:", "give a path")]:
        with pytest.raises(DatasetSpecError, match=match):
            open_dataset(bad)
    with pytest.raises(DatasetNotFoundError, match="not a directory"):
        open_dataset("folder:/definitely/missing")
    export(ds, tmp_path / "f")
    assert len(open_dataset(str(tmp_path / "f"))) == 12  # a bare path is recognised by its files


def test_lookup_split_and_bad_indices():
    ds = open_dataset("shapes", n=60, seed=9)
    rec = ds[-1]
    assert ds.get(rec.id).prompt == rec.prompt and ds.index_of(rec.id) == 59
    test = open_dataset("shapes", n=60, seed=9, split="test")
    assert 0 < len(test) < 60 and set(test.frame["split"]) == {"test"}
    assert test[0].id in set(ds.ids)
    with pytest.raises(RecordNotFoundError, match="out of range"):
        ds[60]
    with pytest.raises(RecordNotFoundError, match="no record with id"):
        ds.get("nope")
    with pytest.raises(TypeError):
        ds["shapes-9-000001"]
