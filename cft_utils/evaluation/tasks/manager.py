"""The lm-eval TaskManager for the project's task YAMLs, and the override files that point a task at local data.

``cft_utils/evaluation/tasks/paper/`` (package data) holds the paper-profile tasks lm-eval lacks or has
broken: ``cft_xquad_<lang>`` for the 11 XQuAD languages and ``cft_xlsum_<language>`` for the
paper's six XL-Sum languages, and ``cft_mlqa_<lang>`` for the paper's six MLQA languages (lm-eval's own
``mlqa_*`` read a hub dataset with a loading script, which datasets 5 refuses), with groups ``cft_xquad``,
``cft_xlsum`` and ``cft_mlqa`` (unweighted means).

By default the tasks read the hub (``google/xquad``; the parquet exports of ``csebuetnlp/xlsum`` and
``facebook/mlqa``).
:func:`task_manager` with ``local_data={task: file}`` writes, per run, a small override YAML per
task (``include:`` of the shipped YAML + ``dataset_path: json`` + absolute ``data_files``) into a
work folder that lm-eval indexes after the shipped one, so the override wins. An XQuAD or MLQA file may
be in the original SQuAD v1.1 JSON layout (``{"data": [{"paragraphs": [...]}]}``): it is flattened
to the hub's row layout (``id, context, question, answers{text, answer_start}``) first.

A built-in lm-eval task can be pointed at local data the same way once its folder is in
``include`` (e.g. ``include=[<lm_eval>/tasks/ifeval]``, ``local_data={"ifeval": "prompts.jsonl"}``).
A single file becomes the evaluation split (``test_split``, else ``validation_split``); a task
that also needs a training/few-shot split (hellaswag) takes ``{split: file}`` instead.

MMLU in its original layout (hendrycks/test: a folder of 57 header-less ``<subject>_test.csv`` /
``<subject>_dev.csv`` files, columns ``question, A, B, C, D, answer`` with a letter answer) is given as a folder:
``local_data={"mmlu": "<folder>"}`` with lm-eval's ``mmlu/default`` folder in ``include``. Each subject's CSVs are
converted to the hub's rows (``question, subject, choices, answer`` as an index) and its ``mmlu_<subject>`` task is
pointed at them (test split and few-shot dev split); a subject of the group without files is an error.

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
# The paper's MLQA languages (context and question in the same language).
MLQA_LANGUAGES = ("ar", "de", "es", "hi", "vi", "zh")
XQUAD_TASKS = tuple(f"cft_xquad_{lang}" for lang in XQUAD_LANGUAGES)
XLSUM_TASKS = tuple(f"cft_xlsum_{cfg}" for cfg in XLSUM_LANGUAGES)
MLQA_TASKS = tuple(f"cft_mlqa_{lang}" for lang in MLQA_LANGUAGES)
GROUPS = {"cft_xquad": XQUAD_TASKS, "cft_xlsum": XLSUM_TASKS, "cft_mlqa": MLQA_TASKS}


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


MMLU_LETTERS = "ABCD"
MMLU_SPLITS = {"test": "test_split", "dev": "fewshot_split", "val": "validation_split"}


def mmlu_csv_files(folder: str | os.PathLike) -> dict[str, dict[str, Path]]:
    """``{subject: {split: csv}}`` of an MMLU data folder in the original layout (``<subject>_<split>.csv`` for
    split test, dev or val, anywhere below ``folder``, e.g. ``data/test/abstract_algebra_test.csv``)."""
    out: dict[str, dict[str, Path]] = {}
    for f in sorted(Path(folder).rglob("*.csv")):
        subject, _, split = f.stem.rpartition("_")
        if subject and split in MMLU_SPLITS:
            out.setdefault(subject, {})[split] = f
    return out


def mmlu_csv_to_records(path: str | os.PathLike, subject: str) -> list[dict]:
    """One original MMLU CSV (no header; ``question, A, B, C, D, answer``) as hub-style rows
    (``question, subject, choices, answer`` with the answer's index)."""
    import csv

    path = Path(path)
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if len(row) != 6 or row[5].strip() not in MMLU_LETTERS:
                raise ValueError(f"{path}: row {i + 1}: expected question, A, B, C, D and an answer letter A-D "
                                 f"(no header row), got {len(row)} field(s): {row[:1]}...")
            rows.append({"question": row[0], "subject": subject, "choices": row[1:5],
                         "answer": MMLU_LETTERS.index(row[5].strip())})
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def _mmlu_folder_overrides(name: str, folder: Path, index: Mapping, out_dir: Path) -> dict[str, dict[str, str]]:
    """``{task: {split: jsonl}}`` for an MMLU CSV folder given for task or group ``name``."""
    from lm_eval.tasks._index import Kind

    files = mmlu_csv_files(folder)
    if not files:
        raise FileNotFoundError(f"local data for {name!r}: {folder} holds no <subject>_test.csv files (MMLU layout)")
    entry = index.get(name)
    if entry is not None and entry.kind is Kind.TASK:
        wanted = [name]
    else:  # the group: every mmlu_<subject> task beside it
        wanted = sorted(k for k, e in index.items() if e.kind is Kind.TASK and k.startswith("mmlu_")
                        and e.yaml_path.parent == (entry.yaml_path.parent if entry else e.yaml_path.parent))
    missing = [t for t in wanted if t.removeprefix("mmlu_") not in files]
    if not wanted or missing:
        raise FileNotFoundError(f"local data for {name!r}: {folder} lacks the CSV files of "
                                f"{missing or [name]} (it has {sorted(files)[:5]}{'...' if len(files) > 5 else ''})")
    out = {}
    for task in wanted:
        subject, cfg = task.removeprefix("mmlu_"), index[task].cfg
        splits = {}
        for split, f in files[subject].items():
            if cfg.get(MMLU_SPLITS[split]):
                splits[cfg[MMLU_SPLITS[split]]] = str(write_jsonl(out_dir / "data" / f"{task}.{split}.jsonl",
                                                                  mmlu_csv_to_records(f, subject)))
        out[task] = splits
    return out


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
    split) or to ``{split: file}``; SQuAD JSON is flattened first; an MMLU CSV folder is converted per subject.
    """
    from lm_eval.tasks._index import Kind

    out_dir = Path(out_dir).resolve()
    index = task_index(include)
    expanded: dict = {}
    for name, data_path in local_data.items():
        if not isinstance(data_path, Mapping) and Path(data_path).is_dir():  # MMLU's original CSV folder
            expanded.update(_mmlu_folder_overrides(name, Path(data_path).resolve(), index, out_dir))
        else:
            expanded[name] = data_path
    for name, data_path in expanded.items():
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
