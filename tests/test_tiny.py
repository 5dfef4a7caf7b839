import torch


def test_tokenizer_round_trips_any_script(tiny_tokenizer):
    for text in ["hello world", "кошка видит собаку", "猫が犬を見る", "مرحبا", "नमस्ते"]:
        ids = tiny_tokenizer(text)["input_ids"]
        assert tiny_tokenizer.decode(ids) == text


def test_chat_template_marks_assistant_tokens(tiny_tokenizer):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    out = tiny_tokenizer.apply_chat_template(msgs, return_dict=True, return_assistant_tokens_mask=True)
    mask = out["assistant_masks"]
    ids = out["input_ids"]
    assistant = tiny_tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert assistant == "hello<|end|>"


def test_architectures_build_and_run(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    for arch in ["llama", "mistral", "qwen2"]:
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(arch))
        out = model(torch.tensor([[5, 6, 7]]))
        assert out.logits.shape[-1] == model.config.vocab_size


def test_generation_prompt_is_the_trained_prefix(tiny_tokenizer):
    """The prompt a model is asked to continue must be exactly what preceded the answer in training:
    a stripped newline here once made every lm-eval task that stops at a newline return empty answers."""
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    prompt = tiny_tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    full = tiny_tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": "hello"}], tokenize=False)
    assert prompt.endswith("<|assistant|>")
    assert full.startswith(prompt) and full[len(prompt):] == "hello<|end|>"


def test_a_turns_first_word_is_the_same_token_as_anywhere_else(tiny_tokenizer):
    """World version 6: "<|assistant|>\\n" made a turn's first word another token than the same word in running
    text, so an answer could only start with words the English Phase 1 data had put there."""
    tok = tiny_tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hello"}],
                                   tokenize=False)
    ids = tok(text, add_special_tokens=False).input_ids
    word = tok("say hello", add_special_tokens=False).input_ids[-1]
    special = set(tok.all_special_ids)
    words = [i for i in ids if i not in special]
    assert words == [word, word]
