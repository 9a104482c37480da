"""What one periodic training checkpoint costs: measured for the tiny default, computed for Llama-2-7B.

Measured (one process, the device named in the output): the mean time of a training step of
`llama2-tiny-pure` (full fine-tuning, AdamW, global batch 8), the time to write one checkpoint with
`torch.distributed.checkpoint` (`write_checkpoint` + `publish_checkpoint`, fsync included) and to load it
back (`load_checkpoint`), the bytes written, and the overhead at a few `--save-every` values.

Computed (from the real parameter counts of the Llama-2-7B architecture, built on the meta device): the
bytes each rank writes per checkpoint under FSDP2 for each fine-tune mode: the fp32 trainable weights
(4 B each) and AdamW's two fp32 moments (8 B), sharded evenly over N ranks; frozen weights are not
written (they come from the base model on resume). Prints JSON.

    python benchmarks/bench_checkpoint.py [--steps 10] [--repeats 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import LLAMA2_7B

from llm_backbones import get_llm_backbone_and_tokenizer, tokenize_conversation
from llm_backbones.data.examples import PaddedCollator
from llm_backbones.training.checkpoint import RunDir, load_checkpoint, publish_checkpoint, write_checkpoint
from llm_backbones.training.distributed import DistributedContext
from llm_backbones.training.finetune import apply_finetune_mode
from llm_backbones.training.loop import lr_scheduler, optimizer_step
from llm_backbones.training.settings import FinetuneConfig

CONVERSATIONS = [
    [
        {"from": "human", "value": f"What action should the robot take to {task}?"},
        {"from": "gpt", "value": answer},
    ]
    for task, answer in (
        ("open the drawer", "pull the handle"),
        ("close the door", "push it"),
        ("pick up the carrot", "grasp and lift"),
        ("wipe the table", "move the sponge left"),
        ("stack the blocks", "red on blue"),
        ("put the cup in the sink", "lift, move right, lower"),
        ("turn on the tap", "rotate the handle"),
        ("fold the towel", "grasp both corners"),
    )
]
GB = 1e9


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def measure_tiny(device: torch.device, steps: int, repeats: int) -> dict:
    ctx = DistributedContext(rank=0, world_size=1, device=device)
    torch.manual_seed(0)
    backbone, tokenizer = get_llm_backbone_and_tokenizer("llama2-tiny-pure")
    apply_finetune_mode(backbone, "full")
    backbone.to(device).train()
    examples = [tokenize_conversation(tokenizer, backbone.prompt_builder_fn, c) for c in CONVERSATIONS]
    batch = {
        k: v.to(device)
        for k, v in PaddedCollator(model_max_length=None, pad_token_id=backbone.pad_token_id)(
            examples
        ).items()
    }
    optimizer = torch.optim.AdamW([p for p in backbone.parameters() if p.requires_grad], lr=1e-4, fused=True)
    scheduler = lr_scheduler(optimizer, FinetuneConfig(steps=10_000))

    def step(n: int) -> None:
        optimizer_step(backbone, [batch], optimizer, step=n, ctx=ctx, max_grad_norm=1.0)
        scheduler.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for n in range(3):  # warm-up (and the optimizer state exists)
        step(n + 1)
    sync()
    start = time.perf_counter()
    for n in range(steps):
        step(n + 4)
    sync()
    step_s = (time.perf_counter() - start) / steps

    save_s, load_s, written = [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(tmp)
        for r in range(repeats):
            sync()
            start = time.perf_counter()
            pending = write_checkpoint(
                run, 100 + r, backbone, optimizer, scheduler, ctx=ctx, meta={"bench": True}
            )
            path = publish_checkpoint(run, pending, ctx=ctx, keep=1)
            save_s.append(time.perf_counter() - start)
            written = sum(f.stat().st_size for f in Path(path).iterdir())
            start = time.perf_counter()
            load_checkpoint(path, backbone, optimizer, scheduler, ctx=ctx)
            sync()
            load_s.append(time.perf_counter() - start)
    trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    save = statistics.median(save_s)
    return {
        "model": "llama2-tiny-pure (full fine-tuning, fp32, AdamW)",
        "device": device_name(device),
        "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the host during the measurement
        "trainable_parameters": trainable,
        "global_batch": len(examples),
        "step_seconds": round(step_s, 4),
        "checkpoint_write_seconds_median": round(save, 4),
        "checkpoint_write_seconds_all": [round(s, 4) for s in save_s],
        "checkpoint_load_seconds_median": round(statistics.median(load_s), 4),
        "checkpoint_bytes": written,
        "bytes_per_trainable_parameter": round(written / trainable, 2),
        "write_gb_per_s": round(written / save / GB, 3),
        "one_checkpoint_in_steps": round(save / step_s, 2),
        "overhead_by_save_every": {str(n): f"{100 * save / (n * step_s):.2f}%" for n in (10, 100, 500, 1000)},
    }


def computed_7b() -> dict:
    tmp = Path(tempfile.mkdtemp())
    (tmp / "config.json").write_text(json.dumps(LLAMA2_7B))
    assets = (
        Path(__import__("llm_backbones.core.backbones.embedded", fromlist=["ASSETS_DIR"]).ASSETS_DIR)
        / "llama2-tiny"
    )
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp / name).write_bytes((assets / name).read_bytes())
    modes = {}
    for mode in ("full", "last-layer", "lora"):
        backbone, _ = get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=tmp, inference_mode=True)
        summary = apply_finetune_mode(backbone, mode)
        total_bytes = 12 * summary.trainable  # fp32 weights + AdamW exp_avg + exp_avg_sq
        modes[mode] = {
            "trainable_parameters": summary.trainable,
            "checkpoint_gb_total": round(total_bytes / GB, 2),
            "checkpoint_gb_per_rank": {str(n): round(total_bytes / n / GB, 3) for n in (1, 8, 16, 64, 256)},
        }
    return {
        "model": "Llama-2-7B (PAD added, 32064 rows), FSDP2, fp32 master weights + AdamW",
        "written_per_trainable_parameter_bytes": 12,
        "frozen_parameters_written": False,
        "modes": modes,
        "note": "seconds per checkpoint = checkpoint_gb_per_rank / the write bandwidth one rank gets "
        "from the shared filesystem (all ranks write at once)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    result = {
        "benchmark": "bench_checkpoint",
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "measured_tiny": measure_tiny(device, args.steps, args.repeats),
        "computed_7b": computed_7b(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
