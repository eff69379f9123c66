"""Rapidata rich feedback: parquet shards written by `datasets` with the hub's schema."""


import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Features
from PIL import Image

from rhf_core.data import open_dataset
from rhf_core.errors import DatasetFormatError, DatasetNotFoundError
from rhf_core.sources.rapidata import _TableRows, decode_heatmap, parse_word_scores
from tests.builders import FEATURES, rapidata_rows, build_rapidata

@pytest.fixture
def rapidata_dir(tmp_path):
    return build_rapidata(tmp_path)


def test_every_field_reads_back(rapidata_dir):
    ds = open_dataset(f"rapidata:{rapidata_dir}")
    assert len(ds) == 3 and ds.n_skipped == 1
    assert "word_scores" in ds.skipped[0].reason and "row 3" in ds.skipped[0].where
    r0 = ds[0]
    assert r0.prompt == "A red apple on a table."
    assert r0.scores == pytest.approx({"alignment": 0.25, "plausibility": 0.75, "aesthetics": 0.5})
    assert "overall" not in r0.scores  # Rapidata has no overall score
    assert r0.meta["raw_scores"] == {"alignment_score": 2.0, "coherence_score": 4.0, "style_score": 3.0}
    # strengths: score / ([No_mistakes] + top word score) = score / 9
    assert [w for w, _ in r0.words] == ["A", "red", "apple", "on", "a", "table."]
    assert [s for _, s in r0.words] == pytest.approx([0.0, 1 / 3, 1 / 6, 0.0, 0.0, 0.0])
    assert r0.meta["word_scores_raw"][0] == ["[No_mistakes]", 6.0]
    mis = r0.heatmaps["misalignment"]
    assert mis.shape == (6, 4) and mis.dtype == np.float32
    assert mis[2, 3] == 0.0 and mis[0, 0] == 0.5  # per-pixel null → 0
    assert r0.heatmaps["implausibility"] == pytest.approx(np.full((6, 4), 0.25))
    assert r0.image.size == (12, 8) and r0.image.getpixel((0, 0)) == (255, 0, 0)
    r1 = ds[1]
    assert "misalignment" not in r1.heatmaps  # null: not collected
    assert r1.heatmaps["implausibility"].max() == 0  # collected, empty
    assert r1.words == [("two", 1.0), ("dogs", 0.0)]
    r2 = ds[2]
    assert r2.heatmaps == {} and r2.image.getpixel((0, 0)) == (0, 0, 255)  # second shard
    assert [w for w, _ in r2.words] == ["a", "blue", "car"]
    f = ds.frame
    assert list(f["has_misalignment"]) == [True, False, False]
    assert f.loc[0, "implausibility_mass"] == pytest.approx(0.25)
    assert np.isnan(f.loc[2, "implausibility_mass"])
    assert f.loc[0, "coherence_score"] == 4.0 and f.loc[0, "n_flagged_words"] == 0


def test_older_revision_without_norm_columns(tmp_path):
    rows = rapidata_rows()
    for c in ("alignment_score_norm", "coherence_score_norm", "style_score_norm"):
        rows.pop(c)
    feats = Features({k: v for k, v in FEATURES.items() if not k.endswith("_norm")})
    datasets.Dataset.from_dict(rows, features=feats).select(range(2)).to_parquet(str(tmp_path / "train-0.parquet"))
    rec = open_dataset(f"rapidata:{tmp_path}")[0]
    assert rec.scores == pytest.approx({"alignment": 0.25, "plausibility": 0.75, "aesthetics": 0.5})  # (s − 1) / 4
    assert sorted(rec.meta["scores_from_likert"]) == ["aesthetics", "alignment", "plausibility"]


def test_32k_sibling_columns(tmp_path):
    Image.new("RGB", (5, 5), (1, 2, 3)).save(tmp_path / "pic.png")
    table = pa.table({"image_name": ["pic.png"], "sentence": ["a cat"], "word_scores": ['[["a", 0], ["cat", 1]]']})
    pq.write_table(table, tmp_path / "train.parquet")
    rec = open_dataset(f"rapidata:{tmp_path}")[0]
    assert rec.prompt == "a cat" and rec.image.getpixel((0, 0)) == (1, 2, 3)
    assert rec.words == [("a", 0.0), ("cat", 1.0)]


def test_decoding_through_arrow_equals_the_python_path(rapidata_dir):
    table = pq.read_table(next(rapidata_dir.rglob("*00000*.parquet")))
    scalar = table.column("alignment_heatmap")[0]
    plain = np.array([[np.nan if v is None else v for v in row] for row in scalar.as_py()], dtype=np.float32)
    np.testing.assert_array_equal(decode_heatmap(scalar), np.nan_to_num(plain))
    assert decode_heatmap(table.column("alignment_heatmap")[1]) is None
    ragged = pa.array([[[0.5, 0.5], [0.5]]], pa.list_(pa.list_(pa.float16())))
    with pytest.raises(DatasetFormatError, match="different lengths"):
        decode_heatmap(ragged[0])


def test_word_scores_edge_cases():
    assert parse_word_scores("[]")[0] == []
    assert parse_word_scores(None)[0] == []
    words, total, _ = parse_word_scores('[["[No_mistakes]", 5], ["x", 0]]')
    assert words == [("x", 0.0)] and total == 5
    for bad in ('{"x": 1}', '[["x"]]', '[["x", "high"]]', "not json"):
        with pytest.raises(DatasetFormatError):
            parse_word_scores(bad)


def test_random_access_across_row_groups(tmp_path):
    rows = {k: v[:3] for k, v in rapidata_rows().items()}
    ds = datasets.Dataset.from_dict(rows, features=FEATURES)
    table = ds.data.table
    pq.write_table(table, tmp_path / "train-0.parquet", row_group_size=1)
    out = open_dataset(f"rapidata:{tmp_path}")
    assert pq.ParquetFile(tmp_path / "train-0.parquet").num_row_groups == 3
    assert [out[i].prompt for i in (2, 0, 1)] == ["a blue car", "A red apple on a table.", "two dogs"]


def test_datasets_table_path(rapidata_dir):
    """The hub path wraps a `datasets` Arrow table; exercise it on local files."""
    hf = datasets.load_dataset("parquet", data_files=sorted(str(p) for p in rapidata_dir.rglob("*.parquet")), split="train")
    rows = _TableRows(hf.data.table)
    assert rows.n == 4
    import rhf_core.sources.rapidata as rp

    original = rp._open_hub
    rp._open_hub = lambda repo, split: rows
    try:
        ds = open_dataset("rapidata:Org/some-dataset")
    finally:
        rp._open_hub = original
    assert len(ds) == 3 and ds[2].prompt == "a blue car" and ds[0].heatmaps["misalignment"].shape == (6, 4)


def test_missing_and_wrong_inputs(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        open_dataset("rapidata:/no/such/dir")
    with pytest.raises(DatasetNotFoundError, match="could not be loaded"):
        open_dataset("rapidata:NoSuchOrg/no-such-dataset")  # offline in tests: a clear error
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no .parquet"):
        open_dataset(f"rapidata:{tmp_path / 'empty'}")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(DatasetFormatError, match="Rapidata columns"):
        open_dataset(f"rapidata:{tmp_path / 'other.parquet'}")
