"""Every mitigation run of a profile: each strategy of ``mitigation.strategies`` on each cell of
``mitigation.cells``, as a typed :class:`cft_utils.runs.RunPlan` (nothing is run here).

A run's id hashes what it does: a training strategy's run is its cell's Phase 2 run (same parent, data, seed) with
the strategy's label, resolved parameters and hyper-parameters; a post-hoc run hashes the Phase 1 and Phase 2 run
ids and its parameters. A sweep (replay shares, frozen-layer budgets, α) is therefore a change of the parameter file.
The strategies' parameters are validated against the registry first (:func:`cft_utils.mitigation.registry.validate`).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..config import ConfigError, ExperimentConfig
from ..plan import Plan, plan_runs, semantic_hparams
from ..runs import RunPlan, Variant, read_summary, run_id
from .base import Cell
from .registry import strategy_of, validate


def plan_mitigations(cfg: ExperimentConfig, plan: Plan | None = None) -> list[RunPlan]:
    """Every mitigation run of the profile (empty without a ``mitigation`` section), in the order of the cells,
    their models, the training seeds and the profile's strategies. Each run has ``parent`` (the Phase 1 run),
    ``baseline`` (the unmitigated Phase 2 run of the cell, same seed) and ``variant`` (strategy, label, resolved
    parameters, paper table); its name ends in ``/s<seed>`` like its baseline's."""
    mit = cfg.mitigation
    if mit is None:
        return []
    chosen = validate(cfg)
    plan = plan or plan_runs(cfg)
    where = cfg.source_file or "<config>"
    out = []
    names = {strategy.name for strategy, _ in chosen}
    for i, cell in enumerate(mit.cells):
        unknown = sorted(set(cell.strategies or ()) - names)
        if unknown:
            raise ConfigError(f"invalid parameter file\n  {where}: mitigation.cells.{i}.strategies: {unknown} are not "
                              f"in mitigation.strategies ({sorted(names)})")
        for model, baseline in _baselines(plan, cell, cell.models or cfg.grid.models):
            c = Cell(cfg, model, baseline.parent, baseline, cell.table)
            labels: dict[str, str] = {}
            for strategy, params in chosen:
                if cell.strategies is not None and strategy.name not in cell.strategies:
                    continue
                try:
                    variants = strategy.variants(params, c)
                except ValueError as e:
                    raise ConfigError(f"invalid parameter file\n  {where}: {e}") from None
                for label, resolved_params in variants:
                    if label in labels:
                        raise ConfigError(f"invalid parameter file\n  {where}: mitigation.strategies.{strategy.name}:"
                                          f" duplicate label {label!r} (also from {labels[label]})")
                    labels[label] = strategy.name
                    out.append(_run(strategy, label, resolved_params, c, cell.phase1, cell.data))
    return out


def _baselines(plan: Plan, cell, models: Sequence[str]):
    for model in models:
        name = f"phase2/{model}/{cell.phase1}->{cell.data}"
        found = [r for r in plan.phase2 if r.cell == name]
        if not found:
            plan.get(name)  # raises, listing the runs there are
        for baseline in found:
            yield model, baseline


def _run(strategy, label: str, params: dict, cell: Cell, phase1: str, data: str) -> RunPlan:
    parent, baseline = cell.parent, cell.baseline
    if strategy.kind == "posthoc":
        hp = baseline.hparams
        resolved = {"posthoc": strategy.name, "p1": parent.run_id, "p2": baseline.run_id, "params": params}
    else:
        hp = strategy.hparams(params, baseline.hparams)
        resolved = {**baseline.resolved, "hparams": semantic_hparams(hp), "strategy": label,
                    "strategy_params": params}
    seed = baseline.seed
    name = f"mitigation/{cell.model}/{phase1}->{data}/{label}" + (f"/s{seed}" if seed is not None else "")
    return RunPlan(name=name, phase=2, model=cell.model,
                   phase1_data=phase1, phase2_data=data, strategy=label, data_key=data,
                   init=f"run:{parent.run_id}", hparams=hp, resolved=resolved, run_id=run_id(resolved, "mt"),
                   parent=parent, baseline=baseline,
                   variant=Variant(strategy=strategy.name, label=label, params=params, table=cell.table), seed=seed)


def select(runs: Sequence[RunPlan], *, kind: str | None = None, adds_records: bool | None = None) -> list[RunPlan]:
    """The runs whose strategy is of ``kind`` (``training`` / ``posthoc``) and, with ``adds_records``, whose
    strategy does (not) add records to Phase 2 (the replay strategies: notebook 07; the others: notebook 08)."""
    out = []
    for r in runs:
        s = strategy_of(r)
        if kind is not None and s.kind != kind:
            continue
        if adds_records is not None and getattr(s, "adds_records", False) != adds_records:
            continue
        out.append(r)
    return out


def baselines(runs: Sequence[RunPlan]) -> list[RunPlan]:
    """The unmitigated Phase 2 runs of the runs' cells, once each, in order."""
    return list({r.baseline.run_id: r.baseline for r in runs}.values())


def run_table(runs: Sequence[RunPlan]):
    """One row per mitigation run: ids, cell, strategy, table, done, and (when done) its summary's key numbers."""
    import pandas as pd

    rows = []
    for r in runs:
        s = read_summary(r) or {}
        rows.append({"run": r.name, "run_id": r.run_id, "model": r.model, "phase1_data": r.phase1_data,
                     "phase2_data": r.phase2_data, "strategy": r.strategy, "table": r.variant.table,
                     "done": r.done(), "n_records": s.get("n_records"), "n_replay": s.get("n_extra_records"),
                     "trainable_parameters": s.get("trainable_parameters"), "final_loss": s.get("final_loss"),
                     "runtime_s": s.get("runtime_s")})
    return pd.DataFrame(rows)
