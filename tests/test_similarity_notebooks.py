"""The profile-level similarity study: parallel pairs, the paper's values, orderings, LF_H2 sizes, and (slow)
notebooks 05-06 executed in the smoke profile, with the forgetting-risk report and the sandbox DES check.

The slow fixture uses the session's shared smoke CFT_HOME (the folder test_train.py and test_notebooks.py
use): whichever file runs first trains the smoke runs, the others find them done.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from cft_utils import config
from cft_utils.analysis import des_study, encoders, mpd_study
from cft_utils.analysis import risk as forgetting
from cft_utils.mitigation.freeze import n_frozen_layers
from cft_utils.models import use_threads
from cft_utils.paper import paper_values
from cft_utils.sandbox.world import World

SHARED_HOME = "cft-home-smoke"  # the same folder as test_train.shared_smoke_home


@pytest.fixture(scope="module")
def smoke_world():
    return World(config.load_config("smoke").sandbox.world_spec())


# ------------------------------------------------------------------------------------------ fast


def test_parallel_pairs_are_seeded_distinct_exact_and_balanced(smoke_world):
    pairs = encoders.parallel_pairs(smoke_world, 300, seed=3)
    assert pairs == encoders.parallel_pairs(smoke_world, 300, seed=3)
    assert pairs != encoders.parallel_pairs(smoke_world, 300, seed=4)
    english = [en for en, _ in pairs]
    assert len(pairs) == 300 and len(set(english)) == 300
    langs = smoke_world.other_languages
    counts = dict.fromkeys(langs, 0)
    for en, tr in pairs:
        assert en != tr
        matches = [lang for lang in langs if smoke_world.translate(en, lang) == tr]
        assert len(matches) == 1  # an exact translation into exactly one language
        counts[matches[0]] += 1
    assert set(counts.values()) == {150}  # equal shares
    # facts, lists and task sentences of every family are all represented
    assert any(" has size " in s for s in english) and any(s.startswith("the list ") for s in english)
    assert any("so the answer is" in s for s in english)
    only_qac = encoders.parallel_pairs(smoke_world, 20, seed=3, languages=["qac"])
    assert all(smoke_world.translate(en, "qac") == tr for en, tr in only_qac)
    with pytest.raises(ValueError, match="not in the world"):
        encoders.parallel_pairs(smoke_world, 5, languages=["qae"])
    with pytest.raises(ValueError, match="non-English"):
        encoders.parallel_pairs(smoke_world, 5, languages=["en"])


def test_encoder_settings_and_cache_dir_follow_the_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("CFT_HOME", str(tmp_path))
    cfg = config.load_config("smoke")
    assert encoders.encoder_settings(cfg)["seed"] == cfg.seed
    d = encoders.sandbox_encoder_dir(cfg)
    assert d.parent.parent == tmp_path / "sandbox" and d.name.startswith("encoder-")
    assert encoders.sandbox_encoder_dir(cfg) == d
    assert encoders.sandbox_encoder_dir(cfg, epochs=1) != d
    with pytest.raises(TypeError, match="unknown sandbox encoder setting"):
        encoders.encoder_settings(cfg, epoch=1)
    paper = config.load_config("paper")
    with pytest.raises(ValueError, match="no 'sandbox' section"):
        encoders.sandbox_encoder_dir(paper)
    with pytest.raises(TypeError, match="sandbox encoder only"):
        encoders.profile_encoder(paper, "some/encoder", epochs=1)


def test_paper_values_reads_des_and_keeps_lost_values_missing():
    des = paper_values(benchmark="DES", dataset_keys=True)
    got = {(r.phase1_data, r.phase2_data): r.value for r in des.itertuples()}
    assert got == {("alpaca", "multialpaca"): 0.924, ("alpaca", "mopenorca"): 0.792,
                   ("openorca", "mopenorca"): 0.953, ("openorca", "multialpaca"): 0.774}
    mpd = paper_values("3.3", benchmark="MPD_normalised")
    assert len(mpd) == 3 and mpd["value"].isna().sum() == 2  # lost from the text: NaN, never 0
    assert mpd["note"].notna().sum() == 2
    t1 = paper_values("1", model="Mistral-7B", checkpoint=["P1", "P2"])
    assert len(t1) > 0 and set(t1["checkpoint"]) == {"P1", "P2"} and set(t1["table"]) == {"1"}
    with pytest.raises(KeyError, match="unknown column 'modle'"):
        paper_values(modle="x")


def test_with_paper_des_matches_unordered_pairs():
    table = pd.DataFrame({"a": ["multialpaca", "alpaca", "alpaca"], "b": ["alpaca", "alpaca", "instruct"],
                          "des": [0.9, 1.0, 0.8]})
    out = des_study.with_paper_des(table)
    assert out["paper_des"].iloc[0] == 0.924
    assert out["paper_des"].iloc[1:].isna().all()


def _des_table(values: dict) -> pd.DataFrame:
    return pd.DataFrame([{"a": a, "b": b, "des": v, "ci_lo": lo, "ci_hi": hi}
                         for (a, b), (v, lo, hi) in values.items()])


def test_ordering_checks_and_their_description():
    table = _des_table({("alpaca", "multialpaca"): (0.92, 0.90, 0.94), ("mopenorca", "alpaca"): (0.79, 0.70, 0.91),
                        ("openorca", "mopenorca"): (0.70, 0.65, 0.75), ("openorca", "multialpaca"): (0.77, 0.7, 0.8)})
    checks = des_study.ordering_checks(table).set_index(["closer_pair", "farther_pair"])
    assert len(checks) == 4  # the Instruct comparison is left out: no instruct row
    a = checks.loc[("alpaca–multialpaca", "alpaca–mopenorca")]
    assert a["holds"] and not a["separated"]  # 0.90 < 0.91: the intervals overlap
    b = checks.loc[("openorca–mopenorca", "openorca–multialpaca")]
    assert not b["holds"]
    assert checks.loc[("alpaca–multialpaca", "openorca–multialpaca")]["separated"]
    text = des_study.describe_orderings(des_study.ordering_checks(table))
    assert "holds in 2 of 4" in text and "does NOT hold" in text and "0.920" in text
    # lower-is-closer (MPD), no intervals
    mpd = table.assign(des=-table["des"])
    flipped = des_study.ordering_checks(mpd, higher_is_closer=False, lo=None, hi=None)
    assert flipped["holds"].tolist() == des_study.ordering_checks(table)["holds"].tolist()
    assert flipped["separated"].isna().all()


def test_des_mpd_agreement_orders_both_ways():
    des = _des_table({("alpaca", "multialpaca"): (0.95, 0, 0), ("openorca", "multialpaca"): (0.70, 0, 0),
                      ("instruct", "multialpaca"): (0.80, 0, 0)})
    mpd = pd.DataFrame({"comparison": "phase1_vs_reference", "model": "m", "phase2_data": "multialpaca",
                        "phase1_data": ["alpaca", "openorca", "instruct"], "mpd": [0.5, 1.0, 0.7]})
    agree = mpd_study.des_mpd_agreement(des, mpd).iloc[0]
    assert agree["agree"] and agree["by_des"] == "alpaca > instruct > openorca"
    assert math.isclose(agree["spearman"], 1.0)
    mpd["mpd"] = [1.0, 0.5, 0.7]
    disagree = mpd_study.des_mpd_agreement(des, mpd).iloc[0]
    assert not disagree["agree"] and math.isclose(disagree["spearman"], -1.0)


@pytest.mark.parametrize(("layers", "k"), [(32, 10), (6, 2), (2, 1), (1, 1), (80, 25)])
def test_lf_h2_default_share_is_the_papers(layers, k):
    # the one frozen-layer budget (the mitigation's), at the paper's share of 10 in 32 layers
    assert n_frozen_layers(layers, fraction=10 / 32) == k


def test_risk_reading_from_alternatives_and_bands():
    cand = pd.Series({"des": 0.95, "ci_lo": 0.93, "ci_hi": 0.97})
    alts = pd.DataFrame({"phase2_data": ["x"], "des": [0.80], "ci_lo": [0.75], "ci_hi": [0.85]})
    assert forgetting.risk_from_des(cand, alts)[0] == "lower"
    assert forgetting.risk_from_des(pd.Series({"des": 0.7, "ci_lo": 0.6, "ci_hi": 0.74}), alts)[0] == "higher"
    assert forgetting.risk_from_des(pd.Series({"des": 0.82, "ci_lo": 0.7, "ci_hi": 0.9}), alts)[0] == "unclear"
    none = alts.iloc[0:0]
    assert forgetting.risk_from_des(pd.Series({"des": 0.93, "ci_lo": 0.9, "ci_hi": 0.95}), none)[0] == "lower"
    assert forgetting.risk_from_des(pd.Series({"des": 0.7, "ci_lo": 0.6, "ci_hi": 0.75}), none)[0] == "higher"
    assert forgetting.la_mean(None) is None
    assert forgetting.la_mean(pd.DataFrame({"value": [np.nan]})) is None  # missing, never 0
    assert forgetting.la_mean(pd.DataFrame({"exact_match": [0.0, 0.5]})) == 0.25
    with pytest.raises(ValueError, match="'value'"):
        forgetting.la_mean(pd.DataFrame({"acc": [1.0]}))


# ------------------------------------------------------------------------------------------ slow: smoke profile


@pytest.fixture(scope="session")
def smoke_similarity(tmp_path_factory):
    """Notebooks 01, 02, 05 and 06 executed with papermill in the smoke profile (shared smoke CFT_HOME)."""
    from cft_utils.reproduce import execute_notebook

    home = tmp_path_factory.getbasetemp() / SHARED_HOME
    home.mkdir(exist_ok=True)
    out = tmp_path_factory.mktemp("reports-similarity")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CFT_HOME", str(home))  # the kernel inherits it
        mp.setenv("HF_HUB_OFFLINE", "1")
        for name in ("01_phase1_sft.ipynb", "02_phase2_sft.ipynb", "05_dataset_similarity.ipynb",
                     "06_parameter_difference.ipynb"):
            execute_notebook(name, "smoke", out, timeout=600)
    return home, out


@pytest.fixture
def smoke_env(smoke_similarity, monkeypatch):
    monkeypatch.setenv("CFT_HOME", str(smoke_similarity[0]))
    from cft_utils.plan import plan_runs

    cfg = config.load_config("smoke")
    use_threads(cfg.training.num_threads)
    return cfg, plan_runs(cfg)


@pytest.mark.slow
def test_notebooks_05_06_write_tidy_results_and_figures(smoke_similarity):
    from cft_utils.paths import figures_dir, results_dir

    res, fig = results_dir("smoke"), figures_dir("smoke")
    for stem in ("fig_des", "fig_des_intervals", "fig_mpd_profile"):
        for ext in ("png", "pdf"):
            assert (fig / f"{stem}.{ext}").stat().st_size > 1000
    des = pd.read_csv(res / "des.csv")
    assert set(des["a"]) | set(des["b"]) == {"alpaca", "multialpaca", "openorca", "mopenorca", "instruct"}
    assert len(des) == 15  # 5 datasets: every unordered pair and the diagonal
    diag = des[des["a"] == des["b"]]
    assert np.allclose(diag["des"], 1.0, atol=1e-9)
    assert (des["ci_lo"] <= des["ci_hi"]).all() and (des["ci_hi"] <= 1 + 1e-9).all()
    assert "paper_des" not in des.columns  # the paper's LaBSE values are only shown on the real data
    risk = pd.read_csv(res / "forgetting_risk.csv")
    assert len(risk) == 4 and set(risk["risk"]) <= {"lower", "higher", "unclear"}
    assert risk["la_baseline_mean"].notna().all()  # the sandbox probe measured it

    mpd = pd.read_csv(res / "mpd.csv")
    ref = mpd[mpd["comparison"] == "phase1_vs_reference"]
    assert len(ref) == 6  # 3 Phase 1 models x 2 references
    assert set(ref["phase1_data"]) == {"alpaca", "openorca", "instruct"}
    assert (ref.groupby("phase2_data")["mpd_normalised"].max() == 1.0).all()
    assert (ref["mpd"] > 0).all() and ref["update_cosine"].between(-1, 1).all()
    drift = mpd[mpd["comparison"] == "phase2_drift"]
    assert len(drift) == 4 and (drift["mpd"] > 0).all() and drift["drift_from_base"].isna().all()
    profile = pd.read_csv(res / "mpd_profile.csv")
    assert set(profile["level"]) == {"layer", "kind"}
    kinds = set(profile[profile["level"] == "kind"]["part"])
    assert {"q", "k", "v", "o", "gate", "up", "down"} <= kinds
    # the per-layer squares add up to the whole-model difference minus the non-layer tensors
    layers = profile[(profile["level"] == "layer") & (profile["comparison"] == "phase2_drift")]
    assert set(layers["part"].astype(int)) == {0, 1}

    for (cmp, p1, p2), g in profile.groupby(["comparison", "phase1_data", "phase2_data"]):
        row = mpd[(mpd["comparison"] == cmp) & (mpd["phase1_data"] == p1) & (mpd["phase2_data"] == p2)]
        total = float(row["mpd"].iloc[0]) ** 2
        assert float((g[g["level"] == "kind"]["l2"] ** 2).sum()) == pytest.approx(total, rel=1e-9)
        assert 0 < float((g[g["level"] == "layer"]["l2"] ** 2).sum()) < total  # embeddings, final norm lie outside

    lf = pd.read_csv(res / "lf_h2_layers.csv")  # the mitigation plan's own LF_H2 selection, shown by notebook 06
    lf_h2 = lf[lf["strategy"] == "LF_H2"]
    assert set(lf_h2["phase1_data"]) == {"Instruct"} and set(lf_h2["phase2_data"]) == {"multialpaca", "mopenorca"}
    assert set(lf_h2["module"]) == {"q_proj", "k_proj", "v_proj"}
    assert (lf_h2["num_layers"] == 2).all() and (lf_h2["n_frozen_layers"] == 1).all()
    assert all(len(v) == 1 and v[0] in (0, 1) for v in lf_h2["layers"].map(json.loads))


@pytest.mark.slow
def test_translation_scores_above_unrelated_sets_in_the_sandbox_world(smoke_env):
    from cft_utils.analysis import des as desm
    from cft_utils.data.loaders import load_records

    cfg, _ = smoke_env
    enc, name = encoders.profile_encoder(cfg)  # the cached smoke encoder of notebook 05
    assert name.startswith("sandbox")
    world = World(cfg.sandbox.world_spec())
    same = desm.des(world.dataset("multialpaca_en"), world.dataset("multialpaca"), enc, n_boot=200)
    other = desm.des(load_records(cfg, "alpaca"), load_records(cfg, "mopenorca"), enc, n_boot=200)
    print(f"smoke DES(multialpaca_en, multialpaca) = {same.des:.3f}; DES(alpaca, mopenorca) = {other.des:.3f}")
    assert same.des > other.des


@pytest.mark.slow
def test_forgetting_risk_on_the_smoke_grid(smoke_env):
    cfg, plan = smoke_env
    enc, _ = encoders.profile_encoder(cfg)
    alpaca = plan.get("phase1/tiny-llama/alpaca")
    risk = forgetting.forgetting_risk(cfg, alpaca, "multialpaca", enc, n_boot=200)
    assert risk.compared_data == "alpaca" and "own training data" in risk.data_note
    assert set(risk.alternatives["phase2_data"]) == {"multialpaca", "mopenorca"}
    assert risk.la_baseline is not None and set(risk.la_baseline["language"]) == {"qaa", "qac"}
    assert risk.la_mean is not None and 0 <= risk.la_mean <= 1
    assert (alpaca.dir / "la_probe.json").exists()  # cached for the next call
    assert risk.risk in {"lower", "higher", "unclear"} and "multialpaca" in risk.reading
    row = risk.summary()
    assert row["des"] == risk.des and row["la_baseline_mean"] == risk.la_mean

    instruct = plan.get("phase1/tiny-llama/Instruct")
    given = pd.DataFrame({"language": ["qaa", "qac"], "value": [0.2, 0.4]})
    r2 = forgetting.forgetting_risk(cfg, instruct, "mopenorca", enc, la_baseline=given, n_boot=0)
    assert r2.compared_data == "instruct" and "instruct mixture" in r2.data_note
    assert math.isclose(r2.la_mean, 0.3) and r2.la_source.startswith("given")
    assert math.isnan(r2.ci_lo)  # no bootstrap asked: interval missing, not 0
    r3 = forgetting.forgetting_risk(cfg, instruct, "mopenorca", enc, probe_la=False, n_boot=0)
    assert r3.la_mean is None and "missing" in r3.reading
    with pytest.raises(KeyError, match="not in"):
        forgetting.forgetting_risk(cfg, instruct, "nope", enc)

    # A DES table is computed once for the same data sets (the seeds of a cell, the cells of one Phase 1 model)
    calls = []
    real = forgetting.des_matrix

    def counting(*a, **k):
        calls.append(sorted(a[0]))
        return real(*a, **k)

    cache = {}
    forgetting.des_matrix = counting
    try:
        c1 = forgetting.forgetting_risk(cfg, alpaca, "multialpaca", enc, n_boot=200, des_cache=cache)
        c2 = forgetting.forgetting_risk(cfg, alpaca, "mopenorca", enc, n_boot=200, des_cache=cache)
        forgetting.forgetting_risk(cfg, instruct, "mopenorca", enc, n_boot=0, des_cache=cache)
    finally:
        forgetting.des_matrix = real
    assert len(calls) == 2  # alpaca's sets once for both candidates, the Instruct model's once
    assert (c1.des, c1.ci_lo, c1.ci_hi) == (risk.des, risk.ci_lo, risk.ci_hi)  # same numbers as without the cache
    assert c2.phase2_data == "mopenorca" and c2.des != c1.des
