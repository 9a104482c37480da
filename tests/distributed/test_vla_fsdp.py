"""`llm-backbones finetune-vla` under `torchrun --nproc_per_node=2` (FSDP2, gloo, CPU) against one process,
and its exact resume after a SIGKILL, on the tiny OpenVLA fixture policy and the toy robot dataset of
tests/integration/test_finetune_vla.py.

Every run here has the same settings (LoRA, 3 steps of 4 frames, a checkpoint after each, an eval of 5
frames after the last: the second rank's last eval batch is empty), so the uninterrupted runs (one process,
two ranks) are the references of the killed-and-resumed ones.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vla_checkpoints import write_hf_checkpoint

pytestmark = pytest.mark.distributed

sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))
from test_finetune_vla import FIXTURE, VISION_DEPTH, load, train, write_dataset  # noqa: E402
from test_resume import torchrun  # noqa: E402
from test_training_loop_resume import run_until_fault  # noqa: E402

from llm_backbones.training.loop import read_records  # noqa: E402

SETTINGS = {
    "mode": "lora",
    "steps": 3,
    "batch_size": 4,
    "lr": 1e-2,
    "lr_schedule": "cosine",  # finetune-vla's (it has no flag for it)
    "save_every": 1,
    "device": "cpu",
    "seed": 0,
}
CLI_SETTINGS = {k: v for k, v in SETTINGS.items() if k != "lr_schedule"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    """The checkpoint and the training data; the eval data (its first 5 frames) lies beside it."""
    folder = tmp_path_factory.mktemp("vla-fsdp")
    data = write_dataset(folder / "toy")
    eval_data(data).write_text("".join(data.read_text().splitlines(keepends=True)[:5]))
    return write_hf_checkpoint(FIXTURE, folder / "checkpoint"), data


def eval_data(data: Path) -> Path:
    return data.with_name("eval.jsonl")


def cli_args(inputs: tuple[Path, Path], output: Path) -> list[str]:
    checkpoint, data = inputs
    args = ["finetune-vla", "--policy", str(checkpoint), "--vision-depth", str(VISION_DEPTH)]
    args += ["--data", str(data), "--eval-data", str(eval_data(data)), "--output", str(output)]
    for key, value in CLI_SETTINGS.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def run_cli(args: list[str], launcher: list[str]) -> None:
    proc = subprocess.run(
        [*launcher, "-m", "llm_backbones", *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def steps(output: Path) -> list[dict]:
    return [r for r in read_records(output / "metrics.jsonl") if "loss" in r]


def weights(export: Path) -> dict[str, torch.Tensor]:
    policy = load(export)
    return {
        f"{part}.{name}": tensor.float()
        for part in ("backbone", "vision", "projector")
        for name, tensor in getattr(policy, part).state_dict().items()
    }


@pytest.fixture(scope="module")
def one_process(inputs, tmp_path_factory):
    """The uninterrupted single-process run (in this process): (result, run folder)."""
    output = tmp_path_factory.mktemp("one") / "run"
    _, result = train(*inputs, output, eval_data=str(eval_data(inputs[1])), **SETTINGS)
    return result, output


@pytest.fixture(scope="module")
def two_ranks(inputs, tmp_path_factory) -> Path:
    """The uninterrupted 2-rank run (torchrun, FSDP2): its run folder."""
    output = tmp_path_factory.mktemp("two") / "run"
    run_cli(cli_args(inputs, output), torchrun())
    return output


def test_two_ranks_match_one_process(inputs, one_process, two_ranks) -> None:
    reference, one_dir = one_process
    records = steps(two_ranks)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert {r["world_size"] for r in records} == {2}
    # per-step loss (the global batch's token mean) to 1e-4 (sums over ranks in another order) ...
    np.testing.assert_allclose([r["loss"] for r in records], reference.losses, rtol=0, atol=1e-4)
    # ... and the action metrics summed over both ranks: the global batch's, not rank 0's half
    assert [r["action_accuracy"] for r in records] == reference.action_accuracy
    assert max(reference.action_accuracy) > 0  # not only zeros compared
    np.testing.assert_allclose([r["action_l1"] for r in records], reference.action_l1, rtol=1e-9)
    # the eval likewise: 5 frames over 2 ranks, 2 per forward pass
    (evaluation,) = [r for r in read_records(two_ranks / "metrics.jsonl") if "eval_loss" in r]
    (expected,) = reference.evals
    assert evaluation["step"] == expected["step"] == 3
    assert abs(evaluation["eval_loss"] - expected["eval_loss"]) <= 1e-4
    assert evaluation["eval_action_accuracy"] == expected["eval_action_accuracy"]
    np.testing.assert_allclose(evaluation["eval_action_l1"], expected["eval_action_l1"], rtol=1e-9)

    # The export, written once by rank 0 from the gathered weights (LoRA merged), loads and matches the
    # single process's. Adam's first steps divide each gradient by its own size, so a gradient near zero,
    # summed in another order, moves its weight by up to lr x its relative error: 5e-5 at lr 1e-2.
    one, two, start = weights(one_dir / "export"), weights(two_ranks / "export"), weights(inputs[0])
    assert one.keys() == two.keys() == start.keys()
    assert max((one[k] - start[k]).abs().max().item() for k in one) > 1e-3  # it trained
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=5e-5, msg=name)


def test_one_process_killed_mid_step_resumes_bit_for_bit(inputs, one_process, tmp_path) -> None:
    reference, one_dir = one_process
    run = tmp_path / "run"
    # Killed inside step 3 (after its backward pass, before the update): the step-1 checkpoint was published
    # once step 2's loss came out finite; the step-2 one waited for step 3's.
    run_until_fault("step:3", tmp_path / "markers", cli_args(inputs, run), [sys.executable])
    assert (run / "checkpoints" / "latest").read_text() == "step-00000001\n"
    assert (run / "checkpoints" / "step-00000002.partial" / ".metadata").is_file()
    assert [r["loss"] for r in steps(run)] == reference.losses[:2]
    assert not (run / "export").exists()

    _, resumed = train(*inputs, run, resume=True, eval_data=str(eval_data(inputs[1])), **SETTINGS)
    assert resumed.start_step == 1
    assert resumed.losses == reference.losses[1:]  # bit for bit
    assert resumed.action_accuracy == reference.action_accuracy[1:]
    assert [r["loss"] for r in steps(run)] == reference.losses  # one uninterrupted run's metrics file
    exported = (run / "export" / "model.safetensors").read_bytes()
    assert exported == (one_dir / "export" / "model.safetensors").read_bytes()


def test_two_ranks_killed_mid_save_resume_bit_for_bit(inputs, two_ranks, tmp_path) -> None:
    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    # Killed while saving the last step's checkpoint: both ranks' shards and DCP's .metadata are written,
    # but `latest` still names step 2.
    run_until_fault("save:3", tmp_path / "markers", cli_args(inputs, run), torchrun())
    assert sorted(p.name for p in (checkpoints / "step-00000003.partial").iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    assert (checkpoints / "latest").read_text() == "step-00000002\n"
    assert not (run / "export").exists()

    run_cli([*cli_args(inputs, run), "--resume"], torchrun())
    uninterrupted, resumed = steps(two_ranks), steps(run)
    assert [r["step"] for r in resumed] == [1, 2, 3]
    for key in ("loss", "action_accuracy", "action_l1", "grad_norm"):  # step 3 re-run: bit for bit
        assert [r[key] for r in resumed] == [r[key] for r in uninterrupted], key
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-00000002", "step-00000003"]
    exported = (run / "export" / "model.safetensors").read_bytes()
    assert exported == (two_ranks / "export" / "model.safetensors").read_bytes()
