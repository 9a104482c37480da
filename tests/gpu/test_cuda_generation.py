"""Compiled generation on CUDA: inductor + CUDA graphs, replayed step after step (each replay's token feeds
the next one), give the eager path's tokens and compile nothing after preparing.

Regression: on an H200 the compiled decode step crashed at batch 1 and 8 with "accessing tensor
output of CUDAGraphs that has been overwritten by a subsequent run". Run with `pytest -m cuda tests/gpu`.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llm_backbones.runtime.generation import generate_greedy, prepare_for_generation

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def hf_greedy(model, n, **inputs) -> torch.Tensor:
    out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[:, inputs["input_ids"].shape[1] :]


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    # a mid-size random Llama with GQA, fp32 (no TF32): eager and compiled agree to summation order
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=4096,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).to("cuda").eval()


def prompts(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 4096, (batch, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    if batch > 1:
        ids[1, :7], mask[1, :7] = 0, 0  # one left-padded row
    return ids.cuda(), mask.cuda()


def test_prepared_generation_replays_cuda_graphs_with_eager_tokens(model) -> None:
    from torch._dynamo.utils import counters

    skips = counters["inductor"]["cudagraph_skips"]
    plan = prepare_for_generation(
        model,
        batch_sizes=(1, 8),
        min_prompt_length=20,
        max_prompt_length=64,
        bucket_size=32,
        max_new_tokens=7,
    )
    assert plan.graphs and plan.buckets == (32, 64)
    assert (
        counters["inductor"]["cudagraph_skips"] == skips
    )  # inductor did not fall back to running without graphs
    graphs = counters["stats"]["unique_graphs"]
    for batch in (1, 8):
        for seed, length in enumerate((20, 45, 64)):
            ids, mask = prompts(batch, length, seed)
            expected = hf_greedy(model, 7, input_ids=ids, attention_mask=mask).tolist()
            eager = generate_greedy(
                model, input_ids=ids, attention_mask=mask, max_new_tokens=7, compiled=False, static_cache=True
            )
            assert eager.tolist() == expected
            for _ in range(3):  # graph replays back to back
                ours = generate_greedy(model, input_ids=ids, attention_mask=mask, max_new_tokens=7)
                assert ours.tolist() == expected, f"batch {batch}, prompt of {length}"
    assert counters["stats"]["unique_graphs"] == graphs


def test_compile_decode_option_replays_cuda_graphs(model) -> None:
    for batch in (1, 8):
        ids, mask = prompts(batch, 40, batch)
        expected = generate_greedy(
            model, input_ids=ids, attention_mask=mask, max_new_tokens=7, compiled=False, static_cache=True
        ).tolist()
        for _ in range(3):
            ours = generate_greedy(
                model,
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=7,
                compiled=False,
                compile_decode=True,
            )
            assert ours.tolist() == expected, f"batch {batch}"
