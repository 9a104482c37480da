"""Which attention implementation is chosen, and why (one log line)."""

from __future__ import annotations

import logging

from transformers import Gemma2ForCausalLM, LlamaForCausalLM

from llm_backbones.core.backbones.loading import select_attn_implementation


def test_sdpa_by_default() -> None:
    assert select_attn_implementation(None, False, LlamaForCausalLM) == "sdpa"


def test_class_without_sdpa_gets_eager(caplog) -> None:
    # Gemma-2's softcapped attention has no sdpa path in transformers (it raises if asked for sdpa).
    with caplog.at_level(logging.INFO, logger="llm_backbones"):
        assert select_attn_implementation(None, False, Gemma2ForCausalLM) == "eager"
        assert select_attn_implementation(None, True, Gemma2ForCausalLM) == "eager"  # no CUDA here
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == (
        "Attention implementation: eager (use_flash_attention_2=False; Gemma2ForCausalLM does not support "
        "sdpa)"
    )


def test_explicit_choice_is_kept() -> None:
    assert select_attn_implementation("sdpa", False, Gemma2ForCausalLM) == "sdpa"
    assert select_attn_implementation("eager", True, LlamaForCausalLM) == "eager"


def test_flash_attention_needs_half_precision_and_flash_attn(monkeypatch, caplog) -> None:
    import logging
    import sys

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # `import flash_attn` raises ImportError
    with caplog.at_level(logging.INFO, logger="llm_backbones"):
        assert select_attn_implementation(None, True, LlamaForCausalLM, torch.float32) == "sdpa"
        assert select_attn_implementation(None, True, LlamaForCausalLM, torch.bfloat16) == "sdpa"
    reasons = [r.getMessage() for r in caplog.records]
    assert "the weights load in torch.float32" in reasons[0] and "dtype=torch.bfloat16" in reasons[0]
    assert "flash_attn does not import" in reasons[1]
