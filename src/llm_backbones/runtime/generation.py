"""Fast greedy generation for short, fixed-length outputs (VLA action tokens).

A VLA action step is one prefill over BOS + image patches + instruction, then a handful of decode
steps. HF `generate` spends most of that time in Python and kernel launches. Here: small pure
functions (`prefill`, `decode_one_token`, `generate_greedy`) over an HF model and its KV cache.

- Default: an eager loop (dynamic cache; `static_cache=True` for a static one). The same tokens as HF
  greedy `generate` with the same cache type.
- Opt-in, compiled: `prepare_for_generation(model, batch_sizes=..., max_prompt_length=...)` compiles the
  prefill and the decode step ahead of time (CUDA graphs on CUDA) and left-pads every prompt to one of a
  few lengths ("buckets"), so a robot whose instructions vary in length never compiles inside its control
  loop. `generate_greedy` then takes that path for the prepared model (or `compiled=True`).
"""

from __future__ import annotations

import inspect
import logging
import math
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from typing import Any

import torch
from transformers import DynamicCache, LlamaForCausalLM, PreTrainedModel, StaticCache
from transformers.cache_utils import StaticLayer

from llm_backbones import _args
from llm_backbones.errors import ArgumentError, ConfigMismatchError, InputShapeError, ModelWeightsError

logger = logging.getLogger(__name__)


# transformers renamed the forward keyword `past_key_values` to `cache` in 5.2x (the old name warns, and
# goes in 5.40); every model class of one release takes the same one.
CACHE_KEYWORD = (
    "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"
)

# Prompt lengths are rounded up to a multiple of this (left padding) on the compiled path.
DEFAULT_BUCKET_SIZE = 32
# Calls per (batch size, bucket) while preparing CUDA graphs: graph trees run a new graph eagerly once,
# record it on the next call, and replay it from the third on. Without graphs one call compiles.
GRAPH_WARMUP_CALLS = 3


def _step(
    model: PreTrainedModel,
    cache,
    position_ids: torch.Tensor,
    *,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    pick: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """One forward over new positions (RoPE `position_ids` skip left padding); the greedy next token,
    `[B]` (`pick(logits [B, V])` chooses it instead of the argmax where given)."""
    out = model(
        input_ids=input_ids,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=1,
        **{CACHE_KEYWORD: cache},
    )
    logits = out.logits[:, -1]
    return logits.argmax(dim=-1) if pick is None else pick(logits)


def prefill(model, cache, inputs_embeds, attention_mask, position_ids, pick=None) -> torch.Tensor:
    """Run the whole prompt through the model, filling `cache`; the first new token, `[B]`."""
    return _step(
        model, cache, position_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, pick=pick
    )


def decode_one_token(model, cache, token, attention_mask, position_ids, pick=None) -> torch.Tensor:
    """Feed one token per row (`[B]`) at `position_ids` (`[B, 1]`); the next token, `[B]`."""
    return _step(
        model, cache, position_ids, input_ids=token[:, None], attention_mask=attention_mask, pick=pick
    )


@cache
def _compiled(
    fn: Callable, backend: str | Callable, dynamic: bool | None, options: tuple[tuple[str, Any], ...] = ()
) -> Callable:
    """`torch.compile(fn)`, made once per setting on first use (importing the library imports no compiler).
    Dynamo keys its compiled graphs on the model and the tensors' shapes, so one wrapper serves every model.
    `options`: inductor settings as sorted (name, value) pairs; `("triton.cudagraphs", True)` is what
    `mode="reduce-overhead"` sets."""
    return torch.compile(fn, backend=backend, dynamic=dynamic, fullgraph=False, options=dict(options) or None)


def _inductor_options(mode: str | None, extra: dict[str, Any] | None = None) -> tuple[tuple[str, Any], ...]:
    """The inductor options of a compile `mode` (None, "default" or "reduce-overhead") plus `extra`."""
    if mode not in (None, "default", "reduce-overhead"):
        raise InputShapeError(
            f"compile_mode={mode!r} is not supported; pass None or 'default' (inductor, no CUDA graphs), "
            "'reduce-overhead' (CUDA graphs) or 'auto' (CUDA graphs on CUDA)."
        )
    options = {"triton.cudagraphs": True} if mode == "reduce-overhead" else {}
    return tuple(sorted({**options, **(extra or {})}.items()))


def _run_step(step: Callable, graphs: bool, *args) -> torch.Tensor:
    """Call a (compiled) step; with CUDA graphs, safely.

    CUDA graph trees reuse a graph's output memory on its next replay: a token returned by one replay and
    fed into the next would be overwritten while it is read ("accessing tensor output of CUDAGraphs that has
    been overwritten by a subsequent run"). So each step starts a new graph-tree step, and its output is
    cloned out of the graph's memory before anything else runs.
    """
    if graphs:
        torch.compiler.cudagraph_mark_step_begin()
    token = step(*args)
    return token.clone() if graphs else token


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """RoPE positions as HF generate computes them: count only real tokens (left padding gets 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _static_loop(
    model: PreTrainedModel,
    cache: StaticCache,
    slots: int,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    *,
    prefill_step: Callable = prefill,
    decode_step: Callable = decode_one_token,
    graphs: bool = False,
    dynamic_length: bool = False,
) -> torch.Tensor:
    """Greedy decoding over a static cache of `slots` >= `L + max_new_tokens` (`L` the prompt length).

    The 2D mask is given for every slot at once (prompt mask, then ones), so each step sees the same
    tensor: static shapes for compiled steps. Slots not yet written are hidden by the causal part of the
    mask, which HF builds from the cache's own write position. `dynamic_length`: one compiled prefill for
    every prompt length (CUDA graphs are still recorded per length).
    """
    batch, length = inputs_embeds.shape[:2]
    position_ids = _positions(attention_mask)
    if dynamic_length:
        torch._dynamo.maybe_mark_dynamic(inputs_embeds, 1)
        torch._dynamo.maybe_mark_dynamic(position_ids, 1)
    full_mask = torch.cat(
        [attention_mask.long(), attention_mask.new_ones((batch, slots - length), dtype=torch.long)], 1
    )
    token = _run_step(prefill_step, graphs, model, cache, inputs_embeds, full_mask, position_ids)
    tokens = [token]
    last = position_ids[:, -1:]
    for step in range(1, max_new_tokens):
        token = _run_step(decode_step, graphs, model, cache, token, full_mask, last + step)
        tokens.append(token)
    return torch.stack(tokens, dim=1)


def _dynamic_loop(
    model: PreTrainedModel,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    max_new_tokens: int,
    pick: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Greedy decoding over a dynamic cache (HF generate's default), eager."""
    batch, length = inputs_embeds.shape[:2]
    padded = attention_mask is not None and not bool(attention_mask.all())
    mask = attention_mask.long() if padded else None
    ones = torch.ones((batch, length), dtype=torch.long, device=inputs_embeds.device)
    position_ids = _positions(attention_mask if padded else ones)
    cache = DynamicCache(config=model.config)
    token = prefill(model, cache, inputs_embeds, mask, position_ids, pick)
    tokens = [token]
    last = position_ids[:, -1:]
    for step in range(1, max_new_tokens):
        if padded:
            mask = torch.cat([mask, mask.new_ones((batch, 1))], dim=1)
        token = decode_one_token(model, cache, token, mask, last + step, pick)
        tokens.append(token)
    return torch.stack(tokens, dim=1)


def _new_static_cache(
    model: PreTrainedModel, batch: int, max_len: int, dtype: torch.dtype, device: torch.device
) -> StaticCache:
    """A static cache allocated now (outside any compiled region, so its tensors get static addresses)."""
    config = model.config.get_text_config()
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    cache = StaticCache(config=model.config, max_cache_len=max_len)
    cache.early_initialization(
        batch_size=batch, num_heads=heads, head_dim=head_dim, dtype=dtype, device=device
    )
    return cache


def _rewind(cache: StaticCache) -> None:
    """Start a static cache over for the next call: its write position back to 0, in one kernel.

    The old keys and values can stay: a call writes every slot it reads before reading it (the prompt's,
    padding included, then one per new token), and the causal mask hides the slots after its position.
    Zeroing them all (`reset`) would cost a full pass over the cache (1.4 GB at batch 8 for Llama-2-7B).
    Layers other than plain `StaticLayer` (sliding windows keep more state) get the full `reset`.
    """
    if all(type(layer) is StaticLayer for layer in cache.layers):
        torch._foreach_zero_([layer.cumulative_length for layer in cache.layers])
    else:
        cache.reset()


# One static cache per model and shape for the eager/`compile_decode` path, rewound between calls.
_static_caches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _static_cache(model: PreTrainedModel, batch: int, max_len: int, dtype: torch.dtype, device: torch.device):
    per_model = _static_caches.setdefault(model, {})
    key = (batch, max_len, dtype, device)
    cache = per_model.get(key)
    if cache is None:
        per_model.clear()  # keep one: a new shape replaces the previous cache
        cache = per_model[key] = _new_static_cache(model, batch, max_len, dtype, device)
    else:
        _rewind(cache)
    return cache


def _check_static_attention(model: PreTrainedModel, what: str) -> None:
    """Refuse attention implementations that cannot run over a static cache."""
    attn = model.config._attn_implementation
    if attn == "flash_attention_2":
        raise ConfigMismatchError(
            f"{what} needs a static KV cache, which this model's attn_implementation={attn!r} cannot use "
            "(flash-attention-2 finds the filled part of the cache from a 2D mask). Load the model with "
            "attn_implementation='sdpa', or generate with the default eager path."
        )


class PreparedGeneration:
    """Compiled greedy generation for one model, prepared ahead of time (see `prepare_for_generation`).

    Prompts are left-padded to the smallest bucket that holds them; the prefill is compiled once per batch
    size with the prompt length dynamic, the decode step once per batch size; one static KV cache of
    `max(buckets) + max_new_tokens` slots per batch size. With CUDA graphs (`"triton.cudagraphs"` in the
    inductor options, the default on CUDA) both replay graphs recorded while preparing. It holds no
    reference to the model.
    """

    def __init__(
        self,
        *,
        buckets: Sequence[int],
        max_new_tokens: int,
        backend: str | Callable = "inductor",
        options: tuple[tuple[str, Any], ...] = (),
        decode_options: tuple[tuple[str, Any], ...] = (),
    ) -> None:
        self.buckets = tuple(sorted(set(buckets)))
        self.max_new_tokens = max_new_tokens
        self.backend = backend
        self.graphs = backend == "inductor" and dict(options).get("triton.cudagraphs", False)
        self.prepared: set[tuple[int, int]] = set()  # (batch size, bucket) pairs compiled and warmed up
        self.seconds = 0.0  # spent preparing
        self._caches: dict[tuple[int, torch.dtype, torch.device], StaticCache] = {}
        # one wrapper for each, shared by every model: dynamo keys its graphs on the model and the shapes
        self._prefill = _compiled(prefill, backend, None, options)
        self._decode = _compiled(decode_one_token, backend, False, decode_options)

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return tuple(sorted({batch for batch, _ in self.prepared}))

    def bucket(self, length: int) -> int:
        """The padded length of a prompt of `length` tokens (raises if none holds it)."""
        for bucket in self.buckets:
            if bucket >= length:
                return bucket
        raise InputShapeError(
            f"The prompt has {length} tokens, more than the longest prepared length {self.buckets[-1]} "
            f"(buckets {list(self.buckets)}). Call prepare_for_generation(..., max_prompt_length={length}) "
            "again, or pass compiled=False for the eager path."
        )

    def _cache(
        self, model: PreTrainedModel, batch: int, dtype: torch.dtype, device: torch.device
    ) -> StaticCache:
        key = (batch, dtype, device)
        cache = self._caches.get(key)
        if cache is None:
            slots = self.buckets[-1] + self.max_new_tokens
            cache = self._caches[key] = _new_static_cache(model, batch, slots, dtype, device)
        else:
            _rewind(cache)
        return cache

    def check(self, batch: int, length: int, max_new_tokens: int) -> int:
        """The bucket for this call; raises `InputShapeError` for what was not prepared (nothing compiles
        after preparing, so a control loop never waits for the compiler)."""
        if max_new_tokens > self.max_new_tokens:
            raise InputShapeError(
                f"max_new_tokens={max_new_tokens} is more than the {self.max_new_tokens} prepared. Call "
                f"prepare_for_generation(..., max_new_tokens={max_new_tokens}) again, or pass compiled=False."
            )
        bucket = self.bucket(length)
        if (batch, bucket) not in self.prepared:
            raise InputShapeError(
                f"Batch size {batch} with prompts of up to {bucket} tokens was not prepared (prepared batch "
                f"sizes: {list(self.batch_sizes)}, buckets {list(self.buckets)}). Call "
                f"prepare_for_generation(..., batch_sizes={sorted({*self.batch_sizes, batch})}) again, or "
                "pass compiled=False."
            )
        return bucket

    def run(
        self,
        model: PreTrainedModel,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        bucket: int,
    ) -> torch.Tensor:
        """Left-pad to `bucket`, then prefill and decode with the compiled steps; new ids `[B, N]`."""
        batch, length, dim = inputs_embeds.shape
        # Always fresh tensors made here: dynamo guards on what kind of tensor comes in (an inference tensor
        # or not, requiring grad or not, its strides), so the caller's own would make it compile again.
        with torch.inference_mode():
            padded = inputs_embeds.new_zeros((batch, bucket, dim))
            padded[:, bucket - length :] = inputs_embeds
            mask = torch.zeros((batch, bucket), dtype=torch.long, device=inputs_embeds.device)
            mask[:, bucket - length :] = attention_mask
            cache = self._cache(model, batch, padded.dtype, padded.device)
            return _static_loop(
                model,
                cache,
                self.buckets[-1] + self.max_new_tokens,
                padded,
                mask,
                max_new_tokens,
                prefill_step=self._prefill,
                decode_step=self._decode,
                graphs=self.graphs,
                dynamic_length=True,
            )

    def warm_up(
        self, model: PreTrainedModel, batch_sizes: Iterable[int], dtype: torch.dtype, device: torch.device
    ) -> None:
        """Compile (and record CUDA graphs) for every batch size and bucket now."""
        started = time.perf_counter()
        dim = model.config.get_text_config().hidden_size
        with torch.inference_mode():
            for batch in batch_sizes:
                for bucket in self.buckets:
                    embeds = torch.zeros((batch, bucket, dim), dtype=dtype, device=device)
                    mask = torch.ones((batch, bucket), dtype=torch.long, device=device)
                    for _ in range(GRAPH_WARMUP_CALLS if self.graphs else 1):
                        self.run(model, embeds, mask, self.max_new_tokens, bucket)
                    self.prepared.add((batch, bucket))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.seconds += time.perf_counter() - started


# The prepared generation of each model (weak: it goes with the model).
_prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prepared_generation(model: PreTrainedModel) -> PreparedGeneration | None:
    """The `PreparedGeneration` of `model`, or None if `prepare_for_generation` was not called for it."""
    return _prepared.get(model)


def prompt_buckets(
    max_prompt_length: int, min_prompt_length: int = 1, bucket_size: int = DEFAULT_BUCKET_SIZE
) -> tuple[int, ...]:
    """Multiples of `bucket_size` that cover prompt lengths `min_prompt_length..max_prompt_length`."""
    for name, value in (
        ("max_prompt_length", max_prompt_length),
        ("min_prompt_length", min_prompt_length),
        ("bucket_size", bucket_size),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputShapeError(f"{name} must be a positive integer, got {value!r}.")
    if min_prompt_length > max_prompt_length:
        raise InputShapeError(
            f"min_prompt_length={min_prompt_length} is more than max_prompt_length={max_prompt_length}; "
            "pass min_prompt_length <= max_prompt_length."
        )
    first = math.ceil(min_prompt_length / bucket_size) * bucket_size
    last = math.ceil(max_prompt_length / bucket_size) * bucket_size
    return tuple(range(first, last + 1, bucket_size))


def _positive_ints(name: str, values: Any) -> tuple[int, ...]:
    values = (values,) if isinstance(values, int) else tuple(values)
    if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
        raise InputShapeError(f"{name} must be positive integers, e.g. (1, 8); got {values!r}.")
    return values


def prepare_for_generation(
    model: PreTrainedModel,
    *,
    batch_sizes: int | Sequence[int] = (1,),
    max_prompt_length: int,
    min_prompt_length: int = 1,
    max_new_tokens: int = 8,
    bucket_size: int = DEFAULT_BUCKET_SIZE,
    buckets: Sequence[int] | None = None,
    compile_mode: str | None = "auto",
    compile_backend: str | Callable = "inductor",
    decode_compile_options: dict[str, Any] | None = None,
    fuse_projections: bool = False,
) -> PreparedGeneration:
    """Compile greedy generation for `model` ahead of time; later `generate_greedy` calls take that path.

    Prompts of `min_prompt_length..max_prompt_length` tokens are left-padded to multiples of `bucket_size`
    (or to the given `buckets`); for each of `batch_sizes` and each bucket the compiled prefill and decode
    step run now (and CUDA graphs are recorded), so a later call with a prepared shape never compiles. A
    call with a longer prompt, more than `max_new_tokens` or another batch size raises `InputShapeError`.
    `compile_mode="auto"`: "reduce-overhead" (CUDA graphs) on CUDA, inductor's default elsewhere; another
    `compile_backend` (e.g. "eager", or a counting callable in tests) ignores the mode and the options.
    `decode_compile_options`: more inductor settings for the decode step only, e.g.
    `{"coordinate_descent_tuning": True}` (batch-1 matrix-vector products as tuned Triton reductions, as
    gpt-fast does; longer compilation).
    `fuse_projections=True` first fuses q/k/v and gate/up into one GEMM each, in place
    (`llm_backbones.runtime.fused_inference.fuse_projections`: inference only).
    Returns the `PreparedGeneration` (its `seconds`, `buckets`, `batch_sizes`).
    """
    _check_static_attention(model, "Compiled generation")
    batches = _positive_ints("batch_sizes", batch_sizes)
    _args.check_positive_int(max_new_tokens, "max_new_tokens", error=InputShapeError)
    if buckets is not None:
        chosen = _positive_ints("buckets", buckets)
        if max(chosen) < max_prompt_length:
            raise InputShapeError(
                f"The longest bucket {max(chosen)} is shorter than max_prompt_length={max_prompt_length}; "
                f"add a bucket of at least {max_prompt_length} tokens."
            )
    else:
        chosen = prompt_buckets(max_prompt_length, min_prompt_length, bucket_size)
    if fuse_projections:
        from llm_backbones.runtime.fused_inference import fuse_projections as fuse

        fuse(model)
    param = next(model.parameters())
    if compile_mode == "auto":
        compile_mode = "reduce-overhead" if param.device.type == "cuda" else None
    if compile_backend == "inductor":
        options = _inductor_options(compile_mode)
        decode_options = _inductor_options(compile_mode, decode_compile_options)
    else:
        options = decode_options = ()
    plan = PreparedGeneration(
        buckets=chosen,
        max_new_tokens=max_new_tokens,
        backend=compile_backend,
        options=options,
        decode_options=decode_options,
    )
    # One prefill graph and one decode graph per batch size; dynamo's default limit (8 per function) would
    # fall back to eager past a few batch sizes, silently. (`cache_size_limit`: its name before torch 2.6.)
    name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    limit = max(getattr(torch._dynamo.config, name), 4 * len(batches) + 8)
    with torch._dynamo.config.patch(**{name: limit}):
        plan.warm_up(model, batches, param.dtype, param.device)
    _prepared[model] = plan
    logger.info(
        "Prepared compiled generation: batch sizes %s, prompt buckets %s, %d new tokens, %.1f s",
        list(batches),
        list(chosen),
        max_new_tokens,
        plan.seconds,
    )
    return plan


def check_weights_loaded(model: torch.nn.Module, what: str = "Generation") -> None:
    """`ModelWeightsError` when a parameter of `model` has no data (meta device): a backbone built with
    `inference_mode=True` whose weights were never loaded would give tensors on the meta device."""
    on_meta = next((name for name, p in model.named_parameters() if p.device.type == "meta"), None)
    if on_meta is not None:
        raise ModelWeightsError(
            f"{what} needs the model's weights, but {on_meta} (and maybe others) has no data: it is on "
            "the meta "
            "device, as a backbone built with inference_mode=True is until its weights are loaded. Load them "
            "first (load_backbone(dir, inference_mode=True), backbone.load_state_dict(state_dict), or a VLA "
            "loader), or build with inference_mode=False."
        )


def _check_inputs(model, input_ids, inputs_embeds, attention_mask, max_new_tokens) -> None:
    """Refuse what generation would otherwise run on silently: shapes that do not fit, ids that are not
    integers, embeddings that are not floating or hold NaN/inf, a mask of other values than 0 and 1, a model
    whose weights were never loaded, and more positions than the model has (prompt + `max_new_tokens`)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise InputShapeError(
            "Pass exactly one of input_ids ([batch, tokens]) or inputs_embeds ([batch, tokens, dim])."
        )
    for name, tensor in (
        ("input_ids", input_ids),
        ("inputs_embeds", inputs_embeds),
        ("mask", attention_mask),
    ):
        if tensor is not None and not isinstance(tensor, torch.Tensor):
            raise ArgumentError(
                f"{name} must be a torch.Tensor, got {type(tensor).__name__}. Pass e.g. "
                "torch.tensor([ids]) (tokenizer(..., return_tensors='pt'))."
            )
    if input_ids is not None and input_ids.dim() != 2:
        raise InputShapeError(
            f"input_ids must be [batch, tokens], got shape {tuple(input_ids.shape)}; add a batch dimension "
            "(input_ids[None])."
        )
    if input_ids is not None and (input_ids.is_floating_point() or input_ids.dtype == torch.bool):
        raise ArgumentError(
            f"input_ids must be integer token ids, got dtype {input_ids.dtype}. Pass the tokenizer's ids "
            "(torch.long), e.g. tokenizer(text, return_tensors='pt').input_ids.",
            name="input_ids",
            value=input_ids.dtype,
        )
    if inputs_embeds is not None and inputs_embeds.dim() != 3:
        raise InputShapeError(
            f"inputs_embeds must be [batch, tokens, dim], got shape {tuple(inputs_embeds.shape)}."
        )
    if inputs_embeds is not None and not inputs_embeds.is_floating_point():
        raise ArgumentError(
            f"inputs_embeds must be floating embeddings, got dtype {inputs_embeds.dtype} (token ids?). "
            "Pass ids "
            "as input_ids=, or embeddings from model.get_input_embeddings()(ids) / insert_patch_embeddings.",
            name="inputs_embeds",
            value=inputs_embeds.dtype,
        )
    if inputs_embeds is not None and not bool(torch.isfinite(inputs_embeds).all()):
        bad = int((~torch.isfinite(inputs_embeds)).sum())
        raise ArgumentError(
            f"inputs_embeds holds {bad} NaN or infinite values of {inputs_embeds.numel():,}: every token "
            "would "
            "be garbage. Check what made them (the vision backbone's features, the projector, a diverged "
            "checkpoint) and pass finite embeddings.",
            name="inputs_embeds",
            value=f"{bad} non-finite",
        )
    _args.check_positive_int(max_new_tokens, "max_new_tokens", error=InputShapeError)
    shape = tuple((input_ids if input_ids is not None else inputs_embeds).shape[:2])
    if attention_mask is not None:
        if tuple(attention_mask.shape) != shape:
            raise InputShapeError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, the inputs {shape}."
            )
        if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            odd = attention_mask[(attention_mask != 0) & (attention_mask != 1)]
            raise ArgumentError(
                f"attention_mask must hold only 0 (padding) and 1 (a token), got {odd.flatten()[0].item()!r} "
                f"(and {odd.numel() - 1} more such values). Pass the tokenizer's mask (0/1 integers or "
                "bools), "
                "not weights.",
                name="attention_mask",
                value=odd.flatten()[0].item(),
            )
        if not bool(attention_mask[:, -1].all()):
            raise InputShapeError(
                "Generation needs left padding: some rows of attention_mask end with 0 (right padding, as "
                "the training collator pads). Left-pad the prompts (tokenizer.padding_side = 'left') or "
                "generate row by row."
            )
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if isinstance(limit, int) and shape[1] + max_new_tokens > limit:
        fix = (
            f"Shorten the prompt to fewer than {limit:,} tokens (with room for the new ones)."
            if shape[1] >= limit
            else f"Pass max_new_tokens of at most {limit - shape[1]:,}, or shorten the prompt."
        )
        raise InputShapeError(
            f"The prompt has {shape[1]:,} tokens and max_new_tokens={max_new_tokens:,} asks for "
            f"{shape[1] + max_new_tokens:,} positions, but the model has {limit:,} "
            "(max_position_embeddings); "
            f"positions beyond it were never trained. {fix}"
        )
    check_weights_loaded(model)


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
    compiled: bool | None = None,
) -> torch.Tensor:
    """Greedy-decode exactly `max_new_tokens` tokens; returns only the new ids, `LongTensor[B, N]`.

    Give `input_ids` or `inputs_embeds` (e.g. from `insert_patch_embeddings`), with an optional
    `attention_mask` (left padding for rows of different lengths). No early stop at EOS: VLA actions have
    a fixed token count. Paths:

    - default: eager, over a dynamic cache (`static_cache=True`: a static one); the tokens of HF greedy
      `generate` with the same cache type.
    - compiled: where `prepare_for_generation` was called for `model` (or with `compiled=True`, which
      prepares for this call's shape if needed). `compiled=False` forces the eager path.
    - `compile_decode=True`: static cache, eager prefill and a compiled decode step (CUDA graphs on CUDA).
    """
    _check_inputs(model, input_ids, inputs_embeds, attention_mask, max_new_tokens)
    if inputs_embeds is None:
        inputs_embeds = model.get_input_embeddings()(input_ids)
    batch, length = inputs_embeds.shape[:2]
    device = inputs_embeds.device
    legacy = static_cache is not None or compile_decode is not None
    if compiled is None:
        compiled = not legacy and prepared_generation(model) is not None
    if compiled:
        if static_cache is False or compile_decode is False:
            raise InputShapeError(
                "compiled=True runs a static cache and a compiled decode step; drop static_cache=False / "
                "compile_decode=False, or pass compiled=False."
            )
        plan = prepared_generation(model)
        if plan is None:
            plan = prepare_for_generation(
                model,
                batch_sizes=(batch,),
                min_prompt_length=length,
                max_prompt_length=length,
                max_new_tokens=max_new_tokens,
            )
        mask = (
            attention_mask
            if attention_mask is not None
            else torch.ones((batch, length), dtype=torch.long, device=device)
        )
        return plan.run(model, inputs_embeds, mask, max_new_tokens, plan.check(batch, length, max_new_tokens))

    compile_decode = bool(compile_decode)
    static_cache = compile_decode if static_cache is None else static_cache
    if compile_decode and not static_cache:
        raise InputShapeError("compile_decode=True needs static_cache=True (or left unset).")
    if not static_cache:
        return _dynamic_loop(model, inputs_embeds, attention_mask, max_new_tokens)
    _check_static_attention(model, "static_cache=True")
    mask = (
        attention_mask
        if attention_mask is not None
        else torch.ones((batch, length), dtype=torch.long, device=device)
    )
    slots = length + max_new_tokens
    cache = _static_cache(model, batch, slots, inputs_embeds.dtype, device)
    if not compile_decode:
        return _static_loop(model, cache, slots, inputs_embeds, mask, max_new_tokens)
    graphs = device.type == "cuda"
    decode = _compiled(
        decode_one_token, "inductor", False, _inductor_options("reduce-overhead" if graphs else None)
    )
    return _static_loop(
        model, cache, slots, inputs_embeds, mask, max_new_tokens, decode_step=decode, graphs=graphs
    )


@torch.inference_mode()
def generate_greedy_in_range(
    model: PreTrainedModel,
    token_range: tuple[int, int],
    *,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding with every new token chosen among the ids `token_range` (inclusive; a logits mask),
    e.g. a VLA's action tokens. Returns `(tokens, free)`, both `LongTensor[B, N]`: the chosen ids, and the
    argmax over the whole vocabulary at each step (where it differs, the mask changed the choice). Eager,
    over a dynamic cache; the tokens of `generate_greedy` wherever its argmax lies in the range.
    """
    _check_inputs(model, input_ids, inputs_embeds, attention_mask, max_new_tokens)
    low, high = token_range
    vocab = model.config.get_text_config().vocab_size
    if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high < vocab):
        raise InputShapeError(
            f"token_range={token_range!r} must be two ids low <= high within 0..{vocab - 1}."
        )
    free: list[torch.Tensor] = []

    def pick(logits: torch.Tensor) -> torch.Tensor:
        free.append(logits.argmax(dim=-1))
        return logits[:, low : high + 1].argmax(dim=-1) + low

    if inputs_embeds is None:
        inputs_embeds = model.get_input_embeddings()(input_ids)
    tokens = _dynamic_loop(model, inputs_embeds, attention_mask, max_new_tokens, pick)
    return tokens, torch.stack(free, dim=1)


def generate_actions(
    model: PreTrainedModel,
    action_tokenizer: Any,
    *,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    action_dim: int = 7,
    **kwargs: Any,
) -> torch.Tensor:
    """Greedy-generate exactly `action_dim` tokens per row and decode them: `[B, action_dim]` (float64
    bin centres), as OpenVLA's `predict_action` does before un-normalizing.

    The prompt must end where the actions begin (`vla_prompt`, or `tokenize_prompt(..., reply=...)`:
    on LLaMA-2 with the "▁" the model saw before its actions), so no decode step is spent on a
    separator. A generated token that is not an action token raises `ActionError`.
    """
    new = generate_greedy(
        model,
        input_ids=input_ids,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        max_new_tokens=action_dim,
        **kwargs,
    )
    return action_tokenizer.decode(new)
