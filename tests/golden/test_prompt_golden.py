"""Golden prompt strings of the five prompt builders, written out by hand.

Sources the expected strings were derived from (read, not copied):

* `prismatic_compat=True`: the original Prismatic/OpenVLA builders,
  `prismatic/models/backbones/llm/prompting/{base_prompter,llama2_chat_prompter,vicuna_v15_prompter,
  mistral_instruct_prompter,phi_prompter}.py` (TRI-ML/prismatic-vlms; the OpenVLA copy adds the
  "openvla" model family with the same default system prompts). Their quirks, kept here on purpose:
  the `<<SYS>` typo (one `>`) of the Llama-2 chat system prompt, an empty reply written as " ",
  `get_potential_prompt` does not clean (strip / drop `<image>`) its message, and Phi's
  `get_potential_prompt` on a fresh builder has no leading `<|endoftext|>`.
* official mode (default): Llama-2 chat as Meta's `chat_completion` (meta-llama/llama
  `llama/generation.py`: `<s>[INST] {u} [/INST] {a} </s>` per pair, `<<SYS>>\\n{sys}\\n<</SYS>>\\n\\n`
  opening the first user message, generation prompt `<s>[INST] {u} [/INST]`), with the leading `<s>` of
  the whole prompt removed; Vicuna v1.5 as FastChat's `vicuna_v1.1` template (ADD_COLON_TWO, sep " ",
  sep2 "</s>"); Pure, Mistral and Phi equal to the original's add_turn/get_prompt output.

Every expected string below is a literal: nothing is computed from the library.
"""

from __future__ import annotations

import pytest

from llm_backbones import (
    LLaMa2ChatPromptBuilder,
    MistralInstructPromptBuilder,
    PhiPromptBuilder,
    PurePromptBuilder,
    VicunaV15ChatPromptBuilder,
)

# =====================================================================================================
# Shared sample conversations
# =====================================================================================================

# Two human + two gpt turns: an `<image>` tag, unicode, surrounding whitespace (tab / newline / spaces)
# and an internal double space that must survive the strip.
CONVERSATION = [
    ("human", "<image>\nWhat is in the image?"),
    ("gpt", "A red cube next to a blue bowl."),
    ("human", "  Déplace le cube rouge → à gauche 🤖  "),
    ("gpt", "\tDone:  the cube is on the left.\n"),
]
# The same conversation with the role aliases.
CONVERSATION_ALIASES = [
    ("user", "<image>\nWhat is in the image?"),
    ("assistant", "A red cube next to a blue bowl."),
    ("user", "  Déplace le cube rouge → à gauche 🤖  "),
    ("assistant", "\tDone:  the cube is on the left.\n"),
]
# Generation prompt: the conversation ends with a human turn.
GENERATION_CONVERSATION = CONVERSATION[:3]
NEXT_MESSAGE = "What next?"
# Given to get_potential_prompt on a fresh builder: the originals do not clean this message.
RAW_NEXT_MESSAGE = " <image>\nWhat next? "

CUSTOM_SYSTEM_PROMPT = "You control a robot arm."
PADDED_CUSTOM_SYSTEM_PROMPT = "  You control a robot arm.\n"

# Empty replies: "" and whatever cleans to "" (whitespace only, a lone `<image>`).
EMPTY_REPLIES = ["", "   ", "<image>"]


def empty_reply_conversation(reply: str) -> list[tuple[str, str]]:
    return [("human", "Pick up the cup."), ("gpt", reply), ("human", "Try again.")]


def run(builder, conversation):
    """Feed the turns; return what each add_turn returned."""
    return [builder.add_turn(role, message) for role, message in conversation]


# =====================================================================================================
# Golden strings: prismatic_compat=True over CONVERSATION
#   turns: the return value of each add_turn; generation: get_prompt() after the first 3 turns;
#   prompt: get_prompt() after all 4; potential: get_potential_prompt(NEXT_MESSAGE) after all 4.
# =====================================================================================================

PURE = {
    "turns": [
        "In: What is in the image?\nOut: ",
        "A red cube next to a blue bowl.</s>",
        "In: Déplace le cube rouge → à gauche 🤖\nOut: ",
        "Done:  the cube is on the left.</s>",
    ],
    "generation": (
        "In: What is in the image?\nOut: A red cube next to a blue bowl.</s>"
        "In: Déplace le cube rouge → à gauche 🤖\nOut:"
    ),
    "prompt": (
        "In: What is in the image?\nOut: A red cube next to a blue bowl.</s>"
        "In: Déplace le cube rouge → à gauche 🤖\nOut: Done:  the cube is on the left.</s>"
    ),
    "potential": (
        "In: What is in the image?\nOut: A red cube next to a blue bowl.</s>"
        "In: Déplace le cube rouge → à gauche 🤖\nOut: Done:  the cube is on the left.</s>"
        "In: What next?\nOut:"
    ),
}

LLAMA2_COMPAT_DEFAULT_SYSTEM = {
    "turns": [
        "[INST] <<SYS>\nYou are a helpful language and vision assistant. You are able to understand the "
        "visual content that the user provides, and assist the user with a variety of tasks using natural "
        "language.\n<</SYS>>\n\nWhat is in the image? [/INST] ",
        "A red cube next to a blue bowl.</s>",
        "[INST] Déplace le cube rouge → à gauche 🤖 [/INST] ",
        "Done:  the cube is on the left.</s>",
    ],
    "generation": (
        "[INST] <<SYS>\nYou are a helpful language and vision assistant. You are able to understand the "
        "visual content that the user provides, and assist the user with a variety of tasks using natural "
        "language.\n<</SYS>>\n\nWhat is in the image? [/INST] A red cube next to a blue bowl.</s>"
        "[INST] Déplace le cube rouge → à gauche 🤖 [/INST]"
    ),
    "prompt": (
        "[INST] <<SYS>\nYou are a helpful language and vision assistant. You are able to understand the "
        "visual content that the user provides, and assist the user with a variety of tasks using natural "
        "language.\n<</SYS>>\n\nWhat is in the image? [/INST] A red cube next to a blue bowl.</s>"
        "[INST] Déplace le cube rouge → à gauche 🤖 [/INST] Done:  the cube is on the left.</s>"
    ),
    "potential": (
        "[INST] <<SYS>\nYou are a helpful language and vision assistant. You are able to understand the "
        "visual content that the user provides, and assist the user with a variety of tasks using natural "
        "language.\n<</SYS>>\n\nWhat is in the image? [/INST] A red cube next to a blue bowl.</s>"
        "[INST] Déplace le cube rouge → à gauche 🤖 [/INST] Done:  the cube is on the left.</s>"
        "[INST] What next? [/INST]"
    ),
}

LLAMA2_COMPAT_CUSTOM_SYSTEM = {
    "turns": [
        "[INST] <<SYS>\nYou control a robot arm.\n<</SYS>>\n\nWhat is in the image? [/INST] ",
        "A red cube next to a blue bowl.</s>",
        "[INST] Déplace le cube rouge → à gauche 🤖 [/INST] ",
        "Done:  the cube is on the left.</s>",
    ],
    "generation": (
        "[INST] <<SYS>\nYou control a robot arm.\n<</SYS>>\n\nWhat is in the image? [/INST] "
        "A red cube next to a blue bowl.</s>[INST] Déplace le cube rouge → à gauche 🤖 [/INST]"
    ),
    "prompt": (
        "[INST] <<SYS>\nYou control a robot arm.\n<</SYS>>\n\nWhat is in the image? [/INST] "
        "A red cube next to a blue bowl.</s>[INST] Déplace le cube rouge → à gauche 🤖 [/INST] "
        "Done:  the cube is on the left.</s>"
    ),
    "potential": (
        "[INST] <<SYS>\nYou control a robot arm.\n<</SYS>>\n\nWhat is in the image? [/INST] "
        "A red cube next to a blue bowl.</s>[INST] Déplace le cube rouge → à gauche 🤖 [/INST] "
        "Done:  the cube is on the left.</s>[INST] What next? [/INST]"
    ),
}

VICUNA_DEFAULT_SYSTEM = {
    "turns": [
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions. "
        "USER: What is in the image? ASSISTANT: ",
        "A red cube next to a blue bowl.</s>",
        "USER: Déplace le cube rouge → à gauche 🤖 ASSISTANT: ",
        "Done:  the cube is on the left.</s>",
    ],
    "generation": (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions. "
        "USER: What is in the image? ASSISTANT: A red cube next to a blue bowl.</s>"
        "USER: Déplace le cube rouge → à gauche 🤖 ASSISTANT:"
    ),
    "prompt": (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions. "
        "USER: What is in the image? ASSISTANT: A red cube next to a blue bowl.</s>"
        "USER: Déplace le cube rouge → à gauche 🤖 ASSISTANT: Done:  the cube is on the left.</s>"
    ),
    "potential": (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions. "
        "USER: What is in the image? ASSISTANT: A red cube next to a blue bowl.</s>"
        "USER: Déplace le cube rouge → à gauche 🤖 ASSISTANT: Done:  the cube is on the left.</s>"
        "USER: What next? ASSISTANT:"
    ),
}

VICUNA_CUSTOM_SYSTEM = {
    "turns": [
        "You control a robot arm. USER: What is in the image? ASSISTANT: ",
        "A red cube next to a blue bowl.</s>",
        "USER: Déplace le cube rouge → à gauche 🤖 ASSISTANT: ",
        "Done:  the cube is on the left.</s>",
    ],
    "generation": (
        "You control a robot arm. USER: What is in the image? ASSISTANT: A red cube next to a blue bowl.</s>"
        "USER: Déplace le cube rouge → à gauche 🤖 ASSISTANT:"
    ),
    "prompt": (
        "You control a robot arm. USER: What is in the image? ASSISTANT: A red cube next to a blue bowl.</s>"
        "USER: Déplace le cube rouge → à gauche 🤖 ASSISTANT: Done:  the cube is on the left.</s>"
    ),
    "potential": (
        "You control a robot arm. USER: What is in the image? ASSISTANT: A red cube next to a blue bowl.</s>"
        "USER: Déplace le cube rouge → à gauche 🤖 ASSISTANT: Done:  the cube is on the left.</s>"
        "USER: What next? ASSISTANT:"
    ),
}

MISTRAL = {
    "turns": [
        "[INST] What is in the image? [/INST] ",
        "A red cube next to a blue bowl.</s>",
        "[INST] Déplace le cube rouge → à gauche 🤖 [/INST] ",
        "Done:  the cube is on the left.</s>",
    ],
    "generation": (
        "[INST] What is in the image? [/INST] A red cube next to a blue bowl.</s>"
        "[INST] Déplace le cube rouge → à gauche 🤖 [/INST]"
    ),
    "prompt": (
        "[INST] What is in the image? [/INST] A red cube next to a blue bowl.</s>"
        "[INST] Déplace le cube rouge → à gauche 🤖 [/INST] Done:  the cube is on the left.</s>"
    ),
    "potential": (
        "[INST] What is in the image? [/INST] A red cube next to a blue bowl.</s>"
        "[INST] Déplace le cube rouge → à gauche 🤖 [/INST] Done:  the cube is on the left.</s>"
        "[INST] What next? [/INST]"
    ),
}

PHI = {
    "turns": [
        "<|endoftext|>Input: What is in the image?\nOutput: ",
        "A red cube next to a blue bowl.\n<|endoftext|>",
        "Input: Déplace le cube rouge → à gauche 🤖\nOutput: ",
        "Done:  the cube is on the left.\n<|endoftext|>",
    ],
    "generation": (
        "<|endoftext|>Input: What is in the image?\nOutput: A red cube next to a blue bowl.\n<|endoftext|>"
        "Input: Déplace le cube rouge → à gauche 🤖\nOutput:"
    ),
    "prompt": (
        "<|endoftext|>Input: What is in the image?\nOutput: A red cube next to a blue bowl.\n<|endoftext|>"
        "Input: Déplace le cube rouge → à gauche 🤖\nOutput: Done:  the cube is on the left.\n<|endoftext|>"
    ),
    "potential": (
        "<|endoftext|>Input: What is in the image?\nOutput: A red cube next to a blue bowl.\n<|endoftext|>"
        "Input: Déplace le cube rouge → à gauche 🤖\nOutput: Done:  the cube is on the left.\n<|endoftext|>"
        "Input: What next?\nOutput:"
    ),
}

# =====================================================================================================
# Golden strings: official mode (default) over CONVERSATION
# =====================================================================================================

# Meta's chat_completion: "<s>[INST] u [/INST] a </s>" per pair; "<s>" at the very front removed.
LLAMA2_OFFICIAL_DEFAULT_SYSTEM = {
    "turns": [
        "<s>[INST] <<SYS>>\nYou are a helpful language and vision assistant. You are able to understand the "
        "visual content that the user provides, and assist the user with a variety of tasks using natural "
        "language.\n<</SYS>>\n\nWhat is in the image? [/INST]",
        " A red cube next to a blue bowl. </s>",
        "<s>[INST] Déplace le cube rouge → à gauche 🤖 [/INST]",
        " Done:  the cube is on the left. </s>",
    ],
    "generation": (
        "[INST] <<SYS>>\nYou are a helpful language and vision assistant. You are able to understand the "
        "visual content that the user provides, and assist the user with a variety of tasks using natural "
        "language.\n<</SYS>>\n\nWhat is in the image? [/INST] A red cube next to a blue bowl. </s>"
        "<s>[INST] Déplace le cube rouge → à gauche 🤖 [/INST]"
    ),
    "prompt": (
        "[INST] <<SYS>>\nYou are a helpful language and vision assistant. You are able to understand the "
        "visual content that the user provides, and assist the user with a variety of tasks using natural "
        "language.\n<</SYS>>\n\nWhat is in the image? [/INST] A red cube next to a blue bowl. </s>"
        "<s>[INST] Déplace le cube rouge → à gauche 🤖 [/INST] Done:  the cube is on the left. </s>"
    ),
    "potential": (
        "[INST] <<SYS>>\nYou are a helpful language and vision assistant. You are able to understand the "
        "visual content that the user provides, and assist the user with a variety of tasks using natural "
        "language.\n<</SYS>>\n\nWhat is in the image? [/INST] A red cube next to a blue bowl. </s>"
        "<s>[INST] Déplace le cube rouge → à gauche 🤖 [/INST] Done:  the cube is on the left. </s>"
        "<s>[INST] What next? [/INST]"
    ),
}

LLAMA2_OFFICIAL_CUSTOM_SYSTEM = {
    "turns": [
        "<s>[INST] <<SYS>>\nYou control a robot arm.\n<</SYS>>\n\nWhat is in the image? [/INST]",
        " A red cube next to a blue bowl. </s>",
        "<s>[INST] Déplace le cube rouge → à gauche 🤖 [/INST]",
        " Done:  the cube is on the left. </s>",
    ],
    "generation": (
        "[INST] <<SYS>>\nYou control a robot arm.\n<</SYS>>\n\nWhat is in the image? [/INST] "
        "A red cube next to a blue bowl. </s><s>[INST] Déplace le cube rouge → à gauche 🤖 [/INST]"
    ),
    "prompt": (
        "[INST] <<SYS>>\nYou control a robot arm.\n<</SYS>>\n\nWhat is in the image? [/INST] "
        "A red cube next to a blue bowl. </s><s>[INST] Déplace le cube rouge → à gauche 🤖 [/INST] "
        "Done:  the cube is on the left. </s>"
    ),
    "potential": (
        "[INST] <<SYS>>\nYou control a robot arm.\n<</SYS>>\n\nWhat is in the image? [/INST] "
        "A red cube next to a blue bowl. </s><s>[INST] Déplace le cube rouge → à gauche 🤖 [/INST] "
        "Done:  the cube is on the left. </s><s>[INST] What next? [/INST]"
    ),
}

# (builder class, constructor kwargs, golden dict): prismatic_compat=True
COMPAT_CASES = {
    "pure": (PurePromptBuilder, {}, PURE),
    "llama2-default-system": (LLaMa2ChatPromptBuilder, {}, LLAMA2_COMPAT_DEFAULT_SYSTEM),
    "llama2-custom-system": (
        LLaMa2ChatPromptBuilder,
        {"system_prompt": CUSTOM_SYSTEM_PROMPT},
        LLAMA2_COMPAT_CUSTOM_SYSTEM,
    ),
    "vicuna-default-system": (VicunaV15ChatPromptBuilder, {}, VICUNA_DEFAULT_SYSTEM),
    "vicuna-custom-system": (
        VicunaV15ChatPromptBuilder,
        {"system_prompt": CUSTOM_SYSTEM_PROMPT},
        VICUNA_CUSTOM_SYSTEM,
    ),
    "mistral": (MistralInstructPromptBuilder, {}, MISTRAL),
    "phi": (PhiPromptBuilder, {}, PHI),
}

# Official mode (default): Llama-2 is Meta's format; Vicuna v1.5 (FastChat vicuna_v1.1), Pure, Mistral
# and Phi render the same strings as the original's add_turn/get_prompt.
OFFICIAL_CASES = {
    "pure": (PurePromptBuilder, {}, PURE),
    "llama2-default-system": (LLaMa2ChatPromptBuilder, {}, LLAMA2_OFFICIAL_DEFAULT_SYSTEM),
    "llama2-custom-system": (
        LLaMa2ChatPromptBuilder,
        {"system_prompt": CUSTOM_SYSTEM_PROMPT},
        LLAMA2_OFFICIAL_CUSTOM_SYSTEM,
    ),
    "vicuna-default-system": (VicunaV15ChatPromptBuilder, {}, VICUNA_DEFAULT_SYSTEM),
    "vicuna-custom-system": (
        VicunaV15ChatPromptBuilder,
        {"system_prompt": CUSTOM_SYSTEM_PROMPT},
        VICUNA_CUSTOM_SYSTEM,
    ),
    "mistral": (MistralInstructPromptBuilder, {}, MISTRAL),
    "phi": (PhiPromptBuilder, {}, PHI),
}

MODES = {"compat": (True, COMPAT_CASES), "official": (False, OFFICIAL_CASES)}
MODE_CASES = [
    pytest.param(compat, *case, id=f"{mode}-{name}")
    for mode, (compat, cases) in MODES.items()
    for name, case in cases.items()
]
FAMILIES = ["prismatic", "openvla"]


# =====================================================================================================
# Multi-turn conversations (both modes)
# =====================================================================================================


@pytest.mark.parametrize("model_family", FAMILIES)
@pytest.mark.parametrize(("compat", "cls", "kwargs", "golden"), MODE_CASES)
def test_add_turn_returns_the_text_it_added(model_family, compat, cls, kwargs, golden) -> None:
    builder = cls(model_family, prismatic_compat=compat, **kwargs)
    assert run(builder, CONVERSATION) == golden["turns"]


@pytest.mark.parametrize("model_family", FAMILIES)
@pytest.mark.parametrize(("compat", "cls", "kwargs", "golden"), MODE_CASES)
def test_get_prompt_after_two_exchanges(model_family, compat, cls, kwargs, golden) -> None:
    builder = cls(model_family, prismatic_compat=compat, **kwargs)
    run(builder, CONVERSATION)
    assert builder.get_prompt() == golden["prompt"]


@pytest.mark.parametrize("model_family", FAMILIES)
@pytest.mark.parametrize(("compat", "cls", "kwargs", "golden"), MODE_CASES)
def test_generation_prompt_ends_with_human_turn(model_family, compat, cls, kwargs, golden) -> None:
    builder = cls(model_family, prismatic_compat=compat, **kwargs)
    run(builder, GENERATION_CONVERSATION)
    assert builder.get_prompt() == golden["generation"]


@pytest.mark.parametrize("model_family", FAMILIES)
@pytest.mark.parametrize(("compat", "cls", "kwargs", "golden"), MODE_CASES)
def test_get_potential_prompt_for_next_message(model_family, compat, cls, kwargs, golden) -> None:
    builder = cls(model_family, prismatic_compat=compat, **kwargs)
    run(builder, CONVERSATION)
    assert builder.get_potential_prompt(NEXT_MESSAGE) == golden["potential"]
    # get_potential_prompt does not change the builder.
    assert builder.get_prompt() == golden["prompt"]
    assert builder.turn_count == 4


@pytest.mark.parametrize(("compat", "cls", "kwargs", "golden"), MODE_CASES)
def test_role_aliases_give_the_same_strings(compat, cls, kwargs, golden) -> None:
    builder = cls("prismatic", prismatic_compat=compat, **kwargs)
    assert run(builder, CONVERSATION_ALIASES) == golden["turns"]
    assert builder.get_prompt() == golden["prompt"]
    assert builder.get_potential_prompt(NEXT_MESSAGE) == golden["potential"]


@pytest.mark.parametrize("compat", [True, False], ids=["compat", "official"])
def test_mixed_role_aliases(compat) -> None:
    builder = MistralInstructPromptBuilder("prismatic", prismatic_compat=compat)
    conversation = [("user", "Hi."), ("gpt", "Hello."), ("human", "Move."), ("assistant", "Moved.")]
    assert run(builder, conversation) == [
        "[INST] Hi. [/INST] ",
        "Hello.</s>",
        "[INST] Move. [/INST] ",
        "Moved.</s>",
    ]
    assert builder.get_prompt() == "[INST] Hi. [/INST] Hello.</s>[INST] Move. [/INST] Moved.</s>"


@pytest.mark.parametrize(
    ("compat", "cls"),
    [
        pytest.param(True, PurePromptBuilder, id="compat-pure"),
        pytest.param(True, LLaMa2ChatPromptBuilder, id="compat-llama2"),
        pytest.param(True, VicunaV15ChatPromptBuilder, id="compat-vicuna"),
        pytest.param(True, MistralInstructPromptBuilder, id="compat-mistral"),
        pytest.param(True, PhiPromptBuilder, id="compat-phi"),
        pytest.param(False, LLaMa2ChatPromptBuilder, id="official-llama2"),
        pytest.param(False, VicunaV15ChatPromptBuilder, id="official-vicuna"),
    ],
)
def test_fresh_builder_prompt_is_empty(compat, cls) -> None:
    assert cls("prismatic", prismatic_compat=compat).get_prompt() == ""


# =====================================================================================================
# System prompts (prismatic_compat=True)
# =====================================================================================================


def test_compat_llama2_system_prompt_is_stripped_and_keeps_the_sys_typo() -> None:
    builder = LLaMa2ChatPromptBuilder(
        "openvla", system_prompt=PADDED_CUSTOM_SYSTEM_PROMPT, prismatic_compat=True
    )
    assert builder.add_turn("human", "Hi.") == (
        "[INST] <<SYS>\nYou control a robot arm.\n<</SYS>>\n\nHi. [/INST] "
    )
    assert builder.get_prompt() == "[INST] <<SYS>\nYou control a robot arm.\n<</SYS>>\n\nHi. [/INST]"


def test_compat_vicuna_system_prompt_is_stripped() -> None:
    builder = VicunaV15ChatPromptBuilder(
        "openvla", system_prompt=PADDED_CUSTOM_SYSTEM_PROMPT, prismatic_compat=True
    )
    assert builder.add_turn("human", "Hi.") == "You control a robot arm. USER: Hi. ASSISTANT: "
    assert builder.get_prompt() == "You control a robot arm. USER: Hi. ASSISTANT:"


@pytest.mark.parametrize(
    "cls",
    [PurePromptBuilder, MistralInstructPromptBuilder, PhiPromptBuilder],
    ids=["pure", "mistral", "phi"],
)
def test_compat_builders_without_system_prompt_ignore_one(cls) -> None:
    # The originals accept `system_prompt` and never render it.
    golden = {PurePromptBuilder: PURE, MistralInstructPromptBuilder: MISTRAL, PhiPromptBuilder: PHI}[cls]
    builder = cls("prismatic", system_prompt=CUSTOM_SYSTEM_PROMPT, prismatic_compat=True)
    assert run(builder, CONVERSATION) == golden["turns"]
    assert builder.get_prompt() == golden["prompt"]


# =====================================================================================================
# get_potential_prompt on a fresh builder (turn 0)
# =====================================================================================================

# The originals neither strip nor drop `<image>` from this message; Phi's adds no leading BOS here.
COMPAT_FRESH_POTENTIAL = [
    pytest.param(PurePromptBuilder, {}, "In:  <image>\nWhat next? \nOut:", id="pure"),
    pytest.param(
        LLaMa2ChatPromptBuilder,
        {"system_prompt": CUSTOM_SYSTEM_PROMPT},
        "[INST] <<SYS>\nYou control a robot arm.\n<</SYS>>\n\n <image>\nWhat next?  [/INST]",
        id="llama2",
    ),
    pytest.param(
        VicunaV15ChatPromptBuilder,
        {"system_prompt": CUSTOM_SYSTEM_PROMPT},
        "You control a robot arm. USER:  <image>\nWhat next?  ASSISTANT:",
        id="vicuna",
    ),
    pytest.param(MistralInstructPromptBuilder, {}, "[INST]  <image>\nWhat next?  [/INST]", id="mistral"),
    pytest.param(PhiPromptBuilder, {}, "Input:  <image>\nWhat next? \nOutput:", id="phi"),
]


@pytest.mark.parametrize(("cls", "kwargs", "expected"), COMPAT_FRESH_POTENTIAL)
def test_compat_potential_prompt_on_fresh_builder(cls, kwargs, expected) -> None:
    builder = cls("prismatic", prismatic_compat=True, **kwargs)
    assert builder.get_potential_prompt(RAW_NEXT_MESSAGE) == expected
    assert builder.turn_count == 0
    assert builder.get_prompt() == ""


def test_compat_llama2_potential_prompt_on_fresh_builder_default_system() -> None:
    builder = LLaMa2ChatPromptBuilder("openvla", prismatic_compat=True)
    assert builder.get_potential_prompt("What next?") == (
        "[INST] <<SYS>\nYou are a helpful language and vision assistant. You are able to understand the "
        "visual content that the user provides, and assist the user with a variety of tasks using natural "
        "language.\n<</SYS>>\n\nWhat next? [/INST]"
    )


# Official mode: the potential prompt equals the prompt that add_turn("human", message) would build.
OFFICIAL_FRESH_POTENTIAL = [
    pytest.param(PurePromptBuilder, {}, "In: What next?\nOut:", id="pure"),
    pytest.param(
        LLaMa2ChatPromptBuilder,
        {"system_prompt": CUSTOM_SYSTEM_PROMPT},
        "[INST] <<SYS>>\nYou control a robot arm.\n<</SYS>>\n\nWhat next? [/INST]",
        id="llama2",
    ),
    pytest.param(
        VicunaV15ChatPromptBuilder,
        {"system_prompt": CUSTOM_SYSTEM_PROMPT},
        "You control a robot arm. USER: What next? ASSISTANT:",
        id="vicuna",
    ),
    pytest.param(MistralInstructPromptBuilder, {}, "[INST] What next? [/INST]", id="mistral"),
    pytest.param(PhiPromptBuilder, {}, "<|endoftext|>Input: What next?\nOutput:", id="phi"),
]


@pytest.mark.parametrize(("cls", "kwargs", "expected"), OFFICIAL_FRESH_POTENTIAL)
def test_official_potential_prompt_on_fresh_builder(cls, kwargs, expected) -> None:
    builder = cls("prismatic", **kwargs)
    assert builder.get_potential_prompt(RAW_NEXT_MESSAGE) == expected
    other = cls("prismatic", **kwargs)
    other.add_turn("human", RAW_NEXT_MESSAGE)
    assert other.get_prompt() == expected


def test_official_llama2_potential_prompt_on_fresh_builder_default_system() -> None:
    builder = LLaMa2ChatPromptBuilder("openvla")
    assert builder.get_potential_prompt("What next?") == (
        "[INST] <<SYS>>\nYou are a helpful language and vision assistant. You are able to understand the "
        "visual content that the user provides, and assist the user with a variety of tasks using natural "
        "language.\n<</SYS>>\n\nWhat next? [/INST]"
    )


def test_official_vicuna_potential_prompt_on_fresh_builder_default_system() -> None:
    builder = VicunaV15ChatPromptBuilder("openvla")
    assert builder.get_potential_prompt("What next?") == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions. USER: What next? ASSISTANT:"
    )


# =====================================================================================================
# Empty replies
# =====================================================================================================

# (builder, kwargs, add_turn returns, get_prompt) over empty_reply_conversation(reply), compat mode:
# the originals write an empty reply as " ".
COMPAT_EMPTY_REPLY = [
    pytest.param(
        PurePromptBuilder,
        {},
        ["In: Pick up the cup.\nOut: ", " </s>", "In: Try again.\nOut: "],
        "In: Pick up the cup.\nOut:  </s>In: Try again.\nOut:",
        id="pure",
    ),
    pytest.param(
        LLaMa2ChatPromptBuilder,
        {"system_prompt": CUSTOM_SYSTEM_PROMPT},
        [
            "[INST] <<SYS>\nYou control a robot arm.\n<</SYS>>\n\nPick up the cup. [/INST] ",
            " </s>",
            "[INST] Try again. [/INST] ",
        ],
        "[INST] <<SYS>\nYou control a robot arm.\n<</SYS>>\n\nPick up the cup. [/INST]  </s>"
        "[INST] Try again. [/INST]",
        id="llama2",
    ),
    pytest.param(
        VicunaV15ChatPromptBuilder,
        {"system_prompt": CUSTOM_SYSTEM_PROMPT},
        [
            "You control a robot arm. USER: Pick up the cup. ASSISTANT: ",
            " </s>",
            "USER: Try again. ASSISTANT: ",
        ],
        "You control a robot arm. USER: Pick up the cup. ASSISTANT:  </s>USER: Try again. ASSISTANT:",
        id="vicuna",
    ),
    pytest.param(
        MistralInstructPromptBuilder,
        {},
        ["[INST] Pick up the cup. [/INST] ", " </s>", "[INST] Try again. [/INST] "],
        "[INST] Pick up the cup. [/INST]  </s>[INST] Try again. [/INST]",
        id="mistral",
    ),
    pytest.param(
        PhiPromptBuilder,
        {},
        ["<|endoftext|>Input: Pick up the cup.\nOutput: ", " \n<|endoftext|>", "Input: Try again.\nOutput: "],
        "<|endoftext|>Input: Pick up the cup.\nOutput:  \n<|endoftext|>Input: Try again.\nOutput:",
        id="phi",
    ),
]


@pytest.mark.parametrize("reply", EMPTY_REPLIES, ids=["empty", "whitespace", "image-tag"])
@pytest.mark.parametrize(("cls", "kwargs", "turns", "prompt"), COMPAT_EMPTY_REPLY)
def test_compat_empty_reply_becomes_a_space(reply, cls, kwargs, turns, prompt) -> None:
    builder = cls("prismatic", prismatic_compat=True, **kwargs)
    assert run(builder, empty_reply_conversation(reply)) == turns
    assert builder.get_prompt() == prompt


@pytest.mark.parametrize("reply", EMPTY_REPLIES, ids=["empty", "whitespace", "image-tag"])
def test_official_llama2_empty_reply_stays_empty(reply) -> None:
    # Meta: f"{B_INST} {u} {E_INST} {a} " with a == "" gives "[/INST]  " then EOS.
    builder = LLaMa2ChatPromptBuilder("prismatic", system_prompt=CUSTOM_SYSTEM_PROMPT)
    assert run(builder, empty_reply_conversation(reply)) == [
        "<s>[INST] <<SYS>>\nYou control a robot arm.\n<</SYS>>\n\nPick up the cup. [/INST]",
        "  </s>",
        "<s>[INST] Try again. [/INST]",
    ]
    assert builder.get_prompt() == (
        "[INST] <<SYS>>\nYou control a robot arm.\n<</SYS>>\n\nPick up the cup. [/INST]  </s>"
        "<s>[INST] Try again. [/INST]"
    )


# =====================================================================================================
# `<image>` stripping, unicode and whitespace, one turn at a time
# =====================================================================================================

# (message, add_turn("human", message) on a fresh Pure builder, add_turn("gpt", message) after it)
MESSAGE_CLEANING = [
    pytest.param(
        "<image>\nWhat is in the image?",
        "In: What is in the image?\nOut: ",
        "What is in the image?</s>",
        id="image-tag-leading",
    ),
    pytest.param(
        "Is the <image> cube red?",
        "In: Is the  cube red?\nOut: ",
        "Is the  cube red?</s>",
        id="image-tag-inside",
    ),
    pytest.param("<image><image>Where?<image>", "In: Where?\nOut: ", "Where?</s>", id="image-tags-repeated"),
    pytest.param(
        "Déplace le cube rouge → à gauche 🤖",
        "In: Déplace le cube rouge → à gauche 🤖\nOut: ",
        "Déplace le cube rouge → à gauche 🤖</s>",
        id="unicode",
    ),
    pytest.param(
        "\n\t  Pick it up.  \n",
        "In: Pick it up.\nOut: ",
        "Pick it up.</s>",
        id="surrounding-whitespace",
    ),
    pytest.param(
        "Line one.\n\nLine  two.",
        "In: Line one.\n\nLine  two.\nOut: ",
        "Line one.\n\nLine  two.</s>",
        id="inner-whitespace-kept",
    ),
]


@pytest.mark.parametrize("compat", [True, False], ids=["compat", "official"])
@pytest.mark.parametrize(("message", "human", "gpt"), MESSAGE_CLEANING)
def test_pure_message_cleaning(compat, message, human, gpt) -> None:
    builder = PurePromptBuilder("openvla", prismatic_compat=compat)
    assert builder.add_turn("human", message) == human
    assert builder.add_turn("gpt", message) == gpt


def test_compat_unicode_and_whitespace_in_every_builder_first_turn() -> None:
    message = "\n<image>\n  Déplace le cube rouge → à gauche 🤖 \t"
    assert PurePromptBuilder("openvla", prismatic_compat=True).add_turn("human", message) == (
        "In: Déplace le cube rouge → à gauche 🤖\nOut: "
    )
    assert LLaMa2ChatPromptBuilder("openvla", system_prompt="Robot.", prismatic_compat=True).add_turn(
        "human", message
    ) == ("[INST] <<SYS>\nRobot.\n<</SYS>>\n\nDéplace le cube rouge → à gauche 🤖 [/INST] ")
    assert (
        VicunaV15ChatPromptBuilder("openvla", system_prompt="Robot.", prismatic_compat=True).add_turn(
            "human", message
        )
        == "Robot. USER: Déplace le cube rouge → à gauche 🤖 ASSISTANT: "
    )
    assert MistralInstructPromptBuilder("openvla", prismatic_compat=True).add_turn("human", message) == (
        "[INST] Déplace le cube rouge → à gauche 🤖 [/INST] "
    )
    assert PhiPromptBuilder("openvla", prismatic_compat=True).add_turn("human", message) == (
        "<|endoftext|>Input: Déplace le cube rouge → à gauche 🤖\nOutput: "
    )


def test_official_llama2_unicode_and_whitespace_first_turn() -> None:
    builder = LLaMa2ChatPromptBuilder("openvla", system_prompt="Robot.")
    assert builder.add_turn("human", "\n<image>\n  Déplace le cube rouge → à gauche 🤖 \t") == (
        "<s>[INST] <<SYS>>\nRobot.\n<</SYS>>\n\nDéplace le cube rouge → à gauche 🤖 [/INST]"
    )
    assert builder.add_turn("gpt", "  D'accord 👍 \n") == " D'accord 👍 </s>"
    assert builder.get_prompt() == (
        "[INST] <<SYS>>\nRobot.\n<</SYS>>\n\nDéplace le cube rouge → à gauche 🤖 [/INST] D'accord 👍 </s>"
    )


# =====================================================================================================
# Rejected turns
# =====================================================================================================

both_modes = pytest.mark.parametrize("compat", [True, False], ids=["compat", "official"])


# Each rejected turn (role order, unknown role, non-string message) with its message words, for every
# builder in both modes: tests/unit/test_bad_inputs.py (PROMPTS). What a rejection leaves behind:


@both_modes
def test_rejected_turn_leaves_the_builder_unchanged(compat) -> None:
    builder = PurePromptBuilder("prismatic", prismatic_compat=compat)
    builder.add_turn("human", "Pick up the cup.")
    for role, message in [("human", "Again."), ("robot", "Done."), ("gpt", 3.5)]:
        with pytest.raises(ValueError):
            builder.add_turn(role, message)
    assert builder.turn_count == 1
    assert builder.get_prompt() == "In: Pick up the cup.\nOut:"
    assert builder.add_turn("gpt", "Done.") == "Done.</s>"
    assert builder.get_prompt() == "In: Pick up the cup.\nOut: Done.</s>"
