"""Record embeddings (the shipped ShapesWorld CLIP's image tower, or a RAHF checkpoint's image
encoder), their PCA and UMAP maps, nearest neighbours and text search."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from rhf_core.data import open_dataset
from rhf_core.embeddings import (
    EmbeddingError,
    dataset_umap,
    embeddings_path,
    frame_fingerprint,
    image_embedder,
    image_embeddings,
    more_like,
    nearest,
    pca_2d,
    text_search,
    top_eigenvectors,
    umap_2d,
    umap_path,
    weights_digest,
)
from rhf_core.rahf import load_rahf, new_rahf
from rhf_core.rahf.common import images_to_tensor
from rhf_core.reward.encoders import load_encoders
from rhf_core.shapes.grammar import parse_prompt
from tests.test_rahf import tiny

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


def test_frame_fingerprint_follows_the_records_ids_in_order():
    ds = open_dataset("shapes:n=30,seed=1")
    first = frame_fingerprint(ds)
    assert frame_fingerprint(ds.subset(np.arange(29))) != first  # one record fewer
    assert frame_fingerprint(ds.subset(np.arange(30)[::-1])) != first  # the same records, reordered
    assert frame_fingerprint(ds.subset(np.arange(30))) == first == frame_fingerprint(ds)  # an equal copy


# --- the RAHF image encoder as the source ---------------------------------------------------------

RAHF_SPEC = "shapes:n=60,seed=3"


def test_rahf_embeddings_are_its_mean_pooled_patch_tokens_normalised_and_cached_by_weights(setup, tmp_path):
    _, enc, _ = setup
    ds = open_dataset(RAHF_SPEC)
    model = new_rahf(tiny(), device="cpu", seed=0)
    emb = image_embeddings(ds, model)
    assert emb.shape == (60, 32) and emb.dtype == np.float32  # the tiny vision tower's width
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # The definition: the vision tower's patch tokens, mean-pooled, L2-normalised.
    with torch.no_grad():
        tokens = model.model.vision(images_to_tensor([ds[i].image for i in range(5)], 32))
    assert tokens.shape == (5, 16, 32)
    assert np.allclose(emb[:5], F.normalize(tokens.mean(1), dim=-1).numpy(), atol=1e-5)
    # A second call reads the cache: the tower is not run again.
    path = embeddings_path(ds, model)
    assert path.exists()
    model.model.vision.forward = lambda pixels: (_ for _ in ()).throw(AssertionError("recomputed"))
    assert np.array_equal(image_embeddings(ds, model), emb)
    # The same weights saved and reloaded share the entry; other weights get their own embeddings.
    model.save(tmp_path / "rahf")
    assert embeddings_path(ds, load_rahf(tmp_path / "rahf", device="cpu")) == path
    other = new_rahf(tiny(), device="cpu", seed=1)
    assert embeddings_path(ds, other) != path
    assert not np.allclose(image_embeddings(ds, other), emb, atol=1e-3)
    # CLIP's embeddings of the same records are another entry, in another space.
    assert embeddings_path(ds, enc) != path and image_embeddings(ds, enc).shape == (60, enc.dim) != emb.shape


def test_shipped_rahf_neighbours_share_the_prompts_background_and_count_more_often_than_chance(setup):
    ds = open_dataset("shapes:n=200,seed=5")
    emb = image_embeddings(ds, load_rahf(device="cpu"))
    specs = [parse_prompt(p) for p in ds.frame["prompt"]]
    nn = np.array([int(more_like(emb, i, 1)[0][0]) for i in range(len(emb))])
    for attr in ("background", "count"):  # measured 0.425 vs chance 0.253, 0.52 vs 0.31 (shape: 0.355 vs 0.256)
        values = np.array([str(getattr(s, attr)) for s in specs])
        same = float(np.mean(values[nn] == values))
        counts = np.unique(values, return_counts=True)[1]
        chance = float((counts * (counts - 1)).sum() / (len(values) * (len(values) - 1)))
        assert same > 1.4 * chance, (attr, same, chance)  # 200 records: 1.4 × chance is > 3 SE above it


def test_text_search_refuses_the_rahf_source_and_image_embedder_refuses_other_models(setup):
    model = new_rahf(tiny(), device="cpu", seed=0)
    emb = np.eye(4, 32, dtype=np.float32)
    with pytest.raises(EmbeddingError, match="no text encoder aligned.*reward's CLIP"):
        text_search(emb, model, "a red circle")
    with pytest.raises(EmbeddingError, match="cannot embed images with a str.*CLIP encoders or a RAHF"):
        image_embedder("clip")
    assert image_embedder(model).has_text is False and image_embedder(setup[1]).has_text is True


@settings(max_examples=20, deadline=None, derandomize=True)
@given(st.integers(0, 1000), st.integers(0, 3), st.floats(1e-3, 0.5))
def test_weights_digest_follows_the_weights(seed, which, change):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(7, 300), torch.nn.LayerNorm(300))
    copy = torch.nn.Sequential(torch.nn.Linear(7, 300), torch.nn.LayerNorm(300))
    copy.load_state_dict(net.state_dict())
    assert weights_digest(copy) == weights_digest(net)  # the same weights, another object
    with torch.no_grad():
        list(copy.parameters())[which].add_(change)  # training moves a whole tensor
    assert weights_digest(copy) != weights_digest(net)


# --- UMAP ------------------------------------------------------------------------------------------

def test_umap_layout_is_computed_once_and_cached(setup, monkeypatch):
    ds, enc, emb = setup
    small = ds.subset(np.arange(60))
    emb60 = image_embeddings(small, enc)
    path = umap_path(small, enc)
    assert not path.exists()
    xy = dataset_umap(small, enc, emb60)
    assert xy.shape == (60, 2) and xy.dtype == np.float32 and np.isfinite(xy).all() and xy.std(0).min() > 0
    assert path.exists() and path.name.startswith(embeddings_path(small, enc).stem)
    import rhf_core.embeddings

    monkeypatch.setattr(rhf_core.embeddings, "umap_2d", lambda e, seed=0: pytest.fail("recomputed"))
    assert np.array_equal(dataset_umap(small, enc, emb60), xy)
    with pytest.raises(EmbeddingError, match="at least 10"):
        umap_2d(emb60[:5])


# --- the explorer's source switch (AppTest) --------------------------------------------------------

def test_explorer_map_switches_between_the_rahf_and_clip_sources(setup, tmp_path):
    import json

    from tests.test_page_explorer import open_app

    new_rahf(tiny(), seed=2).save(tmp_path / "rahf")
    at = open_app(spec=RAHF_SPEC, view="Map", rahf=str(tmp_path / "rahf"), emb_src="RAHF")
    caption = " ".join(c.value for c in at.caption)
    assert "PCA of RAHF rahf image embeddings (32 dims) of all 60 records" in caption
    assert "Text search needs the reward's CLIP encoder" in caption
    assert "map_text" not in [t.key for t in at.text_input]
    rahf_x = json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["xaxis"]["title"]["text"]
    assert rahf_x == "PC 1"
    at.selectbox(key="emb_src").set_value("CLIP").run()
    assert not at.exception
    caption = " ".join(c.value for c in at.caption)
    assert "PCA of CLIP clip-shapes image embeddings (64 dims)" in caption
    assert "map_text" in [t.key for t in at.text_input]
    # The UMAP layout: computed once, cached on disk beside the embeddings, the axes renamed.
    at.selectbox(key="map_layout").set_value("UMAP").run()
    assert not at.exception
    layout = json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]
    assert layout["xaxis"]["title"]["text"] == "UMAP 1"
    assert any(c.value.startswith("UMAP of CLIP clip-shapes") for c in at.caption)
    assert umap_path(open_dataset(RAHF_SPEC), setup[1]).exists()
    # More like this on the record view keeps the chosen source.
    at.segmented_control(key="view").set_value("Record").run()
    at.toggle(key="similar").set_value(True).run()
    assert at.selectbox(key="emb_src").value == "CLIP"
    assert any("CLIP clip-shapes image embeddings" in c.value for c in at.caption)
    at.selectbox(key="emb_src").set_value("RAHF").run()
    assert not at.exception and any("RAHF rahf image embeddings" in c.value for c in at.caption)
    assert sum(1 for b in at.button if b.key and b.key.startswith("similar_open_")) == 8


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.lists(st.booleans(), min_size=1, max_size=30), st.sampled_from(["score", "group", "flag", "none"]),
       st.integers(0, 1000))
def test_map_traces_partition_the_records_and_split_a_category_by_value(inside, colour, seed):
    import pandas as pd

    from ui.explorer_parts import map_traces

    rng = np.random.default_rng(seed)
    n = len(inside)
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(n)], "score": rng.random(n),
                          "group": rng.choice(["a", "b", "c"], n), "flag": rng.random(n) < 0.5})
    inside = np.array(inside)
    traces = map_traces(frame, inside, colour)
    drawn = np.concatenate([pos for _, _, pos in traces])
    assert sorted(drawn.tolist()) == list(range(n))  # every record once
    for kind, name, pos in traces:
        assert np.all(inside[pos] == (kind != "out"))
        if kind == "category":
            assert set(frame[colour].astype(str).to_numpy()[pos]) == {name}
    kinds = {kind for kind, _, _ in traces} - {"out"}
    assert kinds == {"score": {"numeric"}, "none": {"plain"}}.get(colour, {"category"} if inside.any() else set())
