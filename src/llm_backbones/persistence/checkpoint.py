"""Save and load a backbone with a fingerprint of everything a silent mismatch would break.

`save_backbone(backbone, path)` writes an ordinary HF directory (safetensors weights, config, tokenizer)
plus `fingerprint.json`: the backbone id and family, base / tokenizer / padded vocabulary sizes, special
token ids, the prompt format and a rendered probe prompt with its token ids, a hash of the tokenizer, the
dtype and the library versions. The directory is written beside its destination under a temporary name
and renamed into place, so a save that is interrupted (killed, out of disk) leaves the previous
checkpoint intact.

`load_backbone(path, **overrides)` rebuilds the backbone through the registry with `model_path=path`,
computes the same fingerprint from what it built, and raises `FingerprintMismatchError` when they differ
(another tokenizer, another prompt format, other padding) unless `ignore_fingerprint=True`. The fingerprint
also holds the sha256 of every weight file, of config.json / generation_config.json and of the tokenizer
files; `load_backbone` checks them (and that the weights are stored in the recorded dtype) unless
`verify=False`, so a flipped byte, an edited config or tokenizer or a swapped shard is an error, not a
different model; a fingerprint without them is refused.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import PreTrainedTokenizerBase

from llm_backbones import _args, _fs
from llm_backbones._redact import HubToken
from llm_backbones.core.backbones import files as _files
from llm_backbones.core.backbones.backbone import LLMBackbone
from llm_backbones.core.backbones.factory import BACKBONE_KEYWORDS, get_llm_backbone_and_tokenizer
from llm_backbones.core.prompting.builder import DEFAULT_MODEL_FAMILY
from llm_backbones.core.prompting.formats import PROMPT_FORMATS
from llm_backbones.core.registry import get_spec
from llm_backbones.errors import (
    CheckpointError,
    FingerprintMismatchError,
    ModelPathError,
    ModelWeightsError,
    OutputPathError,
)

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"
# 2: `files` (every file the save wrote) and `file_sha256` (the weights, config.json, generation_config.json).
# 3: `file_sha256` also of the tokenizer files.
FINGERPRINT_VERSION = 3
# Files whose bytes define the model, hashed at save and checked at load (version 2 hashed the first three).
# The tokenizer's files are hashed too: what they do is also checked (`tokenizer_sha256`, the probes), but a
# vocabulary edit the probes miss must not load either.
HASHED_FILES_V2 = ("config.json", "generation_config.json", _files.SAFE_INDEX)
HASHED_FILES = (
    *HASHED_FILES_V2,
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)
# The conversation rendered into `probe_prompt` with the backbone's prompt builder (the default model_family).
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

    from llm_backbones._version import __version__

    tokenizer = backbone.get_tokenizer()
    builder = backbone.prompt_builder_fn(DEFAULT_MODEL_FAMILY)
    for role, message in PROBE_CONVERSATION:
        builder.add_turn(role, message)
    probe = builder.get_prompt()
    weight = backbone.llm.get_input_embeddings().weight
    family = getattr(backbone, "llm_family", None) or get_spec(backbone.identifier).llm_family
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
            f"{file} lacks the fields {missing}: it was not written by save_backbone, or was edited. Save "
            "the backbone again."
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
    return {
        key: (saved.get(key), built.get(key)) for key in CHECKED_FIELDS if saved.get(key) != built.get(key)
    }


def _hashed(name: str, version: int = FINGERPRINT_VERSION) -> bool:
    return name in (HASHED_FILES if version >= 3 else HASHED_FILES_V2) or name.endswith(".safetensors")


def file_hashes(directory: Path) -> dict[str, str]:
    """`{name: sha256}` of the files of `directory` that define the model (`HASHED_FILES`, *.safetensors)."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and _hashed(p.name))
    return {path.name: digest for path, digest in _files.sha256_files(files).items()}


def verify_files(path: Path, saved: dict[str, Any]) -> None:
    """Check the files of checkpoint `path` against the hashes its fingerprint recorded (see `file_hashes`).

    A file that is truncated raises `ModelWeightsError`; one whose bytes differ, one that is missing, or a
    weight/config/tokenizer file the save did not write raises `FingerprintMismatchError` naming it; so do
    weights stored in another dtype than the fingerprint's `dtype`, and a fingerprint without `file_sha256`
    (removed, or from before the hashes: nothing could be verified). Files are hashed in parallel threads.
    """
    recorded = saved.get("file_sha256")
    file = path / FINGERPRINT_FILE
    if recorded is None:
        raise FingerprintMismatchError(
            f"{file} has no file_sha256 (fingerprint_version {saved.get('fingerprint_version')!r}): the "
            "hashes of the weights, config and tokenizer files were removed, or the checkpoint predates "
            "them, so they cannot be verified. Save the backbone again with this llm-backbones to record "
            "them, or pass verify=False to load it unverified.",
            {"file_sha256": (None, "required")},
        )
    if not isinstance(recorded, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and Path(k).name == k for k, v in recorded.items()
    ):
        raise CheckpointError(
            f"{file} has a malformed file_sha256 ({{file name: sha256}} expected). Save the backbone again."
        )
    broken = _files.unreadable_safetensors(path)
    if broken:
        raise ModelWeightsError(
            f"{'; '.join(broken)} cannot be read: it is truncated or corrupted. Copy the checkpoint again, "
            "or save the backbone again."
        )
    version = saved.get("fingerprint_version")
    version = version if isinstance(version, int) else FINGERPRINT_VERSION
    present = {p.name for p in path.iterdir() if p.is_file() and _hashed(p.name, version)}
    problems: dict[str, tuple[Any, Any]] = {}
    lines: list[str] = []
    for name in sorted(present - recorded.keys()):
        problems[f"file_sha256[{name}]"] = (None, "present")
        lines.append(f"  - {name}: not written by save_backbone (it would be loaded with the checkpoint)")
    for name in sorted(recorded.keys() - present):
        problems[f"file_sha256[{name}]"] = (recorded[name], None)
        lines.append(f"  - {name}: missing")
    actual = _files.sha256_files(
        _files.contained(path, name, allow_external=False) for name in sorted(recorded.keys() & present)
    )
    for file_path, digest in actual.items():
        if digest != recorded[file_path.name]:
            problems[f"file_sha256[{file_path.name}]"] = (recorded[file_path.name], digest)
            lines.append(
                f"  - {file_path.name}: sha256 {digest[:16]}..., recorded {recorded[file_path.name][:16]}... "
                f"({file_path.stat().st_size} bytes)"
            )
    if problems:
        raise FingerprintMismatchError(
            f"Checkpoint {path} is not what save_backbone wrote:\n"
            + "\n".join(lines)
            + "\nA file was modified "
            "or corrupted after the save (an edit, a bad copy, a disk error). Copy the checkpoint again from "
            "a good source, or pass verify=False to load it as it is.",
            problems,
        )
    stored = _files.largest_floating_dtype(sorted(path.glob("*.safetensors")))
    if isinstance(saved.get("dtype"), str) and stored is not None and saved["dtype"] != stored:
        raise FingerprintMismatchError(
            f"{file} records dtype={saved['dtype']!r}, but the weights of {path} are stored in {stored!r}: "
            f"fingerprint.json was edited. Restore it (dtype {stored!r}); to load in another dtype pass "
            "dtype=.",
            {"dtype": (saved["dtype"], stored)},
        )


def _short(value: Any, limit: int = 90) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _verify(path: Path, saved: dict[str, Any], built: dict[str, Any], *, ignore: bool) -> None:
    if saved.get("backbone_id") != built["backbone_id"]:
        logger.warning(
            "Checkpoint %s was saved as %r and is loaded as %r (llm_backbone_id= override)",
            path,
            saved.get("backbone_id"),
            built["backbone_id"],
        )
    if saved.get("versions") != built["versions"]:
        logger.info(
            "Checkpoint %s was saved with %s; running %s", path, saved.get("versions"), built["versions"]
        )
    mismatches = compare_fingerprints(saved, built)
    if not mismatches:
        return
    lines = [
        f"  - {key}: saved {_short(a)}, built {_short(b)} ({CHECKED_FIELDS[key]})"
        for key, (a, b) in mismatches.items()
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


# === Where save_backbone writes ===
def _written_by_us(target: Path) -> set[str] | None:
    """The file names the save that wrote checkpoint `target` listed, or None for a fingerprint without
    them."""
    try:
        data = json.loads((target / FINGERPRINT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    return {f for f in files if isinstance(f, str)} if isinstance(files, list) else None


def _foreign_entries(target: Path) -> list[str]:
    """Entries of checkpoint `target` that save_backbone did not write there (replacing it would delete
    them)."""
    listed = _written_by_us(target)
    foreign = []
    for entry in sorted(target.iterdir()):
        if entry.name == FINGERPRINT_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            foreign.append(entry.name + "/")
        elif listed is not None and entry.name not in listed:
            foreign.append(entry.name)
        elif listed is None and not (entry.name in _files.CHECKPOINT_FILES or entry.suffix == ".safetensors"):
            foreign.append(entry.name)  # a fingerprint_version 1 checkpoint: judged by name
    return foreign


def _check_target(path: object) -> Path:
    """The directory to write: `path`, or where it points if it is a symlink (the link stays and keeps
    pointing at the new checkpoint). Refuses a file, a folder that is not a checkpoint of save_backbone, a
    checkpoint that holds files the save did not write, and a folder this user cannot write in."""
    if not isinstance(path, (str, os.PathLike)):
        raise OutputPathError(f"path must be a str or a path, got {type(path).__name__}: {path!r:.80}.")
    target = Path(path).expanduser().absolute()
    try:
        if target.is_symlink():
            real = target.resolve()
            if not real.is_dir():
                raise OutputPathError(
                    f"{target} is a symlink to {real}, which is not a directory. Point the link at a "
                    "checkpoint directory (or remove it), or choose another path."
                )
            logger.info("%s is a symlink: writing the checkpoint at its target %s", target, real)
            target = real
        if target.exists() and not target.is_dir():
            raise OutputPathError(
                f"{target} exists and is a file; a checkpoint is a directory. Choose another path or remove "
                "the file."
            )
        if target.is_dir() and any(target.iterdir()):
            if not (target / FINGERPRINT_FILE).is_file():
                raise OutputPathError(
                    f"{target} is a non-empty directory that is not a checkpoint of save_backbone (no "
                    f"{FINGERPRINT_FILE}); refusing to replace it. Choose a new or empty directory, or an "
                    "existing checkpoint to overwrite."
                )
            foreign = _foreign_entries(target)
            if foreign:
                raise OutputPathError(
                    f"{target} is a checkpoint of save_backbone that also holds {len(foreign)} item(s) it "
                    f"did not write: {', '.join(foreign[:10])}{' ...' if len(foreign) > 10 else ''}. "
                    "Replacing the checkpoint would delete them, so it was not replaced. Move them out of "
                    "the directory, or save to a new path."
                )
        _fs.make_parent(target)
    except PermissionError as exc:
        raise _not_writable(target, exc) from None
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise _not_writable(target, PermissionError(13, "Permission denied", str(target.parent)))
    return target


def _not_writable(target: Path, exc: OSError) -> OutputPathError:
    where = exc.filename or target.parent
    return OutputPathError(
        f"Cannot write the checkpoint {target}: permission denied on {where}. save_backbone writes beside "
        f"the checkpoint and renames into place, so {target.parent} must be writable: choose a directory you "
        f"can write to, or give this user write access (chmod u+w {str(target.parent)!r})."
    )


def _write_failed(target: Path, writing: str, exc: BaseException) -> CheckpointError:
    """The error of a save that failed while `writing` (a full disk, an I/O error): what, where, and that the
    previous checkpoint is untouched."""
    reason = " ".join(str(exc).split())[:200]
    full = getattr(exc, "errno", None) == errno.ENOSPC or "code: 28" in reason or "No space left" in reason
    try:
        free = f"{shutil.disk_usage(target.parent).free / 2**20:,.0f} MiB free"
    except OSError:
        free = "free space unknown"
    cause = f"the disk is full ({free} on {target.parent})" if full else f"an I/O error ({free})"
    return CheckpointError(
        f"Could not save the checkpoint {target}: writing {writing} failed: {cause}: {reason}. Nothing was "
        f"lost: the partial copy was removed, and {target} still holds the previous checkpoint, if there was "
        "one. Free some space on that disk (a checkpoint needs about the size of its weights, twice while "
        "it replaces the previous one), or save to another disk."
    )


def _write_weights(backbone: LLMBackbone, directory: Path) -> None:
    """config.json, generation_config.json and the weights as safetensors."""
    backbone.llm.save_pretrained(directory)
    if not any(directory.glob("*.safetensors")):
        raise CheckpointError(f"save_pretrained wrote no *.safetensors file into {directory}.")


def _write_tokenizer(tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    tokenizer.save_pretrained(directory)


def _write_fingerprint(fingerprint: dict[str, Any], directory: Path) -> None:
    fingerprint = {
        **fingerprint,
        "files": sorted(p.name for p in directory.iterdir() if p.name != FINGERPRINT_FILE),
        "file_sha256": file_hashes(directory),
    }
    text = json.dumps(fingerprint, indent=2, ensure_ascii=False) + "\n"
    (directory / FINGERPRINT_FILE).write_text(text, encoding="utf-8")


# === Public API ===
def save_backbone(backbone: LLMBackbone, path: str | Path) -> Path:
    """Write `backbone` (weights as safetensors, config, tokenizer, `fingerprint.json`) to directory `path`.

    The checkpoint is written under a temporary name beside `path` and renamed into place (on Linux an
    atomic exchange with the previous checkpoint), so an interrupted save leaves the previous checkpoint
    intact; a killed save leaves a hidden `.<name>.tmp-*` directory beside it, which the next save names
    in a warning. An existing `path` is replaced only if it is empty or a checkpoint of `save_backbone`
    holding only the files that save wrote (anything else would be deleted: `OutputPathError` names it).
    A `path` that is a symlink to a checkpoint is written through: the checkpoint is replaced where the link
    points, and the link stays. The sha256 of the weights, config and tokenizer files go into
    `fingerprint.json` (one streamed read of what was just written). Returns the checkpoint's path (the
    link's target for a link).
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
    leftovers = [str(p) for p in _fs.siblings(target, "tmp")]
    if leftovers:
        logger.warning(
            "Found %d temporary directories of interrupted saves of %s: %s. Delete them once no save is "
            "running.",
            len(leftovers),
            target,
            ", ".join(leftovers),
        )
    fingerprint = backbone_fingerprint(backbone)
    writing = "model.safetensors and config.json (the weights)"
    try:
        with _fs.atomic_dir(target) as tmp:  # replaces the previous checkpoint in one step
            _write_weights(backbone, tmp)
            writing = "tokenizer.json and tokenizer_config.json (the tokenizer)"
            _write_tokenizer(backbone.get_tokenizer(), tmp)
            writing = FINGERPRINT_FILE
            _write_fingerprint(fingerprint, tmp)
            writing = f"the finished checkpoint (renaming it to {target.name})"
    except PermissionError as exc:
        raise _not_writable(target, exc) from None
    except (OSError, SafetensorError) as exc:  # a full disk: safetensors raises SafetensorError, not OSError
        raise _write_failed(target, writing, exc) from None
    logger.info("Saved backbone %s to %s", backbone.identifier, target)
    return target


def _interrupted_swap_hint(path: Path) -> str:
    backups = _fs.siblings(path, "old")
    if not backups:
        return ""
    return (
        f" A save was interrupted while swapping checkpoints: the previous checkpoint is at {backups[-1]}; "
        f"rename it to {path}."
    )


def load_backbone(
    path: str | Path,
    *,
    ignore_fingerprint: bool = False,
    verify: bool = True,
    strict: bool = True,
    **overrides: Any,
) -> tuple[LLMBackbone, PreTrainedTokenizerBase]:
    """Rebuild a backbone saved by `save_backbone`; returns `(backbone, tokenizer)`.

    The backbone is built through the registry from the id in `fingerprint.json`, with `model_path=path`
    and `overrides` (`inference_mode=`, `dtype=` and `llm_max_length=` (default: the saved ones),
    `attn_implementation=`, `hf_token=`, `llm_backbone_id=` to build it as another id, ...). Its fingerprint
    is then compared with the saved one: a difference raises `FingerprintMismatchError`, or is logged as a
    warning with `ignore_fingerprint=True`. Then, unless `verify=False`, the sha256 of the weights, config
    and tokenizer files and the weights' dtype are checked against the fingerprint (`verify_files`). With
    `inference_mode=True` the weights are loaded from the safetensors files into the meta-built model (no
    random init), after those checks. `strict` as for `HFCausalLLMBackbone` (every parameter from the file,
    nothing left over, no NaN).
    """
    if "hf_token" in overrides:  # first: no frame of the load holds the plain token
        overrides["hf_token"] = HubToken.wrap(overrides["hf_token"])
    for name, flag in (("ignore_fingerprint", ignore_fingerprint), ("verify", verify), ("strict", strict)):
        _args.check_bool(flag, name)
    _args.check_keywords(
        {k: v for k, v in overrides.items() if k != "model_path"},  # refused below, with its own reason
        (BACKBONE_KEYWORDS | {"llm_backbone_id"}) - {"model_path"},
        "load_backbone",
    )
    if not isinstance(path, (str, os.PathLike)):
        raise ModelPathError(f"path must be a str or a path, got {type(path).__name__}: {path!r:.80}.")
    checkpoint = _files.run_export(Path(path).expanduser())  # a fine-tuning run's folder: its export/
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
    try:
        saved = read_fingerprint(checkpoint)
    except PermissionError:
        raise ModelPathError(
            f"Checkpoint {checkpoint} cannot be read (permission denied). Give this user read access "
            f"(chmod -R u+rX {str(checkpoint)!r}) or copy the checkpoint somewhere readable."
        ) from None
    backbone_id = overrides.pop("llm_backbone_id", saved["backbone_id"])
    if backbone_id == saved["backbone_id"] and "prompt_format" not in overrides:
        if saved["prompt_format"] not in PROMPT_FORMATS:
            raise CheckpointError(
                f"{checkpoint} was saved with the prompt format {saved['prompt_format']!r}, which this "
                "process has not registered. Call llm_backbones.register_prompt_format(PromptFormat(...)) "
                "with it before load_backbone, or pass prompt_format=<a registered name> (with "
                "ignore_fingerprint=True)."
            )
        # the format it was saved (and trained) with, e.g. "llama2-chat-prismatic"; under another id, that
        # id's format, which the fingerprint check then compares (pass prompt_format= to choose)
        overrides["prompt_format"] = saved["prompt_format"]
    if "dtype" not in overrides and isinstance(saved.get("dtype"), str):
        dtype = getattr(torch, saved["dtype"], None)
        if isinstance(dtype, torch.dtype):
            overrides["dtype"] = dtype
    if "llm_max_length" not in overrides and isinstance(saved.get("llm_max_length"), int):
        overrides["llm_max_length"] = saved["llm_max_length"]
    backbone, tokenizer = get_llm_backbone_and_tokenizer(
        backbone_id, model_path=checkpoint, strict=strict, **overrides
    )
    _verify(checkpoint, saved, backbone_fingerprint(backbone), ignore=ignore_fingerprint)
    if verify:
        verify_files(checkpoint, saved)
    if any(p.device.type == "meta" for p in backbone.parameters()):
        load_weights_into(
            backbone,
            checkpoint,
            strict=strict,
            allow_external_files=overrides.get("allow_external_files", False),
        )
    return backbone, tokenizer


def load_weights_into(
    backbone: LLMBackbone, directory: Path, *, strict: bool = True, allow_external_files: bool = False
) -> None:
    """Load the safetensors weights of `directory` into a backbone built on the meta device.

    The loaders' one strict path (`files.tensor_files`, `files.read_tensors`, `files.assign_strict`): every
    parameter comes from the files (tied weights aside), no tensor is left over (`StateDictMismatchError`, a
    warning with `strict=False`, which then leaves the missing parameters on the meta device), shapes match
    config.json's (`ModelWeightsError`), no parameter holds NaN/inf (`NonFiniteWeightsError`). Files outside
    `directory` are refused (`UnsafeFileError`) unless `allow_external_files`.
    """
    directory = Path(directory)
    files = _files.tensor_files(directory, allow_external=allow_external_files)
    if not files:
        raise ModelPathError(f"{directory} has no *.safetensors weights. Save the backbone again.")
    state = _files.read_tensors(sorted(files), files)
    _files.assign_strict(
        backbone,
        {f"llm.{name}": tensor for name, tensor in state.items()},
        source=directory,
        what=f"The weights of {directory}",
        fix="Restore the checkpoint's files, or save the backbone again",
        name_of=lambda key: key.removeprefix("llm."),
        file_of=lambda key: files[key.removeprefix("llm.")],
        strict=strict,
    )
