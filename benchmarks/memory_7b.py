"""Memory per GPU for fine-tuning Llama-2-7B with FSDP2, computed from the real parameter counts.

The backbone is built on the meta device (no memory), each fine-tune mode applied, and the bytes of
the model states counted: fp32 master weights sharded over N ranks (4 B/param), fp32 gradients of the
trainable parameters (4 B) and AdamW's two fp32 moments (8 B), sharded too; plus the bf16 copy of the
largest FSDP units gathered for compute (two at a time: the current and the prefetched one).
Activations are not included (they depend on batch and sequence length; with activation checkpointing
each decoder layer keeps only its bf16 input: batch x tokens x 4096 x 2 B). Prints JSON.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from _common import LLAMA2_7B

from llm_backbones import get_llm_backbone_and_tokenizer
from llm_backbones.core.backbones.embedded import ASSETS_DIR
from llm_backbones.training.finetune import apply_finetune_mode

GB = 2**30


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    (tmp / "config.json").write_text(json.dumps(LLAMA2_7B))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (tmp / f).write_bytes((ASSETS_DIR / "llama2-tiny" / f).read_bytes())
    rows = {}
    for mode in ("full", "last-layer", "lora"):
        backbone, _ = get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=tmp, inference_mode=True)
        summary = apply_finetune_mode(backbone, mode)
        units = [sum(p.numel() for p in layer.parameters()) for layer in backbone.llm.get_decoder().layers]
        root = summary.total - sum(units)  # embeddings, final norm, LM head: the root unit
        gathered = 2 * max(max(units), root) * 2  # two bf16 units resident at once
        per_gpu = {}
        for n in (1, 2, 4, 8, 16, 64):
            states = (4 * summary.total + 12 * summary.trainable) / n
            per_gpu[str(n)] = round((states + gathered) / GB, 2)
        rows[mode] = {
            "parameters": summary.total,
            "trainable": summary.trainable,
            "gb_per_gpu_by_world_size": per_gpu,
        }
    print(
        json.dumps(
            {
                "model": "Llama-2-7B (PAD added, 32064 rows)",
                "precision": "bf16 compute, fp32 master + AdamW",
                "excludes": "activations",
                "modes": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
