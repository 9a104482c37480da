"""Train/inference token parity and label masks, as properties over random conversations."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shared import PRISMATIC_BUILDERS as BUILDERS
from shared import padded_llama2_tokenizer
from transformers import LlamaTokenizer

from llm_backbones.data.examples import IGNORE_INDEX, PaddedCollator, tokenize_conversation, tokenize_prompt

_TOKENIZER = padded_llama2_tokenizer()
# What transformers 5's LlamaTokenizer class builds from the same vocabulary (Metaspace, prepend "first"):
# a different pipeline, on which turn-by-turn tokenization breaks parity; ours must not.
_METASPACE_TOKENIZER = padded_llama2_tokenizer(LlamaTokenizer)

fragments = st.sampled_from(["<image>", " ", "  ", "\n", "\t", "é", "🤖", "→", "日本", "1.5", ":", "[", "]", "?", "a"])
free_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)
messages = st.lists(st.one_of(fragments, free_text), max_size=6).map("".join)


@st.composite
def conversations(draw) -> list[dict[str, str]]:
    n_pairs = draw(st.integers(min_value=1, max_value=3))
    conv = []
    for _ in range(n_pairs):
        conv.append({"from": "human", "value": draw(messages)})
        conv.append({"from": "gpt", "value": draw(messages)})
    return conv


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conv=conversations(), compat=st.booleans(), metaspace=st.booleans())
def test_generation_prompt_is_a_prefix_and_labels_cover_the_rest(builder, conv, compat, metaspace) -> None:
    def fn(family, system_prompt=None):
        return builder(family, system_prompt=system_prompt, prismatic_compat=compat)

    tokenizer = _METASPACE_TOKENIZER if metaspace else _TOKENIZER
    example = tokenize_conversation(tokenizer, fn, conv)
    ids, labels = example["input_ids"].tolist(), example["labels"].tolist()
    # The rule: the generation prompt is the training sequence up to the reply's first supervised token.
    prompt = tokenize_prompt(tokenizer, fn, conv[:-1], reply=conv[-1]["value"]).tolist()
    assert ids[: len(prompt)] == prompt
    assert labels[len(prompt) :] == ids[len(prompt) :]  # the last reply: every token after the prompt
    assert len(ids) > len(prompt)  # ... and at least one of them
    # Without the reply: the rendered prompt's tokens, a prefix of it (shorter by at most the separator).
    rendered = tokenize_prompt(tokenizer, fn, conv[:-1]).tolist()
    assert prompt[: len(rendered)] == rendered
    assert all(tokenizer.convert_ids_to_tokens(t).strip("▁ ") == "" for t in prompt[len(rendered) :])
    assert ids[0] == 1  # BOS inserted by the tokenizer
    # Earlier turns: the example of conv[:-2] is a prefix with the same labels, and the last human turn
    # (between it and the generation prompt) is unsupervised.
    done = 0
    if len(conv) > 2:
        previous = tokenize_conversation(tokenizer, fn, conv[:-2])
        done = len(previous["input_ids"])
        assert ids[:done] == previous["input_ids"].tolist()
        assert labels[:done] == previous["labels"].tolist()
    assert labels[done : len(prompt)] == [IGNORE_INDEX] * (len(prompt) - done)


def test_collator_pads_right_with_pad_id_and_ignore_index() -> None:
    batch = PaddedCollator(model_max_length=None, pad_token_id=32000, pad_to_multiple_of=4)(
        [
            {"input_ids": torch.tensor([1, 5, 6]), "labels": torch.tensor([-100, 5, 6])},
            {"input_ids": torch.tensor([1, 7, 8, 9, 10]), "labels": torch.tensor([-100, -100, 8, 9, 10])},
        ]
    )
    assert batch["input_ids"].tolist() == [[1, 5, 6, 32000, 32000, 32000, 32000, 32000], [1, 7, 8, 9, 10, 32000, 32000, 32000]]
    assert batch["labels"].tolist() == [[-100, 5, 6, -100, -100, -100, -100, -100], [-100, -100, 8, 9, 10, -100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]]


def test_collator_without_multiple_and_empty_batch() -> None:
    collate = PaddedCollator(model_max_length=None, pad_token_id=0)
    batch = collate([{"input_ids": torch.tensor([3]), "labels": torch.tensor([3])}])
    assert batch["input_ids"].tolist() == [[3]] and batch["attention_mask"].tolist() == [[1]]
    with pytest.raises(ValueError, match="empty batch"):
        collate([])


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(messages, min_size=1, max_size=4))
def test_direct_encoding_equals_the_tokenizer_call(texts) -> None:
    # the fast path (the Rust tokenizer, called directly) gives exactly what `tokenizer(prompt)` gives
    from llm_backbones.data.examples import _encode_with_offsets

    for tokenizer in (_TOKENIZER, _METASPACE_TOKENIZER):
        assert [_encode_with_offsets(tokenizer, t)[0] for t in texts] == [tokenizer(t).input_ids for t in texts]
