"""Prompt sets for the representation-geometry analysis (notebook 09): MT-Bench, Flores, and the sandbox's.

* **MT-Bench** (Figures 1, 2, C4 in the paper profile): FastChat's ``question.jsonl`` (one JSON object a line:
  ``question_id`` int, ``category`` str, ``turns`` list of 2 str, optional ``reference``), read from a local file
  (or a folder holding ``question.jsonl``) or from the hub with an ``hf://<repo type>/<owner>/<repo>/<path>`` address
  (``hf_hub_download``). The first turn of each question is the prompt.
* **Flores** (Figure 3 in the paper profile): parallel sentences from the hub (``openlanguagedata/flores_plus``, one
  config per language such as ``eng_Latn``, column ``text``; ``facebook/flores`` has ``sentence``), loaded with
  ``datasets.load_dataset`` and paired by sentence ``id`` across languages.
* **Sandbox:** held-out English test prompts of the world's task families (Figures 1, 2, C4) and the same test
  instances rendered in every language of the world (Figure 3: exact parallel text).

Every function returns prompt records ``{"id", "dataset", "language", "counterpart_id", "prompt", ...}`` without a
completion; ``prompt`` is a list of chat messages, or a plain string where the set is raw text (Flores) or where
``chat=False`` asked for it (see :func:`as_text_prompts`).
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cft_utils.languages import MULTIALPACA_LANGUAGES
from cft_utils.sandbox.world import world_for

# A copy of FastChat's question.jsonl on the hub, in FastChat's own format.
MT_BENCH_HUB = "hf://datasets/HuggingFaceH4/mt_bench_prompts/raw/question.jsonl"
FLORES_HUB = "openlanguagedata/flores_plus"

# ISO 639-1 (as used in the grid's language lists) -> Flores-200 config names; MultiAlpaca's languages and English.
FLORES_CODES = {
    "en": "eng_Latn", "ar": "arb_Arab", "de": "deu_Latn", "es": "spa_Latn", "fr": "fra_Latn", "id": "ind_Latn",
    "ja": "jpn_Jpan", "ko": "kor_Hang", "pt": "por_Latn", "ru": "rus_Cyrl", "th": "tha_Thai", "vi": "vie_Latn",
    "zh": "cmn_Hans", "hi": "hin_Deva", "it": "ita_Latn", "nl": "nld_Latn", "tr": "tur_Latn",
}

_HF_ADDRESS = re.compile(r"^hf://(datasets|spaces|models)/([^/@]+/[^/@]+)(?:@([^/]+))?/(.+)$")


# --------------------------------------------------------------------------------------------- MT-Bench


def resolve_source_file(source: str | os.PathLike, default_name: str) -> Path:
    """A local file, a folder holding ``default_name``, or an ``hf://<type>/<owner>/<repo>[@rev]/<path>`` download."""
    text = str(source)
    m = _HF_ADDRESS.match(text)
    if m:
        from huggingface_hub import hf_hub_download

        repo_type, repo_id, revision, filename = m.groups()
        return Path(hf_hub_download(repo_id, filename, repo_type=repo_type.rstrip("s"), revision=revision))
    p = Path(os.path.expanduser(text))
    if p.is_dir():
        p = p / default_name
    if not p.is_file():
        raise FileNotFoundError(
            f"{p}: no such file (give a local file, a folder with {default_name}, or an hf://datasets/... address)"
        )
    return p


def load_mt_bench(source: str | os.PathLike = MT_BENCH_HUB, *, turn: int = 0,
                  categories: Sequence[str] | None = None) -> list[dict]:
    """MT-Bench questions (FastChat ``question.jsonl``) as single-turn user prompts, in file order.

    ``turn`` picks which user turn is the prompt (0: the first, as the geometry analysis uses); ``categories``
    keeps only those categories. A malformed line raises ``ValueError`` naming the file, line and key.
    """
    path = resolve_source_file(source, "question.jsonl")
    out, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
            for key in ("question_id", "category", "turns"):
                if key not in row:
                    raise ValueError(f"{where}: missing key {key!r}")
            qid, turns = row["question_id"], row["turns"]
            if not isinstance(qid, (int, str)) or isinstance(qid, bool):
                raise ValueError(f"{where}: 'question_id' must be an int or a string, got {qid!r}")
            if qid in seen:
                raise ValueError(f"{where}: duplicate question_id {qid!r} (first on line {seen[qid]})")
            seen[qid] = lineno
            if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
                raise ValueError(f"{where}: 'turns' must be a list of strings")
            if len(turns) <= turn or not turns[turn].strip():
                raise ValueError(f"{where}: question {qid} has no non-empty turn {turn} (has {len(turns)} turns)")
            if categories is not None and row["category"] not in categories:
                continue
            out.append({
                "id": f"mt_bench-{qid}", "dataset": "mt_bench", "language": "en", "counterpart_id": None,
                "category": row["category"], "prompt": [{"role": "user", "content": turns[turn]}],
            })
    if not out:
        raise ValueError(f"{path}: no questions" + (f" in categories {list(categories)}" if categories else ""))
    return out


# --------------------------------------------------------------------------------------------- Flores


def flores_config(language: str) -> str:
    """The Flores-200 config name of ``language`` (ISO 639-1 like ``de``, or already ``deu_Latn``)."""
    if re.fullmatch(r"[a-z]{3}_[A-Z][a-z]{3}", language):
        return language
    if language not in FLORES_CODES:
        raise KeyError(f"no Flores code known for language {language!r}; pass the config name (e.g. 'deu_Latn') "
                       f"or one of {sorted(FLORES_CODES)}")
    return FLORES_CODES[language]


def load_flores_parallel(languages: Sequence[str], *, source: str = FLORES_HUB, split: str = "dev",
                         n: int | None = 100, seed: int = 0, revision: str | None = None) -> list[dict]:
    """``n`` Flores sentences (a seeded sample of the ids all ``languages`` share) in each language, paired by id.

    Loads each language's config with ``datasets.load_dataset(source, config, split=split)`` (needs the hub, or
    its cache; ``openlanguagedata/flores_plus`` is gated: accept its terms and set ``HF_TOKEN``). Records have a
    plain-text ``prompt``; non-English ones point to their English sentence through ``counterpart_id``.
    """
    from datasets import load_dataset

    if not languages:
        raise ValueError("no languages given")
    texts: dict[str, dict[Any, str]] = {}
    for lang in languages:
        config = flores_config(lang)
        ds = load_dataset(source, config, split=split, revision=revision)
        column = next((c for c in ("text", "sentence") if c in ds.column_names), None)
        if column is None or "id" not in ds.column_names:
            raise ValueError(f"{source} [{config}/{split}]: expected columns 'id' and 'text' (or 'sentence'), "
                             f"got {ds.column_names}")
        texts[lang] = {row["id"]: row[column] for row in ds}
    shared = sorted(set.intersection(*(set(t) for t in texts.values())), key=str)
    if not shared:
        raise ValueError(f"{source}: the languages {list(languages)} share no sentence ids in split {split!r}")
    ids = sorted(random.Random(seed).sample(shared, min(n, len(shared))), key=str) if n else shared
    english = "en" if "en" in languages else None
    return [{"id": f"flores-{i}-{lang}", "dataset": "flores", "language": lang,
             "counterpart_id": None if lang == english or english is None else f"flores-{i}-{english}",
             "prompt": texts[lang][i]}
            for lang in languages for i in ids]


# --------------------------------------------------------------------------------------------- sandbox


def sandbox_prompt_set(world, families: Sequence[str] = ("A", "B", "C"), language: str = "en",
                       n_per_family: int | None = None) -> list[dict]:
    """Held-out test prompts (not answers) of the world's task ``families`` in ``language``."""
    out = []
    for fam in families:
        recs = world.test_set(fam, language)
        for r in recs[:n_per_family] if n_per_family else recs:
            out.append({k: r[k] for k in ("id", "dataset", "language", "counterpart_id", "prompt")}
                       | {"family": fam})
    return out


def sandbox_parallel_set(world, languages: Sequence[str] | None = None, families: Sequence[str] = ("A", "B", "C"),
                         n_per_family: int | None = None) -> list[dict]:
    """The same held-out instances rendered in each language: exact parallel text (user instruction only)."""
    langs = list(languages or world.spec.languages)
    out = []
    for lang in langs:
        for r in sandbox_prompt_set(world, families, lang, n_per_family):
            out.append({**r, "prompt": r["prompt"][-1]["content"]})
    return out


# --------------------------------------------------------------------------------------------- helpers


def as_text_prompts(records: Sequence[dict], sep: str = "\n") -> list[dict]:
    """Copies of ``records`` whose chat ``prompt`` is flattened to its messages' contents joined by ``sep``.

    For feeding the same token sequence to base and fine-tuned models alike (a base model has no chat template).
    """
    out = []
    for i, r in enumerate(records):
        p = r.get("prompt")
        if isinstance(p, str):
            out.append(dict(r))
        elif isinstance(p, list) and p and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in p):
            out.append({**r, "prompt": sep.join(m["content"] for m in p)})
        else:
            raise ValueError(f"record {i} (id={r.get('id')!r}): 'prompt' is neither a string nor a list of messages")
    return out


def geometry_prompts(cfg, *, mt_bench_source: str | os.PathLike | None = None, chat: bool | None = None,
                     families: Sequence[str] = ("A", "B", "C")) -> list[dict]:
    """The profile's prompt set for Figures 1, 2, C4: the sandbox world's English test prompts, else MT-Bench.

    ``mt_bench_source`` and ``chat`` default to the profile's ``analysis.geometry``. ``chat=False`` flattens chat
    prompts to plain text, so every model compared (base, Phase 1, Phase 2) reads the same tokens; ``chat=True``
    keeps messages for the chat template.
    """
    g = cfg.analysis.geometry
    chat = g.chat if chat is None else chat
    if cfg.sandbox is not None:
        recs = sandbox_prompt_set(world_for(cfg.sandbox.world_spec()), families, "en")
    else:
        recs = load_mt_bench(mt_bench_source if mt_bench_source is not None else g.mt_bench_source)
    return recs if chat else as_text_prompts(recs)


def parallel_sentences(cfg, *, n_per_language: int | None = None, flores_source: str | None = None,
                       flores_languages: Sequence[str] = ("en", *MULTIALPACA_LANGUAGES), flores_split: str | None = None,
                       seed: int | None = None) -> list[dict]:
    """The profile's parallel text for Figure 3: the sandbox world's languages, else Flores from the hub.

    Settings left None come from the profile's ``analysis.geometry`` (n_parallel, flores_source, flores_split,
    seed). In the sandbox ``n_per_language`` is split evenly over the task families A, B and C (rounded up).
    """
    g = cfg.analysis.geometry
    n_per_language = g.n_parallel if n_per_language is None else n_per_language
    if cfg.sandbox is not None:
        families = ("A", "B", "C")
        per_family = -(-n_per_language // len(families))
        return sandbox_parallel_set(world_for(cfg.sandbox.world_spec()), cfg.sandbox.languages, families, per_family)
    return load_flores_parallel(flores_languages, source=flores_source or g.flores_source,
                                split=flores_split or g.flores_split, n=n_per_language,
                                seed=g.seed if seed is None else seed)
