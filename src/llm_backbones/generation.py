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
import weakref
from functools import lru_cache

import torch
from transformers import DynamicCache, LlamaForCausalLM, PreTrainedModel, StaticCache

from llm_backbones.errors import InputShapeError

logger = logging.getLogger(__name__)


# transformers renamed the forward keyword `past_key_values` to `cache` in 5.2x (the old name warns, and
# goes in 5.40); every model class of one release takes the same one.
CACHE_KEYWORD = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def _step(
    model: PreTrainedModel,
    cache,
    position_ids: torch.Tensor,
    *,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One forward over new positions (RoPE `position_ids` skip left padding); the greedy next token, `[B]`."""
    out = model(
        input_ids=input_ids,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=1,
        **{CACHE_KEYWORD: cache},
    )
    return out.logits[:, -1].argmax(dim=-1)


def prefill(model, cache, inputs_embeds, attention_mask, position_ids) -> torch.Tensor:
    return _step(model, cache, position_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask)


def decode_one_token(model, cache, token, attention_mask, position_ids) -> torch.Tensor:
    return _step(model, cache, position_ids, input_ids=token[:, None], attention_mask=attention_mask)


# One static cache per model and shape, reset between calls, so CUDA graphs are recorded once.
_static_caches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@lru_cache(maxsize=1)
def _compiled_decode_one_token():
    """One compiled decode step for every model ("reduce-overhead": CUDA graphs; dynamo guards on the
    model), made on first use so that importing the library does not import the compiler."""
    return torch.compile(decode_one_token, mode="reduce-overhead", fullgraph=False)


def _static_cache(model: PreTrainedModel, batch: int, max_len: int, dtype: torch.dtype, device: torch.device):
    per_model = _static_caches.setdefault(model, {})
    key = (batch, max_len, dtype, device)
    cache = per_model.get(key)
    if cache is None:
        per_model.clear()  # keep one: a new shape replaces the previous cache
        cache = per_model[key] = StaticCache(config=model.config, max_cache_len=max_len)
    else:
        cache.reset()
    return cache


def _check_inputs(input_ids, inputs_embeds, attention_mask, max_new_tokens) -> None:
    if (input_ids is None) == (inputs_embeds is None):
        raise InputShapeError("Pass exactly one of input_ids ([batch, tokens]) or inputs_embeds ([batch, tokens, dim]).")
    if input_ids is not None and input_ids.dim() != 2:
        raise InputShapeError(
            f"input_ids must be [batch, tokens], got shape {tuple(input_ids.shape)}; add a batch dimension "
            "(input_ids[None])."
        )
    if inputs_embeds is not None and inputs_embeds.dim() != 3:
        raise InputShapeError(f"inputs_embeds must be [batch, tokens, dim], got shape {tuple(inputs_embeds.shape)}.")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise InputShapeError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}.")
    if attention_mask is not None:
        shape = tuple((input_ids if input_ids is not None else inputs_embeds).shape[:2])
        if tuple(attention_mask.shape) != shape:
            raise InputShapeError(f"attention_mask has shape {tuple(attention_mask.shape)}, the inputs {shape}.")
        if not bool(attention_mask[:, -1].all()):
            raise InputShapeError(
                "Generation needs left padding: some rows of attention_mask end with 0 (right padding, as "
                "the training collator pads). Left-pad the prompts (tokenizer.padding_side = 'left') or "
                "generate row by row."
            )


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
    default to on where CUDA runs the model with sdpa/eager attention, off otherwise (CPU: an eager loop
    over a dynamic cache; flash-attention-2: dynamic cache, as HF `generate` uses it). The tokens are
    those of HF greedy `generate` with the same cache type. No early stop at EOS: VLA actions have a
    fixed token count.
    """
    _check_inputs(input_ids, inputs_embeds, attention_mask, max_new_tokens)
    if inputs_embeds is None:
        inputs_embeds = model.get_input_embeddings()(input_ids)
    batch, length = inputs_embeds.shape[:2]
    device = inputs_embeds.device
    # Flash-attention-2 needs a 2D mask to find the filled part of a static cache; keep it dynamic.
    graphable = device.type == "cuda" and model.config._attn_implementation != "flash_attention_2"
    static_cache = graphable if static_cache is None else static_cache
    padded = attention_mask is not None and not bool(attention_mask.all())
    compile_decode = (graphable and static_cache and not padded) if compile_decode is None else compile_decode
    if attention_mask is None:
        attention_mask = torch.ones((batch, length), dtype=torch.long, device=device)
    # Positions as HF generate computes them: count only real tokens (left padding).
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    if static_cache:
        cache = _static_cache(model, batch, length + max_new_tokens, inputs_embeds.dtype, device)
    else:
        cache = DynamicCache(config=model.config)
    # With no padding the causal mask comes from the cache alone: static shapes for CUDA graphs.
    mask = attention_mask if padded else None
    token = prefill(model, cache, inputs_embeds, mask, position_ids)
    tokens = [token]
    decode = _compiled_decode_one_token() if compile_decode else decode_one_token
    last = position_ids[:, -1:]
    for step in range(1, max_new_tokens):
        if padded:
            mask = torch.cat([mask, mask.new_ones((batch, 1))], dim=1)
        token = decode(model, cache, token, mask, last + step)
        tokens.append(token.clone() if compile_decode else token)  # CUDA-graph outputs are overwritten
    return torch.stack(tokens, dim=1)
