"""The one prompt builder: renders any `PromptFormat`, turn by turn, with Prismatic's API.

`PurePromptBuilder`, `LLaMa2ChatPromptBuilder`, ... are the original class names, kept so that code
written for Prismatic/OpenVLA works unchanged; each only names its format. `builder_for(name, **options)`
makes builders of any registered format (its own, or its Prismatic twin "<name>-prismatic") with options
bound, in the shape Prismatic code calls: `builder_for("llama2-chat-prismatic")("openvla")`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from llm_backbones.core.prompting.formats import PROMPT_FORMATS, PromptFormat, get_prompt_format
from llm_backbones.errors import ConversationError, PromptFormatError, closest

ROLE_ALIASES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}
_ALIAS_OF = {"human": "user", "gpt": "assistant"}
IMAGE_MARKERS = ("<image>\n", "\n<image>", "<image>")  # removed from messages, in this order
DEFAULT_MODEL_FAMILY = "openvla"  # selects the default system prompt (Prismatic's and OpenVLA's are equal)

# format name -> the named builder class that renders it (filled by `PromptBuilder.__init_subclass__`)
_BUILDER_CLASSES: dict[str, type[PromptBuilder]] = {}


class PromptBuilder:
    """Builds a prompt over alternating human/gpt turns in one chat format.

    Args:
        model_family: selects the default system prompt ("openvla" or "prismatic": the same prompts).
        system_prompt: replaces the default system prompt where the format has one.
        prismatic_compat: render the format's Prismatic twin ("<name>-prismatic": the original
            Prismatic/OpenVLA strings byte for byte, for checkpoints trained on them) instead of the model's
            official format. Formats the original never had (Llama-3.x, Qwen2.5, Gemma-2, Phi-3.5) have
            one rendering.
        prompt_format: a `PromptFormat` or the name of a registered one (subclasses name theirs; the base
            class needs it).
        date_string: the date of formats with a date line (Llama-3.x's "Today Date: 26 Jul 2024"); the
            template's own fallback date when not given.
    """

    format_key: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.format_key is not None:  # the first class naming a format renders it (subclasses may reuse)
            _BUILDER_CLASSES.setdefault(cls.format_key, cls)

    def __init__(
        self,
        model_family: str = DEFAULT_MODEL_FAMILY,
        system_prompt: str | None = None,
        *,
        prismatic_compat: bool = False,
        prompt_format: PromptFormat | str | None = None,
        date_string: str | None = None,
    ) -> None:
        if prompt_format is None:
            if self.format_key is None:
                raise PromptFormatError(
                    "PromptBuilder needs a format: pass prompt_format= a format name (e.g. 'llama2-chat') or "
                    "a PromptFormat, use builder_for(name), or a named builder such as PurePromptBuilder."
                )
            prompt_format = self.format_key
        if (
            isinstance(prompt_format, PromptFormat)
            and prismatic_compat
            and prompt_format.name in PROMPT_FORMATS
        ):
            prompt_format = prompt_format.name  # a registered format: its Prismatic twin, if it has one
        if isinstance(prompt_format, str):
            prompt_format = get_prompt_format(prompt_format, prismatic_compat=prismatic_compat)
        if not isinstance(prompt_format, PromptFormat):
            raise PromptFormatError(
                f"prompt_format must be a PromptFormat or a format name, got {type(prompt_format).__name__}. "
                "Build one with llm_backbones.PromptFormat(...), or use a named builder."
            )
        if not isinstance(model_family, str):
            raise PromptFormatError(
                f"model_family must be a string such as 'openvla' or 'prismatic', got "
                f"{type(model_family).__name__}: {model_family!r:.80}."
            )
        self.format = prompt_format
        self.model_family = model_family
        # The original's quirks (e.g. silently ignoring a system prompt) belong to its own renderings only.
        self.prismatic_compat = prompt_format.prismatic
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
            template = (
                self.format.first_human
                if self.turn_count == 0 and self.format.first_human
                else self.format.human
            )
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
            if system_prompt is not None and not self.prismatic_compat:
                raise PromptFormatError(
                    f"The {fmt.name!r} prompt format has no system prompt, got system_prompt="
                    f"{system_prompt[:60]!r}. Put the instruction in the first human message instead, "
                    "or use a format with a system prompt."
                )
            return ""
        if system_prompt is None:
            if not fmt.default_system:
                raise PromptFormatError(
                    f"The {fmt.name!r} prompt format has no default system prompt: give system_prompt=..., "
                    f"or register it with default_system={{{DEFAULT_MODEL_FAMILY!r}: ...}}."
                )
            if self.model_family not in fmt.default_system:
                near = closest(self.model_family, fmt.default_system)
                hint = f" Did you mean {near[0]!r}?" if near else ""
                raise PromptFormatError(
                    f"No default system prompt of the {fmt.name!r} format for model_family="
                    f"{self.model_family!r}; known families: {', '.join(sorted(fmt.default_system))}.{hint} "
                    "Pass one of them, or give system_prompt= explicitly."
                )
            system_prompt = fmt.default_system[self.model_family]
        if fmt.strip_message:
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

    def _clean(self, message: str) -> str:
        # LLaVA data marks the image with "<image>" on its own line; the image is spliced in as patch
        # embeddings, so the marker goes, with the line break that set it apart.
        for marker in IMAGE_MARKERS:
            message = message.replace(marker, "")
        return message.strip() if self.format.strip_message else message

    @staticmethod
    def _check_text(text: object, what: str) -> None:
        """Strings only, and only text that can be encoded (no lone surrogates from a bad decode)."""
        if not isinstance(text, str):
            raise ConversationError(
                f"{what} must be a string, got {type(text).__name__}: {text!r:.80}. Convert it to text first."
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
        return f"{type(self).__name__}(format={self.format.name!r}, turns={self.turn_count})"


class PurePromptBuilder(PromptBuilder):
    """ "In: {msg}\\nOut: " / "{reply}</s>" — base (non-chat) models, OpenVLA's format."""

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


class PromptBuilderFactory:
    """Makes builders of one format with options bound; called as Prismatic calls a builder class:
    `factory(model_family, system_prompt=None)`. Made by `builder_for`."""

    def __init__(
        self, prompt_format: PromptFormat, builder_cls: type[PromptBuilder], options: Mapping[str, Any]
    ):
        self.format, self.builder_cls = prompt_format, builder_cls
        self.options: Mapping[str, Any] = MappingProxyType(dict(options))
        self.__name__ = (
            builder_cls.__name__ if builder_cls.format_key == prompt_format.name else prompt_format.name
        )
        # bad options fail here, where they were given, not at the first conversation (a placeholder system
        # prompt: a registered format need not have a default one)
        self.builder_cls(
            DEFAULT_MODEL_FAMILY,
            None if prompt_format.system is None else "",
            **self.options,
            prompt_format=prompt_format,
        )

    @property
    def format_key(self) -> str:
        return self.format.name

    def __call__(
        self, model_family: str = DEFAULT_MODEL_FAMILY, system_prompt: str | None = None, **options: Any
    ) -> PromptBuilder:
        return self.builder_cls(
            model_family, system_prompt, **{**self.options, **options, "prompt_format": self.format}
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PromptBuilderFactory) and (
            self.format,
            self.builder_cls,
            dict(self.options),
        ) == (other.format, other.builder_cls, dict(other.options))

    def __hash__(self) -> int:
        return hash((self.format.name, self.builder_cls))

    def __reduce__(self) -> tuple[Any, ...]:
        # by name where the format is the registered one (a PromptFormat holds read-only mappings)
        registered = PROMPT_FORMATS.get(self.format.name) == self.format
        return (_factory_from, (self.format.name if registered else self.format, dict(self.options)))

    def __repr__(self) -> str:
        shown = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"builder_for({self.format.name!r}{shown})"


BUILDER_OPTIONS = ("prismatic_compat", "date_string")


def builder_for(prompt_format: str | PromptFormat, **options: Any) -> PromptBuilderFactory:
    """Builders of the format named `prompt_format` (or the `PromptFormat` given), with `options` bound.

    `options`: `prismatic_compat=True` (the format's "<name>-prismatic" twin where it has one),
    `date_string=` (formats with a date line). The result is called like a Prismatic builder class,
    `builder_for(name)(model_family, system_prompt=None)`, and is accepted wherever one is.
    """
    unknown = sorted(set(options) - set(BUILDER_OPTIONS))
    if unknown:
        near = closest(unknown[0], BUILDER_OPTIONS)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise PromptFormatError(
            f"Unknown builder option {unknown[0]!r}.{hint} Accepted: {', '.join(BUILDER_OPTIONS)}; the "
            "system prompt and model_family are given when a builder is made (factory(model_family, "
            "system_prompt))."
        )
    prismatic_compat = bool(options.pop("prismatic_compat", False))
    if isinstance(prompt_format, str):
        prompt_format = get_prompt_format(prompt_format, prismatic_compat=prismatic_compat)
    elif not isinstance(prompt_format, PromptFormat):
        raise PromptFormatError(
            f"builder_for expects a format name or a PromptFormat, got {type(prompt_format).__name__}: "
            f"{prompt_format!r:.80}."
        )
    elif prismatic_compat:
        prompt_format = get_prompt_format(prompt_format.name, prismatic_compat=True)
    builder_cls = _BUILDER_CLASSES.get(prompt_format.official_name, PromptBuilder)
    return PromptBuilderFactory(prompt_format, builder_cls, options)


def _factory_from(prompt_format: str | PromptFormat, options: dict[str, Any]) -> PromptBuilderFactory:
    return builder_for(prompt_format, **options)
