"""MPD over a profile's runs (notebook 06): Phase 1 models against base-trained references, and the Phase 2 drift.

MPD as the paper defines it (§3.3): two models fine-tuned *from the same base*, one on the Phase 1 set D1 and one on
the Phase 2 set D2, normalised by the largest value among the compared models. The grid has no model fine-tuned
from the base on D2, so :func:`reference_runs` plans one per Phase 2 set (same hyper-parameters as Phase 1; a
content-addressed run like any other). The Phase 1 models (Alpaca, OpenOrca, Instruct) are then compared with that
reference. We also report the Phase 2 *drift* ``||θ_P2 - θ_P1||`` of every Phase 2 run, the distance Phase 2
actually moved each model, and whether MPD orders the datasets as DES does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cft_utils.analysis.des_study import INSTRUCT, PAPER_ORDERING, dataset_label, ordering_checks, pair_row
from cft_utils.analysis.mpd import compare_models
from cft_utils.checkpoints import parameter_difference
from cft_utils.paper import paper_values
from cft_utils.plan import base_model_source, phase1_model_dir, plan_runs
from cft_utils.train import execute


def run_weights(cfg, run) -> Path:
    """Local weights of a planned run; raises naming the run when it is not done (run notebooks 01-02)."""
    if not run.done():
        raise RuntimeError(f"run {run.name} ({run.run_id}) is not done: run notebooks 01 and 02 first")
    return phase1_model_dir(cfg, run)


def reference_runs(cfg, data_keys: Sequence[str] | None = None):
    """(config, runs): fine-tune each grid model's base on each Phase 2 set, the paper's MPD reference M2.

    ``data_keys`` defaults to every Phase 2 set of the grid. The runs use the Phase 1 hyper-parameters and
    are planned like Phase 1 runs (content-addressed ids; done runs are skipped by ``train.execute``). The
    returned config is the profile with those keys added to ``grid.phase1``; pass it to ``train.execute``.
    """
    keys = list(dict.fromkeys(data_keys if data_keys is not None else [c.data for c in cfg.grid.phase2]))
    unknown = [k for k in keys if k not in cfg.datasets]
    if unknown:
        raise KeyError(f"{cfg.source_file}: reference data {unknown} not in datasets {sorted(cfg.datasets)}")
    ref_cfg = cfg.model_copy(deep=True)
    ref_cfg.grid.phase1 = list(dict.fromkeys([*cfg.grid.phase1, *keys]))
    runs = [r for r in plan_runs(ref_cfg).phase1 if r.data_key in keys and r.phase1_data in keys]
    return ref_cfg, runs


def _rename_profile(df: pd.DataFrame, level: str, extra: dict) -> pd.DataFrame:
    df = df.copy()
    key = {"layer": "layer", "kind": "kind"}[level]
    df.insert(0, "part", df[key].astype(str))
    df = df.drop(columns=[key])
    for k, v in reversed(list(extra.items())):
        df.insert(0, k, v)
    df.insert(0, "level", level)
    return df


MPD_COLUMNS = ["comparison", "model", "seed", "phase1_data", "phase2_data", "run_a", "run_b", "mpd", "mpd_normalised",
               "relative", "drift_from_base", "reference_drift", "update_cosine"]


def mpd_to_reference(cfg, plan, refs, **kwargs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The paper's MPD: each Phase 1 model vs the base fine-tuned on each Phase 2 set (normalised per group).

    Returns (table with :data:`MPD_COLUMNS`, per-layer and per-kind profile). ``comparison`` is
    ``phase1_vs_reference``; ``mpd_normalised`` divides by the largest MPD among the Phase 1 models compared
    with the same reference, as the paper does. With several training seeds each reference is compared with the Phase 1
    runs of its own seed (and the Instruct model, trained once); ``seed`` names it. ``kwargs`` go to
    ``parameter_difference``.
    """
    tables, profiles = [], []
    for model in cfg.grid.models:
        base = base_model_source(cfg, model)
        for ref in (r for r in refs if r.model == model):
            p1 = {r.phase1_data: r for r in plan.phase1
                  if r.model == model and (r.phase1_data == "Instruct" or r.seed == ref.seed)}
            finetuned = {dataset_label(k): run_weights(cfg, r) for k, r in p1.items() if k != ref.phase1_data}
            comp = compare_models(base, finetuned, run_weights(cfg, ref), f"base→{ref.phase1_data}", **kwargs)
            t = comp.table()
            ref_norm = math.sqrt(comp.to_reference[next(iter(finetuned))].tensors["sq_b"].sum())
            tables.append(pd.DataFrame({
                "comparison": "phase1_vs_reference", "model": model, "seed": ref.seed, "phase1_data": t["model"],
                "phase2_data": ref.phase1_data,
                "run_a": [p1["Instruct" if m == INSTRUCT else m].run_id for m in t["model"]],
                "run_b": ref.run_id, "mpd": t["mpd"], "mpd_normalised": t["mpd_normalised"],
                "relative": t["mpd"] / ref_norm if ref_norm > 0 else math.nan,
                "drift_from_base": t["drift_from_base"], "reference_drift": t["reference_drift"],
                "update_cosine": t["update_cosine"]}))
            for level in ("layer", "kind"):
                prof = comp.profile(level).rename(columns={"model": "phase1_data"}).drop(columns=["reference"])
                profiles.append(_rename_profile(prof, level, {"comparison": "phase1_vs_reference", "model": model,
                                                              "seed": ref.seed, "phase2_data": ref.phase1_data}))
    if not tables:
        raise ValueError("mpd_to_reference: no reference runs for the grid's models")
    return pd.concat(tables, ignore_index=True)[MPD_COLUMNS], pd.concat(profiles, ignore_index=True)


def mpd_phase2_drift(cfg, plan, **kwargs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """||θ_P2 - θ_P1|| of every Phase 2 run (how far Phase 2 moved it), normalised per model by the largest.

    Returns (table with :data:`MPD_COLUMNS`, comparison ``phase2_drift``; ``relative`` = drift / ||θ_P1||,
    per-layer and per-kind profile).
    """
    rows, profiles = [], []
    for run in plan.phase2:
        parent = run.parent
        d = parameter_difference(run_weights(cfg, parent), run_weights(cfg, run), **kwargs)
        norm_p1 = math.sqrt(d.tensors["sq_a"].sum())
        rows.append({"comparison": "phase2_drift", "model": run.model, "seed": run.seed,
                     "phase1_data": dataset_label(run.phase1_data), "phase2_data": run.phase2_data, "run_a": parent.run_id, "run_b": run.run_id,
                     "mpd": d.total_l2, "relative": d.total_l2 / norm_p1 if norm_p1 > 0 else math.nan})
        for level, g in (("layer", d.by_layer()), ("kind", d.by_kind())):
            g = g.drop(columns=["sq_a", "sq_b"]).assign(phase1_data=dataset_label(run.phase1_data))
            profiles.append(_rename_profile(g, level, {"comparison": "phase2_drift", "model": run.model,
                                                       "seed": run.seed, "phase2_data": run.phase2_data}))
    if not rows:
        raise ValueError("mpd_phase2_drift: the plan has no Phase 2 runs")
    t = pd.DataFrame(rows)
    top = t.groupby("model")["mpd"].transform("max")
    t["mpd_normalised"] = t["mpd"] / top.where(top > 0)
    for c in MPD_COLUMNS:
        if c not in t:
            t[c] = math.nan
    return t[MPD_COLUMNS], pd.concat(profiles, ignore_index=True)


def mpd_orderings(mpd_table: pd.DataFrame, comparison: str = "phase1_vs_reference",
                  comparisons=PAPER_ORDERING) -> pd.DataFrame:
    """:func:`ordering_checks` on MPD (lower = closer) for one ``comparison`` kind, per model (and training seed)."""
    d = mpd_table[mpd_table["comparison"] == comparison]
    keys = ["model", "seed"] if "seed" in d.columns else ["model"]
    parts = []
    for key, g in d.groupby(keys, sort=False):
        g = g.rename(columns={"phase1_data": "a", "phase2_data": "b"})
        parts.append(ordering_checks(g, comparisons, value="mpd", higher_is_closer=False, lo=None, hi=None
                                     ).assign(**dict(zip(keys, key, strict=True))))
    if not parts:
        return pd.DataFrame(columns=["closer_pair", "closer", "farther_pair", "farther", "holds", "separated",
                                     "model"])
    return pd.concat(parts, ignore_index=True)


def with_paper_mpd(table: pd.DataFrame, path=None) -> pd.DataFrame:
    """``table`` with ``paper_mpd_normalised``: the paper's value for (model, Phase 1, Phase 2 data), else NaN.

    Only ``phase1_vs_reference`` rows can match; values the paper's text lost stay NaN.
    """
    paper = paper_values(benchmark="MPD_normalised", dataset_keys=True, path=path)
    lookup = {(r.model, dataset_label(r.phase1_data), r.phase2_data): r.value for r in paper.itertuples()}
    out = table.copy()
    out["paper_mpd_normalised"] = [
        lookup.get((m, a, b), math.nan) if c == "phase1_vs_reference" else math.nan
        for c, m, a, b in zip(out["comparison"], out["model"], out["phase1_data"], out["phase2_data"], strict=True)]
    return out


def des_mpd_agreement(des_table: pd.DataFrame, mpd_table: pd.DataFrame) -> pd.DataFrame:
    """Per (model, Phase 2 set, training seed): the Phase 1 sets ordered by DES (high first) and by MPD (low first).

    ``agree`` is True when both orders are the same; ``spearman`` is the rank correlation of DES with -MPD
    (NaN with fewer than three sets). Only ``phase1_vs_reference`` rows of ``mpd_table`` are used.
    """
    rows = []
    ref = mpd_table[mpd_table["comparison"] == "phase1_vs_reference"]
    keys = ["model", "phase2_data", "seed"] if "seed" in ref.columns else ["model", "phase2_data"]
    for key, g in ref.groupby(keys, sort=False):
        d2 = key[1]
        des_vals = {}
        for d1 in g["phase1_data"]:
            r = pair_row(des_table, (d1, d2))
            des_vals[d1] = float(r["des"]) if r is not None else math.nan
        g = g.assign(des=g["phase1_data"].map(des_vals)).dropna(subset=["des"])
        by_des = g.sort_values("des", ascending=False)["phase1_data"].tolist()
        by_mpd = g.sort_values("mpd", ascending=True)["phase1_data"].tolist()
        rho = (g["des"].rank().corr(-g["mpd"].rank(), method="pearson") if len(g) >= 3 else math.nan)
        rows.append({**dict(zip(keys, key, strict=True)), "by_des": " > ".join(by_des),
                     "by_mpd": " < ".join(by_mpd), "agree": by_des == by_mpd, "spearman": rho})
    return pd.DataFrame(rows, columns=[*keys, "by_des", "by_mpd", "agree", "spearman"])


def mpd_study(cfg, plan, refs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(MPD table of both comparisons, per-layer and per-kind profile): :func:`mpd_to_reference` and
    :func:`mpd_phase2_drift` together, with the paper's normalised values beside ours without a sandbox."""
    mpd_ref, profile_ref = mpd_to_reference(cfg, plan, refs)
    mpd_drift, profile_drift = mpd_phase2_drift(cfg, plan)
    mpd = pd.concat([mpd_ref, mpd_drift], ignore_index=True)
    if cfg.sandbox is None:
        mpd = with_paper_mpd(mpd)
    return mpd, pd.concat([profile_ref, profile_drift], ignore_index=True)


def all_mpd_orderings(mpd: pd.DataFrame) -> pd.DataFrame:
    """:func:`mpd_orderings` of both comparisons, with a ``comparison`` column."""
    return pd.concat([mpd_orderings(mpd).assign(comparison="phase1_vs_reference"),
                      mpd_orderings(mpd, "phase2_drift").assign(comparison="phase2_drift")], ignore_index=True)


def train_references(cfg) -> tuple[object, list]:
    """(config, runs) of :func:`reference_runs` for the profile's ``analysis.mpd.reference_data``, each trained
    unless it is done (a content-addressed run: trained once, skipped afterwards).

    Several unfinished references go through the grid executor (``cft_utils.executor``: a pool of workers on a
    laptop, submitit on a cluster), planned from the parameter file with the reference sets added to
    ``grid.phase1``, the same runs (checked by run id) the workers can find; otherwise they train here, in turn."""
    ref_cfg, refs = reference_runs(cfg, cfg.analysis.mpd.reference_data)
    todo = [r for r in refs if not r.done()]
    if len(todo) > 1 and cfg.source_file:
        from ..config import load_config
        from ..executor import execute_runs

        pool_cfg = load_config(cfg.source_file, {**cfg.overrides, "grid.phase1": list(ref_cfg.grid.phase1)})
        planned = {r.name: r for r in plan_runs(pool_cfg).phase1}
        if all(r.name in planned and planned[r.name].run_id == r.run_id for r in refs):
            execute_runs(pool_cfg, [planned[r.name] for r in refs])
            return ref_cfg, refs
    for run in refs:
        print(f"{run.name} ({run.run_id})")
        execute(run, ref_cfg)
    return ref_cfg, refs
