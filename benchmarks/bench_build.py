"""inference_mode builds: ours (meta device, no init) against the original's `_from_config` path.

Each measurement runs in a fresh Python process so its peak RSS is its own. The Llama-2-7B config is
built by ours only (the original path needs 27 GB in fp32, more than this machine has); the side-by-side
ratio uses the same architecture cut to `--layers` decoder layers, which fits. Prints JSON.

    python benchmarks/bench_build.py [--layers 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import torch
from _common import LLAMA2_7B

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
path, which = sys.argv[1], sys.argv[2]
import torch, transformers
from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM
from llm_backbones import get_llm_backbone_and_tokenizer
start = time.perf_counter()  # imports excluded: they are the same for both paths
if which == "ours":
    backbone, tok = get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=path, inference_mode=True)
    n = sum(p.numel() for p in backbone.parameters())
else:  # the original: random-init the architecture in fp32 from the config, then add PAD and resize
    tok = AutoTokenizer.from_pretrained(path, padding_side="right")
    llm = LlamaForCausalLM._from_config(AutoConfig.from_pretrained(path))
    llm.config.use_cache = True
    tok.add_special_tokens({"pad_token": "<PAD>"})
    llm.resize_token_embeddings(len(tok), pad_to_multiple_of=64)
    n = sum(p.numel() for p in llm.parameters())
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "import_seconds": start - t0,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "parameters": n}))
"""


def measure(model_dir: Path, which: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(model_dir), which], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def model_dir(root: Path, layers: int) -> Path:
    from llm_backbones.core.backbones.embedded import ASSETS_DIR

    d = root / f"llama2-7b-{layers}layers"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({**LLAMA2_7B, "num_hidden_layers": layers}))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (d / f).write_bytes((ASSETS_DIR / "llama2-tiny" / f).read_bytes())
    return d


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=4, help="decoder layers of the config both paths build")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        full = measure(model_dir(root, 32), "ours")
        small = model_dir(root, args.layers)
        ours, original = measure(small, "ours"), measure(small, "original")
    print(
        json.dumps(
            {
                "benchmark": "inference_mode build (no weights loaded yet)",
                "date": date.today().isoformat(),
                "device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads), torch "
                f"{torch.__version__}",
                "llama2_7b_ours": full,
                "targets_7b": {"seconds_max": 2.0, "peak_rss_gb_max": 1.5},
                f"llama2_7b_arch_{args.layers}_layers": {
                    "ours": ours,
                    "original_from_config_fp32": original,
                    "speedup": round(original["seconds"] / ours["seconds"], 1),
                    "rss_ratio": round(original["peak_rss_gb"] / ours["peak_rss_gb"], 1),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
