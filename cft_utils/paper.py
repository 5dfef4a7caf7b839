"""The seed paper's own numbers, read from ``data/paper_results.csv`` (one row per printed value).

The CSV is the paper's tables transcribed value by value: ``table`` (``1``, ``2``, ``3``, ``A1`` ...,
``3.3`` for the numbers quoted in §3.3), ``model``, ``phase1_data``, ``phase2_data``, ``strategy``,
``benchmark``, ``language``, ``checkpoint`` (P1/P2), ``value`` and ``note``. A value lost from the paper's
text is an empty cell (NaN here, never 0) with a note saying so; anomalies of the print are noted too.

Example::

    from cft_utils.paper import paper_values
    paper_values(benchmark="DES")                      # the four DES values of §3.3
    paper_values("1", model="Mistral-7B", checkpoint=["P1", "P2"])
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .paths import DATA_DIR

PAPER_RESULTS = DATA_DIR / "paper_results.csv"
COLUMNS = ("table", "model", "phase1_data", "phase2_data", "strategy", "benchmark", "language",
           "checkpoint", "value", "note")

#: The paper's dataset names -> the project's dataset keys (``Instruct`` names the off-the-shelf models).
DATASET_KEYS = {"Alpaca": "alpaca", "MultiAlpaca": "multialpaca", "OpenOrca": "openorca",
                "mOpenOrca": "mopenorca", "Instruct": "Instruct"}


def read_paper_results(path: str | Path | None = None) -> pd.DataFrame:
    """The whole CSV as a DataFrame (every column a string except ``value``); checks the columns."""
    path = Path(path) if path is not None else PAPER_RESULTS
    if not path.exists():
        raise FileNotFoundError(f"{path}: the paper's results table is missing (copy it into data/)")
    df = pd.read_csv(path, dtype={c: str for c in COLUMNS if c != "value"}, keep_default_na=False,
                     na_values={"value": [""]})
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {list(COLUMNS)}")
    df["value"] = pd.to_numeric(df["value"], errors="raise")
    df["note"] = df["note"].replace("", None)
    return df[list(COLUMNS)]


def paper_values(table: str | list[str] | None = None, *, path: str | Path | None = None,
                 dataset_keys: bool = False, **filters) -> pd.DataFrame:
    """Rows of the paper's results, filtered by ``table`` and any column (a value or a list of values).

    ``dataset_keys=True`` renames the paper's dataset names in ``phase1_data``/``phase2_data`` to the
    project's keys (``Alpaca`` -> ``alpaca``; see :data:`DATASET_KEYS`). An unknown column raises.
    Lost values stay NaN with their note.
    """
    df = read_paper_results(path)
    if table is not None:
        filters = {"table": table, **filters}
    for col, want in filters.items():
        if col not in df.columns:
            raise KeyError(f"paper_values: unknown column {col!r}; columns are {list(COLUMNS)}")
        wanted = [str(w) for w in want] if isinstance(want, list | tuple | set) else [str(want)]
        df = df[df[col].isin(wanted)]
    if dataset_keys:
        for col in ("phase1_data", "phase2_data"):
            df[col] = df[col].map(lambda v: DATASET_KEYS.get(v, v))
    return df.reset_index(drop=True)
