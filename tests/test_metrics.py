import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from rhf_core import metrics as M


def test_plcc_srcc_match_scipy_and_handle_constants():
    rng = np.random.default_rng(0)
    a, b = rng.random(50), rng.random(50)
    assert M.plcc(a, b) == pytest.approx(stats.pearsonr(a, b).statistic)
    assert M.srcc(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
    assert M.srcc([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)
    assert np.isnan(M.plcc([1, 1, 1], [1, 2, 3]))


def test_cc_sim_kld_by_hand():
    g = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert M.cc(g, g) == pytest.approx(1.0)
    assert M.cc(1 - g, g) == pytest.approx(-1.0)
    assert M.sim(g, g) == pytest.approx(1.0)
    p = np.array([[0.0, 1.0], [0.0, 0.0]])  # all mass on one of the two GT pixels
    assert M.sim(p, g) == pytest.approx(0.5)
    # KLD = Σ g log(g / p): 0.5 log(0.5 / 1) + 0.5 log(0.5 / ε)
    expected = 0.5 * np.log(0.5 + M.EPS) + 0.5 * np.log(M.EPS + 0.5 / M.EPS)
    assert M.kld(p, g) == pytest.approx(expected, rel=1e-6)
    assert M.kld(g, g) == pytest.approx(0.0, abs=1e-9)


def test_nss_by_hand():
    p = np.array([[1.0, 2.0], [3.0, 4.0]])
    fix = np.array([[False, False], [False, True]])
    z = (4 - 2.5) / np.std([1, 2, 3, 4])
    assert M.nss(p, fix) == pytest.approx(z)


def test_auc_judd_by_hand_and_close_to_roc_auc():
    p = np.array([0.9, 0.8, 0.1, 0.4])
    fix = np.array([True, False, False, True])
    # thresholds 0.9, 0.4: (fp, tp) = (0, .5), (.5, 1); area with (0,0) and (1,1): 0.5·.5·.5 + .5·(.5+1)/2... by hand:
    tp = [0, 0.5, 1.0, 1.0]
    fp = [0, 0.0, 0.5, 1.0]
    assert M.auc_judd(p, fix) == pytest.approx(np.trapezoid(tp, fp))
    rng = np.random.default_rng(1)
    pred = rng.random((40, 40))
    fix = rng.random((40, 40)) < pred * 0.2  # fixations where the prediction is high
    assert M.auc_judd(pred, fix) == pytest.approx(roc_auc_score(fix.ravel(), pred.ravel()), abs=0.01)
    assert np.isnan(M.auc_judd(pred, np.zeros_like(fix)))
    assert M.auc_judd(np.full((40, 40), 0.3), fix) == pytest.approx(0.5, abs=0.05)  # ties broken: chance


def test_heatmap_metrics_split_empty_and_nonempty():
    g1 = np.zeros((8, 8))
    g1[2:4, 2:4] = 1
    g2 = np.zeros((8, 8))
    perfect = M.heatmap_metrics([g1, g2], [g1, g2])
    assert perfect["mse_all"] == 0 and perfect["mse_empty_gt"] == 0
    assert perfect["cc"] == pytest.approx(1) and perfect["sim"] == pytest.approx(1)
    assert perfect["n_nonempty"] == 1
    ranked = g1 + np.linspace(0, 0.01, 64).reshape(8, 8)  # distinct values, fixations on top
    assert M.heatmap_metrics([ranked], [g1])["auc_judd"] == pytest.approx(1)
    flat = M.heatmap_metrics([np.full((8, 8), 0.5), np.full((8, 8), 0.5)], [g1, g2])
    assert flat["mse_empty_gt"] == pytest.approx(0.25) and flat["cc"] == 0 and flat["nss"] == 0
    with pytest.raises(ValueError, match="shape"):
        M.heatmap_metrics([np.zeros((4, 4))], [g1])


def test_token_metrics_match_sklearn_pooled():
    rng = np.random.default_rng(2)
    preds = [list(rng.random(n)) for n in (3, 5, 7)]
    gts = [list((rng.random(n) > 0.6).astype(float)) for n in (3, 5, 7)]
    out = M.token_metrics(preds, gts)
    y_pred = np.concatenate([np.array(p) >= 0.5 for p in preds])
    y_true = np.concatenate([np.array(g) >= 0.5 for g in gts])
    assert out["precision"] == pytest.approx(precision_score(y_true, y_pred))
    assert out["recall"] == pytest.approx(recall_score(y_true, y_pred))
    assert out["f1"] == pytest.approx(f1_score(y_true, y_pred))
    with pytest.raises(ValueError, match="token"):
        M.token_metrics([[0.1]], [[0.0, 1.0]])


def test_noise_ceiling_leave_one_out():
    truth = np.linspace(1, 5, 30)
    perfect = M.rater_noise_ceiling(np.stack([truth, truth, truth], axis=1))
    assert perfect["srcc"] == pytest.approx(1.0)
    rng = np.random.default_rng(3)
    noisy = M.rater_noise_ceiling(np.stack([truth + rng.normal(0, 2, 30) for _ in range(3)], axis=1))
    assert 0 < noisy["srcc"] < 0.95


def test_word_f1_is_undefined_not_zero_when_no_word_is_flagged():
    none = M.token_metrics([[0.1, 0.2]], [[0.0, 0.0]])
    assert np.isnan(none["f1"]) and np.isnan(none["precision"]) and np.isnan(none["recall"])
    missed = M.token_metrics([[0.1, 0.2]], [[1.0, 0.0]])  # one side flags a word, the other misses it
    assert missed["f1"] == 0.0 and missed["recall"] == 0.0 and np.isnan(missed["precision"])
    # NaN tokens are unknown and left out; the rest still counts.
    assert M.token_metrics([[0.9, float("nan")]], [[1.0, 1.0]])["f1"] == 1.0


def test_record_analysis_averages_skip_undefined_word_f1():
    """The per-record word F1 of the error analysis: NaN for a record where neither side flags a
    word, so the table's mean is over records where F1 is defined (0 would have halved it)."""
    import pandas as pd

    rows = [M.token_metrics([p], [g])["f1"] for p, g in (([0.9], [1.0]), ([0.1], [0.0]))]
    assert rows[0] == 1.0 and np.isnan(rows[1])
    assert pd.Series(rows).mean() == 1.0
    g = np.zeros((4, 4))
    g[1, 1] = 1
    p_nan = np.full((4, 4), np.nan)
    agg = M.heatmap_metrics([g.copy(), p_nan], [g, g])
    assert agg["cc"] == pytest.approx(1.0) and agg["n_nonempty"] == 2


@pytest.mark.parametrize("call", [
    lambda: M.token_metrics([[0.1]], [[0.0], [1.0]]),
    lambda: M.token_metrics([[0.1]], [[0.0]], threshold=float("nan")),
    lambda: M.plcc([1, 2, 3], [1, 2]),
    lambda: M.srcc([[1, 2], [3, 4]], [[1, 2], [3, 4]]),
    lambda: M.kld(np.ones((1, 4)), np.ones((4, 1))),  # used to broadcast to 4×4 silently
])
def test_bad_metric_arguments_raise_readable_errors(call):
    from rhf_core.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError):
        call()
