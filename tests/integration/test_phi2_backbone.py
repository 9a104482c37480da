"""Phi-2 through the shared backbone contract.

Tokenizer: GPT-2's byte-level BPE, converted from llama.cpp's ggml-vocab-gpt-2.gguf — the closest real
stand-in for Phi-2's CodeGen tokenizer (the same 50257 tokens and merges; CodeGen adds 38 whitespace-run
tokens at 50257..50294, not reproduced, so <|pad|> is 50257 here and 50295 with the real one). The
embedding keeps Phi-2's 51200 rows: adding <|pad|> needs no new row, and nothing is shrunk.
"""

from __future__ import annotations

import pytest
from backbone_contract import BackboneContract, Case, Family
from transformers import PhiForCausalLM
from transformers.models.phi.modeling_phi import PhiDecoderLayer

from llm_backbones import HFCausalLLMBackbone, PhiPromptBuilder

pytestmark = pytest.mark.integration


class TestPhi2Backbone(BackboneContract):
    FAMILY = Family(
        name="phi",
        backbone_cls=HFCausalLLMBackbone,
        llm_cls=PhiForCausalLM,
        layer_cls=PhiDecoderLayer,
        adds_bos=False,
        pad_policy="add",
        pad_token="<|pad|>",
        pad_id=50257,
        n_tokens=50258,
        test_123=[14402, 17031],
        hidden=64,
        attn_on_cpu="sdpa",
        tokenizer_note="real GPT-2 BPE as the stand-in for CodeGen's",
    )
    CASES = [Case("phi-2-3b", "microsoft/phi-2", PhiPromptBuilder, "phi", 51200, False, 50256)]
