"""The seed's LLaMA-2 contract, for every id of LLAMA2_MODELS, built from a local tiny LLaMA-2 directory."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from llm_backbones import LLAMA2_MODELS, LLaMa2LLMBackbone, get_llm_backbone_and_tokenizer
from llm_backbones.prompting import LLaMa2ChatPromptBuilder, PurePromptBuilder, VicunaV15ChatPromptBuilder

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


@pytest.fixture(scope="module", params=sorted(EXPECTED_BUILDER))
def built(request, tiny_llama_dir):
    backbone, tokenizer = get_llm_backbone_and_tokenizer(request.param, model_path=tiny_llama_dir)
    return request.param, backbone, tokenizer


def test_class_pad_and_resize(built) -> None:
    backbone_id, backbone, tokenizer = built
    assert type(backbone) is LLaMa2LLMBackbone
    assert backbone.identifier == backbone_id
    assert tokenizer is backbone.get_tokenizer()
    assert tokenizer.pad_token == "<PAD>"
    assert tokenizer.pad_token_id == 32000
    assert backbone.pad_token_id == 32000
    assert len(tokenizer) == 32001
    assert backbone.llm.config.pad_token_id == 32000
    assert backbone.llm.get_input_embeddings().weight.shape == (32064, 128)
    assert backbone.llm.lm_head.weight.shape == (32064, 128)
    assert backbone.embed_dim == 128
    assert tokenizer.padding_side == "right"
    assert tokenizer.model_max_length == 2048


def test_properties(built) -> None:
    backbone_id, backbone, _ = built
    assert backbone.prompt_builder_fn is EXPECTED_BUILDER[backbone_id]
    assert backbone.transformer_layer_cls is LlamaDecoderLayer
    assert backbone.half_precision_dtype is torch.bfloat16
    embed, last, head = backbone.last_layer_finetune_modules
    assert embed is backbone.llm.model.embed_tokens
    assert last is backbone.llm.model.layers[-1]
    assert head is backbone.llm.lm_head


def test_training_mode_flags(built) -> None:
    _, backbone, _ = built
    assert backbone.llm.config.use_cache is False
    assert next(backbone.parameters()).dtype == torch.float32
    # enable_input_require_grads: embedding outputs require grad even when embeddings are frozen
    backbone.llm.get_input_embeddings().weight.requires_grad_(False)
    try:
        assert backbone.llm.get_input_embeddings()(torch.tensor([[1, 2]])).requires_grad
    finally:
        backbone.llm.get_input_embeddings().weight.requires_grad_(True)


def test_fsdp_policy_wraps_decoder_layers_only(built) -> None:
    _, backbone, _ = built
    policy = backbone.get_fsdp_wrapping_policy()
    wrapped = [name for name, m in backbone.named_modules() if policy(m, recurse=False, nonwrapped_numel=0)]
    assert wrapped == ["llm.model.layers.0", "llm.model.layers.1"]
    # recursing into any container is allowed, as transformer_auto_wrap_policy does
    assert policy(backbone.llm.model, recurse=True, nonwrapped_numel=0) is True


def test_embed_input_ids_is_the_embedding_lookup(built) -> None:
    _, backbone, _ = built
    ids = torch.tensor([[1, 512, 32000]])
    expected = backbone.llm.model.embed_tokens.weight[ids]
    torch.testing.assert_close(backbone.embed_input_ids(ids), expected, rtol=0, atol=0)


def test_forward_with_labels(built) -> None:
    _, backbone, tokenizer = built
    ids = tokenizer("In: What action should the robot take to open the drawer?\nOut:", return_tensors="pt").input_ids
    out = backbone(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    assert out.logits.shape == (1, ids.shape[1], 32064)
    assert torch.isfinite(out.loss)
    # same result as calling the wrapped HF model directly
    direct = backbone.llm(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    torch.testing.assert_close(out.logits, direct.logits, rtol=0, atol=0)


def test_inference_mode_builds_on_meta_then_loads_trained_weights(tiny_llama_dir) -> None:
    trained, tokenizer = get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=tiny_llama_dir)
    with torch.no_grad():  # make it a "trained" backbone, different from the initial weights
        trained.llm.model.layers[-1].mlp.up_proj.weight.add_(0.01)
    fresh, _ = get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=tiny_llama_dir, inference_mode=True)
    assert fresh.llm.config.use_cache is True
    assert {p.device.type for p in fresh.parameters()} == {"meta"}
    assert fresh.llm.get_input_embeddings().weight.shape == (32064, 128)
    assert fresh.pad_token_id == 32000
    fresh.load_state_dict(trained.state_dict())
    assert {p.device.type for p in fresh.parameters()} == {"cpu"}
    ids = tokenizer("In: pick up the red block\nOut:", return_tensors="pt").input_ids
    trained.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids=ids).logits, trained(input_ids=ids).logits, rtol=0, atol=0)


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
    assert isinstance(last, nn.Module)
    assert getattr(backbone.llm, "is_activation_checkpointing", None) or backbone.llm.is_gradient_checkpointing
