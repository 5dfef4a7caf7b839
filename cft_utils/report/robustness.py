"""Do the verdicts depend on the world's assumptions or on the compute budget? The claims of the default profile
beside the claims of runs with other world parameters (another world seed, a more English-dominant pre-training) and
with the longer training and larger test sets the sandbox had before it was sized for 20 minutes, row by row.

    make robustness        # runs every variant (each a full sandbox reproduce) and writes the comparison
    make robustness ONLY="01 02 03 04"   # only the notebooks of claims 1, 2 and 6 (about half the time)
    python -m cft_utils.report.robustness --profile sandbox --variant sandbox.seed=4321 \\
        --variant sandbox.english_share=0.8          # compare what has been run

A variant is one or more ``KEY=VALUE`` settings separated by spaces, optionally named: ``"NAME: KEY=VALUE
KEY=VALUE"`` (the name labels its columns; unnamed, the settings do).
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from ..analysis.claims import read_claims
from ..config import load_config, parse_set
from ..outputs import save_table
from ..paths import results_dir

# The sandbox before it was sized for issue 15's budget (params/sandbox.yaml): Phase 1 at 4 epochs, Phase 2 at 2,
# twice the test items; `make reproduce` took 43 minutes with it on 2 cores.
LONGER_BUDGET = ("43-minute budget: training.epochs=4 phase2_training.epochs=2 evaluation.benchmarks.IFEval.limit=400 "
                 "evaluation.benchmarks.AlpacaEval.limit=400 evaluation.benchmarks.HellaSwag.limit=400 "
                 "evaluation.benchmarks.MLQA.limit=120 evaluation.benchmarks.XQuAD.limit=120 "
                 "evaluation.benchmarks.XLSum.limit=120")
DEFAULT_VARIANTS = ("sandbox.seed=4321", "sandbox.english_share=0.8", LONGER_BUDGET)


def parse_variant(text: str) -> tuple[str, dict]:
    """``"[NAME: ]KEY=VALUE [KEY=VALUE ...]"`` -> (label, overrides); the label is NAME, else the settings."""
    name, sep, rest = text.partition(": ")
    if not sep or "=" in name:  # no name (a value may hold ": ")
        name, rest = "", text
    settings = rest.split()
    if not settings:
        raise ValueError(f"robustness variant {text!r}: no KEY=VALUE setting")
    return (name.strip() or " ".join(settings)), parse_set(settings)


def compare(profile: str, variants: list[str]) -> pd.DataFrame:
    """One row per claims row of the default run: its verdict and estimate, and each variant's (missing where a
    variant has not been run or has no such row); ``same_verdicts`` says whether every run agrees."""
    parsed = [parse_variant(v) for v in variants]
    return compare_tables(read_claims(load_config(profile)),
                          {label: read_claims(load_config(profile, overrides)) for label, overrides in parsed})


def compare_tables(base: pd.DataFrame, variants: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """:func:`compare` on claims tables already read: ``variants`` maps a variant's label to its claims."""
    keys = ["claim", "cell", "measure"]
    out = base[keys + ["estimate", "verdict"]].rename(columns={"estimate": "estimate (default)",
                                                               "verdict": "verdict (default)"})
    verdict_cols = ["verdict (default)"]
    for v, claims in variants.items():
        other = claims[keys + ["estimate", "verdict"]].rename(
            columns={"estimate": f"estimate ({v})", "verdict": f"verdict ({v})"})
        out = out.merge(other, on=keys, how="left")
        verdict_cols.append(f"verdict ({v})")
    # A variant that did not produce a row (its notebook was not run) is left out of that row's comparison; a row
    # no variant produced is not compared (same_verdicts missing).
    ran = out[verdict_cols[1:]].notna().any(axis=1)
    out["same_verdicts"] = out[verdict_cols].nunique(axis=1).eq(1).where(ran).astype("boolean")
    return out


def summary(table: pd.DataFrame) -> str:
    """One sentence: how many compared rows keep their verdict in every variant, and how many were not compared."""
    compared = table["same_verdicts"].notna()
    kept = int(table.loc[compared, "same_verdicts"].sum())
    text = f"{kept} of {int(compared.sum())} compared claims rows keep their verdict in every variant that ran them"
    partial = compared & table[[c for c in table.columns if c.startswith("verdict (")]].isna().any(axis=1)
    if partial.any():
        claims = sorted({int(c) for c in table.loc[partial, "claim"]})
        text += (f" ({int(partial.sum())} of them, claims {', '.join(map(str, claims))}, by only some variants: the "
                 "others did not run the notebooks that decide them)")
    if (~compared).any():
        claims = sorted({int(c) for c in table.loc[~compared, "claim"]})
        text += (f"; {int((~compared).sum())} row(s) (claims {', '.join(map(str, claims))}) not compared: no variant "
                 "ran the notebook that decides them")
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="sandbox")
    ap.add_argument("--variant", action="append", default=[], metavar="[NAME: ]KEY=VALUE ...",
                    help="settings of one variant run (default: the variants of make robustness)")
    args = ap.parse_args(argv)
    table = compare(args.profile, args.variant or list(DEFAULT_VARIANTS))
    out = results_dir(load_config(args.profile)) / "robustness"
    save_table(table, out, caption="Claims under other world assumptions and budgets (verdicts from 95 % intervals)")
    print(table.to_string(index=False))
    print(f"\n{summary(table)}; table: {out}.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
