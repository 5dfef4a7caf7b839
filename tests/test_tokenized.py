"""Tokenised-dataset cache and padding-free batching (issue 15): behaviour, never timing.

- the cached rows are exactly the rows SFTTrainer prepares itself (tokens and loss labels);
- a second preparation of the same content is a cache hit; other content (records, tokenizer, chat template,
  max_length) is a different fingerprint;
- over-long records are dropped and counted, never truncated;
- the smoke profile trains bit-identical weights with the cache (miss and hit) and without it;
- ``training.padding_free: true`` trains under the pinned TRL (it refused before) and counts dropped records.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from cft_utils.config import TrainingSpec, load_config
from cft_utils.plan import plan_runs
from cft_utils.tokenized import fingerprint, prepare
from cft_utils.train import execute, sft_config


def _records(n: int = 12, long_every: int = 0) -> list[dict]:
    out = []
    for i in range(n):
        answer = "plum, pear, apple" if not (long_every and i % long_every == 0) else " ".join(["apple"] * 200)
        out.append({"id": f"r{i}", "language": "en", "prompt": [{"role": "user", "content": f"Reverse {i}: a, b"}],
                    "completion": [{"role": "assistant", "content": answer}]})
    return out


def _args(tmp_path, **kw):
    h = TrainingSpec(global_batch_size=4, per_device_batch_size=4, gradient_accumulation_steps=1, max_length=64,
                     **kw)
    return sft_config(h, tmp_path / "ckpt", seed=0, prepared=True), h


def test_prepared_rows_are_the_rows_sfttrainer_prepares(tmp_path, tiny_tokenizer, tiny_model_dir):
    from trl import SFTTrainer

    from cft_utils.data.loaders import to_hf_dataset
    from cft_utils.models import load_model

    records = _records()
    args, h = _args(tmp_path)
    ours = prepare(records, tiny_tokenizer, args, h.max_length, root=tmp_path / "cache")
    plain = sft_config(h, tmp_path / "ckpt2", seed=0)  # TRL prepares (and would truncate at max_length)
    trainer = SFTTrainer(model=load_model(tiny_model_dir()), args=plain, train_dataset=to_hf_dataset(records),
                         processing_class=tiny_tokenizer)
    theirs = trainer.train_dataset
    assert ours.dataset["input_ids"] == theirs["input_ids"]
    assert ours.dataset["labels"] == theirs["labels"]
    assert ours.n_kept == len(records) and ours.n_dropped == 0 and ours.n_no_loss == 0
    assert ours.n_tokens == sum(len(x) for x in theirs["input_ids"])


def test_cache_hit_and_fingerprint_covers_the_content(tmp_path, tiny_tokenizer):
    records = _records()
    args, h = _args(tmp_path)
    first = prepare(records, tiny_tokenizer, args, h.max_length, root=tmp_path / "cache")
    again = prepare(records, tiny_tokenizer, args, h.max_length, root=tmp_path / "cache")
    assert not first.cache_hit and again.cache_hit and first.path == again.path
    assert again.dataset["input_ids"] == first.dataset["input_ids"]
    assert len(list((tmp_path / "cache").iterdir())) == 1  # no temporary folder left behind
    off = prepare(records, tiny_tokenizer, args, h.max_length, cache=False)
    assert off.path is None and off.dataset["labels"] == first.dataset["labels"]

    fp = fingerprint(records, tiny_tokenizer, args, h.max_length)
    assert fp == first.fingerprint
    assert fingerprint(records[:-1], tiny_tokenizer, args, h.max_length) != fp
    assert fingerprint(records, tiny_tokenizer, args, h.max_length + 1) != fp
    edited = [dict(r) for r in records]
    edited[3] = {**edited[3], "completion": [{"role": "assistant", "content": "pear"}]}
    assert fingerprint(edited, tiny_tokenizer, args, h.max_length) != fp
    template = tiny_tokenizer.chat_template
    try:
        tiny_tokenizer.chat_template = template.replace("<|assistant|>", "<|assistant|> ")
        assert fingerprint(records, tiny_tokenizer, args, h.max_length) != fp
    finally:
        tiny_tokenizer.chat_template = template


def test_over_long_records_are_dropped_and_counted_not_truncated(tmp_path, tiny_tokenizer):
    records = _records(12, long_every=4)  # records 0, 4, 8: 200-word answers, far over 64 tokens
    args, h = _args(tmp_path)
    full = prepare(records, tiny_tokenizer, args, 10_000, cache=False)
    data = prepare(records, tiny_tokenizer, args, h.max_length, cache=False)
    assert data.n_dropped == 3 and data.n_kept == 9 and len(data.dataset) == 9
    assert max(len(x) for x in data.dataset["input_ids"]) <= h.max_length
    kept = [x for i, x in enumerate(full.dataset["input_ids"]) if i % 4]
    assert data.dataset["input_ids"] == kept  # whole records, in order, none cut
    assert data.summary()["n_dropped_over_length"] == 3
    with pytest.raises(ValueError, match="every record was dropped"):
        prepare(records, tiny_tokenizer, args, 5, cache=False)


def test_padding_free_config_is_accepted_by_trl(tmp_path, tiny_tokenizer, tiny_model_dir):
    from trl import SFTTrainer

    from cft_utils.models import load_model

    args, h = _args(tmp_path, padding_free=True)
    assert args.max_length is None and args.padding_free
    data = prepare(_records(8), tiny_tokenizer, args, h.max_length, cache=False)
    trainer = SFTTrainer(model=load_model(tiny_model_dir()), args=args, train_dataset=data.dataset,
                         processing_class=tiny_tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch  # one row, no padding
    assert int((batch["position_ids"] == 0).sum()) == 4  # four sequences, each from position 0


def test_padding_free_batch_has_the_loss_of_the_padded_batch(tmp_path, tiny_tokenizer, tiny_model_dir):
    """The same rows, one concatenated row with per-sequence positions vs padded rows: sequences stay separate
    (no attention across them) and the same tokens enter the loss, so the loss and its gradients agree to float
    precision (a training run then differs only by floating-point order; bench/RESULTS.md has the full-run loss)."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from cft_utils.models import load_model

    records = _records(6)
    records[2]["completion"][0]["content"] = "a much longer answer: " + "plum, pear, apple, " * 4  # uneven lengths
    args, h = _args(tmp_path)
    rows = list(prepare(records, tiny_tokenizer, args, h.max_length, cache=False).dataset)
    pad = tiny_tokenizer.pad_token_id if tiny_tokenizer.pad_token_id is not None else 0

    def loss_and_grads(padding_free: bool):
        model = load_model(tiny_model_dir()).train()
        batch = DataCollatorForLanguageModeling(pad_token_id=pad, padding_free=padding_free)(rows)
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        return float(loss), {n: p.grad for n, p in model.named_parameters()}

    padded, g_padded = loss_and_grads(False)
    free, g_free = loss_and_grads(True)
    assert math.isfinite(padded) and abs(free - padded) < 1e-5
    for name, g in g_padded.items():
        assert torch.allclose(g_free[name], g, rtol=1e-4, atol=1e-6), name


# --------------------------------------------------------------------------------------------- slow


def _weights(d: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module")
def smoke_home(tmp_path_factory):
    """One CFT_HOME (one sandbox build) for both batching modes: their runs have different ids (their tokenised
    sets are the same, so each test empties the cache first)."""
    return tmp_path_factory.mktemp("cft-home-tokenized")


@pytest.mark.slow
@pytest.mark.parametrize("padding_free", [False, True])
def test_smoke_weights_are_bit_identical_with_and_without_the_cache(smoke_home, monkeypatch, padding_free):
    import torch

    monkeypatch.setenv("CFT_HOME", str(smoke_home))
    cfg = load_config("smoke", {"training": {"padding_free": padding_free}})
    run = plan_runs(cfg).phase1[0]
    # both batching modes tokenise to the same rows (one fingerprint): start each from an empty cache
    shutil.rmtree(smoke_home / "cache" / "tokenized", ignore_errors=True)
    weights, summaries = [], []
    for cache in ("0", "1", "1"):  # no cache, cache miss, cache hit
        monkeypatch.setenv("CFT_TOKENIZED_CACHE", cache)
        if run.dir.exists():
            shutil.rmtree(run.dir)
        execute(run, cfg, quiet=True)
        weights.append(_weights(run.model_dir))
        summaries.append(json.loads((run.dir / "summary.json").read_text()))
    assert [s["tokenized_cache_hit"] for s in summaries] == [False, False, True]
    assert len({s["tokenized_fingerprint"] for s in summaries}) == 1
    assert all(s["n_dropped_over_length"] == 0 and s["n_records_trained"] == s["n_records"] for s in summaries)
    for w in weights[1:]:
        assert w.keys() == weights[0].keys()
        assert all(torch.equal(w[k], weights[0][k]) for k in w)
    assert (smoke_home / "cache" / "tokenized" / summaries[0]["tokenized_fingerprint"]).is_dir()
