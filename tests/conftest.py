"""Shared fixtures. Nothing here touches the network: the hub is unreachable on CI."""

from __future__ import annotations

import os

# Fail fast instead of trying the hub (set before transformers/datasets/lm-eval are imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

TINY_TEXTS = [
    "the cat sees the dog . le chat voit le chien . кошка видит собаку . 猫が犬を見る .",
    "Reverse the list: apple, pear, plum. -> plum, pear, apple.",
    "How many items are in: red, blue? -> 2",
    "<|user|> hello <|end|> <|assistant|> hi there <|end|>",
] * 20


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE with the project's chat template, trained in well under a second."""
    from cft_utils.sandbox.tiny import train_bpe_tokenizer

    return train_bpe_tokenizer(TINY_TEXTS, vocab_size=400, min_frequency=1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """Factory: ``tiny_model_dir(arch="llama", seed=0)`` -> a saved random tiny model directory."""
    from cft_utils.sandbox.tiny import build_causal_lm, save_model

    cache = {}

    def make(arch: str = "llama", seed: int = 0, **kw):
        key = (arch, seed, tuple(sorted(kw.items())))
        if key not in cache:
            d = tmp_path_factory.mktemp(f"tiny-{arch}-{seed}")
            kw.setdefault("hidden_size", 32)
            kw.setdefault("num_layers", 2)
            kw.setdefault("num_heads", 2)
            save_model(build_causal_lm(tiny_tokenizer, arch=arch, seed=seed, **kw), tiny_tokenizer, d)
            cache[key] = d
        return cache[key]

    return make
