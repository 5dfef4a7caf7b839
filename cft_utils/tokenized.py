"""Training sets tokenised once, by TRL's own preparation, and cached by content across runs and seeds.

Why not let ``SFTTrainer`` tokenise as usual: it prepares the dataset again in every run, and the project trains the
same records many times (training seeds, mitigation variants on the same Phase 2 set, a resumed run). Here the
preparation runs once per *content*: the fingerprint covers the records (the prompt/completion columns TRL sees),
the tokenizer (vocabulary, merges, special tokens, chat template), ``max_length``, the loss masking and the TRL
version. The result is saved under ``$CFT_HOME/cache/tokenized/<fingerprint>/`` (``datasets.save_to_disk``, written
to a temporary folder and renamed, so a folder that exists is complete) and handed to the trainer with
``dataset_kwargs={"skip_prepare_dataset": True}``. The tokens are the ones TRL would produce: the preparation is
``SFTTrainer._prepare_dataset`` itself (a private method of the pinned TRL 1.16, called with the three attributes
it reads; a test checks bit-identical weights against the uncached path), not a re-implementation.

Over-long records are **dropped, not truncated**, and counted (``PreparedData.n_dropped``): a truncated record
trains on an answer cut mid-way (or on none at all), and TRL's padding-free mode does not enforce ``max_length``.
Records whose every token is masked out of the loss are dropped and counted too (TRL drops those as well).

``CFT_TOKENIZED_CACHE=0`` (or ``prepare(..., cache=False)``) prepares in memory without reading or writing the
cache; the prepared rows are the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from .paths import cft_home

CACHE_ENV = "CFT_TOKENIZED_CACHE"
# Bump when the preparation below changes what it writes (old cache folders are then simply not found).
PREPARATION_VERSION = 2  # 2: meta.json lists the dropped records (counts per language)


@dataclass
class PreparedData:
    """A training set ready for ``SFTTrainer`` (columns ``input_ids`` and ``labels``) and what preparing it did."""

    dataset: object  # datasets.Dataset
    fingerprint: str
    n_records: int  # records given
    n_dropped: int  # over max_length tokens (prompt + completion + end of turn), dropped
    n_no_loss: int  # no token left in the loss (e.g. an empty completion), dropped
    n_tokens: int  # tokens in the kept records
    cache_hit: bool
    path: Path | None  # the cache folder (None when the cache is off)
    by_language: dict[str, dict[str, int]] = field(default_factory=dict)  # language -> given/trained/dropped

    @property
    def n_kept(self) -> int:
        """Records the model trains on."""
        return self.n_records - self.n_dropped - self.n_no_loss

    def summary(self) -> dict:
        """The counts for a run's summary.json."""
        return {"n_records_trained": self.n_kept, "n_dropped_over_length": self.n_dropped,
                "n_dropped_no_loss": self.n_no_loss, "n_tokens": self.n_tokens,
                "tokenized_fingerprint": self.fingerprint, "tokenized_cache_hit": self.cache_hit,
                "records_by_language": self.by_language}


def cache_root() -> Path:
    """Where prepared datasets live: ``$CFT_HOME/cache/tokenized``."""
    return cft_home() / "cache" / "tokenized"


def cache_enabled() -> bool:
    """False when ``$CFT_TOKENIZED_CACHE`` is ``0``/``false``/``no``/``off``."""
    return os.environ.get(CACHE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything of a tokenizer that decides the token ids: the backend (vocabulary, merges,
    normalizer, pre-tokenizer, post-processor), the special tokens and the chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    core = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
    return _sha({
        "class": type(tokenizer).__name__, "core": core, "chat_template": tokenizer.chat_template,
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "add_bos": getattr(tokenizer, "add_bos_token", None), "add_eos": getattr(tokenizer, "add_eos_token", None),
    })


def records_fingerprint(records: list[dict]) -> str:
    """A hash of the prompt/completion of every record, in order (the columns the trainer sees)."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r["prompt"], r["completion"]], ensure_ascii=False, sort_keys=True).encode())
        h.update(b"\n")
    return h.hexdigest()


def _loss_settings(args, sample: dict) -> dict:
    """The settings of ``args`` that change the prepared rows, resolved as SFTTrainer resolves them."""
    completion_only = args.completion_only_loss
    if completion_only is None:  # TRL: completion-only for prompt/completion data
        completion_only = "prompt" in sample and "completion" in sample
    return {"completion_only_loss": bool(completion_only), "assistant_only_loss": bool(args.assistant_only_loss),
            "dataset_text_field": args.dataset_text_field}


def fingerprint(records: list[dict], tokenizer, args, max_length: int) -> str:
    """The cache key: records + tokenizer + chat template + max_length + loss masking + TRL version."""
    import trl

    sample = {"prompt": None, "completion": None}
    return _sha({"records": records_fingerprint(records), "tokenizer": tokenizer_fingerprint(tokenizer),
                 "max_length": max_length, "loss": _loss_settings(args, sample), "trl": trl.__version__,
                 "version": PREPARATION_VERSION})[:24]


def _trl_prepare(dataset, tokenizer, args):
    """TRL's own preparation (tokenise with the chat template, EOS, labels with -100 outside the loss), without
    truncation: ``SFTTrainer._prepare_dataset`` reads ``_tokenizer``, ``chat_template`` and ``completion_only_loss``
    from the trainer, and these fields from its args."""
    from trl import SFTTrainer
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    loss = _loss_settings(args, dataset[0])
    chat_template = None  # as SFTTrainer.__init__ decides it
    if loss["assistant_only_loss"] and not has_generation_markers(tokenizer.chat_template):
        chat_template = get_training_chat_template(tokenizer)
    trainer_view = SimpleNamespace(_tokenizer=tokenizer, chat_template=chat_template,
                                   completion_only_loss=loss["completion_only_loss"])
    # max_length=None: we drop over-long records ourselves; shuffle_dataset=False: the cache is seed-independent.
    args_view = SimpleNamespace(dataset_num_proc=args.dataset_num_proc, dataset_text_field=args.dataset_text_field,
                                assistant_only_loss=args.assistant_only_loss, max_length=None,
                                truncation_mode=args.truncation_mode, packing_strategy=args.packing_strategy,
                                shuffle_dataset=False, seed=args.seed)
    return SFTTrainer._prepare_dataset(trainer_view, dataset, tokenizer, args_view, False, None, "train")


def _build(records: list[dict], tokenizer, args, max_length: int):
    """Prepare in memory; returns (dataset with input_ids/labels, counts)."""
    from .data.loaders import to_hf_dataset

    ds = _trl_prepare(to_hf_dataset(records), tokenizer, args).select_columns(["input_ids", "labels"])
    lengths = [len(x) for x in ds["input_ids"]]
    has_loss = [any(t != -100 for t in lab) for lab in ds["labels"]]
    keep = [i for i, (n, ok) in enumerate(zip(lengths, has_loss, strict=True)) if n <= max_length and ok]
    n_dropped = sum(n > max_length for n in lengths)
    n_no_loss = sum(n <= max_length and not ok for n, ok in zip(lengths, has_loss, strict=True))
    if len(keep) < len(ds):
        ds = ds.select(keep)
    counts = {"n_records": len(records), "n_dropped": n_dropped, "n_no_loss": n_no_loss,
              "n_tokens": sum(lengths[i] for i in keep),
              "dropped_idx": [i for i, n in enumerate(lengths) if n > max_length],
              "no_loss_idx": [i for i, (n, ok) in enumerate(zip(lengths, has_loss, strict=True))
                              if n <= max_length and not ok]}
    return ds, counts


def language_counts(records: list[dict], dropped: list[int], no_loss: list[int]) -> dict[str, dict[str, int]]:
    """Per language: records given, trained on, dropped for length and dropped for having no loss token."""
    out: dict[str, dict[str, int]] = {}
    for r in records:
        c = out.setdefault(str(r.get("language")), {"given": 0, "trained": 0, "dropped_over_length": 0,
                                                    "dropped_no_loss": 0})
        c["given"] += 1
        c["trained"] += 1
    for key, idx in (("dropped_over_length", dropped), ("dropped_no_loss", no_loss)):
        for i in idx:
            c = out[str(records[i].get("language"))]
            c[key] += 1
            c["trained"] -= 1
    return dict(sorted(out.items()))


def _everywhere(flag: bool) -> bool:
    """``flag`` on every process of a distributed launch (False if any process has it False); ``flag`` alone."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState()
    if state.num_processes == 1:
        return flag
    return all(gather_object([flag]))


def prepare(records: list[dict], tokenizer, args, max_length: int, cache: bool | None = None,
            root: Path | None = None) -> PreparedData:
    """The records tokenised as ``SFTTrainer(args=args, processing_class=tokenizer)`` would, records over
    ``max_length`` tokens dropped and counted; reused from the cache when the same content was prepared before.

    Pass the result's ``dataset`` to the trainer with ``dataset_kwargs={"skip_prepare_dataset": True}``.
    """
    from datasets import load_from_disk

    if not records:
        raise ValueError("no records to prepare")
    fp = fingerprint(records, tokenizer, args, max_length)
    use_cache = cache_enabled() if cache is None else cache
    if not use_cache:
        ds, counts = _build(records, tokenizer, args, max_length)
        idx = (counts.pop("dropped_idx"), counts.pop("no_loss_idx"))
        result = PreparedData(ds, fp, cache_hit=False, path=None, **counts)
    else:
        root = Path(root) if root is not None else cache_root()
        final = root / fp
        # Every process of a distributed launch must take the same branch: TRL's preparation holds a barrier.
        hit = _everywhere((final / "meta.json").exists())
        if not hit:
            ds, counts = _build(records, tokenizer, args, max_length)
            root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{fp}-", dir=root))
            try:
                ds.save_to_disk(str(tmp / "data"))
                (tmp / "meta.json").write_text(json.dumps({"fingerprint": fp, **counts}, indent=1))
                os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; others on the machine may share the cache
                try:
                    os.rename(tmp, final)
                except OSError:  # another process finished the same content first: theirs is identical
                    if not (final / "meta.json").exists():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        meta = json.loads((final / "meta.json").read_text())
        # Loaded from disk on a miss too, so the first run and every later one train on the same Arrow table.
        ds = load_from_disk(str(final / "data"))
        if len(ds) != meta["n_records"] - meta["n_dropped"] - meta["n_no_loss"]:
            raise RuntimeError(f"tokenised cache {final} is corrupt (rows do not match meta.json); delete it")
        result = PreparedData(ds, fp, meta["n_records"], meta["n_dropped"], meta["n_no_loss"], meta["n_tokens"],
                              cache_hit=hit, path=final)
        idx = (meta["dropped_idx"], meta["no_loss_idx"])
    result.by_language = language_counts(records, *idx)
    if result.n_kept == 0:
        raise ValueError(f"every record was dropped ({result.n_dropped} over max_length={max_length} tokens, "
                         f"{result.n_no_loss} with no token in the loss)")
    if args.shuffle_dataset:  # what TRL would have done at the end of its preparation
        result.dataset = result.dataset.shuffle(seed=args.seed)
    return result
