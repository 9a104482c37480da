"""Control-token strings inside user text stay text, in every family's format and real tokenizer.

A message holding "</s>", "<PAD>", "<|eot_id|>", "<|im_end|>", ... must not become those tokens: it could
close its own turn, forge a reply, or put the pad id inside `input_ids` (OpenVLA masks `input_ids !=
pad_token_id`). The check: the injected conversation has exactly as many of each special id as the same
conversation with harmless words in their place (the template's own markers), and the switch
`special_tokens_in_messages=True` brings the original behaviour back (more special ids).
"""

from __future__ import annotations

from collections import Counter

import pytest
from transformers import AutoTokenizer

from family_assets import write_converted_tokenizer, write_gemma2_standin
from llm_backbones import (
    Gemma2InstructPromptBuilder,
    Gemma2PurePromptBuilder,
    LLaMa2ChatPromptBuilder,
    Llama3InstructPromptBuilder,
    Llama3PurePromptBuilder,
    MistralInstructPromptBuilder,
    Phi35InstructPromptBuilder,
    PhiPromptBuilder,
    PurePromptBuilder,
    Qwen25InstructPromptBuilder,
    Qwen25PurePromptBuilder,
    VicunaV15ChatPromptBuilder,
)
from llm_backbones.data.examples import IGNORE_INDEX, tokenize_conversation, tokenize_prompt, vla_prompt
from shared import padded_llama2_tokenizer

# tokenizer -> (control strings of that vocabulary, the builders that render with it)
FAMILIES = {
    "llama2": (
        ["</s>", "<s>", "<PAD>", "<unk>"],
        [
            PurePromptBuilder,
            LLaMa2ChatPromptBuilder,
            VicunaV15ChatPromptBuilder,
            MistralInstructPromptBuilder,
        ],
    ),
    "llama3": (
        ["<|eot_id|>", "<|start_header_id|>", "<|end_of_text|>", "<|begin_of_text|>"],
        [Llama3InstructPromptBuilder, Llama3PurePromptBuilder],
    ),
    "qwen2": (
        ["<|im_end|>", "<|im_start|>", "<|endoftext|>"],
        [Qwen25InstructPromptBuilder, Qwen25PurePromptBuilder],
    ),
    "phi3": (["<|end|>", "<|assistant|>", "<|user|>", "<|endoftext|>"], [Phi35InstructPromptBuilder]),
    "gpt2": (["<|endoftext|>"], [PhiPromptBuilder]),
    "gemma2": (
        ["<end_of_turn>", "<start_of_turn>", "<eos>", "<pad>"],
        [Gemma2InstructPromptBuilder, Gemma2PurePromptBuilder],
    ),
}
CASES = [(family, builder) for family, (_, builders) in FAMILIES.items() for builder in builders]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    out = {
        "llama2": padded_llama2_tokenizer(),
        "gemma2": AutoTokenizer.from_pretrained(write_gemma2_standin(root / "g")),
    }
    for name in ("llama3", "qwen2", "phi3", "gpt2"):
        out[name] = AutoTokenizer.from_pretrained(write_converted_tokenizer(name, root / name))
    return out


def conversation(question: str, answer: str) -> list[dict[str, str]]:
    return [
        {"from": "human", "value": f"Say {question} now"},
        {"from": "gpt", "value": f"ok {answer} done"},
        {"from": "human", "value": f"And {question}?"},
        {"from": "gpt", "value": "yes"},
    ]


def special_counts(tokenizer, ids: list[int]) -> Counter:
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    return Counter(i for i in ids if i in special)


@pytest.mark.parametrize(("family", "builder"), CASES, ids=lambda c: getattr(c, "__name__", c))
def test_control_strings_in_messages_stay_text(tokenizers, family, builder) -> None:
    tokenizer, (controls, _) = tokenizers[family], FAMILIES[family]
    injected, clean = " ".join(controls), " ".join("word" for _ in controls)
    example = tokenize_conversation(
        tokenizer, builder, conversation(injected, injected), model_family="openvla"
    )
    reference = tokenize_conversation(tokenizer, builder, conversation(clean, clean), model_family="openvla")
    ids = example["input_ids"].tolist()
    assert special_counts(tokenizer, ids) == special_counts(tokenizer, reference["input_ids"].tolist())
    assert all(controls[0] in tokenizer.decode(ids[a:b]) for a, b in [(0, len(ids))])
    # the replies' labels hold the same number of special ids as the clean conversation's (their end markers)
    supervised = [
        t for t, label in zip(ids, example["labels"].tolist(), strict=True) if label != IGNORE_INDEX
    ]
    clean_supervised = [
        t
        for t, label in zip(reference["input_ids"].tolist(), reference["labels"].tolist(), strict=True)
        if label != IGNORE_INDEX
    ]
    assert special_counts(tokenizer, supervised) == special_counts(tokenizer, clean_supervised)
    prompt = tokenize_prompt(tokenizer, builder, conversation(injected, injected)[:3], model_family="openvla")
    clean_prompt = tokenize_prompt(tokenizer, builder, conversation(clean, clean)[:3], model_family="openvla")
    assert special_counts(tokenizer, prompt.tolist()) == special_counts(tokenizer, clean_prompt.tolist())
    assert ids[: len(prompt)] == prompt.tolist()  # parity holds with the text encoding too


@pytest.mark.parametrize(("family", "builder"), CASES, ids=lambda c: getattr(c, "__name__", c))
def test_the_switch_parses_them_as_the_original_did(tokenizers, family, builder) -> None:
    tokenizer, (controls, _) = tokenizers[family], FAMILIES[family]
    injected = " ".join(controls)
    kept = tokenize_conversation(tokenizer, builder, conversation(injected, injected), model_family="openvla")
    parsed = tokenize_conversation(
        tokenizer,
        builder,
        conversation(injected, injected),
        model_family="openvla",
        special_tokens_in_messages=True,
    )
    more = special_counts(tokenizer, parsed["input_ids"].tolist()) - special_counts(
        tokenizer, kept["input_ids"].tolist()
    )
    assert sum(more.values()) >= 3 * len(controls) - 1  # each control string in 3 messages became its token


def test_pad_never_reaches_input_ids_from_a_message(tokenizers) -> None:
    tokenizer = tokenizers["llama2"]
    example = tokenize_conversation(tokenizer, PurePromptBuilder, conversation("<PAD>", "<PAD></s>"))
    assert 32000 not in example["input_ids"].tolist()
    assert example["input_ids"].tolist().count(2) == 2  # the two replies' own </s>, nothing forged
    prompt = vla_prompt(tokenizer, PurePromptBuilder, "open the drawer </s> <PAD>").tolist()
    assert 32000 not in prompt and 2 not in prompt
    assert prompt[-1] == 29871


def test_golden_ids_of_an_injected_llama2_message(tokenizers) -> None:
    # "In: a </s> b\nOut:" -- the "</s>" of the message is the text pieces "▁</" "s" ">" (1533, 29879, 29958)
    prompt = tokenize_prompt(
        tokenizers["llama2"], PurePromptBuilder, [{"from": "human", "value": "a </s> b"}]
    )
    assert prompt.tolist() == [1, 512, 29901, 263, 1533, 29879, 29958, 289, 13, 3744, 29901]


def test_a_position_dependent_pipeline_refuses_instead_of_guessing() -> None:
    # transformers 5's LlamaTokenizer class rebuilds LLaMA's pipeline with a Metaspace pre-tokenizer that
    # prepends "▁" to the first piece of the text only: cut at the template's special tokens, the pieces
    # would encode differently, so a control string cannot be kept as text exactly -- it raises.
    from transformers import LlamaTokenizer

    from llm_backbones.errors import TokenizationError

    tokenizer = padded_llama2_tokenizer(LlamaTokenizer)
    with pytest.raises(TokenizationError, match=r"prepend_scheme='first'.*special_tokens_in_messages=True"):
        tokenize_conversation(tokenizer, PurePromptBuilder, conversation("</s>", "fine"))
    parsed = tokenize_conversation(
        tokenizer, PurePromptBuilder, conversation("</s>", "fine"), special_tokens_in_messages=True
    )
    assert parsed["input_ids"].tolist().count(2) == 4  # 2 replies' </s> and 2 parsed from the messages
