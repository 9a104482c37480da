"""The one table of backbone ids.

An id is declared once, as a `BackboneSpec`: family, model class, hub path, prompt format, BOS and pad
policy, half-precision dtype and decoder-layer class. Everything else (`LLAMA2_MODELS`, `LLM_BACKBONES`,
`prompt_builder_for`, the backbone's properties) is derived from it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import LlamaForCausalLM, PreTrainedModel
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from llm_backbones.errors import RegistryError, UnknownBackboneError
from llm_backbones.prompting import (
    LLaMa2ChatPromptBuilder,
    PromptBuilder,
    PurePromptBuilder,
    VicunaV15ChatPromptBuilder,
)


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the library needs to know about one backbone id.

    Attributes:
        backbone_id: the id users pass, `<family>-<version>-<size>-<variant>` (e.g. "llama2-7b-pure").
        family: the family name ("llama2"); selects the backbone class.
        hf_hub_path: where the weights live on the HF hub (a `model_path=` overrides it).
        llm_cls: the HF causal-LM class; `layer_cls`: its decoder layer (the FSDP wrapping unit).
        prompt_builder: the `PromptBuilder` subclass for this id.
        adds_bos: whether the tokenizer inserts BOS itself (checked at load time).
        pad_token: the PAD token to add when the tokenizer has none; `pad_to_multiple_of`: embedding rows
            are padded to this multiple after adding it.
        half_precision_dtype: the dtype for mixed-precision training and inference.
        embedded: name of a packaged asset directory that replaces the hub (the tiny default).
        source: where the facts of this entry come from.
    """

    backbone_id: str
    family: str
    hf_hub_path: str
    llm_cls: type[PreTrainedModel]
    layer_cls: type[nn.Module]
    prompt_builder: type[PromptBuilder]
    adds_bos: bool = True
    pad_token: str = "<PAD>"
    pad_to_multiple_of: int = 64
    half_precision_dtype: torch.dtype = torch.bfloat16
    embedded: str | None = None
    source: str = ""


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec, *, overwrite: bool = False) -> BackboneSpec:
    """Add `spec` to the registry (the one place an id is declared); returns it."""
    if not isinstance(spec, BackboneSpec):
        raise RegistryError(
            f"register_backbone expects a BackboneSpec, got {type(spec).__name__}. Build one with "
            "llm_backbones.BackboneSpec(backbone_id=..., family=..., ...)."
        )
    if not isinstance(spec.backbone_id, str) or not spec.backbone_id.strip():
        raise RegistryError(f"A backbone id must be a non-empty string, got {spec.backbone_id!r}.")
    if spec.backbone_id in _REGISTRY and not overwrite:
        raise RegistryError(
            f"Backbone id {spec.backbone_id!r} is already registered; pass overwrite=True to replace it, or "
            "choose another id."
        )
    _REGISTRY[spec.backbone_id] = spec
    return spec


def get_spec(backbone_id: str) -> BackboneSpec:
    """The registry entry of `backbone_id`; `UnknownBackboneError` (a ValueError) names close ids."""
    try:
        return _REGISTRY[backbone_id]
    except (KeyError, TypeError):
        raise UnknownBackboneError(backbone_id, _REGISTRY) from None


def registered_ids(family: str | None = None) -> list[str]:
    """Every registered id (of one family if given), in registration order."""
    return [i for i, s in _REGISTRY.items() if family is None or s.family == family]


def prompt_builder_for(llm_backbone_id: str) -> type[PromptBuilder]:
    """The prompt-builder class of an id, without loading any model (datasets need it)."""
    return get_spec(llm_backbone_id).prompt_builder


class _FamilyView(Mapping[str, dict[str, Any]]):
    """A live, read-only view of one family's ids in the original's shape:
    `{id: {"llm_family", "llm_cls", "hf_hub_path"}}`."""

    def __init__(self, family: str) -> None:
        self._family = family

    def __getitem__(self, backbone_id: str) -> dict[str, Any]:
        spec = _REGISTRY.get(backbone_id)
        if spec is None or spec.family != self._family:
            raise UnknownBackboneError(backbone_id, self, scope=f"{self._family} family")
        return {"llm_family": spec.family, "llm_cls": spec.llm_cls, "hf_hub_path": spec.hf_hub_path}

    def __iter__(self) -> Iterator[str]:
        return iter(registered_ids(self._family))

    def __len__(self) -> int:
        return len(registered_ids(self._family))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._family!r}: {list(self)})"


LLAMA2_MODELS: Mapping[str, dict[str, Any]] = _FamilyView("llama2")


def _llama2(backbone_id: str, hub: str, builder: type[PromptBuilder], **kw: Any) -> None:
    register_backbone(
        BackboneSpec(
            backbone_id=backbone_id,
            family="llama2",
            hf_hub_path=hub,
            llm_cls=LlamaForCausalLM,
            layer_cls=LlamaDecoderLayer,
            prompt_builder=builder,
            source=kw.pop("source", f"https://huggingface.co/{hub}/blob/main/config.json"),
            **kw,
        )
    )


# === LLaMA-2 family (Prismatic's LLAMA2_MODELS) ===
_llama2("llama2-7b-pure", "meta-llama/Llama-2-7b-hf", PurePromptBuilder)
_llama2("llama2-13b-pure", "meta-llama/Llama-2-13b-hf", PurePromptBuilder)
_llama2("llama2-7b-chat", "meta-llama/Llama-2-7b-chat-hf", LLaMa2ChatPromptBuilder)
_llama2("llama2-13b-chat", "meta-llama/Llama-2-13b-chat-hf", LLaMa2ChatPromptBuilder)
_llama2("vicuna-v15-7b", "lmsys/vicuna-7b-v1.5", VicunaV15ChatPromptBuilder)
_llama2("vicuna-v15-13b", "lmsys/vicuna-13b-v1.5", VicunaV15ChatPromptBuilder)
# The embedded default: LLaMA-2 architecture at a few million parameters with the real LLaMA-2
# tokenizer, packaged in llm_backbones/assets/llama2-tiny (weights made from a fixed seed on first use).
_llama2(
    "llama2-tiny-pure",
    "llm-backbones/llama2-tiny (embedded)",
    PurePromptBuilder,
    embedded="llama2-tiny",
    source="llm_backbones/assets/llama2-tiny/PROVENANCE.md",
)
