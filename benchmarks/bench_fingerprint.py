"""What checkpoint verification costs: sha256 of the weight files, and the NaN/inf check of the weights.

`save_backbone` hashes every weight file it writes and `load_backbone` checks those hashes by default
(`verify=False` skips it); every strict load also checks that no weight is NaN/inf. This measures both on a
~1 GB safetensors shard written here (random bf16 values), next to the cost of reading the same file with
safetensors, and extrapolates to Llama-2-7B's 13.5 GB of bf16 weights (as one file, and as 3 shards hashed
in parallel threads). The file is in the page cache when measured (just written, then read once), as a
checkpoint being loaded usually is after its first read; a cold read from disk adds the disk's own time to
both hashing and loading. Prints JSON.

    python benchmarks/bench_fingerprint.py [--gb 1.0] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from _common import cpu_description
from safetensors.torch import load_file, save_file

from llm_backbones.core.backbones.files import is_finite, sha256_file, sha256_files

LLAMA2_7B_BF16_BYTES = 13.5e9
LLAMA2_7B_SHARDS = 3


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _read(path: Path, chunk: int = 8 * 2**20) -> None:
    with open(path, "rb") as handle:
        while handle.read(chunk):
            pass


def _device() -> str:
    return f"{cpu_description()}, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="size of the measured shard (GB)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    elements = int(args.gb * 1e9) // 2  # bf16
    rows = 4096
    tensor = torch.randn(elements // rows, rows, dtype=torch.bfloat16)
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "model-00001-of-00001.safetensors"
        save_file({"weight": tensor}, shard, metadata={"format": "pt"})
        size = shard.stat().st_size
        load_file(shard)  # into the page cache
        mb = size / 1e6

        hash_s = _best(lambda: sha256_file(shard), args.repeats)
        # reading the same bytes: a streamed read, and safetensors' load with every value materialised
        read_s = _best(lambda: _read(shard), args.repeats)
        load_s = _best(lambda: load_file(shard)["weight"].clone(), args.repeats)
        copies = [
            Path(tmp) / f"copy-{i}.safetensors" for i in range(min(LLAMA2_7B_SHARDS, os.cpu_count() or 1))
        ]
        for copy in copies:
            os.link(shard, copy)  # same bytes, separate paths: hashed by separate threads
        parallel_s = _best(lambda: sha256_files(copies), args.repeats)

        f32 = tensor[: tensor.shape[0] // 2].float()  # ~1 GB of float32 as well
        finite = {
            "bfloat16": _best(lambda: is_finite(tensor), args.repeats),
            "float32": _best(lambda: is_finite(f32), args.repeats),
        }
        elementwise = _best(lambda: bool(torch.isfinite(tensor).all()), args.repeats)

    hash_mbps = mb / hash_s
    parallel_mbps = mb * len(copies) / parallel_s
    finite_gbps = {k: (tensor if k == "bfloat16" else f32).nbytes / 1e9 / v for k, v in finite.items()}
    seven_b = {
        "sha256_one_thread_s": round(LLAMA2_7B_BF16_BYTES / 1e6 / hash_mbps, 1),
        f"sha256_{LLAMA2_7B_SHARDS}_shards_{len(copies)}_threads_s": round(
            LLAMA2_7B_BF16_BYTES / 1e6 / parallel_mbps, 1
        ),
        "isfinite_check_s": round(LLAMA2_7B_BF16_BYTES / 1e9 / finite_gbps["bfloat16"], 1),
        "safetensors_load_materialised_s": round(LLAMA2_7B_BF16_BYTES / 1e6 / (mb / load_s), 1),
    }
    result = {
        "benchmark": "checkpoint verification: sha256 of weight files, NaN/inf check of weights",
        "date": date.today().isoformat(),
        "device": _device(),
        "python": platform.python_version(),
        "shard_bytes": size,
        "page_cache": "warm (file just written and read)",
        "sha256_MBps_one_thread": round(hash_mbps, 1),
        "sha256_MBps_parallel": {
            "files": len(copies),
            "threads": len(copies),
            "MBps": round(parallel_mbps, 1),
        },
        "streamed_read_MBps": round(mb / read_s, 1),
        "safetensors_load_materialised_MBps": round(mb / load_s, 1),
        "sha256_time_vs_safetensors_load": round(hash_s / load_s, 2),
        "isfinite_check_GBps": {k: round(v, 2) for k, v in finite_gbps.items()},
        "isfinite_elementwise_GBps_bfloat16": round(tensor.nbytes / 1e9 / elementwise, 2),
        "llama2_7b_bf16_13.5GB_extrapolated": seven_b,
        "note": "load_backbone verifies by default (verify=False skips hashing); save_backbone hashes once "
        "after writing. The NaN/inf check is one sum per tensor (elementwise only when a sum overflows).",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
