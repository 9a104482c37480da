"""One identity per prompt format: every rendering has its own name, `builder_for(name, **options)`,
`BackboneSpec.prompt_format`, and formats added from outside the package.

Expected strings are written out: the Prismatic ones are the original builders' (with their `<<SYS>` typo),
the official ones Meta's (see tests/golden/test_prompt_golden.py for the full conversations).
"""

from __future__ import annotations

import dataclasses
import pickle

import pytest

import llm_backbones
from llm_backbones import (
    PROMPT_FORMATS,
    BackboneSpec,
    LLaMa2ChatPromptBuilder,
    PromptBuilder,
    PromptFormat,
    PurePromptBuilder,
    builder_for,
    get_spec,
    register_backbone,
    register_prompt_format,
    tokenize_conversation,
)
from llm_backbones.core import registry
from llm_backbones.core.prompting import builder as builder_module
from llm_backbones.core.prompting import formats as formats_module
from llm_backbones.errors import InvalidSpecError, PromptFormatError

SYSTEM = "You control a robot arm."
META_FIRST_TURN = f"[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\nPick up the cup. [/INST]"
PRISMATIC_FIRST_TURN = f"[INST] <<SYS>\n{SYSTEM}\n<</SYS>>\n\nPick up the cup. [/INST]"  # the original's typo


@pytest.fixture(scope="module")
def llama2_tokenizer():
    """The real LLaMA-2 tokenizer as the backbone loads it (the embedded default's)."""
    return llm_backbones.get_llm_backbone_and_tokenizer("llama2-tiny-pure", inference_mode=True)[1]


@pytest.fixture
def scratch_formats(monkeypatch):
    """Formats, builder classes and backbone ids registered by a test vanish after it."""
    monkeypatch.setattr(formats_module, "_FORMATS", dict(formats_module._FORMATS))
    monkeypatch.setattr(
        formats_module, "PROMPT_FORMATS", formats_module.MappingProxyType(formats_module._FORMATS)
    )
    monkeypatch.setattr(builder_module, "PROMPT_FORMATS", formats_module.PROMPT_FORMATS)
    monkeypatch.setattr(builder_module, "_BUILDER_CLASSES", dict(builder_module._BUILDER_CLASSES))
    monkeypatch.setattr(registry, "_BUILDER_CLASSES", builder_module._BUILDER_CLASSES)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_every_rendering_has_its_own_name() -> None:
    assert list(PROMPT_FORMATS) == [
        "pure",
        "llama2-chat",
        "vicuna-v15",
        "mistral-instruct",
        "phi-2",
        "pure-llama3",
        "pure-qwen2",
        "pure-gemma2",
        "llama3-instruct",
        "qwen2.5-instruct",
        "gemma2-instruct",
        "phi3.5-instruct",
        "pure-prismatic",
        "llama2-chat-prismatic",
        "vicuna-v15-prismatic",
        "mistral-instruct-prismatic",
        "phi-2-prismatic",
    ]
    for name, fmt in PROMPT_FORMATS.items():
        assert fmt.name == name
        assert fmt.prismatic == name.endswith("-prismatic")
    assert PROMPT_FORMATS["llama2-chat"].system != PROMPT_FORMATS["llama2-chat-prismatic"].system


def test_builder_renders_the_named_format_and_reports_it() -> None:
    official = LLaMa2ChatPromptBuilder("openvla", system_prompt=SYSTEM)
    compat = LLaMa2ChatPromptBuilder("openvla", system_prompt=SYSTEM, prismatic_compat=True)
    for builder in (official, compat):
        builder.add_turn("human", "Pick up the cup.")
    assert (official.format.name, official.get_prompt()) == ("llama2-chat", META_FIRST_TURN)
    assert (compat.format.name, compat.get_prompt()) == ("llama2-chat-prismatic", PRISMATIC_FIRST_TURN)
    assert compat.prismatic_compat and not official.prismatic_compat
    assert repr(compat) == "LLaMa2ChatPromptBuilder(format='llama2-chat-prismatic', turns=1)"


def test_builder_for_binds_options_and_is_called_like_a_builder_class() -> None:
    factory = builder_for("llama2-chat", prismatic_compat=True)
    assert factory == builder_for("llama2-chat-prismatic")
    assert repr(factory) == "builder_for('llama2-chat-prismatic')"
    builder = factory("openvla", system_prompt=SYSTEM)
    assert isinstance(builder, LLaMa2ChatPromptBuilder)
    builder.add_turn("human", "Pick up the cup.")
    assert builder.get_prompt() == PRISMATIC_FIRST_TURN
    dated = builder_for("llama3-instruct", date_string="05 Mar 2026")()
    assert "Today Date: 05 Mar 2026\n" in dated.get_potential_prompt("Hi.")
    assert pickle.loads(pickle.dumps(factory)) == factory


def test_builder_for_refuses_bad_options_where_they_are_given() -> None:
    with pytest.raises(PromptFormatError, match="Unknown builder option 'date'.*Did you mean 'date_string'"):
        builder_for("llama3-instruct", date="05 Mar 2026")
    with pytest.raises(PromptFormatError, match="has no date line"):
        builder_for("pure", date_string="05 Mar 2026")
    with pytest.raises(
        PromptFormatError, match="Unknown prompt format 'llama2-caht'.*Did you mean 'llama2-chat'"
    ):
        builder_for("llama2-caht")


def test_the_spec_names_its_format_and_derives_its_builder() -> None:
    assert get_spec("llama2-7b-chat").prompt_format == "llama2-chat"
    assert get_spec("llama2-7b-chat").prompt_builder_fn is LLaMa2ChatPromptBuilder
    assert get_spec("qwen2.5-3b-instruct").prompt_format == "qwen2.5-instruct"
    compat = dataclasses.replace(get_spec("llama2-7b-chat"), prompt_format="llama2-chat-prismatic")
    assert compat.prompt_builder_fn == builder_for("llama2-chat-prismatic")
    with pytest.raises(InvalidSpecError, match="renders 'llama2-chat', not prompt_format='pure'"):
        dataclasses.replace(get_spec("llama2-7b-chat"), prompt_format="pure")


def test_tokenize_conversation_takes_a_format_name_and_builder_options(llama2_tokenizer) -> None:
    conversation = [{"from": "human", "value": "Pick up the cup."}, {"from": "gpt", "value": "Done."}]
    by_name = tokenize_conversation(llama2_tokenizer, "llama2-chat-prismatic", conversation)
    by_option = tokenize_conversation(
        llama2_tokenizer, LLaMa2ChatPromptBuilder, conversation, builder_options={"prismatic_compat": True}
    )
    assert by_name["input_ids"].tolist() == by_option["input_ids"].tolist()
    text = llama2_tokenizer.decode(by_name["input_ids"])
    assert "<<SYS>\n" in text and "<<SYS>>" not in text  # the original's system block


def test_a_new_format_from_outside_the_package(scratch_formats, llama2_tokenizer) -> None:
    # The README's "Adding a prompt format", as a user writes it.
    register_prompt_format(
        PromptFormat(
            name="chatml",
            bos="",
            eos="<|im_end|>",
            human="<|im_start|>user\n{msg}<|im_end|>\n<|im_start|>assistant\n",
            gpt="{msg}<|im_end|>\n",
            strip_trailing_whitespace=False,
        )
    )

    class ChatMLPromptBuilder(PromptBuilder):
        format_key = "chatml"

    builder = ChatMLPromptBuilder()
    builder.add_turn("human", "Pick up the cup.")
    assert builder.get_prompt() == "<|im_start|>user\nPick up the cup.<|im_end|>\n<|im_start|>assistant\n"
    spec = register_backbone(
        dataclasses.replace(
            get_spec("llama2-tiny-pure"),
            backbone_id="tiny-chatml",
            prompt_format="chatml",
            prompt_builder_fn=None,
        )
    )
    assert spec.prompt_builder_fn is ChatMLPromptBuilder
    assert llm_backbones.prompt_builder_for("tiny-chatml") is ChatMLPromptBuilder
    example = tokenize_conversation(
        llama2_tokenizer, "chatml", [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Done."}]
    )
    supervised = example["input_ids"][example["labels"] != -100]
    assert llama2_tokenizer.decode(supervised) == "Done.<|im_end|>\n"


def test_register_prompt_format_refuses_what_would_confuse_names(scratch_formats) -> None:
    pure = PROMPT_FORMATS["pure"]
    with pytest.raises(PromptFormatError, match="'pure' is already registered"):
        register_prompt_format(pure)
    with pytest.raises(PromptFormatError, match="named '<name>-prismatic' and has prismatic=True"):
        register_prompt_format(dataclasses.replace(pure, name="mine-prismatic"))
    with pytest.raises(PromptFormatError, match="twin of 'mine', which is not registered"):
        register_prompt_format(dataclasses.replace(pure, name="mine-prismatic", prismatic=True))
    with pytest.raises(PromptFormatError, match="expects a PromptFormat, got dict"):
        register_prompt_format({"name": "mine"})


def test_a_spec_needs_a_format(scratch_formats) -> None:
    base = get_spec("llama2-tiny-pure")
    with pytest.raises(InvalidSpecError, match="give prompt_format= a format name"):
        BackboneSpec(
            backbone_id="x",
            llm_family="llama2",
            hf_hub_path="h",
            llm_cls=base.llm_cls,
            layer_cls=base.layer_cls,
        )
    assert PurePromptBuilder.format_key == "pure"


def test_qwen_reply_starting_with_a_line_break_is_refused_with_the_fix() -> None:
    # Qwen2.5's template keeps a reply's whitespace, and its tokenizer merges the template's "assistant\n"
    # with a reply's leading "\n" into one token (271, "ĊĊ"): no generation prompt is then a token prefix of
    # the training sequence. Refused, naming the fix; the stripped reply trains.
    from format_tokenizers import family_tokenizer
    from llm_backbones.errors import TokenizationError

    qwen = family_tokenizer("qwen2")
    conversation = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "\nDone."}]
    with pytest.raises(TokenizationError, match="remove the reply's leading whitespace"):
        tokenize_conversation(qwen, "qwen2.5-instruct", conversation)
    conversation[1]["value"] = "Done."
    example = tokenize_conversation(qwen, "qwen2.5-instruct", conversation)
    assert qwen.decode(example["input_ids"][example["labels"] != -100]) == "Done.<|im_end|>\n"


def test_a_spec_keeps_the_builder_it_was_given(scratch_formats) -> None:
    base = get_spec("llama3.2-1b-instruct")
    dated = builder_for("llama3-instruct", date_string="01 Jan 2025")
    spec = dataclasses.replace(base, backbone_id="dated", prompt_builder_fn=dated)
    assert spec.prompt_builder_fn is dated  # its options stay
    assert "Today Date: 01 Jan 2025\n" in spec.prompt_builder_fn().get_potential_prompt("Hi.")
    with pytest.raises(InvalidSpecError, match="renders 'pure-prismatic', not prompt_format='pure'"):
        dataclasses.replace(get_spec("llama2-7b-pure"), prompt_builder_fn=builder_for("pure-prismatic"))
    twin = get_spec("llama2-7b-chat").with_prompt_format("llama2-chat-prismatic")
    builder = twin.prompt_builder_fn("openvla", system_prompt=SYSTEM)
    builder.add_turn("human", "Pick up the cup.")
    assert (type(builder), builder.get_prompt()) == (LLaMa2ChatPromptBuilder, PRISMATIC_FIRST_TURN)


def test_a_registered_format_needs_no_default_system_prompt(scratch_formats) -> None:
    register_prompt_format(
        PromptFormat(
            name="mine",
            bos="",
            eos="</s>",
            first_human="{system}Q: {msg}\nA:",
            human="Q: {msg}\nA:",
            gpt=" {msg}</s>",
            system="{system}\n",
        )
    )
    builder = builder_for("mine")("openvla", system_prompt="Be brief.")
    builder.add_turn("human", "Hi")
    assert builder.get_prompt() == "Be brief.\nQ: Hi\nA:"
    with pytest.raises(PromptFormatError, match="'mine' prompt format has no default system prompt"):
        builder_for("mine")("openvla")
