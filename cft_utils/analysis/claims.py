"""The paper's six claims, each with an estimate, a 95 % interval over test items and training seeds, and a verdict
decided by the interval (cft_utils.analysis.intervals), written to ``results/<name>/claims.csv``.

| claim | measure | verdict rule |
|---|---|---|
| 1 similar Phase 2 data keeps English task ability | ΔTA_avg = TA(P2) − TA(P1), per similar cell | kept: interval above −margin |
| 2 dissimilar Phase 2 data lowers it | ΔTA_avg, per dissimilar cell | decrease: interval below 0 |
| 3 DES and MPD place similar pairs closer | DES(similar) − DES(dissimilar); MPD(dissimilar) − MPD(similar) | increase |
| 4 representations drift more for dissimilar pairs | drift(dissimilar) − drift(similar), per geometry measure | increase |
| 5 GR and LF reduce the TA loss, keeping most of the LA gain | TA(S) − TA(none) and LA(S) − LA(none) | increase; kept |
| 6 Phase 2 raises language ability | ΔLA_avg, per cell | increase |

Which Phase 2 cells are *similar* is measured (the task overlap of the two phases' data, cft_utils.evaluation.tables),
not assumed. Margins for "kept" are parameters of the profile (``claims:``), stated in the table.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import pandas as pd

from .intervals import Interval, difference, verdict_change, verdict_kept

CLAIMS = {
    1: "Phase 2 on similar data keeps English task ability",
    2: "Phase 2 on dissimilar data lowers English task ability",
    3: "DES and MPD place similar dataset pairs closer than dissimilar ones",
    4: "Representations drift more in Phase 2 after a dissimilar Phase 1",
    5: "Generative replay and layer freezing reduce the task-ability loss and keep most of the language gain",
    6: "Phase 2 raises language ability",
}
COLUMNS = ["claim", "cell", "measure", "estimate", "ci_low", "ci_high", "n_seeds", "n_items", "verdict"]


def cell_name(model: str, phase1: str, phase2: str) -> str:
    return f"{model}: {phase1} -> {phase2}"


def scores_for(items: pd.DataFrame, suite: str, groups: Mapping[str, pd.DataFrame]) -> dict:
    """``{label: {benchmark: array(seeds, items)}}`` for the ``suite``'s benchmarks from item-score frames.

    Seeds are aligned by value and items by (language, item id) across the labels, so every label is resampled
    the same way (paired)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    benches = sorted(items.loc[items["suite"] == suite, "benchmark"].unique())
    for label, g in groups.items():
        g = g[g["suite"] == suite]
        per = {}
        for b in benches:
            gb = g[g["benchmark"] == b]
            wide = gb.pivot_table(index="seed", columns=["language", "item"], values="value", aggfunc="mean")
            per[b] = wide.sort_index(axis=0).sort_index(axis=1)
        out[label] = per
    # align columns (items) per benchmark on the intersection of what every label has; a benchmark no label has
    # items of (not evaluated yet) is left out, and a label without items of a suite leaves nothing to compare
    for b in benches:
        cols = None
        for label in out:
            c = set(out[label][b].columns)
            cols = c if cols is None else cols & c
        cols = sorted(cols or [])
        for label in out:
            if cols:
                out[label][b] = out[label][b][cols].to_numpy(dtype=float)
            else:
                del out[label][b]
    if any(not per for per in out.values()):
        return {}
    return out


def _row(claim: int, cell: str, measure: str, iv: Interval, verdict: str) -> dict:
    return {"claim": claim, "cell": cell, "measure": measure, "estimate": iv.estimate, "ci_low": iv.low,
            "ci_high": iv.high, "n_seeds": iv.n_seeds, "n_items": iv.n_items, "verdict": verdict}


def _cells(items: pd.DataFrame) -> list[tuple[str, str, str]]:
    d = items[items["strategy"] == "none"]
    return list(dict.fromkeys(zip(d["model"], d["phase1_data"], d["phase2_data"], strict=True)))


def _select(items, model, p1, p2, **eq) -> pd.DataFrame:
    m = (items["model"] == model) & (items["phase1_data"] == p1) & (items["phase2_data"] == p2)
    for k, v in eq.items():
        m &= items[k] == v
    return items[m]


def ability_claims(items: pd.DataFrame, similar: Mapping[tuple[str, str], bool | None], *, margin_ta: float,
                   margin_la: float, mitigation_methods: Sequence[str], n_replicates: int = 2000,
                   seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Claims 1, 2, 5 and 6 from item scores (cft_utils.evaluation.items.item_scores).

    ``similar[(phase1_data, phase2_data)]``: True / False / None (unknown: claims 1-2 are not decided for it).
    ``mitigation_methods``: the registry names claim 5 is about (GR, LF_H1, LF_H2).
    """
    rows = []
    kw = {"n_replicates": n_replicates, "seed": seed, "level": level}
    suites = set(items["suite"])
    for model, p1, p2 in _cells(items):
        cell = cell_name(model, p1, p2)
        groups = {"P1": _select(items, model, p1, p2, checkpoint="P1", strategy="none"),
                  "P2": _select(items, model, p1, p2, checkpoint="P2", strategy="none")}
        kind = similar.get((p1, p2))
        ta_scores, la_scores = scores_for(items, "ta", groups), scores_for(items, "la", groups)
        if "ta" in suites and kind is not None and ta_scores:
            ta = difference(ta_scores, "P2", "P1", **kw)
            if kind:
                rows.append(_row(1, cell, "ΔTA_avg (P2 − P1)", ta, verdict_kept(ta, margin_ta)))
            else:
                rows.append(_row(2, cell, "ΔTA_avg (P2 − P1)", ta, verdict_change(ta, "decrease")))
        if "la" in suites and la_scores:
            la = difference(la_scores, "P2", "P1", **kw)
            rows.append(_row(6, cell, "ΔLA_avg (P2 − P1)", la, verdict_change(la, "increase")))
        mit = _select(items, model, p1, p2, checkpoint="P2")
        mit = mit[mit["method"].isin(list(mitigation_methods))]
        for label in sorted(mit["strategy"].unique(), key=str):
            g = {"none": groups["P2"], label: mit[mit["strategy"] == label]}
            ta_g, la_g = scores_for(items, "ta", g), scores_for(items, "la", g)
            if "ta" in suites and ta_g:
                dta = difference(ta_g, label, "none", **kw)
                rows.append(_row(5, cell, f"ΔTA_avg ({label} − unmitigated)", dta, verdict_change(dta, "increase")))
            if "la" in suites and la_g:
                dla = difference(la_g, label, "none", **kw)
                rows.append(_row(5, cell, f"ΔLA_avg ({label} − unmitigated)", dla, verdict_kept(dla, margin_la)))
    return pd.DataFrame(rows, columns=COLUMNS)


def seed_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean of per-seed values with a t interval over seeds (NaN interval with one seed)."""
    from scipy import stats

    v = np.asarray([x for x in values if x == x], dtype=float)
    if v.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0, 0, level)
    if v.size == 1:
        return Interval(float(v[0]), math.nan, math.nan, 1, 0, level)
    half = stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return Interval(float(v.mean()), float(v.mean() - half), float(v.mean() + half), int(v.size), 0, level)


def ordering_claim(claim: int, cell: str, measure: str, smaller: Sequence[float], larger: Sequence[float],
                   n_items: int = 0) -> dict:
    """Claims 3-4 from per-seed values that the claim expects in this order: ``larger`` − ``smaller`` > 0, with a t
    interval over seeds (no interval with one seed: inconclusive)."""
    diffs = [lg - sm for sm, lg in zip(smaller, larger, strict=True)]
    iv = seed_interval(diffs)
    iv = Interval(iv.estimate, iv.low, iv.high, iv.n_seeds, n_items, iv.level)
    return _row(claim, cell, measure, iv, verdict_change(iv, "increase"))


def des_claims(des: pd.DataFrame, comparisons, n_items: int = 0) -> pd.DataFrame:
    """Claim 3 (DES): the similar pair's DES above the dissimilar pair's, per expected ordering. The datasets are
    fixed (no seeds): the uncertainty is the sample of records, whose bootstrap interval each pair has; the interval of
    the difference is the conservative [lo_closer − hi_farther, hi_closer − lo_farther]."""
    from .des_study import pair_row

    rows = []
    for closer, farther in comparisons:
        rc, rf = pair_row(des, closer), pair_row(des, farther)
        if rc is None or rf is None:
            continue
        est = float(rc["des"]) - float(rf["des"])
        iv = Interval(est, float(rc["ci_lo"]) - float(rf["ci_hi"]), float(rc["ci_hi"]) - float(rf["ci_lo"]), 1,
                      n_items)
        rows.append(_row(3, f"DES: {'–'.join(closer)} vs {'–'.join(farther)}",
                         "DES(similar pair) − DES(dissimilar pair)", iv, verdict_change(iv, "increase")))
    return pd.DataFrame(rows, columns=COLUMNS)


def mpd_claims(orderings: pd.DataFrame) -> pd.DataFrame:
    """Claim 3 (MPD): the dissimilar pair's MPD above the similar pair's (lower MPD = closer), per model and expected
    ordering, with a t interval over training seeds (``cft_utils.analysis.mpd_study.mpd_orderings``)."""
    rows = []
    if orderings.empty:
        return pd.DataFrame(columns=COLUMNS)
    for (model, closer, farther), g in orderings.groupby(["model", "closer_pair", "farther_pair"], sort=False):
        rows.append(ordering_claim(3, f"MPD {model}: {closer} vs {farther}", "MPD(dissimilar) − MPD(similar)",
                                   list(g["closer"]), list(g["farther"])))
    return pd.DataFrame(rows, columns=COLUMNS)


def drift_claims(summary: pd.DataFrame, measures=("mean_spectral", "mean_frobenius", "mean_one_minus_cka",
                                                  "separation")) -> pd.DataFrame:
    """Claim 4: per model and geometry measure, the dissimilar pair's drift (P2 vs P1) above the similar pair's, with
    a t interval over training seeds (``summary``: one row per model, seed and pair)."""
    rows = []
    if summary.empty:
        return pd.DataFrame(columns=COLUMNS)
    keys = ["model", "seed"] if "seed" in summary.columns else ["model"]
    for model, g in summary.groupby("model", sort=False):
        wide = g.pivot_table(index=keys[1:] or None, columns="pair", values=list(measures), aggfunc="mean") \
            if len(keys) > 1 else None
        for m in measures:
            if wide is not None:
                sim, dis = wide[(m, "similar")], wide[(m, "dissimilar")]
            else:
                sim = g.loc[g["pair"] == "similar", m]
                dis = g.loc[g["pair"] == "dissimilar", m]
            rows.append(ordering_claim(4, f"{model}: Instruct vs Alpaca before MultiAlpaca", f"{m} (dissimilar − "
                                       "similar)", list(sim), list(dis)))
    return pd.DataFrame(rows, columns=COLUMNS)


def verdict_summary(claims: pd.DataFrame) -> pd.DataFrame:
    """One row per claim: how many of its rows hold, fail or are inconclusive."""
    if claims.empty:
        return pd.DataFrame(columns=["claim", "statement", "holds", "fails", "inconclusive"])
    c = claims.groupby("claim")["verdict"].value_counts().unstack(fill_value=0)
    for k in ("holds", "fails", "inconclusive"):
        if k not in c.columns:
            c[k] = 0
    c = c[["holds", "fails", "inconclusive"]].reset_index()
    c.insert(1, "statement", c["claim"].map(CLAIMS))
    return c



# ----------------------------------------------------------------------------------------------------- the profile


def similarity_map(cfg) -> dict[tuple[str, str], bool | None]:
    """``{(phase1_data, phase2_data): similar}`` from the measured task overlap (None where it cannot be measured)."""
    from ..evaluation.tables import task_overlap_similarity

    sim = task_overlap_similarity(cfg, threshold=cfg.claims.similarity_threshold)
    return {(r.phase1_data, r.phase2_data): r.similar for r in sim.itertuples()}


def grid_claims(cfg, suites: Sequence[str], mitigation_runs: Sequence = ()) -> pd.DataFrame:
    """Claims 1-2 (suite ``ta``), 6 (``la``) for every Phase 2 cell of the grid, and claim 5 for ``mitigation_runs``,
    from the evaluation caches (nothing is evaluated here)."""
    from ..evaluation.items import item_scores
    from ..evaluation.runner import plan_cells

    runs = [r for r in plan_cells(cfg) if r.phase == 2] + list(mitigation_runs)
    items = item_scores(cfg, runs, suites)
    if items.empty:
        return pd.DataFrame(columns=COLUMNS)
    c = cfg.claims
    out = ability_claims(items, similarity_map(cfg), margin_ta=c.margin_ta, margin_la=c.margin_la,
                         mitigation_methods=c.mitigation_methods, n_replicates=c.n_replicates, level=c.level)
    return out if mitigation_runs else out[out["claim"] != 5].reset_index(drop=True)


def claims_path(cfg):
    """``results/<name>/claims.csv``."""
    from ..paths import results_dir

    return results_dir(cfg) / "claims.csv"


def write_claims(cfg, rows: pd.DataFrame, claims: Sequence[int] | None = None):
    """Replace the rows of ``claims`` (default: those in ``rows``) in ``results/<name>/claims.csv``, atomically;
    the other claims' rows are kept. Returns the whole table."""
    from ..outputs import write_csv

    path = claims_path(cfg)
    claims = sorted(set(rows["claim"])) if claims is None else list(claims)
    old = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=COLUMNS)
    old = old[~old["claim"].isin(claims)]
    table = pd.concat([old, rows], ignore_index=True) if len(old) else rows.copy()
    table = table[COLUMNS].sort_values(["claim", "cell", "measure"], kind="stable").reset_index(drop=True)
    write_csv(table, path)
    return table


def read_claims(cfg) -> pd.DataFrame:
    """The claims table written so far (empty with the right columns when there is none)."""
    path = claims_path(cfg)
    return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=COLUMNS)


def describe(claims: pd.DataFrame) -> list[str]:
    """One sentence per claims row, generated from its numbers: the estimate, its interval and the verdict."""
    out = []
    for r in claims.itertuples():
        if r.ci_low != r.ci_low:
            iv = "no interval (one seed, no item resampling)"
        else:
            iv = f"95 % interval [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
        extent = f"{int(r.n_seeds)} seed(s)" + (f", {int(r.n_items)} test items" if r.n_items else "")
        out.append(f"Claim {int(r.claim)} ({CLAIMS[int(r.claim)].lower()}), {r.cell}: {r.measure} = {r.estimate:+.3f}, "
                   f"{iv}, {extent}: {r.verdict}.")
    return out


# ------------------------------------------------------------------------------------------ precision budget

PRECISION_COLUMNS = ["cell", "measure", "benchmark", "n_seeds", "n_items", "var_seed", "var_item", "var_residual"]


def precision_components(items: pd.DataFrame) -> pd.DataFrame:
    """Per Phase 2 cell, measure (ΔTA_avg, ΔLA_avg: P2 − P1) and benchmark, the variance components of the paired
    differences over seeds and items (:func:`cft_utils.analysis.intervals.variance_components`): what
    :func:`projected_widths` extrapolates to more seeds or items."""
    from .intervals import difference_components

    rows = []
    for model, p1, p2 in _cells(items):
        groups = {"P1": _select(items, model, p1, p2, checkpoint="P1", strategy="none"),
                  "P2": _select(items, model, p1, p2, checkpoint="P2", strategy="none")}
        for suite, measure in (("ta", "ΔTA_avg (P2 − P1)"), ("la", "ΔLA_avg (P2 − P1)")):
            scores = scores_for(items, suite, groups)
            if not scores:
                continue
            for bench, c in difference_components(scores, "P2", "P1").items():
                rows.append({"cell": cell_name(model, p1, p2), "measure": measure, "benchmark": bench,
                             "n_seeds": c.n_seeds, "n_items": c.n_items, "var_seed": c.seed, "var_item": c.item,
                             "var_residual": c.residual})
    return pd.DataFrame(rows, columns=PRECISION_COLUMNS)


def projected_widths(precision: pd.DataFrame, seeds: Sequence[int], item_factors: Sequence[float],
                     level: float = 0.95, fixed_items: Collection[str] = ()) -> pd.DataFrame:
    """95 % half-widths each cell's measure would have with ``seeds`` training seeds and ``item_factors`` times the
    test items (normal approximation from the variance components; at today's sizes it is a little narrower than
    the bootstrap interval, which counts the seed-by-item interaction twice). Benchmarks in ``fixed_items`` keep
    their item count."""
    from .intervals import Components, projected_half_width

    rows = []
    for (cell, measure), g in precision.groupby(["cell", "measure"], sort=False):
        comps = {r.benchmark: Components(r.var_seed, r.var_item, r.var_residual, int(r.n_seeds), int(r.n_items))
                 for r in g.itertuples()}
        for s in seeds:
            for f in item_factors:
                rows.append({"cell": cell, "measure": measure, "n_seeds": s, "item_factor": f,
                             "half_width": projected_half_width(comps, s, f, level, fixed_items)})
    return pd.DataFrame(rows, columns=["cell", "measure", "n_seeds", "item_factor", "half_width"])


def grid_precision(cfg) -> pd.DataFrame:
    """:func:`precision_components` for every Phase 2 cell of the grid, from the evaluation caches."""
    from ..evaluation.items import item_scores
    from ..evaluation.runner import plan_cells

    items = item_scores(cfg, [r for r in plan_cells(cfg) if r.phase == 2], ["ta", "la"])
    return precision_components(items) if not items.empty else pd.DataFrame(columns=PRECISION_COLUMNS)
