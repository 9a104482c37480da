"""Fine-tuning modes (frozen / full / last-layer / LoRA) and the one training loop.

Modes say which parameters train:
- `frozen`: none (a feature extractor: the VLA trains only its projector).
- `full`: all of them.
- `last-layer`: the seed's `last_layer_finetune_modules` (input embeddings, last decoder layer, LM head).
- `lora`: low-rank adapters (peft) on every linear layer but the head; `merge_lora` folds them back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)

FINETUNE_MODES = ("frozen", "full", "last-layer", "lora")


@dataclass(frozen=True)
class TrainableSummary:
    mode: str
    trainable: int
    total: int

    def __str__(self) -> str:
        share = 100.0 * self.trainable / max(self.total, 1)
        return f"{self.mode}: {self.trainable:,} of {self.total:,} parameters trainable ({share:.2f}%)"


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, each shared tensor counted once."""
    seen: dict[int, nn.Parameter] = {}
    for p in module.parameters():
        seen.setdefault(id(p), p)
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, total


def apply_finetune_mode(backbone, mode: str, **lora_kwargs) -> TrainableSummary:
    """Set `requires_grad` for `mode` (see module docstring); returns the trainable counts."""
    if mode not in FINETUNE_MODES:
        raise ValueError(f"Unknown fine-tune mode {mode!r}; accepted: {', '.join(FINETUNE_MODES)}.")
    if mode == "lora":
        from llm_backbones.lora import apply_lora  # peft is imported only when LoRA is asked for

        apply_lora(backbone, **lora_kwargs)
    else:
        backbone.requires_grad_(mode == "full")
        if mode == "last-layer":
            for module in backbone.last_layer_finetune_modules:
                module.requires_grad_(True)
    trainable, total = count_parameters(backbone)
    summary = TrainableSummary(mode, trainable, total)
    logger.info("%s", summary)
    return summary


def train_steps(
    backbone: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """One optimizer step per batch (`input_ids`, `attention_mask`, `labels`); returns the losses."""
    backbone.train()
    losses = []
    for step, batch in enumerate(batches):
        loss = backbone(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    return losses
