"""A strategy registered from the tests folder, without editing the package, is planned, run and tabulated like the
built-in ones (smoke profile: one cell, the toy post-hoc step only)."""

from __future__ import annotations

import json

import pytest
from toy_strategy import CopyPhase2

from cft_utils.config import ConfigError, load_config
from cft_utils.evaluation.mitigation_scores import probe_tidy
from cft_utils.evaluation.mitigation_tables import (
    mitigation_checks,
    mitigation_paper_table,
    mitigation_results,
)
from cft_utils.mitigation import base, registry
from cft_utils.mitigation.execute import execute_mitigation
from cft_utils.mitigation.plan import plan_mitigations, run_table
from cft_utils.plan import plan_runs
from cft_utils.train import execute

SHARED_HOME = "cft-home-smoke"  # the same folder as test_train.shared_smoke_home


def overrides(**more) -> dict:
    """One cell, the toy strategy (two runs) and reversion (fresh dicts: loading may write into them)."""
    return {"mitigation.cells": [{"phase1": "Instruct", "data": "multialpaca", "table": "3"}],
            "mitigation.strategies": {"toy_copy": {"copies": [1, 2]}, "reversion": {"amounts": [0.25]}}, **more}


@pytest.fixture
def toy():
    base.register(CopyPhase2())
    yield
    base.unregister("toy_copy")


def test_an_unregistered_strategy_is_a_config_error():
    with pytest.raises(ConfigError, match=r"smoke.yaml: mitigation.strategies.toy_copy: unknown strategy"):
        plan_mitigations(load_config("smoke", overrides()))


def test_a_toy_strategy_is_planned_with_its_parameters(toy, tmp_path, monkeypatch):
    monkeypatch.setenv("CFT_HOME", str(tmp_path))
    assert "toy_copy" in registry.strategies()
    runs = plan_mitigations(load_config("smoke", overrides()))
    assert [r.strategy for r in runs] == ["Toy_1", "Toy_2", "Revert_0.25"]
    toy_run = runs[0]
    assert toy_run.variant.strategy == "toy_copy" and toy_run.variant.params == {"copy": 1, "note": "a copy of the "
                                                                                  "Phase 2 model"}
    assert toy_run.cell == "mitigation/tiny-llama/Instruct->multialpaca/Toy_1" and toy_run.variant.table == "3"
    assert len({r.run_id for r in runs}) == 3
    # its parameters are validated like a built-in's
    with pytest.raises(ConfigError, match=r"mitigation.strategies.toy_copy.copies.0: Input should be a valid int"):
        plan_mitigations(load_config("smoke", overrides(**{"mitigation.strategies.toy_copy.copies": ["x"]})))
    assert registry.table_order("Toy_2") < registry.table_order("Interp_0.5")
    assert registry.table_order("ER_10") < registry.table_order("Toy_1") < registry.table_order("Toy_2")


@pytest.mark.slow
def test_a_toy_strategy_runs_and_is_tabulated(toy, tmp_path_factory, monkeypatch):
    home = tmp_path_factory.getbasetemp() / SHARED_HOME
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("CFT_HOME", str(home))
    cfg = load_config("smoke", overrides())
    plan = plan_runs(cfg)
    runs = [r for r in plan_mitigations(cfg, plan) if r.variant.strategy == "toy_copy"]
    for r in {r.baseline.run_id: r.baseline for r in runs}.values():  # the cell's Phase 1 and Phase 2 runs
        execute(r.parent, cfg)
        execute(r, cfg)
    for r in runs:
        execute_mitigation(r, cfg)
    assert run_table(runs)["done"].all()
    info = json.loads((runs[0].dir / "mitigation.json").read_text())
    assert info["kind"] == "toy_copy" and info["copied_from"] == str(runs[0].baseline.model_dir)
    assert list(mitigation_checks(runs)["copied_from"]) == [str(r.baseline.model_dir) for r in runs]
    tidy = probe_tidy(cfg, runs)
    ta, la = ("EM-A", "EM-B", "EM-C"), ("EM-A-xx", "EM-B-xx", "EM-C-xx")
    results = mitigation_results(tidy, runs, {b: "exact_match" for b in ta + la}, ta=ta, la=la)
    assert list(results.strategy) == ["P1", "none", "Toy_1", "Toy_2"]
    row = results.set_index("strategy")
    for col in ("TA_avg", "LA_avg"):  # a copy of the Phase 2 model scores exactly as the Phase 2 model
        assert row.loc["Toy_1", col] == row.loc["none", col] == row.loc["Toy_2", col]
    t3 = mitigation_paper_table(results, "3", "multialpaca", ta=ta, la=la)
    assert list(t3.strategy) == ["P1", "none", "Toy_1", "Toy_2"] and {"TA_avg", "LA_avg"} <= set(t3.columns)
