"""The robot dataset every reader produces: frames (image, instruction, action) grouped in episodes, random
access with images decoded on demand, a split by episode and OpenVLA's action statistics.

Actions, instructions and the existence of every referenced file are read and checked when a reader builds
the dataset; images are decoded when a frame is asked for (`check_images()` decodes them all up front).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llm_backbones.data.robot.media import FrameImages, where
from llm_backbones.data.robot.stats import action_statistics
from llm_backbones.errors import RobotDataError


@dataclass(frozen=True)
class RobotFrame:
    """One step of an episode.

    Attributes:
        image: the camera image, uint8 `[H, W, 3]` (RGB).
        instruction: the language instruction (LeRobot: the episode's task).
        action: the action taken at this step, float32 `[D]`, in the robot's units (not normalized).
        episode: the episode's index in the dataset.
        index: the frame's index in its episode (0-based).
        source: the file the frame's action was read from (parquet file, JSONL file).
    """

    image: np.ndarray
    instruction: str
    action: np.ndarray
    episode: int
    index: int
    source: str


@dataclass(frozen=True)
class Episode:
    """What a reader found for one episode: its actions `[T, D]` (float32, finite), one instruction per frame,
    where its images are, and the file its actions came from."""

    episode: int
    source: str
    actions: np.ndarray
    instructions: tuple[str, ...]
    images: FrameImages

    def __len__(self) -> int:
        return int(self.actions.shape[0])


class RobotDataset:
    """Frames of robot episodes, with random access (`dataset[i] -> RobotFrame`, images decoded then).

    Built by `open_robot_dataset`; every episode has at least one frame, and all actions are finite and of
    one size, `action_dim`. Frames are ordered by episode, then by their index in it.

    Attributes:
        name: the dataset's name (the folder or file name unless given); the default `unnorm_key`.
        format: "lerobot-v2.1", "lerobot-v3.0", "jsonl", ...
        root: the folder the dataset was read from.
    """

    def __init__(self, name: str, episodes: Sequence[Episode], *, format: str, root: str) -> None:
        self.name, self.format, self.root = name, format, root
        self._episodes = tuple(episodes)
        dims = {int(e.actions.shape[1]) for e in self._episodes}
        if len(dims) > 1:
            raise RobotDataError(f"{name}: episodes of different action sizes {sorted(dims)}.", file=root)
        self._action_dim = dims.pop() if dims else 0
        self._starts = np.cumsum([0, *(len(e) for e in self._episodes)])

    # === Size and access ===
    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def action_dim(self) -> int:
        """The size of every action vector."""
        return self._action_dim

    @property
    def episodes(self) -> tuple[int, ...]:
        """The episode indices, in the dataset's order."""
        return tuple(e.episode for e in self._episodes)

    def episode_length(self, episode: int) -> int:
        """The number of frames of `episode` (an index of `episodes`)."""
        return len(self._episode(episode))

    def _episode(self, episode: int) -> Episode:
        for record in self._episodes:
            if record.episode == episode:
                return record
        raise RobotDataError(f"{self.name} has no episode {episode!r}; it has {list(self.episodes)[:20]}.")

    def locate(self, i: int) -> tuple[Episode, int]:
        """The episode of frame `i` and the frame's index in it (negative `i` counts from the end)."""
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise TypeError(f"Frame indices are integers, got {type(i).__name__}.")
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"Frame {i} is out of range for {self.name} ({n} frames).")
        i = int(i) % n
        k = int(np.searchsorted(self._starts, i, side="right") - 1)
        return self._episodes[k], i - int(self._starts[k])

    def __getitem__(self, i: int) -> RobotFrame:
        record, t = self.locate(i)
        image = record.images.load(t, record.episode)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise RobotDataError(
                f"{where(record.episode, record.source, t)}: the image has shape {image.shape} "
                f"({image.dtype}), "
                "not uint8 [H, W, 3].",
                episode=record.episode,
                file=record.source,
            )
        return RobotFrame(
            image=image,
            instruction=record.instructions[t],
            action=record.actions[t].copy(),
            episode=record.episode,
            index=t,
            source=record.source,
        )

    def actions(self) -> np.ndarray:
        """Every frame's action, `[len(self), action_dim]` float32, in the dataset's order (no image
        decoded)."""
        if not self._episodes:
            return np.zeros((0, self.action_dim), dtype=np.float32)
        return np.concatenate([e.actions for e in self._episodes]).astype(np.float32, copy=False)

    def instructions(self) -> list[str]:
        """Every frame's instruction, in the dataset's order (no image decoded)."""
        return [text for e in self._episodes for text in e.instructions]

    def check_images(self) -> None:
        """Decode every frame's image now (slow: a pre-flight for a dataset not trusted yet); the first image
        that cannot be decoded raises `RobotDataError` naming its episode and file."""
        for i in range(len(self)):
            self[i]

    # === Split and statistics ===
    def split(self, eval_fraction: float, seed: int = 0) -> tuple[RobotDataset, RobotDataset]:
        """Split by episode (no episode has frames on both sides): `round(eval_fraction * episodes)` episodes,
        at least one when `eval_fraction > 0`, drawn with `numpy.random.default_rng(seed)`, form the eval set.
        Both keep the dataset's name and order. `eval_fraction` is in [0, 1); at least one episode is left
        for training."""
        if (
            isinstance(eval_fraction, bool)
            or not isinstance(eval_fraction, int | float)
            or not math.isfinite(eval_fraction)
            or not 0 <= eval_fraction < 1
        ):
            raise RobotDataError(
                f"eval_fraction must be a number in [0, 1), got {eval_fraction!r} (e.g. 0.05)."
            )
        count = len(self._episodes)
        n_eval = 0 if eval_fraction == 0 else max(1, round(eval_fraction * count))
        if count - n_eval < 1:
            raise RobotDataError(
                f"{self.name} has {count} episode(s): eval_fraction={eval_fraction} leaves none for "
                "training. "
                "Use a smaller eval_fraction (0 for no eval split) or more episodes.",
                file=self.root,
            )
        chosen = set(np.random.default_rng(seed).permutation(count)[:n_eval].tolist())
        train = [e for k, e in enumerate(self._episodes) if k not in chosen]
        held = [e for k, e in enumerate(self._episodes) if k in chosen]
        return (
            RobotDataset(self.name, train, format=self.format, root=self.root),
            RobotDataset(self.name, held, format=self.format, root=self.root),
        )

    def statistics(
        self, unnorm_key: str | None = None, *, action_mask: Sequence[bool] | None = None
    ) -> dict[str, dict[str, Any]]:
        """OpenVLA's action statistics of this dataset, `{unnorm_key: {"action": {...}, "proprio": {...},
        "num_transitions": N, "num_trajectories": E}}` (`unnorm_key` defaults to `name`), the shape of its
        `dataset_statistics.json`; see `llm_backbones.data.robot.stats.action_statistics` and `action_mask`
        there (default: every dimension normalized). OpenVLA computes them over the whole dataset (its
        `split="all"`): call this before `split` for the same numbers."""
        key = self.name if unnorm_key is None else unnorm_key
        if not isinstance(key, str) or not key:
            raise RobotDataError(f"unnorm_key must be a non-empty string, got {key!r}.")
        if not self._episodes:
            raise RobotDataError(f"{self.name} has no frames: no statistics.", file=self.root)
        return {key: action_statistics(self.actions(), len(self._episodes), action_mask=action_mask)}

    def __repr__(self) -> str:
        return (
            f"RobotDataset(name={self.name!r}, format={self.format!r}, episodes={len(self._episodes)}, "
            f"frames={len(self)}, action_dim={self.action_dim})"
        )
