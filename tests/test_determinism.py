"""Same machine, same seeds: training the smoke grid twice from an empty CFT_HOME gives bit-identical weights, the
same evaluation scores and an identical claims table (issue 12)."""

from __future__ import annotations

import hashlib

import pytest

from cft_utils import executor
from cft_utils.analysis.claims import grid_claims
from cft_utils.config import load_config
from cft_utils.evaluation.runner import evaluate_runs, plan_cells
from cft_utils.plan import plan_runs


def _grid(home, monkeypatch):
    monkeypatch.setenv("CFT_HOME", str(home))
    cfg = load_config("smoke", {"seeds": [7, 8], "mitigation": None, "grid.phase1": ["alpaca"],
                                "grid.phase2": [{"phase1": "alpaca", "data": "multialpaca"},
                                                {"phase1": "Instruct", "data": "multialpaca"}]})
    plan = plan_runs(cfg)
    executor.execute_runs(cfg, plan.all(), progress=False)
    tidy = evaluate_runs(cfg, plan_cells(cfg), progress=False)
    claims = grid_claims(cfg, ["ta", "la"])
    weights = {r.name: hashlib.sha256((r.model_dir / "model.safetensors").read_bytes()).hexdigest()
               for r in plan.all()}
    return weights, tidy, claims


@pytest.mark.slow
def test_smoke_grid_twice_gives_identical_weights_scores_and_claims(tmp_path, monkeypatch):
    w1, t1, c1 = _grid(tmp_path / "a", monkeypatch)
    w2, t2, c2 = _grid(tmp_path / "b", monkeypatch)
    assert w1 == w2 and len(w1) == 7  # 2 seeds x (1 Phase 1 set + 2 Phase 2 cells) + the Instruct model
    cols = ["model", "phase1_data", "phase2_data", "checkpoint", "seed", "benchmark", "language", "metric", "value"]
    assert t1[cols].equals(t2[cols])
    assert len(c1) and c1.equals(c2)
    assert set(c1["n_seeds"]) == {2}
