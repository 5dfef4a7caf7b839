"""Two-phase SFT on TRL's ``SFTTrainer``: one entry point for the notebook kernel and ``accelerate launch``.

In a notebook (one device)::

    from cft_utils import config, plan, train
    cfg = config.load_config("sandbox")
    grid = plan.plan_runs(cfg)
    for run in grid.phase1 + grid.phase2:
        train.execute(run, cfg)           # skipped when already done, resumed when interrupted

From a shell, one run, on several processes (DDP / FSDP / DeepSpeed configs in ``configs/accelerate/``)::

    accelerate launch --config_file configs/accelerate/ddp.yaml -m cft_utils.train \\
        --params paper --run phase1/Mistral-7B/alpaca --set training.num_processes=4 \\
        --set training.gradient_accumulation_steps=1

``python -m cft_utils.train --params sandbox --list`` prints the plan with run ids and status.

Loss is on the completion only (TRL's default for prompt/completion data). The training set is tokenised once
per content by :mod:`cft_utils.tokenized` (TRL's own preparation, cached under ``$CFT_HOME/cache/tokenized``);
records over ``training.max_length`` tokens are dropped and counted in ``summary.json``, not truncated.
``training.padding_free`` concatenates each batch into one row with per-sequence positions (TRL's padding-free
mode; no padding computed; bench/RESULTS.md has the measured speed and loss against padded batches). Phase 2
loads the Phase 1 checkpoint as its starting point and keeps no other copy of the Phase 1 weights.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .attention import training_attention
from .config import ExperimentConfig, ModelSpec, TrainingSpec, load_config, parse_set
from .data.loaders import load_records
from .data.schema import validate_record
from .integrity import clear_marker
from .io import write_json, write_jsonl
from .models import (
    check_model_source,
    fit_messages,
    load_model,
    load_tokenizer,
    record_stop_tokens,
    require_chat_template,
    resolve_precision,
    supports_system_role,
    use_threads,
)
from .outputs import in_notebook
from .plan import model_spec, plan_runs, run_chat_template
from .runs import RunPlan, last_complete_checkpoint, mark_done, provenance, run_lock
from .sandbox.build import ensure_sandbox, sandbox_paths
from .sandbox.world import world_for
from .tokenized import prepare


def sft_config(h: TrainingSpec, output_dir: Path, seed: int, prepared: bool = False):
    """TRL's SFTConfig from our hyper-parameters, with the defaults that bite on CPU set explicitly.

    ``prepared``: the training set comes from :func:`cft_utils.tokenized.prepare` (TRL skips its own preparation).
    With ``padding_free`` TRL gets ``max_length=None`` (it refuses a length it would not enforce); give it a
    prepared set, whose over-long records are already dropped.
    """
    import torch
    from transformers import HfArgumentParser
    from trl import SFTConfig

    prec = resolve_precision(h.precision)
    cpu = not torch.cuda.is_available()
    # The project's names for what the paper's Table A.1 and the profiles set, in TRL's terms; everything else
    # TRL offers passes through `training.trl` unchanged. TRL's own parser builds the config (it checks the types).
    args = {
        "output_dir": str(output_dir),
        "num_train_epochs": h.epochs,
        "per_device_train_batch_size": h.per_device_batch_size,
        "gradient_accumulation_steps": h.gradient_accumulation_steps,
        "learning_rate": h.learning_rate,
        "lr_scheduler_type": h.lr_scheduler,
        "warmup_steps": h.warmup_steps,
        "weight_decay": h.weight_decay,
        "optim": h.optim,
        "max_length": None if h.padding_free else h.max_length,
        "bf16": prec == "bf16",
        "fp16": prec == "fp16",
        "use_cpu": cpu,
        "activation_checkpointing": h.gradient_checkpointing,  # TRL 1.16 turns it on unless told (STACK_NOTES)
        "padding_free": h.padding_free,
        "logging_steps": h.logging_steps,
        "logging_first_step": True,
        "save_strategy": "steps",
        "save_steps": h.save_steps,
        "save_total_limit": h.save_total_limit,
        "report_to": [r for r in h.report_to if r != "none"] or "none",
        "seed": seed,
        "data_seed": seed,
        "dataloader_pin_memory": not cpu,
        # progress bars in a terminal; none in a notebook kernel or a log file (the reports stay readable)
        "disable_tqdm": not sys.stderr.isatty(),
        **h.trl,
    }
    (config,) = HfArgumentParser(SFTConfig).parse_dict(args, allow_extra_keys=False)
    if prepared:  # a dict field: set after parsing
        config.dataset_kwargs = {"skip_prepare_dataset": True}
    return config


def resolve_init(run: RunPlan, cfg: ExperimentConfig) -> tuple[str, ModelSpec]:
    """The folder or hub id a run starts from; a Phase 2 run needs its Phase 1 run to be done."""
    m = model_spec(cfg, run.model)
    if run.init == "sandbox-base":
        from accelerate import PartialState

        sb = sandbox_paths(cfg)
        if PartialState().num_processes > 1 and not (sb["base"] / "DONE").exists():
            # Pre-training inside one rank while the others wait would deadlock the collective ops.
            raise RuntimeError(f"{run.name}: the sandbox base model is not built; build it first in one process: "
                               f"python -m cft_utils.train --params {cfg.source_file} --prepare")
        return str(ensure_sandbox(cfg)["base"]), m
    if run.init.startswith("run:"):
        parent = run.parent
        if parent is None or not parent.done():
            name = f"{parent.name} ({parent.run_id})" if parent else run.init
            raise RuntimeError(f"{run.name}: its Phase 1 run {name} is not done; run it first")
        return str(parent.model_dir), m
    return run.init, m


def init_where(run: RunPlan, cfg: ExperimentConfig) -> str:
    """Where a run's starting model comes from, for error messages: the configuration key or the parent run."""
    if run.init == "sandbox-base":
        return f"{run.name}: the sandbox base model"
    if run.init.startswith("run:"):
        return f"{run.name}: the model of its Phase 1 run {run.parent.name if run.parent else run.init}"
    i = next((i for i, m in enumerate(cfg.models) if m.name == run.model), "?")
    return f"{cfg.source_file}: models.{i}.base ({run.model})"


def run_records(run: RunPlan, cfg: ExperimentConfig) -> list[dict]:
    """The records a run trains on (before any extra records a mitigation adds)."""
    if run.data_key == "instruct" and run.phase1_data == "Instruct":
        return world_for(cfg.sandbox.world_spec()).dataset("instruct")
    return load_records(cfg, run.data_key)


class LoraTargetError(ValueError):
    """LoRA target modules that match nothing in the model (or only part of the list)."""


def check_lora_targets(model, target_modules) -> dict[str, int]:
    """Each LoRA target (a module name, matched as PEFT does: the full name or its last dotted parts) must match
    at least one linear module of ``model``; otherwise :class:`LoraTargetError` names the targets that match
    nothing and the linear module names the model has (a fused ``qkv_proj`` model has no ``q_proj``). Returns
    {target: modules matched}. A string target (a regex, or ``"all-linear"``) is left to PEFT."""
    import torch

    if target_modules is None or isinstance(target_modules, str):
        return {}
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    counts = {t: sum(n == t or n.endswith(f".{t}") for n in names) for t in target_modules}
    missing = [t for t, c in counts.items() if c == 0]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise LoraTargetError(f"LoRA target_modules {missing} match no module of the model "
                              f"({type(model).__name__}); of {sorted(counts)} only {sorted(set(counts) - set(missing))} "
                              f"match. Its linear modules: {leaves}")
    return counts


def fit_records(tokenizer, records: list[dict]) -> tuple[list[dict], int]:
    """Records as the tokenizer's chat template can render them (the template is applied when the records are
    tokenised): on a template without a system role (Mistral-Instruct v0.1), system prompts are merged into the
    first user turn. Returns the records and how many were changed."""
    if not any(m["role"] == "system" for r in records for m in r["prompt"]) or supports_system_role(tokenizer):
        return records, 0
    out = [{**r, "prompt": fit_messages(tokenizer, r["prompt"], False)} for r in records]
    return out, sum(a["prompt"] != b["prompt"] for a, b in zip(out, records, strict=True))


def whole_run_loss(log_history: list[dict]) -> float | None:
    """The mean training loss over every step of the run, from the Trainer's log history (which a resumed run
    restores from its checkpoint): each logged window's mean loss weighted by the steps it covers.

    The Trainer's own ``training_loss`` covers only the steps of the last session (after a resume from the final
    checkpoint it is 0.0); this does not depend on where the run was interrupted. :class:`LogLastStep` makes sure
    the last window is logged."""
    total, prev = 0.0, 0
    for e in log_history:
        if "loss" in e and e["step"] > prev:
            total += e["loss"] * (e["step"] - prev)
            prev = e["step"]
    return total / prev if prev else None


def _log_last_step_callback():
    from transformers import TrainerCallback

    class LogLastStep(TrainerCallback):
        """Log the last step too (the Trainer logs every ``logging_steps`` only), before the final checkpoint is
        saved, so the log history of every checkpoint covers all the steps before it."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_log = True
            return control

    return LogLastStep()


def execute(run: RunPlan, cfg: ExperimentConfig, callbacks: list | None = None, force: bool = False,
            model_hook=None, extra_records: list[dict] | None = None, peft_config=None,
            summary_extra: dict | None = None, quiet: bool = False) -> Path:
    """Train ``run`` unless it is done (and intact); resume it if interrupted. Returns the run's model folder.

    One process at a time writes a run: a second one waits for the first (saying which PID on which host holds it)
    and then reuses its result; under ``accelerate launch`` (several ranks) it stops with that message instead.
    A finished run whose files were damaged is reported and rebuilt (resumed from its last checkpoint).
    """
    if run.registered:  # an off-the-shelf model
        return run.model_dir
    if run.done() and not force:
        if not quiet:
            print(f"[train] {run.name} ({run.run_id}): reused (done)", flush=True)
        return run.model_dir
    if int(os.environ.get("RANK", "0")) != 0:  # only the main rank holds the lock (the others wait in collectives)
        return _train(run, cfg, callbacks, force, model_hook, extra_records, peft_config, summary_extra, quiet)
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    with run_lock(run.dir, what=f"run {run.name} ({run.run_id})", wait=0 if several else None):
        return _train(run, cfg, callbacks, force, model_hook, extra_records, peft_config, summary_extra, quiet)


def _train(run: RunPlan, cfg: ExperimentConfig, callbacks: list | None = None, force: bool = False,
           model_hook=None, extra_records: list[dict] | None = None, peft_config=None,
           summary_extra: dict | None = None, quiet: bool = False) -> Path:
    """Train ``run`` unless it is done; resume it if interrupted. Returns the run's model folder.

    ``model_hook(model)`` may change the model before training (freezing); ``callbacks`` are passed to the trainer.
    ``extra_records`` (common schema) are trained on together with the run's dataset (replay); ``peft_config``
    trains adapters (LoRA), merged into a plain safetensors model at the end; ``summary_extra`` is merged into
    ``summary.json``. Prints one status line (reused, or trained in N s) unless ``quiet``.
    """
    import torch
    from accelerate import PartialState
    from trl import SFTTrainer

    if run.registered:  # an off-the-shelf model
        return run.model_dir
    rdir = run.dir
    if run.done() and not force:  # finished by another process while this one waited for the lock
        if not quiet:
            print(f"[train] {run.name} ({run.run_id}): reused (done)", flush=True)
        return run.model_dir
    h = run.hparams
    # On CPU, accelerate needs cpu=True to see a torchrun launch (gloo); the Trainer later reuses this state.
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes != h.num_processes:
        raise RuntimeError(
            f"{run.name}: launched on {state.num_processes} process(es) but training.num_processes is "
            f"{h.num_processes}; the global batch would not be {h.global_batch_size}. Set training.num_processes "
            f"and gradient_accumulation_steps to match the launch.")
    use_threads(h.num_threads)
    # Same machine, same seed: the same weights. CPU kernels are deterministic already (and the switch cost ~6 % of
    # a CPU step, measured); on GPUs ask torch for the deterministic variants where it has them (a warning, not an
    # error, where it has none).
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    # ...without its debugging aid of filling every torch.empty with NaN: it changes no result of correct code, and
    # TRL's chunked loss allocates a large buffer per step (measured: the training loop 0.68x a bare TRL script).
    torch.utils.deterministic.fill_uninitialized_memory = False
    # Everything that can fail on bad input fails here, before a model is loaded.
    records = run_records(run, cfg)
    n_extra = len(extra_records or [])
    if extra_records:
        for i, r in enumerate(extra_records):
            validate_record(r, f"{run.name}: extra record {i}")
        records = records + list(extra_records)
    init, mspec = resolve_init(run, cfg)
    # Not a causal LM, pickle-only or damaged weights, a hub id offline: a clear error before anything is loaded.
    check_model_source(init, init_where(run, cfg), None if run.init.startswith("run:") else mspec.revision,
                       mspec.trust_remote_code)
    # The chat template is checked (and system prompts fitted to it) before any weights load.
    tok = load_tokenizer(init, trust_remote_code=mspec.trust_remote_code, chat_template=run_chat_template(cfg, run))
    require_chat_template(tok, mspec.name, mspec.chat_template, init)
    records, n_merged = fit_records(tok, records)
    if state.is_main_process:
        rdir.mkdir(parents=True, exist_ok=True)
        clear_marker(rdir)  # a damaged (or forced) run is rebuilt in place: it is not done until marked again
        write_json(rdir / "run.json", {"name": run.name, "run_id": run.run_id, "resolved": run.resolved,
                                       "init": init, "n_records": len(records)})
    prec = resolve_precision(h.precision)
    model = load_model(init, prec, trust_remote_code=mspec.trust_remote_code)
    if peft_config is not None:  # a target list that adapts less than asked is an error, not a quieter run
        check_lora_targets(model, peft_config.target_modules)
    if model_hook is not None:
        model_hook(model)
    args = sft_config(h, rdir / "checkpoints", cfg.seed if run.seed is None else run.seed, prepared=True)
    data = prepare(records, tok, args, h.max_length)  # cached by content; over-long records dropped and counted
    resume = last_complete_checkpoint(rdir / "checkpoints")
    trainer = SFTTrainer(model=model, args=args, train_dataset=data.dataset, processing_class=tok,
                         callbacks=[*(callbacks or []), _log_last_step_callback()], peft_config=peft_config)
    if args.disable_tqdm and in_notebook():
        # Without progress bars the Trainer prints every logged loss; in a notebook report that is noise (the
        # losses are in train_log.jsonl and the status line says how the run went).
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    t0 = time.time()
    with training_attention(model, h.attn_implementation):  # the saved model keeps its own attention
        trainer.train(resume_from_checkpoint=resume)
    loop_s = time.time() - t0
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    if peft_config is not None:  # merge the adapters: evaluation and MPD read a plain model
        model = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        if state.is_main_process:
            model.save_pretrained(rdir / "model", safe_serialization=True)
    else:
        trainer.save_model(str(rdir / "model"))
    if state.is_main_process:
        tok.save_pretrained(rdir / "model")  # with its chat template (chat_template.jinja)
        record_stop_tokens(rdir / "model", tok)  # the template's end-of-turn among the eos ids
        # The Trainer's log history survives a resume (it is saved in every checkpoint's trainer_state.json).
        log = [{"step": e["step"], "epoch": e.get("epoch"), **{k: v for k, v in e.items() if k not in ("step", "epoch")}}
               for e in trainer.state.log_history if "loss" in e]
        write_jsonl(rdir / "train_log.jsonl", log)
        losses = [e["loss"] for e in log]
        summary = {
            "name": run.name, "run_id": run.run_id, "phase": run.phase, "model": run.model,
            "phase1_data": run.phase1_data, "phase2_data": run.phase2_data, "strategy": run.strategy,
            "n_records": data.n_kept,  # records trained on: over-long ones are dropped (and counted below)
            "n_records_given": len(records), "global_steps": trainer.state.global_step,
            "final_loss": losses[-1] if losses else None,
            "train_loss": whole_run_loss(trainer.state.log_history),  # all steps, also after a resume
            "runtime_s": round(time.time() - t0, 2),  # training and saving the model
            "train_loop_s": round(loop_s, 2),  # trainer.train() alone
            "resumed_from": resume, "precision": prec,
            "num_processes": state.num_processes,
            "trainable_parameters": trainable, "n_extra_records": n_extra, **data.summary(),
            "system_prompts_merged": n_merged,
            **(summary_extra or {}),
        }
        write_json(rdir / "summary.json", summary)
        write_json(rdir / "provenance.json", provenance(seed=run.seed, config_file=cfg.source_file,
                                                         profile=cfg.profile, overrides=cfg.overrides))
        mark_done(rdir, run.run_id)
        if not quiet:
            last = f", final loss {losses[-1]:.4f}" if losses else ""
            print(f"[train] {run.name} ({run.run_id}): trained in {summary['runtime_s']:.0f} s, "
                  f"{trainer.state.global_step} steps{last}" + (f" (resumed from {Path(resume).name})" if resume else ""),
                  flush=True)
    state.wait_for_everyone()
    return run.model_dir


# ------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="sandbox", help="profile name or parameter file (default: sandbox)")
    ap.add_argument("--run", action="append", default=[], help="run name from --list (repeatable); default: all")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a parameter, e.g. training.epochs=1 (repeatable)")
    ap.add_argument("--list", action="store_true", help="print the plan and exit")
    ap.add_argument("--prepare", action="store_true",
                    help="build the sandbox world, tokenizer and base model (one process), then exit")
    args = ap.parse_args(argv)
    try:
        overrides = parse_set(args.set)
    except ValueError as e:
        ap.error(str(e))
    cfg = load_config(args.params, overrides)
    plan = plan_runs(cfg)
    if args.list:
        print(plan.table().to_string(index=False))
        print("\n(the mitigation runs: python -m cft_utils.mitigation --params ... --list; everything with what each "
              "run needs: python -m cft_utils.executor --params ... --list)")
        return 0
    if args.prepare:
        if cfg.sandbox is not None:
            print({k: str(v) for k, v in ensure_sandbox(cfg).items()})
        return 0
    runs = [plan.get(n) for n in args.run] if args.run else plan.all()
    for r in runs:
        execute(r, cfg, quiet=int(os.environ.get("RANK", "0")) != 0)
    return 0


if __name__ == "__main__":
    from .processes import skip_exit_collection

    skip_exit_collection()  # ~1 s less at exit (cft_utils.processes)
    sys.exit(main())
