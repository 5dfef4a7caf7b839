"""Two-phase SFT on TRL's ``SFTTrainer``: one entry point for the notebook kernel and ``accelerate launch``.

In a notebook (one device)::

    from cft_utils import config, train
    cfg = config.load_config("sandbox")
    plan = train.plan_runs(cfg)
    for run in plan.phase1 + plan.phase2:
        train.execute(run, cfg)           # skipped when already done, resumed when interrupted

From a shell, one run, on several processes (DDP / FSDP / DeepSpeed configs in ``configs/accelerate/``)::

    accelerate launch --config_file configs/accelerate/ddp.yaml -m cft_utils.train \\
        --params paper --run phase1/Mistral-7B/alpaca --set training.num_processes=4 \\
        --set training.gradient_accumulation_steps=1

``python -m cft_utils.train --params sandbox --list`` prints the plan with run ids and status.

Loss is on the completion only (TRL's default for prompt/completion data). Batches are padded per batch
(``padding_free`` is a parameter: TRL's padding-free mode keeps sequences separate and is the better choice
on GPUs with flash attention; on CPU it measured slower, see STACK_NOTES). Phase 2 loads the Phase 1
checkpoint as its starting point and keeps no other copy of the Phase 1 weights.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ExperimentConfig, ModelSpec, TrainingSpec, load_config
from .io import read_json, write_json
from .paths import cft_home
from .runs import is_done, last_complete_checkpoint, provenance, run_dir, run_id

# Hyper-parameters that do not change what is learnt: left out of run ids.
_NON_SEMANTIC = {"report_to", "num_threads", "save_steps", "save_total_limit", "logging_steps"}


@dataclass
class RunPlan:
    """One training run of the grid, fully resolved (its id is a hash of ``resolved``)."""

    name: str  # e.g. "phase2/tiny-llama/alpaca->multialpaca"
    phase: int  # 1 or 2 (the sandbox Instruct build counts as phase 1)
    model: str
    phase1_data: str  # dataset key or "Instruct"
    phase2_data: str | None
    strategy: str
    data_key: str | None  # dataset trained on (None: registered without training)
    init: str  # "sandbox-base", a hub id / local dir, or "run:<id>"
    hparams: TrainingSpec
    resolved: dict[str, Any]
    run_id: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return run_dir(self.run_id)

    @property
    def model_dir(self) -> Path:
        """Where the trained weights are (for a registered Instruct model: its hub id or folder)."""
        if self.data_key is None:
            return Path(self.init)
        return self.dir / "model"

    def done(self) -> bool:
        return self.data_key is None or is_done(self.dir)


@dataclass
class Plan:
    phase1: list[RunPlan]
    phase2: list[RunPlan]

    def all(self) -> list[RunPlan]:
        return self.phase1 + self.phase2

    def get(self, name: str) -> RunPlan:
        for r in self.all():
            if r.name == name:
                return r
        raise KeyError(f"no run named {name!r}; runs: {[r.name for r in self.all()]}")

    def table(self):
        import pandas as pd

        return pd.DataFrame([{"name": r.name, "run_id": r.run_id, "phase": r.phase, "model": r.model,
                              "phase1_data": r.phase1_data, "phase2_data": r.phase2_data or "",
                              "strategy": r.strategy, "done": r.done()} for r in self.all()])


def _base_identity(cfg: ExperimentConfig, m: ModelSpec) -> dict:
    if m.base == "sandbox":
        return {"sandbox_world": cfg.sandbox.world_spec().world_id(), "sandbox_model": cfg.sandbox.model.model_dump()}
    return {"base": m.base, "revision": m.revision}


def _data_identity(cfg: ExperimentConfig, key: str) -> dict:
    spec = cfg.datasets[key].model_dump()
    if cfg.datasets[key].source == "sandbox":
        spec["name"] = spec["name"] or key  # the key names the world's dataset
        spec["world"] = cfg.sandbox.world_spec().world_id()
    return spec


def _hp(h: TrainingSpec) -> dict:
    return h.model_dump(exclude=_NON_SEMANTIC)


def plan_runs(cfg: ExperimentConfig, strategy: str = "none") -> Plan:
    """Resolve the profile's grid into runs with content-addressed ids (nothing is trained here)."""
    p1, p2 = [], []
    for mname in cfg.grid.models:
        m = next(x for x in cfg.models if x.name == mname)
        base = _base_identity(cfg, m)
        parents: dict[str, RunPlan] = {}
        for key in cfg.grid.phase1:
            resolved = {"phase": 1, "base": base, "data": _data_identity(cfg, key), "hparams": _hp(cfg.training),
                        "seed": cfg.seed}
            r = RunPlan(f"phase1/{mname}/{key}", 1, mname, key, None, "none", key, "sandbox-base"
                        if m.base == "sandbox" else m.base, cfg.training, resolved, run_id(resolved, "p1"))
            parents[key] = r
            p1.append(r)
        if m.instruct and any(r.phase1 == "Instruct" for r in cfg.grid.phase2):
            if m.instruct == "sandbox":
                resolved = {"phase": 1, "base": base, "data": {"sandbox_instruct": cfg.sandbox.world_spec().world_id(),
                            "mix": cfg.sandbox.instruct_mix}, "hparams": _hp(cfg.training), "seed": cfg.seed}
                r = RunPlan(f"phase1/{mname}/Instruct", 1, mname, "Instruct", None, "none", "instruct",
                            "sandbox-base", cfg.training, resolved, run_id(resolved, "p1"))
            else:  # an off-the-shelf Instruct model: registered as a Phase 1 checkpoint without training
                resolved = {"phase": 1, "registered": m.instruct, "revision": m.revision}
                r = RunPlan(f"phase1/{mname}/Instruct", 1, mname, "Instruct", None, "none", None, m.instruct,
                            cfg.training, resolved, run_id(resolved, "p1"))
            parents["Instruct"] = r
            p1.append(r)
        h2 = cfg.phase2_hparams
        for cell in cfg.grid.phase2:
            parent = parents[cell.phase1]
            resolved = {"phase": 2, "parent": parent.run_id, "data": _data_identity(cfg, cell.data), "hparams": _hp(h2),
                        "seed": cfg.seed, "strategy": strategy}
            p2.append(RunPlan(f"phase2/{mname}/{cell.phase1}->{cell.data}", 2, mname, cell.phase1, cell.data,
                              strategy, cell.data, f"run:{parent.run_id}", h2, resolved, run_id(resolved, "p2"),
                              extra={"parent": parent}))
    return Plan(p1, p2)


# ------------------------------------------------------------------------------------------- sandbox


def sandbox_paths(cfg: ExperimentConfig) -> dict[str, Path]:
    from .sandbox import BaseModelSpec, world_dir

    wd = world_dir(cfg.sandbox.world_spec(), cft_home())
    spec = BaseModelSpec(**cfg.sandbox.model.model_dump(), seed=cfg.seed)
    return {"world": wd, "tokenizer": wd / "tokenizer", "base": wd / f"base-{spec.model_id()}"}


def ensure_sandbox(cfg: ExperimentConfig) -> dict[str, Path]:
    """Build (once) the sandbox world's data dump, tokenizer and pre-trained base model."""
    from .io import write_jsonl
    from .sandbox import SANDBOX_DATASETS, BaseModelSpec, World, build_tokenizer, pretrain_base_model

    paths = sandbox_paths(cfg)
    world = World(cfg.sandbox.world_spec())
    if not (paths["world"] / "world.json").exists():
        for name in SANDBOX_DATASETS:
            if name != "mopenorca":  # built by selective translation on first use (cft_utils.data)
                write_jsonl(paths["world"] / "data" / f"{name}.jsonl", world.dataset(name))
        write_jsonl(paths["world"] / "data" / "corpus.jsonl", ({"text": t} for t in world.corpus()))
        write_json(paths["world"] / "lexicon.json", world.lexicon)
        write_json(paths["world"] / "facts.json", {k: v.__dict__ for k, v in world.facts.items()})
        write_json(paths["world"] / "world.json", world.describe())
    tok = build_tokenizer(world, paths["tokenizer"], vocab_size=cfg.sandbox.model.vocab_size)
    spec = BaseModelSpec(**cfg.sandbox.model.model_dump(), seed=cfg.seed)
    pretrain_base_model(world, tok, spec, paths["base"], num_threads=cfg.training.num_threads)
    return paths


# ------------------------------------------------------------------------------------------- training


def use_profile_threads(cfg: ExperimentConfig) -> int:
    """Set torch's CPU threads to the profile's ``training.num_threads`` (when set, and only on CPU).

    On a busy 2-core machine one thread measured ~10x faster than two for the tiny models' generation and
    encoding (see STACK_NOTES); returns the thread count in use.
    """
    import torch

    if cfg.training.num_threads and not torch.cuda.is_available():
        torch.set_num_threads(cfg.training.num_threads)
    return torch.get_num_threads()


def _precision(h: TrainingSpec) -> str:
    import torch

    if h.precision != "auto":
        return h.precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def sft_config(h: TrainingSpec, output_dir: Path, seed: int):
    """TRL's SFTConfig from our hyper-parameters, with the defaults that bite on CPU set explicitly."""
    import torch
    from trl import SFTConfig

    prec = _precision(h)
    cpu = not torch.cuda.is_available()
    return SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=h.epochs,
        per_device_train_batch_size=h.per_device_batch_size,
        gradient_accumulation_steps=h.gradient_accumulation_steps,
        learning_rate=h.learning_rate,
        lr_scheduler_type=h.lr_scheduler,
        warmup_steps=h.warmup_steps,
        weight_decay=h.weight_decay,
        optim=h.optim,
        max_length=h.max_length,
        bf16=prec == "bf16",
        fp16=prec == "fp16",
        use_cpu=cpu,
        activation_checkpointing=h.gradient_checkpointing,
        padding_free=h.padding_free,
        logging_steps=h.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=h.save_steps,
        save_total_limit=h.save_total_limit,
        report_to=[r for r in h.report_to if r != "none"] or "none",
        seed=seed,
        data_seed=seed,
        dataloader_pin_memory=not cpu,
        disable_tqdm=False,
    )


def load_model(path: str | Path, precision: str = "fp32", trust_remote_code: bool = False, revision=None):
    """A causal LM from a folder or hub id (safetensors only; remote code off unless asked)."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float32, "fp32": torch.float32}[precision]
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, use_safetensors=True,
                                                trust_remote_code=trust_remote_code, revision=revision)


def load_tokenizer(path: str | Path, trust_remote_code: bool = False, revision=None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code, revision=revision)
    if tok.pad_token is None:  # LLaMA-3 and Mistral ship without a pad token
        tok.pad_token = tok.eos_token
    return tok


def resolve_init(run: RunPlan, cfg: ExperimentConfig) -> tuple[str, ModelSpec]:
    """The folder or hub id a run starts from; a Phase 2 run needs its Phase 1 run to be done."""
    m = next(x for x in cfg.models if x.name == run.model)
    if run.init == "sandbox-base":
        from accelerate import PartialState

        sb = sandbox_paths(cfg)
        if PartialState().num_processes > 1 and not (sb["base"] / "DONE").exists():
            # Pre-training inside one rank while the others wait would deadlock the collective ops.
            raise RuntimeError(f"{run.name}: the sandbox base model is not built; build it first in one process: "
                               f"python -m cft_utils.train --params {cfg.source_file} --prepare")
        return str(ensure_sandbox(cfg)["base"]), m
    if run.init.startswith("run:"):
        parent: RunPlan = run.extra["parent"]
        if not parent.done():
            raise RuntimeError(f"{run.name}: its Phase 1 run {parent.name} ({parent.run_id}) is not done; run it first")
        return str(parent.model_dir), m
    return run.init, m


class _LossLog:
    """A TrainerCallback that appends each logged loss to ``train_log.jsonl`` (main process only)."""

    def __new__(cls, path: Path):
        from transformers import TrainerCallback

        class LossLog(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kw):
                if state.is_world_process_zero and logs and "loss" in logs:
                    import json

                    with open(path, "a", encoding="utf-8") as f:
                        f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")

        return LossLog()


def execute(run: RunPlan, cfg: ExperimentConfig, callbacks: list | None = None, force: bool = False,
            model_hook=None, extra_records: list[dict] | None = None, peft_config=None,
            summary_extra: dict | None = None) -> Path:
    """Train ``run`` unless it is done; resume it if interrupted. Returns the run's model folder.

    ``model_hook(model)`` may change the model before training (the mitigation issue freezes layers here);
    ``callbacks`` are passed to the trainer. ``extra_records`` (common schema) are trained on together with the
    run's dataset (replay); ``peft_config`` trains adapters (LoRA), merged into a plain safetensors model at the
    end; ``summary_extra`` is merged into ``summary.json`` (e.g. the replay mix's make-up).
    """
    import torch
    from accelerate import PartialState
    from trl import SFTTrainer

    from .data import load_records, to_hf_dataset

    if run.data_key is None:  # a registered off-the-shelf model
        return run.model_dir
    rdir = run.dir
    if run.done() and not force:
        return run.model_dir
    h = run.hparams
    # On CPU, accelerate needs cpu=True to see a torchrun launch (gloo); the Trainer later reuses this state.
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes != h.num_processes:
        raise RuntimeError(
            f"{run.name}: launched on {state.num_processes} process(es) but training.num_processes is "
            f"{h.num_processes}; the global batch would not be {h.global_batch_size}. Set training.num_processes "
            f"and gradient_accumulation_steps to match the launch.")
    if h.num_threads and not torch.cuda.is_available():
        torch.set_num_threads(h.num_threads)
    # Everything that can fail on bad input fails here, before a model is loaded.
    if run.data_key == "instruct" and run.phase1_data == "Instruct":
        from .sandbox import World

        records = World(cfg.sandbox.world_spec()).dataset("instruct")
    else:
        records = load_records(cfg, run.data_key)
    n_extra = len(extra_records or [])
    if extra_records:
        from .data import validate_record

        for i, r in enumerate(extra_records):
            validate_record(r, f"{run.name}: extra record {i}")
        records = records + list(extra_records)
    init, mspec = resolve_init(run, cfg)
    if state.is_main_process:
        rdir.mkdir(parents=True, exist_ok=True)
        write_json(rdir / "run.json", {"name": run.name, "run_id": run.run_id, "resolved": run.resolved,
                                       "init": init, "n_records": len(records)})
    prec = _precision(h)
    tok = load_tokenizer(init, mspec.trust_remote_code)
    model = load_model(init, prec, mspec.trust_remote_code)
    if model_hook is not None:
        model_hook(model)
    args = sft_config(h, rdir / "checkpoints", cfg.seed)
    log_path = rdir / "train_log.jsonl"
    resume = last_complete_checkpoint(rdir / "checkpoints")
    if state.is_main_process and log_path.exists():
        # keep only the entries up to the checkpoint we resume from (later ones will be logged again)
        import json

        step = int(Path(resume).name.split("-")[1]) if resume else 0
        kept = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        log_path.write_text("".join(x + "\n" for x in kept))
    trainer = SFTTrainer(model=model, args=args, train_dataset=to_hf_dataset(records), processing_class=tok,
                         callbacks=[_LossLog(log_path), *(callbacks or [])], peft_config=peft_config)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    if peft_config is not None:  # merge the adapters: evaluation and MPD read a plain model
        model = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        if state.is_main_process:
            model.save_pretrained(rdir / "model", safe_serialization=True)
    else:
        trainer.save_model(str(rdir / "model"))
    if state.is_main_process:
        tok.save_pretrained(rdir / "model")
        losses = [h_["loss"] for h_ in trainer.state.log_history if "loss" in h_]
        summary = {
            "name": run.name, "run_id": run.run_id, "phase": run.phase, "model": run.model,
            "phase1_data": run.phase1_data, "phase2_data": run.phase2_data, "strategy": run.strategy,
            "n_records": len(records), "global_steps": trainer.state.global_step,
            "final_loss": losses[-1] if losses else None, "train_loss": result.training_loss,
            "runtime_s": round(time.time() - t0, 2), "resumed_from": resume, "precision": prec,
            "num_processes": state.num_processes,
            "trainable_parameters": trainable, "n_extra_records": n_extra, **(summary_extra or {}),
        }
        write_json(rdir / "summary.json", summary)
        write_json(rdir / "provenance.json", provenance(seed=cfg.seed, config_file=cfg.source_file,
                                                         profile=cfg.profile))
        write_json(rdir / "DONE", {"run_id": run.run_id})
    state.wait_for_everyone()
    return run.model_dir


def run_summary(run: RunPlan) -> dict | None:
    p = run.dir / "summary.json"
    return read_json(p) if p.exists() else None


def train_log(run: RunPlan) -> list[dict]:
    from .io import read_jsonl

    p = run.dir / "train_log.jsonl"
    return read_jsonl(p) if p.exists() else []


# ------------------------------------------------------------------------------------------- CLI


def parse_overrides(pairs: list[str]) -> dict:
    """``["training.epochs=1", ...]`` -> ``{"training.epochs": 1}`` (values parsed as YAML)."""
    import yaml

    overrides = {}
    for kv in pairs:
        if "=" not in kv:
            raise ValueError(f"--set expects KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        overrides[k] = yaml.safe_load(v)
    return overrides


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
        overrides = parse_overrides(args.set)
    except ValueError as e:
        ap.error(str(e))
    cfg = load_config(args.params, overrides)
    plan = plan_runs(cfg)
    if args.list:
        print(plan.table().to_string(index=False))
        return 0
    if args.prepare:
        if cfg.sandbox is not None:
            print({k: str(v) for k, v in ensure_sandbox(cfg).items()})
        return 0
    runs = [plan.get(n) for n in args.run] if args.run else plan.all()
    for r in runs:
        execute(r, cfg)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"done: {r.name} -> {r.model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
