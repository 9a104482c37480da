"""Projected image patches spliced after BOS, against a hand-built reference on the tiny default."""

from __future__ import annotations

import pytest
import torch

from llm_backbones import get_llm_backbone_and_tokenizer
from llm_backbones.data.examples import (
    IGNORE_INDEX,
    PaddedCollator,
    insert_patch_embeddings,
    tokenize_conversation,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def backbone_and_batch():
    backbone, tokenizer = get_llm_backbone_and_tokenizer("llama2-tiny-pure")
    convs = [
        [
            {"from": "human", "value": "<image>\nWhat action should the robot take to open the drawer?"},
            {"from": "gpt", "value": "pull"},
        ],
        [{"from": "human", "value": "<image>\nWhat is on the table?"}, {"from": "gpt", "value": "a red cup"}],
    ]
    examples = [
        tokenize_conversation(tokenizer, backbone.prompt_builder_fn, c, model_family="openvla") for c in convs
    ]
    batch = PaddedCollator(model_max_length=None, pad_token_id=backbone.pad_token_id)(examples)
    torch.manual_seed(0)
    patches = torch.randn(2, 5, backbone.embed_dim)
    return backbone, batch, patches


def test_splice_equals_hand_built_reference(backbone_and_batch) -> None:
    backbone, batch, patches = backbone_and_batch
    out = insert_patch_embeddings(
        backbone.embed_input_ids, batch["input_ids"], patches, batch["attention_mask"], batch["labels"]
    )
    table = backbone.llm.model.embed_tokens.weight
    for row in range(2):
        ids = batch["input_ids"][row].tolist()
        ref_embeds = torch.stack([table[ids[0]], *patches[row], *[table[i] for i in ids[1:]]])
        torch.testing.assert_close(out["inputs_embeds"][row], ref_embeds, rtol=0, atol=0)
        mask = batch["attention_mask"][row].tolist()
        assert out["attention_mask"][row].tolist() == [mask[0]] + [1] * 5 + mask[1:]
        labels = batch["labels"][row].tolist()
        assert out["labels"][row].tolist() == [labels[0]] + [IGNORE_INDEX] * 5 + labels[1:]


def test_spliced_batch_runs_through_the_backbone(backbone_and_batch) -> None:
    backbone, batch, patches = backbone_and_batch
    out = insert_patch_embeddings(
        backbone.embed_input_ids, batch["input_ids"], patches, batch["attention_mask"], batch["labels"]
    )
    result = backbone(**out)
    assert result.logits.shape[:2] == out["labels"].shape
    # the loss is over the reply tokens only: recompute it by hand from the logits
    logits, labels = result.logits[:, :-1], out["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    manual = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    torch.testing.assert_close(result.loss, manual)
    assert keep.sum().item() == (batch["labels"] != IGNORE_INDEX).sum().item()


# Shape errors: tests/unit/test_bad_inputs.py (SHAPES).
