"""The benchmark scripts parse and their CPU paths run (no timing is asserted; bench/RESULTS.md holds the numbers).

- bench/gpu/sft_mfu.py: its ``--dry-run`` (tiny LLaMA, CPU) trains through the project's path with padding-free
  batches and writes its JSON; the FLOP count and the peak table are checked on known shapes.
- bench/run_all.py renders RESULTS.md from result files.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from cft_utils.paths import PROJECT_ROOT

BENCH = PROJECT_ROOT / "bench"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def sft_mfu():
    return _load(BENCH / "gpu" / "sft_mfu.py", "bench_sft_mfu")


def test_flops_and_peaks(sft_mfu):
    one_b = sft_mfu.SHAPES["llama-3.2-1b"]
    # LLaMA-3.2-1B: 1.24 B parameters, of which 0.26 B the (tied) embedding, counted once more as lm_head matmul
    per_token = sft_mfu.flops_per_token(one_b, s_eff=0)
    assert 6 * 1.2e9 < per_token < 6 * 1.3e9
    eight_b = sft_mfu.flops_per_token(sft_mfu.SHAPES["llama-3-8b"], s_eff=0)
    assert 6 * 7.4e9 < eight_b < 6 * 7.6e9  # 8.03 B parameters less the 0.53 B input embedding
    attn = sft_mfu.flops_per_token(one_b, s_eff=1000) - per_token
    assert attn == 6 * 16 * 2048 * 1000
    assert sft_mfu.peak_tflops("NVIDIA H200") == 989.0
    assert sft_mfu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert sft_mfu.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert sft_mfu.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert sft_mfu.peak_tflops("Some Card") is None


def test_sft_mfu_dry_run_on_cpu(sft_mfu, tmp_path):
    out = tmp_path / "mfu.json"
    assert sft_mfu.main(["--dry-run", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["dry_run"] and res["target_mfu"] == 0.45
    (row,) = res["rows"]
    assert row["shape"] == "tiny" and row["padding_free"] and row["attention"] == "sdpa"
    assert row["tokens_per_s"] > 0 and row["tokens_per_step"] > 0 and row["n_dropped_over_length"] == 0
    assert row["mfu"] is None  # no peak on a CPU


def test_run_all_renders_results(tmp_path, monkeypatch):
    sys.path.insert(0, str(BENCH))
    try:
        run_all = _load(BENCH / "run_all.py", "bench_run_all")
        benchlib = sys.modules["benchlib"]
    finally:
        sys.path.remove(str(BENCH))
    monkeypatch.setattr(run_all, "RESULTS", tmp_path)
    monkeypatch.setattr(run_all, "REPO", tmp_path)
    (tmp_path / "bench").mkdir()
    entry = benchlib.ratio("x vs y", "x", "y", [1.0, 2.0, 3.0], [2.0, 2.0, 2.0], higher_is_better=False,
                           unit="x tokens/s", target=">= 1")
    assert entry["ratio"] == 1.0 and entry["reps"] == [2.0, 1.0, 0.6667] and entry["n"] == 3
    (tmp_path / "generate.json").write_text(json.dumps({
        "date": "2026-01-01T00:00:00", "machine": {"load_average": [1.5, 1, 1]}, "ratios": [entry], "prompts": 4, "max_new_tokens": 2, "threads": 1,
        "identical_answers": True}))
    md = run_all.render(False, None, "make bench").read_text()
    assert "| x vs y | x | y | **1.00x tokens/s** | 0.67-2.00 (3) | >= 1 | 2026-01-01T00:00 | 1.5 |" in md
    assert "No executed notebooks were found" in md and "Padding-free loss check: not run" in md
    # the README's performance table comes from the same files, between its markers (never typed by hand)
    (tmp_path / "README.md").write_text("intro\n<!-- bench:start -->\nold numbers\n<!-- bench:end -->\nafter\n")
    run_all.render(False, [{"bench": "bench_generate", "seconds": 60.0, "rc": 0}], "make bench")
    readme = (tmp_path / "README.md").read_text()
    assert "old numbers" not in readme and readme.startswith("intro\n") and readme.endswith("after\n")
    assert "| x vs y | **1.00x tokens/s** | 0.67-2.00 (3) | >= 1 | 2026-01-01 | `bench/bench_generate.py` |" in readme
    assert "`make bench` took 1.0 min" in readme and "not run (no GPU lent)" in readme


def test_padding_free_loss_verdict_uses_the_tolerance_or_the_float_order_control(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        run_all = _load(BENCH / "run_all.py", "bench_run_all_loss")
        padding_free = _load(BENCH / "bench_padding_free.py", "bench_padding_free")
    finally:
        sys.path.remove(str(BENCH))
    arm = lambda final, mean: {"final_loss": final, "train_loss": mean, "steps": 600}  # noqa: E731
    diffs = {"padding_free": {"final_loss": 0.03, "train_loss": 0.005},       # beyond 2 %, within the control's 4 %
             "padding_free_sdpa": {"final_loss": 0.05, "train_loss": 0.005},  # beyond both
             "padded_accumulated": {"final_loss": 0.04, "train_loss": 0.004},
             "padded_other_seed": {"final_loss": 0.12, "train_loss": 0.03}}
    loss = {"run": "phase1/tiny-llama/alpaca", "date": "2026-01-01T00:00:00", "loss": {
        "seed": 1, "other_seed": 2, "attention": "sdpa_packed", "control": ["training.per_device_batch_size=8"],
        "padded": arm(1.0, 1.2), "padding_free": arm(1.03, 1.206), "padding_free_sdpa": arm(1.05, 1.206),
        "padded_accumulated": arm(0.96, 1.2048), "padded_other_seed": arm(0.88, 1.164),
        "rel_diff_from_padded": diffs, "tolerance": 0.02,
        "within_tolerance": padding_free.within_tolerance(diffs)}}
    assert loss["loss"]["within_tolerance"] == {"padding_free": True, "padding_free_sdpa": False}
    diffs["padded_accumulated"]["train_loss"] = 0.001  # the mean loss now beyond 2 % and beyond the control: fails
    diffs["padding_free"]["train_loss"] = 0.025
    assert padding_free.within_tolerance(diffs)["padding_free"] is False
    line = run_all.padding_free_loss_line(loss)
    assert "padding-free with sdpa_packed 1.0300 (3.000% from padded" in line
    assert "padding free within; padding free sdpa NOT within" in line
