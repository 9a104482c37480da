"""Test inputs used across the suite: the backbone's LLaMA-2 tokenizer, and the five Prismatic builders."""

from __future__ import annotations

from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from llm_backbones import (
    LLaMa2ChatPromptBuilder,
    MistralInstructPromptBuilder,
    PhiPromptBuilder,
    PurePromptBuilder,
    VicunaV15ChatPromptBuilder,
)
from llm_backbones.core.backbones.embedded import ASSETS_DIR

PRISMATIC_BUILDERS = [
    PurePromptBuilder,
    LLaMa2ChatPromptBuilder,
    VicunaV15ChatPromptBuilder,
    MistralInstructPromptBuilder,
    PhiPromptBuilder,
]


def padded_llama2_tokenizer(tokenizer_cls: Any = AutoTokenizer, **kwargs: Any) -> PreTrainedTokenizerBase:
    """The embedded LLaMA-2 tokenizer with <PAD> (32000) added, as the backbone does (vocab_size stays
    32000)."""
    tokenizer = tokenizer_cls.from_pretrained(ASSETS_DIR / "llama2-tiny", **kwargs)
    tokenizer.add_special_tokens({"pad_token": "<PAD>"})
    return tokenizer


def hf_greedy(model: Any, n: int, **inputs: Any) -> Any:
    """HF greedy `generate` of exactly `n` new tokens: the reference our generation is compared with."""
    out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out if "inputs_embeds" in inputs else out[:, inputs["input_ids"].shape[1] :]


def mid_size_llama() -> Any:
    """A mid-size random Llama with GQA (4 layers, 512 hidden, 8 query / 2 key-value heads), fp32, eval:
    deeper numerics than the tiny default."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

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
    return LlamaForCausalLM(config).eval()
