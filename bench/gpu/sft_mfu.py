"""GPU benchmark: full bf16 SFT of randomly initialised real-architecture models through the project's training
path, padding-free batches, SDPA or flash attention: tokens/s and MFU against the card's bf16 dense peak.

The path is the project's: ``cft_utils.config.TrainingSpec`` -> ``cft_utils.train.sft_config`` ->
``cft_utils.tokenized.prepare`` (TRL's own tokenisation, over-long records dropped) -> TRL ``SFTTrainer``, as
``cft_utils.train.execute`` builds them; only the model (random weights in a real shape: no hub access needed)
and the data (synthetic prompt/completion records of 128-2048 tokens, a locally trained BPE) are made here.

Shapes: ``llama-3.2-1b`` (hidden 2048, 16 layers, 32/8 heads, MLP 8192, vocabulary 128,256, tied embeddings) and,
on a card with more than 100 GB (H200), ``llama-3-8b`` (hidden 4096, 32 layers, 32/8 heads, MLP 14,336).
``--dry-run`` runs a tiny shape on the CPU in seconds (the test suite runs it; no GPU needed).

MFU = tokens/s x FLOPs per token / peak, with FLOPs per token = 6 x (matmul parameters, lm_head included) +
6 x layers x hidden x s_eff (causal attention, s_eff = sum(s^2)/sum(s) over the sequences trained), i.e. model
FLOPs only (activation recomputation, if on, is not counted). Peaks (dense bf16, NVIDIA data sheets): H100 SXM
and H200 989 TFLOPS, H100 NVL 835, H100 PCIe 756, A100 312, L40S 362; others: ``--peak-tflops``. Target: >= 45 %.

    # on a GPU machine with the gpu extra and a CUDA build of torch (about 3-4 minutes in all on an H200):
    python bench/gpu/sft_mfu.py                        # 1B shape; 8B too when the card has > 100 GB
    python bench/gpu/sft_mfu.py --shapes llama-3.2-1b --steps 30 --attn flash_attention_2
    python bench/gpu/sft_mfu.py --dry-run              # CPU, tiny shape, seconds
Writes ``bench/results/gpu_sft_mfu.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHAPES = {
    "llama-3.2-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                         intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0,
                         max_position_embeddings=8192),
    "llama-3-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0,
                       max_position_embeddings=8192),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=512, tie_word_embeddings=True, max_position_embeddings=512),
}
# tokens per optimizer step (one padding-free row per device) and whether to recompute activations
STEP_TOKENS = {"llama-3.2-1b": (16384, False), "llama-3-8b": (8192, True), "tiny": (256, False)}
PEAK_TFLOPS = [("H200", 989.0), ("H100 NVL", 835.0), ("H100 PCIE", 756.0), ("H100", 989.0), ("A100", 312.0),
               ("L40S", 362.0)]


def peak_tflops(device_name: str) -> float | None:
    """The card's dense bf16 peak from its name (None: unknown)."""
    name = device_name.upper()
    return next((p for key, p in PEAK_TFLOPS if key in name), None)


def flops_per_token(shape: dict, s_eff: float) -> float:
    """Model FLOPs per trained token (forward + backward): 6 x matmul parameters + causal attention."""
    d, L, ffn = shape["hidden_size"], shape["num_hidden_layers"], shape["intermediate_size"]
    kv = d // shape["num_attention_heads"] * shape["num_key_value_heads"]
    per_layer = d * d + 2 * d * kv + d * d + 3 * d * ffn
    matmul = L * per_layer + shape["vocab_size"] * d  # lm_head (also when tied to the embedding)
    return 6 * matmul + 6 * L * d * s_eff


def synthetic_words(seed: int = 0) -> list[str]:
    """A made-up vocabulary of 1,000 words (the BPE trained on them learns each as one token)."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return sorted({"".join(rng.choice(letters) for _ in range(rng.randint(3, 6))) for _ in range(1000)})


def synthetic_records(words: list[str], n: int, min_words: int, max_words: int, seed: int = 0) -> list[dict]:
    """``n`` prompt/completion records of ``min_words``..``max_words`` words, a quarter of them in the prompt."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        k = rng.randint(min_words, max_words)
        text = [rng.choice(words) for _ in range(k)]
        cut = max(1, k // 4)
        records.append({"id": f"syn-{i}", "language": "en",
                        "prompt": [{"role": "user", "content": " ".join(text[:cut])}],
                        "completion": [{"role": "assistant", "content": " ".join(text[cut:])}]})
    return records


def bench_shape(name: str, args, device: str) -> dict:
    """Train ``name`` for warm-up + measured steps; tokens/s over the measured steps and MFU."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, TrainerCallback
    from transformers.trainer_utils import SaveStrategy
    from trl import SFTTrainer

    from cft_utils.config import TrainingSpec
    from cft_utils.sandbox.tiny import train_bpe_tokenizer
    from cft_utils.tokenized import prepare
    from cft_utils.train import sft_config

    shape = SHAPES[name]
    step_tokens, recompute = STEP_TOKENS[name]
    step_tokens = args.step_tokens or step_tokens
    min_len, max_len = (16, 64) if name == "tiny" else (128, 2048)  # tokens per record
    steps = args.warmup + args.steps
    words = synthetic_words()
    rng = random.Random(1)
    tok = train_bpe_tokenizer([" ".join(rng.sample(words, len(words))) for _ in range(50)],
                              vocab_size=min(4000, shape["vocab_size"]), min_frequency=1)
    per_word = len(tok(" ".join(words[:200]))["input_ids"]) / 200  # ~1 token per word
    per_step = max(1, round(step_tokens / ((min_len + max_len) / 2)))
    records = synthetic_records(words, per_step * (steps + 1), max(1, int(min_len / per_word)),
                                max(2, int(max_len / per_word)))

    h = TrainingSpec(epochs=1, learning_rate=1e-5, global_batch_size=per_step, per_device_batch_size=per_step,
                     gradient_accumulation_steps=1, warmup_steps=0, max_length=2 * max_len,
                     precision="bf16" if device == "cuda" else "auto", padding_free=True,
                     gradient_checkpointing=recompute, optim="adamw_torch_fused" if device == "cuda" else "adamw_torch",
                     logging_steps=5, save_steps=100000, save_total_limit=1, num_threads=None)
    out = Path(tempfile.mkdtemp(prefix=f"sft-mfu-{name}-"))
    targs = sft_config(h, out / "checkpoints", seed=0, prepared=True)
    targs.max_steps = steps
    targs.include_num_input_tokens_seen = "all"  # padding-free: every input token is a real token
    targs.save_strategy = SaveStrategy.NO  # no checkpoint (16 GB for the 8B shape) at the end
    data = prepare(records, tok, targs, h.max_length, cache=False)
    lengths = [len(x) for x in data.dataset["input_ids"]]
    s_eff = sum(s * s for s in lengths) / sum(lengths)

    attn = args.attn
    if attn == "auto":
        import importlib.util

        attn = "flash_attention_2" if device == "cuda" and importlib.util.find_spec("flash_attn") else "sdpa"
    config = LlamaConfig(**shape, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    n_params = sum(p.numel() for p in model.parameters())

    class Clock(TrainerCallback):
        def __init__(self):
            self.t0 = self.t1 = None
            self.tok0 = self.tok1 = 0

        def _sync(self):
            if device == "cuda":
                torch.cuda.synchronize()

        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == args.warmup:
                self._sync()
                self.t0, self.tok0 = time.perf_counter(), state.num_input_tokens_seen

        def on_step_end(self, a, state, control, **kw):
            if state.global_step == steps:
                self._sync()
                self.t1, self.tok1 = time.perf_counter(), state.num_input_tokens_seen

    clock = Clock()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer = SFTTrainer(model=model, args=targs, train_dataset=data.dataset, processing_class=tok, callbacks=[clock])
    trainer.train()
    seconds = clock.t1 - clock.t0
    tokens = clock.tok1 - clock.tok0
    tps = tokens / seconds
    fpt = flops_per_token(shape, s_eff)
    dev_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = args.peak_tflops or (peak_tflops(dev_name) if device == "cuda" else None)
    mfu = tps * fpt / (peak * 1e12) if peak else None
    row = {"shape": name, "parameters": n_params, "device": dev_name, "attention": attn, "dtype": str(dtype),
           "padding_free": True, "activation_checkpointing": recompute, "records_per_step": per_step,
           "tokens_per_step": round(tokens / args.steps), "s_eff": round(s_eff, 1), "measured_steps": args.steps,
           "warmup_steps": args.warmup, "seconds": round(seconds, 3), "tokens_per_s": round(tps, 1),
           "tflops_per_s": round(tps * fpt / 1e12, 2), "peak_tflops": peak,
           "mfu": round(mfu, 4) if mfu is not None else None,
           "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if device == "cuda" else None,
           "n_dropped_over_length": data.n_dropped}
    print(f"[sft_mfu] {name}: {tps:,.0f} tokens/s, {row['tflops_per_s']} TFLOP/s"
          + (f", MFU {mfu:.1%} of {peak:.0f}" if mfu is not None else "") + f" ({attn}, {dev_name})", flush=True)
    del trainer, model
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny shape on the CPU (no GPU needed)")
    ap.add_argument("--shapes", nargs="*", default=None, help=f"of {sorted(SHAPES)} (default: by the card)")
    ap.add_argument("--steps", type=int, default=None, help="measured steps (default 20; dry run 2)")
    ap.add_argument("--warmup", type=int, default=None, help="unmeasured first steps (default 5; dry run 1)")
    ap.add_argument("--step-tokens", type=int, default=None, help="tokens per optimizer step (default per shape)")
    ap.add_argument("--attn", default="auto", help="auto (flash_attention_2 if installed, else sdpa), sdpa, ...")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak, if not listed")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_sft_mfu.json")
    args = ap.parse_args(argv)
    import torch

    if args.dry_run:
        device, shapes = "cpu", args.shapes or ["tiny"]
        args.steps, args.warmup = args.steps or 2, args.warmup if args.warmup is not None else 1
    else:
        if not torch.cuda.is_available():
            print("[sft_mfu] no CUDA device: run on a GPU machine, or pass --dry-run", file=sys.stderr)
            return 2
        device = "cuda"
        big = torch.cuda.get_device_properties(0).total_memory > 100 * 2**30
        shapes = args.shapes or (["llama-3.2-1b", "llama-3-8b"] if big else ["llama-3.2-1b"])
        args.steps, args.warmup = args.steps or 20, args.warmup if args.warmup is not None else 5
    rows = [bench_shape(s, args, device) for s in shapes]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"bench": "gpu_sft_mfu", "dry_run": args.dry_run, "target_mfu": 0.45,
                                    "rows": rows}, indent=1))
    print(f"[sft_mfu] wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
