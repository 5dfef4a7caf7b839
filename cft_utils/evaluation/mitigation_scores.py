"""Task-ability (TA) and language-ability (LA) scores of the mitigation runs and of their cells' baselines, in the
tidy schema of :mod:`cft_utils.evaluation.runner`: the profile's lm-eval suites when it has an ``evaluation``
section, else (a sandbox profile) the exact-match probe of :mod:`cft_utils.sandbox.probe`."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..config import ExperimentConfig
from ..io import read_json, write_json
from ..runs import RunPlan
from ..sandbox.probe import exact_match_probe
from ..sandbox.world import world_for
from .runner import evaluate_runs

TA_BENCHMARKS = ("IFEval", "AlpacaEval", "MMLU", "HellaSwag")
LA_BENCHMARKS = ("MLQA", "XLSum", "XQuAD")
PROBE_FAMILIES = ("A", "B", "C")


def evaluate_mitigations(cfg: ExperimentConfig, runs: Sequence[RunPlan], suites=("ta", "la")):
    """Tidy TA/LA results of the mitigation runs and of their cells' P1 and P2 baselines (lm-eval suites)."""
    others = {}
    for r in runs:
        for base in (r.parent, r.baseline):
            others[base.run_id] = base
    return evaluate_runs(cfg, list(others.values()) + list(runs), suites=suites)


def probe_tidy(cfg: ExperimentConfig, runs: Sequence[RunPlan]):
    """Sandbox stand-in for the benchmarks: exact match on held-out test items of every mitigation run, its P2
    baseline and its P1 parent, in the tidy schema. English items give the TA columns ``EM-A``/``EM-B``/``EM-C``
    (one per task family), the other languages the LA columns ``EM-A-xx`` ... averaged over languages. Cached per
    run in ``probe_mitigation.json``."""
    import pandas as pd

    if cfg.sandbox is None:
        raise ValueError("probe_tidy needs a sandbox profile; use evaluate_mitigations")
    world = world_for(cfg.sandbox.world_spec())
    langs = list(cfg.sandbox.languages)
    want = {"families": list(PROBE_FAMILIES), "languages": langs}

    def probe(run) -> list[dict]:
        f = run.dir / "probe_mitigation.json"
        if f.exists() and read_json(f)["config"] == want:
            return read_json(f)["rows"]
        rows = exact_match_probe(run.model_dir, world, PROBE_FAMILIES, tuple(langs))
        if not run.registered:
            write_json(f, {"config": want, "rows": rows})
        return rows

    out, seen = [], set()
    for r in runs:
        for ckpt, run, strategy in (("P1", r.parent, "none"), ("P2", r.baseline, "none"), ("P2", r, r.strategy)):
            key = (run.run_id, r.model, r.phase1_data, r.phase2_data, ckpt, strategy)
            if key in seen:
                continue
            seen.add(key)
            for row in probe(run):
                en = row["language"] == "en"
                out.append({"model": r.model, "phase1_data": r.phase1_data, "phase2_data": r.phase2_data,
                            "strategy": strategy, "checkpoint": ckpt,
                            "benchmark": f"EM-{row['family']}" + ("" if en else "-xx"),
                            "language": row["language"], "metric": "exact_match", "value": row["exact_match"],
                            "stderr": math.nan, "n": row["n"], "run_id": run.run_id})
    return pd.DataFrame(out)


def ability_results(cfg: ExperimentConfig, runs: Sequence[RunPlan]):
    """(tidy results, headline metric per benchmark, TA benchmarks, LA benchmarks, source).

    The profile's lm-eval suites (``evaluation:`` section) when it has them; else, in a sandbox profile, the
    exact-match probe of :func:`probe_tidy`.
    """
    if cfg.evaluation is not None:
        bench = cfg.evaluation.benchmarks
        metrics = {b: spec.metric for b, spec in bench.items()}
        ta = tuple(b for b, spec in bench.items() if spec.suite == "ta")
        la = tuple(b for b, spec in bench.items() if spec.suite == "la")
        return evaluate_mitigations(cfg, runs), metrics, ta, la, "lm-eval suites (cft_utils.evaluation)"
    if cfg.sandbox is None:
        raise ValueError(f"{cfg.source_file}: no 'evaluation' section to score the mitigations with")
    ta = tuple(f"EM-{f}" for f in PROBE_FAMILIES)
    la = tuple(f"EM-{f}-xx" for f in PROBE_FAMILIES)
    return (probe_tidy(cfg, runs), {b: "exact_match" for b in ta + la}, ta, la,
            "sandbox exact-match probe (the profile has no evaluation section)")
