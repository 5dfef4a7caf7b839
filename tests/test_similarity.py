"""DES and MPD: known values on hand-built data, invariances, errors, and a tiny trained encoder."""

from __future__ import annotations

import hashlib
import json
import math
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cft_utils import checkpoints as ckpt
from cft_utils.analysis import des as desm
from cft_utils.analysis import encoders, mpd
from cft_utils.analysis import similarity_plots as plots

# ------------------------------------------------------------------------------------------------
# DES helpers
# ------------------------------------------------------------------------------------------------

# A fake "French": every English word maps to one made-up word (a bijection), so an exact translation
# of a sentence exists and has no vocabulary in common with the original.
EN_WORDS = (
    "the a and is sees eats count list cat dog bird fish horse cow sheep goat apple pear plum grape "
    "lemon melon bread cheese red blue green black white big small old new"
).split()


def to_fr(text: str) -> str:
    return " ".join(w[::-1] + "ez" for w in text.split())


class BagOfConceptsEncoder:
    """Deterministic fake encoder: a text is the mean of per-concept random vectors.

    A word and its fake-French translation share a concept, so this encoder is language-agnostic by
    construction. Counts calls, to check each dataset is encoded once.
    """

    def __init__(self, dim: int = 24):
        self.dim = dim
        self.calls = 0

    def _vec(self, word: str) -> np.ndarray:
        concept = word[:-2][::-1] if word.endswith("ez") else word
        seed = int.from_bytes(hashlib.blake2b(concept.encode(), digest_size=4).digest(), "little")
        return np.random.default_rng(seed).normal(size=self.dim)

    def encode(self, texts, batch_size=32, **kwargs):
        self.calls += 1
        return np.stack([np.mean([self._vec(w) for w in t.split()], axis=0) for t in texts]).astype(np.float32)


class TableEncoder:
    """Returns fixed vectors for fixed texts (for hand-computed DES values)."""

    def __init__(self, table):
        self.table = table

    def encode(self, texts, **kwargs):
        return np.array([self.table[t] for t in texts], dtype=np.float64)


def world_sentences(rng: random.Random, family: str, n: int) -> list[str]:
    animals, foods, adjs = EN_WORDS[8:16], EN_WORDS[16:24], EN_WORDS[24:]
    out = []
    for _ in range(n):
        if family == "animals":
            out.append(f"the {rng.choice(adjs)} {rng.choice(animals)} sees the {rng.choice(animals)}")
        else:
            out.append(f"count {rng.choice(foods)} and {rng.choice(foods)} and {rng.choice(foods)}")
    return out


def common_record(i: int, user: str, answer: str, lang: str = "en") -> dict:
    return {"id": f"r{i}", "dataset": "toy", "language": lang, "counterpart_id": None,
            "prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": user}],
            "completion": [{"role": "assistant", "content": answer}]}


# ------------------------------------------------------------------------------------------------
# DES: text extraction and sampling
# ------------------------------------------------------------------------------------------------


def test_record_texts_common_schema_and_fields():
    rec = common_record(0, "list the fruit", "apple pear")
    assert desm.record_texts([rec]) == ["be brief\nlist the fruit\napple pear"]
    assert desm.record_texts([rec], fields=("response",)) == ["apple pear"]
    assert desm.record_texts([rec], fields=("instruction",)) == ["be brief\nlist the fruit"]


def test_record_texts_alpaca_style_and_strings():
    recs = [{"instruction": "Sort", "input": "b, a", "output": "a, b"},
            {"instruction": "Greet", "input": None, "output": "hi"}]
    assert desm.record_texts(recs) == ["Sort\nb, a\na, b", "Greet\nhi"]
    assert desm.record_texts(recs[:1], fields=("input",)) == ["b, a"]
    with pytest.raises(ValueError, match=r"record 1.*hold no text"):
        desm.record_texts(recs, fields=("input",))
    assert desm.record_texts(["plain text"]) == ["plain text"]


@pytest.mark.parametrize(
    "records, fields, message",
    [
        ([{"id": "x9", "prompt": [{"role": "user", "content": "hi"}]}], desm.DEFAULT_FIELDS, r"'x9'.*completion"),
        ([{"foo": 1}], desm.DEFAULT_FIELDS, r"record 0.*keys are \['foo'\]"),
        ([{"instruction": "a", "output": "b"}], ("output",), r"unknown DES field"),
        ([{"prompt": "not a list", "completion": []}], desm.DEFAULT_FIELDS, r"must be a list"),
    ],
)
def test_record_texts_errors(records, fields, message):
    with pytest.raises(ValueError, match=message):
        desm.record_texts(records, fields=fields)


def test_sample_is_seeded_and_order_free():
    texts = [f"sentence number {i}" for i in range(50)]
    s1 = desm.sample_texts(texts, n=10, seed=3)
    assert len(s1) == 10 and set(s1) <= set(texts)
    assert desm.sample_texts(list(reversed(texts)), n=10, seed=3) == s1
    assert desm.sample_texts(texts, n=10, seed=4) != s1
    assert sorted(desm.sample_texts(texts, n=None)) == sorted(texts)


# ------------------------------------------------------------------------------------------------
# DES: values, invariances, bootstrap
# ------------------------------------------------------------------------------------------------


def test_des_hand_computed_value():
    enc = TableEncoder({"x": [1.0, 0.0], "y": [0.0, 1.0], "z": [3.0, 0.0]})
    # mean of A = (0.5, 0.5) -> (1, 1)/sqrt2; mean of B = (3, 0) -> (1, 0): DES = 1/sqrt2
    r = desm.des(["x", "y"], ["z"], enc, n_boot=0)
    assert r.des == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    assert math.isnan(r.ci_lo) and math.isnan(r.ci_hi)  # no bootstrap: missing, not 0
    assert (r.n_a, r.n_b) == (2, 1)
    np.testing.assert_allclose(desm.dataset_embedding(["x", "y"], enc), [2**-0.5, 2**-0.5])


def test_identical_datasets_score_one():
    rng = random.Random(0)
    texts = world_sentences(rng, "animals", 40)
    r = desm.des(texts, list(texts), BagOfConceptsEncoder(), n=30, n_boot=200)
    assert r.des == pytest.approx(1.0, abs=1e-12)
    assert r.ci_lo <= r.ci_hi <= 1.0 + 1e-12
    assert r.ci_lo < 1.0  # independent resamples of the sample: the interval shows the noise floor


def test_translation_beats_unrelated_with_language_agnostic_encoder():
    rng = random.Random(1)
    a = world_sentences(rng, "animals", 60)
    c = world_sentences(rng, "foods", 60)
    enc = BagOfConceptsEncoder()
    same = desm.des(a, [to_fr(t) for t in a], enc, n_boot=0).des
    other = desm.des(a, [to_fr(t) for t in c], enc, n_boot=0).des
    assert same == pytest.approx(1.0, abs=1e-9)  # exact translation under a perfectly agnostic encoder
    assert other < same - 0.05


def test_des_matrix_is_order_invariant_and_encodes_once():
    rng = random.Random(2)
    data = {
        "alpaca": [common_record(i, t, "ok") for i, t in enumerate(world_sentences(rng, "animals", 40))],
        "orca": [common_record(i, t, "done") for i, t in enumerate(world_sentences(rng, "foods", 40))],
        "plain": world_sentences(rng, "foods", 25),
    }
    enc = BagOfConceptsEncoder()
    tidy, matrix = desm.des_matrix(data, enc, n=20, n_boot=100, seed=5)
    assert enc.calls == 3
    assert list(tidy.columns) == ["a", "b", "des", "ci_lo", "ci_hi", "n_a", "n_b"]
    assert len(tidy) == 6  # 3 diagonal + 3 pairs
    assert tidy.loc[(tidy.a == "alpaca") & (tidy.b == "plain"), "n_b"].item() == 20
    np.testing.assert_allclose(matrix.to_numpy(), matrix.to_numpy().T)
    np.testing.assert_allclose(np.diag(matrix.to_numpy()), 1.0, atol=1e-12)
    off = tidy[tidy.a != tidy.b]
    assert ((off.ci_lo < off.des) & (off.des < off.ci_hi)).all()
    diag = tidy[tidy.a == tidy.b]
    assert (diag.ci_hi < 1.0).all()  # resampling noise only lowers a cosine: the documented bias

    shuffled = {k: random.Random(9).sample(list(v), len(v)) for k, v in data.items()}
    tidy2, _ = desm.des_matrix(shuffled, BagOfConceptsEncoder(), n=20, n_boot=100, seed=5)
    cols = ["des", "ci_lo", "ci_hi"]
    np.testing.assert_allclose(tidy2[cols].to_numpy(), tidy[cols].to_numpy(), atol=1e-12, rtol=0)

    # a pair's interval does not depend on the other datasets in the matrix
    pair = desm.des(data["alpaca"], data["orca"], BagOfConceptsEncoder(), n=20, n_boot=100, seed=5)
    row = tidy[(tidy.a == "alpaca") & (tidy.b == "orca")].iloc[0]
    assert (pair.des, pair.ci_lo, pair.ci_hi) == pytest.approx((row.des, row.ci_lo, row.ci_hi), abs=1e-12)


def test_des_errors_name_the_dataset():
    enc = BagOfConceptsEncoder()
    with pytest.raises(ValueError, match="'empty' is empty"):
        desm.des_matrix({"ok": ["a b"], "empty": []}, enc)
    with pytest.raises(ValueError, match=r"dataset 'bad': record 0"):
        desm.des_matrix({"bad": [{"nope": 1}]}, enc)
    with pytest.raises(ValueError, match="zero vector"):
        desm.des(["x"], ["y"], TableEncoder({"x": [0.0, 0.0], "y": [1.0, 0.0]}), n_boot=0)


def test_heatmap_writes_png_and_pdf(tmp_path):
    _, matrix = desm.des_matrix({"a": ["x y", "y z"], "b": ["x z"]}, BagOfConceptsEncoder(), n_boot=0)
    paths = plots.plot_des_heatmap(matrix, tmp_path / "fig_des")
    assert [p.name for p in paths] == ["fig_des.png", "fig_des.pdf"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG"
    assert paths[1].read_bytes()[:4] == b"%PDF"


# ------------------------------------------------------------------------------------------------
# A tiny encoder trained the LaBSE way on synthetic parallel sentences
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parallel_world(tmp_path_factory):
    from cft_utils.sandbox.tiny import build_causal_lm, save_model, train_bpe_tokenizer

    rng = random.Random(0)
    train_en = world_sentences(rng, "animals", 150) + world_sentences(rng, "foods", 150)
    pairs = [(s, to_fr(s)) for s in train_en]
    tok = train_bpe_tokenizer([t for p in pairs for t in p] * 2, vocab_size=400, min_frequency=1)
    base = tmp_path_factory.mktemp("enc-base")
    save_model(build_causal_lm(tok, hidden_size=64, num_layers=2, num_heads=2, seed=0), tok, base)
    return {"pairs": pairs, "base": base, "rng": random.Random(1)}


def test_trained_encoder_makes_translations_closest(parallel_world, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    rng = parallel_world["rng"]
    held_out = world_sentences(rng, "animals", 40) + world_sentences(rng, "foods", 40)
    tr = encoders.text_only_transformer(parallel_world["base"], 64)
    untrained = SentenceTransformer(modules=[tr, Pooling(tr.get_embedding_dimension(), "mean")], device="cpu")
    acc_before = encoders.translation_retrieval_accuracy(untrained, held_out, [to_fr(s) for s in held_out])

    out = tmp_path / "encoder"
    enc = encoders.train_parallel_encoder(parallel_world["pairs"], parallel_world["base"], out, epochs=3, seed=0)
    info = encoders.encoder_training_info(out)
    acc_after = encoders.translation_retrieval_accuracy(enc, held_out, [to_fr(s) for s in held_out])
    print(f"encoder: trained {info['steps']} steps in {info['train_seconds']:.2f}s; "
          f"retrieval accuracy {acc_before:.2f} -> {acc_after:.2f}")
    assert acc_after > max(0.4, acc_before + 0.2)
    assert info["final_loss"] < info["first_loss"]

    a = world_sentences(rng, "animals", 60)
    c = world_sentences(rng, "foods", 60)
    same = desm.des(a, [to_fr(t) for t in a], enc, n_boot=200)
    other = desm.des(a, [to_fr(t) for t in c], enc, n_boot=200)
    print(f"DES(A, fr(A)) = {same.des:.3f} [{same.ci_lo:.3f}, {same.ci_hi:.3f}]; "
          f"DES(A, fr(C)) = {other.des:.3f} [{other.ci_lo:.3f}, {other.ci_hi:.3f}]")
    assert same.ci_lo > other.ci_hi  # the intervals separate

    # cached: a second call loads the saved encoder, identical embeddings, no retraining
    again = encoders.train_parallel_encoder(parallel_world["pairs"], parallel_world["base"], out, epochs=3, seed=0)
    assert encoders.encoder_training_info(out) == info
    np.testing.assert_allclose(again.encode(a[:5]), enc.encode(a[:5]), atol=1e-6)
    loaded = encoders.load_encoder(out, device="cpu")
    np.testing.assert_allclose(loaded.encode(a[:5]), enc.encode(a[:5]), atol=1e-6)
    with pytest.raises(ValueError, match="other pairs or settings"):
        encoders.train_parallel_encoder(parallel_world["pairs"][:50], parallel_world["base"], out, epochs=3)


# ------------------------------------------------------------------------------------------------
# MPD helpers: hand-built checkpoints
# ------------------------------------------------------------------------------------------------

H, HEADS, KV_HEADS, HEAD_DIM, LAYERS, VOCAB = 4, 2, 1, 2, 3, 6
CONFIG = {"model_type": "llama", "hidden_size": H, "num_attention_heads": HEADS,
          "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM, "num_hidden_layers": LAYERS,
          "tie_word_embeddings": True}


def base_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"model.embed_tokens.weight": (VOCAB, H), "model.norm.weight": (H,)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes |= {p + "self_attn.q_proj.weight": (HEADS * HEAD_DIM, H),
                   p + "self_attn.k_proj.weight": (KV_HEADS * HEAD_DIM, H),
                   p + "self_attn.v_proj.weight": (KV_HEADS * HEAD_DIM, H),
                   p + "self_attn.o_proj.weight": (H, HEADS * HEAD_DIM),
                   p + "mlp.gate_proj.weight": (8, H), p + "mlp.up_proj.weight": (8, H),
                   p + "mlp.down_proj.weight": (H, 8),
                   p + "input_layernorm.weight": (H,)}
    # Values on a 1/256 grid: the known edits below add exactly in float32, so sums are exact.
    return {k: torch.round(torch.randn(s, generator=g) * 256) / 256 for k, s in shapes.items()}


def write_ckpt(path, tensors, config=CONFIG, shards: int = 1, dtype=None):
    """Write ``tensors`` as one model.safetensors, or as ``shards`` files plus an index."""
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.to(dtype) if dtype else v).contiguous() for k, v in tensors.items()}
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    if shards == 1:
        save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
        return path
    names = sorted(tensors)
    weight_map = {}
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s::shards]}
        save_file(part, path / fname, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, fname)
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


def edited(tensors, edits):
    out = {k: v.clone() for k, v in tensors.items()}
    for name, fn in edits.items():
        fn(out[name])
    return out


def _add_at(idx, value):
    def fn(t):
        t[idx] += value
    return fn


def _add_all(value):
    def fn(t):
        t += value
    return fn


# Known edits: layer 0 q_proj one element +3 (head 1's rows), layer 2 v_proj all 8 elements +0.5,
# layer 1 down_proj one element -2, embed one element +1.
KNOWN_EDITS = {
    "model.layers.0.self_attn.q_proj.weight": _add_at((3, 1), 3.0),
    "model.layers.2.self_attn.v_proj.weight": _add_all(0.5),
    "model.layers.1.mlp.down_proj.weight": _add_at((0, 5), -2.0),
    "model.embed_tokens.weight": _add_at((2, 2), 1.0),
}


@pytest.fixture()
def known_pair(tmp_path):
    base = base_tensors()
    a = write_ckpt(tmp_path / "a", base)
    b = write_ckpt(tmp_path / "b", edited(base, KNOWN_EDITS))
    return a, b


# ------------------------------------------------------------------------------------------------
# MPD tests
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("model.layers.3.self_attn.q_proj.weight", (3, "q_proj", "q")),
        ("model.layers.12.mlp.down_proj.weight", (12, "down_proj", "down")),
        ("model.layers.0.self_attn.k_proj.bias", (0, "k_proj", "k")),
        ("model.layers.1.post_attention_layernorm.weight", (1, "post_attention_layernorm", "norm")),
        ("model.embed_tokens.weight", (None, "embed_tokens", "embed")),
        ("lm_head.weight", (None, "lm_head", "lm_head")),
        ("model.norm.weight", (None, "norm", "norm")),
        ("transformer.h.5.attn.c_attn.weight", (5, "c_attn", "c_attn")),
        ("transformer.h.5.ln_1.weight", (5, "ln_1", "norm")),
    ],
)
def test_parse_param_name(name, expected):
    assert ckpt.parse_param_name(name) == expected


def test_known_differences_per_layer_kind_and_total(known_pair):
    d = ckpt.parameter_difference(*known_pair)
    assert d.total_sq == pytest.approx(9 + 8 * 0.25 + 4 + 1, abs=1e-9)
    assert d.total_l2 == pytest.approx(math.sqrt(16), abs=1e-9)
    by_layer = d.by_layer().set_index("layer")["sq_diff"]
    assert by_layer.to_dict() == pytest.approx({0: 9.0, 1: 4.0, 2: 2.0}, abs=1e-9)
    by_kind = d.by_kind().set_index("kind")["sq_diff"]
    assert by_kind["q"] == pytest.approx(9) and by_kind["v"] == pytest.approx(2)
    assert by_kind["down"] == pytest.approx(4) and by_kind["embed"] == pytest.approx(1)
    assert by_kind[["k", "o", "gate", "up", "norm"]].abs().max() == 0
    assert d.by_kind().share.sum() == pytest.approx(1.0)
    heads = d.by_head().set_index(["layer", "module", "head"])["sq_diff"]
    assert heads[(0, "q_proj", 1)] == pytest.approx(9) and heads[(0, "q_proj", 0)] == 0
    assert heads[(2, "v_proj", 0)] == pytest.approx(2)
    assert len(heads) == LAYERS * (HEADS + KV_HEADS + KV_HEADS)


def test_per_layer_squares_add_up_to_the_whole(tiny_model_dir):
    # Two independently initialised models: every tensor differs, so no group can hide a missing tensor.
    d = ckpt.parameter_difference(tiny_model_dir(seed=0), tiny_model_dir(seed=1))
    outside = d.tensors[d.tensors["layer"].isna()]["sq_diff"].sum()
    assert outside > 0 and (d.by_layer()["sq_diff"] > 0).all()
    assert d.by_layer()["sq_diff"].sum() + outside == pytest.approx(d.total_sq, rel=1e-12)
    assert d.by_kind()["sq_diff"].sum() == pytest.approx(d.total_sq, rel=1e-12)
    assert d.by_layer_module()["sq_diff"].sum() == pytest.approx(d.by_layer()["sq_diff"].sum(), rel=1e-12)
    assert d.by_layer()["share"].sum() + outside / d.total_sq == pytest.approx(1.0, rel=1e-12)


def test_self_difference_is_zero_and_chunking_does_not_matter(known_pair, tiny_model_dir):
    a, b = known_pair
    assert ckpt.parameter_difference(a, a).total_sq == 0.0
    real = tiny_model_dir()
    assert ckpt.parameter_difference(real, real).total_l2 == 0.0
    coarse = ckpt.parameter_difference(a, b)
    fine = ckpt.parameter_difference(a, b, chunk_elems=3)  # several chunks per tensor, 1 row per chunk
    np.testing.assert_allclose(fine.tensors.sq_diff, coarse.tensors.sq_diff, rtol=1e-12)
    np.testing.assert_allclose(fine.by_head().sq_diff, coarse.by_head().sq_diff, rtol=1e-12)


def test_sharded_and_unsharded_agree(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    dirs = {}
    for seed in (0, 1):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(seed=seed))
        out = tmp_path / f"sharded{seed}"
        model.save_pretrained(out, max_shard_size="20KB")
        assert (out / "model.safetensors.index.json").exists()
        assert len(list(out.glob("model-*.safetensors"))) > 2
        dirs[seed] = out
    plain = ckpt.parameter_difference(tiny_model_dir(seed=0), tiny_model_dir(seed=1))
    sharded = ckpt.parameter_difference(dirs[0], dirs[1])
    assert plain.total_l2 > 0
    assert sharded.total_l2 == pytest.approx(plain.total_l2, rel=1e-12)
    cols = ["tensor", "sq_diff", "sq_a", "sq_b"]
    assert sharded.tensors[cols].equals(plain.tensors[cols])
    # hand-written shards too
    base = base_tensors()
    one = ckpt.parameter_difference(write_ckpt(tmp_path / "x1", base),
                                   write_ckpt(tmp_path / "y1", edited(base, KNOWN_EDITS)))
    three = ckpt.parameter_difference(write_ckpt(tmp_path / "x3", base, shards=3),
                                     write_ckpt(tmp_path / "y3", edited(base, KNOWN_EDITS), shards=3))
    assert three.total_sq == pytest.approx(one.total_sq, rel=1e-12)


def test_tied_lm_head_is_read_from_the_embedding(tmp_path):
    base = base_tensors()
    tied = write_ckpt(tmp_path / "tied", base)
    untied_t = dict(base)
    untied_t["lm_head.weight"] = base["model.embed_tokens.weight"] + 0.5  # 24 elements
    untied = write_ckpt(tmp_path / "untied", untied_t, config={**CONFIG, "tie_word_embeddings": False})
    d = ckpt.parameter_difference(tied, untied)
    row = d.tensors.set_index("tensor").loc["lm_head.weight"]
    assert row.sq_diff == pytest.approx(VOCAB * H * 0.25)
    assert "model.embed_tokens.weight" in row.note
    assert d.total_sq == pytest.approx(VOCAB * H * 0.25)
    # a checkpoint that declares untied embeddings but lacks the head is an error
    broken = write_ckpt(tmp_path / "broken", base, config={**CONFIG, "tie_word_embeddings": False})
    with pytest.raises(ValueError, match=r"'lm_head.weight' is missing from checkpoint a"):
        ckpt.parameter_difference(broken, untied)


def test_mismatches_raise_naming_the_tensor(tmp_path):
    base = base_tensors()
    ok = write_ckpt(tmp_path / "ok", base)
    fewer = dict(base)
    del fewer["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match=r"'model.layers.1.mlp.up_proj.weight' is missing from checkpoint b"):
        ckpt.parameter_difference(ok, write_ckpt(tmp_path / "fewer", fewer))
    with pytest.raises(ValueError, match=r"'model.layers.1.mlp.up_proj.weight' is missing from checkpoint a"):
        ckpt.parameter_difference(tmp_path / "fewer", ok)
    reshaped = dict(base, **{"model.norm.weight": torch.zeros(H + 1)})
    with pytest.raises(ValueError, match=r"'model.norm.weight': shape \[4\] .* but \[5\]"):
        ckpt.parameter_difference(ok, write_ckpt(tmp_path / "shape", reshaped))
    half = write_ckpt(tmp_path / "bf16", base, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"tensor 'model\.\S+': dtype F32 .* but BF16"):
        ckpt.parameter_difference(ok, half)
    loose = ckpt.parameter_difference(ok, half, allow_dtype_mismatch=True)
    assert 0 < loose.total_l2 < 0.05 * math.sqrt(sum(float(t.square().sum()) for t in base.values()))
    with pytest.raises(ValueError, match="architecture mismatch"):
        ckpt.parameter_difference(ok, write_ckpt(tmp_path / "mistral", base, {**CONFIG, "model_type": "mistral"}))
    with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
        ckpt.parameter_difference(ok, tmp_path)
    sharded = write_ckpt(tmp_path / "sh", base, shards=2)
    next(sharded.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(FileNotFoundError, match="names shard model-00002-of-00002"):
        ckpt.open_checkpoint(sharded)


def test_mpd_table_normalises_by_the_largest(tmp_path):
    g = torch.Generator().manual_seed(7)
    base = base_tensors()
    deltas = {name: {k: 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()}
              for name in ("ref", "near", "far")}
    deltas["near"] = {k: deltas["ref"][k] + 0.2 * v for k, v in deltas["near"].items()}
    dirs = {name: write_ckpt(tmp_path / name, {k: base[k] + d[k] for k in base}) for name, d in deltas.items()}
    write_ckpt(tmp_path / "base", base)

    cmp = mpd.compare_models(tmp_path / "base", {"near": dirs["near"], "far": dirs["far"]}, dirs["ref"],
                             reference_name="multialpaca")
    table = cmp.table().set_index("model")

    def flat(d):
        return torch.cat([d[k].double().flatten() for k in sorted(d)])

    ref, near, far = flat(deltas["ref"]), flat(deltas["near"]), flat(deltas["far"])
    want = {"near": float((near - ref).norm()), "far": float((far - ref).norm())}
    assert table.loc["near", "mpd"] == pytest.approx(want["near"], rel=1e-6)
    assert table.loc["far", "mpd"] == pytest.approx(want["far"], rel=1e-6)
    assert table.loc["far", "mpd_normalised"] == pytest.approx(1.0)
    assert table.loc["near", "mpd_normalised"] == pytest.approx(want["near"] / want["far"], rel=1e-6)
    assert table.loc["far", "drift_from_base"] == pytest.approx(float(far.norm()), rel=1e-6)
    assert table.loc["near", "reference_drift"] == pytest.approx(float(ref.norm()), rel=1e-6)
    cos = float(near @ ref / (near.norm() * ref.norm()))
    assert table.loc["near", "update_cosine"] == pytest.approx(cos, abs=1e-6)
    prof = cmp.profile("layer")
    assert set(prof.model) == {"near", "far"} and set(prof.layer) == set(range(LAYERS))
    per_model = prof.groupby("model").sq_diff.sum()
    assert per_model["far"] < table.loc["far", "mpd"] ** 2  # embed/norm are outside layers
    # without a base: drifts are missing (NaN), not 0
    no_base = mpd.mpd_table(None, {"near": dirs["near"]}, dirs["ref"])
    assert math.isnan(no_base.loc[0, "drift_from_base"]) and math.isnan(no_base.loc[0, "update_cosine"])


def test_layer_change_ranking_picks_known_layers(tmp_path):
    base = base_tensors()
    scale = {"q": {0: 0.1, 1: 0.9, 2: 0.5}, "k": {0: 0.7, 1: 0.2, 2: 0.4}, "v": {0: 0.3, 1: 0.1, 2: 0.8}}
    edits = {}
    for mod, per_layer in scale.items():
        for layer, s in per_layer.items():
            edits[f"model.layers.{layer}.self_attn.{mod}_proj.weight"] = _add_all(s)
    # shrink layer 2's q base weights so it leads on the *relative* measure while layer 1 leads absolutely
    base["model.layers.2.self_attn.q_proj.weight"] *= 0.01
    base_dir = write_ckpt(tmp_path / "base", base)
    p1 = write_ckpt(tmp_path / "p1", edited(base, edits))

    ranking, table = ckpt.layer_change_ranking(base_dir, p1, top_k=2)
    assert ranking == {"q_proj": [1, 2], "k_proj": [0, 2], "v_proj": [2, 0]}
    assert set(table.columns) >= {"module", "layer", "abs_change", "base_norm", "rel_change", "rank"}
    row = table[(table.module == "k_proj") & (table.layer == 0)].iloc[0]
    assert row.abs_change == pytest.approx(0.7 * math.sqrt(KV_HEADS * HEAD_DIM * H), rel=1e-6)
    assert row["rank"] == 1

    rel, _ = ckpt.layer_change_ranking(base_dir, p1, modules=("q_proj",), top_k=1, measure="relative")
    assert rel == {"q_proj": [2]}
    everything, _ = ckpt.layer_change_ranking(base_dir, p1, modules=("v_proj",), top_k=10)
    assert everything == {"v_proj": [2, 0, 1]}  # fewer layers than top_k: all of them

    heads, head_table = ckpt.rank_heads(ckpt.parameter_difference(base_dir, p1), top_k=3)
    assert heads["k_proj"] == [(0, 0), (2, 0), (1, 0)]  # one kv head per layer
    assert heads["q_proj"][0][0] == 1 and len(head_table) == LAYERS * (HEADS + 2 * KV_HEADS)

    with pytest.raises(ValueError, match=r"module\(s\) \['qkv_proj'\]"):
        ckpt.layer_change_ranking(base_dir, p1, modules=("qkv_proj",))
    with pytest.raises(ValueError, match="measure must be"):
        ckpt.layer_change_ranking(base_dir, p1, measure="cosine")
