"""Loading models and tokenizers, and generating from them: one of each, for training, replay, evaluation,
geometry, the probe and the judge.

Security defaults: safetensors only (a folder with only pickle weights is refused by ``use_safetensors=True``) and
``trust_remote_code`` off unless a profile asks for it.

Stopping: a chat model ends its turn with the template's end-of-turn token, which is not always
``tokenizer.eos_token`` (LLaMA-3 base: ``<|end_of_text|>`` vs ``<|eot_id|>``; Qwen2 base: ``<|endoftext|>`` vs
``<|im_end|>``). :func:`stop_token_ids` is the union of the tokenizer's eos, the generation config's eos ids and the
template's end-of-turn token; :func:`generate` stops on any of them.

Chat templates: a base model without one gets the profile's (``models[i].chat_template``: a template file or the
Instruct sibling's) through ``load_tokenizer(..., chat_template=...)``. Templates without a system role get the
system prompt merged into the first user turn (:func:`fit_messages`), in training and in generation alike.
"""

from __future__ import annotations

import hashlib
import json
import struct
import warnings
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


class RemoteCodeWarning(UserWarning):
    """A model or tokenizer is loaded with remote code trusted (its trust_remote_code setting is on): code from
    its folder or repository runs."""


def warn_remote_code(source) -> None:
    """Say loudly that ``source``'s own Python code will run (``trust_remote_code`` is on for it)."""
    warnings.warn(f"trust_remote_code is ON for {source}: Python code shipped with the model will run in this "
                  f"process. Turn it off (models.<i>.trust_remote_code: false) unless you have read that code.",
                  RemoteCodeWarning, stacklevel=3)


class ModelSourceError(ValueError):
    """A model folder or hub id cannot be used: not a causal LM, no safetensors weights, damaged weights, or not
    reachable; the message names the folder or id (and the configuration key when the caller gives it)."""


PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def _causal_lm_mapping() -> tuple[dict, set[str], set[str]]:
    """transformers' model_type -> causal-LM class, the set of those classes, and the encoder families among them
    (model types that also have a masked-LM class: BERT, RoBERTa, ...; causal only when built as decoders)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    classes: set[str] = set()
    for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        classes.update(v if isinstance(v, (list, tuple)) else [v])
    encoders = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) & set(MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    return dict(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES), classes, encoders


def check_causal_lm_config(config: dict, where: str, trust_remote_code: bool = False) -> None:
    """Raise :class:`ModelSourceError` unless ``config`` (a config.json) describes a causal LM: its
    ``architectures`` are causal-LM classes of transformers, or (without them) its ``model_type`` has one and is not
    an encoder family (BERT's folder would otherwise load as ``BertLMHeadModel`` with a random head)."""
    mapping, classes, encoders = _causal_lm_mapping()
    archs = list(config.get("architectures") or [])
    mtype = config.get("model_type")
    if trust_remote_code and "AutoModelForCausalLM" in (config.get("auto_map") or {}):
        return
    hint = "training, generation and evaluation need a decoder-only causal LM (e.g. LlamaForCausalLM)"
    if archs:
        bad = [a for a in archs if a not in classes]
        if bad:
            kind = "an encoder" if mtype in encoders else "not a causal language model"
            raise ModelSourceError(f"{where}: {kind}: config.json names architecture(s) {archs} (model_type "
                                   f"{mtype!r}); {hint}")
        return
    if mtype not in mapping:
        raise ModelSourceError(f"{where}: config.json has model_type {mtype!r}, which has no causal-LM class in "
                               f"transformers, and names no architectures; {hint}")
    if mtype in encoders and not config.get("is_decoder"):
        raise ModelSourceError(f"{where}: an encoder: config.json has model_type {mtype!r} without is_decoder "
                               f"(it would load as {mapping[mtype]} with a randomly initialised head); {hint}")


def check_model_folder(path: str | Path, where: str | None = None, trust_remote_code: bool = False) -> Path:
    """Check a local model folder before any weights are read: config.json of a causal LM, safetensors weights
    (pickle checkpoints are refused: loading them can run code) whose headers match their sizes. Returns the folder."""
    from .integrity import safetensors_problem

    d = Path(path).expanduser()
    w = f"{where}: {d}" if where else str(d)
    cfg_file = d / "config.json"
    if not cfg_file.is_file():
        raise ModelSourceError(f"{w}: no config.json: not a model folder")
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ModelSourceError(f"{w}: config.json is not valid JSON ({e})") from None
    check_causal_lm_config(config, w, trust_remote_code)
    weights = sorted(d.glob("*.safetensors"))
    if not weights:
        pickles = sorted(f.name for pat in PICKLE_WEIGHTS for f in d.glob(pat))
        if pickles:
            raise ModelSourceError(f"{w}: only pickle weights ({', '.join(pickles)}); refused, since loading a pickle "
                                   f"can run arbitrary code. Convert them to safetensors first.")
        raise ModelSourceError(f"{w}: config.json but no *.safetensors weights")
    for f in weights:
        if (p := safetensors_problem(f)) is not None:
            raise ModelSourceError(f"{w}: damaged weights: {p}")
    return d


def check_model_source(source: str | Path, where: str | None = None, revision: str | None = None,
                       trust_remote_code: bool = False) -> None:
    """Check a model folder (:func:`check_model_folder`) or a hub id before any compute: the id's config.json must
    be reachable (the hub, or the local hub cache when offline) and describe a causal LM. The error names the id
    and ``where`` (the configuration key)."""
    p = Path(str(source)).expanduser()
    if p.is_dir():
        check_model_folder(p, where, trust_remote_code)
        return
    w = f"{where}: model {str(source)!r}" if where else f"model {str(source)!r}"
    if str(source).startswith((".", "/", "~")):
        raise ModelSourceError(f"{w}: no such folder ({p.resolve()})")
    try:
        from huggingface_hub import hf_hub_download

        cfg_file = hf_hub_download(str(source), "config.json", revision=revision)
    except Exception as e:  # noqa: BLE001 (offline, unknown repo, gated: all end here, named)
        from huggingface_hub import constants

        offline = " (HF_HUB_OFFLINE is set and it is not in the local hub cache)" if constants.HF_HUB_OFFLINE else ""
        raise ModelSourceError(
            f"{w}: not a local folder and not available from the hub{offline}: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}. Download it where there is network "
            f"(huggingface-cli download {source}) or point the setting at a local folder.") from None
    check_causal_lm_config(json.loads(Path(cfg_file).read_text(encoding="utf-8")), w, trust_remote_code)


def load_model(path: str | Path, precision: str = "fp32", *, trust_remote_code: bool = False, revision=None,
               device: str | None = None, where: str | None = None):
    """A causal LM from a folder or hub id (safetensors only; remote code off unless asked).

    The source is checked first (:func:`check_model_source`: a causal-LM config, safetensors weights); ``where``
    (e.g. the configuration key) is named in its errors. ``device``: None keeps it where transformers puts it
    (CPU); ``"auto"`` moves it to the GPU when there is one.
    """
    import torch
    from transformers import AutoModelForCausalLM

    check_model_source(path, where, revision, trust_remote_code)
    if trust_remote_code:
        warn_remote_code(path)
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


class ChatTemplateError(ValueError):
    """A model has no chat template to format its prompts with, or the configured one cannot be read."""


def read_chat_template(template: str | Path) -> str:
    """A chat template's text: ``template`` itself, or the contents of a ``.jinja`` file it names."""
    if isinstance(template, Path) or str(template).endswith(".jinja"):
        p = Path(template).expanduser()
        if not p.is_file():
            raise ChatTemplateError(f"chat template file not found: {p}")
        return p.read_text(encoding="utf-8")
    return str(template)


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False, revision=None,
                   chat_template: str | Path | None = None):
    """The tokenizer of a folder or hub id, with a pad token (LLaMA-3 and Mistral ship without one: eos is used).

    ``chat_template`` (a template's text or a ``.jinja`` file) replaces the tokenizer's own; ``save_pretrained``
    then writes it to ``chat_template.jinja``, so every checkpoint carries the template it was trained with.
    """
    from transformers import AutoTokenizer

    if trust_remote_code:
        warn_remote_code(path)
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code, revision=revision)
    except OSError as e:  # a hub id offline or unknown: name it (transformers' message does not say which setting)
        raise ModelSourceError(f"tokenizer of {str(path)!r}: not a local folder and not available from the hub: "
                               f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    if chat_template is not None:
        tok.chat_template = read_chat_template(chat_template)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def require_chat_template(tokenizer, model_name: str, setting: str, source: str | Path) -> None:
    """Raise :class:`ChatTemplateError` naming the model and its ``chat_template`` setting when ``tokenizer`` (loaded
    from ``source``) has no chat template: base models (Meta-Llama-3-8B, Mistral-7B-v0.1) ship without one."""
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            f"model {model_name!r}: the tokenizer of {source} has no chat template, and its setting "
            f"chat_template: {setting!r} takes the tokenizer's own. Set models.<i>.chat_template to 'instruct' (the "
            f"Instruct model's template) or to a template file, e.g. configs/chat_templates/alpaca.jinja.")


def supports_system_role(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders a system message (Mistral-Instruct v0.1's raises
    "Conversation roles must alternate")."""
    try:
        text = tokenizer.apply_chat_template([{"role": "system", "content": "SYSTEM_MARKER"},
                                              {"role": "user", "content": "q"}], tokenize=False)
    except Exception:  # jinja2 TemplateError from the template's raise_exception
        return False
    return "SYSTEM_MARKER" in text


def merge_system_prompt(messages: list[dict]) -> list[dict]:
    """Messages without a system role: the system prompt goes in front of the first user message, separated by a
    blank line (what Mistral's own guidance and most chat UIs do for templates without a system role)."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if not system:
        return rest
    prefix = "\n\n".join(s for s in system if s.strip())
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{prefix}\n\n{m['content']}" if prefix else m["content"]
            break
    return rest


def fit_messages(tokenizer, messages: list[dict], system_ok: bool | None = None) -> list[dict]:
    """``messages`` as the tokenizer's template can render them: system prompts merged into the first user turn
    when the template has no system role (``system_ok``: the answer of :func:`supports_system_role`, if known)."""
    if not any(m["role"] == "system" for m in messages):
        return messages
    if system_ok is None:
        system_ok = supports_system_role(tokenizer)
    return messages if system_ok else merge_system_prompt(messages)


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


def use_stop_tokens(model, tokenizer) -> list[int]:
    """Make ``model.generate`` stop at every stop token (:func:`stop_token_ids`) by default: its generation config's
    eos ids become the union. For generation loops that are not ours (lm-eval's HFLM passes no ``eos_token_id`` and
    stops on the generation config's ids and on the tokenizer's eos string). Returns the ids."""
    ids = stop_token_ids(tokenizer, model)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.eos_token_id = ids[0] if len(ids) == 1 else ids
    return ids


def record_stop_tokens(model_dir: str | Path, tokenizer) -> list[int]:
    """Write the stop tokens (:func:`stop_token_ids`) into ``model_dir/generation_config.json`` as its eos ids, so
    every reader of the checkpoint (transformers, lm-eval, vLLM) stops at the template's end of turn. A model
    trained from a base (LLaMA-3: eos ``<|end_of_text|>``) on a template ending turns with ``<|eot_id|>`` would
    otherwise run on into a fake next turn. Returns the ids written."""
    from types import SimpleNamespace

    from transformers import GenerationConfig

    try:
        gc = GenerationConfig.from_pretrained(str(model_dir))
    except OSError:  # no generation_config.json yet
        gc = GenerationConfig()
    ids = stop_token_ids(tokenizer, SimpleNamespace(generation_config=gc))
    gc.eos_token_id = ids[0] if len(ids) == 1 else ids
    gc.save_pretrained(str(model_dir))
    return ids


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
    system_ok = supports_system_role(tokenizer)
    texts = [tokenizer.apply_chat_template(fit_messages(tokenizer, list(p), system_ok), tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    return generate_texts(model, tokenizer, texts, max_new_tokens, batch_size, progress)


def generate_texts(model, tokenizer, texts: Sequence[str], max_new_tokens: int, batch_size: int,
                   progress: bool = False) -> list[Generation]:
    """Greedy continuations of raw ``texts`` (already templated, or plain text as in pre-training), batched,
    left-padded, stopping at any stop token; :func:`generate` is this on chat prompts."""
    import torch
    from tqdm.auto import tqdm

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


def generate_openai(base_url: str, model: str, prompts: Sequence[list[dict]], max_new_tokens: int, *,
                    tokenizer=None, seed: int = 0, api_key: str | None = None, workers: int = 8) -> list[Generation]:
    """Greedy answers from an OpenAI-compatible server (``vllm serve <model folder>``; the ``openai`` client).

    The server must serve ``model`` (checked against ``/v1/models``, so a server left running with another
    checkpoint is refused). With the model's ``tokenizer``, system prompts are fitted to its template
    (:func:`fit_messages`) and its stop tokens are sent as vLLM's ``stop_token_ids``. ``finish_reason == "length"``
    means truncated. Requests run ``workers`` at a time (the server batches them); results keep the input order.
    """
    import os
    from concurrent.futures import ThreadPoolExecutor

    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key or os.environ.get("CFT_GENERATION_API_KEY") or "no-key")
    served = [m.id for m in client.models.list().data]
    if model not in served:
        raise ValueError(f"the server at {base_url} serves {served}, not {model!r}: start it with "
                         f"`vllm serve {model}` (or set served_model to the name it serves)")
    system_ok = supports_system_role(tokenizer) if tokenizer is not None else True
    extra = {"stop_token_ids": stop_token_ids(tokenizer)} if tokenizer is not None else None

    def one(messages: list[dict]) -> Generation:
        msgs = fit_messages(tokenizer, list(messages), system_ok) if tokenizer is not None else list(messages)
        r = client.chat.completions.create(model=model, messages=msgs, temperature=0.0, max_tokens=max_new_tokens,
                                           seed=seed, extra_body=extra)
        choice = r.choices[0]
        return Generation((choice.message.content or "").strip(), choice.finish_reason != "length")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, prompts))
