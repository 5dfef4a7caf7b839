"""Multilingual answer and summary metrics: SQuAD-style EM/F1 and Unicode-aware ROUGE.

Why not the usual implementations
---------------------------------
* ``transformers.data.metrics.squad_metrics`` (used by lm-eval's ``xquad_*``) is gone in
  transformers 5, and the SQuAD v1.1 script splits on whitespace only, so an answer in Chinese or
  Thai (no spaces between words) is one token: F1 is all-or-nothing there.
* ``rouge_score``'s default tokenizer keeps only ``[a-z0-9]``: any Arabic, Hindi, Chinese,
  Japanese, Greek or Cyrillic text tokenises to nothing and scores 0 however good the summary.

Tokenisation used here (both metrics)
-------------------------------------
* Word tokens are maximal runs of Unicode letters, combining marks and digits
  (``\\p{L}\\p{M}\\p{N}``), so Devanagari vowel signs and viramas and Arabic harakat stay inside
  their word (Python's ``re`` ``\\w`` does *not* match combining marks and splits Hindi words).
* Scripts written without spaces between words -- Han (Chinese, Japanese kanji), Hiragana,
  Katakana (plus the prolonged-sound mark and iteration marks), Thai, Lao, Khmer, Myanmar -- are
  split into single characters (a base character with its combining marks). This is MLQA's
  official "mixed segmentation" for Chinese (CJK characters one by one, other runs by
  whitespace), extended to kana and the South-East Asian scripts. No word segmenter is used, so
  character-level F1/ROUGE for zh/ja/th are higher than word-level numbers would be.
* Everything is lower-cased. ROUGE uses no stemming (Porter stemming is English-only).

SQuAD normalisation (EM/F1): lower-case, delete punctuation (Unicode category ``P*`` plus ASCII
``string.punctuation``, as MLQA does), delete the English articles *a/an/the* only when
``lang == "en"``, then tokenise as above. F1 is the bag-of-tokens F1; EM compares the normalised
token sequences; both take the maximum over the gold answers.
"""

from __future__ import annotations

import math
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

import regex

# Characters of scripts without spaces between words: each one is a token (with its marks).
_NO_SPACE_CLASS = (
    r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\u30fc\u3005\u3006\u303b"
)
_TOKEN_RE = regex.compile(
    rf"(?V1)[{_NO_SPACE_CLASS}]\p{{M}}*|[[\p{{L}}\p{{M}}\p{{N}}]--[{_NO_SPACE_CLASS}]]+"
)
_ARTICLES_EN = regex.compile(r"\b(a|an|the)\b")
_ASCII_PUNCT = frozenset(string.punctuation)

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def _is_punct(ch: str) -> bool:
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def tokenize(text: str) -> list[str]:
    """Unicode word tokens (letters/marks/digits); no-space scripts split into characters; lower-cased."""
    if not isinstance(text, str):
        raise TypeError(f"expected a str to tokenize, got {type(text).__name__}")
    return _TOKEN_RE.findall(text.lower())


# --------------------------------------------------------------------------- SQuAD EM / F1


def normalize_answer(text: str, lang: str | None = None) -> str:
    """SQuAD-style normalisation: lower-case, drop punctuation, drop a/an/the (English only), retokenise."""
    text = text.lower()
    text = "".join(" " if ch.isspace() else ch for ch in text if not _is_punct(ch))
    if lang == "en":
        text = _ARTICLES_EN.sub(" ", text)
    return " ".join(answer_tokens_normalized(text))


def answer_tokens_normalized(normalized: str) -> list[str]:
    """Split already-normalised text: whitespace chunks, no-space scripts into characters.

    Unlike :func:`tokenize`, symbols (``€``, ``°``) survive, as they do in the SQuAD script.
    """
    out: list[str] = []
    for chunk in normalized.split():
        pos = 0
        for m in _NO_SPACE_TOKEN_RE.finditer(chunk):
            if m.start() > pos:
                out.append(chunk[pos : m.start()])
            out.append(m.group())
            pos = m.end()
        if pos < len(chunk):
            out.append(chunk[pos:])
    return out


_NO_SPACE_TOKEN_RE = regex.compile(rf"[{_NO_SPACE_CLASS}]\p{{M}}*")


def answer_tokens(text: str, lang: str | None = None) -> list[str]:
    """The tokens F1 counts: :func:`normalize_answer` split into tokens."""
    return normalize_answer(text, lang).split()


def exact_match(prediction: str, gold: str, lang: str | None = None) -> float:
    """1.0 if the normalised prediction equals the normalised gold answer, else 0.0."""
    return float(answer_tokens(prediction, lang) == answer_tokens(gold, lang))


def token_f1(prediction: str, gold: str, lang: str | None = None) -> float:
    """Bag-of-tokens F1 between prediction and one gold answer (both empty -> 1, one empty -> 0)."""
    pred, ref = answer_tokens(prediction, lang), answer_tokens(gold, lang)
    if not pred or not ref:
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(prediction: str, golds: str | Sequence[str], lang: str | None = None) -> dict[str, float]:
    """``{"exact_match", "f1"}``, each the maximum over the gold answers."""
    golds = [golds] if isinstance(golds, str) else list(golds)
    if not golds:
        raise ValueError("squad_scores needs at least one gold answer")
    return {
        "exact_match": max(exact_match(prediction, g, lang) for g in golds),
        "f1": max(token_f1(prediction, g, lang) for g in golds),
    }


def _gold_texts(doc: Mapping) -> list[str]:
    """Gold answer strings from HF form (``{"text": [...]}``), SQuAD form (``[{"text": ...}]``) or a list."""
    if "answers" not in doc:
        raise KeyError(f"QA document {doc.get('id', '?')!r} has no 'answers' key (keys: {sorted(doc)})")
    answers = doc["answers"]
    if isinstance(answers, Mapping):
        texts = answers.get("text")
    elif isinstance(answers, str):
        texts = [answers]
    else:
        texts = [a["text"] if isinstance(a, Mapping) else a for a in answers]
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"QA document {doc.get('id', '?')!r} has no usable gold answer texts: {answers!r}")
    return list(texts)


def qa_target(doc: Mapping) -> str:
    """lm-eval ``doc_to_target`` for extractive QA: the first gold answer. A function rather than the Jinja
    template ``{{answers["text"][0]}}``: lm-eval compiles a template anew on every call (several per document), a
    tenth of a sandbox checkpoint's evaluation time."""
    return _gold_texts(doc)[0]


def process_results_qa(doc: Mapping, results: Sequence[str]) -> dict[str, float]:
    """lm-eval ``process_results`` for extractive QA (no article stripping: non-English languages)."""
    return squad_scores(results[0].strip(), _gold_texts(doc), lang=None)


def process_results_qa_en(doc: Mapping, results: Sequence[str]) -> dict[str, float]:
    """lm-eval ``process_results`` for English extractive QA (strips a/an/the, as SQuAD)."""
    return squad_scores(results[0].strip(), _gold_texts(doc), lang="en")


# --------------------------------------------------------------------------- ROUGE


class UnicodeRougeTokenizer:
    """Tokenizer object for ``rouge_score.rouge_scorer.RougeScorer(tokenizer=...)`` (see :func:`tokenize`)."""

    def tokenize(self, text: str) -> list[str]:
        """Tokens of ``text``; the interface ``rouge_score`` expects."""
        return tokenize(text)


@lru_cache(maxsize=4)
def unicode_rouge_scorer(rouge_types: tuple[str, ...] = ROUGE_TYPES):
    """A ``RougeScorer`` using :class:`UnicodeRougeTokenizer` (no stemming)."""
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(list(rouge_types), use_stemmer=False, tokenizer=UnicodeRougeTokenizer())


def rouge_scores(
    prediction: str, references: str | Iterable[str], rouge_types: Sequence[str] = ROUGE_TYPES
) -> dict[str, float]:
    """ROUGE F-measures (max over references) with the Unicode tokenizer.

    A reference with no tokens makes ROUGE undefined: ``ValueError``. An empty prediction is a
    real 0 (the model said nothing).
    """
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("rouge_scores needs at least one reference")
    for r in refs:
        if not tokenize(r):
            raise ValueError(f"reference has no tokens, ROUGE is undefined: {r[:80]!r}")
    scorer = unicode_rouge_scorer(tuple(rouge_types))
    best = {t: 0.0 for t in rouge_types}
    for r in refs:
        s = scorer.score(r, prediction)
        for t in rouge_types:
            best[t] = max(best[t], s[t].fmeasure)
    return best


def process_results_gold_f1(doc: Mapping, results: Sequence[str]) -> dict[str, float]:
    """lm-eval ``process_results`` of ``sb_alpacaeval``: token F1 of the output to the gold answer."""
    if "gold" not in doc:
        raise KeyError(f"sb_alpacaeval document {doc.get('id', '?')!r} has no 'gold' answer")
    return {"gold_f1": token_f1(results[0].strip(), doc["gold"])}


def process_results_output_length(doc: Mapping, results: Sequence[str]) -> dict[str, float]:
    """lm-eval ``process_results`` of ``cft_alpacaeval``: the output's length in Unicode word tokens."""
    return {"output_words": float(len(tokenize(results[0])))}


def process_results_summary(doc: Mapping, results: Sequence[str]) -> dict[str, float]:
    """lm-eval ``process_results`` for summarisation: ROUGE-1/2/L F1 against ``doc["summary"]``."""
    if "summary" not in doc:
        raise KeyError(f"summary document {doc.get('id', '?')!r} has no 'summary' key (keys: {sorted(doc)})")
    try:
        return rouge_scores(results[0].strip(), doc["summary"])
    except ValueError as e:
        raise ValueError(f"summary document {doc.get('id', '?')!r}: {e}") from e


# --------------------------------------------------------------------------- scripts

# Scripts told apart when asking which ones a tokenizer keeps (Unicode script property names).
SCRIPTS = ("Latin", "Cyrillic", "Greek", "Arabic", "Hebrew", "Devanagari", "Bengali", "Tamil", "Thai", "Han",
           "Hiragana", "Katakana", "Hangul")
_SCRIPT_RE = {name: regex.compile(rf"\p{{Script={name}}}") for name in SCRIPTS}


def dominant_script(text: str) -> str | None:
    """The Unicode script most of the letters of ``text`` are written in (``Han`` for Chinese, ``Hiragana``/``Han``
    for Japanese, ...); None when it has no letter of a known script."""
    counts = {name: len(rx.findall(text)) for name, rx in _SCRIPT_RE.items()}
    best = max(counts, key=counts.get)
    return best if counts[best] else None


def mean_or_nan(values: Iterable[float]) -> float:
    """Mean of the values; NaN (missing, never 0) when there are none."""
    vals = [float(v) for v in values]
    return math.fsum(vals) / len(vals) if vals else float("nan")
