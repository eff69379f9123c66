import numpy as np
import pandas as pd
import pytest

from rhf_core.data import open_dataset
from rhf_core.dataset import frame_row
from rhf_core.errors import DatasetFormatError, DatasetSpecError
from rhf_core.explore import (
    ExplorerFilter,
    apply_filter,
    category_columns,
    mean_heatmap,
    most_flagged_words,
    sortable_columns,
)


def frame():
    rows = [
        frame_row("a", "a red circle", "train", {"plausibility": 0.2}, {"implausibility": np.ones((2, 2))}, [("red", 1.0), ("red", 1.0)], model="sd"),
        frame_row("b", "a blue square", "test", {"plausibility": 0.9}, {}, [("blue", 0.0)], model="dalle"),
        frame_row("c", "RED star", "train", {}, {"implausibility": np.zeros((2, 2))}, [("RED", 0.6), ("star", 0.7)], model="sd"),
    ]
    return pd.DataFrame(rows)


def test_filters_combine_and_missing_scores_drop_out_of_ranges():
    f = frame()
    assert list(apply_filter(f, ExplorerFilter(text="red"))) == [0, 2]  # case-insensitive
    assert list(apply_filter(f, ExplorerFilter(text="b"))) == [1]  # an exact id also matches
    assert list(apply_filter(f, ExplorerFilter(score_ranges={"plausibility": (0.0, 0.5)}))) == [0]
    assert list(apply_filter(f, ExplorerFilter(heatmaps={"implausibility": "no"}))) == [1]
    assert list(apply_filter(f, ExplorerFilter(flagged="yes", categories={"model": ("sd",)}))) == [0, 2]
    assert list(apply_filter(f, ExplorerFilter(splits=("test",)))) == [1]
    order = apply_filter(f, ExplorerFilter(sort_by="plausibility", descending=True))
    assert list(order) == [1, 0, 2]  # the unrated record sorts last
    assert category_columns(f) == {"model": ["dalle", "sd"]}
    assert "plausibility" in sortable_columns(f) and "implausibility_mass" in sortable_columns(f)


def test_most_flagged_words_count_records_not_mentions():
    words = most_flagged_words(frame())
    counts = dict(zip(words["word"], words["records"]))
    assert counts == {"red": 2, "star": 1}
    assert words["share"].max() <= 1


def test_mean_heatmap_over_a_sample():
    ds = open_dataset("shapes:n=80,seed=3")
    mean, used, total = mean_heatmap(ds, np.arange(80), "implausibility", max_records=20)
    assert mean.shape == (64, 64) and used == 20 and total == int(ds.frame["has_implausibility"].sum())
    assert mean.max() > 0


def test_shapes_options_must_be_whole_numbers():
    with pytest.raises(DatasetSpecError, match="whole number"):
        open_dataset("shapes:n=1e3")


def test_folder_paths_cannot_leave_the_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    (tmp_path / "d" / "labels.jsonl").write_text('{"id": "x", "prompt": "p", "image": "../secret.png"}\n')
    ds = open_dataset(f"folder:{tmp_path / 'd'}")
    with pytest.raises(DatasetFormatError, match="outside the dataset folder"):
        ds[0].image


def test_an_unset_tri_state_filter_means_any_not_no():
    """A cleared has-heatmap control (None, or an empty URL parameter) used to read as "no": 0 records."""
    f = frame()
    for state in (None, "", "any", "bogus"):
        assert list(apply_filter(f, ExplorerFilter(heatmaps={"implausibility": state}))) == [0, 1, 2]
        assert list(apply_filter(f, ExplorerFilter(flagged=state))) == [0, 1, 2]
    assert list(apply_filter(f, ExplorerFilter(heatmaps={"implausibility": "yes"}))) == [0, 2]
    assert list(apply_filter(f, ExplorerFilter(flagged="no"))) == [1]
