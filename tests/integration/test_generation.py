"""Fast greedy generation gives exactly HF greedy `generate`'s tokens."""

from __future__ import annotations

import pytest
import torch

from llm_backbones import ActionTokenizer, get_llm_backbone_and_tokenizer
from llm_backbones.errors import ActionError, InputShapeError
from llm_backbones.runtime.generation import generate_greedy
from shared import hf_greedy
from shared import mid_size_llama as random_mid_size_llama

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny():
    backbone, tokenizer = get_llm_backbone_and_tokenizer("llama2-tiny-pure", inference_mode=False)
    return backbone.eval(), tokenizer


@pytest.fixture(scope="module")
def mid_size_llama():
    return random_mid_size_llama()


@pytest.mark.parametrize("static_cache", [False, True])
def test_tiny_default_same_tokens_as_hf(tiny, static_cache) -> None:
    backbone, tokenizer = tiny
    ids = tokenizer(
        "In: What action should the robot take to open the drawer?\nOut:", return_tensors="pt"
    ).input_ids
    ours = generate_greedy(backbone.llm, input_ids=ids, max_new_tokens=12, static_cache=static_cache)
    assert ours.tolist() == hf_greedy(backbone.llm, 12, input_ids=ids).tolist()
    embeds = backbone.embed_input_ids(ids)
    ours_e = generate_greedy(backbone.llm, inputs_embeds=embeds, max_new_tokens=12, static_cache=static_cache)
    hf_e = hf_greedy(backbone.llm, 12, inputs_embeds=embeds, attention_mask=torch.ones_like(ids))
    assert ours_e.tolist() == hf_e.tolist() == ours.tolist()


@pytest.mark.parametrize("static_cache", [False, True])
def test_mid_size_llama_same_tokens_as_hf(mid_size_llama, static_cache) -> None:
    ids = torch.randint(3, 4096, (2, 37), generator=torch.Generator().manual_seed(1))
    ours = generate_greedy(mid_size_llama, input_ids=ids, max_new_tokens=10, static_cache=static_cache)
    assert ours.tolist() == hf_greedy(mid_size_llama, 10, input_ids=ids).tolist()
    # a VLA-shaped prompt: token embeddings with "patch" embeddings spliced after BOS
    embeds = mid_size_llama.get_input_embeddings()(ids)
    patches = torch.randn(2, 16, 512, generator=torch.Generator().manual_seed(2)) * 0.02
    vla = torch.cat([embeds[:, :1], patches, embeds[:, 1:]], dim=1)
    ours_e = generate_greedy(mid_size_llama, inputs_embeds=vla, max_new_tokens=10, static_cache=static_cache)
    hf_e = hf_greedy(
        mid_size_llama, 10, inputs_embeds=vla, attention_mask=torch.ones(vla.shape[:2], dtype=torch.long)
    )
    assert ours_e.tolist() == hf_e.tolist()


@pytest.mark.parametrize("static_cache", [False, True])
def test_left_padded_batch_same_tokens_as_hf(mid_size_llama, static_cache) -> None:
    g = torch.Generator().manual_seed(3)
    for pad in (6, 0, 13):  # the static cache is reused (rewound, not zeroed) from one call to the next
        ids = torch.randint(3, 4096, (2, 20), generator=g)
        mask = torch.ones_like(ids)
        ids[0, :pad], mask[0, :pad] = 0, 0  # row 0 is shorter: left padding
        ours = generate_greedy(
            mid_size_llama, input_ids=ids, attention_mask=mask, max_new_tokens=8, static_cache=static_cache
        )
        assert ours.tolist() == hf_greedy(mid_size_llama, 8, input_ids=ids, attention_mask=mask).tolist(), pad


def test_bad_arguments(mid_size_llama) -> None:
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(InputShapeError, match="exactly one"):
        generate_greedy(mid_size_llama, max_new_tokens=2)
    with pytest.raises(InputShapeError, match="max_new_tokens"):
        generate_greedy(mid_size_llama, input_ids=ids, max_new_tokens=0)
    with pytest.raises(InputShapeError, match=r"input_ids\[None\]"):
        generate_greedy(mid_size_llama, input_ids=ids[0])
    with pytest.raises(InputShapeError, match=r"attention_mask has shape \(1, 2\)"):
        generate_greedy(mid_size_llama, input_ids=ids, attention_mask=torch.ones(1, 2))


def test_right_padding_is_refused_not_silently_wrong(mid_size_llama) -> None:
    # the training collator pads on the right; the last position of such a row is a pad token
    ids = torch.tensor([[5, 6, 7, 0], [5, 6, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    with pytest.raises(InputShapeError, match="left padding"):
        generate_greedy(mid_size_llama, input_ids=ids, attention_mask=mask)


def test_generate_actions_raises_when_no_action_tokens(tiny) -> None:
    backbone, tokenizer = tiny  # untrained: it does not produce 7 action tokens
    ids = tokenizer(
        "In: What action should the robot take to open the drawer?\nOut:", return_tensors="pt"
    ).input_ids
    with pytest.raises(ActionError, match=r"are not action tokens \(accepted: 31744\.\.31999\)"):
        backbone.generate_actions(ActionTokenizer(tokenizer), input_ids=ids)
