"""Which sentence encoder DES uses in a profile, and the sandbox's own LaBSE-like encoder.

* Profiles without a ``sandbox`` section (the paper profile) use LaBSE
  (``sentence-transformers/LaBSE``), as the paper does.
* Sandbox profiles cannot download LaBSE. They train a small language-agnostic encoder the LaBSE way:
  the world's pre-trained base LM with mean pooling, trained with the in-batch translation ranking loss
  on (English, translation) sentence pairs of the world (:func:`parallel_pairs`,
  :func:`cft_utils.similarity.train_parallel_encoder`). It is cached under
  ``$CFT_HOME/sandbox/world-<id>/encoder-<hash>/``; the hash covers the base model, the pairs' settings
  and the training settings, so a changed setting trains a new encoder instead of reusing a stale one.

The pairs are *general* parallel text of the world, as LaBSE's are general web text: single sentences
stating facts, describing lists, and the sentences the world's task generators of every family emit
(instructions, system prompts, answers) in equal shares. They are drawn by their own seeded generator,
not taken from the DES datasets' records, and no family is favoured, so the encoder has no built-in
preference for any pair of datasets.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

#: Encoder settings for the sandbox: ~190 optimizer steps, ~10 s for the smoke model on one thread. With
#: fewer pairs (1000, 400) the smoke encoder's dataset means stayed close to one common direction (all DES
#: values 0.97-1.0) and the orderings became seed noise.
SANDBOX_ENCODER_DEFAULTS = {"n_pairs": 2000, "epochs": 3, "batch_size": 32, "learning_rate": 1e-3,
                            "max_seq_length": 128}

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
    from .sandbox import FAMILIES, fact_sentences

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


def parallel_pairs(world, n: int = SANDBOX_ENCODER_DEFAULTS["n_pairs"], seed: int = 0,
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
    """The sandbox encoder's full settings: :data:`SANDBOX_ENCODER_DEFAULTS`, the profile's seed, overrides."""
    if cfg.sandbox is None:
        raise ValueError(f"{cfg.source_file}: the profile has no 'sandbox' section, so no sandbox encoder")
    unknown = set(settings) - set(SANDBOX_ENCODER_DEFAULTS) - {"seed"}
    if unknown:
        raise TypeError(f"unknown sandbox encoder setting(s) {sorted(unknown)}; "
                        f"known: {sorted(SANDBOX_ENCODER_DEFAULTS)} and seed")
    return {**SANDBOX_ENCODER_DEFAULTS, "seed": cfg.seed, **settings}


def _encoder_pairs(cfg, full: dict) -> list[tuple[str, str]]:
    from .sandbox import World

    return parallel_pairs(World(cfg.sandbox.world_spec()), full["n_pairs"], int(full["seed"]))


def sandbox_encoder_dir(cfg, **settings) -> Path:
    """Where the sandbox encoder for ``cfg`` and these settings is cached (not created here).

    The name hashes the base model, the settings and the pairs themselves, so a world whose generators
    changed (same spec, other sentences) gets a new encoder instead of a stale one.
    """
    from .similarity import _pairs_fingerprint
    from .train import sandbox_paths

    full = encoder_settings(cfg, **settings)
    paths = sandbox_paths(cfg)
    blob = json.dumps({"base": paths["base"].name, **full,
                       "pairs": _pairs_fingerprint(_encoder_pairs(cfg, full))}, sort_keys=True)
    return paths["world"] / f"encoder-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def sandbox_encoder(cfg, device: str | None = "cpu", **settings):
    """Train once (then load) the sandbox's LaBSE-like encoder from the world's base LM; see the module doc.

    ``settings`` override :func:`encoder_settings` (n_pairs, epochs, batch_size, learning_rate,
    max_seq_length, seed). Builds the sandbox base model if needed.
    """
    from .similarity import ENCODER_MARKER, train_parallel_encoder
    from .train import ensure_sandbox

    full = encoder_settings(cfg, **settings)
    out = sandbox_encoder_dir(cfg, **settings)
    pairs = _encoder_pairs(cfg, full)
    base = ensure_sandbox(cfg)["base"]
    if not (out / ENCODER_MARKER).exists():
        from .similarity_study import use_profile_threads

        use_profile_threads(cfg)  # as the sandbox pre-training does
    seed = int(full.pop("seed"))
    full.pop("n_pairs")
    return train_parallel_encoder(pairs, base, out, seed=seed, device=device, **full)


def profile_encoder(cfg, encoder: str | None = None, device: str | None = None, **settings):
    """(encoder, description) for DES in this profile.

    ``encoder``: None = the profile's default (LaBSE without a sandbox section, else the trained sandbox
    encoder); ``"sandbox"`` = the sandbox encoder; anything else = a sentence-transformers hub id or a local
    encoder directory.
    """
    from .similarity import LABSE, load_encoder

    if encoder is None:
        encoder = "sandbox" if cfg.sandbox is not None else LABSE
    if encoder == "sandbox":
        enc = sandbox_encoder(cfg, device=device or "cpu", **settings)
        return enc, f"sandbox LaBSE-like encoder ({sandbox_encoder_dir(cfg, **settings).name})"
    if settings:
        raise TypeError(f"encoder settings {sorted(settings)} apply to the sandbox encoder only, not {encoder!r}")
    return load_encoder(encoder, device=device), str(encoder)
