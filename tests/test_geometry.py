"""Tests of cft_utils.analysis.geometry: streaming covariance, norms, CKA, capture across architectures, projections."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cft_utils.analysis.geometry import capture as cap
from cft_utils.analysis.geometry import covariance as covm
from cft_utils.analysis.geometry import plots
from cft_utils.analysis.geometry import projections as proj
from cft_utils.models import load_model, load_tokenizer

PROMPTS = [
    "the cat sees the dog .",
    [{"role": "user", "content": "Reverse the list: apple, pear, plum."}],
    {
        "id": "r3",
        "prompt": [
            {"role": "system", "content": "hi"},
            {"role": "user", "content": "How many items are in: red, blue?"},
        ],
    },
    "le chat",
    "кошка видит собаку . 猫が犬を見る . the cat sees the dog .",
]


@pytest.fixture(scope="module")
def llama(tiny_model_dir):
    d = tiny_model_dir("llama")
    return load_model(d), load_tokenizer(d)


# ---------------------------------------------------------------- streaming covariance


@pytest.mark.parametrize("buffer_size", [1, 4, 1000])
def test_streaming_covariance_equals_numpy_cov(buffer_size, tmp_path):
    rng = np.random.default_rng(0)
    # A large common offset, as in LLM residual streams, must not cost accuracy.
    x = rng.standard_normal((28, 6)) @ rng.standard_normal((6, 6)) + 1e4
    ram = covm.CovarianceAccumulator(6, buffer_size=buffer_size)
    disk = covm.CovarianceAccumulator(6, buffer_size=buffer_size, path=tmp_path / "acc.npy")
    start = 0
    for size in (3, 7, 1, 12, 5):  # uneven batches
        batch = x[start : start + size]
        ram.update(batch)
        disk.update(batch)
        start += size
    assert ram.count + ram._buffered == 28
    expected = np.cov(x, rowvar=False)
    np.testing.assert_allclose(ram.covariance(), expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(ram.mean(), x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(ram.covariance(ddof=0), np.cov(x, rowvar=False, ddof=0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(disk.covariance(inplace=True), expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(np.load(tmp_path / "acc.npy"), expected, rtol=1e-9, atol=1e-9)
    with pytest.raises(RuntimeError):
        disk.update(x[:2])


def test_covariance_accumulator_rejects_bad_input():
    import torch

    acc = covm.CovarianceAccumulator(3)
    with pytest.raises(ValueError, match=r"\[batch, 3\]"):
        acc.update(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        acc.update(np.array([[0.0, np.nan, 1.0]]))
    acc.update(torch.ones(1, 3))  # torch tensors are accepted
    with pytest.raises(ValueError, match="more than 1 samples"):
        acc.covariance()


# ---------------------------------------------------------------- norms


def test_spectral_norm_paths_agree_with_numpy():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((40, 40))
    sym = a + a.T
    expected = np.linalg.norm(sym, ord=2)
    assert covm.spectral_norm(sym) == pytest.approx(expected, rel=1e-10)
    assert covm.spectral_norm(sym, dense_limit=8) == pytest.approx(expected, rel=1e-8)  # Lanczos path
    assert covm.spectral_norm(a) == pytest.approx(np.linalg.norm(a, ord=2), rel=1e-10)  # non-symmetric
    assert covm.spectral_norm(np.zeros((5, 5))) == 0.0


def test_covariance_difference_norms_values_and_self_zero():
    rng = np.random.default_rng(2)
    covs_a = [np.cov(rng.standard_normal((20, 5)), rowvar=False) for _ in range(3)]
    covs_b = [np.cov(rng.standard_normal((20, 5)), rowvar=False) for _ in range(3)]
    self_df = covm.covariance_difference_norms(covs_a, covs_a)
    assert list(self_df.columns) == ["layer", "frobenius", "spectral"]
    assert list(self_df["layer"]) == [0, 1, 2]
    assert (self_df[["frobenius", "spectral"]] == 0).all().all()
    df = covm.covariance_difference_norms(covs_a, covs_b, layers=[4, 5, 6])
    assert list(df["layer"]) == [4, 5, 6]
    for (_, row), a, b in zip(df.iterrows(), covs_a, covs_b, strict=True):
        assert row["frobenius"] == pytest.approx(np.linalg.norm(a - b, "fro"))
        assert row["spectral"] == pytest.approx(np.linalg.norm(a - b, 2))
        assert 0 < row["spectral"] <= row["frobenius"]
    with pytest.raises(ValueError, match="layer 1"):
        covm.covariance_difference_norms([covs_a[0], np.eye(4)], covs_b[:2])


def test_layer_covariances_model_vs_itself_and_other(tiny_model_dir, llama, tmp_path, monkeypatch):
    model, tok = llama
    acts = cap.capture_activations(model, tok, PROMPTS, batch_size=2, progress=False)
    covs = covm.layer_covariances(model, tok, PROMPTS, batch_size=2, buffer_size=3, progress=False)
    assert len(covs) == acts.shape[0] == 3  # embeddings + 2 blocks
    for layer, cov in enumerate(covs):
        np.testing.assert_allclose(
            cov, np.cov(acts[layer].astype(np.float64), rowvar=False), rtol=1e-6, atol=1e-9
        )
    # Same model from its directory, cached on disk: zero at every layer.
    # Same batching and buffering, so the same arithmetic (device pinned: GPU machines default to cuda).
    disk = covm.layer_covariances(
        tiny_model_dir("llama"),
        None,
        PROMPTS,
        out_dir=tmp_path / "cov",
        batch_size=2,
        buffer_size=3,
        device="cpu",
    )
    assert (covm.covariance_difference_norms(disk, disk)[["frobenius", "spectral"]] == 0).all().all()
    self_norms = covm.covariance_difference_norms(covs, disk)
    assert (
        self_norms[["frobenius", "spectral"]].to_numpy() <= 1e-9 * max(np.abs(c).max() for c in covs)
    ).all()
    # Another batching changes float32 rounding only.
    rebatched = covm.layer_covariances(model, tok, PROMPTS, batch_size=5, progress=False)
    rel = covm.covariance_difference_norms(covs, rebatched)["frobenius"] / [np.linalg.norm(c) for c in covs]
    assert (rel < 1e-5).all()
    assert sorted(p.name for p in (tmp_path / "cov").iterdir()) == [
        "cov_layer000.npy",
        "cov_layer001.npy",
        "cov_layer002.npy",
        "meta.json",
    ]

    # A complete cache is reused: no forward pass happens.
    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(cap, "activation_batches", boom)
    again = covm.layer_covariances(
        tiny_model_dir("llama"), None, PROMPTS, out_dir=tmp_path / "cov", batch_size=3
    )
    np.testing.assert_array_equal(again[1], disk[1])
    with pytest.raises(AssertionError, match="recomputed"):  # other prompts invalidate the cache
        covm.layer_covariances(
            tiny_model_dir("llama"), None, PROMPTS[:4], out_dir=tmp_path / "cov", progress=False
        )
    monkeypatch.undo()

    other = covm.layer_covariances(
        tiny_model_dir("llama", seed=1), None, PROMPTS, layers=[-1, 0], progress=False
    )
    diff = covm.covariance_difference_norms([covs[2], covs[0]], other, layers=[2, 0])
    assert (diff["frobenius"] > 0).all() and (diff["spectral"] > 0).all()


# ---------------------------------------------------------------- CKA


@pytest.mark.parametrize("shape", [(10, 30), (50, 8)])  # Gram and feature branches
def test_linear_cka_identity_and_invariances(shape):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    q, _ = np.linalg.qr(rng.standard_normal((shape[1], shape[1])))
    assert covm.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert covm.linear_cka(x, 7.5 * x) == pytest.approx(1.0, abs=1e-12)
    assert covm.linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-10)
    y = rng.standard_normal(shape)
    base = covm.linear_cka(x, y)
    assert base < 0.9
    assert covm.linear_cka(3.0 * x @ q + 5.0, y) == pytest.approx(base, rel=1e-9)
    # Not invariant to an anisotropic scaling: the test would notice a normalisation bug.
    scale = np.linspace(0.1, 10, shape[1])
    assert abs(covm.linear_cka(x * scale, x) - 1.0) > 1e-3
    assert np.isnan(covm.linear_cka(np.ones(shape), y))


def test_cka_branches_agree_and_layerwise_frame():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((12, 12)), rng.standard_normal((12, 12))
    x_wide = np.hstack([x, np.zeros((12, 1))])  # n < features: Gram branch, same value
    assert covm.linear_cka(x_wide, y) == pytest.approx(covm.linear_cka(x, y), rel=1e-10)
    df = covm.layerwise_cka([x, x], [x, y], layers=[0, 3])
    assert list(df["layer"]) == [0, 3]
    assert df["cka"].iloc[0] == pytest.approx(1.0)
    assert df["cka"].iloc[1] < 1.0


# ---------------------------------------------------------------- capture


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_capture_works_for_each_architecture(arch, tiny_model_dir, tiny_tokenizer):
    acts = cap.capture_activations(tiny_model_dir(arch), tiny_tokenizer, PROMPTS, batch_size=2, progress=False)
    assert acts.shape == (3, len(PROMPTS), 32) and acts.dtype == np.float32
    assert np.isfinite(acts).all()
    assert not np.allclose(acts[0], acts[1])
    last = cap.capture_activations(
        tiny_model_dir(arch), tiny_tokenizer, PROMPTS, position="last", layers=[-1], progress=False
    )
    assert last.shape == (1, len(PROMPTS), 32)
    assert not np.allclose(last[0], acts[-1])
    means = cap.layer_mean_activations(
        tiny_model_dir(arch), tiny_tokenizer, PROMPTS, batch_size=3, progress=False
    )
    np.testing.assert_allclose(means, acts.astype(np.float64).mean(axis=1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("position", ["mean", "last"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_invariance(position, side, llama):
    model, tok = llama
    alone = np.concatenate(
        [cap.capture_activations(model, tok, [p], position=position, progress=False) for p in PROMPTS], axis=1
    )
    batched = cap.capture_activations(
        model, tok, PROMPTS, position=position, padding_side=side, batch_size=5, progress=False
    )
    # The prompts differ in length, so padding is present; it must not move any vector.
    assert len({len(x) for x in cap.tokenize_prompts(tok, PROMPTS)}) > 1
    np.testing.assert_allclose(batched, alone, atol=2e-5, rtol=1e-4)
    assert model.training is False


def test_model_mode_is_restored(llama):
    model, tok = llama
    model.train()
    try:
        cap.capture_activations(model, tok, PROMPTS[:2], progress=False)
        assert model.training
    finally:
        model.eval()


def test_tokenize_prompts_formats_and_errors(tiny_tokenizer):
    tok = tiny_tokenizer
    as_chat = cap.tokenize_prompts(tok, ["le chat"], chat=True)[0]
    plain = cap.tokenize_prompts(tok, ["le chat"])[0]
    assert tok.convert_tokens_to_ids("<|user|>") in as_chat and len(as_chat) > len(plain)
    with_header = cap.tokenize_prompts(tok, [[{"role": "user", "content": "x"}]])[0]
    without = cap.tokenize_prompts(tok, [[{"role": "user", "content": "x"}]], add_generation_prompt=False)[0]
    assert with_header[: len(without)] == without and len(with_header) > len(without)
    assert len(cap.tokenize_prompts(tok, ["the cat sees the dog " * 20], max_length=7)[0]) == 7
    with pytest.raises(ValueError, match=r"prompt 1 \(id='x'\): record has no 'prompt'"):
        cap.tokenize_prompts(tok, ["a", {"id": "x", "text": "b"}])
    with pytest.raises(ValueError, match="chat=False"):
        cap.tokenize_prompts(tok, [[{"role": "user", "content": "x"}]], chat=False)
    with pytest.raises(ValueError, match="message 0"):
        cap.tokenize_prompts(tok, [[{"role": "user"}]])
    with pytest.raises(ValueError, match="zero tokens"):
        cap.tokenize_prompts(tok, [""])


def test_capture_argument_errors(llama, tmp_path):
    model, tok = llama
    with pytest.raises(ValueError, match="position"):
        cap.capture_activations(model, tok, PROMPTS, position="first", progress=False)
    with pytest.raises(ValueError, match="layer 3 out of range"):
        cap.capture_activations(model, tok, PROMPTS, layers=[3], progress=False)
    with pytest.raises(FileNotFoundError, match="safetensors"):
        cap.load_for_capture(tmp_path)


# ---------------------------------------------------------------- projections and separation


def test_perplexity_rule():
    assert proj.tsne_perplexity(66) == pytest.approx(65 / 3)
    assert proj.tsne_perplexity(10) == 3.0
    assert proj.tsne_perplexity(1000) == 30.0
    assert proj.tsne_perplexity(2) == 1.0
    for n in range(2, 200):
        assert 0 < proj.tsne_perplexity(n) < n
    with pytest.raises(ValueError):
        proj.tsne_perplexity(1)


def test_separation_score_exact_and_ordering():
    pts = np.array([[0.0, 0], [2, 0], [10, 0], [12, 0]])
    assert proj.separation_score(pts, ["a", "a", "b", "b"]) == pytest.approx(10 / np.sqrt(2))
    rng = np.random.default_rng(5)
    noise = rng.standard_normal((40, 6))
    labels = np.repeat(["p1", "p2"], 20)
    shift = np.zeros(6)
    shift[0] = 1.0
    far = proj.separation_score(noise + np.outer(labels == "p2", 8 * shift), labels)
    near = proj.separation_score(noise + np.outer(labels == "p2", 0.5 * shift), labels)
    assert far > 3 * near > 0
    three = proj.separation_score(np.vstack([pts, [[100.0, 0], [101, 0]]]), list("aabbcc"))
    assert three == pytest.approx(10 / np.sqrt(4.5 / 3))  # least separated pair (a, b), spread pooled over 3
    assert np.isnan(proj.separation_score(pts[[0, 2]], ["a", "b"]))  # one point per label: spread undefined
    with pytest.raises(ValueError, match="at least 2 labels"):
        proj.separation_score(pts, ["a"] * 4)


def test_projections_deterministic_and_plots(tmp_path):
    rng = np.random.default_rng(6)
    pts = np.vstack([rng.standard_normal((5, 16)), rng.standard_normal((5, 16)) + 4])
    meta = pd.DataFrame({"model": ["phase1"] * 5 + ["phase2"] * 5, "layer": list(range(5)) * 2})
    f1 = proj.project_points(pts, meta, seed=0)
    f2 = proj.project_points(pts, meta, seed=0)
    pd.testing.assert_frame_equal(f1, f2)
    assert f1["perplexity"].iloc[0] == 3.0 and 0 < f1["pc1_var"].iloc[0] <= 1
    assert list(f1["model"]) == list(meta["model"])
    frame = pd.concat([f1.assign(pair="similar"), f2.assign(pair="dissimilar")])
    fig, paths = plots.plot_projections(
        frame, tmp_path / "fig1_tsne", hue="model", panel="pair", panel_notes={"similar": "separation 1.0"}
    )
    assert [p.name for p in paths] == ["fig1_tsne.png", "fig1_tsne.pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert len(fig.axes) == 4 and "separation 1.0" in fig.axes[0].get_title()

    norms = pd.concat(
        [
            pd.DataFrame(
                {
                    "layer": range(3),
                    "frobenius": [1.0, 2, 3],
                    "spectral": [0.5, 1, 2],
                    "comparison": c,
                    "vs": v,
                }
            )
            for c in ("similar", "dissimilar")
            for v in ("P2 vs P1", "P2 vs base")
        ]
    )
    for norm in ("spectral", "frobenius"):
        fig, paths = plots.plot_layer_norms(norms, tmp_path / f"fig2_{norm}", norm=norm, panel="vs")
        assert len(fig.axes) == 2 and norm in fig.axes[0].get_ylabel().lower()
        assert all(p.exists() for p in paths)
    with pytest.raises(KeyError, match="comparison"):
        plots.plot_layer_norms(norms.drop(columns="comparison"), tmp_path / "x")


def test_paired_layer_distances():
    a = np.array([[1.0, 0], [0, 2]])
    df = proj.paired_layer_distances(a, np.array([[1.0, 0], [0, -2]]))
    assert list(df["euclidean"]) == [0.0, 4.0]
    assert df["cosine_distance"].tolist() == pytest.approx([0.0, 2.0])
    assert df["relative"].tolist() == pytest.approx([0.0, 2.0])
