"""Small drop-in behaviours of a built backbone: deepcopy, dtype kept on load, greedy generation by
default."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from llm_backbones import get_llm_backbone_and_tokenizer

pytestmark = pytest.mark.integration

TINY = "llama2-tiny-pure"
PROMPT = "In: What action should the robot take to pick up the red block?\nOut:"


@pytest.fixture(scope="module")
def built():
    backbone, tokenizer = get_llm_backbone_and_tokenizer(TINY)
    backbone.eval()
    return backbone, tokenizer


def test_deepcopy_gives_equal_logits_and_independent_parameters(built) -> None:
    backbone, tokenizer = built
    clone = copy.deepcopy(backbone)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(clone(input_ids=ids).logits, backbone(input_ids=ids).logits)
    originals = dict(backbone.named_parameters())
    for name, param in clone.named_parameters():
        assert param.data_ptr() != originals[name].data_ptr(), name
    before = backbone.llm.model.norm.weight.clone()
    with torch.no_grad():
        clone.llm.model.norm.weight.add_(1.0)
    assert torch.equal(backbone.llm.model.norm.weight, before)
    assert (
        clone.get_tokenizer() is not tokenizer and clone.get_tokenizer()(PROMPT).input_ids == ids[0].tolist()
    )
    assert (clone.identifier, clone.spec) == (backbone.identifier, backbone.spec)


def test_deepcopy_of_a_meta_built_backbone(built) -> None:
    backbone, _ = get_llm_backbone_and_tokenizer(TINY, inference_mode=True)
    clone = copy.deepcopy(backbone)
    assert all(p.device.type == "meta" for p in clone.parameters())
    clone.load_state_dict(built[0].state_dict())
    assert all(p.device.type == "meta" for p in backbone.parameters())  # the original is untouched


def test_bf16_state_dict_into_fp32_inference_backbone_stays_fp32(built) -> None:
    bf16 = {k: v.to(torch.bfloat16) for k, v in built[0].state_dict().items()}
    backbone, _ = get_llm_backbone_and_tokenizer(TINY, inference_mode=True)  # float32 by default
    backbone.load_state_dict(bf16)
    state = backbone.state_dict()
    assert {t.dtype for t in state.values()} == {torch.float32}
    for key, value in bf16.items():
        assert torch.equal(state[key], value.float()), key


def test_assign_true_takes_the_state_dicts_dtype(built) -> None:
    bf16 = {k: v.to(torch.bfloat16) for k, v in built[0].state_dict().items()}
    backbone, _ = get_llm_backbone_and_tokenizer(TINY, inference_mode=True)
    backbone.load_state_dict(bf16, assign=True)
    assert {p.dtype for p in backbone.parameters()} == {torch.bfloat16}


def test_fp32_state_dict_into_bf16_backbone_stays_bf16(built) -> None:
    backbone, _ = get_llm_backbone_and_tokenizer(TINY, inference_mode=True, dtype=torch.bfloat16)
    backbone.load_state_dict(built[0].state_dict())
    assert {p.dtype for p in backbone.parameters()} == {torch.bfloat16}


@pytest.fixture(scope="module")
def sampling_checkpoint(tiny_llama_dir, tmp_path_factory):
    """The tiny checkpoint with a generation_config.json that turns sampling on (as Llama-2's does)."""
    directory = tmp_path_factory.mktemp("sampling")
    for file in tiny_llama_dir.iterdir():
        shutil.copy2(file, directory / file.name)
    (directory / "generation_config.json").write_text(
        json.dumps(
            {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "bos_token_id": 1, "eos_token_id": 2}
        )
    )
    return directory


def greedy_by_hand(backbone, ids: torch.Tensor, n: int) -> list[int]:
    """Argmax decoding with full forward passes: what greedy generate() must produce."""
    out = ids
    with torch.no_grad():
        for _ in range(n):
            next_id = backbone(input_ids=out).logits[:, -1].argmax(-1, keepdim=True)
            out = torch.cat([out, next_id], dim=1)
    return out[0, ids.shape[1] :].tolist()


def test_generation_config_that_samples_does_not_make_generate_sample(sampling_checkpoint) -> None:
    backbone, tokenizer = get_llm_backbone_and_tokenizer(TINY, model_path=sampling_checkpoint)
    backbone.eval()
    assert backbone.llm.generation_config.do_sample is False
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    expected = greedy_by_hand(backbone, ids, 6)
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        assert backbone.generate(input_ids=ids, max_new_tokens=6)[0, ids.shape[1] :].tolist() == expected
    # The caller can still ask for sampling: with random tiny weights, two seeds give different tokens.
    sampled = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        out = backbone.generate(input_ids=ids, max_new_tokens=6, do_sample=True)
        sampled.append(out[0, ids.shape[1] :].tolist())
    assert sampled[0] != sampled[1]
