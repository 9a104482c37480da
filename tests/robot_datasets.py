"""Robot datasets the tests write: LeRobot v2.1 / v3.0 (images in the parquet or mp4 videos) and the JSONL
folder format, all holding the same 3 episodes (`EPISODES`, 12 frames, 32x32 images `image_of(e, t)`, 3-D
actions); and `BAD_LEROBOT`, the damaged LeRobot datasets that must raise `RobotDataError` naming the episode
and the file. Needs pyarrow (callers `pytest.importorskip` it first) and av for the videos."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

CAMERA = "observation.images.top"
FPS = 10
TASKS = ["pick up the red block", "open the drawer"]
# episode -> (task index, actions); action[e][t] = [e + t / 10, -t, 0.5 * e]
EPISODES = {
    0: (0, [[0.0, 0.0, 0.0], [0.1, -1.0, 0.0], [0.2, -2.0, 0.0]]),
    1: (1, [[1.0, 0.0, 0.5], [1.1, -1.0, 0.5], [1.2, -2.0, 0.5], [1.3, -3.0, 0.5]]),
    2: (0, [[2.0, 0.0, 1.0], [2.1, -1.0, 1.0], [2.2, -2.0, 1.0], [2.3, -3.0, 1.0], [2.4, -4.0, 1.0]]),
}
ALL_ACTIONS = [a for _, actions in EPISODES.values() for a in actions]  # 12 frames, in episode order


def image_of(episode: int, t: int) -> np.ndarray:
    """A 32x32 frame that differs for every (episode, frame): a gradient, offset by both."""
    y, x = np.mgrid[0:32, 0:32]
    return np.stack([(x * 4 + 40 * episode) % 256, (y * 4 + 30 * t) % 256, (x + y) * 2], axis=-1).astype(
        np.uint8
    )


def png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def write_mp4(path: Path, frames: list[np.ndarray], codec: str = "libx264rgb") -> None:
    """Frames at FPS into an mp4; libx264rgb with crf 0 is lossless RGB, libsvtav1 (yuv420p) is LeRobot's
    default encoding (lossy)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"crf": "0", "g": "2"} if codec == "libx264rgb" else {"crf": "30", "g": "2"}
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS, options=options)
        stream.width, stream.height = 32, 32
        stream.pix_fmt = "rgb24" if codec == "libx264rgb" else "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def features(video: bool, dim: int = 3) -> dict:
    camera = {
        "dtype": "video" if video else "image",
        "shape": [32, 32, 3],
        "names": ["height", "width", "channel"],
    }
    if video:
        camera["info"] = {"video.fps": FPS, "video.codec": "h264", "video.pix_fmt": "rgb24"}
    return {
        CAMERA: camera,
        "observation.state": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
        "action": {"dtype": "float32", "shape": [dim], "names": ["dx", "dy", "grip"][:dim]},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }


def frame_table(episode: int, first_index: int, *, video: bool, fixed: bool) -> pa.Table:
    task, actions = EPISODES[episode]
    n = len(actions)
    action_type = pa.list_(pa.float32(), 3) if fixed else pa.list_(pa.float32())
    columns = {
        "observation.state": pa.array([[0.0, 1.0]] * n, type=pa.list_(pa.float32())),
        "action": pa.array(actions, type=action_type),
        "timestamp": pa.array([t / FPS for t in range(n)], type=pa.float32()),
        "frame_index": pa.array(range(n), type=pa.int64()),
        "episode_index": pa.array([episode] * n, type=pa.int64()),
        "index": pa.array(range(first_index, first_index + n), type=pa.int64()),
        "task_index": pa.array([task] * n, type=pa.int64()),
    }
    if not video:
        image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        cells = [{"bytes": png(image_of(episode, t)), "path": f"frame_{t:06d}.png"} for t in range(n)]
        columns = {CAMERA: pa.array(cells, type=image_type), **columns}
    return pa.table(columns)


def make_lerobot_v21(root: Path, *, video: bool = False) -> Path:
    """LeRobot codebase v2.1: one parquet (and one mp4 per camera) per episode, tasks/episodes as JSONL."""
    (root / "meta").mkdir(parents=True)
    info = {
        "codebase_version": "v2.1",
        "robot_type": "test_arm",
        "total_episodes": len(EPISODES),
        "total_frames": len(ALL_ACTIONS),
        "total_tasks": len(TASKS),
        "total_videos": len(EPISODES) if video else 0,
        "total_chunks": 1,
        "chunks_size": 1000,
        "fps": FPS,
        "splits": {"train": f"0:{len(EPISODES)}"},
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
        if video
        else None,
        "features": features(video),
    }
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    (root / "meta" / "tasks.jsonl").write_text(
        "".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(TASKS))
    )
    (root / "meta" / "episodes.jsonl").write_text(
        "".join(
            json.dumps({"episode_index": e, "tasks": [TASKS[task]], "length": len(actions)}) + "\n"
            for e, (task, actions) in EPISODES.items()
        )
    )
    first = 0
    for e, (_, actions) in EPISODES.items():
        path = root / f"data/chunk-000/episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(frame_table(e, first, video=video, fixed=False), path)
        if video:
            write_mp4(
                root / f"videos/chunk-000/{CAMERA}/episode_{e:06d}.mp4",
                [image_of(e, t) for t in range(len(actions))],
            )
        first += len(actions)
    return root


def make_lerobot_v30(root: Path, *, video: bool = False, codec: str = "libx264rgb") -> Path:
    """LeRobot codebase v3.0: episodes 0 and 1 in data file-000, episode 2 in file-001 (chunk-000); one mp4
    holding every episode, told apart by from_timestamp; tasks and episodes metadata as parquet."""
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    info = {
        "codebase_version": "v3.0",
        "robot_type": "test_arm",
        "total_episodes": len(EPISODES),
        "total_frames": len(ALL_ACTIONS),
        "total_tasks": len(TASKS),
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 200,
        "fps": FPS,
        "splits": {"train": f"0:{len(EPISODES)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
        if video
        else None,
        "features": features(video),
    }
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    # as pandas writes DataFrame({"task_index": ...}, index=Index(tasks, name="task")): the index as a column
    pq.write_table(
        pa.table({"task_index": pa.array(range(len(TASKS)), pa.int64()), "task": TASKS}),
        root / "meta/tasks.parquet",
    )
    file_of = {0: 0, 1: 0, 2: 1}
    rows, first, seconds = [], 0, 0.0
    tables: dict[int, list[pa.Table]] = {0: [], 1: []}
    for e, (task, actions) in EPISODES.items():
        n = len(actions)
        tables[file_of[e]].append(frame_table(e, first, video=video, fixed=True))
        row = {
            "episode_index": e,
            "tasks": [TASKS[task]],
            "length": n,
            "data/chunk_index": 0,
            "data/file_index": file_of[e],
            "dataset_from_index": first,
            "dataset_to_index": first + n,
            "stats/action/min": [min(a[i] for a in actions) for i in range(3)],
            "meta/episodes/chunk_index": 0,
            "meta/episodes/file_index": 0,
        }
        if video:
            row |= {
                f"videos/{CAMERA}/chunk_index": 0,
                f"videos/{CAMERA}/file_index": 0,
                f"videos/{CAMERA}/from_timestamp": seconds,
                f"videos/{CAMERA}/to_timestamp": seconds + n / FPS,
            }
        rows.append(row)
        first += n
        seconds += n / FPS
    pq.write_table(pa.Table.from_pylist(rows), root / "meta/episodes/chunk-000/file-000.parquet")
    for index, parts in tables.items():
        path = root / f"data/chunk-000/file-{index:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(parts), path)
    if video:
        frames = [image_of(e, t) for e, (_, actions) in EPISODES.items() for t in range(len(actions))]
        write_mp4(root / f"videos/{CAMERA}/chunk-000/file-000.mp4", frames, codec)
    return root


def make_jsonl(root: Path, *, episodes: bool = True) -> Path:
    """The folder format: images/e{e}_t{t}.png and data.jsonl, one line per frame."""
    (root / "images").mkdir(parents=True)
    lines = []
    for e, (task, actions) in EPISODES.items():
        for t, action in enumerate(actions):
            Image.fromarray(image_of(e, t)).save(root / f"images/e{e}_t{t}.png")
            line = {"image": f"images/e{e}_t{t}.png", "instruction": TASKS[task], "action": action}
            lines.append(line | ({"episode": e} if episodes else {}))
    (root / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root / "data.jsonl"


def rewrite(path: Path, change) -> None:
    pq.write_table(change(pq.read_table(path)), path)


def set_action(table: pa.Table, values, type=None) -> pa.Table:
    index = table.schema.get_field_index("action")
    return table.set_column(index, "action", pa.array(values, type=type or pa.list_(pa.float32())))


EP1 = "data/chunk-000/episode_000001.parquet"
EP2 = "data/chunk-000/episode_000002.parquet"
BAD_LEROBOT = {
    "action column missing": (
        EP1,
        lambda r: rewrite(r / EP1, lambda t: t.drop_columns(["action"])),
        1,
        r"no column\(s\) \['action'\]",
    ),
    "task column missing": (
        EP1,
        lambda r: rewrite(r / EP1, lambda t: t.drop_columns(["task_index"])),
        1,
        r"no column\(s\) \['task_index'\]",
    ),
    "image column missing": (
        EP1,
        lambda r: rewrite(r / EP1, lambda t: t.drop_columns([CAMERA])),
        1,
        r"no column\(s\) \['observation.images.top'\]",
    ),
    "action of 4 dims, info.json says 3": (
        EP1,
        lambda r: rewrite(r / EP1, lambda t: set_action(t, [[0.0, 0.0, 0.0, 0.0]] * t.num_rows)),
        1,
        r"the action has 4 dimensions, info.json's shape says 3 \(row 0 of 'action'\)",
    ),
    "ragged actions": (
        EP2,
        lambda r: rewrite(r / EP2, lambda t: set_action(t, [[0.0, 0.0, 0.0]] * 3 + [[0.0, 0.0]] * 2)),
        2,
        r"the action has 2 dimensions, info.json's shape says 3 \(row 3 of 'action'\)",
    ),
    "empty episode": (EP1, lambda r: rewrite(r / EP1, lambda t: t.slice(0, 0)), 1, r"the episode is empty"),
    "frames missing": (
        EP1,
        lambda r: rewrite(r / EP1, lambda t: t.slice(0, 2)),
        1,
        r"metadata says 4 frames, the data file has 2",
    ),
    "corrupted parquet": (
        EP1,
        lambda r: (r / EP1).write_bytes((r / EP1).read_bytes()[:200]),
        1,
        r"cannot be read as parquet",
    ),
    "data file missing": (EP1, lambda r: (r / EP1).unlink(), 1, r"the data file is missing"),
    "NaN action": (
        EP2,
        lambda r: rewrite(
            r / EP2, lambda t: set_action(t, [[0.0, 0.0, 0.0], [0.0, np.nan, 0.0]] + [[0.0] * 3] * 3)
        ),
        2,
        r"Episode 2, frame 1 \(.*\): the action holds NaN or infinite values \(\[0.0, nan, 0.0\]\)",
    ),
    "inf action": (
        EP2,
        lambda r: rewrite(r / EP2, lambda t: set_action(t, [[0.0] * 3] * 4 + [[np.inf, 0.0, 0.0]])),
        2,
        r"Episode 2, frame 4 \(.*\): the action holds NaN or infinite",
    ),
    "unknown task index": (
        EP1,
        lambda r: rewrite(
            r / EP1,
            lambda t: t.set_column(
                t.schema.get_field_index("task_index"), "task_index", pa.array([7] * 4, pa.int64())
            ),
        ),
        1,
        r"Episode 1, frame 0 \(.*\): task_index 7 names no task of the tasks table "
        r"\(task indices: \[0, 1\]\)",
    ),
}
