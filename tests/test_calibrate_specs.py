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


def test_mean_heatmap_from_disk_rows_equals_the_in_memory_mean(tmp_path):
    from rhf_core.rahf.evaluate import mean_heatmap
    from rhf_core.rahf.train import RowFile

    maps = np.random.default_rng(0).random((600, 2, 8, 8)).astype(np.float16)
    maps.tofile(tmp_path / "rows.bin")
    disk = RowFile(tmp_path / "rows.bin", 600, (2, 8, 8), np.float16)
    rows = np.flatnonzero(np.arange(600) % 3 != 0)
    np.testing.assert_allclose(mean_heatmap(disk, rows, 1, chunk=64), mean_heatmap(maps, rows, 1), rtol=1e-12)
    assert not np.allclose(mean_heatmap(maps, rows, 0), mean_heatmap(maps, rows, 1))  # k picks the map type


def test_heat_table_scores_labels_stored_at_another_size():
    from rhf_core.rahf.evaluate import heat_table

    ds = open_dataset("shapes:n=40,seed=2", split="train")
    big = Upscaled(ds, 2)
    positions = [i for i in range(len(ds)) if "implausibility" in ds[i].heatmaps][:6]
    recs, big_recs = [ds[i] for i in positions], [big[i] for i in positions]
    assert big_recs[0].heatmaps["implausibility"].shape[0] == 2 * recs[0].heatmaps["implausibility"].shape[0]
    same = heat_table([dict(r.heatmaps) for r in recs], recs)
    scored = heat_table([dict(r.heatmaps) for r in recs], big_recs)  # predictions at image size, labels 2× (crashed)
    assert same["implausibility"]["cc"] == pytest.approx(1.0, abs=1e-6)
    assert scored["implausibility"]["cc"] > 0.9
