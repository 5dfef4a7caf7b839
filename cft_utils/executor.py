"""The run graph of a profile and the executor that runs it: locally on a pool of worker processes sized to the
machine, or on a SLURM cluster through submitit (one job per run, dependencies passed to the scheduler).

A *task* is one run of the plan (Phase 1, Phase 2 or a mitigation run) with the runs it needs first (its
``parent``, a mitigation run's ``baseline``). ``execute_runs(cfg, runs)`` runs the finished-or-not tasks in
dependency order, skips those whose run is complete, prints one progress line per task, and raises at the end if a
task failed (its dependents are not started; everything else is).

Why processes and not threads: training releases the GIL only inside torch ops, and two 1-thread processes on a
2-core machine were steadier and 1.45x faster than one 2-thread process running the same runs in sequence
(STACK_NOTES). Each worker gets ``cores // workers`` torch threads and stays alive for many tasks, so its imports
and set-up are paid once. Worker output goes to one log file per task under ``$CFT_HOME/logs/executor/``, not to
the notebook.

Same machine, same seed: a run's weights do not depend on which worker or in which order it ran (measured
bit-identical at 1 and 2 threads; ``tests/test_executor.py``).

On a cluster (``executor.backend: slurm`` in the profile, or ``execute_runs(..., backend="slurm")``)::

    python -m cft_utils.executor --params paper --backend slurm --set executor.slurm.partition=gpu

submits every unfinished run as its own job with ``--dependency=afterok:<parent job ids>``; a multi-GPU run's job
calls ``accelerate launch`` inside (``executor.slurm.launcher: accelerate``). ``backend: submitit-local`` runs the
same job path on this machine (tests use it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ExperimentConfig, load_config, parse_set
from .paths import cft_home
from .processes import skip_exit_collection
from .runs import RunPlan


class ExecutorError(RuntimeError):
    """One or more tasks of the graph failed; the message names each with the end of its log."""


@dataclass(frozen=True)
class Task:
    """One run of the graph: its name (unique in the plan), run id and the names of the runs it needs first."""

    name: str
    run_id: str
    deps: tuple[str, ...]


def graph(runs: Sequence[RunPlan]) -> list[Task]:
    """Tasks for ``runs`` and every unfinished run they need (parents, baselines), in a dependency order."""
    by_name: dict[str, RunPlan] = {}

    def add(r: RunPlan | None):
        if r is None or r.name in by_name:
            return
        for d in (r.parent, r.baseline):
            add(d)
        by_name[r.name] = r

    for r in runs:
        add(r)
    # Two names for one run id (the same content planned twice) are one task: two workers never write one run.
    first = {}
    for r in by_name.values():
        first.setdefault(r.run_id, r.name)
    tasks = []
    for r in by_name.values():
        deps = tuple(dict.fromkeys(first[d.run_id] for d in (r.parent, r.baseline)
                                   if d is not None and not d.registered))
        if not r.registered and first[r.run_id] == r.name:
            tasks.append(Task(r.name, r.run_id, deps))
    return tasks


def default_workers(cfg: ExperimentConfig) -> int:
    """Worker processes: ``executor.workers`` when set; on a GPU machine 1 (each run takes the GPUs it is given);
    else one per core."""
    if cfg.executor.workers:
        return cfg.executor.workers
    import torch

    return 1 if torch.cuda.is_available() else max(1, os.cpu_count() or 1)


# ------------------------------------------------------------------------------------------------- workers
# Module-level state of a worker process: the configuration is loaded once per (file, overrides).
_WORKER: dict[str, Any] = {}


def _init_worker(threads: int, log_dir: str, watch_parent: bool = True) -> None:
    import threading

    import torch

    torch.set_num_threads(threads)
    # A worker must not outlive the process that started it (a killed notebook kernel or `make reproduce`):
    # when its parent is gone it is re-parented, and it stops instead of finishing a run nobody waits for.
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(2)
            if os.getppid() != parent:
                os._exit(1)

    if watch_parent:
        threading.Thread(target=watch, daemon=True, name="parent-watch").start()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _WORKER["log_dir"] = log_dir
    skip_exit_collection()  # the pool waits for its workers to exit: ~1 s less per pool (cft_utils.processes)


def worker_context(params_file: str, overrides: dict) -> tuple[ExperimentConfig, dict[str, RunPlan]]:
    """In a worker process: the configuration and every run of its plan (grid and mitigation runs) by name,
    loaded once per (parameter file, overrides) and kept for the worker's next tasks."""
    runs = _worker_plan(params_file, overrides)
    return _WORKER["cfg"], runs


def _worker_plan(params_file: str, overrides: dict) -> dict[str, RunPlan]:
    key = repr((params_file, sorted(overrides.items(), key=str)))
    if _WORKER.get("key") != key:
        from .mitigation.plan import plan_mitigations
        from .plan import plan_runs

        cfg = load_config(params_file, overrides)
        plan = plan_runs(cfg)
        runs = {r.name: r for r in plan.all()}
        runs.update({r.name: r for r in plan_mitigations(cfg, plan)})
        _WORKER.update(key=key, cfg=cfg, runs=runs)
    return _WORKER["runs"]


def run_task(params_file: str, overrides: dict, name: str, log_dir: str | None = None) -> dict:
    """Execute the run ``name`` of the profile in this process (a worker, a SLURM job, or the caller); returns
    ``{"name", "status": "trained" | "reused", "seconds"}``. Output goes to ``<log_dir>/<run id>.log``."""
    runs = _worker_plan(params_file, overrides)
    cfg = _WORKER["cfg"]
    run = runs[name]
    was_done = run.done()
    t0 = time.time()
    log_dir = log_dir or _WORKER.get("log_dir")
    if was_done:
        return {"name": name, "status": "reused", "seconds": 0.0}
    log = Path(log_dir) / f"{run.run_id}.log" if log_dir else None
    with redirect_output(log):
        dispatch(run, cfg)
    return {"name": name, "status": "trained", "seconds": round(time.time() - t0, 1), "log": str(log) if log else None}


def dispatch(run: RunPlan, cfg: ExperimentConfig) -> Path:
    """Run one planned run: a mitigation run through its strategy, any other run through ``train.execute``."""
    if run.variant is not None:
        from .mitigation.execute import execute_mitigation

        return execute_mitigation(run, cfg)
    from .train import execute

    return execute(run, cfg)


def parallel_map(fn, calls: Sequence[tuple], workers: int, log_dir: str | None = None) -> list:
    """``[fn(*args) for args in calls]`` on a pool of ``workers`` spawned processes (``cores // workers`` torch
    threads each), in order; with one worker, in this process. ``fn`` must be a module-level function (picklable).
    Exceptions propagate after every call has finished."""
    import concurrent.futures as cf
    import multiprocessing as mp

    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    if workers <= 1 or len(calls) <= 1:
        return [fn(*args) for args in calls]
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                initargs=(threads, log_dir or "")) as pool:
        futures = [pool.submit(fn, *args) for args in calls]
        cf.wait(futures)
        return [f.result() for f in futures]


class redirect_output:
    """Send this process's stdout/stderr (file descriptors too: C extensions, tqdm) to ``path`` for a block."""

    def __init__(self, path: Path | None):
        self.path = path

    def __enter__(self):
        if self.path is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = (os.dup(1), os.dup(2), sys.stdout, sys.stderr)
        self.f = open(self.path, "a", encoding="utf-8", buffering=1)
        os.dup2(self.f.fileno(), 1)
        os.dup2(self.f.fileno(), 2)
        sys.stdout = sys.stderr = self.f
        return self

    def __exit__(self, *exc):
        if self.path is None:
            return False
        if exc[0] is not None:
            self.f.write("".join(traceback.format_exception(*exc)))
        self.f.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        os.close(self.saved[0])
        os.close(self.saved[1])
        sys.stdout, sys.stderr = self.saved[2], self.saved[3]
        self.f.close()
        return False


# ------------------------------------------------------------------------------------------------- local pool


def _log_tail(path: str | None, n: int = 15) -> str:
    if not path or not Path(path).exists():
        return ""
    return "\n".join(Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[-n:])


def execute_runs(cfg: ExperimentConfig, runs: Sequence[RunPlan], workers: int | None = None,
                 backend: str | None = None, progress: bool = True) -> list[dict]:
    """Run ``runs`` (and the unfinished runs they depend on) in dependency order; skip finished ones.

    ``backend``: ``local`` (a pool of ``workers`` processes; with 1 worker, in this process), ``slurm`` or
    ``submitit-local`` (one submitit job per run). Returns one status dict per task; raises
    :class:`ExecutorError` naming every failed task after the others have finished.
    """
    tasks = graph(runs)
    backend = backend or cfg.executor.backend
    by_name = {t.name: t for t in tasks}
    todo = [t for t in tasks if not _done(runs, t)]
    if todo:
        prepare(cfg, [r for r in _all_runs(runs) if r.name in {t.name for t in todo}])
    statuses = [{"name": t.name, "status": "reused", "seconds": 0.0} for t in tasks if t not in todo]
    if progress:
        print(f"[executor] {len(tasks)} run(s): {len(tasks) - len(todo)} already done, {len(todo)} to run "
              f"({backend}" + (f", {workers or default_workers(cfg)} worker(s))" if backend == "local" else ")"),
              flush=True)
    if not todo:
        return statuses
    log_dir = str(cft_home() / "logs" / "executor")
    if backend == "local":
        statuses += _run_local(cfg, todo, by_name, workers or default_workers(cfg), log_dir, progress)
    elif backend in ("slurm", "submitit-local"):
        statuses += _run_submitit(cfg, todo, backend, log_dir, progress)
    else:
        raise ValueError(f"unknown executor backend {backend!r} (local, slurm, submitit-local)")
    failed = [s for s in statuses if s["status"] == "failed"]
    if failed:
        raise ExecutorError("run(s) failed:\n" + "\n".join(
            f"- {s['name']}: {s.get('error', '')}\n  log: {s.get('log')}\n{_log_tail(s.get('log'))}" for s in failed))
    return statuses


def _all_runs(runs: Sequence[RunPlan]) -> list[RunPlan]:
    out: dict[str, RunPlan] = {}

    def add(r):
        if r is not None and r.name not in out:
            add(r.parent)
            add(r.baseline)
            out[r.name] = r

    for r in runs:
        add(r)
    return list(out.values())


def prepare(cfg: ExperimentConfig, runs: Sequence[RunPlan]) -> None:
    """What several runs share is built once, here, before any worker starts (two workers building the sandbox
    base model or the sandbox mOpenOrca in the same folder would race), and every dataset the runs train on is
    loaded once, so bad data fails before any compute."""
    from .data.loaders import load_records
    from .models import check_model_source
    from .plan import model_spec
    from .sandbox.build import ensure_sandbox

    # Model folders and hub ids first: not a causal LM, pickle-only weights or a hub id offline fail here, by name.
    for init, model in sorted({(r.init, r.model) for r in runs if r.init != "sandbox-base"
                               and not r.init.startswith("run:")}):
        m = model_spec(cfg, model)
        i = next(i for i, x in enumerate(cfg.models) if x.name == model)
        key = "instruct" if init == m.instruct and init != m.base else "base"
        check_model_source(init, f"{cfg.source_file}: models.{i}.{key} ({model})", m.revision, m.trust_remote_code)
    if cfg.sandbox is not None and any(r.init == "sandbox-base" for r in runs):
        ensure_sandbox(cfg)
    for key in sorted({r.data_key for r in runs if r.data_key and r.data_key in cfg.datasets}):
        load_records(cfg, key)


def _done(runs, task: Task) -> bool:
    from .runs import is_done, run_dir

    return is_done(run_dir(task.run_id))


def _say(progress: bool, k: int, n: int, status: dict, t0: float) -> None:
    if not progress:
        return
    s = status["status"]
    what = (f"ran in {status.get('seconds', 0.0):.0f} s" if s == "trained" else
            {"reused": "reused", "failed": "FAILED", "skipped": "skipped (a run it needs failed)"}[s])
    print(f"[executor] {k}/{n} {status['name']}: {what} (elapsed {time.time() - t0:.0f} s)", flush=True)


def _run_local(cfg, todo: list[Task], by_name, workers: int, log_dir: str, progress: bool) -> list[dict]:
    import concurrent.futures as cf
    import multiprocessing as mp

    params, overrides = cfg.source_file, dict(cfg.overrides)
    pending = {t.name: t for t in todo}
    finished: dict[str, str] = {}
    out, t0, n = [], time.time(), len(todo)
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    if cfg.training.num_threads and workers == 1:
        threads = cfg.training.num_threads

    def ready(t: Task) -> bool:
        return all(d not in pending or finished.get(d) in ("trained", "reused") for d in t.deps)

    def blocked(t: Task) -> bool:
        return any(finished.get(d) in ("failed", "skipped") for d in t.deps)

    if workers == 1:  # in this process: no spawn cost, same code path
        _init_worker(threads, log_dir, watch_parent=False)
        for t in todo:
            if blocked(t):
                st = {"name": t.name, "status": "skipped", "seconds": 0.0}
            else:
                try:
                    st = run_task(params, overrides, t.name, log_dir)
                except Exception as e:  # noqa: BLE001 (reported with the log, after the other tasks)
                    st = {"name": t.name, "status": "failed", "error": repr(e), "log": str(Path(log_dir) /
                                                                                          f"{t.run_id}.log")}
            finished[t.name] = st["status"]
            out.append(st)
            _say(progress, len(out), n, st, t0)
        return out
    ctx = mp.get_context("spawn")  # a fresh interpreter per worker: no forked torch/OpenMP state
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                initargs=(threads, log_dir)) as pool:
        running: dict[cf.Future, Task] = {}
        while pending or running:
            for t in [t for t in pending.values() if t.name not in finished and ready(t)
                      and t not in running.values()]:
                running[pool.submit(run_task, params, overrides, t.name, log_dir)] = t
            for t in [t for t in pending.values() if t.name not in finished and blocked(t)]:
                finished[t.name] = "skipped"
                st = {"name": t.name, "status": "skipped", "seconds": 0.0}
                out.append(st)
                pending.pop(t.name)
                _say(progress, len(out), n, st, t0)
            if not running:
                if pending:  # nothing can run: a dependency outside the graph is not done
                    for t in list(pending.values()):
                        st = {"name": t.name, "status": "failed", "error": f"needs {t.deps}, which are not done"}
                        out.append(st)
                        pending.pop(t.name)
                break
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                t = running.pop(fut)
                try:
                    st = fut.result()
                except Exception as e:  # noqa: BLE001
                    st = {"name": t.name, "status": "failed", "error": repr(e),
                          "log": str(Path(log_dir) / f"{t.run_id}.log")}
                finished[t.name] = st["status"]
                pending.pop(t.name, None)
                out.append(st)
                _say(progress, len(out), n, st, t0)
    return out


# ------------------------------------------------------------------------------------------------- submitit


def _run_submitit(cfg, todo: list[Task], backend: str, log_dir: str, progress: bool) -> list[dict]:
    """One submitit job per task. On SLURM the scheduler enforces the order (afterok dependencies); the local
    submitit executor has no dependencies, so a job is submitted only when the jobs it needs have finished."""
    import submitit

    sl = cfg.executor.slurm
    folder = cft_home() / "logs" / "submitit" / "%j"
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm" if backend == "slurm" else "local")
    params = {"timeout_min": sl.timeout_min, "name": f"cft-{cfg.profile}", "cpus_per_task": sl.cpus_per_task}
    if backend == "slurm":
        params.update(slurm_partition=sl.partition, gpus_per_node=sl.gpus_per_node, mem_gb=sl.mem_gb)
        if sl.account:
            params["slurm_account"] = sl.account
    ex.update_parameters(**params)
    jobs: dict[str, Any] = {}
    out, t0, n = [], time.time(), len(todo)
    fn = run_task if sl.launcher == "python" or backend != "slurm" else _accelerate_job
    for t in todo:
        deps = [jobs[d] for d in t.deps if d in jobs]
        if backend == "slurm":
            extra = {"dependency": "afterok:" + ":".join(j.job_id for j in deps)} if deps else {}
            ex.update_parameters(slurm_additional_parameters=extra)
        else:
            for j in deps:
                j.wait()
            if any(j.state not in ("DONE", "COMPLETED", "FINISHED") and _job_failed(j) for j in deps):
                st = {"name": t.name, "status": "skipped", "seconds": 0.0}
                out.append(st)
                _say(progress, len(out), n, st, t0)
                continue
        jobs[t.name] = ex.submit(fn, cfg.source_file, dict(cfg.overrides), t.name, log_dir)
    for name, job in jobs.items():
        try:
            st = job.result()
        except Exception as e:  # noqa: BLE001
            st = {"name": name, "status": "failed", "error": repr(e)[-500:], "log": str(job.paths.stderr)}
        out.append(st)
        _say(progress, len(out), n, st, t0)
    return out


def _job_failed(job) -> bool:
    try:
        job.result()
        return False
    except Exception:  # noqa: BLE001
        return True


def _accelerate_job(params_file: str, overrides: dict, name: str, log_dir: str | None = None) -> dict:
    """A SLURM job that trains one run on all the node's GPUs through ``accelerate launch``."""
    import subprocess

    cfg = load_config(params_file, overrides)
    n = cfg.training.num_processes
    sets = [f"--set={k}={v}" for k, v in overrides.items()]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n),
           *(["--config_file", cfg.executor.slurm.accelerate_config] if cfg.executor.slurm.accelerate_config else []),
           "-m", "cft_utils.train", "--params", params_file, "--run", name, *sets]
    t0 = time.time()
    subprocess.run(cmd, check=True)
    return {"name": name, "status": "trained", "seconds": round(time.time() - t0, 1)}


# ------------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run a profile's training grid (and mitigation runs) on the executor.")
    ap.add_argument("--params", default="sandbox")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--backend", choices=["local", "slurm", "submitit-local"], default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--only", choices=["phase1", "phase2", "mitigation", "all"], default="all")
    ap.add_argument("--list", action="store_true", help="print every run (grid and mitigation) with its status")
    args = ap.parse_args(argv)
    from .mitigation.plan import plan_mitigations
    from .plan import plan_runs

    cfg = load_config(args.params, parse_set(args.set))
    plan = plan_runs(cfg)
    runs = {"phase1": plan.phase1, "phase2": plan.phase2, "mitigation": plan_mitigations(cfg, plan),
            "all": plan.all() + plan_mitigations(cfg, plan)}[args.only]
    if args.list:
        import pandas as pd

        deps = {t.name: t.deps for t in graph(runs)}
        print(pd.DataFrame([{"name": r.name, "run_id": r.run_id, "strategy": r.strategy, "seed": r.seed,
                             "needs": ", ".join(deps.get(r.name, ())) or "-", "done": r.done()}
                            for r in _all_runs(runs)]).to_string(index=False))
        return 0
    execute_runs(cfg, runs, workers=args.workers, backend=args.backend)
    return 0


if __name__ == "__main__":
    from .processes import skip_exit_collection

    skip_exit_collection()  # ~1 s less at exit (cft_utils.processes)
    sys.exit(main())
