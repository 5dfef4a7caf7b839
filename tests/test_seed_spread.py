"""Seeds that collapse a benchmark are flagged, not averaged away (cft_utils.evaluation.tables.seed_spread)."""

from __future__ import annotations

import pandas as pd

from cft_utils.config import load_config
from cft_utils.evaluation import tables


def _tidy(values, shared=False, benchmark="IFEval", metric="prompt_level_strict_acc", stderr=0.02):
    return pd.DataFrame([
        {"model": "m", "phase1_data": "a", "phase2_data": "x", "strategy": "none", "checkpoint": "P2", "seed": str(s),
         "benchmark": benchmark, "language": "en", "metric": metric, "value": v, "stderr": stderr, "n": 400,
         "run_id": "shared" if shared else f"r{s}"} for s, v in enumerate(values, start=1)])


def test_a_collapsed_seed_is_flagged_with_its_gap_in_standard_errors():
    cfg = load_config("sandbox")
    out = tables.seed_spread(cfg, _tidy([0.31, 0.02, 0.33]))
    flagged = out[out.flagged]
    assert list(flagged["seed"]) == [2]
    assert flagged["gap"].iloc[0] == __import__("pytest").approx(0.02 - 0.31)
    assert flagged["gap_se"].iloc[0] < -3
    # the same spread within the items' noise is not flagged; nor is a large-SE gap below min_gap
    assert not tables.seed_spread(cfg, _tidy([0.31, 0.29, 0.33])).flagged.any()
    assert not tables.seed_spread(cfg, _tidy([0.31, 0.28, 0.33], stderr=0.001)).flagged.any()
    # an off-the-shelf checkpoint (one model for every seed) and the wrong metric are left out
    assert tables.seed_spread(cfg, _tidy([0.3, 0.0, 0.3], shared=True)).empty
    assert tables.seed_spread(cfg, _tidy([0.3, 0.0, 0.3], metric="inst_level_strict_acc")).empty


def test_answer_language_is_joined_from_the_probe_and_missing_without_one():
    cfg = load_config("sandbox")
    spread = tables.seed_spread(cfg, _tidy([0.31, 0.02, 0.33]))
    probe = pd.DataFrame([{"model": "m", "phase1_data": "a", "phase2_data": "x", "strategy": "none",
                           "checkpoint": "P2", "seed": s, "family": f, "language": "en", "in_language": v}
                          for s, f, v in [(1, "A", 1.0), (2, "A", 0.1), (2, "B", 0.3), (3, "A", 0.9)]])
    out = tables.with_answer_language(spread, probe).set_index("seed")["in_language"]
    assert out[2] == __import__("pytest").approx(0.2) and out[1] == 1.0
    assert tables.with_answer_language(spread, None)["in_language"].isna().all()
