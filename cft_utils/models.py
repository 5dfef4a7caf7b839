"""Loading models and tokenizers, and generating from them: one of each, for training, replay, evaluation,
geometry, the probe and the judge.

Security defaults: safetensors only (a folder with only pickle weights is refused by ``use_safetensors=True``) and
``trust_remote_code`` off unless a profile asks for it.

Stopping: a chat model ends its turn with the template's end-of-turn token, which is not always
``tokenizer.eos_token`` (LLaMA-3 base: ``<|end_of_text|>`` vs ``<|eot_id|>``; Qwen2 base: ``<|endoftext|>`` vs
``<|im_end|>``). :func:`stop_token_ids` is the union of the tokenizer's eos, the generation config's eos ids and the
template's end-of-turn token; :func:`generate` stops on any of them.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PRECISIONS = ("bf16", "fp16", "fp32")


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``bf16`` on a GPU that has it, else ``fp32``; other values are returned as they are."""
    import torch

    if precision != "auto":
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; use auto, {', '.join(PRECISIONS)}")
        return precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def torch_dtype(precision: str):
    """The torch dtype of a resolved precision."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[resolve_precision(precision)]


def use_threads(n: int | None) -> int:
    """Set torch's CPU threads to ``n`` (when given, and only without a GPU); return the number in use."""
    import torch

    if n and not torch.cuda.is_available():
        torch.set_num_threads(n)
    return torch.get_num_threads()


def load_model(path: str | Path, precision: str = "fp32", *, trust_remote_code: bool = False, revision=None,
               device: str | None = None):
    """A causal LM from a folder or hub id (safetensors only; remote code off unless asked).

    ``device``: None keeps it where transformers puts it (CPU); ``"auto"`` moves it to the GPU when there is one.
    """
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(precision), use_safetensors=True,
                                                 trust_remote_code=trust_remote_code, revision=revision)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else None
    return model.to(device) if device else model


# The small files that say what a model folder is: architecture, tokenizer, chat template, generation defaults.
FINGERPRINT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                     "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
                     "chat_template.jinja", "chat_template.json", "model.safetensors.index.json")
FINGERPRINT_SAMPLE_BYTES = 1 << 20


def model_fingerprint(path: str | Path) -> str | None:
    """A cheap content hash of a local model folder (None when ``path`` is not a folder).

    Hashes the configuration and tokenizer files (:data:`FINGERPRINT_FILES`), every ``*.safetensors`` file's
    header (names, dtypes, shapes, offsets) and size, and the first and last MiB of its data: a folder changed in
    place (other weights, another tokenizer or chat template) gets another fingerprint, yet a 16 GB model is
    fingerprinted by reading a few MiB, never its weights in full.
    """
    d = Path(str(path)).expanduser()
    if not d.is_dir():
        return None
    h = hashlib.sha256()
    for name in FINGERPRINT_FILES:
        f = d / name
        if f.is_file():
            h.update(f"{name}\0".encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    for f in sorted(d.glob("*.safetensors")):
        size = f.stat().st_size
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = fh.read(n)
            start = 8 + n
            head = fh.read(min(FINGERPRINT_SAMPLE_BYTES, size - start))
            fh.seek(max(start, size - FINGERPRINT_SAMPLE_BYTES))
            tail = fh.read()
        h.update(f"{f.name}\0{size}\0".encode())
        for part in (header, head, tail):
            h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False, revision=None):
    """The tokenizer of a folder or hub id, with a pad token (LLaMA-3 and Mistral ship without one: eos is used)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code, revision=revision)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def end_of_turn_token(tokenizer) -> str | None:
    """The special token the chat template writes right after an assistant message (None without a template)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "ANSWER_TEXT_MARKER"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}],
                                             tokenize=False)
    except Exception:  # a template that cannot render this conversation has no end-of-turn we can read
        return None
    tail = text.split(marker, 1)[-1]
    specials = sorted({*tokenizer.all_special_tokens, *getattr(tokenizer, "added_tokens_encoder", {})},
                      key=len, reverse=True)
    for i in range(len(tail)):
        for s in specials:
            if s and tail.startswith(s, i):
                return s
        if not tail[i].isspace():
            break
    return None


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """The union of the tokenizer's eos id, the model's generation-config eos id(s) and the template's end-of-turn."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None)
    for e in eos if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else []):
        ids.append(int(e))
    eot = end_of_turn_token(tokenizer)
    if eot is not None:
        tid = tokenizer.convert_tokens_to_ids(eot)
        if tid is not None and tid != tokenizer.unk_token_id:
            ids.append(int(tid))
    return list(dict.fromkeys(ids))


@dataclass
class Generation:
    """One generated answer: its text and whether decoding stopped at a stop token (False: hit max_new_tokens)."""

    text: str
    finished: bool


def generate(model, tokenizer, prompts: Sequence[list[dict]], max_new_tokens: int, batch_size: int,
             progress: bool = False) -> list[Generation]:
    """Greedy answers to chat prompts with transformers: batched, left-padded, stopping at any stop token.

    Prompts are sorted by length so batches waste little padding; results come back in the input order. A padded
    row decodes like the row alone (measured; STACK_NOTES).
    """
    import torch
    from tqdm.auto import tqdm

    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    stops = stop_token_ids(tokenizer, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[Generation | None] = [None] * len(texts)
    model.eval()
    try:
        with tqdm(total=len(texts), desc="generation", unit="prompt", disable=not progress) as bar:
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
                enc = {k: v.to(model.device) for k, v in enc.items()}
                with torch.no_grad():
                    gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                         pad_token_id=pad, eos_token_id=stops)
                new = gen[:, enc["input_ids"].shape[1]:]
                for row, i in enumerate(idx):
                    tokens = new[row].tolist()
                    cut = next((k for k, t in enumerate(tokens) if t in stops), None)
                    if cut is not None:
                        tokens = tokens[:cut]
                    out[i] = Generation(tokenizer.decode(tokens, skip_special_tokens=True).strip(), cut is not None)
                bar.update(len(idx))
    finally:
        tokenizer.padding_side = side
    return out  # type: ignore[return-value]
