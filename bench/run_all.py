"""``make bench``: run every benchmark, then write bench/RESULTS.md from bench/results/*.json.

Each benchmark is a script of its own (``bench/bench_*.py``, runnable alone, ``--quick`` for a fast check) that
measures ratios A/B in one run, A and B alternating, median of repetitions, and writes its JSON. This runs them
in sequence (they would disturb each other's timings in parallel) and renders the table.

    .venv/bin/python bench/run_all.py            # make bench: about 15 minutes on 2 cores
    .venv/bin/python bench/run_all.py --quick    # a few minutes: every path, numbers not meant to be quoted
    .venv/bin/python bench/run_all.py --render   # only rewrite RESULTS.md from the JSON files present
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from benchlib import PY, REPO, RESULTS, machine

# In the order they run; the training benchmarks last but one (the longest), the read-only one last.
BENCHES = ["bench_tokenized", "bench_generate", "bench_evaluate", "bench_mpd_memory", "bench_train_vs_trl",
           "bench_padding_free", "bench_attention", "bench_executor", "bench_reproduce"]
# bench script -> result file stem(s) it writes
RESULT_OF = {"bench_tokenized": ["tokenized"], "bench_generate": ["generate"],
             "bench_evaluate": ["evaluate"], "bench_mpd_memory": ["mpd_memory"],
             "bench_train_vs_trl": ["train_vs_trl"], "bench_padding_free": ["padding_free", "padding_free_loss"],
             "bench_attention": ["attention"],
             "bench_executor": ["executor"], "bench_reproduce": ["reproduce"]}

WHEN_TO_PACK = """\
## Padding-free batching and packing: when to use which

- **Padding-free** (`training.padding_free: true`, TRL's padding-free collator): each batch is one row of the
  concatenated sequences with per-sequence positions; no compute is spent on padding, the optimisation is the same
  (same examples per step, same loss tokens; one batch's loss and gradients agree to float precision, tested), so
  runs differ from padded ones by floating-point order only, which training amplifies like any numerical change
  (the loss check above, beside the seed-to-seed difference). Set per profile (`training.padding_free` in
  params/*.yaml). Over-long records are dropped before training and counted in each run's `summary.json`
  (`n_dropped_over_length`).
  On a GPU with flash attention (varlen kernels) it is the usual win; with SDPA the model builds a block-causal
  mask from the positions instead.
- **Packing** (TRL `packing=True`, best-fit decreasing to `max_length`) changes the optimisation: fewer, longer
  rows per step, so fewer optimizer steps per epoch for the same data. It pays when sequences are long and
  uneven and a GPU's throughput grows with the row length (large models, flash attention); the paper profile on
  GPUs is the place to measure it. On CPU it measured 0.29x tokens/s against padded batches (STACK_NOTES: one
  ~1,440-token row per step), and on the sandbox's short records it would change the number of steps: not used.
"""


def run_benches(quick: bool, only: list[str] | None) -> list[dict]:
    """Run each benchmark script; returns its name, seconds and exit status (a failure does not stop the rest)."""
    out = []
    for b in BENCHES:
        if only and b not in only:
            continue
        cmd = [PY, str(REPO / "bench" / f"{b}.py")] + (["--quick"] if quick else [])
        print(f"== {b}{' --quick' if quick else ''}", flush=True)
        t0 = time.time()
        rc = subprocess.run(cmd, cwd=REPO).returncode
        out.append({"bench": b, "seconds": round(time.time() - t0, 1), "rc": rc})
        print(f"== {b}: {'ok' if rc == 0 else f'FAILED ({rc})'} in {out[-1]['seconds']:.0f} s", flush=True)
    return out


def _load(stem: str, quick: bool) -> dict | None:
    for name in ([f"{stem}-quick", stem] if quick else [stem]):
        f = RESULTS / f"{name}.json"
        if f.exists():
            return json.loads(f.read_text())
    return None


def _fmt(x: float) -> str:
    return f"{x:.2f}" if abs(x) >= 0.095 else f"{x:.3f}"


def padding_free_loss_line(loss: dict) -> str:
    """The loss check of bench_padding_free.py as one sentence, with its verdict against the stated tolerance."""
    lo = loss["loss"]
    d, pad = lo["rel_diff_from_padded"], lo["padded"]

    def arm(name: str, what: str) -> str:
        return (f"{what} {lo[name]['final_loss']:.4f} ({d[name]['final_loss']:.3%} from padded; mean training loss "
                f"{d[name]['train_loss']:.3%})")

    verdict = "; ".join(f"{name.replace('_', ' ')} {'within' if ok else 'NOT within'}"
                        for name, ok in lo["within_tolerance"].items())
    return (f"- Padding-free loss check ({loss['run']} at seed {lo['seed']}, full runs of {pad['steps']} steps, measured "
            f"{loss['date'][:16]}): final loss padded {pad['final_loss']:.4f}; "
            f"{arm('padding_free', 'padding-free with ' + str(lo['attention']))}; "
            f"{arm('padding_free_sdpa', 'padding-free with sdpa')}; float-order control "
            f"(padded, {', '.join(lo['control'])}): {arm('padded_accumulated', 'final loss')}; padded at seed "
            f"{lo['other_seed']}: {arm('padded_other_seed', 'final loss')}. Tolerance: {lo['tolerance']:.0%} or the "
            f"control's difference, whichever is larger, for both losses: {verdict}.")


def render(quick: bool, runs: list[dict] | None, command: str) -> Path:
    """bench/RESULTS.md from the result files (quick results only with ``quick``)."""
    results = {stem: _load(stem, quick) for stems in RESULT_OF.values() for stem in stems}
    m = machine()
    lines = ["# Benchmark results", "",
             "Generated by `bench/run_all.py` (`make bench`) from `bench/results/*.json`; do not edit by hand. Every "
             "ratio compares A with the baseline B a user would otherwise pick, measured in the same run, A and B "
             "alternating, median over the repetitions (min-max and n beside it).", "",
             f"- command: `{command}`" + (" (quick: short runs, numbers not meant to be quoted)" if quick else ""),
             f"- date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
             f"- machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, "
             + ", ".join(f"{k} {v}" for k, v in m["packages"].items()) + f"; load average at the end {m['load_average']}",
             ]
    if runs:
        lines.append("- benchmarks: " + ", ".join(f"{r['bench']} {r['seconds']:.0f} s" + ("" if r["rc"] == 0
                                                   else " (FAILED)") for r in runs)
                     + f"; {sum(r['seconds'] for r in runs) / 60:.1f} min in all")
    lines += ["- each row is measured by its own script, `bench/bench_<name>.py` (run alone with `--quick` for a fast "
              "check); *measured* is when, *load* the machine's 1-minute load average at the end of that script (a "
              "shared machine: above the core count, processes wait for a core, which hurts multi-threaded ones most)",
              "", "| benchmark | A | B (baseline) | ratio A/B (median) | min-max (n) | target | measured | load |",
              "|---|---|---|---|---|---|---|---|"]
    for res in results.values():
        if not res:
            continue
        for r in res.get("ratios", []):
            lines.append(f"| {r['name']} | {r['a']} | {r['b']} | **{_fmt(r['ratio'])}{r['unit']}** | "
                         f"{_fmt(r['min'])}-{_fmt(r['max'])} ({r['n']}) | {r.get('target') or ''} | "
                         f"{res['date'][:16]} | {(res['machine'].get('load_average') or ['?'])[0]} |")
    missing = [s for s, r in results.items() if r is None and s != "padding_free_loss"]
    if missing:
        lines += ["", "Not measured in this run: " + ", ".join(missing) + "."]
    lines += ["", "## Checks beside the ratios", ""]
    if results.get("train_vs_trl"):
        r = results["train_vs_trl"]
        lo = r["losses"]
        lines.append(f"- Training path vs bare TRL ({r['run']}, {r['epochs']} epoch, padding_free={r['padding_free']}):"
                     f" mean training loss {lo['project_train_loss']:.6f} vs {lo['bare_train_loss']:.6f} "
                     f"({'identical' if lo['same_train_loss'] else 'different'}).")
    if results.get("generate"):
        r = results["generate"]
        lines.append(f"- Generation ({r['prompts']} prompts x {r['max_new_tokens']} tokens, {r['threads']} thread): "
                     f"batched and one-at-a-time answers {'identical' if r['identical_answers'] else 'DIFFER'}.")
    if results.get("evaluate"):
        r = results["evaluate"]
        lines.append(f"- Evaluation ({r['tasks']} tasks in {r['lm_eval_calls']} lm-eval calls, {r['threads']} thread): "
                     f"metrics of the two arms {'identical' if r['identical_metrics'] else 'DIFFER'}.")
    if results.get("tokenized"):
        r = results["tokenized"]
        med = sorted(x["seconds"] for x in r["uncached_s"])[len(r["uncached_s"]) // 2]
        lines.append(f"- Tokenised cache ({r['dataset']}: {r['records']} records, {r['tokens']} tokens): TRL's "
                     f"preparation takes {med:.2f} s per run without the cache; rows "
                     f"{'identical' if r['identical_rows'] else 'DIFFER'} with and without it.")
    loss = results.get("padding_free_loss")
    if loss and "rel_diff_from_padded" in loss["loss"]:
        lines.append(padding_free_loss_line(loss))
    else:
        lines.append("- Padding-free loss check: not run with this version of the check "
                     "(`.venv/bin/python bench/bench_padding_free.py --loss-check`, five full runs).")
    rep = results.get("reproduce")
    lines += ["", "## The sandbox reproduce, per notebook", ""]
    if rep and rep.get("available"):
        lines += [f"From the executed notebooks in `{rep['reports']}` (written {rep['written']}"
                  + (f", commit {rep['git_commit_of_reports']}" if rep.get("git_commit_of_reports") else "")
                  + "); read, not rerun.", "", "| notebook | seconds | status | slowest cell |", "|---|---|---|---|"]
        for nb in rep["notebooks"]:
            slow = nb["slowest_cells"][0] if nb["slowest_cells"] else None
            lines.append(f"| {nb['notebook']} | {nb['seconds']} | {nb['status']} | "
                         + (f"{slow['seconds']} s: `{slow['source']}`" if slow else "") + " |")
        lines.append(f"| **total** | **{rep['total_s']}** | | |")
        t = rep.get("timing")
        if t:
            per = {n["notebook"].removesuffix(".ipynb"): n for n in t.get("notebooks", [])}
            from cft_utils.report.findings import describe_start

            started = describe_start(t.get("home_at_start"))
            lines += ["", f"Whole run (`reports/<name>/timing.json`{f', {started}' if started else ''}): "
                      f"**{t['wall_s'] / 60:.1f} min wall, "
                      f"{t['cpu_s'] / 60:.1f} min CPU time = {t['cpu_over_wall']}x wall** on {t['cores']} cores "
                      f"(target: >= 1.7x, both cores busy; {'every notebook' if t['complete'] else 'NOT every notebook'}"
                      f"; load average at the end {t.get('load_avg_end')}). Per notebook, CPU/wall: "
                      + ", ".join(f"{k[:2]} {v['cpu_s'] / max(v['wall_s'], 1e-9):.2f}x" for k, v in per.items())
                      + "."]
    else:
        where = rep["reports"] if rep else "reports/sandbox"
        lines.append(f"No executed notebooks were found in `{where}`: run `make reproduce` (README: measured time), "
                     "then `make bench` (or `.venv/bin/python bench/run_all.py --render` after "
                     "`bench/bench_reproduce.py`) to fill this table. `make bench` does not rerun it.")
    lines += ["", WHEN_TO_PACK]
    out = REPO / "bench" / "RESULTS.md"
    out.write_text("\n".join(lines))
    print(f"[bench] wrote {out.relative_to(REPO)}", flush=True)
    if not quick:
        readme_table(results, runs)
    return out


README_START, README_END = "<!-- bench:start", "<!-- bench:end -->"
SCRIPT_OF = {stem: f"bench/{script}.py" for script, stems in RESULT_OF.items() for stem in stems}


def readme_table(results: dict, runs: list[dict] | None) -> bool:
    """Rewrite the README's performance table (between its bench markers) from the same result files: the
    README's numbers are never typed by hand. Returns whether the README had the markers."""
    readme = REPO / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.exists() else ""
    if README_START not in text or README_END not in text:
        return False
    m = machine()
    rows = ["| A vs B (baseline) | ratio (median) | min-max (n) | target | measured | script |", "|---|---|---|---|---|---|"]
    for stem, res in results.items():
        for r in (res or {}).get("ratios", []):
            rows.append(f"| {r['name']} | **{_fmt(r['ratio'])}{r['unit']}** | {_fmt(r['min'])}-{_fmt(r['max'])} "
                        f"({r['n']}) | {r.get('target') or ''} | {res['date'][:10]} | `{SCRIPT_OF.get(stem, '')}` |")
    rep = results.get("reproduce") or {}
    t = rep.get("timing") if rep.get("available") else None
    if t:
        from cft_utils.report.findings import describe_start

        started = describe_start(t.get("home_at_start"))
        rows.append(f"| the whole sandbox `make reproduce` (every seed), CPU time / wall time | **{t['cpu_over_wall']}x** "
                    f"({t['wall_s'] / 60:.1f} min wall{f', {started}' if started else ''}) | 1 run | >= 1.7 | "
                    f"{rep.get('written', '')[:10]} | "
                    "`bench/bench_reproduce.py` (reads its timing.json) |")
    gpu = RESULTS / "gpu_sft_mfu.json"
    if not gpu.exists():
        rows.append("| GPU: bf16 SFT of random LLaMA-3.2-1B / LLaMA-3-8B shapes, MFU | not run (no GPU lent) | | >= 45 % "
                    "| | `bench/gpu/sft_mfu.py` |")
    total = (f"; `make bench` took {sum(r['seconds'] for r in runs) / 60:.1f} min" if runs else "")
    body = [f"{README_START} (generated by `make bench` from bench/results/; do not edit by hand) -->",
            f"Measured on {m['cpu']}, {m['cores']} cores{total}; each row's date and load are in "
            "[bench/RESULTS.md](bench/RESULTS.md).", "", *rows, README_END]
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    readme.write_text(head + "\n".join(body) + tail, encoding="utf-8")
    print(f"[bench] rewrote the performance table of {readme.relative_to(REPO)}", flush=True)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--render", action="store_true", help="only rewrite RESULTS.md from bench/results/")
    ap.add_argument("--only", nargs="*", default=None, help="benchmark scripts to run (default: all)")
    args = ap.parse_args()
    runs_file = RESULTS / ("run_all-quick.json" if args.quick else "run_all.json")
    if args.render:
        runs = json.loads(runs_file.read_text())["runs"] if runs_file.exists() else None
    else:
        runs = run_benches(args.quick, args.only)
        if not args.only:  # the durations of a whole `make bench`, for a later --render
            runs_file.write_text(json.dumps({"runs": runs}, indent=1))
    command = "make bench" if len(sys.argv) == 1 else "python bench/run_all.py " + " ".join(sys.argv[1:])
    render(args.quick, runs, command)
    return 0 if not runs or all(r["rc"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
