"""The lm-eval TaskManager for the project's task YAMLs, and the override files that point a task at local data.

``cft_utils/evaluation/tasks/paper/`` (package data) holds the paper-profile tasks lm-eval lacks or has
broken: ``cft_xquad_<lang>`` for the 11 XQuAD languages and ``cft_xlsum_<language>`` for the
paper's six XL-Sum languages, with groups ``cft_xquad`` and ``cft_xlsum`` (unweighted means).

By default the tasks read the hub (``google/xquad``; the parquet export of ``csebuetnlp/xlsum``).
:func:`task_manager` with ``local_data={task: file}`` writes, per run, a small override YAML per
task (``include:`` of the shipped YAML + ``dataset_path: json`` + absolute ``data_files``) into a
work folder that lm-eval indexes after the shipped one, so the override wins. An XQuAD file may
be in the original SQuAD v1.1 JSON layout (``{"data": [{"paragraphs": [...]}]}``): it is flattened
to the hub's row layout (``id, context, question, answers{text, answer_start}``) first.

A built-in lm-eval task can be pointed at local data the same way once its folder is in
``include`` (e.g. ``include=[<lm_eval>/tasks/ifeval]``, ``local_data={"ifeval": "prompts.jsonl"}``).
A single file becomes the evaluation split (``test_split``, else ``validation_split``); a task
that also needs a training/few-shot split (hellaswag) takes ``{split: file}`` instead.

Example::

    tm = task_manager(local_data={"cft_xquad_de": "xquad.de.json"}, include_defaults=False)
    lm_eval.simple_evaluate(model=..., tasks=["cft_xquad_de"], task_manager=tm)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from cft_utils.io import write_jsonl, write_text
from cft_utils.paths import cft_home

TASKS_ROOT = Path(__file__).resolve().parent
PAPER_TASKS_DIR = TASKS_ROOT / "paper"

XQUAD_LANGUAGES = ("ar", "de", "el", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh")
# XL-Sum config name -> ISO 639-1 code.
XLSUM_LANGUAGES = {
    "arabic": "ar",
    "chinese_simplified": "zh",
    "french": "fr",
    "hindi": "hi",
    "japanese": "ja",
    "spanish": "es",
}
XQUAD_TASKS = tuple(f"cft_xquad_{lang}" for lang in XQUAD_LANGUAGES)
XLSUM_TASKS = tuple(f"cft_xlsum_{cfg}" for cfg in XLSUM_LANGUAGES)
GROUPS = {"cft_xquad": XQUAD_TASKS, "cft_xlsum": XLSUM_TASKS}


def shipped_task_yamls(root: str | os.PathLike = PAPER_TASKS_DIR) -> list[Path]:
    """Every ``*.yaml`` under ``root`` (tasks and groups; the ``_*_yaml`` templates are not indexed)."""
    return sorted(Path(root).rglob("*.yaml"))


def squad_to_records(path: str | os.PathLike) -> list[dict]:
    """Flatten a SQuAD v1.1 JSON file (XQuAD's release format) to hub-style rows."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)
    if not isinstance(obj, dict) or "data" not in obj:
        raise ValueError(f"{path}: not SQuAD v1.1 JSON (expected a top-level 'data' list)")
    rows = []
    for ai, article in enumerate(obj["data"]):
        for pi, para in enumerate(article.get("paragraphs", [])):
            where = f"{path}: data[{ai}].paragraphs[{pi}]"
            if "context" not in para or "qas" not in para:
                raise KeyError(f"{where} lacks 'context' or 'qas'")
            for qi, qa in enumerate(para["qas"]):
                missing = {"id", "question", "answers"} - set(qa)
                if missing:
                    raise KeyError(f"{where}.qas[{qi}] lacks {sorted(missing)}")
                if not qa["answers"]:
                    raise ValueError(f"{where}.qas[{qi}] (id {qa['id']}) has no answers")
                rows.append(
                    {
                        "id": qa["id"],
                        "title": article.get("title", ""),
                        "context": para["context"],
                        "question": qa["question"],
                        "answers": {
                            "text": [a["text"] for a in qa["answers"]],
                            "answer_start": [int(a.get("answer_start", -1)) for a in qa["answers"]],
                        },
                    }
                )
    if not rows:
        raise ValueError(f"{path}: no questions found")
    return rows


def task_index(include: Iterable[Path]) -> dict:
    """lm-eval's index (name -> entry with kind, YAML path and config) of the task folders ``include``."""
    from lm_eval.tasks._index import TaskIndex

    return TaskIndex.build([Path(p) for p in include])


def _eval_split(cfg: Mapping, name: str) -> str:
    for key in ("test_split", "validation_split"):
        if cfg.get(key):
            return cfg[key]
    raise ValueError(f"task {name!r} names neither test_split nor validation_split")


def _is_squad_json(path: Path) -> bool:
    if path.suffix != ".json":
        return False
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    return head.startswith("{") and '"data"' in head


def write_local_task_dir(
    out_dir: str | os.PathLike,
    local_data: Mapping[str, str | os.PathLike | Mapping[str, str | os.PathLike]],
    include: Iterable[str | os.PathLike] = (PAPER_TASKS_DIR,),
) -> Path:
    """Write override YAMLs that point the named tasks at local files; return ``out_dir``.

    ``local_data`` maps a task name to a JSON/JSONL file of rows (used as the task's evaluation
    split) or to ``{split: file}``; SQuAD JSON is flattened first.
    """
    from lm_eval.tasks._index import Kind

    out_dir = Path(out_dir).resolve()
    index = task_index(include)
    for name, data_path in local_data.items():
        entry = index.get(name)
        if entry is None or entry.kind is not Kind.TASK:
            known = sorted(k for k, e in index.items() if e.kind is Kind.TASK)
            raise KeyError(f"local_data names unknown task {name!r}; known tasks: {known}")
        splits = (
            dict(data_path) if isinstance(data_path, Mapping) else {_eval_split(entry.cfg, name): data_path}
        )
        data_files = {}
        for split, path in splits.items():
            path = Path(path).resolve()
            if not path.is_file():
                raise FileNotFoundError(f"local data for task {name!r} (split {split!r}) not found: {path}")
            if _is_squad_json(path):
                path = write_jsonl(out_dir / "data" / f"{name}.{split}.jsonl", squad_to_records(path))
            data_files[split] = str(path)
        stub = {
            "include": str(entry.yaml_path.resolve()),
            "task": name,
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": data_files},
        }
        write_text(out_dir / f"{name}.yaml", yaml.safe_dump(stub, allow_unicode=True, sort_keys=False))
    return out_dir


def task_manager(
    include: Iterable[str | os.PathLike] | None = None,
    local_data: Mapping[str, str | os.PathLike | Mapping[str, str | os.PathLike]] | None = None,
    workdir: str | os.PathLike | None = None,
    include_defaults: bool = True,
):
    """An lm-eval ``TaskManager`` that knows the shipped tasks (+ ``include``), local data overriding.

    ``include_defaults=False`` skips indexing lm-eval's ~15k built-in tasks (about 10 s).
    ``workdir`` defaults to ``$CFT_HOME/lm_eval_tasks/<hash of local_data>``.
    """
    from lm_eval.tasks import TaskManager

    paths = [PAPER_TASKS_DIR, *(Path(p).resolve() for p in (include or ()))]
    if local_data:
        if workdir is None:
            key = json.dumps({k: str(v) for k, v in sorted(local_data.items())}, default=str)
            workdir = cft_home() / "lm_eval_tasks" / hashlib.sha256(key.encode()).hexdigest()[:16]
        paths.append(write_local_task_dir(workdir, local_data, include=paths))
    return TaskManager(include_path=[str(p) for p in paths], include_defaults=include_defaults)
