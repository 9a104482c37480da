"""Run by torchrun from test_fsdp.py: shard a fresh tiny backbone (FSDP2 or FSDP1), load a full
state dict from a checkpoint directory into it, and write the probe logits (rank 0)."""

import sys

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from llm_backbones import get_llm_backbone_and_tokenizer
from llm_backbones.training.distributed import init_distributed, load_full_state_dict, shard_fsdp2, wrap_fsdp1

checkpoint, version, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = init_distributed("cpu")
backbone, tokenizer = get_llm_backbone_and_tokenizer(
    "llama2-tiny-pure"
)  # initial weights, not the checkpoint's
model = shard_fsdp2(backbone) if version == 2 else wrap_fsdp1(backbone, ctx.device)
state = {f"llm.{k}": v for k, v in load_file(f"{checkpoint}/export/model.safetensors").items()}
load_full_state_dict(model, state)
ids = tokenizer(
    "In: What action should the robot take to open the drawer?\nOut:", return_tensors="pt"
).input_ids
model.eval()
with torch.no_grad():
    logits = model(input_ids=ids).logits
if ctx.is_main:
    torch.save(logits, out)
dist.barrier()
dist.destroy_process_group()
