"""Benchmark: TRL padding-free batching vs padded batches on the sandbox Phase 1 run, through the project's path.

Both sides train the same run, seed and data through ``train.execute``, in this process (the tokenised set comes
from the cache, so both train on identical rows); only ``training.padding_free`` differs. Measured:

* speed: training-loop seconds (``summary.json`` ``train_loop_s``: ``trainer.train()`` alone) of a shortened run (``--epochs``), A and B
  alternating, median of ``--reps``; ratio = padded seconds / padding-free seconds (> 1: padding-free faster);
* loss (``--loss-check``, not part of ``make bench``: five full runs): the full configured Phase 1 run
  (``training.epochs``; RESULTS.md gives the steps it was measured with) padding-free (with the profile's attention, and with sdpa), padded, padded with half-size batches
  accumulated twice (the same batches and update in another float order: the control), and padded at a second
  seed (the seed-to-seed spread); relative differences from padded of the final logged loss and of the mean
  training loss. The default ``training.padding_free: true`` in params/sandbox.yaml stands on both differences
  being within 2 % (TOLERANCE) or within the control's. Written to ``bench/results/padding_free_loss.json``, which
  bench/RESULTS.md shows with its date.

    .venv/bin/python bench/bench_padding_free.py               # timing, 3 x 2 short runs (make bench)
    .venv/bin/python bench/bench_padding_free.py --quick       # 1 x 2 very short runs
    .venv/bin/python bench/bench_padding_free.py --loss-check  # the five full runs (~10-20 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import time

from benchlib import alternate, bench_home, ratio, train_here, write_result

RUN = "phase1/tiny-llama/alpaca"  # its first training seed
# Padding-free stays the default while its whole-run loss (final and mean) is within TOLERANCE of padded batches'
# or no further from them than a pure float-order change moves a run (the control arm); stated before measuring.
TOLERANCE = 0.02


def run_once(padding_free: bool, sets: list[str], threads: int, seed: int | None = None, reuse: bool = False,
             attention: str | None = None) -> dict:
    """Train the run from scratch in this process (``reuse``: unless it is already done, for the deterministic
    full runs of the loss check); its summary numbers plus the wall time (without the libraries' import).
    ``attention``: ``training.attn_implementation`` (None: transformers' sdpa, as the padded arm has)."""
    from cft_utils.config import load_config, parse_set
    from cft_utils.plan import plan_runs

    # Batching alone: both arms attend with transformers' sdpa unless asked (the per-sequence attention has its own
    # speed benchmark, bench_attention.py).
    sets = [*sets, f"training.padding_free={str(padding_free).lower()}", f"training.num_threads={threads}",
            f"training.attn_implementation={attention or 'null'}"]
    if seed is not None:
        sets += [f"seeds=[{seed}]"]
    cfg = load_config("sandbox", parse_set(sets))
    run = next(r for r in plan_runs(cfg).phase1 if r.name.startswith(RUN + "/") or r.name == RUN)
    if reuse and run.done():
        s = json.loads((run.dir / "summary.json").read_text())
        return {"wall_s": None, "train_s": s.get("train_loop_s"), "final_loss": s["final_loss"],
                "train_loss": s["train_loss"], "steps": s["global_steps"], "n_tokens": s.get("n_tokens"),
                "run": run.name, "reused": True}
    t0 = time.perf_counter()
    s = train_here(sets, lambda r: r.run_id == run.run_id, run.dir.parent / f"{run.run_id}.bench.log")
    wall = time.perf_counter() - t0  # in this process: loading, tokenising (cached), training, saving
    return {"wall_s": round(wall, 2), "train_s": s["train_loop_s"], "final_loss": s["final_loss"],
            "train_loss": s["train_loss"], "steps": s["global_steps"], "n_tokens": s.get("n_tokens"), "run": run.name}


def _rel(a: dict, b: dict, key: str) -> float:
    return round(abs(a[key] - b[key]) / b[key], 6)


def within_tolerance(diffs: dict[str, dict[str, float]]) -> dict[str, bool]:
    """Per padding-free arm: are both its relative loss differences from padded within TOLERANCE or within the
    float-order control's (``padded_accumulated``)?"""
    control = diffs["padded_accumulated"]
    return {name: all(d[k] <= max(TOLERANCE, control[k]) for k in ("final_loss", "train_loss"))
            for name, d in diffs.items() if name.startswith("padding_free")}


def loss_check(threads: int) -> None:
    """Full configured runs: padding-free (the profile's attention, and sdpa), padded, the float-order control and
    padded at a second seed; writes padding_free_loss.json."""
    from cft_utils.config import load_config

    cfg = load_config("sandbox")
    seeds = cfg.seeds or [cfg.seed]
    seed, other = seeds[0], seeds[1] if len(seeds) > 1 else seeds[0] + 1
    default_attn = cfg.training.attn_implementation
    accum = [f"training.per_device_batch_size={cfg.training.per_device_batch_size // 2}",
             f"training.gradient_accumulation_steps={2 * cfg.training.gradient_accumulation_steps}"]
    print(f"[bench] full sandbox Phase 1 runs at seed {seed}: padding-free ({default_attn}; sdpa), padded, padded "
          f"with half batches accumulated twice (float-order control); padded at seed {other} (loss check)", flush=True)
    arms = {
        "padding_free": run_once(True, [], threads, seed=seed, reuse=True, attention=default_attn),
        "padding_free_sdpa": run_once(True, [], threads, seed=seed, reuse=True),
        "padded": run_once(False, [], threads, seed=seed, reuse=True),
        # The same batches and the same update, summed in another order: how far float order alone moves a run.
        "padded_accumulated": run_once(False, accum, threads, seed=seed, reuse=True),
        "padded_other_seed": run_once(False, [], threads, seed=other, reuse=True),
    }
    pad = arms["padded"]
    diffs = {name: {"final_loss": _rel(arm, pad, "final_loss"), "train_loss": _rel(arm, pad, "train_loss")}
             for name, arm in arms.items() if name != "padded"}
    within = within_tolerance(diffs)
    loss = {"seed": seed, "other_seed": other, "attention": default_attn, "control": accum, **arms,
            "rel_diff_from_padded": diffs, "tolerance": TOLERANCE, "within_tolerance": within}
    for name, d in diffs.items():
        print(f"[bench] {name}: final loss {arms[name]['final_loss']:.4f} vs padded {pad['final_loss']:.4f} "
              f"({d['final_loss']:.3%} apart); mean training loss {d['train_loss']:.3%} apart", flush=True)
    # No speed ratio here: one full run per arm, not alternated; the timed runs above measure speed.
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
