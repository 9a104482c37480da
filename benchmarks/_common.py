"""What the benchmark scripts share: the Llama-2-7B config they build, how their JSON names a CPU."""

from __future__ import annotations

import os
import platform
from pathlib import Path

LLAMA2_7B = {  # meta-llama/Llama-2-7b-hf config.json
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def cpu_description() -> str:
    """ "CPU (<model name>, <n> threads)", the model as /proc/cpuinfo names it where it can be read."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU ({model}, {os.cpu_count()} threads)"


def gemm_gflops(reps: int = 8) -> float:
    """fp32 GEMM throughput of this process now (GFLOP/s, median of `reps`): `linear` of [2048, 1024] by
    [4096, 1024], a vision-tower MLP's shape. Runs in both benchmark environments (torch imported here), so a
    comparison across two torch builds, or two moments of a shared machine, can say whether the CPUs' speed
    differed."""
    import statistics
    import time

    import torch

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 1024, generator=generator)
    w = torch.randn(4096, 1024, generator=generator)
    torch.nn.functional.linear(x, w)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        torch.nn.functional.linear(x, w)
        times.append(time.perf_counter() - start)
    return round(2 * 2048 * 1024 * 4096 / statistics.median(times) / 1e9, 1)
