"""Dataset loaders, all normalised to one chat schema with a language column.

The common schema (one record = one dict; TRL's conversational prompt/completion format)::

    {"id": str, "dataset": str, "language": "en" | ..., "counterpart_id": str | None,
     "prompt": [{"role": "system" | "user", "content": str}, ...],
     "completion": [{"role": "assistant", "content": str}]}

``counterpart_id`` is the id of the record's English original where one is known (sandbox sets, mOpenOrca);
generative and English replay need it.

Loaders (paper profile): Alpaca (``instruction``/``input``/``output``; hub ``tatsu-lab/alpaca`` or the original
JSON file), MultiAlpaca (one ``<lang>.jsonl`` per language with ``instruction``/``input`` (may be null)/``output``;
a folder of such files), OpenOrca (``id``/``system_prompt``/``question``/``response``; hub
``Open-Orca/OpenOrca`` or a local parquet/JSON(L) file), mOpenOrca (the project's own build, saved with
``datasets.save_to_disk``, already in the common schema) and plain JSONL in the common schema. Hub ids are
loaded with ``datasets.load_dataset`` (the real code path; tests use local files in the real formats).
A malformed record raises :class:`DataError` naming the file and the record.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .config import DatasetSpec, ExperimentConfig


class DataError(ValueError):
    """A data file or record is malformed; the message names the file and the record."""


SCHEMA_KEYS = ("id", "dataset", "language", "counterpart_id", "prompt", "completion")
PROMPT_ROLES = {"system", "user"}


def validate_record(rec: Any, where: str) -> dict:
    """Check one record against the common schema; raise DataError naming ``where`` (file + record)."""
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected an object, got {type(rec).__name__}")
    for k in ("id", "language", "prompt", "completion"):
        if k not in rec:
            raise DataError(f"{where}: missing key {k!r}")
    if not isinstance(rec["id"], str) or not rec["id"]:
        raise DataError(f"{where}: 'id' must be a non-empty string")
    if not isinstance(rec["language"], str) or not rec["language"]:
        raise DataError(f"{where}: 'language' must be a non-empty string")
    prompt, completion = rec["prompt"], rec["completion"]
    if not isinstance(prompt, list) or not prompt:
        raise DataError(f"{where}: 'prompt' must be a non-empty list of messages")
    for j, m in enumerate(prompt):
        if not isinstance(m, dict) or m.get("role") not in PROMPT_ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: prompt[{j}] must be {{'role': 'system'|'user', 'content': str}}")
    if prompt[-1]["role"] != "user" or not prompt[-1]["content"].strip():
        raise DataError(f"{where}: the last prompt message must be a non-empty user message")
    if (not isinstance(completion, list) or len(completion) != 1 or not isinstance(completion[0], dict)
            or completion[0].get("role") != "assistant" or not isinstance(completion[0].get("content"), str)):
        raise DataError(f"{where}: 'completion' must be [{{'role': 'assistant', 'content': str}}]")
    if not completion[0]["content"].strip():
        raise DataError(f"{where}: empty assistant response")
    cid = rec.get("counterpart_id")
    if cid is not None and not isinstance(cid, str):
        raise DataError(f"{where}: 'counterpart_id' must be a string or null")
    return rec


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


# ------------------------------------------------------------------------------------------- readers


def _read_rows(path: Path) -> Iterable[tuple[int, dict]]:
    """Rows of a local JSON array, JSONL or parquet file, with their index; bad JSON names the line."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    yield i, json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: record {i} (line {i + 1}) is not valid JSON: {e.msg}") from e
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON: {e.msg} (line {e.lineno})") from e
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON array of records, got {type(data).__name__}")
        yield from enumerate(data)
    elif suffix == ".parquet":
        import pandas as pd

        yield from enumerate(pd.read_parquet(path).to_dict("records"))
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r} (use .json, .jsonl or .parquet)")


def _hub_rows(path: str, revision: str | None, data_files=None) -> Iterable[tuple[int, dict]]:
    from datasets import load_dataset

    ds = load_dataset(path, split="train", revision=revision, data_files=data_files)
    yield from enumerate(ds)


def _rows(spec: DatasetSpec, base: Path, sub: str | None = None) -> tuple[str, Iterable[tuple[int, dict]]]:
    p = Path(spec.path).expanduser()
    p = p if p.is_absolute() else (base / p)
    if p.exists():
        target = p / sub if (sub and p.is_dir()) else p
        return str(target), _read_rows(target)
    return f"{spec.path} (hub)", _hub_rows(spec.path, spec.revision, data_files=sub)


def load_alpaca(spec: DatasetSpec, dataset: str, base: Path) -> list[dict]:
    where, rows = _rows(spec, base)
    return [alpaca_to_record(r, i, dataset, "en", f"{where}: record {i}") for i, r in rows]


MULTIALPACA_LANGUAGES = ("ar", "de", "es", "fr", "id", "ja", "ko", "pt", "ru", "th", "vi")


def load_multialpaca(spec: DatasetSpec, dataset: str, base: Path) -> list[dict]:
    """MultiAlpaca ships one ``<lang>.jsonl`` per language; the language comes from the file name."""
    langs = spec.languages or list(MULTIALPACA_LANGUAGES)
    p = Path(spec.path).expanduser()
    p = p if p.is_absolute() else base / p
    out = []
    for lang in langs:
        if p.is_dir():
            f = p / f"{lang}.jsonl"
            if not f.exists():
                raise DataError(f"{p}: no file {lang}.jsonl for language {lang!r}")
            where, rows = str(f), _read_rows(f)
        else:
            where, rows = f"{spec.path}:{lang}.jsonl (hub)", _hub_rows(spec.path, spec.revision,
                                                                      data_files=f"multialpaca/{lang}.jsonl")
        out += [alpaca_to_record(r, i, dataset, lang, f"{where}: record {i}") for i, r in rows]
    return out


def load_openorca(spec: DatasetSpec, dataset: str, base: Path) -> list[dict]:
    where, rows = _rows(spec, base)
    return [openorca_to_record(r, i, dataset, f"{where}: record {i}") for i, r in rows]


def load_common(spec: DatasetSpec, dataset: str, base: Path) -> list[dict]:
    """Records already in the common schema: a JSONL file or a ``save_to_disk`` folder (mOpenOrca)."""
    p = Path(spec.path).expanduser()
    p = p if p.is_absolute() else base / p
    if p.is_dir():
        from datasets import load_from_disk

        rows = enumerate(load_from_disk(str(p)))
        where = str(p)
    elif p.exists():
        where, rows = str(p), _read_rows(p)
    elif spec.path.startswith(("/", ".", "~")):
        raise DataError(f"{p}: no such file or folder for dataset {dataset!r} (mOpenOrca: build it first)")
    else:
        where, rows = f"{spec.path} (hub)", _hub_rows(spec.path, spec.revision)
    out = []
    for i, r in rows:
        r = validate_record(r, f"{where}: record {i}")
        r.setdefault("dataset", dataset)
        r.setdefault("counterpart_id", None)
        out.append(r)
    return out


def build_sandbox_mopenorca(cfg: ExperimentConfig, progress: bool = False) -> Path:
    """Build (once) the sandbox mOpenOrca the way the paper's is built: selective translation of the English
    originals into every other language, through ``cft_utils.translate`` with the world's exact translator.

    Returns the builder's output folder (its ``dataset/`` is a ``save_to_disk`` dataset in the common schema,
    with a quality report beside it). An interrupted build resumes.
    """
    from .paths import cft_home
    from .sandbox import World, world_dir
    from .translate import SandboxTranslator, build_translated_dataset

    world = World(cfg.sandbox.world_spec())
    out = world_dir(world.spec, cft_home()) / "mopenorca"
    if not (out / "dataset" / "dataset_info.json").exists() or not (out / "manifest.json").exists():
        build_translated_dataset(world.dataset("mopenorca_en"), world.other_languages,
                                 SandboxTranslator(world.lexicon), out, shard_size=500, dataset_name="mopenorca",
                                 progress=progress, langid=False)  # langdetect knows no constructed language
    return out


def load_sandbox(cfg: ExperimentConfig, spec: DatasetSpec, dataset: str) -> list[dict]:
    from .sandbox import World

    name = spec.name or dataset
    if name == "mopenorca":
        from .translate import load_translated_dataset

        out = build_sandbox_mopenorca(cfg)
        world = World(cfg.sandbox.world_spec())
        # The builder translates every original into every language (as the paper's mOpenOrca does); the
        # sandbox keeps each original in one language, round robin, so that mOpenOrca has as many records
        # per language as MultiAlpaca and no parallel copies (which a tiny model memorises).
        langs = world.other_languages
        order = {r["id"]: k for k, r in enumerate(world.dataset("mopenorca_en"))}
        recs = []
        for i, r in enumerate(load_translated_dataset(out)):
            r = validate_record(dict(r), f"{out}: record {i}")
            if langs[order[r["counterpart_id"]] % len(langs)] == r["language"]:
                recs.append({k: r[k] for k in SCHEMA_KEYS if k in r} | {"dataset": dataset})
        return recs
    return World(cfg.sandbox.world_spec()).dataset(name)


def load_records(cfg: ExperimentConfig, key: str) -> list[dict]:
    """The dataset ``key`` of the profile, normalised, filtered by language and subsampled (seeded)."""
    if key not in cfg.datasets:
        raise KeyError(f"{cfg.source_file}: no dataset {key!r} (have {sorted(cfg.datasets)})")
    spec = cfg.datasets[key]
    base = Path(cfg.source_file).parent if cfg.source_file else Path.cwd()
    if spec.source == "sandbox":
        recs = load_sandbox(cfg, spec, key)
    elif spec.source == "alpaca":
        recs = load_alpaca(spec, key, base)
    elif spec.source == "multialpaca":
        recs = load_multialpaca(spec, key, base)
    elif spec.source == "openorca":
        recs = load_openorca(spec, key, base)
    else:  # mopenorca and jsonl are stored in the common schema
        recs = load_common(spec, key, base)
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
    import hashlib

    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r["id"], r["prompt"], r["completion"]], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def to_hf_dataset(records: list[dict]):
    """A ``datasets.Dataset`` with just the columns TRL needs (prompt, completion)."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in records])
