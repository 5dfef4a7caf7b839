"""Forgetting mitigations as runs: plan, execute, tabulate (Tables 3 and C6) and the TA–LA Pareto figure.

Every strategy of ``mitigation.strategies`` on every cell of ``mitigation.cells`` is one run with a
content-addressed id (the Phase 1 parent, data, hyper-parameters, seed, the strategy and its parameters), so a
sweep of replay shares or frozen-layer counts is a change of the parameter file:

| strategy | label(s) | what happens |
|---|---|---|
| GR | ``GR_<k>`` per ``replay.gr_percent`` | Phase 2 on the set + k % generated English replay (cft_utils.replay) |
| ER | ``ER_<k>`` per ``replay.er_percent`` | Phase 2 on the set + k % original English counterparts |
| LF_H1 | ``LF_H1`` | Phase 2 with a seeded random set of layers frozen (cft_utils.freezing) |
| LF_H2 | ``LF_H2`` (``LF_H2-head`` per head) | Phase 2 with the layers base -> Phase 1 changed most frozen, per q/k/v |
| LoRA | ``LoRA`` | Phase 2 with PEFT LoRA adapters (``lora.learning_rate``), merged |
| interpolation | ``Interp_<α>`` per α | (1 − α)·θ_P1 + α·θ_P2, no training (cft_utils.posthoc) |
| reversion | ``Revert_<amount>`` per amount | P2 with its most-moved units reset to P1, no training |

From a shell (several processes: see ``configs/accelerate/``)::

    python -m cft_utils.mitigation --params sandbox --list
    accelerate launch --config_file configs/accelerate/ddp.yaml -m cft_utils.mitigation --params paper \\
        --run "mitigation/Mistral-7B/Instruct->multialpaca/LF_H2"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from .config import ExperimentConfig, load_config
from .io import read_json, write_json
from .runs import provenance
from .runs import run_id as make_run_id
from .train import RunPlan, _hp, plan_runs

TA_BENCHMARKS = ("IFEval", "AlpacaEval", "MMLU", "HellaSwag")
LA_BENCHMARKS = ("MLQA", "XLSum", "XQuAD")
#: Where a strategy label's rows sit in the tables (baselines first, then the paper's order, then ours).
STRATEGY_ORDER = ("P1", "none", "LF_H1", "LF_H2", "LF_H2-head", "GR_5", "GR_10", "LoRA", "ER_10")


def _pct(x: float) -> str:
    return f"{x:g}"


def _label(kind: str, value=None, granularity: str = "layer") -> str:
    if kind in ("GR", "ER"):
        return f"{kind}_{_pct(value)}"
    if kind == "LF_H2" and granularity == "head":
        return "LF_H2-head"
    if kind == "interpolation":
        return f"Interp_{_pct(value)}"
    if kind == "reversion":
        return f"Revert_{_pct(value)}"
    return kind


def plan_mitigations(cfg: ExperimentConfig, plan=None) -> list[RunPlan]:
    """Every mitigation run of the profile (empty without a ``mitigation`` section); nothing is run here.

    Each run's ``extra`` holds ``parent`` (the Phase 1 run), ``baseline`` (the unmitigated Phase 2 run of the
    cell), ``kind``, ``params`` (the strategy's parameters) and ``table``.
    """
    mit = cfg.mitigation
    if mit is None:
        return []
    plan = plan or plan_runs(cfg)
    h2 = cfg.phase2_hparams
    out = []
    for cell in mit.cells:
        for model in cell.models or cfg.grid.models:
            baseline = plan.get(f"phase2/{model}/{cell.phase1}->{cell.data}")
            parent = baseline.extra["parent"]
            cp = mit.replay.counterparts.get(cell.data)
            variants: list[tuple[str, object, dict]] = []
            for kind in mit.strategies:
                if kind in ("GR", "ER"):
                    for k in (mit.replay.gr_percent if kind == "GR" else mit.replay.er_percent):
                        params = {"percent": k, "counterparts": cp.model_dump() if cp else None,
                                  "replay_seed": mit.seed}
                        if kind == "GR":
                            params["generation"] = mit.replay.generation.model_dump(exclude={"batch_size"})
                        variants.append((kind, k, params))
                elif kind == "LF_H1":
                    f = mit.freezing
                    variants.append((kind, None, {"n_layers": f.n_layers, "fraction": f.fraction,
                                                  "scope": f.h1_scope, "freeze_seed": mit.seed}))
                elif kind == "LF_H2":
                    variants.append((kind, None, mit.freezing.model_dump(exclude={"h1_scope"})))
                elif kind == "LoRA":
                    variants.append((kind, None, mit.lora.model_dump()))
                elif kind == "interpolation":
                    for a in mit.posthoc.interpolation_alphas:
                        variants.append((kind, a, {"alpha": a}))
                elif kind == "reversion":
                    for a in mit.posthoc.reversion_amounts:
                        variants.append((kind, a, {"amount": a, "criterion": mit.posthoc.reversion_criterion,
                                                   "granularity": mit.posthoc.reversion_granularity}))
            for kind, value, params in variants:
                label = _label(kind, value, mit.freezing.granularity)
                hp = h2.model_copy(update={"learning_rate": mit.lora.learning_rate}) if kind == "LoRA" else h2
                if kind in ("interpolation", "reversion"):
                    resolved = {"posthoc": kind, "p1": parent.run_id, "p2": baseline.run_id, "params": params}
                else:
                    resolved = {**baseline.resolved, "hparams": _hp(hp), "strategy": label, "strategy_params": params}
                rid = make_run_id(resolved, "mt")
                out.append(RunPlan(f"mitigation/{model}/{cell.phase1}->{cell.data}/{label}", 2, model, cell.phase1,
                                   cell.data, label, cell.data, f"run:{parent.run_id}", hp, resolved, rid,
                                   extra={"parent": parent, "baseline": baseline, "kind": kind, "params": params,
                                          "table": cell.table}))
    return out


def mitigation_table(runs: list[RunPlan]):
    """One row per mitigation run: ids, cell, strategy, done, and (when done) its summary's key numbers."""
    import pandas as pd

    rows = []
    for r in runs:
        s = read_json(r.dir / "summary.json") if (r.dir / "summary.json").exists() else {}
        rows.append({"run": r.name, "run_id": r.run_id, "model": r.model, "phase1_data": r.phase1_data,
                     "phase2_data": r.phase2_data, "strategy": r.strategy, "table": r.extra.get("table"),
                     "done": r.done(), "n_records": s.get("n_records"), "n_replay": s.get("n_extra_records"),
                     "trainable_parameters": s.get("trainable_parameters"), "final_loss": s.get("final_loss"),
                     "runtime_s": s.get("runtime_s")})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------- helpers


def _model_spec(cfg, name):
    return next(m for m in cfg.models if m.name == name)


def local_model_dir(path_or_id: str | Path, revision: str | None = None) -> Path:
    """A local folder with the model's safetensors: the folder itself, or the hub snapshot (weights and configs)."""
    p = Path(str(path_or_id)).expanduser()
    if p.is_dir():
        return p
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(path_or_id), revision=revision,
                                  allow_patterns=["*.safetensors", "*.json", "*.jinja", "tokenizer*"]))


def base_model_dir(cfg: ExperimentConfig, parent: RunPlan) -> Path:
    """The model a Phase 1 checkpoint was fine-tuned from (LF_H2's "base"): the sandbox base model for sandbox
    runs, the profile's base model for trained runs and for an off-the-shelf Instruct model."""
    from .train import sandbox_paths

    m = _model_spec(cfg, parent.model)
    if m.base == "sandbox":
        return sandbox_paths(cfg)["base"]
    return local_model_dir(m.base, m.revision)


def phase1_model_dir(cfg: ExperimentConfig, parent: RunPlan) -> Path:
    """The Phase 1 checkpoint as a local folder (a registered Instruct model is fetched from the hub)."""
    if parent.data_key is None:
        return local_model_dir(parent.init, _model_spec(cfg, parent.model).revision)
    return parent.model_dir


def _model_config(path: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path))


def freeze_plan(cfg: ExperimentConfig, run: RunPlan):
    """The FreezePlan of an LF_H1 / LF_H2 run (LF_H2 streams base and Phase 1 checkpoints to rank layers)."""
    from .freezing import (
        FreezePlan,
        _head_geometry,
        n_frozen_layers,
        select_lf_h1,
    )

    mit = cfg.mitigation
    f = mit.freezing
    parent = run.extra["parent"]
    p1 = phase1_model_dir(cfg, parent)
    conf = _model_config(p1)
    n_layers = int(conf.num_hidden_layers)
    k = n_frozen_layers(n_layers, f.n_layers, f.fraction)
    if run.extra["kind"] == "LF_H1":
        layers = select_lf_h1(n_layers, k, mit.seed)
        if f.h1_scope == "block":
            return FreezePlan("LF_H1", blocks=layers, details={"k": k, "num_layers": n_layers})
        return FreezePlan("LF_H1", modules={m: layers for m in f.modules}, details={"k": k, "num_layers": n_layers})
    base = base_model_dir(cfg, parent)
    from .similarity import parameter_difference, rank_heads, rank_layers

    diff = parameter_difference(base, p1, row_modules=tuple(f.modules))
    if f.granularity == "layer":
        ranking, table = rank_layers(diff, f.modules, top_k=k, measure=f.measure)
        return FreezePlan("LF_H2", modules=ranking, details={"k": k, "num_layers": n_layers, "base": str(base),
                                                             "ranking": table.to_dict("records")})
    n_heads, n_kv, _ = _head_geometry(conf)
    heads = {}
    tables = []
    for m in f.modules:
        per_layer = n_heads if m == "q_proj" else n_kv
        ranking, table = rank_heads(diff, [m], top_k=k * per_layer, measure=f.measure)
        heads[m] = ranking[m]
        tables.append(table)
    return FreezePlan("LF_H2-head", heads=heads, details={"k": k, "num_layers": n_layers, "base": str(base),
                                                          "heads_per_module": {m: len(v) for m, v in heads.items()}})


def _finish_posthoc(run: RunPlan, cfg: ExperimentConfig, info: dict, t0: float) -> None:
    summary = {"name": run.name, "run_id": run.run_id, "phase": 2, "model": run.model,
               "phase1_data": run.phase1_data, "phase2_data": run.phase2_data, "strategy": run.strategy,
               "n_records": None, "global_steps": 0, "final_loss": None, "runtime_s": round(time.time() - t0, 2),
               "mitigation": info}
    write_json(run.dir / "run.json", {"name": run.name, "run_id": run.run_id, "resolved": run.resolved})
    write_json(run.dir / "summary.json", summary)
    write_json(run.dir / "provenance.json", provenance(seed=cfg.seed, config_file=cfg.source_file,
                                                       profile=cfg.profile))
    write_json(run.dir / "DONE", {"run_id": run.run_id})


# ------------------------------------------------------------------------------------------- execution


def execute_mitigation(run: RunPlan, cfg: ExperimentConfig, force: bool = False, callbacks: list | None = None,
                       progress: bool = True) -> Path:
    """Run one mitigation (skipped when done); returns its model folder (safetensors, merged for LoRA).

    Replay, freezing and LoRA train through :func:`cft_utils.train.execute`; post-hoc strategies stream the
    Phase 1 and Phase 2 checkpoints. Each run writes ``mitigation.json`` (what was done, with its checks).
    """
    import torch
    from accelerate import PartialState

    from . import train

    if run.done() and not force:
        return run.model_dir
    kind, parent, baseline = run.extra["kind"], run.extra["parent"], run.extra["baseline"]
    t0 = time.time()
    if kind in ("interpolation", "reversion"):
        from . import posthoc

        for need in (parent, baseline):
            if not need.done():
                raise RuntimeError(f"{run.name}: needs {need.name} ({need.run_id}); run it first")
        p1, p2 = phase1_model_dir(cfg, parent), baseline.model_dir
        run.dir.mkdir(parents=True, exist_ok=True)
        if kind == "interpolation":
            posthoc.interpolate_checkpoints(p1, p2, run.extra["params"]["alpha"], run.model_dir)
            info = {"kind": kind, **run.extra["params"], "p1": str(p1), "p2": str(p2)}
        else:
            p = run.extra["params"]
            res = posthoc.revert_checkpoint(p1, p2, run.model_dir, p["amount"], p["criterion"], p["granularity"])
            info = {"kind": kind, **p, "p1": str(p1), "p2": str(p2), "reverted_units": res["reverted_units"],
                    "reverted_tensors": res["reverted_tensors"],
                    "ranking": res["ranking"].drop(columns=["tensors"]).to_dict("records")}
        write_json(run.dir / "mitigation.json", info)
        _finish_posthoc(run, cfg, info, t0)
        return run.model_dir

    state = PartialState(cpu=not torch.cuda.is_available())
    kwargs: dict = {"callbacks": list(callbacks or []), "force": force}
    info: dict = {"kind": kind, "params": run.extra["params"]}
    report_holder: dict = {}
    if kind in ("GR", "ER"):
        from .replay import replay_mix

        percent = run.extra["params"]["percent"]
        if state.is_main_process:  # generate once; the other ranks read the saved set
            replay_mix(cfg, run, kind, percent, progress)
        state.wait_for_everyone()
        records, mix = replay_mix(cfg, run, kind, percent, progress=False)
        info["replay"] = mix
        kwargs["extra_records"] = records
    elif kind in ("LF_H1", "LF_H2"):
        from .freezing import FreezeCallback, apply_freeze, check_distributed_support

        plan = freeze_plan(cfg, run)
        check_distributed_support(plan)
        info["plan"] = plan.to_dict()

        def hook(model):
            report_holder["report"] = apply_freeze(model, plan)

        kwargs["model_hook"] = hook
        kwargs["callbacks"].append(FreezeCallback(report_holder))
    elif kind == "LoRA":
        from peft import LoraConfig

        lo = cfg.mitigation.lora
        kwargs["peft_config"] = LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout,
                                           target_modules=list(lo.target_modules), task_type="CAUSAL_LM")
    else:
        raise ValueError(f"{run.name}: unknown mitigation kind {kind!r}")
    kwargs["summary_extra"] = {"mitigation": info}
    train.execute(run, cfg, **kwargs)
    if kind in ("LF_H1", "LF_H2") and "report" in report_holder:
        from .freezing import verify_frozen

        rep = report_holder["report"].to_dict()
        info["freeze"] = {k: v for k, v in rep.items() if k not in ("frozen", "masked")}
        info["frozen_tensors"] = rep["frozen"]
        info["masked_rows"] = rep["masked"]
        info["optimizer"] = report_holder.get("optimizer", {})
        if state.is_main_process:
            check = verify_frozen(phase1_model_dir(cfg, parent), run.model_dir, rep)
            info["verification"] = check
            if not check["bit_identical"]:
                raise RuntimeError(f"{run.name}: frozen weights changed in Phase 2: {check['differ'][:5]}")
    if state.is_main_process:
        write_json(run.dir / "mitigation.json", info)
    state.wait_for_everyone()
    return run.model_dir


# ------------------------------------------------------------------------------------------- tables


def _headline(tidy, metrics: dict | None):
    """Keep one metric per benchmark: a 'headline' column, the ``metrics`` map, or the only metric there is."""
    if metrics:
        keep = tidy.apply(lambda r: metrics.get(r["benchmark"]) == r["metric"], axis=1)
        return tidy[keep]
    if "headline" in tidy.columns:
        return tidy[tidy["headline"].astype(bool)]
    n = tidy.groupby("benchmark")["metric"].nunique()
    several = n[n > 1]
    if len(several):
        raise ValueError(f"benchmarks {list(several.index)} have several metrics; pass metrics={{benchmark: metric}}")
    return tidy


def ability_scores(tidy, metrics: dict | None = None, ta=TA_BENCHMARKS, la=LA_BENCHMARKS):
    """Per (model, phase1_data, phase2_data, strategy, checkpoint): each benchmark's value averaged over its
    languages, and TA_avg / LA_avg (means over the benchmarks; missing when any benchmark is missing)."""
    import pandas as pd

    t = _headline(tidy, metrics)
    t = t[t["benchmark"].isin(list(ta) + list(la))]
    keys = ["model", "phase1_data", "phase2_data", "strategy", "checkpoint"]
    t = t.copy()
    t["value"] = pd.to_numeric(t["value"], errors="coerce")
    per = t.groupby(keys + ["benchmark"], dropna=False)["value"].agg(
        lambda v: v.mean() if v.notna().all() else math.nan).unstack("benchmark")
    for b in list(ta) + list(la):
        if b not in per.columns:
            per[b] = math.nan
    per = per[list(ta) + list(la)]
    per["TA_avg"] = per[list(ta)].mean(axis=1, skipna=False)
    per["LA_avg"] = per[list(la)].mean(axis=1, skipna=False)
    return per.reset_index()


def mitigation_results(tidy, runs: list[RunPlan], metrics: dict | None = None, ta=TA_BENCHMARKS,
                       la=LA_BENCHMARKS):
    """Scores of the mitigation runs plus their cells' Phase 1 ('P1') and unmitigated Phase 2 ('none') rows."""
    import pandas as pd

    scores = ability_scores(tidy, metrics, ta, la)
    cells = {(r.model, r.phase1_data, r.phase2_data) for r in runs}
    strategies = {r.strategy for r in runs}
    rows = []
    for _, s in scores.iterrows():
        if s["checkpoint"] == "P1":  # a Phase 1 model's scores belong to every cell it starts
            for m, p1, p2 in cells:
                if (m, p1) == (s["model"], s["phase1_data"]):
                    rows.append({**s, "phase2_data": p2, "strategy": "P1"})
        elif (s["model"], s["phase1_data"], s["phase2_data"]) in cells and (
                s["strategy"] in strategies or s["strategy"] == "none"):
            rows.append(dict(s))
    df = pd.DataFrame(rows).drop_duplicates(subset=["model", "phase1_data", "phase2_data", "strategy"])
    if df.empty:
        return df
    order = {s: i for i, s in enumerate(STRATEGY_ORDER)}
    df["_o"] = df["strategy"].map(lambda s: order.get(s, len(order)))
    return df.sort_values(["model", "phase1_data", "phase2_data", "_o", "strategy"]).drop(columns="_o").reset_index(
        drop=True)


def paper_table_values(table: str):
    """The paper's Table 3 / C6 as one row per (model, strategy) with the benchmark columns ('P1' = its '-' row)."""
    from .paper import paper_values

    p = paper_values(table, dataset_keys=True)
    p = p.assign(strategy=p.apply(lambda r: "P1" if r["checkpoint"] == "P1" else r["strategy"], axis=1))
    wide = p.pivot_table(index=["model", "phase1_data", "phase2_data", "strategy"], columns="benchmark",
                         values="value", aggfunc="first").reset_index()
    return wide


def mitigation_paper_table(results, table: str, phase2_data: str, with_paper: bool = False, ta=TA_BENCHMARKS,
                           la=LA_BENCHMARKS):
    """Table 3 (``phase2_data="multialpaca"``) or C6 (``"mopenorca"``): TA and LA columns per strategy and model.

    With ``with_paper`` each numeric column gets a ``<column> (paper)`` neighbour from data/paper_results.csv
    (matched by model and strategy; missing where the paper has no such row).
    """
    import pandas as pd

    cols = list(ta) + ["TA_avg"] + list(la) + ["LA_avg"]
    if results is None or len(results) == 0:
        return pd.DataFrame(columns=["model", "strategy", *cols])
    d = results[results["phase2_data"] == phase2_data][["model", "phase1_data", "strategy", *cols]].copy()
    if not with_paper:
        return d.drop(columns="phase1_data").reset_index(drop=True)
    paper = paper_table_values(table)
    paper = paper[paper["phase2_data"] == phase2_data]
    merged = d.merge(paper, on=["model", "phase1_data", "strategy"], how="left", suffixes=("", " (paper)"))
    out = merged[["model", "strategy"]].copy()
    for c in cols:
        out[c] = merged[c]
        pc = f"{c} (paper)"
        out[pc] = merged[pc] if pc in merged.columns else math.nan
    return out.reset_index(drop=True)


def pareto_front(points, x: str = "LA_avg", y: str = "TA_avg") -> list[bool]:
    """Non-dominated flags (higher is better on both axes); a point with a missing coordinate is never on it."""
    vals = [(p[x], p[y]) for _, p in points.iterrows()]
    flags = []
    for i, (xi, yi) in enumerate(vals):
        if xi != xi or yi != yi:  # NaN
            flags.append(False)
            continue
        dominated = any(j != i and xj == xj and yj == yj and xj >= xi and yj >= yi and (xj > xi or yj > yi)
                        for j, (xj, yj) in enumerate(vals))
        flags.append(not dominated)
    return flags


def plot_pareto(results, stem=None, title: str = "Task ability vs language ability"):
    """Every strategy as a point (average LA, average TA), one panel per cell, with the Phase 1 ('P1') and
    unmitigated Phase 2 ('none') baselines; non-dominated points are ringed and joined. Saved as PNG+PDF."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cells = list(dict.fromkeys(zip(results["model"], results["phase1_data"], results["phase2_data"], strict=True)))
    fig, axes = plt.subplots(1, max(1, len(cells)), figsize=(4.6 * max(1, len(cells)), 4.2), squeeze=False)
    for ax, (m, p1, p2) in zip(axes[0], cells, strict=False):
        d = results[(results.model == m) & (results.phase1_data == p1) & (results.phase2_data == p2)].reset_index()
        front = pareto_front(d)
        for (_, r), on in zip(d.iterrows(), front, strict=True):
            style = {"P1": ("s", "black"), "none": ("X", "tab:red")}.get(r["strategy"], ("o", "tab:blue"))
            ax.scatter(r["LA_avg"], r["TA_avg"], marker=style[0], color=style[1], s=46, zorder=3)
            if on:
                ax.scatter(r["LA_avg"], r["TA_avg"], s=170, facecolors="none", edgecolors="tab:green", lw=1.6,
                           zorder=2)
            if r["LA_avg"] == r["LA_avg"] and r["TA_avg"] == r["TA_avg"]:
                ax.annotate(r["strategy"], (r["LA_avg"], r["TA_avg"]), textcoords="offset points", xytext=(5, 4),
                            fontsize=8)
        fd = d[front].sort_values("LA_avg")
        if len(fd) > 1:
            ax.plot(fd["LA_avg"], fd["TA_avg"], color="tab:green", lw=1, ls="--", zorder=1)
        ax.set_title(f"{m}: {p1} → {p2}", fontsize=9)
        ax.set_xlabel("average language ability (LA)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("average task ability (TA)")
    fig.suptitle(title + " (ringed: not dominated)", fontsize=10)
    fig.tight_layout()
    if stem is not None:
        from .report import save_figure

        save_figure(fig, stem)
    return fig


def strategy_effects(results):
    """Per cell and strategy: TA and LA change against the unmitigated Phase 2 run ('none') and the share of
    the Phase 2 task-ability loss recovered (ΔTA / (TA_P1 − TA_none); missing when there was no loss)."""
    import pandas as pd

    rows = []
    for (m, p1, p2), d in results.groupby(["model", "phase1_data", "phase2_data"]):
        base = d[d.strategy == "none"]
        top = d[d.strategy == "P1"]
        if base.empty:
            continue
        ta0, la0 = float(base.TA_avg.iloc[0]), float(base.LA_avg.iloc[0])
        ta1 = float(top.TA_avg.iloc[0]) if not top.empty else math.nan
        loss = ta1 - ta0
        for _, r in d[~d.strategy.isin(["none", "P1"])].iterrows():
            dta = r.TA_avg - ta0
            rows.append({"model": m, "phase1_data": p1, "phase2_data": p2, "strategy": r.strategy,
                         "TA_avg": r.TA_avg, "LA_avg": r.LA_avg, "delta_TA": dta, "delta_LA": r.LA_avg - la0,
                         "TA_loss_recovered": dta / loss if loss == loss and loss > 0 else math.nan})
    return pd.DataFrame(rows)


def describe_effects(effects, results) -> list[str]:
    """Plain sentences, with numbers, on which strategies reduce the Phase 2 task-ability loss and at what cost in
    language ability (one paragraph per cell; missing values are said to be missing)."""
    def f(v):
        return "missing" if v != v else f"{v:+.3f}"

    lines = []
    for (m, p1, p2), d in effects.groupby(["model", "phase1_data", "phase2_data"], sort=False):
        r = results[(results.model == m) & (results.phase1_data == p1) & (results.phase2_data == p2)]
        top = r[r.strategy == "P1"]
        base = r[r.strategy == "none"]
        if top.empty or base.empty:
            lines.append(f"{m}, {p1} -> {p2}: the P1 or unmitigated P2 scores are missing; no comparison.")
            continue
        ta1, ta0 = float(top.TA_avg.iloc[0]), float(base.TA_avg.iloc[0])
        la1, la0 = float(top.LA_avg.iloc[0]), float(base.LA_avg.iloc[0])
        head = (f"{m}, {p1} -> {p2}: Phase 2 changed TA_avg by {f(ta0 - ta1)} (P1 {ta1:.3f} -> P2 {ta0:.3f}) and "
                f"LA_avg by {f(la0 - la1)} (P1 {la1:.3f} -> P2 {la0:.3f}).")
        better = d[d.delta_TA > 0].sort_values("delta_TA", ascending=False)
        if better.empty:
            head += " No strategy raised TA_avg above the unmitigated Phase 2 run."
        else:
            parts = [f"{s.strategy} (TA {f(s.delta_TA)}, LA {f(s.delta_LA)}"
                     + (f", {s.TA_loss_recovered:.0%} of the TA loss recovered" if s.TA_loss_recovered == s.TA_loss_recovered
                        else "") + ")" for s in better.itertuples()]
            head += " Strategies that reduce the task-ability loss, best first: " + "; ".join(parts) + "."
        worse = d[d.delta_TA <= 0]
        if not worse.empty:
            head += " No TA gain: " + ", ".join(f"{s.strategy} (TA {f(s.delta_TA)}, LA {f(s.delta_LA)})"
                                                for s in worse.itertuples()) + "."
        lines.append(head)
    return lines


def evaluate_mitigations(cfg: ExperimentConfig, runs: list[RunPlan], suites=("ta", "la")):
    """Tidy TA/LA results of the mitigation runs and of their cells' P1 and P2 baselines (cft_utils.evaluate)."""
    from .evaluate import evaluate_runs

    extra = {}
    for r in runs:
        for k in ("parent", "baseline"):
            extra[r.extra[k].run_id] = r.extra[k]
    return evaluate_runs(cfg, list(extra.values()) + list(runs), suites=suites)


PROBE_FAMILIES = ("A", "B", "C")


def probe_tidy(cfg: ExperimentConfig, runs: list[RunPlan]):
    """Sandbox stand-in for the benchmarks: exact match on held-out test items (cft_utils.sandbox probe) of every
    mitigation run, its P2 baseline and its P1 parent, in the tidy schema. English items give the TA columns
    ``EM-A``/``EM-B``/``EM-C`` (one per task family), the other languages the LA columns ``EM-A (xx)`` ... averaged
    over languages. Cached per run in ``probe_mitigation.json``."""
    import pandas as pd

    from .sandbox import World, exact_match_probe

    if cfg.sandbox is None:
        raise ValueError("probe_tidy needs a sandbox profile; use evaluate_mitigations")
    world = World(cfg.sandbox.world_spec())
    langs = list(cfg.sandbox.languages)
    want = {"families": list(PROBE_FAMILIES), "languages": langs}

    def probe(run) -> list[dict]:
        f = run.dir / "probe_mitigation.json"
        if f.exists() and read_json(f)["config"] == want:
            return read_json(f)["rows"]
        rows = exact_match_probe(run.model_dir, world, PROBE_FAMILIES, tuple(langs))
        if run.data_key is not None:
            write_json(f, {"config": want, "rows": rows})
        return rows

    out, seen = [], set()
    for r in runs:
        base, parent = r.extra["baseline"], r.extra["parent"]
        for ckpt, run, strategy in (("P1", parent, "none"), ("P2", base, "none"), ("P2", r, r.strategy)):
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


def ability_results(cfg: ExperimentConfig, runs: list[RunPlan]):
    """(tidy results, headline metric per benchmark, TA benchmarks, LA benchmarks, source).

    The profile's lm-eval suites (cft_utils.evaluate, ``evaluation:`` section) when it has them; else, in a
    sandbox profile, the exact-match probe of :func:`probe_tidy`.
    """
    if getattr(cfg, "evaluation", None) is not None:
        bench = cfg.evaluation.benchmarks
        metrics = {b: spec.metric for b, spec in bench.items()}
        ta = tuple(b for b, spec in bench.items() if spec.suite == "ta")
        la = tuple(b for b, spec in bench.items() if spec.suite == "la")
        return evaluate_mitigations(cfg, runs), metrics, ta, la, "lm-eval suites (cft_utils.evaluate)"
    if cfg.sandbox is None:
        raise ValueError(f"{cfg.source_file}: no 'evaluation' section to score the mitigations with")
    ta = tuple(f"EM-{f}" for f in PROBE_FAMILIES)
    la = tuple(f"EM-{f}-xx" for f in PROBE_FAMILIES)
    return (probe_tidy(cfg, runs), {b: "exact_match" for b in ta + la}, ta, la,
            "sandbox exact-match probe (the profile has no evaluation section)")


# ------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="sandbox")
    ap.add_argument("--run", action="append", default=[], help="run name from --list (repeatable); default: all")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)
    from .train import parse_overrides

    try:
        overrides = parse_overrides(args.set)
    except ValueError as e:
        ap.error(str(e))
    cfg = load_config(args.params, overrides)
    runs = plan_mitigations(cfg)
    if args.list:
        print(mitigation_table(runs).to_string(index=False))
        return 0
    by_name = {r.name: r for r in runs}
    unknown = [n for n in args.run if n not in by_name]
    if unknown:
        ap.error(f"unknown run(s) {unknown}; see --list")
    for r in [by_name[n] for n in args.run] if args.run else runs:
        execute_mitigation(r, cfg)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"done: {r.name} -> {r.model_dir}")
            print(json.dumps({"mitigation": str(Path(r.dir) / "mitigation.json")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
