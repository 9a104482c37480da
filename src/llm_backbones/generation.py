"""Fast greedy generation for short, fixed-length outputs (VLA action tokens).

A VLA action step is one prefill over BOS + image patches + instruction, then a handful of decode
steps. HF `generate` spends most of that time in Python and kernel launches. Here: small pure
functions (`prefill`, `decode_one_token`, `generate_greedy`), a KV cache sized for the request
(static where it runs on CUDA, so the decode step can be compiled into CUDA graphs), and an eager loop
on CPU. Greedy tokens are the same as HF `generate(do_sample=False)`.
"""

from __future__ import annotations

import inspect
import logging
from functools import lru_cache

import torch
from transformers import DynamicCache, PreTrainedModel, StaticCache

logger = logging.getLogger(__name__)


@lru_cache(maxsize=None)
def _cache_keyword(model_cls: type) -> str:
    """transformers renamed `past_key_values` to `cache` in 5.2x; use whichever this version has."""
    params = inspect.signature(model_cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@lru_cache(maxsize=None)
def _takes_cache_position(model_cls: type) -> bool:
    """Older 5.x releases write static caches at `cache_position`; newer ones derive it."""
    return "cache_position" in inspect.signature(model_cls.forward).parameters


def _step(
    model: PreTrainedModel,
    cache,
    position_ids: torch.Tensor,
    *,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    cache_position: torch.Tensor | None = None,
) -> torch.Tensor:
    """One forward over new positions; returns the greedy next token per row, `[B]`.

    `position_ids` are RoPE positions (they skip left padding); `cache_position` are the cache slots
    written, the same for every row (passed to transformers versions that take it).
    """
    kwargs = {_cache_keyword(type(model)): cache, "use_cache": True, "logits_to_keep": 1}
    if _takes_cache_position(type(model)):
        kwargs["cache_position"] = cache_position
    out = model(
        input_ids=input_ids,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        **kwargs,
    )
    return out.logits[:, -1].argmax(dim=-1)


def prefill(model, cache, inputs_embeds, attention_mask, position_ids) -> torch.Tensor:
    slots = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)
    return _step(
        model, cache, position_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache_position=slots
    )


def decode_one_token(model, cache, token, attention_mask, position_ids, cache_position) -> torch.Tensor:
    return _step(
        model, cache, position_ids, input_ids=token[:, None], attention_mask=attention_mask, cache_position=cache_position
    )


_compiled_decode = {}


def _decoder(model: PreTrainedModel, compile_decode: bool):
    if not compile_decode:
        return decode_one_token
    if model not in _compiled_decode:
        # "reduce-overhead" captures the step in CUDA graphs: static shapes thanks to the static cache.
        _compiled_decode[model] = torch.compile(decode_one_token, mode="reduce-overhead", fullgraph=False)
    return _compiled_decode[model]


@torch.inference_mode()
def generate_greedy(
    model: PreTrainedModel,
    *,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 8,
    static_cache: bool | None = None,
    compile_decode: bool | None = None,
) -> torch.Tensor:
    """Greedy-decode exactly `max_new_tokens` tokens; returns only the new ids, `LongTensor[B, N]`.

    Give `input_ids` or `inputs_embeds` (e.g. from `insert_patch_embeddings`), with an optional
    `attention_mask` (left padding for rows of different lengths). `static_cache` and `compile_decode`
    default to on where CUDA runs the model, off on CPU (an eager loop over a dynamic cache).
    No early stop at EOS: VLA actions have a fixed token count.
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}.")
    if inputs_embeds is None:
        inputs_embeds = model.get_input_embeddings()(input_ids)
    batch, length = inputs_embeds.shape[:2]
    device = inputs_embeds.device
    on_cuda = device.type == "cuda"
    static_cache = on_cuda if static_cache is None else static_cache
    padded = attention_mask is not None and not bool(attention_mask.all())
    compile_decode = (on_cuda and static_cache and not padded) if compile_decode is None else compile_decode
    if attention_mask is None:
        attention_mask = torch.ones((batch, length), dtype=torch.long, device=device)
    # Positions as HF generate computes them: count only real tokens (left padding).
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    if static_cache:
        cache = StaticCache(config=model.config, max_cache_len=length + max_new_tokens)
    else:
        cache = DynamicCache(config=model.config)
    # With no padding the causal mask comes from the cache alone: static shapes for CUDA graphs.
    mask = attention_mask if padded else None
    token = prefill(model, cache, inputs_embeds, mask, position_ids)
    tokens = [token]
    decode = _decoder(model, compile_decode)
    last = position_ids[:, -1:]
    for step in range(1, max_new_tokens):
        if padded:
            mask = torch.cat([mask, mask.new_ones((batch, 1))], dim=1)
        slot = torch.full((1,), length + step - 1, dtype=torch.long, device=device)
        token = decode(model, cache, token, mask, last + step, slot)
        tokens.append(token.clone() if compile_decode else token)
    return torch.stack(tokens, dim=1)
