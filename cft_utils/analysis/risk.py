"""The pre-flight forgetting-risk report (beyond the paper; notebook 05).

Before spending GPU hours on Phase 2: DES between what the Phase 1 model learned (or a stand-in) and the candidate
Phase 2 set, compared with the grid's other Phase 2 sets; the Phase 1 model's language-ability baseline; and a
plain-language reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cft_utils.analysis.des import DEFAULT_FIELDS, DEFAULT_SAMPLE_SIZE, des_matrix
from cft_utils.analysis.des_study import INSTRUCT, instruct_records
from cft_utils.analysis.mpd_study import run_weights
from cft_utils.data.loaders import load_records
from cft_utils.io import read_json, write_json
from cft_utils.sandbox.probe import exact_match_probe
from cft_utils.sandbox.world import world_for

#: DES bands used only when there is no alternative Phase 2 set to compare with. They come from the paper's
#: LaBSE values (similar pairs 0.92-0.95, dissimilar 0.77-0.79) and mean nothing for other encoders.
LABSE_BANDS = (0.8, 0.9)


@dataclass
class ForgettingRisk:
    """The pre-flight report of :func:`forgetting_risk` (``summary()`` gives one table row)."""

    phase1_run: str
    model: str
    phase1_data: str
    compared_data: str
    data_note: str
    phase2_data: str
    des: float
    ci_lo: float
    ci_hi: float
    alternatives: pd.DataFrame
    la_baseline: pd.DataFrame | None
    la_source: str
    la_mean: float | None
    risk: str
    reading: str
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """One row: run, data, DES and interval, LA baseline mean (None when missing), risk, reading."""
        return {"phase1_run": self.phase1_run, "model": self.model, "phase1_data": self.phase1_data,
                "compared_data": self.compared_data, "phase2_data": self.phase2_data, "des": self.des,
                "ci_lo": self.ci_lo, "ci_hi": self.ci_hi, "la_baseline_mean": self.la_mean,
                "la_source": self.la_source, "risk": self.risk, "reading": self.reading}


PROBE_FAMILIES = ("A", "B")


def la_probe(cfg, run, families: Sequence[str] = PROBE_FAMILIES, languages: Sequence[str] | None = None
             ) -> pd.DataFrame:
    """Sandbox language-ability baseline: exact match of the run's model on held-out items in the other
    languages, per family and language (cached in the run folder as ``la_probe.json``)."""
    if cfg.sandbox is None:
        raise ValueError(f"{cfg.source_file}: la_probe needs a sandbox world; pass benchmark results instead")
    world = world_for(cfg.sandbox.world_spec())
    langs = list(languages or world.other_languages)
    want = {"families": list(families), "languages": langs}
    cache = run.dir / "la_probe.json"
    if _probe_cached(run, want):
        rows = read_json(cache)["rows"]
    else:
        rows = exact_match_probe(run_weights(cfg, run), world, tuple(families), tuple(langs))
        if run.data_key is not None:
            write_json(cache, {"config": want, "rows": rows})
    return pd.DataFrame(rows)


def la_mean(df: pd.DataFrame | None) -> float | None:
    """Mean of the ``value`` (or ``exact_match``/``score``) column; None when there is nothing (never 0)."""
    if df is None or df.empty:
        return None
    col = next((c for c in ("value", "exact_match", "score") if c in df.columns), None)
    if col is None:
        raise ValueError(f"la_baseline needs a 'value' (or 'exact_match'/'score') column; has {list(df.columns)}")
    vals = pd.to_numeric(df[col], errors="coerce").dropna()
    return float(vals.mean()) if len(vals) else None


def risk_from_des(cand: pd.Series, others: pd.DataFrame) -> tuple[str, str]:
    """(risk, sentence) from the candidate's DES against the alternatives (or the LaBSE bands)."""
    fmt = lambda r: f"{r['des']:.3f} [{r['ci_lo']:.3f}, {r['ci_hi']:.3f}]"  # noqa: E731
    if others.empty:
        lo, hi = LABSE_BANDS
        risk = "lower" if cand["des"] >= hi else "higher" if cand["des"] < lo else "unclear"
        return risk, (f"With no other Phase 2 set to compare with, the paper's LaBSE bands apply (similar "
                      f"pairs scored ≥ {hi}, dissimilar < {lo}; only meaningful for LaBSE): {risk} risk.")
    best, worst = others["des"].max(), others["des"].min()
    has_ci = np.isfinite([cand["ci_lo"], cand["ci_hi"]]).all() and np.isfinite(
        others[["ci_lo", "ci_hi"]].to_numpy()).all()
    alt = "; ".join(f"{r.phase2_data} {fmt(r._asdict())}" for r in others.itertuples())
    if cand["des"] > best and (not has_ci or cand["ci_lo"] > others["ci_hi"].max()):
        return "lower", (f"It is the most similar of the candidate Phase 2 sets (others: {alt})"
                         + (", with non-overlapping intervals" if has_ci else "")
                         + ": lower risk of losing task ability (the paper saw less forgetting when the "
                           "Phase 2 tasks resemble what the model learned in Phase 1).")
    if cand["des"] < worst and (not has_ci or cand["ci_hi"] < others["ci_lo"].min()):
        return "higher", (f"It is the least similar of the candidate Phase 2 sets (others: {alt})"
                          + (", with non-overlapping intervals" if has_ci else "")
                          + ": higher risk of losing task ability; consider a more similar set, or a "
                            "mitigation (replay, layer freezing, LoRA).")
    return "unclear", (f"It is not clearly more or less similar than the other candidate Phase 2 sets "
                       f"(others: {alt}): the data does not settle the risk.")


def _probe_cached(run, want: dict) -> bool:
    cache = run.dir / "la_probe.json"
    return cache.exists() and read_json(cache)["config"] == want


def _probe_named(params_file: str, overrides: dict, name: str) -> str:
    """In a worker process: :func:`la_probe` of the Phase 1 run called ``name`` (fills its cache)."""
    from ..executor import worker_context

    cfg, runs = worker_context(params_file, overrides)
    la_probe(cfg, runs[name])
    return name


def probe_phase1_models(cfg, runs: Sequence) -> None:
    """Fill the :func:`la_probe` caches of ``runs`` (Phase 1 runs) on the executor's worker processes; each probe
    generates for a few hundred held-out items, and a grid's Phase 1 models are independent."""
    from ..executor import default_workers, parallel_map

    want = {"families": list(PROBE_FAMILIES), "languages": world_for(cfg.sandbox.world_spec()).other_languages}
    todo = list({r.name: r for r in runs if r.data_key is not None and not _probe_cached(r, want)}.values())
    if len(todo) > 1:
        parallel_map(_probe_named, [(cfg.source_file, dict(cfg.overrides), r.name) for r in todo],
                     min(default_workers(cfg), len(todo)))


def forgetting_risk(cfg, phase1_run, phase2_key: str, encoder, la_baseline: pd.DataFrame | None = None, *,
                    alternatives: Sequence[str] | None = None, instruct_stand_in: str | None = None,
                    probe_la: bool = True, n: int | None = DEFAULT_SAMPLE_SIZE,
                    fields: Sequence[str] = DEFAULT_FIELDS, seed: int = 0, n_boot: int = 1000,
                    ci: float = 0.95, des_cache: dict | None = None) -> ForgettingRisk:
    """Pre-flight report: is ``phase2_key`` similar to what ``phase1_run`` learned, and what LA does it have?

    * DES between the Phase 1 run's data (for an Instruct model: :func:`instruct_records`, a stand-in
      outside the sandbox, named in ``data_note``) and the candidate, and between that data and each of
      ``alternatives`` (default: the grid's other Phase 2 sets), with bootstrap intervals.
    * The Phase 1 model's language-ability baseline: ``la_baseline`` (a DataFrame with a ``value`` column,
      e.g. the evaluation notebooks' LA benchmark results for this model) when given; else, in the sandbox
      and with ``probe_la``, :func:`la_probe`; else missing (None, never 0).
    * ``risk`` in {"lower", "higher", "unclear"} and a plain-language ``reading``.

    ``des_cache`` (a dict the caller keeps) reuses a DES table computed for the same data sets and settings: the
    seeds of one cell, and the cells of one Phase 1 model, compare the same sets.
    """
    if phase2_key not in cfg.datasets:
        raise KeyError(f"{cfg.source_file}: candidate Phase 2 set {phase2_key!r} not in {sorted(cfg.datasets)}")
    if phase1_run.phase1_data == "Instruct":
        p1_records, note = instruct_records(cfg, instruct_stand_in)
        compared = INSTRUCT if cfg.sandbox is not None and instruct_stand_in is None else (instruct_stand_in or
                                                                                            "alpaca")
    else:
        p1_records, note = load_records(cfg, phase1_run.phase1_data), "the Phase 1 run's own training data"
        compared = phase1_run.phase1_data
    alts = [k for k in dict.fromkeys(alternatives if alternatives is not None
                                     else [c.data for c in cfg.grid.phase2]) if k != phase2_key]
    key = (compared, note, tuple(sorted([phase2_key, *alts])), tuple(fields), n, seed, n_boot, ci)
    if des_cache is not None and key in des_cache:
        table = des_cache[key]
    else:
        sets = {"__phase1__": p1_records, phase2_key: load_records(cfg, phase2_key)}
        sets.update({k: load_records(cfg, k) for k in alts})
        table, _ = des_matrix(sets, encoder, fields=fields, n=n, seed=seed, n_boot=n_boot, ci=ci)
        if des_cache is not None:
            des_cache[key] = table
    vs = table[(table["a"] == "__phase1__") & (table["b"] != "__phase1__")].rename(columns={"b": "phase2_data"})
    vs = vs[["phase2_data", "des", "ci_lo", "ci_hi"]].reset_index(drop=True)
    cand = vs[vs["phase2_data"] == phase2_key].iloc[0]
    others = vs[vs["phase2_data"] != phase2_key]
    risk, des_sentence = risk_from_des(cand, others)

    if la_baseline is not None:
        la, la_source = la_baseline, "given (la_baseline)"
    elif probe_la and cfg.sandbox is not None:
        la = la_probe(cfg, phase1_run)
        la_source = "sandbox exact-match probe, families " + ", ".join(sorted(la["family"].unique()))
    else:
        la, la_source = None, "missing (no LA results given, no sandbox probe)"
    mean = la_mean(la)
    langs = ", ".join(sorted(la["language"].astype(str).unique())) if la is not None and "language" in la else ""
    la_sentence = (f"Language-ability baseline of the Phase 1 model: {mean:.3f} on average"
                   f"{' over ' + langs if langs else ''} ({la_source}). The paper's advice: measure this before "
                   "Phase 2 and judge Phase 2 by what it adds over it."
                   if mean is not None else
                   "Language-ability baseline of the Phase 1 model: missing; evaluate the Phase 1 model on the "
                   "LA benchmarks first (the paper's advice) and pass the results as la_baseline.")
    reading = (f"{phase1_run.name} → {phase2_key}: DES {cand['des']:.3f} [{cand['ci_lo']:.3f}, {cand['ci_hi']:.3f}] "
               f"between {compared} ({note}) and {phase2_key}. {des_sentence} {la_sentence}")
    return ForgettingRisk(phase1_run.name, phase1_run.model, phase1_run.phase1_data, compared, note, phase2_key,
                          float(cand["des"]), float(cand["ci_lo"]), float(cand["ci_hi"]), vs, la, la_source,
                          mean, risk, reading)


def risk_report(cfg, plan, encoder) -> tuple[list[ForgettingRisk], pd.DataFrame]:
    """:func:`forgetting_risk` of every Phase 2 cell of the grid with the profile's ``analysis.des`` settings.

    ``analysis.des.la_results`` (a CSV with run_id and value columns) gives each Phase 1 model's LA baseline;
    without it the sandbox probes and other profiles report it as missing. Returns (reports, one row per cell).
    """
    d = cfg.analysis.des
    missing = [r.name for r in plan.phase1 if not r.done()]
    if missing:
        raise RuntimeError(f"run notebook 01 first: Phase 1 runs not done: {missing}")
    la_table = pd.read_csv(d.la_results) if d.la_results else None
    if la_table is None and cfg.sandbox is not None:
        probe_phase1_models(cfg, [cell.parent for cell in plan.phase2])
    risks, des_cache = [], {}
    for cell in plan.phase2:
        la = la_table[la_table["run_id"] == cell.parent.run_id] if la_table is not None else None
        risks.append(forgetting_risk(cfg, cell.parent, cell.phase2_data, encoder, la_baseline=la, n=d.n_samples,
                                     fields=d.fields, seed=d.seed, n_boot=d.n_boot, ci=d.ci, des_cache=des_cache))
    return risks, pd.DataFrame([r.summary() for r in risks])
