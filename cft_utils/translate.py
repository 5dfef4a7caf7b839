"""Selective translation of English instruction data (OpenOrca -> mOpenOrca, paper App. A.2).

The paper translated a 50k-record OpenOrca subset into the eleven MultiAlpaca languages "selectively":
prose is translated, while code, math, URLs, e-mail addresses, numbers with units, template variables
and JSON/markup stay verbatim. This module does that in four layers:

1. ``protect`` / ``restore``: mask what must not be translated with placeholder tokens (``⟦0⟧``, or
   ``__P0__`` for tokenizers that cannot spell ``⟦``) and put it back, failing loudly when the translator
   dropped, duplicated or altered a placeholder (such a record is rejected and counted, never kept).
2. ``split_for_translation``: cut masked text at line/paragraph, sentence and finally word boundaries so
   that each piece fits the backend's token budget; pieces without prose (a code block's placeholder,
   a bare number) are never sent to the translator.
3. Backends behind one interface (``Translator.translate_batch(texts, src_lang, tgt_lang)``):
   ``TransformersTranslator`` (NLLB-200 / MADLAD-400 / M2M-100 seq2seq or a prompted causal LM),
   ``OpenAICompatibleTranslator`` (any ``/chat/completions`` endpoint, plain urllib) and
   ``SandboxTranslator`` (word-by-word lexicon of the offline sandbox world).
4. ``build_translated_dataset``: seeded subset, one JSONL shard per (language, slice) written atomically
   with a metadata file as its commit marker, so an interrupted build resumes without duplicating or
   dropping records; then a ``datasets`` dataset on disk and a per-language quality report.

Example (paper profile, on a GPU machine)::

    from cft_utils.translate import TransformersTranslator, build_translated_dataset, MULTIALPACA_LANGUAGES
    tr = TransformersTranslator("facebook/nllb-200-distilled-600M", batch_size=32)
    build_translated_dataset(openorca_records, MULTIALPACA_LANGUAGES, tr, out_dir, n=50_000, seed=0)
"""

from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import json
import os
import random
import re
import shutil
import statistics
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cft_utils.io import read_json, read_jsonl, write_json, write_jsonl, write_text
from cft_utils.openai_compat import post_chat_completions

# The eleven MultiAlpaca languages, in the paper's order.
MULTIALPACA_LANGUAGES = ("fr", "ar", "de", "es", "id", "ja", "ko", "pt", "ru", "th", "vi")

LANGUAGE_NAMES = {
    "en": "English", "fr": "French", "ar": "Arabic", "de": "German", "es": "Spanish",
    "id": "Indonesian", "ja": "Japanese", "ko": "Korean", "pt": "Portuguese", "ru": "Russian",
    "th": "Thai", "vi": "Vietnamese", "zh": "Chinese", "hi": "Hindi",
}

# FLORES-200 codes used by NLLB-200.
NLLB_CODES = {
    "en": "eng_Latn", "fr": "fra_Latn", "ar": "arb_Arab", "de": "deu_Latn", "es": "spa_Latn",
    "id": "ind_Latn", "ja": "jpn_Jpan", "ko": "kor_Hang", "pt": "por_Latn", "ru": "rus_Cyrl",
    "th": "tha_Thai", "vi": "vie_Latn", "zh": "zho_Hans", "hi": "hin_Deva",
}
# MADLAD-400 prefixes the source with a target tag ``<2xx>``; M2M-100 forces ``__xx__`` as first token.
MADLAD_CODES = {lang: f"<2{lang}>" for lang in NLLB_CODES}
M2M100_CODES = {lang: f"__{lang}__" for lang in NLLB_CODES}
CODE_SCHEMES = ("nllb", "madlad", "m2m100", "prompt", "none")


# ---------------------------------------------------------------------------------------------------
# 1. Protected spans
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlaceholderStyle:
    """How placeholder number ``i`` is written, and how to find it (exactly, or mangled) in output."""

    name: str
    template: str  # format string with one {} for the index
    exact: re.Pattern  # group 1 = index
    mangled: re.Pattern  # leftovers that show a placeholder was altered

    def make(self, i: int) -> str:
        """The placeholder for span number ``i``."""
        return self.template.format(i)


PLACEHOLDER_STYLES = {
    # Mathematical white brackets: never produced by prose, kept by LLMs and byte-level tokenizers.
    "bracket": PlaceholderStyle("bracket", "⟦{}⟧", re.compile(r"⟦(\d+)⟧"), re.compile(r"[⟦⟧]")),
    # ASCII fallback for SentencePiece vocabularies without ``⟦`` (NLLB maps it to <unk>).
    "underscore": PlaceholderStyle(
        "underscore", "__P{}__", re.compile(r"__P(\d+)__"), re.compile(r"_+\s*P\s*_*\s*\d+|P\d+\s*_+")
    ),
}
DEFAULT_PLACEHOLDER_STYLE = "bracket"


def _style(style: str | PlaceholderStyle) -> PlaceholderStyle:
    if isinstance(style, PlaceholderStyle):
        return style
    if style not in PLACEHOLDER_STYLES:
        raise ValueError(f"unknown placeholder style {style!r}; choose one of {sorted(PLACEHOLDER_STYLES)}")
    return PLACEHOLDER_STYLES[style]


@dataclass(frozen=True)
class Span:
    """One protected piece of the original text: its placeholder index, verbatim text and kind."""

    index: int
    text: str
    kind: str


class SpanRestoreError(ValueError):
    """The translated text lost, duplicated, invented or altered placeholders."""

    def __init__(self, missing=(), duplicated=(), unknown=(), altered=()):
        self.missing = list(missing)
        self.duplicated = list(duplicated)
        self.unknown = list(unknown)
        self.altered = list(altered)
        parts = [f"{k}={v}" for k, v in self.as_dict().items() if v]
        super().__init__("placeholders did not survive translation: " + ", ".join(parts))

    def as_dict(self) -> dict:
        """The four problem lists, as stored with a rejected record."""
        return {"missing": self.missing, "duplicated": self.duplicated, "unknown": self.unknown,
                "altered": self.altered}


_UNITS = sorted(
    """% ‰ °C °F ° km/h m/s mph kph km cm mm nm µm μm m kg mg µg μg g lb lbs oz ml mL cl dl l L gal ft yd mi
    sec ms µs ns min h hr hrs Hz kHz MHz GHz B KB kB MB GB TB Kb Mb Gb bps kbps Mbps Gbps V mV kV W kW MW GW
    kWh mA mAh J kJ cal kcal N Pa kPa hPa bar psi px pt em rem dpi""".split(),
    key=len, reverse=True,
)
_NUMBER = r"[-+]?\d+(?:[.,]\d+)*"
_INLINE_DOLLAR_MATH = re.compile(r"(?<![\\$\w])\$(?=[^\s$])(?:[^$\n\\]|\\.)+?(?<=\S)\$(?!\d)")

# (kind, pattern), in priority order: an earlier kind claims its text first; later finders run on text
# where claimed spans are blanked out, so spans never overlap and a code block's backticks cannot pair
# with an inline-code backtick after it.
_SPAN_PATTERNS: list[tuple[str, re.Pattern]] = [
    # Placeholder-like strings already in the source must not be confused with ours.
    ("placeholder", re.compile(r"⟦[^⟦⟧\n]{0,12}⟧|[⟦⟧]|_+\s*P\s*\d+\s*_+")),
    ("code_block", re.compile(r"(?P<f>`{3,}|~{3,})[\s\S]*?(?P=f)|(?:`{3,}|~{3,})[\s\S]*\Z")),
    ("inline_code", re.compile(r"``[^\n]+?``|`[^`\n]+`")),
    ("latex_env", re.compile(r"\\begin\{([A-Za-z]+\*?)\}[\s\S]*?\\end\{\1\}")),
    ("display_math", re.compile(r"\$\$[\s\S]+?\$\$|\\\[[\s\S]+?\\\]")),
    ("inline_math", re.compile(r"\\\([\s\S]+?\\\)|" + _INLINE_DOLLAR_MATH.pattern)),
    ("json", None),  # found by _find_json (a decoder, not a regex)
    ("markup", re.compile(
        r"<!--[\s\S]*?-->|<\|[^|<>\n]{1,40}\|>|&(?:[A-Za-z]{2,8}|#\d{1,6});"
        r"|</?[A-Za-z][\w:.-]*(?:\s+[\w:.-]+(?:\s*=\s*(?:\"[^\"]*\"|'[^']*'|[^\s\"'<>=`]+))?)*\s*/?>"
    )),
    ("url", re.compile(r"\b(?:https?|ftp)://[^\s<>\"'`]+|\bwww\.[^\s<>\"'`]+\.[^\s<>\"'`]+")),
    ("email", re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")),
    ("template", re.compile(
        r"\{\{[\s\S]*?\}\}|\{%[\s\S]*?%\}|\$\{[A-Za-z_]\w*\}"
        r"|\{(?:[A-Za-z_][\w.]*(?:\[[^\]\n]*\])?)?(?:![rsa])?(?::[^{}\n]*)?\}"
        r"|(?<![\d%])%(?:\([A-Za-z_]\w*\))?[-+#0]*(?:\d+|\*)?(?:\.\d+)?[sdifeEgGxXc](?![A-Za-z])"
    )),
    ("latex_command", re.compile(r"\\[A-Za-z]+\*?(?:\[[^\]\n]*\])?(?:\{[^{}\n]*\})*")),
    ("number_unit", re.compile(
        r"[$€£¥₹]\s?\d+(?:[.,]\d+)*(?:\s?(?:[kKmMbB]n?|million|billion)\b)?"
        r"|(?<![\w.])" + _NUMBER + r"\s?(?:" + "|".join(re.escape(u) for u in _UNITS) + r")(?![\w/])"
    )),
]
SPAN_KINDS = tuple(kind for kind, _ in _SPAN_PATTERNS)
_BLANK = "\x00"


def _trim_url(s: str) -> str:
    """Drop sentence punctuation and unbalanced closing brackets from the end of a URL match."""
    while s:
        last = s[-1]
        if last in ".,;:!?'\"":
            s = s[:-1]
        elif last in ")]}" and s.count({")": "(", "]": "[", "}": "{"}[last]) < s.count(last):
            s = s[:-1]
        else:
            break
    return s


_JSON_START = re.compile(r"[\[{]")


def _find_json(text: str) -> Iterable[tuple[int, int]]:
    """Yield (start, end) of JSON objects/arrays that decode completely (``{"a": 1}``, ``[1, 2]``)."""
    decoder = json.JSONDecoder()
    i = 0
    while True:
        m = _JSON_START.search(text, i)
        if not m:
            return
        try:
            obj, end = decoder.raw_decode(text, m.start())
        except ValueError:
            i = m.start() + 1
            continue
        if isinstance(obj, (dict, list)):
            yield m.start(), end
            i = end
        else:
            i = m.start() + 1


def find_protected_spans(text: str) -> list[tuple[int, int, str]]:
    """Return sorted, non-overlapping ``(start, end, kind)`` of everything that must not be translated.

    Kinds are tried in priority order. A hit that cuts through a span claimed earlier is dropped; a hit
    that contains whole claimed spans absorbs them (display math around a ``\\begin{..}`` block, JSON
    around a URL). Regex finders see claimed spans blanked out, so their delimiters cannot pair up with
    a backtick or dollar inside a code block.
    """
    work = text
    found: list[tuple[int, int, str]] = []
    for kind, pattern in _SPAN_PATTERNS:
        if kind == "json":
            hits = list(_find_json(text))
        else:
            hits = []
            for m in pattern.finditer(work):
                start, end = m.start(), m.end()
                if kind == "url":
                    end = start + len(_trim_url(m.group()))
                if end > start:
                    hits.append((start, end))
        accepted = []
        for s, e in hits:
            overlapping = [f for f in found if f[0] < e and s < f[1]]
            if any(not (s <= f[0] and f[1] <= e) for f in overlapping):
                continue  # cuts through a stronger span
            for f in overlapping:
                found.remove(f)
            found.append((s, e, kind))
            accepted.append((s, e))
        if accepted:
            parts, pos = [], 0
            for s, e in accepted:
                parts += [work[pos:s], _BLANK * (e - s)]
                pos = e
            work = "".join(parts) + work[pos:]
    return sorted(found)


def protect(text: str, style: str | PlaceholderStyle = DEFAULT_PLACEHOLDER_STYLE) -> tuple[str, list[Span]]:
    """Mask protected spans with numbered placeholders; return ``(masked_text, spans)``."""
    st = _style(style)
    spans: list[Span] = []
    out, pos = [], 0
    for start, end, kind in find_protected_spans(text):
        out.append(text[pos:start])
        out.append(st.make(len(spans)))
        spans.append(Span(len(spans), text[start:end], kind))
        pos = end
    out.append(text[pos:])
    return "".join(out), spans


def check_placeholders(masked: str, spans: Sequence[Span], style=DEFAULT_PLACEHOLDER_STYLE) -> SpanRestoreError | None:
    """Return a ``SpanRestoreError`` describing what went wrong with the placeholders, or None if intact."""
    st = _style(style)
    counts: dict[int, int] = {}
    for m in st.exact.finditer(masked):
        counts[int(m.group(1))] = counts.get(int(m.group(1)), 0) + 1
    n = len(spans)
    missing = [i for i in range(n) if counts.get(i, 0) == 0]
    duplicated = [i for i in range(n) if counts.get(i, 0) > 1]
    unknown = sorted(i for i in counts if i >= n)
    altered = [m.group() for m in st.mangled.finditer(st.exact.sub(" ", masked))]
    if missing or duplicated or unknown or altered:
        return SpanRestoreError(missing, duplicated, unknown, altered)
    return None


def restore(masked: str, spans: Sequence[Span], style=DEFAULT_PLACEHOLDER_STYLE) -> str:
    """Put the protected spans back; raise ``SpanRestoreError`` if any placeholder is missing/duplicated/altered."""
    err = check_placeholders(masked, spans, style)
    if err is not None:
        raise err
    st = _style(style)
    return st.exact.sub(lambda m: spans[int(m.group(1))].text, masked)


# ---------------------------------------------------------------------------------------------------
# 2. Segmentation
# ---------------------------------------------------------------------------------------------------

_LETTER = re.compile(r"[^\W\d_]")
_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])\s+(?=\S)|(?<=[。！？])(?=\S)")
# Markdown list / heading / quote markers: kept verbatim (MT models tend to drop them).
_LINE_PREFIX = re.compile(r"^(?:[-*+•]|\d{1,3}[.)]|[A-Za-z][.)]|#{1,6}|>)\s+")


def _approx_tokens(text: str) -> int:
    """A model-free token estimate (about four characters per token)."""
    return max(1, (len(text) + 3) // 4)


def _has_prose(text: str, style: PlaceholderStyle) -> bool:
    return bool(_LETTER.search(style.exact.sub(" ", text)))


def _pack(parts: list[str], seps: list[str], budget: int, count: Callable[[str], int]) -> list[tuple[bool, str]]:
    """Greedily join consecutive ``parts`` (separated by ``seps``) into pieces within ``budget``."""
    pieces: list[tuple[bool, str]] = []
    cur = parts[0]
    for sep, part in zip(seps, parts[1:], strict=True):
        joined = cur + sep + part
        if count(joined) <= budget:
            cur = joined
        else:
            pieces += [(True, cur), (False, sep)]
            cur = part
    pieces.append((True, cur))
    return pieces


def _split_core(core: str, budget: int | None, count: Callable[[str], int]) -> list[tuple[bool, str]]:
    if budget is None or count(core) <= budget:
        return [(True, core)]
    seg = re.split(f"({_SENTENCE_END.pattern})", core)
    sentences, seps = seg[0::2], seg[1::2]
    out: list[tuple[bool, str]] = []
    for translate, piece in _pack(sentences, seps, budget, count):
        if translate and count(piece) > budget:  # one sentence alone is too long: cut at spaces
            words = re.split(r"(\s+)", piece)
            out += _pack(words[0::2], words[1::2], budget, count)
        else:
            out.append((translate, piece))
    return out


def split_for_translation(
    text: str,
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
    split_lines: bool = True,
    style: str | PlaceholderStyle = DEFAULT_PLACEHOLDER_STYLE,
) -> list[tuple[bool, str]]:
    """Cut (masked) text into ``(translate?, piece)`` pairs; ``"".join`` of the pieces gives ``text`` back.

    Splits at line breaks (``split_lines``) or blank lines, then at sentence ends and finally at spaces
    until every translatable piece fits ``max_tokens`` under ``count_tokens``. Whitespace, list markers
    and pieces without letters outside placeholders are returned with ``translate=False``.
    """
    st = _style(style)
    count = count_tokens or _approx_tokens
    boundary = r"(\n+)" if split_lines else r"(\n[ \t]*\n\s*)"
    chunks = re.split(boundary, text)
    out: list[tuple[bool, str]] = []
    for j, chunk in enumerate(chunks):
        if j % 2 == 1 or not chunk:
            if chunk:
                out.append((False, chunk))
            continue
        lead = chunk[: len(chunk) - len(chunk.lstrip())]
        rest = chunk[len(lead):]
        m = _LINE_PREFIX.match(rest)
        if m:
            lead, rest = lead + m.group(), rest[m.end():]
        core = rest.rstrip()
        trail = rest[len(core):]
        if lead:
            out.append((False, lead))
        if core:
            if _has_prose(core, st):
                out += [(tr and _has_prose(p, st), p) for tr, p in _split_core(core, max_tokens, count)]
            else:
                out.append((False, core))
        if trail:
            out.append((False, trail))
    return out


# ---------------------------------------------------------------------------------------------------
# 3. Translator backends
# ---------------------------------------------------------------------------------------------------


class Translator(ABC):
    """One interface for every backend: ``translate_batch(texts, src_lang, tgt_lang) -> list[str]``.

    Attributes the pipeline reads: ``name`` and ``version`` (stored in every output record),
    ``placeholder_style`` (the placeholder spelling this backend keeps best), ``max_input_tokens``
    and ``count_tokens`` (the segmentation budget; None = no limit) and ``split_lines`` (whether to
    send one line at a time, for models that drop line breaks).
    """

    name: str = "translator"
    version: str = "0"
    placeholder_style: str = DEFAULT_PLACEHOLDER_STYLE
    max_input_tokens: int | None = None
    split_lines: bool = True

    def count_tokens(self, text: str) -> int:
        """Token count of ``text`` under this backend (default: a four-characters-per-token estimate)."""
        return _approx_tokens(text)

    @abstractmethod
    def translate_batch(self, texts: Sequence[str], src_lang: str, tgt_lang: str) -> list[str]:
        """Translate each text; the result has the same length and order as ``texts``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, version={self.version!r})"


_WORD = re.compile(r"\w+", re.UNICODE)


def _match_case(src: str, word: str) -> str:
    if src.isupper() and len(src) > 1:
        return word.upper()
    if src[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


class SandboxTranslator(Translator):
    """Word-by-word translation with the sandbox world's lexicon ``{lang: {english_word: word}}``.

    Unknown words, numbers, punctuation and placeholders are kept; the case of each word is carried over
    (``Cat`` -> ``Katze``, ``CAT`` -> ``KATZE``).
    """

    split_lines = False

    def __init__(self, lexicon: dict[str, dict[str, str]], name: str = "sandbox-lexicon"):
        if not isinstance(lexicon, dict) or not all(isinstance(v, dict) for v in lexicon.values()):
            raise TypeError("lexicon must be a dict {lang: {english_word: translated_word}}")
        self.lexicon = {lang: {k.lower(): v for k, v in words.items()} for lang, words in lexicon.items()}
        self.name = name
        blob = json.dumps(self.lexicon, sort_keys=True, ensure_ascii=False).encode()
        self.version = "lexicon-" + hashlib.sha256(blob).hexdigest()[:12]

    def translate_batch(self, texts, src_lang, tgt_lang):
        """Replace every purely alphabetic word found in the target lexicon."""
        if src_lang != "en":
            raise ValueError(f"SandboxTranslator translates from English only, got src_lang={src_lang!r}")
        if tgt_lang not in self.lexicon:
            raise KeyError(f"SandboxTranslator: no lexicon for {tgt_lang!r}; have {sorted(self.lexicon)}")
        words = self.lexicon[tgt_lang]

        def sub(m: re.Match) -> str:
            w = m.group()
            if not w.isalpha():
                return w
            t = words.get(w.lower())
            return w if t is None else _match_case(w, t)

        return [_WORD.sub(sub, t) for t in texts]


def _sha(text: str, n: int = 10) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _choose_placeholder_style(tokenizer) -> str:
    """``bracket`` if the tokenizer spells ``⟦12⟧`` back exactly, else ``underscore``."""
    probe = "a ⟦12⟧ b"
    try:
        ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
        back = tokenizer.decode(ids, skip_special_tokens=True)
    except Exception:  # a tokenizer that cannot even encode it
        return "underscore"
    return "bracket" if back.strip() == probe else "underscore"


DEFAULT_PROMPT = (
    "Translate the following text from {src_name} to {tgt_name}. Copy every placeholder such as {example} "
    "unchanged, keep the formatting, and reply with the translation only.\n\n{text}"
)


class TransformersTranslator(Translator):
    """A local transformers model: NLLB-200 / M2M-100 / MADLAD-400 (seq2seq) or a prompted causal LM.

    ``code_scheme`` tells how the target language is given to the model: ``nllb`` (``src_lang`` on the
    tokenizer and the FLORES code, e.g. ``fra_Latn``, as forced first token), ``m2m100`` (``__fr__``),
    ``madlad`` (``<2fr>`` prefixed to the source), ``prompt`` (an instruction for causal LMs, through
    the chat template when the tokenizer has one) or ``none`` (a model fixed to one pair, e.g. Marian).
    ``auto`` picks from the tokenizer's vocabulary. Inputs longer than ``max_input_tokens`` are split
    and re-joined; inputs are sorted by length and run ``batch_size`` at a time; remote code is off.
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike,
        *,
        code_scheme: str = "auto",
        lang_codes: dict[str, str] | None = None,
        device: str | None = None,
        batch_size: int = 16,
        max_input_tokens: int = 256,
        max_new_tokens: int | None = None,
        num_beams: int = 1,
        dtype: str | None = None,
        prompt_template: str = DEFAULT_PROMPT,
        placeholder_style: str | None = None,
        model=None,
        tokenizer=None,
    ):
        import torch
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        path = str(model_name_or_path)
        if model is None:
            cfg = AutoConfig.from_pretrained(path, trust_remote_code=False)
            cls = AutoModelForSeq2SeqLM if getattr(cfg, "is_encoder_decoder", False) else AutoModelForCausalLM
            kwargs = {"trust_remote_code": False}
            if dtype is not None:
                kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) else dtype
            model = cls.from_pretrained(path, **kwargs)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.is_seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if not self.is_seq2seq:
            tokenizer.padding_side = "left"  # generation continues from the right end of each row
        self.code_scheme = self._detect_scheme() if code_scheme == "auto" else code_scheme
        if self.code_scheme not in CODE_SCHEMES:
            raise ValueError(f"code_scheme must be 'auto' or one of {CODE_SCHEMES}, got {code_scheme!r}")
        default_codes = {"nllb": NLLB_CODES, "madlad": MADLAD_CODES, "m2m100": M2M100_CODES}
        self.lang_codes = dict(default_codes.get(self.code_scheme, {}), **(lang_codes or {}))
        self.batch_size = batch_size
        limit = getattr(tokenizer, "model_max_length", None) or max_input_tokens
        self.max_input_tokens = min(max_input_tokens, limit) if limit < 1_000_000 else max_input_tokens
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.prompt_template = prompt_template
        self.placeholder_style = placeholder_style or _choose_placeholder_style(tokenizer)
        self.split_lines = self.is_seq2seq  # MT models drop line breaks; chat LMs keep them
        self.name = "transformers:" + Path(path.rstrip("/")).name
        rev = getattr(model.config, "_commit_hash", None) or "local-" + _sha(model.config.to_json_string())
        self.version = (
            f"transformers={transformers.__version__};rev={rev};scheme={self.code_scheme};"
            f"beams={num_beams};prompt={_sha(prompt_template, 8)}"
        )
        self.n_generate_calls = 0

    def _detect_scheme(self) -> str:
        vocab = self.tokenizer.get_vocab()
        if "fra_Latn" in vocab:
            return "nllb"
        if "<2fr>" in vocab:
            return "madlad"
        if "__fr__" in vocab:
            return "m2m100"
        return "none" if self.is_seq2seq else "prompt"

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` under the model's tokenizer (no special tokens)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _code(self, lang: str) -> str:
        if lang not in self.lang_codes:
            raise KeyError(f"no {self.code_scheme} code for language {lang!r}; pass lang_codes={{{lang!r}: ...}}")
        return self.lang_codes[lang]

    def _model_inputs(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[str]:
        if self.code_scheme == "madlad":
            return [f"{self._code(tgt_lang)} {t}" for t in texts]
        if self.code_scheme == "prompt":
            example = _style(self.placeholder_style).make(0)
            src_name = LANGUAGE_NAMES.get(src_lang, src_lang)
            tgt_name = LANGUAGE_NAMES.get(tgt_lang, tgt_lang)
            out = []
            for t in texts:
                msg = self.prompt_template.format(src_name=src_name, tgt_name=tgt_name, example=example, text=t)
                if getattr(self.tokenizer, "chat_template", None):
                    msg = self.tokenizer.apply_chat_template(
                        [{"role": "user", "content": msg}], tokenize=False, add_generation_prompt=True
                    )
                else:
                    msg = f"{msg}\n\n{tgt_name}:"
                out.append(msg)
            return out
        return list(texts)

    def _generate(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[str]:
        import torch

        gen_kwargs: dict[str, Any] = {"do_sample": False, "num_beams": self.num_beams,
                                      "pad_token_id": self.tokenizer.pad_token_id}
        if self.code_scheme in ("nllb", "m2m100"):
            if hasattr(self.tokenizer, "src_lang"):
                self.tokenizer.src_lang = self._code(src_lang)
            forced = self.tokenizer.convert_tokens_to_ids(self._code(tgt_lang))
            if forced is None or forced == self.tokenizer.unk_token_id:
                raise KeyError(f"tokenizer has no token for {self._code(tgt_lang)!r}")
            gen_kwargs["forced_bos_token_id"] = forced
        inputs = self._model_inputs(texts, src_lang, tgt_lang)
        add_special = self.code_scheme != "prompt"  # the chat template already holds its special tokens
        enc = self.tokenizer(inputs, return_tensors="pt", padding=True, add_special_tokens=add_special)
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        longest = max(self.count_tokens(t) for t in texts)
        gen_kwargs["max_new_tokens"] = self.max_new_tokens or 2 * longest + 16
        with torch.no_grad():
            out = self.model.generate(**enc, **gen_kwargs)
        self.n_generate_calls += 1
        if not self.is_seq2seq:
            out = out[:, enc["input_ids"].shape[1]:]
        decoded = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        results = []
        for src, hyp in zip(texts, decoded, strict=True):
            hyp = hyp.strip()
            if "\n" not in src and not self.is_seq2seq:
                hyp = hyp.split("\n", 1)[0].strip()  # a causal LM keeps talking after the translation
            results.append(hyp)
        return results

    def translate_batch(self, texts, src_lang, tgt_lang):
        """Translate ``texts``: split over-long ones, batch by length, generate, re-join."""
        pieces: list[str] = []
        plans: list[list[tuple[bool, str | int]]] = []
        for t in texts:
            plan = []
            for translate, piece in split_for_translation(
                t, self.max_input_tokens, self.count_tokens, split_lines=False, style=self.placeholder_style
            ):
                if translate:
                    plan.append((True, len(pieces)))
                    pieces.append(piece)
                else:
                    plan.append((False, piece))
            plans.append(plan)
        order = sorted(range(len(pieces)), key=lambda i: self.count_tokens(pieces[i]))
        translated: list[str | None] = [None] * len(pieces)
        for b in range(0, len(order), self.batch_size):
            idx = order[b: b + self.batch_size]
            for i, hyp in zip(idx, self._generate([pieces[i] for i in idx], src_lang, tgt_lang), strict=True):
                translated[i] = hyp
        return ["".join(translated[x] if tr else x for tr, x in plan) for plan in plans]


class OpenAICompatibleTranslator(Translator):
    """An OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, vLLM, TGI, llama.cpp server, ...).

    ``model``, ``base_url`` and ``api_key`` default to ``$CFT_TRANSLATE_MODEL``,
    ``$CFT_TRANSLATE_BASE_URL`` (else ``https://api.openai.com/v1``) and ``$CFT_TRANSLATE_API_KEY`` (else
    ``$OPENAI_API_KEY``). The key is only ever sent in the Authorization header: it is not part of
    ``name``, ``version``, ``repr`` or any error message. Plain urllib, no extra dependency.
    """

    split_lines = False
    max_input_tokens = 1500

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        temperature: float = 0.0,
        timeout: float = 120.0,
        max_retries: int = 4,
        retry_backoff: float = 2.0,
        max_workers: int = 4,
        system_prompt: str | None = None,
    ):
        self.model = model or os.environ.get("CFT_TRANSLATE_MODEL")
        if not self.model:
            raise ValueError("OpenAICompatibleTranslator: pass model= or set $CFT_TRANSLATE_MODEL")
        self.base_url = (base_url or os.environ.get("CFT_TRANSLATE_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self._api_key = api_key or os.environ.get("CFT_TRANSLATE_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self.temperature = temperature
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.max_workers = max_workers
        self.system_prompt = system_prompt or (
            "You are a professional translator. Translate the user's text from {src_name} to {tgt_name}. "
            "Copy every placeholder such as {example} exactly, keep line breaks and Markdown, and reply with "
            "the translation only."
        )
        self.name = f"openai-compatible:{self.model}"
        self.version = f"model={self.model};temperature={temperature};prompt={_sha(self.system_prompt, 8)}"

    def _post(self, payload: dict) -> dict:
        return post_chat_completions(self.base_url, payload, self._api_key, timeout=self.timeout,
                                     max_retries=self.max_retries, backoff=self.retry_backoff,
                                     what="translation endpoint")

    def _translate_one(self, text: str, src_lang: str, tgt_lang: str) -> str:
        if not text.strip():
            return text
        system = self.system_prompt.format(
            src_name=LANGUAGE_NAMES.get(src_lang, src_lang), tgt_name=LANGUAGE_NAMES.get(tgt_lang, tgt_lang),
            example=_style(self.placeholder_style).make(0),
        )
        payload = {"model": self.model, "temperature": self.temperature,
                   "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}]}
        out = self._post(payload)
        try:
            return out["choices"][0]["message"]["content"].strip()
        except (KeyError, IndexError, TypeError, AttributeError):
            raise RuntimeError(f"unexpected response from {self.base_url}: {str(out)[:300]}") from None

    def translate_batch(self, texts, src_lang, tgt_lang):
        """One chat request per text, ``max_workers`` at a time; order is kept."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            return list(pool.map(lambda t: self._translate_one(t, src_lang, tgt_lang), texts))


# ---------------------------------------------------------------------------------------------------
# Translating protected, segmented texts
# ---------------------------------------------------------------------------------------------------


@dataclass
class TextOutcome:
    """The result for one text: the restored translation (None if rejected) and span bookkeeping."""

    text: str | None
    n_spans: int
    n_spans_ok: int
    error: dict | None = None


def translate_texts(
    texts: Sequence[str],
    translator: Translator,
    src_lang: str,
    tgt_lang: str,
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> list[TextOutcome]:
    """Protect, segment, translate (``batch_size`` pieces per call, identical pieces once) and restore texts."""
    style = _style(translator.placeholder_style)
    plans, all_spans = [], []
    unique: dict[str, int] = {}
    for t in texts:
        masked, spans = protect(t, style)
        plan = []
        for translate, piece in split_for_translation(
            masked, translator.max_input_tokens, translator.count_tokens, translator.split_lines, style
        ):
            if translate:
                plan.append((True, unique.setdefault(piece, len(unique))))
            else:
                plan.append((False, piece))
        plans.append(plan)
        all_spans.append(spans)
    pieces = list(unique)
    outputs: list[str] = []
    for b in range(0, len(pieces), batch_size):
        batch = pieces[b: b + batch_size]
        out = translator.translate_batch(batch, src_lang, tgt_lang)
        if len(out) != len(batch):
            raise RuntimeError(f"{translator.name} returned {len(out)} translations for {len(batch)} inputs")
        outputs.extend("" if o is None else str(o).strip() for o in out)
        if on_batch:
            on_batch(len(batch))
    results = []
    for text, plan, spans in zip(texts, plans, all_spans, strict=True):
        masked_out = "".join(outputs[x] if tr else x for tr, x in plan)
        err = check_placeholders(masked_out, spans, style)
        if err is None:
            restored = restore(masked_out, spans, style)
            if restored.strip() or not text.strip():
                results.append(TextOutcome(restored, len(spans), len(spans)))
            else:  # the translator returned nothing for a non-empty text
                results.append(TextOutcome(None, len(spans), len(spans), {"empty_output": True}))
        else:
            bad = set(err.missing) | set(err.duplicated)
            results.append(TextOutcome(None, len(spans), len(spans) - len(bad), err.as_dict()))
    return results


# ---------------------------------------------------------------------------------------------------
# 4. Builder
# ---------------------------------------------------------------------------------------------------

FORMAT_VERSION = 1
_ROLES_PROMPT = ("system", "user")


def validate_record(rec: Any, where: str = "record") -> None:
    """Raise ``ValueError`` naming the record and key if ``rec`` is not in the common chat schema."""
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a dict, got {type(rec).__name__}")
    rid = rec.get("id")
    where = f"{where} (id={rid!r})"
    if not isinstance(rid, str) or not rid:
        raise ValueError(f"{where}: key 'id' must be a non-empty string")
    for key, roles in (("prompt", _ROLES_PROMPT), ("completion", ("assistant",))):
        msgs = rec.get(key)
        if not isinstance(msgs, list) or not msgs:
            raise ValueError(f"{where}: key {key!r} must be a non-empty list of messages")
        for j, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in roles:
                raise ValueError(f"{where}: {key}[{j}] must be {{'role': one of {roles}, 'content': str}}")


def sample_records(records: Sequence[dict], n: int | None, seed: int = 0) -> list[dict]:
    """A seeded random subset of ``n`` records, in their original order (all records if ``n`` is None)."""
    records = list(records)
    if n is None:
        return records
    if not 0 <= n <= len(records):
        raise ValueError(f"cannot sample n={n} records from {len(records)}")
    keep = sorted(random.Random(seed).sample(range(len(records)), n))
    return [records[i] for i in keep]


@dataclass
class TranslationBuild:
    """What ``build_translated_dataset`` made: where, how many records kept/rejected per language."""

    out_dir: Path
    dataset_dir: Path
    n_kept: int
    n_rejected: int
    per_language: dict[str, dict] = field(default_factory=dict)
    report: dict | None = None


def _shard_paths(out_dir: Path, lang: str, k: int) -> tuple[Path, Path]:
    d = out_dir / "shards" / lang
    return d / f"{k:05d}.jsonl", d / f"{k:05d}.meta.json"


def _translate_shard(records, lang, translator, src_lang, batch_size, dataset_name, on_batch):
    texts, where = [], []
    for r_i, rec in enumerate(records):
        for key in ("prompt", "completion"):
            for m_i, msg in enumerate(rec[key]):
                texts.append(msg["content"])
                where.append((r_i, key, m_i))
    outcomes = translate_texts(texts, translator, src_lang, lang, batch_size, on_batch)
    per_rec: list[dict] = [
        {"id": r["id"], "ok": True, "n_spans": 0, "n_spans_ok": 0, "chars_in": 0, "chars_out": 0, "errors": []}
        for r in records
    ]
    translated = [{"prompt": [dict(m) for m in r["prompt"]], "completion": [dict(m) for m in r["completion"]]}
                  for r in records]
    for (r_i, key, m_i), text, oc in zip(where, texts, outcomes, strict=True):
        st = per_rec[r_i]
        st["n_spans"] += oc.n_spans
        st["n_spans_ok"] += oc.n_spans_ok
        st["chars_in"] += len(text)
        if oc.text is None:
            st["ok"] = False
            st["errors"].append({"field": f"{key}[{m_i}]", **oc.error})
        else:
            st["chars_out"] += len(oc.text)
            translated[r_i][key][m_i] = {"role": records[r_i][key][m_i]["role"], "content": oc.text}
    kept = []
    for rec, tr, st in zip(records, translated, per_rec, strict=True):
        if not st["ok"]:
            st["chars_out"] = None
            continue
        kept.append({
            "id": f"{rec['id']}-{lang}",
            "dataset": dataset_name or f"m{rec.get('dataset') or 'dataset'}",
            "language": lang,
            "counterpart_id": rec["id"],
            "prompt": [{"role": m["role"], "content": m["content"]} for m in tr["prompt"]],
            "completion": [{"role": m["role"], "content": m["content"]} for m in tr["completion"]],
            "translator": translator.name,
            "translator_version": translator.version,
        })
    return kept, per_rec


def _dataset_features():
    from datasets import Features, List, Value

    msg = List({"role": Value("string"), "content": Value("string")})
    return Features({
        "id": Value("string"), "dataset": Value("string"), "language": Value("string"),
        "counterpart_id": Value("string"), "prompt": msg, "completion": msg,
        "translator": Value("string"), "translator_version": Value("string"),
    })


def _save_dataset(out_dir: Path, shard_files: list[Path], progress: bool = True):
    """Concatenate shards into one ``datasets.Dataset`` and save it to ``out_dir/dataset`` atomically."""
    from datasets import Dataset, concatenate_datasets
    from datasets.utils import logging as ds_logging

    quiet = not progress and ds_logging.is_progress_bar_enabled()
    if quiet:
        ds_logging.disable_progress_bar()
    try:
        return _save_dataset_quietly(out_dir, shard_files, Dataset, concatenate_datasets)
    finally:
        if quiet:
            ds_logging.enable_progress_bar()


def _save_dataset_quietly(out_dir, shard_files, Dataset, concatenate_datasets):
    feats = _dataset_features()
    parts, seen = [], set()
    for f in shard_files:
        rows = read_jsonl(f)
        for r in rows:
            if r["id"] in seen:
                raise RuntimeError(f"{f}: duplicate record id {r['id']!r} across shards")
            seen.add(r["id"])
        if rows:  # a shard whose records were all rejected is empty
            parts.append(Dataset.from_list(rows, features=feats))
    ds = concatenate_datasets(parts) if parts else Dataset.from_dict({k: [] for k in feats}, features=feats)
    target = out_dir / "dataset"
    tmp = out_dir / ".dataset.tmp"
    old = out_dir / ".dataset.old"
    for p in (tmp, old):
        if p.exists():
            shutil.rmtree(p)
    # An empty dataset needs num_shards=1: with zero shards load_from_disk fails (datasets 5.2).
    ds.save_to_disk(str(tmp), num_shards=1 if len(ds) == 0 else None)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        shutil.rmtree(old)
    return ds


def build_translated_dataset(
    records: Iterable[dict],
    languages: Sequence[str],
    translator: Translator,
    out_dir: str | os.PathLike,
    shard_size: int = 500,
    *,
    n: int | None = None,
    seed: int = 0,
    src_lang: str = "en",
    batch_size: int = 64,
    dataset_name: str | None = None,
    progress: bool = True,
    langid: bool = True,
    langid_max_per_language: int | None = 2000,
    push_to_hub: str | None = None,
    hub_private: bool = True,
) -> TranslationBuild:
    """Translate (a seeded ``n``-subset of) ``records`` into ``languages``; resumable, sharded, reported.

    Writes ``out_dir/shards/<lang>/<k>.jsonl`` (+ ``.meta.json``, written after the data as the commit
    marker), ``manifest.json``, ``dataset/`` (``datasets.save_to_disk``), ``quality_report.{json,csv}`` and
    ``rejected.jsonl``. Rerunning with the same inputs skips finished shards. ``push_to_hub`` is a hub repo
    id (token from ``$HF_TOKEN``); off by default.
    """
    out_dir = Path(out_dir)
    records = list(records)
    for i, rec in enumerate(records):
        validate_record(rec, f"record {i}")
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        dup = next(x for x in ids if ids.count(x) > 1)
        raise ValueError(f"record ids must be unique; {dup!r} occurs more than once")
    records = sample_records(records, n, seed)
    languages = list(languages)
    if not languages or len(set(languages)) != len(languages) or src_lang in languages:
        raise ValueError(f"languages must be distinct, non-empty and exclude {src_lang!r}: {languages}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")

    config = {
        "format_version": FORMAT_VERSION, "translator": translator.name,
        "translator_version": translator.version, "src_lang": src_lang, "shard_size": shard_size,
        "n_records": len(records), "n": n, "seed": seed, "dataset_name": dataset_name,
        "record_ids_sha256": hashlib.sha256("\n".join(r["id"] for r in records).encode()).hexdigest(),
    }
    manifest_path = out_dir / "manifest.json"
    if manifest_path.exists():
        old = read_json(manifest_path).get("config", {})
        diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        if diff:
            raise ValueError(
                f"{manifest_path}: existing build differs in {diff} (was {[old.get(k) for k in diff]}, now "
                f"{[config.get(k) for k in diff]}); use a new out_dir or delete the old one"
            )
        languages_all = list(dict.fromkeys(read_json(manifest_path).get("languages", []) + languages))
    else:
        languages_all = languages

    n_shards = (len(records) + shard_size - 1) // shard_size
    shards = [(lang, k) for lang in languages for k in range(n_shards)]

    def done(lang, k):
        data, meta = _shard_paths(out_dir, lang, k)
        return data.exists() and meta.exists()

    def write_manifest(status):
        write_json(manifest_path, {
            "config": config, "languages": languages_all, "n_shards_per_language": n_shards, "status": status,
            "shards_done": sum(done(lang, k) for lang in languages_all for k in range(n_shards)),
        })

    write_manifest("building")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        initial = sum(len(records[k * shard_size:(k + 1) * shard_size]) for lang, k in shards if done(lang, k))
        bar = tqdm(total=len(records) * len(languages), initial=initial, unit="rec", desc="translate")
    pieces_done = [0]

    def on_batch(n_pieces):
        pieces_done[0] += n_pieces
        if bar is not None:
            bar.set_postfix(pieces=pieces_done[0], refresh=False)

    try:
        for lang, k in shards:
            if done(lang, k):
                continue
            chunk = records[k * shard_size:(k + 1) * shard_size]
            if bar is not None:
                bar.set_description(f"translate {lang} shard {k + 1}/{n_shards}")
            kept, per_rec = _translate_shard(chunk, lang, translator, src_lang, batch_size, dataset_name, on_batch)
            data, meta = _shard_paths(out_dir, lang, k)
            write_jsonl(data, kept)
            write_json(meta, {
                "language": lang, "shard": k, "input_ids": [r["id"] for r in chunk],
                "n_kept": len(kept), "n_rejected": len(chunk) - len(kept),
                "translator": translator.name, "translator_version": translator.version, "records": per_rec,
            })
            write_manifest("building")
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()

    # Every shard of every language built so far goes into the dataset (languages of earlier runs too).
    files, per_language, rejected = [], {}, []
    for lang in languages_all:
        stats = per_language.setdefault(lang, {"n_input": 0, "n_kept": 0, "n_rejected": 0})
        for k in range(n_shards):
            data, meta_path = _shard_paths(out_dir, lang, k)
            if not (data.exists() and meta_path.exists()):
                raise RuntimeError(f"{data}: shard missing; rerun build_translated_dataset for {lang!r}")
            meta = read_json(meta_path)
            expected = [r["id"] for r in records[k * shard_size:(k + 1) * shard_size]]
            if meta["input_ids"] != expected:
                raise RuntimeError(f"{meta_path}: shard holds other records than this build expects")
            stats["n_input"] += len(expected)
            stats["n_kept"] += meta["n_kept"]
            stats["n_rejected"] += meta["n_rejected"]
            rejected += [{"id": r["id"], "language": lang, "errors": r["errors"]} for r in meta["records"]
                         if not r["ok"]]
            files.append(data)
    ds = _save_dataset(out_dir, files, progress)
    n_kept = sum(s["n_kept"] for s in per_language.values())
    if len(ds) != n_kept:
        raise RuntimeError(f"{out_dir}: dataset has {len(ds)} records, shard metadata says {n_kept}")
    write_jsonl(out_dir / "rejected.jsonl", rejected)
    write_manifest("complete")
    report = write_quality_report(out_dir, langid=langid, max_per_language=langid_max_per_language, seed=seed)
    if push_to_hub:
        ds.push_to_hub(push_to_hub, token=os.environ.get("HF_TOKEN"), private=hub_private)
    return TranslationBuild(out_dir, out_dir / "dataset", n_kept, len(rejected), per_language, report)


def load_translated_dataset(out_dir: str | os.PathLike):
    """Load the ``datasets.Dataset`` that ``build_translated_dataset`` saved under ``out_dir``."""
    from datasets import load_from_disk

    path = Path(out_dir) / "dataset"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no translated dataset here; run build_translated_dataset first")
    return load_from_disk(str(path))


# ---------------------------------------------------------------------------------------------------
# 5. Quality report
# ---------------------------------------------------------------------------------------------------

_LANGDETECT_ALIASES = {"zh": ("zh-cn", "zh-tw")}
MIN_LETTERS_FOR_LANGID = 20


def langdetect_languages() -> set[str]:
    """Language codes langdetect can recognise (``zh`` stands for zh-cn/zh-tw)."""
    from langdetect.detector_factory import PROFILES_DIRECTORY

    return set(os.listdir(PROFILES_DIRECTORY)) | {"zh"}


def detect_language(text: str) -> str | None:
    """langdetect's guess for ``text`` with protected spans removed (seeded); None if it cannot tell."""
    from langdetect import DetectorFactory, detect
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0
    masked, _ = protect(text)
    prose = PLACEHOLDER_STYLES["bracket"].exact.sub(" ", masked)
    if len(_LETTER.findall(prose)) < MIN_LETTERS_FOR_LANGID:
        return None
    try:
        return detect(prose)
    except LangDetectException:
        return None


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def write_quality_report(
    out_dir: str | os.PathLike, langid: bool = True, max_per_language: int | None = 2000, seed: int = 0
) -> dict:
    """Per-language quality numbers of a build, written as ``quality_report.json`` and ``.csv`` in ``out_dir``.

    Columns: records in/kept/rejected, protected-span survival, output/input character ratios, and
    language identification (langdetect, on at most ``max_per_language`` kept records; ``langid=False``
    skips it; a language langdetect does not know, such as a sandbox language, is reported as missing).
    """
    out_dir = Path(out_dir)
    manifest = read_json(out_dir / "manifest.json")
    n_shards = manifest["n_shards_per_language"]
    supported = langdetect_languages() if langid else set()
    rows, details = [], {}
    for lang in manifest["languages"]:
        recs, kept = [], []
        for k in range(n_shards):
            data, meta = _shard_paths(out_dir, lang, k)
            if not meta.exists():
                continue
            recs += read_json(meta)["records"]
            kept += read_jsonl(data)
        n_spans = sum(r["n_spans"] for r in recs)
        ratios = [r["chars_out"] / r["chars_in"] for r in recs if r["ok"] and r["chars_in"]]
        row: dict[str, Any] = {
            "language": lang, "n_input": len(recs), "n_kept": len(kept), "n_rejected": len(recs) - len(kept),
            "rejected_rate": (len(recs) - len(kept)) / len(recs) if recs else None,
            "spans_total": n_spans, "spans_survived": sum(r["n_spans_ok"] for r in recs),
            "span_survival_rate": sum(r["n_spans_ok"] for r in recs) / n_spans if n_spans else None,
            "length_ratio_mean": statistics.fmean(ratios) if ratios else None,
            "length_ratio_median": statistics.median(ratios) if ratios else None,
            "length_ratio_p05": _quantile(ratios, 0.05) if ratios else None,
            "length_ratio_p95": _quantile(ratios, 0.95) if ratios else None,
        }
        flagged: list[dict] = []
        if not langid:
            status = "skipped"
        elif lang not in supported:
            status = "unsupported"
        else:
            status = "ok"
        row.update({"langid_status": status, "langid_checked": None, "langid_undetermined": None,
                    "langid_wrong": None, "langid_wrong_rate": None})
        if status == "ok" and kept:
            sample = kept
            if max_per_language is not None and len(kept) > max_per_language:
                sample = random.Random(seed).sample(kept, max_per_language)
            accept = set(_LANGDETECT_ALIASES.get(lang, (lang,)))
            checked = undetermined = 0
            for rec in sample:
                text = "\n".join(m["content"] for m in rec["prompt"] + rec["completion"])
                guess = detect_language(text)
                if guess is None:
                    undetermined += 1
                    continue
                checked += 1
                if guess not in accept:
                    flagged.append({"id": rec["id"], "detected": guess})
            row.update({"langid_checked": checked, "langid_undetermined": undetermined,
                        "langid_wrong": len(flagged),
                        "langid_wrong_rate": len(flagged) / checked if checked else None})
        rows.append(row)
        details[lang] = {"langid_flagged": flagged}
    report = {"out_dir": str(out_dir), "config": manifest["config"], "languages": rows, "details": details,
              "notes": "None means not computed (no data, langid skipped, or language unknown to langdetect)."}
    write_json(out_dir / "quality_report.json", report)
    if rows:
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if v is None else v for k, v in r.items()})
        write_text(out_dir / "quality_report.csv", buf.getvalue())
    return report
