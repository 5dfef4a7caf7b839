"""Dataset loaders, all normalised to the common chat schema (:mod:`cft_utils.data.schema`) with a language column.

Loaders (paper profile): Alpaca (``instruction``/``input``/``output``; hub ``tatsu-lab/alpaca`` or the original
JSON file), MultiAlpaca (one ``<lang>.jsonl`` per language with ``instruction``/``input`` (may be null)/``output``;
a folder of such files), OpenOrca (``id``/``system_prompt``/``question``/``response``; hub
``Open-Orca/OpenOrca`` or a local parquet/JSON(L)/CSV file), mOpenOrca (the project's own build, saved with
``datasets.save_to_disk``, already in the common schema) and plain JSONL in the common schema. Local files are
read by :mod:`cft_utils.data.readers`; hub ids with ``datasets.load_dataset`` (the real code path; tests use
local files in the real formats). A malformed record raises :class:`DataError` naming the file and the record.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from pathlib import Path

from ..config import DatasetSpec, ExperimentConfig
from ..io import read_jsonl
from ..languages import MULTIALPACA_LANGUAGES
from ..sandbox.build import sandbox_paths
from ..sandbox.world import world_for
from .readers import hub_rows, local_path, read_rows
from .sandbox_mopenorca import sandbox_mopenorca_records
from .schema import DataError, validate_record


def _need_str(row: dict, key: str, where: str, allow_empty=False, allow_null=False) -> str:
    if key not in row:
        raise DataError(f"{where}: missing field {key!r}")
    v = row[key]
    if v is None and allow_null:
        return ""
    if not isinstance(v, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(v).__name__}")
    if not allow_empty and not v.strip():
        raise DataError(f"{where}: field {key!r} is empty")
    return v


def alpaca_to_record(row: dict, idx: int, dataset: str, language: str, where: str) -> dict:
    """Alpaca/MultiAlpaca ``instruction``/``input``/``output`` -> common schema (input appended to the
    instruction after a blank line, as in Alpaca's own prompt)."""
    instr = _need_str(row, "instruction", where)
    inp = _need_str(row, "input", where, allow_empty=True, allow_null=True)
    out = _need_str(row, "output", where)
    user = f"{instr}\n\n{inp}" if inp.strip() else instr
    return {"id": f"{dataset}-{language}-{idx:06d}", "dataset": dataset, "language": language,
            "counterpart_id": None, "prompt": [{"role": "user", "content": user}],
            "completion": [{"role": "assistant", "content": out}]}


def openorca_to_record(row: dict, idx: int, dataset: str, where: str) -> dict:
    """OpenOrca ``id``/``system_prompt``/``question``/``response`` -> common schema."""
    system = _need_str(row, "system_prompt", where, allow_empty=True, allow_null=True)
    q = _need_str(row, "question", where)
    r = _need_str(row, "response", where)
    rid = row.get("id") or f"{dataset}-{idx:07d}"
    prompt = ([{"role": "system", "content": system}] if system.strip() else []) + [{"role": "user", "content": q}]
    return {"id": str(rid), "dataset": dataset, "language": "en", "counterpart_id": None, "prompt": prompt,
            "completion": [{"role": "assistant", "content": r}]}


def _rows(spec: DatasetSpec, base: Path, dataset: str) -> tuple[str, Iterable[tuple[int, dict]]]:
    p = local_path(spec.path, base, dataset)
    if p is not None:
        return str(p), read_rows(p)
    return f"{spec.path} (hub)", hub_rows(spec.path, spec.revision)


def load_alpaca(spec: DatasetSpec, dataset: str, base: Path) -> list[dict]:
    """Alpaca (a local JSON/JSONL/CSV/parquet file or a hub id) as English records."""
    where, rows = _rows(spec, base, dataset)
    return [alpaca_to_record(r, i, dataset, "en", f"{where}: record {i}") for i, r in rows]


def load_multialpaca(spec: DatasetSpec, dataset: str, base: Path) -> list[dict]:
    """MultiAlpaca ships one ``<lang>.jsonl`` per language; the language comes from the file name."""
    langs = spec.languages or list(MULTIALPACA_LANGUAGES)
    p = local_path(spec.path, base, dataset)
    out = []
    for lang in langs:
        if p is not None and p.is_dir():
            f = p / f"{lang}.jsonl"
            if not f.exists():
                raise DataError(f"{p}: no file {lang}.jsonl for language {lang!r}")
            where, rows = str(f), read_rows(f)
        else:
            where, rows = f"{spec.path}:{lang}.jsonl (hub)", hub_rows(spec.path, spec.revision,
                                                                     data_files=f"multialpaca/{lang}.jsonl")
        out += [alpaca_to_record(r, i, dataset, lang, f"{where}: record {i}") for i, r in rows]
    return out


def load_openorca(spec: DatasetSpec, dataset: str, base: Path) -> list[dict]:
    """OpenOrca (a local parquet/JSON(L)/CSV file or a hub id) as English records with their system prompts."""
    where, rows = _rows(spec, base, dataset)
    return [openorca_to_record(r, i, dataset, f"{where}: record {i}") for i, r in rows]


def load_common(spec: DatasetSpec, dataset: str, base: Path) -> list[dict]:
    """Records already in the common schema: a local file, a ``save_to_disk`` folder (mOpenOrca) or a hub id."""
    try:
        p = local_path(spec.path, base, dataset)
    except DataError as e:
        raise DataError(f"{e} (mOpenOrca: build it first)" if spec.source == "mopenorca" else str(e)) from None
    if p is not None and p.is_dir():
        from datasets import load_from_disk

        rows = enumerate(load_from_disk(str(p)))
        where = str(p)
    elif p is not None:
        where, rows = str(p), read_rows(p)
    else:
        where, rows = f"{spec.path} (hub)", hub_rows(spec.path, spec.revision)
    out = []
    for i, r in rows:
        r = validate_record(r, f"{where}: record {i}")
        r.setdefault("dataset", dataset)
        r.setdefault("counterpart_id", None)
        out.append(r)
    return out


def load_sandbox(cfg: ExperimentConfig, spec: DatasetSpec, dataset: str) -> list[dict]:
    """A dataset of the sandbox world (mOpenOrca through its selective-translation build)."""
    name = spec.name or dataset
    if name == "mopenorca":
        return sandbox_mopenorca_records(cfg, dataset)
    wd = sandbox_paths(cfg)["world"]
    dump = wd / "data" / f"{name}.jsonl"
    if dump.exists() and (wd / "world.json").exists():
        # The world's own dump (ensure_sandbox writes world.json after every dataset): the same records, read in
        # ~1/10 of the time generating them takes, which every training process would otherwise pay.
        return read_jsonl(dump)
    return world_for(cfg.sandbox.world_spec()).dataset(name)


LOADERS = {"alpaca": load_alpaca, "multialpaca": load_multialpaca, "openorca": load_openorca}


def load_records(cfg: ExperimentConfig, key: str) -> list[dict]:
    """The dataset ``key`` of the profile, normalised, filtered by language and subsampled (seeded)."""
    if key not in cfg.datasets:
        raise KeyError(f"{cfg.source_file}: no dataset {key!r} (have {sorted(cfg.datasets)})")
    spec = cfg.datasets[key]
    base = Path(cfg.source_file).parent if cfg.source_file else Path.cwd()
    if spec.source == "sandbox":
        recs = load_sandbox(cfg, spec, key)
    else:  # mopenorca and jsonl are stored in the common schema
        try:
            recs = LOADERS.get(spec.source, load_common)(spec, key, base)
        except DataError as e:
            if "hub" in str(e) and str(cfg.source_file) not in str(e):  # a hub id: name the setting too
                raise DataError(f"{cfg.source_file}: datasets.{key}.path: {e}") from None
            raise
    if spec.languages and spec.source != "multialpaca":
        recs = [r for r in recs if r["language"] in spec.languages]
    if not recs:
        raise DataError(f"{cfg.source_file}: dataset {key!r} is empty after filtering (languages={spec.languages})")
    ids = [r["id"] for r in recs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{cfg.source_file}: dataset {key!r} has duplicate record id {dup!r}")
    if spec.max_records and spec.max_records < len(recs):
        rng = random.Random(f"{cfg.seed}-{key}")
        keep = sorted(rng.sample(range(len(recs)), spec.max_records))
        recs = [recs[i] for i in keep]
    return recs


def dataset_fingerprint(records: list[dict]) -> str:
    """A content hash of the records (part of a run id, so changed data means a new run)."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r["id"], r["prompt"], r["completion"]], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def to_hf_dataset(records: list[dict]):
    """A ``datasets.Dataset`` with just the columns TRL needs (prompt, completion)."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in records])
