"""Translator backends behind one interface: ``Translator.translate_batch(texts, src_lang, tgt_lang)``.

``SandboxTranslator`` (word by word with the sandbox world's lexicon), ``TransformersTranslator`` (NLLB-200 /
MADLAD-400 / M2M-100 seq2seq or a prompted causal LM) and ``OpenAICompatibleTranslator`` (any
``/chat/completions`` endpoint through the ``openai`` package: OpenAI, vLLM, TGI, llama.cpp server).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...integrity import refuse_pickle_only
from ...languages import language_name
from ...models import stop_token_ids
from .segment import approx_tokens, split_for_translation
from .spans import DEFAULT_PLACEHOLDER_STYLE, get_style

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
        return approx_tokens(text)

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


def choose_placeholder_style(tokenizer) -> str:
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
            refuse_pickle_only(path, "translation model")
            cfg = AutoConfig.from_pretrained(path, trust_remote_code=False)
            cls = AutoModelForSeq2SeqLM if getattr(cfg, "is_encoder_decoder", False) else AutoModelForCausalLM
            kwargs = {"trust_remote_code": False, "use_safetensors": True}  # no pickle checkpoints
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
        self.placeholder_style = placeholder_style or choose_placeholder_style(tokenizer)
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
            example = get_style(self.placeholder_style).make(0)
            src_name = language_name(src_lang)
            tgt_name = language_name(tgt_lang)
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
        if not self.is_seq2seq:  # a chat LM ends its turn with the template's end-of-turn token, not always eos
            gen_kwargs["eos_token_id"] = stop_token_ids(self.tokenizer, self.model)
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

    ``model`` and ``base_url`` default to ``$CFT_TRANSLATE_MODEL`` and ``$CFT_TRANSLATE_BASE_URL`` (else
    ``https://api.openai.com/v1``). The key comes from the environment only: ``$CFT_TRANSLATE_API_KEY``, else
    ``$OPENAI_API_KEY``. It is sent only in the Authorization header, and is not part of ``name``, ``version``,
    ``repr`` or any error message. The ``openai`` client retries HTTP 408/409/429/5xx and connection errors
    ``max_retries`` times with exponential backoff; other HTTP errors are raised at once.
    """

    split_lines = False
    max_input_tokens = 1500

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        *,
        temperature: float = 0.0,
        timeout: float = 120.0,
        max_retries: int = 4,
        max_workers: int = 4,
        system_prompt: str | None = None,
    ):
        import openai

        self.model = model or os.environ.get("CFT_TRANSLATE_MODEL")
        if not self.model:
            raise ValueError("OpenAICompatibleTranslator: pass model= or set $CFT_TRANSLATE_MODEL")
        self.base_url = (base_url or os.environ.get("CFT_TRANSLATE_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        # A local server (vLLM, llama.cpp) often needs no key; the client insists on one, so send a dummy.
        api_key = os.environ.get("CFT_TRANSLATE_API_KEY") or os.environ.get("OPENAI_API_KEY") or "no-key"
        self.max_retries = max_retries
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key, max_retries=max_retries,
                                    timeout=timeout)
        self.temperature = temperature
        self.max_workers = max_workers
        self.system_prompt = system_prompt or (
            "You are a professional translator. Translate the user's text from {src_name} to {tgt_name}. "
            "Copy every placeholder such as {example} exactly, keep line breaks and Markdown, and reply with "
            "the translation only."
        )
        self.name = f"openai-compatible:{self.model}"
        self.version = f"model={self.model};temperature={temperature};prompt={_sha(self.system_prompt, 8)}"

    def _chat(self, messages: list[dict]) -> str:
        """One chat completion; errors name the endpoint and the HTTP status, never the key."""
        import openai

        where = f"translation endpoint {self.base_url}"
        attempts = f"(after {self.max_retries + 1} attempts)"
        try:
            resp = self.client.chat.completions.create(model=self.model, temperature=self.temperature,
                                                       messages=messages)
        except openai.APIStatusError as e:
            code = e.status_code
            retried = code in (408, 409, 429) or code >= 500
            body = e.response.text[:300] if e.response is not None else ""
            raise RuntimeError(f"{where} answered HTTP {code}: {body}" + (f" {attempts}" if retried else "")) from None
        except openai.APIConnectionError as e:  # includes timeouts
            raise RuntimeError(f"{where} unreachable: {type(e).__name__} {attempts}") from None
        try:
            content = resp.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise RuntimeError(f"unexpected response from {self.base_url}: {str(resp)[:300]}")
        return content.strip()

    def _translate_one(self, text: str, src_lang: str, tgt_lang: str) -> str:
        if not text.strip():
            return text
        system = self.system_prompt.format(src_name=language_name(src_lang), tgt_name=language_name(tgt_lang),
                                           example=get_style(self.placeholder_style).make(0))
        return self._chat([{"role": "system", "content": system}, {"role": "user", "content": text}])

    def translate_batch(self, texts, src_lang, tgt_lang):
        """One chat request per text, ``max_workers`` at a time; order is kept."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            return list(pool.map(lambda t: self._translate_one(t, src_lang, tgt_lang), texts))
