"""Worker of test_real_models.py::test_layer_freezing_under_fsdp_on_cpu (run with torchrun, 2 gloo processes).

FSDP 1 with use_orig_params over a tiny LLaMA: LF-style freeze of layer 1's q/k/v through the project's
apply_freeze, three AdamW steps, then the full state dict gathered (FULL_STATE_DICT, as configs/accelerate/fsdp.yaml
saves). Rank 0 writes a JSON verdict to argv[1]."""

import functools
import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FullStateDictConfig, StateDictType
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from cft_utils.mitigation.freeze import FreezePlan, apply_freeze, check_distributed_support

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=64)
model = AutoModelForCausalLM.from_config(cfg)
init = {k: v.clone() for k, v in model.state_dict().items()}
plan = FreezePlan("LF_H2", modules={m: [1] for m in ("q_proj", "k_proj", "v_proj")})
check_distributed_support(plan, "FSDP", {"FSDP_USE_ORIG_PARAMS": "true"})
report = apply_freeze(model, plan)
wrap = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={LlamaDecoderLayer})
fsdp = FSDP(model, auto_wrap_policy=wrap, use_orig_params=True, device_id=torch.device("cpu"))
opt = torch.optim.AdamW([p for p in fsdp.parameters() if p.requires_grad], lr=1e-2)
g = torch.Generator().manual_seed(rank)
for _ in range(3):
    ids = torch.randint(0, 64, (2, 8), generator=g)
    fsdp(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()
# offload_to_cpu=True / rank0_only=True (accelerate's defaults) crashed on CPU (SIGSEGV / unshard error): gather on
# every rank instead; on GPUs accelerate's defaults are the usual path (bench/gpu/fsdp_freeze_check.py).
with FSDP.state_dict_type(fsdp, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=False,
                                                                                     rank0_only=False)):
    sd = fsdp.state_dict()
if rank == 0:
    frozen_same = all(torch.equal(sd[n], init[n]) for n in report.frozen)
    changed = [n for n in sd if n not in report.frozen and ".layers." in n and not torch.equal(sd[n], init[n])]
    with open(sys.argv[1], "w") as f:
        json.dump({"frozen": report.frozen, "frozen_bit_identical": frozen_same, "n_changed": len(changed),
                   "full_keys": sorted(sd) == sorted(init)}, f)
dist.destroy_process_group()
