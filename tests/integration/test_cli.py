"""The CLI through typer's runner and as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from llm_backbones.app.cli import app

pytestmark = pytest.mark.integration
runner = CliRunner()


def test_list_json_has_every_id_with_its_facts() -> None:
    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["id"]: row for row in json.loads(result.output)}
    assert rows["llama2-7b-chat"] == {
        "id": "llama2-7b-chat",
        "llm_family": "llama2",
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
    assert set(metrics) == {
        "backbone",
        "initial_loss",
        "final_loss",
        "action_token_accuracy",
        "seconds",
        "policy",
    }
    assert 9.0 < metrics["initial_loss"] < 12.0  # random init: near log(32064) = 10.38
    assert metrics["final_loss"] <= metrics["initial_loss"] / 10
    assert metrics["action_token_accuracy"] >= 0.9
    # the whole VLA from scratch: a fresh policy predicts each image's action, in the target's own bin
    assert "predict_action from each image" in result.output
    policy = metrics["policy"]
    assert policy["vision"] == "siglip-vit-b16-224px"
    assert 9.0 < policy["initial_loss"] < 12.0 and policy["final_loss"] <= policy["initial_loss"] / 10
    assert policy["action_token_accuracy"] == 1.0
    assert policy["max_error_half_bins"] <= 1.0 + 1e-6
    # one instruction for every image, so only the image tells the actions apart: each image's action is
    # its own target's (the demo's actions, clipped to the data's q01/q99), within half a bin (< 0.004 here)
    targets = [
        [0.923, 0.408, -0.081, 0.813, 0.290, 0.582, -0.641],
        [-0.290, 0.163, -0.416, -0.094, -0.624, -0.276, 0.244],
        [-0.036, -0.118, -0.185, -0.588, 0.329, 0.570, -0.579],
        [0.353, -0.761, 0.044, -0.548, 0.116, 0.175, 0.360],
    ]
    np.testing.assert_allclose(policy["targets"], targets, rtol=0, atol=5e-4)
    np.testing.assert_allclose(policy["predicted"], targets, rtol=0, atol=0.0045)


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
        [sys.executable, "-m", "llm_backbones.app.cli", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "llama2-13b-pure" in {row["id"] for row in json.loads(proc.stdout)}


def test_info_shows_no_third_party_deprecation_warnings() -> None:
    # transformers 5 warns (FutureWarning) that `is_gradient_checkpointing` is deprecated when `info` counts
    # the trainable parameters: a notice for us, not for the CLI's user; `--debug` still shows it
    proc = subprocess.run(
        [sys.executable, "-m", "llm_backbones", "info", "llama2-tiny-pure"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "8,604,288" in proc.stdout, output
    assert "FutureWarning" not in output and "deprecated" not in output, output


def test_cli_leaves_the_callers_warning_filters_alone() -> None:
    import warnings

    assert (
        runner.invoke(app, ["list", "--json"]).exit_code == 0
    )  # imports (torch, numpy) add filters of their own
    before = list(warnings.filters)
    assert runner.invoke(app, ["list", "--json"]).exit_code == 0
    assert warnings.filters == before


def test_list_json_has_every_family() -> None:
    from llm_backbones import registered_ids

    result = runner.invoke(app, ["list", "--json"])
    rows = {row["id"]: row for row in json.loads(result.output)}
    assert list(rows) == registered_ids()
    assert rows["qwen2.5-0.5b-instruct"] == {
        "id": "qwen2.5-0.5b-instruct",
        "llm_family": "qwen2.5",
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

    from llm_backbones.app import cli

    monkeypatch.setattr(cli, "console", Console(width=250))  # a wide terminal: no folded cells
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    for text in ("parameters", "phi-3.5-mini-instruct", "Phi3DecoderLayer", "mistral-v0.1-7b-instruct"):
        assert text in result.output


def test_info_offline_llama2_7b() -> None:
    result = runner.invoke(app, ["info", "llama2-7b-pure", "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    # Llama-2-7B by hand: embeddings and head 32064 x 4096 = 131,334,144 each; per layer attention
    # 4 x 4096^2 = 67,108,864, MLP 3 x 4096 x 11008 = 135,266,304, norms 8,192 (202,383,360); 32 layers;
    # final norm 4,096. LoRA r=16: per layer 4 x 16 x (4096 + 4096) + 3 x 16 x (4096 + 11008) = 1,249,280.
    assert facts["parameters"] == 6_738_939_904
    assert facts["trainable_by_mode"] == {
        "frozen": 0,
        "full": 6_738_939_904,
        "last-layer": 465_051_648,
        "lora": 39_976_960,
    }
    assert (facts["vocab_before_pad"], facts["vocab_after_pad"]) == (32000, 32001)
    assert (facts["embedding_rows_before"], facts["embedding_rows_after"]) == (32000, 32064)
    assert (facts["pad_token"], facts["pad_token_id"], facts["bos_token_id"], facts["eos_token_id"]) == (
        "<PAD>",
        32000,
        1,
        2,
    )
    assert (facts["decoder_layer"], facts["half_precision_dtype"], facts["adds_bos"]) == (
        "LlamaDecoderLayer",
        "bfloat16",
        True,
    )


def test_info_offline_tied_qwen() -> None:
    result = runner.invoke(app, ["info", "qwen2.5-0.5b-instruct", "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    # by hand: tied embedding 151936 x 896 = 136,134,656 once; per layer q 896x896+896, k and v 896x128+128,
    # o 896x896, MLP 3 x 896 x 4864, norms 1,792 = 14,912,384; 24 layers; final norm 896.
    assert facts["parameters"] == 494_032_768
    assert facts["tied_embeddings"] is True
    assert (facts["vocab_before_pad"], facts["pad_token_id"], facts["embedding_rows_after"]) == (
        151665,
        151665,
        151936,
    )


def test_info_from_model_path_and_table(tiny_llama_dir) -> None:
    result = runner.invoke(app, ["info", "llama2-7b-pure", "--model-path", str(tiny_llama_dir), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert facts["parameters"] == 8_604_288 and facts["trainable_by_mode"]["lora"] == 78_080
    assert facts["facts_source"] == str(tiny_llama_dir)
    table = runner.invoke(app, ["info", "llama2-tiny-pure"])
    assert table.exit_code == 0 and "8,604,288" in table.output


def _command_names() -> list[str]:
    import typer.main

    return sorted(typer.main.get_command(app).commands)


@pytest.mark.parametrize("command", [[], *([name] for name in _command_names())], ids=lambda c: c or "app")
def test_dash_h_is_help_for_the_app_and_every_command(command) -> None:
    long = runner.invoke(app, [*command, "--help"])
    short = runner.invoke(app, [*command, "-h"])
    assert long.exit_code == 0 and short.exit_code == 0, short.output
    assert short.output == long.output and "Usage:" in short.output


def test_help_describes_the_cli_and_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    listed = {line.split()[1] for line in result.output.splitlines() if line.startswith("│ ")}
    assert set(_command_names()) <= listed, result.output
    description = app.info.help
    # the one paragraph names every command, so a new one cannot be left out of it
    assert all(f"`{name}`" in description for name in _command_names()), description
    assert "list the registry" not in description


def test_help_keeps_brackets_and_placeholders() -> None:
    # rich markup ate `[serve]` from the extra's install line; markdown ate `<model id>`
    serve = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert "pip install 'llm-backbones[serve]'" in serve.output, serve.output
    vla = runner.invoke(app, ["finetune-vla", "--help"], env={"COLUMNS": "200"})
    assert "hf-hub:timm/MODEL;" in vla.output, vla.output


ONE_CONVERSATION = [{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}]


def _data_file(tmp_path, records=ONE_CONVERSATION, name="one.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


FINETUNE = ["finetune", "--backbone", "llama2-tiny-pure", "--device", "cpu", "--batch-size", "1"]


def test_finetune_progress_shows_no_loss_before_the_first_step(tmp_path, monkeypatch) -> None:
    from llm_backbones.errors import FinetuneError
    from llm_backbones.training import finetune

    def stopped(*, on_ready, **kwargs):  # the bar as it stands before any step: its only render, at exit
        on_ready()  # every check passed
        raise FinetuneError("stopped before the first step")

    monkeypatch.setattr(finetune, "run_finetune", stopped)
    result = runner.invoke(app, [*FINETUNE, "--data", str(_data_file(tmp_path))], env={"COLUMNS": "200"})
    assert "step 0/10" in result.output and "stopped before the first step" in result.output, result.output
    assert "nan" not in result.output and "loss" not in result.output.split("step 0/10")[1].split("\n")[0]


def test_finetune_progress_shows_the_loss_of_the_last_step(tmp_path, monkeypatch) -> None:
    from llm_backbones.training import finetune

    def one_step(*, on_step, on_ready, **kwargs):
        on_ready()
        on_step(1, 2.5)
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "run_finetune", one_step)
    result = runner.invoke(app, [*FINETUNE, "--data", str(_data_file(tmp_path))], env={"COLUMNS": "200"})
    assert "step 1/10" in result.output and "loss 2.5000" in result.output, result.output


def _interrupted_after_a_checkpoint(output):
    """A training function that has written run_config.json and a complete checkpoint at step 2 when Ctrl-C
    comes."""

    def train(**kwargs):
        checkpoint = output / "checkpoints" / "step-00000002"
        checkpoint.mkdir(parents=True)
        (checkpoint / ".metadata").write_bytes(b"")
        (checkpoint / "meta.json").write_text("{}")
        (output / "checkpoints" / "latest").write_text("step-00000002")
        (output / "run_config.json").write_text("{}")
        raise KeyboardInterrupt

    return train


def test_finetune_ctrl_c_says_what_was_kept_and_how_to_resume(tmp_path, monkeypatch) -> None:
    from llm_backbones.training import finetune

    output = tmp_path / "run"
    monkeypatch.setattr(finetune, "run_finetune", _interrupted_after_a_checkpoint(output))
    args = [*FINETUNE, "--data", str(_data_file(tmp_path)), "--output", str(output)]
    result = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 130, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("interrupted: ") and "Traceback" not in result.output, result.output
    assert f"the last checkpoint kept is {output / 'checkpoints' / 'step-00000002'}" in line
    assert line.endswith(f"continue with: llm-backbones finetune --output {output} --resume")


def test_finetune_ctrl_c_without_output_says_nothing_was_saved(tmp_path, monkeypatch) -> None:
    from llm_backbones.training import finetune

    def train(*, on_ready, **kwargs):
        on_ready()
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "run_finetune", train)
    result = runner.invoke(app, [*FINETUNE, "--data", str(_data_file(tmp_path))], env={"COLUMNS": "300"})
    assert result.exit_code == 130
    assert "interrupted: nothing was saved (no --output)" in result.output, result.output


def test_finetune_vla_ctrl_c_gives_the_same_command_with_resume(tmp_path, monkeypatch) -> None:
    from llm_backbones.training import vla

    output = tmp_path / "vla run"
    monkeypatch.setattr(vla, "run_finetune_vla", _interrupted_after_a_checkpoint(output))
    args = ["finetune-vla", "--llm", "llama2-tiny-pure", "--vision", "clip-vit-l", "--data", "robot.jsonl"]
    args += ["--mode", "full", "--steps", "5", "--train-vision", "--output", str(output), "--overwrite"]
    result = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 130, result.output
    line = result.output.strip().splitlines()[-1]
    assert "the last checkpoint kept is" in line and "step-00000002" in line, line
    # the run folder holds its run_config.json: --output and --resume alone continue it with its own settings
    assert line.endswith(f"continue with: llm-backbones finetune-vla --output '{output}' --resume"), line


def test_finetune_vla_ctrl_c_before_the_run_folder_gives_the_options_as_given(tmp_path, monkeypatch) -> None:
    """Interrupted before run_config.json was written: the options given are repeated, with --resume."""
    from llm_backbones.training import vla

    def train(*, on_ready, **kwargs):
        on_ready()
        raise KeyboardInterrupt

    monkeypatch.setattr(vla, "run_finetune_vla", train)
    output = tmp_path / "vla run"
    args = ["finetune-vla", "--llm", "llama2-tiny-pure", "--vision", "clip-vit-l", "--data", "robot.jsonl"]
    args += ["--mode", "full", "--steps", "5", "--train-vision", "--output", str(output), "--overwrite"]
    result = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 130, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.endswith(
        "continue with: llm-backbones finetune-vla --data robot.jsonl --mode full --steps 5 "
        f"--output '{output}' --llm llama2-tiny-pure --vision clip-vit-l --train-vision --resume"
    ), line


def test_finetune_without_output_warns_at_the_start(tmp_path, monkeypatch) -> None:
    from llm_backbones.training import finetune, vla

    def train(*, on_ready, **kwargs):
        on_ready()
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "run_finetune", train)
    monkeypatch.setattr(vla, "run_finetune_vla", train)
    warning = "warning: no --output: nothing of this run will be saved"
    unsaved = runner.invoke(app, [*FINETUNE, "--data", str(_data_file(tmp_path))], env={"COLUMNS": "300"})
    assert unsaved.output.startswith(warning) and "pass --output DIR" in unsaved.output, unsaved.output
    vla_args = ["finetune-vla", "--llm", "llama2-tiny-pure", "--vision", "clip-vit-l", "--data", "r.jsonl"]
    assert runner.invoke(app, [*vla_args, "--mode", "full"]).output.startswith(warning)
    saved = [*FINETUNE, "--data", str(_data_file(tmp_path)), "--output", str(tmp_path / "run")]
    assert warning not in runner.invoke(app, saved, env={"COLUMNS": "300"}).output


OPENAI_RECORDS = [
    {
        "messages": [
            {"role": "system", "content": "You are a careful robot."},
            {"role": "user", "content": f"question {k}"},
            {"role": "assistant", "content": f"answer {k}"},
        ]
    }
    for k in range(3)
]


def test_finetune_reads_openai_messages_from_jsonl(tmp_path, monkeypatch) -> None:
    from llm_backbones.training import finetune

    seen = {}

    def train(cfg, ctx, run, conversations, *args):  # what run_finetune read, checked, and trains on
        seen["data"] = conversations
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "_train", train)
    path = tmp_path / "openai.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in OPENAI_RECORDS))
    args = [*FINETUNE, "--prompt-format", "llama2-chat-prismatic", "--data", str(path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 130 and "data" in seen, result.output
    assert seen["data"] == [record["messages"] for record in OPENAI_RECORDS]


def test_prompt_renders_the_system_turn_as_the_system_prompt(tmp_path) -> None:
    path = tmp_path / "openai.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in OPENAI_RECORDS))
    result = runner.invoke(
        app, ["prompt", "llama2-7b-chat", "--conversation", str(path)], env={"COLUMNS": "400"}
    )
    assert result.exit_code == 0, result.output
    assert "<<SYS>>\\nYou are a careful robot.\\n<</SYS>>" in result.output, result.output
    assert "holds 3 conversations" in result.output


def test_finetune_data_of_another_format_names_the_accepted_ones(tmp_path) -> None:
    path = _data_file(tmp_path, [{"prompt": "a", "completion": "b"}] * 40, "other.json")
    result = runner.invoke(app, [*FINETUNE, "--data", str(path)], env={"COLUMNS": "300"})
    assert result.exit_code == 1 and result.output.startswith("error: Record 0 of"), result.output
    for words in ("(40 in all)", "['completion', 'prompt']", '{"conversations"', '{"messages"', "JSONL"):
        assert words in result.output, result.output


def test_a_system_turn_trains_as_the_system_prompt() -> None:
    from llm_backbones.app.cli import _tokenizer_for
    from llm_backbones.data.examples import tokenize_conversation

    tokenizer = _tokenizer_for("llama2-tiny-pure", None)
    messages = OPENAI_RECORDS[0]["messages"]
    own = tokenize_conversation(tokenizer, "llama2-chat-prismatic", messages)
    given = tokenize_conversation(
        tokenizer, "llama2-chat-prismatic", messages[1:], system_prompt="You are a careful robot."
    )
    default = tokenize_conversation(tokenizer, "llama2-chat-prismatic", messages[1:])
    assert own["input_ids"].tolist() == given["input_ids"].tolist() != default["input_ids"].tolist()
    assert own["labels"].tolist() == given["labels"].tolist()
