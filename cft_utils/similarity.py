"""Dataset and model similarity: DES (dataset embedding similarity) and MPD (model parameter difference).

The paper (§3.3) explains forgetting with two measures:

* **DES** ``(D1, D2) = ē(D1) · ē(D2)``, where ``ē(D)`` is the L2-normalised mean embedding of a seeded
  sample of ``D`` (500 records in the paper) under a language-agnostic encoder (LaBSE). Here any object
  with a sentence-transformers style ``encode(texts, batch_size=..., ...)`` method is an encoder; the
  sandbox trains a tiny one the LaBSE way (:func:`train_parallel_encoder`).
* **MPD**: the L2 norm of the difference of all parameters of two models fine-tuned from the same base on
  D1 and D2, normalised by the largest value among the compared models. The paper's equation (2) was lost
  from its text; we read it as ``||θ(M1) - θ(M2)||₂`` over every stored parameter tensor.

Both are computed so that a notebook can call them on plain data: lists of records (or strings) for DES,
run directories holding safetensors checkpoints for MPD.

Design choices worth knowing:

* **Order independence.** The DES sample is chosen by a seeded keyed hash of each record's text (the ``n``
  smallest hashes), and texts are encoded in hash order, so shuffling a dataset changes nothing.
* **Encode once.** Each dataset is encoded once; pairs and bootstrap replicates reuse the embedding rows.
* **Bootstrap CI.** Records of each sample are resampled with replacement (independently for the two
  datasets), the mean embeddings recomputed from the stored rows, and the percentile interval reported.
  Resampling noise can only lower a cosine of means on average, so near 1 the interval sits slightly
  low; on the diagonal (a dataset with itself) it lies wholly below the point value 1 and shows the
  sampling noise floor: two DES values whose intervals overlap are not distinguishable.
* **Streaming MPD.** Checkpoints are read one row-chunk of one tensor at a time with
  ``safetensors.safe_open`` (the file is opened and closed per chunk, so not even memory-mapped pages
  accumulate); differences are accumulated in float64. Peak memory depends on ``chunk_elems``, not on
  the model's size (``bench/bench_mpd_memory.py`` measures it).
* **Tied embeddings.** A checkpoint saved with ``tie_word_embeddings`` stores no ``lm_head.weight``. When
  one checkpoint has an ``lm_head`` and the other does not (and its config does not say
  ``tie_word_embeddings: false``), the missing head is read from that checkpoint's input embedding, since
  that is the head the model uses. When neither stores one, the shared matrix is counted once (as the
  embedding).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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


def plot_des_heatmap(matrix: pd.DataFrame, path_stem: str | Path, title: str = "DES") -> list[Path]:
    """Draw a DES matrix as an annotated heatmap and write ``<path_stem>.png`` and ``.pdf``; return paths.

    Uses matplotlib's object API with the Agg canvas, so it neither needs a display nor changes the
    backend of a running notebook.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from cft_utils.io import atomic_path

    values = matrix.to_numpy(dtype=float)
    size = 1.2 + 0.9 * len(matrix)
    fig = Figure(figsize=(size + 1.2, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    finite = values[np.isfinite(values)]
    vmin = float(min(finite.min(), 0.0)) if finite.size else 0.0
    im = ax.imshow(values, cmap="viridis", vmin=vmin, vmax=1.0)
    ax.set_xticks(range(len(matrix.columns)), [str(c) for c in matrix.columns], rotation=45, ha="right")
    ax.set_yticks(range(len(matrix.index)), [str(c) for c in matrix.index])
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center",
                    color="black" if v > vmin + 0.6 * (1 - vmin) else "white", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title)
    fig.tight_layout()
    stem = Path(path_stem)
    paths = []
    for ext in ("png", "pdf"):
        target = stem.with_name(stem.name + f".{ext}")
        with atomic_path(target, suffix=f".{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=150)
        paths.append(target)
    return paths


# --------------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------------

#: The paper profile's encoder.
LABSE = "sentence-transformers/LaBSE"
ENCODER_MARKER = "ENCODER_DONE.json"


def load_encoder(name_or_path: str | Path, device: str | None = None):
    """Load a sentence-transformers encoder (hub id or local directory); remote code is never trusted."""
    from sentence_transformers import SentenceTransformer

    path = Path(name_or_path)
    if path.is_absolute() or path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"encoder directory {path} does not exist")
        name_or_path = str(path)
    return SentenceTransformer(str(name_or_path), device=device, trust_remote_code=False)


def _text_only_transformer(model_dir: str | Path, max_seq_length: int):
    from sentence_transformers.sentence_transformer.modules import Transformer

    # A tokenizer with a chat template makes sentence-transformers wrap every text in it; an encoder
    # wants the bare text, so pin the module to the plain text modality.
    return Transformer(
        str(model_dir),
        modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        module_output_name="token_embeddings",
        max_seq_length=max_seq_length,
    )


def _pairs_fingerprint(pairs: Sequence[tuple[str, str]], **settings) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for a, b in pairs:
        h.update(a.encode("utf-8") + b"\x00" + b.encode("utf-8") + b"\x01")
    return h.hexdigest()


def train_parallel_encoder(
    pairs: Sequence[tuple[str, str]],
    base_model_dir: str | Path,
    out_dir: str | Path,
    epochs: int = 3,
    batch_size: int = 32,
    seed: int = 0,
    learning_rate: float = 1e-3,
    max_seq_length: int = 64,
    device: str | None = "cpu",
):
    """Train (or load, when ``out_dir`` holds a finished one) a language-agnostic encoder the LaBSE way.

    A local transformers model (e.g. the sandbox's tiny causal LM) gets mean pooling and L2
    normalisation, and is trained on (english, translation) pairs with the in-batch translation ranking
    loss, symmetric in both directions (sentence-transformers' ``MultipleNegativesRankingLoss`` with
    ``directions=("query_to_doc", "doc_to_query")``). The finished encoder is saved to ``out_dir`` with a
    marker file holding the settings, a fingerprint of the pairs and the training time; a marker whose
    fingerprint does not match the request raises instead of silently reusing a stale encoder.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    from cft_utils.io import read_json, write_json

    base_model_dir, out_dir = Path(base_model_dir), Path(out_dir)
    pairs = [(str(a), str(b)) for a, b in pairs]
    if len(pairs) < 2:
        raise ValueError("train_parallel_encoder needs at least 2 (english, translation) pairs")
    if batch_size < 2:
        raise ValueError("batch_size must be >= 2: the other pairs in a batch are the negatives")
    settings = dict(base_model_dir=str(base_model_dir.resolve()), epochs=epochs, batch_size=batch_size,
                    seed=seed, learning_rate=learning_rate, max_seq_length=max_seq_length)
    fingerprint = _pairs_fingerprint(pairs, **settings)
    marker = out_dir / ENCODER_MARKER
    if marker.exists():
        info = read_json(marker)
        if info.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{out_dir} holds an encoder trained on other pairs or settings "
                f"(marker {marker}); delete it or choose another out_dir"
            )
        return SentenceTransformer(str(out_dir), device=device, trust_remote_code=False)
    if not (base_model_dir / "config.json").exists():
        raise FileNotFoundError(f"base model directory {base_model_dir} has no config.json")

    torch.manual_seed(seed)
    transformer = _text_only_transformer(base_model_dir, max_seq_length)
    model = SentenceTransformer(
        modules=[transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode="mean"),
                 Normalize()],
        device=device,
    )
    loss_fn = MultipleNegativesRankingLoss(
        model, directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)

    def features(texts):
        feats = model.preprocess(texts)
        return {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in feats.items()}

    start = time.perf_counter()
    model.train()
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(pairs), generator=generator).tolist()
        for i in range(0, len(order), batch_size):
            batch = [pairs[j] for j in order[i : i + batch_size]]
            if len(batch) < 2:  # a batch of one has no in-batch negatives
                continue
            loss = loss_fn([features([a for a, _ in batch]), features([b for _, b in batch])], None)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    model.eval()
    seconds = time.perf_counter() - start
    model.save(str(out_dir))
    write_json(marker, {"fingerprint": fingerprint, "n_pairs": len(pairs), "train_seconds": seconds,
                        "steps": len(losses), "first_loss": losses[0], "final_loss": losses[-1],
                        **settings})
    return model


def encoder_training_info(out_dir: str | Path) -> dict:
    """The marker of a finished :func:`train_parallel_encoder` run (settings, seconds, losses)."""
    from cft_utils.io import read_json

    marker = Path(out_dir) / ENCODER_MARKER
    if not marker.exists():
        raise FileNotFoundError(f"no finished encoder in {out_dir} (missing {ENCODER_MARKER})")
    return read_json(marker)


def translation_retrieval_accuracy(
    encoder, sources: Sequence[str], translations: Sequence[str], batch_size: int = 32
) -> float:
    """Share of ``sources`` whose most cosine-similar text among ``translations`` is their own translation."""
    if len(sources) != len(translations) or len(sources) == 0:
        raise ValueError("sources and translations must be equally long and non-empty")
    a = embed_texts(sources, encoder, batch_size)
    b = embed_texts(translations, encoder, batch_size)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.mean((a @ b.T).argmax(axis=1) == np.arange(len(a))))


# --------------------------------------------------------------------------------------------------
# MPD: streaming safetensors checkpoints
# --------------------------------------------------------------------------------------------------

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
#: Elements per chunk read from a tensor; three float64 work buffers of this size (16 MiB each at the
#: default) bound the memory of :func:`parameter_difference`.
DEFAULT_CHUNK_ELEMS = 1 << 21

_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")
_PARAM_LEAVES = {"weight", "bias"}
_KINDS = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
    "gate_proj": "gate", "up_proj": "up", "down_proj": "down",
    "embed_tokens": "embed", "wte": "embed", "word_embeddings": "embed", "embed_in": "embed",
    "lm_head": "lm_head", "embed_out": "lm_head",
}
_EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight")
_LM_HEAD = "lm_head.weight"


def parse_param_name(name: str) -> tuple[int | None, str, str]:
    """(layer index or None, module leaf, kind) of a tensor name, for any architecture.

    ``model.layers.3.self_attn.q_proj.weight`` -> ``(3, "q_proj", "q")``; the layer comes from a
    ``layers.<i>.`` (or ``h.<i>.``, ``blocks.<i>.``) segment, the module leaf is the part before
    ``weight``/``bias``, and the kind groups leaves (q, k, v, o, gate, up, down, embed, norm, lm_head;
    other leaves keep their own name).
    """
    m = _LAYER_RE.search(name)
    layer = int(m.group(1)) if m else None
    parts = name.split(".")
    leaf = parts[-2] if len(parts) > 1 and parts[-1] in _PARAM_LEAVES else parts[-1]
    if leaf in _KINDS:
        kind = _KINDS[leaf]
    elif "norm" in leaf or re.fullmatch(r"ln_?\w*", leaf):
        kind = "norm"
    else:
        kind = leaf
    return layer, leaf, kind


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what it is (read from the safetensors header, no data loaded)."""

    file: Path
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class Checkpoint:
    """An opened safetensors checkpoint: a map tensor name -> :class:`TensorInfo`, and its config."""

    path: Path
    tensors: dict[str, TensorInfo]
    config: dict = field(default_factory=dict)

    def names(self) -> list[str]:
        """Tensor names in a natural order (non-layer tensors first, then by layer, then by name)."""
        def key(n):
            layer = parse_param_name(n)[0]
            return (-1 if layer is None else layer, n)

        return sorted(self.tensors, key=key)

    def iter_chunks(self, name: str, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> Iterator[Any]:
        """Yield the tensor ``name`` as consecutive row blocks of about ``chunk_elems`` elements."""
        from safetensors import safe_open

        info = self.tensors[name]
        if len(info.shape) == 0:
            with safe_open(info.file, framework="pt") as f:
                yield f.get_tensor(name).reshape(1)
            return
        rows = info.shape[0]
        row_elems = max(1, math.prod(info.shape[1:]))
        step = max(1, chunk_elems // row_elems)
        for start in range(0, rows, step):
            # Open per chunk: closing unmaps the file, so resident pages never pile up.
            with safe_open(info.file, framework="pt") as f:
                yield f.get_slice(name)[start : start + step]


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Index a checkpoint directory (``model.safetensors`` or a sharded ``model.safetensors.index.json``)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    if (path / SAFE_WEIGHTS).exists():
        files = {path / SAFE_WEIGHTS: None}
    elif (path / SAFE_INDEX).exists():
        try:
            weight_map = json.loads((path / SAFE_INDEX).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise ValueError(f"{path / SAFE_INDEX}: not a safetensors index with a 'weight_map'") from err
        files = {}
        for tensor, shard in weight_map.items():
            files.setdefault(path / shard, set()).add(tensor)
        for shard in files:
            if not shard.exists():
                raise FileNotFoundError(f"{path / SAFE_INDEX} names shard {shard.name}, which is missing")
    else:
        raise FileNotFoundError(f"{path} holds neither {SAFE_WEIGHTS} nor {SAFE_INDEX}")

    tensors: dict[str, TensorInfo] = {}
    for file, expected in files.items():
        with safe_open(file, framework="pt") as f:
            keys = set(f.keys())
            if expected is not None and not expected <= keys:
                missing = sorted(expected - keys)[:3]
                raise ValueError(f"{file}: index lists tensor(s) {missing} that the shard lacks")
            for name in keys if expected is None else expected:
                if name in tensors:
                    raise ValueError(f"tensor {name!r} appears in two shards of {path}")
                sl = f.get_slice(name)
                tensors[name] = TensorInfo(file, sl.get_dtype(), tuple(sl.get_shape()))
    config = {}
    if (path / "config.json").exists():
        config = json.loads((path / "config.json").read_text())
    return Checkpoint(path, tensors, config)


def _embedding_name(ckpt: Checkpoint) -> str | None:
    found = [n for n in ckpt.tensors if n.endswith(_EMBED_SUFFIXES)]
    return found[0] if len(found) == 1 else None


def _aligned_names(a: Checkpoint, b: Checkpoint) -> list[tuple[str, str, str, str]]:
    """(name, name in a, name in b, note) for every parameter compared; raises on any mismatch."""
    names_a, names_b = set(a.tensors), set(b.tensors)
    subst = {}
    for missing_in, present_set, label in ((a, names_b, "a"), (b, names_a, "b")):
        heads = [n for n in present_set if n.endswith(_LM_HEAD) and n not in missing_in.tensors]
        for head in heads:
            embed = _embedding_name(missing_in)
            if missing_in.config.get("tie_word_embeddings") is False or embed is None:
                continue  # reported below as a missing tensor
            subst[(label, head)] = embed
    rows = []
    for name in a.names() + [n for n in b.names() if n not in names_a]:
        in_a = name if name in names_a else subst.get(("a", name))
        in_b = name if name in names_b else subst.get(("b", name))
        if in_a is None or in_b is None:
            where, path = ("a", a.path) if in_a is None else ("b", b.path)
            raise ValueError(f"tensor {name!r} is missing from checkpoint {where} ({path})")
        note = ""
        if in_a != name:
            note = f"tied: read from {in_a} in checkpoint a"
        elif in_b != name:
            note = f"tied: read from {in_b} in checkpoint b"
        rows.append((name, in_a, in_b, note))
    return rows


@dataclass
class ParameterDifference:
    """Result of :func:`parameter_difference`: per-tensor squared sums and aggregations of ``a - b``.

    ``tensors`` has one row per parameter: tensor, layer (nullable), module (leaf), kind, numel, dtype,
    sq_diff = Σ(a-b)², sq_a = Σa², sq_b = Σb², note. ``rows`` maps each tensor of ``row_modules`` to the
    per-output-row (sq_diff, sq_a) arrays, which :meth:`by_head` groups by attention head.
    """

    dir_a: Path
    dir_b: Path
    tensors: pd.DataFrame
    rows: dict[str, tuple[np.ndarray, np.ndarray]]
    config_a: dict

    @property
    def total_sq(self) -> float:
        """Σ over all parameters of (a-b)²."""
        return float(self.tensors["sq_diff"].sum())

    @property
    def total_l2(self) -> float:
        """||a - b||₂ over all parameters."""
        return math.sqrt(self.total_sq)

    def _group(self, keys: list[str]) -> pd.DataFrame:
        g = self.tensors.groupby(keys, dropna=True)[["sq_diff", "sq_a", "sq_b", "numel"]].sum().reset_index()
        g["l2"] = np.sqrt(g["sq_diff"])
        g["norm_a"] = np.sqrt(g["sq_a"])
        g["relative"] = g["l2"] / g["norm_a"].where(g["norm_a"] > 0)  # NaN where the norm is 0
        total = self.total_sq
        g["share"] = g["sq_diff"] / total if total > 0 else np.nan
        return g

    def by_layer(self) -> pd.DataFrame:
        """One row per layer index: sq_diff, l2, norm_a, relative (l2 / norm_a), share of the total."""
        return self._group(["layer"])

    def by_kind(self) -> pd.DataFrame:
        """One row per module kind (q, k, v, o, gate, up, down, embed, norm, lm_head, ...)."""
        return self._group(["kind"])

    def by_layer_module(self) -> pd.DataFrame:
        """One row per (layer, module leaf), weights and biases together."""
        return self._group(["layer", "module"])

    def by_head(self, modules: Sequence[str] = ("q_proj", "k_proj", "v_proj")) -> pd.DataFrame:
        """Per attention head change of each module (rows of the projection grouped by head).

        Head counts come from ``config.json`` of checkpoint a: ``num_attention_heads`` for q,
        ``num_key_value_heads`` (default: the same) for k and v, ``head_dim`` (default
        hidden_size / num_attention_heads).
        """
        cfg = self.config_a
        if "num_attention_heads" not in cfg:
            raise ValueError(f"per-head grouping needs num_attention_heads in {self.dir_a}/config.json")
        n_heads = int(cfg["num_attention_heads"])
        n_kv = int(cfg.get("num_key_value_heads") or n_heads)
        head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // n_heads)
        out = []
        for name, (sq_diff, sq_a) in self.rows.items():
            layer, module, _ = parse_param_name(name)
            if module not in modules:
                continue
            heads = n_heads if module.startswith("q") else n_kv
            if len(sq_diff) != heads * head_dim:
                raise ValueError(
                    f"tensor {name!r} has {len(sq_diff)} output rows, not {heads} heads x {head_dim}"
                )
            for h, (d, a) in enumerate(zip(sq_diff.reshape(heads, head_dim).sum(1),
                                           sq_a.reshape(heads, head_dim).sum(1), strict=True)):
                out.append({"layer": layer, "module": module, "head": h, "tensor": name,
                            "sq_diff": d, "sq_a": a})
        if not out:
            raise ValueError(f"no tensors of modules {list(modules)} were recorded per row")
        df = pd.DataFrame(out).groupby(["layer", "module", "head"])[["sq_diff", "sq_a"]].sum().reset_index()
        df["l2"] = np.sqrt(df["sq_diff"])
        df["norm_a"] = np.sqrt(df["sq_a"])
        df["relative"] = df["l2"] / df["norm_a"].where(df["norm_a"] > 0)
        return df


def parameter_difference(
    dir_a: str | Path,
    dir_b: str | Path,
    *,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    row_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj"),
    allow_dtype_mismatch: bool = False,
) -> ParameterDifference:
    """Stream two checkpoints tensor by tensor and return Σ(a-b)² per tensor, per layer, per module.

    Raises ``ValueError`` naming the tensor when the tensor sets, shapes or dtypes differ (dtype
    differences pass with ``allow_dtype_mismatch=True``: every value is compared in float64), and when
    the configs name different model types.
    """
    import torch

    a, b = open_checkpoint(dir_a), open_checkpoint(dir_b)
    ta, tb = a.config.get("model_type"), b.config.get("model_type")
    if ta and tb and ta != tb:
        raise ValueError(f"architecture mismatch: {a.path} is {ta!r}, {b.path} is {tb!r}")
    aligned = _aligned_names(a, b)
    for name, in_a, in_b, _ in aligned:
        ia, ib = a.tensors[in_a], b.tensors[in_b]
        if ia.shape != ib.shape:
            raise ValueError(f"tensor {name!r}: shape {list(ia.shape)} in {a.path} but {list(ib.shape)} in {b.path}")
        if ia.dtype != ib.dtype and not allow_dtype_mismatch:
            raise ValueError(
                f"tensor {name!r}: dtype {ia.dtype} in {a.path} but {ib.dtype} in {b.path} "
                "(pass allow_dtype_mismatch=True to compare in float64 anyway)"
            )
    # Three float64 work buffers, reused for every chunk: allocating fresh chunk-sized tensors each time
    # lets the allocator's heap fragment and creep upwards with the number of tensors.
    scratch = [torch.empty(0, dtype=torch.float64) for _ in range(3)]
    records, rows = [], {}
    for name, in_a, in_b, note in aligned:
        layer, module, kind = parse_param_name(name)
        want_rows = module in row_modules and len(a.tensors[in_a].shape) >= 1
        sq_diff = sq_a = sq_b = 0.0
        row_diff, row_a = [], []
        for ca, cb in zip(a.iter_chunks(in_a, chunk_elems), b.iter_chunks(in_b, chunk_elems), strict=True):
            n = ca.numel()
            if scratch[0].numel() < n:
                scratch = [torch.empty(max(n, chunk_elems), dtype=torch.float64) for _ in range(3)]
            fa, fb, d2 = (buf[:n].view(ca.shape) for buf in scratch)
            fa.copy_(ca)
            fb.copy_(cb)
            del ca, cb
            torch.sub(fa, fb, out=d2).square_()
            sq_diff += float(d2.sum())
            fa.square_()
            sq_a += float(fa.sum())
            sq_b += float(fb.square_().sum())
            if want_rows:
                row_diff.append(d2.reshape(d2.shape[0], -1).sum(1).numpy())
                row_a.append(fa.reshape(fa.shape[0], -1).sum(1).numpy())
        if want_rows and row_diff:
            rows[name] = (np.concatenate(row_diff), np.concatenate(row_a))
        info = a.tensors[in_a]
        records.append({"tensor": name, "layer": layer, "module": module, "kind": kind,
                        "numel": info.numel, "dtype": info.dtype, "sq_diff": sq_diff,
                        "sq_a": sq_a, "sq_b": sq_b, "note": note})
    tensors = pd.DataFrame(records)
    tensors["layer"] = tensors["layer"].astype("Int64")
    return ParameterDifference(a.path, b.path, tensors, rows, a.config)


# --------------------------------------------------------------------------------------------------
# MPD across models, and layer-change ranking
# --------------------------------------------------------------------------------------------------


@dataclass
class MPDComparison:
    """Models fine-tuned from one base, each compared with a reference model (and with the base).

    ``to_reference[name]`` is ``parameter_difference(model, reference)``; ``from_base[name]`` is
    ``parameter_difference(base, model)`` for every model and the reference (empty without a base).
    """

    reference_name: str
    to_reference: dict[str, ParameterDifference]
    from_base: dict[str, ParameterDifference]

    def table(self) -> pd.DataFrame:
        """One row per model: mpd = ||θ_model - θ_ref||₂, mpd_normalised (÷ max over models), drifts.

        ``drift_from_base`` = ||θ_model - θ_base||, ``reference_drift`` = ||θ_ref - θ_base||, and
        ``update_cosine`` the cosine between the two fine-tuning updates (θ_model - θ_base and
        θ_ref - θ_base), derived from the three norms. Missing without a base: NaN, never 0.
        """
        rows = []
        ref_drift = (self.from_base[self.reference_name].total_l2
                     if self.reference_name in self.from_base else math.nan)
        for name, diff in self.to_reference.items():
            drift = self.from_base[name].total_l2 if name in self.from_base else math.nan
            denom = 2 * drift * ref_drift
            cosine = ((drift**2 + ref_drift**2 - diff.total_sq) / denom
                      if denom > 0 and math.isfinite(denom) else math.nan)
            rows.append({"model": name, "reference": self.reference_name, "mpd": diff.total_l2,
                         "drift_from_base": drift, "reference_drift": ref_drift, "update_cosine": cosine})
        df = pd.DataFrame(rows)
        top = df["mpd"].max()
        df.insert(3, "mpd_normalised", df["mpd"] / top if top > 0 else math.nan)
        return df

    def profile(self, level: str = "layer") -> pd.DataFrame:
        """Tidy per-``level`` ("layer", "kind" or "layer_module") MPD of every model to the reference."""
        methods = {"layer": "by_layer", "kind": "by_kind", "layer_module": "by_layer_module"}
        if level not in methods:
            raise ValueError(f"level must be one of {sorted(methods)}, got {level!r}")
        parts = []
        for name, diff in self.to_reference.items():
            g = getattr(diff, methods[level])()
            g.insert(0, "model", name)
            g.insert(1, "reference", self.reference_name)
            parts.append(g[[c for c in g.columns if c not in ("sq_a", "sq_b")]])
        return pd.concat(parts, ignore_index=True)


def compare_models(
    base_dir: str | Path | None,
    finetuned: Mapping[str, str | Path],
    reference_dir: str | Path,
    reference_name: str = "reference",
    **kwargs,
) -> MPDComparison:
    """Stream every fine-tuned model against the reference (and, given a base, against the base)."""
    if not finetuned:
        raise ValueError("compare_models needs at least one fine-tuned model")
    if reference_name in finetuned:
        raise ValueError(f"reference_name {reference_name!r} clashes with a fine-tuned model's name")
    to_ref = {name: parameter_difference(d, reference_dir, **kwargs) for name, d in finetuned.items()}
    from_base = {}
    if base_dir is not None:
        for name, d in {**finetuned, reference_name: reference_dir}.items():
            from_base[name] = parameter_difference(base_dir, d, **kwargs)
    return MPDComparison(reference_name, to_ref, from_base)


def mpd_table(
    base_dir: str | Path | None,
    finetuned: Mapping[str, str | Path],
    reference_dir: str | Path,
    reference_name: str = "reference",
    **kwargs,
) -> pd.DataFrame:
    """The paper's MPD: ||θ_model - θ_ref||₂ for each fine-tuned model, normalised by the maximum.

    Shorthand for ``compare_models(...).table()``; use :func:`compare_models` for per-layer profiles.
    """
    return compare_models(base_dir, finetuned, reference_dir, reference_name, **kwargs).table()


MEASURES = ("absolute", "relative")


def rank_layers(
    diff: ParameterDifference,
    modules: Sequence[str] = ("q_proj", "k_proj", "v_proj"),
    top_k: int = 10,
    measure: str = "absolute",
) -> tuple[dict[str, list[int]], pd.DataFrame]:
    """Rank layers by change, separately per module; ``diff`` compares base (a) with Phase 1 (b).

    ``measure="absolute"`` (default, the paper's literal "changed the most") ranks by the Frobenius
    norm ||W_p1 - W_base||; ``"relative"`` divides by ||W_base|| so layers with larger weights are not
    favoured. Ties break towards the lower layer index. Returns ({module: top_k layer indices, most
    changed first}, table with module, layer, abs_change, base_norm, rel_change, rank). Fewer than
    ``top_k`` layers yields all of them.
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    g = diff.by_layer_module()
    available = sorted(set(g["module"]))
    missing = [m for m in modules if m not in available]
    if missing:
        raise ValueError(f"no per-layer tensors for module(s) {missing}; modules present: {available}")
    table = g[g["module"].isin(list(modules))].rename(columns={"l2": "abs_change", "norm_a": "base_norm",
                                                               "relative": "rel_change"})
    table = table[["module", "layer", "abs_change", "base_norm", "rel_change"]].copy()
    table["layer"] = table["layer"].astype(int)
    col = "abs_change" if measure == "absolute" else "rel_change"
    table = table.sort_values(["module", col, "layer"], ascending=[True, False, True], kind="mergesort")
    table["rank"] = table.groupby("module").cumcount() + 1
    ranking = {m: table.loc[table["module"] == m, "layer"].head(top_k).tolist() for m in modules}
    return ranking, table.reset_index(drop=True)


def rank_heads(
    diff: ParameterDifference,
    modules: Sequence[str] = ("q_proj", "k_proj", "v_proj"),
    top_k: int = 10,
    measure: str = "absolute",
) -> tuple[dict[str, list[tuple[int, int]]], pd.DataFrame]:
    """Rank (layer, head) pairs by change, separately per module (see :meth:`ParameterDifference.by_head`)."""
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    table = diff.by_head(modules).rename(columns={"l2": "abs_change", "norm_a": "base_norm",
                                                  "relative": "rel_change"})
    table = table[["module", "layer", "head", "abs_change", "base_norm", "rel_change"]]
    col = "abs_change" if measure == "absolute" else "rel_change"
    table = table.sort_values(["module", col, "layer", "head"], ascending=[True, False, True, True],
                              kind="mergesort")
    table["rank"] = table.groupby("module").cumcount() + 1
    ranking = {
        m: [(int(r.layer), int(r.head)) for r in table[table["module"] == m].head(top_k).itertuples()]
        for m in modules
    }
    return ranking, table.reset_index(drop=True)


def layer_change_ranking(
    base_dir: str | Path,
    phase1_dir: str | Path,
    modules: Sequence[str] = ("q_proj", "k_proj", "v_proj"),
    top_k: int = 10,
    measure: str = "absolute",
    **kwargs,
) -> tuple[dict[str, list[int]], pd.DataFrame]:
    """The layers that changed most from base to Phase 1, per module (LF_H2's input); see :func:`rank_layers`."""
    diff = parameter_difference(base_dir, phase1_dir, row_modules=modules, **kwargs)
    return rank_layers(diff, modules, top_k, measure)
