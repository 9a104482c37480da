"""Exact resume under `torchrun --nproc_per_node=2` (gloo, CPU), with real SIGKILLs.

A 2-rank run is killed while saving, resumed on 2 ranks and killed again mid-training, then resumed in
1 process from the checkpoint the 2 ranks wrote. Every loss the resumed 2-rank run logs equals, bit for
bit, the one the first run logged uninterrupted; the losses of the whole run, across the change of world
size, equal an uninterrupted single-process run's to 1e-4 (sums over ranks in another order).
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
import torch

from llm_backbones import get_llm_backbone_and_tokenizer
from llm_backbones.training.finetune import run_finetune
from llm_backbones.training.loop import read_records

pytestmark = pytest.mark.distributed

sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))
from test_training_loop_resume import DATA, SETTINGS, cli_args, losses, run_until_fault  # noqa: E402


def torchrun() -> list[str]:
    with socket.socket() as sock:  # a free port: other suites may run torchrun at the same time
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
    ]


def test_killed_mid_save_and_mid_training_on_two_ranks_then_resumed_on_one(tiny_llama_dir, tmp_path) -> None:
    data = tmp_path / "data.json"
    data.write_text(json.dumps(DATA))
    run = tmp_path / "run"
    args = cli_args(data, run)
    checkpoints = run / "checkpoints"

    # 1. Killed while saving: the step-4 checkpoint (published once step 5's loss is known) has both
    # ranks' shards and DCP's .metadata written, but `latest` still names step 2.
    run_until_fault("save:4", tmp_path / "markers-1", args, torchrun())
    assert sorted(p.name for p in (checkpoints / "step-00000004.partial").iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    assert (checkpoints / "latest").read_text() == "step-00000002\n"
    uninterrupted = losses(run)  # steps 1-4, as the first run logged them
    assert len(uninterrupted) == 4 and uninterrupted[-1] < uninterrupted[0]
    assert {r["world_size"] for r in read_records(run / "metrics.jsonl")} == {2}

    # 2. Resumed on 2 ranks from step 2, killed inside step 5 (after its backward pass, before the update).
    run_until_fault("step:5", tmp_path / "markers-2", [*args, "--resume"], torchrun())
    assert losses(run) == uninterrupted  # steps 3 and 4 after resuming: bit for bit
    assert (checkpoints / "latest").read_text() == "step-00000002\n"

    # 3. The checkpoint 2 ranks wrote, resumed in 1 process: DCP reshards weights and optimizer state.
    resumed = run_finetune(data=str(data), output=str(run), resume=True, **SETTINGS)
    assert resumed.start_step == 2 and resumed.world_size == 1 and len(resumed.losses) == 3
    assert [r["world_size"] for r in read_records(run / "metrics.jsonl") if "loss" in r] == [2, 2, 1, 1, 1]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-00000004", "step-00000005"]
    reference = run_finetune(
        data=str(data), output=str(tmp_path / "reference"), **SETTINGS
    )  # 1 process, uninterrupted
    torch.testing.assert_close(losses(run), reference.losses, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(resumed.losses[:2], uninterrupted[2:], rtol=1e-4, atol=1e-4)

    backbone, tokenizer = get_llm_backbone_and_tokenizer("llama2-tiny-pure", model_path=run)
    reference_model, _ = get_llm_backbone_and_tokenizer("llama2-tiny-pure", model_path=tmp_path / "reference")
    ids = tokenizer("In: Close the door.\nOut:", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(
            backbone.eval()(input_ids=ids).logits,
            reference_model.eval()(input_ids=ids).logits,
            rtol=1e-4,
            atol=1e-4,
        )
