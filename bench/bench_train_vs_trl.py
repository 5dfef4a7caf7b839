"""Benchmark: the project's training path (``python -m cft_utils.train``) vs a bare TRL ``SFTTrainer`` script.

Both train the sandbox Phase 1 run (alpaca) from the same base model, data, hyper-parameters, seed, batching
mode and threads, each in a fresh process (imports, loading, tokenising, training, saving: what a user waits
for). The bare script is ``bench/baselines/bare_trl.py``: what a user would write with TRL alone; it lets TRL
tokenise the data in every run. The project's path reuses its tokenised set from the cache (after one warm-up
run of each side, excluded). Ratios (> 1: the project is faster), median over ``--reps``, A and B alternating:

* end to end: bare wall seconds / project wall seconds;
* training loop only: bare ``train()`` seconds / project ``train()`` seconds (``summary.json`` ``train_loop_s``).

The mean training losses of the two sides are reported too (same rows, same seed: they should match).

    .venv/bin/python bench/bench_train_vs_trl.py            # 3 reps of 0.2-epoch runs (make bench)
    .venv/bin/python bench/bench_train_vs_trl.py --quick    # 1 rep of 0.05-epoch runs
"""

from __future__ import annotations

import argparse
import json
import shutil

from benchlib import PY, REPO, alternate, bench_home, fresh, ratio, sub_env, timed, write_result

RUN = "phase1/tiny-llama/alpaca"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--epochs", type=float, default=None, help="default 0.2 (quick 0.05)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    reps = args.reps or (1 if args.quick else 3)
    epochs = args.epochs or (0.05 if args.quick else 0.2)
    home = bench_home()

    from cft_utils.config import load_config, parse_set
    from cft_utils.plan import plan_runs
    from cft_utils.sandbox.build import sandbox_paths

    # Matched settings: the bare script attends with transformers' sdpa, so the project does too here (its
    # per-sequence attention, the sandbox default, is measured against sdpa by bench_attention.py).
    sets = [f"training.epochs={epochs}", "training.save_steps=1000", "training.logging_steps=5",
            f"training.num_threads={args.threads}", "training.attn_implementation=null"]
    cfg = load_config("sandbox", parse_set(sets))
    run = next(r for r in plan_runs(cfg).phase1 if r.name.startswith(RUN))
    h = run.hparams
    data_file = sandbox_paths(cfg)["world"] / "data" / "alpaca.jsonl"
    base = sandbox_paths(cfg)["base"]
    bare_out = home / "bare-trl"
    project_cmd = [PY, "-m", "cft_utils.train", "--params", "sandbox", "--run", run.name]
    for s in sets:
        project_cmd += ["--set", s]
    bare_cmd = [PY, str(REPO / "bench" / "baselines" / "bare_trl.py"), "--model", str(base), "--data",
                str(data_file), "--out", str(bare_out), "--epochs", str(h.epochs), "--lr", str(h.learning_rate),
                "--batch", str(h.per_device_batch_size), "--warmup", str(h.warmup_steps), "--max-length",
                str(h.max_length), "--threads", str(args.threads), "--seed", str(run.seed or cfg.seed),
                "--logging-steps", str(h.logging_steps), "--save-steps", str(h.save_steps)]
    if h.padding_free:
        bare_cmd.append("--padding-free")
    env = sub_env(args.threads)

    def project() -> dict:
        fresh(run.dir)
        wall = timed(project_cmd, env, log=home / "logs" / "bench_train_project.log")
        s = json.loads((run.dir / "summary.json").read_text())
        return {"wall_s": round(wall, 2), "train_s": s["train_loop_s"], "train_loss": s["train_loss"]}

    def bare() -> dict:
        shutil.rmtree(bare_out, ignore_errors=True)
        wall = timed(bare_cmd, env, log=home / "logs" / "bench_train_bare.log")
        s = json.loads((bare_out / "summary.json").read_text())
        return {"wall_s": round(wall, 2), "train_s": s["runtime_s"], "train_loss": s["train_loss"]}

    print(f"[bench] training path vs bare TRL: {run.name}, {epochs} epoch(s), padding_free={h.padding_free}, "
          f"{reps} rep(s) after one warm-up each", flush=True)
    project(), bare()  # warm-up: the project's tokenised cache, the OS file cache, datasets' JSON cache
    a, b = alternate(project, bare, reps)
    ratios = [
        ratio("training path vs bare TRL script (end to end)", "python -m cft_utils.train",
              "bench/baselines/bare_trl.py", [x["wall_s"] for x in a], [x["wall_s"] for x in b],
              higher_is_better=False, unit="x tokens/s", target=">= 0.97"),
        ratio("training path vs bare TRL script (training loop)", "cft_utils.train.execute: trainer.train()",
              "bare_trl.py: trainer.train()", [x["train_s"] for x in a], [x["train_s"] for x in b],
              higher_is_better=False, unit="x tokens/s", target=">= 0.97"),
    ]
    losses = {"project_train_loss": a[-1]["train_loss"], "bare_train_loss": b[-1]["train_loss"],
              "same_train_loss": a[-1]["train_loss"] == b[-1]["train_loss"]}
    write_result("train_vs_trl", {"run": run.name, "epochs": epochs, "threads": args.threads,
                                  "padding_free": h.padding_free, "ratios": ratios, "losses": losses,
                                  "project_runs": a, "bare_runs": b}, args.quick)


if __name__ == "__main__":
    main()
