"""Reliability (issue 14), the fast part: run identity from data content, completion markers that are verified on
reuse, one writer per run, honest training summaries, model folders checked before anything is loaded, and
trust_remote_code kept off unless asked. The kill-and-rerun harness is tests/test_faults.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import yaml

from cft_utils import integrity, locks
from cft_utils.config import load_config
from cft_utils.models import (
    ModelSourceError,
    RemoteCodeWarning,
    check_model_source,
    load_model,
    load_tokenizer,
)
from cft_utils.paths import PROJECT_ROOT
from cft_utils.plan import data_identity, plan_runs
from cft_utils.runs import is_done, mark_done, run_lock
from cft_utils.train import whole_run_loss

FIXTURES = Path(__file__).parent / "fixtures"


def _cfg(tmp_path: Path, datasets: dict, **extra) -> object:
    first, second = list(datasets)[:2]
    raw = {"profile": "reltest", "seed": 0, "models": [{"name": "m", "base": "org/base"}], "datasets": datasets,
           "grid": {"models": ["m"], "phase1": [first], "phase2": [{"phase1": first, "data": second}]},
           "training": {"global_batch_size": 2, "per_device_batch_size": 2, "gradient_accumulation_steps": 1},
           **extra}
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(raw))
    return load_config(f)


# --------------------------------------------------------------------------------------------- 1. run identity


@pytest.mark.bad_input("dataset-edited-in-place")
def test_a_dataset_file_edited_in_place_gets_new_run_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("CFT_HOME", str(tmp_path / "home"))
    data = tmp_path / "p1.jsonl"
    data.write_text((FIXTURES / "common_sample.jsonl").read_text())
    folder = tmp_path / "ma"
    (folder).mkdir()
    (folder / "es.jsonl").write_text(json.dumps({"instruction": "Di hola.", "input": "", "output": "hola"}) + "\n")
    datasets = {"a": {"source": "jsonl", "path": str(data)},
                "b": {"source": "multialpaca", "path": str(folder), "languages": ["es"]}}
    first = {r.name: r.run_id for r in plan_runs(_cfg(tmp_path, datasets)).all()}
    assert {r.name: r.run_id for r in plan_runs(_cfg(tmp_path, datasets)).all()} == first  # same content, same ids
    # the Phase 1 file edited in place (same name, same spec): every run changes
    lines = data.read_text().splitlines()
    rec = json.loads(lines[0])
    rec["completion"][0]["content"] += " (edited)"
    data.write_text("\n".join([json.dumps(rec), *lines[1:]]) + "\n")
    second = {r.name: r.run_id for r in plan_runs(_cfg(tmp_path, datasets)).all()}
    assert all(second[n] != first[n] for n in first)
    # a file of the Phase 2 folder edited: only the Phase 2 run changes
    (folder / "es.jsonl").write_text(json.dumps({"instruction": "Di hola.", "input": "", "output": "¡hola!"}) + "\n")
    third = {r.name: r.run_id for r in plan_runs(_cfg(tmp_path, datasets)).all()}
    assert [n for n in first if third[n] != second[n]] == [n for n in first if n.startswith("phase2/")]
    # touched but unchanged: same ids (content, not mtime)
    os.utime(data, (time.time() + 5, time.time() + 5))
    assert {r.name: r.run_id for r in plan_runs(_cfg(tmp_path, datasets)).all()} == third


def test_planning_reads_no_records(tmp_path, monkeypatch):
    """Planning hashes files (once per size and mtime); it never loads a dataset: the paper profile plans fast."""
    import cft_utils.data.loaders as loaders

    monkeypatch.setenv("CFT_HOME", str(tmp_path))
    monkeypatch.setattr(loaders, "load_records", lambda *a, **k: pytest.fail("planning loaded records"))
    t0 = time.time()
    plan_runs(load_config("paper"))
    assert time.time() - t0 < 10
    ident = data_identity(load_config("smoke"), "alpaca")
    assert ident["world"] and "content" not in ident  # the sandbox's data is identified by its world


# --------------------------------------------------------------------------------------------- 1. completion markers


def _fake_run(root: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    (root / "model").mkdir(parents=True)
    save_file({"w": torch.arange(64, dtype=torch.float32)}, str(root / "model" / "model.safetensors"))
    (root / "model" / "config.json").write_text('{"model_type": "llama"}')
    (root / "summary.json").write_text(json.dumps({"train_loss": 1.0}))
    (root / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (root / "checkpoints" / "checkpoint-2" / "x.bin").write_bytes(b"resumption state")
    return root


@pytest.mark.bad_input("run-model-truncated")
def test_a_truncated_model_makes_a_finished_run_not_done(tmp_path):
    rdir = _fake_run(tmp_path / "runs" / "p1-abc")
    mark_done(rdir, "p1-abc")
    marker = json.loads((rdir / "DONE").read_text())
    assert set(marker["files"]) == {"model/model.safetensors", "model/config.json", "summary.json"}
    assert is_done(rdir)
    w = rdir / "model" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-16])
    with pytest.warns(integrity.DamagedResultWarning, match=r"run p1-abc .* model/model\.safetensors is \d+ bytes, "
                                                            r"expected \d+"):
        assert not is_done(rdir)


@pytest.mark.bad_input("run-summary-deleted")
def test_a_deleted_or_truncated_summary_makes_a_finished_run_not_done(tmp_path):
    rdir = _fake_run(tmp_path / "p1-abc")
    mark_done(rdir, "p1-abc")
    (rdir / "summary.json").unlink()
    with pytest.warns(integrity.DamagedResultWarning, match="summary.json is missing"):
        assert not is_done(rdir)
    (rdir / "summary.json").write_text(json.dumps({"train_loss": 1.0})[:-3])
    with pytest.warns(integrity.DamagedResultWarning, match="summary.json is .* bytes"):
        assert not is_done(rdir)


@pytest.mark.bad_input("run-file-changed-same-size")
def test_changed_content_of_the_same_size_is_found_and_a_touched_file_is_not(tmp_path):
    rdir = _fake_run(tmp_path / "p1-abc")
    mark_done(rdir, "p1-abc")
    s = rdir / "summary.json"
    os.utime(s, (time.time() + 10, time.time() + 10))  # touched, same bytes: still intact
    assert is_done(rdir)
    s.write_text(json.dumps({"train_loss": 2.0}))  # same size, other content
    with pytest.warns(integrity.DamagedResultWarning, match="summary.json changed"):
        assert not is_done(rdir)


@pytest.mark.bad_input("run-old-marker-truncated-model")
def test_markers_from_before_manifests_get_a_structural_check(tmp_path):
    rdir = _fake_run(tmp_path / "p1-old")
    (rdir / "DONE").write_text(json.dumps({"run_id": "p1-old"}))
    assert is_done(rdir)
    w = rdir / "model" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-8])
    with pytest.warns(integrity.DamagedResultWarning, match="model.safetensors is .* header describes"):
        assert not is_done(rdir)


# --------------------------------------------------------------------------------------------- 2. one writer


HOLD = textwrap.dedent("""
    import sys, time
    from cft_utils.locks import exclusive
    with exclusive(sys.argv[1], what="run test"):
        print("held", flush=True)
        time.sleep(60)
""")


@pytest.mark.bad_input("run-locked-by-another-process")
def test_a_second_writer_is_told_who_holds_the_run_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    rdir = tmp_path / "runs" / "p1-abc"
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(rdir)], stdout=subprocess.PIPE, text=True,
                         cwd=PROJECT_ROOT)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(locks.LockedError) as e:
            with run_lock(rdir, wait=0):
                pass
        msg = str(e.value)
        assert f"pid {p.pid} on host {socket.gethostname()}" in msg and "run p1-abc" in msg
        with pytest.raises(locks.LockedError, match=f"pid {p.pid}"):  # a bounded wait ends the same way
            with run_lock(rdir, wait=0.3):
                pass
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    t0 = time.time()
    with run_lock(rdir, wait=0):  # the kernel released the dead holder's lock: no stale lock, no waiting
        assert locks.holder(rdir)["pid"] == os.getpid()
        with run_lock(rdir, wait=0):  # re-entrant in one process
            pass
    assert time.time() - t0 < 1


def test_a_waiting_writer_goes_on_when_the_holder_finishes(tmp_path, capfd):
    rdir = tmp_path / "p1-abc"
    code = "import sys, time\nfrom cft_utils.locks import exclusive\nwith exclusive(sys.argv[1]):\n" \
           "    print('held', flush=True); time.sleep(1.5)\n"
    p = subprocess.Popen([sys.executable, "-c", code, str(rdir)], stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
    assert p.stdout.readline().strip() == "held"
    t0 = time.time()
    with run_lock(rdir, wait=30):
        waited = time.time() - t0
    p.wait()
    assert 0.2 < waited < 30
    assert f"held by pid {p.pid}" in capfd.readouterr().err


# --------------------------------------------------------------------------------------------- 3. honest summaries


def test_whole_run_loss_weights_each_logged_window_by_its_steps():
    # logging_first_step: step 1 alone, then windows of 2 steps, then a last window of 1 step
    log = [{"step": 1, "loss": 4.0}, {"step": 2, "loss": 2.0}, {"step": 4, "loss": 1.0}, {"step": 5, "loss": 0.5},
           {"step": 5, "train_loss": 0.0, "train_runtime": 1.0}]  # the session's summary entry is not a window
    assert whole_run_loss(log) == pytest.approx((4.0 + 2.0 * 1 + 1.0 * 2 + 0.5) / 5)
    assert whole_run_loss([]) is None


# --------------------------------------------------------------------------------------------- 4. model folders


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A tiny BERT encoder folder: config, safetensors weights and a WordPiece vocabulary."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    d = tmp_path_factory.mktemp("bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sees", "a", "dog"]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(d / "vocab.txt")).save_pretrained(d)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(d, safe_serialization=True)
    return d


@pytest.mark.bad_input("model-folder-is-an-encoder")
def test_a_bert_folder_is_refused_before_its_weights_load(bert_dir):
    with pytest.raises(ModelSourceError) as e:
        load_model(bert_dir, where="params/x.yaml: models.0.base")
    msg = str(e.value)
    assert str(bert_dir) in msg and "models.0.base" in msg and "an encoder" in msg and "BertModel" in msg


@pytest.mark.bad_input("model-folder-bert-config-only")
def test_a_folder_with_only_a_bert_config_is_diagnosed_as_an_encoder(tmp_path, bert_dir):
    (tmp_path / "config.json").write_text((bert_dir / "config.json").read_text())
    with pytest.raises(ModelSourceError, match=r"an encoder: config.json names architecture\(s\) \['BertModel'\]"):
        check_model_source(tmp_path)
    cfg = json.loads((bert_dir / "config.json").read_text())
    del cfg["architectures"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelSourceError, match="model_type 'bert' without is_decoder .* BertLMHeadModel"):
        check_model_source(tmp_path)


@pytest.mark.bad_input("model-folder-pickle-only")
def test_a_folder_with_only_pickle_weights_is_refused(tmp_path, tiny_model_dir):
    import shutil

    import torch
    from safetensors.torch import load_file

    src = tiny_model_dir()
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, tmp_path / f.name)
    torch.save(load_file(str(src / "model.safetensors")), tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelSourceError, match=r"only pickle weights \(pytorch_model.bin\); refused"):
        load_model(tmp_path)


@pytest.mark.bad_input("model-folder-truncated-weights")
def test_truncated_weights_are_named_before_loading(tmp_path, tiny_model_dir):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir(), d)
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(ModelSourceError, match=r"damaged weights: model.safetensors is \d+ bytes"):
        load_model(d)


@pytest.mark.bad_input("model-hub-id-offline")
def test_a_hub_id_offline_names_the_id_and_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    with pytest.raises(ModelSourceError) as e:
        check_model_source("org/not-cached", where="params/paper.yaml: models.0.base")
    msg = str(e.value)
    assert "params/paper.yaml: models.0.base" in msg and "'org/not-cached'" in msg and "hub" in msg
    with pytest.raises(ModelSourceError, match="'org/not-cached'"):
        load_tokenizer("org/not-cached")


@pytest.mark.bad_input("training-from-an-encoder")
def test_training_from_an_encoder_fails_before_anything_is_loaded(tmp_path, monkeypatch, bert_dir):
    import cft_utils.train as train

    monkeypatch.setenv("CFT_HOME", str(tmp_path / "home"))
    for name in ("load_model", "load_tokenizer"):
        monkeypatch.setattr(train, name, lambda *a, **k: pytest.fail("loaded a model before checking it"))
    cfg = _cfg(tmp_path, {"a": {"source": "jsonl", "path": str(FIXTURES / "common_sample.jsonl")},
                          "b": {"source": "jsonl", "path": str(FIXTURES / "common_sample.jsonl")}})
    cfg.models[0].base = str(bert_dir)
    run = plan_runs(cfg).get("phase1/m/a")
    with pytest.raises(ModelSourceError, match=r"models\.0\.base \(m\).*an encoder"):
        train.execute(run, cfg)


# --------------------------------------------------------------------------------------------- 7. security


def test_trust_remote_code_is_off_by_default_and_loud_when_on(tiny_model_dir, recwarn):
    import inspect

    from cft_utils.config import ModelSpec

    assert ModelSpec(name="m", base="x").trust_remote_code is False
    for fn in (load_model, load_tokenizer):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False
    d = tiny_model_dir()
    load_tokenizer(d)
    assert not [w for w in recwarn if issubclass(w.category, RemoteCodeWarning)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_tokenizer(d, trust_remote_code=True)
        load_model(d, trust_remote_code=True)
    msgs = [str(w.message) for w in caught if issubclass(w.category, RemoteCodeWarning)]
    assert len(msgs) == 2 and all("trust_remote_code is ON" in m and str(d) in m for m in msgs)


# --------------------------------------------------------------------------------------------- 4. metric names, languages


@pytest.mark.bad_input("benchmark-metric-typo")
def test_a_metric_the_task_does_not_produce_is_refused_before_evaluation(tmp_path, monkeypatch):
    from cft_utils.config import ConfigError
    from cft_utils.evaluation import runner

    monkeypatch.setenv("CFT_HOME", str(tmp_path))
    cfg = load_config("smoke", {"evaluation.benchmarks.HellaSwag.metric": "acc_nrom"})
    monkeypatch.setattr(runner, "evaluate_checkpoint", lambda *a, **k: pytest.fail("evaluated with a bad metric"))
    with pytest.raises(ConfigError) as e:
        runner.evaluate_runs(cfg, plan_runs(cfg).phase2[:1], progress=False)
    msg = str(e.value)
    assert "smoke.yaml: evaluation.benchmarks.HellaSwag.metric: 'acc_nrom' is not a metric of task 'sb_hellaswag'" \
        in msg and "'acc_norm'" in msg
    # every shipped profile's headline metrics are ones their tasks produce
    for profile in ("smoke", "sandbox"):
        c = load_config(profile)
        jobs = runner.jobs_for(c)
        runner.check_metrics(c, jobs, runner.make_task_manager(c, [j.task for j in jobs]))


@pytest.mark.bad_input()
@pytest.mark.parametrize("key,value,needle", [
    pytest.param("datasets.alpaca.languages", ["en", "xx"], "datasets.alpaca.languages", id="dataset-language-unknown"),
    pytest.param("datasets.alpaca.languages", ["EN"], "datasets.alpaca.languages", id="dataset-language-upper-case"),
    pytest.param("evaluation.benchmarks.MLQA.tasks", {"klingon": "sb_mlqa_qaa"}, "evaluation.benchmarks.MLQA",
                 id="benchmark-language-unknown"),
    pytest.param("evaluation.benchmarks.MLQA.tasks", {"qab": "sb_mlqa_qaa"}, "'qab' is a sandbox language",
                 id="benchmark-language-not-in-sandbox"),
])
def test_unknown_language_codes_are_refused_with_the_key(key, value, needle):
    from cft_utils.config import ConfigError

    with pytest.raises(ConfigError) as e:
        load_config("smoke", {key: value})
    assert "smoke.yaml" in str(e.value) and needle in str(e.value)
    assert "unknown language code" in str(e.value) or "sandbox language" in str(e.value)


def test_xlsum_language_names_stay_accepted_as_benchmark_keys():
    assert load_config("paper").evaluation.benchmarks["XLSum"].tasks["chinese_simplified"]


# --------------------------------------------------------------------------------------------- 1. evaluation caches


@pytest.mark.bad_input("evaluation-cache-damaged")
def test_an_evaluation_cache_whose_samples_were_truncated_is_recomputed(tmp_path):
    from cft_utils.evaluation import runner

    samples = tmp_path / "t-3.samples.jsonl"
    samples.write_text('{"doc": 1}\n{"doc": 2}\n')
    settings = {"task": "t", "limit": 3}
    cache = tmp_path / "t-3.json"
    cache.write_text(json.dumps({"settings_key": runner._settings_key(settings), "metrics": {},
                                 "files": {samples.name: runner._file_record(samples)}}))
    assert runner._valid_cache(cache, settings) is not None
    samples.write_text('{"doc": 1}\n')
    with pytest.warns(integrity.DamagedResultWarning, match=r"t-3.json: t-3.samples.jsonl is missing or changed"):
        assert runner._valid_cache(cache, settings) is None
    cache.write_text('{"settings_key": "ab')
    with pytest.warns(integrity.DamagedResultWarning, match="unreadable"):
        assert runner._valid_cache(cache, settings) is None


# --------------------------------------------------------------------------------------------- 3. records per language


@pytest.mark.bad_input("record-prompt-over-max-length")
def test_records_over_max_length_are_counted_per_language_and_not_as_trained(tmp_path, tiny_tokenizer):
    from cft_utils.config import TrainingSpec
    from cft_utils.tokenized import prepare
    from cft_utils.train import sft_config

    def rec(i, lang, prompt_words=3, answer="plum, pear"):
        return {"id": f"r{i}", "language": lang, "completion": [{"role": "assistant", "content": answer}],
                "prompt": [{"role": "user", "content": " ".join(["apple"] * prompt_words)}]}

    # a prompt alone longer than max_length (TRL would drop it silently), an over-long answer, and fine records
    records = [rec(0, "en"), rec(1, "qaa", prompt_words=200), rec(2, "qaa"), rec(3, "qac", answer="pear " * 200),
               rec(4, "qac"), rec(5, "qac")]
    h = TrainingSpec(global_batch_size=2, per_device_batch_size=2, gradient_accumulation_steps=1, max_length=64)
    args = sft_config(h, tmp_path / "c", seed=0, prepared=True)
    for cache in (False, True, True):  # in memory, written to the cache, read back from it
        data = prepare(records, tiny_tokenizer, args, h.max_length, cache=cache, root=tmp_path / "cache")
        assert data.n_kept == len(data.dataset) == 4
        assert data.summary()["records_by_language"] == {
            "en": {"given": 1, "trained": 1, "dropped_over_length": 0, "dropped_no_loss": 0},
            "qaa": {"given": 2, "trained": 1, "dropped_over_length": 1, "dropped_no_loss": 0},
            "qac": {"given": 3, "trained": 2, "dropped_over_length": 1, "dropped_no_loss": 0}}
    assert data.cache_hit


# --------------------------------------------------------------------------------------------- 2. executor


def test_the_executor_never_gives_one_run_id_to_two_workers(tmp_path, monkeypatch):
    import dataclasses

    from cft_utils.executor import graph

    monkeypatch.setenv("CFT_HOME", str(tmp_path))
    plan = plan_runs(load_config("smoke"))
    p1 = plan.phase1[0]
    alias = dataclasses.replace(p1, name=p1.name + "-again")  # the same content under another name
    child = next(r for r in plan.phase2 if r.parent is p1)
    child2 = dataclasses.replace(child, parent=alias)
    tasks = graph([p1, alias, child, child2])
    assert [t.run_id for t in tasks].count(p1.run_id) == 1
    assert [t.run_id for t in tasks].count(child.run_id) == 1
    assert next(t for t in tasks if t.run_id == child.run_id).deps == (p1.name,)


# --------------------------------------------------------------------------------------------- 4. --set, hub ids offline


@pytest.mark.bad_input()
@pytest.mark.parametrize("override,needle", [
    pytest.param({"grid.phase1.5": "x"}, "override 'grid.phase1.5': grid.phase1 is a list of 2 item(s); '5' is not "
                 "an index into it", id="set-list-index-out-of-range"),
    pytest.param({"grid.models.a": 1}, "grid.models is a list of 1 item(s); 'a' is not an index into it",
                 id="set-list-index-by-name"),
    pytest.param({"training.epochs.x": 1}, "override 'training.epochs.x': training.epochs is a value (1), not a "
                 "section, so it has no key 'x'", id="set-into-a-scalar"),
])
def test_set_into_a_list_or_a_scalar_names_the_key(override, needle):
    from cft_utils.config import ConfigError

    with pytest.raises(ConfigError) as e:
        load_config("smoke", override)
    assert "smoke.yaml" in str(e.value) and needle in str(e.value)


@pytest.mark.bad_input("set-without-equals")
def test_set_without_a_value_is_a_usage_error(capsys):
    from cft_utils.train import main

    with pytest.raises(SystemExit) as e:
        main(["--params", "smoke", "--set", "training.epochs", "--list"])
    assert e.value.code == 2 and "--set expects KEY=VALUE, got 'training.epochs'" in capsys.readouterr().err


@pytest.mark.bad_input("dataset-hub-id-offline")
def test_a_hub_dataset_offline_names_the_file_the_key_and_the_id(tmp_path, monkeypatch):
    from cft_utils.data.loaders import load_records
    from cft_utils.data.schema import DataError

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", lambda *a: (_ for _ in ()).throw(OSError("network in a test")))
    cfg = _cfg(tmp_path, {"a": {"source": "alpaca", "path": "org/not-cached"},
                          "b": {"source": "jsonl", "path": str(FIXTURES / "common_sample.jsonl")}})
    with pytest.raises(DataError) as e:
        load_records(cfg, "a")
    msg = str(e.value)
    assert str(tmp_path / "p.yaml") in msg and "datasets.a.path" in msg and "'org/not-cached'" in msg
    assert "not available from the hub" in msg


# --------------------------------------------------------------------------------------------- 7. pickle checkpoints


@pytest.fixture
def pickle_only_dir(tmp_path, tiny_model_dir):
    """A causal-LM folder whose weights are only a pickle (pytorch_model.bin)."""
    import shutil

    import torch
    from safetensors.torch import load_file

    src, d = tiny_model_dir(), tmp_path / "pickled"
    d.mkdir()
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, d / f.name)
    torch.save(load_file(str(src / "model.safetensors")), d / "pytorch_model.bin")
    return d


def test_every_loader_refuses_pickle_checkpoints(pickle_only_dir):
    """The translator, the sentence encoder (and the encoder's base model), and everything that loads through
    models.load_model (training, replay, evaluation, the judge, the sandbox probe, geometry capture)."""
    import inspect

    from cft_utils.analysis import encoders
    from cft_utils.analysis.geometry import capture
    from cft_utils.data.translation.translators import TransformersTranslator
    from cft_utils.evaluation import judge
    from cft_utils.integrity import PickleCheckpointError
    from cft_utils.models import ModelSourceError
    from cft_utils.sandbox import probe

    with pytest.raises(PickleCheckpointError, match=r"translation model .*pytorch_model.bin.*refused"):
        TransformersTranslator(pickle_only_dir)
    with pytest.raises(PickleCheckpointError, match="sentence encoder"):
        encoders.load_encoder(pickle_only_dir)
    with pytest.raises(PickleCheckpointError, match="encoder base model"):
        encoders.text_only_transformer(pickle_only_dir, 32)
    with pytest.raises(ModelSourceError, match="only pickle weights"):
        load_model(pickle_only_dir)
    for module in (judge, probe, capture):  # these load causal LMs only through models.load_model
        src = inspect.getsource(module)
        assert "load_model(" in src and "from_pretrained(" not in src, module.__name__
