"""The CLI through typer's runner and as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from llm_backbones.cli import app

pytestmark = pytest.mark.integration
runner = CliRunner()


def test_list_json_has_every_id_with_its_facts() -> None:
    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["id"]: row for row in json.loads(result.output)}
    assert rows["llama2-7b-chat"] == {
        "id": "llama2-7b-chat",
        "family": "llama2",
        "parameters": "6.74B",
        "hf_hub_path": "meta-llama/Llama-2-7b-chat-hf",
        "prompt_format": "llama2-chat",
        "decoder_layer": "LlamaDecoderLayer",
        "pad_policy": "+<PAD>, rows x64",
        "adds_bos": "true",
    }
    assert rows["vicuna-v15-13b"]["prompt_format"] == "vicuna-v15"


def test_list_table() -> None:
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    assert "Registered LLM backbones" in result.output and "llama2-tiny-pure" in result.output


def test_demo_learns_actions_and_writes_metrics(tmp_path) -> None:
    out = tmp_path / "m.json"
    result = runner.invoke(app, ["demo", "--metrics-json", str(out)])
    assert result.exit_code == 0, result.output
    assert "LLaMa2LLMBackbone" in result.output and "8,604,288 parameters" in result.output
    assert "Greedy action prediction" in result.output and "carrot" in result.output
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"backbone", "initial_loss", "final_loss", "action_token_accuracy", "seconds"}
    assert 9.0 < metrics["initial_loss"] < 12.0  # random init: near log(32064) = 10.38
    assert metrics["final_loss"] <= metrics["initial_loss"] / 10
    assert metrics["action_token_accuracy"] >= 0.9


def test_demo_rejects_bad_device() -> None:
    result = runner.invoke(app, ["demo", "--device", "tpu"])
    assert result.exit_code != 0 and "cpu or cuda" in result.output


CONVERSATION = [
    {"from": "human", "value": "<image>\nWhat action should the robot take to open the drawer?"},
    {"from": "gpt", "value": "pull"},
]


def test_prompt_renders_training_and_generation_prompts(tmp_path) -> None:
    path = tmp_path / "conv.json"
    path.write_text(json.dumps(CONVERSATION))
    result = runner.invoke(app, ["prompt", "llama2-7b-pure", "--conversation", str(path)])
    assert result.exit_code == 0, result.output
    assert "'In: What action should the robot take to open the drawer?\\nOut: pull</s>'" in result.output
    assert "'In: What action should the robot take to open the drawer?\\nOut:'" in result.output


def test_prompt_tokens_marks_supervised_span(tmp_path) -> None:
    path = tmp_path / "conv.json"
    path.write_text(json.dumps({"id": "x", "conversations": CONVERSATION}))  # a LLaVA record works too
    result = runner.invoke(app, ["prompt", "llama2-tiny-pure", "--conversation", str(path), "--tokens"])
    assert result.exit_code == 0, result.output
    assert "<s>(1)" in result.output and "</s>(2)" in result.output
    # " pull</s>" -> "▁pull" (8206... as the tokenizer splits it) and EOS: the reply's tokens are supervised
    assert "supervised (highlighted)" in result.output


def test_prompt_bad_files(tmp_path) -> None:
    result = runner.invoke(app, ["prompt", "llama2-7b-pure", "--conversation", str(tmp_path / "none.json")])
    assert result.exit_code == 1 and "does not exist" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = runner.invoke(app, ["prompt", "llama2-7b-pure", "--conversation", str(bad)])
    assert result.exit_code == 1 and "is not valid JSON" in result.output and "Traceback" not in result.output
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([{"from": "gpt", "value": "hi"}]))
    result = runner.invoke(app, ["prompt", "llama2-7b-pure", "--conversation", str(wrong)])
    assert result.exit_code == 1 and "Turn 0" in result.output


# Bad arguments and files (exit 1, one error line; Click usage errors, exit 2): tests/unit/test_bad_inputs.py.


def test_real_subprocess_entry_point() -> None:
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-m", "llm_backbones.cli", "list", "--json"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "llama2-13b-pure" in {row["id"] for row in json.loads(proc.stdout)}


def test_list_json_has_every_family() -> None:
    from llm_backbones import registered_ids

    result = runner.invoke(app, ["list", "--json"])
    rows = {row["id"]: row for row in json.loads(result.output)}
    assert list(rows) == registered_ids()
    assert rows["qwen2.5-0.5b-instruct"] == {
        "id": "qwen2.5-0.5b-instruct",
        "family": "qwen2.5",
        "parameters": "0.49B",
        "hf_hub_path": "Qwen/Qwen2.5-0.5B-Instruct",
        "prompt_format": "qwen2.5-instruct",
        "decoder_layer": "Qwen2DecoderLayer",
        "pad_policy": "+<PAD>, rows x64",
        "adds_bos": "false",
    }
    assert rows["gemma2-9b-instruct"]["decoder_layer"] == "Gemma2DecoderLayer"
    assert rows["llama3.2-1b-pure"]["prompt_format"] == "pure-llama3"
    assert rows["phi-3.5-mini-instruct"]["pad_policy"] == "=<|endoftext|> (reserved)"
    assert all(row["parameters"] for row in rows.values())


def test_list_table_shows_new_columns(monkeypatch) -> None:
    from rich.console import Console

    from llm_backbones import cli

    monkeypatch.setattr(cli, "console", Console(width=250))  # a wide terminal: no folded cells
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    for text in ("parameters", "phi-3.5-mini-instruct", "Phi3DecoderLayer", "mistral-v0.1-7b-instruct"):
        assert text in result.output
