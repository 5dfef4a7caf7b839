"""Writing figures and tables: one way for every module (PNG + PDF figures, CSV + Markdown + LaTeX tables),
atomic, named after the paper (``table1``, ``fig2_covariance``) or after what they show.

A figure saved from a notebook kernel is also displayed there (and closed, so it is not shown twice): the executed
reports show every figure where it is discussed, whatever the cell ends with.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .io import atomic_path


def in_notebook() -> bool:
    """True inside a Jupyter kernel (papermill or JupyterLab), False in scripts and tests."""
    if "IPython" not in sys.modules:  # a kernel has imported it long before; a script need not pay ~0.1 s to learn so
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


def show(fig) -> None:
    """Display ``fig`` inline when running in a notebook kernel, then close it (no second copy at cell end)."""
    if in_notebook():
        import matplotlib.pyplot as plt
        from IPython.display import display

        display(fig)
        plt.close(fig)


def save_figure(fig, stem: str | os.PathLike, display: bool = True) -> list[Path]:
    """Save ``fig`` as ``<stem>.png`` (150 dpi) and ``<stem>.pdf``, atomically, and show it in a notebook."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("png", "pdf"):
        path = stem.with_suffix(f".{ext}")
        with atomic_path(path, suffix=f".{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
        out.append(path)
    if display:
        show(fig)
    return out


def format_floats(df, float_format: str = "{:.3f}"):
    """A copy of ``df`` with float columns as strings in one format, NaN shown as "–" (missing, never 0)."""
    shown = df.copy()
    for c in shown.columns:
        if shown[c].dtype.kind == "f":
            shown[c] = shown[c].map(lambda v: "–" if v != v else float_format.format(v))
    return shown


def save_table(df, stem: str | os.PathLike, caption: str = "", float_format: str = "{:.3f}") -> list[Path]:
    """Write a DataFrame as ``<stem>.csv`` (full precision), ``<stem>.md`` and ``<stem>.tex``, atomically."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [write_csv(df, stem.with_suffix(".csv"))]
    shown = format_floats(df, float_format)
    md = (f"{caption}\n\n" if caption else "") + shown.to_markdown(index=False) + "\n"
    with atomic_path(stem.with_suffix(".md"), suffix=".md") as tmp:
        tmp.write_text(md, encoding="utf-8")
    paths.append(stem.with_suffix(".md"))
    tex = shown.to_latex(index=False, caption=caption or None, escape=True)
    with atomic_path(stem.with_suffix(".tex"), suffix=".tex") as tmp:
        tmp.write_text(tex, encoding="utf-8")
    paths.append(stem.with_suffix(".tex"))
    return paths


def write_csv(frame, path: str | os.PathLike) -> Path:
    """Write a DataFrame as CSV, atomically (no index; NaN as an empty cell)."""
    path = Path(path)
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False)
    return path
