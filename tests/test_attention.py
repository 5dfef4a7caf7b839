"""``sdpa_packed``: per-sequence attention for padding-free batches (cft_utils.attention)."""

import pytest

torch = pytest.importorskip("torch")


def _packed_batch(lengths, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (1, sum(lengths)), generator=g)
    pos = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    return ids, pos


@pytest.mark.parametrize("arch,kv_heads", [("llama", None), ("qwen2", 1)])
def test_packed_attention_matches_the_masked_sdpa_row_and_each_sequence_alone(tiny_model_dir, arch, kv_heads):
    """Logits and gradients of a packed row equal transformers' masked ``sdpa`` on the same row (float tolerance),
    and each sequence's logits equal those of the sequence run alone: no attention across sequences."""
    from transformers import AutoModelForCausalLM

    from cft_utils.attention import NAME, training_attention

    kw = {"num_kv_heads": kv_heads, "num_heads": 2} if kv_heads else {}
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(arch, seed=3, **kw), dtype=torch.float32)
    model.train()  # dropout is 0 in these configs; the training path is what is replaced
    lengths = [7, 1, 12, 5]
    ids, pos = _packed_batch(lengths, model.config.vocab_size)

    def run(impl):
        model.zero_grad()
        with training_attention(model, impl):
            assert model.config._attn_implementation == (impl or "sdpa")
            out = model(input_ids=ids, position_ids=pos, labels=ids, use_cache=False)
        out.loss.backward()
        return out.logits.detach(), [p.grad.clone() for p in model.parameters()]

    ref_logits, ref_grads = run("sdpa")
    logits, grads = run(NAME)
    assert model.config._attn_implementation == "sdpa"  # restored after the block
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-5)
    start = 0
    with torch.no_grad():
        for n in lengths:
            alone = model(input_ids=ids[:, start:start + n], use_cache=False).logits
            torch.testing.assert_close(logits[:, start:start + n], alone, rtol=1e-4, atol=1e-5)
            start += n


def test_rows_that_are_not_packed_go_to_sdpa_unchanged(tiny_model_dir):
    """A padded batch (several rows, an attention mask) and a plain row give exactly transformers' sdpa result."""
    from transformers import AutoModelForCausalLM

    from cft_utils.attention import NAME, training_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama", seed=4), dtype=torch.float32)
    ids = torch.randint(5, model.config.vocab_size, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding, as in batched generation
    pad = model.config.pad_token_id
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        ref_gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=pad)
        with training_attention(model, NAME):
            got = model(input_ids=ids, attention_mask=mask).logits
            got_gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                                     pad_token_id=pad)
    assert torch.equal(got, ref) and torch.equal(got_gen, ref_gen)


def test_the_setting_needs_padding_free_and_leaves_default_run_ids_alone():
    from cft_utils.config import load_config
    from cft_utils.plan import plan_runs

    with pytest.raises(ValueError, match="sdpa_packed .* needs padding_free: true"):
        load_config("smoke", {"training.attn_implementation": "sdpa_packed", "training.padding_free": False})
    default = {r.name: r.run_id for r in plan_runs(load_config("smoke")).phase1}
    packed = {r.name: r.run_id for r in plan_runs(load_config("smoke", {"training.padding_free": True,
                                                                      "training.attn_implementation": "sdpa_packed"})).phase1}
    free = {r.name: r.run_id for r in plan_runs(load_config("smoke", {"training.padding_free": True})).phase1}
    assert default.keys() == packed.keys() and not set(packed.values()) & set(free.values())  # results differ
    assert default == {r.name: r.run_id for r in plan_runs(load_config("smoke", {"training.attn_implementation": None})).phase1}
