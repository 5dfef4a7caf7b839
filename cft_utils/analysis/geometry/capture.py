"""Capture of layer-wise hidden states: one vector per prompt and layer, streamed batch by batch.

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
* Models given as folders or hub ids are loaded with :func:`cft_utils.models.load_model` (safetensors only, no
  remote code) and :func:`cft_utils.models.load_tokenizer`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cft_utils.models import load_model, load_tokenizer

POSITIONS = ("mean", "last")
#: ``dtype`` names accepted by the capture functions -> the precision names of :func:`cft_utils.models.load_model`.
DTYPES = {None: "fp32", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(source: str | os.PathLike) -> bool:
    """True for an ``owner/name`` hub id that is not an existing local path."""
    return bool(_HUB_ID.match(str(source))) and not Path(source).exists()


def load_for_capture(source: str | os.PathLike, *, device: str | None = None, dtype: Any = None):
    """``(model, tokenizer)`` of a saved folder or hub id, on ``device`` (default: the GPU when there is one).

    ``dtype`` is None / ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``. A local folder without
    safetensors weights raises ``FileNotFoundError`` (only safetensors checkpoints are loaded).
    """
    if not is_hub_id(source):
        folder = Path(source)
        if not folder.is_dir():
            raise FileNotFoundError(f"model directory {folder} does not exist")
        if not any(folder.glob("*.safetensors")):
            raise FileNotFoundError(f"{folder}: no *.safetensors weights (only safetensors checkpoints are loaded)")
    key = str(dtype).removeprefix("torch.") if dtype is not None else None
    if key not in DTYPES:
        raise ValueError(f"dtype must be one of {[k for k in DTYPES if k]}, got {dtype!r}")
    model = load_model(source, DTYPES[key], device=device or "auto")
    return model.eval(), load_tokenizer(source)


def normalise_prompt(item: Any, i: int) -> str | list[dict]:
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
    norm = [normalise_prompt(p, i) for i, p in enumerate(prompts)]
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


def resolve_model(model, tokenizer, device, dtype):
    """Accept a loaded model or a saved directory (then the tokenizer defaults to the one saved there)."""
    if isinstance(model, (str, os.PathLike)):
        loaded, tok = load_for_capture(model, device=device, dtype=dtype)
        return loaded, tokenizer if tokenizer is not None else tok, str(model)
    if tokenizer is None:
        raise ValueError("a tokenizer is needed when the model is passed as an object")
    return model, tokenizer, str(getattr(model, "name_or_path", "") or "")


def activation_batches(
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
    model, tokenizer, _ = resolve_model(model, tokenizer, device, dtype)
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


def iteractivation_batches(model, tokenizer, prompts, **kwargs) -> Iterator[np.ndarray]:
    """Stream per-batch sample vectors, float32 ``[n_layers, batch, hidden]``, to feed your own accumulators.

    Keyword arguments: ``position`` ("mean" | "last"), ``layers``, ``batch_size``, ``chat``,
    ``add_generation_prompt``, ``max_length``, ``padding_side``, ``device``, ``dtype`` (used when ``model``
    is a directory), ``progress``, ``desc``.
    """
    for _, arr in activation_batches(model, tokenizer, prompts, **kwargs):
        yield arr


def capture_activations(model, tokenizer, prompts, **kwargs) -> np.ndarray:
    """Per-sample vectors of every selected layer: float32 ``[n_layers, n_samples, hidden]`` (stores all).

    ``model`` is a loaded causal LM or a saved directory; keyword arguments as in
    :func:`iteractivation_batches`. For large prompt sets use the streaming functions instead.
    """
    parts = [arr for _, arr in activation_batches(model, tokenizer, prompts, **kwargs)]
    return np.concatenate(parts, axis=1)


def layer_mean_activations(model, tokenizer, prompts, **kwargs) -> np.ndarray:
    """Mean over the prompt set of each layer's sample vectors: float64 ``[n_layers, hidden]`` (streamed).

    One row per hidden state (embeddings first), i.e. the points of one model in Figures 1 and 3.
    """
    total: np.ndarray | None = None
    n = 0
    for _, arr in activation_batches(model, tokenizer, prompts, **kwargs):
        s = arr.astype(np.float64).sum(axis=1)
        total = s if total is None else total + s
        n += arr.shape[1]
    assert total is not None
    return total / n
