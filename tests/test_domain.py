"""The training-domain check (rhf_core/rahf/domain.py): fitting, files, and the embedded checkpoint's verdicts."""

import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rhf_core.rahf import load_rahf, new_rahf
from rhf_core.rahf.domain import (RATES_FILE, STATS_FILE, DomainStats, DomainStatsError, check_domain,
                                  default_photos, fit_domain, fit_part, load_domain, photo_crops,
                                  procedural_photographs, save_domain, shapes_renders)
from rhf_core.rahf.predictor import DEFAULT_CHECKPOINT
from rhf_core.errors import InvalidArgumentError, RHFError
from tests.test_rahf import tiny

PHOTOS = default_photos()
needs_photos = pytest.mark.skipif(not PHOTOS, reason="scikit-learn's sample photographs (requirements-dev.txt)")


@pytest.fixture(scope="module")
def embedded():
    return load_rahf()


def gaussian(n, d, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    scales = np.linspace(3, 0.1, d)  # an anisotropic cloud, as encoder features are
    return rng.normal(size=(n, d)) * scales + shift


# --- the Gaussian part ---------------------------------------------------------------------------

def test_a_part_flags_about_its_quantile_in_domain_and_everything_far_away():
    part = fit_part("cloud", gaussian(2000, 24, 0), gaussian(1000, 24, 1), quantile=0.99, rank=8)
    fresh = part.distance(gaussian(4000, 24, 2))
    assert 0.002 < (fresh > part.threshold).mean() < 0.03  # 1% by design, on samples used for neither
    assert (part.distance(gaussian(200, 24, 3, shift=4.0)) > part.threshold).all()
    # Outside the fitted directions distance is measured in the residual's spread (here σ ≈ 1.2): ten of it is far.
    off_axis = gaussian(200, 24, 4)
    off_axis[:, -1] += 10 * np.sqrt(part.residual)
    assert (part.distance(off_axis) > part.threshold).mean() > 0.95


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(20, 80), d=st.integers(2, 12), rank=st.integers(1, 8), seed=st.integers(0, 10_000),
       q=st.floats(0.5, 0.999))
def test_part_distances_are_finite_and_zero_at_the_mean(n, d, rank, seed, q):
    rng = np.random.default_rng(seed)
    fit = rng.normal(size=(max(n, 2 * rank), d)) * rng.uniform(0, 2, size=d)  # some directions may be flat
    part = fit_part("p", fit, rng.normal(size=(20, d)), quantile=q, rank=rank)
    dist = part.distance(rng.normal(size=(10, d)) * 100)
    assert np.isfinite(dist).all() and (dist >= 0).all()
    assert part.distance(part.mean[None])[0] == pytest.approx(0, abs=1e-6)
    assert part.threshold > 0 and part.components.shape == (min(rank, min(len(fit), d) - 1), d)


@pytest.mark.parametrize("kwargs, error, text", [
    ({"quantile": 1.0}, InvalidArgumentError, "quantile"),
    ({"rank": 0}, InvalidArgumentError, "rank"),
    ({"features": np.zeros((5, 4))}, DomainStatsError, "need at least"),
    ({"features": np.full((64, 4), np.nan)}, DomainStatsError, "not finite"),
])
def test_fit_part_refuses_bad_arguments(kwargs, error, text):
    args = {"features": gaussian(64, 4, 0), "held_out": gaussian(30, 4, 1), **kwargs}
    with pytest.raises(error, match=text):
        fit_part("p", **args)


# --- files -------------------------------------------------------------------------------------

def tiny_stats(predictor) -> DomainStats:
    renders = shapes_renders(0, "train", 40)
    return fit_domain(predictor, {"renders": (renders[:20], renders[20:])}, "shapesworld", "ShapesWorld renders",
                      fitted_on={"renders": "20 + 20 train renders"}, rank=4)


def test_save_and_load_round_trip(tmp_path):
    rahf = new_rahf(tiny())
    rahf.save(tmp_path)
    stats = tiny_stats(rahf)
    save_domain(stats, tmp_path)
    back = load_domain(tmp_path)
    assert back.name == "shapesworld" and back.parts[0].fitted_on == "20 + 20 train renders"
    assert back.parts[0].threshold == pytest.approx(stats.parts[0].threshold)
    np.testing.assert_allclose(back.parts[0].components, stats.parts[0].components, atol=1e-6)
    renders = shapes_renders(1, "test", 5)
    checks = check_domain(load_rahf(tmp_path), renders)
    assert [c.distance for c in checks] == pytest.approx([c.distance for c in check_domain(rahf, renders, stats)],
                                                          rel=1e-4)
    assert load_domain(tmp_path / "nowhere") is None


@pytest.mark.parametrize("damage", ["garbage", "truncated", "no parts"])
def test_a_damaged_file_is_an_error_and_the_check_says_unknown(tmp_path, damage):
    rahf = new_rahf(tiny())
    rahf.save(tmp_path)
    save_domain(tiny_stats(rahf), tmp_path)
    path = tmp_path / STATS_FILE
    if damage == "garbage":
        path.write_bytes(b"not safetensors at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        from safetensors.numpy import save

        path.write_bytes(save({"probe": np.zeros(4, np.float32)}, metadata={"name": "x", "description": "y",
                                                                           "parts": "[]"}))
    with pytest.raises(DomainStatsError) as e:
        load_domain(tmp_path)
    assert isinstance(e.value, RHFError) and STATS_FILE in str(e.value)
    [check] = check_domain(load_rahf(tmp_path), shapes_renders(1, "test", 1))
    assert check.status == "unknown" and check.in_domain is None and STATS_FILE in check.message


def test_statistics_of_other_weights_are_not_trusted(tmp_path, embedded):
    # Same architecture as the embedded checkpoint, other weights: the probe features differ.
    other = new_rahf(embedded.config, seed=3)
    other.save(tmp_path)
    shutil.copy(DEFAULT_CHECKPOINT / STATS_FILE, tmp_path / STATS_FILE)
    [check] = check_domain(load_rahf(tmp_path), procedural_photographs(1))
    assert check.status == "unknown" and "fitted for other weights" in check.message


def test_a_checkpoint_without_statistics_says_only_what_it_was_trained_on(tmp_path):
    rahf = new_rahf(tiny())
    rahf.save(tmp_path)
    rahf = load_rahf(tmp_path)
    [check] = check_domain(rahf, procedural_photographs(1))
    assert check.status == "unknown" and "does not record" in check.message and "unlike" not in check.message
    # The converted published weights declare their domain and carry no statistics.
    rahf.domain = {"name": "richhf18k", "description": "RichHF-18K (Pick-a-Pic images of real T2I models)"}
    [check] = check_domain(rahf, procedural_photographs(1))
    assert check.status == "unknown" and check.domain["name"] == "richhf18k"
    assert "trained on RichHF-18K" in check.message and "unlike" not in check.message


# --- the embedded checkpoint -----------------------------------------------------------------------

@needs_photos
def test_the_embedded_checkpoint_flags_photographs_and_not_renders(embedded):
    photos = check_domain(embedded, photo_crops(PHOTOS, crops=4, seed=7))  # crops the measurement did not use
    assert all(c.status == "out" for c in photos), [round(c.distance / c.threshold, 2) for c in photos]
    assert "ShapesWorld renders" in photos[0].message and "docs/guides/published-weights.md" in photos[0].message
    renders = check_domain(embedded, shapes_renders(2, "test", 60))  # a world neither fitted nor measured on
    assert sum(c.status == "out" for c in renders) <= 2
    assert all(c.threshold > 0 and c.part in ("renders", "generator samples") for c in renders)


def test_the_measured_rates_are_recorded_beside_the_statistics():
    rates = json.loads((DEFAULT_CHECKPOINT / RATES_FILE).read_text())
    false_alarms, detection = rates["false_alarms"], rates["detection"]
    for entry in [*false_alarms.values(), *detection.values()]:
        assert entry["rate"] == pytest.approx(entry["flagged"] / entry["n"], abs=1e-4) and entry["data"]
    assert false_alarms["shapesworld_test_renders"]["n"] == false_alarms["generator_samples"]["n"] == 200
    assert false_alarms["shapesworld_test_renders"]["rate"] <= 0.02
    assert false_alarms["generator_samples"]["rate"] <= 0.05
    assert detection["photographs"]["rate"] >= 0.9
    # The file describes the statistics that are shipped, not an older fit.
    stats = load_domain(DEFAULT_CHECKPOINT)
    assert [p["threshold"] for p in rates["parts"]] == pytest.approx([p.threshold for p in stats.parts], abs=1e-3)
