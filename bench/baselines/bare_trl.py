"""The script a user would write instead of the project's training path: TRL's SFTTrainer on a JSONL file.

Matched to ``cft_utils.train`` on the sandbox Phase 1 run (same model folder, data file, hyper-parameters,
seed, fp32, threads); TRL tokenises the data itself in every run. Writes ``summary.json`` (train seconds,
final and mean loss) to ``--out``.

    python bench/baselines/bare_trl.py --model <base dir> --data <alpaca.jsonl> --out /tmp/bare --epochs 0.2
"""

import argparse
import json
import time

import torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--data", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--epochs", type=float, default=4)
ap.add_argument("--lr", type=float, default=2e-3)
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--warmup", type=int, default=10)
ap.add_argument("--max-length", type=int, default=512)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--seed", type=int, default=42)
ap.add_argument("--logging-steps", type=int, default=10)
ap.add_argument("--save-steps", type=int, default=100)
ap.add_argument("--padding-free", action="store_true", help="TRL padding-free batches (then max_length=None)")
a = ap.parse_args()

torch.set_num_threads(a.threads)
data = load_dataset("json", data_files=a.data, split="train").select_columns(["prompt", "completion"])
tok = AutoTokenizer.from_pretrained(a.model)
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
args = SFTConfig(
    output_dir=f"{a.out}/checkpoints", num_train_epochs=a.epochs, per_device_train_batch_size=a.batch,
    gradient_accumulation_steps=1, learning_rate=a.lr, lr_scheduler_type="cosine", warmup_steps=a.warmup,
    weight_decay=0.0, optim="adamw_torch", max_length=None if a.padding_free else a.max_length,
    padding_free=a.padding_free, bf16=False, fp16=False, use_cpu=True,
    activation_checkpointing=False, logging_steps=a.logging_steps, logging_first_step=True, save_strategy="steps",
    save_steps=a.save_steps, save_total_limit=1, report_to="none", seed=a.seed, data_seed=a.seed,
    dataloader_pin_memory=False, disable_tqdm=True,
)
trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
t0 = time.time()
result = trainer.train()
runtime = time.time() - t0
trainer.save_model(f"{a.out}/model")
losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
with open(f"{a.out}/summary.json", "w") as f:
    json.dump({"runtime_s": round(runtime, 2), "final_loss": losses[-1], "train_loss": result.training_loss,
               "global_steps": trainer.state.global_step}, f)
