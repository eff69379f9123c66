"""Calibration with labels stored at another size than their image, and commands deferring to a
spec's own split= (both met on RichHF-format data: 512² label maps, specs like `…,split=test`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rhf_core.data import open_dataset, spec_split
from rhf_core.dataset import Dataset
from rhf_core.errors import DatasetSpecError
from rhf_core.rahf.calibrate import fit_heatmap_scale
from rhf_core.rahf.predictor import new_rahf
from tests.test_rahf import tiny


class Upscaled(Dataset):
    """A dataset's records with every heatmap label stored at `factor` × its size (nearest)."""

    def __init__(self, base: Dataset, factor: int):
        super().__init__()
        self.base, self.factor, self.spec = base, factor, base.spec + " (labels upscaled)"
        self._frame = base.frame

    def _load(self, pos):
        rec = self.base[pos]
        big = {h: np.kron(m, np.ones((self.factor, self.factor), np.float32)) for h, m in rec.heatmaps.items()}
        return dataclasses.replace(rec, heatmaps=big, load_image=lambda r=rec: r.image)


def test_calibration_resizes_labels_to_the_prediction_and_fits_nearly_the_same_scale():
    rahf = new_rahf(tiny(), seed=3)
    ds = open_dataset("shapes:n=60,seed=4", split="train")
    assert ds[0].heatmaps["implausibility"].shape[0] < 3 * ds[0].image.size[1]  # the labels really change size
    same = fit_heatmap_scale(rahf, ds, max_records=24)
    bigger = fit_heatmap_scale(rahf, Upscaled(ds, 3), max_records=24)  # used to fail: shapes do not broadcast
    assert set(bigger) == set(same) and same
    for h in same:
        assert bigger[h] == pytest.approx(same[h], rel=0.1)


def test_spec_split_defers_to_the_spec_and_falls_back():
    assert spec_split("shapes:n=5,split=dev", "test") == "dev"
    assert spec_split("shapes:n=5", "test") == "test"
    assert spec_split("shapes", None) is None
    ds = open_dataset("shapes:n=30,seed=0,split=dev", split=spec_split("shapes:n=30,seed=0,split=dev", "test"))
    assert set(ds.frame["split"]) == {"dev"}
    with pytest.raises(DatasetSpecError, match="split"):  # an explicit split that contradicts the spec's
        open_dataset("shapes:n=30,seed=0,split=dev", split="test")
