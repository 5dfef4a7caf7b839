"""make robustness: verdicts of the default run beside those of other world assumptions."""

from __future__ import annotations

import pandas as pd

from cft_utils.analysis.claims import COLUMNS
from cft_utils.report import robustness


def _claims(rows):
    return pd.DataFrame([{"claim": c, "cell": cell, "measure": "m", "estimate": e, "ci_low": e - 0.1,
                          "ci_high": e + 0.1, "n_seeds": 3, "n_items": 100, "verdict": v}
                         for c, cell, e, v in rows], columns=COLUMNS)


def test_rows_compare_verdicts_and_rows_a_variant_did_not_run_are_not_counted():
    base = _claims([(1, "a", 0.0, "holds"), (2, "b", -0.2, "holds"), (5, "c", 0.1, "holds")])
    seed = _claims([(1, "a", 0.01, "holds"), (2, "b", -0.05, "inconclusive")])  # claim 5's notebook not run
    share = _claims([(1, "a", 0.02, "holds"), (2, "b", -0.2, "holds"), (5, "c", 0.1, "holds")])
    table = robustness.compare_tables(base, {"sandbox.seed=4321": seed, "sandbox.english_share=0.8": share})
    same = dict(zip(table["claim"], table["same_verdicts"], strict=True))
    assert same[1] is True or same[1] == True  # noqa: E712 (pandas boolean)
    assert same[2] == False  # noqa: E712
    assert pd.isna(same[5])
    text = robustness.summary(table)
    assert text.startswith("1 of 2 compared claims rows keep their verdict")
    assert "1 row(s) (claims 5) not compared" in text
