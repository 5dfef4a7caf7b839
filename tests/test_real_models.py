"""The paper profile on real model families (issue 11): run identity from model content, chat templates as
configuration, system prompts on templates without a system role, stop tokens, fused projections, LoRA targets.

Tokenizers here carry the real families' special tokens and chat templates (``tests/fixtures/chat_templates.py``);
models are tiny and random. No hub, no network.
"""

from __future__ import annotations

from cft_utils.config import load_config
from cft_utils.plan import plan_runs


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
