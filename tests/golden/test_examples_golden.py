"""Golden training examples: `tokenize_conversation` / `tokenize_prompt` over the real LLaMA-2 tokenizer.

How the expected values were derived (every id and label list below is a literal; nothing in this file
computes an expected value with the tokenizer or the library):

1. The prompt string of each case was written by hand from the format (Pure "In: {q}\\nOut: {a}</s>";
   Llama-2 chat as Meta's `chat_completion` with the leading "<s>" dropped because the tokenizer adds
   BOS; Vicuna v1.5 as FastChat `vicuna_v1.1`), see the `# rendered:` comment of each case.
2. The whole string, and each generation prompt (the prompt up to the end of a human turn, trailing
   whitespace stripped), was tokenized ONCE, by the raw HF tokenizer (`add_special_tokens=True`, BOS 1
   first); the pieces come from `convert_ids_to_tokens` and are kept as a parallel literal list.
3. The supervised span of each reply was decided from the rule: a reply supervises its own tokens,
   those holding a character of the reply, up to and including its EOS `</s>` (2). The `# reply k
   (supervised)` rows of the piece lists show that each span holds exactly the reply's pieces (with the
   space that follows the generation prompt folded into the first piece) and its `</s>`; a lone "▁"
   where nothing merges with the space (before OpenVLA's action tokens) is the template's separator and
   ends the generation prompt; a `<s>` opening a later turn belongs to the next generation prompt.
4. OpenVLA's own rule, from its `RLDSBatchTransform` (openvla/openvla c8f03f4,
   prismatic/vla/datasets/datasets.py): `labels[: -(len(action) + 1)] = IGNORE_INDEX` over the ids of
   the whole prompt, i.e. the 7 action tokens and `</s>`; its `predict_action` feeds the prompt's ids
   with 29871 appended. The openvla-action case is exactly that.
"""

from __future__ import annotations

import logging

import pytest
import torch

from llm_backbones import (
    LLaMa2ChatPromptBuilder,
    PurePromptBuilder,
    VicunaV15ChatPromptBuilder,
)
from llm_backbones.data.examples import tokenize_conversation, tokenize_prompt
from llm_backbones.errors import TokenizationError
from shared import padded_llama2_tokenizer

# =====================================================================================================
# Shared conversations
# =====================================================================================================

SYSTEM = "Be brief."

ONE_TURN = [
    {"from": "human", "value": "What is in the image?"},
    {"from": "gpt", "value": "A red cube."},
]
TWO_TURNS = [
    *ONE_TURN,
    {"from": "human", "value": "Where is it?"},
    {"from": "gpt", "value": "On the table."},
]
# The same two-turn conversation in chat (`role`/`content`) form.
TWO_TURNS_CHAT = [
    {"role": "user", "content": "What is in the image?"},
    {"role": "assistant", "content": "A red cube."},
    {"role": "user", "content": "Where is it?"},
    {"role": "assistant", "content": "On the table."},
]
ONE_TURN_CHAT = TWO_TURNS_CHAT[:2]

# OpenVLA: the reply is 7 action tokens, the characters of ids 31865, 31898, 31944, 31788, 31885,
# 31851, 31999 (the last 256 ids of the LLaMA-2 vocabulary are OpenVLA's action bins).
ACTION_REPLY = "\u0d9a\u5f66\u6548\u9686\u5df4\u6d4b\u7ed9"  # "ක彦效隆巴测给"
ACTION_CONVERSATION = [
    {"from": "human", "value": "What action should the robot take to pick up the cup?"},
    {"from": "gpt", "value": ACTION_REPLY},
]


@pytest.fixture(scope="module")
def tok():
    return padded_llama2_tokenizer()  # PAD = 32000, as the backbone


# =====================================================================================================
# Golden examples. `*_PROMPT_LEN` is the length of the generation prompt of the LAST reply: what
# tokenize_prompt(conversation[:-1]) must return is `*_INPUT_IDS[:*_PROMPT_LEN]`.
# =====================================================================================================

# --- Pure, one turn. rendered: "In: What is in the image?\nOut: A red cube.</s>"
#     generation prompt: "In: What is in the image?\nOut:" (12 tokens); reply 0 = [12, 17)
PURE_ONE_PROMPT_LEN = 12
PURE_ONE_INPUT_IDS = [
    1,
    512,
    29901,
    1724,
    338,
    297,
    278,
    1967,
    29973,
    13,  # generation prompt
    3744,
    29901,
    319,
    2654,
    28704,
    29889,
    2,  # reply 0 (supervised)
]
PURE_ONE_LABELS = [
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,  # generation prompt
    -100,
    -100,
    319,
    2654,
    28704,
    29889,
    2,  # reply 0 (supervised)
]
PURE_ONE_PIECES = [
    "<s>",
    "▁In",
    ":",
    "▁What",
    "▁is",
    "▁in",
    "▁the",
    "▁image",
    "?",
    "<0x0A>",  # generation prompt
    "Out",
    ":",
    "▁A",
    "▁red",
    "▁cube",
    ".",
    "</s>",  # reply 0 (supervised)
]

# --- Pure, two turns. rendered:
#     "In: What is in the image?\nOut: A red cube.</s>In: Where is it?\nOut: On the table.</s>"
#     generation prompts end at tokens 12 and 26; reply 0 = [12, 17), reply 1 = [26, 31)
PURE_TWO_PROMPT_LEN = 26
PURE_TWO_INPUT_IDS = [
    1,
    512,
    29901,
    1724,
    338,
    297,
    278,
    1967,
    29973,
    13,  # generation prompt
    3744,
    29901,
    319,
    2654,
    28704,
    29889,
    2,  # reply 0 (supervised)
    512,
    29901,
    6804,
    338,
    372,
    29973,
    13,
    3744,
    29901,  # generation prompt 1
    1551,
    278,
    1591,
    29889,
    2,  # reply 1 (supervised)
]
PURE_TWO_LABELS = [
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,  # generation prompt
    -100,
    -100,
    319,
    2654,
    28704,
    29889,
    2,  # reply 0 (supervised)
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,  # generation prompt 1
    1551,
    278,
    1591,
    29889,
    2,  # reply 1 (supervised)
]
PURE_TWO_PIECES = [
    "<s>",
    "▁In",
    ":",
    "▁What",
    "▁is",
    "▁in",
    "▁the",
    "▁image",
    "?",
    "<0x0A>",  # generation prompt
    "Out",
    ":",
    "▁A",
    "▁red",
    "▁cube",
    ".",
    "</s>",  # reply 0 (supervised)
    "▁In",
    ":",
    "▁Where",
    "▁is",
    "▁it",
    "?",
    "<0x0A>",
    "Out",
    ":",  # generation prompt 1
    "▁On",
    "▁the",
    "▁table",
    ".",
    "</s>",  # reply 1 (supervised)
]

# --- Llama-2 chat (official), one turn, system_prompt="Be brief.". rendered:
#     "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is in the image? [/INST] A red cube. </s>"
#     generation prompt ends at "[/INST]" (30 tokens); reply 0 = " A red cube. </s>" = [30, 36)
LLAMA2_ONE_PROMPT_LEN = 30
LLAMA2_ONE_INPUT_IDS = [
    1,
    518,
    25580,
    29962,
    3532,
    14816,
    29903,
    6778,
    13,
    3629,  # generation prompt
    11473,
    29889,
    13,
    29966,
    829,
    14816,
    29903,
    6778,
    13,
    13,
    5618,
    338,
    297,
    278,
    1967,
    29973,
    518,
    29914,
    25580,
    29962,
    319,
    2654,
    28704,
    29889,
    29871,
    2,  # reply 0 (supervised)
]
LLAMA2_ONE_LABELS = [
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,  # generation prompt
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    319,
    2654,
    28704,
    29889,
    29871,
    2,  # reply 0 (supervised)
]
LLAMA2_ONE_PIECES = [
    "<s>",
    "▁[",
    "INST",
    "]",
    "▁<<",
    "SY",
    "S",
    ">>",
    "<0x0A>",
    "Be",  # generation prompt
    "▁brief",
    ".",
    "<0x0A>",
    "<",
    "</",
    "SY",
    "S",
    ">>",
    "<0x0A>",
    "<0x0A>",
    "What",
    "▁is",
    "▁in",
    "▁the",
    "▁image",
    "?",
    "▁[",
    "/",
    "INST",
    "]",
    "▁A",
    "▁red",
    "▁cube",
    ".",
    "▁",
    "</s>",  # reply 0 (supervised)
]

# --- Llama-2 chat (official), two turns, system_prompt="Be brief.". rendered:
#     "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is in the image? [/INST] A red cube. </s>"
#     "<s>[INST] Where is it? [/INST] On the table. </s>"
#     reply 0 = [30, 36); the "<s>" at 36 opens generation prompt 1 (unsupervised); reply 1 = [48, 54)
LLAMA2_TWO_PROMPT_LEN = 48
LLAMA2_TWO_INPUT_IDS = [
    1,
    518,
    25580,
    29962,
    3532,
    14816,
    29903,
    6778,
    13,
    3629,  # generation prompt
    11473,
    29889,
    13,
    29966,
    829,
    14816,
    29903,
    6778,
    13,
    13,
    5618,
    338,
    297,
    278,
    1967,
    29973,
    518,
    29914,
    25580,
    29962,
    319,
    2654,
    28704,
    29889,
    29871,
    2,  # reply 0 (supervised)
    1,
    518,
    25580,
    29962,
    6804,
    338,
    372,
    29973,
    518,
    29914,  # generation prompt 1
    25580,
    29962,
    1551,
    278,
    1591,
    29889,
    29871,
    2,  # reply 1 (supervised)
]
LLAMA2_TWO_LABELS = [
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,  # generation prompt
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    319,
    2654,
    28704,
    29889,
    29871,
    2,  # reply 0 (supervised)
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,  # generation prompt 1
    -100,
    -100,
    1551,
    278,
    1591,
    29889,
    29871,
    2,  # reply 1 (supervised)
]
LLAMA2_TWO_PIECES = [
    "<s>",
    "▁[",
    "INST",
    "]",
    "▁<<",
    "SY",
    "S",
    ">>",
    "<0x0A>",
    "Be",  # generation prompt
    "▁brief",
    ".",
    "<0x0A>",
    "<",
    "</",
    "SY",
    "S",
    ">>",
    "<0x0A>",
    "<0x0A>",
    "What",
    "▁is",
    "▁in",
    "▁the",
    "▁image",
    "?",
    "▁[",
    "/",
    "INST",
    "]",
    "▁A",
    "▁red",
    "▁cube",
    ".",
    "▁",
    "</s>",  # reply 0 (supervised)
    "<s>",
    "▁[",
    "INST",
    "]",
    "▁Where",
    "▁is",
    "▁it",
    "?",
    "▁[",
    "/",  # generation prompt 1
    "INST",
    "]",
    "▁On",
    "▁the",
    "▁table",
    ".",
    "▁",
    "</s>",  # reply 1 (supervised)
]

# --- Vicuna v1.5 (official), one turn, system_prompt="Be brief.". rendered:
#     "Be brief. USER: What is in the image? ASSISTANT: A red cube.</s>"
#     generation prompt ends at "ASSISTANT:" (18 tokens); reply 0 = [18, 23)
VICUNA_ONE_PROMPT_LEN = 18
VICUNA_ONE_INPUT_IDS = [
    1,
    1522,
    11473,
    29889,
    3148,
    1001,
    29901,
    1724,
    338,
    297,  # generation prompt
    278,
    1967,
    29973,
    319,
    1799,
    9047,
    13566,
    29901,
    319,
    2654,
    28704,
    29889,
    2,  # reply 0 (supervised)
]
VICUNA_ONE_LABELS = [
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,  # generation prompt
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    319,
    2654,
    28704,
    29889,
    2,  # reply 0 (supervised)
]
VICUNA_ONE_PIECES = [
    "<s>",
    "▁Be",
    "▁brief",
    ".",
    "▁US",
    "ER",
    ":",
    "▁What",
    "▁is",
    "▁in",  # generation prompt
    "▁the",
    "▁image",
    "?",
    "▁A",
    "SS",
    "IST",
    "ANT",
    ":",
    "▁A",
    "▁red",
    "▁cube",
    ".",
    "</s>",  # reply 0 (supervised)
]

# --- Vicuna v1.5 (official), two turns, system_prompt="Be brief.". rendered:
#     "Be brief. USER: What is in the image? ASSISTANT: A red cube.</s>"
#     "USER: Where is it? ASSISTANT: On the table.</s>"
#     reply 0 = [18, 23), reply 1 = [35, 40)
VICUNA_TWO_PROMPT_LEN = 35
VICUNA_TWO_INPUT_IDS = [
    1,
    1522,
    11473,
    29889,
    3148,
    1001,
    29901,
    1724,
    338,
    297,  # generation prompt
    278,
    1967,
    29973,
    319,
    1799,
    9047,
    13566,
    29901,
    319,
    2654,
    28704,
    29889,
    2,  # reply 0 (supervised)
    3148,
    1001,
    29901,
    6804,
    338,
    372,
    29973,
    319,
    1799,
    9047,  # generation prompt 1
    13566,
    29901,
    1551,
    278,
    1591,
    29889,
    2,  # reply 1 (supervised)
]
VICUNA_TWO_LABELS = [
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,  # generation prompt
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    319,
    2654,
    28704,
    29889,
    2,  # reply 0 (supervised)
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,  # generation prompt 1
    -100,
    -100,
    1551,
    278,
    1591,
    29889,
    2,  # reply 1 (supervised)
]
VICUNA_TWO_PIECES = [
    "<s>",
    "▁Be",
    "▁brief",
    ".",
    "▁US",
    "ER",
    ":",
    "▁What",
    "▁is",
    "▁in",  # generation prompt
    "▁the",
    "▁image",
    "?",
    "▁A",
    "SS",
    "IST",
    "ANT",
    ":",
    "▁A",
    "▁red",
    "▁cube",
    ".",
    "</s>",  # reply 0 (supervised)
    "▁US",
    "ER",
    ":",
    "▁Where",
    "▁is",
    "▁it",
    "?",
    "▁A",
    "SS",
    "IST",  # generation prompt 1
    "ANT",
    ":",
    "▁On",
    "▁the",
    "▁table",
    ".",
    "</s>",  # reply 1 (supervised)
]

# --- OpenVLA action example (Pure). rendered:
#     "In: What action should the robot take to pick up the cup?\nOut: ක彦效隆巴测给</s>"
#     The space before the action characters merges with nothing (no "▁ක" piece), so it is a lone "▁"
#     (29871): the template's separator, the last token of the generation prompt (19 tokens), never
#     supervised; reply 0 = [19, 27): the 7 action tokens and </s>, OpenVLA's labels exactly. The
#     generation prompt is the one OpenVLA's predict_action feeds (it appends this 29871 by hand).
ACTION_PROMPT_LEN = 19
ACTION_SUPERVISED = [31865, 31898, 31944, 31788, 31885, 31851, 31999, 2]
ACTION_INPUT_IDS = [
    1,
    512,
    29901,
    1724,
    3158,
    881,
    278,
    19964,
    2125,
    304,  # generation prompt
    5839,
    701,
    278,
    18002,
    29973,
    13,
    3744,
    29901,
    29871,
    31865,
    31898,
    31944,
    31788,
    31885,
    31851,
    31999,
    2,  # reply 0 (supervised)
]
ACTION_LABELS = [
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,  # generation prompt
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    -100,
    31865,
    31898,
    31944,
    31788,
    31885,
    31851,
    31999,
    2,  # reply 0 (supervised)
]
ACTION_PIECES = [
    "<s>",
    "▁In",
    ":",
    "▁What",
    "▁action",
    "▁should",
    "▁the",
    "▁robot",
    "▁take",
    "▁to",  # generation prompt
    "▁pick",
    "▁up",
    "▁the",
    "▁cup",
    "?",
    "<0x0A>",
    "Out",
    ":",
    "▁",
    "ක",
    "彦",
    "效",
    "隆",
    "巴",
    "测",
    "给",
    "</s>",  # reply 0 (supervised)
]


# (id, builder, conversation, system_prompt, input_ids, labels, pieces, prompt_len)
CASES = {
    "pure-one": (
        PurePromptBuilder,
        ONE_TURN,
        None,
        PURE_ONE_INPUT_IDS,
        PURE_ONE_LABELS,
        PURE_ONE_PIECES,
        PURE_ONE_PROMPT_LEN,
    ),
    "pure-two": (
        PurePromptBuilder,
        TWO_TURNS,
        None,
        PURE_TWO_INPUT_IDS,
        PURE_TWO_LABELS,
        PURE_TWO_PIECES,
        PURE_TWO_PROMPT_LEN,
    ),
    "llama2-one": (
        LLaMa2ChatPromptBuilder,
        ONE_TURN,
        SYSTEM,
        LLAMA2_ONE_INPUT_IDS,
        LLAMA2_ONE_LABELS,
        LLAMA2_ONE_PIECES,
        LLAMA2_ONE_PROMPT_LEN,
    ),
    "llama2-two": (
        LLaMa2ChatPromptBuilder,
        TWO_TURNS,
        SYSTEM,
        LLAMA2_TWO_INPUT_IDS,
        LLAMA2_TWO_LABELS,
        LLAMA2_TWO_PIECES,
        LLAMA2_TWO_PROMPT_LEN,
    ),
    "vicuna-one": (
        VicunaV15ChatPromptBuilder,
        ONE_TURN_CHAT,
        SYSTEM,
        VICUNA_ONE_INPUT_IDS,
        VICUNA_ONE_LABELS,
        VICUNA_ONE_PIECES,
        VICUNA_ONE_PROMPT_LEN,
    ),
    "vicuna-two": (
        VicunaV15ChatPromptBuilder,
        TWO_TURNS_CHAT,
        SYSTEM,
        VICUNA_TWO_INPUT_IDS,
        VICUNA_TWO_LABELS,
        VICUNA_TWO_PIECES,
        VICUNA_TWO_PROMPT_LEN,
    ),
    "openvla-action": (
        PurePromptBuilder,
        ACTION_CONVERSATION,
        None,
        ACTION_INPUT_IDS,
        ACTION_LABELS,
        ACTION_PIECES,
        ACTION_PROMPT_LEN,
    ),
}
CASE_IDS = list(CASES)


def example(tok, case: str) -> dict[str, torch.Tensor]:
    builder, conversation, system_prompt, *_ = CASES[case]
    return tokenize_conversation(tok, builder, conversation, system_prompt=system_prompt)


# =====================================================================================================
# The golden data itself is consistent (guards the literals, not the library)
# =====================================================================================================


@pytest.mark.parametrize("case", CASE_IDS)
def test_golden_lists_are_parallel(case: str) -> None:
    *_, input_ids, labels, pieces, prompt_len = CASES[case]
    assert len(input_ids) == len(labels) == len(pieces)
    assert 0 < prompt_len < len(input_ids)
    assert all(label in (-100, token) for label, token in zip(labels, input_ids, strict=True))


@pytest.mark.parametrize("case", CASE_IDS)
def test_golden_pieces_match_ids(tok, case: str) -> None:
    *_, input_ids, _labels, pieces, _prompt_len = CASES[case]
    assert tok.convert_ids_to_tokens(input_ids) == pieces


def test_action_reply_literal_is_the_seven_action_tokens(tok) -> None:
    assert tok.decode([31865, 31898, 31944, 31788, 31885, 31851, 31999]) == ACTION_REPLY


# =====================================================================================================
# tokenize_conversation / tokenize_prompt against the golden examples
# =====================================================================================================


@pytest.mark.parametrize("case", CASE_IDS)
def test_input_ids(tok, case: str) -> None:
    out = example(tok, case)
    assert out["input_ids"].dtype == torch.long
    assert out["input_ids"].tolist() == CASES[case][3]


@pytest.mark.parametrize("case", CASE_IDS)
def test_labels(tok, case: str) -> None:
    out = example(tok, case)
    assert out["labels"].dtype == torch.long
    assert out["labels"].tolist() == CASES[case][4]


@pytest.mark.parametrize("case", CASE_IDS)
def test_generation_prompt_is_the_golden_prefix(tok, case: str) -> None:
    builder, conversation, system_prompt, input_ids, _labels, _pieces, prompt_len = CASES[case]
    reply = conversation[-1].get("value", conversation[-1].get("content"))
    prompt = tokenize_prompt(tok, builder, conversation[:-1], system_prompt=system_prompt, reply=reply)
    assert prompt.dtype == torch.long
    assert prompt.tolist() == input_ids[:prompt_len]


@pytest.mark.parametrize("case", [c for c in CASE_IDS if c != "openvla-action"])
def test_text_reply_prompt_needs_no_reply(tok, case: str) -> None:
    # where the separator merges into the reply's first token ("▁A"), the prompt is the rendered prompt
    builder, conversation, system_prompt, input_ids, _labels, _pieces, prompt_len = CASES[case]
    prompt = tokenize_prompt(tok, builder, conversation[:-1], system_prompt=system_prompt)
    assert prompt.tolist() == input_ids[:prompt_len]


def test_openvla_action_supervised_ids(tok) -> None:
    labels = example(tok, "openvla-action")["labels"].tolist()
    assert [label for label in labels if label != -100] == ACTION_SUPERVISED
    assert labels[ACTION_PROMPT_LEN:] == ACTION_SUPERVISED
    assert labels[ACTION_PROMPT_LEN - 1] == -100  # the lone "▁" 29871 is never supervised


def test_openvla_action_prompt_ends_with_the_separator(tok) -> None:
    # OpenVLA's predict_action: the rendered prompt's ids, then 29871 appended by hand
    prompt = tokenize_prompt(tok, PurePromptBuilder, ACTION_CONVERSATION[:1], reply=ACTION_REPLY).tolist()
    assert prompt[-3:] == [3744, 29901, 29871]  # "Out", ":", "▁"
    rendered = tokenize_prompt(tok, PurePromptBuilder, ACTION_CONVERSATION[:1]).tolist()
    assert prompt == rendered + [29871]


def test_chat_and_llava_turn_keys_give_the_same_example(tok) -> None:
    llava = tokenize_conversation(tok, VicunaV15ChatPromptBuilder, TWO_TURNS, system_prompt=SYSTEM)
    assert llava["input_ids"].tolist() == VICUNA_TWO_INPUT_IDS
    assert llava["labels"].tolist() == VICUNA_TWO_LABELS


# --- Llama-2 chat with its default system prompt (model_family "prismatic"): only the reply's labels
#     and the prefix property are pinned. rendered:
#     "[INST] <<SYS>>\nYou are a helpful language and vision assistant. ...\n<</SYS>>\n\n"
#     "What is in the image? [/INST] A red cube. </s>"
LLAMA2_DEFAULT_SUPERVISED = [319, 2654, 28704, 29889, 29871, 2]  # "▁A" "▁red" "▁cube" "." "▁" "</s>"


def test_llama2_default_system_prompt_supervises_only_the_reply(tok) -> None:
    out = tokenize_conversation(tok, LLaMa2ChatPromptBuilder, ONE_TURN)
    labels = out["labels"].tolist()
    assert [label for label in labels if label != -100] == LLAMA2_DEFAULT_SUPERVISED
    assert labels[-6:] == LLAMA2_DEFAULT_SUPERVISED
    assert out["input_ids"].tolist()[-6:] == LLAMA2_DEFAULT_SUPERVISED


def test_llama2_default_system_prompt_generation_prompt_is_a_prefix(tok) -> None:
    out = tokenize_conversation(tok, LLaMa2ChatPromptBuilder, ONE_TURN)
    prompt = tokenize_prompt(tok, LLaMa2ChatPromptBuilder, ONE_TURN[:1]).tolist()
    input_ids = out["input_ids"].tolist()
    assert prompt[:9] == [1, 518, 25580, 29962, 3532, 14816, 29903, 6778, 13]  # <s> ▁[ INST ] ▁<< SY S >> \n
    assert prompt[9] == 3492  # "You": the default system prompt opens the first user message
    assert prompt[-4:] == [518, 29914, 25580, 29962]  # ▁[ / INST ]
    assert input_ids[: len(prompt)] == prompt
    assert len(input_ids) == len(prompt) + len(LLAMA2_DEFAULT_SUPERVISED)


# =====================================================================================================
# max_length
# =====================================================================================================


def test_max_length_that_cuts_a_reply_entirely_raises(tok) -> None:
    # Pure two turns: reply 1's generation prompt alone is 26 tokens, so max_length=20 leaves it nothing.
    with pytest.raises(TokenizationError, match=r"max_length=20") as info:
        tokenize_conversation(tok, PurePromptBuilder, TWO_TURNS, max_length=20)
    assert "reply 1 (turn 3)" in str(info.value)
    assert "reply 0" not in str(info.value)


def test_max_length_at_the_end_of_a_generation_prompt_raises(tok) -> None:
    # Boundary: max_length=26 keeps reply 1's whole generation prompt but none of its tokens.
    with pytest.raises(TokenizationError, match=r"reply 1 \(turn 3\)"):
        tokenize_conversation(tok, PurePromptBuilder, TWO_TURNS, max_length=26)


def test_max_length_keeping_one_reply_token_truncates_with_a_warning(tok, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="llm_backbones"):
        out = tokenize_conversation(tok, PurePromptBuilder, TWO_TURNS, max_length=27)
    (record,) = caplog.records
    assert record.getMessage() == (
        "max_length=27 truncates a 31-token conversation: reply 1 (turn 3) keeps 1 of its 5 tokens"
    )
    assert out["input_ids"].tolist() == PURE_TWO_INPUT_IDS[:27]
    assert out["labels"].tolist() == [
        -100, -100, -100, -100, -100, -100, -100, -100, -100, -100, -100, -100,  # generation prompt
        319, 2654, 28704, 29889, 2,  # reply 0: ▁A ▁red ▁cube . </s>
        -100, -100, -100, -100, -100, -100, -100, -100, -100,  # generation prompt 1
        1551,  # reply 1, cut after "▁On"
    ]  # fmt: skip


def test_max_length_not_reached_changes_nothing(tok) -> None:
    out = tokenize_conversation(tok, PurePromptBuilder, TWO_TURNS, max_length=31)
    assert out["input_ids"].tolist() == PURE_TWO_INPUT_IDS
    assert out["labels"].tolist() == PURE_TWO_LABELS


def test_drop_truncated_replies_keeps_the_earlier_reply(tok, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="llm_backbones"):
        out = tokenize_conversation(
            tok, PurePromptBuilder, TWO_TURNS, max_length=20, drop_truncated_replies=True
        )
    assert [r.getMessage() for r in caplog.records] == [
        "max_length=20 truncates a 31-token conversation: drops reply 1 (turn 3)"
    ]
    assert out["input_ids"].tolist() == [
        1, 512, 29901, 1724, 338, 297, 278, 1967, 29973, 13, 3744, 29901,  # <s> ▁In : ▁What ... <0x0A> Out :
        319, 2654, 28704, 29889, 2,  # ▁A ▁red ▁cube . </s>
        512, 29901, 6804,  # ▁In : ▁Where
    ]  # fmt: skip
    assert out["labels"].tolist() == [
        -100, -100, -100, -100, -100, -100, -100, -100, -100, -100, -100, -100,
        319, 2654, 28704, 29889, 2,  # reply 0 kept
        -100, -100, -100,
    ]  # fmt: skip


# Bad conversations and over-long examples that raise (empty, malformed turns, a reply cut entirely,
# max_length values): tests/unit/test_bad_inputs.py (CONVERSATIONS).


# --- The same rule in the chat formats, for an action reply (model_family "openvla"): the separator the
#     template puts before the reply ("[/INST] ", "ASSISTANT: ") is a lone "▁" that ends the generation
#     prompt; the reply supervises its 7 action tokens and what the format closes it with. Meta's Llama-2
#     chat closes a reply with " </s>" (a "▁" then </s>); Prismatic's Llama-2 chat with "</s>".
ACTIONS = [31865, 31898, 31944, 31788, 31885, 31851, 31999]
CHAT_ACTION_CASES = {
    # (builder, prismatic_compat): (last 4 generation-prompt ids, supervised ids)
    ("llama2-chat", False): ([29914, 25580, 29962, 29871], ACTIONS + [29871, 2]),  # "/" "INST" "]" "▁"
    ("llama2-chat", True): ([29914, 25580, 29962, 29871], ACTIONS + [2]),
    ("vicuna", False): ([9047, 13566, 29901, 29871], ACTIONS + [2]),  # "IST" "ANT" ":" "▁"
    ("vicuna", True): ([9047, 13566, 29901, 29871], ACTIONS + [2]),
}
CHAT_BUILDERS = {"llama2-chat": LLaMa2ChatPromptBuilder, "vicuna": VicunaV15ChatPromptBuilder}


@pytest.mark.parametrize(
    "case", list(CHAT_ACTION_CASES), ids=lambda c: f"{c[0]}-{'prismatic' if c[1] else 'official'}"
)
def test_chat_formats_supervise_only_the_action_reply(tok, case) -> None:
    name, compat = case
    prompt_tail, supervised = CHAT_ACTION_CASES[case]

    def fn(family, system_prompt=None):
        return CHAT_BUILDERS[name](family, system_prompt=system_prompt, prismatic_compat=compat)

    example = tokenize_conversation(tok, fn, ACTION_CONVERSATION, model_family="openvla")
    ids, labels = example["input_ids"].tolist(), example["labels"].tolist()
    first = len(ids) - len(supervised)
    assert ids[first - 4 : first] == prompt_tail
    assert labels == [-100] * first + supervised
    prompt = tokenize_prompt(tok, fn, ACTION_CONVERSATION[:1], model_family="openvla", reply=ACTION_REPLY)
    assert prompt.tolist() == ids[:first]
