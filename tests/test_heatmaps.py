import numpy as np
import pytest
from PIL import Image

from rhf_core.heatmaps import (
    annotators_to_heatmap,
    colorize_heatmap,
    heatmap_mass,
    heatmap_to_mask,
    mask_to_image,
    overlay_heatmap,
    points_to_heatmap,
    resize_heatmap,
)


def test_disk_marks_exactly_the_pixels_within_radius():
    hm = points_to_heatmap([(10.5, 10.5)], (21, 21), kind="disk", radius=3)
    # Pixel centres within distance 3 of (10.5, 10.5), the centre of pixel (10, 10): 29 lattice points.
    assert hm.dtype == np.float32
    assert hm.sum() == 29
    assert hm[10, 10] == 1 and hm[10, 13] == 1 and hm[10, 14] == 0


def test_default_disk_radius_is_richhf_20_of_512():
    hm = points_to_heatmap([(256, 256)], (512, 512), kind="disk")
    assert abs(hm.sum() - np.pi * 20**2) < 2 * np.pi * 20  # area of a radius-20 disk, up to its rim


def test_gaussian_peak_and_sigma_follow_rapidata():
    hm = points_to_heatmap([(50.5, 50.5)], (101, 101), kind="gaussian")  # σ = 5% of 101
    sigma = 0.05 * 101
    assert hm[50, 50] == pytest.approx(1.0)
    assert hm[50, 55] == pytest.approx(np.exp(-25 / (2 * sigma**2)), rel=1e-5)
    assert hm[0, 0] < 1e-3


def test_annotator_average_counts_raters():
    clicks = [[(5, 5)], [(5, 5)], []]  # two of three raters marked the same point
    hm = annotators_to_heatmap(clicks, (16, 16), kind="disk", radius=2)
    assert hm.max() == pytest.approx(2 / 3)
    np.testing.assert_allclose(np.unique(hm), [0.0, 2 / 3], rtol=1e-6)
    assert annotators_to_heatmap([], (4, 3)).shape == (3, 4)


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="unknown heatmap kind"):
        points_to_heatmap([(1, 1)], (4, 4), kind="square")


def test_mass_and_resize():
    hm = np.zeros((4, 4), np.float32)
    hm[:2] = 1
    assert heatmap_mass(hm) == 0.5
    assert np.isnan(heatmap_mass(None))
    big = resize_heatmap(hm, (8, 6))
    assert big.shape == (6, 8) and big.dtype == np.float32
    assert 0 <= big.min() and big.max() <= 1
    assert big[0].mean() == pytest.approx(1.0) and big[-1].mean() == pytest.approx(0.0)


def test_overlay_leaves_cold_pixels_untouched_and_tints_hot_ones():
    img = Image.new("RGB", (8, 8), (10, 200, 30))
    hm = np.zeros((8, 8), np.float32)
    hm[0, 0] = 1.0
    out = np.asarray(overlay_heatmap(img, hm, opacity=1.0, cmap="inferno"))
    assert (out[1:, :] == (10, 200, 30)).all()
    top = np.asarray(colorize_heatmap(np.ones((1, 1), np.float32), "inferno"))[0, 0]
    assert (out[0, 0] == top).all()
    half = np.asarray(overlay_heatmap(img, hm, opacity=0.5))[0, 0].astype(int)
    assert np.abs(half - (np.array([10, 200, 30]) + top) / 2).max() <= 1


def test_overlay_normalises_to_the_peak_unless_asked_not_to():
    img = Image.new("RGB", (4, 4), (0, 0, 0))
    hm = np.full((4, 4), 0.25, np.float32)
    top = np.asarray(colorize_heatmap(np.ones((1, 1), np.float32), "viridis"))[0, 0]
    norm = np.asarray(overlay_heatmap(img, hm, opacity=1.0, cmap="viridis"))[0, 0]
    assert (norm == top).all()  # 0.25 is this map's peak: full colour, full alpha
    raw = np.asarray(overlay_heatmap(img, hm, opacity=1.0, cmap="viridis", normalize=False))[0, 0].astype(float)
    quarter = np.asarray(colorize_heatmap(np.full((1, 1), 0.25, np.float32), "viridis"))[0, 0]
    np.testing.assert_allclose(raw, quarter * 0.25, atol=1)  # alpha = opacity × heat


def test_overlay_resizes_heatmap_to_image_and_checks_args():
    img = Image.new("RGB", (32, 16))
    assert overlay_heatmap(img, np.ones((4, 4), np.float32)).size == (32, 16)
    with pytest.raises(ValueError, match="opacity"):
        overlay_heatmap(img, np.ones((4, 4), np.float32), opacity=2)
    with pytest.raises(ValueError, match="colour map"):
        colorize_heatmap(np.ones((2, 2)), "rainbow-unicorn")


def test_mask_threshold_modes_dilation_and_empty():
    hm = np.zeros((20, 20), np.float32)
    hm[10, 10] = 0.4
    hm[2, 2] = 0.2
    assert heatmap_to_mask(hm, 0.5, "absolute").sum() == 0
    rel = heatmap_to_mask(hm, 0.5, "relative")  # ≥ 0.2 = 0.5 × max
    assert rel.sum() == 2 and rel[10, 10] and rel[2, 2]
    dil = heatmap_to_mask(hm, 0.3, "absolute", dilation=2)
    assert dil.sum() == 13  # pixels within Euclidean distance 2 of one pixel
    assert not heatmap_to_mask(np.zeros((5, 5)), 0.1, "relative").any()
    sized = heatmap_to_mask(hm, 0.9, "relative", size=(40, 40))  # resized first, then cut at 90% of its peak
    assert sized.shape == (40, 40) and 1 <= sized.sum() <= 16 and sized[18:23, 18:23].any()
    m = mask_to_image(dil)
    assert m.mode == "L" and set(np.unique(np.asarray(m))) == {0, 255}
    with pytest.raises(ValueError, match="threshold"):
        heatmap_to_mask(hm, 1.5)
    with pytest.raises(ValueError, match="dilation"):
        heatmap_to_mask(hm, 0.5, dilation=-1)
    with pytest.raises(ValueError, match="threshold mode"):
        heatmap_to_mask(hm, 0.5, mode="percent")


def test_a_clean_map_gives_an_empty_relative_mask():
    """A clean image's prediction peaks near 0 (the page shows 0.00); relative mode cut it at half that
    peak and repainted ~3% of the image. Below MIN_PEAK nothing is marked, in either mode."""
    from rhf_core.heatmaps import MIN_PEAK

    faint = np.zeros((64, 64), np.float32)
    faint[10:21, 10:21] = 0.004  # 121 px ≈ 3% of the image
    assert not heatmap_to_mask(faint, 0.5, "relative").any()
    assert not heatmap_to_mask(faint, 0.0, "absolute").any()
    marked = faint.copy()
    marked[30, 30] = MIN_PEAK
    assert heatmap_to_mask(marked, 0.5, "relative").sum() == 1


def test_nan_and_inf_pixels_count_as_no_and_full_heat():
    hm = np.zeros((8, 8), np.float32)
    hm[2, 2] = np.nan
    hm[5, 5] = 0.8
    hm[6, 6] = -np.inf
    mask = heatmap_to_mask(hm, 0.5, "relative")  # NaN peak used to make every comparison False
    assert mask.sum() == 1 and mask[5, 5]
    big = resize_heatmap(hm, (16, 16))
    assert np.isfinite(big).all() and big.min() >= 0 and big.max() <= 1
    assert big[4:6, 4:6].max() == 0  # the NaN did not spread over its neighbours
    hm[1, 1] = np.inf
    assert resize_heatmap(hm, (8, 8))[1, 1] == 1.0
    over = np.asarray(overlay_heatmap(Image.new("RGB", (8, 8), (0, 0, 255)), hm))
    assert over[2, 2].tolist() == [0, 0, 255]  # untouched, not black


@pytest.mark.parametrize("call, message", [
    (lambda: heatmap_to_mask(np.zeros((3, 4, 2)), 0.5), "2-D"),
    (lambda: heatmap_to_mask(np.zeros((0, 4)), 0.5), "empty"),
    (lambda: heatmap_to_mask(np.ones((4, 4)), float("nan")), "threshold"),
    (lambda: heatmap_to_mask(np.ones((4, 4)), 0.5, dilation=float("inf")), "dilation"),
    (lambda: resize_heatmap(np.ones((4, 4)), (0, 5)), "size"),
    (lambda: resize_heatmap(np.ones((4, 4)), (2.5, 5)), "size"),
    (lambda: resize_heatmap([["a", "b"]], (2, 2)), "numbers"),
    (lambda: points_to_heatmap([(float("nan"), 1.0)], (8, 8)), "finite"),
    (lambda: overlay_heatmap(np.zeros((4, 4, 3)), np.ones((4, 4))), "PIL image"),
])
def test_bad_heatmap_arguments_raise_readable_errors(call, message):
    from rhf_core.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match=message):
        call()
