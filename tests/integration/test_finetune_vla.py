"""`run_finetune_vla` / `llm-backbones finetune-vla`: the tiny OpenVLA fixture policy fine-tuned on a robot
dataset the test writes (JSONL, 2 episodes x 4 frames, 32x32 images, 7-D actions)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
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


def check_export_predicts_training_actions(export: Path, data: Path) -> None:
    """The export, reloaded by load_vla, gives each training frame's action within half a bin (robot
    units; actions beyond the dataset's q01/q99 are clipped there, as OpenVLA's normalization clips)."""
    from llm_backbones.data.robot import open_robot_dataset

    dataset = open_robot_dataset(data)
    policy = load(export)
    stats = policy.norm_stats["toy"]["action"]
    low, high = np.array(stats["q01"]), np.array(stats["q99"])
    frames = [dataset[i] for i in range(len(dataset))]
    predicted = policy.predict_actions([f.image for f in frames], [f.instruction for f in frames], "toy")
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
