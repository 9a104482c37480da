"""Llama 3.1 / 3.2 through the shared backbone contract, with the real Llama 3 tokenizer (converted from
llama.cpp's ggml-vocab-llama-bpe.gguf, Llama 3.1 special-token names). PAD reuses the reserved
<|finetune_right_pad_id|> (128004): no new row; 3.2's tied embeddings stay one tensor."""

from __future__ import annotations

import pytest
from backbone_contract import BackboneContract, Case, Family
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from llm_backbones import HFCausalLLMBackbone, Llama3InstructPromptBuilder, Llama3PurePromptBuilder

pytestmark = pytest.mark.integration

EOT, END_OF_TEXT = 128009, 128001


class TestLlama3Backbone(BackboneContract):
    FAMILY = Family(
        name="llama3",
        backbone_cls=HFCausalLLMBackbone,
        llm_cls=LlamaForCausalLM,
        layer_cls=LlamaDecoderLayer,
        adds_bos=True,
        pad_policy="reuse",
        pad_token="<|finetune_right_pad_id|>",
        pad_id=128004,
        n_tokens=128256,
        test_123=[128000, 2323, 220, 4513],
        hidden=64,
        attn_on_cpu="sdpa",
        tokenizer_note="real (Llama 3.1)",
    )
    CASES = [
        Case(
            "llama3.1-8b-pure",
            "meta-llama/Llama-3.1-8B",
            Llama3PurePromptBuilder,
            "llama3.1",
            128256,
            False,
            END_OF_TEXT,
        ),
        Case(
            "llama3.1-8b-instruct",
            "meta-llama/Llama-3.1-8B-Instruct",
            Llama3InstructPromptBuilder,
            "llama3.1",
            128256,
            False,
            EOT,
        ),
        Case(
            "llama3.2-1b-pure",
            "meta-llama/Llama-3.2-1B",
            Llama3PurePromptBuilder,
            "llama3.2",
            128256,
            True,
            END_OF_TEXT,
        ),
        Case(
            "llama3.2-1b-instruct",
            "meta-llama/Llama-3.2-1B-Instruct",
            Llama3InstructPromptBuilder,
            "llama3.2",
            128256,
            True,
            EOT,
        ),
        Case(
            "llama3.2-3b-pure",
            "meta-llama/Llama-3.2-3B",
            Llama3PurePromptBuilder,
            "llama3.2",
            128256,
            True,
            END_OF_TEXT,
        ),
        Case(
            "llama3.2-3b-instruct",
            "meta-llama/Llama-3.2-3B-Instruct",
            Llama3InstructPromptBuilder,
            "llama3.2",
            128256,
            True,
            EOT,
        ),
    ]
