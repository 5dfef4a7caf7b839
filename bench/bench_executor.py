"""Benchmark: the grid on the executor's local worker pool (2 workers, 1 thread each) vs the same runs in sequence.

The runs are notebook 01's grid: the sandbox profile's Phase 1 runs of every training seed (alpaca, openorca) and
the Instruct model, shortened to ``--epochs`` (``--quick``: one seed). With one seed's three runs of unequal length
the pool waits for the longest and measured 0.98x (0.5 epoch); shorter runs (0.1 epoch) measured the workers'
start-up instead (0.78x). A: ``python -m cft_utils.executor --workers 2`` (each worker gets
cores // 2 threads); B: the baseline a user would run, one process with every core, the runs one after the
other (``--workers 1 --set training.num_threads=<cores>``). Both start from scratch each repetition (run folders
removed; the tokenised cache stays warm, as it would for the next seed). Ratio: B wall / A wall (> 1: the pool
finishes the grid faster), median of ``--reps``, A and B alternating.

    .venv/bin/python bench/bench_executor.py            # 2 reps of 0.25-epoch runs, every seed (make bench)
    .venv/bin/python bench/bench_executor.py --quick    # 1 rep of 0.05-epoch runs
"""

from __future__ import annotations

import argparse
import os
import time

from benchlib import PY, alternate, bench_home, fresh, ratio, sub_env, timed, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--epochs", type=float, default=None, help="default 0.25 (quick 0.05)")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    reps = args.reps or (1 if args.quick else 2)
    epochs = args.epochs or (0.05 if args.quick else 0.25)
    cores = os.cpu_count() or 1
    home = bench_home()

    from cft_utils.config import load_config, parse_set
    from cft_utils.plan import plan_runs

    seed = (load_config("sandbox").seeds or [None])[0]
    common = [f"training.epochs={epochs}", "training.save_steps=1000", "training.logging_steps=5"]
    if seed is not None and args.quick:
        common.append(f"seeds=[{seed}]")
    arms = {"pool": (args.workers, [*common, f"training.num_threads={max(1, cores // args.workers)}"]),
            "sequence": (1, [*common, f"training.num_threads={cores}"])}

    def arm(name: str):
        workers, sets = arms[name]
        runs = [r for r in plan_runs(load_config("sandbox", parse_set(sets))).phase1 if not r.registered]
        cmd = [PY, "-m", "cft_utils.executor", "--params", "sandbox", "--only", "phase1", "--workers", str(workers)]
        for s in sets:
            cmd += ["--set", s]

        def go() -> dict:
            for r in runs:
                fresh(r.dir)
            t0 = time.time()
            wall = timed(cmd, sub_env(max(1, cores // workers)), log=home / "logs" / f"bench_executor_{name}.log")
            stale = [r.name for r in runs if not (r.dir / "summary.json").exists()
                     or (r.dir / "summary.json").stat().st_mtime < t0]
            if stale:  # every run must have been trained in this repetition
                raise RuntimeError(f"{name}: not trained in this repetition: {stale}")
            return {"wall_s": round(wall, 2), "runs": len(runs)}
        return go

    print(f"[bench] executor: {args.workers} workers vs sequence at {cores} threads, phase 1 runs, {epochs} "
          f"epoch(s), {reps} rep(s) after one warm-up", flush=True)
    # Warm-up: the tokenised sets cached for both arms (their key is the data, tokenizer and loss settings, not the
    # epochs or the seed), so a few steps of one seed's runs are enough.
    warm = ["training.epochs=0.02", "training.save_steps=1000", f"training.num_threads={max(1, cores // args.workers)}"]
    if seed is not None:
        warm.append(f"seeds=[{seed}]")
    cmd = [PY, "-m", "cft_utils.executor", "--params", "sandbox", "--only", "phase1", "--workers", str(args.workers)]
    timed(cmd + [x for s in warm for x in ("--set", s)], sub_env(max(1, cores // args.workers)),
          log=home / "logs" / "bench_executor_warmup.log")
    a, b = alternate(arm("pool"), arm("sequence"), reps)
    ratios = [ratio(f"parallel grid ({args.workers} workers x {max(1, cores // args.workers)} thread) vs sequential "
                    f"({cores} threads)", f"executor --workers {args.workers}", "executor --workers 1, all threads",
                    [x["wall_s"] for x in a], [x["wall_s"] for x in b], higher_is_better=False,
                    unit="x throughput")]
    write_result("executor", {"epochs": epochs, "cores": cores, "runs": a[0]["runs"], "ratios": ratios,
                              "pool_runs": a, "sequence_runs": b}, args.quick)


if __name__ == "__main__":
    main()
