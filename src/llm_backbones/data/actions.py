"""OpenVLA's action tokenizer: continuous actions <-> the least-used tokens at the end of the vocabulary.

Each action dimension is clipped to `[min_action, max_action]` and discretized against `n_bins` uniform
edges (`np.digitize` semantics, bin index 1..n_bins); bin `b` is the token id `vocab_size - b`, where
`vocab_size` is the tokenizer's base vocabulary (PAD and other added tokens excluded). Decoding maps a
token id back to the centre of its bin. Same ids as OpenVLA; on top of it, token ids are produced
directly (`encode`), so no decode-then-retokenize round trip can change them, and bad input raises.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from llm_backbones import _args
from llm_backbones.errors import ActionError


class ActionTokenizer:
    """Discretize actions into `n_bins` bins mapped to the last `n_bins` token ids of the base vocabulary.

    Args:
        tokenizer: the backbone's tokenizer (its `vocab_size` is the base vocabulary).
        bins: number of bin edges (OpenVLA: 256).
        min_action, max_action: the clipping range (OpenVLA: -1, 1; normalize actions to it first).
        action_dim: if given, the size every action vector must have (e.g. 7 for OpenVLA's end-effector
            deltas + gripper); a vector of another size raises instead of producing tokens for the wrong
            robot.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        bins: int = 256,
        min_action: float = -1.0,
        max_action: float = 1.0,
        *,
        action_dim: int | None = None,
    ) -> None:
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
            raise ActionError(f"bins must be an integer >= 2, got {bins!r}. OpenVLA uses 256.")
        for name, value in (("min_action", min_action), ("max_action", max_action)):
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
                raise ActionError(f"{name} must be a finite number, got {value!r}. OpenVLA uses -1 and 1.")
        if action_dim is not None and (
            isinstance(action_dim, bool) or not isinstance(action_dim, int) or action_dim < 1
        ):
            raise ActionError(
                f"action_dim must be a positive integer or None, got {action_dim!r} (OpenVLA: 7)."
            )
        if not isinstance(getattr(tokenizer, "vocab_size", None), int):
            raise ActionError(
                "tokenizer must be an HF tokenizer with an integer vocab_size, got "
                f"{type(tokenizer).__name__}. Pass the backbone's tokenizer (backbone.get_tokenizer())."
            )
        if not min_action < max_action:
            raise ActionError(
                f"min_action={min_action} must be below max_action={max_action}; OpenVLA uses -1 and 1."
            )
        if bins + 1 > tokenizer.vocab_size:
            raise ActionError(
                f"bins={bins} needs more tokens than the vocabulary has ({tokenizer.vocab_size})."
            )
        if not math.isfinite(float(max_action) - float(min_action)):
            raise ActionError(
                f"The action range [{min_action}, {max_action}] is too wide for float64 (its width "
                "overflows), so bin centres would be inf/nan. Normalize actions to a finite range first "
                "(OpenVLA: [-1, 1])."
            )
        first = int(tokenizer.vocab_size) - bins
        clash = sorted(
            {
                int(i)
                for i in getattr(tokenizer, "all_special_ids", [])
                if first <= int(i) < tokenizer.vocab_size
            }
        )
        if clash:
            names = tokenizer.convert_ids_to_tokens(clash[:5])
            at_most = (
                tokenizer.vocab_size
                - 1
                - max(i for i in tokenizer.all_special_ids if i < tokenizer.vocab_size)
            )
            raise ActionError(
                f"bins={bins} maps actions onto ids {first}..{tokenizer.vocab_size - 1}, which include the "
                f"special tokens {dict(zip(clash[:5], names, strict=True))}: an action would generate "
                f"BOS/EOS/PAD. Use fewer bins (at most {at_most} here; OpenVLA uses 256)."
            )
        self.tokenizer = tokenizer
        self.n_bins, self.min_action, self.max_action = bins, float(min_action), float(max_action)
        self.action_dim = action_dim
        # numpy's linspace, not torch's: the two differ in the last bit at some edges, and OpenVLA's ids
        # are defined by numpy's.
        self.bins = torch.from_numpy(np.linspace(self.min_action, self.max_action, bins))
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0
        self.base_vocab_size = int(tokenizer.vocab_size)
        # OpenVLA's attribute: the id just below the first action token.
        self.action_token_begin_idx = self.base_vocab_size - (self.n_bins + 1)

    @property
    def vocab_size(self) -> int:
        return self.n_bins

    @property
    def token_id_range(self) -> tuple[int, int]:
        """Smallest and largest action token id (inclusive)."""
        return self.base_vocab_size - self.n_bins, self.base_vocab_size - 1

    def encode(self, actions: torch.Tensor | Sequence[float] | Sequence[Sequence[float]]) -> torch.Tensor:
        """Actions `[..., D]` -> token ids `[..., D]` (LongTensor)."""
        actions = _as_tensor(
            actions, "Actions", "a float tensor or a (nested) list of numbers of shape [..., D]"
        )
        if actions.is_complex():
            raise ActionError(
                f"Actions must be real numbers, got a {actions.dtype} tensor. Pass the real part "
                "(actions.real) if the imaginary part is zero."
            )
        actions = actions.to(torch.float64)
        if actions.dim() == 0:
            raise ActionError("An action must have at least one dimension, got a scalar; pass [value].")
        if actions.shape[-1] == 0:
            raise ActionError(
                f"An action vector must have at least one value, got shape {tuple(actions.shape)}; "
                "pass actions of shape [..., D] with D >= 1."
            )
        if self.action_dim is not None and actions.shape[-1] != self.action_dim:
            raise ActionError(
                f"Actions have shape {tuple(actions.shape)} but this tokenizer expects action_dim="
                f"{self.action_dim} values per action (last dimension). Check the robot's action space, or "
                "build the ActionTokenizer with the right action_dim."
            )
        if not torch.isfinite(actions).all():
            bad = actions[~torch.isfinite(actions)].flatten()[:3].tolist()
            raise ActionError(
                f"Actions must be finite, got {bad}. Replace NaN/inf before tokenizing (e.g. clamp or drop "
                "the step)."
            )
        clipped = actions.clamp(self.min_action, self.max_action)
        # torch.bucketize(right=True) == np.digitize(right=False): b such that bins[b-1] <= x < bins[b]
        discretized = torch.bucketize(clipped, self.bins, right=True)
        return self.base_vocab_size - discretized

    def __call__(
        self, actions: torch.Tensor | Sequence[float] | Sequence[Sequence[float]]
    ) -> str | list[str]:
        """OpenVLA's interface: the action tokens as text (one string per action vector)."""
        ids = self.encode(actions)
        if ids.dim() == 1:
            return self.tokenizer.decode(ids.tolist())
        return self.tokenizer.batch_decode(ids.reshape(-1, ids.shape[-1]).tolist())

    def decode(self, action_token_ids: torch.Tensor | Sequence[int], *, strict: bool = True) -> torch.Tensor:
        """Action token ids `[..., D]` -> the centres of their bins `[..., D]` (float64), OpenVLA's values.

        Raises `ActionError` for an id outside the action range (`token_id_range`): a generated text token
        is not silently clipped into an action. `strict=False` is OpenVLA's `predict_action` rule instead:
        `clip(vocab_size - id - 1, 0, bins - 2)`, so such a token becomes an edge bin.
        """
        _args.check_bool(strict, "strict", error=ActionError)
        raw = _as_tensor(
            action_token_ids, "Action token ids", "integer token ids (a LongTensor or a list of ints)"
        )
        if raw.is_complex() or raw.dtype == torch.bool:
            raise ActionError(
                f"Action token ids must be integers, got a {raw.dtype} tensor. Pass the generated ids (a "
                "LongTensor)."
            )
        if raw.is_floating_point():
            whole = torch.isfinite(raw) & (raw == raw.round())
            if not whole.all():
                bad = raw[~whole].flatten()[:3].tolist()
                raise ActionError(
                    f"Action token ids must be whole numbers, got {bad}. Pass the generated ids (a "
                    "LongTensor), not logits or decoded actions."
                )
        ids = raw.to(torch.long)
        low, high = self.token_id_range
        if strict and ((ids < low) | (ids > high)).any():
            bad = ids[(ids < low) | (ids > high)].flatten()[:3].tolist()
            raise ActionError(
                f"Token ids {bad} are not action tokens (accepted: {low}..{high}). Decode only the generated "
                "action positions, or check that generation was constrained to action tokens."
            )
        discretized = (self.base_vocab_size - ids - 1).clamp(0, self.bin_centers.shape[0] - 1)
        return self.bin_centers[discretized]

    def decode_token_ids_to_actions(self, action_token_ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """OpenVLA's name for `decode` (same values; ids outside the action range raise)."""
        return self.decode(action_token_ids)


def _as_tensor(value: object, what: str, accepted: str) -> torch.Tensor:
    """`value` as a tensor (Python floats stay float64, as numpy reads them), with what cannot be one
    (ragged lists, strings, None, objects) rejected as an `ActionError`."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (str, bytes)) or value is None:
        raise ActionError(f"{what} must be {accepted}, got {type(value).__name__}: {value!r:.60}.")
    try:
        array = np.asarray(value)
        if array.dtype.kind not in "biufc":
            raise TypeError(f"elements of type {array.dtype}")
        return torch.as_tensor(array)  # (np.ascontiguousarray would turn a scalar into shape [1])
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise ActionError(
            f"{what} must be {accepted}, got {type(value).__name__} that cannot be read as numbers ({exc}). "
            "Ragged lists (vectors of different lengths) and non-numbers are not accepted."
        ) from None
