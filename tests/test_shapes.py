"""ShapesWorld sanity on fresh seeds: determinism, defects ⇒ feedback, and the grammar."""

import numpy as np
import pytest
from scipy import ndimage
from scipy.stats import spearmanr

from rhf_core.data import open_dataset
from rhf_core.errors import DatasetSpecError
from rhf_core.heatmaps import RICHHF_DISK_RADIUS_FRAC
from rhf_core.shapes.grammar import COLORS, all_prompts, parse_prompt, prompts_by
from rhf_core.shapes.render import ShapeObject, implausibility_region, object_coverage

SEED = 20261123


@pytest.fixture(scope="module")
def world():
    return open_dataset("shapes", n=600, seed=SEED, cache=False)


def test_deterministic_for_a_seed():
    a = open_dataset("shapes", n=30, seed=7, cache=False)
    b = open_dataset("shapes", n=30, seed=7, cache=False)
    c = open_dataset("shapes", n=30, seed=8, cache=False)
    assert a.frame.equals(b.frame)
    assert not a.frame["prompt"].equals(c.frame["prompt"])
    assert np.array_equal(np.asarray(a[5].image), np.asarray(b[5].image))
    assert np.array_equal(a[5].heatmaps["implausibility"], b[5].heatmaps["implausibility"])


def test_more_artifacts_mean_lower_plausibility_and_more_heat(world):
    f = world.frame
    n = f["n_implausibility_defects"]
    assert spearmanr(n, f["plausibility"]).statistic < -0.6
    assert spearmanr(n, f["implausibility_mass"]).statistic > 0.6
    means = f.groupby("n_implausibility_defects")["plausibility"].mean()
    assert means.is_monotonic_decreasing and means.loc[0] - means.loc[2] > 0.3
    assert spearmanr(f["n_misalignment_defects"], f["alignment"]).statistic < -0.6


def test_flagged_words_are_the_words_the_defects_changed(world):
    checked, strong_total, strong_right = 0, 0, 0
    for i in range(200):
        rec = world[i]
        defect_words = {w for d in rec.meta["defects"] if d["type"] == "misalignment" for w in d["words"]}
        # Every defect word is a prompt token…
        assert defect_words <= {t for t, _ in rec.words}, (rec.prompt, defect_words)
        # …and the words a majority flagged are defect words (two raters rarely stray alike).
        strong = {t for t, s in rec.words if s >= 2 / 3}
        strong_total += len(strong)
        strong_right += len(strong & defect_words)
        checked += bool(defect_words)
    assert checked > 40
    assert strong_right >= 0.97 * strong_total
    # Overall the defect words are flagged far more than the others.
    hit, stray = [], []
    for i in range(200):
        rec = world[i]
        bad = {w for d in rec.meta["defects"] if d["type"] == "misalignment" for w in d["words"]}
        for t, s in rec.words:
            (hit if t in bad else stray).append(s)
    assert np.mean(hit) > 0.6 and np.mean(stray) < 0.05


def test_heatmap_peaks_lie_inside_the_planted_regions(world):
    radius = int(np.ceil(RICHHF_DISK_RADIUS_FRAC * world.size)) + 1
    checked = 0
    for i in range(300):
        sample = world.sample(i)
        fb = sample.feedback
        for hm_name in ("implausibility", "misalignment"):
            hm = fb.heatmaps[hm_name]
            if hm.max() < 2 / 3 - 1e-6:  # peaks only one rater agrees on may be stray clicks
                continue
            region = ndimage.binary_dilation(sample.region(hm_name), iterations=radius)
            peak = np.argwhere(hm == hm.max())
            assert region[tuple(peak[0])], (sample.index, hm_name)
            checked += 1
    assert checked > 60


def test_richhf_raters_dot_each_defect_in_proportion_to_its_size(world):
    areas, clicks, cover = [], [], []
    for i in range(300):
        sample = world.sample(i)
        imp = [d for d in sample.defects if d.type == "implausibility"]
        if len(imp) != 1:
            continue
        areas.append(int(imp[0].region.sum()))
        clicks.append(sample.feedback.meta["clicks"]["implausibility"])
        cover.append(float((sample.feedback.heatmaps["implausibility"][imp[0].region] > 0).mean()))
    assert len(areas) > 60
    assert spearmanr(areas, clicks).statistic > 0.6  # bigger defects get more points
    areas, clicks = np.array(areas), np.array(clicks)
    disk = np.pi * (RICHHF_DISK_RADIUS_FRAC * world.size) ** 2
    big = areas > 4 * disk
    assert clicks[big].mean() / 3 > 3 and clicks[~big].mean() / 3 < 3  # per rater
    assert clicks.max() <= 3 * 10 + 3  # at most 10 points per defect and rater, plus stray clicks
    assert np.mean(cover) > 0.7  # the label covers most of the defect, not one dot of it


def test_clean_images_have_no_planted_regions_and_high_scores(world):
    f = world.frame
    clean = f[(f.n_implausibility_defects == 0) & (f.n_misalignment_defects == 0)]
    dirty = f[(f.n_implausibility_defects >= 1) & (f.n_misalignment_defects >= 1)]
    assert len(clean) > 50
    assert clean["overall"].mean() > dirty["overall"].mean() + 0.1
    assert clean["implausibility_mass"].mean() < 0.25 * dirty["implausibility_mass"].mean()


def test_richhf_style_rater_disagreement_is_realistic(world):
    spreads = []
    for i in range(300):
        r = np.array(world[i].meta["ratings"]["plausibility"])
        assert len(r) == 3 and r.min() >= 1 and r.max() <= 5
        spreads.append(r.max() - r.min())
    spreads = np.array(spreads)
    assert 0.15 < np.mean(spreads == 0) < 0.45  # roughly a quarter agree perfectly
    assert np.mean(spreads <= 1) > 0.75  # most within one Likert point


def test_rapidata_style_many_raters_and_heatmaps_only_for_low_scores():
    ds = open_dataset("shapes:n=150,seed=3,raters=rapidata", cache=False)
    f = ds.frame
    assert f["raters"].between(15, 25).all()
    assert not f.loc[f.plausibility >= 0.8, "has_implausibility"].any()
    assert f.loc[f.plausibility < 0.8, "has_implausibility"].all()
    assert (~f["has_implausibility"]).sum() > 10


def test_unseen_prompts_only_in_test_and_grammar_round_trips(world):
    f = world.frame
    assert set(f.loc[f.prompt_split == "unseen", "split"]) == {"test"}
    assert set(f["category"]) == {"count", "color", "background", "combination"}
    assert 0.05 < (f.prompt_split == "unseen").mean() < 0.3
    for spec in all_prompts():
        assert parse_prompt(spec.text) == spec
    assert parse_prompt("a purple elephant") is None
    assert prompts_by("color", unseen=True) and prompts_by("combination", unseen=False)
    assert "an orange" in " ".join(p.text for p in prompts_by("color"))


def test_rendered_objects_have_their_colour(world):
    for i in range(40):
        sample = world.sample(i)
        if sample.scene.aesthetics.contrast < 1 or sample.scene.aesthetics.noise or sample.scene.aesthetics.blur:
            continue
        img = np.asarray(sample.image(), dtype=float)
        for o in sample.scene.objects:
            body = object_coverage(o, world.size)[0] > 0.99
            if body.sum() < 10:
                continue
            median = np.median(img[body], axis=0)
            nearest = min(COLORS, key=lambda c: np.linalg.norm(np.array(COLORS[c]) - median))
            assert nearest == o.color, (i, o.color, median)


@pytest.mark.parametrize("kind", ["melted", "appendage", "bite", "fused", "smear"])
def test_each_implausibility_defect_has_a_region_where_the_image_changed(kind):
    rng = np.random.default_rng(0)
    from rhf_core.shapes.render import _defect_params

    obj = ShapeObject("square", "red", 32, 32, 9, kind, _defect_params(kind, rng))
    clean = ShapeObject("square", "red", 32, 32, 9)
    region = implausibility_region(obj, 64)
    changed = np.abs(sum(object_coverage(obj, 64)[::2]) - object_coverage(clean, 64)[0]) > 0.3
    assert region.any() and changed.any()
    assert (changed & region).sum() >= 0.9 * changed.sum()  # the region covers what changed


def test_bad_options_give_clear_errors():
    with pytest.raises(DatasetSpecError, match="positive"):
        open_dataset("shapes", n=0)
    with pytest.raises(DatasetSpecError, match="raters"):
        open_dataset("shapes", n=5, raters="mturk")
    with pytest.raises(DatasetSpecError, match="unknown options"):
        open_dataset("shapes:n=5,colour=red")


def test_frame_is_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("RHF_CACHE_DIR", str(tmp_path))
    a = open_dataset("shapes", n=40, seed=11)
    cached = list((tmp_path / "frames").glob("shapes-*.parquet"))
    assert len(cached) == 1
    b = open_dataset("shapes", n=40, seed=11)
    assert a.frame.equals(b.frame)


def test_results_json_keeps_value_lists_on_one_line_and_round_trips(tmp_path):
    import json

    from rhf_core.__main__ import _write_json

    result = {"per_prompt": {"alignment": [0.25, 0.5, 1.0], "ids": ["a", "b"]}, "claims": [{"ci95": [-0.1, 0.2]}],
              "empty": {}, "none": [], "text": "β = 0"}
    _write_json(str(tmp_path / "sub" / "r.json"), result)
    text = (tmp_path / "sub" / "r.json").read_text()
    assert json.loads(text) == result
    assert '"alignment": [0.25, 0.5, 1.0],' in text and '"ci95": [-0.1, 0.2]' in text
    assert text.count("\n") == 14 and text.endswith("}\n")  # nested objects still one key per line


@pytest.mark.parametrize("spec, options, message", [
    ("shapes:n=4,seed=-1", {}, "seed must be 0 or more"),  # was numpy's bare "expected non-negative integer"
    ("shapes:n=100000000", {}, "at most 1,000,000 records"),  # used to tie up the server
    ("shapes:n=-2", {}, "positive"),
    ("shapes:n=2.5", {}, "n must be a whole number"),
    ("shapes:n=4,size=3.5", {}, "size must be a whole number"),
    ("shapes:n=4,size=8", {}, "size must be between"),
    ("shapes:n=4,raters=5", {}, "raters must be one of"),
    ("shapes", {"n": 4, "raters": ["richhf"]}, "raters must be one of"),  # was TypeError: unhashable
    ("shapes", {"n": True}, "whole number"),
])
def test_bad_shapes_specs_are_refused_readably_and_at_once(spec, options, message):
    import time

    t0 = time.perf_counter()
    with pytest.raises(DatasetSpecError, match=message):
        open_dataset(spec, **options)
    assert time.perf_counter() - t0 < 1.0


def test_an_unknown_shapes_split_is_refused_not_empty():
    with pytest.raises(DatasetSpecError, match="split must be one of"):
        open_dataset("shapes:n=4", split="validation")
    assert len(open_dataset("shapes:n=40", split="train")) > 0
