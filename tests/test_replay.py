"""Generative / English replay: sizes, counterpart pools, generation checks and counts, batched generation."""

from __future__ import annotations

import pytest

from cft_utils.config import GenerationSpec, load_config
from cft_utils.mitigation.replay import (
    ReplayError,
    classify,
    english_pool,
    english_replay,
    generate_replay,
    max_ngram_repeats,
    replay_size,
    seeded_order,
)
from cft_utils.models import Generation
from cft_utils.models import generate as hf_generate


def _rec(rid, lang="en", cid=None, text="answer"):
    return {"id": rid, "dataset": "d", "language": lang, "counterpart_id": cid,
            "prompt": [{"role": "user", "content": f"question {rid}"}],
            "completion": [{"role": "assistant", "content": text}]}


@pytest.mark.parametrize("n,k,want", [(32, 5, 2), (32, 10, 3), (240, 5, 12), (10, 25, 3), (10, 5, 1), (3, 10, 0),
                                      (1000, 100, 1000)])
def test_replay_size_is_k_percent_rounded_half_up(n, k, want):
    assert replay_size(n, k) == want


def test_counterpart_pool_follows_the_links_and_deduplicates():
    english = [_rec(f"e{i}") for i in range(5)] + [_rec("x-fr", lang="fr")]
    phase2 = [_rec("p0", "fr", "e3"), _rec("p1", "de", "e1"), _rec("p2", "es", "e3"), _rec("p3", "fr", "e0")]
    pool = english_pool(phase2, english, "counterpart_id")
    assert [r["id"] for r in pool] == ["e3", "e1", "e0"]
    with pytest.raises(ReplayError, match=r"1 Phase 2 record\(s\) have no counterpart_id .* 1 name an id missing"):
        english_pool(phase2 + [_rec("p4", "fr", None), _rec("p5", "fr", "nope")], english, "counterpart_id", "x")
    # no per-record link (MultiAlpaca -> Alpaca): every English record of the counterpart set
    assert [r["id"] for r in english_pool(phase2, english, "sample")] == [f"e{i}" for i in range(5)]


def test_seeded_order_depends_on_seed_not_on_input_order():
    pool = [_rec(f"e{i:02d}") for i in range(30)]
    a = [r["id"] for r in seeded_order(pool, 1)]
    assert a == [r["id"] for r in seeded_order(pool[::-1], 1)]
    assert a != [r["id"] for r in seeded_order(pool, 2)] and sorted(a) == sorted(r["id"] for r in pool)


def test_classification_of_generations():
    spec = GenerationSpec(degenerate_ngram=3, degenerate_max_repeats=4)
    assert classify(Generation("   ", True), spec) == "empty"
    assert classify(Generation("a b c", False), spec) == "truncated"
    assert classify(Generation("the cat . " * 4, True), spec) == "degenerate"
    assert classify(Generation("the cat . " * 3, True), spec) == "ok"
    assert max_ngram_repeats("a b a b a b", 2) == 3 and max_ngram_repeats("a", 3) == 0


def test_the_filter_keeps_every_original_answer_of_the_sandbox_world():
    """No false positives: the world's own English answers are never called degenerate with the sandbox settings."""
    from cft_utils.sandbox.world import World

    cfg = load_config("sandbox")
    spec = cfg.mitigation.replay.generation
    world = World(load_config("smoke").sandbox.world_spec())
    for name in ("multialpaca_en", "mopenorca_en", "instruct"):
        for r in world.dataset(name):
            assert classify(Generation(r["completion"][0]["content"], True), spec) == "ok", r


class FakeGenerator:
    """Answers by a script keyed on the prompt's record id: ok, empty, truncated or degenerate."""

    def __init__(self, kinds):
        self.kinds, self.calls = kinds, []

    def __call__(self, prompts):
        self.calls.append(len(prompts))
        out = []
        for p in prompts:
            rid = p[-1]["content"].split()[-1]
            kind = self.kinds.get(rid, "ok")
            out.append({"ok": Generation(f"fine answer {rid}", True), "empty": Generation("", True),
                        "truncated": Generation("cut off", False),
                        "degenerate": Generation("x y z " * 5, True)}[kind])
        return out


def test_generate_replay_filters_counts_and_delivers_exactly_n():
    pool = [_rec(f"e{i:02d}") for i in range(20)]
    kinds = {"e00": "empty", "e01": "truncated", "e03": "degenerate", "e04": "truncated", "e06": "empty"}
    gen = FakeGenerator(kinds)
    spec = GenerationSpec(batch_size=4)
    recs, counts = generate_replay(pool, 6, gen, spec, "replay_x")
    assert len(recs) == 6 and all(r["language"] == "en" and r["replay_check"] == "ok" for r in recs)
    assert [r["replay_of"] for r in recs] == ["e02", "e05", "e07", "e08", "e09", "e10"]
    assert recs[0]["completion"][0]["content"] == "fine answer e02" and recs[0]["prompt"] == pool[2]["prompt"]
    assert counts["generated"] == sum(gen.calls) and len(gen.calls) >= 2  # a second round made up the rejects
    assert (counts["empty"], counts["truncated"], counts["degenerate"]) == (2, 2, 1)
    assert counts["ok"] + 5 == counts["generated"] and counts["kept_truncated"] == 0


def test_generate_replay_keeps_truncated_when_asked_and_counts_them():
    pool = [_rec(f"e{i:02d}") for i in range(6)]
    spec = GenerationSpec(batch_size=8, keep_truncated=True)
    recs, counts = generate_replay(pool, 3, FakeGenerator({"e00": "truncated", "e01": "empty"}), spec)
    assert [r["replay_of"] for r in recs] == ["e00", "e02", "e03"]
    assert counts["kept_truncated"] == 1 and counts["empty"] == 1 and recs[0]["replay_check"] == "truncated"


def test_generate_replay_refuses_to_deliver_fewer_than_promised():
    pool = [_rec(f"e{i}") for i in range(4)]
    with pytest.raises(ReplayError, match=r"only 2 of 3 acceptable replay answers from a pool of 4"):
        generate_replay(pool, 3, FakeGenerator({"e0": "degenerate", "e2": "empty"}), GenerationSpec())


def test_english_replay_uses_the_original_answers():
    pool = [_rec(f"e{i}", text=f"orig {i}") for i in range(5)]
    er = english_replay(pool, 3, "er")
    assert [r["completion"][0]["content"] for r in er] == ["orig 0", "orig 1", "orig 2"]
    assert all(r["language"] == "en" for r in er)
    with pytest.raises(ReplayError, match="needs 6 English counterparts but the pool holds 5"):
        english_replay(pool, 6)


def test_hf_generate_batched_left_padded_equals_one_by_one(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tiny_model_dir("llama", seed=3)
    model = AutoModelForCausalLM.from_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)
    prompts = [[{"role": "user", "content": t}] for t in
               ("the cat", "Reverse the list: apple, pear, plum.", "hi", "How many items are in: red, blue?")]
    batched = hf_generate(model, tok, prompts, max_new_tokens=6, batch_size=4, progress=False)
    single = [hf_generate(model, tok, [p], max_new_tokens=6, batch_size=1, progress=False)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.finished for g in batched] == [g.finished for g in single]
    assert tok.padding_side == AutoTokenizer.from_pretrained(d).padding_side  # restored


def test_hf_generate_marks_eos_and_truncation(tiny_tokenizer):
    """A scripted model: row i emits i filler tokens then EOS; with max_new_tokens 3 the long ones are truncated."""
    import torch

    tok = tiny_tokenizer
    eos, filler = tok.eos_token_id, tok.convert_tokens_to_ids(tok.tokenize("cat"))[0]

    class Scripted:
        device = torch.device("cpu")

        def eval(self):
            return self

        def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, eos_token_id, **kw):
            rows = []
            for ids in input_ids:
                n = int((ids != pad_token_id).sum()) % 5  # a per-prompt length
                new = ([filler] * n + [eos] + [pad_token_id] * max_new_tokens)[:max_new_tokens]
                rows.append(torch.cat([ids, torch.tensor(new)]))
            return torch.stack(rows)

    prompts = [[{"role": "user", "content": "x " * k}] for k in range(1, 8)]
    gens = hf_generate(Scripted(), tok, prompts, max_new_tokens=3, batch_size=3, progress=False)
    for p, g in zip(prompts, gens, strict=True):
        enc = tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
        n = len(tok(enc, add_special_tokens=False)["input_ids"]) % 5
        assert g.finished == (n < 3)
        assert g.text == tok.decode([filler] * min(n, 3), skip_special_tokens=True).strip()
