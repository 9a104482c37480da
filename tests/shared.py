"""Test inputs used across the suite: the backbone's LLaMA-2 tokenizer, and the five Prismatic builders."""

from __future__ import annotations

from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from llm_backbones.embedded import ASSETS_DIR
from llm_backbones.prompting import (
    LLaMa2ChatPromptBuilder,
    MistralInstructPromptBuilder,
    PhiPromptBuilder,
    PurePromptBuilder,
    VicunaV15ChatPromptBuilder,
)

PRISMATIC_BUILDERS = [
    PurePromptBuilder,
    LLaMa2ChatPromptBuilder,
    VicunaV15ChatPromptBuilder,
    MistralInstructPromptBuilder,
    PhiPromptBuilder,
]


def padded_llama2_tokenizer(tokenizer_cls: Any = AutoTokenizer, **kwargs: Any) -> PreTrainedTokenizerBase:
    """The embedded LLaMA-2 tokenizer with <PAD> (32000) added, as the backbone does (vocab_size stays 32000)."""
    tokenizer = tokenizer_cls.from_pretrained(ASSETS_DIR / "llama2-tiny", **kwargs)
    tokenizer.add_special_tokens({"pad_token": "<PAD>"})
    return tokenizer
