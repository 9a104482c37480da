"""LoRA through peft: adapters on every linear layer of the decoder (the LM head excluded)."""

from __future__ import annotations

from torch import nn


def default_target_modules(backbone) -> list[str]:
    """Names (last component) of every nn.Linear inside the decoder layers: q/k/v/o and the MLP for
    LLaMA-style families; whatever the family names them otherwise."""
    names = set()
    for layer in backbone.llm.get_decoder().layers:
        names.update(name.rsplit(".", 1)[-1] for name, m in layer.named_modules() if isinstance(m, nn.Linear))
    return sorted(names)


def apply_lora(
    backbone, *, r: int = 16, alpha: int = 32, dropout: float = 0.0, target_modules: list[str] | None = None
) -> None:
    """Freeze the backbone and add LoRA adapters; `backbone.llm` becomes a peft model."""
    from peft import LoraConfig, get_peft_model

    targets = target_modules or default_target_modules(backbone)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    backbone.llm = get_peft_model(backbone.llm, config)


def merge_lora(backbone) -> None:
    """Fold the adapters into the base weights; `backbone.llm` is a plain HF model again (for export)."""
    if hasattr(backbone.llm, "merge_and_unload"):
        backbone.llm = backbone.llm.merge_and_unload()
