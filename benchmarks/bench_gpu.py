"""One GPU run, JSON out: the VLA action step and training-step speed, ours against HF, side by side.

- VLA action step (DESIGN §6): BOS + 256 patch embeddings + 23 text tokens, 8 greedy tokens, batch 1
  and 8: HF `generate`, HF `generate(cache_implementation="static")`, ours (`generate_greedy`: static
  cache + compiled decode step on CUDA), and ours without compilation. Median and min of timed repeats
  after warm-up; tokens compared with HF's.
- Forward+backward tokens/s at 4x2048 and 32x288: HF sdpa (`model(**batch).loss.backward()`) against
  ours (`enable_fast_training`: chunked loss without full logits + compiled decoder layers), the
  losses of both on the same batch, and peak memory.

Weights are random (bf16 on CUDA), the architecture is Llama-2-7B's; `--small` shrinks it so the same
code path runs on a CPU in a minute (numbers then only show that the script works).

    python benchmarks/bench_gpu.py [--small] [--repeats 20] > benchmarks/results/DATE-gpu-DEVICE.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from llm_backbones import get_llm_backbone_and_tokenizer
from llm_backbones.embedded import ASSETS_DIR
from llm_backbones.generation import generate_greedy

LLAMA2_7B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000, "hidden_size": 4096,
    "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
    "hidden_act": "silu", "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
}
SMALL = {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 4}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": round(statistics.median(times), 2), "min_ms": round(min(times), 2)}


def build(config: dict, device: torch.device, dtype: torch.dtype):
    """The backbone through the registry (meta-device build), then random weights on the device."""
    tmp = Path(tempfile.mkdtemp())
    (tmp / "config.json").write_text(json.dumps(config))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (tmp / f).write_bytes((ASSETS_DIR / "llama2-tiny" / f).read_bytes())
    backbone, _ = get_llm_backbone_and_tokenizer(
        "llama2-7b-pure", model_path=tmp, inference_mode=True, attn_implementation="sdpa", dtype=dtype
    )
    # Buffers (RoPE frequencies) were computed for real at build time; keep them across to_empty.
    buffers = {name: b.clone() for name, b in backbone.llm.named_buffers()}
    backbone.llm.to_empty(device=device)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, b in buffers.items():
            backbone.llm.get_buffer(name).copy_(b)
        for name, p in backbone.llm.named_parameters():
            p.copy_(torch.ones_like(p) if "norm" in name else torch.randn_like(p) * 0.02)
    return backbone


def action_step(backbone, batch: int, repeats: int, compile_decode: bool) -> dict:
    model, device = backbone.llm, next(backbone.parameters()).device
    model.eval()
    dim = backbone.embed_dim
    g = torch.Generator(device="cpu").manual_seed(batch)
    text = torch.randint(3, 32000, (batch, 23), generator=g).to(device)
    bos = torch.ones((batch, 1), dtype=torch.long, device=device)
    patches = (torch.randn(batch, 256, dim, generator=g) * 0.02).to(device, next(model.parameters()).dtype)
    with torch.no_grad():
        embeds = torch.cat([backbone.embed_input_ids(bos), patches, backbone.embed_input_ids(text)], dim=1)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=device)

    def hf(**extra):
        with torch.no_grad():
            return model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=8, min_new_tokens=8,
                                  do_sample=False, pad_token_id=0, **extra)

    def ours(compile_decode=compile_decode):
        return generate_greedy(model, inputs_embeds=embeds, max_new_tokens=8, static_cache=True,
                               compile_decode=compile_decode)

    result = {
        "hf_generate": timed(hf, device, repeats, 2),
        "hf_generate_static": timed(lambda: hf(cache_implementation="static"), device, repeats, 3),
        "ours_eager": timed(lambda: ours(False), device, repeats, 2),
        "ours": timed(ours, device, repeats, 3),
    }
    # the same cache type as ours: bf16 rounding differs between cache layouts, not the algorithm
    result["same_tokens_as_hf_static"] = ours().tolist() == hf(cache_implementation="static").tolist()
    result["speedup_vs_hf_generate"] = round(result["hf_generate"]["median_ms"] / result["ours"]["median_ms"], 2)
    result["speedup_vs_hf_static"] = round(result["hf_generate_static"]["median_ms"] / result["ours"]["median_ms"], 2)
    return result


def train_step(backbone, batch: int, length: int, repeats: int, fast: bool) -> dict:
    device = next(backbone.parameters()).device
    backbone.train()
    backbone.fused_loss = False
    if fast:
        backbone.enable_fast_training(fused_loss=True, compile_layers=device.type == "cuda")
    g = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(3, 32000, (batch, length), generator=g).to(device)
    losses = []

    def step():
        loss = backbone(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.item())
        backbone.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = timed(step, device, repeats, 2)
    out = {**t, "tokens_per_s": round(batch * length / (t["median_ms"] / 1000), 1), "loss": losses[-1]}
    if device.type == "cuda":
        out["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true", help="a small config: checks the script on a CPU")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = {**LLAMA2_7B, **(SMALL if args.small else {})}
    compile_decode = device.type == "cuda"
    started = time.perf_counter()
    backbone = build(config, device, dtype)
    report = {
        "benchmark": "VLA action step and training step, ours vs HF",
        "date": date.today().isoformat(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.machine()})",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "config": "llama2-7b" + (" (small)" if args.small else ""),
        "dtype": str(dtype),
        "action_step": {f"batch_{b}": action_step(backbone, b, args.repeats, compile_decode) for b in (1, 8)},
    }
    shapes = [(4, 2048), (32, 288)] if not args.small else [(2, 256), (4, 64)]
    train = {}
    for batch, length in shapes:
        hf = train_step(backbone, batch, length, max(3, args.repeats // 4), fast=False)
        ours = train_step(backbone, batch, length, max(3, args.repeats // 4), fast=True)
        train[f"{batch}x{length}"] = {
            "hf_sdpa": hf, "ours": ours,
            "speedup": round(ours["tokens_per_s"] / hf["tokens_per_s"], 3),
            "loss_difference": abs(ours["loss"] - hf["loss"]),
        }
    report["train_step"] = train
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
