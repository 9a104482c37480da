"""LoRA through peft: adapters on every linear layer of the decoder (the LM head excluded)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from torch import nn

from llm_backbones import _fs
from llm_backbones.errors import MissingDependencyError

INSTALL_HINT = "pip install 'llm-backbones[lora]'"


def default_target_modules(llm: nn.Module) -> list[str]:
    """Names (last component) of every nn.Linear inside the decoder layers of an HF causal LM: q/k/v/o and
    the MLP for LLaMA-style families; whatever the family names them otherwise."""
    names = set()
    for layer in llm.get_decoder().layers:
        names.update(name.rsplit(".", 1)[-1] for name, m in layer.named_modules() if isinstance(m, nn.Linear))
    return sorted(names)


def require_peft() -> ModuleType:
    """peft, or `MissingDependencyError` (one line: the extra to install) where it is not installed."""
    try:
        import peft
    except ImportError:
        raise MissingDependencyError(
            f"--mode lora needs peft, which is not installed: {INSTALL_HINT} (or choose --mode full or "
            "last-layer).",
            name="peft",
        ) from None
    return peft


def with_lora(
    llm: nn.Module,
    *,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.0,
    target_modules: list[str] | None = None,
) -> nn.Module:
    """`llm` frozen, with LoRA adapters added (a peft model)."""
    peft = require_peft()
    targets = target_modules or default_target_modules(llm)
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    return peft.get_peft_model(llm, config)


def apply_lora(backbone, **lora_kwargs) -> None:
    """Freeze the backbone and add LoRA adapters; `backbone.llm` becomes a peft model."""
    backbone.llm = with_lora(backbone.llm, **lora_kwargs)


def merge_lora(backbone) -> None:
    """Fold the adapters into the base weights; `backbone.llm` is a plain HF model again (for export)."""
    if hasattr(backbone.llm, "merge_and_unload"):
        backbone.llm = backbone.llm.merge_and_unload()


def save_adapter(model: nn.Module, directory: Path) -> Path:
    """Write the LoRA adapters of the peft model `model` alone, in peft's format (`save_pretrained`:
    adapter_config.json with r / alpha / dropout / target modules, adapter_model.safetensors), at
    `directory`: complete or not at all, a previous adapter replaced in one step. Call it before merging.
    `PeftModel.from_pretrained(base, directory)` puts them back on the model `model` wraps, as llm-backbones
    builds it. Only the adapters are saved, not the embeddings (peft's "auto" would save them whole where
    the build added PAD rows): those rows are drawn when the backbone is built, so the run's are those of a
    build after `torch.manual_seed(run seed)`. Returns `directory`."""
    with _fs.atomic_dir(directory) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
    return directory
