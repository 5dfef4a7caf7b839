"""The geometry study of notebook 09: which of the grid's runs are compared (the similar and dissimilar pairs, the
mitigation runs of Figure C4), the tidy tables behind Figures 1, 2, 3 and C4, and the sentence on whether the
dissimilar pair drifts more.

:func:`drift_pairs` picks the grid's similar and dissimilar runs (with their Phase 1 parent and base model),
:func:`cft_utils.analysis.geometry.profiles.profile_models` runs each model once over the prompt set,
:func:`drift_table`, :func:`trajectory_frames`, :func:`crosslingual_frames` and :func:`figure_c4` build the tidy
tables, and :func:`drift_verdict` turns the numbers into the sentence. The prompt sets come from
:mod:`cft_utils.analysis.prompt_sets`; every setting from the profile's ``analysis.geometry``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cft_utils.analysis.geometry.capture import capture_activations
from cft_utils.analysis.geometry.profiles import LayerProfile, compare_profiles, profile_models
from cft_utils.analysis.geometry.projections import paired_layer_distances, project_points, separation_score
from cft_utils.mitigation.plan import plan_mitigations
from cft_utils.paths import cft_home
from cft_utils.plan import base_model_source

#: The paper's two Phase 2 cells of Figures 1 and 2: (Phase 1 data, Phase 2 data).
DRIFT_PAIRS = {"similar": ("alpaca", "multialpaca"), "dissimilar": ("Instruct", "multialpaca")}


class DriftPair:
    """A Phase 2 run of the grid with its Phase 1 parent and base model (``phase1``/``phase2`` are RunPlans)."""

    def __init__(self, model: str, pair: str, base: str, phase1, phase2):
        self.model, self.pair, self.base, self.phase1, self.phase2 = model, pair, base, phase1, phase2

    @property
    def label(self) -> str:
        """``"alpaca → multialpaca"``."""
        return f"{self.phase2.phase1_data} → {self.phase2.phase2_data}"

    def sources(self) -> dict[str, str]:
        """Model directories (or hub ids) of ``base``, ``P1`` and ``P2``."""
        return {"base": self.base, "P1": str(self.phase1.model_dir), "P2": str(self.phase2.model_dir)}

    def __repr__(self) -> str:
        return f"DriftPair({self.model!r}, {self.pair!r}, {self.label!r})"


def _find_phase2(plan, model: str, phase1: str, phase2: str, seed: int | None = None):
    for r in plan.phase2:
        if r.model == model and r.phase1_data == phase1 and r.phase2_data == phase2 and seed in (None, r.seed):
            return r
    cells = sorted({f"{r.phase1_data}->{r.phase2_data}" for r in plan.phase2 if r.model == model})
    raise KeyError(f"the grid has no Phase 2 run {phase1}->{phase2} for model {model!r} (it has {cells})")


def drift_pairs(cfg, plan, pairs: Mapping[str, tuple[str, str]] = DRIFT_PAIRS, seed: int | None = None
                ) -> list[DriftPair]:
    """For each model of the grid and each named (Phase 1, Phase 2) pair: the runs to compare (of training seed
    ``seed``; None: the first seed's, which the figures show)."""
    out = []
    for model in cfg.grid.models:
        base = base_model_source(cfg, model)
        for name, (p1, p2) in pairs.items():
            run = _find_phase2(plan, model, p1, p2, seed)
            out.append(DriftPair(model, name, base, run.parent, run))
    return out


def mitigation_runs(cfg, plan, model: str, *, strategies: Sequence[str] | None = None,
                    baseline: tuple[str, str] = DRIFT_PAIRS["dissimilar"]) -> list[tuple[str, Path]]:
    """``(label, model folder)`` of the baseline Phase 2 run and of each finished mitigation run of it (Figure C4).

    The mitigation runs are the profile's planned ones (:func:`cft_utils.mitigation.plan.plan_mitigations`) whose
    ``baseline`` is that Phase 2 run and whose ``strategy`` label is in ``strategies`` (default: the profile's
    ``analysis.geometry.mitigation_strategies``), in ``strategies`` order; only finished runs count.
    """
    strategies = list(cfg.analysis.geometry.mitigation_strategies if strategies is None else strategies)
    run = _find_phase2(plan, model, *baseline)
    entries = [(f"{baseline[0]} → {baseline[1]} (no mitigation)", Path(run.model_dir))]
    planned = plan_mitigations(cfg, plan) if cfg.mitigation is not None else []
    done = {r.strategy: r for r in planned
            if r.baseline is not None and r.baseline.run_id == run.run_id and r.strategy in strategies and r.done()}
    entries += [(s, Path(done[s].model_dir)) for s in strategies if s in done]
    return entries


def mitigation_references(cfg, plan, model: str,
                          baseline: tuple[str, str] = DRIFT_PAIRS["dissimilar"]) -> dict[str, str]:
    """The models the mitigation runs are compared with: ``{"P1": Phase 1 model, "base": base model}``."""
    run = _find_phase2(plan, model, *baseline)
    return {"P1": str(run.parent.model_dir), "base": base_model_source(cfg, model)}


# --------------------------------------------------------------------------------------------------
# Comparison tables
# --------------------------------------------------------------------------------------------------

LAYER_COLUMNS = ["model", "pair", "label", "run", "comparison", "layer", "frobenius", "spectral", "cka",
                 "euclidean", "relative", "cosine_distance"]


def drift_table(pairs: Sequence[DriftPair], profiles: Mapping[str, LayerProfile]) -> pd.DataFrame:
    """Tidy per-layer table of Figure 2: P2 vs P1 and P2 vs base for each pair (columns ``LAYER_COLUMNS``)."""
    parts = []
    for p in pairs:
        src = p.sources()
        for ref in ("P1", "base"):
            df = compare_profiles(profiles[src["P2"]], profiles[src[ref]])
            parts.append(df.assign(model=p.model, pair=p.pair, label=p.label, run=p.phase2.name,
                                   comparison=f"P2 vs {ref}"))
    return pd.concat(parts, ignore_index=True)[LAYER_COLUMNS]


def mitigation_drift(entries: Sequence[tuple[str, str | os.PathLike]], references: Mapping[str, str | os.PathLike],
                     prompts, *, model: str = "", cache_root: str | os.PathLike | None = None,
                     profiles: dict[str, LayerProfile] | None = None, **kwargs) -> pd.DataFrame:
    """Per-layer drift of each ``(label, model folder)`` entry against each reference (Figure C4).

    ``references`` maps a name to a model (e.g. ``{"P1": ..., "base": ...}``); rows get
    ``comparison = "P2 vs <name>"`` and ``run = label``. Profiles are computed (or reused from ``profiles`` and
    ``cache_root``) one model at a time. Columns ``LAYER_COLUMNS``.
    """
    if not entries:
        raise ValueError("no runs to compare")
    sources = [*references.values(), *(d for _, d in entries)]
    profiles = profile_models(sources, prompts, cache_root=cache_root, profiles=profiles, **kwargs)
    parts = []
    for label, d in entries:
        for name, ref in references.items():
            df = compare_profiles(profiles[str(d)], profiles[str(ref)])
            parts.append(df.assign(model=model, pair="mitigation", label=label, run=label,
                                   comparison=f"P2 vs {name}"))
    return pd.concat(parts, ignore_index=True)[LAYER_COLUMNS]


def trajectory_frames(pairs: Sequence[DriftPair], profiles: Mapping[str, LayerProfile], *,
                      seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Figure 1: t-SNE/PCA of the Phase 1 and Phase 2 layer-mean vectors per pair, and their separation.

    Returns ``(projection frame, separation table)``. The table has, per pair, ``separation`` (centroid distance
    over pooled spread, :func:`separation_score`, of the two models' layer-mean vectors in the original space, i.e.
    the points the t-SNE is run on), ``separation_pca`` (the same on the 2-D PCA coordinates) and the mean and
    maximum over layers of the relative shift of the same layer's mean (:func:`paired_layer_distances`).
    """
    frames, rows = [], []
    for p in pairs:
        src = p.sources()
        a, b = profiles[src["P1"]], profiles[src["P2"]]
        m1, m2 = a.means, b.means
        labels = ["Phase 1"] * len(m1) + ["Phase 2"] * len(m2)
        points = np.vstack([m1, m2])
        panel = f"{p.model} · {p.pair}: {p.label}"
        frame = project_points(points, {"checkpoint": labels, "layer": a.layers + b.layers}, seed=seed)
        frames.append(frame.assign(model=p.model, pair=p.pair, label=p.label, panel=panel))
        shift = paired_layer_distances(m1, m2, layers=a.layers)
        rows.append({"model": p.model, "pair": p.pair, "label": p.label, "run": p.phase2.name, "panel": panel,
                     "n_layers": len(m1), "separation": separation_score(points, labels),
                     "separation_pca": separation_score(frame[["pca_x", "pca_y"]].to_numpy(), labels),
                     "mean_relative_shift": float(shift["relative"].mean()),
                     "max_relative_shift": float(shift["relative"].max())})
    return pd.concat(frames, ignore_index=True), pd.DataFrame(rows)


def crosslingual_frames(sources: Mapping[str, str | os.PathLike], records: Sequence[dict], *,
                        layer: int | None = None, english: str = "en", seed: int = 0, dtype: Any = "float32",
                        **kwargs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Figure 3: per-sample vectors of parallel sentences for each model, projected at one layer.

    ``sources`` maps a model name to its folder / hub id; ``records`` carry ``language``. ``layer`` is a hidden-state
    index (default: the middle one, ``n_hidden // 2``). Returns ``(projection frame at that layer, table)``; the
    table has, for every layer, the separation of the English sentences from all others (``separation_en_vs_rest``)
    and the smallest separation of English from any single language (``min_separation_en_vs_language``).
    """
    langs = np.array([r["language"] for r in records])
    if english not in langs or len(set(langs)) < 2:
        raise ValueError(f"need {english!r} and at least one other language, got {sorted(set(langs))}")
    others = [x for x in dict.fromkeys(langs.tolist()) if x != english]
    frames, rows = [], []
    for name, src in sources.items():
        acts = capture_activations(src, None, records, dtype=dtype, **kwargs)
        n_hidden = acts.shape[0]
        chosen = (n_hidden // 2 if layer is None else int(layer)) % n_hidden
        en_or_rest = np.where(langs == english, english, "other")
        for idx in range(n_hidden):
            x = acts[idx].astype(np.float64)
            pairwise = [separation_score(x[(langs == english) | (langs == o)],
                                         langs[(langs == english) | (langs == o)]) for o in others]
            rows.append({"model": name, "layer": idx, "n_sentences": len(records), "n_languages": len(others) + 1,
                         "separation_en_vs_rest": separation_score(x, en_or_rest),
                         "min_separation_en_vs_language": float(np.nanmin(pairwise)) if not np.all(
                             np.isnan(pairwise)) else float("nan"),
                         "shown": idx == chosen})
        frame = project_points(acts[chosen], {"language": langs, "id": [r.get("id") for r in records]}, seed=seed)
        frames.append(frame.assign(model=name, layer=chosen))
        del acts
    return pd.concat(frames, ignore_index=True), pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# The sandbox's question: does the dissimilar pair drift more than the similar pair?
# --------------------------------------------------------------------------------------------------


def drift_summary(separation: pd.DataFrame, drift: pd.DataFrame, comparison: str = "P2 vs P1") -> pd.DataFrame:
    """One row per (model, pair): Figure 1 separation and the layer-averaged norms and 1 - CKA of ``comparison``."""
    d = drift[drift["comparison"] == comparison].assign(one_minus_cka=lambda f: 1 - f["cka"])
    agg = (d.groupby(["model", "pair", "label"], sort=False)
           .agg(mean_spectral=("spectral", "mean"), mean_frobenius=("frobenius", "mean"),
                max_spectral=("spectral", "max"), mean_one_minus_cka=("one_minus_cka", "mean"))
           .reset_index())
    return separation[["model", "pair", "separation", "mean_relative_shift"]].merge(
        agg, on=["model", "pair"], how="outer")


_VERDICT_MEASURES = (
    ("separation", "separation of the Phase 1 / Phase 2 layer means (Figure 1)"),
    ("mean_spectral", "mean spectral norm of Σ_P2 − Σ_P1 over layers (Figure 2)"),
    ("mean_frobenius", "mean Frobenius norm of Σ_P2 − Σ_P1 over layers"),
    ("mean_one_minus_cka", "mean 1 − CKA(P1, P2) over layers"),
)


def drift_verdict(summary: pd.DataFrame, similar: str = "similar", dissimilar: str = "dissimilar") -> list[str]:
    """Sentences, one per model, stating from the numbers whether the dissimilar pair drifts more than the similar.

    ``summary`` is a :func:`drift_summary` frame. A measure that is NaN for either pair is left out and said so.
    """
    out = []
    for model, g in summary.groupby("model", sort=False):
        rows = {r["pair"]: r for _, r in g.iterrows()}
        if similar not in rows or dissimilar not in rows:
            out.append(f"{model}: no comparison (need both the {similar!r} and the {dissimilar!r} pair).")
            continue
        s, d = rows[similar], rows[dissimilar]
        parts, more, used, skipped = [], 0, 0, []
        for key, text in _VERDICT_MEASURES:
            a, b = float(d[key]), float(s[key])
            if not (np.isfinite(a) and np.isfinite(b)):
                skipped.append(text)
                continue
            used += 1
            more += a > b
            ratio = f" ({a / b:.2g}×)" if b > 0 else ""
            parts.append(f"{text}: {a:.3g} vs {b:.3g}{ratio}")
        if used == 0:
            out.append(f"{model}: no measure could be computed.")
            continue
        if more == used:
            verdict, tail = "drifts more than", "as the paper reports"
        elif more == 0:
            verdict, tail = "drifts less than", "the opposite of what the paper reports"
        else:
            verdict, tail = "does not clearly drift more than", "a mixed result, not a clear reproduction of the paper"
        sentence = (f"{model}: the dissimilar pair ({d['label']}) {verdict} the similar pair ({s['label']}), larger on "
                    f"{more} of {used} measures, {tail} — " + "; ".join(parts) + " (dissimilar vs similar).")
        if skipped:
            sentence += f" Not computable: {', '.join(skipped)}."
        out.append(sentence)
    return out


def seed_drift_summary(cfg, plan, prompts) -> pd.DataFrame:
    """:func:`drift_summary` for every training seed (one row per model, seed and pair): the input of claim 4's
    intervals over seeds (cft_utils.analysis.claims.drift_claims). Profiles are cached, so the first seed's cost
    nothing more after the figures."""
    parts = []
    for seed in cfg.training_seeds:
        pairs = drift_pairs(cfg, plan, seed=seed)
        profiles = profile_models([src for pr in pairs for src in pr.sources().values()], prompts,
                                  cache_root=geometry_cache(), **capture_settings(cfg))
        _, separation = trajectory_frames(pairs, profiles, seed=cfg.analysis.geometry.seed)
        parts.append(drift_summary(separation, drift_table(pairs, profiles)).assign(seed=seed))
    return pd.concat(parts, ignore_index=True)


def capture_settings(cfg) -> dict:
    """How a prompt becomes a vector, from the profile's ``analysis.geometry``: position, chat, batch_size,
    max_length and dtype (the keyword arguments of the capture and profile functions)."""
    g = cfg.analysis.geometry
    return {"position": g.position, "chat": g.chat, "batch_size": g.batch_size, "max_length": g.max_length,
            "dtype": g.dtype}


def geometry_cache() -> Path:
    """Where layer profiles are cached: ``$CFT_HOME/geometry``."""
    return cft_home() / "geometry"


def figure_c4(cfg, plan, prompts, profiles: dict[str, LayerProfile] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Figure C4's table: per model of the grid, the per-layer drift of the unmitigated baseline and of each finished
    mitigation run (``analysis.geometry.mitigation_strategies``) against its Phase 1 model and the base model.

    Returns (table with ``LAYER_COLUMNS``, notes naming the strategies that have no finished run yet).
    """
    strategies = list(cfg.analysis.geometry.mitigation_strategies)
    parts, notes = [], []
    for m in cfg.grid.models:
        entries = mitigation_runs(cfg, plan, m, strategies=strategies)
        absent = [s for s in strategies if s not in {label for label, _ in entries}]
        if absent:
            notes.append(f"{m}: no finished run yet for {', '.join(absent)}: "
                         + ("the figure shows the baseline alone." if len(entries) == 1 else "drawn without them."))
        parts.append(mitigation_drift(entries, mitigation_references(cfg, plan, m), prompts, model=m,
                                      cache_root=geometry_cache(), profiles=profiles, **capture_settings(cfg)))
    return pd.concat(parts, ignore_index=True), notes


def separation_notes(separation: pd.DataFrame) -> dict[str, str]:
    """Figure 1's panel notes: ``{panel: "separation …, mean relative shift …"}`` from :func:`trajectory_frames`."""
    return {r.panel: f"separation {r.separation:.3g}, mean relative shift {r.mean_relative_shift:.3g}"
            for r in separation.itertuples()}


def with_panels(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (``LAYER_COLUMNS``) with the plotting columns ``panel`` (model: comparison) and ``pair_label``."""
    return table.assign(panel=table["model"] + ": " + table["comparison"],
                        pair_label=table["pair"] + " (" + table["label"] + ")")


def figure_3(cfg, parallel: Sequence[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Figure 3: :func:`crosslingual_frames` of each grid model's base on the parallel sentences, as plain text,
    at the profile's ``analysis.geometry.crosslingual_layer`` (None: the middle one)."""
    g = cfg.analysis.geometry
    bases = {m: base_model_source(cfg, m) for m in cfg.grid.models}
    return crosslingual_frames(bases, parallel, layer=g.crosslingual_layer, seed=g.seed,
                               **{**capture_settings(cfg), "chat": False})


def crosslingual_notes(table: pd.DataFrame) -> dict[str, str]:
    """Figure 3's panel notes: ``{model: "layer l: English vs rest separation …"}`` at the layer shown."""
    shown = table[table["shown"]]
    return {r.model: f"layer {int(r.layer)}: English vs rest separation {r.separation_en_vs_rest:.3g}"
            for r in shown.itertuples()}


def crosslingual_sentences(table: pd.DataFrame) -> list[str]:
    """One sentence per model: the English-vs-rest separation at the layer shown and its range over layers."""
    out = []
    for m, g in table.groupby("model", sort=False):
        shown = g[g["shown"]].iloc[0]
        out.append(f"{m}: English vs the other {int(g.n_languages.iloc[0]) - 1} languages, "
                   f"{int(g.n_sentences.iloc[0])} sentences: separation {shown['separation_en_vs_rest']:.3g} at layer "
                   f"{int(shown['layer'])}, from {g.separation_en_vs_rest.min():.3g} to "
                   f"{g.separation_en_vs_rest.max():.3g} over layers")
    return out
