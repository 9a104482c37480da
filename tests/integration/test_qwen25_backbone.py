"""Qwen2.5 through the shared backbone contract, with the real Qwen2 tokenizer (converted from llama.cpp's
ggml-vocab-qwen2.gguf, plus Qwen2.5's 19 control tokens). <PAD> is added as id 151665 into a spare
embedding row (151936 rows; 152064 for 7B): nothing is resized, 0.5B-3B stay tied."""

from __future__ import annotations

import pytest
from backbone_contract import BackboneContract, Case, Family
from transformers import Qwen2ForCausalLM
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

from llm_backbones import HFCausalLLMBackbone, Qwen25InstructPromptBuilder, Qwen25PurePromptBuilder

pytestmark = pytest.mark.integration

IM_END, END_OF_TEXT = 151645, 151643


class TestQwen25Backbone(BackboneContract):
    FAMILY = Family(
        name="qwen2.5",
        backbone_cls=HFCausalLLMBackbone,
        llm_cls=Qwen2ForCausalLM,
        layer_cls=Qwen2DecoderLayer,
        adds_bos=False,
        pad_policy="add",
        pad_token="<PAD>",
        pad_id=151665,
        n_tokens=151666,
        test_123=[2271, 220, 16, 17, 18],
        hidden=64,
        attn_on_cpu="sdpa",
        tokenizer_note="real (Qwen2 + Qwen2.5 controls)",
    )
    CASES = [
        Case(f"qwen2.5-{size}-{variant}", f"Qwen/Qwen2.5-{hub}{suffix}", builder, tiny, rows, tied, end)
        for size, hub, tiny, rows, tied in (
            ("0.5b", "0.5B", "qwen2.5-small", 151936, True),
            ("1.5b", "1.5B", "qwen2.5-small", 151936, True),
            ("3b", "3B", "qwen2.5-small", 151936, True),
            ("7b", "7B", "qwen2.5-7b", 152064, False),
        )
        for variant, suffix, builder, end in (
            ("pure", "", Qwen25PurePromptBuilder, END_OF_TEXT),
            ("instruct", "-Instruct", Qwen25InstructPromptBuilder, IM_END),
        )
    ]
