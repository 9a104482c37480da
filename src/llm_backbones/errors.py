"""Typed exceptions of llm-backbones.

Each subclasses the builtin an old `except` clause would catch (`ValueError`, `FileNotFoundError`),
and each message names the bad value, what is accepted, and the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LLMBackbonesError(Exception):
    """Base class of every error raised on purpose by llm-backbones."""


class UnknownBackboneError(LLMBackbonesError, ValueError, KeyError):
    """A backbone id that is not in the registry.

    A ValueError (what the original's upstream raised) and a KeyError (what indexing its
    `LLAMA2_MODELS` dict raised), so old `except` clauses and `id in LLAMA2_MODELS` keep working.
    """

    def __init__(self, backbone_id: object, known: Iterable[str], *, scope: str = "registry") -> None:
        known = sorted(known)
        close = difflib.get_close_matches(str(backbone_id), known, n=3, cutoff=0.5)
        hint = f" Closest known ids: {', '.join(close)}." if close else ""
        super().__init__(
            f"Unknown LLM backbone id {backbone_id!r} (not in the {scope}).{hint} "
            f"Known ids: {', '.join(known)}. To add one, register it once: "
            "`llm_backbones.register_backbone(llm_backbones.BackboneSpec(backbone_id=..., family=..., ...))`."
        )
        self.backbone_id = backbone_id
        self.closest = close

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class InvalidSpecError(LLMBackbonesError, ValueError):
    """A `BackboneSpec` whose fields contradict each other or name an unknown policy."""


class ConversationError(LLMBackbonesError, ValueError):
    """A conversation turn that does not fit the prompt format (role order, unknown role, bad message)."""


class PromptFormatError(LLMBackbonesError, ValueError):
    """A prompt format cannot render what was asked (no builder, no system prompt slot, unknown family)."""


class TokenizerContractError(LLMBackbonesError, ValueError):
    """A tokenizer breaks the contract its registry entry declares (e.g. the BOS policy)."""


class ModelPathError(LLMBackbonesError, FileNotFoundError):
    """A `model_path` that is missing or is not an HF-format model directory."""


class ConfigMismatchError(LLMBackbonesError, ValueError):
    """A model config whose architecture is not the one the backbone id's family expects."""


class TokenizationError(LLMBackbonesError, ValueError):
    """A training example cannot be tokenized exactly (empty supervision, train/inference mismatch)."""


class ActionError(LLMBackbonesError, ValueError):
    """Actions or action token ids outside what the action tokenizer accepts."""
