"""Save and load a backbone with a fingerprint of everything a silent mismatch would break.

`save_backbone(backbone, path)` writes an ordinary HF directory (safetensors weights, config, tokenizer)
plus `fingerprint.json`: the backbone id and family, base / tokenizer / padded vocabulary sizes, special
token ids, the prompt format and a rendered probe prompt with its token ids, a hash of the tokenizer, the
dtype and the library versions. The directory is written beside its destination under a temporary name
and renamed into place, so a save that is interrupted (killed, out of disk) leaves the previous
checkpoint intact.

`load_backbone(path, **overrides)` rebuilds the backbone through the registry with `model_path=path`,
computes the same fingerprint from what it built, and raises `FingerprintMismatchError` when they differ
(another tokenizer, another prompt format, other padding) unless `ignore_fingerprint=True`.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerBase

from llm_backbones.backbones import LLMBackbone, get_llm_backbone_and_tokenizer
from llm_backbones.errors import (
    CheckpointError,
    FingerprintMismatchError,
    ModelPathError,
    ModelWeightsError,
    OutputPathError,
)
from llm_backbones.registry import get_spec

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"
FINGERPRINT_VERSION = 1
# The conversation rendered into `probe_prompt` with the backbone's prompt builder ("openvla" family).
PROBE_CONVERSATION: tuple[tuple[str, str], ...] = (
    ("human", "What action should the robot take to pick up the red block?"),
    ("gpt", "Move left."),
    ("human", "And then?"),
)
# Texts whose token ids enter the tokenizer hash: spaces, newlines, unicode, special-token text, numbers.
PROBE_TEXTS: tuple[str, ...] = (
    "Test 123",
    " leading space",
    "  two  spaces\n\tand a tab",
    "In: What action should the robot take?\nOut:",
    "é 日本 🤖 → ∞",
    "<s> </s> <unk> <PAD> as literal text",
    "1.5e-3, -0.25, 42",
)
# Fingerprint fields checked on load, and what a difference means.
CHECKED_FIELDS: dict[str, str] = {
    "family": "another model family",
    "base_vocab_size": "another tokenizer",
    "tokenizer_size": "another tokenizer (added tokens differ)",
    "special_token_ids": "another tokenizer (BOS/EOS/PAD/UNK ids differ)",
    "tokenizer_sha256": "another tokenizer (vocabulary, added tokens or tokenization differ)",
    "probe_input_ids": "another tokenizer (the probe prompt tokenizes differently)",
    "padded_vocab_size": "other padding (the embedding matrix has another number of rows)",
    "prompt_format": "another prompt format",
    "probe_prompt": "another prompt format (the probe conversation renders differently)",
}
_REQUIRED = ("backbone_id", *CHECKED_FIELDS)


# === Fingerprint ===
def tokenizer_sha256(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of what the tokenizer does, not of how its files are serialized: the vocabulary, the added
    tokens, the special-token map and the ids of `PROBE_TEXTS` (which catch normalizer differences)."""
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items(), key=lambda item: (item[1], item[0])),
        "added": sorted(
            (i, str(token), bool(getattr(token, "special", False)))
            for i, token in tokenizer.added_tokens_decoder.items()
        ),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "probes": [tokenizer(text).input_ids for text in PROBE_TEXTS],
    }
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def backbone_fingerprint(backbone: LLMBackbone) -> dict[str, Any]:
    """The fingerprint `save_backbone` writes and `load_backbone` checks (see `CHECKED_FIELDS`)."""
    import transformers

    from llm_backbones import __version__

    tokenizer = backbone.get_tokenizer()
    builder = backbone.prompt_builder_fn("openvla")
    for role, message in PROBE_CONVERSATION:
        builder.add_turn(role, message)
    probe = builder.get_prompt()
    weight = backbone.llm.get_input_embeddings().weight
    family = getattr(backbone, "llm_family", None) or get_spec(backbone.identifier).family
    return {
        "fingerprint_version": FINGERPRINT_VERSION,
        "backbone_id": backbone.identifier,
        "family": family,
        "base_vocab_size": int(tokenizer.vocab_size),
        "tokenizer_size": len(tokenizer),
        "padded_vocab_size": int(weight.shape[0]),
        "special_token_ids": {
            name: getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad", "unk")
        },
        "prompt_format": builder.format.name,
        "prompt_builder": type(builder).__name__,
        "probe_prompt": probe,
        "probe_input_ids": tokenizer(probe).input_ids,
        "tokenizer_sha256": tokenizer_sha256(tokenizer),
        "dtype": str(weight.dtype).removeprefix("torch."),
        "llm_max_length": getattr(backbone, "llm_max_length", None),
        "versions": {
            "llm_backbones": __version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
    }


def read_fingerprint(path: str | Path) -> dict[str, Any]:
    """The fingerprint of checkpoint `path`; `CheckpointError` if it is not one `save_backbone` wrote."""
    file = Path(path) / FINGERPRINT_FILE
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelPathError(
            f"{Path(path)} has no {FINGERPRINT_FILE}, so it is not a checkpoint written by save_backbone. "
            "For a plain HF-format directory use get_llm_backbone_and_tokenizer(<id>, model_path=...)."
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{file} is not valid JSON ({exc}): the file is corrupted. Save the backbone again, or restore "
            "the file from a copy of the checkpoint."
        ) from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} holds a JSON {type(data).__name__}, not a fingerprint object.")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise CheckpointError(
            f"{file} lacks the fields {missing}: it was not written by save_backbone, or was edited. Save the "
            "backbone again."
        )
    version = data.get("fingerprint_version")
    if not isinstance(version, int) or version > FINGERPRINT_VERSION:
        raise CheckpointError(
            f"{file} has fingerprint_version={version!r}; this llm-backbones reads versions up to "
            f"{FINGERPRINT_VERSION}. Upgrade llm-backbones to load it."
        )
    return data


def compare_fingerprints(saved: dict[str, Any], built: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """`{field: (saved, built)}` for every checked field that differs."""
    return {key: (saved.get(key), built.get(key)) for key in CHECKED_FIELDS if saved.get(key) != built.get(key)}


def _short(value: Any, limit: int = 90) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _verify(path: Path, saved: dict[str, Any], built: dict[str, Any], *, ignore: bool) -> None:
    if saved.get("backbone_id") != built["backbone_id"]:
        logger.warning(
            "Checkpoint %s was saved as %r and is loaded as %r (llm_backbone_id= override)",
            path, saved.get("backbone_id"), built["backbone_id"],
        )
    if saved.get("versions") != built["versions"]:
        logger.info("Checkpoint %s was saved with %s; running %s", path, saved.get("versions"), built["versions"])
    mismatches = compare_fingerprints(saved, built)
    if not mismatches:
        return
    lines = [
        f"  - {key}: saved {_short(a)}, built {_short(b)} ({CHECKED_FIELDS[key]})" for key, (a, b) in mismatches.items()
    ]
    message = (
        f"Checkpoint {path} does not match what was built from it:\n" + "\n".join(lines) + "\n"
        f"It was saved from {saved.get('backbone_id')!r}. Load it as it was saved (no llm_backbone_id= "
        "override, with the tokenizer files it was saved with), or pass ignore_fingerprint=True if the "
        "difference is intended."
    )
    if ignore:
        logger.warning("%s (ignored: ignore_fingerprint=True)", message)
        return
    raise FingerprintMismatchError(message, mismatches)


# === Atomic directory writes ===
def _fsync_tree(directory: Path) -> None:
    """Flush every file of `directory`, then the directory itself, to disk."""
    for file in directory.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    if sys.platform == "win32":  # directories cannot be opened for fsync there
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux `renameat2(RENAME_EXCHANGE)`); False where that is unavailable."""
    if sys.platform != "linux":
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # a libc without renameat2
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # kernel or filesystem without exchange
        return False
    raise OSError(code, os.strerror(code), str(b))


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Make `tmp` appear at `target` in one step; the previous `target`, if any, is then deleted."""
    if not target.exists():
        try:
            os.rename(tmp, target)
            _fsync_dir(target.parent)
            return
        except OSError as exc:  # another save created `target` in the meantime: swap with it instead
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    if _exchange(tmp, target):
        shutil.rmtree(tmp)  # it now holds the previous checkpoint
    else:
        # Two renames: between them `target` is missing and the previous checkpoint is at `backup`
        # (load_backbone names it if that moment is ever interrupted).
        backup = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
        os.rename(target, backup)
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(backup, target)
            raise
        shutil.rmtree(backup)
    _fsync_dir(target.parent)


def _check_target(path: object) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise OutputPathError(f"path must be a str or a path, got {type(path).__name__}: {path!r:.80}.")
    target = Path(path).expanduser().absolute()
    if target.exists() and not target.is_dir():
        raise OutputPathError(
            f"{target} exists and is a file; a checkpoint is a directory. Choose another path or remove the file."
        )
    if target.is_dir() and any(target.iterdir()) and not (target / FINGERPRINT_FILE).is_file():
        raise OutputPathError(
            f"{target} is a non-empty directory that is not a checkpoint of save_backbone (no "
            f"{FINGERPRINT_FILE}); refusing to replace it. Choose a new or empty directory, or an existing "
            "checkpoint to overwrite."
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise OutputPathError(f"Cannot create the folder of {target}: {exc}. Choose another path.") from exc
    return target


def _new_temp_dir(target: Path) -> Path:
    """A fresh directory beside `target` (same filesystem, so the final rename is atomic), mode from umask."""
    for _ in range(100):
        tmp = target.parent / f".{target.name}.tmp-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue
    raise OutputPathError(f"Could not create a temporary directory beside {target}.")


def _write_weights(backbone: LLMBackbone, directory: Path) -> None:
    """config.json, generation_config.json and the weights as safetensors."""
    backbone.llm.save_pretrained(directory)
    if not any(directory.glob("*.safetensors")):
        raise CheckpointError(f"save_pretrained wrote no *.safetensors file into {directory}.")


def _write_tokenizer(tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    tokenizer.save_pretrained(directory)


def _write_fingerprint(fingerprint: dict[str, Any], directory: Path) -> None:
    text = json.dumps(fingerprint, indent=2, ensure_ascii=False) + "\n"
    (directory / FINGERPRINT_FILE).write_text(text, encoding="utf-8")


# === Public API ===
def save_backbone(backbone: LLMBackbone, path: str | Path) -> Path:
    """Write `backbone` (weights as safetensors, config, tokenizer, `fingerprint.json`) to directory `path`.

    The checkpoint is written under a temporary name beside `path` and renamed into place (on Linux an
    atomic exchange with the previous checkpoint), so an interrupted save leaves the previous checkpoint
    intact; a killed save leaves a hidden `.<name>.tmp-*` directory beside it, which the next save names
    in a warning. An existing `path` is replaced only if it is empty or a checkpoint of `save_backbone`.
    Returns the checkpoint's path.
    """
    if not isinstance(backbone, LLMBackbone):
        raise CheckpointError(
            f"save_backbone expects an LLMBackbone (from get_llm_backbone_and_tokenizer), got "
            f"{type(backbone).__name__}. To save a bare HF model use model.save_pretrained(dir)."
        )
    on_meta = [name for name, p in backbone.named_parameters() if p.device.type == "meta"]
    if on_meta:
        raise CheckpointError(
            f"Backbone {backbone.identifier!r} has {len(on_meta)} parameters without data (meta device, e.g. "
            f"{on_meta[0]}): it was built with inference_mode=True and no weights were loaded. Load its "
            "weights first (backbone.load_state_dict(...)), then save."
        )
    target = _check_target(path)
    leftovers = sorted(str(p) for p in target.parent.glob(f".{target.name}.tmp-*"))
    if leftovers:
        logger.warning(
            "Found %d temporary directories of interrupted saves of %s: %s. Delete them once no save is running.",
            len(leftovers), target, ", ".join(leftovers),
        )
    fingerprint = backbone_fingerprint(backbone)
    tmp = _new_temp_dir(target)
    try:
        _write_weights(backbone, tmp)
        _write_tokenizer(backbone.get_tokenizer(), tmp)
        _write_fingerprint(fingerprint, tmp)
        _fsync_tree(tmp)
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("Saved backbone %s to %s", backbone.identifier, target)
    return target


def _interrupted_swap_hint(path: Path) -> str:
    backups = sorted(path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
    if not backups:
        return ""
    return (
        f" A save was interrupted while swapping checkpoints: the previous checkpoint is at {backups[-1]}; "
        f"rename it to {path}."
    )


def load_backbone(
    path: str | Path, *, ignore_fingerprint: bool = False, **overrides: Any
) -> tuple[LLMBackbone, PreTrainedTokenizerBase]:
    """Rebuild a backbone saved by `save_backbone`; returns `(backbone, tokenizer)`.

    The backbone is built through the registry from the id in `fingerprint.json`, with `model_path=path`
    and `overrides` (`inference_mode=`, `dtype=` and `llm_max_length=` (default: the saved ones),
    `attn_implementation=`, `hf_token=`, `llm_backbone_id=` to build it as another id, ...). Its fingerprint is then compared
    with the saved one: a difference raises `FingerprintMismatchError`, or is logged as a warning with
    `ignore_fingerprint=True`. With `inference_mode=True` the weights are loaded from the safetensors files
    into the meta-built model (no random init).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ModelPathError(f"path must be a str or a path, got {type(path).__name__}: {path!r:.80}.")
    checkpoint = Path(path).expanduser()
    if not checkpoint.is_dir():
        raise ModelPathError(
            f"Checkpoint {str(checkpoint)!r} is not a directory. Pass the directory save_backbone wrote."
            + _interrupted_swap_hint(checkpoint.absolute())
        )
    if "model_path" in overrides:
        raise CheckpointError(
            "load_backbone takes no model_path=: the checkpoint directory is the model path. To build an id "
            "from another directory use get_llm_backbone_and_tokenizer(<id>, model_path=...)."
        )
    saved = read_fingerprint(checkpoint)
    backbone_id = overrides.pop("llm_backbone_id", saved["backbone_id"])
    if "dtype" not in overrides and isinstance(saved.get("dtype"), str):
        dtype = getattr(torch, saved["dtype"], None)
        if isinstance(dtype, torch.dtype):
            overrides["dtype"] = dtype
    if "llm_max_length" not in overrides and isinstance(saved.get("llm_max_length"), int):
        overrides["llm_max_length"] = saved["llm_max_length"]
    backbone, tokenizer = get_llm_backbone_and_tokenizer(backbone_id, model_path=checkpoint, **overrides)
    _verify(checkpoint, saved, backbone_fingerprint(backbone), ignore=ignore_fingerprint)
    if any(p.device.type == "meta" for p in backbone.parameters()):
        load_weights_into(backbone, checkpoint)
    return backbone, tokenizer


def load_weights_into(backbone: LLMBackbone, directory: Path) -> None:
    """Load the safetensors weights of `directory` into a backbone built on the meta device."""
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise ModelPathError(f"{directory} has no *.safetensors weights. Save the backbone again.")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except SafetensorError as exc:
            raise ModelWeightsError(
                f"{file} ({file.stat().st_size} bytes) cannot be read ({exc}): it is truncated or corrupted. "
                "Copy the checkpoint again, or save the backbone again."
            ) from exc
    dtypes = {name: p.dtype for name, p in backbone.llm.named_parameters()}
    state = {f"llm.{k}": v.to(dtypes[k]) if k in dtypes and v.is_floating_point() else v for k, v in state.items()}
    try:  # the backbone's own load_state_dict: assigns onto the meta-built model and re-ties embeddings
        result = backbone.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # size mismatch between the weights and config.json
        raise ModelWeightsError(
            f"The weights in {directory} do not fit the architecture of its config.json: {exc}"
        ) from exc
    still_meta = [name for name, p in backbone.llm.named_parameters() if p.device.type == "meta"]
    unexpected = [k.removeprefix("llm.") for k in result.unexpected_keys]
    if still_meta or unexpected:
        raise ModelWeightsError(
            f"The weights in {directory} do not match the model: missing {still_meta[:5]}, unexpected "
            f"{unexpected[:5]}. The safetensors files and config.json come from different models."
        )
