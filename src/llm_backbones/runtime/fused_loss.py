"""Causal-LM loss without materialising the full logits.

HF computes `logits = lm_head(hidden)` for every position (batch x tokens x vocab, upcast to fp32: 1 GB
at 4 x 2048 x 32064), then the cross-entropy. Here the positions are processed in chunks, each chunk's
logits recomputed in backward (activation checkpointing), so peak memory holds one chunk's logits.
The loss equals HF's `ForCausalLMLoss` (shifted labels, ignore_index -100, mean over supervised tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# The label value the loss skips (prompt tokens, padding): torch's cross-entropy default, as HF uses it.
IGNORE_INDEX = -100


def _chunk_loss_sum(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    softcap: float | None,
) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()
    if softcap:  # Gemma-2's final-logit soft-capping, as its HF head applies it
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_causal_lm_loss(
    hidden_states: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int = 4096,
    *,
    lm_head_bias: torch.Tensor | None = None,
    logit_softcap: float | None = None,
) -> torch.Tensor:
    """Mean next-token cross-entropy of `hidden_states` `[B, T, D]` against `labels` `[B, T]`, with the LM
    head's weight (and bias, Phi-2) and the final-logit soft-cap (Gemma-2) where the model has them."""
    shift_hidden = hidden_states[:, :-1].reshape(-1, hidden_states.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1).to(hidden_states.device)
    n_valid = (shift_labels != IGNORE_INDEX).sum()
    total = hidden_states.new_zeros((), dtype=torch.float32)
    for start in range(0, shift_hidden.shape[0], chunk_size):
        h, y = shift_hidden[start : start + chunk_size], shift_labels[start : start + chunk_size]
        if torch.is_grad_enabled():
            total = total + checkpoint(
                _chunk_loss_sum, h, lm_head_weight, lm_head_bias, y, logit_softcap, use_reentrant=False
            )
        else:
            total = total + _chunk_loss_sum(h, lm_head_weight, lm_head_bias, y, logit_softcap)
    return total / n_valid.clamp(min=1)
