"""Conversations -> training examples with exact label masks, generation prompts with token parity.

The whole prompt is tokenized at once (as at inference), never turn by turn; the labels of each reply
are the tokens between the end of its generation prompt and the end of the reply (its EOS included).
Both boundaries are checked: the tokens of every generation prompt are exactly a prefix of the
training sequence, so what the model sees at inference is what it saw in training, with no magic token
appended (OpenVLA appends 29871 at inference).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from llm_backbones.errors import ConversationError, DataFileError, InputShapeError, TokenizationError
from llm_backbones.prompting import PromptBuilder

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
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


def load_conversations(path: str | Path) -> list[Conversation]:
    """Conversations from a JSON file: a list of LLaVA/Prismatic records (`{"conversations": [...]}`), a
    list of conversations, one record, or one conversation (a list of turns)."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(
            f"Conversation file {str(path)!r} does not exist (or is not a file); pass a LLaVA/Prismatic "
            'JSON file: [{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]}].'
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConversationError(f"{str(path)!r} is not valid JSON ({exc}); expected a list of conversations.") from None
    if isinstance(data, Mapping) and "conversations" in data:
        data = [data]
    elif isinstance(data, list) and data and isinstance(data[0], Mapping) and "conversations" not in data[0]:
        data = [data]  # one conversation: a list of turns
    if not isinstance(data, list) or not data:
        raise ConversationError(
            f"{str(path)!r} must hold a non-empty JSON list of records ({{'conversations': [...]}}) or of "
            f"conversations, got {type(data).__name__} {str(data)[:60]!r}."
        )
    return [item["conversations"] if isinstance(item, Mapping) and "conversations" in item else item for item in data]


def _seams(
    prompt_builder_fn: Callable[..., PromptBuilder],
    conversation: Conversation,
    model_family: str,
    system_prompt: str | None,
) -> tuple[list[str], list[tuple[int, str]]]:
    """Render the conversation turn by turn; return the texts of every generation prompt and reply end.

    `texts[k]` is the prompt (as `get_prompt()` returns it) after each turn; each reply is described by
    `(index of its generation-prompt text, turn index)`: that text and the next bound its supervision.
    """
    builder = prompt_builder_fn(model_family, system_prompt=system_prompt)
    texts: list[str] = []
    replies: list[tuple[int, str]] = []
    for i, (role, message) in enumerate(normalize_conversation(conversation)):
        builder.add_turn(role, message)
        texts.append(builder.get_prompt())
        if i % 2 == 1:
            replies.append((len(texts) - 2, f"reply {i // 2} (turn {i})"))
    return texts, replies


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


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """`tokenizer(text, add_special_tokens=True).input_ids` for each text (BOS exactly where the tokenizer
    inserts it at inference). Calls the Rust tokenizer directly where there is one: for the few short
    texts of one conversation that is about twice as fast as the Python wrapper or a batched call."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if tokenizer.is_fast else None
    if backend is None:
        return tokenizer(texts, add_special_tokens=True).input_ids
    return [backend.encode(text, add_special_tokens=True).ids for text in texts]


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase,
    prompt_builder_fn: Callable[..., PromptBuilder],
    conversation: Conversation,
    *,
    model_family: str = "prismatic",
    system_prompt: str | None = None,
    max_length: int | None = None,
    drop_truncated_replies: bool = False,
) -> dict[str, torch.Tensor]:
    """A training example: `{"input_ids": LongTensor[T], "labels": LongTensor[T]}`.

    Labels are `IGNORE_INDEX` (-100) everywhere except on each reply's tokens (its text and its
    end-of-turn/EOS token).

    Over-long conversations, the policy: `max_length` (default: the tokenizer's `model_max_length`, as
    Prismatic's datasets truncate) bounds the sequence.
    - A reply cut partway is truncated, with a logged warning naming how many tokens were cut.
    - A reply cut entirely (no supervised token left) raises `TokenizationError`, unless
      `drop_truncated_replies=True`, which drops it with a logged warning.
    - An example with no supervised token left always raises.
    """
    limit = _max_length(tokenizer, max_length)
    texts, replies = _seams(prompt_builder_fn, conversation, model_family, system_prompt)
    if not replies:
        raise ConversationError(
            "The conversation has no reply (gpt/assistant turn) to supervise; for a generation prompt "
            "use tokenize_prompt()."
        )
    needed = sorted({k for k, _ in replies} | {k + 1 for k, _ in replies})
    encoded = dict(zip(needed, encode_texts(tokenizer, [texts[k] for k in needed]), strict=True))
    input_ids = encoded[needed[-1]]
    if needed[-1] != len(texts) - 1:  # conversation ends with a human turn: keep it, unsupervised
        input_ids = encode_texts(tokenizer, [texts[-1]])[0]
    labels = [IGNORE_INDEX] * len(input_ids)
    for k, name in replies:
        start, end = len(encoded[k]), len(encoded[k + 1])
        for bound, ids in ((start, encoded[k]), (end, encoded[k + 1])):
            if input_ids[:bound] != ids:
                raise TokenizationError(
                    f"{name}: the tokens of {texts[k if bound == start else k + 1][-40:]!r} are not a "
                    "prefix of the whole conversation's tokens (a merge crosses the turn boundary), so "
                    "training and generation would see different tokens. Report the conversation; as a "
                    "workaround end the message with whitespace-free punctuation."
                )
        if end <= start:
            raise TokenizationError(f"{name} has no tokens to supervise; check the prompt format.")
        labels[start:end] = input_ids[start:end]

    if limit is not None and len(input_ids) > limit:
        total = len(input_ids)
        input_ids, labels = input_ids[:limit], labels[:limit]
        lost = [name for k, name in replies if len(encoded[k]) >= limit]
        if lost and not drop_truncated_replies:
            raise TokenizationError(
                f"max_length={limit} cuts {', '.join(lost)} entirely (the conversation needs "
                f"{total} tokens): it would train on an empty mask. Raise max_length, "
                "shorten the conversation, or pass drop_truncated_replies=True to drop those replies."
            )
        if all(label == IGNORE_INDEX for label in labels):
            raise TokenizationError(
                f"max_length={limit} leaves no supervised token (the first reply starts at token "
                f"{len(encoded[replies[0][0]])}). Raise max_length."
            )
        cut = [
            f"{name} keeps {limit - len(encoded[k])} of its {len(encoded[k + 1]) - len(encoded[k])} tokens"
            for k, name in replies
            if len(encoded[k]) < limit < len(encoded[k + 1])
        ]
        dropped = [f"drops {', '.join(lost)}"] if lost else []
        logger.warning(
            "max_length=%d truncates a %d-token conversation: %s", limit, total, "; ".join(cut + dropped) or "only unsupervised tokens are cut"
        )
    return {"input_ids": torch.tensor(input_ids, dtype=torch.long), "labels": torch.tensor(labels, dtype=torch.long)}


def tokenize_prompt(
    tokenizer: PreTrainedTokenizerBase,
    prompt_builder_fn: Callable[..., PromptBuilder],
    conversation: Conversation,
    *,
    model_family: str = "prismatic",
    system_prompt: str | None = None,
    max_length: int | None = None,
) -> torch.Tensor:
    """The ids to generate from, for a conversation that ends with a human turn: LongTensor[T].

    For every conversation `conv` ending with a reply, `tokenize_prompt(conv[:-1])` is exactly a prefix
    of `tokenize_conversation(conv)["input_ids"]`. A prompt longer than `max_length` (default: the
    tokenizer's `model_max_length`) raises `TokenizationError`: truncating it would cut the question.
    """
    limit = _max_length(tokenizer, max_length)
    turns = normalize_conversation(conversation)
    if len(turns) % 2 == 0:
        raise ConversationError(
            f"A generation prompt ends with a human turn; this conversation has {len(turns)} turns and ends "
            f"with {turns[-1][0]!r}. Drop the last reply (conversation[:-1])."
        )
    texts, _ = _seams(prompt_builder_fn, conversation, model_family, system_prompt)
    ids = encode_texts(tokenizer, [texts[-1]])[0]
    if limit is not None and len(ids) > limit:
        raise TokenizationError(
            f"The generation prompt has {len(ids)} tokens, more than max_length={limit}; truncating it would "
            "cut the question the model must answer. Drop early turns of the conversation, or raise "
            "max_length (the tokenizer's model_max_length, i.e. llm_max_length of the backbone)."
        )
    return torch.tensor(ids, dtype=torch.long)


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
            f"patch_embeddings must be [batch={batch}, patches, dim], got shape {tuple(patch_embeddings.shape)}."
        )
    for name, tensor in (("attention_mask", attention_mask), ("labels", labels)):
        if tensor is not None and tuple(tensor.shape) != tuple(input_ids.shape):
            raise InputShapeError(
                f"{name} must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(tensor.shape)}."
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
    out["attention_mask"] = torch.cat([attention_mask[:, :insert_at], patch_mask, attention_mask[:, insert_at:]], 1)
    if labels is not None:
        patch_labels = labels.new_full((batch, n_patches), IGNORE_INDEX)
        out["labels"] = torch.cat([labels[:, :insert_at], patch_labels, labels[:, insert_at:]], dim=1)
    return out


@dataclass
class PaddedCollator:
    """Right-pads examples: input ids with the backbone's pad id, labels with -100, and an attention mask.

    `pad_to_multiple_of` rounds the padded length up (tensor-core friendly shapes).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
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
                    f"Example {i}: {len(example['input_ids'])} input_ids but {len(example['labels'])} labels; "
                    "they must be the same length."
                )
        lengths = [len(e["input_ids"]) for e in examples]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, (example, n) in enumerate(zip(examples, lengths, strict=True)):
            input_ids[row, :n] = example["input_ids"]
            labels[row, :n] = example["labels"]
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
