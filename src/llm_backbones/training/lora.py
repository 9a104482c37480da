"""LoRA through peft: adapters on every linear layer of the decoder (the LM head excluded)."""

from __future__ import annotations

from torch import nn


def default_target_modules(llm: nn.Module) -> list[str]:
    """Names (last component) of every nn.Linear inside the decoder layers of an HF causal LM: q/k/v/o and
    the MLP for LLaMA-style families; whatever the family names them otherwise."""
    names = set()
    for layer in llm.get_decoder().layers:
        names.update(name.rsplit(".", 1)[-1] for name, m in layer.named_modules() if isinstance(m, nn.Linear))
    return sorted(names)


def with_lora(
    llm: nn.Module,
    *,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.0,
    target_modules: list[str] | None = None,
) -> nn.Module:
    """`llm` frozen, with LoRA adapters added (a peft model)."""
    from peft import LoraConfig, get_peft_model

    targets = target_modules or default_target_modules(llm)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    return get_peft_model(llm, config)


def apply_lora(backbone, **lora_kwargs) -> None:
    """Freeze the backbone and add LoRA adapters; `backbone.llm` becomes a peft model."""
    backbone.llm = with_lora(backbone.llm, **lora_kwargs)


def merge_lora(backbone) -> None:
    """Fold the adapters into the base weights; `backbone.llm` is a plain HF model again (for export)."""
    if hasattr(backbone.llm, "merge_and_unload"):
        backbone.llm = backbone.llm.merge_and_unload()
