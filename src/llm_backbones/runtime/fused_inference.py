"""Fused projections for inference: one GEMM for q, k and v, one for gate and up (LLaMA decoder layers).

A decode step reads every weight once per token; at batch 1 each projection is a matrix-vector product
whose speed is memory bandwidth. Three small products (q, k, v) and two (gate, up) reach less of it than one
taller product each, and launch more kernels. `fuse_projections(model)` concatenates the loaded weights
along the output dimension, in place, layer by layer (the unfused tensors are released, no copy is kept),
and gives the modules a forward that splits the one product. The outputs equal the unfused ones up to
floating-point summation order; the greedy tokens are the same (tests compare them).

Inference only: the parameter names change (`qkv_proj`, `gate_up_proj`), so save checkpoints from an
unfused model.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama import modeling_llama
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP

from llm_backbones.errors import ConfigMismatchError, ModelWeightsError


def _concatenated(linears: list[nn.Linear]) -> nn.Linear:
    """One `nn.Linear` whose output is the outputs of `linears`, one after the other."""
    first = linears[0]
    weight = torch.cat([linear.weight.detach() for linear in linears], dim=0)
    bias = None if first.bias is None else torch.cat([linear.bias.detach() for linear in linears], dim=0)
    fused = nn.Linear(
        first.in_features, weight.shape[0], bias=bias is not None, device="meta", dtype=weight.dtype
    )
    fused.weight = nn.Parameter(weight, requires_grad=first.weight.requires_grad)
    if bias is not None:
        fused.bias = nn.Parameter(bias, requires_grad=first.bias.requires_grad)
    return fused


class FusedLlamaAttention(LlamaAttention):
    """`LlamaAttention` with q, k and v from one product (`qkv_proj`; `qkv_sizes` splits it)."""

    qkv_proj: nn.Linear
    qkv_sizes: tuple[int, int, int]

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        cache=None,
        past_key_values=None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # main diff with LlamaAttention.forward: one GEMM, split; the cache keyword of either 5.x release
        cache = cache if cache is not None else past_key_values
        input_shape = hidden_states.shape[:-1]
        heads_shape = (*input_shape, -1, self.head_dim)
        query, key, value = [
            part.view(heads_shape).transpose(1, 2)
            for part in self.qkv_proj(hidden_states).split(self.qkv_sizes, -1)
        ]
        cos, sin = position_embeddings
        query, key = modeling_llama.apply_rotary_pos_emb(query, key, cos, sin)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, modeling_llama.eager_attention_forward
        )
        out, weights = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        return self.o_proj(out.reshape(*input_shape, -1).contiguous()), weights


class FusedLlamaMLP(LlamaMLP):
    """`LlamaMLP` with gate and up from one product (`gate_up_proj`)."""

    gate_up_proj: nn.Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


def _fuse_attention(attn: LlamaAttention) -> None:
    parts = [attn.q_proj, attn.k_proj, attn.v_proj]
    attn.qkv_sizes = tuple(p.out_features for p in parts)
    attn.qkv_proj = _concatenated(parts)
    del attn.q_proj, attn.k_proj, attn.v_proj
    attn.__class__ = FusedLlamaAttention


def _fuse_mlp(mlp: LlamaMLP) -> None:
    mlp.gate_up_proj = _concatenated([mlp.gate_proj, mlp.up_proj])
    del mlp.gate_proj, mlp.up_proj
    mlp.__class__ = FusedLlamaMLP


def fuse_projections(model: nn.Module) -> int:
    """Fuse q/k/v and gate/up of every LLaMA decoder layer of `model`, in place; the number of modules fused.

    Accepts models built from transformers' `LlamaAttention` / `LlamaMLP` (LLaMA-2, LLaMA-3); a model that
    is already fused is left as it is (returns 0). Raises `ConfigMismatchError` for a model with no such
    module, `ModelWeightsError` for weights still on the meta device.
    """
    targets = [m for m in model.modules() if type(m) in (LlamaAttention, LlamaMLP)]
    if not targets:
        already = any(isinstance(m, (FusedLlamaAttention, FusedLlamaMLP)) for m in model.modules())
        if already:
            return 0
        names = sorted(
            {type(m).__name__ for m in model.modules() if m.__class__.__name__.endswith(("Attention", "MLP"))}
        )
        raise ConfigMismatchError(
            f"fuse_projections supports LLaMA layers (LlamaAttention, LlamaMLP); {type(model).__name__} has "
            f"{names or 'none of them'}. Use the unfused model for this architecture."
        )
    meta = [name for name, p in model.named_parameters() if p.device.type == "meta"]
    if meta:
        raise ModelWeightsError(
            f"{len(meta)} parameters of {type(model).__name__} are on the meta device (e.g. {meta[0]!r}): "
            "the weights are not loaded. Load them first (backbone.load_state_dict(...)), then fuse."
        )
    with torch.no_grad():
        for module in targets:
            if isinstance(module, LlamaAttention):
                _fuse_attention(module)
            else:
                _fuse_mlp(module)
    return len(targets)
