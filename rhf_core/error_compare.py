"""Two RAHF checkpoints on the same records: which one gets each record right.

The inputs are two error-analysis tables (`rhf_core.rahf.analysis.analyse`, one per checkpoint, over
the same records). Every disagreement column there is an error, lower is better, so a checkpoint
"gets a record right" when its error on that record is at most a threshold the user sets. A record
whose error is undefined for either checkpoint (e.g. 1 − CC where the labelled map is empty), or
that only one table holds (its image could not be read for one run), is left out and counted, never
scored as right or wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rhf_core.errors import InvalidArgumentError
from rhf_core.rahf.analysis import DISAGREEMENT

VERDICTS = ("both right", "only A", "only B", "neither")
# A starting threshold per kind of error (the page lets the user move it): a score off by at most
# 0.1 on the 0–1 scale, a heatmap with CC ≥ 0.5, a prompt with no word wrongly flagged or missed.
DEFAULT_THRESHOLDS = {**{c: 0.1 for c in DISAGREEMENT if c.startswith("abs_err_")},
                      **{c: 0.5 for c in DISAGREEMENT if c.startswith("one_minus_cc_")},
                      "word_errors": 0.0}


@dataclass(frozen=True)
class ErrorComparison:
    """Per-record errors of checkpoints A and B on one disagreement column, and the verdicts.

    `rows` has columns id, prompt, error_a, error_b, difference (B − A: > 0 where A is better) and
    verdict (one of VERDICTS), in table A's record order."""

    rows: pd.DataFrame
    column: str
    threshold: float
    n_undefined: int  # records in both tables with the error undefined for A or B
    n_one_side: int  # records that only one of the two tables holds

    def counts(self) -> dict[str, int]:
        """Records per verdict, every verdict present (0 when none)."""
        found = self.rows["verdict"].value_counts()
        return {v: int(found.get(v, 0)) for v in VERDICTS}

    def better(self) -> dict[str, int]:
        """Records where A's error is lower, where B's is, and where they are equal."""
        d = self.rows["difference"].to_numpy()
        return {"A lower": int((d > 0).sum()), "B lower": int((d < 0).sum()), "equal": int((d == 0).sum())}


def check_column(column: str) -> None:
    if column not in DISAGREEMENT:
        raise InvalidArgumentError(f"`{column}` is not an error column of the error analysis; "
                                   f"compare on one of: {', '.join(DISAGREEMENT)}")


def check_threshold(threshold: float) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"the threshold must be a number ≥ 0, not {threshold!r}") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidArgumentError(f"the threshold must be a finite number ≥ 0 (an error at most this is "
                                   f"right), not {threshold!r}")
    return value


def verdicts(error_a: np.ndarray, error_b: np.ndarray, threshold: float) -> np.ndarray:
    """Per record, one of VERDICTS: which of A and B have their error ≤ threshold."""
    right_a = np.asarray(error_a, dtype=float) <= threshold
    right_b = np.asarray(error_b, dtype=float) <= threshold
    out = np.full(right_a.shape, VERDICTS[3], dtype=object)
    out[right_a & right_b] = VERDICTS[0]
    out[right_a & ~right_b] = VERDICTS[1]
    out[~right_a & right_b] = VERDICTS[2]
    return out


def compare_errors(table_a: pd.DataFrame, table_b: pd.DataFrame, column: str, threshold: float) -> ErrorComparison:
    """Join two error-analysis tables on `id` and say, per record, which checkpoint gets it right."""
    check_column(column)
    threshold = check_threshold(threshold)
    for name, table in (("A", table_a), ("B", table_b)):
        if "id" not in table:
            raise InvalidArgumentError(f"table {name} has no `id` column: pass the tables `analyse` returns")

    def errors(table: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame({"id": table["id"].astype(str)})
        out["prompt"] = table["prompt"].astype(str).to_numpy() if "prompt" in table else ""
        out["error"] = pd.to_numeric(table[column], errors="coerce").to_numpy() if column in table else np.nan
        return out.drop_duplicates("id")

    a, b = errors(table_a), errors(table_b)
    both = a.merge(b[["id", "error"]], on="id", how="inner", suffixes=("_a", "_b"))
    n_one_side = len(set(a["id"]) ^ set(b["id"]))
    defined = both["error_a"].notna() & both["error_b"].notna()
    rows = both[defined].reset_index(drop=True)
    rows["difference"] = rows["error_b"] - rows["error_a"]
    rows["verdict"] = verdicts(rows["error_a"].to_numpy(), rows["error_b"].to_numpy(), threshold)
    return ErrorComparison(rows, column, threshold, int((~defined).sum()), n_one_side)
