#!/usr/bin/env python
"""OpenVLA's own training step, timed: forward + backward + AdamW on the tiny fixture policy, fp32 on CPU.

Runs ONLY in the throw-away virtualenv with the versions OpenVLA pins (transformers 4.40.1, tokenizers 0.19.1,
timm 0.9.16; tests/golden/fixtures/openvla_policy/PROVENANCE.md says how it was made; `--mode lora` also needs
peft 0.11.1, the version OpenVLA pins: `/tmp/openvla-ref/bin/pip install peft==0.11.1`). Started by
benchmarks/bench_finetune_vla.py, which writes the batch both sides train on:

    /tmp/openvla-ref/bin/python scripts/openvla_train_step.py --batch BATCH.safetensors --mode full \
        --steps 10 --warmup 2 --lr 2e-5 [--serve] [--openvla-mirror /work/.mirror/openvla+openvla/repo]

The model is OpenVLA's HF class `OpenVLAForActionPrediction` (`prismatic/extern/hf/modeling_prismatic.py`,
read at run time from the git mirror, as scripts/make_openvla_fixtures.py does; its `build` sets every weight
by the fixtures' rule, the same values `tests/vla_checkpoints.write_hf_checkpoint` writes). Its `forward` with
`labels` is the computation of Prismatic's `PrismaticVLM.forward` on an all-multimodal batch (vision ->
projector -> patches spliced after BOS, patch labels -100, the LLM's mean next-token loss) and it is the
class OpenVLA's `vla-scripts/finetune.py` trains. `PrismaticVLM` itself is not built: its backbones load
pretrained weights and configs from the hub (timm `pretrained=True`, `LlamaForCausalLM.from_pretrained`).

The step, per mode, as OpenVLA's recipes run it (no autocast: fp32 on CPU; no gradient checkpointing):
- `full` (Prismatic's `vla-train` stage, `freeze_backbones("vla-train")`): vision frozen, projector + LLM
  trained; `loss.backward()`, `clip_grad_norm_(max_norm=1.0)` (its `max_grad_norm`), `AdamW(params, lr)`
  with weight decay 0 (OpenVLA's VLA configs), `step()`, `zero_grad()`.
- `lora` (`vla-scripts/finetune.py`): `get_peft_model(vla, LoraConfig(r=32, lora_alpha=min(32, 16),
  lora_dropout=0.0, target_modules="all-linear", init_lora_weights="gaussian"))`, `loss.backward()`,
  `AdamW(trainable, lr)` (torch's default weight decay 0.01), `step()`, `zero_grad()`; no clipping.
  "all-linear" includes the vision towers' linear layers, so the towers run with autograd.

With `--serve` it steps when told (a "step" line on stdin: one step, one JSON line `{"ms", "loss"}` back),
so the benchmark can alternate the two sides step by step on a shared machine. Otherwise it prints one JSON
line: per-step times (ms), their median after `--warmup` steps, examples/s, the first step's
loss, trainable / total parameters, the process's fp32 GEMM throughput just before (benchmarks/_common.py
`gemm_gflops`, the same calibration as our side), versions.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import gemm_gflops  # noqa: E402 - stdlib at import; the same calibration as our side

# the fixture script's helpers: OpenVLA's HF files from the mirror, its tokenizer, the model by the rule
from make_openvla_fixtures import (  # noqa: E402
    DEFAULT_MIRROR,
    build,
    extract_openvla,
    import_openvla,
    load_tokenizer,
    versions,
)

CHECKPOINT = "dinosiglip-224-naive"
LORA_RANK = 32
MAX_GRAD_NORM = 1.0  # Prismatic's VLA configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--batch", type=Path, required=True, help="safetensors: input_ids, attention_mask, ..."
    )
    parser.add_argument("--mode", choices=("full", "lora"), required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--openvla-mirror", default=str(DEFAULT_MIRROR))
    parser.add_argument("--openvla-commit", default="HEAD")
    parser.add_argument(
        "--serve", action="store_true", help="step when told: one step per 'step' line on stdin (JSON back)"
    )
    args = parser.parse_args()
    args.openvla_src = None
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    import torch
    from safetensors.torch import load_file

    batch = load_file(args.batch)
    with tempfile.TemporaryDirectory(prefix="openvla-train-") as tmp:
        work = Path(tmp)
        source = extract_openvla(args, work)
        openvla = import_openvla(work)
        tokenizer, _ = load_tokenizer(work)
        model, _, _, _ = build(CHECKPOINT, openvla, tokenizer)
    model.train()
    if args.mode == "full":
        model.vision_backbone.requires_grad_(False)
        model.projector.requires_grad_(True)
        model.language_model.requires_grad_(True)
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0
        )
    else:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=LORA_RANK,
            lora_alpha=min(LORA_RANK, 16),
            lora_dropout=0.0,
            target_modules="all-linear",
            init_lora_weights="gaussian",
        )
        model = get_peft_model(model, config)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    def step() -> float:
        output = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            labels=batch["labels"],
        )
        loss = output.loss
        loss.backward()
        if args.mode == "full":
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad()
        return loss.item()

    info = {
        "mode": args.mode,
        "trainable_params": trainable,
        "total_params": total,
        "optimizer": repr(optimizer).splitlines()[0] + f" {optimizer.defaults}",
        "torch_threads": torch.get_num_threads(),
        "model": f"{type(model).__name__} (OpenVLAForActionPrediction, {CHECKPOINT})",
        "openvla": source,
        "versions": {**versions(), "peft": _version("peft")},
    }
    if args.serve:  # one step per "step" line on stdin, one JSON line back; EOF ends
        print(json.dumps({"ready": True, **info}, default=str), flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "step":
                start = time.perf_counter()
                loss = step()
                print(json.dumps({"ms": (time.perf_counter() - start) * 1000.0, "loss": loss}), flush=True)
            elif command == "gemm":
                print(json.dumps({"gemm_gflops": gemm_gflops()}), flush=True)
        return
    gemm = gemm_gflops()
    times, losses = [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        losses.append(step())
        times.append((time.perf_counter() - start) * 1000.0)
    measured = times[args.warmup :]
    size = int(batch["input_ids"].shape[0])
    median = statistics.median(measured)
    print(
        json.dumps(
            {
                "step_ms": [round(t, 2) for t in times],
                "median_ms": round(median, 2),
                "min_ms": round(min(measured), 2),
                "n": len(measured),
                "examples_per_s": round(size / (median / 1000.0), 3),
                "first_loss": losses[0],
                "gemm_gflops": gemm,
                "losses": losses,
                **info,
            },
            default=str,
        )
    )


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
