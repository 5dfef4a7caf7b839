"""DES, the paper's dataset embedding similarity (§3.3): ``DES(D1, D2) = ē(D1) · ē(D2)``.

``ē(D)`` is the L2-normalised mean embedding of a seeded sample of ``D`` (500 records in the paper) under a
language-agnostic encoder (LaBSE; the sandbox trains its own, :mod:`cft_utils.analysis.encoders`). Any object with a
sentence-transformers style ``encode(texts, batch_size=..., ...)`` method is an encoder, and the data are plain lists
of records (or strings).

Design choices worth knowing:

* **Order independence.** The sample is chosen by a seeded keyed hash of each record's text (the ``n`` smallest
  hashes), and texts are encoded in hash order, so shuffling a dataset changes nothing.
* **Encode once.** Each dataset is encoded once; pairs and bootstrap replicates reuse the embedding rows.
* **Bootstrap CI.** Records of each sample are resampled with replacement (independently for the two datasets), the
  mean embeddings recomputed from the stored rows, and the percentile interval reported. Resampling noise can only
  lower a cosine of means on average, so near 1 the interval sits slightly low; on the diagonal (a dataset with
  itself) it lies wholly below the point value 1 and shows the sampling noise floor: two DES values whose intervals
  overlap are not distinguishable.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

# --------------------------------------------------------------------------------------------------
# DES: text extraction and sampling
# --------------------------------------------------------------------------------------------------

#: Fields embedded by default: the whole record (instruction, its input and the response), joined by
#: newlines into one text per record. The paper embeds "samples" without saying which fields; the whole
#: record captures both what is asked and how it is answered.
DEFAULT_FIELDS = ("instruction", "input", "response")
_PROMPT_FIELDS = {"instruction", "input", "prompt"}
_VALID_FIELDS = _PROMPT_FIELDS | {"response"}

#: Paper's sample size per dataset (§3.3).
DEFAULT_SAMPLE_SIZE = 500


def _record_label(record: Mapping, index: int) -> str:
    rid = record.get("id") if isinstance(record, Mapping) else None
    return f"record {index}" + (f" (id {rid!r})" if rid is not None else "")


def _messages_text(messages: Any, key: str, label: str) -> list[str]:
    if not isinstance(messages, list):
        raise ValueError(f"{label}: {key!r} must be a list of messages, got {type(messages).__name__}")
    out = []
    for m in messages:
        if not isinstance(m, Mapping) or not isinstance(m.get("content"), str):
            raise ValueError(f"{label}: every message in {key!r} needs a string 'content'")
        out.append(m["content"])
    return out


def record_texts(
    records: Iterable[Mapping | str], fields: Sequence[str] = DEFAULT_FIELDS, sep: str = "\n"
) -> list[str]:
    """One text per record, built from the chosen ``fields`` (see :data:`DEFAULT_FIELDS`).

    Accepts the project's common schema (``prompt``/``completion`` message lists), raw Alpaca-style
    records (``instruction``, ``input``, ``output`` or ``response``) and plain strings (used as is).
    In the common schema instruction and input live together in the system/user messages, so
    ``"instruction"``, ``"input"`` (and the alias ``"prompt"``) all select the prompt text, and
    ``"response"`` selects the assistant completion.
    """
    fields = tuple(fields)
    bad = [f for f in fields if f not in _VALID_FIELDS]
    if bad or not fields:
        raise ValueError(f"unknown DES field(s) {bad or fields!r}; choose from {sorted(_VALID_FIELDS)}")
    want_prompt = any(f in _PROMPT_FIELDS for f in fields)
    want_response = "response" in fields
    texts = []
    for i, rec in enumerate(records):
        if isinstance(rec, str):
            texts.append(rec)
            continue
        if not isinstance(rec, Mapping):
            raise ValueError(f"record {i}: expected a dict or a string, got {type(rec).__name__}")
        label = _record_label(rec, i)
        parts: list[str] = []
        if "prompt" in rec or "completion" in rec:
            for key in ("prompt", "completion"):
                if key not in rec:
                    raise ValueError(f"{label}: common-schema record lacks key {key!r}")
            if want_prompt:
                parts += _messages_text(rec["prompt"], "prompt", label)
            if want_response:
                parts += _messages_text(rec["completion"], "completion", label)
        elif "instruction" in rec:
            response_key = "response" if "response" in rec else "output"
            if want_response and response_key not in rec:
                raise ValueError(f"{label}: Alpaca-style record lacks 'output'/'response'")
            keys = dict.fromkeys(
                response_key if f == "response" else ("instruction" if f == "prompt" else f) for f in fields
            )
            for key in keys:
                value = rec.get(key)
                if value is not None and not isinstance(value, str):
                    raise ValueError(f"{label}: field {key!r} must be a string or null")
                if value:
                    parts.append(value)
        else:
            raise ValueError(
                f"{label}: neither the common schema (prompt/completion) nor Alpaca-style "
                f"(instruction/input/output); keys are {sorted(rec)}"
            )
        text = sep.join(p for p in parts if p)
        if not text.strip():
            raise ValueError(f"{label}: the fields {fields} hold no text to embed")
        texts.append(text)
    return texts


def _text_hash(text: str, seed: int) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=str(int(seed)).encode()).digest()


def sample_texts(texts: Sequence[str], n: int | None = DEFAULT_SAMPLE_SIZE, seed: int = 0) -> list[str]:
    """A seeded sample of ``n`` texts (all when ``n`` is None or exceeds the data), in canonical order.

    The sample is the ``n`` texts with the smallest keyed hash, so it depends on the texts and the seed
    only, never on their order; the result is sorted by that hash (the order embeddings are computed in).
    """
    if n is not None and n < 1:
        raise ValueError(f"sample size n must be >= 1 or None, got {n}")
    keyed = sorted((_text_hash(t, seed), t) for t in texts)
    if n is not None:
        keyed = keyed[:n]
    return [t for _, t in keyed]


# --------------------------------------------------------------------------------------------------
# DES: embeddings, bootstrap and the matrix
# --------------------------------------------------------------------------------------------------


def embed_texts(texts: Sequence[str], encoder, batch_size: int = 32) -> np.ndarray:
    """Encode ``texts`` with ``encoder.encode`` and return a float64 array of shape (len(texts), dim).

    The call is ``encoder.encode(texts, batch_size=..., show_progress_bar=False, convert_to_numpy=True)``
    (a sentence-transformers model, or any object whose ``encode`` accepts those keywords).
    """
    if len(texts) == 0:
        raise ValueError("cannot embed an empty list of texts")
    emb = encoder.encode(list(texts), batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True)
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] != len(texts):
        raise ValueError(f"encoder returned shape {emb.shape} for {len(texts)} texts; expected (n, dim)")
    if not np.isfinite(emb).all():
        raise ValueError("encoder returned non-finite embeddings")
    return emb


def _normalise(v: np.ndarray, what: str) -> np.ndarray:
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    if np.any(norm == 0):
        raise ValueError(f"mean embedding of {what} is the zero vector; DES is undefined")
    return v / norm


def dataset_embedding(texts: Sequence[str], encoder, batch_size: int = 32) -> np.ndarray:
    """ē(D): the L2-normalised mean embedding (float64) of ``texts`` (no sampling; see :func:`des`)."""
    return _normalise(embed_texts(texts, encoder, batch_size).mean(axis=0), "the dataset")


@dataclass(frozen=True)
class DESResult:
    """DES of one pair with its bootstrap percentile interval and the sample sizes used."""

    des: float
    ci_lo: float
    ci_hi: float
    n_a: int
    n_b: int


def _des_from_embeddings(
    emb_a: np.ndarray, emb_b: np.ndarray, n_boot: int, ci: float, seed: int, names=("a", "b")
) -> DESResult:
    point = float(
        _normalise(emb_a.mean(axis=0), names[0]) @ _normalise(emb_b.mean(axis=0), names[1])
    )
    if n_boot <= 0:
        return DESResult(point, math.nan, math.nan, len(emb_a), len(emb_b))
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    rng = np.random.default_rng(seed)
    # A bootstrap replicate's mean is counts @ rows / n: multinomial counts avoid materialising
    # n_boot x n x dim resampled embeddings.
    boot = []
    for emb in (emb_a, emb_b):
        n = len(emb)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
        boot.append(_normalise(counts @ emb / n, "a bootstrap replicate"))
    values = np.einsum("ij,ij->i", boot[0], boot[1])
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return DESResult(point, float(lo), float(hi), len(emb_a), len(emb_b))


def _as_texts(data: Sequence[Mapping | str], fields: Sequence[str]) -> list[str]:
    return record_texts(data, fields) if any(not isinstance(x, str) for x in data) else list(data)


def des(
    texts_a: Sequence[str | Mapping],
    texts_b: Sequence[str | Mapping],
    encoder,
    *,
    fields: Sequence[str] = DEFAULT_FIELDS,
    n: int | None = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
    batch_size: int = 32,
    n_boot: int = 1000,
    ci: float = 0.95,
) -> DESResult:
    """DES of two datasets (texts or records) on seeded samples of ``n``, with a bootstrap CI."""
    emb_a = _sample_embeddings("a", texts_a, encoder, fields, n, seed, batch_size)
    emb_b = _sample_embeddings("b", texts_b, encoder, fields, n, seed, batch_size)
    return _des_from_embeddings(emb_a, emb_b, n_boot, ci, seed, ("dataset a", "dataset b"))


def _sample_embeddings(name, data, encoder, fields, n, seed, batch_size) -> np.ndarray:
    if len(data) == 0:
        raise ValueError(f"dataset {name!r} is empty")
    try:
        texts = _as_texts(data, fields)
    except ValueError as err:
        raise ValueError(f"dataset {name!r}: {err}") from err
    return embed_texts(sample_texts(texts, n, seed), encoder, batch_size)


def des_matrix(
    datasets: Mapping[str, Sequence[str | Mapping]],
    encoder,
    *,
    fields: Sequence[str] = DEFAULT_FIELDS,
    n: int | None = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
    batch_size: int = 32,
    n_boot: int = 1000,
    ci: float = 0.95,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pairwise DES over named datasets: (tidy table a, b, des, ci_lo, ci_hi, n_a, n_b; square matrix).

    Each dataset (a list of records or strings) is sampled and encoded once; the tidy table holds every
    unordered pair including the diagonal, whose interval shows the sampling noise floor. Each pair's
    bootstrap uses a fresh generator seeded with ``seed``, so a pair's interval does not depend on which
    other datasets are in the matrix (and equals :func:`des` on that pair).
    """
    if len(datasets) == 0:
        raise ValueError("des_matrix needs at least one dataset")
    embeddings = {
        name: _sample_embeddings(name, data, encoder, fields, n, seed, batch_size)
        for name, data in datasets.items()
    }
    names = list(datasets)
    rows = []
    matrix = pd.DataFrame(np.nan, index=names, columns=names, dtype=float)
    for i, a in enumerate(names):
        for b in names[i:]:
            r = _des_from_embeddings(embeddings[a], embeddings[b], n_boot, ci, seed, (repr(a), repr(b)))
            rows.append({"a": a, "b": b, "des": r.des, "ci_lo": r.ci_lo, "ci_hi": r.ci_hi,
                         "n_a": r.n_a, "n_b": r.n_b})
            matrix.loc[a, b] = matrix.loc[b, a] = r.des
    return pd.DataFrame(rows), matrix
