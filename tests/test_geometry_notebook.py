"""Layer profiles, the grid's comparison tables (smoke profile) and notebook 09 executed with papermill."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest

from cft_utils.analysis.geometry import capture as cap
from cft_utils.analysis.geometry import covariance as covm
from cft_utils.analysis.geometry import profiles as profm
from cft_utils.analysis.geometry import study

PROMPTS = ["reverse the list : a , b .", "the cat sees the dog .", "how many words : red , blue , green ?",
           "le chat", "count : one two three four five six"]


# ------------------------------------------------------------------------------------------ fast: profiles, verdict


def test_layer_profile_matches_direct_computation_and_caches(tiny_model_dir, tmp_path, monkeypatch):
    d = tiny_model_dir("llama")
    prof = profm.layer_profile(d, None, PROMPTS, batch_size=2, device="cpu", progress=False)
    acts = cap.capture_activations(d, None, PROMPTS, batch_size=2, device="cpu", progress=False)
    np.testing.assert_array_equal(prof.activations, acts)
    for cov, layer_acts in zip(prof.covariances, acts, strict=True):
        np.testing.assert_allclose(cov, np.cov(layer_acts.astype(np.float64), rowvar=False), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(prof.means, acts.astype(np.float64).mean(axis=1))
    self_cmp = profm.compare_profiles(prof, prof)
    assert (self_cmp[["frobenius", "spectral", "euclidean"]] == 0).all().all()
    assert np.allclose(self_cmp["cka"], 1.0)

    cached = profm.profile_models([d], PROMPTS, cache_root=tmp_path, batch_size=2, device="cpu", progress=False)[str(d)]
    np.testing.assert_array_equal(cached.activations, acts)
    assert isinstance(cached.activations, np.memmap) and (next(tmp_path.iterdir()) / "meta.json").exists()

    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(cap, "activation_batches", boom)
    monkeypatch.setattr(cap, "load_model", boom)  # a cache hit loads no model either
    again = profm.profile_models([d], PROMPTS, cache_root=tmp_path, batch_size=3, device="cpu")[str(d)]
    np.testing.assert_array_equal(again.covariances[1], cached.covariances[1])
    with pytest.raises(AssertionError, match="recomputed"):  # another position is another profile
        profm.profile_models([d], PROMPTS, cache_root=tmp_path, position="last", device="cpu")
    monkeypatch.undo()

    other = profm.layer_profile(tiny_model_dir("llama", seed=1), None, PROMPTS, device="cpu", progress=False)
    diff = profm.compare_profiles(prof, other)
    assert (diff["spectral"] > 0).all() and (diff["frobenius"] >= diff["spectral"] - 1e-12).all()
    assert (diff["cka"] < 1).all()
    with pytest.raises(ValueError, match="different prompt sets"):
        profm.compare_profiles(prof, profm.layer_profile(d, None, PROMPTS[:4], device="cpu", progress=False))


def _summary(sim, dis):
    keys = ["separation", "mean_spectral", "mean_frobenius", "mean_one_minus_cka"]
    return pd.DataFrame([{"model": "m", "pair": "similar", "label": "a → b", **dict(zip(keys, sim, strict=True))},
                         {"model": "m", "pair": "dissimilar", "label": "I → b", **dict(zip(keys, dis, strict=True))}])


def test_drift_verdict_is_computed_from_the_numbers():
    (more,) = study.drift_verdict(_summary([1, 1, 1, 0.1], [2, 3, 4, 0.2]))
    assert "drifts more than" in more and "4 of 4" in more and "as the paper reports" in more
    assert "3 vs 1 (3×)" in more
    (less,) = study.drift_verdict(_summary([2, 3, 4, 0.2], [1, 1, 1, 0.1]))
    assert "drifts less than" in less and "0 of 4" in less
    (mixed,) = study.drift_verdict(_summary([1, 3, 1, np.nan], [2, 1, 1, 0.3]))
    assert "does not clearly drift more" in mixed and "1 of 3" in mixed and "Not computable: mean 1 − CKA" in mixed


# ------------------------------------------------------------------------------------------ slow: the smoke grid


@pytest.fixture(scope="session")
def smoke_geometry(tmp_path_factory):
    """Notebooks 01, 02 and 09 executed in the smoke profile with a temporary CFT_HOME; returns (home, report dir).

    The CFT_HOME is the session's shared smoke home (see test_train.py): when another test file trained the smoke
    runs already, notebooks 01-02 find them done.
    """
    from cft_utils.reproduce import execute_notebook

    home = tmp_path_factory.getbasetemp() / "cft-home-smoke"
    home.mkdir(exist_ok=True)
    out = tmp_path_factory.mktemp("reports")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CFT_HOME", str(home))  # the kernel inherits it
        mp.setenv("HF_HUB_OFFLINE", "1")
        for name in ("01_phase1_sft.ipynb", "02_phase2_sft.ipynb", "09_representation_geometry.ipynb"):
            execute_notebook(name, "smoke", out, timeout=600)
    return home, out


# The capture settings notebook 09 uses by default: with them, its cached profiles are found again.
NOTEBOOK_CAPTURE = dict(position="mean", chat=False, batch_size=8, max_length=512)


@pytest.fixture
def smoke_env(smoke_geometry, monkeypatch):
    monkeypatch.setenv("CFT_HOME", str(smoke_geometry[0]))
    from cft_utils import config
    from cft_utils.plan import plan_runs

    cfg = config.load_config("smoke")
    return cfg, plan_runs(cfg)


def _no_forward_pass(*a, **k):
    raise AssertionError("a forward pass was run")


def _stdout(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")


@pytest.mark.slow
def test_notebook_09_writes_figures_tables_and_states_the_verdict(smoke_geometry):
    import nbformat

    from cft_utils.paths import PROJECT_ROOT, figures_dir, results_dir

    _, out = smoke_geometry
    nb = nbformat.read(out / "09_representation_geometry.ipynb", as_version=4)
    assert (out / "09_representation_geometry.html").exists()
    for stem in ("fig1_tsne", "fig2_covariance", "fig3_crosslingual", "figC4_mitigations"):
        for ext in ("png", "pdf"):
            assert (figures_dir("smoke") / f"{stem}.{ext}").stat().st_size > 1000
    layers = pd.read_csv(results_dir("smoke") / "geometry_layers.csv")
    assert {"model", "run", "comparison", "layer", "frobenius", "spectral", "cka"} <= set(layers.columns)
    assert set(layers["comparison"]) == {"P2 vs P1", "P2 vs base"} and set(layers["pair"]) == {"similar", "dissimilar"}
    assert sorted(set(layers["layer"])) == [0, 1, 2]  # smoke: embeddings + 2 blocks
    assert (layers["spectral"] > 0).all() and (layers["frobenius"] >= layers["spectral"] - 1e-12).all()
    assert ((layers["cka"] > 0) & (layers["cka"] <= 1 + 1e-9)).all()
    summary = pd.read_csv(results_dir("smoke") / "geometry_summary.csv")
    text = _stdout(nb)
    dis = summary.set_index("pair").loc["dissimilar"]
    sim = summary.set_index("pair").loc["similar"]
    assert f"{dis['mean_spectral']:.3g} vs {sim['mean_spectral']:.3g}" in text
    assert f"{dis['separation']:.3g} vs {sim['separation']:.3g}" in text
    expected = "drifts more than" if (dis[["separation", "mean_spectral", "mean_frobenius", "mean_one_minus_cka"]]
                                      > sim[["separation", "mean_spectral", "mean_frobenius",
                                             "mean_one_minus_cka"]]).all() else "drift"
    assert expected in text
    cross = pd.read_csv(results_dir("smoke") / "crosslingual_separation.csv")
    assert cross["shown"].sum() == 1 and (cross["separation_en_vs_rest"] > 0).all()
    assert "no finished run yet for LF_H2, GR_5, GR_10: the figure shows the baseline alone." in text
    c4 = pd.read_csv(results_dir("smoke") / "geometry_mitigations.csv")
    assert set(c4["run"]) == {"Instruct → multialpaca (no mitigation)"}
    # The baseline's C4 curves are its Figure 2 curves.
    base = layers[layers["pair"] == "dissimilar"].sort_values(["comparison", "layer"])
    np.testing.assert_allclose(c4.sort_values(["comparison", "layer"])["spectral"], base["spectral"])
    # The committed notebook has no outputs.
    src = nbformat.read(PROJECT_ROOT / "notebooks" / "09_representation_geometry.ipynb", as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in src.cells if c.cell_type == "code")


@pytest.mark.slow
def test_comparison_tables_on_the_smoke_grid(smoke_env, monkeypatch):
    from cft_utils import paths
    from cft_utils.analysis import prompt_sets

    cfg, plan = smoke_env
    prompts = prompt_sets.geometry_prompts(cfg)
    pairs = study.drift_pairs(cfg, plan)
    assert [(p.model, p.pair, p.label) for p in pairs] == [
        ("tiny-llama", "similar", "alpaca → multialpaca"), ("tiny-llama", "dissimilar", "Instruct → multialpaca")]
    assert pairs[1].phase1.name == "phase1/tiny-llama/Instruct" and pairs[0].sources()["base"] == pairs[1].base
    sources = [s for p in pairs for s in p.sources().values()]
    # The notebook's cache holds every profile: building the tables costs no forward pass.
    with monkeypatch.context() as mp:
        mp.setattr(cap, "activation_batches", _no_forward_pass)
        profiles = profm.profile_models(sources, prompts, cache_root=paths.cft_home() / "geometry", **NOTEBOOK_CAPTURE)
    assert len(profiles) == 5  # one base shared by both pairs
    table = study.drift_table(pairs, profiles)
    assert list(table.columns) == study.LAYER_COLUMNS and len(table) == 2 * 2 * 3
    # Independent recomputation of one cell: P2 vs base of the dissimilar pair, last layer.
    p = pairs[1].sources()
    cov_p2, cov_base = (covm.layer_covariances(p[k], None, prompts, layers=[-1], device="cpu", progress=False,
                                            **NOTEBOOK_CAPTURE)[0] for k in ("P2", "base"))
    row = table[(table["pair"] == "dissimilar") & (table["comparison"] == "P2 vs base") & (table["layer"] == 2)]
    assert row["spectral"].item() == pytest.approx(np.linalg.norm(cov_p2 - cov_base, 2), rel=1e-6)
    assert row["frobenius"].item() == pytest.approx(np.linalg.norm(cov_p2 - cov_base), rel=1e-6)
    points, sep = study.trajectory_frames(pairs, profiles)
    assert len(points) == 2 * 2 * 3 and set(points["checkpoint"]) == {"Phase 1", "Phase 2"}
    assert (sep["separation"] > 0).all() and list(sep["pair"]) == ["similar", "dissimilar"]
    summary = study.drift_summary(sep, table)
    assert summary.set_index("pair").loc["similar", "mean_spectral"] == pytest.approx(
        table[(table["pair"] == "similar") & (table["comparison"] == "P2 vs P1")]["spectral"].mean())


@pytest.mark.slow
def test_mitigation_runs_are_picked_up_when_done(smoke_env):
    from cft_utils import paths
    from cft_utils.analysis.prompt_sets import geometry_prompts
    from cft_utils.io import write_json
    from cft_utils.mitigation.plan import plan_mitigations

    cfg, plan = smoke_env
    baseline = next(r for r in plan.phase2 if r.phase1_data == "Instruct" and r.phase2_data == "multialpaca")
    planned = {r.strategy: r for r in plan_mitigations(cfg, plan) if r.baseline.run_id == baseline.run_id}
    gr5, lf_h2 = planned["GR_5"], planned["LF_H2"]
    if gr5.dir.exists() or lf_h2.dir.exists():
        pytest.skip("another test trained the smoke mitigation runs in the shared CFT_HOME")
    assert study.mitigation_runs(cfg, plan, "tiny-llama") == [
        ("Instruct → multialpaca (no mitigation)", baseline.model_dir)]
    # A finished GR_5 run of the mitigation plan (same weights as the baseline here, so its curves must equal the
    # baseline's), and an LF_H2 run with weights but no DONE marker (unfinished: left out).
    try:
        shutil.copytree(baseline.model_dir, gr5.model_dir)
        write_json(gr5.dir / "DONE", {"run_id": gr5.run_id})
        shutil.copytree(baseline.model_dir, lf_h2.model_dir)
        entries = study.mitigation_runs(cfg, plan, "tiny-llama")
        assert [label for label, _ in entries] == ["Instruct → multialpaca (no mitigation)", "GR_5"]
        assert entries[1][1] == gr5.model_dir
        refs = study.mitigation_references(cfg, plan, "tiny-llama")
        assert refs["P1"] == str(baseline.parent.model_dir)
        # Base, Phase 1 and baseline come from the notebook's cache; only the new run is profiled.
        c4 = study.mitigation_drift(entries, refs, geometry_prompts(cfg), model="tiny-llama",
                                    cache_root=paths.cft_home() / "geometry", progress=False, **NOTEBOOK_CAPTURE)
        by_run = {k: v.sort_values(["comparison", "layer"]) for k, v in c4.groupby("run")}
        np.testing.assert_allclose(by_run["GR_5"]["spectral"], by_run[entries[0][0]]["spectral"], rtol=1e-6)
    finally:
        for d in (gr5.dir, lf_h2.dir, *(paths.cft_home() / "geometry").glob(f"{gr5.run_id}*")):
            shutil.rmtree(d, ignore_errors=True)
    assert not os.path.exists(gr5.dir)
