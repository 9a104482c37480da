"""Tied input/output embeddings (Llama-3.2, Qwen2.5 0.5B-3B, Gemma-2) through resizing, inference mode and
FSDP.

The registry's own pad policies never resize these families (a reserved PAD, or a spare row), so the
resize path is exercised here with an "add" policy on tiny checkpoints that have no spare row: the
embedding must grow to a multiple of 64 with the LM head still the same tensor, in training mode and on
the meta device, and a real FSDP1 wrap must keep the one tensor in the root unit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llm_backbones import get_llm_backbone_and_tokenizer, get_spec, register_backbone
from llm_backbones.core import registry

pytestmark = pytest.mark.integration

# (registered id to copy, tiny model, rows of a checkpoint without spare rows, rows after adding <PAD>)
TIED = [
    pytest.param("llama3.2-1b-instruct", "llama3.2", 128256, 128320, id="llama3.2"),  # 128257 -> 128320
    pytest.param("qwen2.5-0.5b-instruct", "qwen2.5-small", 151665, 151680, id="qwen2.5"),  # 151666 -> 151680
    pytest.param("gemma2-2b-instruct", "gemma2", 1024, 1088, id="gemma2"),  # 1025 -> 1088
]


@pytest.fixture
def add_pad_id(monkeypatch):
    """Register `<id>-addpad`: the same entry with pad_policy="add" ("<PAD>"), for this test only."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    def make(backbone_id: str) -> str:
        new_id = f"{backbone_id}-addpad"
        register_backbone(
            dataclasses.replace(
                get_spec(backbone_id), backbone_id=new_id, pad_token="<PAD>", pad_policy="add"
            )
        )
        return new_id

    return make


@pytest.mark.parametrize(("backbone_id", "tiny", "rows", "resized"), TIED)
def test_resize_keeps_embeddings_tied(
    add_pad_id, tiny_family_model, backbone_id, tiny, rows, resized
) -> None:
    path, scratch_id = tiny_family_model(tiny, vocab_size=rows), add_pad_id(backbone_id)
    backbone, tokenizer = get_llm_backbone_and_tokenizer(scratch_id, model_path=path)
    embed, head = backbone.llm.get_input_embeddings(), backbone.llm.get_output_embeddings()
    assert tokenizer.pad_token == "<PAD>" and backbone.pad_token_id == len(tokenizer) - 1
    assert embed.weight.shape[0] == resized and head.weight is embed.weight
    assert backbone.llm.config.vocab_size == resized
    assert backbone.last_layer_finetune_modules == (embed, backbone.llm.get_decoder().layers[-1])
    # the new PAD row is mean-initialised (finite, not zero) and shared by the head
    assert (
        torch.isfinite(embed.weight[backbone.pad_token_id]).all()
        and embed.weight[backbone.pad_token_id].abs().sum() > 0
    )

    # training through the tied matrix: one gradient, from both uses
    ids = tokenizer("In: pick up the cup\nOut: ok", return_tensors="pt").input_ids
    backbone(input_ids=ids, labels=ids).loss.backward()
    assert embed.weight.grad is head.weight.grad and embed.weight.grad.abs().sum() > 0

    # inference mode sizes the meta model the same way; trained weights land tied
    fresh, _ = get_llm_backbone_and_tokenizer(scratch_id, model_path=path, inference_mode=True)
    assert fresh.llm.get_input_embeddings().weight.shape[0] == resized
    fresh.load_state_dict(backbone.state_dict())
    assert fresh.llm.get_output_embeddings().weight is fresh.llm.get_input_embeddings().weight
    backbone.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            fresh(input_ids=ids).logits, backbone(input_ids=ids).logits, rtol=0, atol=0
        )


@pytest.mark.parametrize(("backbone_id", "tiny", "rows", "resized"), TIED)
def test_registry_policy_leaves_tied_checkpoints_untouched(
    tiny_family_model, backbone_id, tiny, rows, resized
) -> None:
    path = tiny_family_model(tiny)
    backbone, _ = get_llm_backbone_and_tokenizer(backbone_id, model_path=path)
    embed = backbone.llm.get_input_embeddings().weight
    assert backbone.llm.get_output_embeddings().weight is embed
    # the checkpoint's matrix, bit for bit: no row added, none re-initialised
    checkpoint = type(backbone.llm).from_pretrained(path).get_input_embeddings().weight
    torch.testing.assert_close(embed, checkpoint, rtol=0, atol=0)


_FSDP_PROBE = r"""
import json, os, sys
import torch, torch.distributed as dist
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from llm_backbones import get_llm_backbone_and_tokenizer

dist.init_process_group("gloo", rank=0, world_size=1)
results = {}
for backbone_id, path in json.loads(sys.argv[1]).items():
    backbone, tokenizer = get_llm_backbone_and_tokenizer(backbone_id, model_path=path)
    wrapped = FSDP(backbone, auto_wrap_policy=backbone.get_fsdp_wrapping_policy(),
                   device_id=torch.device("cpu"), use_orig_params=True)
    units = [m for m in wrapped.modules() if isinstance(m, FSDP)]
    ids = tokenizer("In: pick up the red cup\nOut: ok", return_tensors="pt").input_ids
    loss = wrapped(input_ids=ids, labels=ids).loss
    loss.backward()
    results[backbone_id] = {
        "units": [type(u.module).__name__ for u in units],
        "root_params": list(units[0]._flat_param._fqns),
        "still_tied": (
            backbone.llm.get_output_embeddings().weight is backbone.llm.get_input_embeddings().weight
        ),
        "loss_finite": bool(torch.isfinite(loss)),
    }
    print("done", backbone_id, flush=True)
dist.destroy_process_group()
print("RESULT " + json.dumps(results), flush=True)
os._exit(0)  # skip interpreter teardown of the gloo threads: only the results matter
"""


def test_fsdp1_keeps_the_tied_tensor_in_the_root_unit(tiny_family_model) -> None:
    models = {
        "llama3.2-1b-instruct": str(tiny_family_model("llama3.2")),
        "qwen2.5-0.5b-instruct": str(tiny_family_model("qwen2.5-small")),
        "gemma2-2b-instruct": str(tiny_family_model("gemma2")),
    }
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = str(Path(__file__).parents[2] / "src")
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _FSDP_PROBE, json.dumps(models)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, f"stdout: {proc.stdout[-1000:]}\nstderr: {proc.stderr[-3000:]}"
    results = json.loads(proc.stdout.split("RESULT ", 1)[1])
    layer = {
        "llama3.2-1b-instruct": "LlamaDecoderLayer",
        "qwen2.5-0.5b-instruct": "Qwen2DecoderLayer",
        "gemma2-2b-instruct": "Gemma2DecoderLayer",
    }
    for backbone_id, result in results.items():
        # one root unit plus one unit per decoder layer
        assert result["units"] == ["HFCausalLLMBackbone", layer[backbone_id], layer[backbone_id]]
        # the tied matrix is flattened once, in the root unit (the LM head adds no parameter of its own)
        assert result["root_params"].count("llm.model.embed_tokens.weight") == 1
        assert not any("lm_head" in name for name in result["root_params"])
        assert result["still_tied"] and result["loss_finite"]
