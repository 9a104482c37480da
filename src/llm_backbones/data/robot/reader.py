"""`open_robot_dataset`: one entry point for robot episodes, the format detected from the path."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from llm_backbones.data.robot.dataset import RobotDataset
from llm_backbones.data.robot.jsonl import read_jsonl_dataset
from llm_backbones.data.robot.lerobot import VIDEO_TOLERANCE_S, is_lerobot_dataset, read_lerobot_dataset
from llm_backbones.errors import MissingDependencyError, RobotDataError

FORMATS = ("auto", "lerobot", "jsonl", "rlds")


def _is_rlds(path: Path) -> bool:
    """A TFDS builder directory (RLDS datasets are published as such): dataset_info.json beside tfrecord
    shards."""
    return (path / "dataset_info.json").is_file() and any(path.glob("*.tfrecord*"))


def _rlds(path: Path) -> RobotDataset:
    if importlib.util.find_spec("tensorflow_datasets") is None:
        raise MissingDependencyError(
            f"{path} is an RLDS (TFDS) dataset; reading it needs tensorflow-datasets: pip install "
            "tensorflow-datasets",
            name="tensorflow_datasets",
        )
    raise RobotDataError(
        f"{path} is an RLDS (TFDS) dataset; this reader does not read RLDS yet. Convert it to a LeRobot "
        "dataset "
        "(LeRobot's examples/port_datasets) or to the JSONL folder format.",
        file=str(path),
    )


def open_robot_dataset(
    path: str | os.PathLike[str],
    *,
    image_key: str | None = None,
    action_key: str = "action",
    task_key: str | None = None,
    name: str | None = None,
    format: str = "auto",
    state_key: str | None = None,
    history: int = 1,
    video_tolerance_s: float = VIDEO_TOLERANCE_S,
) -> RobotDataset:
    """Open robot episodes for VLA fine-tuning, checking them before any model is built.

    Formats (`format="auto"` detects them from `path`):
      - **LeRobot** (a folder with `meta/info.json`; codebase v2.0, v2.1, v3.0; needs pyarrow, and av for
        videos: `pip install 'llm-backbones[robot]'`). `image_key`: the camera feature
        (`observation.images.*`); required when there are several, which the error lists. `action_key`: the
        action feature ("action"). `task_key`: the column giving the instruction (default "task_index",
        looked up in the tasks table; a string column is taken as the instruction itself).
      - **JSONL** (a `.jsonl` file, or a folder holding exactly one): lines `{"image": "rel/path.png",
        "instruction": "...", "action": [...], "episode": 0}`; `image_key`, `task_key` and `action_key`
        rename those keys ("image", "instruction", "action").
      - **RLDS** (a TFDS builder folder): not read; raises `MissingDependencyError` (install
        tensorflow-datasets) or, where it is installed, `RobotDataError` saying how to convert it.

    Checked now, raising `RobotDataError` naming the episode and the file: the metadata, every action
    (present, of info.json's size, not ragged, finite), every task, that no episode is empty, that every data
    file reads as parquet and every referenced video or image file exists. Images are decoded when a frame
    is read (`dataset.check_images()` decodes them all now).

    Multi-frame (`history > 1`) and proprioceptive (`state_key`) inputs are out of scope: asking for them
    raises `RobotDataError` instead of dropping them silently.

    Args:
        name: the dataset's name and default `unnorm_key` (default: the folder's or file's name).
        video_tolerance_s: how far (seconds) a video frame may be from the row's timestamp (LeRobot's 1e-4).
    """
    if state_key is not None:
        raise RobotDataError(
            f"state_key={state_key!r}: proprioceptive (state) inputs are out of scope; OpenVLA's policy sees "
            "the image and the instruction only. Leave state_key unset."
        )
    if history != 1:
        raise RobotDataError(
            f"history={history!r}: multi-frame inputs are out of scope; the policy sees one frame per step. "
            "Use "
            "history=1."
        )
    if format not in FORMATS:
        raise RobotDataError(f"format must be one of {FORMATS}, got {format!r}.")
    for label, key in (("image_key", image_key), ("action_key", action_key), ("task_key", task_key)):
        if key is not None and (not isinstance(key, str) or not key):
            raise RobotDataError(f"{label} must be a non-empty string, got {key!r}.")
    if (
        isinstance(video_tolerance_s, bool)
        or not isinstance(video_tolerance_s, int | float)
        or not video_tolerance_s >= 0
    ):
        raise RobotDataError(f"video_tolerance_s must be a number >= 0, got {video_tolerance_s!r}.")
    root = Path(path).expanduser()
    if not root.exists():
        raise RobotDataError(
            f"{root} does not exist; pass a LeRobot dataset folder or a .jsonl file.", file=str(root)
        )

    if format == "rlds" or (format == "auto" and root.is_dir() and _is_rlds(root)):
        return _rlds(root)
    if format == "lerobot" or (format == "auto" and root.is_dir() and is_lerobot_dataset(root)):
        return read_lerobot_dataset(
            root,
            name=name,
            image_key=image_key,
            action_key=action_key,
            task_key=task_key,
            video_tolerance_s=float(video_tolerance_s),
        )
    jsonl = root
    if root.is_dir():
        candidates = sorted(root.glob("*.jsonl"))
        if len(candidates) != 1:
            raise RobotDataError(
                f"{root} is not a LeRobot dataset (no meta/info.json) and holds "
                f"{len(candidates)} .jsonl files ({[c.name for c in candidates][:5]}); pass the folder of a "
                "LeRobot dataset, a .jsonl file, or a folder with exactly one.",
                file=str(root),
            )
        jsonl = candidates[0]
    elif format == "auto" and root.suffix != ".jsonl":
        raise RobotDataError(
            f"{root} is a file but not .jsonl; pass a LeRobot dataset folder or a .jsonl file (or "
            "format='jsonl').",
            file=str(root),
        )
    return read_jsonl_dataset(
        jsonl,
        name=name,
        image_key=image_key or "image",
        action_key=action_key,
        task_key=task_key or "instruction",
    )
