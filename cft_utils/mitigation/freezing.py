"""Which layers (or heads) each planned layer-freezing run freezes: the one LF_H2 selector's output
(:func:`cft_utils.mitigation.freeze.select_lf_h2`) and LF_H1's seeded draw, as tables for notebook 06 (where the
base -> Phase 1 change is measured) and notebook 08 (where the freezing runs train).

The plans are computed from the runs' own parameters (the frozen budget resolved when planning) and their Phase 1
models, exactly as the runs compute them when they train.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..config import ExperimentConfig
from ..plan import Plan
from ..runs import RunPlan
from .freeze import FreezePlan, FreezingStrategy
from .plan import plan_mitigations
from .registry import strategy_of

_PLANS: dict[str, FreezePlan] = {}  # run id -> its freeze plan (deterministic: the id hashes what decides it)


def freezing_runs(cfg: ExperimentConfig, plan: Plan | Sequence[RunPlan] | None = None) -> list[RunPlan]:
    """The planned runs of layer-freezing strategies (``plan``: the grid's Plan, or mitigation runs)."""
    runs = list(plan) if plan is not None and not isinstance(plan, Plan) else plan_mitigations(cfg, plan)
    return [r for r in runs if isinstance(strategy_of(r), FreezingStrategy)]


def freeze_plan(cfg: ExperimentConfig, run: RunPlan) -> FreezePlan:
    """The :class:`FreezePlan` of a freezing run (its Phase 1 model must be trained; LF_H2 streams checkpoints)."""
    if run.run_id not in _PLANS:
        if not run.parent.done():
            raise RuntimeError(f"{run.name}: its Phase 1 run {run.parent.name} is not done; run notebooks 01-02 first")
        _PLANS[run.run_id] = strategy_of(run).freeze_plan(run, cfg)
    return _PLANS[run.run_id]


def planned_freezes(cfg: ExperimentConfig, plan: Plan | Sequence[RunPlan] | None = None):
    """One row per planned freezing run and module: the cell, the strategy label, the module (``block`` for a
    whole decoder block), the frozen layers (most changed first for LF_H2) or heads ((layer, head) pairs), the
    budget ``n_frozen_layers`` and the model's layer count."""
    import pandas as pd

    rows = []
    for r in freezing_runs(cfg, plan):
        fp = freeze_plan(cfg, r)
        cell = {"model": r.model, "phase1_data": r.phase1_data, "phase2_data": r.phase2_data,
                "table": r.variant.table, "strategy": r.strategy, "run": r.name}
        budget = {"n_frozen_layers": r.variant.params["n_frozen_layers"], "num_layers": fp.details.get("num_layers")}
        if fp.blocks:
            rows.append({**cell, "module": "block", "layers": list(fp.blocks), "heads": None, **budget})
        for module, layers in fp.modules.items():
            rows.append({**cell, "module": module, "layers": list(layers), "heads": None, **budget})
        for module, heads in fp.heads.items():
            rows.append({**cell, "module": module, "layers": sorted({h[0] for h in heads}),
                         "heads": [tuple(h) for h in heads], **budget})
    return pd.DataFrame(rows, columns=["model", "phase1_data", "phase2_data", "table", "strategy", "run", "module",
                                       "layers", "heads", "n_frozen_layers", "num_layers"])


def layer_changes(cfg: ExperimentConfig, plan: Plan | Sequence[RunPlan] | None = None, value: str = "abs_change"):
    """The base -> Phase 1 change LF_H2 ranks by: one row per (model, Phase 1 model, layer), one column per module
    (``value``: ``abs_change``, ``rel_change`` or ``rank``); once per Phase 1 model (layer granularity)."""
    import pandas as pd

    parts, seen = [], set()
    for r in freezing_runs(cfg, plan):
        fp = freeze_plan(cfg, r)
        key = (r.parent.run_id, r.variant.params.get("measure"))
        if "ranking" not in fp.details or fp.heads or key in seen:
            continue
        seen.add(key)
        parts.append(pd.DataFrame(fp.details["ranking"]).assign(model=r.model, phase1_data=r.phase1_data))
    if not parts:
        return pd.DataFrame()
    return pd.concat(parts).pivot_table(index=["model", "phase1_data", "layer"], columns="module", values=value)
