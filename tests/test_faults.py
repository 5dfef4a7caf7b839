"""Fault injection (issue 14, item 5): every long stage is killed with SIGKILL at several points, rerun, and must
end exactly where an uninterrupted run with the same seed ends; a full disk while writing results leaves the
previous results intact; planted secrets never reach an output.

Stages: Phase 1 and Phase 2 training (between checkpoints, while a checkpoint is written, while the final model is
written, after it is written but before the run is marked done), evaluation (after the first task's cache), replay
generation (during generation, between writing the set and putting it in place), mOpenOrca translation (after the
first shard), DES encoder training (mid-training), geometry capture (after the first batch).

How: the killed stage runs in a subprocess with a hook that sends SIGKILL to itself at the chosen point; the rerun
and the reference run in this process. The sandbox is built once per session (or copied from test_train.py's
session home) and each test works on a copy of it, so nothing is rebuilt per test. Every subprocess gets planted
API keys and tokens in its environment; the last test scans everything written for them.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from cft_utils.config import load_config
from cft_utils.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow

SECRETS = {"OPENAI_API_KEY": "sk-planted-7f3a9c1e5b", "HF_TOKEN": "hf_plantedTokenQ8x2Lm4",
           "CFT_JUDGE_API_KEY": "planted-judge-key-91c4", "WANDB_API_KEY": "planted-wandb-5e6f7a8b"}
OVERRIDES = {"training.epochs": 1}  # 48 records / batch 8: 6 steps, checkpoints at 4 and 6
ENCODER = {"n_pairs": 64, "epochs": 1, "batch_size": 16}
TIMINGS: dict[str, float] = {}


def _cfg():
    return load_config("smoke", OVERRIDES)


def _env(home: Path) -> dict:
    return {**os.environ, **SECRETS, "CFT_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(PROJECT_ROOT)}


def _copy(src: Path, dst: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns(".*.lock"))
    for rel in drop:
        for p in dst.glob(rel):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return dst


def _weights(d: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _same_weights(a: Path, b: Path) -> None:
    import torch

    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and wa
    bad = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not bad, f"not bit-identical: {bad[:5]}"


# The killed process: one stage, with a hook that SIGKILLs this process at the chosen point.
STAGE = textwrap.dedent(r"""
    import json, os, signal, sys
    stage, point, arg = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def partial_write(path, data=b"half a file"):
        with open(path, "wb") as f:
            f.write(data)
        die()

    from cft_utils import config, plan
    cfg = config.load_config("smoke", arg["overrides"])
    grid = plan.plan_runs(cfg)
    if stage == "train":
        import transformers.modeling_utils as mu
        from transformers import TrainerCallback
        from cft_utils import train
        kind, _, n = point.partition(":")
        callbacks = []
        if kind == "step":
            class Kill(TrainerCallback):
                def on_step_end(self, args, state, control, **kw):
                    if state.global_step == int(n):
                        die()
            callbacks.append(Kill())
        elif kind in ("ckpt-write", "final-write"):
            real = mu.safe_save_file
            def save(tensors, filename, *a, **k):
                if (kind == "ckpt-write" and f"checkpoint-{n}" in str(filename)) or \
                        (kind == "final-write" and os.sep + "model" + os.sep in str(filename)):
                    partial_write(filename)
                return real(tensors, filename, *a, **k)
            mu.safe_save_file = save
        elif kind == "before-done":
            train.mark_done = lambda *a, **k: die()
        train.execute(grid.get(arg["run"]), cfg, callbacks=callbacks)
    elif stage == "evaluate":
        from cft_utils.evaluation import runner
        real, count = runner.write_json, [0]
        def write_json(path, obj):
            out = real(path, obj)
            if str(path).endswith(".json") and os.sep + "eval" + os.sep in str(path):
                count[0] += 1
                if count[0] == int(point):
                    die()
            return out
        runner.write_json = write_json
        runner.evaluate_runs(cfg, [grid.get(arg["run"])], suites=tuple(arg["suites"]), progress=False, workers=1)
    elif stage == "replay":
        from cft_utils import models
        from cft_utils.mitigation import replay
        from cft_utils.mitigation.plan import plan_mitigations
        run = next(r for r in plan_mitigations(cfg, grid) if r.name == arg["run"])
        if point == "generate":
            models.generate = lambda *a, **k: die()
        elif point == "save":
            real = replay.mark_complete
            def mark(root, **k):  # the set is on disk in its temporary folder, not yet renamed into place
                real(root, **k)
                die()
            replay.mark_complete = mark
        replay.build_replay_set(cfg, run, "GR", arg["percent"], progress=False)
    elif stage == "translate":
        from cft_utils.data import sandbox_mopenorca
        from cft_utils.data.translation import build
        real = build.write_json
        def write_json(path, obj):
            out = real(path, obj)
            if str(path).endswith(".meta.json"):
                die()
            return out
        build.write_json = write_json
        sandbox_mopenorca.build_sandbox_mopenorca(cfg)
    elif stage == "encode":
        import transformers
        from cft_utils.analysis.encoders import sandbox_encoder
        real, count = transformers.Trainer.training_step, [0]
        def step(self, *a, **k):
            count[0] += 1
            if count[0] == int(point):
                die()
            return real(self, *a, **k)
        transformers.Trainer.training_step = step
        sandbox_encoder(cfg, **arg["encoder"])
    elif stage == "capture":
        from cft_utils.analysis.geometry import capture, profiles
        real = capture.activation_batches
        def batches(*a, **k):
            for i, item in enumerate(real(*a, **k)):
                if i == int(point):
                    die()
                yield item
        capture.activation_batches = batches
        profiles.layer_profile(arg["model"], None, arg["prompts"], out_dir=arg["out"], batch_size=2, progress=False)
    print("the stage finished without being killed", flush=True)
""")


def _kill(home: Path, stage: str, point: str, **arg) -> float:
    """Run ``stage`` in a subprocess that SIGKILLs itself at ``point``; returns its wall time."""
    arg.setdefault("overrides", OVERRIDES)
    t0 = time.time()
    p = subprocess.run([sys.executable, "-c", STAGE, stage, point, json.dumps(arg)], cwd=PROJECT_ROOT,
                       env=_env(home), capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, f"{stage}@{point}: rc {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return time.time() - t0


@pytest.fixture(scope="module")
def base_home(tmp_path_factory):
    """A CFT_HOME holding only the smoke sandbox (world, tokenizer, base model): copied from test_train.py's
    session home when that one has it, else built once here."""
    from cft_utils.sandbox.build import ensure_sandbox

    t0 = time.time()
    home = tmp_path_factory.mktemp("faults") / "base"
    shared = tmp_path_factory.getbasetemp() / "cft-home-smoke" / "sandbox"
    if any(shared.glob("world-*/base-*/DONE")):
        _copy(shared, home / "sandbox")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CFT_HOME", str(home))
        ensure_sandbox(_cfg())
    TIMINGS["sandbox"] = time.time() - t0
    return home


@pytest.fixture(scope="module")
def ref(base_home, tmp_path_factory):
    """Uninterrupted references, in a copy of the base home: Phase 1 and Phase 2 runs, the LA evaluation of the
    Phase 1 run, a GR replay set, the sandbox mOpenOrca, the sandbox encoder, a layer profile."""
    from cft_utils import train
    from cft_utils.analysis.encoders import sandbox_encoder
    from cft_utils.analysis.geometry.profiles import layer_profile
    from cft_utils.data.loaders import load_records
    from cft_utils.evaluation import runner
    from cft_utils.mitigation.plan import plan_mitigations
    from cft_utils.mitigation.replay import build_replay_set
    from cft_utils.plan import plan_runs

    t0 = time.time()
    home = _copy(base_home, tmp_path_factory.mktemp("faults-ref") / "home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CFT_HOME", str(home))
        for k, v in SECRETS.items():
            mp.setenv(k, v)
        cfg = _cfg()
        grid = plan_runs(cfg)
        p1, p2 = grid.get("phase1/tiny-llama/alpaca"), grid.get("phase2/tiny-llama/alpaca->multialpaca")
        gr = next(r for r in plan_mitigations(cfg, grid) if r.strategy == "GR_5")
        for run in (p1, p2, gr.parent):  # the GR cell starts from the Instruct model
            train.execute(run, cfg, quiet=True)
        TIMINGS["reference training (3 runs)"] = time.time() - t0
        t1 = time.time()
        tidy = runner.evaluate_runs(cfg, [p1], suites=("la",), progress=False, workers=1)
        TIMINGS["reference evaluation"] = time.time() - t1
        t1 = time.time()
        replay_records, _ = build_replay_set(cfg, gr, "GR", 5, progress=False)
        TIMINGS["reference replay"] = time.time() - t1
        t1 = time.time()
        mopenorca = load_records(cfg, "mopenorca")
        encoder = sandbox_encoder(cfg, **ENCODER)
        texts = [r["prompt"][-1]["content"] for r in mopenorca[:6]]
        emb = encoder.encode(texts, convert_to_numpy=True)
        prompts = texts[:5]
        profile = layer_profile(str(p1.model_dir), None, prompts, out_dir=home / "profile", batch_size=2,
                                progress=False)
        TIMINGS["reference translation+encoder+capture"] = time.time() - t1
    return SimpleNamespace(home=home, cfg=cfg, p1=p1, p2=p2, gr=gr, tidy=tidy, replay=replay_records,
                           mopenorca=mopenorca, texts=texts, emb=emb, prompts=prompts, profile=profile)


def _use(monkeypatch, home: Path):
    monkeypatch.setenv("CFT_HOME", str(home))
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)


def _train_log(run) -> list[dict]:
    return [json.loads(x) for x in (run.dir / "train_log.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("point", ["step:3", "ckpt-write:4", "final-write"])
def test_phase1_killed_anywhere_resumes_to_the_same_weights(ref, tmp_path, monkeypatch, point):
    """Killed before the first checkpoint, while checkpoint-4 is written, and while the final model is written
    (Phase 2 below is killed after it, before DONE): the rerun ends bit-identical, with the same losses, logged
    once."""
    from cft_utils import train

    home = _copy(ref.home, tmp_path / "home", drop=(f"runs/{ref.p1.run_id}*", "runs/.p1-*", "runs/p2-*"))
    took = _kill(home, "train", point, run=ref.p1.name)
    _use(monkeypatch, home)
    if point == "ckpt-write:4":  # the half-written checkpoint is there, and must not be resumed from
        assert (ref.p1.dir / "checkpoints" / "checkpoint-4" / "model.safetensors").read_bytes() == b"half a file"
    t0 = time.time()
    train.execute(ref.p1, ref.cfg, quiet=True)
    TIMINGS[f"phase1 {point}: killed run + rerun"] = took + time.time() - t0
    ref_run = SimpleNamespace(dir=ref.home / "runs" / ref.p1.run_id)
    _same_weights(ref.p1.model_dir, ref_run.dir / "model")
    s, r = (json.loads((d / "summary.json").read_text()) for d in (ref.p1.dir, ref_run.dir))
    assert s["global_steps"] == r["global_steps"] == 6
    assert s["train_loss"] == pytest.approx(r["train_loss"], rel=1e-6)  # the whole run's loss, not the last session's
    assert s["n_records"] == r["n_records"]
    assert _train_log(ref.p1) == _train_log(ref_run)  # nothing lost, nothing twice
    assert ref.p1.done()


def test_phase2_killed_before_it_is_marked_done_resumes_to_the_same_weights(ref, tmp_path, monkeypatch):
    """Phase 2 (4 steps, its final checkpoint at 4) killed after its model is written, before DONE: the rerun
    resumes from the final checkpoint, trains no step, and reports the whole run's loss (the Trainer's own
    training_loss would be 0.0 here)."""
    from cft_utils import train

    home = _copy(ref.home, tmp_path / "home", drop=(f"runs/{ref.p2.run_id}",))
    took = _kill(home, "train", "before-done", run=ref.p2.name)
    _use(monkeypatch, home)
    t0 = time.time()
    train.execute(ref.p2, ref.cfg, quiet=True)
    TIMINGS["phase2 before-done: killed run + rerun"] = took + time.time() - t0
    ref_dir = ref.home / "runs" / ref.p2.run_id
    _same_weights(ref.p2.model_dir, ref_dir / "model")
    s, r = (json.loads((d / "summary.json").read_text()) for d in (ref.p2.dir, ref_dir))
    assert s["resumed_from"] and s["resumed_from"].endswith("checkpoint-4")
    assert s["train_loss"] == pytest.approx(r["train_loss"], rel=1e-6)
    assert _train_log(ref.p2) == [json.loads(x) for x in (ref_dir / "train_log.jsonl").read_text().splitlines()]


def test_a_damaged_finished_run_is_rebuilt_to_the_same_weights(ref, tmp_path, monkeypatch):
    """A truncated model.safetensors in a finished run: reported, rebuilt from its checkpoint, not read."""
    from cft_utils import train
    from cft_utils.integrity import DamagedResultWarning

    home = _copy(ref.home, tmp_path / "home", drop=("runs/p2-*",))
    _use(monkeypatch, home)
    w = ref.p1.model_dir / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.warns(DamagedResultWarning, match=rf"run {ref.p1.run_id} .*model/model.safetensors"):
        train.execute(ref.p1, ref.cfg, quiet=True)
    _same_weights(ref.p1.model_dir, ref.home / "runs" / ref.p1.run_id / "model")
    assert ref.p1.done()


def test_two_processes_starting_the_same_run_train_it_once(ref, tmp_path, monkeypatch):
    home = _copy(ref.home, tmp_path / "home", drop=(f"runs/{ref.p1.run_id}*", "runs/p2-*"))
    code = ("import sys\nfrom cft_utils import config, plan, train\ncfg = config.load_config('smoke', "
            f"{OVERRIDES!r})\ntrain.execute(plan.plan_runs(cfg).get({ref.p1.name!r}), cfg)\n")
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=_env(home), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    TIMINGS["two concurrent processes"] = time.time() - t0
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    said = "".join(o[0] for o in outs)
    assert said.count("trained in") == 1 and said.count("reused (done)") == 1, said
    _use(monkeypatch, home)
    log = _train_log(ref.p1)
    assert [e["step"] for e in log] == sorted({e["step"] for e in log})  # every step once
    _same_weights(ref.p1.model_dir, ref.home / "runs" / ref.p1.run_id / "model")


# --------------------------------------------------------------------------------------------- other stages


def test_evaluation_killed_after_its_first_task_resumes_to_the_same_metrics(ref, tmp_path, monkeypatch):
    from cft_utils.evaluation import runner

    home = _copy(ref.home, tmp_path / "home", drop=(f"runs/{ref.p1.run_id}/eval",))
    took = _kill(home, "evaluate", "1", run=ref.p1.name, suites=["la"])
    _use(monkeypatch, home)
    assert len(list((ref.p1.dir / "eval").glob("*-*.json"))) == 1  # one task done before the kill
    t0 = time.time()
    tidy = runner.evaluate_runs(ref.cfg, [ref.p1], suites=("la",), progress=False, workers=1)
    TIMINGS["evaluation killed + rerun"] = took + time.time() - t0
    cols = ["benchmark", "language", "metric", "value", "stderr", "n"]
    a = tidy[cols].sort_values(cols[:3]).reset_index(drop=True)
    b = ref.tidy[cols].sort_values(cols[:3]).reset_index(drop=True)
    assert a.equals(b)


@pytest.mark.parametrize("point", ["generate", "save"])
def test_replay_generation_killed_rebuilds_the_same_set(ref, tmp_path, monkeypatch, point):
    from cft_utils.mitigation.replay import build_replay_set

    home = _copy(ref.home, tmp_path / "home", drop=("replay",))
    took = _kill(home, "replay", point, run=ref.gr.name, percent=5)
    _use(monkeypatch, home)
    t0 = time.time()
    records, _ = build_replay_set(ref.cfg, ref.gr, "GR", 5, progress=False)
    TIMINGS[f"replay {point}: killed + rerun"] = took + time.time() - t0
    assert records == ref.replay


def test_translation_killed_after_a_shard_resumes_to_the_same_records(ref, tmp_path, monkeypatch):
    from cft_utils.data.loaders import load_records

    home = _copy(ref.home, tmp_path / "home", drop=("sandbox/world-*/mopenorca",))
    took = _kill(home, "translate", "1")
    _use(monkeypatch, home)
    t0 = time.time()
    records = load_records(ref.cfg, "mopenorca")
    TIMINGS["translation killed + rerun"] = took + time.time() - t0
    assert records == ref.mopenorca
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids))


def test_encoder_training_killed_mid_way_gives_the_same_embeddings(ref, tmp_path, monkeypatch):
    import numpy as np

    from cft_utils.analysis.encoders import sandbox_encoder

    home = _copy(ref.home, tmp_path / "home", drop=("sandbox/world-*/encoder-*",))
    took = _kill(home, "encode", "2", encoder=ENCODER)
    _use(monkeypatch, home)
    t0 = time.time()
    emb = sandbox_encoder(ref.cfg, **ENCODER).encode(ref.texts, convert_to_numpy=True)
    TIMINGS["encoder killed + rerun"] = took + time.time() - t0
    assert np.array_equal(emb, ref.emb)


def test_geometry_capture_killed_after_a_batch_gives_the_same_profile(ref, tmp_path, monkeypatch):
    import numpy as np

    from cft_utils.analysis.geometry.profiles import layer_profile

    out = tmp_path / "profile"
    model = str(ref.home / "runs" / ref.p1.run_id / "model")
    took = _kill(ref.home, "capture", "1", model=model, prompts=ref.prompts, out=str(out))
    assert not (out / "meta.json").exists()  # an interrupted profile is not a profile
    t0 = time.time()
    prof = layer_profile(model, None, ref.prompts, out_dir=out, batch_size=2, progress=False)
    TIMINGS["capture killed + rerun"] = took + time.time() - t0
    assert np.array_equal(np.asarray(prof.activations), np.asarray(ref.profile.activations))
    for a, b in zip(prof.covariances, ref.profile.covariances, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


# --------------------------------------------------------------------------------------------- disk full, secrets


class _FullDisk:
    """A text file on a full disk: half of the first write lands, then ENOSPC."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()
        return False


def test_a_full_disk_while_writing_results_leaves_the_previous_results(tmp_path, monkeypatch):
    import builtins

    import pandas as pd

    from cft_utils import io
    from cft_utils.outputs import write_csv

    target = tmp_path / "results" / "evaluation.csv"
    write_csv(pd.DataFrame({"a": [1, 2]}), target)
    before = target.read_bytes()
    js = io.write_json(tmp_path / "summary.json", {"x": 1})
    js_before = js.read_bytes()
    real_open = builtins.open

    def to_csv(self, path, *a, **k):  # pandas' writer on a full disk
        Path(path).write_text("a\n3\n")
        raise OSError(errno.ENOSPC, "No space left on device")

    def write_text(self, data, *a, **k):
        with real_open(self, "w", encoding="utf-8") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def full_open(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        return _FullDisk(f) if "w" in mode and Path(str(file)).name.startswith(".") else f

    with monkeypatch.context() as mp:
        mp.setattr(pd.DataFrame, "to_csv", to_csv)
        mp.setattr(Path, "write_text", write_text)
        mp.setattr(builtins, "open", full_open)
        with pytest.raises(OSError) as e:
            write_csv(pd.DataFrame({"a": [3, 4, 5]}), target)
        assert e.value.errno == errno.ENOSPC
        with pytest.raises(OSError, match="No space left"):
            io.write_json(js, {"x": 2})
        with pytest.raises(OSError, match="No space left"):
            io.write_jsonl(tmp_path / "log.jsonl", [{"step": 1}])
    assert target.read_bytes() == before and js.read_bytes() == js_before
    assert not (tmp_path / "log.jsonl").exists()
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()], "temporary files left behind"


def test_planted_secrets_reach_no_output(ref, tmp_path_factory):
    """Every subprocess and the references ran with API keys and tokens in the environment; none of them may
    appear in a run folder, a log, a cache, provenance, results/ or reports/ (files written in this session)."""
    roots = [tmp_path_factory.getbasetemp()]
    start = min(p.stat().st_mtime for p in [ref.home]) - 3600
    roots += [d for d in (PROJECT_ROOT / "results", PROJECT_ROOT / "reports") if d.is_dir()]
    leaks, n = [], 0
    for root in roots:
        for f in root.rglob("*"):
            if not f.is_file() or f.is_symlink() or (root != roots[0] and f.stat().st_mtime < start):
                continue
            if f.stat().st_size > 50_000_000:
                continue
            n += 1
            data = f.read_bytes()
            leaks += [(str(f), k) for k, v in SECRETS.items() if v.encode() in data]
    assert n > 50 and not leaks, leaks
    if TIMINGS:
        print("\n[faults] " + "; ".join(f"{k}: {v:.1f} s" for k, v in TIMINGS.items()), flush=True)
