"""Prompt formats as data: one `PromptFormat` per rendering, rendered by the one `PromptBuilder`.

A format says how a human turn, a reply and the system prompt are wrapped, and each rendering has its own
name in the one table `PROMPT_FORMATS`: "llama2-chat" is Meta's Llama-2 chat format, "llama2-chat-prismatic"
the original Prismatic/OpenVLA builder's string byte for byte (checkpoints were trained on it, typos
included). Every format the original had has such a "<name>-prismatic" twin; the formats of families the
original never had (Llama-3.x, Qwen2.5, Gemma-2, Phi-3.5) have one rendering. `register_prompt_format` adds
a format from outside the package.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from llm_backbones.errors import PromptFormatError, closest

# Default system prompts of the original, keyed by `model_family`.
VLM_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)
VICUNA_SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


# Qwen2.5-Instruct's chat template writes this system prompt when the conversation has none.
QWEN25_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# Llama 3.1/3.2-Instruct's chat templates write this date when the caller gives no `date_string`.
LLAMA3_DEFAULT_DATE = "26 Jul 2024"


def _per_family(prompt: str) -> Mapping[str, str]:
    return MappingProxyType({"prismatic": prompt, "openvla": prompt})


@dataclass(frozen=True)
class PromptFormat:
    """How one chat format wraps turns.

    Templates use `{msg}` for the (cleaned) message and `{system}` for the wrapped system prompt.
    `first_human` renders turn 0 (where the system prompt lives); `human` every later human turn;
    `gpt` every reply. `system` wraps the stripped system prompt; `None` means the format has no
    system prompt. `bos` is removed from the front of returned prompts when `strip_bos` (the tokenizer
    inserts BOS itself). `empty_reply` replaces an empty reply.

    `strip_message`: messages lose their surrounding whitespace (the original's `.strip()`; Llama-3's and
    Gemma-2's templates `trim` them too). Qwen2.5's and Phi-3.5's templates keep a message as written.
    `prismatic`: this is the original Prismatic/OpenVLA rendering ("<name>-prismatic") of format <name>; it
    keeps the original's quirks (a system prompt the format has no place for is dropped without an error).

    Needed by the newer chat templates only:
    `strip_trailing_whitespace=False` keeps the end of returned prompts as rendered (their generation
    prompts end with a newline that belongs to the prompt). `omit_empty_system` renders no system block
    at all for an empty system prompt (Phi-3.5). `default_date` (not `None`) means `system` holds a
    `{date}` line (Llama-3.x's "Today Date"), filled with the builder's `date_string` or this default.
    """

    name: str
    bos: str
    eos: str
    human: str
    gpt: str
    first_human: str | None = None
    system: str | None = None
    default_system: Mapping[str, str] = field(default_factory=dict)
    empty_reply: str = " "
    strip_bos: bool = True
    # Prismatic quirks, kept as data so the one builder reproduces them exactly:
    potential_uses_first_human: bool = True  # Phi's get_potential_prompt skips its turn-0 wrapper
    clean_potential_message: bool = True  # the originals do not strip/clean get_potential_prompt's message
    strip_message: bool = True
    prismatic: bool = False
    # Newer chat templates:
    strip_trailing_whitespace: bool = True
    omit_empty_system: bool = False
    default_date: str | None = None

    @property
    def has_date(self) -> bool:
        return self.default_date is not None

    @property
    def control_markers(self) -> tuple[str, ...]:
        """The control markers this format writes (BOS, EOS, `<|im_start|>`, `<start_of_turn>`, ...): each
        must be one token of the tokenizer it is used with. Plain-text wrappers (`[INST]`, `<<SYS>>`,
        `USER:`) are not markers."""
        texts = (self.bos, self.eos, self.first_human or "", self.human, self.gpt, self.system or "")
        found = [self.bos, self.eos, *(m for t in texts for m in _MARKER.findall(t))]
        return tuple(dict.fromkeys(m for m in found if m))

    @property
    def official_name(self) -> str:
        """The name of the format this one renders: itself, or the format of which it is the Prismatic
        twin."""
        return self.name.removesuffix(PRISMATIC_SUFFIX) if self.prismatic else self.name


PRISMATIC_SUFFIX = "-prismatic"
# A control marker: `<s>`, `</s>`, `<|im_end|>`, `<start_of_turn>`; not the text `<<SYS>>` of Llama-2 chat.
_MARKER = re.compile(r"(?<!<)</?[A-Za-z_|]+>(?!>)")
_COMPAT = dict(clean_potential_message=False, prismatic=True)


def _pure(name: str, *, bos: str, eos: str) -> PromptFormat:
    """OpenVLA's "In: {msg}\\nOut: " / "{reply}<eos>" format with the family's own EOS text."""
    return PromptFormat(name=name, bos=bos, eos=eos, human="In: {msg}\nOut: ", gpt="{msg}" + eos)


# A human turn of each newer chat format, with the generation prompt that follows it.
_LLAMA3_USER = (
    "<|start_header_id|>user<|end_header_id|>\n\n{msg}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
_QWEN_USER = "<|im_start|>user\n{msg}<|im_end|>\n<|im_start|>assistant\n"
_GEMMA_USER = "<start_of_turn>user\n{msg}<end_of_turn>\n<start_of_turn>model\n"
_PHI3_USER = "<|user|>\n{msg}<|end|>\n<|assistant|>\n"

_PRISMATIC: dict[str, PromptFormat] = {
    "pure": PromptFormat(
        name="pure-prismatic", bos="<s>", eos="</s>", human="In: {msg}\nOut: ", gpt="{msg}</s>", **_COMPAT
    ),
    "llama2-chat": PromptFormat(
        name="llama2-chat-prismatic",
        bos="<s>",
        eos="</s>",
        first_human="[INST] {system}{msg} [/INST] ",
        human="[INST] {msg} [/INST] ",
        gpt="{msg}</s>",
        # [Contract] the original's `<<SYS>` (one `>`) typo: Prismatic checkpoints were trained on it.
        system="<<SYS>\n{system}\n<</SYS>>\n\n",
        default_system=_per_family(VLM_SYSTEM_PROMPT),
        **_COMPAT,
    ),
    "vicuna-v15": PromptFormat(
        name="vicuna-v15-prismatic",
        bos="<s>",
        eos="</s>",
        first_human="{system}USER: {msg} ASSISTANT: ",
        human="USER: {msg} ASSISTANT: ",
        gpt="{msg}</s>",
        system="{system} ",
        default_system=_per_family(VICUNA_SYSTEM_PROMPT),
        **_COMPAT,
    ),
    "mistral-instruct": PromptFormat(
        name="mistral-instruct-prismatic",
        bos="<s>",
        eos="</s>",
        human="[INST] {msg} [/INST] ",
        gpt="{msg}</s>",
        **_COMPAT,
    ),
    "phi-2": PromptFormat(
        name="phi-2-prismatic",
        bos="<|endoftext|>",
        eos="<|endoftext|>",
        # Phi-2's tokenizer adds no BOS: the original prepends it to the first turn itself.
        first_human="<|endoftext|>Input: {msg}\nOutput: ",
        human="Input: {msg}\nOutput: ",
        gpt="{msg}\n<|endoftext|>",
        strip_bos=False,
        potential_uses_first_human=False,
        **_COMPAT,
    ),
}


def _official(prismatic: PromptFormat, **changes: object) -> PromptFormat:
    """The official rendering of a format whose strings equal the original's, without its quirks."""
    return replace(
        prismatic, name=prismatic.official_name, clean_potential_message=True, prismatic=False, **changes
    )


_OFFICIAL: dict[str, PromptFormat] = {
    "pure": _official(_PRISMATIC["pure"]),
    # Meta's reference (llama/generation.py `chat_completion`), equal to FastChat's `llama-2`:
    # each (user, reply) pair is `<s>[INST] u [/INST] a </s>`; the system prompt opens the first
    # user message; the generation prompt ends at `[/INST]`. An empty reply stays empty (Meta).
    "llama2-chat": PromptFormat(
        name="llama2-chat",
        bos="<s>",
        eos="</s>",
        first_human="<s>[INST] {system}{msg} [/INST]",
        human="<s>[INST] {msg} [/INST]",
        gpt=" {msg} </s>",
        system="<<SYS>>\n{system}\n<</SYS>>\n\n",
        default_system=_per_family(VLM_SYSTEM_PROMPT),
        empty_reply="",
    ),
    # FastChat `vicuna_v1.1` ("{system} USER: u ASSISTANT: a</s>USER: u2 ASSISTANT:"), Prismatic's
    # Mistral-instruct and Phi-2 formats: the original's strings, without its quirks.
    "vicuna-v15": _official(_PRISMATIC["vicuna-v15"]),
    "mistral-instruct": _official(_PRISMATIC["mistral-instruct"]),
    "phi-2": _official(_PRISMATIC["phi-2"], potential_uses_first_human=True),
    # --- Pure format over other vocabularies: the reply ends with the family's own end-of-text
    # token (the base model's EOS), so that generation stops there; "</s>" is plain text to them.
    "pure-llama3": _pure("pure-llama3", bos="<|begin_of_text|>", eos="<|end_of_text|>"),
    "pure-qwen2": _pure("pure-qwen2", bos="", eos="<|endoftext|>"),
    "pure-gemma2": _pure("pure-gemma2", bos="<bos>", eos="<eos>"),
    # --- Official chat templates (`tokenizer_config.json` "chat_template" of the instruct repos, as
    # llama.cpp keeps them in models/templates/*.jinja), rendered with add_generation_prompt=True.
    # Llama-3's and Gemma-2's templates `trim` messages (as the builder strips them); Qwen2.5's and
    # Phi-3.5's write them as given, surrounding whitespace included (`strip_message=False`).
    #
    # meta-llama/Llama-3.1-8B-Instruct and Llama-3.2-{1B,3B}-Instruct (same text without tools):
    # a system block always opens the conversation, with the knowledge-cutoff and date lines
    # (date: the template's fallback "26 Jul 2024" unless the caller gives one), then the caller's
    # system prompt (default: none). "<|begin_of_text|>" is removed: the tokenizer adds BOS.
    "llama3-instruct": PromptFormat(
        name="llama3-instruct",
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        first_human="<|begin_of_text|>{system}" + _LLAMA3_USER,
        human=_LLAMA3_USER,
        gpt="{msg}<|eot_id|>",
        system=(
            "<|start_header_id|>system<|end_header_id|>\n\n"
            "Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n{system}<|eot_id|>"
        ),
        default_system=_per_family(""),
        default_date=LLAMA3_DEFAULT_DATE,
        empty_reply="",
        strip_trailing_whitespace=False,
    ),
    # Qwen/Qwen2.5-*-Instruct: ChatML; without a system message the template writes Qwen's own.
    # No BOS (the tokenizer adds none and the template writes none).
    "qwen2.5-instruct": PromptFormat(
        name="qwen2.5-instruct",
        strip_message=False,  # the template writes message['content'] as given
        bos="",
        eos="<|im_end|>",
        first_human="{system}" + _QWEN_USER,
        human=_QWEN_USER,
        gpt="{msg}<|im_end|>\n",
        system="<|im_start|>system\n{system}<|im_end|>\n",
        default_system=_per_family(QWEN25_SYSTEM_PROMPT),
        empty_reply="",
        strip_trailing_whitespace=False,
    ),
    # google/gemma-2-{2b,9b}-it: no system role (the template raises on one); the reply role is
    # "model". "<bos>" is removed: the tokenizer adds BOS.
    "gemma2-instruct": PromptFormat(
        name="gemma2-instruct",
        bos="<bos>",
        eos="<end_of_turn>",
        first_human="<bos>" + _GEMMA_USER,
        human=_GEMMA_USER,
        gpt="{msg}<end_of_turn>\n",
        empty_reply="",
        strip_trailing_whitespace=False,
    ),
    # microsoft/Phi-3.5-mini-instruct: a system block only for a non-empty system prompt (default:
    # none); no BOS. With add_generation_prompt=False the template also appends eos_token after the
    # last turn; the builder does not (a reply ends with "<|end|>\n", its end-of-turn token), so that
    # every reply's text is a prefix of the next prompt.
    "phi3.5-instruct": PromptFormat(
        name="phi3.5-instruct",
        strip_message=False,  # the template writes message['content'] as given
        bos="",
        eos="<|end|>",
        first_human="{system}" + _PHI3_USER,
        human=_PHI3_USER,
        gpt="{msg}<|end|>\n",
        system="<|system|>\n{system}<|end|>\n",
        default_system=_per_family(""),
        omit_empty_system=True,
        empty_reply="",
        strip_trailing_whitespace=False,
    ),
}

_FORMATS: dict[str, PromptFormat] = {
    **{f.name: f for f in _OFFICIAL.values()},
    **{f.name: f for f in _PRISMATIC.values()},
}
# Every registered format by its name: a live, read-only view (`register_prompt_format` adds to it).
PROMPT_FORMATS: Mapping[str, PromptFormat] = MappingProxyType(_FORMATS)


def register_prompt_format(prompt_format: PromptFormat, *, overwrite: bool = False) -> PromptFormat:
    """Add `prompt_format` to `PROMPT_FORMATS` under its name; returns it.

    A Prismatic twin is named "<name>-prismatic", has `prismatic=True`, and needs <name> registered first.
    """
    if not isinstance(prompt_format, PromptFormat):
        raise PromptFormatError(
            f"register_prompt_format expects a PromptFormat, got {type(prompt_format).__name__}. Build one "
            "with llm_backbones.PromptFormat(name=..., bos=..., eos=..., human=..., gpt=...)."
        )
    name = prompt_format.name
    if not isinstance(name, str) or not name.strip():
        raise PromptFormatError(f"A prompt format needs a non-empty name, got {name!r}.")
    if name.endswith(PRISMATIC_SUFFIX) != prompt_format.prismatic:
        raise PromptFormatError(
            f"Prompt format {name!r}: a Prismatic rendering is named '<name>{PRISMATIC_SUFFIX}' and has "
            f"prismatic=True, and only it; got prismatic={prompt_format.prismatic}. Rename it or fix the "
            "flag."
        )
    if prompt_format.prismatic and prompt_format.official_name not in _FORMATS:
        raise PromptFormatError(
            f"Prompt format {name!r} is the Prismatic twin of {prompt_format.official_name!r}, which is not "
            "registered. Register the official format first."
        )
    if name in _FORMATS and not overwrite:
        raise PromptFormatError(
            f"Prompt format {name!r} is already registered; pass overwrite=True to replace it, or choose "
            "another name."
        )
    _FORMATS[name] = prompt_format
    return prompt_format


def get_prompt_format(name: str, *, prismatic_compat: bool = False) -> PromptFormat:
    """The format named `name`; with `prismatic_compat`, its "<name>-prismatic" twin where one exists
    (formats the original never had have one rendering)."""
    if not isinstance(name, str) or name not in _FORMATS:
        near = closest(name, _FORMATS) if isinstance(name, str) else []
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise PromptFormatError(
            f"Unknown prompt format {name!r}.{hint} Registered: {', '.join(_FORMATS)}. Add one with "
            "llm_backbones.register_prompt_format(PromptFormat(...))."
        )
    if prismatic_compat and not name.endswith(PRISMATIC_SUFFIX):
        return _FORMATS.get(name + PRISMATIC_SUFFIX, _FORMATS[name])
    return _FORMATS[name]
