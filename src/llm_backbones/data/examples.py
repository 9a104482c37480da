"""Conversations -> training examples with exact label masks, generation prompts with token parity.

One rule for every format: a reply supervises its own tokens (those that hold a character of the reply,
its end-of-turn/EOS included), and the generation prompt is the training sequence up to the reply's first
supervised token. The whole conversation is tokenized at once (as OpenVLA does), never turn by turn.

A separator the template puts between the prompt and the reply (the space of Prismatic's "Out: ") is
part of the prompt. Where the tokenizer keeps it as a token of its own, as LLaMA-2's does before action
tokens ("▁", 29871), that token ends the generation prompt and is never supervised: OpenVLA's labels
exactly, and its inference prompt (which appends 29871 by hand) by construction. Where the separator
merges into the reply's first token ("▁Hello"), that token is the reply's and the prompt ends before it.
"""

from __future__ import annotations

import bisect
import json
import logging
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from transformers import PreTrainedTokenizerBase

from llm_backbones.core.prompting.builder import DEFAULT_MODEL_FAMILY, PromptBuilder, builder_for
from llm_backbones.core.prompting.formats import PromptFormat
from llm_backbones.errors import (
    ArgumentError,
    ConversationError,
    DataFileError,
    InputShapeError,
    TokenizationError,
)
from llm_backbones.runtime.fused_loss import IGNORE_INDEX

logger = logging.getLogger(__name__)

Conversation = Sequence[Mapping[str, Any]]


def normalize_conversation(conversation: Conversation) -> list[tuple[str, str]]:
    """`[(role, text)]` from LLaVA/Prismatic (`from`/`value`) or chat (`role`/`content`) turns."""
    if isinstance(conversation, (str, bytes)) or not isinstance(conversation, Sequence):
        raise ConversationError(
            f"A conversation is a list of turns, got {type(conversation).__name__}. Pass e.g. "
            '[{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}].'
        )
    if len(conversation) == 0:
        raise ConversationError("The conversation is empty; it needs at least one human turn.")
    turns = []
    for i, turn in enumerate(conversation):
        if isinstance(turn, Mapping) and "from" in turn and "value" in turn:
            turns.append((turn["from"], turn["value"]))
        elif isinstance(turn, Mapping) and "role" in turn and "content" in turn:
            turns.append((turn["role"], turn["content"]))
        else:
            keys = sorted(turn) if isinstance(turn, Mapping) else type(turn).__name__
            raise ConversationError(
                f"Turn {i}: expected a dict with 'from'/'value' (LLaVA) or 'role'/'content' keys, got {keys}."
            )
    return turns


def split_system(
    conversation: Conversation, system_prompt: str | None = None
) -> tuple[str | None, list[tuple[str, str]]]:
    """`(system prompt, [(role, text)])`: a leading system turn (OpenAI's `{"role": "system"}`, or
    `{"from": "system"}`) is the conversation's own system prompt and replaces `system_prompt`."""
    turns = normalize_conversation(conversation)
    if turns[0][0] != "system":
        return system_prompt, turns
    if len(turns) == 1:
        raise ConversationError("The conversation holds only a system turn; it needs a human turn after it.")
    return turns[0][1], turns[1:]


ACCEPTED_DATA = (
    'a JSON list, or JSONL (one record a line), of LLaVA/Prismatic records {"conversations": [{"from": '
    '"human", "value": ...}, {"from": "gpt", "value": ...}]} or OpenAI chat records {"messages": [{"role": '
    '"system", "content": ...}, {"role": "user", ...}, {"role": "assistant", ...}]} (a system turn is the '
    "system prompt)"
)
_RECORD_KEYS = ("conversations", "messages")


def _is_turn(item: object) -> bool:
    return isinstance(item, Mapping) and (
        {"from", "value"} <= item.keys() or {"role", "content"} <= item.keys()
    )


def _read_records(path: Path) -> object:
    """The file's JSON: one document, or JSONL (a `.jsonl` file, or one that holds one value a line)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".jsonl":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg != "Extra data":  # not several values, one a line: not JSONL either
                raise ConversationError(
                    f"{str(path)!r} is not valid JSON ({exc}); expected {ACCEPTED_DATA}."
                ) from None
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ConversationError(
                    f"Line {number} of {str(path)!r} is not valid JSON ({exc}); expected {ACCEPTED_DATA}."
                ) from None
    return records


def load_conversations(path: str | Path) -> list[Conversation]:
    """Conversations from a JSON or JSONL file: LLaVA/Prismatic records (`{"conversations": [...]}`), OpenAI
    chat records (`{"messages": [...]}`, a system turn kept first: `split_system`), a list of conversations,
    one record, or one conversation (a list of turns). Anything else raises `ConversationError` naming the
    accepted formats (`ACCEPTED_DATA`)."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(
            f"Conversation file {str(path)!r} does not exist (or is not a file); pass {ACCEPTED_DATA}."
        )
    try:
        data = _read_records(path)
    except UnicodeDecodeError as exc:
        raise ConversationError(
            f"{str(path)!r} is not UTF-8 text ({exc}); expected {ACCEPTED_DATA}."
        ) from None
    if isinstance(data, Mapping) and any(key in data for key in _RECORD_KEYS):
        data = [data]
    elif isinstance(data, list) and data and _is_turn(data[0]):
        data = [data]  # one conversation: a list of turns
    if not isinstance(data, list) or not data:
        raise ConversationError(
            f"{str(path)!r} must hold a non-empty JSON list (or JSONL) of records: {ACCEPTED_DATA}; got "
            f"{type(data).__name__} {str(data)[:60]!r}."
        )
    conversations = []
    for index, item in enumerate(data):
        key = next((k for k in _RECORD_KEYS if isinstance(item, Mapping) and k in item), None)
        if key is None and isinstance(item, Mapping):
            raise ConversationError(
                f"Record {index} of {str(path)!r} ({len(data)} in all) has the keys {sorted(item)[:8]}, none "
                f"of 'conversations' (LLaVA) or 'messages' (OpenAI); expected {ACCEPTED_DATA}."
            )
        conversations.append(item[key] if key is not None else item)
    return conversations


@dataclass(frozen=True)
class _Rendered:
    """A conversation rendered turn by turn (see `_seams`)."""

    texts: list[str]  # the prompt (as `get_prompt()` returns it) after each turn
    replies: list[tuple[int, str, int]]  # per reply: (k, name, start), see `_seams`
    messages: list[tuple[int, int]]  # character spans of the turns' message text (user text)


# What the functions below take as `prompt_builder_fn`: a builder class (`PurePromptBuilder`), what
# `builder_for` returns, or a format name ("llama2-chat-prismatic"); `builder_options` go to each builder
# made.
BuilderSource = Callable[..., PromptBuilder] | str | PromptFormat


def make_builder(
    prompt_builder_fn: BuilderSource,
    model_family: str = DEFAULT_MODEL_FAMILY,
    system_prompt: str | None = None,
    builder_options: Mapping[str, Any] | None = None,
) -> PromptBuilder:
    """A fresh builder from any `BuilderSource`, with `builder_options` (`prismatic_compat=`,
    `date_string=`)."""
    options = dict(builder_options or {})
    if isinstance(prompt_builder_fn, (str, PromptFormat)):
        return builder_for(prompt_builder_fn, **options)(model_family, system_prompt)
    return prompt_builder_fn(model_family, system_prompt=system_prompt, **options)


def _seams(
    prompt_builder_fn: BuilderSource,
    conversation: Conversation,
    model_family: str,
    system_prompt: str | None,
    builder_options: Mapping[str, Any] | None = None,
) -> _Rendered:
    """Render the conversation turn by turn: the texts of every generation prompt and reply end.

    Each reply is described by `(k, name, start)`: `texts[k]` is its generation prompt, `texts[k + 1]`
    ends with it, and `start` is the character where the reply's own text begins (past the whitespace the
    template puts before it, which `get_prompt()` strips from the generation prompt: the space of "Out: ").
    """
    system_prompt, turns = split_system(conversation, system_prompt)
    builder = make_builder(prompt_builder_fn, model_family, system_prompt, builder_options)
    texts: list[str] = []
    replies: list[tuple[int, str, int]] = []
    for i, (role, message) in enumerate(turns):
        builder.add_turn(role, message)
        texts.append(builder.get_prompt())
        if i % 2 == 1:
            replies.append((len(texts) - 2, f"reply {i // 2} (turn {i})", 0))
    # Spans are in `builder.prompt`; the texts lose its leading BOS text where the tokenizer adds BOS.
    shift = len(builder.bos) if builder.format.strip_bos and builder.prompt.startswith(builder.bos) else 0
    messages = [(start - shift, end - shift) for start, end in builder.message_spans]
    replies = [(k, name, messages[2 * j + 1][0]) for j, (k, name, _) in enumerate(replies)]
    return _Rendered(texts, replies, messages)


def _max_length(tokenizer: PreTrainedTokenizerBase, max_length: object) -> int | None:
    """`max_length` checked, or the tokenizer's `model_max_length` (None when it is HF's "no limit")."""
    if max_length is None:
        model_max = getattr(tokenizer, "model_max_length", None)
        return model_max if isinstance(model_max, int) and 0 < model_max < 10**9 else None
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise TokenizationError(
            f"max_length must be a positive integer, got {max_length!r}. Pass e.g. the backbone's "
            "llm_max_length (2048), or None for the tokenizer's model_max_length."
        )
    return max_length


def _backend(tokenizer: PreTrainedTokenizerBase):
    """The Rust tokenizer of a fast tokenizer, with no truncation or padding left behind by an earlier
    call (`tok(x, truncation=True, max_length=20)` leaves both set on it), or None for a slow tokenizer.
    Every encode here states its own limits: a caller's earlier settings never cut or pad our examples."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if tokenizer.is_fast else None
    if backend is not None:
        # [Contract] as HF's own __call__ does before an untruncated, unpadded encode.
        if backend.truncation is not None:
            backend.no_truncation()
        if backend.padding is not None:
            backend.no_padding()
    return backend


# Per tokenizer: a copy of its Rust tokenizer that reads special-token strings as text (`_text_only`).
_TEXT_ONLY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _text_only(tokenizer: PreTrainedTokenizerBase):
    """A private copy of the Rust tokenizer with `encode_special_tokens=True` (never the caller's object:
    other threads encode with it), remade when tokens were added since."""
    cached = _TEXT_ONLY.get(tokenizer)
    if cached is None or cached[0] != len(tokenizer):
        from tokenizers import Tokenizer

        copy = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        copy.no_truncation()
        copy.no_padding()
        copy.encode_special_tokens = True
        cached = _TEXT_ONLY[tokenizer] = (len(tokenizer), copy)
    return cached[1]


def _in_spans(spans: Sequence[tuple[int, int]]) -> Callable[[int, int], bool]:
    """`inside(start, end)`: whether the non-empty character range lies within one of the sorted `spans`."""
    starts = [a for a, _ in spans]

    def inside(start: int, end: int) -> bool:
        i = bisect.bisect_right(starts, start) - 1
        return end > start and i >= 0 and end <= spans[i][1]

    return inside


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    return set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)


def _encodes_piecewise(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer encodes the text between special tokens piece by piece, each piece as if alone
    (the tokenizers library's rule; a Metaspace pre-tokenizer with prepend_scheme="first" breaks it)."""
    backend = tokenizer.backend_tokenizer
    marker = next((t for t in tokenizer.all_special_tokens if t not in ("", None)), None)
    if marker is None:
        return True
    left, right = "Hi there,", "how are you"
    whole = backend.encode(left + marker + right, add_special_tokens=False).ids
    pieces = backend.encode(left, add_special_tokens=False).ids + [tokenizer.convert_tokens_to_ids(marker)]
    return whole == pieces + backend.encode(right, add_special_tokens=False).ids


class _Encoding(NamedTuple):
    ids: list[int]
    offsets: list[tuple[int, int]]
    marks: list[int]  # indices of the special tokens the template wrote (not a message's text)


def _encode_with_offsets(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    messages: Sequence[tuple[int, int]] = (),
    special_tokens_in_messages: bool = False,
) -> _Encoding:
    """Ids, character offsets (special tokens the tokenizer inserts have (0, 0)) and template marks of `text`.

    A special token whose string appears inside a message (`messages`: sorted character spans of user text)
    is encoded as the text it is, unless `special_tokens_in_messages`: a message cannot close its own turn,
    forge a reply or put the pad id into `input_ids`. The template's own markers stay special. Text is
    encoded piece by piece between the template's special tokens, which is exactly how the tokenizer
    itself treats them, so a conversation without such strings gets the same ids either way.
    """
    backend = _backend(tokenizer)
    if backend is None:
        raise TokenizationError(
            f"{type(tokenizer).__name__} is a slow (Python) tokenizer: training examples need a fast "
            "tokenizer (character offsets mark each reply's own tokens). Load it with use_fast=True, or use "
            "the backbone's tokenizer (backbone.get_tokenizer())."
        )
    encoding = backend.encode(text, add_special_tokens=True)
    ids, offsets = encoding.ids, encoding.offsets
    special = _special_ids(tokenizer)
    written = [j for j, (i, o) in enumerate(zip(ids, offsets, strict=True)) if i in special and o[1] > o[0]]
    if special_tokens_in_messages or not messages:
        return _Encoding(ids, offsets, written)
    in_message = _in_spans(messages)
    marks = [j for j in written if not in_message(*offsets[j])]
    if len(marks) == len(written):
        return _Encoding(ids, offsets, marks)  # no special token came from a message
    if not _encodes_piecewise(tokenizer):
        raise TokenizationError(
            "A message holds control-token strings "
            f"({sorted(tokenizer.convert_ids_to_tokens(sorted(set(ids) & special)))}), and this tokenizer "
            f"({type(tokenizer).__name__}) encodes text differently once it is cut at special tokens (its "
            "pre-tokenizer depends on the position, e.g. Metaspace with prepend_scheme='first'), so they "
            "cannot be kept as text exactly. Remove them from the messages, use the backbone's tokenizer, or "
            "pass special_tokens_in_messages=True to parse them."
        )
    # Split at the template's special tokens; encode each piece with specials read as text.
    text_only = _text_only(tokenizer)
    out = _Encoding([], [], [])
    cursor = 0
    for n, (j, token) in enumerate([*((j, ids[j]) for j in marks), (len(ids), None)]):
        start, end = offsets[j] if token is not None else (len(text), len(text))
        piece = text_only.encode(text[cursor:start], add_special_tokens=n == 0)
        out.ids.extend(piece.ids)
        out.offsets.extend((a + cursor, b + cursor) if b > a else (a, b) for a, b in piece.offsets)
        if token is not None:
            out.marks.append(len(out.ids))
            out.ids.append(token)
            out.offsets.append((start, end))
        cursor = end
    return out


def _reply_spans(
    tokenizer: PreTrainedTokenizerBase,
    rendered: _Rendered,
    replies: list[tuple[int, str, int]],
    special_tokens_in_messages: bool = False,
) -> tuple[list[int], list[tuple[int, int, str]]]:
    """The ids of the whole conversation (`texts[-1]`) and, per reply, `(start, end, name)`: its own tokens.

    `end` is where the text after the reply (`texts[k + 1]`) ends; `start` is the first token holding a
    character of the reply itself, past the separator whitespace the template puts before it (a "▁" the
    tokenizer keeps on its own belongs to the prompt). Both boundaries are checked against the tokens of
    the texts that end there, so the prompt the model sees at inference is exactly the training prefix.
    """
    texts = rendered.texts
    text = texts[-1]
    input_ids, offsets, marks = _encode_with_offsets(
        tokenizer, text, rendered.messages, special_tokens_in_messages
    )
    # The tokens of a prefix `text[:n]` differ from the whole text's only after the last special token the
    # template wrote before `n` (the tokenizer encodes the text between special tokens piece by piece), so
    # each boundary is checked by encoding that last piece alone: linear in the conversation.
    mark_ends = [offsets[j][1] for j in marks]
    encoder = _backend(tokenizer) if special_tokens_in_messages else _text_only(tokenizer)

    def prefix_tokens(n_chars: int) -> tuple[int, bool]:
        """How many tokens `encode(text[:n_chars])` has, and whether they are the whole text's first ones."""
        m = bisect.bisect_right(mark_ends, n_chars) - 1
        base = marks[m] + 1 if m >= 0 else 0
        piece = encoder.encode(text[mark_ends[m] if m >= 0 else 0 : n_chars], add_special_tokens=m < 0).ids
        if input_ids[base : base + len(piece)] == piece:
            return base + len(piece), True
        # a pre-tokenizer that depends on the position (Metaspace, prepend_scheme="first"): the whole prefix
        exact = _encode_with_offsets(
            tokenizer, text[:n_chars], rendered.messages, special_tokens_in_messages
        ).ids
        return len(exact), input_ids[: len(exact)] == exact

    spans = []
    for k, name, reply_start in replies:
        (start, start_ok), (end, end_ok) = prefix_tokens(len(texts[k])), prefix_tokens(len(texts[k + 1]))
        for ok, at in ((start_ok, k), (end_ok, k + 1)):
            if not ok:
                fix = (
                    "the reply's first characters merge with the end of its generation prompt (e.g. a reply "
                    "starting with a line break after Qwen's 'assistant\\n'): remove the reply's leading "
                    "whitespace"
                    if at == k
                    else "end the message with whitespace-free punctuation"
                )
                raise TokenizationError(
                    f"{name}: the tokens of {texts[at][-40:]!r} are not a prefix of the whole conversation's "
                    "tokens (a merge crosses the turn boundary), so training and generation would see "
                    f"different tokens. Here {fix}."
                )
        # [Contract] OpenVLA: the lone "▁" before the action tokens is the prompt's, not supervised.
        while start < end and offsets[start][1] <= reply_start:
            start += 1
        if end <= start:
            raise TokenizationError(f"{name} has no tokens to supervise; check the prompt format.")
        spans.append((start, end, name))
    return input_ids, spans


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase,
    prompt_builder_fn: BuilderSource,
    conversation: Conversation,
    *,
    model_family: str = DEFAULT_MODEL_FAMILY,
    system_prompt: str | None = None,
    builder_options: Mapping[str, Any] | None = None,
    max_length: int | None = None,
    drop_truncated_replies: bool = False,
    special_tokens_in_messages: bool = False,
) -> dict[str, torch.Tensor]:
    """A training example: `{"input_ids": LongTensor[T], "labels": LongTensor[T]}`.

    Labels are `IGNORE_INDEX` (-100) everywhere except on each reply's own tokens (its text and its
    end-of-turn/EOS token; not a separator token before it, see the module docstring).

    Over-long conversations, the policy: `max_length` (default: the tokenizer's `model_max_length`, as
    Prismatic's datasets truncate) bounds the sequence.
    - A reply cut partway is truncated, with a logged warning naming how many tokens were cut.
    - A reply cut entirely (no supervised token left) raises `TokenizationError`, unless
      `drop_truncated_replies=True`, which drops it with a logged warning.
    - An example with no supervised token left always raises.

    Control-token strings inside a message (`</s>`, `<PAD>`, `<|eot_id|>`, ...) are encoded as text: a
    message cannot end its own turn, forge a reply, or put the pad id into `input_ids`. The template's own
    markers stay special. `special_tokens_in_messages=True` parses them as the tokens they name (the
    original's behaviour), for callers who write control tokens into messages on purpose.
    """
    limit = _max_length(tokenizer, max_length)
    rendered = _seams(prompt_builder_fn, conversation, model_family, system_prompt, builder_options)
    replies = rendered.replies
    if not replies:
        raise ConversationError(
            "The conversation has no reply (gpt/assistant turn) to supervise; for a generation prompt "
            "use tokenize_prompt()."
        )
    input_ids, spans = _reply_spans(tokenizer, rendered, replies, special_tokens_in_messages)
    labels = [IGNORE_INDEX] * len(input_ids)
    for start, end, _ in spans:
        labels[start:end] = input_ids[start:end]

    if limit is not None and len(input_ids) > limit:
        total = len(input_ids)
        input_ids, labels = input_ids[:limit], labels[:limit]
        lost = [name for start, _, name in spans if start >= limit]
        if lost and not drop_truncated_replies:
            raise TokenizationError(
                f"max_length={limit} cuts {', '.join(lost)} entirely (the conversation needs "
                f"{total} tokens): it would train on an empty mask. Raise max_length, "
                "shorten the conversation, or pass drop_truncated_replies=True to drop those replies."
            )
        if all(label == IGNORE_INDEX for label in labels):
            raise TokenizationError(
                f"max_length={limit} leaves no supervised token (the first reply starts at token "
                f"{spans[0][0]}). Raise max_length."
            )
        cut = [
            f"{name} keeps {limit - start} of its {end - start} tokens"
            for start, end, name in spans
            if start < limit < end
        ]
        dropped = [f"drops {', '.join(lost)}"] if lost else []
        logger.warning(
            "max_length=%d truncates a %d-token conversation: %s",
            limit,
            total,
            "; ".join(cut + dropped) or "only unsupervised tokens are cut",
        )
    return {
        "input_ids": torch.tensor(input_ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
    }


def tokenize_prompt(
    tokenizer: PreTrainedTokenizerBase,
    prompt_builder_fn: BuilderSource,
    conversation: Conversation,
    *,
    model_family: str = DEFAULT_MODEL_FAMILY,
    system_prompt: str | None = None,
    builder_options: Mapping[str, Any] | None = None,
    max_length: int | None = None,
    reply: str | None = None,
    special_tokens_in_messages: bool = False,
) -> torch.Tensor:
    """The ids to generate from, for a conversation that ends with a human turn: LongTensor[T].

    With `reply` (a reply of the kind the model was trained to give, e.g. action tokens; only where it
    starts matters), the prompt is exactly the training sequence of `conversation + [reply]` up to the
    reply's first supervised token: for OpenVLA on LLaMA-2 it ends with the "▁" (29871) that the model saw
    before its actions. Without it, the prompt is the rendered prompt's tokens, a prefix of the training
    sequence of every reply. A prompt longer than `max_length` (default: the tokenizer's
    `model_max_length`) raises `TokenizationError`: truncating it would cut the question. Control-token
    strings in messages are text, as in `tokenize_conversation` (`special_tokens_in_messages=True`: parsed).
    """
    limit = _max_length(tokenizer, max_length)
    _, turns = split_system(conversation)
    if len(turns) % 2 == 0:
        raise ConversationError(
            f"A generation prompt ends with a human turn; this conversation has {len(turns)} turns and ends "
            f"with {turns[-1][0]!r}. Drop the last reply (conversation[:-1])."
        )
    if reply is None:
        rendered = _seams(prompt_builder_fn, conversation, model_family, system_prompt, builder_options)
        ids = _encode_with_offsets(
            tokenizer, rendered.texts[-1], rendered.messages, special_tokens_in_messages
        ).ids
    else:
        full = [*conversation, {"from": "gpt", "value": reply}]
        rendered = _seams(prompt_builder_fn, full, model_family, system_prompt, builder_options)
        all_ids, spans = _reply_spans(tokenizer, rendered, rendered.replies[-1:], special_tokens_in_messages)
        ids = all_ids[: spans[-1][0]]
    if limit is not None and len(ids) > limit:
        raise TokenizationError(
            f"The generation prompt has {len(ids)} tokens, more than max_length={limit}; truncating it would "
            "cut the question the model must answer. Drop early turns of the conversation, or raise "
            "max_length (the tokenizer's model_max_length, i.e. llm_max_length of the backbone)."
        )
    return torch.tensor(ids, dtype=torch.long)


def vla_conversation(
    instruction: str, action_text: str | None = None, *, lowercase: bool = True
) -> list[dict]:
    """OpenVLA's conversation: "What action should the robot take to {instruction}?" and the action reply.

    OpenVLA lower-cases the instruction in training and at inference (`lowercase=True`, its behaviour).
    """
    if not isinstance(instruction, str) or instruction.strip() == "":
        raise ConversationError(
            f"instruction must be a non-empty string such as 'open the drawer', got {instruction!r:.80}."
        )
    text = instruction.lower() if lowercase else instruction
    turns = [{"from": "human", "value": f"What action should the robot take to {text}?"}]
    if action_text is not None:
        turns.append({"from": "gpt", "value": action_text})
    return turns


def vla_example(
    tokenizer: PreTrainedTokenizerBase,
    prompt_builder_fn: BuilderSource,
    action_tokenizer: Any,
    instruction: str,
    action: Any,
    *,
    predict_stop_token: bool = True,
    lowercase: bool = True,
    max_length: int | None = None,
    builder_options: Mapping[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """An OpenVLA training example: `{"input_ids", "labels"}` for one instruction and one action vector.

    The ids are OpenVLA's (`[BOS, ..., "Out", ":", "▁", a_1..a_D, EOS]` on LLaMA-2) and so are the labels:
    the D action tokens and EOS only (`predict_stop_token=False`: the action tokens only). The action
    tokens come from `action_tokenizer.encode` and are checked in the ids, so a tokenizer that merged them
    with their neighbours raises instead of training on other tokens.
    """
    action_ids = action_tokenizer.encode(action)
    if action_ids.dim() != 1:
        raise ConversationError(
            f"vla_example takes one action vector [D], got shape {tuple(action_ids.shape)}; call it per step."
        )
    conversation = vla_conversation(instruction, action_tokenizer(action), lowercase=lowercase)
    example = tokenize_conversation(
        tokenizer, prompt_builder_fn, conversation, max_length=max_length, builder_options=builder_options
    )
    supervised = example["input_ids"][example["labels"] != IGNORE_INDEX]
    if supervised[: len(action_ids)].tolist() != action_ids.tolist():
        raise TokenizationError(
            f"The reply's tokens {supervised.tolist()} do not start with the action tokens "
            f"{action_ids.tolist()}: this tokenizer merges action tokens with their neighbours. Use the "
            "backbone's tokenizer and an ActionTokenizer built from it."
        )
    if not predict_stop_token:
        example["labels"][len(example["labels"]) - len(supervised) + len(action_ids) :] = IGNORE_INDEX
    return example


def vla_prompt(
    tokenizer: PreTrainedTokenizerBase,
    prompt_builder_fn: BuilderSource,
    instruction: str,
    *,
    action_tokenizer: Any = None,
    lowercase: bool = True,
    max_length: int | None = None,
    builder_options: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """OpenVLA's inference prompt for `instruction`: the ids of `vla_example` up to the first action token.

    On LLaMA-2 that is `[BOS, ..., "Out", ":", "▁" (29871)]`, exactly the ids OpenVLA's `predict_action`
    feeds; generate `action_dim` tokens from it. (`action_tokenizer` is only used to render a stand-in
    action reply; by default the last token of the base vocabulary, where every action token lies.)
    """
    if action_tokenizer is not None:
        stand_in = action_tokenizer.tokenizer.decode([action_tokenizer.token_id_range[1]])
    else:
        stand_in = tokenizer.decode([tokenizer.vocab_size - 1])
    conversation = vla_conversation(instruction, lowercase=lowercase)
    return tokenize_prompt(
        tokenizer,
        prompt_builder_fn,
        conversation,
        max_length=max_length,
        reply=stand_in,
        builder_options=builder_options,
    )


def insert_patch_embeddings(
    embed_input_ids: Callable[[torch.Tensor], torch.Tensor],
    input_ids: torch.Tensor,
    patch_embeddings: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    *,
    insert_at: int = 1,
) -> dict[str, torch.Tensor]:
    """Splice projected image patches (`[B, P, D]`) into the token embeddings, right after BOS.

    Prismatic's multimodal convention: `[BOS, patch_1..patch_P, text...]`; the patches are attended to
    and never supervised (label -100). Returns `inputs_embeds`, `attention_mask` and (if given) `labels`,
    ready for `backbone(inputs_embeds=..., attention_mask=..., labels=...)` and for generation.
    """
    for name, tensor in (("input_ids", input_ids), ("patch_embeddings", patch_embeddings)):
        if not isinstance(tensor, torch.Tensor):
            raise InputShapeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}.")
    if input_ids.dim() != 2:
        raise InputShapeError(
            f"input_ids must be [batch, tokens], got shape {tuple(input_ids.shape)}; add a batch dimension "
            "with input_ids[None]."
        )
    batch, n_tokens = input_ids.shape
    if patch_embeddings.dim() != 3 or patch_embeddings.shape[0] != batch:
        raise InputShapeError(
            f"patch_embeddings must be [batch={batch}, patches, dim], got shape "
            f"{tuple(patch_embeddings.shape)}."
        )
    for name, tensor in (("attention_mask", attention_mask), ("labels", labels)):
        if tensor is not None and tuple(tensor.shape) != tuple(input_ids.shape):
            raise InputShapeError(
                f"{name} must have the shape of input_ids {tuple(input_ids.shape)}, got "
                f"{tuple(tensor.shape)}."
            )
    if isinstance(insert_at, bool) or not isinstance(insert_at, int) or not 0 <= insert_at <= n_tokens:
        raise InputShapeError(
            f"insert_at={insert_at!r} is outside the {n_tokens} tokens of input_ids; accepted: 0..{n_tokens} "
            "(1 puts the patches right after BOS, as Prismatic)."
        )
    token_embeds = embed_input_ids(input_ids)
    if token_embeds.shape[-1] != patch_embeddings.shape[-1]:
        raise InputShapeError(
            f"patch_embeddings have dim {patch_embeddings.shape[-1]} but the LLM's embeddings have "
            f"{token_embeds.shape[-1]}; project the patches to the backbone's embed_dim first."
        )
    patches = patch_embeddings.to(token_embeds.dtype)
    n_patches = patches.shape[1]
    out = {
        "inputs_embeds": torch.cat([token_embeds[:, :insert_at], patches, token_embeds[:, insert_at:]], dim=1)
    }
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    patch_mask = attention_mask.new_ones((batch, n_patches))
    out["attention_mask"] = torch.cat(
        [attention_mask[:, :insert_at], patch_mask, attention_mask[:, insert_at:]], 1
    )
    if labels is not None:
        patch_labels = labels.new_full((batch, n_patches), IGNORE_INDEX)
        out["labels"] = torch.cat([labels[:, :insert_at], patch_labels, labels[:, insert_at:]], dim=1)
    return out


@dataclass
class PaddedCollator:
    """Right-pads a batch: input ids with the pad id, labels with -100, and an attention mask.

    OpenVLA's `PaddedCollatorForActionPrediction` call shape and behaviour: `(model_max_length,
    pad_token_id, padding_side="right", pixel_values_dtype)`, sequences cut to `model_max_length` after
    padding, `pixel_values` (a tensor, or a dict of tensors for fused vision backbones) stacked and passed
    through, `dataset_name`s passed through as `dataset_names`. Beyond it: the attention mask comes from
    the lengths (a pad id inside a sequence stays attended), `pixel_values_dtype` casts floating pixel
    values when given (OpenVLA accepts it and ignores it; `None` leaves them as they are), bad batches
    raise, and `pad_to_multiple_of` rounds the padded length up (tensor-core friendly shapes).
    """

    model_max_length: int | None
    pad_token_id: int
    padding_side: str = "right"
    pixel_values_dtype: torch.dtype | None = None
    _: KW_ONLY
    pad_to_multiple_of: int | None = None
    _warned_cut: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("model_max_length", "pad_to_multiple_of"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputShapeError(
                    f"PaddedCollator {name} must be a positive integer or None, got {value!r}. Pass e.g. "
                    "PaddedCollator(model_max_length=tokenizer.model_max_length, "
                    "pad_token_id=tokenizer.pad_token_id)."
                )
        if (
            isinstance(self.pad_token_id, bool)
            or not isinstance(self.pad_token_id, int)
            or self.pad_token_id < 0
        ):
            raise InputShapeError(
                f"PaddedCollator pad_token_id must be a non-negative integer, got {self.pad_token_id!r}; "
                "pass the backbone's pad_token_id (backbone.pad_token_id)."
            )
        if self.padding_side != "right":
            raise InputShapeError(
                f"PaddedCollator pads training batches on the right, got padding_side={self.padding_side!r}. "
                "Use padding_side='right' (as OpenVLA); left padding is for generation (generate_greedy)."
            )
        if self.pixel_values_dtype is not None and not isinstance(self.pixel_values_dtype, torch.dtype):
            raise InputShapeError(
                f"pixel_values_dtype must be a torch.dtype or None, got {self.pixel_values_dtype!r}; e.g. "
                "torch.bfloat16."
            )

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not examples:
            raise InputShapeError("PaddedCollator got an empty batch; pass at least one example.")
        for i, example in enumerate(examples):
            if not isinstance(example, Mapping) or "input_ids" not in example or "labels" not in example:
                keys = sorted(example) if isinstance(example, Mapping) else type(example).__name__
                raise InputShapeError(
                    f"Example {i}: expected a dict with 'input_ids' and 'labels' (as tokenize_conversation "
                    f"returns), got {keys}."
                )
            if len(example["input_ids"]) != len(example["labels"]):
                raise InputShapeError(
                    f"Example {i}: {len(example['input_ids'])} input_ids but {len(example['labels'])} "
                    "labels; they must be the same length."
                )
        ids_and_labels = [self._ids(i, e) for i, e in enumerate(examples)]
        lengths = [len(e["input_ids"]) for e in examples]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, ((ids, row_labels), n) in enumerate(zip(ids_and_labels, lengths, strict=True)):
            input_ids[row, :n] = ids
            labels[row, :n] = row_labels
            attention_mask[row, :n] = 1
        supervised = (labels != IGNORE_INDEX).sum(dim=1)
        if self.model_max_length is not None:  # [Contract] OpenVLA truncates after padding
            cut = slice(0, self.model_max_length)
            input_ids, labels, attention_mask = input_ids[:, cut], labels[:, cut], attention_mask[:, cut]
        self._check_supervision(supervised, (labels != IGNORE_INDEX).sum(dim=1), lengths)
        batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if any("pixel_values" in e for e in examples):
            batch["pixel_values"] = self._stack_pixel_values(examples)
        if "dataset_name" in examples[0]:
            batch["dataset_names"] = [e.get("dataset_name") for e in examples]
        return batch

    @staticmethod
    def _ids(i: int, example: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Example `i`'s input_ids and labels as 1-D long tensors: integers (a fractional float would be cut
        to an integer, a bool read as 0/1), ids not negative, labels an id or IGNORE_INDEX."""
        out = []
        for key in ("input_ids", "labels"):
            try:
                values = torch.as_tensor(example[key])
            except (TypeError, ValueError, RuntimeError) as exc:
                raise ArgumentError(
                    f"Example {i}: {key} cannot be read as token ids ({exc}). Pass a list or 1-D tensor of "
                    "integers (as tokenize_conversation returns).",
                    name=key,
                    value=example[key],
                ) from None
            if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
                shown = values.flatten()[:3].tolist()
                raise ArgumentError(
                    f"Example {i}: {key} has dtype {values.dtype} (e.g. {shown}); token ids must be "
                    "integers. "
                    "Casting would cut 2.7 to 2 without a word: pass integer ids (as tokenize_conversation "
                    "returns), or round them yourself where they are whole numbers (.long()).",
                    name=key,
                    value=shown,
                )
            low = IGNORE_INDEX if key == "labels" else 0
            bad = values[(values < 0) & (values != low)]
            if bad.numel():
                accepted = (
                    "ids >= 0, or -100 (IGNORE_INDEX) for unsupervised tokens"
                    if key == "labels"
                    else ("ids >= 0")
                )
                raise ArgumentError(
                    f"Example {i}: {key} holds {bad.flatten()[0].item()} ({bad.numel()} negative values); "
                    f"accepted: {accepted}. The example was not made by tokenize_conversation, or was "
                    "edited: "
                    "rebuild it.",
                    name=key,
                    value=bad.flatten()[0].item(),
                )
            out.append(values.long().flatten())
        return out[0], out[1]

    def _check_supervision(self, before: torch.Tensor, after: torch.Tensor, lengths: list[int]) -> None:
        """Raise when the batch has no supervised token (its loss would be NaN, or 0 with a summed loss, and
        the step would learn nothing without a word); log once when truncation took every supervised token
        of some rows but not of all."""
        cut = ((before > 0) & (after == 0)).nonzero().flatten().tolist()
        if int(after.sum()) == 0:
            how = (
                f"truncation to model_max_length={self.model_max_length} cut all of them (the examples have "
                f"{lengths} tokens, their replies come after the cut)"
                if cut
                else "no example has a label other than -100 (IGNORE_INDEX)"
            )
            raise TokenizationError(
                f"PaddedCollator: this batch of {len(lengths)} examples has no supervised token: {how}. Its "
                "loss would be NaN (or 0) and the step would learn nothing. Raise model_max_length (the "
                "backbone's llm_max_length), or drop the examples longer than it (finetune's "
                "check_conversations "
                "names them), or shorten their prompts."
            )
        if cut and not self._warned_cut:
            self._warned_cut = True
            logger.warning(
                "PaddedCollator: truncation to model_max_length=%d took every supervised token of %d of %d "
                "examples in a batch (rows %s, of %s tokens); they add nothing to the loss. Raise "
                "model_max_length or drop over-long examples. (Said once per collator.)",
                self.model_max_length,
                len(cut),
                len(lengths),
                cut[:10],
                [lengths[r] for r in cut[:10]],
            )

    def _stack_pixel_values(
        self, examples: Sequence[Mapping[str, Any]]
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        values = [e.get("pixel_values") for e in examples]
        missing = [i for i, v in enumerate(values) if v is None]
        if missing:
            raise InputShapeError(
                f"Examples {missing} have no pixel_values while others do; a VLA batch needs an image for "
                "every example (OpenVLA's rule). Drop text-only examples or give them an image."
            )
        cast = self._cast
        if all(isinstance(v, torch.Tensor) for v in values):
            return cast(torch.stack(values))
        if all(isinstance(v, Mapping) for v in values):
            keys = list(values[0])
            if any(list(v) != keys for v in values):
                raise InputShapeError(
                    f"pixel_values dicts have different keys ({[sorted(v) for v in values]}); every example "
                    "must come from the same (fused) vision backbone transform."
                )
            return {k: cast(torch.stack([v[k] for v in values])) for k in keys}
        kinds = sorted({type(v).__name__ for v in values})
        raise InputShapeError(
            f"pixel_values must be tensors or dicts of tensors (fused vision backbones), got {kinds}. Apply "
            "the vision backbone's image transform first."
        )

    def _cast(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.pixel_values_dtype is not None and pixels.is_floating_point():
            return pixels.to(self.pixel_values_dtype)
        return pixels


# OpenVLA's name (prismatic/util/data_utils.py), so code written for it imports this one unchanged.
PaddedCollatorForActionPrediction = PaddedCollator
