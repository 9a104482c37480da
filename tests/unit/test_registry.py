"""The one registry and what is derived from it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

import llm_backbones
from llm_backbones import (
    LLAMA2_MODELS,
    LLM_BACKBONES,
    BackboneSpec,
    LLaMa2LLMBackbone,
    get_spec,
    prompt_builder_for,
    register_backbone,
    registered_ids,
)
from llm_backbones import registry
from llm_backbones.errors import UnknownBackboneError
from llm_backbones.prompting import LLaMa2ChatPromptBuilder, PurePromptBuilder, VicunaV15ChatPromptBuilder


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test vanish after it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_public_api_names() -> None:
    for name in [
        "LLMBackbone", "HFCausalLLMBackbone", "LLaMa2LLMBackbone", "LLAMA2_MODELS", "LLM_BACKBONES",
        "get_llm_backbone_and_tokenizer", "prompt_builder_for",
    ]:
        assert name in llm_backbones.__all__ and hasattr(llm_backbones, name)


@pytest.mark.parametrize(
    ("backbone_id", "builder"),
    [
        ("llama2-7b-pure", PurePromptBuilder),
        ("llama2-13b-chat", LLaMa2ChatPromptBuilder),
        ("vicuna-v15-7b", VicunaV15ChatPromptBuilder),
        ("llama2-tiny-pure", PurePromptBuilder),
    ],
)
def test_prompt_builder_for_needs_no_model(backbone_id, builder) -> None:
    assert prompt_builder_for(backbone_id) is builder


def test_llm_backbones_derived_shape() -> None:
    assert LLM_BACKBONES["llama2-7b-chat"] == {"cls": LLaMa2LLMBackbone, "kwargs": {}}
    assert list(LLM_BACKBONES) == registered_ids()
    assert set(LLAMA2_MODELS) <= set(LLM_BACKBONES)


def test_spec_facts_of_llama2() -> None:
    spec = get_spec("llama2-7b-pure")
    assert spec.llm_cls is LlamaForCausalLM and spec.layer_cls is LlamaDecoderLayer
    assert spec.half_precision_dtype is torch.bfloat16
    assert (spec.pad_token, spec.pad_to_multiple_of, spec.adds_bos) == ("<PAD>", 64, True)


def test_llama2_models_rejects_other_families(scratch_registry) -> None:
    spec = dataclasses.replace(get_spec("llama2-7b-pure"), backbone_id="test-other-family", family="other")
    register_backbone(spec)
    assert "test-other-family" in LLM_BACKBONES and "test-other-family" not in LLAMA2_MODELS
    with pytest.raises(UnknownBackboneError, match="llama2 family"):
        LLaMa2LLMBackbone("test-other-family")


def test_register_is_live_and_overwrites_on_request(scratch_registry) -> None:
    spec = dataclasses.replace(get_spec("llama2-7b-pure"), backbone_id="test-llama2-extra")
    register_backbone(spec)
    assert "test-llama2-extra" in LLAMA2_MODELS  # the view follows the registry
    assert register_backbone(spec, overwrite=True) is spec  # refusals: tests/unit/test_bad_inputs.py
    assert isinstance(spec, BackboneSpec)
