"""Backbone classes, `LLM_BACKBONES` (derived from the registry) and the upstream entry point."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from typing import Any

from transformers import PreTrainedTokenizerBase

from llm_backbones import _args
from llm_backbones._redact import HubToken
from llm_backbones.core.backbones.backbone import HFCausalLLMBackbone, LLMBackbone
from llm_backbones.core.backbones.llama2 import LLaMa2LLMBackbone
from llm_backbones.core.registry import get_spec, registered_ids, registry_write_error

# A family gets its own class only where its code (or its constructor defaults) truly differ. Mistral, Phi-2,
# Llama-3.x, Qwen2.5, Gemma-2 and Phi-3.5 need none: pad policy, BOS policy, prompt format and layer class
# are registry data, tied embeddings are handled generically, and Gemma-2's eager attention follows from its
# HF class not supporting sdpa (`select_attn_implementation`).
FAMILY_BACKBONE_CLASSES: dict[str, type[HFCausalLLMBackbone]] = {"llama2": LLaMa2LLMBackbone}


def backbone_class_for(backbone_id: str) -> type[HFCausalLLMBackbone]:
    return FAMILY_BACKBONE_CLASSES.get(get_spec(backbone_id).llm_family, HFCausalLLMBackbone)


class _BackboneTable(Mapping[str, dict[str, Any]]):
    """Live view of every registered id in the original's shape: `{id: {"cls": ..., "kwargs": {}}}`."""

    def __getitem__(self, backbone_id: str) -> dict[str, Any]:
        return {"cls": backbone_class_for(backbone_id), "kwargs": {}}

    def __iter__(self) -> Iterator[str]:
        return iter(registered_ids())

    def __len__(self) -> int:
        return len(registered_ids())

    def __setitem__(self, backbone_id: str, value: Any) -> None:
        raise registry_write_error("LLM_BACKBONES", backbone_id, value)

    def __delitem__(self, backbone_id: str) -> None:
        raise registry_write_error("LLM_BACKBONES", backbone_id, deleting=True)


LLM_BACKBONES: Mapping[str, dict[str, Any]] = _BackboneTable()

# The keywords a backbone's constructor takes (`model_path=`, `dtype=`, `attn_implementation=`, ...): a
# misspelt one is refused with the closest name before anything is loaded.
BACKBONE_KEYWORDS: frozenset[str] = frozenset(inspect.signature(HFCausalLLMBackbone.__init__).parameters) - {
    "self",
    "llm_backbone_id",
}


def get_llm_backbone_and_tokenizer(
    llm_backbone_id: str,
    llm_max_length: int = 2048,
    hf_token: str | None = None,
    inference_mode: bool = False,
    **kwargs: Any,
) -> tuple[LLMBackbone, PreTrainedTokenizerBase]:
    """Build the backbone of a registered id; returns `(backbone, backbone.get_tokenizer())`.

    `kwargs` go to the backbone constructor: `model_path=`, `attn_implementation=`, `dtype=`,
    `use_flash_attention_2=`, `trust_remote_code=`, `allow_pickle=`, `strict=` (every weight from the file),
    `allow_external_files=` (files outside `model_path`), `prompt_format=` (a format other than the id's,
    e.g. "llama2-chat-prismatic"). `hf_token` may be a str or a `HubToken`; it is
    wrapped at once, so no frame of the load holds the plain token.
    """
    hf_token = HubToken.wrap(hf_token)
    _args.check_keywords(kwargs, BACKBONE_KEYWORDS, "get_llm_backbone_and_tokenizer")
    entry = LLM_BACKBONES[llm_backbone_id]
    backbone = entry["cls"](
        llm_backbone_id,
        llm_max_length=llm_max_length,
        hf_token=hf_token,
        inference_mode=inference_mode,
        **entry["kwargs"],
        **kwargs,
    )
    return backbone, backbone.get_tokenizer()


__all__ = [
    "LLMBackbone",
    "HFCausalLLMBackbone",
    "LLaMa2LLMBackbone",
    "LLM_BACKBONES",
    "FAMILY_BACKBONE_CLASSES",
    "BACKBONE_KEYWORDS",
    "backbone_class_for",
    "get_llm_backbone_and_tokenizer",
]
