"""Run one mitigation: train Phase 2 with the strategy's hooks (:func:`cft_utils.train.execute`), or write the
post-hoc checkpoint from the finished Phase 1 and Phase 2 models. Either way the run folder gets
``mitigation.json`` (what was done, with the strategy's checks) and, last, its ``DONE`` marker."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

from .. import train
from ..config import ExperimentConfig
from ..integrity import clear_marker
from ..io import write_json
from ..plan import phase1_model_dir
from ..runs import RunPlan, mark_done, provenance, run_lock
from .registry import strategy_of


def execute_mitigation(run: RunPlan, cfg: ExperimentConfig, force: bool = False, callbacks: list | None = None,
                       progress: bool = True) -> Path:
    """Run one mitigation (skipped when done); returns its model folder (safetensors, merged for LoRA).

    Everything the run does comes from the run itself (``run.variant``: strategy and resolved parameters). One
    process at a time writes a run (the run lock; a second one waits, then reuses it); a run whose files were
    damaged, or whose training finished without its ``mitigation.json``, is completed or rebuilt."""
    if _complete(run) and not force:
        return run.model_dir
    lock = run_lock(run.dir, what=f"run {run.name} ({run.run_id})") if int(os.environ.get("RANK", "0")) == 0 \
        else nullcontext()
    with lock:
        if _complete(run) and not force:  # finished by another process while this one waited
            return run.model_dir
        return _execute(run, cfg, force, callbacks, progress)


def _complete(run: RunPlan) -> bool:
    return run.done() and (run.dir / "mitigation.json").exists()


def _execute(run: RunPlan, cfg: ExperimentConfig, force: bool, callbacks: list | None, progress: bool) -> Path:
    strategy = strategy_of(run)
    if strategy.kind == "posthoc":
        return _posthoc(strategy, run, cfg)
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    hooks = strategy.prepare(run, cfg, progress)
    hooks.info = {"kind": strategy.name, "params": run.variant.params, **hooks.info}
    train.execute(run, cfg, callbacks=[*(callbacks or []), *hooks.callbacks], force=force,
                  model_hook=hooks.model_hook, extra_records=hooks.extra_records, peft_config=hooks.peft_config,
                  summary_extra={"mitigation": hooks.info})
    strategy.finish(run, cfg, hooks, state.is_main_process)
    if state.is_main_process:
        write_json(run.dir / "mitigation.json", hooks.info)
        mark_done(run.dir, run.run_id)  # the manifest now lists mitigation.json and the strategy's files too
    state.wait_for_everyone()
    return run.model_dir


def _posthoc(strategy, run: RunPlan, cfg: ExperimentConfig) -> Path:
    t0 = time.time()
    for need in (run.parent, run.baseline):
        if not need.done():
            raise RuntimeError(f"{run.name}: needs {need.name} ({need.run_id}); run it first")
    p1, p2 = phase1_model_dir(cfg, run.parent), run.baseline.model_dir
    run.dir.mkdir(parents=True, exist_ok=True)
    clear_marker(run.dir)  # rebuilt in place: not done until marked again
    info = {"kind": strategy.name, **strategy.apply(run, cfg, p1, p2, run.model_dir), "p1": str(p1), "p2": str(p2)}
    write_json(run.dir / "mitigation.json", info)
    summary = {"name": run.name, "run_id": run.run_id, "phase": 2, "model": run.model,
               "phase1_data": run.phase1_data, "phase2_data": run.phase2_data, "strategy": run.strategy,
               "n_records": None, "global_steps": 0, "final_loss": None, "runtime_s": round(time.time() - t0, 2),
               "mitigation": info}
    write_json(run.dir / "run.json", {"name": run.name, "run_id": run.run_id, "resolved": run.resolved})
    write_json(run.dir / "summary.json", summary)
    write_json(run.dir / "provenance.json", provenance(seed=run.seed, config_file=cfg.source_file,
                                                       profile=cfg.profile, overrides=cfg.overrides))
    mark_done(run.dir, run.run_id)
    return run.model_dir


def execute_mitigations(runs: Sequence[RunPlan], cfg: ExperimentConfig, progress: bool = True) -> list[Path]:
    """Run each mitigation in turn (finished ones are skipped), printing one line per run."""
    out = []
    for run in runs:
        print(f"{run.name} ({run.run_id})", flush=True)
        out.append(execute_mitigation(run, cfg, progress=progress))
    return out
