"""The one prompt builder: renders any `PromptFormat`, turn by turn, with Prismatic's API.

`PurePromptBuilder`, `LLaMa2ChatPromptBuilder`, ... are the original class names, kept so that code
written for Prismatic/OpenVLA works unchanged; each only names its format.
"""

from __future__ import annotations

from typing import ClassVar

from llm_backbones.errors import ConversationError, PromptFormatError, closest
from llm_backbones.prompting.formats import OFFICIAL_FORMATS, PRISMATIC_FORMATS, PromptFormat

ROLE_ALIASES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}
_ALIAS_OF = {"human": "user", "gpt": "assistant"}


class PromptBuilder:
    """Builds a prompt over alternating human/gpt turns in one chat format.

    Args:
        model_family: selects the default system prompt ("prismatic" or "openvla").
        system_prompt: replaces the default system prompt where the format has one.
        prismatic_compat: render the original Prismatic/OpenVLA strings byte for byte (for checkpoints
            trained on them) instead of the model's official format.
        prompt_format: an explicit `PromptFormat` (subclasses name theirs; the base class needs it).
    """

    format_key: ClassVar[str | None] = None

    def __init__(
        self,
        model_family: str,
        system_prompt: str | None = None,
        *,
        prismatic_compat: bool = False,
        prompt_format: PromptFormat | None = None,
    ) -> None:
        if prompt_format is None:
            if self.format_key is None:
                raise PromptFormatError(
                    "PromptBuilder needs a format: pass prompt_format=PromptFormat(...), or use a named "
                    "builder such as PurePromptBuilder or LLaMa2ChatPromptBuilder."
                )
            table = PRISMATIC_FORMATS if prismatic_compat else OFFICIAL_FORMATS
            prompt_format = table[self.format_key]
        if not isinstance(prompt_format, PromptFormat):
            raise PromptFormatError(
                f"prompt_format must be a PromptFormat, got {type(prompt_format).__name__}. Build one with "
                "llm_backbones.prompting.PromptFormat(...), or use a named builder."
            )
        if not isinstance(model_family, str):
            raise PromptFormatError(
                f"model_family must be a string such as 'openvla' or 'prismatic', got "
                f"{type(model_family).__name__}: {model_family!r:.80}."
            )
        self.format = prompt_format
        self.model_family = model_family
        self.prismatic_compat = prismatic_compat
        self.bos, self.eos = prompt_format.bos, prompt_format.eos
        self.system_prompt = self._wrap_system(system_prompt)
        self.prompt, self.turn_count = "", 0

    # === Public API (Prismatic's) ===
    def add_turn(self, role: str, message: str) -> str:
        """Append one turn; return the exact text it added to the prompt."""
        role = self._check_turn(role, message)
        message = self._clean(message)
        if role == "human":
            wrapped = self._wrap_human(message, first=self.turn_count == 0)
        else:
            wrapped = self.format.gpt.format(msg=message if message != "" else self.format.empty_reply)
        self.prompt += wrapped
        self.turn_count += 1
        return wrapped

    def get_potential_prompt(self, message: str) -> str:
        """The prompt if the human said `message` next (the builder is not changed)."""
        if self.turn_count % 2 != 0:
            raise ConversationError(
                f"get_potential_prompt at turn {self.turn_count}: the next turn is the reply ('gpt'), "
                "not a human message. Add the reply with add_turn('gpt', ...) first."
            )
        self._check_message(message, self.turn_count)
        if self.format.clean_potential_message:
            message = self._clean(message)
        first = self.turn_count == 0 and self.format.potential_uses_first_human
        return self._finish(self.prompt + self._wrap_human(message, first=first))

    def get_prompt(self) -> str:
        """The prompt so far, without the leading BOS text and without trailing whitespace."""
        return self._finish(self.prompt)

    # === Internals ===
    def _wrap_system(self, system_prompt: str | None) -> str:
        fmt = self.format
        if system_prompt is not None:
            self._check_text(system_prompt, "system_prompt")
        if fmt.system is None:
            if system_prompt is not None and not self.prismatic_compat:
                raise PromptFormatError(
                    f"The {fmt.name!r} prompt format has no system prompt, got system_prompt="
                    f"{system_prompt[:60]!r}. Put the instruction in the first human message instead, "
                    "or use a format with a system prompt."
                )
            return ""
        if system_prompt is None:
            if self.model_family not in fmt.default_system:
                near = closest(self.model_family, fmt.default_system)
                hint = f" Did you mean {near[0]!r}?" if near else ""
                raise PromptFormatError(
                    f"No default system prompt of the {fmt.name!r} format for model_family="
                    f"{self.model_family!r}; known families: {', '.join(sorted(fmt.default_system))}.{hint} "
                    "Pass one of them, or give system_prompt= explicitly."
                )
            system_prompt = fmt.default_system[self.model_family]
        return fmt.system.format(system=system_prompt.strip())

    def _wrap_human(self, message: str, *, first: bool) -> str:
        template = self.format.first_human if first and self.format.first_human else self.format.human
        return template.format(msg=message, system=self.system_prompt)

    def _finish(self, prompt: str) -> str:
        if self.format.strip_bos:
            prompt = prompt.removeprefix(self.bos)
        return prompt.rstrip()

    @staticmethod
    def _clean(message: str) -> str:
        return message.replace("<image>", "").strip()

    @staticmethod
    def _check_text(text: object, what: str) -> None:
        """Strings only, and only text that can be encoded (no lone surrogates from a bad decode)."""
        if not isinstance(text, str):
            raise ConversationError(
                f"{what} must be a string, got {type(text).__name__}: {text!r:.80}. "
                "Convert it to text first."
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ConversationError(
                f"{what} is not valid Unicode ({exc.reason} at position {exc.start}: "
                f"{text[max(exc.start - 10, 0) : exc.end + 10]!r}); it was probably decoded with the wrong "
                "codec. Decode the source text as UTF-8 (errors='replace' drops the bad characters)."
            ) from None

    @classmethod
    def _check_message(cls, message: object, turn: int) -> None:
        cls._check_text(message, f"Turn {turn}: the message")

    def _check_turn(self, role: object, message: object) -> str:
        turn = self.turn_count
        expected = "human" if turn % 2 == 0 else "gpt"
        canonical = ROLE_ALIASES.get(role) if isinstance(role, str) else None
        if canonical is None:
            raise ConversationError(
                f"Turn {turn}: unknown role {role!r}; expected {expected!r} (alias "
                f"{_ALIAS_OF[expected]!r}). Roles are 'human'/'user' and 'gpt'/'assistant'; a system "
                "prompt goes in system_prompt=."
            )
        if canonical != expected:
            raise ConversationError(
                f"Turn {turn}: got role {role!r} but expected {expected!r} (alias "
                f"{_ALIAS_OF[expected]!r}). Conversations alternate human/gpt, starting with human."
            )
        self._check_message(message, turn)
        return canonical

    def __repr__(self) -> str:
        mode = "prismatic" if self.prismatic_compat else "official"
        return f"{type(self).__name__}(format={self.format.name!r}, {mode}, turns={self.turn_count})"


class PurePromptBuilder(PromptBuilder):
    """"In: {msg}\\nOut: " / "{reply}</s>" — base (non-chat) models, OpenVLA's format."""

    format_key = "pure"


class LLaMa2ChatPromptBuilder(PromptBuilder):
    """Llama-2 chat: Meta's format by default; Prismatic's (with its `<<SYS>` typo) when compat."""

    format_key = "llama2-chat"


class VicunaV15ChatPromptBuilder(PromptBuilder):
    """Vicuna v1.5 (FastChat `vicuna_v1.1`)."""

    format_key = "vicuna-v15"


class MistralInstructPromptBuilder(PromptBuilder):
    """Mistral instruct v0.1: `[INST] u [/INST] a</s>`, no system prompt."""

    format_key = "mistral-instruct"


class PhiPromptBuilder(PromptBuilder):
    """Phi-2 Input/Output format; BOS (`<|endoftext|>`) written into the first turn."""

    format_key = "phi-2"
