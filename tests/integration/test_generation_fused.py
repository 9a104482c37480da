"""Fused q/k/v and gate/up projections (`fuse_projections`): the unfused model's greedy tokens, no copy
kept."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from llm_backbones import get_llm_backbone_and_tokenizer
from llm_backbones.errors import ConfigMismatchError, ModelWeightsError
from llm_backbones.runtime.fused_inference import FusedLlamaAttention, fuse_projections
from llm_backbones.runtime.generation import generate_greedy
from shared import hf_greedy, mid_size_llama

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def unfused_and_fused():
    model = mid_size_llama()
    fused = copy.deepcopy(model)
    assert fuse_projections(fused) == 2 * 4  # attention and MLP of 4 layers
    return model, fused


def test_mid_size_fused_same_tokens_as_unfused(unfused_and_fused) -> None:
    model, fused = unfused_and_fused
    ids = torch.randint(3, 4096, (3, 41), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    ids[1, :9], mask[1, :9] = 0, 0  # left padding in one row
    expected = hf_greedy(model, 10, input_ids=ids, attention_mask=mask)
    for static_cache in (False, True):
        ours = generate_greedy(
            fused, input_ids=ids, attention_mask=mask, max_new_tokens=10, static_cache=static_cache
        )
        assert ours.tolist() == expected.tolist()
    # and the logits themselves, to float32 summation order
    with torch.no_grad():
        torch.testing.assert_close(
            fused(ids, attention_mask=mask).logits,
            model(ids, attention_mask=mask).logits,
            rtol=1e-4,
            atol=1e-5,
        )


def test_fused_weights_replace_the_originals(unfused_and_fused) -> None:
    model, fused = unfused_and_fused
    assert sum(p.numel() for p in fused.parameters()) == sum(p.numel() for p in model.parameters())
    modules = {part for name, _ in fused.named_parameters() for part in name.split(".")}
    assert not modules & {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}
    assert {"qkv_proj", "gate_up_proj", "o_proj", "down_proj"} <= modules
    layer = fused.model.layers[2]
    assert layer.self_attn.qkv_proj.weight.shape == (512 + 2 * 128, 512)
    assert layer.mlp.gate_up_proj.weight.shape == (2 * 1376, 512)
    original = model.model.layers[2]
    # rows in order: q, k, v; gate, up
    assert torch.equal(layer.self_attn.qkv_proj.weight[512:640], original.self_attn.k_proj.weight)
    assert torch.equal(layer.mlp.gate_up_proj.weight[1376:], original.mlp.up_proj.weight)
    assert fuse_projections(fused) == 0  # already fused: unchanged


def test_tiny_backbone_fused_and_compiled_same_tokens_as_hf() -> None:
    backbone, tokenizer = get_llm_backbone_and_tokenizer("llama2-tiny-pure", inference_mode=False)
    backbone.eval()
    ids = tokenizer(
        "In: What action should the robot take to open the drawer?\nOut:", return_tensors="pt"
    ).input_ids
    embeds = backbone.embed_input_ids(ids)
    patches = torch.randn(1, 16, embeds.shape[2], generator=torch.Generator().manual_seed(2)) * 0.02
    vla = torch.cat([embeds[:, :1], patches, embeds[:, 1:]], dim=1)
    expected = hf_greedy(
        backbone.llm, 12, inputs_embeds=vla, attention_mask=torch.ones(vla.shape[:2], dtype=torch.long)
    )
    # fused, then compiled (dynamo with the "eager" backend on CPU) with the prompt padded to a bucket
    backbone.prepare_for_generation(
        max_prompt_length=vla.shape[1],
        max_new_tokens=12,
        bucket_size=16,
        fuse_projections=True,
        compile_backend="eager",
    )
    assert isinstance(backbone.llm.model.layers[0].self_attn, FusedLlamaAttention)
    assert backbone.generate_greedy(inputs_embeds=vla, max_new_tokens=12).tolist() == expected.tolist()


def test_meta_weights_and_other_architectures_are_refused() -> None:
    with torch.device("meta"):
        meta = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=64,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=4,
            )
        )
    with pytest.raises(ModelWeightsError, match="meta device.*Load them first"):
        fuse_projections(meta)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4))
    with pytest.raises(ConfigMismatchError, match="GPT2LMHeadModel has .*GPT2Attention"):
        fuse_projections(gpt2)
