"""Building the sandbox world's artifacts (cached under ``$CFT_HOME/sandbox/world-<world id>/``): the data dump,
the byte-level BPE tokenizer with its chat template, and the tiny base LM pre-trained on the world's corpus.

``ensure_sandbox(cfg)`` builds what is missing and returns the paths; everything is keyed by the world's id and the
base model's hyper-parameters, so a change of either builds new artifacts beside the old ones.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..config import ExperimentConfig
from ..io import write_json, write_jsonl
from ..paths import cft_home
from ..runs import last_complete_checkpoint
from .tiny import build_causal_lm, train_bpe_tokenizer
from .world import SANDBOX_DATASETS, World, WorldSpec, world_for


@dataclass
class BaseModelSpec:
    """The tiny base LM and its pre-training (hyper-parameters chosen for a 2-core CPU)."""

    arch: str = "llama"
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    vocab_size: int = 2048
    block_size: int = 128
    batch_size: int = 16
    epochs: float = 2.0
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    seed: int = 0
    num_threads: int | None = None  # pre-training's CPU threads (None: the caller's)

    def model_id(self) -> str:
        # Fields left at None are left out, so adding one does not rename the models built before it.
        fields = {k: v for k, v in self.__dict__.items() if v is not None}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


def world_dir(spec: WorldSpec, home: Path) -> Path:
    return Path(home) / "sandbox" / f"world-{spec.world_id()}"


def _all_texts(world: World) -> list[str]:
    texts = list(world.corpus())
    texts += [m["content"] for d in world.dialogues() for m in d]
    for name in ("alpaca", "multialpaca", "openorca", "instruct"):
        for r in world.dataset(name):
            texts += [m["content"] for m in r["prompt"] + r["completion"]]
    return texts


def build_tokenizer(world: World, out_dir: Path, vocab_size: int = 2048):
    """Train (once) the world's byte-level BPE with the chat template; return the loaded tokenizer."""
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    if (out_dir / "DONE").exists():
        return AutoTokenizer.from_pretrained(out_dir)
    tok = train_bpe_tokenizer(_all_texts(world), vocab_size=vocab_size)
    tok.save_pretrained(out_dir)
    write_json(out_dir / "DONE", {"vocab": len(tok)})
    return AutoTokenizer.from_pretrained(out_dir)


def pretrain_base_model(world: World, tokenizer, spec: BaseModelSpec, out_dir: Path, num_threads: int | None = None):
    """Pre-train (once) the tiny base LM on the world's corpus with the HF Trainer; return its directory.

    The corpus is tokenised, concatenated with end-of-text separators and cut into fixed blocks (the usual
    causal-LM recipe). Interrupted pre-training resumes from its last checkpoint.
    """
    import torch
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    out_dir = Path(out_dir)
    if (out_dir / "DONE").exists():
        return out_dir
    if num_threads:
        torch.set_num_threads(num_threads)
    docs = world.corpus()
    dialogues = world.dialogues()
    if dialogues:  # only when asked for: the documents' order (hence the base model) stays as it was without them
        docs += [tokenizer.apply_chat_template(d, tokenize=False) for d in dialogues]
    random.Random(spec.seed).shuffle(docs)
    ids: list[int] = []
    for enc in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids += enc + [tokenizer.eos_token_id]
    n_blocks = len(ids) // spec.block_size
    blocks = [ids[i * spec.block_size:(i + 1) * spec.block_size] for i in range(n_blocks)]
    ds = Dataset.from_dict({"input_ids": blocks})
    model = build_causal_lm(tokenizer, arch=spec.arch, hidden_size=spec.hidden_size, num_layers=spec.num_layers,
                            num_heads=spec.num_heads, intermediate_size=spec.intermediate_size, seed=spec.seed,
                            max_position_embeddings=1024)
    ckpt_dir = out_dir.parent / (out_dir.name + "-checkpoints")
    args = TrainingArguments(
        output_dir=str(ckpt_dir), per_device_train_batch_size=spec.batch_size, num_train_epochs=spec.epochs,
        learning_rate=spec.learning_rate, lr_scheduler_type="cosine", warmup_steps=spec.warmup_steps,
        weight_decay=0.01, logging_steps=20, save_strategy="steps", save_steps=100, save_total_limit=1,
        report_to="none", seed=spec.seed, use_cpu=not torch.cuda.is_available(), dataloader_pin_memory=False,
        disable_tqdm=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    trainer.train(resume_from_checkpoint=last_complete_checkpoint(ckpt_dir))
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    log = [h for h in trainer.state.log_history if "loss" in h]
    write_json(out_dir / "pretrain_log.json", log)
    write_json(out_dir / "DONE", {"n_tokens": len(ids), "n_blocks": n_blocks, "final_loss": log[-1]["loss"] if log else None,
                                  "n_parameters": sum(p.numel() for p in model.parameters())})
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return out_dir




def sandbox_paths(cfg: ExperimentConfig) -> dict[str, Path]:
    """Where the profile's sandbox artifacts live: ``world``, ``tokenizer`` and ``base`` (model folder)."""
    wd = world_dir(cfg.sandbox.world_spec(), cft_home())
    spec = BaseModelSpec(**cfg.sandbox.model.model_dump(), seed=cfg.seed)
    return {"world": wd, "tokenizer": wd / "tokenizer", "base": wd / f"base-{spec.model_id()}"}


def dump_world(world: World, wd: Path) -> None:
    """Write the world's datasets, corpus, dialogues, lexicon and facts under ``wd`` (once), ``world.json`` last:
    its presence says the dump is complete (the loaders then read the datasets from it)."""
    wd = Path(wd)
    if (wd / "world.json").exists():
        return
    for name in SANDBOX_DATASETS:
        if name != "mopenorca":  # built by selective translation on first use (cft_utils.data)
            write_jsonl(wd / "data" / f"{name}.jsonl", world.dataset(name))
    write_jsonl(wd / "data" / "corpus.jsonl", ({"text": t} for t in world.corpus()))
    if world.spec.n_dialogue_documents:
        write_jsonl(wd / "data" / "dialogues.jsonl", ({"messages": d} for d in world.dialogues()))
    write_json(wd / "lexicon.json", world.lexicon)
    write_json(wd / "facts.json", {k: v.__dict__ for k, v in world.facts.items()})
    write_json(wd / "world.json", world.describe())


def ensure_sandbox(cfg: ExperimentConfig) -> dict[str, Path]:
    """Build (once) the sandbox world's data dump, tokenizer and pre-trained base model; return their paths."""
    paths = sandbox_paths(cfg)
    world = world_for(cfg.sandbox.world_spec())
    dump_world(world, paths["world"])
    tok = build_tokenizer(world, paths["tokenizer"], vocab_size=cfg.sandbox.model.vocab_size)
    spec = BaseModelSpec(**cfg.sandbox.model.model_dump(), seed=cfg.seed)
    pretrain_base_model(world, tok, spec, paths["base"], num_threads=spec.num_threads or cfg.training.num_threads)
    return paths
