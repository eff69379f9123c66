"""rhf_core.annotation: aggregation by the sources' rules, atomic appends under concurrent writers,
the double-click guard, agreement on constructed cases, and bad input."""

import json
import math
import multiprocessing as mp

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from rhf_core import annotation as A
from rhf_core.data import open_dataset
from rhf_core.errors import FolderBusyError, InvalidArgumentError, RecordNotFoundError

ALL4 = {"plausibility": 4, "alignment": 2, "aesthetics": 5, "overall": 1}


def _img(w=512, h=256, color=(40, 120, 200)):
    return Image.new("RGB", (w, h), color)


def _labels(folder):
    return [json.loads(line) for line in (folder / "labels.jsonl").read_text().splitlines() if line.strip()]


# --- aggregation against the source rules ------------------------------------------------------------

def test_richhf_disk_radius_is_20_of_512_of_the_smaller_side(tmp_path):
    # 512×256: radius = 20/512 × 256 = 10 px, measured from pixel centres (computed here, not by the library).
    s = A.add_annotation(tmp_path, _img(), "a cat", "ann", points={"implausibility": [(100, 50)]}, scores=ALL4)
    hm = open_dataset(f"folder:{tmp_path}")[0].heatmaps["implausibility"]
    yy, xx = np.mgrid[0:256, 0:512] + 0.5
    expected = ((xx - 100) ** 2 + (yy - 50) ** 2 <= 10 ** 2).astype(np.float32)
    assert hm.shape == (256, 512)
    np.testing.assert_array_equal(hm, expected)
    assert hm[49, 109] == 1 and hm[49, 110] == 0  # centre (109.5, 49.5) is 9.5 px away, (110.5, 49.5) 10.5 px
    assert s.heatmaps.keys() == {"implausibility", "misalignment"}
    assert not open_dataset(f"folder:{tmp_path}")[0].heatmaps["misalignment"].any()  # nobody marked one: zeros


def test_richhf_disks_average_over_annotators_who_clicked_nothing_too(tmp_path):
    s = A.add_annotation(tmp_path, _img(), "a cat", "a1", points={"implausibility": [(100.5, 50.5)]})
    A.add_annotation(tmp_path, s.record_id, None, "a2", points={"implausibility": [(100.5, 50.5), (300.5, 100.5)]})
    A.add_annotation(tmp_path, s.record_id, None, "a3", points={})
    hm = open_dataset(f"folder:{tmp_path}")[0].heatmaps["implausibility"]
    assert hm[50, 100] == pytest.approx(2 / 3) and hm[100, 300] == pytest.approx(1 / 3)
    assert hm.max() == pytest.approx(2 / 3)


def test_rapidata_gaussian_sigma_is_5_percent_of_the_smaller_side(tmp_path):
    # 400×200: σ = 0.05 × 200 = 10 px. The click sits on a pixel centre.
    s = A.add_annotation(tmp_path, _img(400, 200), "", "ann", points={"misalignment": [(100.5, 50.5)]}, style="rapidata")
    assert A.folder_style(tmp_path) == "rapidata"
    hm = open_dataset(f"folder:{tmp_path}").get(s.record_id).heatmaps["misalignment"]
    assert hm[50, 100] == pytest.approx(1.0)
    assert hm[50, 110] == pytest.approx(math.exp(-0.5), abs=1e-5)  # one σ to the right
    assert hm[70, 100] == pytest.approx(math.exp(-2.0), abs=1e-5)  # two σ down
    assert hm[50, 150] < 1e-3


def test_set_style_recomputes_every_record(tmp_path):
    s = A.add_annotation(tmp_path, _img(400, 200), "", "ann", points={"implausibility": [(100.5, 50.5)]})
    disk = open_dataset(f"folder:{tmp_path}")[0].heatmaps["implausibility"]
    assert disk[50, 115] == 0  # 15 px away: outside the disk of 200 × 20/512 = 7.8 px
    assert A.set_style(tmp_path, "rapidata") == 1
    gauss = open_dataset(f"folder:{tmp_path}").get(s.record_id).heatmaps["implausibility"]
    assert gauss[50, 115] == pytest.approx(math.exp(-15 ** 2 / 200), abs=1e-5)
    with pytest.raises(InvalidArgumentError, match="set_style"):
        A.add_annotation(tmp_path, s.record_id, None, "b", points={}, style="richhf")
    assert len(list((tmp_path / "heatmaps").iterdir())) == 2  # the disk maps were replaced, not left behind


def test_scores_are_the_mean_of_normalised_likert_and_words_the_share_of_annotators(tmp_path):
    prompt = "a red cat and a red dog"  # tokens: a red cat and a red dog
    s = A.add_annotation(tmp_path, _img(), prompt, "a1", words=["red"], scores={"plausibility": 1, "overall": 5})
    A.add_annotation(tmp_path, s.record_id, prompt, "a2", words=[2], scores={"plausibility": 5})
    s = A.add_annotation(tmp_path, s.record_id, None, "a3", words=[2, 6], scores={"plausibility": 3.5})
    rec = open_dataset(f"folder:{tmp_path}")[0]
    assert rec.scores == pytest.approx({"plausibility": (0 + 1 + 0.625) / 3, "overall": 1.0})
    assert rec.words == [("a", 0.0), ("red", pytest.approx(1 / 3)), ("cat", pytest.approx(2 / 3)), ("and", 0.0),
                         ("a", 0.0), ("red", pytest.approx(1 / 3)), ("dog", pytest.approx(1 / 3))]
    assert s.n_annotators == 3 and rec.meta["annotations"][2]["words"] == [2, 6]


def test_a_second_save_by_one_annotator_replaces_theirs_in_the_aggregate_and_keeps_both_raw(tmp_path):
    s = A.add_annotation(tmp_path, _img(), "x", "ann", scores={"overall": 1}, now=1000.0)
    s = A.add_annotation(tmp_path, s.record_id, None, "ann", scores={"overall": 5}, now=1001.0)
    assert s.n_annotations == 2 and s.n_annotators == 1
    assert open_dataset(f"folder:{tmp_path}")[0].scores == {"overall": 1.0}
    assert [a["scores"]["overall"] for a in A.annotations_of(tmp_path, s.record_id)] == [1, 5]


# --- concurrent writers ------------------------------------------------------------------------------

def _writer(folder, k, n):
    img = Image.new("RGB", (64, 48), (200, 10, 10))
    for i in range(n):
        A.add_annotation(folder, "shared", "a red square", f"p{k}-{i}", image=img,
                         points={"implausibility": [(k * 30 + 1, i + 1)]}, scores={"overall": 1 + (i % 5)})


def test_two_processes_appending_at_once_lose_nothing(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), k, 20)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    anns = A.annotations_of(tmp_path, "shared")
    assert len(anns) == 40
    assert sorted(a["annotator"] for a in anns) == sorted(f"p{k}-{i}" for k in range(2) for i in range(20))
    ds = open_dataset(f"folder:{tmp_path}")
    assert len(ds) == 1 and not ds.skipped
    rec = ds[0]
    assert rec.scores["overall"] == pytest.approx(np.mean([(i % 5) / 4 for i in range(20)]))
    assert ds.frame["n_annotators"].iat[0] == 40
    # One heatmap file per type remains: every superseded aggregate was removed after its commit.
    assert len(list((tmp_path / "heatmaps").iterdir())) == 2


def test_the_lock_excludes_a_second_writer(tmp_path, monkeypatch):
    A.add_annotation(tmp_path, _img(), "", "a", scores={"overall": 3})
    monkeypatch.setattr(A, "LOCK_TIMEOUT_S", 0.3)
    before = (tmp_path / "labels.jsonl").read_bytes()
    with A.folder_lock(tmp_path):  # another session holds it (flock: a second open file conflicts)
        with pytest.raises(FolderBusyError, match="try again"):
            A.add_annotation(tmp_path, "img-x", "", "b", image=_img(), scores={"overall": 3})
    assert (tmp_path / "labels.jsonl").read_bytes() == before


def test_a_crash_before_the_commit_leaves_the_old_labels_consistent(tmp_path, monkeypatch):
    s = A.add_annotation(tmp_path, _img(), "", "a", points={"implausibility": [(10, 10)]}, scores={"overall": 5})
    before = (tmp_path / "labels.jsonl").read_bytes()
    old = open_dataset(f"folder:{tmp_path}", cache=False)[0]

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(A, "_write_lines", crash)
    with pytest.raises(OSError):
        A.add_annotation(tmp_path, s.record_id, None, "b", points={"implausibility": [(400, 200)]}, scores={"overall": 1})
    assert (tmp_path / "labels.jsonl").read_bytes() == before
    rec = open_dataset(f"folder:{tmp_path}", cache=False)[0]
    np.testing.assert_array_equal(rec.heatmaps["implausibility"], old.heatmaps["implausibility"])
    assert rec.scores == old.scores


# --- the double-click guard --------------------------------------------------------------------------

def test_a_double_click_appends_once(tmp_path):
    kw = dict(points={"implausibility": [(5, 6)]}, words=["cat"], scores=ALL4)
    first = A.add_annotation(tmp_path, _img(), "a cat", "ann", now=100.0, **kw)
    again = A.add_annotation(tmp_path, _img(), "a cat", "ann", now=100.4, **kw)  # the same image: same record
    assert again.record_id == first.record_id and again.duplicate and not first.duplicate
    assert len(A.annotations_of(tmp_path, first.record_id)) == 1
    # Not a double click: another payload, another annotator, or the same after the window.
    assert not A.add_annotation(tmp_path, first.record_id, None, "ann", now=101.0, **(kw | {"words": []})).duplicate
    assert not A.add_annotation(tmp_path, first.record_id, None, "other", now=101.0, **kw).duplicate
    late = 100.0 + A.DUPLICATE_WINDOW_S + 5
    assert not A.add_annotation(tmp_path, first.record_id, None, "ann", now=late, **kw).duplicate
    assert len(A.annotations_of(tmp_path, first.record_id)) == 4


def test_an_idempotency_key_appends_once_whatever_the_payload_and_time(tmp_path):
    s = A.add_annotation(tmp_path, _img(), "", "ann", key="form-1", scores={"overall": 2}, now=0.0)
    again = A.add_annotation(tmp_path, s.record_id, None, "ann", key="form-1", scores={"overall": 4}, now=500.0)
    assert again.duplicate and again.n_annotations == 1
    assert open_dataset(f"folder:{tmp_path}")[0].scores == {"overall": 0.25}
    assert not A.add_annotation(tmp_path, s.record_id, None, "ann", key="form-2", scores={"overall": 4}).duplicate


# --- agreement ---------------------------------------------------------------------------------------

def test_agreement_on_constructed_cases(tmp_path):
    same = A.add_annotation(tmp_path, _img(color=(1, 1, 1)), "a b c", "x", points={"implausibility": [(50, 50)]},
                            words=["a"], scores={"plausibility": 1, "overall": 3})
    A.add_annotation(tmp_path, same.record_id, None, "y", points={"implausibility": [(50, 50)]}, words=["a"],
                     scores={"plausibility": 5, "overall": 3})
    apart = A.add_annotation(tmp_path, _img(color=(2, 2, 2)), "a b c", "x", points={"implausibility": [(50, 50)]},
                             words=["a"])
    A.add_annotation(tmp_path, apart.record_id, None, "y", points={"implausibility": [(400, 200)]}, words=["b"])
    A.add_annotation(tmp_path, apart.record_id, None, "z", points={})  # an empty map: its pairs are undefined
    alone = A.add_annotation(tmp_path, _img(color=(3, 3, 3)), "a", "x", points={"implausibility": [(9, 9)]},
                             scores={"overall": 2})
    ag = A.agreement(tmp_path)
    r = ag.records.set_index("id")
    assert r.loc[same.record_id, "cc_implausibility"] == pytest.approx(1.0)
    assert r.loc[same.record_id, "word_jaccard"] == 1.0
    assert r.loc[same.record_id, "spread_plausibility"] == pytest.approx(0.5)  # ratings 1 and 5 → 0 and 1
    assert r.loc[same.record_id, "spread_overall"] == 0.0
    assert math.isnan(r.loc[same.record_id, "cc_misalignment"])  # nobody marked one: CC undefined, not 0
    assert r.loc[apart.record_id, "cc_implausibility"] == pytest.approx(_pearson_disks((50, 50), (400, 200)))
    assert r.loc[apart.record_id, "cc_implausibility"] < 0
    assert r.loc[apart.record_id, "word_jaccard"] == 0.0  # x-y disjoint; pairs with z flag something too
    assert math.isnan(r.loc[apart.record_id, "spread_overall"])
    assert r.loc[alone.record_id].drop("n_annotators").isna().all()  # one annotator: nothing defined
    assert ag.folder["n_records"] == 3 and ag.folder["n_multi"] == 2
    assert ag.folder["cc_implausibility"] == pytest.approx(np.mean([1.0, r.loc[apart.record_id, "cc_implausibility"]]))
    assert ag.folder["spread_plausibility"] == pytest.approx(0.5)
    assert math.isnan(ag.folder["cc_misalignment"])


def _pearson_disks(p, q):
    a = A.points_to_heatmap([p], (512, 256), kind="disk").ravel()
    b = A.points_to_heatmap([q], (512, 256), kind="disk").ravel()
    return float(np.corrcoef(a, b)[0, 1])


def test_word_jaccard_is_undefined_when_nobody_flags_anything():
    anns = [{"annotator": "x", "words": [], "scores": {}}, {"annotator": "y", "words": [], "scores": {}}]
    assert math.isnan(A.record_agreement(anns, (10, 10))["word_jaccard"])
    anns[1]["words"] = [0, 1]
    anns[0]["words"] = [1]
    assert A.record_agreement(anns, (10, 10))["word_jaccard"] == 0.5


# --- the folder format ---------------------------------------------------------------------------------

def test_the_folder_opens_with_the_aggregated_labels_and_trainable_splits(tmp_path):
    s = A.add_annotation(tmp_path, _img(), "a cat", "ann", points={"implausibility": [(5, 5)]}, words=["cat"],
                         scores=ALL4)
    ds = open_dataset(f"folder:{tmp_path}")
    assert len(ds) == 1 and not ds.skipped and len(ds.split("train")) == 1
    rec = ds.get(s.record_id)
    assert rec.image.size == (512, 256)
    assert rec.flagged_words == ["cat"]
    assert rec.scores == {"plausibility": 0.75, "alignment": 0.25, "aesthetics": 1.0, "overall": 0.0}
    assert ds.frame["has_implausibility"].iat[0] and ds.frame["implausibility_mass"].iat[0] > 0


def test_records_of_another_dataset_keep_their_id_source_and_prior_labels(tmp_path):
    src = open_dataset("shapes:n=4,seed=0")
    rec = src[1]
    s = A.add_annotation(tmp_path, rec.id, rec.prompt, "ann", image=rec.image, scores=ALL4,
                         source={"spec": src.spec, "id": rec.id})
    assert s.record_id == rec.id and s.created
    back = open_dataset(f"folder:{tmp_path}").get(rec.id)
    assert back.meta["source"] == {"spec": src.spec, "id": rec.id}
    assert np.array_equal(np.asarray(back.image), np.asarray(rec.image))
    # A folder exported with labels: the first annotation keeps those labels in meta.prior_labels.
    from rhf_core.data import export

    out = export(src, tmp_path / "exported")
    target = src[2]
    A.add_annotation(out, target.id, None, "ann", scores={"overall": 5})
    got = open_dataset(f"folder:{out}").get(target.id)
    prior = got.meta["prior_labels"]
    assert prior["scores"] == pytest.approx(target.scores)
    assert got.scores == {"overall": 1.0}
    for rel in prior["heatmaps"].values():
        assert (out / rel).is_file()  # the exported heatmap files are not deleted


def test_a_malformed_stored_record_is_refused_not_overwritten(tmp_path):
    from rhf_core.errors import DatasetFormatError

    _img(32, 32).save(tmp_path / "hand.png")
    text = ('{"id": "cols", "prompt": "", "image": "hand.png", "columns": [1, 2]}\n'
            '{"id": "anns", "prompt": "", "image": "hand.png", "meta": {"annotations": "oops"}}\n')
    (tmp_path / "labels.jsonl").write_text(text)
    for rec_id, what in (("cols", "columns is not a JSON object"), ("anns", "meta.annotations is not a list")):
        with pytest.raises(DatasetFormatError, match=what):
            A.add_annotation(tmp_path, rec_id, None, "ann", scores={"overall": 3})
    assert (tmp_path / "labels.jsonl").read_text() == text


def test_lines_the_reader_skips_are_kept_byte_for_byte(tmp_path):
    _img(32, 32).save(tmp_path / "hand.png")
    (tmp_path / "labels.jsonl").write_text('{"id": "hand", "prompt": "a dog", "image": "hand.png"}\n'
                                           'not json at all\n{"id": "x", "scores": {"overall": 7}}\n')
    A.add_annotation(tmp_path, "hand", None, "ann", words=["dog"], scores={"overall": 4})
    lines = (tmp_path / "labels.jsonl").read_text().splitlines()
    assert lines[1:] == ["not json at all", '{"id": "x", "scores": {"overall": 7}}']
    ds = open_dataset(f"folder:{tmp_path}")
    assert len(ds.skipped) == 2 and ds.get("hand").scores == {"overall": 0.75}


# --- bad input: a readable error, nothing written --------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(annotator="  "), "annotator name"),
    (dict(points={"implausibility": [(600, 10)]}), "outside the 512×256 image"),
    (dict(points={"implausibility": [(float("nan"), 10)]}), "outside"),
    (dict(points={"implausibility": [(1, 2, 3)]}), "pair"),
    (dict(points={"../evil": [(1, 2)]}), "heatmap type"),
    (dict(scores={"overall": 6}), "from 1 to 5"),
    (dict(scores={"overall": float("nan")}), "from 1 to 5"),
    (dict(scores={"overall": True}), "number"),
    (dict(scores={"beauty": 3}), "unknown score"),
    (dict(words=["zebra"]), "not a token"),
    (dict(words=[9]), "outside the prompt"),
    (dict(prompt="another prompt"), "word positions"),
])
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, kwargs, match):
    s = A.add_annotation(tmp_path, _img(), "a cat", "ann", scores={"overall": 3})
    before = (tmp_path / "labels.jsonl").read_bytes()
    args = dict(annotator="other", prompt=None) | kwargs
    with pytest.raises(InvalidArgumentError, match=match):
        A.add_annotation(tmp_path, s.record_id, args.pop("prompt"), args.pop("annotator"), **args)
    assert (tmp_path / "labels.jsonl").read_bytes() == before


def test_a_refused_first_save_leaves_no_files(tmp_path):
    with pytest.raises(InvalidArgumentError, match="outside"):
        A.add_annotation(tmp_path / "new", _img(), "a cat", "ann", points={"implausibility": [(-1, 0)]})
    assert [p.name for p in (tmp_path / "new").iterdir()] == [".labels.lock"]  # no config, image or labels


def test_missing_folder_record_or_image_say_what_is_wrong(tmp_path):
    with pytest.raises(InvalidArgumentError, match="no target folder"):
        A.add_annotation("  ", _img(), "", "ann")
    with pytest.raises(RecordNotFoundError, match="pass image="):
        A.add_annotation(tmp_path, "nope", "", "ann")
    with pytest.raises(InvalidArgumentError, match="give its prompt"):
        A.add_annotation(tmp_path, _img(), None, "ann")
    from rhf_core.errors import ImageLoadError

    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ImageLoadError):
        A.add_annotation(tmp_path, tmp_path / "broken.png", "", "ann")
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidArgumentError, match="not a folder"):
        A.add_annotation(tmp_path / "file", _img(), "", "ann")


# --- property: any valid annotation reads back through the folder reader -----------------------------------

_coord = st.floats(0, 1, allow_nan=False)


@settings(max_examples=25, deadline=None)
@given(w=st.integers(8, 96), h=st.integers(8, 96), style=st.sampled_from(sorted(A.STYLES)),
       anns=st.lists(st.tuples(st.lists(st.tuples(_coord, _coord), max_size=4), st.lists(st.integers(0, 3), max_size=3),
                               st.dictionaries(st.sampled_from(["plausibility", "overall"]), st.integers(1, 5))),
                     min_size=1, max_size=4))
def test_any_valid_annotations_read_back_in_range(tmp_path_factory, w, h, style, anns):
    folder = tmp_path_factory.mktemp("prop")
    rec_id = None
    for k, (pts, words, scores) in enumerate(anns):
        s = A.add_annotation(folder, rec_id or _img(w, h), "one two three four", f"a{k}", style=style,
                             points={"implausibility": [(x * w, y * h) for x, y in pts]}, words=words, scores=scores)
        rec_id = s.record_id
    ds = open_dataset(f"folder:{folder}", cache=False)
    assert not ds.skipped
    rec = ds[0]
    for hm in rec.heatmaps.values():
        assert hm.shape == (h, w) and 0 <= hm.min() and hm.max() <= 1
    expected = A.annotators_to_heatmap([[(x * w, y * h) for x, y in pts] for pts, _, _ in anns], (w, h),
                                       kind=A.STYLES[style])
    # Points are stored rounded to 0.01 px, so a disk's edge pixel may flip: compare on average.
    assert np.abs(rec.heatmaps["implausibility"] - expected).mean() < 0.02
    for name in ("plausibility", "overall"):
        given_ = [(sc[name] - 1) / 4 for _, _, sc in anns if name in sc]
        assert (name in rec.scores) == bool(given_)
        if given_:
            assert rec.scores[name] == pytest.approx(np.mean(given_))
    assert all(0 <= s <= 1 for _, s in rec.words)


# --- the page (AppTest; clicks on the image are covered by tests/test_browser_annotate.py) ------------------

def _open_page(**params):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120)
    at.query_params["ds"] = params.pop("ds", "shapes:n=20,seed=1")
    for k, v in params.items():
        at.query_params[k] = v
    # Straight to the page: a first run of the home page would load the predictor and the generator.
    at.switch_page("app_pages/annotate.py").run()
    assert not at.exception, at.exception
    return at


def _form_widget(at, prefix):
    return next(w for w in at.segmented_control if w.key and w.key.startswith(prefix))


def _rate_all(at, value=3):
    for s in ("plausibility", "alignment", "aesthetics", "overall"):
        _form_widget(at, f"ann_{s}_").set_value(value).run()


def test_page_image_folder_prompts_from_files_or_typed(tmp_path):
    imgs = tmp_path / "gen"
    imgs.mkdir()
    _img(40, 30, (250, 0, 0)).save(imgs / "one.png")
    (imgs / "one.txt").write_text("a red square\n")
    _img(40, 30, (0, 0, 250)).save(imgs / "two.png")
    target = tmp_path / "labels"
    at = _open_page(annotator="dana", ann_target=str(target))
    at.segmented_control(key="ann_source").set_value("Image folder").run()
    at.text_input(key="ann_images").input(str(imgs)).run()
    assert not at.exception, at.exception
    assert any("Image **1** of 2" in m.value for m in at.markdown)
    next(p for p in at.pills if p.key and p.key.startswith("ann_words_")).set_value([1]).run()  # "red"
    _rate_all(at, 5)
    at.button(key="ann_save").click().run()
    assert at.success and "dana" in at.success[0].value, [e.value for e in [*at.error, *at.warning]]
    rec = open_dataset(f"folder:{target}").get(A.image_record_id(_img(40, 30, (250, 0, 0))))
    assert rec.prompt == "a red square" and rec.flagged_words == ["red"] and rec.scores["overall"] == 1.0
    assert rec.meta["source"] == {"file": "one.png"}
    # The second image has no prompt file: saving asks for it, then keeps what was typed.
    _rate_all(at, 2)
    at.button(key="ann_save").click().run()
    assert at.warning and "type the image's prompt" in at.warning[0].value
    next(t for t in at.text_input if t.key and t.key.startswith("ann_prompt_")).input("a blue square").run()
    at.button(key="ann_save").click().run()
    assert at.success, [e.value for e in [*at.error, *at.warning]]
    ds = open_dataset(f"folder:{target}")
    assert sorted(ds.frame["prompt"]) == ["a blue square", "a red square"]


def test_page_uploads_and_the_explorer_set_of_the_sidebar_dataset(tmp_path):
    import io

    target = tmp_path / "t"
    at = _open_page(annotator="erin", ann_target=str(target))
    # Default queue: the sidebar dataset (ShapesWorld), its record ids kept, its spec as the source.
    assert any("Image **1** of 20" in m.value for m in at.markdown)
    _rate_all(at, 4)
    at.button(key="ann_save").click().run()
    assert at.success, [e.value for e in [*at.error, *at.warning]]
    ds = open_dataset(f"folder:{target}")
    src = open_dataset("shapes:n=20,seed=1")
    assert ds.ids == [src.ids[0]] and ds[0].meta["source"]["id"] == src.ids[0]
    assert any("Image **2** of 20" in m.value for m in at.markdown)  # Save & next moved on
    buf = io.BytesIO()
    _img(50, 20, (1, 2, 3)).save(buf, "PNG")
    at.segmented_control(key="ann_source").set_value("Uploads").run()
    at.file_uploader(key="ann_files").set_value([("up.png", buf.getvalue(), "image/png")]).run()
    next(t for t in at.text_input if t.key and t.key.startswith("ann_prompt_")).input("a dot").run()
    _rate_all(at, 1)
    at.button(key="ann_save").click().run()
    assert at.success, [e.value for e in [*at.error, *at.warning]]
    assert open_dataset(f"folder:{target}").get(A.image_record_id(_img(50, 20, (1, 2, 3)))).scores["overall"] == 0.0


def test_page_readable_messages_for_bad_input(tmp_path):
    at = _open_page(ann_target="")
    _rate_all(at)
    at.button(key="ann_save").click().run()
    msg = at.warning[0].value
    assert "enter your name" in msg and "name the folder" in msg
    at.segmented_control(key="ann_source").set_value("Error analysis (worst first)").run()
    assert any("No error analysis for this dataset yet" in i.value for i in at.info)
    at.segmented_control(key="ann_source").set_value("Image folder").run()
    empty = tmp_path / "empty"
    empty.mkdir()
    at.text_input(key="ann_images").input(str(empty)).run()
    assert "holds no PNG, JPEG or WebP images" in at.error[0].value
    assert not at.exception


def test_page_in_shared_mode_saves_only_inside_the_export_folder(tmp_path, monkeypatch):
    export = tmp_path / "exports"
    export.mkdir()
    monkeypatch.setenv("RHF_SHARED", "1")
    monkeypatch.setenv("RHF_EXPORT_ROOT", str(export))
    monkeypatch.setenv("RHF_DATA_ROOTS", str(tmp_path / "data"))
    from rhf_core.data import export as export_ds

    export_ds(open_dataset("shapes:n=3,seed=1"), tmp_path / "data" / "src")
    # The sidebar dataset named relative to the data folder; the server resolves it to its own path.
    at = _open_page(ds="folder:src", annotator="fay", ann_target=str(tmp_path / "elsewhere"))
    assert "outside the server's export folder" in at.error[0].value
    assert str(tmp_path) not in at.error[0].value  # no server path in the message
    _rate_all(at)
    at.button(key="ann_save").click().run()
    assert not (tmp_path / "elsewhere").exists()
    at.text_input(key="ann_target").input("mine").run()  # relative: inside the export folder
    _rate_all(at)
    at.button(key="ann_save").click().run()
    assert at.success, [e.value for e in [*at.error, *at.warning]]
    assert len(open_dataset(f"folder:{export / 'mine'}")) == 1
    saved = open_dataset(f"folder:{export / 'mine'}")[0]
    assert saved.meta["source"]["spec"] == "folder:src"
    assert str(tmp_path) not in (export / "mine" / "labels.jsonl").read_text()  # keys and sources name no server path
    assert all(str(tmp_path) not in m.value for m in [*at.markdown, *at.caption, *at.success])
    monkeypatch.delenv("RHF_EXPORT_ROOT")
    at = _open_page(annotator="fay", ann_target="mine")
    assert "no export folder" in at.error[0].value


def test_page_queue_from_the_error_analysis_ranking_worst_first(tmp_path):
    import pandas as pd

    src = open_dataset("shapes:n=20,seed=1")
    # The table Live RAHF keeps in session state: ids with their disagreement, here made up.
    table = pd.DataFrame({"id": src.ids[:4], "abs_err_overall": [0.1, 0.9, np.nan, 0.5],
                          "abs_err_plausibility": [0.8, 0.0, 0.1, 0.2]})
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120)
    at.query_params["ds"] = "shapes:n=20,seed=1"
    at.query_params["annotator"] = "gus"
    at.query_params["ann_target"] = str(tmp_path / "t")
    at.session_state["live_analysis"] = ((src.spec, "weights"), table)
    at.session_state["live_sort"] = "abs_err_overall"
    at.switch_page("app_pages/annotate.py").run()
    at.segmented_control(key="ann_source").set_value("Error analysis (worst first)").run()
    assert not at.exception, at.exception
    order = [src.ids[1], src.ids[3], src.ids[0], src.ids[2]]  # by abs_err_overall, NaN last
    shown = next(m.value for m in at.markdown if "Image **1** of 4" in m.value)
    assert order[0] in shown and "worst first" not in shown and "error analysis" in shown
    del at.session_state["live_sort"]  # as Streamlit drops a widget's state off its page: the order stays
    _rate_all(at, 2)
    at.button(key="ann_save").click().run()
    assert at.success, [e.value for e in [*at.error, *at.warning]]
    assert open_dataset(f"folder:{tmp_path / 't'}").ids == [order[0]]
    assert order[1] in next(m.value for m in at.markdown if "Image **2** of 4" in m.value)


def test_page_queue_is_the_explorers_filtered_set(tmp_path):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    src = open_dataset("shapes:n=20,seed=1")
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120)
    at.query_params["ds"] = "shapes:n=20,seed=1"
    at.session_state["explorer_positions"] = np.array([7, 2, 11])  # what the explorer keeps after filtering
    at.session_state["explorer_spec"] = src.spec
    at.switch_page("app_pages/annotate.py").run()
    assert not at.exception, at.exception
    shown = next(m.value for m in at.markdown if "Image **1** of 3" in m.value)
    assert src.ids[7] in shown and "the explorer's filtered set" in shown


def test_id_less_lines_keep_the_readers_ids_across_blank_lines_and_rewrites(tmp_path):
    # The folder reader names an id-less line `line{n}` counting blank lines; annotating must reach the
    # same record, and the rewrite (which drops blank lines) must not renumber the others.
    (tmp_path / "images").mkdir()
    for name, colour in (("a", (200, 0, 0)), ("b", (0, 0, 200))):
        Image.new("RGB", (32, 32), colour).save(tmp_path / "images" / f"{name}.png")
    (tmp_path / "labels.jsonl").write_text(
        json.dumps({"prompt": "a red square", "image": "images/a.png"}) + "\n\n"
        + json.dumps({"prompt": "a blue square", "image": "images/b.png"}) + "\n")
    assert open_dataset(f"folder:{tmp_path}").ids == ["line1", "line3"]
    saved = A.add_annotation(tmp_path, "line3", None, "alice", scores={"plausibility": 5})
    assert not saved.created
    ds = open_dataset(f"folder:{tmp_path}")
    assert ds.ids == ["line1", "line3"]
    assert ds.get("line3").prompt == "a blue square" and ds.get("line3").scores["plausibility"] == 1.0
    assert len(list((tmp_path / "images").iterdir())) == 2  # no copy of the image as a new record
