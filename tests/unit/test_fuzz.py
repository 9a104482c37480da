"""hypothesis fuzzing of the prompt builders, the training-example builder and the action tokenizer.

Inputs mix valid values with junk of every type (None, numbers, bytes, lists, lone surrogates, NaN/inf,
ragged lists, empty arrays). Each test lets only the typed errors of its module through (any other
exception fails the test), checks that a rejected call changes nothing, and checks the invariants of
every accepted result. The builders and training examples are fuzzed in every prompt format of
`PROMPT_FORMATS`, the examples with the tokenizer of a family that uses the format
(`tests/format_tokenizers.py`; test ids "<format>@<tokenizer>"). Budgets are bounded (`max_examples`) so
the suite stays fast.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from format_tokenizers import FIRST_ID, examples, family_tokenizer, format_params, without_image_markers
from llm_backbones import PROMPT_FORMATS, builder_for
from llm_backbones.data.actions import ActionTokenizer
from llm_backbones.data.examples import IGNORE_INDEX, tokenize_conversation, tokenize_prompt
from llm_backbones.errors import ActionError, ConversationError, PromptFormatError, TokenizationError
from shared import padded_llama2_tokenizer

TOKENIZER = padded_llama2_tokenizer()
ACTIONS = ActionTokenizer(TOKENIZER)
LOW, HIGH = ACTIONS.token_id_range
HALF_BIN = (2.0 / 255) / 2

FUZZ = settings(max_examples=examples(250), deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Per format (17) or format/tokenizer pair (19): the former budget was 250 over ten renderings.
FUZZ_BUILDER = settings(FUZZ, max_examples=examples(60))
FUZZ_EXAMPLE = settings(FUZZ, max_examples=examples(40))

# === Strategies ===
text = st.text(st.characters(codec="utf-8"), max_size=15)
fragments = st.sampled_from(
    ["<image>", " ", "\n", "</s>", "<s>", "[INST]", "USER:", "{msg}", "{}", "é🤖", "\t"]
    # the newer families' control-token strings
    + ["<|eot_id|>", "<|begin_of_text|>", "<|im_end|>", "<end_of_turn>", "<bos>", "<|end|>", "<|endoftext|>"]
)
good_message = st.lists(st.one_of(fragments, text), max_size=4).map("".join)
bad_message = st.one_of(
    st.none(),
    st.integers(),
    st.floats(),
    st.binary(max_size=4),
    st.lists(text, max_size=2),
    st.sampled_from(["\ud800", "ok\udcffok"]),  # lone surrogates: text decoded with the wrong codec
)


def mostly(common: st.SearchStrategy, rare: st.SearchStrategy, percent: int = 80) -> st.SearchStrategy:
    """`common` in `percent`% of draws, `rare` otherwise (one_of would weigh them equally)."""
    return st.integers(0, 99).flatmap(lambda k: common if k < percent else rare)


message = mostly(good_message, bad_message)
role = mostly(
    st.sampled_from(["human", "gpt", "user", "assistant"]),
    st.one_of(st.sampled_from(["system", "robot", "", "Human", " gpt"]), st.none(), st.integers()),
)
family = mostly(
    st.sampled_from(["prismatic", "openvla"]),
    st.one_of(st.sampled_from(["openvia", ""]), st.none(), st.integers(), st.lists(text, max_size=1)),
    percent=90,
)
system_prompt = mostly(st.none(), st.one_of(good_message, st.integers(), st.lists(text, max_size=1)))
# "next" uses the role the builder expects (an alias half of the time), so long conversations get built.
operations = st.lists(
    st.tuples(st.sampled_from(["next", "next", "next", "add", "potential"]), role, message, st.booleans()),
    max_size=8,
)

ALTERNATION = {0: ("human", "user"), 1: ("gpt", "assistant")}

# Formats whose prompts keep their trailing whitespace (the official templates of the newer families: the
# generation prompt ends with the newline the model was trained on). Every other format strips it (the
# original's rule). Per format: how the prompt ends after a human turn (the generation prompt) and after a
# reply.
KEEPS_TRAILING_WHITESPACE = {
    "llama3-instruct": ("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
    "qwen2.5-instruct": ("<|im_start|>assistant\n", "<|im_end|>\n"),
    "gemma2-instruct": ("<start_of_turn>model\n", "<end_of_turn>\n"),
    "phi3.5-instruct": ("<|assistant|>\n", "<|end|>\n"),
}
# Formats that keep a message's surrounding whitespace (their official templates write it as given).
KEEPS_MESSAGE_WHITESPACE = ("qwen2.5-instruct", "phi3.5-instruct")


@pytest.mark.parametrize("name", list(PROMPT_FORMATS))
@FUZZ_BUILDER
@given(model_family=family, system=system_prompt, ops=operations)
def test_prompt_builders_fuzz(name, model_family, system, ops) -> None:
    try:
        builder = builder_for(name)(model_family, system_prompt=system)
    except (PromptFormatError, ConversationError):
        return
    assert builder.format.name == name
    ends = KEEPS_TRAILING_WHITESPACE.get(name)
    assert builder.get_prompt() == ""
    for op, turn_role, msg, alias in ops:
        raw, turns, prompt = builder.prompt, builder.turn_count, builder.get_prompt()
        if op == "next":
            op, turn_role = "add", ALTERNATION[turns % 2][alias]
        try:
            result = builder.add_turn(turn_role, msg) if op == "add" else builder.get_potential_prompt(msg)
        except (ConversationError, PromptFormatError):
            assert (builder.prompt, builder.turn_count) == (raw, turns)  # a rejected call changes nothing
            continue
        assert isinstance(msg, str)  # only text is ever accepted
        if op == "add":
            assert turn_role in ALTERNATION[turns % 2]  # only the alternating role is accepted
            assert builder.turn_count == turns + 1
            assert builder.prompt == raw + result  # add_turn returns exactly the text it added
            cleaned = without_image_markers(msg)
            cleaned = cleaned if name in KEEPS_MESSAGE_WHITESPACE else cleaned.strip()
            assert cleaned in result
            start, end = builder.message_spans[-1]  # and records where the message lies
            assert builder.prompt[start:end] == (
                (cleaned or builder.format.empty_reply) if turns % 2 else cleaned
            )
        else:
            assert (builder.prompt, builder.turn_count) == (raw, turns)  # potential prompts change nothing
            assert turns % 2 == 0
            assert result.startswith(prompt)
            assert result.endswith(ends[0]) if ends else result == result.rstrip()
        current = builder.get_prompt()
        assert isinstance(current, str)
        if ends is None:
            assert current == current.rstrip()
        elif builder.turn_count:  # the prompt as rendered (less a leading BOS), its last newline included
            assert builder.prompt.endswith(current)
            assert current.endswith(ends[0] if builder.turn_count % 2 else ends[1])


# === Training examples ===
@st.composite
def alternating(draw, messages=good_message) -> list[dict]:
    keys = draw(st.sampled_from([("from", "value"), ("role", "content")]))
    names = ("human", "gpt") if keys[0] == "from" else ("user", "assistant")
    n = draw(st.integers(min_value=1, max_value=5))
    return [{keys[0]: names[i % 2], keys[1]: draw(messages)} for i in range(n)]


junk_turn = st.one_of(
    st.fixed_dictionaries({"from": role, "value": message}),
    st.fixed_dictionaries({"role": role, "content": message}),
    st.dictionaries(st.sampled_from(["from", "text", "speaker", "content"]), text, max_size=2),
    text,
    st.none(),
    st.integers(),
    st.tuples(text, text),
)
conversation = mostly(
    alternating(),
    st.one_of(alternating(message), st.lists(junk_turn, max_size=5), st.none(), text, st.integers()),
    percent=70,
)
max_length = mostly(
    st.one_of(st.none(), st.integers(min_value=1, max_value=80)),
    st.one_of(st.integers(min_value=-3, max_value=0), st.sampled_from(["8", 2.5, True])),
    percent=90,
)


@pytest.mark.parametrize(("name", "tokenizer_name"), format_params())
@FUZZ_EXAMPLE
@given(conv=conversation, limit=max_length, drop=st.booleans())
def test_training_example_builder_fuzz(name, tokenizer_name, conv, limit, drop) -> None:
    tokenizer = family_tokenizer(tokenizer_name)
    # BOS inserted by the tokenizer (Phi-2's format writes its own); none where the family has none.
    first = FIRST_ID[tokenizer_name]

    def starts_right(ids: torch.Tensor) -> bool:
        return ids[0].item() == first if first is not None else ids[0].item() != tokenizer.bos_token_id

    typed = (ConversationError, TokenizationError, PromptFormatError)
    try:
        example = tokenize_conversation(tokenizer, name, conv, max_length=limit, drop_truncated_replies=drop)
    except typed:
        example = None
    if example is not None:
        ids, labels = example["input_ids"], example["labels"]
        assert ids.dtype == labels.dtype == torch.long and ids.dim() == 1 and ids.shape == labels.shape
        assert starts_right(ids)
        assert ((ids >= 0) & (ids < len(tokenizer))).all()
        supervised = labels != IGNORE_INDEX
        assert supervised.any()  # never an example with an empty mask
        assert torch.equal(labels[supervised], ids[supervised])  # labels are the tokens themselves
        if isinstance(limit, int) and not isinstance(limit, bool):
            assert len(ids) <= limit
    # The generation prompt of the same conversation: typed error, or BOS-first ids.
    try:
        prompt = tokenize_prompt(tokenizer, name, conv if not isinstance(conv, list) else conv[:-1] or conv)
    except typed:
        return
    assert prompt.dtype == torch.long and prompt.dim() == 1 and starts_right(prompt)


# === Action tokenizer ===
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)
action_input = st.one_of(
    hnp.arrays(
        st.sampled_from([np.float64, np.float32, np.float16]), shapes, elements=st.floats(-5, 5, width=16)
    ),
    hnp.arrays(np.float64, shapes, elements=any_float),
    hnp.arrays(st.sampled_from([np.int64, np.int8, np.bool_, np.complex128]), shapes),
    st.lists(any_float, max_size=8),
    st.lists(st.lists(st.floats(-2, 2), max_size=3), max_size=3),  # may be ragged
    st.lists(st.one_of(st.floats(-2, 2), text), min_size=1, max_size=3),
    st.none(),
    text,
    st.integers(-10, 10),
    any_float,
)


def valid_actions(value: object) -> np.ndarray | None:
    """The oracle: finite real numbers of shape [..., D >= 1], as float64; None when not."""
    if value is None or isinstance(value, str):
        return None
    try:
        array = np.asarray(value)
    except ValueError:  # ragged
        return None
    if array.dtype.kind not in "biuf" or array.ndim == 0 or array.shape[-1] == 0:
        return None
    array = array.astype(np.float64)
    return array if np.isfinite(array).all() else None


@FUZZ
@given(value=action_input)
def test_action_encode_fuzz(value) -> None:
    expected = valid_actions(value)
    if expected is None:
        with pytest.raises(ActionError):
            ACTIONS.encode(value)
        return
    ids = ACTIONS.encode(value)
    assert ids.dtype == torch.long and tuple(ids.shape) == expected.shape
    assert ((ids >= LOW) & (ids <= HIGH)).all()
    decoded = ACTIONS.decode_token_ids_to_actions(ids).numpy()
    assert np.all(np.abs(decoded - np.clip(expected, -1.0, 1.0)) <= HALF_BIN + 1e-9)


id_input = st.one_of(
    st.lists(st.integers(LOW - 3, HIGH + 3), max_size=8),
    st.lists(st.integers(-(2**40), 2**40), max_size=3),
    st.lists(st.floats(LOW - 2, HIGH + 2), max_size=4),
    st.lists(st.sampled_from([float(LOW), float(HIGH), math.nan, math.inf, 31800.5]), max_size=3),
    hnp.arrays(st.sampled_from([np.int64, np.int32, np.float64, np.bool_, np.complex64]), shapes),
    st.none(),
    text,
    st.integers(LOW, HIGH),
)


def valid_ids(value: object) -> np.ndarray | None:
    if value is None or isinstance(value, str):
        return None
    array = np.asarray(value)
    if array.dtype.kind not in "iuf":  # bool, complex, strings, objects
        return None
    if array.dtype.kind == "f" and not (np.isfinite(array).all() and (array == np.round(array)).all()):
        return None
    return array if ((array >= LOW) & (array <= HIGH)).all() else None


@FUZZ
@given(value=id_input)
def test_action_decode_fuzz(value) -> None:
    expected = valid_ids(value)
    if expected is None:
        with pytest.raises(ActionError):
            ACTIONS.decode_token_ids_to_actions(value)
        return
    actions = ACTIONS.decode_token_ids_to_actions(value)
    ids = torch.as_tensor(expected).to(torch.long)
    assert actions.shape == ids.shape and actions.dtype == torch.float64
    assert ((actions > -1.0) & (actions < 1.0)).all()
    # each id decodes to the centre of its bin, which encodes back to the same id; as in OpenVLA, 256 edges
    # give 255 centres, so the top id (an action exactly at max_action) decodes to the last centre
    assert torch.equal(ACTIONS.encode(actions.unsqueeze(-1)).squeeze(-1), ids.clamp(min=LOW + 1))
