"""OpenVLA's action statistics, in one place: which dataset's statistics (`check_unnorm_key`), their check
(`action_arrays`, `validate_norm_stats`), and un-normalizing decoded actions to robot units
(`unnormalize_actions`, OpenVLA's `predict_action` rule). The data readers normalize with the same
statistics (`data.robot.stats.normalize_actions`); checkpoints carry them (`persistence.openvla`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from llm_backbones.errors import ActionError, NormStatsError, closest


def check_unnorm_key(norm_stats: Mapping[str, Any], unnorm_key: str | None) -> str:
    """The dataset key of `norm_stats` to un-normalize with: `unnorm_key`, or the only one when it is None.

    As OpenVLA's `_check_unnorm_key`, with `NormStatsError` (naming the known keys) instead of an assert.
    """
    if not isinstance(norm_stats, Mapping) or not norm_stats:
        raise NormStatsError(
            f"No action statistics to un-normalize with (norm_stats={norm_stats!r:.80}): the checkpoint "
            "has none (a VLM checkpoint, or a run directory without dataset_statistics.json). Pass the "
            "norm_stats of the dataset the policy was trained on "
            "({dataset: {'action': {'q01': [...], 'q99': [...]}}})."
        )
    known = ", ".join(repr(k) for k in norm_stats)
    if unnorm_key is not None and not isinstance(unnorm_key, str):
        raise NormStatsError(
            f"unnorm_key must be a string (a dataset name) or None, got {type(unnorm_key).__name__} "
            f"{unnorm_key!r:.80}. Pass one of: {known}."
        )
    if unnorm_key is None:
        if len(norm_stats) != 1:
            raise NormStatsError(
                f"unnorm_key=None, but the model was trained on {len(norm_stats)} datasets, so the "
                f"statistics to un-normalize with are ambiguous. Pass unnorm_key= one of: {known}."
            )
        return next(iter(norm_stats))
    if unnorm_key not in norm_stats:
        close = closest(unnorm_key, [str(k) for k in norm_stats])
        hint = f" Closest: {', '.join(close)}." if close else ""
        raise NormStatsError(
            f"unnorm_key={unnorm_key!r} is not a dataset of these statistics.{hint} Known keys: {known}. "
            "Pass one of them (the dataset whose robot and action space you control)."
        )
    return unnorm_key


_STATS_FIX = "Restore the statistics from the run's dataset_statistics.json (OpenVLA writes them there)."


def _positions(bad: np.ndarray, limit: int = 8) -> str:
    """The indices where `bad` is true, as tuples (`[..., D]` arrays) or ints (1-D), at most `limit`."""
    found = np.argwhere(bad)
    shown = [int(i[0]) if bad.ndim == 1 else tuple(int(j) for j in i) for i in found[:limit]]
    return f"{shown}{f' ... ({len(found)} in all)' if len(found) > limit else ''}"


def _stat_vector(value: object, where: str) -> np.ndarray:
    """`q01` / `q99` of one dataset as a float64 vector: real numbers (not bools or strings), finite."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged lists
        raise NormStatsError(
            f"{where} cannot be read as a list of numbers ({exc}): {value!r:.80}. {_STATS_FIX}"
        ) from None
    if array.ndim != 1 or array.size == 0 or array.dtype.kind not in "iuf":
        raise NormStatsError(
            f"{where} must be one non-empty list of numbers (one per action dimension), got "
            f"{value!r:.80} ({array.dtype.name}, shape {array.shape}). {_STATS_FIX}"
        )
    vector = array.astype(np.float64)
    bad = ~np.isfinite(vector)
    if bad.any():
        raise NormStatsError(
            f"{where} holds values that are not finite at dimensions {_positions(bad)} "
            f"({value!r:.80}): actions un-normalized with them would be NaN or infinite. {_STATS_FIX}"
        )
    return vector


def action_arrays(
    key: object, entry: object, *, source: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low = q01, high = q99, mask) of one dataset's entry `{"action": {"q01", "q99", "mask"?, ...}}`, or
    `NormStatsError` naming the dataset, the field, the bad value and the fix. The one check of action
    statistics: `validate_norm_stats` runs it on every dataset, `unnormalize_actions` on the one it uses."""
    suffix = f" (in {source})" if source else ""

    def at(name: str) -> str:
        return f"norm_stats[{key!r}]['action'][{name!r}]{suffix}"

    stats = entry.get("action") if isinstance(entry, Mapping) else None
    if not isinstance(stats, Mapping) or "q01" not in stats or "q99" not in stats:
        found = stats if isinstance(stats, Mapping) else entry
        found = sorted(found) if isinstance(found, Mapping) else found
        raise NormStatsError(
            f"norm_stats[{key!r}]{suffix} has no action statistics with q01 and q99 (found {found!r:.120}). "
            f"Expected {{{key!r}: {{'action': {{'q01': [...], 'q99': [...], 'mask': [...]}}}}}}, as the "
            "dataset_statistics.json of an OpenVLA run holds them."
        )
    low = _stat_vector(stats["q01"], at("q01"))
    high = _stat_vector(stats["q99"], at("q99"))
    if low.shape != high.shape:
        raise NormStatsError(
            f"norm_stats[{key!r}]{suffix}: q01 has {low.size} values and q99 {high.size}; both need one "
            f"value per action dimension. {_STATS_FIX}"
        )
    above = low > high
    if above.any():
        raise NormStatsError(
            f"norm_stats[{key!r}]{suffix}: q01 is above q99 at dimensions {_positions(above)} (q01 "
            f"{low[above].tolist()[:8]}, q99 {high[above].tolist()[:8]}): the low and high quantiles are "
            f"swapped or edited, and would mirror those actions. Accepted: q01 <= q99. {_STATS_FIX}"
        )
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, not warned
        span = high - low
    wide = ~np.isfinite(span)
    if wide.any():
        raise NormStatsError(
            f"norm_stats[{key!r}]{suffix}: q99 - q01 overflows at dimensions {_positions(wide)} (q01 "
            f"{low[wide].tolist()[:4]}, q99 {high[wide].tolist()[:4]}): "
            f"un-normalized actions would be inf/NaN. Accepted: a finite range per dimension. {_STATS_FIX}"
        )
    if "mask" not in stats:
        return low, high, np.ones_like(low, dtype=bool)  # OpenVLA's default: every dimension normalized
    mask = stats["mask"]
    try:
        mask_array = np.asarray(mask)
    except (TypeError, ValueError):  # ragged lists
        mask_array = np.asarray(None)
    zero_one = mask_array.dtype.kind in "iu" and bool(np.isin(mask_array, (0, 1)).all())
    if (mask_array.dtype.kind != "b" and not zero_one) or mask_array.shape != low.shape:
        strings = mask_array.dtype.kind in "US" or any(isinstance(m, str) for m in np.ravel(mask_array))
        what = (
            "strings (a non-empty string such as 'false' would count as true)"
            if strings
            else f"{mask_array.dtype.name} values of shape {mask_array.shape}"
        )
        raise NormStatsError(
            f"{at('mask')} must be {low.size} booleans (true: un-normalize that dimension; false: keep it, "
            f"as the gripper), got {what}: {mask!r:.80}. Write JSON true/false (Python True/False, a numpy "
            f"bool array, or the integers 0/1), as OpenVLA's dataset_statistics.json does. {_STATS_FIX}"
        )
    return low, high, mask_array.astype(bool)


def validate_norm_stats(norm_stats: Mapping[str, Any], *, source: str | None = None) -> dict[str, Any]:
    """Check the action statistics of every dataset of `norm_stats` and return them (as a dict, values as
    given).

    Each dataset's `action` needs `q01` and `q99`: non-empty lists of finite numbers of one length, with
    `q01 <= q99`; and `mask`, if present, is as many booleans (JSON true/false; the integers 0 and 1 are read
    as false and true; strings, such as "false", are refused). Anything else raises
    `NormStatsError` naming the dataset key, the field and `source` (the file they were read from).
    `load_vla_backbone` calls it once for the statistics a checkpoint carries; `unnormalize_actions`
    re-checks only the one dataset it uses (a few numbers: microseconds).
    """
    if not isinstance(norm_stats, Mapping):
        raise NormStatsError(
            f"The action statistics{f' of {source}' if source else ''} are a {type(norm_stats).__name__}, "
            "not {dataset: {'action': {'q01': [...], 'q99': [...], 'mask': [...]}}}. Restore norm_stats / "
            "dataset_statistics.json from the original run."
        )
    for key, entry in norm_stats.items():
        action_arrays(key, entry, source=source)
    return dict(norm_stats)


def get_action_stats(norm_stats: Mapping[str, Any], unnorm_key: str | None = None) -> Mapping[str, Any]:
    """The action statistics (`q01`, `q99`, optional `mask`, ...) of one dataset, as OpenVLA's
    `get_action_stats`; checked as `validate_norm_stats` checks them."""
    key = check_unnorm_key(norm_stats, unnorm_key)
    action_arrays(key, norm_stats[key])
    return norm_stats[key]["action"]


def unnormalize_actions(
    actions: torch.Tensor | np.ndarray | Sequence[float] | Sequence[Sequence[float]],
    norm_stats: Mapping[str, Any],
    unnorm_key: str | None = None,
) -> np.ndarray:
    """Map normalized actions in [-1, 1] (`[..., D]`, e.g. `ActionTokenizer.decode_token_ids_to_actions`)
    back to the robot's units, exactly as OpenVLA's `predict_action`: with the dataset's `q01`/`q99` as
    low/high and `mask` (default: all true), `where(mask, 0.5 * (a + 1) * (high - low) + low, a)`. Dimensions
    whose mask is false (the gripper) stay as they are. Returns a float64 numpy array, as OpenVLA.

    Values outside [-1, 1] are clipped to it first, as OpenVLA's bins clip (its `predict_action` only ever
    produces bin centres inside [-1, 1]), so no action lands beyond the dataset's 1st/99th percentiles.
    NaN or infinite actions raise `ActionError` naming their positions (they would reach the robot as
    commands). The dataset's statistics are checked as `validate_norm_stats` checks them (`NormStatsError`).

    `unnorm_key` names the dataset; None is accepted only when the statistics hold exactly one.
    """
    key = check_unnorm_key(norm_stats, unnorm_key)
    low, high, mask = action_arrays(key, norm_stats[key])
    if isinstance(actions, torch.Tensor):
        actions = actions.detach().cpu()
        actions = (actions.double() if actions.dtype == torch.bfloat16 else actions).numpy()
    try:
        raw = np.asarray(actions)
    except (TypeError, ValueError) as exc:  # ragged lists
        raise ActionError(
            f"Actions must be numbers of shape [..., D], got {type(actions).__name__} ({exc}). Pass the "
            "decoded actions (ActionTokenizer.decode_token_ids_to_actions)."
        ) from None
    if raw.dtype.kind not in "iuf":
        raise ActionError(
            f"Actions must be real numbers of shape [..., D], got {raw.dtype.name} values "
            f"({actions!r:.80}). Pass the decoded actions (ActionTokenizer.decode_token_ids_to_actions), "
            "a float array or a (nested) list of floats."
        )
    normalized = raw.astype(np.float64)
    if normalized.ndim == 0 or normalized.shape[-1] != low.shape[0]:
        raise ActionError(
            f"Actions of shape {normalized.shape} do not fit the statistics of {key!r}, which have "
            f"{low.shape[0]} dimensions. Decode as many action tokens as the dataset's action has "
            f"dimensions ({low.shape[0]}), or pick the unnorm_key of this robot."
        )
    bad = ~np.isfinite(normalized)
    if bad.any():
        raise ActionError(
            f"Actions of shape {normalized.shape} hold values that are not finite at positions "
            f"{_positions(bad)} ({normalized[bad].tolist()[:8]}); un-normalized they would reach the robot "
            "as commands. Accepted: finite numbers (clipped to [-1, 1]). Check what produced them (decoded "
            "action tokens are always finite) and drop this step."
        )
    clipped = np.clip(normalized, -1.0, 1.0)  # as OpenVLA's bins: nothing beyond q01 / q99
    out = np.where(mask, 0.5 * (clipped + 1) * (high - low) + low, clipped)
    bad = ~np.isfinite(out)
    if bad.any():  # statistics at the edge of float64 (each is finite, the range is too)
        raise ActionError(
            f"Un-normalizing with the statistics of {key!r} gives values that are not finite at positions "
            f"{_positions(bad)}; they would reach the robot as commands. Use statistics of a realistic scale "
            "(q01/q99 of the dataset's actions)."
        )
    return out


__all__ = [
    "action_arrays",
    "check_unnorm_key",
    "get_action_stats",
    "unnormalize_actions",
    "validate_norm_stats",
]
