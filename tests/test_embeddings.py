"""Record embeddings (the shipped ShapesWorld CLIP's image tower), their PCA map, nearest neighbours
and text search."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from rhf_core.data import open_dataset
from rhf_core.embeddings import (
    EmbeddingError,
    image_embeddings,
    more_like,
    nearest,
    pca_2d,
    text_search,
    top_eigenvectors,
)
from rhf_core.reward.encoders import load_encoders
from rhf_core.shapes.grammar import parse_prompt

SPEC = "shapes:n=400,seed=11"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("RHF_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    ds = open_dataset(SPEC)
    enc = load_encoders(device="cpu")
    emb = image_embeddings(ds, enc)
    yield ds, enc, emb
    mp.undo()


def test_embeddings_are_normalised_and_cached(setup):
    ds, enc, emb = setup
    assert emb.shape == (len(ds), enc.dim) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    again = image_embeddings(ds, enc)  # a cache hit: the same bytes
    assert np.array_equal(again, emb)
    fresh = image_embeddings(ds.subset(np.arange(20)), enc, use_cache=False)
    assert np.allclose(fresh, emb[:20], atol=1e-4)  # the cache keeps what the encoder computes


def test_nearest_neighbour_shares_the_prompts_object_more_often_than_chance(setup):
    ds, _, emb = setup
    specs = [parse_prompt(p) for p in ds.frame["prompt"]]
    assert all(s is not None for s in specs)
    nn = [int(more_like(emb, i, 1)[0][0]) for i in range(len(emb))]
    assert all(j != i for i, j in enumerate(nn))
    same_shape = np.mean([specs[i].shape == specs[j].shape for i, j in enumerate(nn)])
    # Chance: how often two different records drawn at random ask for the same shape.
    shapes = np.array([s.shape for s in specs])
    counts = np.unique(shapes, return_counts=True)[1]
    chance = float((counts * (counts - 1)).sum() / (len(shapes) * (len(shapes) - 1)))
    # 400 records: the rate's standard error at chance (~0.25) is ~0.022, so 1.3 × chance is > 3 SE above.
    assert same_shape > 1.3 * chance, (same_shape, chance)


def test_text_search_ranks_red_circles_above_chance(setup):
    ds, enc, emb = setup
    specs = [parse_prompt(p) for p in ds.frame["prompt"]]
    red_circle = np.array([s.shape == "circle" and s.color == "red" for s in specs])
    top, sims = text_search(emb, enc, "a red circle", k=40)
    assert len(top) == 40 and np.all(np.diff(sims) <= 1e-6)  # best first
    assert red_circle[top].mean() > 2 * red_circle.mean() > 0, (red_circle[top].mean(), red_circle.mean())
    with pytest.raises(EmbeddingError, match="empty"):
        text_search(emb, enc, "  ")


def test_pca_map_is_deterministic_and_spreads_the_points(setup):
    _, _, emb = setup
    xy = pca_2d(emb)
    assert xy.shape == (len(emb), 2)
    assert np.array_equal(xy, pca_2d(emb.copy()))
    assert xy[:, 0].var() >= xy[:, 1].var() > 0  # the first axis carries the most variance
    assert np.allclose(xy.mean(0), 0, atol=1e-4)
    with pytest.raises(EmbeddingError, match=r"\(N, D\)"):
        pca_2d(np.zeros((0, 4)))
    # The same axes as an exact eigendecomposition of the covariance (all 400 rows fit the axes).
    centred = emb - emb.mean(0)
    exact = centred @ np.linalg.eigh(centred.T.astype(np.float64) @ centred)[1][:, ::-1][:, :2]
    for axis in range(2):
        assert abs(np.corrcoef(xy[:, axis], exact[:, axis])[0, 1]) > 0.999


def test_more_like_refuses_a_position_outside_the_records(setup):
    _, _, emb = setup
    with pytest.raises(EmbeddingError, match="outside"):
        more_like(emb, len(emb), 3)


unit_rows = arrays(np.float32, st.tuples(st.integers(1, 40), st.integers(2, 8)),
                   elements=st.floats(-1, 1, width=32)).filter(lambda a: np.all(np.linalg.norm(a, axis=1) > 1e-3))


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.filter_too_much])
@given(unit_rows, st.integers(1, 50), st.data())
def test_nearest_matches_a_full_sort(emb, k, data):
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    q = data.draw(st.integers(0, len(emb) - 1))
    top, sims = nearest(emb, emb[q], k, exclude=q)
    expected = min(k, len(emb) - 1)
    assert len(top) == len(sims) == expected and q not in top and len(set(top.tolist())) == expected
    all_sims = emb @ emb[q]
    assert np.allclose(sims, all_sims[top], atol=1e-6)
    others = np.delete(all_sims, q)
    assert np.allclose(sims, np.sort(others)[::-1][:expected], atol=1e-6)  # the k best, best first


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.integers(2, 40), st.integers(0, 10_000))
def test_top_eigenvectors_span_the_leading_eigenspace(d, seed):
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    spectrum = np.concatenate([[10.0, 5.0], rng.uniform(0, 1, d - 2)])  # a clear gap after the second
    sym = basis @ np.diag(spectrum) @ basis.T
    got = top_eigenvectors(sym, 2)
    assert got.shape == (d, 2)
    for i in range(2):  # each is the true eigenvector up to sign
        assert abs(float(got[:, i] @ basis[:, i])) > 1 - 1e-6
