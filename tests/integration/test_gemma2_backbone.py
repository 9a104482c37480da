"""Gemma-2 through the shared backbone contract.

Tokenizer: a STAND-IN (`family_assets.write_gemma2_standin`): Gemma's real vocabulary is not available
offline. It keeps Gemma's special ids (<pad>=0, <eos>=1, <bos>=2, <start_of_turn>=106, <end_of_turn>=107),
BOS added and <pad> declared; 1024 tokens instead of 256000 (the tiny model has 1024 rows to match).
Gemma-2 cannot run sdpa (no softcapping), so eager attention is chosen on CPU.
"""

from __future__ import annotations

import pytest
from backbone_contract import BackboneContract, Case, Family
from transformers import Gemma2ForCausalLM
from transformers.models.gemma2.modeling_gemma2 import Gemma2DecoderLayer

from llm_backbones import Gemma2InstructPromptBuilder, Gemma2PurePromptBuilder, HFCausalLLMBackbone

pytestmark = pytest.mark.integration

END_OF_TURN, EOS = 107, 1


class TestGemma2Backbone(BackboneContract):
    FAMILY = Family(
        name="gemma2",
        backbone_cls=HFCausalLLMBackbone,
        llm_cls=Gemma2ForCausalLM,
        layer_cls=Gemma2DecoderLayer,
        adds_bos=True,
        pad_policy="reuse",
        pad_token="<pad>",
        pad_id=0,
        n_tokens=1024,
        test_123=[2, 416, 433, 447, 448, 364, 381, 382, 383],
        hidden=64,
        attn_on_cpu="eager",
        tokenizer_note="stand-in with Gemma's special ids",
    )
    CASES = [
        Case("gemma2-2b-pure", "google/gemma-2-2b", Gemma2PurePromptBuilder, "gemma2", 1024, True, EOS),
        Case(
            "gemma2-2b-instruct",
            "google/gemma-2-2b-it",
            Gemma2InstructPromptBuilder,
            "gemma2",
            1024,
            True,
            END_OF_TURN,
        ),
        Case("gemma2-9b-pure", "google/gemma-2-9b", Gemma2PurePromptBuilder, "gemma2", 1024, True, EOS),
        Case(
            "gemma2-9b-instruct",
            "google/gemma-2-9b-it",
            Gemma2InstructPromptBuilder,
            "gemma2",
            1024,
            True,
            END_OF_TURN,
        ),
    ]
