"""Sentence encoders for DES: LaBSE in the paper profile, and the sandbox's own LaBSE-like encoder.

* Profiles without a ``sandbox`` section (the paper profile) use LaBSE (``sentence-transformers/LaBSE``), as the
  paper does.
* Sandbox profiles cannot download LaBSE. They train a small language-agnostic encoder the LaBSE way: the world's
  pre-trained base LM with mean pooling and L2 normalisation, trained by sentence-transformers'
  ``SentenceTransformerTrainer`` with the in-batch translation ranking loss (``MultipleNegativesRankingLoss``, both
  directions) on (English, translation) sentence pairs of the world (:func:`parallel_pairs`). It is cached under
  ``$CFT_HOME/sandbox/world-<id>/encoder-<hash>/``; the hash covers the base model, the settings
  (``analysis.des.sandbox_encoder`` of the profile) and the pairs, so a changed setting trains a new encoder
  instead of reusing a stale one.

The pairs are *general* parallel text of the world, as LaBSE's are general web text: single sentences stating facts,
describing lists, and the sentences the world's task generators of every family emit (instructions, system prompts,
answers) in equal shares. They are drawn by their own seeded generator, not taken from the DES datasets' records, and
no family is favoured, so the encoder has no built-in preference for any pair of datasets.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from cft_utils.integrity import refuse_pickle_only
from cft_utils.io import read_json, write_json
from cft_utils.models import use_threads
from cft_utils.sandbox.build import ensure_sandbox, sandbox_paths
from cft_utils.sandbox.world import FAMILIES, fact_sentences, world_for

#: The paper profile's encoder.
LABSE = "sentence-transformers/LaBSE"
ENCODER_MARKER = "ENCODER_DONE.json"
#: How the sandbox encoder is trained; part of its cache key, so encoders trained another way are not reused
#: (1: a hand-written loop; 2: SentenceTransformerTrainer).
ENCODER_TRAINING = 2


def load_encoder(name_or_path: str | Path, device: str | None = None):
    """Load a sentence-transformers encoder (hub id or local directory); remote code is never trusted."""
    from sentence_transformers import SentenceTransformer

    path = Path(name_or_path)
    if path.is_absolute() or path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"encoder directory {path} does not exist")
        name_or_path = str(path)
        refuse_pickle_only(path, "sentence encoder")
    return SentenceTransformer(str(name_or_path), device=device, trust_remote_code=False,
                               model_kwargs={"use_safetensors": True})


def text_only_transformer(model_dir: str | Path, max_seq_length: int):
    """A sentence-transformers ``Transformer`` module over a local LM that embeds the bare text (no chat template)."""
    from sentence_transformers.sentence_transformer.modules import Transformer

    # A tokenizer with a chat template makes sentence-transformers wrap every text in it; an encoder
    # wants the bare text, so pin the module to the plain text modality.
    refuse_pickle_only(model_dir, "encoder base model")
    return Transformer(
        str(model_dir),
        model_kwargs={"use_safetensors": True},
        modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        module_output_name="token_embeddings",
        max_seq_length=max_seq_length,
    )


def pairs_fingerprint(pairs: Sequence[tuple[str, str]], **settings) -> str:
    """SHA-256 over the settings and every (source, translation) pair: the identity of a trained encoder."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for a, b in pairs:
        h.update(a.encode("utf-8") + b"\x00" + b.encode("utf-8") + b"\x01")
    return h.hexdigest()


def train_parallel_encoder(
    pairs: Sequence[tuple[str, str]],
    base_model_dir: str | Path,
    out_dir: str | Path,
    epochs: float = 3,
    batch_size: int = 32,
    seed: int = 0,
    learning_rate: float = 1e-3,
    max_seq_length: int = 64,
    device: str | None = "cpu",
):
    """Train (or load, when ``out_dir`` holds a finished one) a language-agnostic encoder the LaBSE way.

    A local transformers model (e.g. the sandbox's tiny causal LM) gets mean pooling and L2 normalisation, and
    ``SentenceTransformerTrainer`` trains it on (english, translation) pairs with the in-batch translation ranking
    loss, symmetric in both directions (``MultipleNegativesRankingLoss`` with ``directions=("query_to_doc",
    "doc_to_query")``), batches without duplicate texts, a constant learning rate and no gradient clipping (as the
    hand-written loop it replaces). The finished encoder is saved to ``out_dir`` with a marker file holding the
    settings, a fingerprint of the pairs and the training time and losses; a marker whose fingerprint does not match
    the request raises instead of silently reusing a stale encoder.
    """
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
    from transformers.trainer_callback import PrinterCallback

    base_model_dir, out_dir = Path(base_model_dir), Path(out_dir)
    pairs = [(str(a), str(b)) for a, b in pairs]
    if len(pairs) < 2:
        raise ValueError("train_parallel_encoder needs at least 2 (english, translation) pairs")
    if batch_size < 2:
        raise ValueError("batch_size must be >= 2: the other pairs in a batch are the negatives")
    settings = dict(base_model_dir=str(base_model_dir.resolve()), epochs=epochs, batch_size=batch_size,
                    seed=seed, learning_rate=learning_rate, max_seq_length=max_seq_length,
                    training=ENCODER_TRAINING)
    fingerprint = pairs_fingerprint(pairs, **settings)
    marker = out_dir / ENCODER_MARKER
    if marker.exists():
        info = read_json(marker)
        if info.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{out_dir} holds an encoder trained on other pairs or settings "
                f"(marker {marker}); delete it or choose another out_dir"
            )
        refuse_pickle_only(out_dir, "sentence encoder")
        return SentenceTransformer(str(out_dir), device=device, trust_remote_code=False,
                                   model_kwargs={"use_safetensors": True})
    if not (base_model_dir / "config.json").exists():
        raise FileNotFoundError(f"base model directory {base_model_dir} has no config.json")

    import torch

    torch.manual_seed(seed)
    transformer = text_only_transformer(base_model_dir, max_seq_length)
    model = SentenceTransformer(
        modules=[transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode="mean"), Normalize()],
        device=device,
    )
    loss = MultipleNegativesRankingLoss(model, directions=("query_to_doc", "doc_to_query"),
                                        partition_mode="per_direction")
    data = Dataset.from_dict({"english": [a for a, _ in pairs], "translation": [b for _, b in pairs]})
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="encoder-trainer-") as scratch:
        args = SentenceTransformerTrainingArguments(
            output_dir=scratch, num_train_epochs=epochs, per_device_train_batch_size=batch_size,
            learning_rate=learning_rate, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.01,
            optim="adamw_torch", max_grad_norm=0.0, seed=seed, data_seed=seed,
            batch_sampler=BatchSamplers.NO_DUPLICATES, logging_steps=1, save_strategy="no", report_to="none",
            disable_tqdm=True, dataloader_pin_memory=False, use_cpu=device == "cpu",
        )
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss)
        trainer.remove_callback(PrinterCallback)  # with disable_tqdm it prints every log line to stdout
        trainer.train()
    losses = [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]
    model.eval()
    seconds = time.perf_counter() - start
    model.save(str(out_dir))
    write_json(marker, {"fingerprint": fingerprint, "n_pairs": len(pairs), "train_seconds": seconds,
                        "steps": trainer.state.global_step, "first_loss": losses[0], "final_loss": losses[-1],
                        **settings})
    return model


def encoder_training_info(out_dir: str | Path) -> dict:
    """The marker of a finished :func:`train_parallel_encoder` run (settings, seconds, losses)."""
    marker = Path(out_dir) / ENCODER_MARKER
    if not marker.exists():
        raise FileNotFoundError(f"no finished encoder in {out_dir} (missing {ENCODER_MARKER})")
    return read_json(marker)


def translation_retrieval_accuracy(
    encoder, sources: Sequence[str], translations: Sequence[str], batch_size: int = 32
) -> float:
    """Share of ``sources`` whose most cosine-similar text among ``translations`` is their own translation.

    sentence-transformers' ``TranslationEvaluator`` (its source-to-target accuracy).
    """
    from sentence_transformers.sentence_transformer.evaluation import TranslationEvaluator

    if len(sources) != len(translations) or len(sources) == 0:
        raise ValueError("sources and translations must be equally long and non-empty")
    evaluator = TranslationEvaluator(list(sources), list(translations), batch_size=batch_size, write_csv=False)
    return float(evaluator(encoder)["src2trg_accuracy"])


# --------------------------------------------------------------------------------------------- the sandbox's pairs


_SENTENCE_END = re.compile(r"(?<=[.?])\s+")
_HAS_WORD = re.compile(r"[a-z]")


def _list_sentence(rng: random.Random, names: list[str]) -> str:
    items = rng.sample(names, rng.randint(1, 5))
    return rng.choice([
        f"the list is : {' , '.join(items)} .",
        f"the list has {len(items)} words .",
        f"the first word is {items[0]} .",
        f"the last word is {items[-1]} .",
    ])


def english_sentences(world, n: int, seed: int = 0) -> list[str]:
    """``n`` distinct English sentences of the world (facts, lists, task sentences of every family), seeded."""
    if n < 1:
        raise ValueError(f"need n >= 1 sentences, got {n}")
    rng = random.Random(f"{seed}-parallel-sentences")
    names = sorted(world.facts)
    families = sorted(FAMILIES)
    out: list[str] = []
    seen: set[str] = set()
    misses = 0
    while len(out) < n:
        source = rng.choice(("fact", "list", "task"))
        if source == "fact":
            candidates = [rng.choice(fact_sentences(world.facts[rng.choice(names)]))]
        elif source == "list":
            candidates = [_list_sentence(rng, names)]
        else:
            task = rng.choice(FAMILIES[rng.choice(families)])
            candidates = [s for text in task(rng, world.facts) if text for s in _SENTENCE_END.split(text)]
        for s in candidates:
            s = s.strip()
            # a bare answer ("2", "9 .") or a bare name ("boat": names are shared by every language) is its
            # own "translation", not a pair
            translatable = any(w not in world.facts for w in re.findall(r"[a-z]+", s))
            if _HAS_WORD.search(s) and translatable and s not in seen and len(out) < n:
                seen.add(s)
                out.append(s)
                misses = 0
            else:
                misses += 1
        if misses > 20 * n + 1000:
            raise RuntimeError(f"the world has fewer than {n} distinct sentences (found {len(out)})")
    return out


def parallel_pairs(world, n: int = 2000, seed: int = 0,
                   languages: list[str] | None = None) -> list[tuple[str, str]]:
    """``n`` (English sentence, exact translation) pairs, the target languages in equal shares (seeded).

    ``languages`` defaults to every non-English language of the world; each English sentence appears once.
    """
    langs = list(languages) if languages is not None else list(world.other_languages)
    if not langs or "en" in langs:
        raise ValueError(f"languages must be non-English languages of the world, got {langs}")
    unknown = [x for x in langs if x not in world.other_languages]
    if unknown:
        raise ValueError(f"languages {unknown} are not in the world (have {world.other_languages})")
    sentences = english_sentences(world, n, seed)
    order = list(range(n))
    random.Random(f"{seed}-parallel-languages").shuffle(order)
    lang_of = {i: langs[k % len(langs)] for k, i in enumerate(order)}
    return [(s, world.translate(s, lang_of[i])) for i, s in enumerate(sentences)]


def encoder_settings(cfg, **settings) -> dict:
    """The sandbox encoder's full settings: the profile's ``analysis.des.sandbox_encoder``, its seed, overrides."""
    if cfg.sandbox is None:
        raise ValueError(f"{cfg.source_file}: the profile has no 'sandbox' section, so no sandbox encoder")
    defaults = cfg.analysis.des.sandbox_encoder.model_dump()
    unknown = set(settings) - set(defaults) - {"seed"}
    if unknown:
        raise TypeError(f"unknown sandbox encoder setting(s) {sorted(unknown)}; known: {sorted(defaults)} and seed")
    return {**defaults, "seed": cfg.seed, **settings}


def encoder_pairs(cfg, full: dict) -> list[tuple[str, str]]:
    """The (English, translation) training pairs of the sandbox encoder with settings ``full``."""
    return parallel_pairs(world_for(cfg.sandbox.world_spec()), full["n_pairs"], int(full["seed"]))


def sandbox_encoder_dir(cfg, **settings) -> Path:
    """Where the sandbox encoder for ``cfg`` and these settings is cached (not created here).

    The name hashes the base model, the settings, how the encoder is trained and the pairs themselves, so a world
    whose generators changed (same spec, other sentences) gets a new encoder instead of a stale one.
    """
    full = encoder_settings(cfg, **settings)
    paths = sandbox_paths(cfg)
    blob = json.dumps({"base": paths["base"].name, **full, "training": ENCODER_TRAINING,
                       "pairs": pairs_fingerprint(encoder_pairs(cfg, full))}, sort_keys=True)
    return paths["world"] / f"encoder-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def sandbox_encoder(cfg, device: str | None = "cpu", **settings):
    """Train once (then load) the sandbox's LaBSE-like encoder from the world's base LM; see the module doc.

    ``settings`` override :func:`encoder_settings` (n_pairs, epochs, batch_size, learning_rate, max_seq_length,
    seed). Builds the sandbox base model if needed.
    """
    full = encoder_settings(cfg, **settings)
    out = sandbox_encoder_dir(cfg, **settings)
    pairs = encoder_pairs(cfg, full)
    base = ensure_sandbox(cfg)["base"]
    if not (out / ENCODER_MARKER).exists() and cfg.training.num_threads:
        use_threads(cfg.training.num_threads)  # as the sandbox pre-training does
    seed = int(full.pop("seed"))
    full.pop("n_pairs")
    return train_parallel_encoder(pairs, base, out, seed=seed, device=device, **full)


def profile_encoder(cfg, encoder: str | None = None, device: str | None = None, **settings):
    """(encoder, description) for DES in this profile.

    ``encoder``: None = the profile's ``analysis.des.encoder``, whose None is the profile's default (LaBSE without a
    sandbox section, else the trained sandbox encoder); ``"sandbox"`` = the sandbox encoder; anything else = a
    sentence-transformers hub id or a local encoder directory.
    """
    encoder = encoder if encoder is not None else cfg.analysis.des.encoder
    if encoder is None:
        encoder = "sandbox" if cfg.sandbox is not None else LABSE
    if encoder == "sandbox":
        enc = sandbox_encoder(cfg, device=device or "cpu", **settings)
        return enc, f"sandbox LaBSE-like encoder ({sandbox_encoder_dir(cfg, **settings).name})"
    if settings:
        raise TypeError(f"encoder settings {sorted(settings)} apply to the sandbox encoder only, not {encoder!r}")
    return load_encoder(encoder, device=device), str(encoder)
