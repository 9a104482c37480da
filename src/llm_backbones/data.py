"""Conversations -> training examples with exact label masks, generation prompts with token parity.

The whole prompt is tokenized at once (as at inference), never turn by turn; the labels of each reply
are the tokens between the end of its generation prompt and the end of the reply (its EOS included).
Both boundaries are checked: the tokens of every generation prompt are exactly a prefix of the
training sequence, so what the model sees at inference is what it saw in training, with no magic token
appended (OpenVLA appends 29871 at inference).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from llm_backbones.errors import ConversationError, TokenizationError
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
    end-of-turn/EOS token). With `max_length`, the sequence is truncated; a reply that would keep no
    supervised token raises `TokenizationError`, unless `drop_truncated_replies=True`, which drops such
    replies with a warning (an example with no supervised token at all always raises).
    """
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

    if max_length is not None and len(input_ids) > max_length:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
        lost = [name for k, name in replies if len(encoded[k]) >= max_length]
        if lost and not drop_truncated_replies:
            raise TokenizationError(
                f"max_length={max_length} cuts {', '.join(lost)} entirely (the conversation needs "
                f"{len(encoded[needed[-1]])} tokens): it would train on an empty mask. Raise max_length, "
                "shorten the conversation, or pass drop_truncated_replies=True to drop those replies."
            )
        if all(label == IGNORE_INDEX for label in labels):
            raise TokenizationError(
                f"max_length={max_length} leaves no supervised token (the first reply starts at token "
                f"{len(encoded[replies[0][0]])}). Raise max_length."
            )
        if lost:
            logger.warning("max_length=%d drops %s (no supervised token left)", max_length, ", ".join(lost))
    return {"input_ids": torch.tensor(input_ids, dtype=torch.long), "labels": torch.tensor(labels, dtype=torch.long)}


def tokenize_prompt(
    tokenizer: PreTrainedTokenizerBase,
    prompt_builder_fn: Callable[..., PromptBuilder],
    conversation: Conversation,
    *,
    model_family: str = "prismatic",
    system_prompt: str | None = None,
) -> torch.Tensor:
    """The ids to generate from, for a conversation that ends with a human turn: LongTensor[T].

    For every conversation `conv` ending with a reply, `tokenize_prompt(conv[:-1])` is exactly a prefix
    of `tokenize_conversation(conv)["input_ids"]`.
    """
    turns = normalize_conversation(conversation)
    if len(turns) % 2 == 0:
        raise ConversationError(
            f"A generation prompt ends with a human turn; this conversation has {len(turns)} turns and ends "
            f"with {turns[-1][0]!r}. Drop the last reply (conversation[:-1])."
        )
    texts, _ = _seams(prompt_builder_fn, conversation, model_family, system_prompt)
    return torch.tensor(encode_texts(tokenizer, [texts[-1]])[0], dtype=torch.long)


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
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, tokens], got shape {tuple(input_ids.shape)}.")
    batch, n_tokens = input_ids.shape
    if patch_embeddings.dim() != 3 or patch_embeddings.shape[0] != batch:
        raise ValueError(
            f"patch_embeddings must be [batch={batch}, patches, dim], got shape {tuple(patch_embeddings.shape)}."
        )
    if not 0 <= insert_at <= n_tokens:
        raise ValueError(f"insert_at={insert_at} is outside the {n_tokens} tokens of input_ids.")
    token_embeds = embed_input_ids(input_ids)
    if token_embeds.shape[-1] != patch_embeddings.shape[-1]:
        raise ValueError(
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
            raise ValueError("PaddedCollator got an empty batch.")
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
