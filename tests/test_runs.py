"""Run ids, done markers, resumable checkpoints and provenance (no training here; see test_train.py)."""

from __future__ import annotations

import json
import re
from importlib.metadata import version

from cft_utils.config import load_config
from cft_utils.paths import PROJECT_ROOT
from cft_utils.plan import plan_runs
from cft_utils.runs import is_done, last_complete_checkpoint, provenance, run_dir, run_id


def test_run_id_is_canonical_and_content_addressed():
    a = {"phase": 1, "data": {"name": "alpaca", "n": 3}, "seed": 7}
    b = {"seed": 7, "data": {"n": 3, "name": "alpaca"}, "phase": 1}
    assert run_id(a) == run_id(b)  # key order does not matter
    assert run_id(a, "p1") == f"p1-{run_id(a)}" and re.fullmatch(r"p1-[0-9a-f]{12}", run_id(a, "p1"))
    assert run_id({**a, "seed": 8}) != run_id(a)
    assert run_id({**a, "data": {"name": "alpaca", "n": 4}}) != run_id(a)


def test_run_dir_lives_under_cft_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CFT_HOME", str(tmp_path))
    assert run_dir("p1-abc") == tmp_path.resolve() / "runs" / "p1-abc"
    assert not is_done(run_dir("p1-abc"))
    (run_dir("p1-abc")).mkdir(parents=True)
    (run_dir("p1-abc") / "DONE").write_text("{}")
    assert is_done(run_dir("p1-abc"))


def _ckpt(root, step, complete=True, weights=True):
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    if weights:
        (d / "model.safetensors").write_bytes(b"x")
    if complete:
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return d


def test_last_complete_checkpoint_skips_and_removes_partial_ones(tmp_path):
    assert last_complete_checkpoint(tmp_path / "absent") is None
    root = tmp_path / "checkpoints"
    root.mkdir()
    assert last_complete_checkpoint(root) is None
    _ckpt(root, 4)
    _ckpt(root, 8)
    partial = _ckpt(root, 12, complete=False)  # killed while saving: no trainer_state.json
    no_weights = _ckpt(root, 16, weights=False)
    other = root / "runs"
    other.mkdir()
    assert last_complete_checkpoint(root) == str(root / "checkpoint-8")
    assert not partial.exists() and not no_weights.exists()
    assert other.exists() and (root / "checkpoint-4").exists()


def test_last_complete_checkpoint_orders_numerically(tmp_path):
    _ckpt(tmp_path, 9)
    _ckpt(tmp_path, 10)
    assert last_complete_checkpoint(tmp_path).endswith("checkpoint-10")


def test_provenance_has_commit_versions_seed_and_hardware():
    p = provenance(seed=11, profile="smoke")
    assert p["seed"] == 11 and p["profile"] == "smoke"
    assert p["packages"]["torch"] == version("torch") and p["packages"]["trl"] == version("trl")
    assert p["hardware"]["cpu_count"] >= 1 and p["hardware"]["python"]
    assert "cuda" in p["hardware"] and "time_utc" in p
    if (PROJECT_ROOT / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}", p["git_commit"]) and isinstance(p["git_dirty"], bool)
    json.dumps(p)  # serialisable as written to provenance.json


def test_run_ids_follow_semantics_not_bookkeeping():
    base = plan_runs(load_config("smoke"))
    ids = {r.name: r.run_id for r in base.all()}
    # logging/saving cadence does not change what is learnt: same ids (a finished run is reused)
    same = plan_runs(load_config("smoke", {"training.save_steps": 8, "training.logging_steps": 4}))
    assert {r.name: r.run_id for r in same.all()} == ids
    # a different learning rate is a different experiment: every trained run changes
    other = plan_runs(load_config("smoke", {"training.learning_rate": 5e-4}))
    assert all(other.get(n).run_id != i for n, i in ids.items())
    # Phase 2 hyper-parameters alone change only Phase 2 ids
    p2 = plan_runs(load_config("smoke", {"phase2_training": {**load_config("smoke").training.model_dump(),
                                                              "epochs": 2}}))
    assert all(p2.get(r.name).run_id == r.run_id for r in base.phase1)
    assert all(p2.get(r.name).run_id != r.run_id for r in base.phase2)
