"""DES and MPD over a profile's datasets and runs (notebooks 05-06), and the pre-flight forgetting-risk report.

:mod:`cft_utils.similarity` computes the measures on plain data; this module applies them to a profile:

* **DES** over every dataset of the profile (plus, in the sandbox, the world's Instruct mixture, the data
  the sandbox Instruct model was trained on), with bootstrap intervals, the paper's values beside ours, and
  ordering checks (do the similar pairs score higher than the dissimilar ones?).
* **MPD** as the paper defines it (§3.3): two models fine-tuned *from the same base*, one on the Phase 1 set
  D1 and one on the Phase 2 set D2, normalised by the largest value among the compared models. The grid has
  no model fine-tuned from the base on D2, so :func:`reference_runs` plans one per Phase 2 set (same
  hyper-parameters as Phase 1; a content-addressed run like any other). The Phase 1 models (Alpaca,
  OpenOrca, Instruct) are then compared with that reference. We also report the Phase 2 *drift*
  ``||θ_P2 - θ_P1||`` of every Phase 2 run, the distance Phase 2 actually moved each model.
* **LF_H2 layers**: for each Phase 1 model the layers whose q/k/v projections changed most from the base
  (:func:`lf_h2_layers`), written for the mitigation notebooks.
* **Forgetting risk** (:func:`forgetting_risk`): before spending GPU hours on Phase 2, DES between what the
  Phase 1 model learned (or a stand-in) and the candidate Phase 2 set, the Phase 1 model's language-ability
  baseline, and a plain-language reading.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import similarity as sim
from .train import (
    use_profile_threads,  # noqa: F401  (re-exported: the notebooks call study.use_profile_threads)
)

#: Name of the Instruct data in DES tables (the sandbox world's ``instruct`` mixture, or a stand-in).
INSTRUCT = "instruct"

#: The paper's orderings as (closer pair, farther pair): each Phase 1 set is closer to the Phase 2 set with
#: the same tasks (§3.3: Alpaca-MultiAlpaca 0.924 > Alpaca-mOpenOrca 0.792; OpenOrca-mOpenOrca 0.953 >
#: OpenOrca-MultiAlpaca 0.774), each Phase 2 set closer to the Phase 1 set with its tasks, and the Instruct
#: data farther from MultiAlpaca than Alpaca is (MPD: Alpaca lowest, Instruct higher).
PAPER_ORDERING = (
    (("alpaca", "multialpaca"), ("alpaca", "mopenorca")),
    (("openorca", "mopenorca"), ("openorca", "multialpaca")),
    (("alpaca", "multialpaca"), ("openorca", "multialpaca")),
    (("openorca", "mopenorca"), ("alpaca", "mopenorca")),
    (("alpaca", "multialpaca"), (INSTRUCT, "multialpaca")),
)


def _label(data_key: str) -> str:
    """Dataset label in DES/MPD tables: the grid's ``Instruct`` is the ``instruct`` data."""
    return INSTRUCT if data_key == "Instruct" else data_key


# ------------------------------------------------------------------------------------------------- DES


def instruct_records(cfg, stand_in: str | None = None) -> tuple[list[dict], str]:
    """(records, note) standing for the Instruct models' undisclosed data.

    In the sandbox: the world's ``instruct`` mixture, which *is* the sandbox Instruct model's data. Without
    a sandbox: the dataset ``stand_in`` of the profile (default ``alpaca``, a public instruction set of the
    same general kind; the real Instruct data of Mistral/LLaMA-3 is not published).
    """
    from .data import load_records

    if cfg.sandbox is not None and stand_in is None:
        from .sandbox import World

        return World(cfg.sandbox.world_spec()).dataset("instruct"), (
            "the sandbox world's instruct mixture (the data the sandbox Instruct model was trained on)")
    key = stand_in or "alpaca"
    if key not in cfg.datasets:
        raise KeyError(f"{cfg.source_file}: no dataset {key!r} to stand in for the Instruct data "
                       f"(have {sorted(cfg.datasets)})")
    return load_records(cfg, key), (f"stand-in: the profile's {key!r} set (the Instruct models' own "
                                    "instruction data is not published)")


def des_datasets(cfg, include_instruct: bool = True) -> dict[str, list[dict]]:
    """Every dataset of the profile by key, plus (sandbox only) the world's Instruct mixture as ``instruct``."""
    from .data import load_records

    out = {key: load_records(cfg, key) for key in cfg.datasets}
    if include_instruct and cfg.sandbox is not None and INSTRUCT not in out:
        out[INSTRUCT] = instruct_records(cfg)[0]
    return out


def des_study(datasets: Mapping[str, Sequence], encoder, *, encoder_name: str = "", profile: str = "",
              n: int | None = sim.DEFAULT_SAMPLE_SIZE, fields: Sequence[str] = sim.DEFAULT_FIELDS,
              seed: int = 0, n_boot: int = 1000, ci: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(tidy DES table with the settings as columns, square matrix) over ``datasets``; see ``des_matrix``."""
    table, matrix = sim.des_matrix(datasets, encoder, fields=fields, n=n, seed=seed, n_boot=n_boot, ci=ci)
    table.insert(0, "profile", profile)
    table.insert(1, "encoder", encoder_name)
    table["fields"] = "+".join(fields)
    table["sample_size"] = n
    table["seed"] = seed
    table["n_boot"] = n_boot
    table["ci_level"] = ci
    return table, matrix


def with_paper_des(table: pd.DataFrame, path=None) -> pd.DataFrame:
    """``table`` (columns a, b) with a ``paper_des`` column: the paper's LaBSE value for the pair, else NaN."""
    from .paper import paper_values

    paper = paper_values(benchmark="DES", dataset_keys=True, path=path)
    lookup = {frozenset((r.phase1_data, r.phase2_data)): r.value for r in paper.itertuples()}
    out = table.copy()
    out["paper_des"] = [lookup.get(frozenset((a, b)), math.nan) for a, b in zip(out["a"], out["b"], strict=True)]
    return out


def _pair_row(table: pd.DataFrame, pair: tuple[str, str]):
    a, b = pair
    hit = table[((table["a"] == a) & (table["b"] == b)) | ((table["a"] == b) & (table["b"] == a))]
    return None if hit.empty else hit.iloc[0]


def ordering_checks(table: pd.DataFrame, comparisons=PAPER_ORDERING, value: str = "des",
                    higher_is_closer: bool = True, lo: str | None = "ci_lo",
                    hi: str | None = "ci_hi") -> pd.DataFrame:
    """Whether each expected (closer pair, farther pair) ordering holds in ``table`` (columns a, b, value).

    ``holds``: the point values order as expected; ``separated``: the intervals (``lo``/``hi`` columns,
    when present) do not overlap, so the ordering is not sampling noise. Comparisons whose datasets are
    not in the table are left out.
    """
    rows = []
    for closer, farther in comparisons:
        rc, rf = _pair_row(table, closer), _pair_row(table, farther)
        if rc is None or rf is None:
            continue
        vc, vf = float(rc[value]), float(rf[value])
        holds = vc > vf if higher_is_closer else vc < vf
        has_ci = lo in table.columns and hi in table.columns if lo and hi else False
        if has_ci and all(np.isfinite([rc[lo], rc[hi], rf[lo], rf[hi]])):
            separated = bool(rc[lo] > rf[hi]) if higher_is_closer else bool(rc[hi] < rf[lo])
        else:
            separated = None
        rows.append({"closer_pair": "–".join(closer), "closer": vc, "farther_pair": "–".join(farther),
                     "farther": vf, "holds": bool(holds), "separated": separated})
    return pd.DataFrame(rows, columns=["closer_pair", "closer", "farther_pair", "farther", "holds", "separated"])


def describe_orderings(checks: pd.DataFrame, measure: str = "DES") -> str:
    """A plain-language summary, with the numbers, of :func:`ordering_checks` output."""
    if checks.empty:
        return f"{measure}: none of the expected orderings can be checked (datasets missing)."
    lines = []
    for r in checks.itertuples():
        verdict = "holds" if r.holds else "does NOT hold"
        sep = {True: ", intervals separate", False: ", but the intervals overlap", None: ""}[r.separated]
        lines.append(f"- {r.closer_pair} ({r.closer:.3f}) closer than {r.farther_pair} ({r.farther:.3f}): "
                     f"{verdict}{sep if r.holds else ''}")
    n_hold = int(checks["holds"].sum())
    return (f"{measure}: the paper's ordering holds in {n_hold} of {len(checks)} comparisons.\n"
            + "\n".join(lines))


def plot_des_intervals(table: pd.DataFrame, stem=None, title: str = "DES with bootstrap intervals"):
    """Off-diagonal DES values as points with their bootstrap intervals (and the paper's, if present)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    d = table[table["a"] != table["b"]].sort_values("des").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(d) + 1.2))
    y = np.arange(len(d))
    # Lines from ci_lo to ci_hi, not error bars: near 1 a cosine of means' percentile interval can lie
    # wholly below the point value (resampling only adds noise), which error bars cannot draw.
    ax.hlines(y, d["ci_lo"], d["ci_hi"], color="tab:blue", lw=2, alpha=0.6, label="95% bootstrap interval")
    ax.plot(d["des"], y, "o", color="tab:blue", label="ours")
    if "paper_des" in d and d["paper_des"].notna().any():
        ax.plot(d["paper_des"], y, "s", color="tab:red", label="paper (LaBSE)")
    ax.set_yticks(y, [f"{a} – {b}" for a, b in zip(d["a"], d["b"], strict=True)])
    ax.set_xlabel("DES")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    if stem is not None:
        from .report import save_figure

        save_figure(fig, stem)
    return fig


# ------------------------------------------------------------------------------------------------- models


def local_model_dir(path_or_id: str | Path, revision: str | None = None) -> Path:
    """A local checkpoint folder for ``path_or_id``: the folder itself, else a hub snapshot (weights + json)."""
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        return p
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(path_or_id), revision=revision,
                                  allow_patterns=["*.safetensors", "*.json"]))


def base_model_dir(cfg, model: str) -> Path:
    """The base checkpoint of grid model ``model`` (the sandbox base LM, or the hub model's snapshot)."""
    spec = next((m for m in cfg.models if m.name == model), None)
    if spec is None:
        raise KeyError(f"{cfg.source_file}: no model named {model!r}")
    if spec.base == "sandbox":
        from .train import ensure_sandbox

        return ensure_sandbox(cfg)["base"]
    return local_model_dir(spec.base, spec.revision)


def run_model_dir(run) -> Path:
    """Local weights of a planned run; raises naming the run when it is not done (run notebooks 01-02)."""
    if not run.done():
        raise RuntimeError(f"run {run.name} ({run.run_id}) is not done: run notebooks 01 and 02 first")
    return local_model_dir(run.model_dir)


def reference_runs(cfg, data_keys: Sequence[str] | None = None):
    """(config, runs): fine-tune each grid model's base on each Phase 2 set, the paper's MPD reference M2.

    ``data_keys`` defaults to every Phase 2 set of the grid. The runs use the Phase 1 hyper-parameters and
    are planned like Phase 1 runs (content-addressed ids; done runs are skipped by ``train.execute``). The
    returned config is the profile with those keys added to ``grid.phase1``; pass it to ``train.execute``.
    """
    from .train import plan_runs

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


MPD_COLUMNS = ["comparison", "model", "phase1_data", "phase2_data", "run_a", "run_b", "mpd", "mpd_normalised",
               "relative", "drift_from_base", "reference_drift", "update_cosine"]


def mpd_to_reference(cfg, plan, refs, **kwargs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The paper's MPD: each Phase 1 model vs the base fine-tuned on each Phase 2 set (normalised per group).

    Returns (table with :data:`MPD_COLUMNS`, per-layer and per-kind profile). ``comparison`` is
    ``phase1_vs_reference``; ``mpd_normalised`` divides by the largest MPD among the Phase 1 models compared
    with the same reference, as the paper does. ``kwargs`` go to ``parameter_difference``.
    """
    tables, profiles = [], []
    for model in cfg.grid.models:
        base = base_model_dir(cfg, model)
        p1 = {r.phase1_data: r for r in plan.phase1 if r.model == model}
        for ref in (r for r in refs if r.model == model):
            finetuned = {_label(k): run_model_dir(r) for k, r in p1.items() if k != ref.phase1_data}
            comp = sim.compare_models(base, finetuned, run_model_dir(ref), f"base→{ref.phase1_data}", **kwargs)
            t = comp.table()
            ref_norm = math.sqrt(comp.to_reference[next(iter(finetuned))].tensors["sq_b"].sum())
            tables.append(pd.DataFrame({
                "comparison": "phase1_vs_reference", "model": model, "phase1_data": t["model"],
                "phase2_data": ref.phase1_data,
                "run_a": [p1["Instruct" if m == INSTRUCT else m].run_id for m in t["model"]],
                "run_b": ref.run_id, "mpd": t["mpd"], "mpd_normalised": t["mpd_normalised"],
                "relative": t["mpd"] / ref_norm if ref_norm > 0 else math.nan,
                "drift_from_base": t["drift_from_base"], "reference_drift": t["reference_drift"],
                "update_cosine": t["update_cosine"]}))
            for level in ("layer", "kind"):
                prof = comp.profile(level).rename(columns={"model": "phase1_data"}).drop(columns=["reference"])
                profiles.append(_rename_profile(prof, level, {"comparison": "phase1_vs_reference", "model": model,
                                                              "phase2_data": ref.phase1_data}))
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
        parent = run.extra["parent"]
        d = sim.parameter_difference(run_model_dir(parent), run_model_dir(run), **kwargs)
        norm_p1 = math.sqrt(d.tensors["sq_a"].sum())
        rows.append({"comparison": "phase2_drift", "model": run.model, "phase1_data": _label(run.phase1_data),
                     "phase2_data": run.phase2_data, "run_a": parent.run_id, "run_b": run.run_id,
                     "mpd": d.total_l2, "relative": d.total_l2 / norm_p1 if norm_p1 > 0 else math.nan})
        for level, g in (("layer", d.by_layer()), ("kind", d.by_kind())):
            g = g.drop(columns=["sq_a", "sq_b"]).assign(phase1_data=_label(run.phase1_data))
            profiles.append(_rename_profile(g, level, {"comparison": "phase2_drift", "model": run.model,
                                                       "phase2_data": run.phase2_data}))
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
    """:func:`ordering_checks` on MPD (lower = closer) for one ``comparison`` kind, per model."""
    d = mpd_table[mpd_table["comparison"] == comparison]
    parts = []
    for model, g in d.groupby("model", sort=False):
        g = g.rename(columns={"phase1_data": "a", "phase2_data": "b"})
        parts.append(ordering_checks(g, comparisons, value="mpd", higher_is_closer=False, lo=None, hi=None
                                     ).assign(model=model))
    if not parts:
        return pd.DataFrame(columns=["closer_pair", "closer", "farther_pair", "farther", "holds", "separated",
                                     "model"])
    return pd.concat(parts, ignore_index=True)


def with_paper_mpd(table: pd.DataFrame, path=None) -> pd.DataFrame:
    """``table`` with ``paper_mpd_normalised``: the paper's value for (model, Phase 1, Phase 2 data), else NaN.

    Only ``phase1_vs_reference`` rows can match; values the paper's text lost stay NaN.
    """
    from .paper import paper_values

    paper = paper_values(benchmark="MPD_normalised", dataset_keys=True, path=path)
    lookup = {(r.model, _label(r.phase1_data), r.phase2_data): r.value for r in paper.itertuples()}
    out = table.copy()
    out["paper_mpd_normalised"] = [
        lookup.get((m, a, b), math.nan) if c == "phase1_vs_reference" else math.nan
        for c, m, a, b in zip(out["comparison"], out["model"], out["phase1_data"], out["phase2_data"], strict=True)]
    return out


def des_mpd_agreement(des_table: pd.DataFrame, mpd_table: pd.DataFrame) -> pd.DataFrame:
    """Per (model, Phase 2 set): the Phase 1 sets ordered by DES (high first) and by MPD (low first).

    ``agree`` is True when both orders are the same; ``spearman`` is the rank correlation of DES with -MPD
    (NaN with fewer than three sets). Only ``phase1_vs_reference`` rows of ``mpd_table`` are used.
    """
    rows = []
    ref = mpd_table[mpd_table["comparison"] == "phase1_vs_reference"]
    for (model, d2), g in ref.groupby(["model", "phase2_data"], sort=False):
        des_vals = {}
        for d1 in g["phase1_data"]:
            r = _pair_row(des_table, (d1, d2))
            des_vals[d1] = float(r["des"]) if r is not None else math.nan
        g = g.assign(des=g["phase1_data"].map(des_vals)).dropna(subset=["des"])
        by_des = g.sort_values("des", ascending=False)["phase1_data"].tolist()
        by_mpd = g.sort_values("mpd", ascending=True)["phase1_data"].tolist()
        rho = (g["des"].rank().corr(-g["mpd"].rank(), method="pearson") if len(g) >= 3 else math.nan)
        rows.append({"model": model, "phase2_data": d2, "by_des": " > ".join(by_des),
                     "by_mpd": " < ".join(by_mpd), "agree": by_des == by_mpd, "spearman": rho})
    return pd.DataFrame(rows, columns=["model", "phase2_data", "by_des", "by_mpd", "agree", "spearman"])


def plot_mpd_profile(profile: pd.DataFrame, stem=None, title: str = "Where the models differ"):
    """Per-layer (top row) and per-module (bottom row) L2 difference, one column per comparison group."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    groups = list(dict.fromkeys(
        (c, m, d2) for c, m, d2 in zip(profile["comparison"], profile["model"], profile["phase2_data"], strict=True)
        if c == "phase1_vs_reference"))
    drift = profile[profile["comparison"] == "phase2_drift"]
    ncols = len(groups) + (1 if not drift.empty else 0)
    fig, axes = plt.subplots(2, ncols, figsize=(3.6 * ncols, 6), squeeze=False)
    panels = [(g, profile[(profile["comparison"] == g[0]) & (profile["model"] == g[1])
                          & (profile["phase2_data"] == g[2])], "phase1_data",
               f"{g[1]}: Phase 1 model vs base→{g[2]}") for g in groups]
    if not drift.empty:
        drift = drift.assign(cell=drift["phase1_data"] + "→" + drift["phase2_data"])
        panels.append((None, drift, "cell", "Phase 2 drift ||P2 − P1||"))
    for col, (_, d, series, panel_title) in enumerate(panels):
        layers = d[d["level"] == "layer"].copy()
        layers["layer_idx"] = layers["part"].astype(int)
        for name, g in layers.groupby(series, sort=False):
            g = g.sort_values("layer_idx")
            axes[0][col].plot(g["layer_idx"], g["l2"], marker="o", label=name)
        axes[0][col].set(title=panel_title, xlabel="layer", ylabel="L2 difference")
        axes[0][col].xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0][col].title.set_fontsize(9)
        axes[0][col].legend(fontsize=7)
        axes[0][col].grid(alpha=0.3)
        kinds = d[d["level"] == "kind"].pivot_table(index="part", columns=series, values="l2", sort=False)
        kinds.plot.bar(ax=axes[1][col], legend=False, width=0.8)
        axes[1][col].set(xlabel="module", ylabel="L2 difference")
        axes[1][col].grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    if stem is not None:
        from .report import save_figure

        save_figure(fig, stem)
    return fig


# ------------------------------------------------------------------------------------------------- LF_H2


def default_lf_top_k(num_layers: int) -> int:
    """The paper froze 10 of 32 layers: the same share of ``num_layers``, rounded, at least 1."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    return max(1, round(num_layers * 10 / 32))


def lf_h2_layers(cfg, plan, top_k: int | None = None, measure: str = "absolute",
                 modules: Sequence[str] = ("q_proj", "k_proj", "v_proj"), **kwargs) -> tuple[dict, pd.DataFrame]:
    """LF_H2's input: per Phase 1 run, the ``top_k`` layers whose q/k/v changed most from the base.

    ``top_k`` None = :func:`default_lf_top_k` of the model's layer count. Returns (a JSON-able dict keyed by
    Phase 1 run name with run_id, num_layers, top_k and ``layers`` {module: [layer, ...] most changed
    first}; the tidy ranking table of every layer).
    """
    from .io import read_json

    out = {"measure": measure, "modules": list(modules),
           "top_k_rule": "given" if top_k is not None else "round(num_layers * 10 / 32), at least 1",
           "runs": {}}
    tables = []
    for model in cfg.grid.models:
        base = base_model_dir(cfg, model)
        num_layers = int(read_json(base / "config.json")["num_hidden_layers"])
        k = top_k if top_k is not None else default_lf_top_k(num_layers)
        for run in (r for r in plan.phase1 if r.model == model):
            ranking, table = sim.layer_change_ranking(base, run_model_dir(run), modules, k, measure, **kwargs)
            out["runs"][run.name] = {"run_id": run.run_id, "model": model, "phase1_data": run.phase1_data,
                                     "num_layers": num_layers, "top_k": k, "layers": ranking}
            tables.append(table.assign(model=model, phase1_data=run.phase1_data, run_id=run.run_id))
    return out, pd.concat(tables, ignore_index=True)


# ------------------------------------------------------------------------------------------------- risk


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


def la_probe(cfg, run, families: Sequence[str] = ("A", "B"), languages: Sequence[str] | None = None
             ) -> pd.DataFrame:
    """Sandbox language-ability baseline: exact match of the run's model on held-out items in the other
    languages, per family and language (cached in the run folder as ``la_probe.json``)."""
    from .io import read_json, write_json
    from .sandbox import World, exact_match_probe

    if cfg.sandbox is None:
        raise ValueError(f"{cfg.source_file}: la_probe needs a sandbox world; pass benchmark results instead")
    world = World(cfg.sandbox.world_spec())
    langs = list(languages or world.other_languages)
    want = {"families": list(families), "languages": langs}
    cache = run.dir / "la_probe.json"
    if cache.exists() and read_json(cache)["config"] == want:
        rows = read_json(cache)["rows"]
    else:
        rows = exact_match_probe(run_model_dir(run), world, tuple(families), tuple(langs))
        if run.data_key is not None:
            write_json(cache, {"config": want, "rows": rows})
    return pd.DataFrame(rows)


def _la_mean(df: pd.DataFrame | None) -> float | None:
    if df is None or df.empty:
        return None
    col = next((c for c in ("value", "exact_match", "score") if c in df.columns), None)
    if col is None:
        raise ValueError(f"la_baseline needs a 'value' (or 'exact_match'/'score') column; has {list(df.columns)}")
    vals = pd.to_numeric(df[col], errors="coerce").dropna()
    return float(vals.mean()) if len(vals) else None


def _risk_from_des(cand: pd.Series, others: pd.DataFrame) -> tuple[str, str]:
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


def forgetting_risk(cfg, phase1_run, phase2_key: str, encoder, la_baseline: pd.DataFrame | None = None, *,
                    alternatives: Sequence[str] | None = None, instruct_stand_in: str | None = None,
                    probe_la: bool = True, n: int | None = sim.DEFAULT_SAMPLE_SIZE,
                    fields: Sequence[str] = sim.DEFAULT_FIELDS, seed: int = 0, n_boot: int = 1000,
                    ci: float = 0.95) -> ForgettingRisk:
    """Pre-flight report: is ``phase2_key`` similar to what ``phase1_run`` learned, and what LA does it have?

    * DES between the Phase 1 run's data (for an Instruct model: :func:`instruct_records`, a stand-in
      outside the sandbox, named in ``data_note``) and the candidate, and between that data and each of
      ``alternatives`` (default: the grid's other Phase 2 sets), with bootstrap intervals.
    * The Phase 1 model's language-ability baseline: ``la_baseline`` (a DataFrame with a ``value`` column,
      e.g. the evaluation notebooks' LA benchmark results for this model) when given; else, in the sandbox
      and with ``probe_la``, :func:`la_probe`; else missing (None, never 0).
    * ``risk`` in {"lower", "higher", "unclear"} and a plain-language ``reading``.
    """
    from .data import load_records

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
    sets = {"__phase1__": p1_records, phase2_key: load_records(cfg, phase2_key)}
    sets.update({k: load_records(cfg, k) for k in alts})
    table, _ = sim.des_matrix(sets, encoder, fields=fields, n=n, seed=seed, n_boot=n_boot, ci=ci)
    vs = table[(table["a"] == "__phase1__") & (table["b"] != "__phase1__")].rename(columns={"b": "phase2_data"})
    vs = vs[["phase2_data", "des", "ci_lo", "ci_hi"]].reset_index(drop=True)
    cand = vs[vs["phase2_data"] == phase2_key].iloc[0]
    others = vs[vs["phase2_data"] != phase2_key]
    risk, des_sentence = _risk_from_des(cand, others)

    if la_baseline is not None:
        la, la_source = la_baseline, "given (la_baseline)"
    elif probe_la and cfg.sandbox is not None:
        la = la_probe(cfg, phase1_run)
        la_source = "sandbox exact-match probe, families " + ", ".join(sorted(la["family"].unique()))
    else:
        la, la_source = None, "missing (no LA results given, no sandbox probe)"
    la_mean = _la_mean(la)
    langs = ", ".join(sorted(la["language"].astype(str).unique())) if la is not None and "language" in la else ""
    la_sentence = (f"Language-ability baseline of the Phase 1 model: {la_mean:.3f} on average"
                   f"{' over ' + langs if langs else ''} ({la_source}). The paper's advice: measure this before "
                   "Phase 2 and judge Phase 2 by what it adds over it."
                   if la_mean is not None else
                   "Language-ability baseline of the Phase 1 model: missing; evaluate the Phase 1 model on the "
                   "LA benchmarks first (the paper's advice) and pass the results as la_baseline.")
    reading = (f"{phase1_run.name} → {phase2_key}: DES {cand['des']:.3f} [{cand['ci_lo']:.3f}, {cand['ci_hi']:.3f}] "
               f"between {compared} ({note}) and {phase2_key}. {des_sentence} {la_sentence}")
    return ForgettingRisk(phase1_run.name, phase1_run.model, phase1_run.phase1_data, compared, note, phase2_key,
                          float(cand["des"]), float(cand["ci_lo"]), float(cand["ci_hi"]), vs, la, la_source,
                          la_mean, risk, reading)
