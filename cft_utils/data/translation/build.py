"""The mOpenOrca builder: a seeded subset of English records translated into each language, sharded and resumable.

One JSONL shard per (language, slice), written atomically with a metadata file as its commit marker, so an
interrupted build resumes without duplicating or dropping records; then a ``datasets`` dataset on disk and a
per-language quality report (:mod:`.quality`). The files are laid out as :mod:`.layout` says.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ...io import read_json, read_jsonl, write_json, write_jsonl
from ..schema import validate_record
from .layout import FORMAT_VERSION, shard_paths
from .pipeline import translate_records
from .quality import write_quality_report
from .translators import Translator


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
        validate_record({"language": src_lang, **rec}, f"record {i}")  # no language: the source language
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
        data, meta = shard_paths(out_dir, lang, k)
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
            kept, per_rec = translate_records(chunk, lang, translator, src_lang, batch_size, dataset_name, on_batch)
            data, meta = shard_paths(out_dir, lang, k)
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
            data, meta_path = shard_paths(out_dir, lang, k)
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
