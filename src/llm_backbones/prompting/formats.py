"""Prompt formats as data: one `PromptFormat` per chat format, rendered by the one `PromptBuilder`.

A format says how a human turn, a reply and the system prompt are wrapped. Two sets exist:
`PRISMATIC_FORMATS` reproduce the original Prismatic/OpenVLA builders byte for byte (checkpoints were
trained on them, typos included), `OFFICIAL_FORMATS` render each model's own published format.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

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

    @property
    def has_system_prompt(self) -> bool:
        return self.system is not None


_COMPAT = dict(clean_potential_message=False)

PRISMATIC_FORMATS: Mapping[str, PromptFormat] = MappingProxyType(
    {
        "pure": PromptFormat(
            name="pure", bos="<s>", eos="</s>", human="In: {msg}\nOut: ", gpt="{msg}</s>", **_COMPAT
        ),
        "llama2-chat": PromptFormat(
            name="llama2-chat",
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
            name="vicuna-v15",
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
            name="mistral-instruct",
            bos="<s>",
            eos="</s>",
            human="[INST] {msg} [/INST] ",
            gpt="{msg}</s>",
            **_COMPAT,
        ),
        "phi-2": PromptFormat(
            name="phi-2",
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
)

OFFICIAL_FORMATS: Mapping[str, PromptFormat] = MappingProxyType(
    {
        "pure": replace(PRISMATIC_FORMATS["pure"], clean_potential_message=True),
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
        # FastChat `vicuna_v1.1`: "{system} USER: u ASSISTANT: a</s>USER: u2 ASSISTANT:".
        "vicuna-v15": PromptFormat(
            name="vicuna-v15",
            bos="<s>",
            eos="</s>",
            first_human="{system}USER: {msg} ASSISTANT: ",
            human="USER: {msg} ASSISTANT: ",
            gpt="{msg}</s>",
            system="{system} ",
            default_system=_per_family(VICUNA_SYSTEM_PROMPT),
        ),
        "mistral-instruct": PromptFormat(
            name="mistral-instruct",
            bos="<s>",
            eos="</s>",
            human="[INST] {msg} [/INST] ",
            gpt="{msg}</s>",
        ),
        "phi-2": PromptFormat(
            name="phi-2",
            bos="<|endoftext|>",
            eos="<|endoftext|>",
            first_human="<|endoftext|>Input: {msg}\nOutput: ",
            human="Input: {msg}\nOutput: ",
            gpt="{msg}\n<|endoftext|>",
            strip_bos=False,
        ),
    }
)
