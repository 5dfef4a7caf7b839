"""Tables 3 and C6, the TA–LA Pareto figure and the strategies' effects, from tidy TA/LA scores
(:mod:`cft_utils.evaluation.mitigation_scores`); rows are ordered by the registry (:func:`registry.table_order`), so a new
strategy's rows land in its declared place without an edit here."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..config import ExperimentConfig
from ..io import read_json
from ..mitigation.registry import strategy_of, table_order
from ..outputs import save_figure, save_table
from ..paper import paper_values
from ..paths import figures_dir
from ..runs import RunPlan
from .mitigation_scores import LA_BENCHMARKS, TA_BENCHMARKS


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
    rank = {k: i for i, k in enumerate(sorted(set(df["strategy"]), key=table_order))}
    df["_o"] = df["strategy"].map(rank)
    return df.sort_values(["model", "phase1_data", "phase2_data", "_o"], kind="mergesort").drop(
        columns="_o").reset_index(drop=True)


def paper_table_values(table: str):
    """The paper's Table 3 / C6 as one row per (model, strategy) with the benchmark columns ('P1' = its '-' row)."""
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


def pareto_table(results):
    """Per cell, each strategy's TA_avg and LA_avg and whether it is on the cell's Pareto front."""
    import pandas as pd

    parts = [g.assign(non_dominated=pareto_front(g))
             for _, g in results.groupby(["model", "phase1_data", "phase2_data"], sort=False)]
    out = pd.concat(parts) if parts else results.assign(non_dominated=[])
    return out[["model", "phase2_data", "strategy", "TA_avg", "LA_avg", "non_dominated"]]


def table_name(cell) -> str:
    """The output stem of a cell's table: ``table3`` / ``tableC6`` for a paper table, else by its data."""
    return f"table{cell.table}" if cell.table else f"table_mitigation_{cell.data}"


def write_paper_tables(cfg: ExperimentConfig, results, ta=TA_BENCHMARKS, la=LA_BENCHMARKS, source: str = "",
                       out_dir=None) -> dict:
    """Table 3 / C6 (one per cell of ``mitigation.cells``) saved under ``out_dir`` (default: the profile's
    figures folder) as CSV, Markdown and LaTeX; returns {stem: table}. Each column gets the paper's value beside ours (``<column> (paper)``) when the
    paper reports any row of the table for these models (the paper profile); otherwise only ours."""
    out_dir = out_dir or figures_dir(cfg)
    tables = {}
    for cell in cfg.mitigation.cells:
        name = table_name(cell)
        t = mitigation_paper_table(results, cell.table or "", cell.data, with_paper=bool(cell.table), ta=ta, la=la)
        paper_cols = [c for c in t.columns if c.endswith(" (paper)")]
        if paper_cols and t[paper_cols].isna().all().all():
            t = t.drop(columns=paper_cols)
        save_table(t, out_dir / name, caption=f"{name}: {cell.phase1} -> {cell.data}, TA and LA per strategy"
                   + (f" ({source})" if source else "") + ". Rows: P1 = the Phase 1 model before Phase 2; none = "
                   "Phase 2 without mitigation; the others = Phase 2 with that strategy. Means over training seeds; "
                   "intervals and verdicts: the claims table (claim 5).")
        tables[name] = t
    return tables


def mitigation_checks(runs: Sequence[RunPlan]):
    """One row per finished run: what its strategy reports from ``mitigation.json`` (frozen tensors and the
    bit-identity check, reverted units, α, replay sizes, ...; :meth:`Strategy.summary`)."""
    import pandas as pd

    rows = []
    for r in runs:
        f = r.dir / "mitigation.json"
        info = read_json(f) if f.exists() else {}
        rows.append({"run": r.name, "strategy": r.strategy, **strategy_of(r).summary(info)})
    return pd.DataFrame(rows)

