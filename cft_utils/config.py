"""Typed experiment configuration, loaded from a YAML parameter file and validated before any compute.

A profile is a parameter file (``params/<profile>.yaml``): ``sandbox`` (default), ``smoke`` (smallest, for
tests) and ``paper``. The profiles differ in values only; the code path is one.

Validation is strict: unknown keys, wrong types, impossible values (a global batch that is not
per-device batch x accumulation x processes, a Phase 2 run whose Phase 1 data is not in the grid, ...) and
missing local files raise :class:`ConfigError`, whose message names the file and the key.

Example::

    from cft_utils.config import load_config
    cfg = load_config("sandbox")            # or a path: load_config("params/paper.yaml")
    cfg.training.learning_rate              # 2e-05
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .paths import PROJECT_ROOT, params_file


class ConfigError(ValueError):
    """A parameter file is invalid; the message names the file and the offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------- models


class ModelSpec(_Strict):
    """A base model and (optionally) its off-the-shelf instruction-tuned version."""

    name: str = Field(description="Short name used in run ids, tables and figures, e.g. 'Mistral-7B'.")
    base: str = Field(description="Hub id, local directory, or 'sandbox' (the world's pre-trained tiny LM).")
    instruct: str | None = Field(
        default=None,
        description="Hub id or local directory of the Instruct model, or 'sandbox' (built from the world's "
        "English instruction mixture). Registered as a Phase 1 checkpoint without training.",
    )
    revision: str | None = Field(default=None, description="Hub revision (commit) to pin, for reproducibility.")
    trust_remote_code: bool = Field(default=False, description="Kept off unless you trust the model's code.")


class SandboxModelSpec(_Strict):
    """Architecture and pre-training of the sandbox base LM (see cft_utils.sandbox.BaseModelSpec)."""

    arch: Literal["llama", "mistral", "qwen2"] = "llama"
    hidden_size: Annotated[int, Field(gt=0)] = 192
    num_layers: Annotated[int, Field(gt=0)] = 6
    num_heads: Annotated[int, Field(gt=0)] = 6
    intermediate_size: Annotated[int, Field(gt=0)] = 512
    vocab_size: Annotated[int, Field(ge=300)] = 2048
    block_size: Annotated[int, Field(gt=8)] = 128
    batch_size: Annotated[int, Field(gt=0)] = 16
    epochs: Annotated[float, Field(gt=0)] = 2.0
    learning_rate: Annotated[float, Field(gt=0, lt=1)] = 3e-3
    warmup_steps: Annotated[int, Field(ge=0)] = 30

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self


class SandboxSpec(_Strict):
    """The synthetic world (see cft_utils.sandbox.WorldSpec)."""

    seed: int = 1234
    languages: list[str] = Field(default_factory=lambda: ["en", "qaa", "qab", "qac", "qad", "qae"])
    constraint_rate: Annotated[float, Field(ge=0, le=1)] = 0.15
    n_phase1: Annotated[int, Field(gt=0)] = 1200
    n_phase2_per_language: Annotated[int, Field(gt=0)] = 240
    n_instruct: Annotated[int, Field(gt=0)] = 1600
    n_test_per_language: Annotated[int, Field(gt=0)] = 60
    instruct_mix: dict[Literal["A", "B", "C"], Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {"A": 0.2, "B": 0.4, "C": 0.4})
    n_corpus_documents: Annotated[int, Field(gt=0)] = 6000
    model: SandboxModelSpec = Field(default_factory=SandboxModelSpec)

    @field_validator("languages")
    @classmethod
    def _languages(cls, v):
        from .sandbox import LANGUAGE_INVENTORY

        if "en" not in v:
            raise ValueError("the sandbox needs English ('en') among its languages")
        unknown = [x for x in v if x != "en" and x not in LANGUAGE_INVENTORY]
        if unknown:
            raise ValueError(f"unknown sandbox languages {unknown}; known: ['en'] + {sorted(LANGUAGE_INVENTORY)}")
        if len(v) < 2 or len(set(v)) != len(v):
            raise ValueError("need English and at least one other language, each once")
        return v

    @field_validator("instruct_mix")
    @classmethod
    def _mix(cls, v):
        if abs(sum(v.values()) - 1) > 1e-6:
            raise ValueError(f"instruct_mix shares must sum to 1 (got {sum(v.values()):.3f})")
        return v

    def world_spec(self):
        from .sandbox import WorldSpec

        d = self.model_dump(exclude={"model"})
        return WorldSpec(**d)


# --------------------------------------------------------------------------------------------- data


class DatasetSpec(_Strict):
    """One instruction dataset, normalised to the common chat schema by cft_utils.data."""

    source: Literal["sandbox", "alpaca", "multialpaca", "openorca", "mopenorca", "jsonl"] = Field(
        description="Which loader reads it: 'sandbox' (the world), a paper dataset's loader, or 'jsonl' "
        "(records already in the common schema)."
    )
    path: str | None = Field(default=None, description="Hub id or local file/folder (not for 'sandbox').")
    name: str | None = Field(default=None, description="For 'sandbox': which world dataset (defaults to the key).")
    languages: list[str] | None = Field(default=None, description="Keep only these languages (None: all).")
    max_records: Annotated[int, Field(gt=0)] | None = Field(
        default=None, description="Seeded random subset of this size (None: all).")
    revision: str | None = None

    @model_validator(mode="after")
    def _path_needed(self):
        if self.source != "sandbox" and not self.path:
            raise ValueError(f"source '{self.source}' needs a 'path' (hub id or local file)")
        return self


# --------------------------------------------------------------------------------------------- training


class TrainingSpec(_Strict):
    """Hyper-parameters of one SFT phase (the paper's Table A.1 are the defaults)."""

    epochs: Annotated[float, Field(gt=0)] = 4
    learning_rate: Annotated[float, Field(gt=0, lt=1)] = Field(
        default=2e-5, description="Lost from the paper's Table A.1 in extraction; 2e-5 is our default.")
    global_batch_size: Annotated[int, Field(gt=0)] = 16
    per_device_batch_size: Annotated[int, Field(gt=0)] = 4
    gradient_accumulation_steps: Annotated[int, Field(gt=0)] = 4
    num_processes: Annotated[int, Field(gt=0)] = Field(
        default=1, description="Processes the global batch is split over (accelerate launch --num_processes).")
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    warmup_steps: Annotated[int, Field(ge=0)] = 10
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    optim: Literal["adamw_torch", "adamw_torch_fused", "adamw_8bit"] = "adamw_torch"
    max_length: Annotated[int, Field(gt=8)] = 2048
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto", description="'auto': bf16 where the hardware has it, else fp32.")
    padding_free: bool = Field(
        default=False, description="TRL padding-free batching (a win on GPU with flash attention; slower on CPU).")
    gradient_checkpointing: bool = False
    logging_steps: Annotated[int, Field(gt=0)] = 10
    save_steps: Annotated[int, Field(gt=0)] = 200
    save_total_limit: Annotated[int, Field(gt=0)] = 2
    report_to: list[Literal["none", "tensorboard", "wandb"]] = Field(default_factory=lambda: ["none"])
    num_threads: Annotated[int, Field(gt=0)] | None = Field(
        default=None, description="torch CPU threads (None: torch's default).")

    @model_validator(mode="after")
    def _batch_adds_up(self):
        product = self.per_device_batch_size * self.gradient_accumulation_steps * self.num_processes
        if product != self.global_batch_size:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} != per_device_batch_size {self.per_device_batch_size}"
                f" x gradient_accumulation_steps {self.gradient_accumulation_steps} x num_processes "
                f"{self.num_processes} = {product}")
        if self.save_steps % self.logging_steps:
            raise ValueError(f"save_steps ({self.save_steps}) must be a multiple of logging_steps "
                             f"({self.logging_steps}) so a resumed run logs the same losses")
        return self


class Phase2Run(_Strict):
    """One Phase 2 cell of the grid: continue a Phase 1 checkpoint on ``data``."""

    phase1: str = Field(description="A Phase 1 dataset of the grid, or 'Instruct' (the off-the-shelf model).")
    data: str = Field(description="A dataset key of 'datasets'.")


class GridSpec(_Strict):
    """Which models are trained on what: the paper's two-phase grid."""

    models: list[str] = Field(description="Names from 'models'.")
    phase1: list[str] = Field(description="Dataset keys fine-tuned from each base model in Phase 1.")
    phase2: list[Phase2Run]


# --------------------------------------------------------------------------------------------- top level


class ExperimentConfig(_Strict):
    """A whole profile: models, datasets, the two-phase grid and training hyper-parameters."""

    profile: str
    description: str = ""
    seed: int = 42
    models: list[ModelSpec]
    sandbox: SandboxSpec | None = None
    datasets: dict[str, DatasetSpec]
    grid: GridSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    phase2_training: TrainingSpec | None = Field(
        default=None, description="Phase 2 hyper-parameters when they differ from 'training'.")

    # set by load_config, not by the file
    source_file: str | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _cross_references(self):
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: duplicate names in {names}")
        for m in self.grid.models:
            if m not in names:
                raise ValueError(f"grid.models: {m!r} is not a model name (have {names})")
        for d in self.grid.phase1:
            if d not in self.datasets:
                raise ValueError(f"grid.phase1: {d!r} is not a key of datasets (have {sorted(self.datasets)})")
        for i, r in enumerate(self.grid.phase2):
            if r.data not in self.datasets:
                raise ValueError(f"grid.phase2.{i}.data: {r.data!r} is not a key of datasets")
            if r.phase1 != "Instruct" and r.phase1 not in self.grid.phase1:
                raise ValueError(f"grid.phase2.{i}.phase1: {r.phase1!r} is neither 'Instruct' nor in grid.phase1")
            if r.phase1 == "Instruct":
                missing = [m.name for m in self.models if m.name in self.grid.models and not m.instruct]
                if missing:
                    raise ValueError(f"grid.phase2.{i}.phase1: 'Instruct' but models {missing} have no 'instruct'")
        uses_sandbox = any(m.base == "sandbox" or m.instruct == "sandbox" for m in self.models) or any(
            d.source == "sandbox" for d in self.datasets.values())
        if uses_sandbox and self.sandbox is None:
            raise ValueError("sandbox: models or datasets use the sandbox but there is no 'sandbox' section")
        return self

    @property
    def phase2_hparams(self) -> TrainingSpec:
        return self.phase2_training or self.training


def _format_loc(loc: tuple) -> str:
    return ".".join(str(x) for x in loc) or "<top level>"


def _check_local_paths(cfg: ExperimentConfig, base: Path, file: Path) -> None:
    """Paths that look local (start with '.', '/' or '~', or exist relative to the file) must exist."""

    def local(p: str) -> Path | None:
        if p.startswith(("/", ".", "~")):
            q = Path(os.path.expanduser(p))
            return q if q.is_absolute() else (base / q).resolve()
        return None

    for key, d in cfg.datasets.items():
        if d.path and (q := local(d.path)) is not None and not q.exists():
            raise ConfigError(f"{file}: datasets.{key}.path: no such file or folder: {q}")
    for i, m in enumerate(cfg.models):
        for field_name in ("base", "instruct"):
            v = getattr(m, field_name)
            if v and v != "sandbox" and (q := local(v)) is not None and not q.exists():
                raise ConfigError(f"{file}: models.{i}.{field_name}: no such folder: {q}")


def load_config(profile_or_path: str | os.PathLike = "sandbox", overrides: dict[str, Any] | None = None
                ) -> ExperimentConfig:
    """Load and validate a parameter file (a profile name or a path); ``overrides`` are merged on top.

    ``overrides`` uses dotted keys, e.g. ``{"training.epochs": 1}``.
    """
    file = params_file(profile_or_path)
    if not file.exists():
        known = sorted(p.stem for p in (PROJECT_ROOT / "params").glob("*.yaml"))
        raise ConfigError(f"{file}: no such parameter file (profiles: {known})")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{file}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: expected a mapping at the top level, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        lines = [f"{file}: {_format_loc(err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError("invalid parameter file\n  " + "\n  ".join(lines)) from None
    _check_local_paths(cfg, file.parent, file)
    cfg.source_file = str(file)
    return cfg
