"""Two checkpoints' error tables compared record by record (rhf_core/error_compare.py)."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rhf_core.error_compare import DEFAULT_THRESHOLDS, VERDICTS, compare_errors, verdicts
from rhf_core.errors import InvalidArgumentError
from rhf_core.rahf.analysis import DISAGREEMENT


def table(ids, errors, column="abs_err_plausibility"):
    return pd.DataFrame({"id": ids, "prompt": [f"p {i}" for i in ids], column: errors})


def test_each_record_gets_the_verdict_its_two_errors_say():
    a = table(["r1", "r2", "r3", "r4"], [0.05, 0.05, 0.30, 0.30])
    b = table(["r4", "r3", "r2", "r1"], [0.02, 0.40, 0.50, 0.10])  # another order: joined on id
    cmp = compare_errors(a, b, "abs_err_plausibility", 0.1)
    assert cmp.rows["id"].tolist() == ["r1", "r2", "r3", "r4"]  # A's order
    assert cmp.rows["verdict"].tolist() == ["both right", "only A", "neither", "only B"]
    assert cmp.counts() == {"both right": 1, "only A": 1, "only B": 1, "neither": 1}
    assert np.allclose(cmp.rows["difference"], [0.05, 0.45, 0.10, -0.28])
    assert cmp.better() == {"A lower": 3, "B lower": 1, "equal": 0}
    assert cmp.rows["prompt"].tolist() == ["p r1", "p r2", "p r3", "p r4"]


def test_the_threshold_is_inclusive():
    cmp = compare_errors(table(["x"], [0.1]), table(["x"], [0.1000001]), "abs_err_plausibility", 0.1)
    assert cmp.rows["verdict"].tolist() == ["only A"]


def test_undefined_errors_and_one_sided_records_are_left_out_and_counted():
    a = table(["r1", "r2", "r3", "only-a"], [0.2, np.nan, 0.1, 0.0], "one_minus_cc_implausibility")
    b = table(["r1", "r2", "r3", "only-b"], [0.6, 0.1, np.nan, 0.0], "one_minus_cc_implausibility")
    cmp = compare_errors(a, b, "one_minus_cc_implausibility", 0.5)
    assert cmp.rows["id"].tolist() == ["r1"] and cmp.counts()["only A"] == 1
    assert cmp.n_undefined == 2 and cmp.n_one_side == 2


def test_a_table_without_the_column_leaves_every_record_undefined():
    a = table(["r1", "r2"], [0.1, 0.2])
    b = pd.DataFrame({"id": ["r1", "r2"], "prompt": ["", ""]})  # an unlabelled run: no error column
    cmp = compare_errors(a, b, "abs_err_plausibility", 0.1)
    assert len(cmp.rows) == 0 and cmp.n_undefined == 2
    assert cmp.counts() == dict.fromkeys(VERDICTS, 0)


@pytest.mark.parametrize("column, threshold, message", [
    ("pred_plausibility", 0.1, "abs_err_plausibility"),  # a prediction, not an error: names what is
    ("abs_err_plausibility", -0.1, "≥ 0"),
    ("abs_err_plausibility", float("nan"), "finite"),
    ("abs_err_plausibility", "high", "number"),
])
def test_bad_column_or_threshold_is_refused_with_what_is_allowed(column, threshold, message):
    with pytest.raises(InvalidArgumentError, match=message):
        compare_errors(table(["r"], [0.1]), table(["r"], [0.1]), column, threshold)


def test_tables_without_ids_are_refused():
    with pytest.raises(InvalidArgumentError, match="no `id` column"):
        compare_errors(pd.DataFrame({"abs_err_plausibility": [0.1]}), table(["r"], [0.1]), "abs_err_plausibility", 0.1)


def test_every_error_column_has_a_default_threshold():
    assert set(DEFAULT_THRESHOLDS) == set(DISAGREEMENT) and all(v >= 0 for v in DEFAULT_THRESHOLDS.values())


errors = st.lists(st.one_of(st.floats(0, 2), st.just(float("nan"))), min_size=0, max_size=40)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(errors, errors, st.floats(0, 2))
def test_counts_add_up_and_swapping_a_and_b_swaps_only_a_and_only_b(err_a, err_b, threshold):
    n = min(len(err_a), len(err_b))
    ids = [f"r{i}" for i in range(n)]
    ab = compare_errors(table(ids, err_a[:n]), table(ids, err_b[:n]), "abs_err_plausibility", threshold)
    ba = compare_errors(table(ids, err_b[:n]), table(ids, err_a[:n]), "abs_err_plausibility", threshold)
    c_ab, c_ba = ab.counts(), ba.counts()
    assert sum(c_ab.values()) + ab.n_undefined == n
    assert (c_ab["only A"], c_ab["only B"]) == (c_ba["only B"], c_ba["only A"])
    assert c_ab["both right"] == c_ba["both right"] and c_ab["neither"] == c_ba["neither"]
    right_a = ab.rows["error_a"] <= threshold
    assert (ab.rows["verdict"].isin(["both right", "only A"]) == right_a).all()
    assert np.allclose(ab.rows["difference"], ab.rows["error_b"] - ab.rows["error_a"])


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=30), st.floats(0, 1), st.floats(0, 1))
def test_raising_the_threshold_never_turns_a_right_record_wrong(errs, t1, t2):
    low, high = sorted((t1, t2))
    e = np.array(errs)
    before, after = verdicts(e, e, low), verdicts(e, e, high)
    assert ((before == "both right") <= (after == "both right")).all()
