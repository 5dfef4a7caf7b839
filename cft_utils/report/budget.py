"""What more compute would buy: interval half-widths and `make reproduce` minutes for more seeds or test items.

Three measured inputs, all written by a finished ``make reproduce``:

* the variance components of each Phase 2 cell's P1 → P2 differences, per benchmark
  (:func:`cft_utils.analysis.claims.grid_precision`: how much seeds, items and their interaction move a difference);
* what the runs cost (:func:`measured_costs`): training seconds (``summary.json``) and evaluation seconds (the
  evaluation caches) of every run, split into what is repeated per training seed and what exists once;
* the whole run's wall and CPU time (``reports/<name>/timing.json``, written by :mod:`cft_utils.reproduce`).

:func:`budget_table` extrapolates: the half-width from the components (normal approximation), and the wall time by
scaling the measured CPU time — the fixed part (world, pre-training, analyses), training per seed, evaluation per
seed and test-set size — back to wall time with the parallelism the run reached. Item counts scale evaluation only
(the sandbox's items are generated, so more cost nothing to make), and not every benchmark's: the MMLU-like and
HellaSwag-like sets already hold every fact and thing of the world (:func:`fixed_size_benchmarks`), so their item
counts stay as they are in the projected half-widths.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..analysis.claims import projected_widths


def measured_costs(cfg) -> dict:
    """Training and evaluation seconds of every run of the profile (grid and mitigations) found on disk, per
    training seed (runs with a seed, divided by the number of seeds) and once (runs without one)."""
    from ..mitigation.plan import plan_mitigations
    from ..plan import plan_runs

    plan = plan_runs(cfg)
    runs = plan.all() + plan_mitigations(cfg, plan)
    seeds = set(cfg.training_seeds)
    n_seeds = max(1, len(seeds))
    out = {"train_s_per_seed": 0.0, "eval_s_per_seed": 0.0, "train_s_once": 0.0, "eval_s_once": 0.0,
           "n_runs": 0, "n_seeds": n_seeds}
    for run in runs:
        each = "per_seed" if run.seed in seeds else "once"  # the Instruct model is built once, at the profile seed
        summary = Path(run.dir) / "summary.json"
        if summary.exists():
            out[f"train_s_{each}"] += float(json.loads(summary.read_text()).get("runtime_s") or 0.0)
            out["n_runs"] += 1
        for f in sorted((Path(run.dir) / "eval").glob("*.json")):
            try:
                rec = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(rec, dict) and "task" in rec and "seconds" in rec:
                out[f"eval_s_{each}"] += float(rec["seconds"] or 0.0)
    out["train_s_per_seed"] /= n_seeds
    out["eval_s_per_seed"] /= n_seeds
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}


def fixed_size_benchmarks(cfg) -> list[str]:
    """Benchmarks whose item count cannot grow: in the sandbox those that enumerate the world
    (``cft_utils.sandbox.bench.FIXED_SIZE_BENCHMARKS``); elsewhere every benchmark (public test sets are what
    they are)."""
    if cfg.sandbox is not None:
        from ..sandbox.bench import FIXED_SIZE_BENCHMARKS

        return [b for b in cfg.evaluation.benchmarks if b in FIXED_SIZE_BENCHMARKS]
    return list(cfg.evaluation.benchmarks)


def projected_minutes(costs: dict, timing: dict, n_seeds: int, item_factor: float) -> float:
    """`make reproduce` wall minutes with ``n_seeds`` seeds and ``item_factor`` times the test items, from the
    measured run: CPU seconds rescaled part by part, divided by the measured CPU/wall ratio."""
    cpu, ratio = float(timing["cpu_s"]), max(float(timing["cpu_over_wall"]), 1e-9)
    s0 = costs["n_seeds"]
    seeded = costs["train_s_per_seed"] + costs["eval_s_per_seed"]
    fixed = max(0.0, cpu - s0 * seeded - costs["train_s_once"] - costs["eval_s_once"])
    new = (fixed + costs["train_s_once"] + item_factor * costs["eval_s_once"]
           + n_seeds * (costs["train_s_per_seed"] + item_factor * costs["eval_s_per_seed"]))
    return new / ratio / 60


def budget_table(precision: pd.DataFrame, costs: dict | None, timing: dict | None,
                 seeds: Sequence[int] = (1, 2, 3, 5, 10), item_factors: Sequence[float] = (1, 2, 4),
                 measure: str = "ΔTA_avg (P2 − P1)", fixed_items: Sequence[str] = ()) -> pd.DataFrame:
    """One row per (seeds, item factor): the widest and narrowest projected half-width of ``measure`` over the
    cells (benchmarks in ``fixed_items`` keep their item count), and the projected `make reproduce` minutes
    (missing without costs and timing; they scale every benchmark's evaluation, an upper bound)."""
    widths = projected_widths(precision[precision["measure"] == measure], seeds, item_factors,
                              fixed_items=fixed_items)
    rows = []
    for (s, f), g in widths.groupby(["n_seeds", "item_factor"], sort=True):
        minutes = projected_minutes(costs, timing, s, f) if costs and timing else float("nan")
        rows.append({"n_seeds": int(s), "item_factor": f, "half_width_max": g["half_width"].max(),
                     "half_width_min": g["half_width"].min(), "minutes": minutes})
    return pd.DataFrame(rows, columns=["n_seeds", "item_factor", "half_width_max", "half_width_min", "minutes"])


def render_budget(precision: pd.DataFrame, costs: dict | None, timing: dict | None,
                  fixed_items: Sequence[str] = ()) -> list[str]:
    """Markdown lines: the budget table with how it was made (empty without variance components)."""
    if precision is None or precision.empty:
        return []
    table = budget_table(precision, costs, timing, fixed_items=fixed_items)
    fixed = sorted(set(fixed_items) & set(precision["benchmark"]))
    kept = (f" but {' and '.join(f'the {b}-like' for b in fixed)}, which already hold every item the world makes "
            "(their item counts stay as they are)") if fixed else ""
    lines = ["", "What more compute would buy (projected from this run's variance components over seeds and test "
             "items, and its measured costs; `cft_utils.report.budget`): the 95 % half-width of the P1 → P2 "
             "task-ability difference, widest and narrowest over the cells, and the minutes `make reproduce` would "
             f"take on the same machine. More test items means more generated items for every benchmark{kept}; "
             "the minutes scale every benchmark's evaluation (an upper bound).", "",
             "| training seeds | test items | half-width (widest cell) | half-width (narrowest cell) | minutes |",
             "|---|---|---|---|---|"]
    for r in table.itertuples():
        minutes = f"{r.minutes:.0f}" if r.minutes == r.minutes else "not measured"
        lines.append(f"| {r.n_seeds} | {r.item_factor:g}x | {r.half_width_max:.3f} | {r.half_width_min:.3f} | "
                     f"{minutes} |")
    return lines
