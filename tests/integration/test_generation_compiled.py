"""Compiled generation (`prepare_for_generation`): bucketed prompts compile once, then never again, and give
the tokens of HF greedy `generate` on the unpadded prompts. On CPU with a counting "eager" backend: dynamo
traces the same graphs as on CUDA, only inductor and CUDA graphs are left out (tests/gpu covers those)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from llm_backbones import get_llm_backbone_and_tokenizer
from llm_backbones.errors import InputShapeError
from llm_backbones.runtime.generation import (
    generate_greedy,
    prepare_for_generation,
    prepared_generation,
    prompt_buckets,
)
from shared import hf_greedy, mid_size_llama

pytestmark = pytest.mark.integration


class CountingBackend:
    """A torch.compile backend that runs the traced graph as is and counts the graphs it was given."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs) -> torch.fx.GraphModule:
        self.graphs += 1
        return gm


def vla_prompt(backbone, text_ids: torch.Tensor, patches: int, seed: int) -> torch.Tensor:
    """BOS + `patches` random "image patch" embeddings + the text: the shape of a VLA prompt."""
    embeds = backbone.embed_input_ids(text_ids)
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(text_ids.shape[0], patches, embeds.shape[2], generator=g) * 0.02
    return torch.cat([embeds[:, :1], image, embeds[:, 1:]], dim=1)


def test_prompt_buckets() -> None:
    assert prompt_buckets(300, 257) == (288, 320)
    assert prompt_buckets(64, 1, bucket_size=16) == (16, 32, 48, 64)
    assert prompt_buckets(5, 5, bucket_size=8) == (8,)
    with pytest.raises(InputShapeError, match="min_prompt_length=30 is more than max_prompt_length=20"):
        prompt_buckets(20, 30)
    with pytest.raises(InputShapeError, match="bucket_size must be a positive integer, got 0"):
        prompt_buckets(20, 1, bucket_size=0)


def test_control_loop_of_20_instruction_lengths_never_compiles_after_warm_up() -> None:
    backbone, _ = get_llm_backbone_and_tokenizer("llama2-tiny-pure", inference_mode=False)
    model = backbone.eval().llm
    counting = CountingBackend()
    # BOS + 16 patches + 4..42 text tokens: prompts of 21..59 tokens, buckets 32, 48, 64
    plan = backbone.prepare_for_generation(
        batch_sizes=(1,),
        min_prompt_length=21,
        max_prompt_length=59,
        bucket_size=16,
        max_new_tokens=7,
        compile_backend=counting,
    )
    assert plan.buckets == (32, 48, 64) and plan.batch_sizes == (1,)
    assert counting.graphs >= 2  # the prefill and the decode step were compiled while preparing
    after_warm_up = counting.graphs
    g = torch.Generator().manual_seed(0)
    for n, text_length in enumerate(range(4, 44, 2)):  # 20 instruction lengths
        text = torch.randint(3, 32000, (1, text_length), generator=g)
        text[0, 0] = 1  # BOS
        prompt = vla_prompt(backbone, text, patches=16, seed=n)
        ours = backbone.generate_greedy(inputs_embeds=prompt, max_new_tokens=7)
        expected = hf_greedy(
            model, 7, inputs_embeds=prompt, attention_mask=torch.ones(prompt.shape[:2], dtype=torch.long)
        )
        assert ours.tolist() == expected.tolist(), f"instruction of {text_length} tokens"
    assert counting.graphs == after_warm_up


@pytest.fixture(scope="module")
def prepared_mid_size():
    model = mid_size_llama()
    counting = CountingBackend()
    prepare_for_generation(
        model,
        batch_sizes=(8,),
        min_prompt_length=20,
        max_prompt_length=60,
        bucket_size=32,
        max_new_tokens=8,
        compile_backend=counting,
    )
    return model, counting


def test_bucket_padding_gives_the_unpadded_tokens(prepared_mid_size) -> None:
    model, counting = prepared_mid_size
    graphs = counting.graphs
    g = torch.Generator().manual_seed(1)
    for length in (20, 47, 64):  # both buckets, and a prompt exactly as long as the last one
        ids = torch.randint(3, 4096, (8, length), generator=g)
        mask = torch.ones_like(ids)
        ids[1, :5], mask[1, :5] = 0, 0  # and left padding of the caller's own
        ids[6, :11], mask[6, :11] = 0, 0
        ours = generate_greedy(model, input_ids=ids, attention_mask=mask, max_new_tokens=8)
        assert ours.tolist() == hf_greedy(model, 8, input_ids=ids, attention_mask=mask).tolist(), (
            f"length {length}"
        )
        # fewer new tokens than prepared: the same path
        assert (
            generate_greedy(model, input_ids=ids, attention_mask=mask, max_new_tokens=3).tolist()
            == ours[:, :3].tolist()
        )
    assert counting.graphs == graphs


def test_batch_8_vla_prompt_same_tokens_as_hf_static_cache_in_fp32(prepared_mid_size) -> None:
    # On an H200 in bf16, batch-8 tokens of the compiled path differed from HF's static-cache generate. In
    # fp32 every path agrees with HF (both cache types), so the algorithm is not what differs there.
    model, _ = prepared_mid_size
    ids = torch.randint(3, 4096, (8, 24), generator=torch.Generator().manual_seed(8))
    ids[:, 0] = 1
    embeds = model.get_input_embeddings()(ids)
    patches = torch.randn(8, 32, 512, generator=torch.Generator().manual_seed(9)) * 0.02
    vla = torch.cat([embeds[:, :1], patches, embeds[:, 1:]], dim=1)
    mask = torch.ones(vla.shape[:2], dtype=torch.long)
    hf_static = hf_greedy(model, 8, inputs_embeds=vla, attention_mask=mask, cache_implementation="static")
    assert hf_static.tolist() == hf_greedy(model, 8, inputs_embeds=vla, attention_mask=mask).tolist()
    assert generate_greedy(model, inputs_embeds=vla, max_new_tokens=8).tolist() == hf_static.tolist()
    for static_cache in (False, True):
        eager = generate_greedy(model, inputs_embeds=vla, max_new_tokens=8, static_cache=static_cache)
        assert eager.tolist() == hf_static.tolist()


def test_unprepared_shapes_are_refused_not_compiled(prepared_mid_size) -> None:
    model, counting = prepared_mid_size
    graphs = counting.graphs
    ids = torch.randint(3, 4096, (8, 20), generator=torch.Generator().manual_seed(2))
    with pytest.raises(InputShapeError, match=r"65 tokens, more than the longest prepared length 64"):
        generate_greedy(model, input_ids=torch.cat([ids, ids, ids, ids[:, :5]], 1), max_new_tokens=2)
    with pytest.raises(InputShapeError, match=r"max_new_tokens=9 is more than the 8 prepared"):
        generate_greedy(model, input_ids=ids, max_new_tokens=9)
    with pytest.raises(InputShapeError, match=r"Batch size 3 .* not prepared .*batch_sizes=\[3, 8\]"):
        generate_greedy(model, input_ids=ids[:3], max_new_tokens=2)
    assert counting.graphs == graphs
    # compiled=False: the eager path, for any shape
    longer = torch.cat([ids, ids, ids, ids[:, :5]], 1)
    eager = generate_greedy(model, input_ids=longer, max_new_tokens=9, compiled=False)
    assert eager.tolist() == hf_greedy(model, 9, input_ids=longer).tolist()


def test_default_path_is_eager_and_never_compiles(monkeypatch) -> None:
    model = mid_size_llama()
    assert prepared_generation(model) is None

    def no_compile(*args, **kwargs):
        raise AssertionError("the default path compiled")

    monkeypatch.setattr(torch, "compile", no_compile)
    graphs = counters["stats"]["unique_graphs"]
    ids = torch.randint(3, 4096, (1, 30), generator=torch.Generator().manual_seed(3))
    expected = hf_greedy(model, 5, input_ids=ids).tolist()
    assert generate_greedy(model, input_ids=ids, max_new_tokens=5).tolist() == expected
    assert generate_greedy(model, input_ids=ids, max_new_tokens=5, static_cache=True).tolist() == expected
    assert counters["stats"]["unique_graphs"] == graphs  # and dynamo traced nothing


def test_conflicting_options_are_refused() -> None:
    model = mid_size_llama()
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(InputShapeError, match="compile_decode=True needs static_cache=True"):
        generate_greedy(model, input_ids=ids, compile_decode=True, static_cache=False)
    with pytest.raises(InputShapeError, match="compiled=True runs a static cache"):
        generate_greedy(model, input_ids=ids, compiled=True, static_cache=False)
    with pytest.raises(
        InputShapeError, match=r"batch_sizes must be positive integers, e.g. \(1, 8\); got \(0,\)"
    ):
        prepare_for_generation(model, batch_sizes=0, max_prompt_length=8)
    with pytest.raises(InputShapeError, match="longest bucket 16 is shorter than max_prompt_length=20"):
        prepare_for_generation(model, max_prompt_length=20, buckets=(8, 16))
