"""FSDP2 and FSDP1 under `torchrun --nproc_per_node=2` (gloo, CPU) against one process on the same global
batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llm_backbones import get_llm_backbone_and_tokenizer, load_backbone

pytestmark = pytest.mark.distributed

DATA = [
    {
        "conversations": [
            {"from": "human", "value": "<image>\nWhat action should the robot take to open the drawer?"},
            {"from": "gpt", "value": "pull the handle"},
        ]
    },
    {
        "conversations": [
            {"from": "human", "value": "What is on the table?"},
            {"from": "gpt", "value": "a red cup and a sponge"},
            {"from": "human", "value": "Where is the cup?"},
            {"from": "gpt", "value": "left of the sponge"},
        ]
    },
    {
        "conversations": [
            {"from": "human", "value": "What action should the robot take to close the door?"},
            {"from": "gpt", "value": "push it"},
        ]
    },
    {
        "conversations": [
            {"from": "human", "value": "Describe the scene."},
            {"from": "gpt", "value": "a kitchen counter"},
        ]
    },
    {
        "conversations": [
            {"from": "human", "value": "Pick up the carrot?"},
            {"from": "gpt", "value": "grasp and lift"},
        ]
    },
    {"conversations": [{"from": "human", "value": "Is the gripper open?"}, {"from": "gpt", "value": "yes"}]},
]
PROBE = "In: What action should the robot take to open the drawer?\nOut:"


def run_cli(tmp: Path, name: str, nproc: int, *extra: str) -> tuple[dict, Path]:
    data = tmp / "data.json"
    data.write_text(json.dumps(DATA))
    out, metrics = tmp / name, tmp / f"{name}.json"
    args = [
        "finetune",
        "--backbone",
        "llama2-tiny-pure",
        "--data",
        str(data),
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--output",
        str(out),
        "--metrics-json",
        str(metrics),
        *extra,
    ]
    launcher = [sys.executable, "-m", "llm_backbones.app.cli"]
    if nproc > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            str(29500 + os.getpid() % 1000),
            "-m",
            "llm_backbones.app.cli",
        ]
    proc = subprocess.run(
        [*launcher, *args], capture_output=True, text=True, timeout=300, env=dict(os.environ)
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(metrics.read_text()), out


def probe_logits(checkpoint: Path) -> torch.Tensor:
    backbone, tokenizer = get_llm_backbone_and_tokenizer("llama2-tiny-pure", model_path=checkpoint)
    backbone.eval()
    with torch.no_grad():
        return backbone(input_ids=tokenizer(PROBE, return_tensors="pt").input_ids).logits


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return run_cli(tmp_path_factory.mktemp("single"), "single", 1)


@pytest.mark.parametrize("fsdp", ["2", "1"])
def test_two_ranks_match_one_process(single, tmp_path, fsdp) -> None:
    one, one_dir = single
    two, two_dir = run_cli(tmp_path, f"fsdp{fsdp}", 2, "--fsdp", fsdp)
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert one["trainable_params"] == two["trainable_params"] == 8_604_288
    assert len(two["losses"]) == 4
    assert one["losses"][-1] < one["losses"][0]  # it trained
    for a, b in zip(one["losses"], two["losses"], strict=True):
        assert abs(a - b) <= 1e-4
    # the gathered checkpoint reloads to the same logits as the single-process one
    torch.testing.assert_close(probe_logits(two_dir), probe_logits(one_dir), rtol=1e-4, atol=1e-4)

    # ... and loads back into a sharded backbone (same FSDP version) with the same logits
    logits_file = tmp_path / "sharded_logits.pt"
    script = Path(__file__).parent / "_load_sharded.py"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(29700 + os.getpid() % 1000),
            str(script),
            str(two_dir),
            fsdp,
            str(logits_file),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch.testing.assert_close(torch.load(logits_file), probe_logits(two_dir), rtol=1e-5, atol=1e-5)


def test_lora_under_fsdp2_exports_a_merged_checkpoint(tmp_path) -> None:
    metrics, out = run_cli(tmp_path, "lora", 2, "--mode", "lora")
    assert metrics["trainable_params"] == 78_080
    assert metrics["losses"][-1] < metrics["losses"][0]
    files = sorted(p.name for p in (out / "export").iterdir())  # the run's export
    assert "model.safetensors" in files and not any("adapter" in f for f in files)  # merged, plain HF
    assert probe_logits(out).shape[-1] == 32064
    backbone, _ = load_backbone(out)  # a fingerprinted checkpoint: the fingerprint matches what it builds
    assert backbone.identifier == "llama2-tiny-pure"
