"""Exact resume in one process: a fine-tuning run SIGKILLed while its checkpoint is being saved resumes
from the last published checkpoint with every loss equal, bit for bit, to an uninterrupted run.
The 2-rank version (killed mid-training, and mid-save) is tests/distributed/test_resume.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_backbones.training.finetune import run_finetune
from llm_backbones.training.loop import read_records

pytestmark = pytest.mark.integration

FAULT_SCRIPT = Path(__file__).parents[1] / "distributed" / "_finetune_until_fault.py"
DATA = [
    {
        "conversations": [
            {"from": "human", "value": "What action should the robot take to open the drawer?"},
            {"from": "gpt", "value": "pull the handle"},
        ]
    },
    {
        "conversations": [
            {"from": "human", "value": "What is on the table?"},
            {"from": "gpt", "value": "a red cup"},
        ]
    },
    {"conversations": [{"from": "human", "value": "Close the door."}, {"from": "gpt", "value": "push it"}]},
    {"conversations": [{"from": "human", "value": "Is the gripper open?"}, {"from": "gpt", "value": "yes"}]},
    {
        "conversations": [
            {"from": "human", "value": "Stack the blocks."},
            {"from": "gpt", "value": "red on blue"},
        ]
    },
]
SETTINGS = {
    "backbone": "llama2-tiny-pure",
    "steps": 5,
    "batch_size": 4,
    "lr": 1e-3,
    "warmup_steps": 1,
    "save_every": 2,
    "keep": 2,
    "device": "cpu",
    "precision": "fp32",
}


def cli_args(data: Path, output: Path, settings: dict = SETTINGS) -> list[str]:
    args = ["finetune", "--data", str(data), "--output", str(output)]
    for key, value in settings.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def run_until_fault(fault: str, markers: Path, args: list[str], launcher: list[str]) -> None:
    """Start the run (`launcher`: python, or torchrun), wait until it stops at `fault`, then SIGKILL every
    process of it."""
    markers.mkdir()
    proc = subprocess.Popen(
        [*launcher, str(FAULT_SCRIPT), fault, str(markers), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not (markers / "stopped").exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before the fault {fault}:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"the run never reached the fault {fault}")
        time.sleep(0.1)
    for pid_file in markers.glob("pid-*"):  # the workers (torchrun starts each in its own session) ...
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)  # ... and the launcher
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def losses(output: Path) -> list[float]:
    return [r["loss"] for r in read_records(output / "metrics.jsonl") if "loss" in r]


def test_killed_mid_save_resumes_with_bit_identical_losses(tiny_llama_dir, tmp_path) -> None:
    # (tiny_llama_dir: the embedded weights exist before the first run, so every run builds alike)
    data = tmp_path / "data.json"
    data.write_text(json.dumps(DATA))
    reference = run_finetune(data=str(data), output=str(tmp_path / "reference"), **SETTINGS)
    assert len(reference.losses) == 5 and reference.losses[-1] < reference.losses[0]

    # The step-4 checkpoint is fully written but not yet published when the process dies (its publication
    # waits for step 5's loss): `latest` still names step 2.
    killed = tmp_path / "killed"
    run_until_fault("save:4", tmp_path / "markers", cli_args(data, killed), [sys.executable])
    assert (killed / "checkpoints" / "latest").read_text() == "step-00000002\n"
    assert (killed / "checkpoints" / "step-00000004.partial" / ".metadata").is_file()
    assert losses(killed) == reference.losses[:4]  # the killed run had logged steps 1-4
    assert not (killed / "export").exists()

    resumed = run_finetune(data=str(data), output=str(killed), resume=True, **SETTINGS)
    assert resumed.start_step == 2 and len(resumed.losses) == 3
    assert resumed.losses == reference.losses[2:]  # bit for bit
    assert losses(killed) == reference.losses  # the metrics file reads as one uninterrupted run
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == [
        "latest",
        "step-00000004",
        "step-00000005",
    ]
    reference_weights = (tmp_path / "reference" / "export" / "model.safetensors").read_bytes()
    assert (
        killed / "export" / "model.safetensors"
    ).read_bytes() == reference_weights  # the same export, byte for byte
