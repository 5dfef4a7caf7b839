"""Training runs for readers: one row per run (ids, cell, status, records, steps, loss, runtime) and loss curves."""

from __future__ import annotations

from pathlib import Path

from ..outputs import save_figure
from ..runs import read_summary, read_train_log


def training_table(runs):
    """One row per run of the plan: ids, grid cell, status and the run's summary (loss, steps, runtime)."""
    import pandas as pd

    rows = []
    for r in runs:
        s = read_summary(r) or {}
        rows.append({"run": r.name, "run_id": r.run_id, "model": r.model, "phase": r.phase,
                     "phase1_data": r.phase1_data, "phase2_data": r.phase2_data or "", "strategy": r.strategy,
                     "done": r.done(), "n_records": s.get("n_records"), "steps": s.get("global_steps"),
                     "final_loss": s.get("final_loss"), "runtime_s": s.get("runtime_s")})
    return pd.DataFrame(rows)


def plot_loss_curves(runs, title: str, stem: str | Path | None = None):
    """Training loss against step for each run (from its ``train_log.jsonl``); saved as PNG+PDF if ``stem``."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for r in runs:
        log = read_train_log(r)
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


def plot_pretraining_loss(log: list[dict], stem: str | Path | None = None, title: str | None = None):
    """The sandbox base model's pre-training loss against step (``pretrain_log.json``); saved if ``stem``."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.5))
    ax.plot([x["step"] for x in log], [x["loss"] for x in log])
    ax.set(xlabel="step", ylabel="LM loss", title=title or "Sandbox base model: pre-training on the world's corpus")
    ax.grid(alpha=0.3)
    if stem is not None:
        save_figure(fig, stem)
    return fig
