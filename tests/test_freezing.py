"""Layer freezing: LF_H1 / LF_H2 selection, whole-tensor freezing, per-head gradient masking (with weight decay),
the optimizer check, post-run verification and the refusal of unsupported distributed setups."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from cft_utils.mitigation.freeze import (
    FreezePlan,
    FreezingUnsupported,
    apply_freeze,
    check_distributed_support,
    check_optimizer_excludes,
    n_frozen_layers,
    restore_masked_rows,
    select_lf_h1,
    select_lf_h2,
    verify_frozen,
)


def test_layer_counts_and_lf_h1_selection():
    assert n_frozen_layers(32, n_layers=10) == 10
    assert [n_frozen_layers(n, fraction=0.3125) for n in (32, 6, 2)] == [10, 2, 1]
    with pytest.raises(ValueError):
        n_frozen_layers(4, n_layers=5)
    a = select_lf_h1(32, 10, seed=0)
    assert a == select_lf_h1(32, 10, seed=0) and a == sorted(set(a)) and len(a) == 10 and max(a) < 32
    assert any(select_lf_h1(32, 10, seed=s) != a for s in range(1, 4))


# ------------------------------------------------------------------------------------------- LF_H2 ranking


def _write_ckpt(d, tensors):
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(d / "model.safetensors"))
    import json

    (d / "config.json").write_text(json.dumps({"model_type": "llama", "num_attention_heads": 2,
                                               "num_key_value_heads": 2, "hidden_size": 8}))


def test_lf_h2_picks_the_known_layers_per_projection_and_heads(tmp_path):
    """Hand-built base/Phase 1 pairs: per module a different layer order of change (and one changed head)."""
    g = torch.Generator().manual_seed(0)
    base, p1 = {}, {}
    # change magnitude per (module, layer): q favours 3 then 0, k favours 1 then 2, v favours 0 then 3
    scale = {"q_proj": [0.5, 0.1, 0.2, 0.9], "k_proj": [0.1, 0.8, 0.6, 0.2], "v_proj": [0.7, 0.1, 0.2, 0.5]}
    for layer in range(4):
        for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
            name = f"model.layers.{layer}.self_attn.{m}.weight"
            w = torch.randn(8, 8, generator=g)
            base[name] = w
            delta = torch.zeros(8, 8)
            if m != "o_proj":
                delta[:4] = scale[m][layer]  # rows 0-3: head 0 only
            else:
                delta += 5.0  # o_proj changed most of all: must not leak into the q/k/v ranking
            p1[name] = w + delta
    base["model.embed_tokens.weight"] = p1["model.embed_tokens.weight"] = torch.randn(10, 8, generator=g)
    _write_ckpt(tmp_path / "base", base)
    _write_ckpt(tmp_path / "p1", p1)
    plan = select_lf_h2(tmp_path / "base", tmp_path / "p1", k=2)
    ranking, table = plan.modules, pd.DataFrame(plan.details["ranking"])
    assert ranking == {"q_proj": [3, 0], "k_proj": [1, 2], "v_proj": [0, 3]}
    assert set(table["module"]) == {"q_proj", "k_proj", "v_proj"}
    # per head, the same budget: k=1 layer of 2 heads -> the 2 most-changed (layer, head) pairs per module
    heads = select_lf_h2(tmp_path / "base", tmp_path / "p1", k=1, granularity="head").heads
    assert heads == {"q_proj": [(3, 0), (0, 0)], "k_proj": [(1, 0), (2, 0)], "v_proj": [(0, 0), (3, 0)]}


# ------------------------------------------------------------------------------------------- applying a freeze


def _model(tiny_model_dir, **kw):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama", seed=1, num_layers=3, **kw))


def _train(model, steps=4, weight_decay=0.0, report=None, restore=True):
    """A few AdamW steps on random tokens; the optimizer gets only tensors that require grad (as the Trainer)."""
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=weight_decay)
    model.train()
    for _ in range(steps):
        ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=g)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if report is not None and restore:
            restore_masked_rows(model, report)
        opt.zero_grad()
    return opt


def test_frozen_tensors_stay_bit_identical_and_the_optimizer_never_sees_them(tiny_model_dir):
    model = _model(tiny_model_dir)
    plan = FreezePlan("LF_H2", modules={"q_proj": [0, 2], "k_proj": [1], "v_proj": [2]})
    rep = apply_freeze(model, plan)
    assert sorted(rep.frozen) == sorted([
        "model.layers.0.self_attn.q_proj.weight", "model.layers.2.self_attn.q_proj.weight",
        "model.layers.1.self_attn.k_proj.weight", "model.layers.2.self_attn.v_proj.weight"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = _train(model, weight_decay=0.1)
    after = dict(model.named_parameters())
    for n in rep.frozen:
        assert torch.equal(before[n], after[n]), n
        assert after[n].grad is None
    moved = [n for n in before if n not in rep.frozen and not torch.equal(before[n], after[n].detach())]
    assert "model.layers.0.self_attn.k_proj.weight" in moved and len(moved) > 10
    counts = check_optimizer_excludes(opt, model, rep.frozen)
    assert counts["optimizer_tensors"] == len(before) - 4 and counts["optimizer_tensors_with_state"] == len(before) - 4
    # an optimizer that does hold a frozen tensor is caught
    bad = torch.optim.AdamW(model.parameters())
    with pytest.raises(RuntimeError, match="holds 4 frozen tensor"):
        check_optimizer_excludes(bad, model, rep.frozen)


def test_lf_h1_block_freezes_the_whole_decoder_layer(tiny_model_dir):
    model = _model(tiny_model_dir)
    rep = apply_freeze(model, FreezePlan("LF_H1", blocks=[1]))
    assert rep.frozen and all(".layers.1." in n for n in rep.frozen)
    n_block = sum(p.numel() for n, p in model.named_parameters() if ".layers.1." in n)
    assert rep.n_frozen_params == n_block
    with pytest.raises(ValueError, match=r"layer\(s\) \[7\] do not exist"):
        apply_freeze(_model(tiny_model_dir), FreezePlan("LF_H1", blocks=[7]))


def test_head_masking_keeps_rows_identical_even_with_weight_decay(tiny_model_dir):
    model = _model(tiny_model_dir)  # hidden 32, 2 heads: head_dim 16
    plan = FreezePlan("LF_H2-head", heads={"q_proj": [(0, 1)], "v_proj": [(2, 0)]})
    rep = apply_freeze(model, plan)
    assert rep.masked == {"model.layers.0.self_attn.q_proj.weight": [(16, 32)],
                          "model.layers.2.self_attn.v_proj.weight": [(0, 16)]}
    assert rep.n_masked_params == 2 * 16 * 32 and not rep.frozen
    q0 = "model.layers.0.self_attn.q_proj.weight"
    v2 = "model.layers.2.self_attn.v_proj.weight"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model, weight_decay=0.1, report=rep)
    p = dict(model.named_parameters())
    assert torch.equal(p[q0][16:], before[q0][16:]) and torch.equal(p[v2][:16], before[v2][:16])
    assert not torch.equal(p[q0][:16], before[q0][:16]) and not torch.equal(p[v2][16:], before[v2][16:])
    # the hook zeroes the masked rows' gradient (and only theirs): one more backward pass, no zero_grad after it
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    model(input_ids=ids, labels=ids).loss.backward()
    assert p[q0].grad is not None and p[v2].grad is not None
    assert torch.all(p[q0].grad[16:] == 0) and torch.all(p[v2].grad[:16] == 0)
    assert p[q0].grad[:16].abs().sum() > 0 and p[v2].grad[16:].abs().sum() > 0


def test_without_the_write_back_weight_decay_moves_masked_rows(tiny_model_dir):
    """Why FreezeCallback restores rows: the gradient hook alone leaves AdamW's decoupled weight decay."""
    model = _model(tiny_model_dir)
    rep = apply_freeze(model, FreezePlan("LF_H2-head", heads={"q_proj": [(0, 1)]}))
    q0 = "model.layers.0.self_attn.q_proj.weight"
    before = dict(model.named_parameters())[q0].detach().clone()
    _train(model, weight_decay=0.1, report=rep, restore=False)
    after = dict(model.named_parameters())[q0].detach()
    assert not torch.equal(after[16:], before[16:])
    torch.testing.assert_close(after[16:], before[16:] * (1 - 1e-2 * 0.1) ** 4, rtol=1e-5, atol=1e-7)
    model2 = _model(tiny_model_dir)
    rep2 = apply_freeze(model2, FreezePlan("LF_H2-head", heads={"q_proj": [(0, 1)]}))
    _train(model2, weight_decay=0.0, report=rep2, restore=False)  # no decay: the hook alone suffices
    assert torch.equal(dict(model2.named_parameters())[q0].detach()[16:], before[16:])


def test_verify_frozen_streams_checkpoints_and_finds_a_changed_tensor(tmp_path):
    a = {"model.layers.0.self_attn.q_proj.weight": torch.ones(4, 4), "model.layers.1.mlp.up_proj.weight": torch.ones(4, 4)}
    b = {k: v.clone() for k, v in a.items()}
    b["model.layers.1.mlp.up_proj.weight"][3, 0] = 2.0
    _write_ckpt(tmp_path / "a", a)
    _write_ckpt(tmp_path / "b", b)
    ok = verify_frozen(tmp_path / "a", tmp_path / "b", {"frozen": ["model.layers.0.self_attn.q_proj.weight"],
                                                        "masked": {"model.layers.1.mlp.up_proj.weight": [[0, 3]]}})
    assert ok["bit_identical"] and ok["frozen_tensors_checked"] == 1 and ok["masked_rows_checked"] == 3
    bad = verify_frozen(tmp_path / "a", tmp_path / "b", {"frozen": [], "masked": {
        "model.layers.1.mlp.up_proj.weight": [[2, 4]]}})
    assert not bad["bit_identical"] and bad["differ"] == ["model.layers.1.mlp.up_proj.weight[2:4]"]


# ------------------------------------------------------------------------------------------- distributed


@pytest.mark.parametrize("dtype,env,heads,error", [
    ("NO", {}, True, None),
    ("MULTI_GPU", {}, True, None),
    ("DistributedType.DEEPSPEED", {}, False, "DeepSpeed ZeRO is not supported"),
    ("NO", {"ACCELERATE_USE_DEEPSPEED": "true"}, False, "DeepSpeed ZeRO is not supported"),
    ("FSDP", {"FSDP_USE_ORIG_PARAMS": "false"}, False, "use_orig_params: true"),
    ("FSDP", {"FSDP_USE_ORIG_PARAMS": "true"}, False, None),
    ("NO", {"ACCELERATE_USE_FSDP": "true", "FSDP_USE_ORIG_PARAMS": "true"}, True, "per-head gradient masking"),
])
def test_distributed_support(dtype, env, heads, error):
    plan = FreezePlan("LF_H2", modules={"q_proj": [0]}, heads={"q_proj": [(0, 0)]} if heads else {})
    if error is None:
        check_distributed_support(plan, dtype, env)
    else:
        with pytest.raises(FreezingUnsupported, match=error):
            check_distributed_support(plan, dtype, env)


def test_refusal_reads_the_accelerate_launch_environment(monkeypatch):
    """As under `accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml` (deepspeed is not
    installed here, so the launch variables are faked)."""
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(FreezingUnsupported, match="LF_H1: layer freezing under DeepSpeed"):
        check_distributed_support(FreezePlan("LF_H1", blocks=[0]))
