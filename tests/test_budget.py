"""Variance components, projected interval widths and projected `make reproduce` minutes (cft_utils.report.budget)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cft_utils.analysis import intervals
from cft_utils.analysis.claims import PRECISION_COLUMNS, projected_widths
from cft_utils.report import budget, findings


def _crossed(rng, n_seeds, n_items, sd_seed, sd_item, sd_res):
    return (rng.normal(0, sd_seed, (n_seeds, 1)) + rng.normal(0, sd_item, (1, n_items))
            + rng.normal(0, sd_res, (n_seeds, n_items)))


def test_variance_components_recover_known_components():
    rng = np.random.default_rng(0)
    c = intervals.variance_components(_crossed(rng, 40, 2000, 0.1, 0.3, 0.2))
    assert c.seed == pytest.approx(0.01, rel=0.5)
    assert c.item == pytest.approx(0.09, rel=0.1)
    assert c.residual == pytest.approx(0.04, rel=0.05)
    one = intervals.variance_components(np.array([[0.0, 1.0, 0.0, 1.0]]))
    assert one.seed == 0 and one.residual == 0 and one.item == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="at least 2 items"):
        intervals.variance_components(np.zeros((3, 1)))


def test_projected_half_width_matches_the_spread_of_simulated_means():
    rng = np.random.default_rng(1)
    sds = (0.05, 0.3, 0.2)
    means = [_crossed(rng, 3, 200, *sds).mean() for _ in range(3000)]
    truth = intervals.Components(sds[0] ** 2, sds[1] ** 2, sds[2] ** 2, 3, 200)
    half = intervals.projected_half_width({"b": truth}, 3)
    assert half == pytest.approx(1.96 * np.std(means), rel=0.08)
    # more seeds shrink the seed part only; more items the item part only
    assert intervals.projected_half_width({"b": truth}, 12) < half
    assert intervals.projected_half_width({"b": truth}, 3, 4.0) < half
    no_seed = intervals.Components(0.0, 0.09, 0.0, 3, 200)
    assert intervals.projected_half_width({"b": no_seed}, 30) == pytest.approx(
        intervals.projected_half_width({"b": no_seed}, 3))


def _precision():
    return pd.DataFrame([
        {"cell": "m: a -> x", "measure": "ΔTA_avg (P2 − P1)", "benchmark": "B1", "n_seeds": 3, "n_items": 400,
         "var_seed": 0.001, "var_item": 0.1, "var_residual": 0.05},
        {"cell": "m: a -> x", "measure": "ΔTA_avg (P2 − P1)", "benchmark": "B2", "n_seeds": 3, "n_items": 150,
         "var_seed": 0.002, "var_item": 0.1, "var_residual": 0.05},
        {"cell": "m: b -> y", "measure": "ΔTA_avg (P2 − P1)", "benchmark": "B1", "n_seeds": 3, "n_items": 400,
         "var_seed": 0.0, "var_item": 0.05, "var_residual": 0.01}], columns=PRECISION_COLUMNS)


def test_budget_table_widths_shrink_and_minutes_grow_with_seeds_and_items():
    costs = {"train_s_per_seed": 600.0, "eval_s_per_seed": 120.0, "train_s_once": 200.0, "eval_s_once": 30.0,
             "n_seeds": 3}
    timing = {"cpu_s": 4000.0, "cpu_over_wall": 1.8, "wall_s": 2222.0}
    # at the measured sizes the projection gives back the measured wall time
    assert budget.projected_minutes(costs, timing, 3, 1.0) == pytest.approx(2222.0 / 60, rel=0.01)
    assert budget.projected_minutes(costs, timing, 5, 1.0) == pytest.approx((4000 + 2 * 720) / 1.8 / 60)
    assert budget.projected_minutes(costs, timing, 3, 2.0) == pytest.approx((4000 + 3 * 120 + 30) / 1.8 / 60)
    table = budget.budget_table(_precision(), costs, timing, seeds=(3, 10), item_factors=(1, 4))
    assert len(table) == 4
    base = table[(table.n_seeds == 3) & (table.item_factor == 1)].iloc[0]
    more = table[(table.n_seeds == 10) & (table.item_factor == 4)].iloc[0]
    assert more.half_width_max < base.half_width_max and more.minutes > base.minutes
    assert base.half_width_max >= base.half_width_min
    widths = projected_widths(_precision(), [3], [1])
    assert set(widths["cell"]) == {"m: a -> x", "m: b -> y"}
    # without costs the minutes are missing, never 0
    assert budget.budget_table(_precision(), None, None)["minutes"].isna().all()


def test_findings_render_the_budget_and_timing_from_the_snapshot_meta():
    claims = pd.DataFrame([{"claim": 2, "cell": "m: b -> y", "measure": "ΔTA_avg (P2 − P1)", "estimate": -0.1,
                            "ci_low": -0.13, "ci_high": -0.07, "n_seeds": 3, "n_items": 900, "verdict": "holds"}])
    meta = {"output_name": "x", "commit": "abc", "seeds": [1, 2, 3], "machine": "m", "date": "d",
            "timing": {"wall_s": 1800.0, "cpu_s": 3400.0, "cpu_over_wall": 1.89, "cores": 2,
                       "notebooks": [{"notebook": "01_phase1_sft.ipynb", "wall_s": 600.0, "cpu_s": 1100.0}]},
            "costs": {"train_s_per_seed": 600.0, "eval_s_per_seed": 120.0, "train_s_once": 200.0,
                      "eval_s_once": 30.0, "n_seeds": 3},
            "precision": _precision().to_dict(orient="records")}
    out = findings.render(claims, meta)
    assert "30.0 min wall" in out and "1.89x wall" in out and "01 10.0" in out
    assert "| training seeds | test items |" in out and "| 10 | 4x |" in out


def test_benchmarks_that_cannot_grow_keep_their_items_in_the_projection():
    truth = intervals.Components(0.0, 0.09, 0.01, 3, 200)
    grows, fixed = intervals.projected_half_width({"b": truth}, 3, 4.0), intervals.projected_half_width(
        {"b": truth}, 3, 4.0, fixed_items={"b"})
    assert grows < fixed == pytest.approx(intervals.projected_half_width({"b": truth}, 3, 1.0))
    # a table where B1 is fixed: more items only shrink B2's part, so the one-benchmark cell does not move
    table = budget.budget_table(_precision(), None, None, seeds=(3,), item_factors=(1, 4), fixed_items=["B1"])
    assert table.set_index("item_factor").loc[4, "half_width_min"] == pytest.approx(
        table.set_index("item_factor").loc[1, "half_width_min"])
    text = "\n".join(budget.render_budget(_precision(), None, None, fixed_items=["B1"]))
    assert "but the B1-like, which already hold every item" in text
    assert "but the" not in "\n".join(budget.render_budget(_precision(), None, None))


def test_fixed_size_benchmarks_per_profile():
    from cft_utils.config import load_config

    assert sorted(budget.fixed_size_benchmarks(load_config("sandbox"))) == ["HellaSwag", "MMLU"]
    paper = load_config("paper")
    assert budget.fixed_size_benchmarks(paper) == list(paper.evaluation.benchmarks)  # public sets cannot grow
