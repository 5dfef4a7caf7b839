"""Item-level scores from the evaluation caches: one row per (checkpoint, seed, benchmark, language, test item) with
the benchmark's headline metric, the input of the intervals and verdicts (cft_utils.analysis.claims).

lm-eval logs every document it scores with its per-document metrics (``<task>-<limit>.samples.jsonl``); the
AlpacaEval judge logs one record per instruction with the model's score (``.judged.jsonl``). Items are identified
by lm-eval's ``doc_id`` (the same documents, in the same order, for every checkpoint) or the judged instruction id,
so the same item can be paired across checkpoints and seeds. A score that could not be computed is NaN, never 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from ..config import ExperimentConfig
from ..io import read_jsonl
from .runner import SUITES, checkpoints_of, jobs_for, judged_path, samples_path

ITEM_COLUMNS = ["model", "phase1_data", "phase2_data", "strategy", "method", "checkpoint", "seed", "suite",
                "benchmark", "language", "item", "value", "run_id"]


def _float(v) -> float:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, list) and v and all(isinstance(x, (bool, int, float)) for x in v):
        return float(sum(v)) / len(v)  # e.g. IFEval's instruction-level lists
    return math.nan


def _sample_items(run, job) -> list[tuple[str, float]]:
    metric = job.spec.metric.split("@", 1)[0]
    if job.spec.runner == "alpaca_eval":
        p = judged_path(run, job.task, job.limit)
        return [(str(r["id"]), _float(r.get("score"))) for r in read_jsonl(p)] if p.exists() else []
    p = samples_path(run, job.task, job.limit)
    if not p.exists():
        return []
    out = []
    for s in read_jsonl(p):
        key = f"{s.get('task', job.task)}:{s.get('doc_id')}"
        out.append((key, _float(s.get(metric))))
    return out


def item_scores(cfg: ExperimentConfig, runs: Iterable, suites: Sequence[str] = SUITES):
    """Item scores of every checkpoint of ``runs`` (a Phase 2 run brings its parent as P1; a mitigation run its
    parent), from the caches only; columns :data:`ITEM_COLUMNS`. ``seed`` is the grid cell's training seed, so an
    off-the-shelf P1 appears once per seed with the same scores."""
    import pandas as pd

    jobs = jobs_for(cfg, suites)
    rows = []
    for ckpt, run, cell in checkpoints_of(runs):
        method = cell.variant.strategy if cell.variant is not None else None
        for job in jobs:
            for item, value in _sample_items(run, job):
                rows.append({"model": cell.model, "phase1_data": cell.phase1_data,
                             "phase2_data": cell.phase2_data, "strategy": cell.strategy,
                             "method": method, "checkpoint": ckpt, "seed": cell.seed, "suite": job.spec.suite,
                             "benchmark": job.benchmark, "language": job.language, "item": item, "value": value,
                             "run_id": run.run_id})
    return pd.DataFrame(rows, columns=ITEM_COLUMNS).drop_duplicates(
        ["model", "phase1_data", "phase2_data", "strategy", "checkpoint", "seed", "benchmark", "language", "item"])
