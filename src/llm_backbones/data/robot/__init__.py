"""Robot episodes for VLA fine-tuning: LeRobot datasets (v2.x, v3.0) and a JSONL folder format read into one
`RobotDataset` of `RobotFrame`s, with OpenVLA's action statistics and normalization.

    dataset = open_robot_dataset("path/to/lerobot_dataset", image_key="observation.images.top")
    stats = dataset.statistics()                      # {dataset.name: {"action": {...}, ...}}
    train, held_out = dataset.split(0.05, seed=0)     # by episode
    frame = train[0]                                  # RobotFrame(image, instruction, action, ...)
    target = normalize_actions(frame.action, stats[dataset.name])   # in [-1, 1], for the action tokenizer
"""

from llm_backbones.data.robot.dataset import Episode, RobotDataset, RobotFrame
from llm_backbones.data.robot.reader import open_robot_dataset
from llm_backbones.data.robot.stats import action_statistics, gripper_last_mask, normalize_actions

__all__ = [
    "Episode",
    "RobotDataset",
    "RobotFrame",
    "action_statistics",
    "gripper_last_mask",
    "normalize_actions",
    "open_robot_dataset",
]
