"""make robustness: verdicts of the default run beside those of other world assumptions."""

from __future__ import annotations

import pandas as pd

from cft_utils.analysis.claims import COLUMNS
from cft_utils.report import robustness


def _claims(rows):
    return pd.DataFrame([{"claim": c, "cell": cell, "measure": "m", "estimate": e, "ci_low": e - 0.1,
                          "ci_high": e + 0.1, "n_seeds": 3, "n_items": 100, "verdict": v}
                         for c, cell, e, v in rows], columns=COLUMNS)


def test_rows_compare_verdicts_of_the_variants_that_ran_them():
    base = _claims([(1, "a", 0.0, "holds"), (2, "b", -0.2, "holds"), (5, "c", 0.1, "holds"), (6, "d", 0.3, "holds")])
    seed = _claims([(1, "a", 0.01, "holds"), (2, "b", -0.05, "inconclusive")])  # claims 5-6's notebooks not run
    share = _claims([(1, "a", 0.02, "holds"), (2, "b", -0.2, "holds"), (5, "c", 0.1, "fails")])  # nor claim 6's
    table = robustness.compare_tables(base, {"sandbox.seed=4321": seed, "sandbox.english_share=0.8": share})
    same = dict(zip(table["claim"], table["same_verdicts"], strict=True))
    assert same[1] is True or same[1] == True  # noqa: E712 (pandas boolean)
    assert same[2] == False  # noqa: E712
    assert same[5] == False  # noqa: E712 (compared with the one variant that ran it)
    assert pd.isna(same[6])  # no variant ran it
    text = robustness.summary(table)
    assert text.startswith("1 of 3 compared claims rows keep their verdict in every variant that ran them")
    assert "(1 of them, claims 5, by only some variants" in text
    assert "1 row(s) (claims 6) not compared" in text


def test_variants_are_named_setting_lists_and_the_makefile_runs_the_same_budget():
    from pathlib import Path

    label, overrides = robustness.parse_variant("sandbox.seed=4321")
    assert label == "sandbox.seed=4321" and overrides == {"sandbox.seed": 4321}
    label, overrides = robustness.parse_variant("short: training.epochs=1 mitigation.cells=[]")
    assert label == "short" and overrides == {"training.epochs": 1, "mitigation.cells": []}
    label, overrides = robustness.parse_variant(robustness.LONGER_BUDGET)
    assert label == "43-minute budget" and overrides["phase2_training.epochs"] == 2
    # make robustness runs the budget variant with exactly these settings (the Makefile cannot import them)
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    block = makefile.split("LONGER_BUDGET = ", 1)[1].split("\n\n", 1)[0]
    assert sorted(block.replace("\\", " ").split()) == sorted(robustness.LONGER_BUDGET.split(": ", 1)[1].split())
    import pytest

    with pytest.raises(ValueError, match="no KEY=VALUE"):
        robustness.parse_variant("name: ")
