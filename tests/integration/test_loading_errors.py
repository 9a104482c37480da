"""Family mismatches at load time (the generic bad-directory rows live in tests/unit/test_bad_inputs.py)."""

from __future__ import annotations

import pytest

from llm_backbones import get_llm_backbone_and_tokenizer
from llm_backbones.errors import ConfigMismatchError, TokenizerContractError

pytestmark = pytest.mark.integration


def test_reused_pad_token_missing_from_the_tokenizer(tiny_llama_dir) -> None:
    # A Llama-3 id over a LLaMA-2 checkpoint: same architecture, but no <|finetune_right_pad_id|>.
    with pytest.raises(TokenizerContractError) as info:
        get_llm_backbone_and_tokenizer("llama3.2-1b-pure", model_path=tiny_llama_dir)
    msg = str(info.value)
    assert "reuses the reserved token '<|finetune_right_pad_id|>' as PAD" in msg
    assert "32000 tokens" in msg and "pad_policy='add'" in msg


def test_phi_id_over_a_llama_checkpoint_is_a_config_mismatch(tiny_llama_dir) -> None:
    with pytest.raises(
        ConfigMismatchError, match=r"is a 'llama' model, but backbone 'phi-2-3b' \(phi\) needs 'phi'"
    ):
        get_llm_backbone_and_tokenizer("phi-2-3b", model_path=tiny_llama_dir)
