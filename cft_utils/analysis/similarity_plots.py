"""Figures of the similarity notebooks: the DES heatmap and intervals (notebook 05), the MPD profiles (notebook 06).

Each function draws a pyplot figure (so that a notebook kernel's inline backend can render it; a bare
``matplotlib.figure.Figure`` showed as text only) and saves it through :func:`cft_utils.outputs.save_figure` (PNG and
PDF; shown inline in a notebook, then closed).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cft_utils.outputs import save_figure


def plot_des_heatmap(matrix: pd.DataFrame, path_stem: str | Path, title: str = "DES") -> list[Path]:
    """Draw a DES matrix as an annotated heatmap and write ``<path_stem>.png`` and ``.pdf``; return the paths."""
    values = matrix.to_numpy(dtype=float)
    size = 1.2 + 0.9 * len(matrix)
    fig = plt.figure(figsize=(size + 1.2, size))
    ax = fig.add_subplot()
    finite = values[np.isfinite(values)]
    vmin = float(min(finite.min(), 0.0)) if finite.size else 0.0
    im = ax.imshow(values, cmap="viridis", vmin=vmin, vmax=1.0)
    ax.set_xticks(range(len(matrix.columns)), [str(c) for c in matrix.columns], rotation=45, ha="right")
    ax.set_yticks(range(len(matrix.index)), [str(c) for c in matrix.index])
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center",
                    color="black" if v > vmin + 0.6 * (1 - vmin) else "white", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path_stem)


def plot_des_intervals(table: pd.DataFrame, stem=None, title: str = "DES with bootstrap intervals") -> Figure:
    """Off-diagonal DES values as points with their bootstrap intervals (and the paper's, if present)."""
    d = table[table["a"] != table["b"]].sort_values("des").reset_index(drop=True)
    fig = plt.figure(figsize=(6.4, 0.35 * len(d) + 1.2))
    ax = fig.add_subplot()
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
        save_figure(fig, stem)
    return fig


def plot_mpd_profile(profile: pd.DataFrame, stem=None, title: str = "Where the models differ") -> Figure:
    """Per-layer (top row) and per-module (bottom row) L2 difference, one column per comparison group (the mean over
    training seeds where the profile has several)."""
    profile = profile.groupby(["level", "comparison", "model", "phase2_data", "phase1_data", "part"], sort=False,
                              as_index=False)["l2"].mean()
    groups = list(dict.fromkeys(
        (c, m, d2) for c, m, d2 in zip(profile["comparison"], profile["model"], profile["phase2_data"], strict=True)
        if c == "phase1_vs_reference"))
    drift = profile[profile["comparison"] == "phase2_drift"]
    ncols = len(groups) + (1 if not drift.empty else 0)
    fig = plt.figure(figsize=(3.6 * ncols, 6))
    axes = fig.subplots(2, ncols, squeeze=False)
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
        save_figure(fig, stem)
    return fig
