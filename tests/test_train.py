"""Two-phase SFT end to end in the smoke profile: the plan, a full Phase 1 -> Phase 2 run, skip-if-done,
kill-and-resume to the same result, and the 2-process accelerate launch.

The expensive part (sandbox world, tokenizer, base model, the seven smoke runs) is built once per session
in one CFT_HOME, ``<pytest basetemp>/cft-home-smoke``, which test_notebooks.py shares.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from cft_utils.config import load_config
from cft_utils.paths import PROJECT_ROOT
from cft_utils.plan import plan_runs
from cft_utils.sandbox.build import sandbox_paths
from cft_utils.train import execute

SHARED_HOME = "cft-home-smoke"  # the same folder name in test_notebooks.py


def shared_smoke_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.getbasetemp() / SHARED_HOME
    home.mkdir(exist_ok=True)
    return home


@contextlib.contextmanager
def no_network():
    """Fail any socket connection that leaves the machine (loopback and Unix sockets are allowed)."""
    real = socket.socket.connect

    def guarded(self, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise OSError(f"a test tried to reach the network: {address}")
        return real(self, address)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", guarded)
        yield


def _sub_env(home: Path) -> dict:
    return {**os.environ, "CFT_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """Every run of the smoke plan, trained (or found done) in the shared CFT_HOME."""
    home = shared_smoke_home(tmp_path_factory)
    with pytest.MonkeyPatch.context() as mp, no_network():
        mp.setenv("CFT_HOME", str(home))
        cfg = load_config("smoke")
        plan = plan_runs(cfg)
        t0 = time.time()
        for run in plan.all():
            execute(run, cfg)
        return SimpleNamespace(home=home, cfg=cfg, plan=plan, seconds=time.time() - t0)


# --------------------------------------------------------------------------------------------- fast


def test_smoke_plan_is_the_paper_grid(tmp_path, monkeypatch):
    monkeypatch.setenv("CFT_HOME", str(tmp_path))
    plan = plan_runs(load_config("smoke"))
    assert [r.name for r in plan.phase1] == ["phase1/tiny-llama/alpaca/s7", "phase1/tiny-llama/openorca/s7",
                                             "phase1/tiny-llama/Instruct"]
    assert {r.name for r in plan.phase2} == {
        "phase2/tiny-llama/alpaca->multialpaca/s7", "phase2/tiny-llama/Instruct->multialpaca/s7",
        "phase2/tiny-llama/openorca->mopenorca/s7", "phase2/tiny-llama/Instruct->mopenorca/s7"}
    for r in plan.phase2:
        parent = r.parent
        assert r.init == f"run:{parent.run_id}" and parent.cell == f"phase1/tiny-llama/{r.phase1_data}"
        assert r.resolved["parent"] == parent.run_id
    assert not any(r.done() for r in plan.all())
    assert all(r.dir.parent == tmp_path.resolve() / "runs" for r in plan.all())


def test_process_count_mismatch_fails_before_any_model_is_loaded(tmp_path, monkeypatch):
    """Launched on 1 process with training.num_processes=2: the global batch would be wrong."""
    import cft_utils.train as train

    monkeypatch.setenv("CFT_HOME", str(tmp_path))

    def boom(*a, **k):
        raise AssertionError("loaded something before validating the launch")

    for mod, name in ((train, "load_model"), (train, "load_tokenizer"), (train, "ensure_sandbox"),
                      (train, "load_records")):
        monkeypatch.setattr(mod, name, boom)
    cfg = load_config("smoke", {"training.num_processes": 2, "training.global_batch_size": 16})
    run = plan_runs(cfg).get("phase1/tiny-llama/alpaca")
    with pytest.raises(RuntimeError) as e:
        execute(run, cfg)
    assert "phase1/tiny-llama/alpaca" in str(e.value)
    assert "launched on 1 process" in str(e.value) and "training.num_processes is 2" in str(e.value)
    assert not run.dir.exists()


def test_phase2_refuses_to_start_without_its_phase1_model(tmp_path, monkeypatch):
    monkeypatch.setenv("CFT_HOME", str(tmp_path))
    cfg = load_config("smoke")
    run = plan_runs(cfg).get("phase2/tiny-llama/alpaca->multialpaca")
    with pytest.raises(RuntimeError, match=r"Phase 1 run phase1/tiny-llama/alpaca/s7 .* is not done"):
        execute(run, cfg)


# --------------------------------------------------------------------------------------------- slow


def _safetensors(d: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(Path(d).glob("*.safetensors"))
    assert files, f"no safetensors in {d}"
    out = {}
    for f in files:
        out.update(load_file(f))
    return out


@pytest.mark.slow
def test_smoke_phase1_to_phase2_end_to_end(smoke, monkeypatch):
    monkeypatch.setenv("CFT_HOME", str(smoke.home))
    plan, cfg = smoke.plan, smoke.cfg
    base = sandbox_paths(cfg)["base"]
    for run in plan.all():
        d = run.dir
        assert run.done() and (d / "DONE").exists(), run.name
        assert json.loads((d / "DONE").read_text())["run_id"] == run.run_id
        assert any((d / "model").glob("*.safetensors")) and (d / "model" / "config.json").exists()
        assert (d / "model" / "tokenizer.json").exists() or (d / "model" / "tokenizer_config.json").exists()
        s = json.loads((d / "summary.json").read_text())
        assert s["run_id"] == run.run_id and s["name"] == run.name and s["num_processes"] == 1
        assert isinstance(s["final_loss"], float) and math.isfinite(s["final_loss"]) and s["final_loss"] > 0
        assert s["global_steps"] > 0 and s["n_records"] > 0 and s["resumed_from"] is None
        assert 0 < s["train_loop_s"] <= s["runtime_s"]  # trainer.train() alone; runtime_s adds saving
        p = json.loads((d / "provenance.json").read_text())
        assert {"git_commit", "packages", "seed", "hardware"} <= set(p)
        assert p["seed"] == cfg.seed and p["packages"]["torch"] and p["hardware"]["cpu_count"] >= 1
        if (PROJECT_ROOT / ".git").exists():
            assert p["git_commit"] and len(p["git_commit"]) == 40
        log = [json.loads(x) for x in (d / "train_log.jsonl").read_text().splitlines()]
        steps = [x["step"] for x in log]
        assert steps == sorted(set(steps)) and steps[-1] == s["global_steps"]
        assert log[-1]["loss"] == pytest.approx(s["final_loss"])
        info = json.loads((d / "run.json").read_text())
        assert info["run_id"] == run.run_id and info["resolved"] == json.loads(json.dumps(run.resolved))
        if run.phase == 1:
            assert Path(info["init"]) == base
        else:  # Phase 2 starts from its own Phase 1 model
            parent = run.parent
            assert Path(info["init"]) == parent.model_dir
            assert s["phase1_data"] == parent.phase1_data and s["phase2_data"] == run.phase2_data
            w2, w1 = _safetensors(run.model_dir), _safetensors(parent.model_dir)
            assert w2.keys() == w1.keys()
            assert any(not (w2[k] == w1[k]).all() for k in w1), f"{run.name} did not change its parent"
    assert len({r.run_id for r in plan.all()}) == 7


@pytest.mark.slow
def test_second_execute_is_skipped(smoke, monkeypatch):
    import trl

    import cft_utils.train as train

    monkeypatch.setenv("CFT_HOME", str(smoke.home))

    class NoTrainer:
        def __init__(self, *a, **k):
            raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(trl, "SFTTrainer", NoTrainer)
    monkeypatch.setattr(train, "load_model", NoTrainer)
    marks = {r.run_id: (r.dir / "DONE").stat().st_mtime_ns for r in smoke.plan.all()}
    t0 = time.time()
    for run in smoke.plan.all():
        assert execute(run, smoke.cfg) == run.model_dir
    assert time.time() - t0 < 5
    assert {r.run_id: (r.dir / "DONE").stat().st_mtime_ns for r in smoke.plan.all()} == marks


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from transformers import TrainerCallback
    from cft_utils import config, plan, train

    kill_at = int(sys.argv[1])
    cfg = config.load_config("smoke", {"training.epochs": 2})
    run = plan.plan_runs(cfg).get("phase1/tiny-llama/alpaca")

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kw):  # called after checkpoint-<step> is written
            if state.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    train.execute(run, cfg, callbacks=[Kill()])
""")


@pytest.mark.slow
def test_killed_run_resumes_and_finishes_like_an_uninterrupted_one(smoke, tmp_path, monkeypatch):
    monkeypatch.setenv("CFT_HOME", str(smoke.home))
    cfg = load_config("smoke", {"training.epochs": 2})
    assert cfg.training.save_steps == 4
    run = plan_runs(cfg).get("phase1/tiny-llama/alpaca")
    assert not run.done()

    # 1. uninterrupted reference, then moved aside so the same run id starts afresh
    with no_network():
        execute(run, cfg)
    ref = json.loads((run.dir / "summary.json").read_text())
    ref_w = _safetensors(run.model_dir)
    ref_log = [json.loads(x) for x in (run.dir / "train_log.jsonl").read_text().splitlines()]
    assert ref["global_steps"] == 12  # 48 records / batch 8 x 2 epochs: the kill at 8 is mid-way
    shutil.move(str(run.dir), str(tmp_path / "reference"))

    # 2. killed for real (SIGKILL) right after checkpoint-8 is saved
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, "8"], cwd=PROJECT_ROOT, env=_sub_env(smoke.home),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (run.dir / "DONE").exists() and not (run.dir / "model").exists()
    assert (run.dir / "checkpoints" / "checkpoint-8" / "trainer_state.json").exists()
    # a half-written later checkpoint (as if killed while saving) must be ignored, not resumed from
    partial = run.dir / "checkpoints" / "checkpoint-12"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"truncated")

    # 3. rerun: resumes from checkpoint-8 and ends where the uninterrupted run ended
    with no_network():
        execute(run, cfg)
    s = json.loads((run.dir / "summary.json").read_text())
    assert s["resumed_from"] and Path(s["resumed_from"]).name == "checkpoint-8"
    assert s["global_steps"] == ref["global_steps"]
    assert s["final_loss"] == pytest.approx(ref["final_loss"], abs=1e-5)
    w = _safetensors(run.model_dir)
    import torch

    assert w.keys() == ref_w.keys()
    for k in ref_w:
        torch.testing.assert_close(w[k], ref_w[k], atol=1e-5, rtol=1e-4, msg=k)
    log = [json.loads(x) for x in (run.dir / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [x["step"] for x in ref_log]  # no duplicated or lost entries
    assert [x["loss"] for x in log] == pytest.approx([x["loss"] for x in ref_log], abs=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(__import__("torch").cuda.device_count() == 1, reason="2 processes would share one GPU")
def test_two_process_accelerate_launch(smoke, monkeypatch):
    env = _sub_env(smoke.home)
    prep = subprocess.run([sys.executable, "-m", "cft_utils.train", "--params", "smoke", "--prepare"],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert prep.returncode == 0, prep.stderr[-3000:]
    sets = ["training.num_processes=2", "training.global_batch_size=16"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/cpu_ddp.yaml",
           "-m", "cft_utils.train", "--params", "smoke", "--run", "phase1/tiny-llama/alpaca"]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    assert proc.stdout.count("[train] phase1/tiny-llama/alpaca") == 1  # printed by rank 0 only

    monkeypatch.setenv("CFT_HOME", str(smoke.home))
    cfg = load_config("smoke", {"training.num_processes": 2, "training.global_batch_size": 16})
    run = plan_runs(cfg).get("phase1/tiny-llama/alpaca")
    assert run.done()
    s = json.loads((run.dir / "summary.json").read_text())
    assert s["num_processes"] == 2
    assert s["n_records"] == cfg.sandbox.n_phase1 == 48
    assert s["global_steps"] == math.ceil(48 / 16)
    assert any(run.model_dir.glob("*.safetensors"))
    log = [json.loads(x) for x in (run.dir / "train_log.jsonl").read_text().splitlines()]
    steps = [x["step"] for x in log]
    assert steps == sorted(set(steps))  # logged by the main process only
