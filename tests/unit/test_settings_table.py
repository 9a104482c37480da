"""The fine-tune settings are one table (`training.settings`): the flags of `finetune` and `finetune-vla` and
their `--help` come from it, so a setting cannot be added, renamed or re-defaulted in one place and not the
other; the table's bounds and checks are `validate`'s, and a `--config` file fills the same table."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from llm_backbones.app.cli import app
from llm_backbones.errors import FinetuneError
from llm_backbones.training.settings import FinetuneConfig, VLAFinetuneConfig

COMMANDS = {
    "finetune": (FinetuneConfig, ()),
    "finetune-vla": (VLAFinetuneConfig, VLAFinetuneConfig.NOT_FOR_VLA),
}


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def options_of(command: str) -> dict[str, object]:
    click_command = get_command(app).commands[command]
    return {p.name: p for p in click_command.params if p.param_type_name == "option"}


@pytest.mark.parametrize("command", COMMANDS)
def test_the_flags_are_the_table(command):
    """One option per row (the rows a command does not take left out) plus --config, each spelled as the row,
    with the row's help and its default."""
    table, skip = COMMANDS[command]
    rows = [row for row in dataclasses.fields(table) if row.name not in skip]
    options = options_of(command)
    assert set(options) == {row.name for row in rows} | {"config"}
    for row in rows:
        option = options[row.name]
        assert option.opts[0] == flag_of(row.name), row.name
        assert option.default is None, row.name  # only what the user gives overrides a --config file
        assert option.help.startswith(row.metadata["help"]), row.name


def test_help_shows_the_defaults_of_each_command():
    """The two recipes share rows but not all defaults: --help says each command's own."""
    finetune, vla = options_of("finetune"), options_of("finetune-vla")
    assert finetune["mode"].help.endswith("(default: full)")
    assert vla["mode"].help.endswith("(default: lora)")
    assert finetune["steps"].help.endswith("(default: 10)") and vla["steps"].help.endswith("(default: 100)")
    assert finetune["lr"].help.endswith("(default: 0.0001)") and vla["lr"].help.endswith("(default: 0.0005)")
    assert finetune["lora_rank"].help.endswith("(default: 16)")
    assert vla["lora_rank"].help.endswith("(default: 32)")
    assert vla["lora_alpha"].help.endswith("(default: min(--lora-rank, 16))")
    assert finetune["fast"].opts == ["--fast"] and finetune["fast"].secondary_opts == ["--no-fast"]
    assert "backbone" not in vla and "policy" not in finetune


@pytest.mark.parametrize("command", COMMANDS)
def test_rendered_help_names_every_row(command):
    table, skip = COMMANDS[command]
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    shown = set(re.findall(r"(--[a-z][a-z-]*)", result.output))
    expected = {flag_of(row.name) for row in dataclasses.fields(table) if row.name not in skip}
    assert expected <= shown, sorted(expected - shown)
    assert {flag_of(name) for name in skip}.isdisjoint(shown - {"--config"})


def test_table_bounds_are_checked():
    """Each row with a least value refuses one below it, naming the flag and the row's help."""
    bounded = [row for row in dataclasses.fields(FinetuneConfig) if row.metadata["low"] is not None]
    assert {row.name for row in bounded} >= {"steps", "batch_size", "grad_accum", "keep", "lora_rank"}
    for row in bounded:
        cfg = dataclasses.replace(FinetuneConfig(), **{row.name: row.metadata["low"] - 1})
        with pytest.raises(FinetuneError, match=f"--{row.name.replace('_', '-')} must be >= "):
            cfg.validate()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lora_dropout": 1.0}, "--lora-dropout must be in [0, 1), got 1.0"),
        ({"weight_decay": -0.1}, "--weight-decay must be in [0, 1), got -0.1"),
        ({"lora_alpha": 0}, "--lora-alpha must be > 0, got 0"),
    ],
)
def test_lora_and_decay_settings_are_checked(values, message):
    with pytest.raises(FinetuneError, match=re.escape(message)):
        FinetuneConfig.from_mapping(values, "options").validate()


def test_lora_alpha_defaults_per_recipe():
    """finetune: 2 x rank (r=16, alpha 32 before these were flags); finetune-vla: OpenVLA's min(rank, 16)."""
    assert FinetuneConfig().lora_kwargs() == {"r": 16, "alpha": 32, "dropout": 0.0}
    assert FinetuneConfig(lora_rank=4).lora_kwargs()["alpha"] == 8
    assert VLAFinetuneConfig().lora_kwargs() == {"r": 32, "alpha": 16, "dropout": 0.0}
    assert VLAFinetuneConfig(lora_rank=8, lora_alpha=5).lora_kwargs() == {"r": 8, "alpha": 5, "dropout": 0.0}


def test_config_file_fills_the_vla_table_and_flags_override_it(tmp_path):
    """finetune-vla reads --config as finetune does (it had no --config before the table)."""
    path = tmp_path / "vla.json"
    path.write_text(json.dumps({"lora-rank": 8, "steps": 3, "image_aug": True}))
    cfg = VLAFinetuneConfig.resolve(path, {"steps": 5})
    assert (cfg.lora_rank, cfg.steps, cfg.image_aug, cfg.mode) == (8, 5, True, "lora")
