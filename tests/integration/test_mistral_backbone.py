"""Mistral v0.1 through the shared backbone contract.

Tokenizer: a STAND-IN (`family_assets.write_mistral_standin`): Mistral's real vocabulary is not available
offline. It keeps what the contract depends on: 32000 SentencePiece-style pieces, <unk>/<s>/</s> = 0/1/2,
BOS added, no PAD — so <PAD> = 32000 and the rows grow 32000 -> 32064 exactly as with the real one.
"""

from __future__ import annotations

import pytest
from backbone_contract import BackboneContract, Case, Family
from transformers import MistralForCausalLM
from transformers.models.mistral.modeling_mistral import MistralDecoderLayer

from llm_backbones import HFCausalLLMBackbone, MistralInstructPromptBuilder, PurePromptBuilder

pytestmark = pytest.mark.integration


class TestMistralBackbone(BackboneContract):
    FAMILY = Family(
        name="mistral",
        backbone_cls=HFCausalLLMBackbone,
        llm_cls=MistralForCausalLM,
        layer_cls=MistralDecoderLayer,
        adds_bos=True,
        pad_policy="add",
        pad_token="<PAD>",
        pad_id=32000,
        n_tokens=32001,
        test_123=[1, 259, 311, 328, 342, 343, 259, 276, 277, 278],
        hidden=64,
        attn_on_cpu="sdpa",
        tokenizer_note="stand-in with Mistral's special tokens and size",
    )
    CASES = [
        Case(
            "mistral-v0.1-7b-pure", "mistralai/Mistral-7B-v0.1", PurePromptBuilder, "mistral", 32064, False, 2
        ),
        Case(
            "mistral-v0.1-7b-instruct",
            "mistralai/Mistral-7B-Instruct-v0.1",
            MistralInstructPromptBuilder,
            "mistral",
            32064,
            False,
            2,
        ),
    ]
