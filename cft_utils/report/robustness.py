"""Do the verdicts depend on the world's assumptions? The claims of the default profile beside the claims of runs with
other world parameters (another world seed, a more English-dominant pre-training), row by row.

    make robustness        # runs both variants (each a full sandbox reproduce) and writes the comparison
    make robustness ONLY="01 02 03 04"   # only the notebooks of claims 1, 2 and 6 (about half the time)
    python -m cft_utils.report.robustness --profile sandbox --variant sandbox.seed=4321 \\
        --variant sandbox.english_share=0.8          # compare what has been run
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from ..analysis.claims import read_claims
from ..config import load_config, parse_set
from ..outputs import save_table
from ..paths import results_dir

DEFAULT_VARIANTS = ("sandbox.seed=4321", "sandbox.english_share=0.8")


def compare(profile: str, variants: list[str]) -> pd.DataFrame:
    """One row per claims row of the default run: its verdict and estimate, and each variant's (missing where a
    variant has not been run or has no such row); ``same_verdicts`` says whether every run agrees."""
    return compare_tables(read_claims(load_config(profile)),
                          {v: read_claims(load_config(profile, parse_set([v]))) for v in variants})


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
    # a row a variant has not produced (its notebook was not run) is not compared: same_verdicts is missing there
    complete = out[verdict_cols].notna().all(axis=1)
    out["same_verdicts"] = out[verdict_cols].nunique(axis=1).eq(1).where(complete).astype("boolean")
    return out


def summary(table: pd.DataFrame) -> str:
    """One sentence: how many compared rows keep their verdict in every variant, and how many were not compared."""
    compared = table["same_verdicts"].notna()
    kept = int(table.loc[compared, "same_verdicts"].sum())
    text = f"{kept} of {int(compared.sum())} compared claims rows keep their verdict in every variant"
    if (~compared).any():
        claims = sorted({int(c) for c in table.loc[~compared, "claim"]})
        text += (f"; {int((~compared).sum())} row(s) (claims {', '.join(map(str, claims))}) not compared: a variant "
                 "did not run the notebook that decides them")
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="sandbox")
    ap.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    table = compare(args.profile, args.variant or list(DEFAULT_VARIANTS))
    out = results_dir(load_config(args.profile)) / "robustness"
    save_table(table, out, caption="Claims under other world assumptions (verdicts from 95 % intervals)")
    print(table.to_string(index=False))
    print(f"\n{summary(table)}; table: {out}.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
