"""Mitigation runs on the smoke profile: the plan, every strategy end to end, the replay mix's exact make-up, frozen
weights bit-identical with no optimizer state, LoRA merged, interpolation and reversion exact, the 2-process DDP
launch with freezing, the DeepSpeed refusal, the tables and the Pareto front, and notebooks 07-08 under papermill.

The smoke runs (notebooks 01-02) and the mitigation runs are built once per session in the CFT_HOME that
test_train.py and test_notebooks.py share (``<pytest basetemp>/cft-home-smoke``).
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from cft_utils.checkpoints import write_streamed
from cft_utils.config import ConfigError, load_config
from cft_utils.evaluation.mitigation_tables import (
    ability_scores,
    mitigation_paper_table,
    mitigation_results,
    pareto_front,
    strategy_effects,
)
from cft_utils.mitigation.execute import execute_mitigation
from cft_utils.mitigation.plan import plan_mitigations
from cft_utils.mitigation.posthoc import interpolate_checkpoints, revert_checkpoint
from cft_utils.paths import PROJECT_ROOT
from cft_utils.plan import plan_runs
from cft_utils.train import execute

SHARED_HOME = "cft-home-smoke"  # the same folder as test_train.shared_smoke_home


def _weights(d: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _env(home: Path) -> dict:
    return {**os.environ, "CFT_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


# --------------------------------------------------------------------------------------------- fast


def test_plan_names_ids_and_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("CFT_HOME", str(tmp_path))
    cfg = load_config("smoke")
    runs = plan_mitigations(cfg)
    labels = ["GR_5", "GR_10", "ER_10", "LF_H1", "LF_H2", "LoRA", "Interp_0.5", "Revert_0.25"]
    assert [r.strategy for r in runs] == labels * 2
    assert {r.variant.table for r in runs} == {"3", "C6"}
    assert len({r.run_id for r in runs}) == 16 and all(r.run_id.startswith("mt-") for r in runs)
    for r in runs:
        assert r.parent.name == "phase1/tiny-llama/Instruct"
        assert r.baseline.cell == f"phase2/tiny-llama/Instruct->{r.phase2_data}" and r.seed == r.baseline.seed
        assert r.cell == f"mitigation/tiny-llama/Instruct->{r.phase2_data}/{r.strategy}"
    lora = next(r for r in runs if r.strategy == "LoRA")
    assert lora.hparams.learning_rate == cfg.mitigation.strategies["LoRA"]["learning_rate"] != cfg.training.learning_rate
    # the frozen budget is resolved once, when planning, and travels in the runs' parameters (and ids)
    lf = [r for r in runs if r.strategy in ("LF_H1", "LF_H2")]
    assert lf and all(r.variant.params["n_frozen_layers"] == 1 for r in lf)  # 0.3125 of 2 layers, rounded half up
    # the ids carry the strategy's parameters (a sweep is a parameter change) and nothing else
    other = plan_mitigations(load_config("smoke", {"mitigation.strategies.GR.percents": [5, 20],
                                                   "mitigation.freezing": {"n_layers": 2}}))
    ids = {r.strategy: r.run_id for r in runs[:8]}
    ids2 = {r.strategy: r.run_id for r in other[:8]}
    assert ids2["GR_5"] == ids["GR_5"] and "GR_20" in ids2 and ids2["LF_H1"] != ids["LF_H1"]
    assert ids2["LF_H2"] != ids["LF_H2"] and ids2["LoRA"] == ids["LoRA"]
    # the unmitigated plan is untouched by the mitigation section
    no_mit = load_config("smoke")
    no_mit.mitigation = None
    assert [r.run_id for r in plan_runs(no_mit).all()] == [r.run_id for r in plan_runs(cfg).all()]
    assert plan_mitigations(no_mit) == []


def test_every_profile_parses_its_mitigation_section_and_bad_values_fail():
    # Table 3's and Table C6's cells in every profile (the sandbox's C6 cell takes the paper's C6 rows)
    expected = {"smoke": {"multialpaca", "mopenorca"}, "sandbox": {"multialpaca", "mopenorca"},
                "paper": {"multialpaca", "mopenorca"}}
    for p, cells in expected.items():
        m = load_config(p).mitigation
        assert m is not None and {c.data for c in m.cells} == cells
    paper = load_config("paper").mitigation
    assert paper.freezing.n_layers == 10 and paper.replay.counterparts["multialpaca"].link == "sample"
    assert paper.cells[1].models == ["Mistral-7B"] and paper.cells[1].table == "C6"
    bad = [({"mitigation.cells": [{"phase1": "alpaca", "data": "mopenorca"}]}, "not a Phase 2 cell"),
           ({"mitigation.freezing": {"n_layers": 2, "fraction": 0.5}}, "exactly one of n_layers and fraction"),
           ({"mitigation.freezing": {"n_layers": 3}}, "exceeds the sandbox model's 2 layers"),
           ({"mitigation.replay.generation.backend": "tgi"}, "backend")]
    for override, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            load_config("smoke", override)
    # the strategies' own parameters are checked against the registry when runs are planned (before any compute),
    # naming the parameter file and the key
    planned_bad = [({"mitigation.strategies.LoRA.target_modules": ["q_proj", "lm_head"]},
                    r"smoke.yaml: mitigation.strategies.LoRA.target_modules: .*lm_head"),
                   ({"mitigation.replay.counterparts": {}}, "no counterpart source"),
                   ({"mitigation.strategies.GR.percents": [5, 5]}, "duplicate"),
                   ({"mitigation.strategies.GR.percent": [5]}, r"mitigation.strategies.GR.percent: Extra inputs"),
                   ({"mitigation.strategies.XY": {}}, r"mitigation.strategies.XY: unknown strategy"),
                   ({"mitigation.strategies": ["GR", "ER"]}, "mitigation.strategies: Input should be a valid dict")]
    for override, msg in planned_bad:
        with pytest.raises(ConfigError, match=msg):
            plan_mitigations(load_config("smoke", override))


def _ckpt(d: Path, tensors: dict, shards: int = 1):
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, str(d / "model.safetensors"))
        return d
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in part}, str(d / fname))
        weight_map |= {n: fname for n in part}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return d


@pytest.mark.parametrize("shards", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_interpolation_is_exact_at_the_ends_and_the_mean_in_the_middle(tmp_path, shards, dtype):
    g = torch.Generator().manual_seed(0)
    names = [f"model.layers.{i}.self_attn.{m}.weight" for i in range(3) for m in ("q_proj", "v_proj")]
    a = {n: torch.randn(33, 7, generator=g).to(dtype) for n in names} | {"model.norm.weight": torch.randn(7).to(dtype)}
    b = {n: (v.float() + torch.randn(v.shape, generator=g)).to(dtype) for n, v in a.items()}
    p1, p2 = _ckpt(tmp_path / "p1", a, shards), _ckpt(tmp_path / "p2", b, shards)
    for alpha, want in ((0.0, a), (1.0, b)):
        out = interpolate_checkpoints(p1, p2, alpha, tmp_path / f"a{alpha}", chunk_elems=50)
        w = _weights(out)
        assert w.keys() == a.keys() and all(torch.equal(w[n], want[n]) and w[n].dtype == dtype for n in a)
    mid = _weights(interpolate_checkpoints(p1, p2, 0.5, tmp_path / "mid", chunk_elems=50))
    for n in a:
        assert torch.equal(mid[n], ((a[n].double() + b[n].double()) / 2).to(dtype)), n
    if shards == 2:
        assert (tmp_path / "mid" / "model.safetensors.index.json").exists()
        assert len(list((tmp_path / "mid").glob("*.safetensors"))) == 2
    with pytest.raises(ValueError, match="alpha"):
        interpolate_checkpoints(p1, p2, 1.5, tmp_path / "bad")


def test_reversion_resets_exactly_the_most_moved_modules(tmp_path):
    g = torch.Generator().manual_seed(1)
    mods = ("q_proj", "k_proj", "v_proj", "o_proj")
    a = {f"model.layers.{i}.self_attn.{m}.weight": torch.randn(8, 8, generator=g) for i in range(2) for m in mods}
    a["model.embed_tokens.weight"] = torch.randn(20, 8, generator=g)
    move = {"model.layers.1.self_attn.v_proj.weight": 3.0, "model.layers.0.self_attn.q_proj.weight": 2.0}
    b = {n: v + move.get(n, 0.1 if "layers" in n else 9.0) * torch.ones_like(v) for n, v in a.items()}
    p1, p2 = _ckpt(tmp_path / "p1", a), _ckpt(tmp_path / "p2", b)
    res = revert_checkpoint(p1, p2, tmp_path / "rev", amount=0.25)  # 2 of 8 units
    assert res["reverted_units"] == ["layers.1.v_proj", "layers.0.q_proj"]
    w = _weights(tmp_path / "rev")
    for n in a:
        assert torch.equal(w[n], a[n] if n in move else b[n]), n  # embeddings are never reset
    res = revert_checkpoint(p1, p2, tmp_path / "rev2", amount=1.0, tensors=["model.layers.0.self_attn.k_proj.weight"])
    w = _weights(tmp_path / "rev2")
    assert [n for n in a if torch.equal(w[n], a[n])] == ["model.layers.0.self_attn.k_proj.weight"]
    layer = revert_checkpoint(p1, p2, tmp_path / "rev3", amount=0.5, granularity="layer")
    assert len(layer["reverted_units"]) == 1 and len(layer["reverted_tensors"]) == 4


def test_streamed_writer_checks_byte_counts(tmp_path):
    with pytest.raises(RuntimeError, match="wrote 8 bytes, expected 16"):
        write_streamed(tmp_path / "x.safetensors", [("t", "F32", (2, 2))], lambda n: iter([torch.zeros(2)]))
    assert not (tmp_path / "x.safetensors").exists()


def _tidy(rows):
    out = []
    for strategy, ckpt, vals in rows:
        for bench, v in vals.items():
            for lang in (["en"] if bench in ("IFEval", "AlpacaEval", "MMLU", "HellaSwag") else ["fr", "de"]):
                out.append({"model": "M", "phase1_data": "Instruct", "phase2_data": "multialpaca", "strategy": strategy,
                            "checkpoint": ckpt, "benchmark": bench, "language": lang, "metric": "m", "value": v,
                            "stderr": math.nan, "n": 10, "run_id": f"{strategy}-{ckpt}"})
    return pd.DataFrame(out)


def test_tables_and_pareto_on_a_hand_made_tidy_frame():
    def vals(ta, la):
        return {"IFEval": ta, "AlpacaEval": ta, "MMLU": ta, "HellaSwag": ta, "MLQA": la, "XLSum": la, "XQuAD": la}

    tidy = _tidy([("GR_5", "P1", vals(0.6, 0.2)), ("none", "P2", vals(0.3, 0.5)), ("GR_5", "P2", vals(0.5, 0.45)),
                  ("LF_H1", "P2", vals(0.25, 0.4)), ("LoRA", "P2", vals(0.5, 0.5))])
    tidy.loc[(tidy.strategy == "LF_H1") & (tidy.benchmark == "XLSum") & (tidy.language == "de"), "value"] = math.nan
    runs = [SimpleNamespace(model="M", phase1_data="Instruct", phase2_data="multialpaca", strategy=s)
            for s in ("GR_5", "LF_H1", "LoRA")]
    res = mitigation_results(tidy, runs)
    assert list(res.strategy) == ["P1", "none", "LF_H1", "GR_5", "LoRA"]
    row = res.set_index("strategy")
    assert row.loc["GR_5", "TA_avg"] == pytest.approx(0.5) and row.loc["GR_5", "LA_avg"] == pytest.approx(0.45)
    assert math.isnan(row.loc["LF_H1", "XLSum"]) and math.isnan(row.loc["LF_H1", "LA_avg"])  # missing, never 0
    assert row.loc["LF_H1", "TA_avg"] == pytest.approx(0.25)
    assert dict(zip(res.strategy, pareto_front(res), strict=True)) == {
        "P1": True, "none": False, "LF_H1": False, "GR_5": False, "LoRA": True}
    eff = strategy_effects(res).set_index("strategy")
    assert eff.loc["GR_5", "TA_loss_recovered"] == pytest.approx(2 / 3)
    assert eff.loc["LoRA", "delta_LA"] == pytest.approx(0.0)
    t3 = mitigation_paper_table(res, "3", "multialpaca", with_paper=True)
    assert list(t3.columns[:4]) == ["model", "strategy", "IFEval", "IFEval (paper)"]
    assert t3["IFEval (paper)"].isna().all()  # model "M" is not in the paper
    with pytest.raises(ValueError, match="several metrics"):
        ability_scores(pd.concat([tidy, tidy.assign(metric="other")]))


def test_paper_values_sit_beside_ours_in_the_paper_profile():
    tidy = _tidy([("GR_5", "P1", {"IFEval": 0.5})]).assign(model="Mistral-7B")
    runs = [SimpleNamespace(model="Mistral-7B", phase1_data="Instruct", phase2_data="multialpaca", strategy="GR_5")]
    t = mitigation_paper_table(mitigation_results(tidy, runs), "3", "multialpaca", with_paper=True)
    p1 = t[t.strategy == "P1"].iloc[0]
    assert p1["IFEval"] == 0.5 and p1["IFEval (paper)"] == pytest.approx(0.55) and p1["TA_avg (paper)"] == 0.529
    assert math.isnan(p1["MMLU"]) and p1["MMLU (paper)"] == pytest.approx(0.575)


# --------------------------------------------------------------------------------------------- slow


@pytest.fixture(scope="session")
def _mitigated_session(tmp_path_factory):
    """The smoke plan (notebooks 01-02) and every mitigation run, trained once in the shared CFT_HOME."""
    home = tmp_path_factory.getbasetemp() / SHARED_HOME
    home.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CFT_HOME", str(home))
        cfg = load_config("smoke")
        plan = plan_runs(cfg)
        t0 = time.time()
        for r in plan.all():
            execute(r, cfg)
        t1 = time.time()
        runs = plan_mitigations(cfg, plan)
        for r in runs:
            execute_mitigation(r, cfg, progress=False)
        return SimpleNamespace(home=home, cfg=cfg, plan=plan, runs={r.cell: r for r in runs},
                               seconds={"smoke_plan": t1 - t0, "mitigations": time.time() - t1})


@pytest.fixture
def mitigated(_mitigated_session, monkeypatch):
    """The session's mitigation runs, with CFT_HOME pointing at them for the test."""
    monkeypatch.setenv("CFT_HOME", str(_mitigated_session.home))
    return _mitigated_session


def _run(m, cell, label):
    return m.runs[f"mitigation/tiny-llama/Instruct->{cell}/{label}"]


def _mjson(run):
    return json.loads((run.dir / "mitigation.json").read_text())


@pytest.mark.slow
def test_replay_mix_has_the_promised_size_and_language_make_up(mitigated, monkeypatch):
    from cft_utils.data.loaders import load_records
    from cft_utils.mitigation.replay import build_replay_set, replay_size

    monkeypatch.setenv("CFT_HOME", str(mitigated.home))
    cfg = mitigated.cfg
    for cell in ("multialpaca", "mopenorca"):
        phase2 = load_records(cfg, cell)
        langs = pd.Series([r["language"] for r in phase2]).value_counts().to_dict()
        for label, pct in (("GR_5", 5), ("GR_10", 10), ("ER_10", 10)):
            run = _run(mitigated, cell, label)
            info = _mjson(run)["replay"]
            n = replay_size(len(phase2), pct)
            assert info["n_replay"] == n > 0 and info["n_phase2"] == len(phase2) == 32
            assert info["languages_replay"] == {"en": n} and info["languages_phase2"] == langs
            assert info["languages_mix"] == {**langs, "en": n} and "en" not in langs
            s = json.loads((run.dir / "summary.json").read_text())
            assert s["n_records"] == len(phase2) + n and s["n_extra_records"] == n
            assert s["mitigation"]["replay"]["replay_set"] == info["replay_set"]
            prov = json.loads((Path(info["replay_path"]) / "provenance.json").read_text())
            assert prov["n_replay"] == n and prov["seed"] == cfg.mitigation.seed
            if label.startswith("GR"):
                c = prov["counts"]
                assert prov["model_run"] == run.parent.run_id
                assert c["generated"] == c["ok"] + c["empty"] + c["truncated"] + c["degenerate"] >= n
                assert c["ok"] + c["kept_truncated"] + c["kept_degenerate"] == n  # the smoke model never stops
    # reused from disk: a second build generates nothing
    import cft_utils.models as models

    monkeypatch.setattr(models, "generate", lambda *a, **k: pytest.fail("regenerated a cached replay set"))
    recs, prov = build_replay_set(cfg, _run(mitigated, "multialpaca", "GR_10"), "GR", 10)
    assert len(recs) == 3 and prov["content_id"] == _mjson(_run(mitigated, "multialpaca", "GR_10"))["replay"]["replay_set"]


@pytest.mark.slow
def test_er_uses_the_original_english_answers_of_the_counterparts(mitigated, monkeypatch):
    from cft_utils.mitigation.replay import build_replay_set
    from cft_utils.sandbox.world import World

    monkeypatch.setenv("CFT_HOME", str(mitigated.home))
    recs, _ = build_replay_set(mitigated.cfg, _run(mitigated, "mopenorca", "ER_10"), "ER", 10)
    originals = {r["id"]: r for r in World(mitigated.cfg.sandbox.world_spec()).dataset("mopenorca_en")}
    for r in recs:
        o = originals[r["replay_of"]]
        assert r["prompt"] == o["prompt"] and r["completion"] == o["completion"]


@pytest.mark.slow
@pytest.mark.parametrize("label", ["LF_H1", "LF_H2"])
def test_frozen_weights_are_bit_identical_and_never_in_the_optimizer(mitigated, label):
    for cell in ("multialpaca", "mopenorca"):
        run = _run(mitigated, cell, label)
        m = _mjson(run)
        assert m["verification"]["bit_identical"] and m["verification"]["frozen_tensors_checked"] == len(m["frozen_tensors"])
        w1, w2 = _weights(run.parent.model_dir), _weights(run.model_dir)
        frozen = set(m["frozen_tensors"])
        assert frozen and all(torch.equal(w1[n], w2[n]) for n in frozen)
        assert all(not torch.equal(w1[n], w2[n]) for n in w1 if n not in frozen)  # everything else trained
        n_tensors = len(w1)
        for when in ("begin", "end"):
            assert m["optimizer"][when]["optimizer_tensors"] == n_tensors - len(frozen)
        assert m["optimizer"]["end"]["optimizer_tensors_with_state"] == n_tensors - len(frozen)
        s = json.loads((run.dir / "summary.json").read_text())
        assert s["trainable_parameters"] == m["freeze"]["n_params"] - m["freeze"]["n_frozen_params"]
        if label == "LF_H2":  # 1 of 2 layers, chosen per projection from the base -> Instruct change
            ranking = pd.DataFrame(m["plan"]["ranking"])
            for mod in ("q_proj", "k_proj", "v_proj"):
                top = ranking[(ranking.module == mod) & (ranking["rank"] == 1)].layer.item()
                assert m["plan"]["modules"][mod] == [top]
                assert f"model.layers.{top}.self_attn.{mod}.weight" in frozen
        else:
            assert m["plan"]["blocks"] and all(f".layers.{m['plan']['blocks'][0]}." in n for n in frozen)


@pytest.mark.slow
def test_per_head_freezing_with_weight_decay_in_a_real_run(mitigated, monkeypatch):
    monkeypatch.setenv("CFT_HOME", str(mitigated.home))
    cfg = load_config("smoke", {"mitigation.strategies": {"LF_H2": {"granularity": "head"}},
                                "mitigation.cells": [{"phase1": "Instruct", "data": "multialpaca"}],
                                "phase2_training": {**mitigated.cfg.training.model_dump(), "weight_decay": 0.5}})
    (run,) = plan_mitigations(cfg)
    assert run.strategy == "LF_H2-head"
    execute_mitigation(run, cfg, progress=False)
    m = _mjson(run)
    assert m["verification"]["bit_identical"] and not m["frozen_tensors"]
    masked = m["masked_rows"]
    assert sum(e - s for v in masked.values() for s, e in v) == m["verification"]["masked_rows_checked"] == 3 * 2 * 16  # 2 heads of 16 rows each
    w1, w2 = _weights(run.parent.model_dir), _weights(run.model_dir)
    for name, spans in masked.items():
        keep = torch.zeros(w1[name].shape[0], dtype=torch.bool)
        for s, e in spans:
            keep[s:e] = True
        assert torch.equal(w1[name][keep], w2[name][keep]), name
        if (~keep).any():  # the tensor's other heads trained
            assert not torch.equal(w1[name][~keep], w2[name][~keep]), name
    # weight decay 0.5 moved every other tensor (it alone would have moved the masked rows too)
    assert all(not torch.equal(w1[n], w2[n]) for n in w1 if n not in masked and "norm" not in n)


@pytest.mark.slow
def test_lora_is_merged_into_a_plain_checkpoint(mitigated):
    run = _run(mitigated, "multialpaca", "LoRA")
    w1, w2 = _weights(run.parent.model_dir), _weights(run.model_dir)
    assert w2.keys() == w1.keys() and not any("lora" in k for k in w2)
    changed = {k for k in w1 if not torch.equal(w1[k], w2[k])}
    assert changed and all(k.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "o_proj") for k in changed)
    s = json.loads((run.dir / "summary.json").read_text())
    lo = SimpleNamespace(**run.variant.params)  # the LoRA parameters the run was planned with
    hidden, layers = 32, 2
    assert s["trainable_parameters"] == layers * 4 * lo.r * (hidden + hidden)  # A and B of q, k, v, o


@pytest.mark.slow
def test_posthoc_runs_are_exact(mitigated):
    interp = _run(mitigated, "mopenorca", "Interp_0.5")
    w1, w2 = _weights(interp.parent.model_dir), _weights(interp.baseline.model_dir)
    wi = _weights(interp.model_dir)
    assert all(torch.equal(wi[n], ((w1[n].double() + w2[n].double()) / 2).to(w1[n].dtype)) for n in w1)
    rev = _run(mitigated, "mopenorca", "Revert_0.25")
    m = _mjson(rev)
    wr = _weights(rev.model_dir)
    reset = set(m["reverted_tensors"])
    assert len(m["reverted_units"]) == 4 == len(reset)  # 25 % of 2 layers x 7 projections, rounded half up
    assert [u["unit"] for u in m["ranking"][:4]] == m["reverted_units"]
    assert all(torch.equal(wr[n], w1[n] if n in reset else w2[n]) for n in w1)


@pytest.mark.slow
def test_deepspeed_launch_is_refused_before_training(mitigated, monkeypatch):
    import cft_utils.train as train

    monkeypatch.setenv("CFT_HOME", str(mitigated.home))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setattr(train, "execute", lambda *a, **k: pytest.fail("trained under DeepSpeed"))
    run = _run(mitigated, "multialpaca", "LF_H1")
    from cft_utils.mitigation.freeze import FreezingUnsupported

    with pytest.raises(FreezingUnsupported, match="DeepSpeed ZeRO is not supported"):
        execute_mitigation(run, mitigated.cfg, force=True)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() == 1, reason="2 processes would share one GPU")
def test_two_process_ddp_launch_with_freezing(mitigated, monkeypatch):
    h = {**mitigated.cfg.training.model_dump(), "num_processes": 2, "global_batch_size": 16}
    sets = ["phase2_training=" + json.dumps(h)]
    name = "mitigation/tiny-llama/Instruct->multialpaca/LF_H2"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/cpu_ddp.yaml",
           "-m", "cft_utils.mitigation", "--params", "smoke", "--run", name, "--set", sets[0]]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=_env(mitigated.home), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    assert proc.stdout.count(f"done: {name}") == 1
    monkeypatch.setenv("CFT_HOME", str(mitigated.home))
    cfg = load_config("smoke", {"phase2_training": h})
    run = next(r for r in plan_mitigations(cfg) if r.cell == name)
    assert run.run_id != _run(mitigated, "multialpaca", "LF_H2").run_id and run.done()
    s = json.loads((run.dir / "summary.json").read_text())
    assert s["num_processes"] == 2 and s["global_steps"] == math.ceil(32 / 16)
    m = _mjson(run)
    assert m["verification"]["bit_identical"] and len(m["frozen_tensors"]) == 3
    assert m["optimizer"]["end"]["optimizer_tensors"] == 20 - 3
    w1, w2 = _weights(run.parent.model_dir), _weights(run.model_dir)
    assert all(torch.equal(w1[n], w2[n]) for n in m["frozen_tensors"])


@pytest.mark.slow
def test_notebooks_07_and_08_execute_in_the_smoke_profile(mitigated, tmp_path_factory, monkeypatch):
    import nbformat

    from cft_utils.paths import figures_dir, results_dir
    from cft_utils.reproduce import NOTEBOOKS, execute_notebook

    assert {"07_generative_replay.ipynb", "08_layer_freezing.ipynb"} <= set(NOTEBOOKS)
    out = tmp_path_factory.mktemp("reports-mitigation")
    monkeypatch.setenv("CFT_HOME", str(mitigated.home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time() - 2
    # One cell (Table 3) and a subset of the strategies keep the evaluation of notebook 08 within the test budget
    # (the runs are the fixture's: the ids do not depend on which cells or strategies are listed).
    overrides = {"mitigation.cells": [{"phase1": "Instruct", "data": "multialpaca", "table": "3"}],
                 "mitigation.strategies": {"GR": {"percents": [5]}, "ER": {"percents": [10]}, "LF_H2": {},
                                           "reversion": {"amounts": [0.25]}}}
    for nb in ("07_generative_replay.ipynb", "08_layer_freezing.ipynb"):
        path = execute_notebook(nb, "smoke", out, overrides=copy.deepcopy(overrides))
        cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        assert all(c.execution_count is not None for c in cells)
        assert not any(o.get("output_type") == "error" for c in cells for o in c.outputs)
    cfg = load_config("smoke", copy.deepcopy(overrides))  # outputs go to the overridden profile's folders
    fig, res = figures_dir(cfg), results_dir(cfg)
    for f in (fig / "table3.csv", fig / "table3.md", fig / "table3.tex", fig / "fig_pareto.png", fig / "fig_pareto.pdf",
              res / "replay_sets.csv", res / "mitigation_results.csv", res / "mitigation_effects.csv"):
        assert f.exists() and f.stat().st_mtime >= t0, f
    t3 = pd.read_csv(fig / "table3.csv")
    assert list(t3.strategy) == ["P1", "none", "LF_H2", "GR_5", "ER_10", "Revert_0.25"]
    assert {"TA_avg", "LA_avg"} <= set(t3.columns)
    text = "".join(o.get("text", "") for c in nbformat.read(out / "08_layer_freezing.ipynb", as_version=4).cells
                   for o in c.get("outputs", []))
    assert "Phase 2 changed TA_avg by" in text


def test_a_cell_can_take_a_subset_of_the_strategies():
    """The paper's Table C6 has no LF_H1 row: a cell lists the strategies it gets; unknown names are refused."""
    from cft_utils.config import ConfigError

    cfg = load_config("smoke", {"mitigation.cells.1.strategies": ["GR", "LF_H2"]})
    runs = plan_mitigations(cfg)
    c6 = {r.variant.strategy for r in runs if r.variant.table == "C6"}
    t3 = {r.variant.strategy for r in runs if r.variant.table == "3"}
    assert c6 == {"GR", "LF_H2"} and "LF_H1" in t3
    with pytest.raises(ConfigError, match=r"mitigation.cells.1.strategies: \['XX'\]"):
        plan_mitigations(load_config("smoke", {"mitigation.cells.1.strategies": ["XX"]}))
