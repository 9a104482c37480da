"""LeRobot datasets (codebase v2.0 / v2.1 and v3.0), read with pyarrow and PyAV, as LeRobot lays them out
(huggingface/lerobot `src/lerobot/datasets/utils.py`, `scripts/convert_dataset_v21_to_v30.py`):

- `meta/info.json`: `codebase_version`, `fps`, `chunks_size`, `features` (`{name: {dtype, shape, names}}`;
  cameras have dtype "image" or "video"), and the path templates `data_path` / `video_path`.
- v2.x: `meta/tasks.jsonl` (`{"task_index", "task"}`), `meta/episodes.jsonl` (`{"episode_index", "tasks",
  "length"}`), one parquet per episode at `data_path.format(episode_chunk=ep // chunks_size,
  episode_index=ep)` (`data/chunk-000/episode_000000.parquet`) and one mp4 per episode and camera at
  `video_path.format(episode_chunk=..., video_key=..., episode_index=...)`
  (`videos/chunk-000/<camera>/episode_000000.mp4`), frame `t` shown at the row's `timestamp`.
- v3.0: `meta/tasks.parquet` (`task_index`, `task`), `meta/episodes/chunk-*/file-*.parquet` (one row per
  episode: `episode_index`, `length`, `data/chunk_index`, `data/file_index`, `videos/<camera>/chunk_index`,
  `.../file_index`, `.../from_timestamp`), many episodes per data file at `data_path.format(chunk_index=...,
  file_index=...)` (`data/chunk-000/file-000.parquet`, rows told apart by `episode_index`) and per video at
  `video_path.format(video_key=..., chunk_index=..., file_index=...)`, frame `t` shown at `from_timestamp +
  timestamp`.

Images stored in the parquet are structs `{bytes, path}` holding PNG/JPEG bytes. The instruction is the task
that the row's `task_index` names.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llm_backbones._fs import is_inside
from llm_backbones.data.robot.dataset import Episode, RobotDataset
from llm_backbones.data.robot.media import ParquetImages, VideoFrames, require, where
from llm_backbones.errors import RobotDataError

SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
CAMERA_DTYPES = ("image", "video")
# LeRobot's default `tolerance_s` between a queried timestamp and the video frame found
VIDEO_TOLERANCE_S = 1e-4


def is_lerobot_dataset(path: Path) -> bool:
    return (path / "meta" / "info.json").is_file()


def _error(
    message: str, *, episode: int | Sequence[int] | None = None, file: Path | str | None = None
) -> RobotDataError:
    first = episode if episode is None or isinstance(episode, int) else episode[0]
    return RobotDataError(
        f"{where(episode, file)}: {message}", episode=first, file=str(file) if file else None
    )


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise _error("is missing; a LeRobot dataset has it.", file=path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _error(f"cannot be read as JSON ({exc}).", file=path) from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise _error("is missing; a LeRobot v2 dataset has it.", file=path)
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise _error(f"cannot be read ({exc}).", file=path) from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _error(f"line {n} is not JSON ({exc.msg}).", file=path) from None
        if not isinstance(row, dict):
            raise _error(f"line {n} is not a JSON object.", file=path)
        rows.append(row)
    return rows


def _read_parquet(
    path: Path,
    columns: Sequence[str] | None,
    *,
    episode: int | Sequence[int] | None,
    what: str,
    present: Sequence[str] = (),
) -> Any:
    """The ParquetFile of `path` and its table (only `columns`, all when None); a missing, damaged or
    incomplete file raises, as does one without `columns` or the columns of `present` (checked, not read)."""
    pq = require("pyarrow.parquet", "Reading LeRobot datasets")
    if not path.is_file():
        raise _error(f"the {what} file is missing.", episode=episode, file=path)
    try:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
        missing = [c for c in [*(columns or ()), *present] if c not in names]
        if missing:
            raise _error(
                f"the {what} file has no column(s) {missing}; its columns are {names}. Pick the right key "
                "(image_key / action_key / task_key).",
                episode=episode,
                file=path,
            )
        return parquet, parquet.read(columns=list(columns) if columns is not None else None)
    except RobotDataError:
        raise
    except Exception as exc:  # ArrowInvalid, ArrowIOError, OSError: a truncated or corrupted file
        raise _error(
            f"the {what} file cannot be read as parquet ({type(exc).__name__}: {exc}). Download it again.",
            episode=episode,
            file=path,
        ) from None


def _template(info: Mapping[str, Any], key: str, info_path: Path, **fields: object) -> str:
    template = info.get(key)
    if not isinstance(template, str) or not template:
        raise _error(f"{key!r} must be a path template, got {template!r}.", file=info_path)
    for _, field, _, _ in string.Formatter().parse(template):
        if field is not None and field not in fields:
            raise _error(
                f"the {key} template {template!r} names {{{field}}}; known fields here: {sorted(fields)}.",
                file=info_path,
            )
    try:
        return template.format(**fields)
    except (ValueError, IndexError) as exc:
        raise _error(f"the {key} template {template!r} cannot be filled ({exc}).", file=info_path) from None


def _contained(root: Path, relative: str, *, episode: int | None, info_path: Path) -> Path:
    if not is_inside(root, relative, follow_symlinks=False) or not is_inside(root, relative):
        raise _error(
            f"the path {relative!r} lies outside the dataset folder {root}.", episode=episode, file=info_path
        )
    return root / relative


def _pick_camera(features: Mapping[str, Any], image_key: str | None, info_path: Path) -> str:
    cameras = [k for k, f in features.items() if isinstance(f, Mapping) and f.get("dtype") in CAMERA_DTYPES]
    if image_key is not None:
        if image_key not in cameras:
            raise _error(
                f"no camera feature {image_key!r}; the image / video features are {cameras}.", file=info_path
            )
        return image_key
    if not cameras:
        raise _error(
            f"no image or video feature (features: {sorted(features)}); a VLA needs a camera.", file=info_path
        )
    if len(cameras) > 1:
        raise _error(
            f"several cameras {cameras}: pass image_key= (--image-key) naming the one the policy sees.",
            file=info_path,
        )
    return cameras[0]


def _action_dim(features: Mapping[str, Any], action_key: str, info_path: Path) -> int:
    feature = features.get(action_key)
    if not isinstance(feature, Mapping):
        raise _error(
            f"no action feature {action_key!r}; features: {sorted(features)}. Pass action_key= "
            "(--action-key) naming the action feature.",
            file=info_path,
        )
    shape = feature.get("shape")
    if (
        not isinstance(shape, Sequence)
        or len(shape) != 1
        or isinstance(shape[0], bool)
        or not isinstance(shape[0], int)
        or shape[0] < 1
    ):
        raise _error(
            f"the action feature {action_key!r} has shape {shape!r}; expected [D] with D >= 1.",
            file=info_path,
        )
    return int(shape[0])


def _tasks(root: Path, version: str) -> dict[int, str]:
    if version.startswith("v2"):
        path = root / "meta" / "tasks.jsonl"
        rows = _read_jsonl(path)
    else:
        path = root / "meta" / "tasks.parquet"
        _, table = _read_parquet(path, None, episode=None, what="tasks")
        rows = table.to_pylist()
        # written by pandas with the task as the index; an unnamed index comes back as __index_level_0__
        rows = [
            {"task": r.get("task", r.get("__index_level_0__")), "task_index": r.get("task_index")}
            for r in rows
        ]
    tasks: dict[int, str] = {}
    for row in rows:
        index, task = row.get("task_index"), row.get("task")
        if isinstance(index, bool) or not isinstance(index, int) or not isinstance(task, str):
            raise _error(
                f"a task row must have an integer task_index and a string task, got {row!r:.120}.", file=path
            )
        tasks[index] = task
    return tasks


def _episodes_meta(root: Path, version: str) -> tuple[list[dict[str, Any]], Path]:
    if version.startswith("v2"):
        path = root / "meta" / "episodes.jsonl"
        rows = _read_jsonl(path)
    else:
        path = root / "meta" / "episodes"
        files = sorted(path.glob("chunk-*/*.parquet")) if path.is_dir() else []
        if not files:
            raise _error("holds no episodes parquet (meta/episodes/chunk-*/file-*.parquet).", file=path)
        rows = []
        pq = require("pyarrow.parquet", "Reading LeRobot datasets")
        for file in files:
            try:
                names = [n for n in pq.read_schema(file).names if not n.startswith("stats/")]
            except Exception as exc:
                raise _error(f"cannot be read as parquet ({type(exc).__name__}: {exc}).", file=file) from None
            rows += _read_parquet(file, names, episode=None, what="episodes metadata")[1].to_pylist()
    for row in rows:
        index = row.get("episode_index")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise _error(f"an episode row has episode_index {index!r}; expected an integer >= 0.", file=path)
    indices = [row["episode_index"] for row in rows]
    if len(set(indices)) != len(indices):
        raise _error("lists an episode_index twice.", file=path)
    if not rows:
        raise _error("lists no episodes.", file=path)
    return sorted(rows, key=lambda r: r["episode_index"]), path


def _action_matrix(column: Any, dim: int, episodes: np.ndarray, path: Path, action_key: str) -> np.ndarray:
    """The action column as float32 `[rows, dim]`; nulls, ragged rows, rows of another size than `dim`
    (info.json's shape) and non-numbers raise, naming the episode of the first bad row."""
    pa = require("pyarrow", "Reading LeRobot datasets")
    array = column.combine_chunks()
    kind = array.type

    def bad(row: int, message: str) -> RobotDataError:
        episode = int(episodes[row]) if row < len(episodes) else None
        return _error(f"{message} (row {row} of {action_key!r}).", episode=episode, file=path)

    if array.null_count:
        raise bad(
            int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0]), "the action is null"
        )
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        lengths = array.value_lengths().to_numpy(zero_copy_only=False)
        wrong = np.flatnonzero(lengths != dim)
        if wrong.size:
            row = int(wrong[0])
            raise bad(row, f"the action has {int(lengths[row])} dimensions, info.json's shape says {dim}")
        values = array.flatten()
        if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)) or values.null_count:
            raise bad(0, f"actions must be lists of numbers, got {kind}")
        return values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    if (pa.types.is_floating(kind) or pa.types.is_integer(kind)) and dim == 1:
        return array.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, 1)
    raise bad(0, f"actions must be lists of {dim} numbers, got the column type {kind}")


def read_lerobot_dataset(
    root: Path,
    *,
    name: str | None,
    image_key: str | None,
    action_key: str,
    task_key: str | None,
    video_tolerance_s: float = VIDEO_TOLERANCE_S,
) -> RobotDataset:
    """Read and check a LeRobot dataset: metadata, every episode's actions and tasks, every referenced data
    file and video; images are decoded on demand."""
    pa = require("pyarrow", "Reading LeRobot datasets")
    info_path = root / "meta" / "info.json"
    info = _read_json(info_path)
    if not isinstance(info, Mapping):
        raise _error("is not a JSON object.", file=info_path)
    version = info.get("codebase_version")
    if version not in SUPPORTED_VERSIONS:
        raise _error(
            f"codebase_version {version!r} is not supported; supported: {', '.join(SUPPORTED_VERSIONS)}. "
            "Convert it with LeRobot's conversion scripts (lerobot/scripts/convert_dataset_*).",
            file=info_path,
        )
    features = info.get("features")
    if not isinstance(features, Mapping):
        raise _error(f"'features' must be an object, got {features!r:.80}.", file=info_path)
    dim = _action_dim(features, action_key, info_path)
    camera = _pick_camera(features, image_key, info_path)
    is_video = features[camera].get("dtype") == "video"
    if is_video:
        require("av", "Reading LeRobot video datasets")
    task_column = task_key or "task_index"
    tasks = _tasks(root, version)
    meta, meta_path = _episodes_meta(root, version)
    v2 = version.startswith("v2")
    chunks_size = info.get("chunks_size", 1000)
    if isinstance(chunks_size, bool) or not isinstance(chunks_size, int) or chunks_size < 1:
        raise _error(f"chunks_size must be a positive integer, got {chunks_size!r}.", file=info_path)

    # the data files and which episodes each holds
    files: dict[Path, list[dict[str, Any]]] = {}
    for row in meta:
        ep = row["episode_index"]
        if v2:
            fields = {"episode_chunk": ep // chunks_size, "episode_index": ep}
        else:
            try:
                fields = {
                    "chunk_index": int(row["data/chunk_index"]),
                    "file_index": int(row["data/file_index"]),
                }
            except (KeyError, TypeError, ValueError):
                raise _error(
                    "the episode's row has no integer data/chunk_index and data/file_index.",
                    episode=ep,
                    file=meta_path,
                ) from None
        path = _contained(
            root, _template(info, "data_path", info_path, **fields), episode=ep, info_path=info_path
        )
        files.setdefault(path, []).append(row)

    columns = [action_key, task_column, "episode_index"] + (["timestamp"] if is_video else [])
    episodes: list[Episode] = []
    for path, rows in files.items():
        first = [row["episode_index"] for row in rows]  # the episodes this file holds, named by its errors
        # images stored in the parquet: the column must be there, but is read frame by frame later
        parquet, table = _read_parquet(
            path, columns, episode=first, what="data", present=() if is_video else (camera,)
        )
        if not is_video:
            kind = parquet.schema_arrow.field(camera).type
            if not (
                pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0
            ) and not pa.types.is_binary(kind):
                raise _error(
                    f"the image column {camera!r} has type {kind}; expected LeRobot's struct "
                    f"{{bytes, path}}.",
                    episode=first,
                    file=path,
                )
        row_groups = tuple(
            parquet.metadata.row_group(g).num_rows for g in range(parquet.metadata.num_row_groups)
        )
        episode_of_row = table.column("episode_index").to_numpy(zero_copy_only=False)
        actions = _action_matrix(table.column(action_key), dim, episode_of_row, path, action_key)
        task_values = table.column(task_column).to_pylist()
        timestamps = table.column("timestamp").to_numpy(zero_copy_only=False) if is_video else None
        listed = {row["episode_index"] for row in rows}
        strays = sorted({int(e) for e in episode_of_row} - listed)
        if strays:
            raise _error(
                f"the data file holds rows of episode(s) {strays[:10]} that the episodes metadata places "
                "elsewhere "
                "or does not list.",
                episode=strays[0],
                file=path,
            )
        for row in rows:
            ep = row["episode_index"]
            positions = np.flatnonzero(episode_of_row == ep)
            if positions.size == 0:
                raise _error("the episode is empty (no frames in its data file).", episode=ep, file=path)
            length = row.get("length")
            if length is not None and length != positions.size:
                raise _error(
                    f"the episodes metadata says {length} frames, the data file has {positions.size}.",
                    episode=ep,
                    file=path,
                )
            episode_actions = actions[positions]
            bad = np.flatnonzero(~np.isfinite(episode_actions).all(axis=1))
            if bad.size:
                t = int(bad[0])
                raise RobotDataError(
                    f"{where(ep, path, t)}: the action holds NaN or infinite values "
                    f"({episode_actions[t].tolist()}); {bad.size} frame(s) of the episode do. Fix or drop "
                    "the "
                    "episode.",
                    episode=ep,
                    file=str(path),
                )
            instructions = []
            for t, value in enumerate(task_values[i] for i in positions):
                if isinstance(value, str) and task_key is not None:
                    instructions.append(value)
                elif isinstance(value, int) and not isinstance(value, bool) and value in tasks:
                    instructions.append(tasks[value])
                else:
                    known = sorted(tasks)[:20]
                    raise RobotDataError(
                        f"{where(ep, path, t)}: {task_column} {value!r} names no task of the tasks table "
                        f"(task indices: {known}).",
                        episode=ep,
                        file=str(path),
                    )
            if is_video:
                images = _video_frames(
                    root,
                    info,
                    info_path,
                    meta_path,
                    row,
                    camera,
                    chunks_size,
                    timestamps[positions],
                    v2,
                    video_tolerance_s,
                )
            else:
                images = ParquetImages(path, camera, tuple(int(p) for p in positions), row_groups)
            episodes.append(
                Episode(
                    episode=ep,
                    source=str(path),
                    actions=np.ascontiguousarray(episode_actions),
                    instructions=tuple(instructions),
                    images=images,
                )
            )
    episodes.sort(key=lambda e: e.episode)
    return RobotDataset(name or root.name, episodes, format=f"lerobot-{version}", root=str(root))


def _video_frames(
    root: Path,
    info: Mapping[str, Any],
    info_path: Path,
    meta_path: Path,
    row: Mapping[str, Any],
    camera: str,
    chunks_size: int,
    timestamps: np.ndarray,
    v2: bool,
    tolerance_s: float,
) -> VideoFrames:
    ep = row["episode_index"]
    if v2:
        fields: dict[str, object] = {
            "episode_chunk": ep // chunks_size,
            "video_key": camera,
            "episode_index": ep,
        }
        offset = 0.0
    else:
        prefix = f"videos/{camera}/"
        try:
            fields = {
                "video_key": camera,
                "chunk_index": int(row[prefix + "chunk_index"]),
                "file_index": int(row[prefix + "file_index"]),
            }
            offset = float(row[prefix + "from_timestamp"])
        except (KeyError, TypeError, ValueError):
            raise _error(
                f"the episode's row has no {prefix}chunk_index / file_index / from_timestamp.",
                episode=ep,
                file=meta_path,
            ) from None
    path = _contained(
        root, _template(info, "video_path", info_path, **fields), episode=ep, info_path=info_path
    )
    if not path.is_file():
        raise _error(f"the video of camera {camera!r} is missing.", episode=ep, file=path)
    if not np.isfinite(timestamps).all():
        raise _error("the timestamp column holds NaN or infinite values.", episode=ep, file=path)
    return VideoFrames(path, tuple(float(offset + t) for t in timestamps), tolerance_s)
