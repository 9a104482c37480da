"""The one prompt builder: renders any `PromptFormat`, turn by turn, with Prismatic's API.

`PurePromptBuilder`, `LLaMa2ChatPromptBuilder`, ... are the original class names, kept so that code
written for Prismatic/OpenVLA works unchanged; each only names its format.
"""

from __future__ import annotations

from typing import ClassVar

from llm_backbones.errors import ConversationError, PromptFormatError, closest
from llm_backbones.core.prompting.formats import OFFICIAL_FORMATS, PRISMATIC_FORMATS, PromptFormat

ROLE_ALIASES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}
_ALIAS_OF = {"human": "user", "gpt": "assistant"}


class PromptBuilder:
    """Builds a prompt over alternating human/gpt turns in one chat format.

    Args:
        model_family: selects the default system prompt ("prismatic" or "openvla").
        system_prompt: replaces the default system prompt where the format has one.
        prismatic_compat: render the original Prismatic/OpenVLA strings byte for byte (for checkpoints
            trained on them) instead of the model's official format. Formats the original never had
            (Llama-3.x, Qwen2.5, Gemma-2, Phi-3.5) have only their official rendering.
        prompt_format: an explicit `PromptFormat` (subclasses name theirs; the base class needs it).
        date_string: the date of formats with a date line (Llama-3.x's "Today Date: 26 Jul 2024"); the
            template's own fallback date when not given.
    """

    format_key: ClassVar[str | None] = None

    def __init__(
        self,
        model_family: str,
        system_prompt: str | None = None,
        *,
        prismatic_compat: bool = False,
        prompt_format: PromptFormat | None = None,
        date_string: str | None = None,
    ) -> None:
        # The original's quirks (e.g. silently ignoring a system prompt) apply to its own formats only.
        self._original_quirks = prismatic_compat
        if prompt_format is None:
            if self.format_key is None:
                raise PromptFormatError(
                    "PromptBuilder needs a format: pass prompt_format=PromptFormat(...), or use a named "
                    "builder such as PurePromptBuilder or LLaMa2ChatPromptBuilder."
                )
            if prismatic_compat and self.format_key in PRISMATIC_FORMATS:
                prompt_format = PRISMATIC_FORMATS[self.format_key]
            else:  # official, or a family the original never had (one rendering only)
                prompt_format = OFFICIAL_FORMATS[self.format_key]
                self._original_quirks = False
        if not isinstance(prompt_format, PromptFormat):
            raise PromptFormatError(
                f"prompt_format must be a PromptFormat, got {type(prompt_format).__name__}. Build one with "
                "llm_backbones.core.prompting.PromptFormat(...), or use a named builder."
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
        self.date_string = self._check_date(date_string)
        self.system_prompt = self._wrap_system(system_prompt)
        self.prompt, self.turn_count = "", 0
        self.message_spans: list[tuple[int, int]] = []  # (start, end) of each turn's message in `prompt`

    # === Public API (Prismatic's) ===
    def add_turn(self, role: str, message: str) -> str:
        """Append one turn; return the exact text it added to the prompt."""
        role = self._check_turn(role, message)
        message = self._clean(message)
        if role == "human":
            template = self.format.first_human if self.turn_count == 0 and self.format.first_human else self.format.human
        else:
            template, message = self.format.gpt, message if message != "" else self.format.empty_reply
        wrapped = template.format(msg=message, system=self.system_prompt)
        # Where the message's own text lies in the prompt (user text, as opposed to the template's).
        start = len(self.prompt) + len(template.split("{msg}", 1)[0].format(system=self.system_prompt))
        self.message_spans.append((start, start + len(message)))
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
        """The prompt so far, without the leading BOS text (where the tokenizer adds BOS) and without
        trailing whitespace (except for formats whose prompts end with a newline)."""
        return self._finish(self.prompt)

    # === Internals ===
    def _wrap_system(self, system_prompt: str | None) -> str:
        fmt = self.format
        if system_prompt is not None:
            self._check_text(system_prompt, "system_prompt")
        if fmt.system is None:
            if system_prompt is not None and not self._original_quirks:
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
        system_prompt = system_prompt.strip()
        if system_prompt == "" and fmt.omit_empty_system:
            return ""
        return fmt.system.format(system=system_prompt, date=self.date_string)

    def _check_date(self, date_string: str | None) -> str | None:
        fmt = self.format
        if date_string is None:
            return fmt.default_date
        if not fmt.has_date:
            raise PromptFormatError(
                f"The {fmt.name!r} prompt format has no date line, got date_string={date_string!r}. "
                "Leave date_string unset for this format (only Llama-3.x instruct formats take one)."
            )
        if not isinstance(date_string, str) or date_string.strip() == "" or "\n" in date_string:
            raise PromptFormatError(
                f"date_string must be one non-empty line of text such as {fmt.default_date!r}, got "
                f"{date_string!r}."
            )
        return date_string

    def _wrap_human(self, message: str, *, first: bool) -> str:
        template = self.format.first_human if first and self.format.first_human else self.format.human
        return template.format(msg=message, system=self.system_prompt)

    def _finish(self, prompt: str) -> str:
        if self.format.strip_bos:
            prompt = prompt.removeprefix(self.bos)
        # [Contract] the original strips trailing whitespace; the newer chat templates' generation
        # prompts end with a newline that is part of the prompt the model was trained on.
        return prompt.rstrip() if self.format.strip_trailing_whitespace else prompt

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


# === Pure format over the newer vocabularies (the reply ends with the family's own EOS) ===
class Llama3PurePromptBuilder(PurePromptBuilder):
    """Pure format for Llama-3.x base models: "In: {msg}\\nOut: " / "{reply}<|end_of_text|>"."""

    format_key = "pure-llama3"


class Qwen25PurePromptBuilder(PurePromptBuilder):
    """Pure format for Qwen2.5 base models: "In: {msg}\\nOut: " / "{reply}<|endoftext|>"."""

    format_key = "pure-qwen2"


class Gemma2PurePromptBuilder(PurePromptBuilder):
    """Pure format for Gemma-2 base models: "In: {msg}\\nOut: " / "{reply}<eos>"."""

    format_key = "pure-gemma2"


# === Official chat templates of the newer instruct models ===
class Llama3InstructPromptBuilder(PromptBuilder):
    """Llama-3.1/3.2 Instruct chat template (system block with the date line; `date_string=`)."""

    format_key = "llama3-instruct"


class Qwen25InstructPromptBuilder(PromptBuilder):
    """Qwen2.5 Instruct ChatML template, with Qwen's default system prompt."""

    format_key = "qwen2.5-instruct"


class Gemma2InstructPromptBuilder(PromptBuilder):
    """Gemma-2 instruction-tuned template: user/model turns, no system prompt."""

    format_key = "gemma2-instruct"


class Phi35InstructPromptBuilder(PromptBuilder):
    """Phi-3.5-mini-instruct template: <|system|>/<|user|>/<|assistant|> blocks ending with <|end|>."""

    format_key = "phi3.5-instruct"
