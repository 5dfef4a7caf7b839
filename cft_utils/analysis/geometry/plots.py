"""Figures of the geometry analysis: t-SNE/PCA panels (Figures 1 and 3) and per-layer curves (Figures 2, C4, CKA).

Each function draws a pyplot figure (pyplot, so that a notebook kernel's inline backend can render it; a bare
``matplotlib.figure.Figure`` showed as text only) and saves it through :func:`cft_utils.outputs.save_figure` (PNG and
PDF; shown inline in a notebook, then closed), returning ``(figure, paths)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from cft_utils.analysis.geometry.covariance import NORMS
from cft_utils.outputs import save_figure


def _new_figure(nrows: int, ncols: int, width: float, height: float):
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
    return fig, axes


def plot_projections(
    frame: pd.DataFrame,
    path_stem: str | os.PathLike,
    *,
    hue: str = "model",
    panel: str | None = None,
    layer: str | None = "layer",
    panel_notes: Mapping[Any, str] | None = None,
    title: str | None = None,
):
    """t-SNE (left) and PCA (right) side by side, one row per ``panel`` value; returns ``(fig, paths)``.

    ``frame`` is a :func:`project_points` output (concatenated per panel when t-SNE was run per panel).
    Points of one ``hue`` value are joined in ``layer`` order (the layer trajectory), with the first and
    last layer numbered. ``panel_notes`` adds text (e.g. the separation score) to a row's titles.
    """
    needed = (
        {"tsne_x", "tsne_y", "pca_x", "pca_y", hue}
        | ({panel} if panel else set())
        | ({layer} if layer else set())
    )
    missing = needed - set(frame.columns)
    if missing:
        raise KeyError(f"projection frame lacks columns {sorted(missing)}")
    panels = list(dict.fromkeys(frame[panel])) if panel else [None]
    fig, axes = _new_figure(len(panels), 2, 4.6, 4.0)
    colours = {h: f"C{i}" for i, h in enumerate(dict.fromkeys(frame[hue]))}
    for r, pv in enumerate(panels):
        sub = frame if pv is None else frame[frame[panel] == pv]
        note = (panel_notes or {}).get(pv, "")
        for c, (kind, xcol, ycol) in enumerate((("t-SNE", "tsne_x", "tsne_y"), ("PCA", "pca_x", "pca_y"))):
            ax = axes[r, c]
            for h, g in sub.groupby(hue, sort=False):
                if layer:  # join a model's layers in order; points without a layer order stay unjoined
                    g = g.sort_values(layer)
                    ax.plot(g[xcol], g[ycol], "-", color=colours[h], alpha=0.3, lw=0.8)
                ax.scatter(g[xcol], g[ycol], s=18, color=colours[h], label=str(h))
                if layer and len(g):
                    for idx in {g.index[0], g.index[-1]}:
                        ax.annotate(
                            str(g.at[idx, layer]),
                            (g.at[idx, xcol], g.at[idx, ycol]),
                            fontsize=7,
                            xytext=(3, 3),
                            textcoords="offset points",
                        )
            head = f"{kind}" + (f" — {pv}" if pv is not None else "")
            if kind == "t-SNE" and "perplexity" in sub:
                head += f" (perplexity {sub['perplexity'].iloc[0]:.3g})"
            ax.set_title(head + (f"\n{note}" if note else ""), fontsize=9)
            if kind == "PCA" and "pc1_var" in sub:
                ax.set_xlabel(f"PC1 ({100 * sub['pc1_var'].iloc[0]:.1f}% var.)")
                ax.set_ylabel(f"PC2 ({100 * sub['pc2_var'].iloc[0]:.1f}% var.)")
            else:
                ax.set_xlabel(f"{kind} 1")
                ax.set_ylabel(f"{kind} 2")
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig, save_figure(fig, path_stem)


NORM_LABELS = {
    "frobenius": r"Frobenius norm $\|\Sigma_A-\Sigma_B\|_F$",
    "spectral": r"spectral norm $\|\Sigma_A-\Sigma_B\|_2$ (largest singular value)",
}


def plot_layer_norms(
    frame: pd.DataFrame,
    path_stem: str | os.PathLike,
    *,
    norm: str = "spectral",
    hue: str = "comparison",
    panel: str | None = None,
    logy: bool = False,
    title: str | None = None,
):
    """Per-layer covariance-difference norm curves, one line per ``hue``, one column per ``panel``; ``(fig, paths)``.

    ``frame`` is tidy (``layer``, ``frobenius``/``spectral`` and the grouping columns, e.g. concatenated
    :func:`covariance_difference_norms` outputs). The y-axis label names the norm shown.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return plot_layer_metric(frame, path_stem, value=norm, ylabel=NORM_LABELS[norm], hue=hue, panel=panel,
                             logy=logy, title=title)


def plot_layer_metric(
    frame: pd.DataFrame,
    path_stem: str | os.PathLike,
    *,
    value: str,
    ylabel: str,
    hue: str = "comparison",
    panel: str | None = None,
    logy: bool = False,
    title: str | None = None,
):
    """Per-layer curves of any ``value`` column (e.g. ``cka``), one line per ``hue``, one column per ``panel``."""
    from matplotlib.ticker import MaxNLocator

    needed = {"layer", value, hue} | ({panel} if panel else set())
    missing = needed - set(frame.columns)
    if missing:
        raise KeyError(f"frame lacks columns {sorted(missing)}")
    panels = list(dict.fromkeys(frame[panel])) if panel else [None]
    fig, axes = _new_figure(1, len(panels), 5.0, 3.6)
    colours = {h: f"C{i}" for i, h in enumerate(dict.fromkeys(frame[hue]))}
    for c, pv in enumerate(panels):
        ax = axes[0, c]
        sub = frame if pv is None else frame[frame[panel] == pv]
        for h, g in sub.groupby(hue, sort=False):
            g = g.sort_values("layer")
            ax.plot(g["layer"], g[value], "o-", ms=3, color=colours[h], label=str(h))
        ax.set_xlabel("layer (0 = embeddings)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        if logy:
            ax.set_yscale("log")
        if pv is not None:
            ax.set_title(str(pv), fontsize=9)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig, save_figure(fig, path_stem)
