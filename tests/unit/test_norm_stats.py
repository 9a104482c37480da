"""OpenVLA's action statistics at the edge: a range that overflows float64 is refused at load, and an
un-normalized action is finite or raises (it becomes a robot command)."""

from __future__ import annotations

import pytest

from llm_backbones.data.norm_stats import unnormalize_actions, validate_norm_stats
from llm_backbones.errors import NormStatsError

HUGE = {"robot": {"action": {"q01": [-1e308, 0.0], "q99": [1e308, 1.0]}}}


def test_a_range_that_overflows_is_refused():
    with pytest.raises(NormStatsError) as info:
        validate_norm_stats(HUGE, source="ckpt/dataset_statistics.json")
    message = str(info.value)
    assert "overflows at dimensions [0]" in message and "ckpt/dataset_statistics.json" in message
    with pytest.raises(NormStatsError):
        unnormalize_actions([0.0, 0.0], HUGE, "robot")


def test_edge_of_the_range_is_the_quantile():
    stats = {"robot": {"action": {"q01": [-2.0, 0.0], "q99": [2.0, 1.0], "mask": [True, False]}}}
    assert unnormalize_actions([1.0, 0.5], stats, "robot").tolist() == [2.0, 0.5]
    assert unnormalize_actions([-3.0, 0.5], stats, "robot").tolist() == [-2.0, 0.5]  # clipped to [-1, 1]
