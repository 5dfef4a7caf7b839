"""The run graph and its executor: dependency order, skip-if-done, failures, the local worker pool (same weights as
running in sequence) and the submitit job path (submitit's local executor stands in for SLURM)."""

from __future__ import annotations

import hashlib

import pytest

from cft_utils import executor
from cft_utils.config import load_config
from cft_utils.plan import plan_runs
from cft_utils.runs import is_done


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_graph_puts_parents_first_and_the_instruct_model_once():
    cfg = load_config("smoke", {"seeds": [7, 8]})
    plan = plan_runs(cfg)
    tasks = executor.graph(plan.phase2)
    names = [t.name for t in tasks]
    assert len(names) == len(set(names))
    assert names.count("phase1/tiny-llama/Instruct") == 1
    for t in tasks:
        for d in t.deps:
            assert names.index(d) < names.index(t.name), (d, t.name)
    p2 = next(t for t in tasks if t.name == "phase2/tiny-llama/alpaca->multialpaca/s8")
    assert p2.deps == ("phase1/tiny-llama/alpaca/s8",)
    assert {t.name for t in tasks} == {r.name for r in plan.all()}


def test_a_failed_run_skips_what_needs_it_and_names_it(tmp_path, monkeypatch, capsys):
    """Scheduling only: dispatch is replaced by a stand-in that marks runs done (or fails one)."""
    monkeypatch.setenv("CFT_HOME", str(tmp_path))
    cfg = load_config("smoke")
    plan = plan_runs(cfg)
    ran = []

    def fake_dispatch(run, cfg):
        ran.append(run.name)
        if run.name == "phase1/tiny-llama/alpaca/s7":
            raise ValueError("bad data in alpaca")
        run.dir.mkdir(parents=True, exist_ok=True)
        (run.dir / "DONE").write_text("{}")

    monkeypatch.setattr(executor, "dispatch", fake_dispatch)
    monkeypatch.setattr(executor, "prepare", lambda cfg, runs: None)
    with pytest.raises(executor.ExecutorError) as e:
        executor.execute_runs(cfg, plan.all(), workers=1, progress=True)
    assert "phase1/tiny-llama/alpaca/s7" in str(e.value) and "bad data in alpaca" in str(e.value)
    out = capsys.readouterr().out  # the progress lines name the failure and what it skipped
    assert "phase1/tiny-llama/alpaca/s7: FAILED" in out
    assert "phase2/tiny-llama/alpaca->multialpaca/s7: skipped (a run it needs failed)" in out
    assert "phase2/tiny-llama/alpaca->multialpaca/s7" not in ran  # skipped: its parent failed
    assert "phase2/tiny-llama/openorca->mopenorca/s7" in ran  # the rest still ran
    # a second call reuses every finished run and only retries the failed one (and what needs it)
    ran.clear()
    with pytest.raises(executor.ExecutorError):
        executor.execute_runs(cfg, plan.all(), workers=1, progress=False)
    assert ran == ["phase1/tiny-llama/alpaca/s7"]


@pytest.mark.slow
def test_worker_pool_gives_the_weights_of_a_sequential_run(tmp_path, monkeypatch, capsys):
    """Two worker processes (one thread each) against the same runs in this process, one after the other:
    bit-identical weights (same machine, same seeds)."""
    cfg_over = {"seeds": [7, 8], "grid.phase2": [{"phase1": "alpaca", "data": "multialpaca"}], "mitigation": None}
    digests = {}
    for label, workers in (("pool", 2), ("sequential", 1)):
        monkeypatch.setenv("CFT_HOME", str(tmp_path / label))
        cfg = load_config("smoke", cfg_over)
        plan = plan_runs(cfg)
        runs = [r for r in plan.all() if r.phase1_data == "alpaca"]
        statuses = executor.execute_runs(cfg, runs, workers=workers)
        assert {s["status"] for s in statuses} == {"trained"}
        assert all(is_done(r.dir) for r in runs)
        digests[label] = {r.name: _digest(r.model_dir / "model.safetensors") for r in runs}
        again = executor.execute_runs(cfg, runs, workers=workers)
        assert {s["status"] for s in again} == {"reused"}
    assert digests["pool"] == digests["sequential"]
    out = capsys.readouterr().out
    assert "[executor] 4/4" in out and "ran in" in out and "already done" in out


@pytest.mark.slow
def test_submitit_job_path_runs_the_graph(tmp_path, monkeypatch):
    """The SLURM path through submitit's local executor: one job per run, a child submitted after its parent."""
    pytest.importorskip("submitit")
    monkeypatch.setenv("CFT_HOME", str(tmp_path))
    cfg = load_config("smoke", {"executor.backend": "submitit-local", "executor.slurm.timeout_min": 10})
    plan = plan_runs(cfg)
    runs = [plan.get("phase2/tiny-llama/alpaca->multialpaca")]
    statuses = executor.execute_runs(cfg, runs)
    assert [s["name"] for s in statuses] == ["phase1/tiny-llama/alpaca/s7", "phase2/tiny-llama/alpaca->multialpaca/s7"]
    assert all(s["status"] == "trained" for s in statuses)
    assert is_done(runs[0].dir) and is_done(runs[0].parent.dir)
    assert list((tmp_path / "logs" / "submitit").glob("*/*_log.out"))


def test_skipping_the_exit_collection_keeps_every_exit_step(tmp_path):
    """cft_utils.processes: at exit the live objects are frozen, yet every atexit handler, weakref finalizer and
    buffered stream still runs or flushes, and the exit status is kept."""
    import subprocess
    import sys

    out = tmp_path / "exit.txt"
    script = f"""
import atexit, gc, sys, weakref
def last():  # registered before the skip: runs after it (atexit is last in, first out)
    with open({str(out)!r}, "a") as f:
        f.write(f"frozen={{gc.get_freeze_count() > 0}}\\n")
atexit.register(last)
from cft_utils.processes import skip_exit_collection
skip_exit_collection(); skip_exit_collection()  # idempotent
class Held: pass
held = Held()
weakref.finalize(held, lambda: open({str(out)!r}, "a").write("finalizer ran\\n"))
sys.stdout.write("buffered, not flushed")
sys.exit(3)
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert p.returncode == 3 and p.stdout == "buffered, not flushed"
    assert out.read_text().splitlines() == ["finalizer ran", "frozen=True"]
