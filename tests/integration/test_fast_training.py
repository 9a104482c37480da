"""The fused (chunked) loss equals HF's loss and gradients, without materialising the logits."""

from __future__ import annotations

import pytest
import torch

from llm_backbones import PaddedCollator, get_llm_backbone_and_tokenizer, tokenize_conversation
from llm_backbones.runtime.fused_loss import chunked_causal_lm_loss

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def backbone_and_batch():
    backbone, tokenizer = get_llm_backbone_and_tokenizer("llama2-tiny-pure")
    convs = [
        [
            {"from": "human", "value": "What action should the robot take to open the drawer?"},
            {"from": "gpt", "value": "pull the handle"},
        ],
        [
            {"from": "human", "value": "Describe the scene."},
            {"from": "gpt", "value": "a table with a cup"},
            {"from": "human", "value": "Which color?"},
            {"from": "gpt", "value": "red"},
        ],
    ]
    examples = [tokenize_conversation(tokenizer, backbone.prompt_builder_fn, c) for c in convs]
    return backbone, PaddedCollator(model_max_length=None, pad_token_id=backbone.pad_token_id)(examples)


def grads(backbone) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None}


def test_fused_loss_equals_hf_loss_and_gradients(backbone_and_batch) -> None:
    backbone, batch = backbone_and_batch
    backbone.zero_grad()
    reference = backbone(**batch)
    reference.loss.backward()
    ref_grads = grads(backbone)
    backbone.zero_grad()

    backbone.enable_fast_training(fused_loss=True, compile_layers=False)
    try:
        fused = backbone(**batch)
        fused.loss.backward()
    finally:
        backbone.fused_loss = False
    assert fused.logits is None
    torch.testing.assert_close(fused.loss, reference.loss, rtol=1e-5, atol=1e-5)
    new_grads = grads(backbone)
    assert new_grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(new_grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_chunk_size_does_not_change_the_loss() -> None:
    torch.manual_seed(0)
    hidden, weight = torch.randn(3, 11, 16), torch.randn(50, 16)
    labels = torch.randint(0, 50, (3, 11))
    labels[0, :4] = -100
    # reference written out as the definition: mean CE over shifted, non-ignored positions
    logits = hidden[:, :-1] @ weight.T
    ref = torch.nn.functional.cross_entropy(
        logits.reshape(-1, 50), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    for chunk in (1, 7, 30, 4096):
        torch.testing.assert_close(chunked_causal_lm_loss(hidden, weight, labels, chunk_size=chunk), ref)


@pytest.mark.parametrize(("tiny", "backbone_id"), [("gemma2", "gemma2-2b-pure"), ("phi", "phi-2-3b")])
def test_fused_loss_matches_hf_with_softcap_and_head_bias(tiny_family_model, tiny, backbone_id) -> None:
    # Gemma-2 soft-caps its final logits; Phi-2's LM head has a bias: both must be in the fused loss
    backbone, tokenizer = get_llm_backbone_and_tokenizer(backbone_id, model_path=tiny_family_model(tiny))
    with torch.no_grad():  # large logits, so that the soft-cap (30) and the bias matter
        backbone.llm.get_output_embeddings().weight.mul_(50.0)
        if backbone.llm.get_output_embeddings().bias is not None:
            backbone.llm.get_output_embeddings().bias.normal_(0, 5.0)
    ids = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    reference = backbone(input_ids=ids, labels=ids).loss
    backbone.enable_fast_training(fused_loss=True, compile_layers=False)
    fused = backbone(input_ids=ids, labels=ids).loss
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-4)
