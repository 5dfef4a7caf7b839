"""Tidy results to tables and figures: training summaries, loss curves (PNG and PDF), Markdown/LaTeX/CSV.

Figures and tables are named after the paper (``table1``, ``fig2_covariance``) or after what they show
(``fig_phase1_loss``), and written under ``figures/<profile>/``.
"""

from __future__ import annotations

from pathlib import Path

from .io import atomic_path


def save_figure(fig, stem: str | Path) -> list[Path]:
    """Save ``fig`` as ``<stem>.png`` (150 dpi) and ``<stem>.pdf``, atomically; return the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("png", "pdf"):
        path = stem.with_suffix(f".{ext}")
        with atomic_path(path, suffix=f".{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
        out.append(path)
    return out


def save_table(df, stem: str | Path, caption: str = "", float_format: str = "{:.3f}") -> list[Path]:
    """Write a DataFrame as ``<stem>.csv``, ``<stem>.md`` and ``<stem>.tex``, atomically."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    with atomic_path(stem.with_suffix(".csv"), suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)
    paths.append(stem.with_suffix(".csv"))
    shown = df.copy()
    for c in shown.columns:
        if shown[c].dtype.kind == "f":
            shown[c] = shown[c].map(lambda v: "–" if v != v else float_format.format(v))  # NaN -> missing
    md = (f"{caption}\n\n" if caption else "") + shown.to_markdown(index=False) + "\n"
    with atomic_path(stem.with_suffix(".md"), suffix=".md") as tmp:
        tmp.write_text(md, encoding="utf-8")
    paths.append(stem.with_suffix(".md"))
    tex = shown.to_latex(index=False, caption=caption or None, escape=True)
    with atomic_path(stem.with_suffix(".tex"), suffix=".tex") as tmp:
        tmp.write_text(tex, encoding="utf-8")
    paths.append(stem.with_suffix(".tex"))
    return paths


def training_table(runs):
    """One row per run of the plan: ids, grid cell, status and the run's summary (loss, steps, runtime)."""
    import pandas as pd

    from .train import run_summary

    rows = []
    for r in runs:
        s = run_summary(r) or {}
        rows.append({"run": r.name, "run_id": r.run_id, "model": r.model, "phase": r.phase,
                     "phase1_data": r.phase1_data, "phase2_data": r.phase2_data or "", "strategy": r.strategy,
                     "done": r.done(), "n_records": s.get("n_records"), "steps": s.get("global_steps"),
                     "final_loss": s.get("final_loss"), "runtime_s": s.get("runtime_s")})
    return pd.DataFrame(rows)


def plot_loss_curves(runs, title: str, stem: str | Path | None = None):
    """Training loss against step for each run (from its ``train_log.jsonl``); saved as PNG+PDF if ``stem``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .train import train_log

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for r in runs:
        log = train_log(r)
        if not log:
            continue
        label = r.name.split("/", 2)[-1]
        ax.plot([x["step"] for x in log], [x["loss"] for x in log], label=label, lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (completion tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if stem is not None:
        save_figure(fig, stem)
    return fig
