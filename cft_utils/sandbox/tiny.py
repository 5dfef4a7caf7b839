"""Tiny tokenizers and causal LMs built locally, without the hub.

The sandbox profile builds its tokenizer and base model with these functions, and tests use them to
make stand-ins for the paper's models (LLaMA, Mistral and Qwen2 architectures share one code path).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

# One chat format for every locally built tokenizer. The {% generation %} markers let TRL compute an
# assistant-only loss mask (``return_assistant_tokens_mask=True``) for conversational data.
# No newline after a role token: with the byte-level pre-tokenizer's prefix space (train_bpe_tokenizer), a turn's first
# word is then the same token as that word anywhere else in a text ("<|assistant|>red" -> "Ġred", as in "is red").
# With "<|assistant|>\n" it was a different token ("red" after "Ċ"), which only the English Phase 1 data had taught:
# the sandbox's Phase 1 models could not start an answer with a word of another language (world version 6).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}"
    "{% else %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|unk|>"]


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2):
    """Train a byte-level BPE on ``texts`` and wrap it as a transformers fast tokenizer with a chat template.

    Byte-level means every Unicode string is representable (no unknown characters in any script). Every piece of
    text between special tokens gets a prefix space, so a word is one token wherever it stands (see CHAT_TEMPLATE);
    the decoder drops that space again, so text round-trips.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])  # drop that prefix space
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        eos_token="<|end|>",
        unk_token="<|unk|>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "right"
    return fast


def train_family_tokenizer(texts: Iterable[str], special_tokens: list[str], *, bos: str | None, eos: str,
                           unk: str | None = None, pad: str | None = None, chat_template: str | None = None,
                           vocab_size: int = 512, min_frequency: int = 1):
    """A byte-level BPE on ``texts`` with a model family's own special tokens (e.g. LLaMA-3's ``<|begin_of_text|>``,
    ``<|eot_id|>``), a post-processor that prepends ``bos`` as the family's tokenizer does, and the family's chat
    template (None: a base model that ships without one). Tests use it for stand-ins of real tokenizers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    named = {bos, eos, unk, pad}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=unk, pad_token=pad,
                                   additional_special_tokens=[t for t in special_tokens if t not in named])
    fast.chat_template = chat_template
    return fast


ARCHITECTURES = ("llama", "mistral", "qwen2")


def build_causal_lm(
    tokenizer,
    arch: str = "llama",
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 512,
    seed: int = 0,
    tie_word_embeddings: bool = True,
):
    """A randomly initialised causal LM of the given family, sized for CPU work."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

    configs = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}
    if arch not in configs:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(configs)}")
    cfg = configs[arch](
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg)


def save_model(model, tokenizer, out_dir: str | Path) -> Path:
    """Save model (safetensors) and tokenizer into ``out_dir``."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
