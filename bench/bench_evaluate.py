"""Benchmark: the project's evaluation of one checkpoint vs lm-eval's own per-call set-up.

The sandbox base model is evaluated on the language-ability suite (MLQA-, XQuAD- and XL-Sum-like tasks, five
languages: two ``simple_evaluate`` calls) through ``runner.evaluate_checkpoint``, as an executor worker does for
every checkpoint after its first. A keeps lm-eval's environment report and compiled prompt templates for the
process (``runner.env_info_once``, ``runner.templates_compiled_once``); B restores lm-eval's functions, which
rebuild both in every call (torch's ``collect_env``: ~30 subprocesses; one Jinja compilation per document).
Both arms run in this process after one warm-up evaluation (imports, first loads), alternating. Ratio: B seconds /
A seconds (> 1: A is faster). The two arms' metrics are compared (they must be identical).

    .venv/bin/python bench/bench_evaluate.py            # 2 reps, 120 items per language (the profile's)
    .venv/bin/python bench/bench_evaluate.py --quick    # 1 rep, 20 items per language
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

from benchlib import alternate, bench_home, ratio, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    reps = args.reps or (1 if args.quick else 2)
    home = bench_home()

    import lm_eval.evaluator as lm_evaluator
    import lm_eval.utils as lm_utils

    from cft_utils.config import load_config, parse_set
    from cft_utils.evaluation import runner
    from cft_utils.sandbox.build import sandbox_paths

    sets = [f"evaluation.num_threads={args.threads}"]
    if args.quick:
        sets += [f"evaluation.benchmarks.{b}.limit=20" for b in ("MLQA", "XQuAD", "XLSum")]
    cfg = load_config("sandbox", parse_set(sets))
    base = sandbox_paths(cfg)["base"]
    # The base model as a checkpoint: evaluate_checkpoint needs a name, an id, a done() and a folder for caches.
    ckpt = SimpleNamespace(name="sandbox base (bench)", run_id="bench-evaluate", model_dir=base,
                           dir=home / "bench-evaluate", done=lambda: True)
    jobs = runner.jobs_for(cfg, ("la",))
    originals = (lm_evaluator.add_env_info, lm_utils.apply_template)
    installers = (runner.env_info_once, runner.templates_compiled_once)
    metrics: dict[str, dict] = {}

    def evaluate(arm: str):
        def go() -> dict:
            if arm == "B":  # lm-eval as shipped, and the runner does not install its caches
                lm_evaluator.add_env_info, lm_utils.apply_template = originals
                runner.env_info_once = runner.templates_compiled_once = lambda: None
            elif arm == "A":  # the worker's kept ones, as after its first checkpoint
                lm_evaluator.add_env_info, lm_utils.apply_template = kept
                runner.env_info_once, runner.templates_compiled_once = installers
            t0 = time.perf_counter()
            runner.evaluate_checkpoint(cfg, ckpt, jobs, force=True)
            seconds = time.perf_counter() - t0
            got = {j.task: json.loads(runner.cache_path(ckpt, j.task, j.limit).read_text())["metrics"] for j in jobs}
            metrics.setdefault(arm, got)
            return {"seconds": round(seconds, 3)}
        return go

    evaluate("warm-up")()  # imports, task index, the first environment report (both arms pay these once)
    kept = (lm_evaluator.add_env_info, lm_utils.apply_template)
    assert kept != originals, "the evaluation path did not install its per-process caches"
    n_calls = len({(j.limit, j.chat_template, j.spec.max_gen_toks, j.batch_size) for j in jobs})
    print(f"[bench] evaluation: {len(jobs)} tasks in {n_calls} lm-eval call(s) on the sandbox base model, "
          f"{reps} rep(s)", flush=True)
    a, b = alternate(evaluate("A"), evaluate("B"), reps)
    same = metrics["A"] == metrics["B"]
    ratios = [ratio("evaluation of a checkpoint (language-ability suite) vs lm-eval's per-call set-up",
                    "runner.evaluate_checkpoint (environment report and templates kept per process)",
                    "the same with lm-eval's add_env_info and apply_template", [x["seconds"] for x in a],
                    [x["seconds"] for x in b], higher_is_better=False, unit="x faster")]
    write_result("evaluate", {"tasks": len(jobs), "lm_eval_calls": n_calls, "threads": args.threads,
                              "identical_metrics": same, "ratios": ratios, "a_runs": a, "b_runs": b}, args.quick)
    if not same:
        raise SystemExit("the two arms' metrics differ")


if __name__ == "__main__":
    main()
