"""A CPU rehearsal of the paper path (params/paper-mini.yaml): the paper profile's loaders, chat-template settings,
evaluation tasks and mitigation settings on tiny random stand-ins of its model families, built here offline.

The models carry their families' real special tokens and chat templates (tests/fixtures/families.py) over a small
BPE trained on the fixtures: a template-less LLaMA-3 base (eos <|end_of_text|>) and Mistral base trained on the
Alpaca template, a Qwen2 base with its own ChatML template; Instruct siblings with their own templates (Mistral
v0.1's without a system role). The LLaMA-3 Instruct stand-in is scripted to answer one word and end its turn with
<|eot_id|>, which its tokenizer's eos (<|end_of_text|>, as in the model's first release) and generation config do
not name: generative replay keeps its answers only if generation stops at the template's end of turn.
DES runs through sentence-transformers on a tiny BERT saved in LaBSE's folder layout.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from fixtures.families import LLAMA3_TEMPLATE, MISTRAL_V01_TEMPLATE, build_family_model, family_tokenizer

from cft_utils.config import load_config
from cft_utils.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).parent / "fixtures"
TIMES: dict[str, float] = {}


def scripted_instruct(out: Path, word: str = "yes") -> tuple[Path, str]:
    """A LLaMA-3 Instruct stand-in that answers ``word`` and ends its turn: a bigram model (attention and MLP
    outputs zeroed) whose embedding marks "the last token was the word"; the head maps that to <|eot_id|> and
    anything else to the word. Tokenizer eos <|end_of_text|>, generation config eos [<|end_of_text|>] only."""
    import torch
    from transformers import GenerationConfig

    from cft_utils.sandbox.tiny import build_causal_lm, save_model

    tok = family_tokenizer("llama3", "base")
    tok.chat_template = LLAMA3_TEMPLATE
    model = build_causal_lm(tok, arch="llama", hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                            tie_word_embeddings=False, max_position_embeddings=1024, seed=5)
    w = tok(word, add_special_tokens=False).input_ids[0]
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb.zero_()
        emb[:, 1] = 1.0
        emb[w, 1], emb[w, 0] = 0.0, 1.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        model.lm_head.weight[eot, 0] = 10.0
        model.lm_head.weight[w, 1] = 10.0
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    save_model(model, tok, out)
    return out, tok.decode([w])


def labse_layout_encoder(out: Path) -> Path:
    """A tiny BERT in LaBSE's sentence-transformers layout: the transformer at the root, 1_Pooling (CLS),
    2_Dense (tanh), 3_Normalize, modules.json."""
    import torch
    from fixtures.families import fixture_texts
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=False)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.train_from_iterator(fixture_texts(), trainers.WordPieceTrainer(
        vocab_size=600, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    tok = BertTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]")
    bert_dir = out / "_bert"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(bert_dir)
    tok.save_pretrained(bert_dir)
    modules = [Transformer(str(bert_dir), max_seq_length=64), Pooling(32, pooling_mode="cls"),
               Dense(32, 32, activation_function=torch.nn.Tanh()), Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(str(out / "labse-tiny"))
    return out / "labse-tiny"


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    t0 = time.time()
    root = tmp_path_factory.mktemp("paper-mini")
    llama_instruct, word = scripted_instruct(root / "llama3-instruct")
    dirs = {
        "models.0.base": build_family_model(root / "llama3-base", "llama3", "base"),
        "models.0.instruct": llama_instruct,
        "models.1.base": build_family_model(root / "mistral-base", "mistral", "base", seed=1),
        "models.1.instruct": build_family_model(root / "mistral-instruct", "mistral", "instruct", seed=2),
        "models.2.base": build_family_model(root / "qwen2-base", "qwen2", "base", seed=3),
        "models.2.instruct": build_family_model(root / "qwen2-instruct", "qwen2", "instruct", seed=4),
        "analysis.des.encoder": labse_layout_encoder(root),
    }
    cfg = load_config("paper-mini", {k: str(v) for k, v in dirs.items()})
    TIMES["build models"] = time.time() - t0
    return cfg, root, word


def test_paper_mini_rehearsal(mini, monkeypatch):
    from cft_utils.data.loaders import load_records
    from cft_utils.mitigation.execute import execute_mitigations
    from cft_utils.mitigation.plan import plan_mitigations
    from cft_utils.models import load_tokenizer
    from cft_utils.plan import check_chat_templates, plan_runs
    from cft_utils.train import execute

    cfg, root, word = mini
    monkeypatch.setenv("CFT_HOME", str(root / "home"))
    monkeypatch.setenv("CFT_TOKENIZED_CACHE", "0")

    # --- Phase 1 (template-less bases on the Alpaca template) and Phase 2 --------------------------------------
    t0 = time.time()
    plan = plan_runs(cfg)
    check_chat_templates(cfg, plan.all())
    for run in plan.all():
        execute(run, cfg, quiet=True)
    TIMES["phase 1 + 2 (9 runs)"] = time.time() - t0
    alpaca = (PROJECT_ROOT / "configs/chat_templates/alpaca.jinja").read_text()
    for m in ("LLaMA-3-tiny", "Mistral-tiny"):
        p1 = plan.get(f"phase1/{m}/alpaca")
        assert (p1.model_dir / "chat_template.jinja").read_text() == alpaca
        p2 = plan.get(f"phase2/{m}/alpaca->multialpaca")  # Phase 2 keeps the template Phase 1 saved
        assert (p2.model_dir / "chat_template.jinja").read_text() == alpaca
    mistral_c6 = plan.get("phase2/Mistral-tiny/Instruct->mopenorca")
    summary = json.loads((mistral_c6.dir / "summary.json").read_text())
    n_system = sum(any(m["role"] == "system" for m in r["prompt"]) for r in load_records(cfg, "mopenorca"))
    assert summary["system_prompts_merged"] == n_system > 0
    assert (mistral_c6.model_dir / "chat_template.jinja").read_text() == MISTRAL_V01_TEMPLATE
    qwen_p1 = plan.get("phase1/Qwen2-tiny/alpaca")
    gen = json.loads((qwen_p1.model_dir / "generation_config.json").read_text())
    qtok = load_tokenizer(qwen_p1.model_dir)
    assert qtok.convert_tokens_to_ids("<|im_end|>") in gen["eos_token_id"]

    # --- mitigations on the LLaMA-3 cell: GR_5, LF_H2, LoRA --------------------------------------------------
    t0 = time.time()
    mit = plan_mitigations(cfg, plan)
    assert sorted(r.variant.label for r in mit) == ["GR_5", "LF_H2", "LoRA"]
    execute_mitigations(mit, cfg, progress=False)
    TIMES["mitigations (GR_5, LF_H2, LoRA)"] = time.time() - t0
    info = {r.variant.label: json.loads((r.dir / "mitigation.json").read_text()) for r in mit}
    # GR_5: 5 % of 20 records; every answer ended at <|eot_id|> (none truncated, so none dropped)
    gr = info["GR_5"]["replay"]
    assert gr["n_replay"] == 1 and gr["counts"]["truncated"] == 0 and gr["counts"]["ok"] == gr["counts"]["generated"]
    from datasets import load_from_disk

    (rec,) = load_from_disk(gr["replay_path"])
    assert rec["completion"][0]["content"] == word.strip() and rec["replay_check"] == "ok"
    assert info["LF_H2"]["verification"]["bit_identical"] and len(info["LF_H2"]["frozen_tensors"]) == 3
    lora = next(r for r in mit if r.variant.label == "LoRA")
    assert lora.done() and any(lora.model_dir.glob("*.safetensors"))

    # --- evaluation: IFEval, MMLU (subject CSV folder), XQuAD and MLQA (SQuAD JSON) ------------------------------
    from cft_utils.evaluation.runner import cache_path, evaluate_checkpoint, jobs_for

    t0 = time.time()
    target = plan.get("phase2/LLaMA-3-tiny/alpaca->multialpaca")
    jobs = jobs_for(cfg)
    evaluate_checkpoint(cfg, target, jobs)
    TIMES["evaluation (IFEval, MMLU x57, MLQA, XQuAD)"] = time.time() - t0
    for job in jobs:
        cached = json.loads(cache_path(target, job.task, job.limit).read_text())
        assert cached, job.task

    # --- MPD, geometry, DES ----------------------------------------------------------------------------------
    from cft_utils.analysis.des import des
    from cft_utils.analysis.encoders import profile_encoder
    from cft_utils.analysis.geometry.capture import layer_mean_activations
    from cft_utils.analysis.mpd import mpd_table
    from cft_utils.plan import base_model_source

    t0 = time.time()
    base = base_model_source(cfg, "LLaMA-3-tiny")
    table = mpd_table(base, {"P1": plan.get("phase1/LLaMA-3-tiny/alpaca").model_dir, "P2": target.model_dir},
                      plan.get("phase1/LLaMA-3-tiny/alpaca").model_dir)
    assert len(table) >= 2
    prompts = [r["prompt"][-1]["content"] for r in load_records(cfg, "multialpaca")[:4]]
    means = {name: layer_mean_activations(d, load_tokenizer(d), prompts, batch_size=4)
             for name, d in {"base": base, "P2": target.model_dir}.items()}
    assert means["base"].shape == means["P2"].shape and np.isfinite(means["P2"]).all()
    encoder, label = profile_encoder(cfg)
    assert [type(m).__name__ for m in encoder] == ["Transformer", "Pooling", "Dense", "Normalize"]
    result = des(load_records(cfg, "alpaca"), load_records(cfg, "multialpaca"), encoder, n=8, n_boot=50)
    assert -1.0 <= float(result.des) <= 1.0
    TIMES["MPD, geometry, DES"] = time.time() - t0
    print("\npaper-mini timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in TIMES.items()))
