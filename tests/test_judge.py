"""The ShapesWorld judge on fresh rendered samples with known scenes and planted defects."""

import numpy as np
import pytest

from rhf_core.judge import degrade, evaluate_judge, judge
from rhf_core.shapes.dataset import generate_sample
from rhf_core.shapes.grammar import PromptSpec
from rhf_core.shapes.render import Aesthetics, Scene, ShapeObject, _defect_params, render

CLEAN = Aesthetics(1.0, 0.0, 1.0, 0.0, 0.0)


def scene(objects, background="grass"):
    return render(Scene(background, objects, CLEAN, 64, texture_seed=3))


def test_accuracy_on_a_fresh_rendered_sample():
    result = evaluate_judge(n=300, seed=97531)
    acc = result["accuracy"]
    # Measured 0.97 on 300 records of this seed (0.973 on 1,000 of seed 0); the target is 0.97.
    assert acc["aligned"] >= 0.93 and acc["background"] >= 0.97 and acc["count"] >= 0.95
    assert acc["implausible"] >= 0.85


def test_accuracy_after_blur_noise_and_jpeg():
    acc = evaluate_judge(n=150, seed=86420, degraded=True)["accuracy"]
    # Measured 0.85 on these 150 records; 0.918 on 1,000 of seed 0 and 0.917 on 300 of seed 1 (target 0.90).
    assert acc["aligned"] >= 0.8 and acc["background"] >= 0.95


def test_clean_scene_is_parsed_exactly():
    img = scene([ShapeObject("circle", "red", 18, 20, 8), ShapeObject("circle", "red", 44, 42, 8)])
    v = judge(img, "two red circles on the grass")
    assert v.aligned and v.misaligned_words == [] and not v.implausible
    objs = v.scene["objects"]
    assert [(o["color"], o["shape"]) for o in objs] == [("red", "circle")] * 2
    assert v.scene["background"] == "grass"
    assert {(round(o["x"]), round(o["y"])) for o in objs} == {(18, 20), (44, 42)}


@pytest.mark.parametrize("prompt, words", [
    ("two blue circles on the grass", ["blue"]),
    ("two red squares on the grass", ["squares"]),
    ("three red circles on the grass", ["three"]),
    ("two red circles in the snow", ["snow"]),
    ("two green stars in the night sky", ["green", "stars", "night", "sky"]),
])
def test_each_mismatch_names_its_words(prompt, words):
    img = scene([ShapeObject("circle", "red", 18, 20, 8), ShapeObject("circle", "red", 44, 42, 8)])
    v = judge(img, prompt)
    assert not v.aligned and v.misaligned_words == words


@pytest.mark.parametrize("kind", ["appendage", "fused", "smear", "bite"])
def test_planted_implausibility_is_found_where_it_was_planted(kind):
    rng = np.random.default_rng(4)
    obj = ShapeObject("square", "blue", 32, 32, 11, kind, _defect_params(kind, rng))
    from rhf_core.shapes.render import implausibility_region

    v = judge(scene([obj]), PromptSpec("square", color="blue"))
    assert v.implausible
    region = implausibility_region(obj, 64)
    assert (v.implausibility.astype(bool) & region).sum() >= 0.3 * v.implausibility.sum()


def test_degrade_changes_pixels_but_not_the_verdict_on_a_clean_scene():
    img = scene([ShapeObject("triangle", "yellow", 30, 30, 12)], background="night sky")
    bad = degrade(img, np.random.default_rng(0))
    assert np.abs(np.asarray(bad, float) - np.asarray(img, float)).mean() > 2
    assert judge(bad, "a yellow triangle in the night sky").aligned


def test_bad_prompts_raise():
    img = generate_sample(0).image()
    with pytest.raises(ValueError, match="not a ShapesWorld prompt"):
        judge(img, "a purple elephant on the moon")
    with pytest.raises(ValueError, match="not a ShapesWorld prompt"):
        judge(img, "")
