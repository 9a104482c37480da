"""Frame images of robot datasets, decoded on demand: encoded bytes in a parquet column (LeRobot `image`
features), frames of an mp4 (LeRobot `video` features, PyAV), image files (the JSONL folder format), or
arrays in memory (`ArrayImages`).

Every failure raises `RobotDataError` naming the episode and the file. pyarrow and av are optional (the
`robot` extra) and imported on first use; a missing one raises `MissingDependencyError` with the install line.
"""

from __future__ import annotations

import functools
import importlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Protocol

import numpy as np

from llm_backbones.errors import MissingDependencyError, RobotDataError

INSTALL_HINT = "pip install 'llm-backbones[robot]'"


def require(module: str, purpose: str) -> ModuleType:
    """Import `module` (pyarrow, av, ...) or raise `MissingDependencyError`: one line, how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f"{purpose} needs {module}: {INSTALL_HINT}", name=module) from None


def where(
    episode: int | Sequence[int] | None, file: str | os.PathLike[str] | None, frame: int | None = None
) -> str:
    """`Episode 3, frame 2 (path)`: the place an error message names (`Episodes [0, 1] (path)` for a file
    holding several)."""
    if episode is None:
        parts = []
    elif isinstance(episode, int):
        parts = [f"episode {episode}"]
    else:
        parts = [f"episodes {list(episode)}" if len(episode) > 1 else f"episode {episode[0]}"]
    if frame is not None:
        parts.append(f"frame {frame}")
    place = ", ".join(parts)
    if file is not None:
        place = f"{place} ({file})" if place else str(file)
    return place[:1].upper() + place[1:]


def to_rgb(image: object, *, episode: int, file: str, frame: int) -> np.ndarray:
    """An opened PIL image as uint8 `[H, W, 3]`; other modes (L, RGBA, P, ...) are converted as PIL converts
    them to RGB."""
    try:
        rgb = image.convert("RGB") if image.mode != "RGB" else image  # type: ignore[attr-defined]
        array = np.asarray(rgb, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise RobotDataError(
            f"{where(episode, file, frame)}: the image cannot be decoded ({exc}).", episode=episode, file=file
        ) from None
    return array


def decode_image_bytes(data: bytes, *, episode: int, file: str, frame: int) -> np.ndarray:
    """PNG / JPEG / ... bytes (a LeRobot parquet `image` cell) as uint8 `[H, W, 3]`."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise RobotDataError(
            f"{where(episode, file, frame)}: the image cannot be decoded ({type(exc).__name__}: {exc}). "
            "Re-export "
            "the episode, or drop it from the dataset.",
            episode=episode,
            file=file,
        ) from None
    return to_rgb(image, episode=episode, file=file, frame=frame)


class FrameImages(Protocol):
    """The images of one episode: `load(t)` decodes frame `t` (0-based) as uint8 `[H, W, 3]`."""

    def load(self, t: int, episode: int) -> np.ndarray: ...


@dataclass(frozen=True)
class ArrayImages:
    """Images held in memory, one uint8 `[H, W, 3]` array per frame (a dataset built in code: the demo)."""

    frames: tuple[np.ndarray, ...]

    def load(self, t: int, episode: int) -> np.ndarray:  # noqa: ARG002
        return self.frames[t]


@dataclass(frozen=True)
class ImageFiles:
    """One image file per frame (JSONL folder format)."""

    paths: tuple[Path, ...]

    def load(self, t: int, episode: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        path = self.paths[t]
        try:
            with Image.open(path) as image:
                image.load()
                return to_rgb(image, episode=episode, file=str(path), frame=t)
        except FileNotFoundError:
            raise RobotDataError(
                f"{where(episode, path, t)}: the image file is missing (it existed when the dataset was "
                "opened).",
                episode=episode,
                file=str(path),
            ) from None
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise RobotDataError(
                f"{where(episode, path, t)}: the image cannot be decoded ({type(exc).__name__}: {exc}). "
                "Replace "
                "the file or remove its line.",
                episode=episode,
                file=str(path),
            ) from None


@functools.lru_cache(maxsize=8)
def _image_row_group(path: str, mtime_ns: int, row_group: int, column: str) -> tuple[bytes | None, ...]:
    """The encoded images of one row group of a parquet file (a LeRobot episode: one row group), cached so
    that the frames of an episode read it once."""
    pq = require("pyarrow.parquet", "Reading LeRobot datasets")
    table = pq.ParquetFile(path).read_row_group(row_group, columns=[column])
    cells = table.column(column).to_pylist()
    return tuple(cell.get("bytes") if isinstance(cell, dict) else cell for cell in cells)


@dataclass(frozen=True)
class ParquetImages:
    """Images stored in a parquet column (LeRobot `image` features: a struct `{bytes, path}` per row).

    `rows[t]` is frame `t`'s row in `path`; `row_groups` the number of rows of each of the file's row groups.
    """

    path: Path
    column: str
    rows: tuple[int, ...]
    row_groups: tuple[int, ...]

    def load(self, t: int, episode: int) -> np.ndarray:
        row = self.rows[t]
        starts = np.cumsum((0, *self.row_groups))
        group = int(np.searchsorted(starts, row, side="right") - 1)
        try:
            cells = _image_row_group(str(self.path), self.path.stat().st_mtime_ns, group, self.column)
        except RobotDataError:
            raise
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged file
            raise RobotDataError(
                f"{where(episode, self.path, t)}: the image column {self.column!r} cannot be read "
                f"({type(exc).__name__}: {exc}).",
                episode=episode,
                file=str(self.path),
            ) from None
        data = cells[row - int(starts[group])]
        if not isinstance(data, bytes | bytearray) or not data:
            raise RobotDataError(
                f"{where(episode, self.path, t)}: the image cell of {self.column!r} holds no encoded bytes "
                f"({type(data).__name__}); images referenced by path only are not supported.",
                episode=episode,
                file=str(self.path),
            )
        return decode_image_bytes(bytes(data), episode=episode, file=str(self.path), frame=t)


def decode_video_frame(
    path: Path, timestamp: float, tolerance_s: float, *, episode: int, frame: int
) -> np.ndarray:
    """The frame of the video at `path` shown at `timestamp` seconds, as uint8 `[H, W, 3]` (RGB).

    As LeRobot's PyAV decoder: seek to the key frame at or before the timestamp, decode forward, take the
    frame closest to it; more than `tolerance_s` away raises (the video and the parquet timestamps disagree).
    """
    av = require("av", "Reading LeRobot video datasets")
    best: tuple[float, np.ndarray | None] = (float("inf"), None)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            offset = max(0, round(timestamp / stream.time_base) - 1)
            container.seek(offset, backward=True, any_frame=False, stream=stream)
            for decoded in container.decode(stream):
                if decoded.pts is None:
                    continue
                shown = float(decoded.pts * stream.time_base)
                if abs(shown - timestamp) < best[0]:
                    best = (abs(shown - timestamp), decoded.to_ndarray(format="rgb24"))
                if shown > timestamp + tolerance_s:
                    break
    except (av.error.FFmpegError, IndexError, OSError, ValueError) as exc:
        raise RobotDataError(
            f"{where(episode, path, frame)}: the video cannot be decoded ({type(exc).__name__}: {exc}).",
            episode=episode,
            file=str(path),
        ) from None
    if best[1] is None or best[0] > tolerance_s:
        found = "no frame" if best[1] is None else f"the closest frame is {best[0]:.6f} s away"
        raise RobotDataError(
            f"{where(episode, path, frame)}: the video has no frame at {timestamp:.6f} s ({found}; tolerance "
            f"{tolerance_s} s). The parquet timestamps and the video disagree: re-encode the episode.",
            episode=episode,
            file=str(path),
        )
    return np.ascontiguousarray(best[1], dtype=np.uint8)


@dataclass(frozen=True)
class VideoFrames:
    """Frames of an mp4 (LeRobot `video` features): frame `t` is shown at `timestamps[t]` seconds."""

    path: Path
    timestamps: tuple[float, ...]
    tolerance_s: float

    def load(self, t: int, episode: int) -> np.ndarray:
        if not self.path.is_file():
            raise RobotDataError(
                f"{where(episode, self.path, t)}: the video file is missing (it existed when the dataset was "
                "opened).",
                episode=episode,
                file=str(self.path),
            )
        return decode_video_frame(self.path, self.timestamps[t], self.tolerance_s, episode=episode, frame=t)
