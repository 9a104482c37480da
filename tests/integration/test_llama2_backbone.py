"""The seed's LLaMA-2 contract, for every id of LLAMA2_MODELS, built from a local tiny LLaMA-2 directory.

The contract checks shared with every family live in `backbone_contract.py` (`TestLlama2Backbone` below);
this file keeps what is LLaMA-2's own: the original LLAMA2_MODELS shape, the flash-attention default and
its fallback, the embedded default and gradient checkpointing.
"""

from __future__ import annotations

import logging

import pytest
import torch
from backbone_contract import BackboneContract, Case, Family
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from llm_backbones import (
    LLAMA2_MODELS,
    LLaMa2ChatPromptBuilder,
    LLaMa2LLMBackbone,
    PurePromptBuilder,
    VicunaV15ChatPromptBuilder,
    get_llm_backbone_and_tokenizer,
)

pytestmark = pytest.mark.integration

# The seed's table: id suffix -> builder, written out per id.
EXPECTED_BUILDER = {
    "llama2-7b-pure": PurePromptBuilder,
    "llama2-13b-pure": PurePromptBuilder,
    "llama2-7b-chat": LLaMa2ChatPromptBuilder,
    "llama2-13b-chat": LLaMa2ChatPromptBuilder,
    "vicuna-v15-7b": VicunaV15ChatPromptBuilder,
    "vicuna-v15-13b": VicunaV15ChatPromptBuilder,
    "llama2-tiny-pure": PurePromptBuilder,
}


def test_llama2_models_has_the_original_ids_and_shape() -> None:
    assert set(LLAMA2_MODELS) == set(EXPECTED_BUILDER)
    assert LLAMA2_MODELS["llama2-7b-pure"] == {
        "llm_family": "llama2",
        "llm_cls": LlamaForCausalLM,
        "hf_hub_path": "meta-llama/Llama-2-7b-hf",
    }
    assert LLAMA2_MODELS["llama2-13b-chat"]["hf_hub_path"] == "meta-llama/Llama-2-13b-chat-hf"
    assert LLAMA2_MODELS["vicuna-v15-13b"]["hf_hub_path"] == "lmsys/vicuna-13b-v1.5"


class TestLlama2Backbone(BackboneContract):
    """The seed's contract for every LLAMA2_MODELS id, through the harness every family uses."""

    FAMILY = Family(
        name="llama2",
        backbone_cls=LLaMa2LLMBackbone,
        llm_cls=LlamaForCausalLM,
        layer_cls=LlamaDecoderLayer,
        adds_bos=True,
        pad_policy="add",
        pad_token="<PAD>",
        pad_id=32000,
        n_tokens=32001,
        test_123=[1, 4321, 29871, 29896, 29906, 29941],
        hidden=128,
        attn_on_cpu="sdpa",  # LLaMa2LLMBackbone prefers flash-attention-2 and falls back without CUDA
        tokenizer_note="real (LLaMA-2, the embedded default's)",
    )
    CASES = [
        Case(backbone_id, hub, EXPECTED_BUILDER[backbone_id], "llama2", 32064, False, 2)  # 2 = </s>
        for backbone_id, hub in [
            ("llama2-7b-pure", "meta-llama/Llama-2-7b-hf"),
            ("llama2-13b-pure", "meta-llama/Llama-2-13b-hf"),
            ("llama2-7b-chat", "meta-llama/Llama-2-7b-chat-hf"),
            ("llama2-13b-chat", "meta-llama/Llama-2-13b-chat-hf"),
            ("vicuna-v15-7b", "lmsys/vicuna-7b-v1.5"),
            ("vicuna-v15-13b", "lmsys/vicuna-13b-v1.5"),
            ("llama2-tiny-pure", "llm-backbones/llama2-tiny (embedded)"),
        ]
    ]


def test_llama2_last_layer_modules_are_the_seeds_attributes(tiny_llama_dir) -> None:
    backbone, _ = get_llm_backbone_and_tokenizer("llama2-7b-chat", model_path=tiny_llama_dir)
    embed, last, head = backbone.last_layer_finetune_modules
    assert embed is backbone.llm.model.embed_tokens
    assert last is backbone.llm.model.layers[-1]
    assert head is backbone.llm.lm_head


def test_attention_falls_back_to_sdpa_on_cpu(tiny_llama_dir, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="llm_backbones"):
        backbone = LLaMa2LLMBackbone("llama2-7b-pure", model_path=tiny_llama_dir)  # flash-attn by default
    assert backbone.llm.config._attn_implementation == "sdpa"
    lines = [r.getMessage() for r in caplog.records if "Attention implementation" in r.getMessage()]
    assert len(lines) == 1 and "sdpa" in lines[0] and "flash-attention-2 was requested" in lines[0]


def test_explicit_attn_implementation_and_dtype(tiny_llama_dir) -> None:
    backbone, _ = get_llm_backbone_and_tokenizer(
        "vicuna-v15-7b", model_path=tiny_llama_dir, attn_implementation="eager", dtype=torch.bfloat16
    )
    assert backbone.llm.config._attn_implementation == "eager"
    assert {p.dtype for p in backbone.parameters()} == {torch.bfloat16}


def test_embedded_default_loads_without_model_path() -> None:
    backbone, tokenizer = get_llm_backbone_and_tokenizer("llama2-tiny-pure")
    assert isinstance(backbone.llm, LlamaForCausalLM)
    assert tokenizer("Test 123").input_ids[0] == 1
    n_params = sum(p.numel() for p in backbone.parameters())
    # embeddings + head: 2 * 32064 * 128 = 8_208_384; per layer: attention 4 * 128 * 128 = 65_536,
    # MLP 3 * 128 * 344 = 132_096, two RMSNorms 256 -> 197_888 (x2 = 395_776); final norm 128.
    assert n_params == 8_604_288


def test_gradient_checkpointing_trains_with_frozen_embeddings(tiny_llama_dir) -> None:
    backbone, tokenizer = get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=tiny_llama_dir)
    backbone.enable_gradient_checkpointing()
    backbone.train()
    for p in backbone.parameters():
        p.requires_grad_(False)
    last = backbone.llm.model.layers[-1]
    for p in last.parameters():
        p.requires_grad_(True)
    ids = tokenizer("In: stack the cups\nOut: ok", return_tensors="pt").input_ids
    backbone(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in last.parameters())
    assert backbone.llm.model.embed_tokens.weight.grad is None
    assert (
        getattr(backbone.llm, "is_activation_checkpointing", None) or backbone.llm.is_gradient_checkpointing
    )
