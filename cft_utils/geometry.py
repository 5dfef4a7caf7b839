"""Representation geometry: layer-wise activations, covariance-difference norms, CKA, t-SNE/PCA views.

Serves the paper's Figures 1 and 3 (t-SNE of layer-wise mean activations), Figure 2 and C4 (layer-wise
norms of the difference of two models' activation covariances) and, beyond the paper, linear CKA.

Notebook 09 uses the upper layer of this module: :func:`drift_pairs` picks the grid's similar and dissimilar
runs (with their Phase 1 parent and base model), :func:`profile_models` runs each model once over the prompt
set (:class:`LayerProfile`: per-sample vectors and streaming covariances, cached under ``$CFT_HOME/geometry``),
:func:`drift_table`, :func:`trajectory_frames`, :func:`crosslingual_frames` and :func:`mitigation_drift` build
the tidy tables behind Figures 2, 1, 3 and C4, and :func:`drift_verdict` turns the numbers into the sentence
on whether the dissimilar pair drifts more. The prompt sets come from :mod:`cft_utils.prompt_sets`.

Conventions
-----------
* **Layers** are the entries of ``model(..., output_hidden_states=True).hidden_states``: index 0 is the
  embedding output, index ``l`` the output of decoder block ``l`` and the last index (``L``) the output of
  the final block *after the final norm* (this is how transformers returns it). A ``layers=`` argument
  selects and orders these indices (negative indices count from the end); returned arrays and lists
  follow that order, and tidy frames carry the index in a ``layer`` column.
* **A sample's vector** at a layer reduces the prompt's token states to one vector:
  ``position="mean"`` (default) averages over the non-padding tokens; ``"last"`` takes the last
  non-padding token (left or right padding alike). The mean is the default because the paper describes
  "mean hidden activations" over a prompt set and because a single position of a prompt that ends in a
  chat template's assistant header is dominated by those fixed template tokens, which are the same for
  every prompt; the mean reflects the whole content. ``"last"`` is the state the model answers from.
* Capture goes through the generic ``output_hidden_states=True`` of the backbone
  (``model.base_model``, defined by every transformers ``PreTrainedModel``), so LLaMA, Mistral, Qwen2 and
  any other causal LM work alike without architecture-specific attribute paths. Padding is done here and
  ``position_ids`` are derived from the attention mask, so a padded prompt gets the same vector as the
  prompt run alone (tested for both padding sides). That holds to float32 rounding; in bfloat16 a
  batch's padding moved vectors by up to ~0.5% (mean) and ~1.5% (last token) of their largest entry on
  an H200 with 4096-wide random models, so load models in float32 for geometry where memory allows.
* **Covariance memory.** A hidden size of 4096 means 128 MiB per layer for a float64 ``hidden x hidden``
  matrix, 4.2 GiB for 33 layers. :func:`layer_covariances` keeps each layer's accumulator in RAM by
  default (right for the sandbox) or, with ``out_dir=``, in one memory-mapped ``.npy`` per layer on
  disk. We chose disk over recomputation: Figure 2 compares each Phase 2 model with both its Phase 1 model
  and the base model, so a model's covariances are reused, and a forward pass of a 7-8B model is the
  expensive part, while 4.2 GiB of disk per model is cheap. :func:`covariance_difference_norms` then
  reads one layer of each model at a time (peak RAM: a few ``hidden x hidden`` matrices). Where disk is
  short, pass ``layers=`` to compute a group of layers per pass and recompute the forward passes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cft_utils.io import atomic_path, read_json, write_json

POSITIONS = ("mean", "last")
NORMS = ("frobenius", "spectral")
DEFAULT_PERPLEXITY = 30.0


# --------------------------------------------------------------------------------------------------
# Loading and prompts
# --------------------------------------------------------------------------------------------------


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(source: str | os.PathLike) -> bool:
    """True for an ``owner/name`` hub id that is not an existing local path."""
    return bool(_HUB_ID.match(str(source))) and not Path(source).exists()


def load_model(model_dir: str | os.PathLike, *, device: str | None = None, dtype: Any = None,
               revision: str | None = None):
    """Load ``(model, tokenizer)`` from a saved directory or a hub id: safetensors only, no remote code, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hub = is_hub_id(model_dir)
    if not hub:
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"model directory {model_dir} does not exist")
        if not any(model_dir.glob("*.safetensors")):
            raise FileNotFoundError(
                f"{model_dir}: no *.safetensors weights (only safetensors checkpoints are loaded)"
            )
    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": False, "revision": revision}
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False, revision=revision)
    return model, tokenizer


def _normalise_prompt(item: Any, i: int) -> str | list[dict]:
    """A prompt as a string or a non-empty list of ``{"role", "content"}`` messages."""
    where = f"prompt {i}"
    if isinstance(item, Mapping):
        if "prompt" not in item:
            raise ValueError(f"{where} (id={item.get('id')!r}): record has no 'prompt' key")
        where = f"prompt {i} (id={item.get('id')!r})"
        item = item["prompt"]
    if isinstance(item, str):
        return item
    if isinstance(item, Sequence) and item:
        for j, m in enumerate(item):
            if not (
                isinstance(m, Mapping)
                and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)
            ):
                raise ValueError(f"{where}: message {j} is not a {{'role': str, 'content': str}} dict: {m!r}")
        return [dict(m) for m in item]
    raise TypeError(
        f"{where}: expected a string, a list of chat messages or a record with 'prompt', got {item!r}"
    )


def tokenize_prompts(
    tokenizer,
    prompts: Sequence[Any],
    *,
    chat: bool | None = None,
    add_generation_prompt: bool = True,
    max_length: int | None = None,
) -> list[list[int]]:
    """Token ids per prompt; ``chat=None`` applies the chat template to message lists and not to strings.

    ``chat=True`` wraps a plain string as one user message; ``chat=False`` refuses message lists.
    Chat-rendered text is tokenised without extra special tokens (the template holds them); plain text
    gets the tokenizer's usual ones (e.g. BOS). ``max_length`` truncates on the tokenizer's side.
    """
    norm = [_normalise_prompt(p, i) for i, p in enumerate(prompts)]
    texts: list[str] = []
    templated: list[bool] = []
    for i, p in enumerate(norm):
        use_chat = chat if chat is not None else not isinstance(p, str)
        if use_chat:
            if getattr(tokenizer, "chat_template", None) is None:
                raise ValueError(
                    f"prompt {i}: chat formatting asked for, but the tokenizer has no chat template"
                )
            msgs = [{"role": "user", "content": p}] if isinstance(p, str) else p
            texts.append(
                tokenizer.apply_chat_template(
                    msgs, tokenize=False, add_generation_prompt=add_generation_prompt
                )
            )
        else:
            if not isinstance(p, str):
                raise ValueError(f"prompt {i}: chat=False but the prompt is a list of messages")
            texts.append(p)
        templated.append(use_chat)
    trunc = {"truncation": True, "max_length": max_length} if max_length else {}
    ids: list[list[int] | None] = [None] * len(texts)
    for flag in (True, False):
        idx = [i for i, t in enumerate(templated) if t is flag]
        if not idx:
            continue
        enc = tokenizer([texts[i] for i in idx], add_special_tokens=not flag, **trunc)["input_ids"]
        for i, e in zip(idx, enc, strict=True):
            ids[i] = list(e)
    for i, e in enumerate(ids):
        if not e:
            raise ValueError(f"prompt {i}: tokenises to zero tokens")
    return ids  # type: ignore[return-value]


def _pad(batch_ids: list[list[int]], pad_id: int, side: str):
    """Pad into ``input_ids``, ``attention_mask`` and mask-derived ``position_ids`` tensors."""
    import torch

    width = max(len(x) for x in batch_ids)
    ids = torch.full((len(batch_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch_ids), width), dtype=torch.long)
    for r, x in enumerate(batch_ids):
        sl = slice(width - len(x), width) if side == "left" else slice(0, len(x))
        ids[r, sl] = torch.tensor(x, dtype=torch.long)
        mask[r, sl] = 1
    # Real tokens get positions 0..n-1 whichever side the padding is on, as when run alone.
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


def _reduce(hidden, mask, position: str):
    """[batch, tokens, hidden] -> [batch, hidden] in float32 over the tokens where ``mask`` is 1."""
    import torch

    h = hidden.float()
    keep = mask.bool()
    if position == "mean":
        # torch.where rather than a product: a NaN in a padded position must not leak in (0 * NaN = NaN).
        h = torch.where(keep[..., None], h, torch.zeros((), dtype=h.dtype, device=h.device))
        return h.sum(1) / keep.sum(1, keepdim=True).to(h.dtype)
    positions = torch.arange(keep.shape[1], device=keep.device)
    last = (keep.long() * positions).amax(1)  # last real token, for left and right padding alike
    return h[torch.arange(h.shape[0], device=h.device), last]


def _resolve_layers(layers: Sequence[int] | None, n_hidden: int) -> list[int]:
    if layers is None:
        return list(range(n_hidden))
    out = []
    for layer in layers:
        if not -n_hidden <= int(layer) < n_hidden:
            raise ValueError(
                f"layer {layer} out of range: the model returns {n_hidden} hidden states (0..{n_hidden - 1})"
            )
        out.append(int(layer) % n_hidden)
    if len(set(out)) != len(out):
        raise ValueError(f"layers {list(layers)} select the same hidden state twice")
    return out


def _resolve_model(model, tokenizer, device, dtype):
    """Accept a loaded model or a saved directory (then the tokenizer defaults to the one saved there)."""
    if isinstance(model, (str, os.PathLike)):
        loaded, tok = load_model(model, device=device, dtype=dtype)
        return loaded, tokenizer if tokenizer is not None else tok, str(model)
    if tokenizer is None:
        raise ValueError("a tokenizer is needed when the model is passed as an object")
    return model, tokenizer, str(getattr(model, "name_or_path", "") or "")


def _activation_batches(
    model,
    tokenizer,
    prompts,
    *,
    position: str = "mean",
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    chat: bool | None = None,
    add_generation_prompt: bool = True,
    max_length: int | None = None,
    padding_side: str | None = None,
    device: str | None = None,
    dtype: Any = None,
    progress: bool = True,
    desc: str = "activations",
) -> Iterator[tuple[list[int], Any]]:
    """Yield ``(layer indices, float32 array [n_layers, batch, hidden])`` per batch, in prompt order."""
    import torch
    from tqdm.auto import tqdm

    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model, tokenizer, _ = _resolve_model(model, tokenizer, device, dtype)
    side = padding_side or getattr(tokenizer, "padding_side", "right") or "right"
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    ids = tokenize_prompts(
        tokenizer, prompts, chat=chat, add_generation_prompt=add_generation_prompt, max_length=max_length
    )
    if not ids:
        raise ValueError("no prompts given")
    # The pad id only fills masked positions, so any valid id works (LLaMA/Mistral tokenizers have no pad).
    pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    backbone = getattr(model, "base_model", model)  # generic PreTrainedModel API: skips the LM head
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    resolved: list[int] | None = None
    try:
        with torch.no_grad():
            starts = range(0, len(ids), batch_size)
            for s in tqdm(starts, desc=desc, disable=not progress, total=len(starts)):
                input_ids, mask, pos = (t.to(dev) for t in _pad(ids[s : s + batch_size], pad_id, side))
                out = backbone(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=pos,
                    output_hidden_states=True,
                    use_cache=False,
                    return_dict=True,
                )
                hs = out.hidden_states
                if hs is None:
                    raise RuntimeError(f"{type(backbone).__name__} returned no hidden_states")
                if resolved is None:
                    resolved = _resolve_layers(layers, len(hs))
                red = torch.stack([_reduce(hs[layer], mask, position) for layer in resolved])
                yield resolved, red.cpu().numpy()
    finally:
        model.train(was_training)


def iter_activation_batches(model, tokenizer, prompts, **kwargs) -> Iterator[np.ndarray]:
    """Stream per-batch sample vectors, float32 ``[n_layers, batch, hidden]``, to feed your own accumulators.

    Keyword arguments: ``position`` ("mean" | "last"), ``layers``, ``batch_size``, ``chat``,
    ``add_generation_prompt``, ``max_length``, ``padding_side``, ``device``, ``dtype`` (used when ``model``
    is a directory), ``progress``, ``desc``.
    """
    for _, arr in _activation_batches(model, tokenizer, prompts, **kwargs):
        yield arr


def capture_activations(model, tokenizer, prompts, **kwargs) -> np.ndarray:
    """Per-sample vectors of every selected layer: float32 ``[n_layers, n_samples, hidden]`` (stores all).

    ``model`` is a loaded causal LM or a saved directory; keyword arguments as in
    :func:`iter_activation_batches`. For large prompt sets use the streaming functions instead.
    """
    parts = [arr for _, arr in _activation_batches(model, tokenizer, prompts, **kwargs)]
    return np.concatenate(parts, axis=1)


def layer_mean_activations(model, tokenizer, prompts, **kwargs) -> np.ndarray:
    """Mean over the prompt set of each layer's sample vectors: float64 ``[n_layers, hidden]`` (streamed).

    One row per hidden state (embeddings first), i.e. the points of one model in Figures 1 and 3.
    """
    total: np.ndarray | None = None
    n = 0
    for _, arr in _activation_batches(model, tokenizer, prompts, **kwargs):
        s = arr.astype(np.float64).sum(axis=1)
        total = s if total is None else total + s
        n += arr.shape[1]
    assert total is not None
    return total / n


# --------------------------------------------------------------------------------------------------
# Streaming covariance
# --------------------------------------------------------------------------------------------------


class CovarianceAccumulator:
    """Streaming covariance of ``hidden``-dim samples: count, sum and sum of outer products in float64.

    Samples are buffered (``buffer_size`` rows at most) and folded in with one matrix product per flush, so
    memory is ``hidden^2`` float64 plus the buffer, never every sample. Values are shifted by the first
    flush's mean before summing (covariance is shift-invariant); this keeps the
    ``sum_outer - n * mean mean^T`` formula accurate when activations have a large mean, as LLM residual
    streams do. ``path=`` keeps the outer-product matrix in a memory-mapped ``.npy`` file instead of RAM.
    """

    def __init__(self, hidden: int, *, path: str | os.PathLike | None = None, buffer_size: int = 512):
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        self.hidden = int(hidden)
        self.buffer_size = max(1, int(buffer_size))
        self.count = 0
        self.shift: np.ndarray | None = None
        self.sum = np.zeros(self.hidden, dtype=np.float64)
        self.path = Path(path) if path is not None else None
        if self.path is None:
            self.outer = np.zeros((self.hidden, self.hidden), dtype=np.float64)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.outer = np.lib.format.open_memmap(
                self.path, mode="w+", dtype=np.float64, shape=(self.hidden,) * 2
            )
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._finalised = False

    def update(self, x) -> None:
        """Add samples ``x`` of shape ``[batch, hidden]`` (numpy or torch)."""
        if self._finalised:
            raise RuntimeError("this accumulator was finalised in place; create a new one")
        if hasattr(x, "detach"):
            x = x.detach().float().cpu().numpy()
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.hidden:
            raise ValueError(f"expected samples of shape [batch, {self.hidden}], got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("samples contain NaN or inf")
        if len(x) == 0:
            return
        self._buffer.append(x)
        self._buffered += len(x)
        if self._buffered >= self.buffer_size:
            self.flush()

    def flush(self) -> None:
        """Fold the buffered samples into the sums."""
        if not self._buffer:
            return
        x = np.concatenate(self._buffer)
        self._buffer, self._buffered = [], 0
        if self.shift is None:
            self.shift = x.mean(axis=0)
        xc = x - self.shift
        self.count += len(xc)
        self.sum += xc.sum(axis=0)
        self.outer += xc.T @ xc

    def mean(self) -> np.ndarray:
        """Mean of the samples seen so far."""
        self.flush()
        if self.count == 0:
            raise ValueError("no samples accumulated")
        return self.shift + self.sum / self.count

    def covariance(self, ddof: int = 1, *, inplace: bool = False) -> np.ndarray:
        """Mean-centred covariance ``sum (x - mean)(x - mean)^T / (n - ddof)``; ddof=1 equals ``numpy.cov``.

        ``inplace=True`` overwrites the outer-product buffer (RAM or memmap) instead of allocating another
        ``hidden^2`` matrix; the accumulator cannot be updated afterwards.
        """
        self.flush()
        if self.count - ddof <= 0:
            raise ValueError(f"covariance needs more than {ddof} samples, got {self.count}")
        m = self.sum / self.count  # mean of the shifted samples
        if inplace:
            out = self.outer
            out -= self.count * np.outer(m, m)
            out /= self.count - ddof
            self._finalised = True
            if isinstance(out, np.memmap):
                out.flush()
            return out
        return (self.outer - self.count * np.outer(m, m)) / (self.count - ddof)


def _prompts_digest(prompts: Sequence[Any]) -> str:
    norm = [_normalise_prompt(p, i) for i, p in enumerate(prompts)]
    return hashlib.sha256(json.dumps(norm, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _layer_file(out_dir: Path, layer: int) -> Path:
    return out_dir / f"cov_layer{layer:03d}.npy"


def load_layer_covariances(out_dir: str | os.PathLike) -> tuple[list[np.ndarray], dict]:
    """Read-only memory maps of the per-layer covariances in ``out_dir`` (in ``meta["layers"]`` order) and the meta."""
    out_dir = Path(out_dir)
    meta_path = out_dir / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{out_dir}: no meta.json, so no complete set of layer covariances")
    meta = read_json(meta_path)
    covs = []
    for layer in meta["layers"]:
        f = _layer_file(out_dir, layer)
        if not f.exists():
            raise FileNotFoundError(f"{out_dir}: meta.json lists layer {layer} but {f.name} is missing")
        covs.append(np.load(f, mmap_mode="r"))
    return covs, meta


def layer_covariances(
    model,
    tokenizer,
    prompts,
    *,
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    buffer_size: int = 512,
    **kwargs,
) -> list[np.ndarray]:
    """Per-layer covariance ``[hidden, hidden]`` (float64) of the sample vectors, in one pass over batches.

    In RAM by default. With ``out_dir`` every layer's accumulator is a memory-mapped ``cov_layerNNN.npy``
    there, finalised in place, and the result is a list of read-only memory maps; ``meta.json`` is written
    last and makes the directory reusable: a later call with the same model, prompts and settings loads it
    instead of recomputing (``overwrite=True`` forces a recomputation). Other keyword arguments as in
    :func:`iter_activation_batches`.
    """
    out_path = Path(out_dir) if out_dir is not None else None
    model, tokenizer, model_id = _resolve_model(
        model, tokenizer, kwargs.get("device"), kwargs.pop("dtype", None)
    )
    signature = {
        "model": model_id,
        "n_samples": len(prompts),
        "prompts_sha256": _prompts_digest(prompts),
        "position": kwargs.get("position", "mean"),
        "requested_layers": None if kwargs.get("layers") is None else [int(x) for x in kwargs["layers"]],
        "chat": kwargs.get("chat"),
        "add_generation_prompt": kwargs.get("add_generation_prompt", True),
        "max_length": kwargs.get("max_length"),
    }
    if out_path is not None and not overwrite and (out_path / "meta.json").exists():
        covs, meta = load_layer_covariances(out_path)
        if all(meta.get(k) == v for k, v in signature.items()):
            return covs
    if out_path is not None and (out_path / "meta.json").exists():
        (out_path / "meta.json").unlink()  # stale or forced: the directory is incomplete until rewritten

    accs: list[CovarianceAccumulator] | None = None
    layers: list[int] = []
    for layers, arr in _activation_batches(model, tokenizer, prompts, **kwargs):
        if accs is None:
            hidden = arr.shape[-1]
            accs = [
                CovarianceAccumulator(
                    hidden,
                    buffer_size=buffer_size,
                    path=None
                    if out_path is None
                    else out_path / f".{_layer_file(out_path, layer).name}.partial",
                )
                for layer in layers
            ]
        for acc, x in zip(accs, arr, strict=True):
            acc.update(x)
    assert accs is not None
    if out_path is None:
        return [acc.covariance(inplace=True) for acc in accs]
    for layer, acc in zip(layers, accs, strict=True):
        acc.covariance(inplace=True)
        partial = acc.path
        del acc.outer  # close the memmap before renaming it into place
        os.replace(partial, _layer_file(out_path, layer))
    write_json(
        out_path / "meta.json",
        {**signature, "layers": layers, "hidden": accs[0].hidden, "count": accs[0].count},
    )
    return load_layer_covariances(out_path)[0]


# --------------------------------------------------------------------------------------------------
# Norms and CKA
# --------------------------------------------------------------------------------------------------


def spectral_norm(m: np.ndarray, *, dense_limit: int = 1024) -> float:
    """Largest singular value of ``m``; for large symmetric matrices via Lanczos (``eigsh``), else dense."""
    m = np.asarray(m, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"expected a matrix, got shape {m.shape}")
    if not np.any(m):
        return 0.0
    symmetric = m.shape[0] == m.shape[1] and np.allclose(m, m.T, rtol=1e-10, atol=1e-12 * np.abs(m).max())
    if symmetric and m.shape[0] > dense_limit:
        from scipy.sparse.linalg import eigsh

        # For a symmetric matrix the largest singular value is the largest |eigenvalue|. A fixed start
        # vector keeps the result deterministic.
        v0 = np.random.default_rng(0).standard_normal(m.shape[0])
        vals = eigsh(m, k=1, which="LM", v0=v0, return_eigenvectors=False, tol=1e-10)
        return float(np.abs(vals).max())
    if symmetric:
        return float(np.abs(np.linalg.eigvalsh(m)).max())
    return float(np.linalg.norm(m, ord=2))


def covariance_difference_norms(
    cov_a_layers: Sequence[np.ndarray],
    cov_b_layers: Sequence[np.ndarray],
    *,
    layers: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Tidy ``layer, frobenius, spectral`` of ``Sigma_A - Sigma_B`` per layer, one layer in memory at a time.

    ``layers`` labels the rows (default 0..n-1, i.e. hidden-state indices when all layers were computed).
    """
    if len(cov_a_layers) != len(cov_b_layers):
        raise ValueError(f"different numbers of layers: {len(cov_a_layers)} vs {len(cov_b_layers)}")
    labels = list(range(len(cov_a_layers))) if layers is None else [int(x) for x in layers]
    if len(labels) != len(cov_a_layers):
        raise ValueError(f"{len(labels)} layer labels for {len(cov_a_layers)} layers")
    rows = []
    for label, a, b in zip(labels, cov_a_layers, cov_b_layers, strict=True):
        if a.shape != b.shape or a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise ValueError(
                f"layer {label}: covariance shapes {a.shape} and {b.shape} differ or are not square"
            )
        d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
        rows.append({"layer": label, "frobenius": float(np.linalg.norm(d)), "spectral": spectral_norm(d)})
        del d
    return pd.DataFrame(rows, columns=["layer", "frobenius", "spectral"])


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) of two representations ``[n_samples, features]`` of the same samples.

    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc, Yc``; computed through the
    ``n x n`` Gram matrices when samples are fewer than features. NaN when either side has no variance.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"need two [n_samples, features] arrays with the same n_samples, got {x.shape} and {y.shape}"
        )
    if x.shape[0] < 2:
        raise ValueError("CKA needs at least 2 samples")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    if x.shape[0] < max(x.shape[1], y.shape[1]):
        k, l_ = x @ x.T, y @ y.T
        hsic, xx, yy = np.sum(k * l_), np.sum(k * k), np.sum(l_ * l_)
    else:
        hsic = np.sum((y.T @ x) ** 2)
        xx, yy = np.sum((x.T @ x) ** 2), np.sum((y.T @ y) ** 2)
    denom = np.sqrt(xx) * np.sqrt(yy)
    if denom == 0:
        return float("nan")
    return float(hsic / denom)


def layerwise_cka(
    acts_a: Sequence[np.ndarray], acts_b: Sequence[np.ndarray], *, layers: Sequence[int] | None = None
) -> pd.DataFrame:
    """Tidy ``layer, cka`` between two models' per-sample vectors (e.g. :func:`capture_activations` outputs)."""
    if len(acts_a) != len(acts_b):
        raise ValueError(f"different numbers of layers: {len(acts_a)} vs {len(acts_b)}")
    labels = list(range(len(acts_a))) if layers is None else [int(x) for x in layers]
    return pd.DataFrame(
        {"layer": labels, "cka": [linear_cka(a, b) for a, b in zip(acts_a, acts_b, strict=True)]}
    )


# --------------------------------------------------------------------------------------------------
# Projections and separation
# --------------------------------------------------------------------------------------------------


def tsne_perplexity(n_points: int, default: float = DEFAULT_PERPLEXITY) -> float:
    """Perplexity rule: ``min(default, max(1, (n_points - 1) / 3))``.

    scikit-learn's Barnes-Hut t-SNE looks at ``3 * perplexity + 1`` neighbours and requires
    perplexity < n_points; capping at ``(n - 1) / 3`` keeps that neighbourhood within the other points
    (e.g. 2 models x 33 layers = 66 points -> 21.7; 2 x 5 = 10 points -> 3). Floor 1, ceiling ``default``.
    """
    if n_points < 2:
        raise ValueError(f"t-SNE needs at least 2 points, got {n_points}")
    return float(min(default, max(1.0, (n_points - 1) / 3.0)))


def tsne_embed(points: np.ndarray, *, seed: int = 0, perplexity: float | None = None) -> np.ndarray:
    """2-D t-SNE (scikit-learn, PCA init, fixed seed) with the :func:`tsne_perplexity` rule by default."""
    from sklearn.manifold import TSNE

    points = np.asarray(points, dtype=np.float64)
    perp = tsne_perplexity(len(points)) if perplexity is None else float(perplexity)
    if not 0 < perp < len(points):
        raise ValueError(f"perplexity {perp} must be in (0, n_points={len(points)})")
    return TSNE(
        n_components=2, perplexity=perp, init="pca", learning_rate="auto", random_state=seed
    ).fit_transform(points)


def pca_embed(points: np.ndarray, n_components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """PCA coordinates ``[n, n_components]`` and explained-variance ratios (deterministic signs)."""
    from sklearn.decomposition import PCA

    points = np.asarray(points, dtype=np.float64)
    k = min(n_components, *points.shape)
    pca = PCA(n_components=k, svd_solver="full")
    coords = pca.fit_transform(points)
    if k < n_components:  # fewer points or features than components: pad with zeros
        coords = np.pad(coords, ((0, 0), (0, n_components - k)))
    ratios = np.pad(pca.explained_variance_ratio_, (0, n_components - k))
    return coords, ratios


def project_points(
    points: np.ndarray,
    meta: pd.DataFrame | Mapping[str, Sequence] | None = None,
    *,
    seed: int = 0,
    perplexity: float | None = None,
) -> pd.DataFrame:
    """Tidy frame: ``meta`` columns + ``tsne_x, tsne_y, pca_x, pca_y, perplexity, pc1_var, pc2_var``."""
    points = np.asarray(points, dtype=np.float64)
    frame = (
        pd.DataFrame(meta).reset_index(drop=True)
        if meta is not None
        else pd.DataFrame(index=range(len(points)))
    )
    if len(frame) != len(points):
        raise ValueError(f"meta has {len(frame)} rows for {len(points)} points")
    perp = tsne_perplexity(len(points)) if perplexity is None else float(perplexity)
    t = tsne_embed(points, seed=seed, perplexity=perp)
    p, ratios = pca_embed(points, 2)
    return frame.assign(
        tsne_x=t[:, 0],
        tsne_y=t[:, 1],
        pca_x=p[:, 0],
        pca_y=p[:, 1],
        perplexity=perp,
        pc1_var=ratios[0],
        pc2_var=ratios[1],
    )


def separation_score(points: np.ndarray, labels: Sequence) -> float:
    """Centroid distance over pooled within-cluster spread (a multivariate Cohen's d).

    ``score = min over label pairs ||c_i - c_j|| / s`` with ``s = sqrt(sum_k sum_{x in k} ||x - c_k||^2 / (N - K))``,
    the pooled root-mean-square distance of points to their own centroid (N points, K labels). With two
    labels it is the centroid distance in units of spread; with more, the least separated pair. Compute it
    in the original (or PCA) space, not on t-SNE coordinates, whose distances are not meaningful. NaN when
    undefined (N == K, or zero distance with zero spread); inf for distinct clusters of identical points.
    """
    points = np.asarray(points, dtype=np.float64)
    labels = np.asarray(labels)
    if points.ndim != 2 or len(points) != len(labels):
        raise ValueError(f"need points [n, d] and n labels, got {points.shape} and {labels.shape}")
    groups = list(dict.fromkeys(labels.tolist()))
    if len(groups) < 2:
        raise ValueError(f"separation needs at least 2 labels, got {groups}")
    centroids = np.stack([points[labels == g].mean(axis=0) for g in groups])
    within = sum(
        float(((points[labels == g] - c) ** 2).sum()) for g, c in zip(groups, centroids, strict=True)
    )
    dof = len(points) - len(groups)
    if dof <= 0:
        return float("nan")
    spread = np.sqrt(within / dof)
    dist = min(
        float(np.linalg.norm(centroids[i] - centroids[j]))
        for i in range(len(groups))
        for j in range(i + 1, len(groups))
    )
    if spread == 0:
        return float("nan") if dist == 0 else float("inf")
    return dist / spread


def paired_layer_distances(
    means_a: np.ndarray, means_b: np.ndarray, *, layers: Sequence[int] | None = None
) -> pd.DataFrame:
    """Tidy ``layer, euclidean, relative, cosine_distance`` between two models' layer-mean vectors.

    ``relative`` = ``||a - b|| / sqrt((||a||^2 + ||b||^2) / 2)``: the same layer's shift, free of the
    growth of activation norms with depth, a number beside the t-SNE picture of Figure 1.
    """
    a = np.asarray(means_a, dtype=np.float64)
    b = np.asarray(means_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two [n_layers, hidden] arrays of one shape, got {a.shape} and {b.shape}")
    labels = list(range(len(a))) if layers is None else [int(x) for x in layers]
    diff = np.linalg.norm(a - b, axis=1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = diff / np.sqrt((na**2 + nb**2) / 2)
        cos = 1 - (a * b).sum(axis=1) / (na * nb)
    return pd.DataFrame({"layer": labels, "euclidean": diff, "relative": rel, "cosine_distance": cos})


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def save_figure(fig, path_stem: str | os.PathLike) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.pdf`` atomically (no timestamps in the PDF)."""
    stem = Path(path_stem)
    paths = []
    for ext, meta in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "ModDate": None})):
        target = stem.with_name(f"{stem.name}.{ext}")
        with atomic_path(target, suffix=f".{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight", metadata=meta)
        paths.append(target)
    return paths


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``frame`` as a tidy CSV (no index), atomically; floats at full precision."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False)
    return path


def _new_figure(nrows: int, ncols: int, width: float, height: float):
    # An object-oriented Figure (no pyplot): renders headless with Agg and leaves a notebook's backend alone.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
    return fig, axes


def plot_projections(
    frame: pd.DataFrame,
    path_stem: str | os.PathLike,
    *,
    hue: str = "model",
    panel: str | None = None,
    layer: str | None = "layer",
    panel_notes: Mapping[Any, str] | None = None,
    title: str | None = None,
):
    """t-SNE (left) and PCA (right) side by side, one row per ``panel`` value; returns ``(fig, paths)``.

    ``frame`` is a :func:`project_points` output (concatenated per panel when t-SNE was run per panel).
    Points of one ``hue`` value are joined in ``layer`` order (the layer trajectory), with the first and
    last layer numbered. ``panel_notes`` adds text (e.g. the separation score) to a row's titles.
    """
    needed = (
        {"tsne_x", "tsne_y", "pca_x", "pca_y", hue}
        | ({panel} if panel else set())
        | ({layer} if layer else set())
    )
    missing = needed - set(frame.columns)
    if missing:
        raise KeyError(f"projection frame lacks columns {sorted(missing)}")
    panels = list(dict.fromkeys(frame[panel])) if panel else [None]
    fig, axes = _new_figure(len(panels), 2, 4.6, 4.0)
    colours = {h: f"C{i}" for i, h in enumerate(dict.fromkeys(frame[hue]))}
    for r, pv in enumerate(panels):
        sub = frame if pv is None else frame[frame[panel] == pv]
        note = (panel_notes or {}).get(pv, "")
        for c, (kind, xcol, ycol) in enumerate((("t-SNE", "tsne_x", "tsne_y"), ("PCA", "pca_x", "pca_y"))):
            ax = axes[r, c]
            for h, g in sub.groupby(hue, sort=False):
                if layer:  # join a model's layers in order; points without a layer order stay unjoined
                    g = g.sort_values(layer)
                    ax.plot(g[xcol], g[ycol], "-", color=colours[h], alpha=0.3, lw=0.8)
                ax.scatter(g[xcol], g[ycol], s=18, color=colours[h], label=str(h))
                if layer and len(g):
                    for idx in {g.index[0], g.index[-1]}:
                        ax.annotate(
                            str(g.at[idx, layer]),
                            (g.at[idx, xcol], g.at[idx, ycol]),
                            fontsize=7,
                            xytext=(3, 3),
                            textcoords="offset points",
                        )
            head = f"{kind}" + (f" — {pv}" if pv is not None else "")
            if kind == "t-SNE" and "perplexity" in sub:
                head += f" (perplexity {sub['perplexity'].iloc[0]:.3g})"
            ax.set_title(head + (f"\n{note}" if note else ""), fontsize=9)
            if kind == "PCA" and "pc1_var" in sub:
                ax.set_xlabel(f"PC1 ({100 * sub['pc1_var'].iloc[0]:.1f}% var.)")
                ax.set_ylabel(f"PC2 ({100 * sub['pc2_var'].iloc[0]:.1f}% var.)")
            else:
                ax.set_xlabel(f"{kind} 1")
                ax.set_ylabel(f"{kind} 2")
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig, save_figure(fig, path_stem)


NORM_LABELS = {
    "frobenius": r"Frobenius norm $\|\Sigma_A-\Sigma_B\|_F$",
    "spectral": r"spectral norm $\|\Sigma_A-\Sigma_B\|_2$ (largest singular value)",
}


def plot_layer_norms(
    frame: pd.DataFrame,
    path_stem: str | os.PathLike,
    *,
    norm: str = "spectral",
    hue: str = "comparison",
    panel: str | None = None,
    logy: bool = False,
    title: str | None = None,
):
    """Per-layer covariance-difference norm curves, one line per ``hue``, one column per ``panel``; ``(fig, paths)``.

    ``frame`` is tidy (``layer``, ``frobenius``/``spectral`` and the grouping columns, e.g. concatenated
    :func:`covariance_difference_norms` outputs). The y-axis label names the norm shown.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return plot_layer_metric(frame, path_stem, value=norm, ylabel=NORM_LABELS[norm], hue=hue, panel=panel,
                             logy=logy, title=title)


def plot_layer_metric(
    frame: pd.DataFrame,
    path_stem: str | os.PathLike,
    *,
    value: str,
    ylabel: str,
    hue: str = "comparison",
    panel: str | None = None,
    logy: bool = False,
    title: str | None = None,
):
    """Per-layer curves of any ``value`` column (e.g. ``cka``), one line per ``hue``, one column per ``panel``."""
    from matplotlib.ticker import MaxNLocator

    needed = {"layer", value, hue} | ({panel} if panel else set())
    missing = needed - set(frame.columns)
    if missing:
        raise KeyError(f"frame lacks columns {sorted(missing)}")
    panels = list(dict.fromkeys(frame[panel])) if panel else [None]
    fig, axes = _new_figure(1, len(panels), 5.0, 3.6)
    colours = {h: f"C{i}" for i, h in enumerate(dict.fromkeys(frame[hue]))}
    for c, pv in enumerate(panels):
        ax = axes[0, c]
        sub = frame if pv is None else frame[frame[panel] == pv]
        for h, g in sub.groupby(hue, sort=False):
            g = g.sort_values("layer")
            ax.plot(g["layer"], g[value], "o-", ms=3, color=colours[h], label=str(h))
        ax.set_xlabel("layer (0 = embeddings)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        if logy:
            ax.set_yscale("log")
        if pv is not None:
            ax.set_title(str(pv), fontsize=9)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig, save_figure(fig, path_stem)


# --------------------------------------------------------------------------------------------------
# Layer profiles: one forward pass per model gives per-sample vectors (CKA, means) and covariances
# --------------------------------------------------------------------------------------------------


class LayerProfile:
    """One model's view of a prompt set: per-sample vectors ``[n_layers, n, hidden]`` and per-layer covariances.

    ``activations`` and ``covariances`` are read-only memory maps when the profile was cached on disk.
    """

    def __init__(self, source: str, layers: list[int], activations: np.ndarray,
                 covariances: list[np.ndarray], meta: dict):
        self.source, self.layers, self.activations, self.covariances, self.meta = (
            source, layers, activations, covariances, meta)

    @property
    def means(self) -> np.ndarray:
        """Mean sample vector of each layer, float64 ``[n_layers, hidden]`` (the points of Figure 1)."""
        return np.asarray(self.activations, dtype=np.float64).mean(axis=1)

    def __repr__(self) -> str:
        shape = tuple(self.activations.shape)
        return f"LayerProfile({self.source!r}, layers={self.layers}, activations={shape})"


def _source_id(model) -> str | None:
    if isinstance(model, (str, os.PathLike)):
        return str(model) if is_hub_id(model) else str(Path(model).resolve())
    return None


def _profile_signature(model_id: str, prompts, kwargs: Mapping[str, Any], dtype: Any) -> dict:
    return {
        "model": model_id,
        "n_samples": len(prompts),
        "prompts_sha256": _prompts_digest(prompts),
        "position": kwargs.get("position", "mean"),
        "requested_layers": None if kwargs.get("layers") is None else [int(x) for x in kwargs["layers"]],
        "chat": kwargs.get("chat"),
        "add_generation_prompt": kwargs.get("add_generation_prompt", True),
        "max_length": kwargs.get("max_length"),
        "dtype": None if dtype is None else str(dtype).removeprefix("torch."),
    }


def load_layer_profile(out_dir: str | os.PathLike) -> LayerProfile:
    """A cached :class:`LayerProfile` (memory-mapped) from ``out_dir``; FileNotFoundError if incomplete."""
    out_dir = Path(out_dir)
    if not (out_dir / "meta.json").exists():
        raise FileNotFoundError(f"{out_dir}: no meta.json, so no complete layer profile")
    meta = read_json(out_dir / "meta.json")
    acts = np.load(out_dir / "activations.npy", mmap_mode="r")
    covs = [np.load(_layer_file(out_dir, layer), mmap_mode="r") for layer in meta["layers"]]
    return LayerProfile(meta["model"], list(meta["layers"]), acts, covs, meta)


def layer_profile(
    model,
    tokenizer,
    prompts,
    *,
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    buffer_size: int = 512,
    **kwargs,
) -> LayerProfile:
    """Per-sample vectors and streaming covariances of every selected layer, from one pass over the prompts.

    ``model`` is a loaded model or a saved directory / hub id. With ``out_dir`` the result is cached there
    (``activations.npy``, one ``cov_layerNNN.npy`` per layer, ``meta.json`` written last) and reused, without
    loading the model, when the model, prompts and settings match. Per-sample vectors are kept because CKA
    needs them (n_prompts x n_layers x hidden float32: 43 MB for 80 prompts, 33 layers, hidden 4096); the
    covariances never need every activation (see :class:`CovarianceAccumulator`). Other keyword arguments as
    in :func:`iter_activation_batches`.
    """
    out_path = Path(out_dir) if out_dir is not None else None
    dtype = kwargs.pop("dtype", None)
    model_id = _source_id(model)
    if out_path is not None and model_id is not None and not overwrite and (out_path / "meta.json").exists():
        cached = load_layer_profile(out_path)
        if all(cached.meta.get(k) == v for k, v in _profile_signature(model_id, prompts, kwargs, dtype).items()):
            return cached
    model, tokenizer, resolved_id = _resolve_model(model, tokenizer, kwargs.get("device"), dtype)
    signature = _profile_signature(model_id or resolved_id, prompts, kwargs, dtype)
    if out_path is not None:
        out_path.mkdir(parents=True, exist_ok=True)
        (out_path / "meta.json").unlink(missing_ok=True)  # incomplete until rewritten
    accs: list[CovarianceAccumulator] = []
    acts: np.ndarray | None = None
    layers: list[int] = []
    filled = 0
    for layers, arr in _activation_batches(model, tokenizer, prompts, **kwargs):
        if acts is None:
            shape = (arr.shape[0], len(prompts), arr.shape[-1])
            acts = (np.zeros(shape, dtype=np.float32) if out_path is None else np.lib.format.open_memmap(
                out_path / ".activations.npy.partial", mode="w+", dtype=np.float32, shape=shape))
            accs = [CovarianceAccumulator(
                shape[-1], buffer_size=buffer_size,
                path=None if out_path is None else out_path / f".{_layer_file(out_path, layer).name}.partial")
                for layer in layers]
        acts[:, filled:filled + arr.shape[1]] = arr
        filled += arr.shape[1]
        for acc, x in zip(accs, arr, strict=True):
            acc.update(x)
    assert acts is not None and filled == len(prompts)
    if out_path is None:
        covs = [acc.covariance(inplace=True) for acc in accs]
        return LayerProfile(signature["model"], layers, acts, covs,
                            {**signature, "layers": layers, "hidden": acts.shape[-1]})
    for layer, acc in zip(layers, accs, strict=True):
        acc.covariance(inplace=True)
        partial = acc.path
        del acc.outer  # close the memmap before renaming it into place
        os.replace(partial, _layer_file(out_path, layer))
    acts.flush()
    del acts
    os.replace(out_path / ".activations.npy.partial", out_path / "activations.npy")
    write_json(out_path / "meta.json", {**signature, "layers": layers, "hidden": accs[0].hidden})
    return load_layer_profile(out_path)


def _slug(source: str) -> str:
    parts = Path(source).parts[-2:] if not is_hub_id(source) else source.split("/")
    return re.sub(r"[^\w.-]+", "-", "--".join(parts))[:80]


def profile_models(
    sources: Sequence[str | os.PathLike],
    prompts,
    *,
    cache_root: str | os.PathLike | None = None,
    profiles: dict[str, LayerProfile] | None = None,
    dtype: Any = "float32",
    **kwargs,
) -> dict[str, LayerProfile]:
    """:func:`layer_profile` of each distinct source (directory or hub id), one model in memory at a time.

    Returns (and fills, when given) ``profiles`` keyed by ``str(source)``; a source already there is not
    recomputed. With ``cache_root`` each profile is cached in ``<cache_root>/<slug>-<hash>/`` so that Figure 2,
    Figure C4 and a rerun of the notebook share forward passes. ``dtype`` defaults to float32 (see the module
    notes on bfloat16 and padding). Other keyword arguments as in :func:`iter_activation_batches`.
    """
    import gc

    out = profiles if profiles is not None else {}
    for src in dict.fromkeys(str(s) for s in sources):
        if src in out:
            continue
        out_dir = None
        if cache_root is not None:
            sig = _profile_signature(_source_id(src), prompts, kwargs, dtype)
            digest = hashlib.sha256(json.dumps(sig, sort_keys=True).encode()).hexdigest()[:16]
            out_dir = Path(cache_root) / f"{_slug(src)}-{digest}"
        out[src] = layer_profile(src, None, prompts, out_dir=out_dir, dtype=dtype, **{"desc": _slug(src), **kwargs})
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
    return out


def compare_profiles(a: LayerProfile, b: LayerProfile) -> pd.DataFrame:
    """Per layer: ``frobenius``, ``spectral`` (of Sigma_a - Sigma_b), linear ``cka`` and layer-mean shifts."""
    if a.layers != b.layers:
        raise ValueError(f"profiles of different layers: {a.layers} ({a.source}) vs {b.layers} ({b.source})")
    if a.activations.shape[:2] != b.activations.shape[:2] or a.meta.get("prompts_sha256") != b.meta.get(
            "prompts_sha256"):
        raise ValueError(f"profiles of different prompt sets: {a.source} and {b.source}")
    norms = covariance_difference_norms(a.covariances, b.covariances, layers=a.layers)
    cka = layerwise_cka(a.activations, b.activations, layers=a.layers)
    shift = paired_layer_distances(a.means, b.means, layers=a.layers)
    return norms.merge(cka, on="layer").merge(shift, on="layer")


# --------------------------------------------------------------------------------------------------
# The grid's runs: which models are compared (Figures 1, 2, C4)
# --------------------------------------------------------------------------------------------------

# (Phase 1 data, Phase 2 data) of the paper's similar and dissimilar pairs.
DRIFT_PAIRS = {"similar": ("alpaca", "multialpaca"), "dissimilar": ("Instruct", "multialpaca")}
MITIGATION_STRATEGIES = ("LF_H2", "GR_5", "GR_10")


class DriftPair:
    """A Phase 2 run of the grid with its Phase 1 parent and base model (``phase1``/``phase2`` are RunPlans)."""

    def __init__(self, model: str, pair: str, base: str, phase1, phase2):
        self.model, self.pair, self.base, self.phase1, self.phase2 = model, pair, base, phase1, phase2

    @property
    def label(self) -> str:
        """``"alpaca → multialpaca"``."""
        return f"{self.phase2.phase1_data} → {self.phase2.phase2_data}"

    def sources(self) -> dict[str, str]:
        """Model directories (or hub ids) of ``base``, ``P1`` and ``P2``."""
        return {"base": self.base, "P1": str(self.phase1.model_dir), "P2": str(self.phase2.model_dir)}

    def __repr__(self) -> str:
        return f"DriftPair({self.model!r}, {self.pair!r}, {self.label!r})"


def base_model_source(cfg, model_name: str) -> str:
    """The base model of ``model_name``: the sandbox's pre-trained model folder, or the hub id / folder."""
    spec = next((m for m in cfg.models if m.name == model_name), None)
    if spec is None:
        raise KeyError(f"no model named {model_name!r} in the profile (have {[m.name for m in cfg.models]})")
    if spec.base == "sandbox":
        from .train import sandbox_paths

        return str(sandbox_paths(cfg)["base"])
    return spec.base


def _find_phase2(plan, model: str, phase1: str, phase2: str):
    for r in plan.phase2:
        if r.model == model and r.phase1_data == phase1 and r.phase2_data == phase2:
            return r
    cells = sorted({f"{r.phase1_data}->{r.phase2_data}" for r in plan.phase2 if r.model == model})
    raise KeyError(f"the grid has no Phase 2 run {phase1}->{phase2} for model {model!r} (it has {cells})")


def drift_pairs(cfg, plan, pairs: Mapping[str, tuple[str, str]] = DRIFT_PAIRS) -> list[DriftPair]:
    """For each model of the grid and each named (Phase 1, Phase 2) pair: the runs to compare."""
    out = []
    for model in cfg.grid.models:
        base = base_model_source(cfg, model)
        for name, (p1, p2) in pairs.items():
            run = _find_phase2(plan, model, p1, p2)
            out.append(DriftPair(model, name, base, run.extra["parent"], run))
    return out


def _norm_strategy(s: Any) -> str:
    return re.sub(r"[^A-Z0-9]", "", str(s).upper())


def find_strategy_runs(cfg, baseline, strategies: Sequence[str] = MITIGATION_STRATEGIES,
                       home: str | os.PathLike | None = None) -> dict[str, Path]:
    """Finished Phase 2 runs that continue ``baseline``'s Phase 1 model on its data with one of ``strategies``.

    Looks first at ``train.plan_runs(cfg, strategy=s)``, then at every ``$CFT_HOME/runs/*/run.json`` whose resolved
    configuration has the baseline's parent and data and that strategy (names compared without case and
    punctuation: ``GR_5`` = ``gr5``), so runs whose id also hashes strategy parameters are found too. Only runs
    with a ``DONE`` marker and safetensors weights count. Returns ``{strategy: model folder}`` in ``strategies`` order.
    """
    from .paths import cft_home
    from .train import plan_runs

    def usable(d: Path) -> bool:
        return (d.parent / "DONE").exists() and any(d.glob("*.safetensors"))

    found: dict[str, Path] = {}
    for s in strategies:
        try:
            run = _find_phase2(plan_runs(cfg, strategy=s), baseline.model, baseline.phase1_data,
                               baseline.phase2_data)
        except (KeyError, ValueError):
            continue
        if run.done() and usable(run.model_dir):
            found[s] = run.model_dir
    wanted = {_norm_strategy(s): s for s in strategies if s not in found}
    runs_dir = Path(home or cft_home()) / "runs"
    for rj in sorted(runs_dir.glob("*/run.json")) if wanted else []:
        try:
            res = read_json(rj).get("resolved", {})
        except (OSError, ValueError):
            continue
        s = wanted.get(_norm_strategy(res.get("strategy", "")))
        if (s is not None and s not in found and res.get("phase") == 2
                and res.get("parent") == baseline.resolved.get("parent")
                and res.get("data") == baseline.resolved.get("data") and usable(rj.parent / "model")):
            found[s] = rj.parent / "model"
    return {s: found[s] for s in strategies if s in found}


def mitigation_runs(cfg, plan, model: str, *, strategies: Sequence[str] = MITIGATION_STRATEGIES,
                    baseline: tuple[str, str] = DRIFT_PAIRS["dissimilar"]) -> list[tuple[str, Path]]:
    """``(label, model folder)`` of the baseline Phase 2 run and of each finished mitigation run (Figure C4)."""
    run = _find_phase2(plan, model, *baseline)
    entries = [(f"{baseline[0]} → {baseline[1]} (no mitigation)", Path(run.model_dir))]
    for s, d in find_strategy_runs(cfg, run, strategies).items():
        entries.append((s, d))
    return entries


def mitigation_references(cfg, plan, model: str,
                          baseline: tuple[str, str] = DRIFT_PAIRS["dissimilar"]) -> dict[str, str]:
    """The models the mitigation runs are compared with: ``{"P1": Phase 1 model, "base": base model}``."""
    run = _find_phase2(plan, model, *baseline)
    return {"P1": str(run.extra["parent"].model_dir), "base": base_model_source(cfg, model)}


# --------------------------------------------------------------------------------------------------
# Comparison tables
# --------------------------------------------------------------------------------------------------

LAYER_COLUMNS = ["model", "pair", "label", "run", "comparison", "layer", "frobenius", "spectral", "cka",
                 "euclidean", "relative", "cosine_distance"]


def drift_table(pairs: Sequence[DriftPair], profiles: Mapping[str, LayerProfile]) -> pd.DataFrame:
    """Tidy per-layer table of Figure 2: P2 vs P1 and P2 vs base for each pair (columns ``LAYER_COLUMNS``)."""
    parts = []
    for p in pairs:
        src = p.sources()
        for ref in ("P1", "base"):
            df = compare_profiles(profiles[src["P2"]], profiles[src[ref]])
            parts.append(df.assign(model=p.model, pair=p.pair, label=p.label, run=p.phase2.name,
                                   comparison=f"P2 vs {ref}"))
    return pd.concat(parts, ignore_index=True)[LAYER_COLUMNS]


def mitigation_drift(entries: Sequence[tuple[str, str | os.PathLike]], references: Mapping[str, str | os.PathLike],
                     prompts, *, model: str = "", cache_root: str | os.PathLike | None = None,
                     profiles: dict[str, LayerProfile] | None = None, **kwargs) -> pd.DataFrame:
    """Per-layer drift of each ``(label, model folder)`` entry against each reference (Figure C4).

    ``references`` maps a name to a model (e.g. ``{"P1": ..., "base": ...}``); rows get
    ``comparison = "P2 vs <name>"`` and ``run = label``. Profiles are computed (or reused from ``profiles`` and
    ``cache_root``) one model at a time. Columns ``LAYER_COLUMNS``.
    """
    if not entries:
        raise ValueError("no runs to compare")
    sources = [*references.values(), *(d for _, d in entries)]
    profiles = profile_models(sources, prompts, cache_root=cache_root, profiles=profiles, **kwargs)
    parts = []
    for label, d in entries:
        for name, ref in references.items():
            df = compare_profiles(profiles[str(d)], profiles[str(ref)])
            parts.append(df.assign(model=model, pair="mitigation", label=label, run=label,
                                   comparison=f"P2 vs {name}"))
    return pd.concat(parts, ignore_index=True)[LAYER_COLUMNS]


def trajectory_frames(pairs: Sequence[DriftPair], profiles: Mapping[str, LayerProfile], *,
                      seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Figure 1: t-SNE/PCA of the Phase 1 and Phase 2 layer-mean vectors per pair, and their separation.

    Returns ``(projection frame, separation table)``. The table has, per pair, ``separation`` (centroid distance
    over pooled spread, :func:`separation_score`, of the two models' layer-mean vectors in the original space, i.e.
    the points the t-SNE is run on), ``separation_pca`` (the same on the 2-D PCA coordinates) and the mean and
    maximum over layers of the relative shift of the same layer's mean (:func:`paired_layer_distances`).
    """
    frames, rows = [], []
    for p in pairs:
        src = p.sources()
        a, b = profiles[src["P1"]], profiles[src["P2"]]
        m1, m2 = a.means, b.means
        labels = ["Phase 1"] * len(m1) + ["Phase 2"] * len(m2)
        points = np.vstack([m1, m2])
        panel = f"{p.model} · {p.pair}: {p.label}"
        frame = project_points(points, {"checkpoint": labels, "layer": a.layers + b.layers}, seed=seed)
        frames.append(frame.assign(model=p.model, pair=p.pair, label=p.label, panel=panel))
        shift = paired_layer_distances(m1, m2, layers=a.layers)
        rows.append({"model": p.model, "pair": p.pair, "label": p.label, "run": p.phase2.name, "panel": panel,
                     "n_layers": len(m1), "separation": separation_score(points, labels),
                     "separation_pca": separation_score(frame[["pca_x", "pca_y"]].to_numpy(), labels),
                     "mean_relative_shift": float(shift["relative"].mean()),
                     "max_relative_shift": float(shift["relative"].max())})
    return pd.concat(frames, ignore_index=True), pd.DataFrame(rows)


def crosslingual_frames(sources: Mapping[str, str | os.PathLike], records: Sequence[dict], *,
                        layer: int | None = None, english: str = "en", seed: int = 0, dtype: Any = "float32",
                        **kwargs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Figure 3: per-sample vectors of parallel sentences for each model, projected at one layer.

    ``sources`` maps a model name to its folder / hub id; ``records`` carry ``language``. ``layer`` is a hidden-state
    index (default: the middle one, ``n_hidden // 2``). Returns ``(projection frame at that layer, table)``; the
    table has, for every layer, the separation of the English sentences from all others (``separation_en_vs_rest``)
    and the smallest separation of English from any single language (``min_separation_en_vs_language``).
    """
    langs = np.array([r["language"] for r in records])
    if english not in langs or len(set(langs)) < 2:
        raise ValueError(f"need {english!r} and at least one other language, got {sorted(set(langs))}")
    others = [x for x in dict.fromkeys(langs.tolist()) if x != english]
    frames, rows = [], []
    for name, src in sources.items():
        acts = capture_activations(src, None, records, dtype=dtype, **kwargs)
        n_hidden = acts.shape[0]
        chosen = (n_hidden // 2 if layer is None else int(layer)) % n_hidden
        en_or_rest = np.where(langs == english, english, "other")
        for idx in range(n_hidden):
            x = acts[idx].astype(np.float64)
            pairwise = [separation_score(x[(langs == english) | (langs == o)],
                                         langs[(langs == english) | (langs == o)]) for o in others]
            rows.append({"model": name, "layer": idx, "n_sentences": len(records), "n_languages": len(others) + 1,
                         "separation_en_vs_rest": separation_score(x, en_or_rest),
                         "min_separation_en_vs_language": float(np.nanmin(pairwise)) if not np.all(
                             np.isnan(pairwise)) else float("nan"),
                         "shown": idx == chosen})
        frame = project_points(acts[chosen], {"language": langs, "id": [r.get("id") for r in records]}, seed=seed)
        frames.append(frame.assign(model=name, layer=chosen))
        del acts
    return pd.concat(frames, ignore_index=True), pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# The sandbox's question: does the dissimilar pair drift more than the similar pair?
# --------------------------------------------------------------------------------------------------


def drift_summary(separation: pd.DataFrame, drift: pd.DataFrame, comparison: str = "P2 vs P1") -> pd.DataFrame:
    """One row per (model, pair): Figure 1 separation and the layer-averaged norms and 1 - CKA of ``comparison``."""
    d = drift[drift["comparison"] == comparison].assign(one_minus_cka=lambda f: 1 - f["cka"])
    agg = (d.groupby(["model", "pair", "label"], sort=False)
           .agg(mean_spectral=("spectral", "mean"), mean_frobenius=("frobenius", "mean"),
                max_spectral=("spectral", "max"), mean_one_minus_cka=("one_minus_cka", "mean"))
           .reset_index())
    return separation[["model", "pair", "separation", "mean_relative_shift"]].merge(
        agg, on=["model", "pair"], how="outer")


_VERDICT_MEASURES = (
    ("separation", "separation of the Phase 1 / Phase 2 layer means (Figure 1)"),
    ("mean_spectral", "mean spectral norm of Σ_P2 − Σ_P1 over layers (Figure 2)"),
    ("mean_frobenius", "mean Frobenius norm of Σ_P2 − Σ_P1 over layers"),
    ("mean_one_minus_cka", "mean 1 − CKA(P1, P2) over layers"),
)


def drift_verdict(summary: pd.DataFrame, similar: str = "similar", dissimilar: str = "dissimilar") -> list[str]:
    """Sentences, one per model, stating from the numbers whether the dissimilar pair drifts more than the similar.

    ``summary`` is a :func:`drift_summary` frame. A measure that is NaN for either pair is left out and said so.
    """
    out = []
    for model, g in summary.groupby("model", sort=False):
        rows = {r["pair"]: r for _, r in g.iterrows()}
        if similar not in rows or dissimilar not in rows:
            out.append(f"{model}: no comparison (need both the {similar!r} and the {dissimilar!r} pair).")
            continue
        s, d = rows[similar], rows[dissimilar]
        parts, more, used, skipped = [], 0, 0, []
        for key, text in _VERDICT_MEASURES:
            a, b = float(d[key]), float(s[key])
            if not (np.isfinite(a) and np.isfinite(b)):
                skipped.append(text)
                continue
            used += 1
            more += a > b
            ratio = f" ({a / b:.2g}×)" if b > 0 else ""
            parts.append(f"{text}: {a:.3g} vs {b:.3g}{ratio}")
        if used == 0:
            out.append(f"{model}: no measure could be computed.")
            continue
        if more == used:
            verdict, tail = "drifts more than", "as the paper reports"
        elif more == 0:
            verdict, tail = "drifts less than", "the opposite of what the paper reports"
        else:
            verdict, tail = "does not clearly drift more than", "a mixed result, not a clear reproduction of the paper"
        sentence = (f"{model}: the dissimilar pair ({d['label']}) {verdict} the similar pair ({s['label']}), larger on "
                    f"{more} of {used} measures, {tail} — " + "; ".join(parts) + " (dissimilar vs similar).")
        if skipped:
            sentence += f" Not computable: {', '.join(skipped)}."
        out.append(sentence)
    return out
