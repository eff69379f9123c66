"""Property-based tests (hypothesis) of the Rapidata and folder readers (issue 23).

Each example writes a small dataset in which every row is drawn either from a strategy of good
rows, from mutations that make a row surely bad, or (folder only) with arbitrary JSON in any field.
Opening it must give either an `RHFError` with a readable message, or a dataset in which every good
row is present (and loads), every surely-bad row is in `ds.skipped` with a reason, and every row is
accounted for exactly once — the same again on a frame-cache hit.

Examples are derandomized (the same cases every run) and bounded so the file stays well under a
minute. A tally per reader (cases, errors, rows kept / skipped) is printed at the end of the module
(`pytest -s`) and written to `$RHF_FUZZ_TALLY` as JSON when that is set.
"""

import json
import math
import os
import tempfile
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
from datasets import Features
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from rhf_core.data import export, open_dataset
from rhf_core.errors import RHFError
from tests.builders import FEATURES

datasets.disable_progress_bars()  # one bar per written parquet file otherwise

TALLY = {r: Counter(dict.fromkeys(["cases", "errors", "rows", "kept", "skipped"], 0)) for r in ("rapidata", "folder")}
SETTINGS = dict(deadline=None, derandomize=True, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", autouse=True)
def _report_tally():
    yield
    tally = {k: dict(v) for k, v in TALLY.items()}
    print("\nhypothesis tally:", json.dumps(tally))
    if os.environ.get("RHF_FUZZ_TALLY"):
        Path(os.environ["RHF_FUZZ_TALLY"]).write_text(json.dumps(tally, indent=2))


def _readable(err: Exception) -> None:
    msg = str(err)
    assert isinstance(err, RHFError) and msg.strip() and len(msg) < 600, repr(err)


def _check_record(rec) -> None:
    """Whatever a reader keeps is on its scales: scores and strengths in [0, 1], maps 2-D float32."""
    for name in ("plausibility", "alignment", "aesthetics", "overall"):
        if name in rec.scores:
            assert 0.0 <= rec.scores[name] <= 1.0
    assert all(isinstance(t, str) and 0.0 <= s <= 1.0 for t, s in rec.words)
    for hm in rec.heatmaps.values():
        assert hm.dtype == np.float32 and hm.ndim == 2 and hm.size
        assert np.isfinite(hm).all() and hm.min() >= 0.0 and hm.max() <= 1.0


# --- Rapidata ---------------------------------------------------------------------------------

unit = st.floats(0.0, 1.0)
likert = st.floats(1.0, 5.0)
word = st.text(max_size=8)


@st.composite
def heat_ok(draw):
    h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return [[draw(st.one_of(unit, st.none())) for _ in range(w)] for _ in range(h)]  # None: a null pixel


@st.composite
def word_scores_ok(draw):
    pairs = [[draw(word), draw(st.one_of(st.integers(0, 20), st.floats(0.0, 20.0)))] for _ in range(draw(st.integers(0, 5)))]
    if draw(st.booleans()):
        pairs.insert(0, ["[No_mistakes]", draw(st.floats(0.0, 20.0))])
    spelling = draw(st.sampled_from(["json", "python", "none"]))
    return None if spelling == "none" else json.dumps(pairs) if spelling == "json" else repr(pairs)


@st.composite
def rapidata_good(draw):
    row = {
        "image": Image.new("RGB", (draw(st.integers(1, 6)), draw(st.integers(1, 6))), tuple(draw(st.integers(0, 255)) for _ in range(3))),
        "prompt": draw(st.text(max_size=30)),
        "word_scores": draw(word_scores_ok()),
        "alignment_heatmap": draw(st.one_of(st.none(), heat_ok())),
        "coherence_heatmap": draw(st.one_of(st.none(), heat_ok())),
    }
    for c in ("alignment", "coherence", "style"):
        norm = draw(st.one_of(st.none(), unit))
        row[f"{c}_score_norm"] = norm
        # With a _norm, the Likert mean is informational: any value, off its scale too (kept raw, noted).
        row[f"{c}_score"] = draw(st.one_of(st.none(), likert, st.floats(allow_nan=True, width=32) if norm is not None else likert))
    return row


def _nested(depth):
    return "[" * depth + "]" * depth


BAD_RAPIDATA = {
    "deep word_scores": lambda d: {"word_scores": _nested(d(st.integers(1_500, 100_000)))},
    "negative count": lambda d: {"word_scores": json.dumps([[d(word), -d(st.floats(0.01, 1e6))]])},
    "non-finite count": lambda d: {"word_scores": '[["x", ' + d(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"])) + "]]"},
    "word_scores not pairs": lambda d: {"word_scores": d(st.sampled_from(['{"x": 1}', '[["x"]]', '[["x", "high"]]', '[["x", true]]', "[[1, 2]]", "not json", '[["x", 1'])) },
    "norm off [0, 1]": lambda d: {d(st.sampled_from(["alignment_score_norm", "coherence_score_norm", "style_score_norm"])):
                                  d(st.one_of(st.floats(1.001, 1e6), st.floats(-1e6, -0.001), st.sampled_from([math.nan, math.inf, -math.inf])))},
    "likert off 1–5 without norm": lambda d: {"style_score_norm": None,
                                              "style_score": d(st.one_of(st.floats(5.01, 1e6), st.floats(-1e6, 0.99), st.just(math.nan)))},
    "heatmap off [0, 1]": lambda d: {"alignment_heatmap": [[0.5, d(st.one_of(st.floats(1.1, 6e4), st.floats(-6e4, -0.01)))]]},
    "heatmap NaN pixel": lambda d: {"coherence_heatmap": [[0.5], [d(st.sampled_from([math.nan, math.inf]))]]},
    "heatmap ragged": lambda d: {"coherence_heatmap": [[0.5, 0.5], [0.5]]},
    "heatmap empty": lambda d: {"alignment_heatmap": d(st.sampled_from([[], [[]], [[], []]]))},
    "prompt null": lambda d: {"prompt": None},
}


@st.composite
def rapidata_table(draw):
    rows, kinds = [], []
    for _ in range(draw(st.integers(1, 5))):
        row = draw(rapidata_good())
        kind = draw(st.sampled_from(["good", "good", "image outside"] + sorted(BAD_RAPIDATA)))
        if kind == "image outside":
            row["image"] = {"path": draw(st.sampled_from(["../../x.png", "/etc/hostname", "data/../../x.png"])), "bytes": None}
        elif kind != "good":
            row.update(BAD_RAPIDATA[kind](draw))
        rows.append(row)
        kinds.append(kind)
    variant = draw(st.sampled_from(["hub", "hub", "hub", "string norm column", "1-D heatmap column", "no norm columns"]))
    return rows, kinds, variant


def _rapidata_variant(rows, kinds, variant):
    """Apply a whole-file column change; return (features, per-row expectation: good/bad/refused image)."""
    feats = dict(FEATURES)
    expect = ["bad" if k in BAD_RAPIDATA else ("refused image" if k == "image outside" else "good") for k in kinds]
    if variant == "string norm column":
        feats["alignment_score_norm"] = datasets.Value("string")
        for i, r in enumerate(rows):
            if r["alignment_score_norm"] is not None:
                r["alignment_score_norm"] = repr(r["alignment_score_norm"])
                expect[i] = "bad"  # text in a score column
    elif variant == "1-D heatmap column":
        feats["alignment_heatmap"] = datasets.List(datasets.Value("float16"))
        for i, r in enumerate(rows):
            if r["alignment_heatmap"] is not None:
                r["alignment_heatmap"] = [v for line in r["alignment_heatmap"] for v in line]
                expect[i] = "bad"  # a 1-D map
    elif variant == "no norm columns":
        for i, r in enumerate(rows):
            if kinds[i] == "norm off [0, 1]":
                expect[i] = "good"  # its bad column is gone; the checks below decide
        for c in ("alignment", "coherence", "style"):
            del feats[f"{c}_score_norm"]
            for i, r in enumerate(rows):
                del r[f"{c}_score_norm"]
                v = r[f"{c}_score"]
                if v is not None and not 1.0 <= np.float32(v) <= 5.0:
                    expect[i] = "bad"  # the Likert must now give the score
    return Features(feats), expect


@settings(max_examples=40, **SETTINGS)
@given(case=rapidata_table())
def test_rapidata_rows_are_kept_or_skipped_with_a_reason(case):
    rows, kinds, variant = case
    feats, expect = _rapidata_variant(rows, kinds, variant)
    TALLY["rapidata"]["cases"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "rapidata"
        (root / "data").mkdir(parents=True)
        columns = {k: [r[k] for r in rows] for k in feats}
        datasets.Dataset.from_dict(columns, features=feats).to_parquet(str(root / "data" / "train-00000.parquet"), batch_size=64)
        try:
            ds = open_dataset(f"rapidata:{root}")
        except RHFError as e:
            _readable(e)
            TALLY["rapidata"]["errors"] += 1
            return
        skipped = {s.where: s.reason for s in ds.skipped}
        assert len(ds) + len(skipped) == len(rows)
        assert all(isinstance(r, str) and r for r in skipped.values())
        for i, want in enumerate(expect):
            rec_id = f"r{i:06d}"
            if want == "bad":
                assert f"row {i}" in skipped and rec_id not in ds.ids, (i, kinds[i], variant)
                continue
            assert rec_id in ds.ids, (i, kinds[i], variant, skipped.get(f"row {i}"))
            rec = ds.get(rec_id)
            assert rec.prompt == rows[i]["prompt"]
            _check_record(rec)
            if want == "refused image":
                with pytest.raises(RHFError, match="outside the dataset folder"):
                    rec.image
            else:
                assert rec.image.size == rows[i]["image"].size
        again = open_dataset(f"rapidata:{root}")  # a frame-cache hit
        assert again.ids == ds.ids and [(s.where, s.reason) for s in again.skipped] == [(s.where, s.reason) for s in ds.skipped]
        plain = open_dataset(f"rapidata:{root}", heatmap_cache=False)  # maps decoded from the parquet file
        for cached, decoded in zip(again, plain):  # the heatmap cache gives the very same arrays
            assert cached.heatmaps.keys() == decoded.heatmaps.keys()
            for name, hm in decoded.heatmaps.items():
                assert cached.heatmaps[name].dtype == np.float32
                np.testing.assert_array_equal(cached.heatmaps[name], hm)
        TALLY["rapidata"]["rows"] += len(rows)
        TALLY["rapidata"]["kept"] += len(ds)
        TALLY["rapidata"]["skipped"] += len(skipped)
        TALLY["rapidata"]["images refused"] += expect.count("refused image")


# --- folder labels.jsonl ------------------------------------------------------------------------

json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10))
json_any = st.recursive(json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                             st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                        max_leaves=8)
plain_json = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000),
                                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10)),
                          lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                          max_leaves=6)
FIELDS = ("id", "prompt", "image", "scores", "words", "heatmaps", "meta", "columns", "split")


@st.composite
def folder_good(draw, k):
    entry = {"id": draw(st.sampled_from([f"id-{k}", k + 10**12, f"ünï {k}\u2028"])),
             "prompt": draw(st.text(max_size=20)),
             "image": draw(st.sampled_from([None, "good.png", "missing.png", "sub/../good.png"]))}
    entry["scores"] = {n: draw(unit) for n in sorted(draw(st.sets(st.sampled_from(["plausibility", "alignment", "aesthetics", "overall"]))))}
    if draw(st.booleans()):
        entry["scores"]["likes"] = draw(st.floats(-1e9, 1e9))
    entry["words"] = [[draw(word), draw(unit)] for _ in range(draw(st.integers(0, 3)))]
    entry["heatmaps"] = {draw(st.text(min_size=1, max_size=8)): "ok.npy" for _ in range(draw(st.integers(0, 2)))}
    meta = draw(st.dictionaries(st.text(max_size=6).filter(lambda s: s != "split"), plain_json, max_size=3))
    if draw(st.booleans()):
        meta["split"] = draw(st.sampled_from(["train", "test", ""]))
    entry["meta"] = meta
    cols = st.dictionaries(st.text(max_size=6).filter(lambda s: s not in ("_entry", "_skip_where", "_skip_reason")),
                           st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=6)), max_size=2)
    entry["columns"] = draw(cols)
    for key in ("scores", "words", "heatmaps", "meta", "columns"):
        if not entry[key] and draw(st.booleans()):
            del entry[key]  # hand-written folders need only image and prompt
    return entry


BAD_FOLDER = {
    "image not text": lambda d: {"image": d(st.one_of(st.integers(), st.booleans(), st.lists(st.integers(), max_size=2), st.just({})))},
    "heatmap path not text": lambda d: {"heatmaps": {"implausibility": d(st.one_of(st.integers(), st.none(), st.just([]), st.just("")))}},
    "heatmap out of the folder": lambda d: {"heatmaps": {"x": d(st.sampled_from(["../ok.npy", "/etc/hostname", "a/../../ok.npy"]))}},
    "heatmap file unusable": lambda d: {"heatmaps": {"x": d(st.sampled_from(["byte.npy", "nan.npy", "cube.npy", "empty.npy", "text.npy", "missing.npy", "sub"]))}},
    "score off [0, 1]": lambda d: {"scores": {d(st.sampled_from(["overall", "alignment"])): d(st.one_of(st.floats(1.0001, 1e9), st.floats(-1e9, -1e-4), st.sampled_from([math.nan, math.inf])))}},
    "score not a number": lambda d: {"scores": {"overall": d(st.one_of(st.booleans(), st.text(max_size=3), st.none(), st.just([0.5])))}},
    "custom score not finite": lambda d: {"scores": {"likes": d(st.sampled_from([math.nan, math.inf, -math.inf]))}},
    "word strength off [0, 1]": lambda d: {"words": [["w", d(st.one_of(st.floats(1.0001, 1e9), st.floats(-1e9, -1e-4), st.just(math.nan)))]]},
    "words not pairs": lambda d: {"words": d(st.sampled_from([[["x"]], [[1, 0.5]], "words", {"x": 1}, [["x", "high"]]]))},
    "id not text": lambda d: {"id": d(st.one_of(st.floats(), st.booleans(), st.lists(st.integers(), max_size=2), st.just({})))},
    "split not text": lambda d: {"meta": {"split": d(st.one_of(st.integers(), st.booleans(), st.just([]), st.just({})))}},
    "column not a scalar": lambda d: {"columns": {"c": d(st.one_of(st.lists(st.integers(), max_size=2), st.just({"a": 1})))}},
    "container not an object": lambda d: {d(st.sampled_from(["scores", "heatmaps", "meta", "columns"])): d(st.one_of(st.integers(), st.text(min_size=1, max_size=3), st.lists(st.integers(), min_size=1, max_size=2)))},
    "prompt not text": lambda d: {"prompt": d(st.one_of(st.integers(), st.none(), st.booleans(), st.lists(st.text(), max_size=2)))},
}
RAW_BAD = ["not UTF-8", "not JSON", "not an object", "deeply nested", "duplicate id"]


@st.composite
def folder_lines(draw):
    lines = []  # (kind, entry dict or raw bytes)
    for k in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["good", "good", "fuzz", "fuzz"] + sorted(BAD_FOLDER) + RAW_BAD))
        good = draw(folder_good(k))
        if kind == "good":
            lines.append((kind, good))
        elif kind == "fuzz":  # arbitrary JSON in some fields: kept or skipped, never a crash
            for f in sorted(draw(st.sets(st.sampled_from(FIELDS), min_size=1))):  # sorted: set order varies per process
                good[f] = draw(json_any)
            lines.append((kind, good))
        elif kind in BAD_FOLDER:
            lines.append((kind, {**good, **BAD_FOLDER[kind](draw)}))
        elif kind == "not UTF-8":
            text = json.dumps(good, ensure_ascii=False).encode()
            at = draw(st.integers(0, len(text)))
            lines.append((kind, text[:at] + draw(st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xe9"])) + text[at:]))
        elif kind == "not JSON":
            lines.append((kind, json.dumps(good).encode()[:-1]))
        elif kind == "not an object":
            lines.append((kind, json.dumps(draw(st.one_of(json_scalar, st.lists(json_scalar, max_size=2)))).encode()))
        elif kind == "deeply nested":
            lines.append((kind, _nested(draw(st.integers(1_500, 50_000))).encode()))
        else:  # a good line that repeats the id of an earlier good line
            earlier = [e for kd, e in lines if kd == "good"]
            if earlier:
                lines.append((kind, {**good, "id": draw(st.sampled_from(earlier))["id"]}))
            else:
                lines.append(("good", good))
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), ("blank", b"   "))
    return lines, draw(st.booleans())


def _folder_files(root: Path):
    Image.new("RGB", (3, 2), (10, 20, 30)).save(root / "good.png")
    np.save(root / "ok.npy", np.full((2, 3), 0.5, np.float32))
    np.save(root / "byte.npy", np.full((2, 2), 200.0, np.float32))
    np.save(root / "nan.npy", np.array([[np.nan, 0.5]], np.float32))
    np.save(root / "cube.npy", np.zeros((2, 2, 2), np.float32))
    np.save(root / "empty.npy", np.zeros((0, 3), np.float32))
    (root / "text.npy").write_text("not an array")
    (root / "sub").mkdir()


def _dump(entry, ascii_only):
    return json.dumps(entry, ensure_ascii=ascii_only).encode()  # NaN / Infinity tokens, as Python writes them


@settings(max_examples=70, **SETTINGS)
@given(case=folder_lines())
def test_folder_lines_are_kept_or_skipped_with_a_reason(case):
    lines, ascii_only = case
    TALLY["folder"]["cases"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        root.mkdir()
        _folder_files(root)
        raw = [x if isinstance(x, bytes) else _dump(x, ascii_only) for _, x in lines]
        (root / "labels.jsonl").write_bytes(b"\n".join(raw) + b"\n")
        try:
            ds = open_dataset(f"folder:{root}")
        except RHFError as e:
            _readable(e)
            TALLY["folder"]["errors"] += 1
            return
        skipped = {s.where: s.reason for s in ds.skipped}
        assert len(skipped) == len(ds.skipped) and all(isinstance(r, str) and r for r in skipped.values())
        counted = [n for n, (kind, _) in enumerate(lines, start=1) if kind != "blank"]
        assert len(ds) + len(skipped) == len(counted)
        assert len(set(ds.ids)) == len(ds)  # every kept id reaches its own record
        for n, (kind, entry) in enumerate(lines, start=1):
            where = f"labels.jsonl line {n}"
            if kind in BAD_FOLDER or kind in RAW_BAD:
                assert where in skipped, (kind, entry)
            elif kind == "good":
                assert where not in skipped, (skipped[where], entry)
                rec = ds.get(str(entry["id"]))
                assert (rec.prompt, rec.meta) == (entry["prompt"], entry.get("meta", {}))
                assert rec.scores == entry.get("scores", {}) and rec.words == [tuple(w) for w in entry.get("words", [])]
                assert sorted(rec.heatmaps) == sorted(entry.get("heatmaps", {}))
        for pos, rec_id in enumerate(ds.ids):
            rec = ds.get(rec_id)
            assert ds.index_of(rec_id) == pos and rec.id == rec_id
            _check_record(rec)
            try:
                img = rec.image
                assert img is None or img.size == (3, 2)
            except RHFError as e:  # a missing image file: the line is kept, its image refused
                _readable(e)
                TALLY["folder"]["images refused"] += 1
        again = open_dataset(f"folder:{root}")  # a frame-cache hit (or a rebuild when Arrow refused the frame)
        assert again.ids == ds.ids and [(s.where, s.reason) for s in again.skipped] == [(s.where, s.reason) for s in ds.skipped]
        TALLY["folder"]["rows"] += len(counted)
        TALLY["folder"]["kept"] += len(ds)
        TALLY["folder"]["skipped"] += len(skipped)
        # What was kept exports and reads back whole (a record whose image is missing refuses clearly).
        try:
            out = export(ds, Path(tmp) / "out")
        except RHFError as e:
            _readable(e)
            TALLY["folder"]["exports refused"] += 1
            return
        back = open_dataset(f"folder:{out}")
        assert back.ids == ds.ids and not back.skipped
        assert not [p for p in Path(tmp).rglob("*") if p.is_file() and not p.is_relative_to(root) and not p.is_relative_to(out)]
