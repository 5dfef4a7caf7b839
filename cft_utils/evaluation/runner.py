"""Task ability (TA) and language ability (LA), zero-shot, on lm-eval; AlpacaEval with a pluggable judge.

(About 700 lines, one idea: running lm-eval on the grid's checkpoints and keeping what it returns -- the jobs a
profile asks for, the per-task caches, and the tidy rows rebuilt from them. Scoring is in :mod:`.metrics`, judging
in :mod:`.judge`, tables in :mod:`.tables`.)

What is run comes from the profile's ``evaluation:`` section (:class:`cft_utils.config.EvaluationSpec`): per
benchmark (a column of the paper's tables) the lm-eval task per language, the headline metric, a document limit,
a generation budget and a batch size. The sandbox profile names the tasks of ``cft_utils/evaluation/tasks/sandbox/``
(data generated from the world by :mod:`cft_utils.sandbox.bench`); the paper profile names lm-eval's ``ifeval``,
``mmlu``, ``hellaswag`` and ``mlqa_*`` and the project's ``cft_xquad_*``, ``cft_xlsum_*`` and
``cft_alpacaeval``. The code path is the same.

Caching: the result of one task on one checkpoint lives in ``$CFT_HOME/runs/<run id>/eval/<task>-<limit>.json``
(metrics with stderr and n, the settings that produced it) beside ``<task>-<limit>.samples.jsonl`` (lm-eval's
per-sample records: prompt, output, scores) and, for AlpacaEval, ``<task>-<limit>.judged.jsonl`` (judge prompts,
raw verdicts, reference outputs). Files are written atomically; a finished task is skipped, so an interrupted
evaluation resumes with the tasks it had not finished. A cache whose settings (generation budget, chat template,
data file, judge) differ from the profile's is recomputed.

Tidy results: one row per (checkpoint, benchmark, language, metric) with columns :data:`TIDY_COLUMNS`, rebuilt
from the caches; a metric that could not be computed is NaN, never 0. ``results/<profile>/evaluation.csv``
holds the profile's grid (:func:`evaluate_plan`); :func:`tidy_results` reads it.

Backends: lm-eval's ``hf`` (in-process; ``parallelize: true`` shards a large model over the GPUs with
``device_map``) or ``vllm`` (``tensor_parallel_size``), chosen by ``evaluation.backend``; the chat template is
applied when ``evaluation.chat_template`` (or a benchmark's own ``chat_template``) is true.

Notebooks 03 and 04 call :func:`evaluate_suite` (one suite of the grid, with what they show) and
:func:`benchmark_items` (what the generated benchmarks hold; nothing for fixed public sets).

Example::

    from cft_utils import config, plan
    from cft_utils.evaluation import runner
    cfg = config.load_config("sandbox")
    df = runner.evaluate_runs(cfg, plan.plan_runs(cfg).phase2)   # P1 rows from each run's parent
    runner.evaluate_plan(cfg)                                    # the whole grid -> results/sandbox/evaluation.csv
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import BenchmarkSpec, ConfigError, ExperimentConfig
from ..integrity import DamagedResultWarning, file_sha256
from ..io import atomic_path, read_json, read_jsonl, write_json
from ..locks import exclusive
from ..models import load_model, load_tokenizer, resolve_precision, use_stop_tokens, use_threads
from ..paths import PROJECT_ROOT, cft_home, results_dir
from ..plan import plan_runs
from ..sandbox.bench import bench_dir, build_bench
from ..sandbox.build import sandbox_paths
from ..sandbox.world import world_for
from .ifeval_offline import prepare_ifeval
from .judge import evaluate_win_rate, judge_label, load_outputs, make_judge
from .tasks.manager import TASKS_ROOT, task_manager

TIDY_COLUMNS = ["model", "phase1_data", "phase2_data", "strategy", "checkpoint", "seed", "benchmark", "language",
                "metric", "value", "stderr", "n", "run_id"]
SUITES = ("ta", "la")


# ------------------------------------------------------------------------------------------------ jobs


@dataclass(frozen=True)
class TaskJob:
    """One lm-eval task of one benchmark in one language, with the settings it runs under."""

    benchmark: str
    language: str
    task: str
    spec: BenchmarkSpec
    chat_template: bool
    batch_size: int

    @property
    def limit(self) -> int | None:
        """The benchmark's document limit (None: every document)."""
        return self.spec.limit


def _need_evaluation(cfg: ExperimentConfig):
    if cfg.evaluation is None:
        raise ValueError(f"{cfg.source_file}: the profile has no 'evaluation' section")
    return cfg.evaluation


def jobs_for(cfg: ExperimentConfig, suites: Sequence[str] = SUITES) -> list[TaskJob]:
    """Every (benchmark, language, task) of the requested suites, in the parameter file's order."""
    ev = _need_evaluation(cfg)
    bad = [s for s in suites if s not in SUITES]
    if bad:
        raise ValueError(f"unknown suites {bad}; known: {list(SUITES)}")
    out = []
    for name, b in ev.benchmarks.items():
        if b.suite not in suites:
            continue
        for lang, task in b.tasks.items():
            out.append(TaskJob(name, lang, task, b, ev.chat_template if b.chat_template is None else b.chat_template,
                               b.batch_size or ev.batch_size))
    return out


def limit_tag(limit: int | None) -> str:
    """The limit as it appears in cache file names: ``all`` or the number."""
    return "all" if limit is None else str(limit)


def eval_dir(run) -> Path:
    """Where a run's evaluation caches live: ``$CFT_HOME/runs/<run id>/eval/``."""
    return Path(run.dir) / "eval"


def cache_path(run, task: str, limit: int | None) -> Path:
    """``<run dir>/eval/<task>-<limit>.json``."""
    return eval_dir(run) / f"{task}-{limit_tag(limit)}.json"


def samples_path(run, task: str, limit: int | None) -> Path:
    """``<run dir>/eval/<task>-<limit>.samples.jsonl``: lm-eval's per-sample records."""
    return eval_dir(run) / f"{task}-{limit_tag(limit)}.samples.jsonl"


def judged_path(run, task: str, limit: int | None) -> Path:
    """``<run dir>/eval/<task>-<limit>.judged.jsonl``: the AlpacaEval judge's records."""
    return eval_dir(run) / f"{task}-{limit_tag(limit)}.judged.jsonl"


# ------------------------------------------------------------------------------------------------ task data


def _resolve(p: str) -> Path:
    q = Path(os.path.expanduser(p))
    return q if q.is_absolute() else (PROJECT_ROOT / q).resolve()


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():  # a data folder (MMLU's subject CSVs): every file's name and content
        for f in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(f"{f.relative_to(path).as_posix()}\0{_file_digest(f)}\n".encode())
        return h.hexdigest()[:16]
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def generated_benchmarks(cfg: ExperimentConfig) -> dict | None:
    """The manifest of the benchmarks generated from the profile's world (built once; files, item counts, items
    dropped for overlapping training data), or None when ``evaluation.sandbox_bench`` is off."""
    if not _need_evaluation(cfg).sandbox_bench:
        return None
    if cfg.sandbox is None:
        raise ValueError(f"{cfg.source_file}: evaluation.sandbox_bench needs a 'sandbox' section")
    return build_bench(world_for(cfg.sandbox.world_spec()), bench_dir(sandbox_paths(cfg)["world"]),
                       n_la=cfg.evaluation.sandbox_bench_per_language)


def benchmark_items(cfg: ExperimentConfig):
    """Items per generated benchmark and items dropped for overlapping training data, as a DataFrame; None when
    the profile's benchmarks are fixed public sets (nothing generated)."""
    import pandas as pd

    manifest = generated_benchmarks(cfg)
    if manifest is None:
        return None
    return pd.DataFrame({"items": manifest["counts"], "dropped (overlap with training)": manifest["dropped_overlap"]})


def benchmark_overview(cfg: ExperimentConfig):
    """One row per benchmark of the profile: suite, lm-eval task per language, headline metric, limit, budget."""
    import pandas as pd

    return pd.DataFrame([{"benchmark": b, "suite": s.suite, "tasks": ", ".join(f"{k}: {v}" for k, v in s.tasks.items()),
                          "headline metric": s.metric, "limit": s.limit, "max_gen_toks": s.max_gen_toks}
                         for b, s in _need_evaluation(cfg).benchmarks.items()])


def local_task_data(cfg: ExperimentConfig) -> dict[str, Any]:
    """``task -> local file`` (or ``{split: file}``): the sandbox benchmarks of the world (built once when
    ``evaluation.sandbox_bench``) and ``evaluation.local_data`` (paths relative to the project root)."""
    ev = _need_evaluation(cfg)
    data: dict[str, Any] = {}
    manifest = generated_benchmarks(cfg)
    if manifest is not None:
        data.update(manifest["files"])
    for task, v in ev.local_data.items():
        data[task] = {s: str(_resolve(f)) for s, f in v.items()} if isinstance(v, dict) else str(_resolve(v))
    return data


def task_dirs(cfg: ExperimentConfig) -> list[Path]:
    """The task folders to index besides ``tasks/paper``: names under cft_utils/evaluation/tasks/, paths, or
    ``lm_eval:<folder>`` (a folder of lm-eval's built-in tasks, needed to point one at local files)."""
    out = []
    for d in _need_evaluation(cfg).task_dirs:
        if d.startswith("lm_eval:"):
            import lm_eval.tasks

            p = Path(lm_eval.tasks.__file__).parent / d.removeprefix("lm_eval:")
        else:
            p = TASKS_ROOT / d if (TASKS_ROOT / d).is_dir() else _resolve(d)
        if not p.is_dir():
            raise FileNotFoundError(f"{cfg.source_file}: evaluation.task_dirs: no task folder {d!r} ({p})")
        out.append(p)
    return out


def make_task_manager(cfg: ExperimentConfig, tasks: Iterable[str], local_data: dict | None = None):
    """An lm-eval TaskManager that knows ``tasks``: the project's folders first (fast), lm-eval's built-in
    tasks only when a task is not among them."""
    tasks = set(tasks)
    local_data = local_task_data(cfg) if local_data is None else local_data
    wanted = {t: f for t, f in local_data.items()}
    include = task_dirs(cfg)
    try:
        tm = task_manager(include=include, local_data=wanted or None, include_defaults=False)
        if tasks <= set(tm.all_tasks) | set(tm.all_groups):
            return tm
    except KeyError:  # local data names a built-in task: it needs lm-eval's own index
        pass
    tm = task_manager(include=include, local_data=wanted or None, include_defaults=True)
    unknown = sorted(tasks - set(tm.all_tasks) - set(tm.all_groups))
    if unknown:
        raise KeyError(f"{cfg.source_file}: evaluation names unknown lm-eval tasks {unknown}")
    return tm


# lm-eval's metrics for a task without a metric_list, by output type.
DEFAULT_METRICS = {"multiple_choice": ("acc", "acc_norm"), "loglikelihood": ("perplexity", "acc"),
                   "generate_until": ("exact_match",),
                   "loglikelihood_rolling": ("word_perplexity", "byte_perplexity", "bits_per_byte")}
JUDGE_METRICS = ("win_rate", "n_judged", "n_unparsed_verdicts")  # what the alpaca_eval runner adds


def task_metrics(tm, task: str) -> set[str] | None:
    """The metric labels a task (or a group with an ``aggregate_metric_list``) produces in the tidy results, as
    :func:`parse_task_results` names them (``<metric>@<filter>`` for filters other than ``none``); None when the
    task's configuration does not say (a tag, a Python task, a group without aggregates)."""
    entry = tm.task_index.get(task)
    cfg = getattr(entry, "cfg", None)
    if not cfg:
        return None
    if cfg.get("aggregate_metric_list"):
        agg = cfg["aggregate_metric_list"]
        return {str(m["metric"]) for m in (agg if isinstance(agg, list) else [agg])}
    if entry.kind.name != "TASK":
        return None
    metrics = [str(m["metric"]) for m in cfg.get("metric_list") or []] or list(
        DEFAULT_METRICS.get(cfg.get("output_type"), ()))
    filters = [f.get("name", "none") for f in cfg.get("filter_list") or []] or ["none"]
    return {m if f == "none" else f"{m}@{f}" for m in metrics for f in filters}


def check_metrics(cfg: ExperimentConfig, jobs: Sequence[TaskJob], tm) -> None:
    """Each benchmark's headline ``metric`` must be one its tasks produce (a typo such as ``acc_nrom`` would
    otherwise give NaN headlines); ConfigError names the file, the key, the task and the metrics it has."""
    errors = []
    for j in jobs:
        have = task_metrics(tm, j.task)
        if have is not None and j.spec.runner == "alpaca_eval":
            have |= set(JUDGE_METRICS)
        if have is not None and j.spec.metric not in have:
            errors.append(f"{cfg.source_file}: evaluation.benchmarks.{j.benchmark}.metric: {j.spec.metric!r} is not "
                          f"a metric of task {j.task!r} (it reports {sorted(have)})")
    if errors:
        raise ConfigError("\n".join(dict.fromkeys(errors)))


# ------------------------------------------------------------------------------------------------ settings


def job_settings(cfg: ExperimentConfig, job: TaskJob, local_data: dict) -> dict:
    """What a cached result depends on besides (run id, task, limit); a change recomputes the task."""
    ev = cfg.evaluation
    data = local_data.get(job.task)
    files = sorted(data.values()) if isinstance(data, dict) else ([data] if data else [])
    s = {"task": job.task, "limit": job.limit, "max_gen_toks": job.spec.max_gen_toks,
         "chat_template": job.chat_template, "data": [_file_digest(Path(f)) for f in files], "seed": ev.seed}
    if job.spec.runner == "alpaca_eval":
        s.update(judge=judge_label(cfg), orders=ev.judge_orders, reference_outputs=job.spec.reference_outputs)
    return s


def _settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_record(path: Path) -> dict:
    return {"size": path.stat().st_size, "sha256": file_sha256(path)}


def _valid_cache(path: Path, settings: dict) -> dict | None:
    """The cache entry at ``path`` if it was computed with ``settings`` and the files it lists (samples, judge
    records) are still the ones it was written with; a damaged entry is reported and recomputed."""
    if not path.exists():
        return None
    try:
        c = read_json(path)
    except (json.JSONDecodeError, OSError):
        warnings.warn(f"evaluation cache {path} is unreadable (truncated?); it will be recomputed",
                      DamagedResultWarning, stacklevel=2)
        return None
    if c.get("settings_key") != _settings_key(settings):
        return None
    for name, want in (c.get("files") or {}).items():
        f = path.parent / name
        if not f.exists() or f.stat().st_size != want["size"] or file_sha256(f) != want["sha256"]:
            warnings.warn(f"evaluation cache {path}: {name} is missing or changed since it was written; the task "
                          f"will be recomputed", DamagedResultWarning, stacklevel=2)
            return None
    return c


# ------------------------------------------------------------------------------------------------ models


def make_lm(cfg: ExperimentConfig, model_path: str | Path, batch_size: int):
    """The lm-eval model for one checkpoint: ``hf`` (in-process, or ``parallelize`` over GPUs), ``vllm``, or
    ``openai-server`` (an OpenAI-compatible server serving the checkpoint under its folder's name: generation tasks
    only, since chat completions return no log-likelihoods)."""
    import torch

    ev = cfg.evaluation
    if ev.backend == "openai-server":  # `vllm serve <checkpoint>` at base_url: lm-eval's local-chat-completions
        from lm_eval.models.openai_completions import LocalChatCompletion

        base_url = ev.base_url or os.environ.get("CFT_EVAL_BASE_URL")
        if not base_url:
            raise ConfigError(f"{cfg.source_file}: evaluation.backend 'openai-server' needs evaluation.base_url "
                              "(or $CFT_EVAL_BASE_URL), e.g. http://127.0.0.1:8000/v1")
        return LocalChatCompletion(model=str(model_path), base_url=base_url.rstrip("/") + "/chat/completions",
                                   tokenizer_backend=None, tokenized_requests=False, seed=ev.seed)
    dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[resolve_precision(ev.precision)]
    if ev.backend == "vllm":
        from lm_eval.models.vllm_causallms import VLLM

        return VLLM(pretrained=str(model_path), tensor_parallel_size=ev.tensor_parallel_size, dtype=dtype,
                    batch_size="auto", seed=ev.seed)
    from lm_eval.models.huggingface import HFLM

    if ev.parallelize:
        lm = HFLM(pretrained=str(model_path), parallelize=True, dtype=dtype, batch_size=batch_size)
    else:
        use_threads(ev.num_threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        tok = load_tokenizer(model_path)
        model = load_model(model_path, ev.precision, device=device)
        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, device=device)
    # HFLM stops on the generation config's eos ids and the tokenizer's eos string: add the template's end of turn
    # (LLaMA-3 base on its Instruct template: <|eot_id|> is not its eos <|end_of_text|>).
    use_stop_tokens(lm.model, lm.tokenizer)
    return lm


# ------------------------------------------------------------------------------------------------ lm-eval


def _num(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")  # lm-eval writes "N/A" where a stderr is undefined
    return f


def parse_task_results(results: dict, task: str) -> tuple[dict[str, dict[str, float]], float]:
    """``({metric: {"value", "stderr"}}, n)`` for one task or group from ``simple_evaluate``'s output.

    Metrics with the ``none`` filter keep their name; other filters become ``<metric>@<filter>``. n is the
    number of documents scored (summed over a group's subtasks); NaN when lm-eval does not say.
    """
    res = results.get("results", {}).get(task)
    if res is None:
        raise KeyError(f"lm-eval returned no results for task {task!r} (have {sorted(results.get('results', {}))})")
    metrics: dict[str, dict[str, float]] = {}
    for key, v in res.items():
        if "," not in key:
            continue
        name, filt = key.split(",", 1)
        if name.endswith("_stderr"):
            continue
        label = name if filt == "none" else f"{name}@{filt}"
        metrics[label] = {"value": _num(v), "stderr": _num(res.get(f"{name}_stderr,{filt}"))}

    def count(t: str) -> float:
        ns = results.get("n-samples", {}).get(t)
        if ns:
            return float(ns.get("effective", ns.get("original", float("nan"))))
        subs = results.get("group_subtasks", {}).get(t)
        return float(sum(count(s) for s in subs)) if subs else float("nan")

    return metrics, count(task)


def _task_samples(results: dict, task: str) -> list[dict]:
    samples = results.get("samples", {})
    if task in samples:
        return list(samples[task])
    out = []
    for sub in results.get("group_subtasks", {}).get(task, []):
        out += [{**s, "task": sub} for s in _task_samples(results, sub)]
    return out


def output_text(sample: dict) -> str:
    """The (filtered) generated text of one lm-eval sample record; empty when it holds none."""
    r = sample.get("filtered_resps")
    while isinstance(r, list) and r:
        r = r[0]
    if not isinstance(r, str):
        r = sample.get("resps")
        while isinstance(r, list) and r:
            r = r[0]
    return r if isinstance(r, str) else ""


def _write_samples(path: Path, samples: list[dict]) -> None:
    with atomic_path(path, suffix=".jsonl") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for s in samples:
                f.write(json.dumps(s, ensure_ascii=False, default=str) + "\n")


def _judge_alpaca(cfg, run, job: TaskJob, samples: list[dict]) -> dict[str, dict[str, float]]:
    docs = [s["doc"] for s in samples]
    model_outputs = [{"instruction": d["instruction"], "output": output_text(s), "generator": run.name}
                     for d, s in zip(docs, samples, strict=True)]
    if job.spec.reference_outputs:
        wanted = {d["instruction"] for d in docs}
        refs = [r for r in load_outputs(_resolve(job.spec.reference_outputs)) if r["instruction"] in wanted]
    else:
        missing = [i for i, d in enumerate(docs) if "output" not in d]
        if missing:
            raise ValueError(f"{job.task}: documents {missing[:5]} carry no reference 'output' and "
                             f"evaluation.benchmarks.{job.benchmark}.reference_outputs is not set")
        refs = [{"instruction": d["instruction"], "output": d["output"], "generator": d.get("generator")}
                for d in docs]
    summary = evaluate_win_rate(model_outputs, refs, make_judge(cfg, docs), judged_path(run, job.task, job.limit),
                                orders=cfg.evaluation.judge_orders, seed=cfg.evaluation.seed, generator=run.name)
    nan = float("nan")
    return {"win_rate": {"value": summary.win_rate, "stderr": summary.stderr},
            "n_judged": {"value": float(summary.n), "stderr": nan},
            "n_unparsed_verdicts": {"value": float(summary.n_missing), "stderr": nan}}


def evaluate_checkpoint(cfg: ExperimentConfig, run, jobs: Sequence[TaskJob], *, task_manager=None,
                        local_data: dict | None = None, force: bool = False) -> dict[str, Any]:
    """Evaluate one checkpoint (a RunPlan) on ``jobs``, skipping tasks whose cache is valid; returns a summary
    ``{"run_id", "evaluated": [tasks], "cached": [tasks], "seconds"}``."""
    if not run.done():
        raise RuntimeError(f"{run.name} ({run.run_id}) is not trained yet: run notebooks 01-02 (or train.execute)")
    local_data = local_task_data(cfg) if local_data is None else local_data
    settings = {j.task: job_settings(cfg, j, local_data) for j in jobs}
    todo = [j for j in jobs if force or _valid_cache(cache_path(run, j.task, j.limit), settings[j.task]) is None]
    if not todo:
        return {"run_id": run.run_id, "evaluated": [], "cached": [j.task for j in jobs], "seconds": 0.0}
    # One writer per checkpoint's caches: a second process waits, then finds the tasks the first one computed.
    with exclusive(eval_dir(run), what=f"evaluation of {run.name} ({run.run_id})"):
        if not force:
            todo = [j for j in todo if _valid_cache(cache_path(run, j.task, j.limit), settings[j.task]) is None]
        done = [j.task for j in jobs if j not in todo]
        if not todo:
            return {"run_id": run.run_id, "evaluated": [], "cached": done, "seconds": 0.0}
        return _evaluate_locked(cfg, run, todo, done, settings, task_manager, local_data)


def env_info_once() -> None:
    """Make lm-eval describe the environment once per process, not in every ``simple_evaluate`` call.

    lm-eval adds torch's ``collect_env`` report to each result, which starts ~30 subprocesses (``pip list`` among
    them): 0.4-0.55 s of CPU per call, measured, and a checkpoint's two suites make five calls (about 10 % of a
    sandbox checkpoint's evaluation). The report cannot change within a process, so the first one is kept and
    copied into every later result: the results hold the same keys and values as before.
    """
    import lm_eval.evaluator as ev

    if getattr(ev.add_env_info, "_cft_once", False):
        return
    original, kept = ev.add_env_info, {}

    def add_env_info(storage: dict) -> None:
        if not kept:
            probe: dict = {}
            original(probe)
            kept.update(probe)
        storage.update(kept)

    add_env_info._cft_once = True  # type: ignore[attr-defined]
    ev.add_env_info = add_env_info


def templates_compiled_once() -> None:
    """Make lm-eval compile each Jinja prompt template once per process, not once per document.

    ``lm_eval.utils.apply_template`` calls ``Environment.from_string`` for every document and field (the text, the
    target, the choices): 1,200 compilations for one checkpoint's language-ability suite, ~1.2 s of its ~14 s,
    measured. The compiled template renders the same text; it is kept per template string, in lm-eval's own
    environment (its filters and undefined-variable rule). Upstream: EleutherAI/lm-evaluation-harness#1286 (open)
    proposes caching the rendered prompts.
    """
    import lm_eval.utils as lu

    if getattr(lu.apply_template, "_cft_once", False):
        return
    compiled: dict[str, Any] = {}

    def apply_template(template: str, doc: dict) -> str:
        t = compiled.get(template)
        if t is None:
            t = compiled[template] = lu.env.from_string(template)
        return t.render(**doc)

    apply_template._cft_once = True  # type: ignore[attr-defined]
    lu.apply_template = apply_template


def _evaluate_locked(cfg, run, todo, done, settings, task_manager, local_data) -> dict[str, Any]:
    import lm_eval

    t_all = time.time()
    env_info_once()
    templates_compiled_once()
    if any(j.spec.runner == "alpaca_eval" for j in todo) and cfg.evaluation.judge != "reference":
        make_judge(cfg, [])  # fail on a missing endpoint/judge model before hours of generation, not after
    tm = task_manager or make_task_manager(cfg, [j.task for j in todo], local_data)
    prepare_ifeval(seed=cfg.evaluation.seed)
    groups: dict[tuple, list[TaskJob]] = {}
    for j in todo:
        groups.setdefault((j.limit, j.chat_template, j.spec.max_gen_toks, j.batch_size), []).append(j)
    lm = make_lm(cfg, run.model_dir, max(j.batch_size for j in todo))
    ev = cfg.evaluation
    try:
        for (limit, chat, max_gen, bs), group in groups.items():
            if hasattr(lm, "batch_size_per_gpu"):
                lm.batch_size_per_gpu = bs
            t0 = time.time()
            results = lm_eval.simple_evaluate(
                model=lm, tasks=[j.task for j in group], task_manager=tm, limit=limit, num_fewshot=None,
                apply_chat_template=chat, gen_kwargs={"max_gen_toks": max_gen} if max_gen else None,
                log_samples=True, random_seed=ev.seed, numpy_random_seed=ev.seed, torch_random_seed=ev.seed,
                fewshot_random_seed=ev.seed, bootstrap_iters=1000, verbosity="ERROR")
            seconds = (time.time() - t0) / len(group)
            for j in group:
                metrics, n = parse_task_results(results, j.task)
                samples = _task_samples(results, j.task)
                _write_samples(samples_path(run, j.task, j.limit), samples)
                written = [samples_path(run, j.task, j.limit)]
                if j.spec.runner == "alpaca_eval":
                    metrics.update(_judge_alpaca(cfg, run, j, samples))
                    written.append(judged_path(run, j.task, j.limit))
                write_json(cache_path(run, j.task, j.limit), {
                    "run_id": run.run_id, "run": run.name, "task": j.task, "benchmark": j.benchmark,
                    "language": j.language, "limit": j.limit, "settings": settings[j.task],
                    "settings_key": _settings_key(settings[j.task]),
                    "files": {f.name: _file_record(f) for f in written if f.exists()},
                    "metrics": {k: {"value": _json_num(v["value"]), "stderr": _json_num(v["stderr"])}
                                for k, v in metrics.items()},
                    "n": _json_num(n), "seconds": round(seconds, 3), "lm_eval_version": lm_eval.__version__,
                    "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    finally:
        del lm
    return {"run_id": run.run_id, "evaluated": [j.task for j in todo], "cached": done,
            "seconds": round(time.time() - t_all, 2)}


def _json_num(v):
    """NaN and None as JSON null (missing); other values unchanged."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


# ------------------------------------------------------------------------------------------------ tidy rows


def checkpoints_of(runs: Iterable) -> list[tuple[str, Any, Any]]:
    """``(checkpoint, run evaluated, grid cell run)``: a Phase 2 run gives its parent (P1) and itself (P2);
    a Phase 1 run gives itself (P1)."""
    out = []
    for r in runs:
        if r.phase == 2:
            out += [("P1", r.parent, r), ("P2", r, r)]
        else:
            out.append(("P1", r, r))
    return out


def _nan(v) -> float:
    return float("nan") if v is None else float(v)


def tidy_from_caches(cfg: ExperimentConfig, runs: Iterable, suites: Sequence[str] = SUITES):
    """Tidy rows for ``runs`` from the caches only (nothing is computed): a task without a cache, or a metric
    a cache lacks, gives NaN (the headline metric of every benchmark always has a row)."""
    import pandas as pd

    jobs = jobs_for(cfg, suites)
    rows = []
    for ckpt, run, cell in checkpoints_of(runs):
        for j in jobs:
            p = cache_path(run, j.task, j.limit)
            c = read_json(p) if p.exists() else {"metrics": {}, "n": None}
            metrics = dict(c["metrics"])
            metrics.setdefault(j.spec.metric, {"value": None, "stderr": None})
            for m in [j.spec.metric, *sorted(k for k in metrics if k != j.spec.metric)]:
                rows.append({"model": cell.model, "phase1_data": cell.phase1_data,
                             "phase2_data": cell.phase2_data if cell.phase == 2 else None,
                             "strategy": cell.strategy, "checkpoint": ckpt,
                             "seed": "" if cell.seed is None else str(cell.seed), "benchmark": j.benchmark,
                             "language": j.language, "metric": m, "value": _nan(metrics[m]["value"]),
                             "stderr": _nan(metrics[m]["stderr"]), "n": _nan(c.get("n")), "run_id": run.run_id})
    return pd.DataFrame(rows, columns=TIDY_COLUMNS)


def evaluate_runs(cfg: ExperimentConfig, runs: Sequence, suites: Sequence[str] = SUITES, force: bool = False,
                  progress: bool = True, workers: int | None = None):
    """Evaluate every checkpoint of ``runs`` (RunPlan objects; a Phase 2 run brings its Phase 1 parent as
    the P1 checkpoint) on the profile's suites and return the tidy rows (:data:`TIDY_COLUMNS`).

    Each distinct checkpoint is evaluated once; finished tasks come from the caches. Checkpoints with work left are
    spread over the executor's worker processes (``workers``, default: the profile's executor setting; each worker
    loads one checkpoint at a time). Nothing is written to ``results/`` here (see :func:`evaluate_plan`).
    """
    from ..executor import default_workers, parallel_map

    jobs = jobs_for(cfg, suites)
    local = local_task_data(cfg)  # builds generated benchmark files once, before any worker starts
    tm = make_task_manager(cfg, [j.task for j in jobs], local)
    check_metrics(cfg, jobs, tm)  # a headline metric the tasks do not produce: before compute and cache reads
    settings = {j.task: job_settings(cfg, j, local) for j in jobs}
    pending, seen = [], set()
    for _, run, _cell in checkpoints_of(runs):
        if run.run_id in seen:
            continue
        seen.add(run.run_id)
        if force or any(_valid_cache(cache_path(run, j.task, j.limit), settings[j.task]) is None for j in jobs):
            if not run.done():
                raise RuntimeError(f"{run.name} ({run.run_id}) is not trained yet: run notebooks 01-02 (or the "
                                   "executor) first")
            pending.append(run)
    workers = workers or default_workers(cfg)
    if pending:
        prepare_ifeval(seed=cfg.evaluation.seed)
    if workers > 1 and len(pending) > 1:
        log_dir = str(cft_home() / "logs" / "evaluation")
        calls = [(cfg.source_file, dict(cfg.overrides), r.name, tuple(suites), force, log_dir) for r in pending]
        summaries = parallel_map(evaluate_named_checkpoint, calls, workers, log_dir)
    else:
        summaries = [{"name": r.name, **evaluate_checkpoint(cfg, r, jobs, task_manager=tm, local_data=local,
                                                             force=force)} for r in pending]
    if progress:
        for s in summaries:
            print(f"[evaluate] {s['name']} ({s['run_id']}): {len(s['evaluated'])} task(s) in {s['seconds']:.1f} s, "
                  f"{len(s['cached'])} cached", flush=True)
    return tidy_from_caches(cfg, runs, suites)


def evaluate_named_checkpoint(params_file: str, overrides: dict, name: str, suites: Sequence[str], force: bool,
                              log_dir: str) -> dict:
    """In a worker process: evaluate the checkpoint of the run called ``name`` (its output goes to a log file)."""
    from ..executor import redirect_output, worker_context

    cfg, runs = worker_context(params_file, overrides)
    run = runs[name]
    with redirect_output(Path(log_dir) / f"{run.run_id}.log"):
        summary = evaluate_checkpoint(cfg, run, jobs_for(cfg, suites), force=force)
    return {"name": name, **summary}


def evaluation_seconds(runs: Iterable, cfg: ExperimentConfig, suites: Sequence[str] = SUITES):
    """Measured evaluation time per checkpoint and task (from the caches), as a DataFrame."""
    import pandas as pd

    rows = []
    for ckpt, run, _cell in checkpoints_of(runs):
        for j in jobs_for(cfg, suites):
            p = cache_path(run, j.task, j.limit)
            if p.exists():
                rows.append({"run": run.name, "run_id": run.run_id, "checkpoint": ckpt, "task": j.task,
                             "seconds": read_json(p).get("seconds")})
    df = pd.DataFrame(rows, columns=["run", "run_id", "checkpoint", "task", "seconds"])
    return df.drop_duplicates(["run_id", "task"])


def tidy_path(cfg: ExperimentConfig) -> Path:
    """``results/<output name>/evaluation.csv`` (the profile's name unless parameters were overridden)."""
    return results_dir(cfg) / "evaluation.csv"


def write_tidy(cfg: ExperimentConfig, df) -> Path:
    """Write the tidy rows to ``results/<profile>/evaluation.csv`` (atomically; NaN as an empty cell)."""
    path = tidy_path(cfg)
    with atomic_path(path, suffix=".csv") as tmp:
        df[TIDY_COLUMNS].to_csv(tmp, index=False)
    return path


def plan_cells(cfg: ExperimentConfig) -> list:
    """The runs whose checkpoints the tables need: every Phase 2 run of the grid (P1 = its parent), plus any
    Phase 1 run that is no Phase 2 run's parent."""
    plan = plan_runs(cfg)
    parents = {r.parent.run_id for r in plan.phase2}
    return plan.phase2 + [r for r in plan.phase1 if r.run_id not in parents]


def evaluate_plan(cfg: ExperimentConfig, suites: Sequence[str] = SUITES, force: bool = False):
    """Evaluate every Phase 1 and Phase 2 checkpoint of the profile's grid and write the tidy file from the
    caches (both suites are always written: a suite not evaluated yet shows as NaN)."""
    evaluate_runs(cfg, plan_cells(cfg), suites, force=force)
    df = tidy_from_caches(cfg, plan_cells(cfg), SUITES)
    write_tidy(cfg, df)
    return df


def tidy_results(cfg: ExperimentConfig):
    """The profile's tidy evaluation results (``results/<profile>/evaluation.csv``) as a DataFrame."""
    import pandas as pd

    path = tidy_path(cfg)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no evaluation results yet (run notebook 03/04 or runner.evaluate_plan)")
    df = pd.read_csv(path, dtype={c: str for c in TIDY_COLUMNS if c not in ("value", "stderr", "n")},
                     keep_default_na=False, na_values={"value": [""], "stderr": [""], "n": [""]})
    missing = [c for c in TIDY_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    df["phase2_data"] = df["phase2_data"].replace("", None)
    return df


def read_samples(run, task: str, limit: int | None) -> list[dict]:
    """The per-sample records lm-eval logged for one task of one checkpoint (empty when not evaluated)."""
    p = samples_path(run, task, limit)
    return read_jsonl(p) if p.exists() else []


# ------------------------------------------------------------------------------------------------ one suite


@dataclass
class SuiteEvaluation:
    """One suite of the grid evaluated: the tidy rows of both suites (a suite not evaluated yet is NaN), where they
    were written, the suite's rows as a wide table and the measured seconds per checkpoint."""

    suite: str
    tidy: Any  # DataFrame, TIDY_COLUMNS
    path: Path
    wide: Any  # DataFrame: (cell, checkpoint) x (benchmark, metric) of this suite
    seconds: Any  # DataFrame: seconds of this suite's tasks per (run, checkpoint)

    @property
    def summary(self) -> str:
        """One line: where the tidy file is and how many rows it has."""
        return f"tidy results: {self.path} ({len(self.tidy)} rows)"


def evaluate_suite(cfg: ExperimentConfig, suite: str, force: bool = False) -> SuiteEvaluation:
    """Evaluate every checkpoint of the grid on one suite (``ta`` or ``la``), write the tidy file and return it
    with the suite's wide table and timings (what notebooks 03 and 04 show)."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; known: {list(SUITES)}")
    tidy = evaluate_plan(cfg, suites=(suite,), force=force)
    names = [b for b, s in cfg.evaluation.benchmarks.items() if s.suite == suite]
    rows = tidy[tidy.benchmark.isin(names)]
    wide = rows.pivot_table(index=["phase1_data", "phase2_data", "checkpoint"], columns=["benchmark", "metric"],
                            values="value")
    seconds = evaluation_seconds(plan_cells(cfg), cfg, suites=(suite,))
    per_ckpt = (seconds.groupby(["run", "checkpoint"]).seconds.sum().round(1)
                .rename(f"seconds ({suite.upper()} tasks)").to_frame())
    return SuiteEvaluation(suite, tidy, tidy_path(cfg), wide, per_ckpt)
