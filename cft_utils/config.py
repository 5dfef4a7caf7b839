"""Typed experiment configuration, loaded from a YAML parameter file and validated before any compute.

One idea in one module (it is long): the schema of a parameter file, one pydantic class per section, validated
together because sections refer to each other (a mitigation cell must be a Phase 2 cell of the grid, ...).

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

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .languages import SANDBOX_LANGUAGES, check_languages
from .paths import PROJECT_ROOT, params_file
from .sandbox.world import WorldSpec


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
    chat_template: str = Field(
        default="tokenizer",
        description="How the base model's prompts are formatted (runs from a checkpoint use the template saved "
        "with it): 'tokenizer' (its own), 'instruct' (the Instruct model's), or a .jinja file (absolute, or "
        "relative to the project root, e.g. configs/chat_templates/alpaca.jinja). Base models such as "
        "Meta-Llama-3-8B ship without one: training checks this before any weights load.")

    def chat_template_file(self) -> Path | None:
        """The template file this model's ``chat_template`` names (None for 'tokenizer' and 'instruct')."""
        if self.chat_template in ("tokenizer", "instruct"):
            return None
        p = Path(os.path.expanduser(self.chat_template))
        return p if p.is_absolute() else PROJECT_ROOT / p


class SandboxModelSpec(_Strict):
    """Architecture and pre-training of the sandbox base LM (see cft_utils.sandbox.BaseModelSpec)."""

    arch: Literal["llama", "mistral", "qwen2"] = "llama"
    hidden_size: Annotated[int, Field(gt=0)] = 128
    num_layers: Annotated[int, Field(gt=0)] = 4
    num_heads: Annotated[int, Field(gt=0)] = 4
    intermediate_size: Annotated[int, Field(gt=0)] = 512
    vocab_size: Annotated[int, Field(ge=300)] = 2048
    block_size: Annotated[int, Field(gt=8)] = 128
    batch_size: Annotated[int, Field(gt=0)] = 16
    epochs: Annotated[float, Field(gt=0)] = 3.0
    learning_rate: Annotated[float, Field(gt=0, lt=1)] = 3e-3
    warmup_steps: Annotated[int, Field(ge=0)] = 30
    num_threads: Annotated[int, Field(gt=0)] | None = Field(
        default=None, description="torch CPU threads for pre-training (None: training.num_threads). It runs alone, "
        "before any other run; the count is part of the base model's id, as it changes the float reduction order.")

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
    n_phase1: Annotated[int, Field(gt=0)] = 2400
    n_phase2_per_language: Annotated[int, Field(gt=0)] = 240
    n_instruct: Annotated[int, Field(gt=0)] = 2400
    n_test_per_language: Annotated[int, Field(gt=0)] = 60
    instruct_mix: dict[Literal["A", "B", "C"], Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {"A": 0.2, "B": 0.4, "C": 0.4})
    n_corpus_documents: Annotated[int, Field(gt=0)] = 8000
    english_share: Annotated[float, Field(gt=0, lt=1)] | None = Field(
        default=None, description="Share of the monolingual pre-training documents in English (None: every language "
        "the same share). The paper's base models saw mostly English (LLaMA-2: ~90 %).")
    shared_concept_names: bool = Field(
        default=True, description="Names of the world's things are the same in every language (like proper nouns).")
    reading_counterfactual_share: Annotated[float, Field(ge=0, le=1)] | None = Field(
        default=None, description="Share of the corpus's reading passages whose statements contradict the world's "
        "facts, so that their answer must be read, not recalled (None: 0).")
    n_copy_documents: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Extra pre-training documents repeating a list (the in-context copy reading "
        "builds on; None: 0).")
    n_reading_documents: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Extra counterfactual reading passages with a question and its answer (None: 0).")
    n_dialogue_documents: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Pre-training dialogues: a question and its answer as a user and an assistant turn "
        "in one language, in the tokenizer's chat format (None: 0).")
    model: SandboxModelSpec = Field(default_factory=SandboxModelSpec)

    @field_validator("languages")
    @classmethod
    def _languages(cls, v):
        if "en" not in v:
            raise ValueError("the sandbox needs English ('en') among its languages")
        unknown = [x for x in v if x != "en" and x not in SANDBOX_LANGUAGES]
        if unknown:
            raise ValueError(f"unknown sandbox languages {unknown}; known: ['en'] + {sorted(SANDBOX_LANGUAGES)}")
        if len(v) < 2 or len(set(v)) != len(v):
            raise ValueError("need English and at least one other language, each once")
        return v

    @field_validator("instruct_mix")
    @classmethod
    def _mix(cls, v):
        if abs(sum(v.values()) - 1) > 1e-6:
            raise ValueError(f"instruct_mix shares must sum to 1 (got {sum(v.values()):.3f})")
        return v

    def world_spec(self) -> WorldSpec:
        """The world generator's spec (cft_utils.sandbox.world)."""
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

    @field_validator("languages")
    @classmethod
    def _language_codes(cls, v):
        return v if v is None else check_languages(v, "languages")

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
    attn_implementation: Literal["sdpa", "eager", "sdpa_packed", "flash_attention_2", "flash_attention_3"] | None = Field(
        default=None, description="Attention while training (None: the model's own, transformers' sdpa). "
        "'sdpa_packed' (cft_utils.attention): a padding-free row's sequences attend each to itself instead of through "
        "a mask over the whole row (CPU); needs padding_free.")
    gradient_checkpointing: bool = False
    logging_steps: Annotated[int, Field(gt=0)] = 10
    save_steps: Annotated[int, Field(gt=0)] = 200
    save_total_limit: Annotated[int, Field(gt=0)] = 2
    report_to: list[Literal["none", "tensorboard", "wandb"]] = Field(default_factory=lambda: ["none"])
    num_threads: Annotated[int, Field(gt=0)] | None = Field(
        default=None, description="torch CPU threads (None: torch's default).")
    trl: dict[str, Any] = Field(
        default_factory=dict, description="Any other argument of TRL's SFTConfig (e.g. max_grad_norm: 0.5, "
        "neftune_noise_alpha: 5), passed to it as it is and checked against SFTConfig's fields when the file loads.")

    @field_validator("trl")
    @classmethod
    def _trl_fields(cls, v):
        if v:  # TRL is imported only when this section is used (the import costs seconds)
            import dataclasses

            from trl import SFTConfig

            known = {f.name for f in dataclasses.fields(SFTConfig)}
            unknown = sorted(set(v) - known)
            if unknown:
                raise ValueError(f"{unknown} are not arguments of TRL's SFTConfig")
        return v

    @model_validator(mode="after")
    def _batch_adds_up(self):
        product = self.per_device_batch_size * self.gradient_accumulation_steps * self.num_processes
        if product != self.global_batch_size:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} != per_device_batch_size {self.per_device_batch_size}"
                f" x gradient_accumulation_steps {self.gradient_accumulation_steps} x num_processes "
                f"{self.num_processes} = {product}")
        if self.attn_implementation == "sdpa_packed" and not self.padding_free:
            raise ValueError("attn_implementation sdpa_packed attends per packed sequence: it needs padding_free: true")
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


# --------------------------------------------------------------------------------------------- mitigation

class MitigationCell(_Strict):
    """A Phase 2 cell of the grid that gets the mitigation strategies (one paper table)."""

    phase1: str = Field(description="'Instruct' or a Phase 1 dataset key, as in grid.phase2.")
    data: str = Field(description="The Phase 2 dataset key.")
    models: list[str] | None = Field(default=None, description="Model names (None: every model of the grid).")
    table: str | None = Field(default=None, description="The paper table this cell fills, e.g. '3' or 'C6'.")
    strategies: list[str] | None = Field(
        default=None, description="Only these of mitigation.strategies on this cell (None: all; the paper's Table C6 "
        "has no LF_H1 row).")


class CounterpartSpec(_Strict):
    """Where the English counterparts of a Phase 2 set's instructions come from (replay prompts).

    ``link: counterpart_id``: each Phase 2 record's ``counterpart_id`` names a record of ``dataset`` (sandbox
    sets, mOpenOrca -> OpenOrca). ``link: sample``: no per-record link exists (MultiAlpaca was generated from
    translated seed tasks), so the replay prompts are a seeded sample of ``dataset``'s English records.
    """

    dataset: str | DatasetSpec = Field(description="A key of 'datasets' or an inline dataset spec.")
    link: Literal["counterpart_id", "sample"] = "counterpart_id"


class GenerationSpec(_Strict):
    """How the Phase 1 model answers the replay prompts (greedy decoding)."""

    backend: Literal["hf", "vllm", "openai-server"] = Field(
        default="hf", description="'hf' in-process; 'vllm' (vLLM in this process: its own environment); "
        "'openai-server': an OpenAI-compatible server already serving the Phase 1 model (`vllm serve <model folder>`)"
        " at base_url.")
    base_url: str | None = Field(
        default=None, description="openai-server: the server's /v1 address, e.g. http://127.0.0.1:8000/v1 "
        "(default $CFT_GENERATION_BASE_URL).")
    served_model: str | None = Field(
        default=None, description="openai-server: the model name the server serves (default: the Phase 1 model's "
        "folder, which is what `vllm serve <folder>` registers); checked against the server's /v1/models.")
    max_new_tokens: Annotated[int, Field(gt=0)] = 256
    batch_size: Annotated[int, Field(gt=0)] = 32
    keep_truncated: bool = Field(default=False, description="Keep answers that hit max_new_tokens without EOS "
                                 "(always counted). Only the smoke profile keeps them: its model emits no EOS.")
    keep_degenerate: bool = Field(default=False, description="Keep answers with a word n-gram repeated too often "
                                  "(always counted).")
    degenerate_ngram: Annotated[int, Field(gt=0)] = 3
    degenerate_max_repeats: Annotated[int, Field(gt=1)] = Field(
        default=4, description="An answer is degenerate when one word n-gram occurs this many times or more.")


class ReplaySpec(_Strict):
    """Settings shared by the replay strategies (generative GR_k and English ER_k replay): where the English
    counterparts of each Phase 2 set come from, and how the Phase 1 model answers them."""

    counterparts: dict[str, CounterpartSpec] = Field(
        default_factory=dict, description="Phase 2 dataset key -> where its English counterparts come from.")
    generation: GenerationSpec = Field(default_factory=GenerationSpec)


class FreezingSpec(_Strict):
    """The frozen budget shared by the layer-freezing strategies (LF_H1 random layers, LF_H2 the most-changed
    ones), so that both freeze the same number of layers. The count is resolved once, when runs are planned."""

    n_layers: Annotated[int, Field(gt=0)] | None = Field(default=None, description="Layers to freeze (paper: 10).")
    fraction: Annotated[float, Field(gt=0, lt=1)] | None = Field(
        default=None, description="Or a fraction of the model's layers (rounded half up, at least 1).")
    modules: list[Literal["q_proj", "k_proj", "v_proj"]] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj"],
        description="The projections frozen per layer (LF_H2 ranks layers per module; LF_H1 with scope qkv).")

    @model_validator(mode="after")
    def _one_count(self):
        if (self.n_layers is None) == (self.fraction is None):
            raise ValueError("set exactly one of n_layers and fraction")
        return self


class MitigationSpec(_Strict):
    """Forgetting mitigations (§4 of the paper, plus post-hoc strategies): which cells, which strategies.

    ``strategies`` maps a registered strategy's name to its parameters (``GR: {percents: [5, 10]}``; an empty
    value takes the strategy's defaults). The strategies live above this module (cft_utils.mitigation), so the
    names and parameters are checked against the registry when runs are planned, before any compute."""

    cells: list[MitigationCell]
    strategies: dict[str, dict[str, Any] | None] = Field(
        description="Strategy name -> its parameters (cft_utils/mitigation/strategies/; checked when planned).")
    seed: int = 0
    replay: ReplaySpec = Field(default_factory=ReplaySpec)
    freezing: FreezingSpec = Field(default_factory=lambda: FreezingSpec(n_layers=10))


# --------------------------------------------------------------------------------------------- evaluation


class BenchmarkSpec(_Strict):
    """One benchmark of the evaluation (a column of the paper's tables): lm-eval task(s) per language.

    ``tasks`` maps a language code (``en`` for the English task-ability suite) to an lm-eval task or group
    name. ``runner: alpaca_eval`` generates through lm-eval and then judges each output against a reference
    system's output (cft_utils.alpaca_eval). ``metric`` is the headline metric of the tables; every other
    metric lm-eval reports is kept in the tidy results too.
    """

    suite: Literal["ta", "la"] = Field(description="'ta' (task ability, English) or 'la' (language ability).")
    tasks: dict[str, str] = Field(description="language -> lm-eval task or group name.")
    metric: str = Field(description="Headline metric, e.g. prompt_level_strict_acc, acc_norm, f1, rougeL, win_rate.")
    runner: Literal["lm_eval", "alpaca_eval"] = "lm_eval"
    limit: Annotated[int, Field(gt=0)] | None = Field(
        default=None, description="Documents per task (None: all). Part of the cache key.")
    max_gen_toks: Annotated[int, Field(gt=0)] | None = Field(
        default=None, description="Overrides the task's generation budget (None: the task's own).")
    batch_size: Annotated[int, Field(gt=0)] | None = Field(default=None, description="None: evaluation.batch_size.")
    chat_template: bool | None = Field(default=None, description="None: evaluation.chat_template.")
    reference_outputs: str | None = Field(
        default=None, description="alpaca_eval runner: file of reference outputs (instruction, output); None: the "
        "task's own documents carry them ('reference_output').")

    @model_validator(mode="after")
    def _tasks(self):
        if not self.tasks:
            raise ValueError("tasks must name at least one lm-eval task")
        check_languages(self.tasks, "tasks (keyed by language)", names=True)
        return self


class EvaluationSpec(_Strict):
    """Task-ability and language-ability evaluation on lm-eval (cft_utils.evaluate), zero-shot."""

    backend: Literal["hf", "vllm", "openai-server"] = Field(
        default="hf", description="lm-eval model backend: 'hf', 'vllm' (in this process), or 'openai-server' "
        "(lm-eval's local-chat-completions against `vllm serve <checkpoint>` at base_url; generation tasks only).")
    base_url: str | None = Field(
        default=None, description="openai-server: the server's /v1 address (default $CFT_EVAL_BASE_URL).")
    parallelize: bool = Field(default=False, description="hf backend: shard the model over the GPUs (device_map).")
    tensor_parallel_size: Annotated[int, Field(gt=0)] = Field(default=1, description="vllm backend.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    batch_size: Annotated[int, Field(gt=0)] = 16
    chat_template: bool = Field(default=True, description="Apply the tokenizer's chat template (instruct models).")
    num_threads: Annotated[int, Field(gt=0)] | None = Field(default=None, description="torch CPU threads.")
    seed: int = 0
    judge: Literal["reference", "openai", "transformers"] = Field(
        default="reference", description="AlpacaEval judge: offline gold-answer match (sandbox), an OpenAI-compatible "
        "endpoint from CFT_JUDGE_* variables, or a local transformers model (judge_model).")
    judge_model: str | None = Field(default=None, description="Local judge model folder or hub id ('transformers').")
    judge_orders: Literal["both", "random"] = "both"
    task_dirs: list[str] = Field(
        default_factory=list, description="Extra task folders: names under cft_utils/tasks/, paths, or "
        "'lm_eval:<folder>' (a built-in lm-eval task folder, to point its tasks at local_data files).")
    sandbox_bench: bool = Field(
        default=False, description="Generate the sandbox benchmarks from the world (cft_utils.sandbox.bench).")
    sandbox_bench_per_language: Annotated[int, Field(gt=0)] = Field(
        default=40, description="Sandbox MLQA/XQuAD/XL-Sum items drawn per language (before overlap removal).")
    local_data: dict[str, str | dict[str, str]] = Field(
        default_factory=dict, description="task -> local file (or {split: file}) instead of the hub.")
    benchmarks: dict[str, BenchmarkSpec]


# --------------------------------------------------------------------------------------------- analysis


class SandboxEncoderSpec(_Strict):
    """The sandbox's LaBSE-like DES encoder: the world's base LM trained on (English, translation) pairs."""

    n_pairs: Annotated[int, Field(gt=1)] = Field(
        default=2000, description="Parallel pairs drawn from the world. With 1000 or 400 the smoke encoder's dataset "
        "means stayed close to one direction (all DES 0.97-1.0) and the orderings became seed noise.")
    epochs: Annotated[float, Field(gt=0)] = Field(default=3, description="Passes over the pairs.")
    batch_size: Annotated[int, Field(gt=1)] = Field(
        default=32, description="Pairs per batch; the other pairs of a batch are the in-batch negatives.")
    learning_rate: Annotated[float, Field(gt=0, lt=1)] = Field(default=1e-3, description="AdamW learning rate.")
    max_seq_length: Annotated[int, Field(gt=0)] = Field(default=128, description="Tokens per sentence (truncated).")


class DesSpec(_Strict):
    """Dataset embedding similarity (notebook 05): encoder, sample, bootstrap, and the forgetting-risk report."""

    encoder: str | None = Field(
        default=None, description="None: the profile's default (the trained sandbox encoder with a 'sandbox' "
        "section, else LaBSE); 'sandbox'; a sentence-transformers hub id; or a local encoder folder.")
    sandbox_encoder: SandboxEncoderSpec = Field(
        default_factory=SandboxEncoderSpec, description="Training settings of the sandbox encoder.")
    n_samples: Annotated[int, Field(gt=0)] | None = Field(
        default=500, description="Records per dataset (the paper's 500); None: all.")
    fields: list[Literal["instruction", "input", "response"]] = Field(
        default_factory=lambda: ["instruction", "input", "response"],
        description="What is embedded per record (in the common schema instruction and input share the user message).")
    n_boot: Annotated[int, Field(ge=0)] = Field(default=1000, description="Bootstrap replicates (0: no interval).")
    ci: Annotated[float, Field(gt=0, lt=1)] = Field(default=0.95, description="Level of the bootstrap interval.")
    seed: int = Field(default=0, description="Sample and bootstrap seed.")
    batch_size: Annotated[int, Field(gt=0)] = Field(default=32, description="Texts per encoder call.")
    with_paper: bool | None = Field(
        default=None, description="Show the paper's LaBSE values beside ours; None: only without a sandbox "
        "(where the datasets are the real ones).")
    la_results: str | None = Field(
        default=None, description="Optional CSV of language-ability results (run_id, value[, language, benchmark]) "
        "for the risk report; without it the sandbox probes, other profiles report the baseline as missing.")


class MpdSpec(_Strict):
    """Model parameter difference (notebook 06)."""

    reference_data: list[str] | None = Field(
        default=None, description="Phase 2 sets to fine-tune the base on as MPD references (None: every Phase 2 "
        "set of the grid; the paper used MultiAlpaca only).")


class GeometrySpec(_Strict):
    """Representation geometry (notebook 09): prompt sets, how a prompt becomes a vector, Figure C4's runs."""

    mt_bench_source: str = Field(
        default="hf://datasets/HuggingFaceH4/mt_bench_prompts/raw/question.jsonl",
        description="Without a sandbox: FastChat's question.jsonl (a file, a folder holding it, or an hf:// address).")
    flores_source: str = Field(
        default="openlanguagedata/flores_plus",
        description="Without a sandbox: Flores on the hub (gated: set HF_TOKEN), or 'facebook/flores'.")
    flores_split: str = Field(default="dev", description="Flores split.")
    n_parallel: Annotated[int, Field(gt=0)] = Field(default=60, description="Parallel sentences per language (Figure 3).")
    position: Literal["mean", "last"] = Field(
        default="mean", description="A prompt's vector: the mean over its tokens, or the last token.")
    chat: bool = Field(default=False, description="False: plain text for every model; True: each model's chat template.")
    crosslingual_layer: int | None = Field(
        default=None, description="Hidden-state index shown in Figure 3 (None: the middle one).")
    batch_size: Annotated[int, Field(gt=0)] = Field(default=8, description="Prompts per forward pass.")
    max_length: Annotated[int, Field(gt=0)] = Field(default=512, description="Tokens per prompt (truncated beyond).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="float32 keeps padded batches exact; bfloat16 halves GPU memory.")
    mitigation_strategies: list[str] = Field(
        default_factory=lambda: ["LF_H2", "GR_5", "GR_10"],
        description="Figure C4: labels of the planned mitigation runs drawn against the unmitigated baseline.")
    seed: int = Field(default=0, description="t-SNE seed (and the Flores subsample).")


class AnalysisSpec(_Strict):
    """Settings of the analysis notebooks 05 (DES), 06 (MPD) and 09 (geometry)."""

    des: DesSpec = Field(default_factory=DesSpec)
    mpd: MpdSpec = Field(default_factory=MpdSpec)
    geometry: GeometrySpec = Field(default_factory=GeometrySpec)


# --------------------------------------------------------------------------------------------- top level


class ClaimsSpec(_Strict):
    """How the paper's claims are decided (cft_utils.analysis.claims): intervals over items and seeds, margins."""

    margin_ta: Annotated[float, Field(ge=0)] = Field(
        default=0.03, description="Non-inferiority margin for 'task ability is kept' (claim 1), in TA_avg units.")
    margin_la: Annotated[float, Field(ge=0)] = Field(
        default=0.03, description="Non-inferiority margin for 'a mitigation keeps the language gain' (claim 5).")
    similarity_threshold: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.5, description="A Phase 2 cell is similar when its task overlap with Phase 1 is at least this.")
    mitigation_methods: list[str] = Field(
        default_factory=lambda: ["GR", "LF_H1", "LF_H2"], description="Strategies claim 5 is about (registry names).")
    n_replicates: Annotated[int, Field(ge=100)] = Field(default=2000, description="Bootstrap replicates.")
    level: Annotated[float, Field(gt=0.5, lt=1)] = 0.95


class SlurmSpec(_Strict):
    """SLURM resources of one run's job (submitit); see cft_utils.executor."""

    partition: str | None = Field(default=None, description="slurm partition (None: the cluster's default).")
    account: str | None = Field(default=None, description="slurm account, when the cluster needs one.")
    gpus_per_node: Annotated[int, Field(ge=0)] = Field(default=4, description="GPUs of one run's job.")
    cpus_per_task: Annotated[int, Field(gt=0)] = 8
    mem_gb: Annotated[float, Field(gt=0)] = 256
    timeout_min: Annotated[int, Field(gt=0)] = Field(default=24 * 60, description="Time limit of one job.")
    launcher: Literal["python", "accelerate"] = Field(
        default="accelerate", description="'accelerate': the job runs `accelerate launch` over the node's GPUs.")
    accelerate_config: str | None = Field(
        default=None, description="accelerate config file for the job (e.g. configs/accelerate/fsdp.yaml).")


class ExecutorSpec(_Strict):
    """How the run graph is executed (cft_utils.executor)."""

    backend: Literal["local", "slurm", "submitit-local"] = Field(
        default="local", description="'local': a pool of worker processes on this machine; 'slurm': one submitit "
        "job per run; 'submitit-local': the submitit job path on this machine.")
    workers: Annotated[int, Field(gt=0)] | None = Field(
        default=None, description="Local worker processes (None: one per CPU core; 1 on a GPU machine). Each gets "
        "cores // workers torch threads.")
    slurm: SlurmSpec = Field(default_factory=SlurmSpec)


class ExperimentConfig(_Strict):
    """A whole profile: models, datasets, the two-phase grid and training hyper-parameters."""

    profile: str
    description: str = ""
    seed: int = Field(default=42, description="Seed of what is built once (the sandbox base model's pre-training, "
                      "seeded data subsets); training seeds are 'seeds'.")
    seeds: list[int] | None = Field(
        default=None, description="Training seeds: every Phase 1, Phase 2 and mitigation run is trained once per "
        "seed (None: [seed]). Tables aggregate over seeds; intervals account for them.")
    models: list[ModelSpec]
    sandbox: SandboxSpec | None = None
    datasets: dict[str, DatasetSpec]
    grid: GridSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    phase2_training: TrainingSpec | None = Field(
        default=None, description="Phase 2 hyper-parameters when they differ from 'training'.")
    mitigation: MitigationSpec | None = Field(
        default=None, description="Forgetting mitigations on chosen Phase 2 cells (cft_utils.mitigation).")

    evaluation: EvaluationSpec | None = Field(
        default=None, description="Task- and language-ability benchmarks (cft_utils.evaluate; notebooks 03-04).")
    analysis: AnalysisSpec = Field(
        default_factory=AnalysisSpec, description="DES, MPD and geometry settings (notebooks 05, 06, 09).")
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec, description="Where and how runs execute.")
    claims: ClaimsSpec = Field(default_factory=ClaimsSpec, description="Margins and intervals of the claims table.")

    # set by load_config, not by the file
    source_file: str | None = Field(default=None, exclude=True)
    overrides: dict[str, Any] = Field(default_factory=dict, exclude=True)

    @property
    def training_seeds(self) -> list[int]:
        """The training seeds (``seeds``, or ``[seed]`` when not given)."""
        return list(self.seeds) if self.seeds else [self.seed]

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {v}")
        return v

    @property
    def output_name(self) -> str:
        """Where this configuration's results, figures and reports go: the profile's name, or, when parameters were
        overridden, the profile's name and a short hash of the overrides (beside, never over, the default ones)."""
        if not self.overrides:
            return self.profile
        blob = json.dumps(self.overrides, sort_keys=True, default=str)
        return f"{self.profile}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"

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
        # Constructed languages exist only in a sandbox that declares them.
        declared = set(self.sandbox.languages) if self.sandbox is not None else set()
        used = [(f"datasets.{k}.languages", c) for k, d in self.datasets.items() for c in d.languages or []]
        if self.evaluation is not None:
            used += [(f"evaluation.benchmarks.{b}.tasks", c) for b, s in self.evaluation.benchmarks.items()
                     for c in s.tasks]
        for key, c in used:
            if c in SANDBOX_LANGUAGES and c not in declared:
                raise ValueError(f"{key}: {c!r} is a sandbox language, but "
                                 + (f"sandbox.languages is {sorted(declared)}" if declared else "there is no sandbox"))
        uses_sandbox = any(m.base == "sandbox" or m.instruct == "sandbox" for m in self.models) or any(
            d.source == "sandbox" for d in self.datasets.values())
        if uses_sandbox and self.sandbox is None:
            raise ValueError("sandbox: models or datasets use the sandbox but there is no 'sandbox' section")
        return self

    @model_validator(mode="after")
    def _mitigation_references(self):
        mit = self.mitigation
        if mit is None:
            return self
        grid_cells = {(r.phase1, r.data) for r in self.grid.phase2}
        for i, c in enumerate(mit.cells):
            if (c.phase1, c.data) not in grid_cells:
                raise ValueError(f"mitigation.cells.{i}: {c.phase1}->{c.data} is not a Phase 2 cell of grid.phase2")
            for m in c.models or []:
                if m not in self.grid.models:
                    raise ValueError(f"mitigation.cells.{i}.models: {m!r} is not in grid.models {self.grid.models}")
        for key, cp in mit.replay.counterparts.items():
            if key not in self.datasets:
                raise ValueError(f"mitigation.replay.counterparts: {key!r} is not a key of datasets")
            if isinstance(cp.dataset, str) and cp.dataset not in self.datasets:
                raise ValueError(f"mitigation.replay.counterparts.{key}.dataset: {cp.dataset!r} is not a key of "
                                 f"datasets (or give an inline dataset spec)")
        if self.sandbox is not None and mit.freezing.n_layers is not None \
                and mit.freezing.n_layers > self.sandbox.model.num_layers:
            raise ValueError(f"mitigation.freezing.n_layers {mit.freezing.n_layers} exceeds the sandbox model's "
                             f"{self.sandbox.model.num_layers} layers")
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
        if d.source == "mopenorca":  # built by the project in a later step; load_records checks it
            continue
        if d.path and (q := local(d.path)) is not None and not q.exists():
            raise ConfigError(f"{file}: datasets.{key}.path: no such file or folder: {q}")
    for i, m in enumerate(cfg.models):
        if m.chat_template == "instruct" and not m.instruct:
            raise ConfigError(f"{file}: models.{i}.chat_template: 'instruct' but model {m.name!r} has no 'instruct'")
        if (t := m.chat_template_file()) is not None and not t.is_file():
            raise ConfigError(f"{file}: models.{i}.chat_template: {m.chat_template!r} is neither 'tokenizer', "
                              f"'instruct' nor a template file (no such file: {t})")
        for field_name in ("base", "instruct"):
            v = getattr(m, field_name)
            if v and v != "sandbox" and (q := local(v)) is not None and not q.exists():
                raise ConfigError(f"{file}: models.{i}.{field_name}: no such folder: {q}")


def set_dotted(raw: dict, dotted: str, value: Any, file: Path | str = "<overrides>") -> None:
    """Set ``a.b.0.c = value`` in the raw parameter mapping: dots walk mappings, integers index lists. A key that
    walks into a scalar or past a list's end raises ConfigError naming the file and the key."""
    node: Any = raw
    *parents, leaf = dotted.split(".")
    where = []
    for part in [*parents, leaf]:
        last = len(where) == len(parents)
        where.append(part)
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{file}: override {dotted!r}: {'.'.join(where[:-1])} is a list of {len(node)} "
                                  f"item(s); {part!r} is not an index into it")
            if last:
                node[int(part)] = value
                return
            node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
                return
            node = node.setdefault(part, {})
        else:
            raise ConfigError(f"{file}: override {dotted!r}: {'.'.join(where[:-1])} is a value "
                              f"({node!r}), not a section, so it has no key {part!r}")


def parse_set(pairs: list[str]) -> dict[str, Any]:
    """``["training.epochs=1", ...]`` (the ``--set KEY=VALUE`` options) -> ``{"training.epochs": 1}``; values are
    parsed as YAML (``[5, 10]`` is a list, ``true`` a bool)."""
    overrides = {}
    for kv in pairs:
        if "=" not in kv:
            raise ValueError(f"--set expects KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        overrides[k.strip()] = yaml.safe_load(v)
    return overrides


def load_config(profile_or_path: str | os.PathLike = "sandbox", overrides: dict[str, Any] | str | None = None
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
    if isinstance(overrides, str):  # papermill's `-p overrides '{...}'` passes a string: JSON or YAML
        try:
            overrides = yaml.safe_load(overrides) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{file}: overrides is not a JSON/YAML mapping: {e}") from e
        if not isinstance(overrides, dict):
            raise ConfigError(f"{file}: overrides must be a mapping of dotted keys to values, got {overrides!r}")
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, copy.deepcopy(value), file)  # never write into the caller's values
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        lines = [f"{file}: {_format_loc(err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError("invalid parameter file\n  " + "\n  ".join(lines)) from None
    _check_local_paths(cfg, file.parent, file)
    cfg.source_file = str(file)
    cfg.overrides = dict(overrides or {})
    return cfg
