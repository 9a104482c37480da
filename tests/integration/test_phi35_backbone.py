"""Phi-3.5-mini-instruct through the shared backbone contract, with the real Phi-3 tokenizer (converted
from llama.cpp's ggml-vocab-phi-3.gguf; chat tokens rstrip as in Microsoft's tokenizer.json). PAD reuses the
tokenizer's own <|endoftext|> (32000), which the chat format never writes; rows stay 32064."""

from __future__ import annotations

import pytest
from backbone_contract import BackboneContract, Case, Family
from transformers import Phi3ForCausalLM
from transformers.models.phi3.modeling_phi3 import Phi3DecoderLayer

from llm_backbones import HFCausalLLMBackbone, Phi35InstructPromptBuilder

pytestmark = pytest.mark.integration

END = 32007  # <|end|>


class TestPhi35Backbone(BackboneContract):
    FAMILY = Family(
        name="phi3",
        backbone_cls=HFCausalLLMBackbone,
        llm_cls=Phi3ForCausalLM,
        layer_cls=Phi3DecoderLayer,
        adds_bos=False,
        pad_policy="reuse",
        pad_token="<|endoftext|>",
        pad_id=32000,
        n_tokens=32011,
        test_123=[4321, 29871, 29896, 29906, 29941],
        hidden=64,
        attn_on_cpu="sdpa",
        tokenizer_note="real (Phi-3)",
    )
    CASES = [
        Case(
            "phi-3.5-mini-instruct",
            "microsoft/Phi-3.5-mini-instruct",
            Phi35InstructPromptBuilder,
            "phi3",
            32064,
            False,
            END,
        )
    ]
