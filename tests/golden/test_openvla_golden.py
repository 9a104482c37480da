"""OpenVLA's training example and inference prompt, id for id, over the real LLaMA-2 tokenizer.

The expected values are OpenVLA's (openvla/openvla c8f03f4), written out here:
- `RLDSBatchTransform.__call__` (prismatic/vla/datasets/datasets.py): the human turn "What action should
  the robot take to {lang}?" with `lang` lower-cased, the reply `action_tokenizer(action)`, the ids of
  the whole `PurePromptBuilder("openvla")` prompt with BOS, and `labels[: -(len(action) + 1)] = -100`
  (the 7 action tokens and `</s>`; `predict_stop_token=False` also masks `</s>`).
- `OpenVLA.predict_action` (prismatic/models/vlas/openvla.py): the ids of the prompt after the human turn,
  with 29871 appended when the last id is not 29871.
The ids of "In: What action should the robot take to pick up the cup?\\nOut:" are those of the golden
Pure examples (tests/golden/test_examples_golden.py); the action ids follow OpenVLA's formula
`32000 - np.digitize(clip(a, -1, 1), np.linspace(-1, 1, 256))`, worked out by hand below.
"""

from __future__ import annotations

import functools

import pytest
import torch

from llm_backbones import ActionTokenizer, PurePromptBuilder
from llm_backbones.data.examples import IGNORE_INDEX, tokenize_prompt, vla_example, vla_prompt
from llm_backbones.errors import ActionError
from shared import padded_llama2_tokenizer

# Each value lies inside the bin whose token id is written beside it: id = 32000 - d where
# -1 + (d - 1) * 2/255 <= a < -1 + d * 2/255.
ACTION = [0.0549, -0.2039, -0.5647, 0.6588, -0.1020, 0.1647, -0.9961]
ACTION_IDS = [31865, 31898, 31944, 31788, 31885, 31851, 31999]  # d = 135, 102, 56, 212, 115, 149, 1
# The bin centres of those ids, -1 + (2d - 1)/255 (OpenVLA's `bin_centers[d - 1]`).
DECODED = [
    0.0549019608,
    -0.2039215686,
    -0.5647058824,
    0.6588235294,
    -0.1019607843,
    0.1647058824,
    -0.9960784314,
]

PROMPT_IDS = [
    1,
    512,
    29901,
    1724,
    3158,
    881,
    278,
    19964,
    2125,
    304,
    5839,
    701,
    278,
    18002,
    29973,
    13,
    3744,
    29901,
]
OPENVLA_PROMPT = PROMPT_IDS + [29871]  # predict_action appends the lone "▁"
OPENVLA_INPUT_IDS = PROMPT_IDS + [29871] + ACTION_IDS + [2]
OPENVLA_LABELS = [IGNORE_INDEX] * 19 + ACTION_IDS + [2]

MODES = {
    "official": PurePromptBuilder,
    "prismatic": functools.partial(PurePromptBuilder, prismatic_compat=True),
}


@pytest.fixture(scope="module")
def tok():
    return padded_llama2_tokenizer()


@pytest.fixture(scope="module")
def actions(tok):
    return ActionTokenizer(tok)


def test_action_ids_follow_openvlas_formula(actions) -> None:
    assert actions.encode(ACTION).tolist() == ACTION_IDS


@pytest.mark.parametrize("mode", MODES)
def test_vla_example_is_openvlas(tok, actions, mode) -> None:
    example = vla_example(tok, MODES[mode], actions, "pick up the cup", ACTION)
    assert example["input_ids"].tolist() == OPENVLA_INPUT_IDS
    assert example["labels"].tolist() == OPENVLA_LABELS


@pytest.mark.parametrize("mode", MODES)
def test_vla_example_without_stop_token(tok, actions, mode) -> None:
    example = vla_example(tok, MODES[mode], actions, "pick up the cup", ACTION, predict_stop_token=False)
    assert example["input_ids"].tolist() == OPENVLA_INPUT_IDS
    assert example["labels"].tolist() == [IGNORE_INDEX] * 19 + ACTION_IDS + [IGNORE_INDEX]


@pytest.mark.parametrize("mode", MODES)
def test_vla_prompt_is_predict_actions(tok, actions, mode) -> None:
    assert vla_prompt(tok, MODES[mode], "pick up the cup").tolist() == OPENVLA_PROMPT
    assert (
        vla_prompt(tok, MODES[mode], "pick up the cup", action_tokenizer=actions).tolist() == OPENVLA_PROMPT
    )


def test_instruction_is_lower_cased_as_openvla(tok, actions) -> None:
    assert vla_prompt(tok, PurePromptBuilder, "Pick Up The CUP").tolist() == OPENVLA_PROMPT
    upper = vla_example(tok, PurePromptBuilder, actions, "Pick Up The CUP", ACTION)
    assert upper["input_ids"].tolist() == OPENVLA_INPUT_IDS
    kept = vla_prompt(tok, PurePromptBuilder, "Pick up the cup", lowercase=False).tolist()
    assert kept[10] == 23868  # "▁Pick", not "▁pick" (5839)


def test_prompt_is_the_example_up_to_its_first_label(tok, actions) -> None:
    example = vla_example(tok, PurePromptBuilder, actions, "pick up the cup", ACTION)
    first = int((example["labels"] != IGNORE_INDEX).nonzero()[0])
    assert (
        example["input_ids"][:first].tolist()
        == vla_prompt(tok, PurePromptBuilder, "pick up the cup").tolist()
    )


def test_decode_gives_openvlas_bin_centres(actions) -> None:
    decoded = actions.decode(torch.tensor(ACTION_IDS))
    assert decoded.dtype == torch.float64
    torch.testing.assert_close(decoded, torch.tensor(DECODED, dtype=torch.float64), rtol=0, atol=1e-9)
    batch = actions.decode(torch.tensor([ACTION_IDS, ACTION_IDS]))
    assert batch.shape == (2, 7)
    torch.testing.assert_close(actions.decode_token_ids_to_actions(ACTION_IDS), decoded, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [29871, 2, 31743, 32000])
def test_decode_rejects_ids_outside_the_action_range(actions, bad) -> None:
    # 31744..31999 are the 256 action ids; 29871 ("▁"), 2 (</s>), 31743 and PAD 32000 are not
    with pytest.raises(ActionError, match=rf"\[{bad}\].*31744\.\.31999"):
        actions.decode([31865, bad])


def test_tokenize_prompt_ignores_a_callers_truncation_state(tok) -> None:
    # predict_action calls tokenizer(prompt, truncation=True): the Rust tokenizer keeps that state
    tok("word " * 50, truncation=True, max_length=20)
    conversation = [{"from": "human", "value": "What action should the robot take to pick up the cup?"}]
    assert tokenize_prompt(tok, PurePromptBuilder, conversation).tolist() == PROMPT_IDS
    example = vla_example(tok, PurePromptBuilder, ActionTokenizer(tok), "pick up the cup", ACTION)
    assert example["input_ids"].tolist() == OPENVLA_INPUT_IDS
    assert (example["labels"] != IGNORE_INDEX).sum() == 8


def test_over_long_prompt_raises_after_a_truncating_call(tok) -> None:
    from llm_backbones.errors import TokenizationError

    long_text = "pick up the cup " * 700  # about 2,800 tokens
    tok(long_text, truncation=True, max_length=2048)  # predict_action: cut at model_max_length, state left
    conversation = [{"from": "human", "value": long_text}]
    with pytest.raises(TokenizationError, match=r"more than max_length=2048"):
        tokenize_prompt(tok, PurePromptBuilder, conversation, max_length=2048)
