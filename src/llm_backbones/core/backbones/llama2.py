"""LLaMA-2 and Vicuna v1.5 (Prismatic's `LLaMa2LLMBackbone`).

Main diff with `HFCausalLLMBackbone`: none in code — the PAD/resize, prompt builders, layer class and
dtype all come from the registry. What remains is the original signature: ids restricted to
`LLAMA2_MODELS` and flash-attention-2 preferred by default (falling back to sdpa where it cannot run).
"""

from __future__ import annotations

from typing import Any

from llm_backbones._redact import HubToken
from llm_backbones.core.backbones.backbone import HFCausalLLMBackbone
from llm_backbones.core.registry import LLAMA2_MODELS


class LLaMa2LLMBackbone(HFCausalLLMBackbone):
    def __init__(
        self,
        llm_backbone_id: str,
        llm_max_length: int = 2048,
        hf_token: str | None = None,
        inference_mode: bool = False,
        use_flash_attention_2: bool = True,
        **kwargs: Any,
    ) -> None:
        hf_token = HubToken.wrap(hf_token)  # this frame never holds the plain token (tracebacks with locals)
        super().__init__(
            llm_backbone_id,
            llm_max_length=llm_max_length,
            hf_token=hf_token,
            inference_mode=inference_mode,
            use_flash_attention_2=use_flash_attention_2,
            **LLAMA2_MODELS[llm_backbone_id],
            **kwargs,
        )
