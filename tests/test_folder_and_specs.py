import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rhf_core.cache import cache_dir, cached_frame
from rhf_core.data import export, open_dataset, parse_spec
from rhf_core.errors import (
    DatasetFormatError,
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


# --- hardening (issue 23) ------------------------------------------------------------------------

def _labels(folder, *lines):
    """Write labels.jsonl from dicts (as JSON) and raw bytes/str lines (as they are)."""
    out = []
    for x in lines:
        if isinstance(x, dict):
            x = json.dumps(x, ensure_ascii=False)
        out.append(x.encode("utf-8") if isinstance(x, str) else x)
    (folder / "labels.jsonl").write_bytes(b"\n".join(out) + b"\n")


def _skips(ds):
    return {s.where.removeprefix("labels.jsonl line "): s.reason for s in ds.skipped}


def test_a_bad_byte_costs_its_line_not_the_file(tmp_path):
    _labels(tmp_path,
            b"\xef\xbb\xbf" + json.dumps({"id": "a", "prompt": "first"}).encode(),  # a BOM is fine
            b'{"id": "b", "prompt": "caf\xe9"}',  # latin-1, not UTF-8
            {"id": "c", "prompt": "one\u2028line\x85still"})  # separators str.splitlines would cut at
    ds = open_dataset(f"folder:{tmp_path}")
    assert ds.ids == ["a", "c"] and ds.get("c").prompt == "one\u2028line\x85still"
    assert _skips(ds) == {"2": "not valid UTF-8 (byte 0xe9 at column 27)"}


def test_wrong_values_skip_their_line_with_a_reason(tmp_path):
    np.save(tmp_path / "ok.npy", np.full((2, 3), 0.5, np.float32))
    np.save(tmp_path / "byte.npy", np.full((2, 3), 200.0, np.float32))  # a 0–255 map
    np.save(tmp_path / "nan.npy", np.array([[0.5, np.nan]], np.float32))
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2), np.float32))
    (tmp_path.parent / "outside.png").write_bytes(b"x")
    good = {"id": "good", "prompt": "p", "scores": {"overall": 1.0, "likes": 40},
            "heatmaps": {"implausibility": "ok.npy"}, "words": [["p", 1]]}
    bad = [
        ({"image": 5}, "image must be a path"),
        ({"heatmaps": {"implausibility": 5}}, "heatmaps.'implausibility' must be a path"),
        ({"heatmaps": {"implausibility": "../outside.png"}}, "points outside the dataset folder"),
        ({"scores": {"overall": float("nan")}}, "scores.overall = nan is outside [0, 1]"),
        ({"scores": {"overall": 7.0}}, "scores.overall = 7.0 is outside [0, 1]"),
        ({"scores": {"overall": True}}, "scores.overall must be a number"),
        ({"scores": {"likes": float("inf")}}, "scores.'likes' must be a finite number"),
        ({"words": [["p", -1]]}, "strength of word 'p' = -1.0 is outside [0, 1]"),
        ({"id": ["x"]}, "id must be text or an integer"),
        ({"meta": {"split": 5}}, "split must be text"),
        ({"columns": {"k": [1, 2]}}, "columns.'k' must be text, a number"),
        ({"columns": {"_entry": 1}}, "columns._entry is a name the reader uses itself"),
        ({"heatmaps": {"implausibility": "byte.npy"}}, "byte.npy: heatmap values span 200…200, outside [0, 1]"),
        ({"heatmaps": {"implausibility": "nan.npy"}}, "nan.npy: the heatmap holds NaN"),
        ({"heatmaps": {"implausibility": "cube.npy"}}, "non-empty 2-D array"),
    ]
    lines = [good] + [{**good, "id": f"bad{k}", **change} for k, (change, _) in enumerate(bad)]
    lines.append("[" * 100_000 + "]" * 100_000)
    _labels(tmp_path, *lines, {"id": 7, "prompt": "an integer id"},
            {"id": "out1", "image": "../outside.png"}, {"id": "out2", "image": "/etc/passwd"})
    ds = open_dataset(f"folder:{tmp_path}")
    assert ds.ids == ["good", "7", "out1", "out2"]
    for rec_id in ("out1", "out2"):  # the labels are fine; the image is refused when read
        with pytest.raises(DatasetFormatError, match="points outside the dataset folder"):
            ds.get(rec_id).image
    skips = _skips(ds)
    for k, (_, reason) in enumerate(bad):
        assert reason in skips[str(k + 2)], (k, skips[str(k + 2)])
    assert skips[str(len(bad) + 2)] == "nested too deeply to be a labels entry"
    rec = ds.get("good")
    assert rec.scores == {"overall": 1.0, "likes": 40.0} and rec.heatmaps["implausibility"].max() == 0.5
    assert ds.get("7").prompt == "an integer id"


def test_mixed_column_types_keep_the_dataset_uncached(tmp_path):
    _labels(tmp_path, {"id": "a", "columns": {"k": 1, "big": 2**70}}, {"id": "b", "columns": {"k": "one"}},
            {"id": "c", "columns": {"k": None}})
    before = set(cache_dir("frames").glob("folder-*.parquet"))
    for _ in range(2):  # the second open finds no cache entry and builds again
        ds = open_dataset(f"folder:{tmp_path}")
        assert ds.ids == ["a", "b", "c"] and ds.frame["k"].tolist() == [1, "one", None]
        assert ds.frame.loc[0, "big"] == 2**70
    assert set(cache_dir("frames").glob("folder-*.parquet")) == before


def test_a_column_may_share_a_name_with_a_frame_row_argument(tmp_path):
    _labels(tmp_path, {"id": "a", "columns": {"words": "w", "scores": 1, "rec_id": "r"}})
    ds = open_dataset(f"folder:{tmp_path}")
    assert ds.frame.loc[0, ["words", "scores", "rec_id"]].tolist() == ["w", 1, "r"]


def test_cached_frame_falls_back_to_the_built_frame():
    frame = pd.DataFrame({"x": [1, "a", 2.5]})
    out = cached_frame("test", "mixed", lambda: frame)
    assert out is frame
    assert not (cache_dir("frames") / "test-mixed.parquet").exists()
    ok = cached_frame("test", "plain", lambda: pd.DataFrame({"x": [1.0]}))
    assert (cache_dir("frames") / "test-plain.parquet").exists() and ok["x"].tolist() == [1.0]


def test_duplicate_ids_keep_the_first_and_every_kept_record_is_reachable(tmp_path):
    _labels(tmp_path, {"id": "a", "prompt": "first a"}, {"id": "b"}, {"id": "a", "prompt": "second a"},
            {"id": 5}, {"id": "5"}, {"prompt": "no id"}, {"id": "line6"})
    ds = open_dataset(f"folder:{tmp_path}")
    assert ds.ids == ["a", "b", "5", "line6"]
    assert _skips(ds) == {"3": "duplicate id 'a' (first used on line 1)",
                          "5": "duplicate id '5' (first used on line 4)",
                          "7": "duplicate id 'line6' (first used on line 6)"}
    for pos, rec_id in enumerate(ds.ids):
        assert ds.get(rec_id).id == rec_id and ds.index_of(rec_id) == pos
    assert ds.get("a").prompt == "first a"


def test_base_class_lookup_takes_the_first_of_repeated_ids():
    from rhf_core.dataset import Dataset, Record

    class Repeats(Dataset):
        def __init__(self):
            super().__init__()
            self._frame = pd.DataFrame({"id": ["x", "y", "x"]})

        def _load(self, pos):
            return Record(str(self._frame["id"].iat[pos]), f"prompt {pos}")

    assert Repeats().get("x").prompt == "prompt 0" and Repeats().index_of("y") == 1


def test_skipped_lines_survive_a_frame_cache_hit(tmp_path):
    np.save(tmp_path / "byte.npy", np.full((2, 2), 255.0, np.float32))
    _labels(tmp_path, {"id": "a"}, "{not json", {"id": "b", "heatmaps": {"misalignment": "byte.npy"}}, {"id": "c"})
    before = set(cache_dir("frames").glob("folder-*.parquet"))
    first = open_dataset(f"folder:{tmp_path}")
    assert len(set(cache_dir("frames").glob("folder-*.parquet")) - before) == 1
    again = open_dataset(f"folder:{tmp_path}")  # a cache hit
    assert [(s.where, s.reason) for s in again.skipped] == [(s.where, s.reason) for s in first.skipped]
    assert set(_skips(again)) == {"2", "3"} and again.ids == first.ids == ["a", "c"]
    assert again.get("c").id == "c"
    pd.testing.assert_frame_equal(first.frame, again.frame)


def test_export_keeps_heatmap_files_inside_the_target(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    np.save(src / "h.npy", np.full((2, 2), 0.25, np.float32))
    names = ["/../../../x", "a/b", "a_b", "..", "implausibility"]
    _labels(src, {"id": "../../r", "prompt": "p", "heatmaps": {n: "h.npy" for n in names}})
    out = tmp_path / "deep" / "er" / "out"
    export(open_dataset(f"folder:{src}"), out)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert [p for p in written if not p.startswith(("src/", "deep/er/out/"))] == []
    assert len([p for p in written if p.startswith("deep/er/out/heatmaps/")]) == len(names)  # no name collides
    back = open_dataset(f"folder:{out}")
    rec = back.get("../../r")
    assert sorted(rec.heatmaps) == sorted(names)  # the type names themselves are kept
    assert all(hm.max() == 0.25 for hm in rec.heatmaps.values())


def test_export_refuses_a_non_empty_folder_unless_asked(tmp_path):
    ds = open_dataset("shapes", n=2, seed=1)
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    mine = out / "images" / f"{ds[0].id}.png"
    mine.write_bytes(b"my own file")
    with pytest.raises(RHFError, match="is not empty; pass overwrite=True"):
        export(ds, out)
    assert mine.read_bytes() == b"my own file"
    (tmp_path / "file").write_text("x")
    with pytest.raises(RHFError, match="not a folder"):
        export(ds, tmp_path / "file")
    export(ds, out, overwrite=True)
    assert mine.read_bytes() != b"my own file" and len(open_dataset(f"folder:{out}")) == 2


def test_the_frame_cache_follows_the_labels_content_not_its_stat(tmp_path):
    # A save can replace labels.jsonl with another of the same size within the clock's resolution;
    # the cached frame must still be the one of the bytes that were parsed.
    import json as _json
    import os

    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "x.png")
    labels = tmp_path / "labels.jsonl"
    labels.write_text(_json.dumps({"id": "a", "prompt": "one", "image": "images/x.png"}) + "\n")
    stat = labels.stat()
    assert open_dataset(f"folder:{tmp_path}").frame["id"].tolist() == ["a"]
    labels.write_text(_json.dumps({"id": "b", "prompt": "two", "image": "images/x.png"}) + "\n")
    os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime
    ds = open_dataset(f"folder:{tmp_path}")
    assert ds.frame["id"].tolist() == ["b"] and ds.frame["prompt"].tolist() == ["two"]


# --- every option in the spec (issue 18) ------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import re  # noqa: E402

from rhf_core.data import SOURCE_OPTIONS, DatasetSpec, read_spec  # noqa: E402
from tests.builders import build_rapidata, build_richhf  # noqa: E402


def test_richhf_spec_names_its_pickapic_folder_and_split(tmp_path):
    tf, pick = build_richhf(tmp_path)
    by_spec = open_dataset(f"richhf18k:{tf},pickapic={pick},split=train")
    by_args = open_dataset(f"richhf18k:{tf}", pickapic=str(pick), split="train")
    assert by_spec.ids == by_args.ids == ["train/aaa", "train/bbb", "train/zzz"]
    assert by_spec.get("train/aaa").prompt == "A red cat, sitting on a mat."
    assert by_spec.get("train/aaa").image is not None  # the images come from the Pick-a-Pic folder
    assert open_dataset(f"richhf18k:{tf}").get("train/aaa").prompt == ""  # without it: labels only
    with pytest.raises(DatasetSpecError, match="richhf18k: split must be one of"):
        open_dataset(f"richhf18k:{tf},split=validation")


def test_split_in_the_spec_for_every_source(tmp_path):
    assert set(open_dataset("shapes:n=40,seed=3,split=dev").frame["split"]) == {"dev"}
    rapidata = build_rapidata(tmp_path)
    assert len(open_dataset(f"rapidata:{rapidata},split=train")) == 3
    with pytest.raises(DatasetNotFoundError, match="no parquet files for split 'test'"):
        open_dataset(f"rapidata:{rapidata},split=test")
    folder = export(open_dataset("shapes:n=40,seed=3"), tmp_path / "f")
    dev = open_dataset(f"folder:{folder},split=dev")
    assert 0 < len(dev) < 40 and set(dev.frame["split"]) == {"dev"}
    with pytest.raises(DatasetSpecError, match="folder: no record has split 'val'; its splits are dev, test, train"):
        open_dataset(f"folder:{folder},split=val")


def test_paths_may_hold_commas_and_equals(tmp_path):
    odd = tmp_path / "a,b=c, split"
    export(open_dataset("shapes:n=12,seed=1"), odd)
    assert read_spec(f"folder:{odd}") == DatasetSpec("folder", str(odd))
    assert len(open_dataset(f"folder:{odd}")) == 12
    assert read_spec(f"folder:{odd},split=test").path == str(odd)
    assert set(open_dataset(f"folder:{odd},split=test").frame["split"]) == {"test"}


def test_options_are_checked_per_source(tmp_path):
    folder = export(open_dataset("shapes:n=6,seed=1"), tmp_path / "f")
    cases = [
        ("shapes:n=5,pickapic=/x", "shapes: unknown options \\['pickapic'\\]; use n, seed, size, raters, split, cache"),
        ("shapes:n=five", "shapes: n must be a whole number, got 'five'"),
        (f"folder:{folder},n=5", "folder: unknown options \\['n'\\] in .*; use split, cache"),
        (f"folder:{folder},split=dev,split=test", "folder: split is given twice in the spec"),
        (f"rapidata:{folder},heatmap_cache=maybe", "rapidata: heatmap_cache must be true or false, got 'maybe'"),
        (f"richhf18k:{folder},pickapic=", "richhf18k: pickapic= needs a value"),
        ("richhf18k:,split=dev", "richhf18k: give a path"),
    ]
    for spec, match in cases:
        with pytest.raises(DatasetSpecError, match=match):
            open_dataset(spec)
    with pytest.raises(DatasetSpecError, match="folder: unknown options \\['n'\\]; use split, cache"):
        open_dataset(f"folder:{folder}", n=5)


def test_keyword_options_must_agree_with_the_spec(tmp_path):
    with pytest.raises(DatasetSpecError, match="n is given twice, 8 in the spec and 9 as an argument"):
        open_dataset("shapes:n=8", n=9)
    with pytest.raises(DatasetSpecError, match="split is given twice, 'dev' in the spec and 'test'"):
        open_dataset("shapes:n=30,split=dev", split="test")
    same = open_dataset("shapes:n=30,seed=2,split=dev", n=30, split="dev", cache=True)
    assert len(same) == len(open_dataset("shapes", n=30, seed=2, split="dev"))
    folder = export(open_dataset("shapes:n=6,seed=1"), tmp_path / "f")
    assert len(open_dataset(f"folder:{folder},cache=false", cache=False)) == 6
    assert len(open_dataset(f"folder:{folder}", pickapic=None, split=None)) == 6  # None: not given


def test_the_cli_hands_the_spec_to_open_dataset_unchanged():
    from rhf_core.__main__ import build_parser

    spec = "richhf18k:/data/rich hf,pickapic=/data/pick,a,split=train"
    parse = build_parser().parse_args
    assert parse(["train-rahf", "--data", spec]).settings.data == spec  # train_rahf: open_dataset(cfg.data)
    assert parse(["eval-rahf", "--data", spec]).settings.data == spec
    assert parse(["calibrate-rahf", "ckpt", "--data", spec]).data == spec
    assert read_spec(spec) == DatasetSpec("richhf18k", "/data/rich hf", {"pickapic": "/data/pick,a", "split": "train"})


def test_sidebar_deep_link_with_every_option(tmp_path):
    from tests.test_page_explorer import match_count, open_app

    tf, pick = build_richhf(tmp_path)
    at = open_app(spec=f"richhf18k:{tf},pickapic={pick},split=train")
    assert not at.error and match_count(at) == (3, 3)
    assert not [w for w in at.text_input if w.key == "pickapic"]  # the spec names it: no second field
    at = open_app(spec=f"richhf18k:{tf},split=dev", pickapic=str(pick))  # an older link's ?pickapic=
    assert match_count(at) == (1, 1) and [w for w in at.text_input if w.key == "pickapic"]


# Paths and values a spec can carry: no leading/trailing spaces, no `,KEY=` for an option KEY of the
# source (where the text is cut), and for shapes no comma at all.
_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00\n\r"), min_size=1, max_size=20)


def _representable(source: str, text: str) -> bool:
    cut = re.compile(r",\s*(?:" + "|".join(SOURCE_OPTIONS[source]) + r")\s*=")
    return text == text.strip() and not cut.search(text) and (source != "shapes" or "," not in text)


@st.composite
def specs(draw):
    source = draw(st.sampled_from(sorted(SOURCE_OPTIONS)))
    keys = draw(st.lists(st.sampled_from(sorted(SOURCE_OPTIONS[source])), unique=True, max_size=4))
    kinds = {int: st.integers(-10**6, 10**6), bool: st.booleans(),
             str: _text.filter(lambda v: _representable(source, v))}
    options = {key: draw(kinds[SOURCE_OPTIONS[source][key]]) for key in keys}
    path = "" if source == "shapes" else draw(_text.filter(lambda v: _representable(source, v)))
    return DatasetSpec(source, path, options)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(spec=specs())
def test_spec_text_round_trips(spec):
    text = str(spec)
    assert read_spec(text) == spec
    head, _, rest = text.partition(":")
    assert read_spec(f"  {head.upper()}:{rest}") == spec  # the source name is case-insensitive


@settings(max_examples=200, deadline=None, derandomize=True)
@given(source=st.sampled_from(["shapes", "richhf18k", "rapidata", "folder", "richhf"]), rest=st.text(max_size=40))
def test_any_text_after_a_source_parses_or_is_refused_readably(source, rest):
    try:
        parsed = read_spec(f"{source}:{rest}")
    except DatasetSpecError as e:
        assert len(str(e)) < 300 and str(e).startswith(("shapes", "richhf18k", "rapidata", "folder", "empty"))
        return
    assert parsed.source in SOURCE_OPTIONS and set(parsed.options) <= set(SOURCE_OPTIONS[parsed.source])
