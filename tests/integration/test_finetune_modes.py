"""Fine-tune modes on the tiny default: trainable counts, frozen weights stay put, LoRA merge."""

from __future__ import annotations

import pytest
import torch

from llm_backbones import PaddedCollator, get_llm_backbone_and_tokenizer, tokenize_conversation
from llm_backbones.errors import FinetuneError
from llm_backbones.training.finetune import apply_finetune_mode, global_batch_indices, train_steps
from llm_backbones.training.lora import default_target_modules, merge_lora

pytestmark = pytest.mark.integration

CONV = [
    {"from": "human", "value": "What action should the robot take to open the drawer?"},
    {"from": "gpt", "value": "pull the handle"},
]

# Written out for llama2-tiny-pure (hidden 128, MLP 344, 2 layers, 32064 embedding rows):
# full = everything; last-layer = embed 32064*128 + last layer 197,888 + lm_head 32064*128;
# lora (r=16, q/k/v/o/gate/up/down) = per layer 4*(16*128+128*16) + 3*(16*128+344*16) = 39,040, x2.
EXPECTED = {"frozen": 0, "full": 8_604_288, "last-layer": 8_406_272, "lora": 78_080}


@pytest.fixture
def built():
    backbone, tokenizer = get_llm_backbone_and_tokenizer("llama2-tiny-pure")
    example = tokenize_conversation(tokenizer, backbone.prompt_builder_fn, CONV)
    return (
        backbone,
        tokenizer,
        PaddedCollator(model_max_length=None, pad_token_id=backbone.pad_token_id)([example]),
    )


@pytest.mark.parametrize("mode", list(EXPECTED))
def test_trainable_counts(built, mode) -> None:
    backbone, _, _ = built
    summary = apply_finetune_mode(backbone, mode)
    assert summary.trainable == EXPECTED[mode]
    assert summary.total == 8_604_288 + (78_080 if mode == "lora" else 0)


@pytest.mark.parametrize("mode", ["last-layer", "lora"])
def test_frozen_parameters_unchanged_after_a_step(built, mode) -> None:
    backbone, _, batch = built
    apply_finetune_mode(backbone, mode)
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    trainable = [p for p in backbone.parameters() if p.requires_grad]
    if mode == "lora":  # B starts at zero; make the adapters non-trivial so A moves too
        with torch.no_grad():
            for n, p in backbone.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)
        before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    train_steps(backbone, [batch], torch.optim.SGD(trainable, lr=0.5))
    for name, p in backbone.named_parameters():
        changed = not torch.equal(p.detach(), before[name])
        assert changed == p.requires_grad, name


def test_last_layer_trains_exactly_the_seed_modules(built) -> None:
    backbone, _, _ = built
    apply_finetune_mode(backbone, "last-layer")
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert {n.split(".")[2] for n in trainable if n.startswith("llm.model.")} == {"embed_tokens", "layers"}
    assert all(
        n.startswith(("llm.model.embed_tokens", "llm.model.layers.1.", "llm.lm_head")) for n in trainable
    )


def test_lora_targets_every_linear_but_the_head(built) -> None:
    backbone, _, _ = built
    assert default_target_modules(backbone.llm) == [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]


def test_lora_merge_gives_the_adapter_logits(built) -> None:
    backbone, tokenizer, batch = built
    backbone.eval()
    with torch.no_grad():
        base = backbone(input_ids=batch["input_ids"]).logits
    apply_finetune_mode(backbone, "lora")
    with torch.no_grad():
        for n, p in backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    backbone.eval()
    with torch.no_grad():
        adapter = backbone(input_ids=batch["input_ids"]).logits
        merge_lora(backbone)
        merged = backbone(input_ids=batch["input_ids"]).logits
    assert type(backbone.llm).__name__ == "LlamaForCausalLM"
    assert not any("lora" in n for n, _ in backbone.named_parameters())
    torch.testing.assert_close(merged, adapter, rtol=1e-4, atol=1e-4)
    assert (adapter - base).abs().max() > 1e-3  # the adapters do change the model


def test_gradient_checkpointing_with_lora(built) -> None:
    backbone, _, batch = built
    apply_finetune_mode(backbone, "lora")
    backbone.enable_gradient_checkpointing()
    loss = backbone(**batch).loss
    loss.backward()
    grads = [p.grad for n, p in backbone.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None for g in grads)


def test_data_order_depends_only_on_the_seed() -> None:
    a = global_batch_indices(6, 4, 5, seed=3)
    assert a == global_batch_indices(6, 4, 5, seed=3)
    assert a != global_batch_indices(6, 4, 5, seed=4)
    assert all(len(b) == 4 for b in a)
    flat = [i for b in a for i in b]
    assert sorted(flat[:6]) == list(range(6))  # the first epoch is a permutation


def test_unknown_mode() -> None:
    backbone, _ = get_llm_backbone_and_tokenizer("llama2-tiny-pure", inference_mode=True)
    with pytest.raises(FinetuneError, match="accepted: frozen, full, last-layer, lora"):
        apply_finetune_mode(backbone, "head-only")
