"""Benchmark: a run's dataset preparation from the tokenised cache vs TRL's preparation in every run.

On the sandbox Phase 1 alpaca set with the base model's tokenizer and the profile's training settings:
A = ``cft_utils.tokenized.prepare`` finding the set in the cache (what every later run and seed does),
B = the same preparation without the cache (``cache=False``: TRL's own tokenisation, as an uncached run would do
it). Ratio: B seconds / A seconds, median of ``--reps``, alternating. Both give identical rows (checked).

    .venv/bin/python bench/bench_tokenized.py            # 5 reps
    .venv/bin/python bench/bench_tokenized.py --quick    # 1 rep
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchlib import alternate, bench_home, ratio, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args()
    reps = args.reps or (1 if args.quick else 5)
    bench_home()

    from cft_utils.config import load_config
    from cft_utils.data.loaders import load_records
    from cft_utils.models import load_tokenizer
    from cft_utils.plan import plan_runs
    from cft_utils.sandbox.build import sandbox_paths
    from cft_utils.tokenized import prepare
    from cft_utils.train import sft_config

    cfg = load_config("sandbox")
    run = next(r for r in plan_runs(cfg).phase1 if not r.registered)
    records = load_records(cfg, run.data_key)
    tok = load_tokenizer(sandbox_paths(cfg)["base"])
    root = Path(tempfile.mkdtemp(prefix="tokenized-bench-"))
    args_ = sft_config(run.hparams, root / "ckpt", seed=0, prepared=True)
    first = prepare(records, tok, args_, run.hparams.max_length, root=root)  # the miss that fills the cache
    rows = {}

    def timed_prepare(cache: bool):
        def go() -> dict:
            t0 = time.perf_counter()
            d = prepare(records, tok, args_, run.hparams.max_length, cache=cache, root=root)
            rows.setdefault(cache, d.dataset["input_ids"])
            return {"seconds": round(time.perf_counter() - t0, 4), "hit": d.cache_hit}
        return go

    print(f"[bench] tokenised cache: {run.data_key} ({len(records)} records, {first.n_tokens} tokens), "
          f"{reps} rep(s)", flush=True)
    a, b = alternate(timed_prepare(True), timed_prepare(False), reps)
    same = rows[True] == rows[False]
    ratios = [ratio("tokenised cache hit vs TRL preparation per run", "tokenized.prepare (cache hit)",
                    "tokenized.prepare(cache=False) (TRL's preparation)", [x["seconds"] for x in a],
                    [x["seconds"] for x in b], higher_is_better=False, unit="x faster")]
    write_result("tokenized", {"dataset": run.data_key, "records": len(records), "tokens": first.n_tokens,
                               "identical_rows": same, "ratios": ratios, "cached_s": a, "uncached_s": b},
                 args.quick)
    if not same:
        raise SystemExit("cached and uncached rows differ")


if __name__ == "__main__":
    main()
