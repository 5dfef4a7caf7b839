"""GPU check (prepared, not yet run: no GPU was available when it was written): layer freezing under FSDP through
the project's training path, and the model folder FSDP saves.

    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes <GPUs> \\
        bench/gpu/fsdp_freeze_check.py /tmp/fsdp-check

What it does (about 1-2 minutes on one H200, most of it imports and process start): builds a tiny LLaMA (GQA) with a
sandbox tokenizer, freezes layer 1's q/k/v with ``mitigation.freeze.apply_freeze`` (LF_H2's mechanics), trains 6
steps with TRL's SFTTrainer under accelerate's FSDP plugin (FULL_SHARD, use_orig_params, FULL_STATE_DICT), saves
with ``trainer.save_model`` and checks on rank 0: the folder holds ``model.safetensors`` (not distributed-checkpoint
shards) that ``cft_utils.models.load_model`` reads, and ``mitigation.freeze.verify_frozen`` finds every frozen tensor
bit-identical. Prints one JSON line and exits 1 if a check fails. The CPU counterpart (torch FSDP on 2 gloo
processes, no accelerate/Trainer) is tests/test_real_models.py::test_layer_freezing_under_fsdp_on_cpu.
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from cft_utils.mitigation.freeze import FreezePlan, apply_freeze, check_distributed_support, verify_frozen
from cft_utils.models import load_model
from cft_utils.sandbox.tiny import build_causal_lm, save_model, train_bpe_tokenizer


def main(out: Path) -> int:
    state = PartialState()
    tok = train_bpe_tokenizer(["the cat sees the dog", "a b c d e f g"] * 50, vocab_size=300, min_frequency=1)
    before = out / "before"
    if state.is_main_process:
        save_model(build_causal_lm(tok, hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2, seed=0), tok,
                   before)
    state.wait_for_everyone()
    model = load_model(before)
    plan = FreezePlan("LF_H2", modules={m: [1] for m in ("q_proj", "k_proj", "v_proj")})
    check_distributed_support(plan)  # reads accelerate's launch variables: refuses FSDP without use_orig_params
    report = apply_freeze(model, plan)
    rows = [{"prompt": [{"role": "user", "content": f"count {i}"}],
             "completion": [{"role": "assistant", "content": " ".join(["a b c"] * (i % 3 + 1))}]} for i in range(48)]
    args = SFTConfig(output_dir=str(out / "ckpt"), max_steps=6, per_device_train_batch_size=4, learning_rate=1e-3,
                     bf16=True, logging_steps=1, save_strategy="no", report_to="none", activation_checkpointing=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    trainer.train()
    trainer.save_model(str(out / "after"))
    state.wait_for_everyone()
    if not state.is_main_process:
        return 0
    files = sorted(p.name for p in (out / "after").iterdir())
    single = (out / "after" / "model.safetensors").exists() or (out / "after" / "model.safetensors.index.json").exists()
    loaded = load_model(out / "after") is not None
    check = verify_frozen(before, out / "after", report.to_dict())
    result = {"gpus": torch.cuda.device_count(), "files": files, "safetensors_folder": single, "loads": loaded,
              **check}
    print(json.dumps(result))
    return 0 if single and loaded and check["bit_identical"] else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/fsdp-check")))
