"""Mitigation runs from a shell: list the plan, or run some or all of it (several processes: configs/accelerate/).

    python -m cft_utils.mitigation --params sandbox --list
    python -m cft_utils.mitigation --params sandbox --strategies          # the registered strategies
    accelerate launch --config_file configs/accelerate/ddp.yaml -m cft_utils.mitigation --params paper \\
        --run "mitigation/Mistral-7B/Instruct->multialpaca/LF_H2"

(``python -m cft_utils.mitigation.cli`` is the same command.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..config import load_config, parse_set
from ..plan import find_run
from .execute import execute_mitigation
from .plan import plan_mitigations, run_table
from .registry import strategies


def strategy_table():
    """One row per registered strategy: name, kind, table order, label prefix, parameters and their defaults."""
    import pandas as pd

    return pd.DataFrame([{"strategy": s.name, "kind": s.kind, "order": s.order, "labels": s.label_prefix or s.name,
                          "parameters": {k: f.default if f.default_factory is None else f.default_factory()
                                         for k, f in s.Params.model_fields.items()},
                          "module": type(s).__module__}
                         for s in sorted(strategies().values(), key=lambda s: (s.order, s.name))])


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="sandbox", help="profile name or parameter file (default: sandbox)")
    ap.add_argument("--run", action="append", default=[], help="run name from --list (repeatable); default: all")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a parameter, e.g. mitigation.strategies.GR.percents=[5,20] (repeatable)")
    ap.add_argument("--list", action="store_true", help="print the mitigation runs and exit")
    ap.add_argument("--strategies", action="store_true", help="print the registered strategies and exit")
    args = ap.parse_args(argv)
    if args.strategies:
        print(strategy_table().to_string(index=False))
        return 0
    try:
        overrides = parse_set(args.set)
    except ValueError as e:
        ap.error(str(e))
    cfg = load_config(args.params, overrides)
    runs = plan_mitigations(cfg)
    if args.list:
        print(run_table(runs).to_string(index=False))
        return 0
    try:  # a name from --list, or without its /s<seed> suffix when the profile has one training seed
        chosen = [find_run(runs, n) for n in args.run] if args.run else runs
    except KeyError as e:
        ap.error(f"{e.args[0]}; see --list")
    for r in chosen:
        execute_mitigation(r, cfg)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"done: {r.name} -> {r.model_dir}")
            print(json.dumps({"mitigation": str(Path(r.dir) / "mitigation.json")}))
    return 0


if __name__ == "__main__":
    from ..processes import skip_exit_collection

    skip_exit_collection()  # ~1 s less at exit (cft_utils.processes)
    sys.exit(main())
