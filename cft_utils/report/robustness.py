"""Do the verdicts depend on the world's assumptions? The claims of the default profile beside the claims of runs with
other world parameters (another world seed, a more English-dominant pre-training), row by row.

    make robustness        # runs both variants (each a full sandbox reproduce) and writes the comparison
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
    base = read_claims(load_config(profile))
    keys = ["claim", "cell", "measure"]
    out = base[keys + ["estimate", "verdict"]].rename(columns={"estimate": "estimate (default)",
                                                               "verdict": "verdict (default)"})
    verdict_cols = ["verdict (default)"]
    for v in variants:
        cfg = load_config(profile, parse_set([v]))
        other = read_claims(cfg)[keys + ["estimate", "verdict"]].rename(
            columns={"estimate": f"estimate ({v})", "verdict": f"verdict ({v})"})
        out = out.merge(other, on=keys, how="left")
        verdict_cols.append(f"verdict ({v})")
    out["same_verdicts"] = out[verdict_cols].nunique(axis=1, dropna=False).eq(1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="sandbox")
    ap.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    table = compare(args.profile, args.variant or list(DEFAULT_VARIANTS))
    out = results_dir(load_config(args.profile)) / "robustness"
    save_table(table, out, caption="Claims under other world assumptions (verdicts from 95 % intervals)")
    print(table.to_string(index=False))
    print(f"\n{int(table['same_verdicts'].sum())} of {len(table)} claims rows keep their verdict in every variant; "
          f"table: {out}.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
