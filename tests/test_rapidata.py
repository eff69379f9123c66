"""Rapidata rich feedback: parquet shards written by `datasets` with the hub's schema."""

import json

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Features
from PIL import Image

from rhf_core.cache import cache_dir
from rhf_core.data import open_dataset
from rhf_core.errors import DatasetFormatError, DatasetNotFoundError, ImageLoadError
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


# --- hardening (issue 23): a bad row is skipped with a reason, never fatal, never clipped ----------

def _good_rows(n):
    """`n` copies of the first builder row (valid in every field), as columns."""
    base = {k: v[0] for k, v in rapidata_rows().items()}
    return {k: [v] * n for k, v in base.items()}


def _write(tmp_path, rows, features=FEATURES):
    data = tmp_path / "rapidata" / "data"
    data.mkdir(parents=True, exist_ok=True)
    # batch_size: `datasets` would otherwise stat image paths (relative ones fail) to size batches
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(data / "train-00000-of-00001.parquet"), batch_size=64)
    return tmp_path / "rapidata"


def _skips(ds):
    return {s.where: s.reason for s in ds.skipped}


def test_deeply_nested_word_scores_skip_only_that_row(tmp_path):
    rows = _good_rows(3)
    rows["word_scores"][1] = "[" * 100_000 + "]" * 100_000
    ds = open_dataset(f"rapidata:{_write(tmp_path, rows)}")
    assert ds.ids == ["r000000", "r000002"]
    assert "nested too deeply" in _skips(ds)["row 1"]
    assert ds.get("r000002").prompt == "A red apple on a table."


def test_one_dimensional_heatmap_column_skips_rows_that_have_one(tmp_path):
    rows = _good_rows(3)
    rows["alignment_heatmap"] = [[0.5, 0.5], None, [0.1]]
    feats = Features({**FEATURES, "alignment_heatmap": datasets.List(datasets.Value("float16"))})
    ds = open_dataset(f"rapidata:{_write(tmp_path, rows, feats)}")
    assert ds.ids == ["r000001"]  # null: not collected, the row is fine
    assert set(_skips(ds)) == {"row 0", "row 2"}
    assert all("2-D list" in r and "alignment_heatmap" in r for r in _skips(ds).values())
    assert "misalignment" not in ds[0].heatmaps


def test_string_score_column_skips_rows_with_text(tmp_path):
    rows = _good_rows(3)
    rows["alignment_score_norm"] = ["0.5", None, "high"]
    feats = Features({**FEATURES, "alignment_score_norm": datasets.Value("string")})
    ds = open_dataset(f"rapidata:{_write(tmp_path, rows, feats)}")
    assert ds.ids == ["r000001"]
    assert "alignment_score_norm is not a number" in _skips(ds)["row 2"]
    # no _norm in that row: the 1–5 Likert mean (2.0) gives the score, and says so
    assert ds[0].scores["alignment"] == pytest.approx(0.25)
    assert ds[0].meta["scores_from_likert"] == ["alignment"]


def test_values_off_their_scale_are_refused_not_clipped(tmp_path):
    rows = _good_rows(9)
    rows["alignment_heatmap"][1] = [[0.0, 255.0], [128.0, 0.0]]  # a 0–255 map
    rows["alignment_score_norm"][2] = 7.0
    rows["coherence_score_norm"][3] = float("nan")
    rows["style_score_norm"][4] = float("inf")
    rows["word_scores"][5] = json.dumps([["[No_mistakes]", 3.0], ["cat", -2.0]])
    rows["coherence_heatmap"][6] = [[0.5, float("nan")]]  # a NaN pixel (a null pixel means 0)
    rows["alignment_score"][7] = 9.0  # Likert off its scale, but a valid _norm gives the score
    rows["alignment_score_norm"][8] = None
    rows["alignment_score"][8] = 0.0  # ... and here the Likert would have to give it
    ds = open_dataset(f"rapidata:{_write(tmp_path, rows)}")
    skips = _skips(ds)
    assert ds.ids == ["r000000", "r000007"]
    assert "outside [0, 1]" in skips["row 1"] and "255" in skips["row 1"]
    assert "alignment_score_norm = 7.0 is outside [0, 1]" in skips["row 2"]
    assert "coherence_score_norm = nan" in skips["row 3"]
    assert "style_score_norm = inf" in skips["row 4"]
    assert "negative count" in skips["row 5"] and "'cat'" in skips["row 5"]
    assert "NaN" in skips["row 6"]
    assert "outside the 1–5 scale" in skips["row 8"]
    kept = ds.get("r000007")
    assert kept.scores["alignment"] == pytest.approx(0.25)
    assert kept.meta["raw_scores"]["alignment_score"] == 9.0
    assert "alignment_score = 9.0 is outside the 1–5 scale" in kept.meta["notes"][0]
    assert ds.frame.loc[1, "alignment_score"] == 9.0


def test_image_path_outside_the_dataset_folder_is_refused(tmp_path, monkeypatch):
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "secret.png")
    root = tmp_path / "rapidata"
    (root / "data").mkdir(parents=True)
    Image.new("RGB", (4, 4), (7, 7, 7)).save(root / "data" / "ok.png")
    rows = _good_rows(4)
    rows["image"] = [{"path": p, "bytes": None} for p in
                     ["../secret.png", str(tmp_path / "secret.png"), "data/ok.png", "data/../../secret.png"]]
    ds = open_dataset(f"rapidata:{_write(tmp_path, rows)}")
    assert len(ds) == 4  # the rows are fine; their images are refused when read
    for pos in (0, 1, 3):
        with pytest.raises(ImageLoadError, match="points outside the dataset folder"):
            ds[pos].image
    assert ds[2].image.getpixel((0, 0)) == (7, 7, 7)


def test_skipped_rows_survive_a_frame_cache_hit(tmp_path):
    rows = _good_rows(3)
    rows["word_scores"][0] = "not json"
    root = _write(tmp_path, rows)
    before = set(cache_dir("frames").glob("rapidata-*.parquet"))
    first = open_dataset(f"rapidata:{root}")
    assert len(set(cache_dir("frames").glob("rapidata-*.parquet")) - before) == 1
    again = open_dataset(f"rapidata:{root}")  # served from cache/frames
    assert [(s.where, s.reason) for s in again.skipped] == [(s.where, s.reason) for s in first.skipped]
    assert again.n_skipped == 1 and again.ids == first.ids == ["r000001", "r000002"]
    pd.testing.assert_frame_equal(first.frame, again.frame)


def test_word_scores_refusals_are_readable():
    for bad, match in [("[" * 100_000 + "]" * 100_000, "nested too deeply"),
                       ('[["x", -1]]', "negative count"),
                       ('[["x", 1e999]]', "count of inf"),
                       ('[["x", ' + "9" * 400 + "]]", "not a \\[word, number\\] pair"),
                       ('[["x", true]]', "not a \\[word, number\\] pair")]:
        with pytest.raises(DatasetFormatError, match=match) as err:
            parse_word_scores(bad)
        assert len(str(err.value)) < 300
    deep = [[]]
    for _ in range(50_000):
        deep = [deep]
    with pytest.raises(DatasetFormatError, match="not a \\[word, number\\] pair"):
        parse_word_scores(deep)  # a list value (not text) nested deep: the message stays short


def test_parquet_files_are_looked_for_two_levels_deep_not_walked(tmp_path):
    # DIR/*.parquet and DIR/<sub>/*.parquet (the hub's data/ layout) only: deeper files are not found,
    # so naming a large folder never walks its whole tree.
    from rhf_core.errors import DatasetNotFoundError

    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "train-00000.parquet").write_bytes(b"not read")
    with pytest.raises(DatasetNotFoundError, match="no .parquet files"):
        open_dataset(f"rapidata:{tmp_path}")


# --- the heatmap cache (issue 18): a record reads its own maps, not its whole row group --------------

def _maps_file(tmp_path, n=9, dtype="float16"):
    """`n` rows in row groups of 2, maps of every kind: float maps with per-pixel nulls, null (not
    collected), all zero, different shapes per row, and one row skipped for a 0–255 map."""
    rng = np.random.default_rng(0)
    rows = _good_rows(n)
    for i in range(n):
        h, w = 3 + i % 4, 5 + i % 3
        heat = rng.random((h, w)).round(3).tolist()
        heat[0][0] = None  # a per-pixel null reads as 0
        rows["alignment_heatmap"][i] = None if i % 4 == 1 else heat
        rows["coherence_heatmap"][i] = [[0.0] * w for _ in range(h)] if i % 3 == 0 else rng.random((h, w)).tolist()
    rows["coherence_heatmap"][4] = [[0.0, 255.0]]
    feats = Features({**FEATURES, "alignment_heatmap": datasets.List(datasets.List(datasets.Value(dtype))),
                      "coherence_heatmap": datasets.List(datasets.List(datasets.Value(dtype)))})
    root = tmp_path / "rapidata"
    (root / "data").mkdir(parents=True)
    table = datasets.Dataset.from_dict(rows, features=feats).data.table
    pq.write_table(table, root / "data" / "train-00000.parquet", row_group_size=2)
    return root


@pytest.fixture
def count_heatmap_reads(monkeypatch):
    """Counts row-group reads that include a heatmap column (each one decodes a whole row group)."""
    calls = []
    original = pq.ParquetFile.read_row_group

    def counted(self, i, columns=None, **kw):
        if columns is None or any(c.endswith("_heatmap") for c in columns):
            calls.append(i)
        return original(self, i, columns=columns, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counted)
    return calls


def _clear_row_group_caches():
    import rhf_core.sources.rapidata as rp

    rp._read_row_group.cache_clear()
    rp._read_heatmap_group.cache_clear()


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_heatmap_cache_gives_the_same_maps_without_decoding_row_groups(tmp_path, count_heatmap_reads, dtype):
    root = _maps_file(tmp_path, dtype=dtype)
    first = open_dataset(f"rapidata:{root}")  # the first scan reads each row group once and writes the cache
    assert len(count_heatmap_reads) == 5 and first.n_skipped == 1 and "255" in first.skipped[0].reason
    count_heatmap_reads.clear()
    _clear_row_group_caches()
    cached = open_dataset(f"rapidata:{root}")  # frame and heatmap caches warm
    got = [cached[pos].heatmaps for pos in range(len(cached))]
    assert count_heatmap_reads == []  # no row group decoded for any record's heatmaps
    plain = open_dataset(f"rapidata:{root}", heatmap_cache=False)
    want = [plain[pos].heatmaps for pos in range(len(plain))]
    assert len(count_heatmap_reads) == 5  # the uncached path decodes every row group (each holds a kept row)
    assert len(got) == len(want) == 8
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for name in g:
            assert g[name].dtype == np.float32 and g[name].shape == w[name].shape
            np.testing.assert_array_equal(g[name], w[name])
    assert "misalignment" not in got[1] and got[0]["misalignment"][0, 0] == 0.0  # null map; null pixel → 0
    assert got[0]["implausibility"].max() == 0.0  # collected, all zero: kept


def test_heatmap_cache_lives_in_the_cache_folder_and_follows_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RHF_CACHE_DIR", str(tmp_path / "cache"))
    root = _maps_file(tmp_path)
    data_before = sorted(p.name for p in root.rglob("*"))
    ds = open_dataset(f"rapidata:{root}")
    maps = cache_dir("rapidata-maps")
    written = sorted(maps.glob("*.bin"))
    assert len(written) == 1 and not list(maps.glob("*.tmp")) and not list(maps.glob(".*"))
    assert sorted(p.name for p in root.rglob("*")) == data_before  # nothing beside the user's data
    before = ds[0].heatmaps["misalignment"].copy()
    # The file changes (same name): a new cache entry, with the new values.
    f = root / "data" / "train-00000.parquet"
    table = pq.read_table(f)
    col = table.column("alignment_heatmap").combine_chunks()
    halved = pa.ListArray.from_arrays(col.offsets, pa.ListArray.from_arrays(
        col.values.offsets, pa.compute.divide(col.values.values.cast(pa.float32()), 2).cast(pa.float16())), mask=col.is_null())
    pq.write_table(table.set_column(table.schema.get_field_index("alignment_heatmap"), "alignment_heatmap", halved),
                   f, row_group_size=2)
    _clear_row_group_caches()
    again = open_dataset(f"rapidata:{root}")
    assert len(list(maps.glob("*.bin"))) == 2
    np.testing.assert_array_equal(again[0].heatmaps["misalignment"], (before.astype(np.float16) / 2).astype(np.float32))


def test_a_damaged_or_missing_heatmap_cache_is_rebuilt(tmp_path, count_heatmap_reads, monkeypatch):
    monkeypatch.setenv("RHF_CACHE_DIR", str(tmp_path / "cache"))
    root = _maps_file(tmp_path)
    want = [r.heatmaps for r in open_dataset(f"rapidata:{root}", heatmap_cache=False)]
    open_dataset(f"rapidata:{root}")
    (path,) = cache_dir("rapidata-maps").glob("*.bin")
    path.write_bytes(path.read_bytes()[:-20])  # cut short: no footer
    for damage in ("truncated", "deleted"):
        count_heatmap_reads.clear()
        _clear_row_group_caches()
        ds = open_dataset(f"rapidata:{root}")  # the frame is cached; the maps are scanned again
        assert len(count_heatmap_reads) == 5, damage
        for rec, w in zip(ds, want):
            assert rec.heatmaps.keys() == w.keys()
            for name in w:
                np.testing.assert_array_equal(rec.heatmaps[name], w[name])
        path.unlink()
    ds = open_dataset(f"rapidata:{root}")
    path.unlink()  # removed while the dataset is open (a cleared cache folder): decoded from the parquet file
    np.testing.assert_array_equal(ds[0].heatmaps["misalignment"], want[0]["misalignment"])


def test_heatmap_cache_off_in_the_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("RHF_CACHE_DIR", str(tmp_path / "cache"))
    root = _maps_file(tmp_path)
    ds = open_dataset(f"rapidata:{root},heatmap_cache=false")
    assert len(ds) == 8 and not list(cache_dir("rapidata-maps").glob("*.bin"))
    assert ds[0].heatmaps["misalignment"].shape == (3, 5)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from rhf_core.sources.rapidata import NOT_STORED, HeatmapCache, HeatmapCacheWriter  # noqa: E402

_maps = st.one_of(st.none(), hnp.arrays(st.sampled_from([np.float16, np.float32, np.float64]),
                                        hnp.array_shapes(min_dims=2, max_dims=2, max_side=40),
                                        elements=st.floats(0.0, 1.0, width=16)))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(rows=st.lists(st.tuples(_maps, _maps, st.booleans()), min_size=1, max_size=6))
def test_heatmap_cache_file_round_trips(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("maps") / "m.bin"
    writer = HeatmapCacheWriter(path, len(rows), 2)
    for i, (a, b, stored) in enumerate(rows):
        if stored:  # unstored rows: what the scan leaves for skipped rows
            writer.add(i, 0, a)
            writer.add(i, 1, b)
    writer.close()
    assert [p.name for p in path.parent.iterdir()] == ["m.bin"]  # the temporary file was renamed
    cache = HeatmapCache(path, len(rows), 2)
    for i, (a, b, stored) in enumerate(rows):
        for j, want in enumerate((a, b)):
            got = cache.get(i, j)
            if not stored:
                assert got is NOT_STORED
            elif want is None:
                assert got is None
            else:  # exactly decode_heatmap's float32
                assert got.dtype == np.float32 and np.array_equal(got, want.astype(np.float32))
    with pytest.raises(ValueError, match="expected"):
        HeatmapCache(path, len(rows) + 1, 2)
