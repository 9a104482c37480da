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
    LLaMa2ChatPromptBuilder,
    LLaMa2LLMBackbone,
    PurePromptBuilder,
    VicunaV15ChatPromptBuilder,
    get_spec,
    prompt_builder_for,
    register_backbone,
    registered_ids,
)
from llm_backbones.core import registry
from llm_backbones.errors import UnknownBackboneError


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test vanish after it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_public_api_names() -> None:
    for name in [
        "LLMBackbone",
        "HFCausalLLMBackbone",
        "LLaMa2LLMBackbone",
        "LLAMA2_MODELS",
        "LLM_BACKBONES",
        "get_llm_backbone_and_tokenizer",
        "prompt_builder_for",
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
    spec = dataclasses.replace(
        get_spec("llama2-7b-pure"), backbone_id="test-other-family", llm_family="other"
    )
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


# === Newer families ===

# Every id of the issue, with its family and hub path, written out.
FAMILY_IDS = {
    "mistral-v0.1-7b-pure": ("mistral", "mistralai/Mistral-7B-v0.1"),
    "mistral-v0.1-7b-instruct": ("mistral", "mistralai/Mistral-7B-Instruct-v0.1"),
    "phi-2-3b": ("phi", "microsoft/phi-2"),
    "llama3.1-8b-pure": ("llama3", "meta-llama/Llama-3.1-8B"),
    "llama3.1-8b-instruct": ("llama3", "meta-llama/Llama-3.1-8B-Instruct"),
    "llama3.2-1b-pure": ("llama3", "meta-llama/Llama-3.2-1B"),
    "llama3.2-1b-instruct": ("llama3", "meta-llama/Llama-3.2-1B-Instruct"),
    "llama3.2-3b-pure": ("llama3", "meta-llama/Llama-3.2-3B"),
    "llama3.2-3b-instruct": ("llama3", "meta-llama/Llama-3.2-3B-Instruct"),
    "qwen2.5-0.5b-pure": ("qwen2.5", "Qwen/Qwen2.5-0.5B"),
    "qwen2.5-0.5b-instruct": ("qwen2.5", "Qwen/Qwen2.5-0.5B-Instruct"),
    "qwen2.5-1.5b-pure": ("qwen2.5", "Qwen/Qwen2.5-1.5B"),
    "qwen2.5-1.5b-instruct": ("qwen2.5", "Qwen/Qwen2.5-1.5B-Instruct"),
    "qwen2.5-3b-pure": ("qwen2.5", "Qwen/Qwen2.5-3B"),
    "qwen2.5-3b-instruct": ("qwen2.5", "Qwen/Qwen2.5-3B-Instruct"),
    "qwen2.5-7b-pure": ("qwen2.5", "Qwen/Qwen2.5-7B"),
    "qwen2.5-7b-instruct": ("qwen2.5", "Qwen/Qwen2.5-7B-Instruct"),
    "gemma2-2b-pure": ("gemma2", "google/gemma-2-2b"),
    "gemma2-2b-instruct": ("gemma2", "google/gemma-2-2b-it"),
    "gemma2-9b-pure": ("gemma2", "google/gemma-2-9b"),
    "gemma2-9b-instruct": ("gemma2", "google/gemma-2-9b-it"),
    "phi-3.5-mini-instruct": ("phi3", "microsoft/Phi-3.5-mini-instruct"),
}


def test_every_family_id_is_registered_once_with_its_hub_path() -> None:
    assert set(FAMILY_IDS) <= set(registered_ids())
    assert len(registered_ids()) == len(set(registered_ids())) == 7 + len(FAMILY_IDS)
    for backbone_id, (family, hub) in FAMILY_IDS.items():
        spec = get_spec(backbone_id)
        assert (spec.llm_family, spec.hf_hub_path) == (family, hub)
        assert spec.source == f"https://huggingface.co/{hub}/blob/main/config.json"


def test_family_views_in_the_original_shape() -> None:
    from transformers import MistralForCausalLM, PhiForCausalLM, Qwen2ForCausalLM

    assert set(llm_backbones.MISTRAL_MODELS) == {"mistral-v0.1-7b-pure", "mistral-v0.1-7b-instruct"}
    assert llm_backbones.PHI_MODELS["phi-2-3b"] == {
        "llm_family": "phi",
        "llm_cls": PhiForCausalLM,
        "hf_hub_path": "microsoft/phi-2",
    }
    assert llm_backbones.MISTRAL_MODELS["mistral-v0.1-7b-pure"]["llm_cls"] is MistralForCausalLM
    assert len(llm_backbones.LLAMA3_MODELS) == 6 and len(llm_backbones.QWEN25_MODELS) == 8
    assert llm_backbones.QWEN25_MODELS["qwen2.5-7b-instruct"]["llm_cls"] is Qwen2ForCausalLM
    assert set(llm_backbones.GEMMA2_MODELS) == {i for i, (f, _) in FAMILY_IDS.items() if f == "gemma2"}
    assert list(llm_backbones.PHI3_MODELS) == ["phi-3.5-mini-instruct"]
    with pytest.raises(UnknownBackboneError, match="qwen2.5 family"):
        llm_backbones.QWEN25_MODELS["llama3.1-8b-pure"]


@pytest.mark.parametrize(
    ("backbone_id", "policy_text"),
    [
        ("mistral-v0.1-7b-pure", "+<PAD>, rows x64"),
        ("phi-2-3b", "+<|pad|>, rows x64"),
        ("llama3.2-1b-instruct", "=<|finetune_right_pad_id|> (reserved)"),
        ("qwen2.5-3b-instruct", "+<PAD>, rows x64"),
        ("gemma2-9b-pure", "=<pad> (reserved)"),
        ("phi-3.5-mini-instruct", "=<|endoftext|> (reserved)"),
    ],
)
def test_pad_policy_per_family(backbone_id, policy_text) -> None:
    assert get_spec(backbone_id).pad_policy_text == policy_text


def test_newer_families_use_the_generic_backbone_class() -> None:
    from llm_backbones import HFCausalLLMBackbone

    for backbone_id in FAMILY_IDS:
        assert LLM_BACKBONES[backbone_id] == {"cls": HFCausalLLMBackbone, "kwargs": {}}


def test_invalid_spec_fields_are_typed_errors() -> None:
    from llm_backbones.errors import InvalidSpecError

    base = get_spec("qwen2.5-0.5b-pure")
    with pytest.raises(InvalidSpecError, match=r"pad_policy='share' is not one of \('add', 'reuse'\)"):
        dataclasses.replace(base, pad_policy="share")
    with pytest.raises(InvalidSpecError, match="pad_token must be a non-empty string"):
        dataclasses.replace(base, pad_token="")
    with pytest.raises(InvalidSpecError, match="pad_to_multiple_of must be a positive int, got 0"):
        dataclasses.replace(base, pad_to_multiple_of=0)
    assert issubclass(InvalidSpecError, ValueError)
