"""`run_finetune_vla` / `llm-backbones finetune-vla`: the tiny OpenVLA fixture policy fine-tuned on robot
datasets the tests write: JSONL (2 episodes x 4 frames, 32x32 images, 7-D actions) and LeRobot
(tests/robot_datasets.py: 3 episodes, 12 frames, 3-D actions; images in the parquet, or mp4 videos); what each
mode trains; `image_aug`; and bad data refused before any model is built."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vla_checkpoints import write_hf_checkpoint

pytestmark = pytest.mark.integration

FIXTURE = "clip-224-crop"
VISION_DEPTH = 3
N_EPISODES, N_FRAMES, ACTION_DIM = 2, 4, 7


def write_dataset(folder: Path) -> Path:
    """8 frames, each with its own image (a distinct flat colour plus a square) and action."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for episode in range(N_EPISODES):
        for t in range(N_FRAMES):
            image = np.full((32, 32, 3), 30 * (episode * N_FRAMES + t), dtype=np.uint8)
            image[4 * t : 4 * t + 8, 8 * episode : 8 * episode + 8] = 255
            name = f"frames/{episode}_{t}.png"
            (folder / "frames").mkdir(exist_ok=True)
            Image.fromarray(image).save(folder / name)
            action = rng.uniform(-1, 1, ACTION_DIM).round(3).tolist()
            task = "pick up the block" if episode == 0 else "open the drawer"
            lines.append(
                json.dumps({"image": name, "instruction": task, "action": action, "episode": episode})
            )
    path = folder / "toy.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_hf_checkpoint(FIXTURE, tmp_path_factory.mktemp("vla") / "checkpoint")


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("robot") / "toy")


def load(checkpoint):
    from llm_backbones.vla.loading import load_vla

    return load_vla(checkpoint, vision_depth=VISION_DEPTH)


def train(checkpoint, data, output, **options):
    from llm_backbones.training.vla import run_finetune_vla

    policy = load(checkpoint)
    settings = {"batch_size": 8, "lr_schedule": "constant", "save_every": 0, **options}
    return policy, run_finetune_vla(policy, data, output=str(output), **settings)


def check_export_predicts_training_actions(export: Path, data: Path, **keys: str) -> None:
    """The export, reloaded by load_vla, gives each training frame's action within half a bin (robot
    units; actions beyond the dataset's q01/q99 are clipped there, as OpenVLA's normalization clips). `keys`:
    open_robot_dataset's image_key / action_key / task_key; the statistics are under the dataset's name."""
    from llm_backbones.data.robot import open_robot_dataset

    dataset = open_robot_dataset(data, **keys)
    policy = load(export)
    stats = policy.norm_stats[dataset.name]["action"]
    low, high = np.array(stats["q01"]), np.array(stats["q99"])
    frames = [dataset[i] for i in range(len(dataset))]
    predicted = policy.predict_actions(
        [f.image for f in frames], [f.instruction for f in frames], dataset.name
    )
    expected = np.clip(np.stack([f.action for f in frames]), low, high)
    half_bin = (high - low) / 2 * (1 / 255)
    assert (np.abs(predicted - expected) <= half_bin + 1e-6).all(), np.abs(predicted - expected) / half_bin
    assert policy.stray_tokens == 0


@pytest.mark.parametrize(("mode", "steps", "lr"), [("full", 40, 1e-3), ("lora", 40, 1e-2)])
def test_finetune_reaches_full_action_accuracy_and_exports(
    checkpoint, dataset_path, tmp_path, mode, steps, lr
):
    from llm_backbones.training.loop import read_records

    _, result = train(
        checkpoint, dataset_path, tmp_path / "run", mode=mode, steps=steps, lr=lr, lr_schedule="cosine"
    )
    assert result.action_accuracy[-1] == 1.0
    assert result.action_accuracy[0] < 0.1
    assert result.losses[-1] < result.losses[0] / 10
    records = read_records(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert {"loss", "action_accuracy", "action_l1", "action_l1_normalized", "lr", "grad_norm"} <= set(
        records[0]
    )
    assert records[-1]["action_l1"] < records[0]["action_l1"]
    export = Path(result.output)
    assert export == tmp_path / "run" / "export"
    assert json.loads((export / "dataset_statistics.json").read_text()).keys() == {"toy"}
    check_export_predicts_training_actions(export, dataset_path)


def test_resume_continues_exactly(checkpoint, dataset_path, tmp_path):
    options = {"mode": "lora", "steps": 6, "lr": 1e-2, "save_every": 3}
    _, whole = train(checkpoint, dataset_path, tmp_path / "whole", **options)
    _, first = train(checkpoint, dataset_path, tmp_path / "split", **{**options, "steps": 3})
    _, rest = train(checkpoint, dataset_path, tmp_path / "split", resume=True, **options)
    assert rest.start_step == 3
    np.testing.assert_allclose(first.losses + rest.losses, whole.losses, rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        first.action_accuracy + rest.action_accuracy, whole.action_accuracy, rtol=0, atol=1e-9
    )


def test_cli_finetune_vla_trains_checkpoints_and_exports(checkpoint, dataset_path, tmp_path):
    """`llm-backbones finetune-vla` as a user runs it: flags in, a run folder with metrics and an export
    `load_vla` reads out."""
    from typer.testing import CliRunner

    from llm_backbones.app.cli import app
    from llm_backbones.training.loop import read_records

    output = tmp_path / "run"
    args = ["finetune-vla", "--policy", str(checkpoint), "--vision-depth", "3", "--data", str(dataset_path)]
    args += ["--mode", "lora", "--steps", "3", "--batch-size", "4", "--lr", "1e-2", "--output", str(output)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "action tokens right" in result.output and "export:" in result.output
    assert [r["step"] for r in read_records(output / "metrics.jsonl")] == [1, 2, 3]
    policy = load(output / "export")
    assert policy.norm_stats.keys() == {"toy"}
    again = CliRunner().invoke(app, args)  # the run folder exists: refused, nothing replaced
    assert again.exit_code == 1 and "--resume" in again.output


# === LeRobot datasets ===
def test_finetune_on_lerobot_images_reaches_full_action_accuracy_and_exports(checkpoint, tmp_path):
    """LeRobot v2.1, images as PNG in the episodes' parquet files: 12 frames learnt to the last action token;
    the export, under the dataset's name, predicts them."""
    pytest.importorskip("pyarrow")
    from robot_datasets import make_lerobot_v21

    root = make_lerobot_v21(tmp_path / "arm_images")
    options = {"mode": "full", "steps": 16, "lr": 1e-3, "batch_size": 12}  # 100% from step 11 on
    _, result = train(checkpoint, root, tmp_path / "run", **options)
    assert result.action_accuracy[0] < 0.1 and result.action_accuracy[-1] == 1.0
    assert result.unnorm_key == "arm_images" and result.norm_stats["arm_images"]["num_transitions"] == 12
    check_export_predicts_training_actions(Path(result.output), root)


def lerobot_needing_keys(root: Path) -> Path:
    """A LeRobot v3.0 dataset that only reads with all three keys: a second camera (so the camera must be
    named), the action stored as `action.joints`, and the instructions in a string column `language` (each
    episode its own, not the tasks table's)."""
    import pyarrow as pa

    from robot_datasets import CAMERA, make_lerobot_v30, rewrite

    make_lerobot_v30(root, video=True)  # lossless mp4, one file for every episode
    info_path = root / "meta/info.json"
    info = json.loads(info_path.read_text())
    features = info["features"]
    features["observation.images.wrist"] = dict(features[CAMERA])
    features["action.joints"] = features.pop("action")
    info_path.write_text(json.dumps(info))

    def change(table):
        table = table.rename_columns(["action.joints" if n == "action" else n for n in table.column_names])
        episodes = table.column("episode_index").to_pylist()
        return table.append_column("language", pa.array([f"do task number {e}" for e in episodes]))

    for path in sorted((root / "data").glob("chunk-*/*.parquet")):
        rewrite(path, change)
    return root


def test_cli_finetune_vla_on_lerobot_videos_with_keys(checkpoint, tmp_path):
    """`finetune-vla --image-key --action-key --task-key` on a LeRobot v3.0 dataset with mp4 videos: refused
    without the keys (no feature `action`, then several cameras), trained with them to every action token, and
    exported (the export predicts the actions from the `language` column's instructions)."""
    pytest.importorskip("pyarrow")
    pytest.importorskip("av")
    from typer.testing import CliRunner

    from llm_backbones.app.cli import app
    from llm_backbones.training.loop import read_records

    root = lerobot_needing_keys(tmp_path / "arm_video")
    keys = {"image_key": "observation.images.top", "action_key": "action.joints", "task_key": "language"}
    output = tmp_path / "run"
    args = ["finetune-vla", "--policy", str(checkpoint), "--vision-depth", "3", "--data", str(root)]
    args += ["--mode", "full", "--steps", "18", "--batch-size", "12", "--lr", "2e-3", "--output", str(output)]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1 and "--action-key" in refused.output and not output.exists()
    refused = CliRunner().invoke(app, [*args, "--action-key", "action.joints"])
    assert refused.exit_code == 1 and "--image-key" in refused.output and not output.exists()
    flags = [part for key, value in keys.items() for part in (f"--{key.replace('_', '-')}", value)]
    result = CliRunner().invoke(app, args + flags)
    assert result.exit_code == 0, result.output
    records = read_records(output / "metrics.jsonl")
    assert records[0]["action_accuracy"] < 0.1 and records[-1]["action_accuracy"] == 1.0
    check_export_predicts_training_actions(output / "export", root, **keys)
    saved = json.loads((output / "run_config.json").read_text())
    assert {k: saved[k] for k in keys} == keys


# === What each mode trains ===
def parameters(policy) -> dict[str, torch.Tensor]:
    """Every weight of the policy, named by its part (vision / projector / backbone), copied."""
    parts = {"vision": policy.vision, "projector": policy.projector, "backbone": policy.backbone}
    return {
        f"{part}.{name}": t.detach().clone()
        for part, module in parts.items()
        for name, t in module.named_parameters()
    }


@pytest.mark.parametrize(
    ("mode", "train_vision"), [("last-layer", False), ("last-layer", True), ("full", False), ("full", True)]
)
def test_mode_changes_exactly_the_weights_it_names(checkpoint, dataset_path, mode, train_vision):
    """One optimizer step, then the weights compared: last-layer changes the LLM's last decoder layer
    (layers.1 of 2), its input embeddings and its head; full changes the whole LLM and the projector; the
    vision towers change with train_vision only (all but the post-layernorm, which the featurizer does not
    use: it reads a block's output)."""
    from llm_backbones.training.vla import run_finetune_vla

    policy = load(checkpoint)
    before = parameters(policy)
    run_finetune_vla(
        policy, dataset_path, mode=mode, train_vision=train_vision, steps=1, batch_size=2, lr=1e-3
    )
    after = parameters(policy)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    llm = {name for name in before if name.startswith("backbone.")}
    if mode == "last-layer":
        expected = {"backbone.llm.model.embed_tokens.weight", "backbone.llm.lm_head.weight"}
        expected |= {name for name in llm if name.startswith("backbone.llm.model.layers.1.")}
        assert len(expected) == 11  # 9 tensors in a LLaMA decoder layer
    else:
        expected = llm | {name for name in before if name.startswith("projector.")}
    if train_vision:
        expected |= {n for n in before if n.startswith("vision.") and ".post_layernorm." not in n}
    assert changed == expected, (sorted(changed - expected), sorted(expected - changed))


# === Image augmentation ===
def test_image_aug_learns_and_resumes_exactly(checkpoint, dataset_path, tmp_path, monkeypatch):
    """With image_aug every frame of every step goes through augment_image (none is cached), the loss falls,
    and a run split by a resume gives the same losses: the augmentation is seeded by (seed, step, frame)."""
    import llm_backbones.training.vla as vla

    augmented = []

    def counting(image, rng):
        augmented.append(image.shape)
        return augment(image, rng)

    augment = vla.augment_image
    monkeypatch.setattr(vla, "augment_image", counting)
    options = {"mode": "full", "steps": 4, "lr": 1e-3, "batch_size": 8, "save_every": 2, "image_aug": True}
    _, whole = train(checkpoint, dataset_path, tmp_path / "whole", **options)
    assert augmented == [(32, 32, 3)] * 4 * 8
    assert whole.losses[-1] < 0.7 * whole.losses[0], whole.losses  # 11.7 -> 7.2
    _, first = train(checkpoint, dataset_path, tmp_path / "split", **{**options, "steps": 2})
    _, rest = train(checkpoint, dataset_path, tmp_path / "split", resume=True, **options)
    assert rest.start_step == 2
    np.testing.assert_allclose(first.losses + rest.losses, whole.losses, rtol=0, atol=1e-6)


# === Bad data: refused before any model is built ===
def test_bad_data_stops_the_run_before_any_model_is_built(tmp_path, monkeypatch):
    """Each damaged LeRobot dataset of tests/robot_datasets.py (missing keys, a wrong action size, an empty
    episode, a corrupted parquet file, NaN actions, ...) and a missing video: run_finetune_vla raises
    RobotDataError naming the episode and the file, with a policy path that does not exist and load_vla made
    to fail the test if it were called; no run folder is made."""
    pytest.importorskip("pyarrow")
    import llm_backbones.vla.loading as loading
    from llm_backbones.errors import RobotDataError
    from llm_backbones.training.vla import run_finetune_vla
    from robot_datasets import BAD_LEROBOT, CAMERA, make_lerobot_v21

    def no_model(*args, **kwargs):
        pytest.fail("load_vla was called: a model was built before the data was checked")

    monkeypatch.setattr(loading, "load_vla", no_model)
    missing_video = f"videos/chunk-000/{CAMERA}/episode_000002.mp4"
    cases = {
        **BAD_LEROBOT,
        "video missing": (
            missing_video,
            lambda r: (r / missing_video).unlink(),
            2,
            rf"the video of camera '{CAMERA}' is missing",
        ),
    }
    for n, (case, (file, damage, episode, words)) in enumerate(sorted(cases.items())):
        root = make_lerobot_v21(tmp_path / f"arm{n}", video=case == "video missing")
        damage(root)
        output = tmp_path / f"run{n}"
        with pytest.raises(RobotDataError, match=words) as caught:
            run_finetune_vla(tmp_path / "no-such-policy", root, output=str(output), steps=1)
        assert (caught.value.episode, caught.value.file) == (episode, str(root / file)), case
        assert str(root / file) in str(caught.value) and not output.exists(), case


def test_cli_finetune_vla_passes_the_schedule_precision_logging_and_keep_flags(monkeypatch, tmp_path):
    """The loop settings `finetune` has reach `run_finetune_vla` from `finetune-vla`'s flags too."""
    from typer.testing import CliRunner

    import llm_backbones.training.vla as vla
    from llm_backbones.app.cli import app

    seen = {}

    def capture(*args, config, **options):
        seen.update(vars(config))
        raise KeyboardInterrupt  # stop before anything is built

    monkeypatch.setattr(vla, "run_finetune_vla", capture)
    args = ["finetune-vla", "--policy", str(tmp_path), "--data", str(tmp_path / "d.jsonl")]
    args += ["--lr-schedule", "constant", "--precision", "fp32", "--log-every", "5", "--keep", "3"]
    CliRunner().invoke(app, args)
    assert {k: seen.get(k) for k in ("lr_schedule", "precision", "log_every", "keep")} == {
        "lr_schedule": "constant",
        "precision": "fp32",
        "log_every": 5,
        "keep": 3,
    }
