"""Typed exceptions of llm-backbones.

Each subclasses the builtin an old `except` clause would catch (`ValueError`, `FileNotFoundError`,
`KeyError`, `TypeError`), and each message names the bad value, what is accepted, and the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LLMBackbonesError(Exception):
    """Base class of every error raised on purpose by llm-backbones."""


def closest(value: object, known: Iterable[str], n: int = 3) -> list[str]:
    """Up to `n` entries of `known` close to `value` (for "did you mean" hints)."""
    return difflib.get_close_matches(str(value), sorted(known), n=n, cutoff=0.5)


class UnknownBackboneError(LLMBackbonesError, ValueError, KeyError):
    """A backbone id that is not in the registry.

    A ValueError (what the original's upstream raised) and a KeyError (what indexing its
    `LLAMA2_MODELS` dict raised), so old `except` clauses and `id in LLAMA2_MODELS` keep working.
    """

    def __init__(self, backbone_id: object, known: Iterable[str], *, scope: str = "registry") -> None:
        known = sorted(known)
        close = closest(backbone_id, known)
        hint = f" Closest known ids: {', '.join(close)}." if close else ""
        super().__init__(
            f"Unknown LLM backbone id {backbone_id!r} (not in the {scope}).{hint} "
            f"Known ids: {', '.join(known)}. To add one, register it once: "
            "`llm_backbones.register_backbone("
            "llm_backbones.BackboneSpec(backbone_id=..., llm_family=..., ...))`."
        )
        self.backbone_id = backbone_id
        self.closest = close

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class ArgumentError(LLMBackbonesError, ValueError, TypeError):
    """An argument of the wrong type or value at a public entry point (a flag that is not a bool, a dtype that
    is not a floating one, an unknown choice or keyword, a tensor of the wrong dtype or values).

    A ValueError and a TypeError: what Python, torch or transformers raised for it before it was checked
    here, so old `except` clauses keep working. `name` is the argument, `value` what was given.
    """

    def __init__(self, message: str, *, name: str = "", value: object = None) -> None:
        super().__init__(message)
        self.name, self.value = name, value


class ConversationError(LLMBackbonesError, ValueError):
    """A conversation turn that does not fit the prompt format (role order, unknown role, bad message)."""


class PromptFormatError(LLMBackbonesError, ValueError):
    """A prompt format cannot render what was asked (no builder, no system prompt slot, unknown family)."""


class TokenizerContractError(LLMBackbonesError, ValueError):
    """A tokenizer breaks the contract its registry entry declares (e.g. the BOS policy)."""


class ModelPathError(LLMBackbonesError, FileNotFoundError):
    """A `model_path` that is missing or is not an HF-format model directory."""


class ConfigMismatchError(LLMBackbonesError, ValueError):
    """A model config that cannot be used: of another architecture than the backbone id's family expects,
    of an architecture transformers does not know, or not readable (corrupted config.json)."""


class TokenizationError(LLMBackbonesError, ValueError):
    """A training example cannot be tokenized exactly (empty supervision, train/inference mismatch)."""


class ActionError(LLMBackbonesError, ValueError):
    """Actions or action token ids outside what the action tokenizer accepts."""


class RegistryError(LLMBackbonesError, ValueError, TypeError):
    """A registration the registry refuses (an id already taken, something that is not a BackboneSpec).

    A TypeError too, as `register_backbone` raised for a non-spec before this class existed.
    """


class InvalidSpecError(RegistryError):
    """A `BackboneSpec` whose fields contradict each other or name an unknown policy."""


class ModelWeightsError(LLMBackbonesError, ValueError):
    """A weights file that cannot be read (truncated or corrupted safetensors, wrong tensor names)."""


class RemoteCodeError(LLMBackbonesError, ValueError):
    """A checkpoint that needs custom code from its directory, which runs only with
    `trust_remote_code=True`."""


class CheckpointError(LLMBackbonesError, ValueError):
    """A checkpoint of `save_backbone` that cannot be written or read (bad fingerprint.json, meta weights)."""


class FingerprintMismatchError(CheckpointError):
    """What `load_backbone` built differs from what `save_backbone` recorded (tokenizer, prompt format,
    padding).

    `mismatches` maps each differing fingerprint field to `(saved, built)`.
    """

    def __init__(self, message: str, mismatches: dict[str, tuple[object, object]]) -> None:
        super().__init__(message)
        self.mismatches = mismatches


class OutputPathError(LLMBackbonesError, FileNotFoundError):
    """A path to write to that cannot be used (missing parent folder, a file where a folder is needed, or a
    folder that is not a checkpoint and would be replaced)."""


class InputShapeError(LLMBackbonesError, ValueError):
    """Tensors whose shapes do not fit together (patch embeddings, batches to collate)."""


class DataFileError(LLMBackbonesError, FileNotFoundError):
    """A conversation data file that does not exist or is not a file."""


class FinetuneError(LLMBackbonesError, ValueError):
    """A fine-tuning setting that cannot run (mode, batch split, precision, FSDP version, device)."""


class VLACheckpointError(LLMBackbonesError, ValueError):
    """An OpenVLA / Prismatic checkpoint that cannot be read: an unknown layout, a config without the LLM's
    id, an index naming files outside the checkpoint directory, a training checkpoint without
    `llm_backbone`."""


class ImageError(LLMBackbonesError, ValueError):
    """An image a policy cannot take: a wrong shape or dtype, a float image outside [0, 1], NaN pixels, or
    pixel_values of another size than the vision backbone's."""


class StateDictMismatchError(ModelWeightsError):
    """Weights whose tensor names differ from the backbone's: `missing` (the backbone has them, the checkpoint
    does not) and `unexpected` (the other way round) list them."""

    def __init__(self, message: str, missing: list[str], unexpected: list[str]) -> None:
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected


class NormStatsError(LLMBackbonesError, ValueError, KeyError):
    """Action statistics that cannot un-normalize: an `unnorm_key` that is missing where several datasets are
    known or that names no dataset, or stats without `q01`/`q99` of the action's size.

    A KeyError too, as a lookup of an unknown dataset key.
    """

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class NonFiniteLossError(FinetuneError):
    """Training produced a loss or gradient norm that is NaN or infinite; the run stopped at `step` before
    updating the weights or writing anything over the last good checkpoint.

    `what` is "loss" or "gradient norm", `value` the non-finite number, `step` the optimizer step (1-based).
    """

    def __init__(self, message: str, *, step: int, what: str, value: float) -> None:
        super().__init__(message)
        self.step, self.what, self.value = step, what, value


class UnsafeFileError(LLMBackbonesError, ValueError):
    """A file the loader refuses to open: a pickle (`pytorch_model.bin`, `*.pt`) named by a weights index
    while `allow_pickle` is off, or a file outside the checkpoint directory (an index naming
    `../x.safetensors` or an absolute path, a symlink pointing elsewhere) while `allow_external_files` is off.

    `path` is the file as named, `reason` says which of the two it is ("pickle" or "outside").
    """

    def __init__(self, message: str, *, path: str, reason: str) -> None:
        super().__init__(message)
        self.path, self.reason = path, reason


class NonFiniteWeightsError(ModelWeightsError):
    """A weight tensor holding NaN or infinite values (a corrupted or diverged checkpoint).

    `tensor` is its name, `file` the file it was read from (or the checkpoint's source where not known).
    """

    def __init__(self, message: str, *, tensor: str, file: str) -> None:
        super().__init__(message)
        self.tensor, self.file = tensor, file


class TokenizerFileError(LLMBackbonesError, ValueError):
    """A tokenizer file that cannot be used: not JSON, nested deeper than any real tokenizer, larger than the
    size limit, or without the sections a tokenizer.json has (`model`, `added_tokens`)."""


class MissingDependencyError(LLMBackbonesError, ImportError):
    """An optional dependency that is not installed; the message is one line naming the extra to install
    (e.g. `pip install 'llm-backbones[serve]'`)."""


class RequestFormatError(LLMBackbonesError, ValueError):
    """A request to the policy server that cannot be read: a body that is not JSON (json-numpy) or `.npy`,
    missing or unknown fields, an unsupported content type, a body over the size limit.

    `status` is the HTTP status it is answered with: 400, 413 (too large) or 415 (content type).
    """

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ServingError(LLMBackbonesError, RuntimeError):
    """The policy server failed a request (the model raised on its batch: 500; it is shutting down: 503),
    could not be reached, or answered something that is not an action.

    `status` is the HTTP status of the answer, None when no answer came.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServeConfigError(LLMBackbonesError, ValueError):
    """A policy-server setting that cannot work (max batch, max wait, body size limit)."""


class RobotDataError(LLMBackbonesError, ValueError):
    """A robot dataset that cannot be trained on: a missing key (image, action, task), actions of the wrong
    size, NaN or infinite actions, an empty episode, a corrupted parquet file, a missing video or image file,
    an image that cannot be decoded, an unsupported layout or option (state, history).

    `episode` is the episode it concerns (None when it concerns the whole dataset), `file` the file read.
    """

    def __init__(self, message: str, *, episode: int | None = None, file: str | None = None) -> None:
        super().__init__(message)
        self.episode, self.file = episode, file
