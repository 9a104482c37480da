"""Robot episodes for VLA fine-tuning: LeRobot v2.1 / v3.0 datasets (images in the
parquet and mp4 videos) and the JSONL folder format made here, read back frame by frame; the split by episode;
OpenVLA's action statistics and normalization (checked against persistence's validator and un-normalizer);
and the bad-data matrix: each broken dataset raises RobotDataError naming the episode and the file."""

from __future__ import annotations

import json
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
av = pytest.importorskip("av")

from llm_backbones.data.robot import (  # noqa: E402
    RobotFrame,
    action_statistics,
    gripper_last_mask,
    normalize_actions,
    open_robot_dataset,
)
from llm_backbones.errors import (  # noqa: E402
    ActionError,
    MissingDependencyError,
    NormStatsError,
    RobotDataError,
)
from llm_backbones.persistence.openvla import unnormalize_actions, validate_norm_stats  # noqa: E402
from robot_datasets import (  # noqa: E402
    ALL_ACTIONS,
    BAD_LEROBOT,
    CAMERA,
    EP1,
    EPISODES,
    TASKS,
    image_of,
    make_jsonl,
    make_lerobot_v21,
    make_lerobot_v30,
    png,
    rewrite,
)


def assert_frames(dataset, *, exact: bool = True, source_suffix: str | None = None) -> None:
    assert len(dataset) == 12 and dataset.action_dim == 3 and dataset.episodes == (0, 1, 2)
    i = 0
    for e, (task, actions) in EPISODES.items():
        assert dataset.episode_length(e) == len(actions)
        for t, action in enumerate(actions):
            frame = dataset[i]
            assert isinstance(frame, RobotFrame)
            assert (frame.episode, frame.index, frame.instruction) == (e, t, TASKS[task])
            assert frame.action.dtype == np.float32
            np.testing.assert_array_equal(frame.action, np.float32(action))
            assert frame.image.dtype == np.uint8 and frame.image.shape == (32, 32, 3)
            if exact:
                np.testing.assert_array_equal(frame.image, image_of(e, t))
            if source_suffix:
                assert frame.source.endswith(source_suffix.format(e=e)), frame.source
            i += 1
    np.testing.assert_array_equal(dataset[-1].action, np.float32([2.4, -4.0, 1.0]))


# === Reading the formats ===
def test_lerobot_v21_images_in_parquet(tmp_path: Path) -> None:
    dataset = open_robot_dataset(make_lerobot_v21(tmp_path / "arm_v21"))
    assert dataset.format == "lerobot-v2.1" and dataset.name == "arm_v21"
    assert_frames(dataset, source_suffix="data/chunk-000/episode_00000{e}.parquet")
    dataset.check_images()


def test_lerobot_v21_mp4_videos_lossless(tmp_path: Path) -> None:
    dataset = open_robot_dataset(make_lerobot_v21(tmp_path / "arm", video=True))
    assert_frames(dataset, exact=True)  # libx264rgb, crf 0: lossless RGB


def test_lerobot_v30_images_in_parquet_several_episodes_per_file(tmp_path: Path) -> None:
    dataset = open_robot_dataset(make_lerobot_v30(tmp_path / "arm"))
    assert dataset.format == "lerobot-v3.0"
    file_of = {0: "file-000", 1: "file-000", 2: "file-001"}
    assert_frames(dataset)
    assert [dataset[i].source.rsplit("/", 1)[-1] for i in (0, 3, 7)] == [
        f"{file_of[e]}.parquet" for e in (0, 1, 2)
    ]


def test_lerobot_v30_one_video_for_all_episodes(tmp_path: Path) -> None:
    dataset = open_robot_dataset(make_lerobot_v30(tmp_path / "arm", video=True))
    assert_frames(dataset, exact=True)  # episode 2, frame 0 is the video's frame 7, at from_timestamp 0.7 s


def test_lerobot_v30_av1_video_as_lerobot_encodes_it(tmp_path: Path) -> None:
    """libsvtav1 / yuv420p (LeRobot's default encoding) is lossy: each frame is close to its source and
    closer to it than to the neighbouring frames."""
    dataset = open_robot_dataset(make_lerobot_v30(tmp_path / "arm", video=True, codec="libsvtav1"))
    assert_frames(dataset, exact=False)
    for i, (e, t) in enumerate([(e, t) for e, (_, a) in EPISODES.items() for t in range(len(a))]):
        error = np.abs(dataset[i].image.astype(int) - image_of(e, t).astype(int)).mean()
        assert error < 6, (e, t, error)
        if t:
            assert error < np.abs(dataset[i].image.astype(int) - image_of(e, t - 1).astype(int)).mean()


def test_jsonl_folder_format(tmp_path: Path) -> None:
    path = make_jsonl(tmp_path / "quick")
    for target in (path, path.parent):  # the file, or its folder
        dataset = open_robot_dataset(target)
        assert dataset.format == "jsonl" and dataset.name == "data"
        assert_frames(dataset, source_suffix="data.jsonl")


def test_jsonl_without_episodes_makes_one_episode_per_line(tmp_path: Path) -> None:
    dataset = open_robot_dataset(make_jsonl(tmp_path / "quick", episodes=False), name="quick")
    assert dataset.name == "quick" and dataset.episodes == tuple(range(12))
    assert [dataset[i].index for i in range(12)] == [0] * 12
    np.testing.assert_array_equal(dataset.actions(), np.float32(ALL_ACTIONS))


def test_image_key_is_required_when_there_are_several_cameras(tmp_path: Path) -> None:
    root = make_lerobot_v21(tmp_path / "arm")
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["observation.images.wrist"] = dict(info["features"][CAMERA])
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(
        RobotDataError, match=r"several cameras \['observation.images.top', 'observation.images.wrist'\]"
    ):
        open_robot_dataset(root)
    with pytest.raises(RobotDataError, match=r"no camera feature 'observation.images.front'"):
        open_robot_dataset(root, image_key="observation.images.front")
    assert len(open_robot_dataset(root, image_key=CAMERA)) == 12


def test_task_key_names_a_string_column(tmp_path: Path) -> None:
    root = make_lerobot_v21(tmp_path / "arm")
    for e in EPISODES:
        path = root / f"data/chunk-000/episode_{e:06d}.parquet"
        table = pq.read_table(path)
        pq.write_table(table.append_column("language", pa.array([f"task of {e}"] * table.num_rows)), path)
    dataset = open_robot_dataset(root, task_key="language")
    assert dataset.instructions() == [f"task of {e}" for e, (_, a) in EPISODES.items() for _ in a]


def test_state_and_history_are_refused(tmp_path: Path) -> None:
    root = make_lerobot_v21(tmp_path / "arm")
    with pytest.raises(
        RobotDataError, match=r"state_key='observation.state': proprioceptive \(state\) inputs"
    ):
        open_robot_dataset(root, state_key="observation.state")
    with pytest.raises(RobotDataError, match=r"history=2: multi-frame inputs are out of scope"):
        open_robot_dataset(root, history=2)


def test_rlds_folder_needs_tensorflow_datasets(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "dataset_info.json").write_text("{}")
    (tmp_path / "bridge-train.tfrecord-00000-of-00001").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # find_spec: not installed
    with pytest.raises(
        MissingDependencyError, match=r"needs tensorflow-datasets: pip install tensorflow-datasets$"
    ):
        open_robot_dataset(tmp_path)


def test_missing_pyarrow_is_one_install_line(tmp_path: Path, monkeypatch) -> None:
    root = make_lerobot_v21(tmp_path / "arm")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MissingDependencyError) as caught:
        open_robot_dataset(root)
    assert str(caught.value) == "Reading LeRobot datasets needs pyarrow: pip install 'llm-backbones[robot]'"


def test_dataset_pickles_for_dataloader_workers(tmp_path: Path) -> None:
    for root in (make_lerobot_v30(tmp_path / "img"), make_lerobot_v30(tmp_path / "vid", video=True)):
        dataset = pickle.loads(pickle.dumps(open_robot_dataset(root)))
        np.testing.assert_array_equal(dataset[5].image, image_of(1, 2))
        assert (dataset[5].episode, dataset[5].index) == (1, 2)


# === Split ===
def test_split_by_episode(tmp_path: Path) -> None:
    dataset = open_robot_dataset(make_jsonl(tmp_path / "quick"))
    train, held = dataset.split(0.34, seed=0)  # round(0.34 * 3) = 1 episode held out
    assert len(held.episodes) == 1 and set(train.episodes) | set(held.episodes) == {0, 1, 2}
    assert len(train) + len(held) == 12
    assert {held[i].episode for i in range(len(held))} == set(held.episodes)
    assert dataset.split(0.34, seed=0)[1].episodes == held.episodes  # the seed decides
    assert {dataset.split(0.34, seed=s)[1].episodes for s in range(20)} == {(0,), (1,), (2,)}
    assert dataset.split(0.0)[1].episodes == () and len(dataset.split(0.0)[0]) == 12
    assert len(dataset.split(0.01)[1].episodes) == 1  # any eval_fraction > 0 holds out one at least
    with pytest.raises(
        RobotDataError, match=r"has 3 episode\(s\): eval_fraction=0.9 leaves none for training"
    ):
        dataset.split(0.9)
    with pytest.raises(RobotDataError, match=r"eval_fraction must be a number in \[0, 1\), got 1"):
        dataset.split(1)


# === Statistics and normalization ===
def test_statistics_as_openvla_computes_them(tmp_path: Path) -> None:
    dataset = open_robot_dataset(make_lerobot_v21(tmp_path / "arm_v21"))
    stats = dataset.statistics()
    assert list(stats) == ["arm_v21"]
    entry = stats["arm_v21"]
    assert entry["num_transitions"] == 12 and entry["num_trajectories"] == 3
    action = entry["action"]
    assert set(action) == {"mean", "std", "max", "min", "q01", "q99", "mask"}
    actions = np.float32(ALL_ACTIONS)
    # column sums: 0.3 + 4.6 + 11.0 = 15.9; -3 - 6 - 10 = -19; 0 + 2 + 5 = 7 (over 12 frames)
    np.testing.assert_allclose(action["mean"], [15.9 / 12, -19 / 12, 7 / 12], rtol=1e-6)
    np.testing.assert_allclose(action["min"], [0.0, -4.0, 0.0])
    np.testing.assert_allclose(action["max"], [2.4, 0.0, 1.0], rtol=1e-7)
    np.testing.assert_allclose(action["std"], actions.std(0), rtol=1e-6)
    # np.quantile (linear) on the 12 values of each column: the reference definition OpenVLA uses
    np.testing.assert_allclose(action["q01"], np.quantile(np.float64(ALL_ACTIONS), 0.01, axis=0), rtol=1e-6)
    np.testing.assert_allclose(action["q99"], np.quantile(np.float64(ALL_ACTIONS), 0.99, axis=0), rtol=1e-6)
    # third column sorted: 0,0,0,.5,.5,.5,.5,1,1,1,1,1 -> q99 at position 10.89 between two 1s; q01 at 0.11
    assert action["q99"][2] == 1.0 and action["q01"][2] == 0.0
    assert action["mask"] == [True, True, True]
    assert entry["proprio"]["q99"] == [0.0, 0.0, 0.0]  # OpenVLA's statistics of a dataset without proprio
    assert validate_norm_stats(stats) == stats
    json.dumps(stats)  # plain Python numbers, as dataset_statistics.json


def test_quantiles_on_an_obvious_array() -> None:
    """101 values 0..100: q01 = 1 and q99 = 99 exactly; a gripper-last mask as OpenVLA's Open-X datasets."""
    actions = np.stack([np.arange(101.0), np.arange(101.0) * 2, np.full(101, 0.25)], axis=1)
    entry = action_statistics(actions, 4, action_mask=gripper_last_mask(3))
    assert entry["action"]["q01"] == [1.0, 2.0, 0.25] and entry["action"]["q99"] == [99.0, 198.0, 0.25]
    assert entry["action"]["mean"] == [50.0, 100.0, 0.25] and entry["action"]["mask"] == [True, True, False]
    assert (entry["num_transitions"], entry["num_trajectories"]) == (101, 4)
    assert gripper_last_mask(7) == [True] * 6 + [False]
    with pytest.raises(ActionError, match=r"action_mask has 2 entries but the actions have 3 dimensions"):
        action_statistics(actions, 1, action_mask=[True, False])
    with pytest.raises(ActionError, match=r"action_mask must be a sequence of booleans"):
        action_statistics(actions, 1, action_mask=[1, 1, 0])


def test_normalize_is_openvlas_bounds_q99_and_unnormalize_inverts_it() -> None:
    stats = {
        "robot": action_statistics(
            np.stack([np.arange(101.0), np.arange(101.0) / 100, np.full(101, 3.0)], 1), 1
        )
    }
    stats["robot"]["action"]["mask"] = [True, False, True]
    entry = stats["robot"]
    # dim 0: q01 = 1, q99 = 99 -> 2 * (a - 1) / 98 - 1, clipped; dim 1 unmasked: as is; dim 2 never moves: 0
    got = normalize_actions(
        [[1.0, 0.25, 3.0], [50.0, -0.5, 3.0], [99.0, 0.75, 3.0], [120.0, 0.0, 3.0]], entry
    )
    expected = [[-1.0, 0.25, 0.0], [0.0, -0.5, 0.0], [1.0, 0.75, 0.0], [1.0, 0.0, 0.0]]
    np.testing.assert_allclose(got, expected, atol=1e-9)
    inside = np.array([[1.0, 0.25, 3.0], [37.5, -0.5, 3.0], [99.0, 1.0, 3.0], [2.0, 0.0, 3.0]])
    round_trip = unnormalize_actions(normalize_actions(inside, entry), stats, "robot")
    np.testing.assert_allclose(round_trip, inside, rtol=0, atol=1e-6)  # the 1e-8 of OpenVLA's denominator
    with pytest.raises(ActionError, match=r"hold NaN or infinite values"):
        normalize_actions([[np.nan, 0.0, 3.0]], entry)
    with pytest.raises(ActionError, match=r"do not fit the statistics, which have 3 dimensions"):
        normalize_actions([[1.0, 2.0]], entry)
    with pytest.raises(NormStatsError, match=r"q01 has 3 values and q99 1"):  # the one check of statistics
        normalize_actions([[1.0, 2.0, 3.0]], {"action": {**entry["action"], "q99": [1.0]}})


# === Bad data: each raises RobotDataError naming the episode and the file ===
def corrupt_image(root: Path) -> None:
    path = root / "data/chunk-000/episode_000001.parquet"
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    rewrite(
        path,
        lambda t: t.set_column(
            0, CAMERA, pa.array([{"bytes": b"not a png", "path": "x.png"}] * t.num_rows, image_type)
        ),
    )


@pytest.mark.parametrize("case", sorted(BAD_LEROBOT))
def test_bad_lerobot_data_names_episode_and_file(tmp_path: Path, case: str) -> None:
    file, damage, episode, words = BAD_LEROBOT[case]
    root = make_lerobot_v21(tmp_path / "arm")
    damage(root)
    with pytest.raises(RobotDataError, match=words) as caught:
        open_robot_dataset(root)
    message = str(caught.value)
    assert re.search(rf"\b[Ee]pisode {episode}\b", message) and str(root / file) in message, message
    assert caught.value.episode == episode and caught.value.file == str(root / file)


def test_missing_video_names_episode_and_file(tmp_path: Path) -> None:
    root = make_lerobot_v21(tmp_path / "arm", video=True)
    video = root / f"videos/chunk-000/{CAMERA}/episode_000002.mp4"
    video.unlink()
    with pytest.raises(RobotDataError) as caught:
        open_robot_dataset(root)
    assert str(caught.value) == f"Episode 2 ({video}): the video of camera '{CAMERA}' is missing."
    assert (caught.value.episode, caught.value.file) == (2, str(video))


def test_video_and_timestamps_that_disagree(tmp_path: Path) -> None:
    root = make_lerobot_v21(tmp_path / "arm", video=True)
    rewrite(
        root / EP1,
        lambda t: t.set_column(
            t.schema.get_field_index("timestamp"), "timestamp", pa.array([0.0, 0.1, 0.2, 0.35], pa.float32())
        ),
    )
    dataset = open_robot_dataset(root)  # timestamps are checked against the video when a frame is decoded
    video = root / f"videos/chunk-000/{CAMERA}/episode_000001.mp4"
    with pytest.raises(
        RobotDataError,
        match=rf"Episode 1, frame 3 \({re.escape(str(video))}\): the video has no frame at 0.350000 s",
    ):
        dataset[6]


def test_undecodable_image_names_episode_frame_and_file(tmp_path: Path) -> None:
    root = make_lerobot_v21(tmp_path / "arm")
    corrupt_image(root)
    dataset = open_robot_dataset(root)  # images are decoded lazily
    np.testing.assert_array_equal(dataset[0].image, image_of(0, 0))
    with pytest.raises(
        RobotDataError,
        match=rf"Episode 1, frame 0 \({re.escape(str(root / EP1))}\): the image cannot be decoded",
    ):
        dataset[3]
    with pytest.raises(RobotDataError, match=r"Episode 1, frame 0"):
        dataset.check_images()


def test_corrupted_v30_data_file_names_its_episodes(tmp_path: Path) -> None:
    root = make_lerobot_v30(tmp_path / "arm")
    path = root / "data/chunk-000/file-000.parquet"
    path.write_bytes(b"PAR1" + b"\0" * 64)
    with pytest.raises(RobotDataError) as caught:
        open_robot_dataset(root)
    assert str(caught.value).startswith(f"Episodes [0, 1] ({path}): the data file cannot be read as parquet")
    assert (caught.value.episode, caught.value.file) == (0, str(path))


def test_v30_missing_video_names_episode_and_file(tmp_path: Path) -> None:
    root = make_lerobot_v30(tmp_path / "arm", video=True)
    video = root / f"videos/{CAMERA}/chunk-000/file-000.mp4"
    video.unlink()
    with pytest.raises(RobotDataError, match=rf"^Episode 0 \({re.escape(str(video))}\): the video of camera"):
        open_robot_dataset(root)


def test_bad_metadata_names_the_file(tmp_path: Path) -> None:
    root = make_lerobot_v21(tmp_path / "arm")
    info_path = root / "meta/info.json"
    info = json.loads(info_path.read_text())
    (root / "meta/info.json").write_text(json.dumps(info | {"codebase_version": "v1.6"}))
    with pytest.raises(
        RobotDataError, match=rf"{re.escape(str(info_path))}: codebase_version 'v1.6' is not supported"
    ):
        open_robot_dataset(root)
    no_action = {k: v for k, v in info["features"].items() if k != "action"}
    (root / "meta/info.json").write_text(json.dumps(info | {"features": no_action}))
    with pytest.raises(RobotDataError, match=r"no action feature 'action'; features: \["):
        open_robot_dataset(root)
    (root / "meta/info.json").write_text(
        json.dumps(info | {"data_path": "../outside/{episode_index}.parquet"})
    )
    with pytest.raises(
        RobotDataError, match=r"Episode 0 \(.*info.json\): the path '../outside/0.parquet' lies outside"
    ):
        open_robot_dataset(root)
    (root / "meta/info.json").write_text(
        json.dumps(info | {"data_path": "data/{episode_index.__class__}.parquet"})
    )
    with pytest.raises(RobotDataError, match=r"names \{episode_index.__class__\}; known fields here"):
        open_robot_dataset(root)


BAD_JSONL = {
    "missing action": (lambda d: d.pop("action"), r"line 5 \(episode 1\): missing key\(s\) \['action'\]"),
    "missing image": (lambda d: d.pop("image"), r"line 5 \(episode 1\): missing key\(s\) \['image'\]"),
    "missing instruction": (
        lambda d: d.pop("instruction"),
        r"line 5 \(episode 1\): missing key\(s\) \['instruction'\]",
    ),
    "ragged action": (
        lambda d: d.update(action=[0.0, 1.0]),
        r"line 5 \(episode 1\): 'action' has 2 dimensions, the lines before have 3",
    ),
    "NaN action": (
        lambda d: d.update(action=[0.0, float("nan"), 1.0]),
        r"line 5 \(episode 1\): 'action' holds NaN or infinite values",
    ),
    "image outside the folder": (
        lambda d: d.update(image="../secret.png"),
        r"line 5 \(episode 1\): the image '../secret.png' lies outside",
    ),
    "absolute image path": (
        lambda d: d.update(image="/etc/passwd"),
        r"line 5 \(episode 1\): the image '/etc/passwd' lies outside",
    ),
    "missing image file": (
        lambda d: d.update(image="images/nope.png"),
        r"line 5 \(episode 1\): the image file .*images/nope.png does not exist",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_JSONL))
def test_bad_jsonl_data_names_line_episode_and_file(tmp_path: Path, case: str) -> None:
    damage, words = BAD_JSONL[case]
    path = make_jsonl(tmp_path / "quick")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    damage(lines[4])  # episode 1, frame 1
    (tmp_path / "secret.png").write_bytes(png(image_of(0, 0)))
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(RobotDataError, match=rf"^{re.escape(str(path))}, {words}") as caught:
        open_robot_dataset(path)
    assert (caught.value.episode, caught.value.file) == (1, str(path))


def test_undecodable_jsonl_image(tmp_path: Path) -> None:
    path = make_jsonl(tmp_path / "quick")
    broken = tmp_path / "quick/images/e1_t1.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    dataset = open_robot_dataset(path)
    with pytest.raises(
        RobotDataError,
        match=rf"^Episode 1, frame 1 \({re.escape(str(broken))}\): the image cannot be decoded",
    ):
        dataset[4]
