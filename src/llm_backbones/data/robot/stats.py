"""Action statistics and normalization exactly as OpenVLA computes them.

`action_statistics` is OpenVLA's `get_dataset_statistics` (prismatic/vla/datasets/rlds/utils/data_utils.py)
on actions that are float32 as its RLDS pipeline casts them: mean, std (population), max, min and the 1st /
99th percentiles (`np.quantile`, linear interpolation) per dimension over every frame, `num_transitions` and
`num_trajectories`; plus the normalization `mask` of `make_dataset_from_rlds(action_normalization_mask=...)`.
The result has the shape of OpenVLA's `dataset_statistics.json` (and of the `norm_stats` of its HF config).

`normalize_actions` is its BOUNDS_Q99 `normalize_action_and_proprio`, the inverse of
`llm_backbones.data.norm_stats.unnormalize_actions`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from llm_backbones.data.norm_stats import action_arrays
from llm_backbones.errors import ActionError, NormStatsError

# [Contract] OpenVLA's `normalize_action_and_proprio` adds this to the range: a zero range divides safely
RANGE_EPSILON = 1e-8


def gripper_last_mask(action_dim: int) -> list[bool]:
    """OpenVLA's normalization mask for end-effector actions with an absolute gripper last (`EEF_POS`: 6 + 1,
    `EEF_R6`: 9 + 1, every dataset of its Open-X mix): all dimensions normalized but the last."""
    if isinstance(action_dim, bool) or not isinstance(action_dim, int) or action_dim < 1:
        raise ActionError(f"action_dim must be a positive integer, got {action_dim!r}.")
    return [True] * (action_dim - 1) + [False]


def check_action_mask(action_mask: Sequence[bool] | None, action_dim: int) -> list[bool]:
    """`action_mask` as a list of `action_dim` booleans; None means every dimension is normalized (OpenVLA's
    default when no `action_normalization_mask` is given). Integers, strings and a wrong length raise."""
    if action_mask is None:
        return [True] * action_dim
    values = list(action_mask) if isinstance(action_mask, Sequence | np.ndarray) else None
    if values is None or not all(isinstance(v, bool | np.bool_) for v in values):
        raise ActionError(
            f"action_mask must be a sequence of booleans (True: normalize this dimension), got "
            f"{action_mask!r:.120}. E.g. gripper_last_mask({action_dim}) = {gripper_last_mask(action_dim)}."
        )
    if len(values) != action_dim:
        raise ActionError(
            f"action_mask has {len(values)} entries but the actions have {action_dim} dimensions; give one "
            "boolean per dimension."
        )
    return [bool(v) for v in values]


def action_statistics(
    actions: np.ndarray | Sequence[Sequence[float]],
    num_trajectories: int,
    *,
    action_mask: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """The statistics entry of one dataset, as OpenVLA's `get_dataset_statistics` computes it.

    Args:
        actions: every frame's action, `[N, D]` (all episodes concatenated); computed in float32, as OpenVLA.
        num_trajectories: the number of episodes they came from.
        action_mask: which dimensions `normalize_actions` maps to [-1, 1] (default: all, OpenVLA's default;
            `gripper_last_mask(D)` for OpenVLA's end-effector convention).

    Returns `{"action": {"mean", "std", "max", "min", "q01", "q99", "mask"}, "proprio": {...},
    "num_transitions": N, "num_trajectories": ...}` with lists of Python floats. "proprio" is what OpenVLA
    writes for a dataset without proprioception (the statistics of zeros of the action's shape); state inputs
    are out of scope here.
    """
    try:
        array = np.asarray(actions, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ActionError(
            f"Actions must be numbers of shape [N, D], got {type(actions).__name__} ({exc})."
        ) from None
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ActionError(f"Actions must have shape [N, D] with N, D >= 1, got {array.shape}.")
    bad = ~np.isfinite(array)
    if bad.any():
        rows = sorted({int(r) for r in np.nonzero(bad)[0][:8]})
        raise ActionError(f"Actions hold NaN or infinite values (rows {rows}); statistics would be NaN.")
    mask = check_action_mask(action_mask, array.shape[1])

    def summary(values: np.ndarray) -> dict[str, list[float]]:
        return {
            "mean": values.mean(0).tolist(),
            "std": values.std(0).tolist(),
            "max": values.max(0).tolist(),
            "min": values.min(0).tolist(),
            "q01": np.quantile(values, 0.01, axis=0).tolist(),
            "q99": np.quantile(values, 0.99, axis=0).tolist(),
        }

    return {
        "action": {**summary(array), "mask": mask},
        "proprio": summary(np.zeros_like(array)),
        "num_transitions": int(array.shape[0]),
        "num_trajectories": int(num_trajectories),
    }


def _stats_vector(action: Mapping[str, Any], field: str, dim: int | None) -> np.ndarray:
    values = action.get(field)
    try:
        vector = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        vector = np.asarray([])
    if vector.ndim != 1 or vector.size == 0 or not np.isfinite(vector).all() or (dim and vector.size != dim):
        raise NormStatsError(
            f"The action statistics' {field!r} must be a list of finite numbers"
            f"{f' of length {dim}' if dim else ''}, got {values!r:.120}. Use the entry "
            "RobotDataset.statistics() returns ({unnorm_key: entry}), or dataset_statistics.json's."
        )
    return vector


def normalize_actions(
    actions: np.ndarray | Sequence[float] | Sequence[Sequence[float]], stats_entry: Mapping[str, Any]
) -> np.ndarray:
    """Map actions (`[..., D]`, the robot's units) to [-1, 1] as OpenVLA's BOUNDS_Q99 normalization does.

    With the entry's `q01`/`q99` as low/high:
    `where(mask, clip(2 * (a - low) / (high - low + 1e-8) - 1, -1, 1), a)`, then every dimension whose
    `min == max` (never moves in the data) becomes 0, masked or not, as in OpenVLA. `mask` defaults to all
    true. `stats_entry` is one dataset's entry (`{"action": {...}, ...}`, e.g.
    `dataset.statistics()[dataset.name]`). Returns float64. `unnormalize_actions` inverts it for values inside
    [q01, q99] (up to the 1e-8 of the denominator) and for dimensions that never move (masked ones).
    NaN or infinite actions raise `ActionError`; statistics without the fields raise `NormStatsError`.
    """
    low, high, mask = action_arrays("stats_entry", stats_entry)  # the one check (q01 <= q99, finite, mask)
    dim = low.size
    minimum, maximum = (
        _stats_vector(stats_entry["action"], "min", dim),
        _stats_vector(stats_entry["action"], "max", dim),
    )
    try:
        raw = np.asarray(actions, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ActionError(
            f"Actions must be numbers of shape [..., D], got {type(actions).__name__} ({exc})."
        ) from None
    if raw.ndim == 0 or raw.shape[-1] != dim:
        raise ActionError(
            f"Actions of shape {raw.shape} do not fit the statistics, which have {dim} dimensions."
        )
    if not np.isfinite(raw).all():
        raise ActionError(
            f"Actions of shape {raw.shape} hold NaN or infinite values; they cannot be normalized."
        )
    scaled = np.clip(2 * (raw - low) / (high - low + RANGE_EPSILON) - 1, -1.0, 1.0)
    normalized = np.where(mask, scaled, raw)
    return np.where(minimum == maximum, 0.0, normalized)
