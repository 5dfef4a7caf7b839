"""Benchmark: batched vs one-at-a-time greedy generation with ``cft_utils.models.generate``.

The sandbox base model answers ``--prompts`` sandbox instructions (the generative-replay workload), greedy,
``--max-new-tokens`` tokens, at batch 64 (A) and at batch 1 (B), alternating, in this process at ``--threads``
threads. Ratio: batch-1 seconds / batch-64 seconds (= tokens/s ratio: the answers are checked identical).
Target >= 5x.

    .venv/bin/python bench/bench_generate.py            # 64 prompts x 32 tokens, 3 reps
    .venv/bin/python bench/bench_generate.py --quick    # 32 prompts x 16 tokens, 1 rep
"""

from __future__ import annotations

import argparse
import json
import time

from benchlib import alternate, bench_home, ratio, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--prompts", type=int, default=None, help="default 64 (quick 32)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default 32 (quick 16)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    reps = args.reps or (1 if args.quick else 3)
    n = args.prompts or (32 if args.quick else 64)
    new = args.max_new_tokens or (16 if args.quick else 32)
    bench_home()

    from cft_utils.config import load_config
    from cft_utils.models import generate, load_model, load_tokenizer, use_threads
    from cft_utils.sandbox.build import sandbox_paths

    use_threads(args.threads)
    paths = sandbox_paths(load_config("sandbox"))
    lines = (paths["world"] / "data" / "multialpaca_en.jsonl").read_text().splitlines()[:n]
    prompts = [json.loads(x)["prompt"] for x in lines]
    tok, model = load_tokenizer(paths["base"]), load_model(paths["base"])
    answers = {}

    def run(batch: int):
        def go() -> dict:
            t0 = time.perf_counter()
            out = generate(model, tok, prompts, max_new_tokens=new, batch_size=batch)
            seconds = time.perf_counter() - t0
            answers.setdefault(batch, [g.text for g in out])
            return {"seconds": round(seconds, 3)}
        return go

    generate(model, tok, prompts[:4], max_new_tokens=4, batch_size=4)  # warm-up (first-call costs)
    print(f"[bench] generation: {n} prompts x {new} new tokens, batch {args.batch} vs 1, {reps} rep(s)", flush=True)
    a, b = alternate(run(args.batch), run(1), reps)
    same = answers[args.batch] == answers[1]
    ratios = [ratio(f"batched (batch {args.batch}) vs one-at-a-time generation", f"generate(batch_size={args.batch})",
                    "generate(batch_size=1)", [x["seconds"] for x in a], [x["seconds"] for x in b],
                    higher_is_better=False, unit="x tokens/s", target=">= 5")]
    write_result("generate", {"prompts": n, "max_new_tokens": new, "threads": args.threads,
                              "identical_answers": same, "ratios": ratios}, args.quick)
    if not same:
        raise SystemExit("batched and one-at-a-time answers differ")


if __name__ == "__main__":
    main()
