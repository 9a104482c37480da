"""The bad-input matrix of the public API: every row is one bad input at one entry point.

Each row names the typed exception (from `llm_backbones.errors`), the builtin an old `except` clause
would have caught (the typed errors subclass it), and the words its message must contain: the bad value,
what is accepted and the fix. CLI rows run the command twice: with `--debug` (the typed exception
escapes) and without (one `error:` line, exit code 1, no traceback). Click's own usage errors (exit 2)
are listed apart. README's "Guarantees" section states the number of rows; a test keeps them equal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from unittest import mock

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from safetensors import SafetensorError
from typer.testing import CliRunner

import llm_backbones
from llm_backbones import (
    LLAMA2_MODELS,
    LLM_BACKBONES,
    ActionTokenizer,
    LLaMa2ChatPromptBuilder,
    LLaMa2LLMBackbone,
    MistralInstructPromptBuilder,
    PaddedCollator,
    PhiPromptBuilder,
    PromptBuilder,
    PurePromptBuilder,
    VicunaV15ChatPromptBuilder,
    get_llm_backbone_and_tokenizer,
    get_spec,
    insert_patch_embeddings,
    load_backbone,
    prompt_builder_for,
    register_backbone,
    save_backbone,
    tokenize_conversation,
    tokenize_prompt,
    vla_example,
)
from llm_backbones.app.cli import app
from llm_backbones.app.info import backbone_info
from llm_backbones.data.robot import open_robot_dataset
from llm_backbones.errors import (
    ActionError,
    ArgumentError,
    CheckpointError,
    ConfigMismatchError,
    ConversationError,
    DataFileError,
    FinetuneError,
    FingerprintMismatchError,
    ImageError,
    InputShapeError,
    InvalidSpecError,
    LLMBackbonesError,
    MissingDependencyError,
    ModelPathError,
    ModelWeightsError,
    NonFiniteLossError,
    NonFiniteWeightsError,
    NormStatsError,
    OutputPathError,
    PromptFormatError,
    RegistryError,
    RemoteCodeError,
    RequestFormatError,
    RobotDataError,
    ServeConfigError,
    ServingError,
    StateDictMismatchError,
    TokenizationError,
    TokenizerContractError,
    TokenizerFileError,
    UnknownBackboneError,
    UnsafeFileError,
    VLACheckpointError,
)
from llm_backbones.persistence.openvla import prismatic_vision_config, validate_norm_stats
from llm_backbones.runtime.generation import generate_greedy
from llm_backbones.training.export import export_run
from llm_backbones.training.finetune import apply_finetune_mode, run_finetune
from llm_backbones.training.vla import run_finetune_vla
from shared import padded_llama2_tokenizer

README = Path(__file__).resolve().parents[2] / "README.md"


# =====================================================================================================
# The environment rows run in: tokenizers, broken model directories and checkpoints, made on first use
# =====================================================================================================


class Env:
    def __init__(self, root: Path, tiny: Path) -> None:
        self.root, self.tiny = root, tiny

    @cached_property
    def tok(self):
        return padded_llama2_tokenizer()

    @cached_property
    def short_tok(self):
        return padded_llama2_tokenizer(model_max_length=16)

    @cached_property
    def act(self) -> ActionTokenizer:
        return ActionTokenizer(self.tok)

    @cached_property
    def act7(self) -> ActionTokenizer:
        return ActionTokenizer(self.tok, action_dim=7)

    @cached_property
    def backbone(self):
        return get_llm_backbone_and_tokenizer("llama2-tiny-pure")[0]

    @cached_property
    def meta_backbone(self):
        return get_llm_backbone_and_tokenizer("llama2-tiny-pure", inference_mode=True)[0]

    @cached_property
    def checkpoint(self) -> Path:
        return save_backbone(self.backbone, self.root / "checkpoint")

    def file(self, name: str, text: str = "x") -> Path:
        path = self.root / name
        if not path.exists():
            path.write_text(text)
        return path

    def folder(self, name: str, *files: str) -> Path:
        path = self.root / name
        if not path.exists():
            path.mkdir()
            for file in files:
                (path / file).write_text("{}")
        return path

    def model_dir(self, name: str, edit: Callable[[Path], None]) -> Path:
        """A copy of the tiny LLaMA-2 directory with `edit` applied (made once per name)."""
        path = self.root / name
        if not path.exists():
            shutil.copytree(self.tiny, path)
            edit(path)
        return path

    @cached_property
    def run(self) -> Path:
        """A tiny fine-tuning run: 1 step on one conversation, its checkpoint, its export."""
        run_finetune(
            "llama2-tiny-pure",
            [ONE_TURN],
            steps=1,
            batch_size=1,
            save_every=1,
            device="cpu",
            precision="fp32",
            output=str(self.root / "run"),
        )
        return self.root / "run"

    def run_copy(self, name: str, edit: Callable[[Path], None]) -> Path:
        """A copy of the tiny run with `edit` applied to its folder (made once per name)."""
        path = self.root / name
        if not path.exists():
            shutil.copytree(self.run, path)
            edit(path)
        return path

    def checkpoint_copy(self, name: str, edit: Callable[[Path], None]) -> Path:
        path = self.root / name
        if not path.exists():
            shutil.copytree(self.checkpoint, path)
            edit(path)
        return path


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_llama_dir) -> Env:
    return Env(tmp_path_factory.mktemp("bad_inputs"), tiny_llama_dir)


# Edits that break a model directory.
def config_update(**changes) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        config = json.loads((path / "config.json").read_text())
        config.update(changes)
        (path / "config.json").write_text(json.dumps(config))

    return edit


def config_drop(key: str) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        config = json.loads((path / "config.json").read_text())
        config.pop(key)
        (path / "config.json").write_text(json.dumps(config))

    return edit


def write(name: str, data: str | bytes) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        (path / name).write_bytes(data if isinstance(data, bytes) else data.encode())

    return edit


def truncate(name: str, keep: int | float) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        data = (path / name).read_bytes()
        (path / name).write_bytes(data[: int(keep * len(data)) if isinstance(keep, float) else keep])

    return edit


def remove(*names: str) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        for name in names:
            (path / name).unlink()

    return edit


def no_bos(path: Path) -> None:
    tok = json.loads((path / "tokenizer.json").read_text())
    tok["post_processor"] = None  # a tokenizer that adds no BOS, like Phi-2's
    (path / "tokenizer.json").write_text(json.dumps(tok))


def pickle_only(path: Path) -> None:
    from safetensors.torch import load_file

    torch.save(load_file(path / "model.safetensors"), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()


def remote_code(path: Path) -> None:
    config_update(model_type="my_arm_llm", auto_map={"AutoConfig": "configuration_arm.ArmConfig"})(path)
    (path / "configuration_arm.py").write_text("raise SystemExit('never runs')\n")


def fingerprint_update(**changes) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        fp = json.loads((path / "fingerprint.json").read_text())
        fp.update(changes)
        (path / "fingerprint.json").write_text(json.dumps(fp))

    return edit


def fingerprint_drop(*keys: str) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        fp = json.loads((path / "fingerprint.json").read_text())
        for key in keys:
            fp.pop(key)
        (path / "fingerprint.json").write_text(json.dumps(fp))

    return edit


def offline(call: Callable[[], object]) -> object:
    with mock.patch.object(huggingface_hub.constants, "HF_HUB_OFFLINE", True):
        return call()


# =====================================================================================================
# The matrix
# =====================================================================================================


@dataclass(frozen=True)
class Bad:
    id: str
    call: Callable[[Env], object]
    error: type[LLMBackbonesError]
    words: tuple[str, ...]
    old: type[Exception] = ValueError  # what an `except` clause written before the typed errors caught


def with_world_size(n: int, call: Callable[[], object]) -> object:
    """Run `call` as if torchrun had started `n` ranks (only the batch-split check runs before joining)."""
    import os
    from unittest import mock

    with mock.patch.dict(os.environ, {"WORLD_SIZE": str(n), "RANK": "0", "LOCAL_RANK": "0"}):
        return call()


def rows(*bad: Bad) -> list[Bad]:
    return list(bad)


def tiny_load(
    path_of: Callable[[Env], Path], backbone_id: str = "llama2-7b-pure", **kw
) -> Callable[[Env], object]:
    return lambda e: get_llm_backbone_and_tokenizer(backbone_id, model_path=path_of(e), **kw)


ONE_TURN = [{"from": "human", "value": "What is in the image?"}, {"from": "gpt", "value": "A red cube."}]
LONG_CONVERSATION = [
    {"from": "human", "value": "Describe every object on the table, from left to right, in detail."},
    {"from": "gpt", "value": "A red cube, a blue bowl, a green sponge and a yellow cup."},
]

IDS = rows(
    Bad(
        "get_spec-misspelled",
        lambda e: get_spec("llama2-7b-chatt"),
        UnknownBackboneError,
        ("'llama2-7b-chatt'", "Closest known ids: llama2-7b-chat", "Known ids:", "register_backbone"),
        KeyError,
    ),
    Bad(
        "prompt_builder_for-misspelled",
        lambda e: prompt_builder_for("vicuna-v16-7b"),
        UnknownBackboneError,
        ("'vicuna-v16-7b'", "vicuna-v15-7b"),
    ),
    Bad(
        "LLM_BACKBONES-misspelled",
        lambda e: LLM_BACKBONES["vicuna-v16-7b"],
        UnknownBackboneError,
        ("'vicuna-v16-7b'", "vicuna-v15-7b"),
        KeyError,
    ),
    Bad(
        "get_llm_backbone_and_tokenizer-misspelled",
        lambda e: get_llm_backbone_and_tokenizer("vicuna-v16-7b"),
        UnknownBackboneError,
        ("'vicuna-v16-7b'", "vicuna-v15-7b"),
    ),
    Bad(
        "LLAMA2_MODELS-other-family",
        lambda e: LLAMA2_MODELS["mistral-7b-instruct"],
        UnknownBackboneError,
        ("'mistral-7b-instruct'", "llama2 family", "llama2-7b-pure"),
        KeyError,
    ),
    Bad(
        "LLaMa2LLMBackbone-truncated-id",
        lambda e: LLaMa2LLMBackbone("llama2-7b"),
        UnknownBackboneError,
        ("'llama2-7b'", "Closest known ids:", "llama2-7b-pure"),
    ),
    Bad("get_spec-None", lambda e: get_spec(None), UnknownBackboneError, ("None", "Known ids:"), KeyError),
    Bad(
        "get_spec-unhashable",
        lambda e: get_spec(["llama2-7b-pure"]),
        UnknownBackboneError,
        ("['llama2-7b-pure']", "Known ids:"),
    ),
    Bad(
        "load_backbone-misspelled-override",
        lambda e: load_backbone(e.checkpoint, llm_backbone_id="llama2-7b-puer"),
        UnknownBackboneError,
        ("'llama2-7b-puer'", "llama2-7b-pure"),
    ),
    Bad(
        "load_backbone-unregistered-id-in-fingerprint",
        lambda e: load_backbone(
            e.checkpoint_copy("fp-unknown-id", fingerprint_update(backbone_id="llama2-tiny-puer"))
        ),
        UnknownBackboneError,
        ("'llama2-tiny-puer'", "llama2-tiny-pure", "register_backbone"),
    ),
    Bad(
        "register_backbone-duplicate",
        lambda e: register_backbone(get_spec("llama2-7b-pure")),
        RegistryError,
        ("'llama2-7b-pure'", "already registered", "overwrite=True"),
    ),
    Bad(
        "register_backbone-not-a-spec",
        lambda e: register_backbone({"backbone_id": "x"}),
        RegistryError,
        ("dict", "BackboneSpec("),
        TypeError,
    ),
    Bad(
        "backbone-spec-unknown-pad-policy",
        lambda e: dataclasses.replace(get_spec("llama2-7b-pure"), pad_policy="share"),
        InvalidSpecError,
        ("pad_policy='share'", "('add', 'reuse')", "reserves"),
    ),
)

ALL_BUILDERS = {
    "pure": PurePromptBuilder,
    "llama2": LLaMa2ChatPromptBuilder,
    "vicuna": VicunaV15ChatPromptBuilder,
    "mistral": MistralInstructPromptBuilder,
    "phi": PhiPromptBuilder,
}


def turns_then(cls, compat: bool, done: list[tuple[str, object]], role: object, message: object):
    """A builder given the `done` turns, then the bad one."""

    def call(e: Env) -> None:
        builder = cls("prismatic", prismatic_compat=compat)
        for r, m in done:
            builder.add_turn(r, m)
        builder.add_turn(role, message)

    return call


def potential(cls, compat: bool, message: object):
    return lambda e: cls("prismatic", prismatic_compat=compat).get_potential_prompt(message)


HUMAN, GPT = ("human", "Pick up the cup."), ("gpt", "Done.")
ROLE_ROWS = [
    # (name, done turns, role, message, words)
    ("gpt-first", [], "gpt", "Hello.", ("Turn 0", "'gpt'", "'human'", "alternate")),
    ("human-twice", [HUMAN], "human", "Again.", ("Turn 1", "'human'", "'gpt'", "alternate")),
    ("user-after-human", [HUMAN], "user", "Again.", ("Turn 1", "'user'", "'gpt'")),
    ("gpt-twice", [HUMAN, GPT], "gpt", "Done again.", ("Turn 2", "'gpt'", "'human'")),
    ("assistant-after-gpt", [HUMAN, GPT], "assistant", "Done again.", ("Turn 2", "'assistant'", "'human'")),
    ("unknown-role", [HUMAN], "robot", "Done.", ("Turn 1", "'robot'", "'gpt'", "Roles are")),
    (
        "system-role",
        [],
        "system",
        "You control a robot arm.",
        ("Turn 0", "'system'", "'human'", "system_prompt="),
    ),
    ("int-message", [HUMAN], "gpt", 42, ("Turn 1", "int", "must be a string", "Convert it to text")),
]
PROMPTS = (
    [
        Bad(
            f"{name}-{key}-{'compat' if compat else 'official'}",
            turns_then(cls, compat, done, role, message),
            ConversationError,
            words,
        )
        for key, cls in ALL_BUILDERS.items()
        for compat in (True, False)
        for name, done, role, message, words in ROLE_ROWS
    ]
    + [
        Bad(
            f"potential-None-{key}-{'compat' if compat else 'official'}",
            potential(cls, compat, None),
            ConversationError,
            ("Turn 0", "NoneType", "must be a string"),
        )
        for key, cls in ALL_BUILDERS.items()
        for compat in (True, False)
    ]
    + rows(
        Bad(
            "lone-surrogate-message",
            turns_then(PurePromptBuilder, False, [], "human", "caf\udce9"),
            ConversationError,
            ("Turn 0", "not valid Unicode", "surrogates not allowed", "UTF-8"),
        ),
        Bad(
            "bytes-message",
            turns_then(VicunaV15ChatPromptBuilder, False, [], "human", b"hi"),
            ConversationError,
            ("Turn 0", "bytes", "must be a string"),
        ),
        Bad(
            "potential-at-reply-turn",
            lambda e: _after_human(PurePromptBuilder).get_potential_prompt("Next?"),
            ConversationError,
            ("turn 1", "the next turn is the reply", "add_turn('gpt'"),
        ),
        Bad(
            "model-family-not-a-string",
            lambda e: LLaMa2ChatPromptBuilder(None),
            PromptFormatError,
            ("model_family", "NoneType", "'openvla'"),
        ),
        Bad(
            "model-family-misspelled",
            lambda e: LLaMa2ChatPromptBuilder("openvia"),
            PromptFormatError,
            ("'openvia'", "known families: openvla, prismatic", "Did you mean 'openvla'?", "system_prompt="),
        ),
        Bad(
            "system-prompt-without-slot",
            lambda e: MistralInstructPromptBuilder("openvla", system_prompt="Be brief."),
            PromptFormatError,
            ("'mistral-instruct'", "no system prompt", "'Be brief.'", "first human message"),
        ),
        Bad(
            "system-prompt-not-a-string",
            lambda e: VicunaV15ChatPromptBuilder("openvla", system_prompt=3),
            ConversationError,
            ("system_prompt", "int", "must be a string"),
        ),
        Bad(
            "system-prompt-not-a-string-no-slot",
            lambda e: PurePromptBuilder("openvla", system_prompt=["x"]),
            ConversationError,
            ("system_prompt", "list", "must be a string"),
        ),
        Bad(
            "base-builder-without-format",
            lambda e: PromptBuilder("openvla"),
            PromptFormatError,
            ("needs a format", "builder_for(name)", "PurePromptBuilder"),
        ),
        Bad(
            "prompt-format-not-a-format",
            lambda e: PromptBuilder("openvla", prompt_format=42),
            PromptFormatError,
            ("prompt_format", "int", "format name", "PromptFormat("),
        ),
    )
)


def _after_human(cls) -> PromptBuilder:
    builder = cls("openvla")
    builder.add_turn(*HUMAN)
    return builder


CONVERSATIONS = rows(
    Bad(
        "empty-conversation",
        lambda e: tokenize_conversation(e.tok, PurePromptBuilder, []),
        ConversationError,
        ("empty", "at least one human turn"),
    ),
    Bad(
        "empty-conversation-prompt",
        lambda e: tokenize_prompt(e.tok, PurePromptBuilder, []),
        ConversationError,
        ("empty", "at least one human turn"),
    ),
    Bad(
        "conversation-None",
        lambda e: tokenize_conversation(e.tok, PurePromptBuilder, None),
        ConversationError,
        ("list of turns", "NoneType", '"from": "human"'),
    ),
    Bad(
        "conversation-a-string",
        lambda e: tokenize_conversation(e.tok, PurePromptBuilder, "In: hi"),
        ConversationError,
        ("list of turns", "got str"),
    ),
    Bad(
        "turn-with-unknown-keys",
        lambda e: tokenize_conversation(
            e.tok, PurePromptBuilder, [ONE_TURN[0], {"speaker": "gpt", "text": "Hello."}]
        ),
        ConversationError,
        ("Turn 1", "'from'/'value'", "'role'/'content'", "speaker"),
    ),
    Bad(
        "turn-a-tuple",
        lambda e: tokenize_conversation(e.tok, PurePromptBuilder, [("human", "hi"), ("gpt", "yo")]),
        ConversationError,
        ("Turn 0", "tuple", "'from'/'value'"),
    ),
    Bad(
        "conversation-gpt-first",
        lambda e: tokenize_conversation(
            e.tok, PurePromptBuilder, [{"from": "gpt", "value": "Hi."}, {"from": "human", "value": "Hello."}]
        ),
        ConversationError,
        ("Turn 0", "'gpt'", "'human'"),
    ),
    Bad(
        "conversation-two-users",
        lambda e: tokenize_conversation(
            e.tok,
            VicunaV15ChatPromptBuilder,
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        ),
        ConversationError,
        ("Turn 1", "'user'", "'gpt'"),
    ),
    Bad(
        "content-None",
        lambda e: tokenize_conversation(
            e.tok, PurePromptBuilder, [ONE_TURN[0], {"role": "assistant", "content": None}]
        ),
        ConversationError,
        ("Turn 1", "NoneType", "must be a string"),
    ),
    Bad(
        "content-parts-list",
        lambda e: tokenize_conversation(
            e.tok, LLaMa2ChatPromptBuilder, [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
        ),
        ConversationError,
        ("Turn 0", "list", "must be a string", "Convert it to text"),
    ),
    Bad(
        "no-reply-to-supervise",
        lambda e: tokenize_conversation(e.tok, PurePromptBuilder, ONE_TURN[:1]),
        ConversationError,
        ("no reply", "tokenize_prompt()"),
    ),
    Bad(
        "prompt-ending-with-a-reply",
        lambda e: tokenize_prompt(e.tok, PurePromptBuilder, ONE_TURN),
        ConversationError,
        ("ends with a human turn", "2 turns", "'gpt'", "conversation[:-1]"),
    ),
    Bad(
        "over-long-cuts-the-reply",
        lambda e: tokenize_conversation(e.tok, PurePromptBuilder, ONE_TURN, max_length=12),
        TokenizationError,
        ("max_length=12", "reply 0 (turn 1)", "Raise max_length", "drop_truncated_replies=True"),
    ),
    Bad(
        "over-long-nothing-left-even-dropping",
        lambda e: tokenize_conversation(
            e.tok, PurePromptBuilder, ONE_TURN, max_length=12, drop_truncated_replies=True
        ),
        TokenizationError,
        ("max_length=12", "no supervised token", "Raise max_length"),
    ),
    Bad(
        "over-long-for-model-max-length",
        lambda e: tokenize_conversation(e.short_tok, PurePromptBuilder, LONG_CONVERSATION),
        TokenizationError,
        ("max_length=16", "reply 0 (turn 1)"),
    ),
    Bad(
        "over-long-generation-prompt",
        lambda e: tokenize_prompt(e.short_tok, PurePromptBuilder, LONG_CONVERSATION[:1]),
        TokenizationError,
        ("more than max_length=16", "cut the question", "Drop early turns"),
    ),
    Bad(
        "max-length-zero",
        lambda e: tokenize_conversation(e.tok, PurePromptBuilder, ONE_TURN, max_length=0),
        TokenizationError,
        ("max_length must be a positive integer", "got 0", "2048"),
    ),
    Bad(
        "max-length-negative",
        lambda e: tokenize_conversation(e.tok, PurePromptBuilder, ONE_TURN, max_length=-5),
        TokenizationError,
        ("positive integer", "got -5"),
    ),
    Bad(
        "max-length-a-string",
        lambda e: tokenize_prompt(e.tok, PurePromptBuilder, ONE_TURN[:1], max_length="2048"),
        TokenizationError,
        ("positive integer", "got '2048'"),
    ),
)

ACTIONS = rows(
    Bad(
        "action-nan",
        lambda e: e.act.encode([float("nan"), 0.0]),
        ActionError,
        ("finite", "nan", "Replace NaN/inf"),
    ),
    Bad("action-inf", lambda e: e.act.encode([0.0, math.inf]), ActionError, ("finite", "inf")),
    Bad(
        "action-minus-inf",
        lambda e: e.act.encode(torch.tensor([[-math.inf, 0.5]])),
        ActionError,
        ("finite", "-inf"),
    ),
    Bad("action-scalar", lambda e: e.act.encode(torch.tensor(0.3)), ActionError, ("scalar", "pass [value]")),
    Bad("action-empty", lambda e: e.act.encode([]), ActionError, ("at least one value", "(0,)", "D >= 1")),
    Bad(
        "action-empty-last-dim",
        lambda e: e.act.encode(torch.zeros(2, 0)),
        ActionError,
        ("at least one value", "(2, 0)"),
    ),
    Bad(
        "action-wrong-dim",
        lambda e: e.act7.encode(torch.zeros(4, 6)),
        ActionError,
        ("(4, 6)", "action_dim=7", "action space"),
    ),
    Bad(
        "action-ragged",
        lambda e: e.act.encode([[0.1, 0.2], [0.3]]),
        ActionError,
        ("cannot be read as numbers", "Ragged"),
    ),
    Bad(
        "action-strings",
        lambda e: e.act.encode(["0.1", "0.2"]),
        ActionError,
        ("cannot be read as numbers", "list"),
    ),
    Bad("action-a-string", lambda e: e.act.encode("0.5"), ActionError, ("str", "'0.5'", "float tensor")),
    Bad("action-None", lambda e: e.act.encode(None), ActionError, ("NoneType", "float tensor")),
    Bad(
        "action-complex",
        lambda e: e.act.encode(torch.tensor([1 + 2j])),
        ActionError,
        ("real numbers", "complex"),
    ),
    *[
        Bad(
            f"action-id-{bad}",
            lambda e, bad=bad: e.act.decode_token_ids_to_actions([31800, bad]),
            ActionError,
            (str(bad), "not action tokens", "accepted: 31744..31999", "Decode only the generated"),
        )
        for bad in (2, 31743, 32000, 32063, -1)
    ],
    Bad(
        "action-id-fraction",
        lambda e: e.act.decode_token_ids_to_actions([31800.5]),
        ActionError,
        ("31800.5", "whole numbers", "LongTensor"),
    ),
    Bad(
        "action-id-nan",
        lambda e: e.act.decode_token_ids_to_actions(torch.tensor([float("nan")])),
        ActionError,
        ("nan", "whole numbers"),
    ),
    Bad(
        "action-id-strings",
        lambda e: e.act.decode_token_ids_to_actions(["31800"]),
        ActionError,
        ("cannot be read as numbers", "integer token ids"),
    ),
    Bad(
        "action-id-bool",
        lambda e: e.act.decode_token_ids_to_actions(torch.tensor([True])),
        ActionError,
        ("must be integers", "torch.bool"),
    ),
    Bad("bins-one", lambda e: ActionTokenizer(e.tok, bins=1), ActionError, ("bins", "got 1", "256")),
    Bad(
        "bins-more-than-vocab",
        lambda e: ActionTokenizer(e.tok, bins=40000),
        ActionError,
        ("bins=40000", "32000"),
    ),
    Bad(
        "bins-onto-special-tokens",
        lambda e: ActionTokenizer(e.tok, bins=31999),
        ActionError,
        ("bins=31999", "1..31999", "1: '<s>'", "2: '</s>'", "at most 31997"),
    ),
    Bad(
        "action-range-overflows",
        lambda e: ActionTokenizer(e.tok, min_action=-1e308, max_action=1e308),
        ActionError,
        ("[-1e+308, 1e+308]", "overflows", "[-1, 1]"),
    ),
    Bad(
        "min-above-max",
        lambda e: ActionTokenizer(e.tok, min_action=1.0, max_action=-1.0),
        ActionError,
        ("min_action=1.0", "below max_action=-1.0", "-1 and 1"),
    ),
    Bad(
        "min-action-nan",
        lambda e: ActionTokenizer(e.tok, min_action=float("nan")),
        ActionError,
        ("min_action", "finite number", "nan"),
    ),
    Bad(
        "max-action-a-string",
        lambda e: ActionTokenizer(e.tok, max_action="1"),
        ActionError,
        ("max_action", "finite number", "'1'"),
    ),
    Bad(
        "action-dim-zero",
        lambda e: ActionTokenizer(e.tok, action_dim=0),
        ActionError,
        ("action_dim", "got 0"),
    ),
    Bad(
        "action-tokenizer-None",
        lambda e: ActionTokenizer(None),
        ActionError,
        ("vocab_size", "NoneType", "get_tokenizer()"),
    ),
)

_embed = torch.nn.Embedding(40, 8)
SHAPES = rows(
    Bad(
        "patches-1d-input-ids",
        lambda e: insert_patch_embeddings(_embed, torch.ones(5, dtype=torch.long), torch.zeros(1, 3, 8)),
        InputShapeError,
        ("[batch, tokens]", "(5,)", "input_ids[None]"),
    ),
    Bad(
        "patches-batch-mismatch",
        lambda e: insert_patch_embeddings(_embed, torch.ones(2, 5, dtype=torch.long), torch.zeros(1, 3, 8)),
        InputShapeError,
        ("[batch=2, patches, dim]", "(1, 3, 8)"),
    ),
    Bad(
        "patches-dim-mismatch",
        lambda e: insert_patch_embeddings(_embed, torch.ones(2, 5, dtype=torch.long), torch.zeros(2, 3, 7)),
        InputShapeError,
        ("dim 7", "have 8", "embed_dim"),
    ),
    Bad(
        "patches-insert-at-out-of-range",
        lambda e: insert_patch_embeddings(
            _embed, torch.ones(1, 5, dtype=torch.long), torch.zeros(1, 3, 8), insert_at=9
        ),
        InputShapeError,
        ("insert_at=9", "0..5", "after BOS"),
    ),
    Bad(
        "patches-mask-shape",
        lambda e: insert_patch_embeddings(
            _embed, torch.ones(1, 5, dtype=torch.long), torch.zeros(1, 3, 8), attention_mask=torch.ones(1, 4)
        ),
        InputShapeError,
        ("attention_mask", "(1, 5)", "(1, 4)"),
    ),
    Bad(
        "patches-not-a-tensor",
        lambda e: insert_patch_embeddings(_embed, [[1, 2]], torch.zeros(1, 3, 8)),
        InputShapeError,
        ("input_ids", "torch.Tensor", "list"),
    ),
    Bad(
        "collate-empty-batch",
        lambda e: PaddedCollator(model_max_length=None, pad_token_id=0)([]),
        InputShapeError,
        ("empty batch", "at least one example"),
    ),
    Bad(
        "collate-length-mismatch",
        lambda e: PaddedCollator(model_max_length=None, pad_token_id=0)(
            [{"input_ids": torch.tensor([1, 2, 3]), "labels": torch.tensor([1, 2])}]
        ),
        InputShapeError,
        ("Example 0", "3 input_ids", "2 labels", "same length"),
    ),
    Bad(
        "collate-missing-labels",
        lambda e: PaddedCollator(model_max_length=None, pad_token_id=0)([{"input_ids": torch.tensor([1])}]),
        InputShapeError,
        ("Example 0", "'labels'", "['input_ids']", "tokenize_conversation"),
    ),
)

LOADING = rows(
    Bad(
        "model-path-missing",
        tiny_load(lambda e: e.root / "absent"),
        ModelPathError,
        ("absent", "is not a directory", "HF-format checkpoint"),
        FileNotFoundError,
    ),
    Bad(
        "model-path-a-file",
        tiny_load(lambda e: e.file("weights.bin")),
        ModelPathError,
        ("weights.bin", "is not a directory"),
        FileNotFoundError,
    ),
    Bad(
        "model-path-not-a-path",
        lambda e: get_llm_backbone_and_tokenizer("llama2-7b-pure", model_path=123),
        ModelPathError,
        ("model_path must be a str or a path", "int", "123"),
        FileNotFoundError,
    ),
    Bad(
        "model-path-without-config",
        tiny_load(lambda e: e.folder("no-config", "tokenizer.json")),
        ModelPathError,
        ("no-config", "has no config.json", "save_pretrained"),
        FileNotFoundError,
    ),
    Bad(
        "config-of-another-architecture",
        tiny_load(lambda e: e.model_dir("mistral", config_update(model_type="mistral"))),
        ConfigMismatchError,
        ("is a 'mistral' model", "'llama2-7b-pure'", "needs 'llama'", "Point model_path"),
    ),
    Bad(
        "config-not-json",
        tiny_load(lambda e: e.model_dir("config-not-json", write("config.json", "{not json"))),
        ConfigMismatchError,
        ("config-not-json/config.json", "not valid JSON", "Restore it"),
    ),
    Bad(
        "config-truncated",
        tiny_load(lambda e: e.model_dir("config-truncated", truncate("config.json", 0.5))),
        ConfigMismatchError,
        ("config-truncated/config.json", "not valid JSON"),
    ),
    Bad(
        "config-a-list",
        tiny_load(lambda e: e.model_dir("config-list", write("config.json", "[1, 2]"))),
        ConfigMismatchError,
        ("config.json", "JSON list", "Restore it"),
    ),
    Bad(
        "config-unknown-model-type",
        tiny_load(lambda e: e.model_dir("unknown-type", config_update(model_type="nonexistent_arch"))),
        ConfigMismatchError,
        ("'nonexistent_arch'", "transformers cannot build", "needs a 'llama' checkpoint"),
    ),
    Bad(
        "config-without-model-type",
        tiny_load(lambda e: e.model_dir("no-type", config_drop("model_type"))),
        ConfigMismatchError,
        ("'<missing>'", "needs a 'llama' checkpoint"),
    ),
    Bad(
        "config-needing-remote-code",
        tiny_load(lambda e: e.model_dir("remote-code", remote_code)),
        RemoteCodeError,
        ("auto_map", "'my_arm_llm'", "never runs a checkpoint's code", "trust_remote_code=True"),
    ),
    Bad(
        "tokenizer-breaking-the-bos-policy",
        tiny_load(lambda e: e.model_dir("no-bos", no_bos)),
        TokenizerContractError,
        ("does not add BOS", "adds_bos=True", "model_path holds this family's tokenizer"),
    ),
    Bad(
        "tokenizer-files-missing",
        tiny_load(lambda e: e.model_dir("no-tokenizer", remove("tokenizer.json", "tokenizer_config.json"))),
        ModelPathError,
        ("no-tokenizer", "no usable tokenizer", "it holds ['config.json']", "save_pretrained"),
        FileNotFoundError,
    ),
    Bad(
        "tokenizer-json-missing",
        tiny_load(lambda e: e.model_dir("no-tokenizer-json", remove("tokenizer.json"))),
        ModelPathError,
        ("'tokenizer_config.json']", "tokenizer.json | tokenizer.model", "encodes every text to []"),
        FileNotFoundError,
    ),
    Bad(
        "weights-truncated",
        tiny_load(lambda e: e.model_dir("weights-truncated", truncate("model.safetensors", 0.5))),
        ModelWeightsError,
        ("weights-truncated/model.safetensors", "bytes)", "truncated or corrupted", "again"),
    ),
    Bad(
        "weights-header-garbage",
        tiny_load(lambda e: e.model_dir("weights-garbage", write("model.safetensors", b"\0" * 64))),
        ModelWeightsError,
        ("weights-garbage/model.safetensors (64 bytes)", "truncated or corrupted"),
    ),
    Bad(
        "weights-empty-file",
        tiny_load(lambda e: e.model_dir("weights-empty", write("model.safetensors", b""))),
        ModelWeightsError,
        ("(0 bytes)", "truncated or corrupted"),
    ),
    Bad(
        "weights-pickle-only",
        tiny_load(lambda e: e.model_dir("pickle-only", pickle_only)),
        ModelPathError,
        ("pytorch_model.bin", "safetensors only", "allow_pickle=True"),
        FileNotFoundError,
    ),
    Bad(
        "weights-missing",
        tiny_load(lambda e: e.model_dir("no-weights", remove("model.safetensors"))),
        ModelPathError,
        ("no weights", "model.safetensors", "inference_mode=True"),
        FileNotFoundError,
    ),
    Bad(
        "hub-unreachable",
        lambda e: offline(lambda: get_llm_backbone_and_tokenizer("llama2-7b-pure")),
        ModelPathError,
        ("'meta-llama/Llama-2-7b-hf'", "hub path", "model_path=", "hf_token"),
        FileNotFoundError,
    ),
)

CHECKPOINTS = rows(
    Bad(
        "load-missing-path",
        lambda e: load_backbone(e.root / "no-checkpoint"),
        ModelPathError,
        ("no-checkpoint", "is not a directory", "save_backbone wrote"),
        FileNotFoundError,
    ),
    Bad(
        "load-not-a-path",
        lambda e: load_backbone(None),
        ModelPathError,
        ("must be a str or a path", "NoneType"),
        FileNotFoundError,
    ),
    Bad(
        "load-hf-dir-without-fingerprint",
        lambda e: load_backbone(e.tiny),
        ModelPathError,
        (
            "no fingerprint.json",
            "not a checkpoint written by save_backbone",
            "get_llm_backbone_and_tokenizer",
        ),
        FileNotFoundError,
    ),
    Bad(
        "load-fingerprint-not-json",
        lambda e: load_backbone(e.checkpoint_copy("fp-garbage", write("fingerprint.json", "{"))),
        CheckpointError,
        ("fingerprint.json", "not valid JSON", "Save the backbone again"),
    ),
    Bad(
        "load-fingerprint-a-list",
        lambda e: load_backbone(e.checkpoint_copy("fp-list", write("fingerprint.json", "[]"))),
        CheckpointError,
        ("fingerprint.json", "JSON list"),
    ),
    Bad(
        "load-fingerprint-missing-fields",
        lambda e: load_backbone(e.checkpoint_copy("fp-fields", fingerprint_drop("probe_prompt"))),
        CheckpointError,
        ("lacks the fields", "probe_prompt", "Save the backbone again"),
    ),
    Bad(
        "load-fingerprint-from-the-future",
        lambda e: load_backbone(e.checkpoint_copy("fp-future", fingerprint_update(fingerprint_version=99))),
        CheckpointError,
        ("fingerprint_version=99", "Upgrade llm-backbones"),
    ),
    Bad(
        "load-fingerprint-other-pad-id",
        lambda e: load_backbone(
            e.checkpoint_copy(
                "fp-pad", fingerprint_update(special_token_ids={"bos": 1, "eos": 2, "pad": 0, "unk": 0})
            )
        ),
        FingerprintMismatchError,
        ("special_token_ids", "'pad': 0", "'pad': 32000", "another tokenizer", "ignore_fingerprint=True"),
    ),
    Bad(
        "load-with-model-path",
        lambda e: load_backbone(e.checkpoint, model_path=e.tiny),
        CheckpointError,
        ("no model_path=", "get_llm_backbone_and_tokenizer"),
    ),
    Bad(
        "load-truncated-weights-inference-mode",
        lambda e: load_backbone(
            e.checkpoint_copy("ck-truncated", truncate("model.safetensors", 0.5)), inference_mode=True
        ),
        ModelWeightsError,
        ("ck-truncated/model.safetensors", "bytes)", "truncated or corrupted"),
    ),
    Bad(
        "load-truncated-weights-training-mode",
        lambda e: load_backbone(e.checkpoint_copy("ck-truncated", truncate("model.safetensors", 0.5))),
        ModelWeightsError,
        ("ck-truncated/model.safetensors", "truncated or corrupted"),
    ),
    Bad(
        "save-not-a-backbone",
        lambda e: save_backbone(e.backbone.llm, e.root / "x"),
        CheckpointError,
        ("expects an LLMBackbone", "LlamaForCausalLM", "save_pretrained"),
    ),
    Bad(
        "save-meta-backbone",
        lambda e: save_backbone(e.meta_backbone, e.root / "meta"),
        CheckpointError,
        ("meta device", "inference_mode=True", "load_state_dict"),
    ),
    Bad(
        "save-onto-a-file",
        lambda e: save_backbone(e.backbone, e.file("a-file")),
        OutputPathError,
        ("a-file", "is a file", "a checkpoint is a directory"),
        FileNotFoundError,
    ),
    Bad(
        "save-over-a-non-checkpoint-folder",
        lambda e: save_backbone(e.backbone, e.folder("my-data", "notes.txt")),
        OutputPathError,
        ("my-data", "not a checkpoint of save_backbone", "refusing to replace"),
        FileNotFoundError,
    ),
    Bad(
        "save-under-a-file",
        lambda e: save_backbone(e.backbone, e.file("plain-file") / "ckpt"),
        OutputPathError,
        ("plain-file", "Cannot create the folder"),
        FileNotFoundError,
    ),
    Bad(
        "save-path-None",
        lambda e: save_backbone(e.backbone, None),
        OutputPathError,
        ("must be a str or a path", "NoneType"),
        FileNotFoundError,
    ),
)

FINETUNING = rows(
    Bad(
        "finetune-lr-diverges",
        lambda e: run_finetune(
            "llama2-tiny-pure", [ONE_TURN], steps=4, lr=1e30, max_grad_norm=0, batch_size=1
        ),
        NonFiniteLossError,
        ("Step 2", "nan", "not finite", "Lower --lr", "--resume"),
    ),
    Bad(
        "finetune-mode-unknown",
        lambda e: apply_finetune_mode(e.meta_backbone, "head-only"),
        FinetuneError,
        ("'head-only'", "accepted: frozen, full, last-layer, lora"),
    ),
    Bad(
        "finetune-precision-fp16",
        lambda e: run_finetune("llama2-tiny-pure", [], precision="fp16", device="cpu"),
        FinetuneError,
        ("'fp16'", "fp32 or bf16"),
    ),
    Bad(
        "finetune-batch-does-not-split",
        lambda e: with_world_size(
            3, lambda: run_finetune("llama2-tiny-pure", [], batch_size=8, device="cpu")
        ),
        FinetuneError,
        ("--batch-size 8", "3 ranks", "multiple of 3"),
    ),
    Bad(
        "finetune-vla-loaded-policy-under-torchrun",
        lambda e: with_world_size(  # a stand-in policy: the refusal comes before it is used
            2, lambda: run_finetune_vla(mock.Mock(spec=["predict_action"]), "robot.jsonl", device="cpu")
        ),
        FinetuneError,
        ("WORLD_SIZE=2", "checkpoint path", "--policy PATH"),
    ),
    Bad(
        "finetune-lora-without-peft",
        lambda e: _without_peft(lambda: run_finetune("llama2-tiny-pure", [], mode="lora", device="cpu")),
        MissingDependencyError,
        ("--mode lora needs peft", "pip install 'llm-backbones[lora]'", "--mode full"),
        old=ImportError,
    ),
    Bad(
        "finetune-vla-lora-without-peft",
        lambda e: _without_peft(
            lambda: run_finetune_vla(None, "robot.jsonl", mode="lora", llm="x", vision="y")
        ),
        MissingDependencyError,
        ("--mode lora needs peft", "pip install 'llm-backbones[lora]'"),
        old=ImportError,
    ),
    Bad(
        "finetune-device-gpu",
        lambda e: run_finetune("llama2-tiny-pure", [], device="gpu"),
        FinetuneError,
        ("'gpu'", "'cpu' or 'cuda'"),
    ),
    Bad(
        "finetune-lora-rank-zero",
        lambda e: run_finetune("llama2-tiny-pure", [], mode="lora", lora_rank=0),
        FinetuneError,
        ("--lora-rank must be >= 1", "got 0"),
    ),
    Bad(
        "finetune-lora-alpha-negative",
        lambda e: run_finetune("llama2-tiny-pure", [], lora_alpha=-8),
        FinetuneError,
        ("--lora-alpha must be > 0", "got -8", "omit it"),
    ),
    Bad(
        "finetune-lora-dropout-one",
        lambda e: run_finetune("llama2-tiny-pure", [], lora_dropout=1.0),
        FinetuneError,
        ("--lora-dropout must be in [0, 1)", "got 1.0"),
    ),
    Bad(
        "finetune-weight-decay-nan",
        lambda e: run_finetune("llama2-tiny-pure", [], weight_decay=float("nan")),
        FinetuneError,
        ("--weight-decay must be in [0, 1)", "got nan"),
    ),
    Bad(
        "generate-right-padded",
        lambda e: generate_greedy(
            e.backbone.llm, input_ids=torch.tensor([[1, 5, 0]]), attention_mask=torch.tensor([[1, 1, 0]])
        ),
        InputShapeError,
        ("left padding", "right padding", "padding_side = 'left'"),
    ),
)


def _prismatic_pt_with_a_stray_tensor(e: Env) -> Path:
    path = e.root / "stray-run" / "checkpoints" / "step-000001-epoch-00-loss=0.1000.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"llm_backbone": {"llm.x": torch.zeros(1)}}}, path)
    return path


_TWO_DATASETS = {"a": {"action": {"q01": [0], "q99": [1]}}, "b": {"action": {"q01": [0], "q99": [1]}}}
VLA = rows(
    Bad(
        "unnorm-key-ambiguous",
        lambda e: llm_backbones.unnormalize_actions([0.0], _TWO_DATASETS, None),
        NormStatsError,
        ("2 datasets", "'a', 'b'", "unnorm_key="),
        KeyError,
    ),
    Bad(
        "vla-path-not-a-checkpoint",
        lambda e: llm_backbones.load_vla_backbone(e.folder("not-vla", "notes.txt")),
        VLACheckpointError,
        ("neither an HF OpenVLA checkpoint", "Prismatic run directory"),
    ),
    Bad(
        "vla-pt-stray-tensor",
        lambda e: llm_backbones.load_vla_backbone(
            _prismatic_pt_with_a_stray_tensor(e), llm_backbone_id="llama2-tiny-pure"
        ),
        StateDictMismatchError,
        ("21 missing", "1 unexpected ['llm_backbone.llm.x']"),
    ),
    Bad(
        "vla-example-empty-instruction",
        lambda e: vla_example(e.tok, PurePromptBuilder, e.act, "  ", [0.0] * 7),
        ConversationError,
        ("instruction must be a non-empty string", "'  '", "open the drawer"),
    ),
    Bad(
        "vla-example-batch-of-actions",
        lambda e: vla_example(e.tok, PurePromptBuilder, e.act, "open it", torch.zeros(2, 7)),
        ConversationError,
        ("one action vector [D]", "(2, 7)", "per step"),
    ),
    Bad(
        "vla-decode-separator",
        lambda e: e.act.decode([29871, 31800]),
        ActionError,
        ("[29871]", "accepted: 31744..31999"),
    ),
    Bad(
        "collate-zero-max-length",
        lambda e: PaddedCollator(0, 32000),
        InputShapeError,
        ("model_max_length must be a positive integer or None, got 0", "PaddedCollator(model_max_length="),
    ),
    Bad(
        "collate-pad-id-string",
        lambda e: PaddedCollator(2048, "<PAD>"),
        InputShapeError,
        ("pad_token_id", "'<PAD>'", "backbone.pad_token_id"),
    ),
    Bad(
        "collate-left-padding",
        lambda e: PaddedCollator(2048, 0, "left"),
        InputShapeError,
        ("padding_side='left'", "right", "generate_greedy"),
    ),
    Bad(
        "collate-missing-image",
        lambda e: PaddedCollator(2048, 0)(
            [
                {"input_ids": torch.tensor([1]), "labels": torch.tensor([1]), "pixel_values": torch.zeros(3)},
                {"input_ids": torch.tensor([1]), "labels": torch.tensor([1])},
            ]
        ),
        InputShapeError,
        ("Examples [1] have no pixel_values", "image for every example"),
    ),
)

# Damaged run folders: what `export_run` and `finetune --resume` meet (each names the file and the fix).
STEP1 = "checkpoints/step-00000001"


def _flip_distcp(run: Path) -> None:
    shard = sorted((run / STEP1).glob("*.distcp"))[0]
    data = bytearray(shard.read_bytes())
    for i in range(5):
        data[len(data) // 2 + i] ^= 0xFF
    shard.write_bytes(bytes(data))


def _run_file(name: str, data: str | bytes | None) -> Callable[[Path], None]:
    """Write `data` to the run's file `name` (None: make it a folder)."""

    def edit(run: Path) -> None:
        path = run / name
        path.unlink()
        if data is None:
            path.mkdir()
        elif isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data)

    return edit


def _no_complete_checkpoint(run: Path) -> None:
    (run / "checkpoints" / "latest").unlink()
    (run / STEP1 / ".metadata").unlink()


RUN_FOLDERS = rows(
    Bad(
        "export-run-flipped-bytes-in-a-shard",
        lambda e: export_run(e.run_copy("run-flipped", _flip_distcp), output=e.root / "run-flipped-out"),
        CheckpointError,
        (".distcp is damaged", "sha256", "recorded when the checkpoint was written", "--step N"),
    ),
    Bad(
        "export-run-meta-json-a-list",
        lambda e: export_run(
            e.run_copy("run-meta-list", _run_file(f"{STEP1}/meta.json", "[1, 2]")),
            output=e.root / "run-meta-list-out",
        ),
        CheckpointError,
        ("meta.json holds a list, not an object", "Restore the file"),
    ),
    Bad(
        "export-run-latest-garbage",
        lambda e: export_run(
            e.run_copy("run-latest-garbage", _run_file("checkpoints/latest", b"\xff\xfe\x00")),
            output=e.root / "run-latest-garbage-out",
        ),
        CheckpointError,
        ("checkpoints/latest cannot be read as text", "Write the name of a complete step-N folder"),
    ),
)

CASES = (
    IDS + PROMPTS + CONVERSATIONS + ACTIONS + SHAPES + LOADING + CHECKPOINTS + FINETUNING + VLA + RUN_FOLDERS
)


# === Nothing silent: strict weights, safetensors only, contained paths, config and tokenizer
# sanity, permissions, checkpoint overwrite and file hashes ===
def _edit_tensors(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        from safetensors.torch import load_file, save_file

        state = load_file(path / "model.safetensors")
        change(state)
        save_file(state, path / "model.safetensors", metadata={"format": "pt"})

    return edit


def _poison(name: str, value: float) -> Callable[[dict], None]:
    def change(state: dict) -> None:
        state[name] = state[name].clone()
        state[name].view(-1)[7] = value

    return change


def _index_naming(shard: str, *, pickle: bool = False) -> Callable[[Path], None]:
    """Replace model.safetensors by an index whose weight_map names `shard` (written where it points)."""

    def edit(path: Path) -> None:
        from safetensors.torch import load_file

        state = load_file(path / "model.safetensors")
        target = (path / shard).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        if pickle:
            torch.save(state, target)
            (path / "model.safetensors").unlink()
        else:
            (path / "model.safetensors").rename(target)
        index = {"metadata": {}, "weight_map": dict.fromkeys(state, shard)}
        (path / "model.safetensors.index.json").write_text(json.dumps(index))

    return edit


def _weights_symlinked_outside(path: Path) -> None:
    outside = path.parent / f"{path.name}-elsewhere"
    outside.mkdir()
    (path / "model.safetensors").rename(outside / "model.safetensors")
    (path / "model.safetensors").symlink_to(outside / "model.safetensors")


def _pickle_with_objects(path: Path) -> None:
    import argparse

    from safetensors.torch import load_file

    state = load_file(path / "model.safetensors")
    torch.save({**state, "args": argparse.Namespace(lr=1e-4)}, path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()


def _flip_byte(fraction: float) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        weights = path / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[int(len(data) * fraction)] ^= 0x01  # a low mantissa bit: still a finite number
        weights.write_bytes(bytes(data))

    return edit


def _denied(
    path_of: Callable[[Env], Path], mode: int, call: Callable[[Env], object]
) -> Callable[[Env], object]:
    """Run `call` as a user without `mode` access to `path_of(e)` (simulated: the suite may run as root)."""
    import os

    def run(e: Env) -> object:
        denied, real = str(path_of(e)), os.access

        def access(path, want, *args, **kwargs):
            return False if str(path) == denied and want & mode else real(path, want, *args, **kwargs)

        with mock.patch("os.access", access):
            return call(e)

    return run


def _cache_unwritable(e: Env) -> object:
    import os

    cache = e.root / "read-only-cache"
    denied = PermissionError(13, "Permission denied", str(cache))
    with (
        mock.patch.dict(os.environ, {"LLM_BACKBONES_CACHE": str(cache)}),
        mock.patch("llm_backbones._fs.new_temp_dir", side_effect=denied),
    ):
        return get_llm_backbone_and_tokenizer("llama2-tiny-pure")


def _dangling_link(e: Env) -> Path:
    link = e.root / "link-to-nothing"
    if not link.is_symlink():
        link.symlink_to(e.root / "nothing-here")
    return link


NOTHING_SILENT = rows(
    # strict weights
    Bad(
        "weights-missing-lm-head",
        tiny_load(lambda e: e.model_dir("no-lm-head", _edit_tensors(lambda s: s.pop("lm_head.weight")))),
        StateDictMismatchError,
        (
            "no-lm-head/model.safetensors",
            "1 missing ['lm_head.weight']",
            "randomly initialised",
            "strict=False",
        ),
    ),
    Bad(
        "weights-renamed-tensor",
        tiny_load(
            lambda e: e.model_dir(
                "renamed", _edit_tensors(lambda s: s.update({"model.norm.w": s.pop("model.norm.weight")}))
            )
        ),
        StateDictMismatchError,
        ("1 missing ['model.norm.weight']", "1 unexpected ['model.norm.w']", "renamed"),
    ),
    Bad(
        "weights-wrong-shape",
        tiny_load(
            lambda e: e.model_dir(
                "wrong-shape", _edit_tensors(lambda s: s.update({"model.norm.weight": torch.ones(3, 3)}))
            )
        ),
        ModelWeightsError,
        (
            "model.norm.weight is [3, 3] in",
            "wrong-shape/model.safetensors",
            "needs [128]",
            "restore the checkpoint's own config.json",
        ),
    ),
    Bad(
        "weights-nan",
        tiny_load(
            lambda e: e.model_dir(
                "nan", _edit_tensors(_poison("model.layers.1.mlp.up_proj.weight", float("nan")))
            )
        ),
        NonFiniteWeightsError,
        (
            "model.layers.1.mlp.up_proj.weight",
            "1 NaN and 0 infinite",
            "nan/model.safetensors",
            "Restore the file",
        ),
    ),
    Bad(
        "load-missing-tensor-inference-mode",
        lambda e: load_backbone(
            e.checkpoint_copy("ck-no-norm", _edit_tensors(lambda s: s.pop("model.norm.weight"))),
            inference_mode=True,
            verify=False,
        ),
        StateDictMismatchError,
        ("1 missing ['model.norm.weight']", "strict=False", "meta device"),
    ),
    Bad(
        "load-inf-inference-mode",
        lambda e: load_backbone(
            e.checkpoint_copy("ck-inf", _edit_tensors(_poison("lm_head.weight", float("inf")))),
            inference_mode=True,
            verify=False,
        ),
        NonFiniteWeightsError,
        ("lm_head.weight", "0 NaN and 1 infinite", "ck-inf/model.safetensors"),
    ),
    # safetensors only, contained paths
    Bad(
        "index-names-a-pickle",
        tiny_load(lambda e: e.model_dir("index-pickle", _index_naming("pytorch_model.bin", pickle=True))),
        UnsafeFileError,
        (
            "model.safetensors.index.json names the weight file 'pytorch_model.bin'",
            "not a safetensors file",
            "was not opened",
            "allow_pickle=True",
        ),
    ),
    Bad(
        "index-names-weights-pt",
        tiny_load(lambda e: e.model_dir("index-pt", _index_naming("weights.pt", pickle=True))),
        UnsafeFileError,
        ("'weights.pt'", "not a safetensors file"),
    ),
    Bad(
        "index-names-a-file-outside",
        tiny_load(lambda e: e.model_dir("index-outside", _index_naming("../elsewhere/x.safetensors"))),
        UnsafeFileError,
        (
            "names '../elsewhere/x.safetensors'",
            "a path outside the checkpoint directory",
            "put a symlink to it there",
            "allow_external_files=True",
        ),
    ),
    Bad(  # transformers 5.25 refuses such shard names whatever we allow: typed here, on every version
        "index-names-a-file-outside-with-allow-external-files",
        tiny_load(
            lambda e: e.model_dir("index-outside", _index_naming("../elsewhere/x.safetensors")),
            allow_external_files=True,
        ),
        UnsafeFileError,
        ("names '../elsewhere/x.safetensors'", "transformers refuses such shard names too"),
    ),
    Bad(
        "weights-symlink-outside",
        tiny_load(lambda e: e.model_dir("linked", _weights_symlinked_outside)),
        UnsafeFileError,
        (
            "linked/model.safetensors is a symlink",
            "linked-elsewhere/model.safetensors",
            "outside the checkpoint directory",
            "allow_external_files=True",
        ),
    ),
    Bad(
        "pickle-of-objects-with-allow-pickle",
        tiny_load(lambda e: e.model_dir("pickle-objects", _pickle_with_objects), allow_pickle=True),
        ModelWeightsError,
        (
            "pickle-objects/pytorch_model.bin",
            "torch.load(weights_only=True)",
            "argparse.Namespace",
            "convert it once",
        ),
    ),
    # config.json and tokenizer files, before anything is built
    Bad(
        "config-heads-zero",
        tiny_load(lambda e: e.model_dir("heads-0", config_update(num_attention_heads=0))),
        ConfigMismatchError,
        ("heads-0/config.json", "num_attention_heads=0", "at least 1", "Fix it in"),
    ),
    Bad(
        "config-heads-not-dividing",
        tiny_load(lambda e: e.model_dir("heads-3", config_update(num_attention_heads=3))),
        ConfigMismatchError,
        ("num_attention_heads=3 does not divide hidden_size=128", "explicit head_dim"),
    ),
    Bad(
        "config-size-a-string",
        tiny_load(lambda e: e.model_dir("hidden-str", config_update(hidden_size="128"))),
        ConfigMismatchError,
        ("hidden_size='128'", "an integer is needed, got str"),
    ),
    Bad(
        "config-size-a-float",
        tiny_load(lambda e: e.model_dir("hidden-float", config_update(hidden_size=128.0))),
        ConfigMismatchError,
        ("hidden_size=128.0", "got float"),
    ),
    Bad(
        "config-size-negative",
        tiny_load(lambda e: e.model_dir("ffn-neg", config_update(intermediate_size=-344))),
        ConfigMismatchError,
        ("intermediate_size=-344", "at least 1"),
    ),
    Bad(
        "config-vocab-10**12",
        tiny_load(lambda e: e.model_dir("vocab-huge", config_update(vocab_size=10**12))),
        ConfigMismatchError,
        ("vocab_size=1000000000000", "at most 4,194,304"),
    ),
    Bad(
        "config-layers-10**6",
        tiny_load(
            lambda e: e.model_dir("layers-huge", config_update(num_hidden_layers=10**6)), inference_mode=True
        ),
        ConfigMismatchError,
        ("num_hidden_layers=1000000", "at most 1,024"),
    ),
    Bad(
        "config-field-rejected-by-transformers",
        tiny_load(lambda e: e.model_dir("eps-str", config_update(rms_norm_eps="abc"))),
        ConfigMismatchError,
        (
            "eps-str/config.json",
            "is rejected by transformers",
            "'rms_norm_eps' expected float, got str",
            "Fix the field",
        ),
    ),
    Bad(
        "tokenizer-json-empty-object",
        tiny_load(lambda e: e.model_dir("tok-empty", write("tokenizer.json", "{}"))),
        TokenizerFileError,
        ("tok-empty/tokenizer.json", "lacks 'model', 'added_tokens'", "Restore it"),
    ),
    Bad(
        "tokenizer-json-deeply-nested",
        tiny_load(lambda e: e.model_dir("tok-deep", write("tokenizer.json", "[" * 100_000 + "]" * 100_000))),
        TokenizerFileError,
        ("tok-deep/tokenizer.json", "nests JSON deeper than 64"),
    ),
    Bad(
        "tokenizer-json-huge",
        tiny_load(lambda e: e.model_dir("tok-huge", write("tokenizer.json", b" " * (64 * 2**20 + 1)))),
        TokenizerFileError,
        ("tok-huge/tokenizer.json", "above 64 MiB are refused"),
    ),
    # permissions
    Bad(
        "model-path-unreadable",
        _denied(lambda e: e.tiny, 4, tiny_load(lambda e: e.tiny)),
        ModelPathError,
        ("cannot be read (permission denied)", "chmod -R u+rX"),
        FileNotFoundError,
    ),
    Bad(
        "save-into-a-read-only-folder",
        _denied(
            lambda e: e.folder("read-only"),
            2,
            lambda e: save_backbone(e.backbone, e.folder("read-only") / "ckpt"),
        ),
        OutputPathError,
        ("read-only/ckpt", "permission denied", "chmod u+w"),
        FileNotFoundError,
    ),
    Bad(
        "embedded-cache-unwritable",
        _cache_unwritable,
        OutputPathError,
        ("embedded model 'llama2-tiny'", "read-only-cache", "permission denied", "LLM_BACKBONES_CACHE"),
        FileNotFoundError,
    ),
    # save_backbone over what it did not write
    Bad(
        "save-over-a-checkpoint-with-foreign-files",
        lambda e: save_backbone(e.backbone, e.checkpoint_copy("ck-foreign", write("notes.txt", "mine"))),
        OutputPathError,
        ("ck-foreign", "1 item(s) it did not write: notes.txt", "would delete them"),
        FileNotFoundError,
    ),
    Bad(
        "save-through-a-dangling-symlink",
        lambda e: save_backbone(e.backbone, _dangling_link(e)),
        OutputPathError,
        ("link-to-nothing is a symlink to", "nothing-here", "not a directory"),
        FileNotFoundError,
    ),
    # file hashes in the fingerprint
    Bad(
        "load-flipped-weight-byte",
        lambda e: load_backbone(e.checkpoint_copy("ck-flipped", _flip_byte(0.6)), inference_mode=True),
        FingerprintMismatchError,
        ("ck-flipped", "model.safetensors: sha256", "modified or corrupted after the save", "verify=False"),
    ),
    Bad(
        "load-edited-config",
        lambda e: load_backbone(
            e.checkpoint_copy("ck-eps", config_update(rms_norm_eps=1e-6)), inference_mode=True
        ),
        FingerprintMismatchError,
        ("config.json: sha256", "verify=False"),
    ),
    Bad(
        "load-edited-fingerprint-dtype",
        lambda e: load_backbone(
            e.checkpoint_copy("ck-dtype", fingerprint_update(dtype="float16")), inference_mode=True
        ),
        FingerprintMismatchError,
        ("dtype='float16'", "stored in 'float32'", "fingerprint.json was edited"),
    ),
)
CASES += NOTHING_SILENT


# === Actions and the VLA loader, nothing silent: un-normalizing, action statistics
# (checked once, at load), the loader's settings and files ===
_STATS = {"bridge_orig": {"action": {"q01": [-0.1, 0.0, -2.0], "q99": [0.3, 1.0, 2.0]}}}


def _stats_with(**action) -> dict:
    return {"bridge_orig": {"action": {**_STATS["bridge_orig"]["action"], **action}}}


def _vla_config_dir(e: Env, name: str, **fields) -> Path:
    """A folder holding only an HF OpenVLA config.json: the loader refuses its settings before any other
    file is read."""
    path = e.root / name
    if not path.exists():
        path.mkdir()
        config = {
            "model_type": "openvla",
            "llm_backbone_id": "llama2-tiny-pure",
            "text_config": {"model_type": "llama"},
            "n_action_bins": 256,
            "llm_max_length": 2048,
            "norm_stats": _STATS,
            **fields,
        }
        (path / "config.json").write_text(json.dumps(config))
    return path


def _config_linked_outside(e: Env) -> Path:
    path = e.root / "vla-config-link"
    if not path.exists():
        outside = _vla_config_dir(e, "vla-config-elsewhere") / "config.json"
        path.mkdir()
        (path / "config.json").symlink_to(outside)
    return path


VLA_FAULTS = rows(
    Bad(
        "unnormalize-nan-action",
        lambda e: llm_backbones.unnormalize_actions([[0.1, 0.2, 0.3], [0.0, math.nan, 0.0]], _STATS),
        ActionError,
        ("not finite at positions [(1, 1)]", "[nan]", "reach the robot", "finite numbers"),
    ),
    Bad(
        "unnormalize-inf-action",
        lambda e: llm_backbones.unnormalize_actions(torch.tensor([0.0, 0.5, -math.inf]), _STATS),
        ActionError,
        ("not finite at positions [2]", "[-inf]", "drop this step"),
    ),
    Bad(
        "unnormalize-string-actions",
        lambda e: llm_backbones.unnormalize_actions(["0.1", "0.2", "0.3"], _STATS),
        ActionError,
        ("real numbers", "str", "['0.1', '0.2', '0.3']", "decode_token_ids_to_actions"),
    ),
    Bad(
        "unnormalize-q01-above-q99",
        lambda e: llm_backbones.unnormalize_actions([0.0] * 3, _stats_with(q01=[0.5, 0.0, -2.0])),
        NormStatsError,
        (
            "norm_stats['bridge_orig']",
            "q01 is above q99 at dimensions [0]",
            "q01 [0.5], q99 [0.3]",
            "q01 <= q99",
        ),
        KeyError,
    ),
    Bad(
        "unnormalize-nan-q99",
        lambda e: llm_backbones.unnormalize_actions([0.0] * 3, _stats_with(q99=[0.3, math.nan, 2.0])),
        NormStatsError,
        ("['q99']", "not finite at dimensions [1]", "dataset_statistics.json"),
        KeyError,
    ),
    Bad(
        "unnormalize-inf-q01",
        lambda e: llm_backbones.unnormalize_actions([0.0] * 3, _stats_with(q01=[-math.inf, 0.0, -2.0])),
        NormStatsError,
        ("['q01']", "not finite at dimensions [0]"),
        KeyError,
    ),
    Bad(
        "unnormalize-mask-of-strings",
        lambda e: llm_backbones.unnormalize_actions([0.0] * 3, _stats_with(mask=["false", "false", "false"])),
        NormStatsError,
        ("['mask']", "must be 3 booleans", "'false' would count as true", "JSON true/false"),
        KeyError,
    ),
    Bad(
        "unnormalize-mask-of-twos",
        lambda e: llm_backbones.unnormalize_actions([0.0] * 3, _stats_with(mask=[2, 0, 1])),
        NormStatsError,
        ("['mask']", "int64", "[2, 0, 1]", "the integers 0/1"),
        KeyError,
    ),
    Bad(
        "unnormalize-stats-of-strings",
        lambda e: llm_backbones.unnormalize_actions([0.0] * 3, _stats_with(q01=["-0.1", "0", "-2"])),
        NormStatsError,
        ("['q01']", "list of numbers", "['-0.1', '0', '-2']"),
        KeyError,
    ),
    Bad(
        "validate-norm-stats-second-dataset",
        lambda e: validate_norm_stats(
            {**_STATS, "fractal": {"action": {"q01": [0.0, 0.0], "q99": [1.0, 1.0, 1.0]}}},
            source="run/x.json",
        ),
        NormStatsError,
        ("norm_stats['fractal'] (in run/x.json)", "q01 has 2 values and q99 3"),
        KeyError,
    ),
    Bad(
        "validate-norm-stats-a-list",
        lambda e: validate_norm_stats([_STATS]),
        NormStatsError,
        ("are a list", "{dataset: {'action':"),
        KeyError,
    ),
    Bad(
        "prismatic-vision-unknown-base-vlm",
        lambda e: prismatic_vision_config({"vla": {"base_vlm": "prism-dinosiglip-224px+8b"}}),
        VLACheckpointError,
        (
            "vla.base_vlm='prism-dinosiglip-224px+8b'",
            "closest: prism-dinosiglip-224px+7b",
            "PRISMATIC_MODELS",
        ),
    ),
    Bad(
        "prismatic-vision-model-without-strategy",
        lambda e: prismatic_vision_config({"model": {"vision_backbone_id": "dinosiglip-vit-so-224px"}}),
        VLACheckpointError,
        ("model.image_resize_strategy=None", "model.vision_backbone_id and model.image_resize_strategy"),
    ),
    Bad(
        "vla-n-action-bins-zero-argument",
        lambda e: llm_backbones.load_vla_backbone(e.folder("vla-any"), n_action_bins=0),
        VLACheckpointError,
        ("n_action_bins= (the argument)", "n_action_bins=0", "integer >= 2", "256"),
    ),
    Bad(
        "vla-n-action-bins-bool-argument",
        lambda e: llm_backbones.load_vla_backbone(e.folder("vla-any"), n_action_bins=True),
        VLACheckpointError,
        ("n_action_bins=True", "integer >= 2"),
    ),
    Bad(
        "vla-llm-max-length-negative-argument",
        lambda e: llm_backbones.load_vla_backbone(e.folder("vla-any"), llm_max_length=-5),
        ConfigMismatchError,
        ("llm_max_length= (the argument)", "llm_max_length=-5", "at least 1", "2048"),
    ),
    Bad(
        "vla-llm-max-length-bool-argument",
        lambda e: llm_backbones.load_vla_backbone(e.folder("vla-any"), llm_max_length=True),
        ConfigMismatchError,
        ("llm_max_length=True", "an integer is needed, got bool"),
    ),
    Bad(
        "vla-allow-external-files-a-string",
        lambda e: llm_backbones.load_vla_backbone(e.folder("vla-any"), allow_external_files="no"),
        VLACheckpointError,
        ("allow_external_files='no'", "True or False", "symlinks you trust"),
    ),
    Bad(
        "vla-config-n-action-bins-zero",
        lambda e: llm_backbones.load_vla_backbone(_vla_config_dir(e, "vla-bins-zero", n_action_bins=0)),
        VLACheckpointError,
        ("vla-bins-zero/config.json", "n_action_bins=0", "integer >= 2", "pass n_action_bins=256"),
    ),
    Bad(
        "vla-config-llm-max-length-negative",
        lambda e: llm_backbones.load_vla_backbone(_vla_config_dir(e, "vla-len-neg", llm_max_length=-1)),
        ConfigMismatchError,
        ("vla-len-neg/config.json", "llm_max_length=-1", "at least 1"),
    ),
    Bad(
        "vla-config-norm-stats-swapped",
        lambda e: llm_backbones.load_vla_backbone(
            _vla_config_dir(
                e, "vla-swapped", norm_stats=_stats_with(q01=[0.3, 1.0, 2.0], q99=[-0.1, 0.0, -2.0])
            )
        ),
        NormStatsError,
        (
            "norm_stats['bridge_orig'] (in",
            "vla-swapped/config.json",
            "q01 is above q99 at dimensions [0, 1, 2]",
        ),
        KeyError,
    ),
    Bad(
        "vla-config-linked-outside",
        lambda e: llm_backbones.load_vla_backbone(_config_linked_outside(e)),
        UnsafeFileError,
        (
            "vla-config-link/config.json is a symlink",
            "vla-config-elsewhere",
            "outside the checkpoint directory",
        ),
    ),
    # the policy's images (llm_backbones.vla): its error class needs a row too
    Bad(
        "vla-images-none-given",
        lambda e: _dinosiglip_processor()([]),
        ImageError,
        ("No images given", "one image or a non-empty list"),
    ),
    Bad(
        "vla-image-thin-strip",
        lambda e: _dinosiglip_processor()(np.zeros((1, 2000, 3), dtype=np.uint8)),
        ImageError,
        ("1 x 2000 pixels", "camera frames", "16x"),
    ),
    Bad(
        "vla-image-float-nan",
        lambda e: _dinosiglip_processor()(np.full((8, 8, 3), np.nan, dtype=np.float32)),
        ImageError,
        ("finite values in [0, 1]", "NaN/inf", "uint8"),
    ),
    Bad(
        "vla-constrain-flag-string",
        lambda e: llm_backbones.load_vla("any-path", constrain_to_actions="no"),
        VLACheckpointError,
        ("constrain_to_actions", "'no'", "True or False"),
    ),
    Bad(
        "vla-vision-depth-one",
        lambda e: _vision_tower(depth=1),
        VLACheckpointError,
        ("at least 2 blocks", "depth=1", "vit_large_patch14_clip_224.openai"),
    ),
    Bad(
        "action-decode-strict-string",
        lambda e: e.act.decode([31800], strict="no"),
        ActionError,
        ("strict='no'", "a bool is needed", "True or False"),
    ),
    Bad(
        "norm-stats-range-overflows",
        lambda e: validate_norm_stats(
            {"robot": {"action": {"q01": [-1e308], "q99": [1e308]}}}, source="s.json"
        ),
        NormStatsError,
        ("q99 - q01 overflows", "[0]", "s.json"),
    ),
)
CASES += VLA_FAULTS


# === The policy server: its settings, requests, client and extra, called directly (the same
# refusals over HTTP, with their statuses: tests/integration/test_serve.py) ===
def _npy_pickle() -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def _check_unnorm_key(stats, key):
    from llm_backbones.persistence.openvla import check_unnorm_key

    return check_unnorm_key(stats, key)


def _unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serving(module: str):
    import importlib

    return importlib.import_module(f"llm_backbones.serving.{module}")


def _decode(body: bytes, content_type: str, query: dict | None = None):
    return _serving("protocol").decode_request(body, content_type, query or {})


def _client(url: str):
    return _serving("client").PolicyClient(url, timeout=5)


SERVING = (
    Bad(
        "serve-max-batch-0",
        lambda e: _serving("batching").BatchingQueue(lambda *a: None, max_batch=0),
        ServeConfigError,
        ("max_batch must be an int >= 1", "got 0"),
    ),
    Bad(
        "serve-body-limit-0",
        lambda e: _serving("server").create_app(None, max_body_bytes=0),
        ServeConfigError,
        ("max_body_bytes must be a positive int", "got 0"),
    ),
    Bad(
        "serve-extra-missing",
        lambda e: _serving("protocol").require_serve_packages("no_such_module_for_this_row"),
        MissingDependencyError,
        ("no-such-module-for-this-row", "pip install 'llm-backbones[serve]'"),
        old=ImportError,
    ),
    Bad(
        "serve-request-not-json",
        lambda e: _decode(b"{nope", "application/json"),
        RequestFormatError,
        ("not valid JSON with json-numpy", "json_numpy.patch()"),
    ),
    Bad(
        "serve-request-content-type",
        lambda e: _decode(b"x", "text/plain"),
        RequestFormatError,
        ("'text/plain' is not accepted", "application/json", "application/x-npy"),
    ),
    Bad(
        "serve-request-npy-pickle",
        lambda e: _decode(_npy_pickle(), "application/x-npy", {"instruction": "wipe"}),
        RequestFormatError,
        ("not a .npy array", "np.save"),
    ),
    Bad(
        "serve-client-url-without-scheme",
        lambda e: _client("127.0.0.1:8000"),
        ServingError,
        ("must be http://HOST:PORT", "'127.0.0.1:8000'"),
        old=RuntimeError,
    ),
    Bad(
        "serve-client-no-server",
        lambda e: _client(f"http://127.0.0.1:{_unused_port()}").act(np.zeros((2, 2, 3), np.uint8), "wipe"),
        ServingError,
        ("No answer from the policy server at http://127.0.0.1:", "llm-backbones serve"),
        old=RuntimeError,
    ),
    Bad(
        "serve-unnorm-key-not-a-string",
        lambda e: _check_unnorm_key(_STATS, ["bridge_orig"]),
        NormStatsError,
        ("unnorm_key must be a string", "got list", "'bridge_orig'"),
    ),
)
CASES += SERVING

# robot datasets (llm_backbones.data.robot; its bad-data matrix is tests/unit/test_robot_data.py): one row for
# its error class
ROBOT_DATA = (
    Bad(
        "robot-data-history-refused",
        lambda e: open_robot_dataset(e.root, history=2),
        RobotDataError,
        ("history=2", "multi-frame inputs are out of scope", "history=1"),
    ),
)
CASES += ROBOT_DATA


# === One loading path (core/backbones/files.py): what every loader now refuses ===
def _cut_vocabulary(pieces: int) -> Callable[[Path], None]:
    """Keep the first `pieces` pieces of the BPE tokenizer.json (and the merges among them)."""

    def edit(path: Path) -> None:
        tok = json.loads((path / "tokenizer.json").read_text())
        vocab = {piece: i for piece, i in tok["model"]["vocab"].items() if i < pieces}
        merges = []
        for merge in tok["model"]["merges"]:
            left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
            if left in vocab and right in vocab and left + right in vocab:
                merges.append(merge)
        tok["model"]["vocab"], tok["model"]["merges"] = vocab, merges
        (path / "tokenizer.json").write_text(json.dumps(tok))

    return edit


def _tokenizer_config_update(**changes) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        config = json.loads((path / "tokenizer_config.json").read_text())
        config.update(changes)
        (path / "tokenizer_config.json").write_text(json.dumps(config))

    return edit


def _chat_template_linked_outside(path: Path) -> None:
    outside = path.parent / f"{path.name}-elsewhere.jinja"
    outside.write_text("{{ messages }}")
    (path / "additional_chat_templates").mkdir()
    (path / "additional_chat_templates" / "tool_use.jinja").symlink_to(outside)


def _swap_two_pieces(path: Path) -> None:
    tok = json.loads((path / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["▁the"], vocab["▁and"] = vocab["▁and"], vocab["▁the"]
    (path / "tokenizer.json").write_text(json.dumps(tok))


ONE_LOADING_PATH = rows(
    Bad(
        "tokenizer-embedding-of-1000-rows",
        tiny_load(lambda e: e.model_dir("rows-1000", config_update(vocab_size=1000)), inference_mode=True),
        TokenizerContractError,
        ("32,001 pieces", "1,000 rows", "at most 64 pieces more than rows", "copy the tokenizer files"),
    ),
    Bad(
        "tokenizer-of-1000-pieces",
        tiny_load(lambda e: e.model_dir("pieces-1000", _cut_vocabulary(1000)), inference_mode=True),
        TokenizerContractError,
        ("1,001 pieces", "32,000 rows", "at most 1024 spare rows", "copy the tokenizer files"),
    ),
    Bad(
        "tokenizer-auto-map",
        tiny_load(
            lambda e: e.model_dir(
                "tok-auto-map", _tokenizer_config_update(auto_map={"AutoTokenizer": ["tok_arm.ArmTok", None]})
            ),
            inference_mode=True,
        ),
        RemoteCodeError,
        ("auto_map: {'AutoTokenizer'", "never skips it quietly", "trust_remote_code=True"),
    ),
    Bad(
        "tokenizer-class-of-remote-code",
        tiny_load(
            lambda e: e.model_dir("tok-class", _tokenizer_config_update(tokenizer_class="ArmTokenizer")),
            inference_mode=True,
        ),
        RemoteCodeError,
        ("tokenizer_class 'ArmTokenizer'", "not a transformers class", "trust_remote_code=True"),
    ),
    Bad(
        "chat-template-linked-outside",
        tiny_load(lambda e: e.model_dir("template-link", _chat_template_linked_outside), inference_mode=True),
        UnsafeFileError,
        (
            "additional_chat_templates/tool_use.jinja is a symlink",
            "template-link-elsewhere.jinja",
            "allow_external_files=True",
        ),
    ),
    Bad(
        "load-backbone-hashes-removed",
        lambda e: load_backbone(e.checkpoint_copy("fp-no-hashes", fingerprint_drop("file_sha256"))),
        FingerprintMismatchError,
        ("has no file_sha256", "cannot be verified", "verify=False"),
        ValueError,
    ),
    Bad(
        "load-backbone-tokenizer-swapped",
        lambda e: load_backbone(
            e.checkpoint_copy("fp-tok-swapped", _swap_two_pieces),
            inference_mode=True,
            ignore_fingerprint=True,
        ),
        FingerprintMismatchError,
        ("tokenizer.json: sha256", "modified or corrupted", "verify=False"),
        ValueError,
    ),
    Bad(
        "info-config-not-json",
        lambda e: backbone_info(
            "llama2-7b-pure", model_path=e.model_dir("info-broken-config", write("config.json", "{ broken"))
        ),
        ConfigMismatchError,
        ("info-broken-config/config.json is not valid JSON", "the model's config", "Restore it"),
    ),
)
CASES += ONE_LOADING_PATH


# === Arguments are what they say: flags, dtypes, attention, keywords, prompt formats, generation inputs,
# the collator's ids, config.json fields transformers rejects deep inside, broken tokenizer files, a full disk
def _tiny(**kw) -> Callable[[Env], object]:
    return lambda e: get_llm_backbone_and_tokenizer("llama2-tiny-pure", **kw)


def _greedy(backbone: str = "backbone", **kw) -> Callable[[Env], object]:
    def call(e: Env) -> object:
        if "input_ids" not in kw and "inputs_embeds" not in kw:
            kw["input_ids"] = torch.tensor([[1, 319, 2]])
        return generate_greedy(getattr(e, backbone).llm, **kw)

    return call


def _without_flash_attn(call: Callable[[Env], object], e: Env) -> object:
    """`call` where flash-attn cannot run (as on every CPU machine, and GPU ones without the package)."""
    with mock.patch("transformers.utils.is_flash_attn_2_available", lambda: False):
        return call(e)


def _without_peft(call: Callable[[], object]) -> object:
    """`call` where peft is not installed (`import peft` raises ImportError)."""
    with _no_peft():
        return call()


def _tokenizer_json_broken(path: Path) -> None:
    tok = json.loads((path / "tokenizer.json").read_text())
    tok["model"]["vocab"] = "not a vocabulary"  # valid JSON, not a tokenizer the library can build
    (path / "tokenizer.json").write_text(json.dumps(tok))


def _save_on_a_full_disk(e: Env, fault: BaseException, where: str) -> object:
    """save_backbone with the writer of `where` failing as a full disk makes it fail."""

    def fail(*args, **kwargs):
        raise fault

    with mock.patch(where, fail):
        return save_backbone(e.backbone, e.root / "full-disk")


_ENOSPC_SAFETENSORS = (
    'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
)
_ONE_EXAMPLE = {"input_ids": [1, 319, 322, 2], "labels": [-100, -100, 322, 2]}
ARGUMENTS = rows(
    Bad(
        "llm_max_length-0",
        _tiny(llm_max_length=0),
        ConfigMismatchError,
        ("llm_max_length= (the argument)", "llm_max_length=0", "at least 1", "2048"),
    ),
    Bad(
        "llm_max_length-negative",
        _tiny(llm_max_length=-1),
        ConfigMismatchError,
        ("llm_max_length=-1", "at least 1"),
    ),
    Bad(
        "llm_max_length-fraction",
        _tiny(llm_max_length=2.5),
        ConfigMismatchError,
        ("llm_max_length=2.5", "an integer is needed, got float", "2048"),
    ),
    Bad(
        "llm_max_length-bool",
        _tiny(llm_max_length=True),
        ConfigMismatchError,
        ("llm_max_length=True", "an integer is needed, got bool"),
    ),
    Bad(
        "inference_mode-string",
        _tiny(inference_mode="no"),
        ArgumentError,
        ("inference_mode='no'", "a bool is needed, got str", "True or False", "inference_mode=False"),
    ),
    Bad(
        "strict-string",
        _tiny(strict="no", inference_mode=True),
        ArgumentError,
        ("strict='no'", "a bool is needed", "strict=False"),
    ),
    Bad(
        "load_backbone-ignore_fingerprint-string",
        lambda e: load_backbone(e.root / "never-read", ignore_fingerprint="no"),
        ArgumentError,
        ("ignore_fingerprint='no'", "a bool is needed", "ignore_fingerprint=True"),
    ),
    Bad(
        "dtype-integer",
        _tiny(dtype=torch.int64, inference_mode=True),
        ArgumentError,
        ("dtype=torch.int64", "not a floating dtype", "torch.bfloat16"),
    ),
    Bad(
        "dtype-float128",
        _tiny(dtype="float128", inference_mode=True),
        ArgumentError,
        ("dtype='float128'", "torch has no dtype 'float128'", "torch.float32"),
    ),
    Bad(
        "attn_implementation-unknown",
        _tiny(attn_implementation="nonsense", inference_mode=True),
        ArgumentError,
        ("attn_implementation='nonsense'", "'sdpa'", "'flash_attention_2'", "leave it unset"),
    ),
    Bad(
        "attn_implementation-not-a-str",
        _tiny(attn_implementation=5, inference_mode=True),
        ArgumentError,
        ("attn_implementation=5", "a str is needed, got int", "'eager'"),
        TypeError,
    ),
    Bad(
        "attn_implementation-flash-attention-2-missing",
        lambda e: _without_flash_attn(_tiny(attn_implementation="flash_attention_2", inference_mode=True), e),
        MissingDependencyError,
        ("attn_implementation='flash_attention_2'", "flash-attn", "attn_implementation='sdpa'"),
        ImportError,
    ),
    Bad(
        "get_llm_backbone_and_tokenizer-unknown-keyword",
        _tiny(atn_implementation="sdpa"),
        ArgumentError,
        ("takes no keyword 'atn_implementation'", "Did you mean attn_implementation=?", "model_path"),
        TypeError,
    ),
    Bad(
        "load_backbone-unknown-keyword",
        lambda e: load_backbone(e.root / "never-read", dtyp=torch.float16),
        ArgumentError,
        ("load_backbone takes no keyword 'dtyp'", "Did you mean dtype=?"),
        TypeError,
    ),
    Bad(
        "prompt_format-of-another-vocabulary",
        _tiny(prompt_format="qwen2.5-instruct", inference_mode=True),
        PromptFormatError,
        (
            "prompt_format='qwen2.5-instruct'",
            "'llama2-tiny-pure'",
            "'<|im_end|>' ->",
            "'pure', 'pure-prismatic'",
        ),
    ),
    # generation
    Bad(
        "generate-nan-embeddings",
        _greedy(inputs_embeds=torch.full((1, 3, 64), float("nan"))),
        ArgumentError,
        ("inputs_embeds holds 192 NaN or infinite values", "pass finite embeddings"),
    ),
    Bad(
        "generate-integer-embeddings",
        _greedy(inputs_embeds=torch.ones((1, 3, 64), dtype=torch.long)),
        ArgumentError,
        ("inputs_embeds must be floating", "torch.int64", "input_ids="),
    ),
    Bad(
        "generate-fractional-mask",
        _greedy(attention_mask=torch.full((1, 3), 0.5)),
        ArgumentError,
        ("only 0 (padding) and 1", "got 0.5", "tokenizer's mask"),
    ),
    Bad(
        "generate-prompt-beyond-positions",
        _greedy(input_ids=torch.ones((1, 4097), dtype=torch.long)),
        InputShapeError,
        ("4,097 tokens", "the model has 4,096 (max_position_embeddings)", "Shorten the prompt"),
    ),
    Bad(
        "generate-max-new-tokens-beyond-positions",
        _greedy(max_new_tokens=10**9),
        InputShapeError,
        ("max_new_tokens=1,000,000,000", "4,096 (max_position_embeddings)", "at most 4,093"),
    ),
    Bad(
        "generate-weights-never-loaded",
        _greedy("meta_backbone"),
        ModelWeightsError,
        ("meta device", "inference_mode=True", "load_backbone(dir, inference_mode=True)"),
    ),
    Bad(
        "hf-generate-weights-never-loaded",
        lambda e: e.meta_backbone.generate(input_ids=torch.tensor([[1, 319]]), max_new_tokens=2),
        ModelWeightsError,
        ("generate() needs the model's weights", "meta device", "load_state_dict"),
    ),
    # the collator
    Bad(
        "collator-fractional-ids",
        lambda e: PaddedCollator(16, 32000)([{"input_ids": [1.0, 319.7, 2.0], "labels": [-100, 319, 2]}]),
        ArgumentError,
        ("Example 0: input_ids has dtype torch.float32", "319.7", "integer ids"),
    ),
    Bad(
        "collator-fractional-labels",
        lambda e: PaddedCollator(16, 32000)([{"input_ids": [1, 319, 2], "labels": [-100.0, 319.5, 2.0]}]),
        ArgumentError,
        ("Example 0: labels has dtype torch.float32", "319.5"),
    ),
    Bad(
        "collator-negative-ids",
        lambda e: PaddedCollator(16, 32000)(
            [_ONE_EXAMPLE, {"input_ids": [1, -5, 2], "labels": [-100, 5, 2]}]
        ),
        ArgumentError,
        ("Example 1: input_ids holds -5", "ids >= 0", "rebuild it"),
    ),
    Bad(
        "collator-truncation-leaves-no-supervision",
        lambda e: PaddedCollator(2, 32000)([_ONE_EXAMPLE, _ONE_EXAMPLE]),
        TokenizationError,
        ("2 examples has no supervised token", "model_max_length=2 cut all of them", "[4, 4] tokens", "NaN"),
    ),
    # config.json fields transformers rejects deep inside
    Bad(
        "config-unknown-rope-type",
        tiny_load(
            lambda e: e.model_dir(
                "rope-warp", config_update(rope_scaling={"rope_type": "warp", "factor": 2.0})
            ),
            inference_mode=True,
        ),
        ConfigMismatchError,
        ("rope-warp/config.json: rope_scaling.rope_type='warp'", "'llama3'", "'yarn'", "base model's config"),
    ),
    Bad(
        "config-unknown-hidden-act",
        tiny_load(
            lambda e: e.model_dir("act-swishy", config_update(hidden_act="swishy")), inference_mode=True
        ),
        ConfigMismatchError,
        ("act-swishy/config.json: hidden_act='swishy'", "Did you mean 'swish'?", "'silu'"),
    ),
    Bad(
        "config-torch-dtype-float128",
        tiny_load(
            lambda e: e.model_dir("dtype-128", config_update(torch_dtype="float128")), inference_mode=True
        ),
        ConfigMismatchError,
        ("dtype-128/config.json: torch_dtype='float128'", "torch has no dtype", "torch.bfloat16"),
    ),
    Bad(
        "config-pad-id-beyond-vocabulary",
        tiny_load(lambda e: e.model_dir("pad-99999", config_update(pad_token_id=99999)), inference_mode=True),
        ConfigMismatchError,
        ("pad-99999/config.json: pad_token_id=99999", "at most 31,999", "vocab_size=32000"),
    ),
    Bad(
        "config-bitsandbytes-not-installed",
        tiny_load(
            lambda e: e.model_dir(
                "bnb-4bit",
                config_update(quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True}),
            )
        ),
        MissingDependencyError,
        ("bnb-4bit/config.json", "quant_method='bitsandbytes'", "pip install bitsandbytes", "unquantized"),
        ImportError,
    ),
    Bad(
        "tokenizer-json-broken-contents",
        tiny_load(lambda e: e.model_dir("tok-broken", _tokenizer_json_broken), inference_mode=True),
        TokenizerFileError,
        ("tok-broken cannot build a tokenizer", "refused tokenizer.json", "Restore it", "save_pretrained"),
    ),
    # a full disk
    Bad(
        "save-weights-on-a-full-disk",
        lambda e: _save_on_a_full_disk(
            e, SafetensorError(_ENOSPC_SAFETENSORS), "transformers.modeling_utils.safe_save_file"
        ),
        CheckpointError,
        ("full-disk", "writing model.safetensors", "the disk is full", "Nothing was lost", "another disk"),
    ),
    Bad(
        "save-tokenizer-on-a-full-disk",
        lambda e: _save_on_a_full_disk(
            e,
            OSError(errno.ENOSPC, "No space left on device"),
            "llm_backbones.persistence.checkpoint._write_tokenizer",
        ),
        CheckpointError,
        ("full-disk", "writing tokenizer.json", "the disk is full", "previous checkpoint"),
    ),
)
CASES += ARGUMENTS


def _vision_tower(depth: int):
    from llm_backbones.vla.vision import VisionTower, get_vision_spec

    return VisionTower(get_vision_spec("clip-vit-l").towers[0], depth)


def _dinosiglip_processor():
    from llm_backbones.vla.image_processing import ImageProcessor
    from llm_backbones.vla.vision import get_vision_spec

    return ImageProcessor.from_vision_spec(get_vision_spec("dinosiglip-vit-so-224px"), "resize-naive")


@dataclass(frozen=True)
class BadCli:
    id: str
    args: Callable[[Env], list[str]]
    error: type[LLMBackbonesError]
    words: tuple[str, ...]
    # the state the command runs in, such as an optional package missing (default: none changed)
    setting: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


CLI_CASES = [
    BadCli(
        "cli-misspelled-backbone",
        lambda e: ["demo", "--backbone", "llama2-7b-chatt"],
        UnknownBackboneError,
        ("Unknown LLM backbone id 'llama2-7b-chatt'", "Closest known ids: llama2-7b-chat"),
    ),
    BadCli(
        "cli-model-path-missing",
        lambda e: ["demo", "--model-path", str(e.root / "absent")],
        ModelPathError,
        ("absent", "is not a directory"),
    ),
    BadCli(
        "cli-model-path-a-file",
        lambda e: ["demo", "--model-path", str(e.file("weights.bin"))],
        ModelPathError,
        ("weights.bin", "is not a directory"),
    ),
    BadCli(
        "cli-model-path-bad-config",
        lambda e: [
            "demo",
            "--model-path",
            str(e.model_dir("config-not-json", write("config.json", "{not json"))),
        ],
        ConfigMismatchError,
        ("config.json", "not valid JSON"),
    ),
    BadCli(
        "cli-model-path-truncated-weights",
        lambda e: [
            "demo",
            "--model-path",
            str(e.model_dir("weights-truncated", truncate("model.safetensors", 0.5))),
        ],
        ModelWeightsError,
        ("model.safetensors", "truncated or corrupted"),
    ),
    BadCli(
        "cli-model-path-other-architecture",
        lambda e: ["demo", "--model-path", str(e.model_dir("mistral", config_update(model_type="mistral")))],
        ConfigMismatchError,
        ("is a 'mistral' model", "needs 'llama'"),
    ),
    BadCli(
        "cli-metrics-json-folder-missing",
        lambda e: ["demo", "--metrics-json", str(e.root / "nope" / "m.json")],
        OutputPathError,
        ("--metrics-json", "nope", "does not exist", "mkdir -p"),
    ),
    BadCli(
        "cli-metrics-json-a-directory",
        lambda e: ["demo", "--metrics-json", str(e.root)],
        OutputPathError,
        ("--metrics-json", "is a directory", "metrics.json"),
    ),
    BadCli(
        "cli-prompt-file-missing",
        lambda e: ["prompt", "llama2-7b-pure", "--conversation", str(e.root / "none.json")],
        DataFileError,
        ("none.json", "does not exist", '"conversations"'),
    ),
    BadCli(
        "cli-prompt-not-json",
        lambda e: ["prompt", "llama2-7b-pure", "--conversation", str(e.file("bad.json", "{not json"))],
        ConversationError,
        ("bad.json", "is not valid JSON"),
    ),
    BadCli(
        "cli-prompt-empty-list",
        lambda e: ["prompt", "llama2-7b-pure", "--conversation", str(e.file("empty.json", "[]"))],
        ConversationError,
        ("empty.json", "non-empty JSON list"),
    ),
    BadCli(
        "cli-finetune-data-missing",
        lambda e: [
            "finetune",
            "--backbone",
            "llama2-tiny-pure",
            "--data",
            str(e.root / "absent.json"),
            "--device",
            "cpu",
        ],
        DataFileError,
        ("absent.json", "does not exist"),
    ),
    BadCli(
        "cli-finetune-assistant-first",
        lambda e: [
            "finetune",
            "--backbone",
            "llama2-tiny-pure",
            "--device",
            "cpu",
            "--data",
            str(
                e.file(
                    "gpt-first.json",
                    '[{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},'
                    ' {"conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]}]',
                )
            ),
        ],
        ConversationError,
        ("Conversation 1 of", "gpt-first.json", "(2 in all)", "got role 'gpt'", "Fix or drop that record"),
    ),
    BadCli(
        "cli-finetune-output-under-a-file",
        lambda e: [
            "finetune",
            "--backbone",
            "llama2-tiny-pure",
            "--device",
            "cpu",
            "--data",
            str(
                e.file(
                    "one.json",
                    '[{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}]',
                )
            ),
            "--output",
            str(e.file("plain-file") / "run"),
        ],
        OutputPathError,
        ("plain-file", "which is a file", "Choose a path under a folder"),
    ),
]

ONE_CONVERSATION = '[{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}]'

CLI_CASES += [
    BadCli(
        "cli-finetune-config-gives-a-setting-twice",
        lambda e: [
            "finetune",
            "--config",
            str(e.file("twice.yaml", "backbone: llama2-tiny-pure\nbatch-size: 4\nbatch_size: 8\n")),
        ],
        FinetuneError,
        (
            "twice.yaml",
            "'batch-size' and 'batch_size' are the same setting, given twice (4 and 8)",
            "keep one",
        ),
    ),
    BadCli(
        "cli-finetune-batch-larger-than-the-data",
        lambda e: [
            "finetune",
            "--backbone",
            "llama2-tiny-pure",
            "--device",
            "cpu",
            "--data",
            str(e.file("one.json", ONE_CONVERSATION)),
            "--batch-size",
            "1000000000",
        ],
        FinetuneError,
        (
            "--batch-size 1000000000 is larger than the data",
            "one.json' holds 1 examples",
            "--batch-size 1 or less",
        ),
    ),
    BadCli(
        "cli-finetune-resume-latest-a-folder",
        lambda e: [
            "finetune",
            "--output",
            str(e.run_copy("run-latest-folder", _run_file("checkpoints/latest", None))),
            "--resume",
            "--data",
            str(e.file("one.json", ONE_CONVERSATION)),
        ],
        CheckpointError,
        ("checkpoints/latest is not a file (a folder", "--overwrite"),
    ),
    BadCli(
        "cli-finetune-resume-no-complete-checkpoint",
        lambda e: [
            "finetune",
            "--output",
            str(e.run_copy("run-incomplete", _no_complete_checkpoint)),
            "--resume",
            "--data",
            str(e.file("one.json", ONE_CONVERSATION)),
        ],
        CheckpointError,
        ("has no latest marker and none of its checkpoints (step-00000001) is complete", "--overwrite"),
    ),
    BadCli(
        "cli-finetune-resume-run-config-a-list",
        lambda e: [
            "finetune",
            "--output",
            str(e.run_copy("run-config-list", _run_file("run_config.json", "[1, 2]"))),
            "--resume",
        ],
        FinetuneError,
        ("run_config.json must hold an object of settings", "got list", "restore it"),
    ),
    BadCli(
        "cli-info-config-not-json",
        lambda e: [
            "info",
            "llama2-7b-pure",
            "--model-path",
            str(e.model_dir("cli-info-broken-config", write("config.json", "[1, 2"))),
        ],
        ConfigMismatchError,
        ("cli-info-broken-config/config.json is not valid JSON", "Restore it"),
    ),
    BadCli(
        "cli-serve-checkpoint-missing",
        lambda e: ["serve", str(e.root / "absent-checkpoint"), "--port", "1"],
        ModelPathError,
        ("absent-checkpoint", "does not exist", "HF OpenVLA directory"),
    ),
    BadCli(
        "cli-act-image-missing",
        lambda e: [
            "act",
            "http://127.0.0.1:1",
            "--image",
            str(e.root / "frame.png"),
            "--instruction",
            "wipe",
        ],
        ImageError,
        ("frame.png", "is not a file", "PNG or JPEG"),
    ),
]


def _no_peft() -> contextlib.AbstractContextManager:
    return mock.patch.dict(sys.modules, {"peft": None})


CLI_CASES += [
    BadCli(
        "cli-finetune-lora-without-peft",
        lambda e: [
            "finetune",
            "--backbone",
            "llama2-tiny-pure",
            "--mode",
            "lora",
            "--data",
            str(e.root / "a.json"),
        ],
        MissingDependencyError,
        ("--mode lora needs peft", "pip install 'llm-backbones[lora]'"),
        _no_peft,
    ),
    BadCli(
        "cli-finetune-vla-lora-without-peft",
        lambda e: [
            "finetune-vla",
            "--llm",
            "llama2-tiny-pure",
            "--vision",
            "x",
            "--data",
            str(e.root / "r.jsonl"),
        ],
        MissingDependencyError,
        ("--mode lora needs peft", "pip install 'llm-backbones[lora]'"),
        _no_peft,
    ),
]

CLI_CASES += [
    BadCli(
        "cli-finetune-data-of-another-format",
        lambda e: [
            "finetune",
            "--backbone",
            "llama2-tiny-pure",
            "--data",
            str(e.file("prompt-completion.json", json.dumps([{"prompt": "a", "completion": "b"}] * 40))),
        ],
        ConversationError,
        (
            "Record 0 of",
            "(40 in all)",
            "['completion', 'prompt']",
            '{"conversations"',
            '{"messages"',
            "JSONL",
        ),
    ),
]

# Click's own usage errors: exit code 2 with a usage line (not llm-backbones exceptions).
CLI_USAGE_CASES = [
    (["demo", "--bogus"], "No such option: --bogus"),
    (["dmeo"], "No such command 'dmeo'"),
    (["demo", "--model-path"], "Option '--model-path' requires an"),
    (["list", "--json", "extra"], "unexpected extra argument"),
    # names other trainers use: the flag meant is named (click's close matches find none)
    (["finetune", "--learning-rate", "1e-3"], "No such option: --learning-rate. Did you mean --lr?"),
    (["finetune-vla", "--epochs", "3"], "No such option: --epochs. Did you mean --steps?"),
]

N_BAD_INPUTS = len(CASES) + len(CLI_CASES) + len(CLI_USAGE_CASES)


# =====================================================================================================
# Tests
# =====================================================================================================


# Rows over ~0.3 s each on a 2-core CPU (they build, save or load the tiny model): marked `slow`, so run by
# `make test` and left out of `make check`'s fast lane.
SLOW_CASES = frozenset(
    {
        "cli-model-path-truncated-weights",
        "cli-finetune-resume-latest-a-folder",
        "cli-finetune-resume-no-complete-checkpoint",
        "cli-finetune-resume-run-config-a-list",
        "empty-conversation",
        "export-run-flipped-bytes-in-a-shard",
        "export-run-latest-garbage",
        "export-run-meta-json-a-list",
        "finetune-lr-diverges",
        "load-edited-config",
        "load-edited-fingerprint-dtype",
        "load-fingerprint-other-pad-id",
        "load-flipped-weight-byte",
        "load-inf-inference-mode",
        "load-missing-tensor-inference-mode",
        "load-truncated-weights-inference-mode",
        "load-truncated-weights-training-mode",
        "load_backbone-misspelled-override",
        "over-long-cuts-the-reply",
        "over-long-for-model-max-length",
        "pickle-of-objects-with-allow-pickle",
        "save-meta-backbone",
        "tokenizer-breaking-the-bos-policy",
        "tokenizer-json-huge",
        "vla-pt-stray-tensor",
        "weights-empty-file",
        "weights-header-garbage",
        "weights-missing",
        "weights-missing-lm-head",
        "weights-nan",
        "weights-pickle-only",
        "weights-renamed-tensor",
        "weights-truncated",
        "weights-wrong-shape",
    }
)


def _marked(cases: list) -> list:
    return [pytest.param(c, marks=pytest.mark.slow) if c.id in SLOW_CASES else c for c in cases]


@pytest.mark.parametrize("case", _marked(CASES), ids=[c.id for c in CASES])
def test_bad_input_raises_a_typed_error_that_explains(env, case: Bad) -> None:
    with pytest.raises(case.error) as info:
        case.call(env)
    exc = info.value
    assert type(exc).__module__ == "llm_backbones.errors"
    assert isinstance(exc, LLMBackbonesError) and isinstance(exc, case.old)
    message = str(exc)
    missing = [word for word in case.words if word not in message]
    assert not missing, f"{missing} not in {message!r}"


runner = CliRunner()


@pytest.mark.parametrize("case", _marked(CLI_CASES), ids=[c.id for c in CLI_CASES])
def test_bad_cli_input_is_one_clear_line(env, case: BadCli) -> None:
    args = case.args(env)
    with case.setting():
        debug = runner.invoke(app, ["--debug", *args])
        plain = runner.invoke(app, args)
    assert isinstance(debug.exception, case.error), debug.output
    for word in case.words:
        assert word in str(debug.exception)
    assert plain.exit_code == 1, plain.output
    assert plain.output.startswith("error: ") and "Traceback" not in plain.output
    for word in case.words:
        assert word in plain.output, plain.output


@pytest.mark.parametrize(("args", "words"), CLI_USAGE_CASES, ids=[" ".join(a) for a, _ in CLI_USAGE_CASES])
def test_bad_cli_usage_exits_2_with_usage(args, words) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert words in re.sub(r"[│╭╮╰╯─\s]+", " ", result.output), result.output


def test_unknown_id_exposes_its_closest_matches() -> None:
    with pytest.raises(UnknownBackboneError) as info:
        get_spec("llama2-7b-chatt")
    assert info.value.closest[0] == "llama2-7b-chat" and info.value.backbone_id == "llama2-7b-chatt"


def test_every_error_class_is_raised_by_some_row() -> None:
    import llm_backbones.errors as errors

    classes = {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, LLMBackbonesError) and obj is not LLMBackbonesError
    }
    raised = {c.error for c in CASES} | {c.error for c in CLI_CASES}
    assert classes == raised


def test_readme_states_the_number_of_bad_inputs() -> None:
    text = README.read_text()
    assert f"{N_BAD_INPUTS} bad inputs" in text, (
        f"README must state the suite's count: {N_BAD_INPUTS} bad inputs"
    )


def test_rows_have_unique_ids_and_public_entry_points() -> None:
    ids = [c.id for c in CASES] + [c.id for c in CLI_CASES]
    assert len(ids) == len(set(ids))
    assert SLOW_CASES <= set(ids), f"SLOW_CASES names no row: {sorted(SLOW_CASES - set(ids))}"
    assert {"save_backbone", "load_backbone"} <= set(llm_backbones.__all__)
