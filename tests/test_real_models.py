"""The paper profile on real model families (issue 11): run identity from model content, chat templates as
configuration, system prompts on templates without a system role, stop tokens, fused projections, LoRA targets.

Tokenizers here carry the real families' special tokens and chat templates (``tests/fixtures/families.py``);
models are tiny and random. No hub, no network.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from fixtures.families import LLAMA3_TEMPLATE, MISTRAL_V01_TEMPLATE

from cft_utils.config import ConfigError, load_config
from cft_utils.paths import PROJECT_ROOT
from cft_utils.plan import check_chat_templates, plan_runs


def _tiny_folder(tmp_path, name, seed=0):
    from cft_utils.sandbox.tiny import build_causal_lm, save_model, train_bpe_tokenizer

    tok = train_bpe_tokenizer(["a small world of words and more words"] * 20, vocab_size=300, min_frequency=1)
    return save_model(build_causal_lm(tok, hidden_size=16, num_layers=1, num_heads=2, seed=seed), tok,
                      tmp_path / name)


def test_a_model_folder_changed_in_place_gets_new_run_ids(tmp_path):
    base = _tiny_folder(tmp_path, "base")
    other = _tiny_folder(tmp_path, "other")

    def ids():
        cfg = load_config("paper", {"models.0.base": str(base), "models.1.base": str(other)})
        return {r.name: r.run_id for r in plan_runs(cfg).all() if r.model == "Mistral-7B"}

    first = ids()
    assert ids() == first  # unchanged folder: same ids (finished runs are reused)
    # other weights of the same shapes, written over the folder (a re-download, a re-export)
    from transformers import AutoTokenizer

    from cft_utils.sandbox.tiny import build_causal_lm

    tok = AutoTokenizer.from_pretrained(base)
    build_causal_lm(tok, hidden_size=16, num_layers=1, num_heads=2, seed=1).save_pretrained(base)
    second = ids()
    trained = [n for n in first if n.startswith(("phase1/Mistral-7B/alpaca", "phase2/Mistral-7B/alpaca"))]
    assert trained and all(second[n] != first[n] for n in trained)
    # another chat template in the same folder
    (base / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    third = ids()
    assert all(third[n] != second[n] for n in trained)


# ------------------------------------------------------------------ profiles over local family stand-ins

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """Factory: ``family_dirs("llama3", "base")`` -> a saved tiny model of that family (built once per module)."""
    from fixtures.families import build_family_model

    cache = {}

    def make(family: str, kind: str = "base") -> Path:
        if (family, kind) not in cache:
            cache[family, kind] = build_family_model(tmp_path_factory.mktemp(f"{family}-{kind}"), family, kind)
        return cache[family, kind]

    return make


def write_profile(tmp_path, models: list[dict], phase1=("alpaca",), phase2=(), **extra) -> Path:
    """A minimal parameter file over the fixtures: Alpaca JSON and OpenOrca records, tiny training."""
    prof = {
        "profile": "realmodels", "seed": 3, "models": models,
        "datasets": {"alpaca": {"source": "alpaca", "path": str(FIXTURES / "alpaca_sample.json")},
                     "openorca": {"source": "openorca", "path": str(FIXTURES / "openorca_sample.jsonl")}},
        "grid": {"models": [m["name"] for m in models], "phase1": list(phase1),
                 "phase2": [{"phase1": a, "data": b} for a, b in phase2]},
        "training": {"epochs": 1, "learning_rate": 1e-3, "global_batch_size": 2, "per_device_batch_size": 2,
                     "gradient_accumulation_steps": 1, "num_processes": 1, "warmup_steps": 0, "max_length": 512,
                     "logging_steps": 1, "save_steps": 100, "num_threads": 1, "precision": "fp32"},
        **extra,
    }
    f = tmp_path / "realmodels.yaml"
    f.write_text(yaml.safe_dump(prof, sort_keys=False))
    return f


def test_a_base_model_without_template_fails_before_weights_load_naming_model_and_setting(
        tmp_path, monkeypatch, family_dirs):
    from cft_utils import train
    from cft_utils.models import ChatTemplateError

    monkeypatch.setenv("CFT_HOME", str(tmp_path / "home"))
    cfg = load_config(write_profile(tmp_path, [{"name": "LLaMA-3-tiny", "base": str(family_dirs("llama3"))}]))
    monkeypatch.setattr(train, "load_model", lambda *a, **k: pytest.fail("weights loaded before the template check"))
    run = plan_runs(cfg).phase1[0]
    with pytest.raises(ChatTemplateError, match=r"LLaMA-3-tiny.*chat_template: 'tokenizer'"):
        train.execute(run, cfg)
    # the whole grid can be checked up front too
    with pytest.raises(ChatTemplateError, match="LLaMA-3-tiny"):
        check_chat_templates(cfg)


def test_template_settings_are_checked_when_the_profile_loads(tmp_path, family_dirs):
    base = str(family_dirs("llama3"))
    with pytest.raises(ConfigError, match=r"models\.0\.chat_template: 'instruct' but model"):
        load_config(write_profile(tmp_path, [{"name": "m", "base": base, "chat_template": "instruct"}]))
    with pytest.raises(ConfigError, match=r"models\.0\.chat_template: 'nope\.jinja'"):
        load_config(write_profile(tmp_path, [{"name": "m", "base": base, "chat_template": "nope.jinja"}]))


def test_phase1_from_a_base_model_trains_with_the_configured_template_and_saves_it(
        tmp_path, monkeypatch, family_dirs):
    """LLaMA-3 base (eos <|end_of_text|>) trained on the Instruct sibling's template: the checkpoint carries the
    template and stops at <|eot_id|>; the Alpaca template file works the same way for Mistral's base."""
    from cft_utils.models import load_tokenizer, stop_token_ids
    from cft_utils.train import execute

    monkeypatch.setenv("CFT_HOME", str(tmp_path / "home"))
    models = [{"name": "LLaMA-3-tiny", "base": str(family_dirs("llama3")), "instruct": str(family_dirs("llama3", "instruct")),
               "chat_template": "instruct"},
              {"name": "Mistral-tiny", "base": str(family_dirs("mistral")),
               "chat_template": "configs/chat_templates/alpaca.jinja"}]
    cfg = load_config(write_profile(tmp_path, models))
    plan = plan_runs(cfg)
    llama, mistral = plan.get("phase1/LLaMA-3-tiny/alpaca"), plan.get("phase1/Mistral-tiny/alpaca")
    out = execute(llama, cfg, quiet=True)
    assert (out / "chat_template.jinja").read_text() == LLAMA3_TEMPLATE
    tok = load_tokenizer(out)
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    gen = json.loads((out / "generation_config.json").read_text())
    assert eot in gen["eos_token_id"] and tok.eos_token_id in gen["eos_token_id"]
    assert eot in stop_token_ids(tok)  # from the saved template alone
    out = execute(mistral, cfg, quiet=True)
    alpaca = (PROJECT_ROOT / "configs/chat_templates/alpaca.jinja").read_text()
    assert (out / "chat_template.jinja").read_text() == alpaca
    text = load_tokenizer(out).apply_chat_template([{"role": "user", "content": "Name a colour."}], tokenize=False,
                                                   add_generation_prompt=True)
    assert text.endswith("### Instruction:\nName a colour.\n\n### Response:\n")
    # the setting is part of the run's identity
    other = load_config(write_profile(tmp_path, [{**models[1], "chat_template": "tokenizer"}]))
    assert plan_runs(other).get("phase1/Mistral-tiny/alpaca").run_id != mistral.run_id


def test_system_prompts_are_merged_on_a_template_without_system_role(family_dirs):
    from cft_utils.models import fit_messages, generate, load_model, load_tokenizer, supports_system_role

    d = family_dirs("mistral", "instruct")
    tok, model = load_tokenizer(d), load_model(d)
    msgs = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Is 17 prime?"}]
    with pytest.raises(Exception, match="Conversation roles must alternate"):
        tok.apply_chat_template(msgs, tokenize=False)
    assert not supports_system_role(tok) and supports_system_role(load_tokenizer(family_dirs("llama3", "instruct")))
    assert fit_messages(tok, msgs) == [{"role": "user", "content": "Answer briefly.\n\nIs 17 prime?"}]
    out = generate(model, tok, [msgs, msgs[1:]], max_new_tokens=3, batch_size=2)
    assert len(out) == 2


def test_phase2_from_mistral_instruct_on_openorca_with_system_prompts(tmp_path, monkeypatch, family_dirs):
    """The paper's Table C6 cell: Instruct -> OpenOrca-format records (system prompt + question)."""
    from cft_utils.train import execute

    monkeypatch.setenv("CFT_HOME", str(tmp_path / "home"))
    models = [{"name": "Mistral-tiny", "base": str(family_dirs("mistral")), "instruct": str(family_dirs("mistral", "instruct"))}]
    cfg = load_config(write_profile(tmp_path, models, phase1=(), phase2=[("Instruct", "openorca")]))
    run = plan_runs(cfg).phase2[0]
    execute(run, cfg, quiet=True)
    summary = json.loads((run.dir / "summary.json").read_text())
    n_system = sum(1 for line in (FIXTURES / "openorca_sample.jsonl").read_text().splitlines()
                   if json.loads(line)["system_prompt"].strip())
    assert summary["system_prompts_merged"] == n_system >= 1
    assert (run.model_dir / "chat_template.jinja").read_text() == MISTRAL_V01_TEMPLATE


# ------------------------------------------------------------------ stop tokens


def scripted(model, tokenizer, text_before: str, text_after: str):
    """Make ``model`` emit ``text_before``, then the template's end-of-turn token, then ``text_after`` (a fake
    next turn) whatever the prompt: its lm_head output is overwritten step by step. Returns the end-of-turn id."""
    import torch

    from cft_utils.models import end_of_turn_token

    eot = tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer))
    seq = tokenizer(text_before, add_special_tokens=False).input_ids + [eot]
    seq += tokenizer(text_after, add_special_tokens=False).input_ids * 8
    calls = {"n": 0}

    def hook(module, args, out):
        step = calls["n"]
        calls["n"] += 1
        logits = torch.zeros_like(out)
        logits[..., seq[min(step, len(seq) - 1)]] = 30.0
        return logits

    model.lm_head.register_forward_hook(hook)
    model.reset_script = lambda: calls.update(n=0)
    return eot


# LLaMA-3 base on its Instruct template: eos <|end_of_text|>, end of turn <|eot_id|>; Qwen2 base: <|endoftext|>
# vs <|im_end|>. The base model's generation config knows only the eos.
STOP_CASES = [("llama3", LLAMA3_TEMPLATE, "<|end_of_text|>", "<|eot_id|>"),
              ("qwen2", None, "<|endoftext|>", "<|im_end|>")]


@pytest.fixture(params=STOP_CASES, ids=[c[0] for c in STOP_CASES])
def base_on_chat_template(request, family_dirs):
    from cft_utils.models import load_model, load_tokenizer, stop_token_ids

    family, template, eos, eot_token = request.param
    d = family_dirs(family)
    tok = load_tokenizer(d, chat_template=template)
    model = load_model(d)
    assert tok.eos_token == eos and model.generation_config.eos_token_id == tok.convert_tokens_to_ids(eos)
    eot = scripted(model, tok, "Hi there", "user more words")
    assert tok.convert_ids_to_tokens(eot) == eot_token and eot in stop_token_ids(tok, model)
    return d, tok, model, eot


def test_replay_generation_stops_at_the_end_of_turn(base_on_chat_template):
    from cft_utils.models import generate

    _, tok, model, _ = base_on_chat_template
    (g,) = generate(model, tok, [[{"role": "user", "content": "Say hi."}]], max_new_tokens=12, batch_size=1)
    assert g.finished and g.text == "Hi there"


def test_lm_eval_generation_stops_at_the_end_of_turn(base_on_chat_template, monkeypatch):
    from lm_eval.api.instance import Instance

    from cft_utils.evaluation import runner

    d, tok, model, eot = base_on_chat_template
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: model)
    monkeypatch.setattr(runner, "load_tokenizer", lambda *a, **k: tok)
    lm = runner.make_lm(load_config("smoke"), d, batch_size=1)
    model.reset_script()
    context = tok.apply_chat_template([{"role": "user", "content": "Say hi."}], tokenize=False,
                                      add_generation_prompt=True)
    req = Instance(request_type="generate_until", doc={}, idx=0,
                   arguments=(context, {"until": ["\n\n"], "max_gen_toks": 12, "do_sample": False}))
    assert lm.generate_until([req]) == ["Hi there"]
    assert eot in lm.model.generation_config.eos_token_id


def test_translator_generation_stops_at_the_end_of_turn(base_on_chat_template):
    from cft_utils.data.translation.translators import TransformersTranslator

    d, tok, model, _ = base_on_chat_template
    tr = TransformersTranslator(d, model=model, tokenizer=tok, code_scheme="prompt", max_new_tokens=12, batch_size=1)
    model.reset_script()
    assert tr.translate_batch(["Hello."], "en", "es") == ["Hi there"]


def test_a_checkpoint_trained_from_a_base_records_the_end_of_turn(tmp_path, family_dirs):
    from cft_utils.models import load_tokenizer, record_stop_tokens

    d = family_dirs("qwen2")
    tok = load_tokenizer(d)
    out = tmp_path / "ckpt"
    tok.save_pretrained(out)
    ids = record_stop_tokens(out, tok)
    gen = json.loads((out / "generation_config.json").read_text())
    assert set(gen["eos_token_id"]) == set(ids) == {tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")}


def test_the_local_judge_keeps_its_system_prompt_on_a_template_without_system_role(family_dirs):
    from cft_utils.evaluation.judge import TransformersJudge
    from cft_utils.models import load_model, load_tokenizer

    d = family_dirs("mistral", "instruct")
    judge = TransformersJudge(load_model(d), load_tokenizer(d), system_prompt="You compare two answers.")
    text = judge._prompt_text("Which is better?")
    assert text.startswith("<s>[INST] You compare two answers.\n\nWhich is better? [/INST]")


# ------------------------------------------------------------------ real data layouts


def test_mmlu_from_the_original_subject_csv_folder(tmp_path):
    """57 header-less <subject>_test.csv / _dev.csv files with letter answers -> lm-eval's mmlu group."""
    import lm_eval.tasks

    from cft_utils.evaluation.tasks.manager import task_manager

    mmlu_dir = Path(lm_eval.tasks.__file__).parent / "mmlu" / "default"
    tm = task_manager(include=[mmlu_dir], local_data={"mmlu": FIXTURES / "mmlu"}, workdir=tmp_path / "tasks",
                      include_defaults=False)
    loaded = tm.load("mmlu")
    tasks = {k: v for k, v in loaded["tasks"].items()}
    assert len(tasks) == 57
    task = tasks["mmlu_anatomy"]
    (doc,) = list(task.eval_docs)
    (row,) = csv.reader(open(FIXTURES / "mmlu/data/test/anatomy_test.csv", encoding="utf-8", newline=""))
    assert task.doc_to_text(doc).startswith(row[0]) and task.doc_to_target(doc) == "ABCD".index(row[5])
    assert len(list(task.fewshot_docs())) == 1  # the dev split
    # a folder without one of the group's subjects is an error naming it
    partial = tmp_path / "partial"
    for f in (FIXTURES / "mmlu/data/test").glob("a*_test.csv"):
        (partial / f.name).parent.mkdir(parents=True, exist_ok=True)
        (partial / f.name).write_bytes(f.read_bytes())
    with pytest.raises(FileNotFoundError, match="mmlu_anatomy|lacks the CSV files"):
        task_manager(include=[mmlu_dir], local_data={"mmlu": partial}, workdir=tmp_path / "t2",
                     include_defaults=False)


def test_paper_profile_uses_project_mlqa_tasks():
    """lm-eval's mlqa_* read facebook/mlqa, which has a loading script: datasets 5 cannot load it."""
    cfg = load_config("paper")
    assert set(cfg.evaluation.benchmarks["MLQA"].tasks.values()) == {f"cft_mlqa_{lang}" for lang in
                                                                    ("ar", "de", "es", "hi", "vi", "zh")}


# ------------------------------------------------------------------ fused projections and LoRA targets


def _phi3(tmp_path, name, seed, tok=None):
    """A tiny Phi-3-shaped model (fused qkv_proj and gate_up_proj; grouped-query attention) saved to a folder."""
    import torch
    from transformers import AutoModelForCausalLM, Phi3Config

    torch.manual_seed(seed)
    cfg = Phi3Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                     pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(tmp_path / name)
    return model, tmp_path / name


def test_fused_qkv_is_ranked_per_part_and_per_head(tmp_path):
    import torch

    from cft_utils.checkpoints import parameter_difference, rank_heads, rank_layers

    base, bdir = _phi3(tmp_path, "base", 0)
    with torch.no_grad():  # Phase 1 moved layer 2's k rows most, layer 1's q rows most
        base.model.layers[2].self_attn.qkv_proj.weight[32:40] += 1.0  # k: rows 32..47 (2 kv heads x 8)
        base.model.layers[1].self_attn.qkv_proj.weight[8:16] += 1.0  # q head 1
    base.save_pretrained(tmp_path / "p1")
    diff = parameter_difference(bdir, tmp_path / "p1")
    ranking, table = rank_layers(diff, top_k=1)
    assert ranking["q_proj"] == [1] and ranking["k_proj"] == [2]
    heads, _ = rank_heads(diff, top_k=1)
    assert heads["q_proj"] == [(1, 1)] and heads["k_proj"] == [(2, 0)]
    fused = diff.tensors[diff.tensors["note"].astype(str).str.contains("qkv_proj")]
    assert set(fused["module"]) == {"q_proj", "k_proj", "v_proj"}
    # MPD totals are unchanged by the split: the parts add up to the fused tensor
    assert abs(fused["sq_diff"].sum() - 16 * 32) < 1e-6
    assert {"gate_proj", "up_proj"} <= set(diff.by_layer_module()["module"])


def test_lf_h2_and_lf_h1_qkv_freeze_the_rows_of_a_fused_tensor(tmp_path):
    import torch

    from cft_utils.mitigation.freeze import FreezePlan, apply_freeze, select_lf_h2, verify_frozen

    base, bdir = _phi3(tmp_path, "base", 0)
    with torch.no_grad():
        base.model.layers[1].self_attn.qkv_proj.weight[:32] += 1.0  # q rows of layer 1
    base.save_pretrained(tmp_path / "p1")
    plan = select_lf_h2(bdir, tmp_path / "p1", k=1, modules=["q_proj"])
    assert plan.modules == {"q_proj": [1]}
    model, _ = _phi3(tmp_path, "train", 3)
    model.save_pretrained(tmp_path / "before")
    report = apply_freeze(model, plan)
    assert report.masked == {"model.layers.1.self_attn.qkv_proj.weight": [(0, 32)]}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        model(input_ids=torch.tensor([[3, 4, 5, 6]]), labels=torch.tensor([[3, 4, 5, 6]])).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(tmp_path / "after")
    check = verify_frozen(tmp_path / "before", tmp_path / "after", report.to_dict())
    assert check["bit_identical"] and check["masked_rows_checked"] == 32
    from safetensors.torch import load_file

    a = load_file(tmp_path / "before/model.safetensors")["model.layers.1.self_attn.qkv_proj.weight"]
    b = load_file(tmp_path / "after/model.safetensors")["model.layers.1.self_attn.qkv_proj.weight"]
    assert not torch.equal(a[32:], b[32:])
    # LF_H1 with the qkv scope: every q, k and v row of the chosen layer; heads too (per-head LF_H2)
    model2, _ = _phi3(tmp_path, "train2", 4)
    r2 = apply_freeze(model2, FreezePlan("LF_H1", modules={m: [0] for m in ("q_proj", "k_proj", "v_proj")}))
    assert sorted(r2.masked["model.layers.0.self_attn.qkv_proj.weight"]) == [(0, 32), (32, 48), (48, 64)]
    r3 = apply_freeze(_phi3(tmp_path, "train3", 5)[0], FreezePlan("LF_H2-head", heads={"v_proj": [(2, 1)]}))
    assert r3.masked == {"model.layers.2.self_attn.qkv_proj.weight": [(56, 64)]}


def test_lora_targets_that_match_nothing_are_an_error_naming_the_modules(tmp_path, family_dirs):
    from cft_utils.models import load_model
    from cft_utils.train import LoraTargetError, check_lora_targets

    phi3, _ = _phi3(tmp_path, "phi3", 0)
    with pytest.raises(LoraTargetError, match=r"\['k_proj', 'q_proj', 'v_proj'\].*qkv_proj"):
        check_lora_targets(phi3, ["q_proj", "k_proj", "v_proj"])
    with pytest.raises(LoraTargetError, match=r"\['q_proj'\] match no module.*only \['qkv_proj'\] match"):
        check_lora_targets(phi3, ["qkv_proj", "q_proj"])
    assert check_lora_targets(phi3, ["qkv_proj", "o_proj"]) == {"qkv_proj": 3, "o_proj": 3}
    llama = load_model(family_dirs("llama3"))
    assert check_lora_targets(llama, ["q_proj", "k_proj", "v_proj"]) == {"q_proj": 2, "k_proj": 2, "v_proj": 2}


# ------------------------------------------------------------------ engines: an OpenAI-compatible server


@pytest.fixture()
def stand_in_server():
    """A tiny stand-in for `vllm serve <model>` on 127.0.0.1: /v1/models and /v1/chat/completions (the answer is
    "echo: <last user message>", cut at the request's stop strings; max_tokens < 3 ends with finish_reason "length"). Records the requests."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    state = {"model": "served-model", "requests": []}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, obj):
            body = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802
            self._send({"object": "list", "data": [{"id": state["model"], "object": "model", "created": 0,
                                                    "owned_by": "test"}]})

        def do_POST(self):  # noqa: N802
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["requests"].append(req)
            user = [m["content"] for m in req["messages"] if m["role"] == "user"][-1]
            short = (req.get("max_tokens") or 99) < 3
            text = f"echo: {user}"
            for stop in req.get("stop") or []:  # stop strings end the answer, as vLLM does
                text = text.split(stop)[0]
            self._send({"id": "c", "object": "chat.completion", "created": 0, "model": req["model"],
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                     "finish_reason": "length" if short else "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["base_url"] = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield state
    server.shutdown()


def test_replay_generation_through_an_openai_compatible_server(stand_in_server, family_dirs):
    from cft_utils.models import generate_openai, load_tokenizer, stop_token_ids

    tok = load_tokenizer(family_dirs("mistral", "instruct"))  # no system role: the prompt is fitted client-side
    prompts = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"q{i}"}] for i in range(5)]
    out = generate_openai(stand_in_server["base_url"], "served-model", prompts, 16, tokenizer=tok)
    assert [g.text for g in out] == [f"echo: Be brief.\n\nq{i}" for i in range(5)] and all(g.finished for g in out)
    req = stand_in_server["requests"][0]
    assert req["temperature"] == 0.0 and req["stop_token_ids"] == stop_token_ids(tok)
    assert all(m["role"] != "system" for r in stand_in_server["requests"] for m in r["messages"])
    assert not generate_openai(stand_in_server["base_url"], "served-model", prompts[:1], 2)[0].finished
    with pytest.raises(ValueError, match=r"serves \['served-model'\], not 'other'"):
        generate_openai(stand_in_server["base_url"], "other", prompts, 16)


def test_lm_eval_local_chat_completions_against_the_server(stand_in_server):
    from lm_eval.api.instance import Instance
    from lm_eval.models.api_models import JsonChatStr

    from cft_utils.evaluation.runner import make_lm

    cfg = load_config("smoke", {"evaluation.backend": "openai-server",
                                "evaluation.base_url": stand_in_server["base_url"]})
    lm = make_lm(cfg, "served-model", batch_size=1)
    chat = JsonChatStr(json.dumps([{"role": "user", "content": "Context: x\n\nQuestion: y"}]))
    req = Instance(request_type="generate_until", doc={}, idx=0, arguments=(chat, {"until": ["\n"], "max_gen_toks": 8}))
    assert lm.generate_until([req]) == ["echo: Context: x"]  # the task's stop string goes to the server
    assert stand_in_server["requests"][-1]["model"] == "served-model"
    assert "\n" in stand_in_server["requests"][-1]["stop"]


def test_paper_profile_generates_with_a_backend_this_environment_has():
    cfg = load_config("paper")
    assert cfg.mitigation.replay.generation.backend == "hf" and cfg.evaluation.backend == "hf"


def test_fsdp_config_saves_a_full_safetensors_state_dict():
    fsdp = yaml.safe_load((PROJECT_ROOT / "configs/accelerate/fsdp.yaml").read_text())["fsdp_config"]
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT" and fsdp["fsdp_use_orig_params"] is True


@pytest.mark.slow
def test_layer_freezing_under_fsdp_on_cpu(tmp_path):
    """torch FSDP 1 (use_orig_params) on 2 gloo CPU processes: frozen q/k/v stay bit-identical, the rest trains, and
    the full state dict gathers every tensor (the worker: tests/fsdp_freeze_worker.py)."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "verdict.json"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(port), str(Path(__file__).parent / "fsdp_freeze_worker.py"),
                           str(out)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    verdict = json.loads(out.read_text())
    assert verdict["frozen_bit_identical"] and verdict["full_keys"] and verdict["n_changed"] > 0
    assert len(verdict["frozen"]) == 3
