"""Benchmark: TRL padding-free batching vs padded batches on the sandbox Phase 1 run, through the project's path.

Both sides train the same run, seed and data through ``train.execute``, in this process (the tokenised set comes
from the cache, so both train on identical rows); only ``training.padding_free`` differs. Measured:

* speed: training-loop seconds (``summary.json`` ``train_loop_s``: ``trainer.train()`` alone) of a shortened run (``--epochs``), A and B
  alternating, median of ``--reps``; ratio = padded seconds / padding-free seconds (> 1: padding-free faster);
* loss (``--loss-check``, not part of ``make bench``: three full runs): the full configured run (4 epochs,
  600 steps) once in each mode, plus padded at a second seed for the seed-to-seed spread; relative difference of
  the final logged loss and of the mean training loss. The default ``training.padding_free: true`` in
  params/sandbox.yaml stands on |final loss difference| <= 2 % (TOLERANCE). Written to
  ``bench/results/padding_free_loss.json``, which bench/RESULTS.md shows with its date.

    .venv/bin/python bench/bench_padding_free.py               # timing, 3 x 2 short runs (make bench)
    .venv/bin/python bench/bench_padding_free.py --quick       # 1 x 2 very short runs
    .venv/bin/python bench/bench_padding_free.py --loss-check  # the three full runs (~5-20 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import time

from benchlib import alternate, bench_home, ratio, train_here, write_result

RUN = "phase1/tiny-llama/alpaca"  # its first training seed
TOLERANCE = 0.02  # relative |final loss difference| accepted for padding-free as the default


def run_once(padding_free: bool, sets: list[str], threads: int, seed: int | None = None, reuse: bool = False) -> dict:
    """Train the run from scratch in this process (``reuse``: unless it is already done, for the deterministic
    full runs of the loss check); its summary numbers plus the wall time (without the libraries' import)."""
    from cft_utils.config import load_config, parse_set
    from cft_utils.plan import plan_runs

    # Batching alone: both arms attend with transformers' sdpa (the per-sequence attention has bench_attention.py).
    sets = [*sets, f"training.padding_free={str(padding_free).lower()}", f"training.num_threads={threads}",
            "training.attn_implementation=null"]
    if seed is not None:
        sets += [f"seeds=[{seed}]"]
    cfg = load_config("sandbox", parse_set(sets))
    run = next(r for r in plan_runs(cfg).phase1 if r.name.startswith(RUN + "/") or r.name == RUN)
    if reuse and run.done():
        s = json.loads((run.dir / "summary.json").read_text())
        return {"wall_s": None, "train_s": s["train_loop_s"], "final_loss": s["final_loss"], "train_loss": s["train_loss"],
                "steps": s["global_steps"], "n_tokens": s.get("n_tokens"), "run": run.name, "reused": True}
    t0 = time.perf_counter()
    s = train_here(sets, lambda r: r.run_id == run.run_id, run.dir.parent / f"{run.run_id}.bench.log")
    wall = time.perf_counter() - t0  # in this process: loading, tokenising (cached), training, saving
    return {"wall_s": round(wall, 2), "train_s": s["train_loop_s"], "final_loss": s["final_loss"],
            "train_loss": s["train_loss"], "steps": s["global_steps"], "n_tokens": s.get("n_tokens"), "run": run.name}


def loss_check(threads: int) -> None:
    """The full configured run in each mode and padded at a second seed; writes padding_free_loss.json."""
    from cft_utils.config import load_config

    cfg = load_config("sandbox")
    seeds = cfg.seeds or [cfg.seed]
    seed, other = seeds[0], seeds[1] if len(seeds) > 1 else seeds[0] + 1
    print(f"[bench] full sandbox Phase 1 run: padding-free and padded at seed {seed}, padded at seed {other} "
          "(loss check)", flush=True)
    full_pf = run_once(True, [], threads, seed=seed, reuse=True)
    full_pad = run_once(False, [], threads, seed=seed, reuse=True)
    other_seed = run_once(False, [], threads, seed=other, reuse=True)
    rel = abs(full_pf["final_loss"] - full_pad["final_loss"]) / full_pad["final_loss"]
    loss = {"seed": seed, "padding_free": full_pf, "padded": full_pad, "other_seed": other, "padded_other_seed": other_seed,
            "final_loss_rel_diff": round(rel, 4),
            "train_loss_rel_diff": round(abs(full_pf["train_loss"] - full_pad["train_loss"]) / full_pad["train_loss"],
                                         4),
            "seed_spread_final_loss_rel": round(abs(other_seed["final_loss"] - full_pad["final_loss"])
                                                / full_pad["final_loss"], 4),
            "tolerance": TOLERANCE, "within_tolerance": rel <= TOLERANCE}
    print(f"[bench] final loss padding-free {full_pf['final_loss']:.4f} vs padded {full_pad['final_loss']:.4f} "
          f"(rel {rel:.4f}; tolerance {TOLERANCE}); padded at seed {other}: {other_seed['final_loss']:.4f}", flush=True)
    # No speed ratio here: one full run per mode, not alternated; the timed runs above measure speed.
    write_result("padding_free_loss", {"run": RUN, "threads": threads, "ratios": [], "loss": loss}, False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="very short runs, 1 repetition")
    ap.add_argument("--loss-check", action="store_true", help="only the full-run loss comparison")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--epochs", type=float, default=None, help="epochs of the timed runs (default 0.2; quick 0.1)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    reps = args.reps or (1 if args.quick else 3)
    epochs = args.epochs or (0.1 if args.quick else 0.2)
    bench_home()
    if args.loss_check:
        return loss_check(args.threads)
    short = [f"training.epochs={epochs}", "training.save_steps=1000", "training.logging_steps=5"]
    print(f"[bench] padding-free vs padded: {RUN}, {epochs} epoch(s), {reps} rep(s)", flush=True)
    pf, pad = alternate(lambda: run_once(True, short, args.threads), lambda: run_once(False, short, args.threads),
                        reps)
    ratios = [ratio("padding-free vs padded (training loop)", "padding_free: true", "padded batches",
                    [x["train_s"] for x in pf], [x["train_s"] for x in pad], higher_is_better=False,
                    unit="x tokens/s")]
    write_result("padding_free", {"run": RUN, "epochs_timed": epochs, "threads": args.threads, "ratios": ratios,
                                  "padding_free_runs": pf, "padded_runs": pad}, args.quick)


if __name__ == "__main__":
    main()
