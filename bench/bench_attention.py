"""Benchmark: per-sequence attention for padding-free rows (``training.attn_implementation: sdpa_packed``) vs
transformers' ``sdpa`` over the whole row with a block-diagonal mask (transformers' default).

With padding-free batches a step's 16 sequences are one row; masked ``sdpa`` scores every query against every key
of the row, so its cost grows with the square of the row's length, while ``sdpa_packed`` (cft_utils.attention)
scores each sequence against itself. Measured on two sandbox Phase 1 runs (same base model, data, seed, 1 thread):
the Alpaca-like set (short records, ~420 tokens per row) and the OpenOrca-like set (long records). A and B
alternate, each trained from scratch through ``train.execute`` in this process (the libraries load once); the ratio
is the training loop's tokens/s (B's ``trainer.train()`` seconds / A's), median of ``--reps``. Both losses are
reported (same to float rounding).

    .venv/bin/python bench/bench_attention.py            # 2 reps of 0.2-epoch runs per set (make bench)
    .venv/bin/python bench/bench_attention.py --quick    # 1 rep of 0.05-epoch runs
"""

from __future__ import annotations

import argparse

from benchlib import alternate, bench_home, ratio, train_here, write_result

SETS = ("alpaca", "openorca")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--epochs", type=float, default=None, help="default 0.2 (quick 0.05)")
    args = ap.parse_args()
    reps = args.reps or (1 if args.quick else 2)
    epochs = args.epochs or (0.05 if args.quick else 0.2)
    home = bench_home()

    common = [f"training.epochs={epochs}", "training.save_steps=1000", "training.logging_steps=5",
              "training.num_threads=1", "training.padding_free=true"]
    arms = {"packed": [*common, "training.attn_implementation=sdpa_packed"],
            "masked": [*common, "training.attn_implementation=null"]}  # explicit: sdpa_packed is the sandbox default
    ratios, runs = [], {}
    for data in SETS:
        def arm(name: str, data=data):
            def go() -> dict:
                s = train_here(arms[name], lambda r: r.phase1_data == data,
                               home / "logs" / f"bench_attention_{data}_{name}.log")
                return {"train_s": s["train_loop_s"], "train_loss": s["train_loss"],
                        "tokens_per_row": round(s["n_tokens"] / max(1, s["n_records"]) * 16)}
            return go

        # No warm-up: the ratio times trainer.train() only; tokenising (cached or not) happens before it.
        print(f"[bench] attention: {data}, sdpa_packed vs masked sdpa, {epochs} epoch(s), {reps} rep(s)", flush=True)
        a, b = alternate(arm("packed"), arm("masked"), reps)
        ratios.append(ratio(f"padding-free attention per sequence vs masked row ({data}-like, ~"
                            f"{a[0]['tokens_per_row']} tokens/row)", "attn_implementation: sdpa_packed",
                            "sdpa with a block-diagonal mask (transformers' default)", [x["train_s"] for x in a],
                            [x["train_s"] for x in b], higher_is_better=False, unit="x tokens/s"))
        runs[data] = {"packed": a, "masked": b,
                      "train_loss_rel_diff": abs(a[-1]["train_loss"] - b[-1]["train_loss"]) / abs(b[-1]["train_loss"])}
    write_result("attention", {"epochs": epochs, "threads": 1, "ratios": ratios, "runs": runs}, args.quick)


if __name__ == "__main__":
    main()
