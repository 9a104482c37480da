"""The plain folder format for quick starts: one JSON object a line,

    {"image": "frames/0001.png", "instruction": "pick up the cup", "action": [0.1, ...], "episode": 0}

image paths relative to the JSONL file's folder (paths outside it are refused), `episode` optional: either
every line has one (frames of an episode in file order) or none has, and then each line is its own episode.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from llm_backbones._fs import is_inside
from llm_backbones.data.robot.dataset import Episode, RobotDataset
from llm_backbones.data.robot.media import ImageFiles
from llm_backbones.errors import RobotDataError


def _fail(message: str, path: Path, line: int, episode: int | None = None) -> RobotDataError:
    place = f"{path}, line {line}" + (f" (episode {episode})" if episode is not None else "")
    return RobotDataError(f"{place}: {message}", episode=episode, file=str(path))


def read_jsonl_dataset(
    path: Path, *, name: str | None, image_key: str, action_key: str, task_key: str
) -> RobotDataset:
    """Read and check a JSONL dataset: every line parsed, every action checked, every image file found."""
    folder = path.parent
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RobotDataError(f"{path}: cannot be read ({exc}).", file=str(path)) from None
    frames: dict[int, list[tuple[Path, str, list[float]]]] = {}
    has_episode: bool | None = None
    dim: int | None = None
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _fail(f"not JSON ({exc.msg}).", path, line_no) from None
        if not isinstance(row, Mapping):
            raise _fail(f"a line must be a JSON object, got {type(row).__name__}.", path, line_no)
        with_episode = "episode" in row
        if has_episode is None:
            has_episode = with_episode
        elif has_episode != with_episode:
            raise _fail(
                "some lines name an `episode` and some do not; give every line one, or none (then each line "
                "is its own episode).",
                path,
                line_no,
            )
        episode = row.get("episode", len(frames))
        if isinstance(episode, bool) or not isinstance(episode, int) or episode < 0:
            raise _fail(f"`episode` must be a non-negative integer, got {episode!r}.", path, line_no)
        missing = [key for key in (image_key, task_key, action_key) if key not in row]
        if missing:
            raise _fail(
                f"missing key(s) {missing}; a line needs {image_key!r}, {task_key!r} and {action_key!r} "
                f"(found {sorted(row)}).",
                path,
                line_no,
                episode,
            )
        instruction = row[task_key]
        if not isinstance(instruction, str) or not instruction.strip():
            raise _fail(
                f"{task_key!r} must be a non-empty string, got {instruction!r:.80}.", path, line_no, episode
            )
        action = row[action_key]
        if (
            not isinstance(action, list)
            or not action
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in action)
        ):
            raise _fail(
                f"{action_key!r} must be a non-empty list of numbers, got {action!r:.80}.",
                path,
                line_no,
                episode,
            )
        if not all(math.isfinite(v) for v in action):
            raise _fail(f"{action_key!r} holds NaN or infinite values: {action}.", path, line_no, episode)
        if dim is None:
            dim = len(action)
        elif len(action) != dim:
            raise _fail(
                f"{action_key!r} has {len(action)} dimensions, the lines before have {dim}; every action "
                "must "
                "have the same size.",
                path,
                line_no,
                episode,
            )
        image = row[image_key]
        if not isinstance(image, str) or not image:
            raise _fail(f"{image_key!r} must be a relative path, got {image!r:.80}.", path, line_no, episode)
        if not is_inside(folder, image, follow_symlinks=False) or not is_inside(folder, image):
            raise _fail(
                f"the image {image!r} lies outside the dataset's folder {folder}; paths are relative to it "
                "and "
                "may not leave it.",
                path,
                line_no,
                episode,
            )
        image_path = folder / image
        if not image_path.is_file():
            raise _fail(f"the image file {image_path} does not exist.", path, line_no, episode)
        frames.setdefault(episode, []).append((image_path, instruction, [float(v) for v in action]))
    if not frames:
        raise RobotDataError(f"{path}: no frames (the file has no JSON lines).", file=str(path))
    episodes = [
        Episode(
            episode=episode,
            source=str(path),
            actions=np.asarray([a for _, _, a in rows], dtype=np.float32),
            instructions=tuple(t for _, t, _ in rows),
            images=ImageFiles(tuple(p for p, _, _ in rows)),
        )
        for episode, rows in frames.items()
    ]
    for record in episodes:
        if not np.isfinite(record.actions).all():  # finite as float64, overflowing float32
            raise RobotDataError(
                f"{path} (episode {record.episode}): actions overflow float32 (|a| > 3.4e38).",
                episode=record.episode,
                file=str(path),
            )
    return RobotDataset(name or path.stem, episodes, format="jsonl", root=str(folder))
