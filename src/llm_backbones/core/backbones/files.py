"""The one place checkpoint files are found, checked and read: every loader calls it.

HF directories (`HFLoader`, `load_backbone`), the OpenVLA / Prismatic layouts (`persistence.openvla`,
`vla.loading`) and `llm-backbones info` read their files through these functions, so each check is written
once. Before a file is opened: every file under a local checkpoint lies inside its directory, symlinks
followed (`contained`, `check_local_files`), the weights are safetensors unless pickle is allowed
(`weight_files`, which reads a shard index without opening a shard: `read_index`), config.json is a JSON
object whose sizes a real model could have (`read_json`, `read_config`, `check_config_sizes`; an
`llm_max_length` too: `check_llm_max_length`), the tokenizer files are JSON of a plausible size and depth
that run no code of the checkpoint's and can build a tokenizer (`check_tokenizer_files`). Reading:
`tensor_files` (`{tensor: file}` of a directory), `read_tensors`, `safetensors_header`. After: no weight is
NaN or infinite (`first_non_finite`, `check_finite`), the state dict fits the model (`report_mismatch`,
`assign_strict`: strict assignment onto a model built on the meta device), and the tokenizer fits the
embedding (`check_tokenizer_fits`). And `sha256_files`, the streamed hashes `save_backbone` records and
`load_backbone` checks.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from llm_backbones import _args, _fs
from llm_backbones.errors import (
    ConfigMismatchError,
    LLMBackbonesError,
    MissingDependencyError,
    ModelPathError,
    ModelWeightsError,
    NonFiniteWeightsError,
    RemoteCodeError,
    StateDictMismatchError,
    TokenizerContractError,
    TokenizerFileError,
    UnsafeFileError,
)

logger = logging.getLogger(__name__)

SAFE_WEIGHTS = "model.safetensors"
# A fine-tuning run's folder (`--output` of `finetune`) keeps its final export in this sub-folder.
RUN_EXPORT_DIR = "export"
RUN_MARKERS = ("run_config.json", "checkpoints", "metrics.jsonl")
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
# Files of an HF-format directory that the loaders (or transformers, for them) may open, weights aside.
CHECKPOINT_FILES: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "chat_template.jinja",
    "chat_template.json",
    SAFE_INDEX,
    PICKLE_INDEX,
)

# Upper bounds of config.json's sizes: generous for every released model (Llama-3.1-405B: hidden 16384,
# 126 layers, 128 heads, intermediate 53248; Gemma-3: vocabulary 262144; Llama-4 Scout: 10M positions), small
# enough that a typo (10**12) fails at once instead of allocating for minutes.
CONFIG_SIZE_BOUNDS: dict[str, int] = {
    "vocab_size": 2**22,
    "hidden_size": 65536,
    "intermediate_size": 2**20,
    "num_hidden_layers": 1024,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "head_dim": 4096,
    "max_position_embeddings": 2**26,
}
TOKENIZER_FILE_MAX_BYTES = 64 * 2**20  # the largest real tokenizer.json (Gemma-3's) has 33 MiB
TOKENIZER_JSON_MAX_DEPTH = 64  # real ones nest about 6 deep; the tokenizers library stops at 128
HASH_CHUNK_BYTES = 8 * 2**20


# === Files: inside the checkpoint, safetensors unless pickle is allowed ===
def run_export(directory: Path) -> Path:
    """`directory` itself, or, when it is the folder of a fine-tuning run (`finetune --output`: no config.json
    of its own, a `run_config.json`, `checkpoints/` or `metrics.jsonl`, and `export/config.json`), that run's
    export: so `load_backbone(OUTPUT)` and `model_path=OUTPUT` load what the run exported."""
    export = directory / RUN_EXPORT_DIR
    if (
        not (directory / "config.json").exists()
        and any((directory / name).exists() for name in RUN_MARKERS)
        and (export / "config.json").is_file()
    ):
        logger.info("%s is the folder of a fine-tuning run: loading its export, %s", directory, export)
        return export
    return directory


def allowed_roots(directory: Path) -> tuple[Path, ...]:
    """Where the files of `directory` may lie: the directory itself (symlinks resolved), and for a hub-cache
    snapshot (`models--org--name/snapshots/<rev>`) that repository's blob store, where its files point."""
    root = directory.resolve()
    roots = [root]
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith(("models--", "datasets--")):
        roots.append(root.parent.parent / "blobs")
    return tuple(roots)


def contained(directory: Path, name: str, *, allow_external: bool, named_by: str | None = None) -> Path:
    """`directory / name`, refused (`UnsafeFileError`) when it resolves outside the checkpoint directory.

    Symlinks are followed to their target before the check, so a link pointing elsewhere is refused as a
    `../` name is. `named_by` is the file that named `name` (an index), for the message. A name an index
    writes as a path out of the directory (`..`, absolute) is refused even with `allow_external`:
    transformers (5.25 on) refuses such shard names itself, so only a symlink inside the directory can
    point out.
    """
    path = directory / name
    if named_by is not None and (os.path.isabs(name) or ".." in Path(name).parts):
        raise UnsafeFileError(
            f"{named_by} names {name!r}, a path outside the checkpoint directory {directory}. An index may "
            "name only files inside it (transformers refuses such shard names too, whatever "
            "allow_external_files says). Copy the file into the directory and name it there, or put a "
            "symlink to it there and pass allow_external_files=True if you trust where it points.",
            path=str(path),
            reason="outside",
        )
    if allow_external:
        return path
    roots = allowed_roots(directory)
    if _fs.is_inside(directory, name, roots=roots):
        return path
    target = path.resolve()
    how = f"{named_by} names {name!r}, which" if named_by else f"{path} is a symlink that"
    raise UnsafeFileError(
        f"{how} resolves to {target}, outside the checkpoint directory {roots[0]}. llm-backbones opens only "
        "files inside model_path, so a checkpoint cannot make it read other files. Copy the file into the "
        "directory (or fix the index), or pass allow_external_files=True if you trust where it points.",
        path=str(path),
        reason="outside",
    )


def readable(path: Path, what: str) -> Path:
    """`path` if this process may read it, else `ModelPathError` naming it and the fix."""
    if not os.access(path, os.R_OK):
        raise ModelPathError(
            f"{what} {path} cannot be read (permission denied). Give this user read access (chmod u+r, or "
            "chmod -R u+rX on the directory) or copy the checkpoint somewhere readable."
        )
    return path


def check_local_files(directory: Path, *, allow_external: bool) -> None:
    """Every entry under `directory`, at any depth, lies inside it, symlinks followed (`UnsafeFileError`
    otherwise, unless `allow_external`), and every file of `CHECKPOINT_FILES` present can be read.

    Not only the files named here: transformers also opens files it finds (a tokenizer's
    `additional_chat_templates/*.jinja`, ...), so a link out of the checkpoint is refused wherever it lies.
    Links into a hub-cache snapshot's blob store are inside (`allowed_roots`). Folders that are links are
    checked, not entered.
    """
    if not allow_external:
        for root, folders, names in os.walk(directory):
            relative = Path(root).relative_to(directory)
            for name in sorted(folders + names):
                if (Path(root) / name).is_symlink():
                    contained(directory, str(relative / name), allow_external=False)
    for name in CHECKPOINT_FILES:
        path = directory / name
        if path.is_symlink() or path.exists():
            readable(contained(directory, name, allow_external=allow_external), "The checkpoint file")


# === JSON files and config.json ===
def read_json(file: Path, what: str, *, error: type[LLMBackbonesError] = ConfigMismatchError) -> Any:
    """The parsed JSON of `file` (`what` it is, for the message), or `error` naming the file and the fix for
    one that is not valid JSON or cannot be read (`ModelPathError` for permission denied)."""
    try:
        text = file.read_bytes()
    except PermissionError:
        raise ModelPathError(
            f"{file} ({what}) cannot be read (permission denied). Give this user read access (chmod u+r) or "
            "copy the checkpoint somewhere readable."
        ) from None
    except OSError as exc:  # a folder named like the file, an I/O error
        raise error(
            f"{file} ({what}) cannot be read ({exc}). Restore it from the original checkpoint."
        ) from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting
        raise error(
            f"{file} is not valid JSON ({str(exc)[:160]}): {what} is corrupted or truncated. Restore it from "
            "the original checkpoint (or save the model again with save_pretrained)."
        ) from None


def read_json_object(
    file: Path, what: str, *, error: type[LLMBackbonesError] = ConfigMismatchError
) -> dict[str, Any]:
    """`read_json`, refused (`error`) unless the file holds a JSON object."""
    data = read_json(file, what, error=error)
    if not isinstance(data, dict):
        raise error(
            f"{file} holds a JSON {type(data).__name__}, not an object of fields: {what} is damaged. Restore "
            "it from the original checkpoint."
        )
    return data


def read_config(directory: Path, *, allow_external: bool = False) -> dict[str, Any]:
    """config.json of a local HF-format directory: inside it, a JSON object, its sizes possible
    (`check_config_sizes`); `ModelPathError` when there is none, `ConfigMismatchError` naming the file
    otherwise."""
    file = directory / "config.json"
    if not (file.is_file() or file.is_symlink()):
        raise ModelPathError(
            f"{directory} has no config.json, so it is not an HF-format checkpoint. Point model_path at the "
            "directory that holds config.json (e.g. the output of save_pretrained)."
        )
    contained(directory, "config.json", allow_external=allow_external)
    raw = read_json_object(file, "the model's config")
    check_config_sizes(raw, str(file))
    check_config_fields(raw, str(file))
    return raw


@dataclass
class WeightFiles:
    """The weight files transformers will open for a local directory, checked before any is opened.

    `weight_map` is the index's `{tensor: file name}` (empty for a single file).
    """

    files: list[Path] = field(default_factory=list)
    index: Path | None = None
    weight_map: dict[str, str] = field(default_factory=dict)

    def file_of(self, tensor: str) -> str:
        if tensor in self.weight_map and self.index is not None:
            return str(self.index.parent / self.weight_map[tensor])
        return str(self.files[0]) if len(self.files) == 1 else str(self.index or "the checkpoint")


def _is_safetensors(name: str) -> bool:
    return name.endswith(".safetensors")


def _check_weight_name(
    directory: Path, name: object, *, named_by: Path | None, allow_pickle: bool, allow_external: bool
) -> Path:
    where = str(named_by) if named_by is not None else str(directory / "config.json")
    if not isinstance(name, str) or not name:
        raise ModelWeightsError(
            f"{where} names the weight file {name!r}; file names must be non-empty strings. The index is "
            "damaged: restore it from the original checkpoint."
        )
    if not allow_pickle and not _is_safetensors(name):
        raise UnsafeFileError(
            f"{where} names the weight file {name!r}, which is not a safetensors file. llm-backbones opens "
            "safetensors weights only (unpickling a file can run code), so it was not opened. Convert the "
            "checkpoint to safetensors where you trust it (model.save_pretrained(dir)), or pass "
            "allow_pickle=True to load it with torch.load(weights_only=True).",
            path=str(directory / name),
            reason="pickle",
        )
    path = contained(directory, name, allow_external=allow_external, named_by=where)
    if not path.is_file():
        raise ModelWeightsError(
            f"{where} names the weight file {name!r}, which is missing from {directory}. Copy or download "
            "the checkpoint again (all shards)."
        )
    return readable(path, "The weight file")


def read_index(index: Path) -> dict[str, str]:
    try:
        data = json.loads(readable(index, "The weights index").read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ModelWeightsError(
            f"{index} is not valid JSON ({str(exc)[:120]}): the index is truncated or corrupted. Restore it "
            "from the original checkpoint."
        ) from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not isinstance(data.get("metadata", {}), dict):
        raise ModelWeightsError(
            f"{index} has no weight_map ({{tensor name: shard file}}) and metadata object, so it is not a "
            "shard index. Restore it from the original checkpoint."
        )
    if "metadata" not in data:  # transformers reads it unconditionally
        raise ModelWeightsError(
            f"{index} has no 'metadata' object (transformers needs one, e.g. {{\"total_size\": ...}}). "
            "Restore the index from the original checkpoint."
        )
    return weight_map


def weight_files(
    directory: Path, explicit: object = None, *, allow_pickle: bool, allow_external: bool
) -> WeightFiles:
    """The weight files of `directory` that `from_pretrained` will open, each checked before any is opened.

    Follows transformers' own choice: `explicit` (config.json's `transformers_weights`), else
    model.safetensors, else model.safetensors.index.json and its shards; with `allow_pickle` also
    pytorch_model.bin and its index. Every file must lie inside `directory` (unless `allow_external`) and,
    unless `allow_pickle`, be safetensors. Returns an empty `WeightFiles` when there are none (the loader then
    says so).
    """
    candidates: list[str] = (
        [explicit]
        if isinstance(explicit, str) and explicit
        else [SAFE_WEIGHTS, SAFE_INDEX] + ([PICKLE_WEIGHTS, PICKLE_INDEX] if allow_pickle else [])
    )
    for name in candidates:
        path = directory / name
        if not (path.is_file() or (name == explicit and path.is_symlink())):
            continue
        if name.endswith(".index.json"):
            index = readable(contained(directory, name, allow_external=allow_external), "The weights index")
            weight_map = read_index(index)
            files: dict[str, Path] = {}
            for shard in weight_map.values():
                if not isinstance(shard, str) or shard not in files:
                    files[str(shard)] = _check_weight_name(
                        directory,
                        shard,
                        named_by=index,
                        allow_pickle=allow_pickle,
                        allow_external=allow_external,
                    )
            return WeightFiles(sorted(files.values()), index, {str(k): str(v) for k, v in weight_map.items()})
        named_by = directory / "config.json" if name == explicit else None
        file = (
            _check_weight_name(
                directory, name, named_by=named_by, allow_pickle=allow_pickle, allow_external=allow_external
            )
            if named_by is not None
            else readable(contained(directory, name, allow_external=allow_external), "The weight file")
        )
        return WeightFiles([file])
    return WeightFiles()


def tensor_files(directory: Path, *, allow_external: bool = False) -> dict[str, Path]:
    """`{tensor name: safetensors file}` of a local directory (its shard index, else model.safetensors's
    header), every file checked by `weight_files` (safetensors, inside `directory`); empty when the
    directory has no safetensors weights."""
    found = weight_files(directory, allow_pickle=False, allow_external=allow_external)
    if found.index is not None:
        return {tensor: directory / name for tensor, name in found.weight_map.items()}
    if not found.files:
        return {}
    single = found.files[0]
    try:
        with safe_open(str(single), framework="pt") as handle:
            return dict.fromkeys(handle.keys(), single)
    except (SafetensorError, OSError) as exc:
        raise ModelWeightsError(
            f"{single} ({single.stat().st_size} bytes) cannot be read ({exc}): it is truncated or corrupted. "
            "Copy or download the checkpoint again."
        ) from None


def read_tensors(names: Sequence[str], files: Mapping[str, Path]) -> dict[str, torch.Tensor]:
    """The tensors `names` (`files`: `{name: safetensors file}`, from `tensor_files`), opening only the
    files that hold them; `ModelWeightsError` naming a file that lacks a tensor or cannot be read."""
    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(files[name], []).append(name)
    tensors: dict[str, torch.Tensor] = {}
    for file, wanted in by_file.items():
        try:
            with safe_open(str(file), framework="pt") as handle:
                present = set(handle.keys())
                absent = [n for n in wanted if n not in present]
                if absent:
                    raise ModelWeightsError(
                        f"{file} lacks {len(absent)} tensors its index places there (e.g. {absent[:3]}): the "
                        "shard and the index come from different checkpoints. Copy or download the "
                        "checkpoint again."
                    )
                for name in wanted:
                    tensors[name] = handle.get_tensor(name)
        except (SafetensorError, OSError) as exc:
            raise ModelWeightsError(
                f"{file} ({file.stat().st_size} bytes) cannot be read ({exc}): it is truncated or corrupted. "
                "Copy or download the checkpoint again."
            ) from None
    return tensors


# === config.json: sizes a real model could have ===
def _bad_size(value: object, bound: int) -> str | None:
    """Why `value` is not a size from 1 to `bound`, or None."""
    why = _args.int_problem(value, low=1, high=bound)
    return f"{why} (no real model comes near)" if why and why.startswith("it must be at most") else why


def check_config_sizes(raw: Mapping[str, Any], where: str) -> None:
    """`ConfigMismatchError` naming file, field, value and fix for a size no real model has (see
    `CONFIG_SIZE_BOUNDS`), or attention heads that do not divide the hidden size / each other. Runs on the raw
    JSON, before transformers builds a config (which divides by them) or a model (which allocates them)."""
    fix = (
        f"Fix it in {where} (the base model's config.json has the right value), or point model_path at the "
        "checkpoint's own directory."
    )
    for name, bound in CONFIG_SIZE_BOUNDS.items():
        value = raw.get(name)
        if value is None:
            continue
        why = _bad_size(value, bound)
        if why:
            raise ConfigMismatchError(f"{where}: {name}={value!r:.60} is not accepted: {why}. {fix}")
    heads, hidden, kv = raw.get("num_attention_heads"), raw.get("hidden_size"), raw.get("num_key_value_heads")
    if heads is not None and hidden is not None and raw.get("head_dim") is None and hidden % heads:
        raise ConfigMismatchError(
            f"{where}: num_attention_heads={heads} does not divide hidden_size={hidden} (each head has "
            f"hidden_size / num_attention_heads dimensions; accepted: a divisor such as "
            f"{', '.join(str(d) for d in _divisors_near(hidden, heads))}, or an explicit head_dim). {fix}"
        )
    if heads is not None and kv is not None and heads % kv:
        raise ConfigMismatchError(
            f"{where}: num_key_value_heads={kv} does not divide num_attention_heads={heads} (grouped-query "
            f"attention shares each key/value head among a whole number of query heads). {fix}"
        )


def check_config_fields(raw: Mapping[str, Any], where: str) -> None:
    """`ConfigMismatchError` (or `MissingDependencyError`) naming file, field, value and fix for a field of
    config.json that transformers would reject deep inside with its own exception: an unknown `rope_type` of
    `rope_scaling` or unknown `hidden_act` (a KeyError), a `torch_dtype`/`dtype` torch has not (an
    AttributeError), a `pad_token_id` outside the vocabulary (an AssertionError from torch), a
    `quantization_config` whose library is not installed (an ImportError). Runs on the raw JSON."""
    fix = (
        f"Fix it in {where} (the base model's config.json has the right value), or point model_path at the "
        "checkpoint's own directory."
    )
    from transformers.activations import ACT2FN
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for key in ("hidden_act", "hidden_activation"):
        if raw.get(key) is not None:
            _args.check_choice(
                raw[key], f"{where}: {key}", sorted(ACT2FN), error=ConfigMismatchError, fix=fix
            )
    rope = raw.get("rope_scaling")
    if rope is not None:
        if not isinstance(rope, Mapping):
            raise ConfigMismatchError(
                f"{where}: rope_scaling={rope!r:.80} is not accepted: an object such as "
                f'{{"rope_type": "llama3", "factor": 8.0}} (or null) is needed. {fix}'
            )
        rope_type = rope.get("rope_type", rope.get("type"))
        if rope_type is not None:
            _args.check_choice(
                rope_type,
                f"{where}: rope_scaling.rope_type",
                ["default", *sorted(ROPE_INIT_FUNCTIONS)],
                error=ConfigMismatchError,
                fix=fix,
            )
    for key in ("torch_dtype", "dtype"):
        if raw.get(key) is not None and raw[key] != "auto":
            _args.check_dtype(raw[key], f"{where}: {key}", error=ConfigMismatchError, fix=fix)
    vocab, pad = raw.get("vocab_size"), raw.get("pad_token_id")
    if pad is not None and isinstance(vocab, int):
        _args.check_int(
            pad,
            f"{where}: pad_token_id",
            low=0,
            high=vocab - 1,
            error=ConfigMismatchError,
            fix=f"It must be an id of the vocabulary of vocab_size={vocab} (or null). {fix}",
        )
    quantization = raw.get("quantization_config")
    if isinstance(quantization, Mapping):
        method = str(quantization.get("quant_method", "?"))
        module = {"bitsandbytes": "bitsandbytes", "gptq": "gptqmodel", "awq": "awq"}.get(method)
        if module is not None and importlib.util.find_spec(module) is None:
            raise MissingDependencyError(
                f"{where}: quantization_config has quant_method={method!r}, which needs the {module!r} "
                "package "
                f"(not installed here). Install it (pip install {module}; bitsandbytes needs CUDA), or point "
                "model_path at the unquantized checkpoint (its base model)."
            )


def check_llm_max_length(value: Any, where: str) -> int:
    """`value` as an `llm_max_length` (the tokenizer's `model_max_length`): an integer (not a bool) from 1 to
    `CONFIG_SIZE_BOUNDS["max_position_embeddings"]`, else `ConfigMismatchError` naming `where` (the argument,
    or the file and field it was read from), the value, what is accepted and the fix."""
    why = _bad_size(value, CONFIG_SIZE_BOUNDS["max_position_embeddings"])
    if why:
        raise ConfigMismatchError(
            f"{where}: llm_max_length={value!r:.60} is not accepted: {why}. It is the longest sequence the "
            "tokenizer keeps (model_max_length); pass a positive integer such as 2048 (every Prismatic / "
            "OpenVLA model's)."
        )
    return int(value)


def _divisors_near(n: int, target: int, k: int = 3) -> list[int]:
    divisors = [d for d in range(1, min(n, 4096) + 1) if n % d == 0]
    return sorted(sorted(divisors, key=lambda d: (abs(d - target), d))[:k])


# === Tokenizer files: JSON of a plausible size and depth ===
def _json_depth_exceeds(value: object, limit: int) -> bool:
    """Whether parsed JSON nests more than `limit` containers deep (level by level: ~0.07 s for LLaMA's)."""
    level, depth = [value], 1
    while level:
        if depth > limit:
            return True
        deeper: list[object] = []
        for item in level:
            children = item.values() if type(item) is dict else item
            deeper.extend([c for c in children if type(c) is dict or type(c) is list])
        level, depth = deeper, depth + 1
    return False


def check_tokenizer_files(directory: Path, *, trust_remote_code: bool = False) -> None:
    """`TokenizerFileError` naming the file for a tokenizer.json / tokenizer_config.json that is larger than
    `TOKENIZER_FILE_MAX_BYTES`, not JSON, nested deeper than `TOKENIZER_JSON_MAX_DEPTH`, or (tokenizer.json)
    without the `model` and `added_tokens` sections every serialized tokenizer has; `RemoteCodeError` for a
    tokenizer_config.json that asks for the checkpoint's code (`check_no_remote_code`); `ModelPathError`
    without the files a whole tokenizer is built from (`check_tokenizer_file_set`)."""
    fix = (
        "Restore it from the base model (AutoTokenizer.from_pretrained(<base>).save_pretrained(model_path))."
    )
    for name in ("tokenizer.json", "tokenizer_config.json"):
        file = directory / name
        if not file.is_file():
            continue
        size = readable(file, "The tokenizer file").stat().st_size
        if size > TOKENIZER_FILE_MAX_BYTES:
            raise TokenizerFileError(
                f"{file} has {size / 2**20:,.0f} MiB; tokenizer files above "
                f"{TOKENIZER_FILE_MAX_BYTES // 2**20} MiB are refused (the largest real one, Gemma-3's "
                f"tokenizer.json, has 33 MiB), so it is not a tokenizer or is corrupted. {fix}"
            )
        try:
            data = json.loads(file.read_bytes())
        except RecursionError:
            data, deep = None, True
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise TokenizerFileError(f"{file} is not valid JSON ({str(exc)[:120]}). {fix}") from None
        else:
            deep = isinstance(data, (dict, list)) and _json_depth_exceeds(data, TOKENIZER_JSON_MAX_DEPTH)
        if deep:
            raise TokenizerFileError(
                f"{file} nests JSON deeper than {TOKENIZER_JSON_MAX_DEPTH} levels (real tokenizer files nest "
                f"about 6), so it is not a tokenizer or is corrupted. {fix}"
            )
        if not isinstance(data, dict):
            raise TokenizerFileError(f"{file} holds a JSON {type(data).__name__}, not an object. {fix}")
        if name == "tokenizer.json":
            lacking = [
                key
                for key, kind in (("model", dict), ("added_tokens", list))
                if not isinstance(data.get(key), kind)
            ]
            if lacking:
                raise TokenizerFileError(
                    f"{file} lacks {', '.join(repr(k) for k in lacking)} (found keys {sorted(data)[:8]}), "
                    f"which every tokenizer.json has (a `model` object and an `added_tokens` list). {fix}"
                )
        else:
            check_no_remote_code(data, file, trust_remote_code=trust_remote_code)
    check_tokenizer_file_set(directory)


# Without tokenizer.json a tokenizer is built from its vocabulary files: one of these sets (sentencepiece,
# byte-level BPE, WordPiece). tokenizer_config.json and special_tokens_map.json alone build a tokenizer of its
# special tokens only (a Qwen2.5 directory without tokenizer.json gives 2 pieces that encode any text to []).
VOCABULARY_FILE_SETS: tuple[tuple[str, ...], ...] = (
    ("tokenizer.json",),
    ("tokenizer.model",),
    ("spiece.model",),
    ("vocab.json", "merges.txt"),
    ("vocab.txt",),
)


def check_tokenizer_file_set(directory: Path) -> None:
    """`ModelPathError` unless `directory` holds a set of files a whole tokenizer is built from
    (`VOCABULARY_FILE_SETS`), naming what it holds and the fix."""
    if any(all((directory / name).is_file() for name in names) for names in VOCABULARY_FILE_SETS):
        return
    found = sorted(p.name for p in directory.iterdir() if p.suffix in (".json", ".model", ".txt"))
    raise ModelPathError(
        f"{directory} has no usable tokenizer: it holds {found or 'no tokenizer files'}, but a tokenizer is "
        f"built from one of {' | '.join(' + '.join(names) for names in VOCABULARY_FILE_SETS)} (without them "
        "transformers builds a stand-in of the special tokens only, which encodes every text to []). Copy "
        "the base model's tokenizer into it: AutoTokenizer.from_pretrained(<base model>)"
        f".save_pretrained({str(directory)!r})."
    )


def check_no_remote_code(tokenizer_config: Mapping[str, Any], file: Path, *, trust_remote_code: bool) -> None:
    """`RemoteCodeError` when tokenizer_config.json asks for a tokenizer of the checkpoint's own code (an
    `auto_map` entry for `AutoTokenizer`, or a `tokenizer_class` transformers does not have), unless
    `trust_remote_code`. `auto_map` entries for other classes do not build the tokenizer and are not read:
    OpenVLA's checkpoints name their processor there (`AutoProcessor`) beside a `LlamaTokenizer`."""
    if trust_remote_code:
        return
    auto_map = tokenizer_config.get("auto_map")
    remote = None
    if isinstance(auto_map, Mapping):
        remote = auto_map.get("AutoTokenizer")
    elif auto_map is not None:  # the old list form names the tokenizer classes themselves
        remote = auto_map
    declared = tokenizer_config.get("tokenizer_class")
    if remote is None and isinstance(declared, str):
        import transformers

        known = [declared, declared.removesuffix("Fast"), f"{declared}Fast"]
        if any(getattr(transformers, name, None) is not None for name in known):
            return
    elif remote is None:
        return
    what = f"auto_map: {auto_map!r:.120}" if remote is not None else f"tokenizer_class {declared!r:.80}"
    raise RemoteCodeError(
        f"{file} asks for a tokenizer of the checkpoint's own code ({what}), which is not a transformers "
        "class. llm-backbones never runs a checkpoint's code unless asked, and never skips it quietly: read "
        f"the .py files in {file.parent}, then pass trust_remote_code=True; or use the base model's "
        "tokenizer files."
    )


# Whether a tokenizer fits an embedding of `rows` rows. The families pad their embeddings beyond the
# tokenizer: Qwen2.5 to a multiple (151,665 pieces in 151,936 or 152,064 rows: 399 spare), Phi-2 (50,295
# pieces in 51,200 rows: 905 spare, the most of any registered family), Phi-3 (32,011 in 32,064); LLaMA-2/3,
# Mistral and Gemma have one row per piece; LLaMA-2 + <PAD> adds 1 piece, then the loader pads the rows to
# a multiple of 64 (32,001 pieces in 32,064 rows). So up to SPARE_ROWS_MAX rows may lie unused, and up to
# EXTRA_PIECES_MAX pieces (the loader's PAD, a few added tokens) may get new rows; beyond either, the
# tokenizer belongs to another model.
SPARE_ROWS_MAX = 1024
EXTRA_PIECES_MAX = 64


def check_tokenizer_fits(pieces: int, rows: int, *, tokenizer_from: object, rows_from: object) -> None:
    """`TokenizerContractError` when a tokenizer of `pieces` pieces does not fit an embedding of `rows` rows
    (see `SPARE_ROWS_MAX`, `EXTRA_PIECES_MAX`), naming both sources and the fix."""
    if pieces - EXTRA_PIECES_MAX <= rows <= pieces + SPARE_ROWS_MAX:
        return
    if rows < pieces:
        how = f"{pieces - rows:,} more pieces than rows: the embedding would grow by as many untrained rows"
    else:
        how = f"{rows - pieces:,} rows no piece uses: the ids would not index the rows the model learnt"
    raise TokenizerContractError(
        f"The tokenizer of {tokenizer_from} has {pieces:,} pieces (with PAD), but the embedding of "
        f"{rows_from} has {rows:,} rows ({how}). Accepted: at most {SPARE_ROWS_MAX} spare rows (families pad "
        f"their embeddings, Phi-2 by 905) and at most {EXTRA_PIECES_MAX} pieces more than rows (new tokens "
        "get new rows). The tokenizer and the weights come from different models: copy the tokenizer "
        "files of the checkpoint's base model into it."
    )


# === Weights: finite ===
def is_finite(tensor: torch.Tensor) -> bool:
    """Whether every value of `tensor` is finite (True for meta, empty and integer tensors).

    One reduction: a sum is finite exactly when no value is NaN/inf, unless it overflows, in which case the
    values are checked one by one.
    """
    if tensor.device.type == "meta" or not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    with torch.no_grad():
        if bool(torch.isfinite(tensor.sum())):
            return True
        return bool(torch.isfinite(tensor).all())


def first_non_finite(named: Iterable[tuple[str, torch.Tensor]]) -> tuple[str, torch.Tensor] | None:
    """The first `(name, tensor)` holding NaN or inf, each tensor checked once (tied weights are one)."""
    seen: set[int] = set()
    for name, tensor in named:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if not is_finite(tensor):
            return name, tensor
    return None


def describe_non_finite(tensor: torch.Tensor) -> str:
    data = tensor.detach()
    nan = int(torch.isnan(data).sum())
    inf = int(torch.isinf(data).sum())
    return f"{nan} NaN and {inf} infinite of {data.numel():,} values"


def check_finite(
    named: Iterable[tuple[str, torch.Tensor]],
    source: object,
    *,
    file_of: Callable[[str], object] | None = None,
    name_of: Callable[[str], str] = str,
    strict: bool = True,
    fix: str = "Restore the file from the original checkpoint (or an earlier training checkpoint)",
) -> None:
    """`NonFiniteWeightsError` naming the first tensor of `named` holding NaN or inf, the file it was read
    from (`file_of`) and the fix; with `strict=False` a warning instead. `name_of` turns a tensor's name into
    the one the checkpoint uses, for the message."""
    found = first_non_finite(named)
    if found is None:
        return
    name, tensor = found
    shown = name_of(name)
    file = str(file_of(name)) if file_of is not None else str(source)
    message = (
        f"Weight {shown} of {source} holds {describe_non_finite(tensor)} (read from {file}): the checkpoint "
        "is corrupted or comes from a diverged run."
    )
    if strict:
        raise NonFiniteWeightsError(
            f"{message} {fix}; strict=False loads it anyway, with a warning.", tensor=shown, file=file
        )
    logger.warning("%s Loading anyway (strict=False).", message)


# === State dicts: strict ===
def report_mismatch(
    missing: Sequence[str],
    unexpected: Sequence[str],
    *,
    what: str,
    fix: str,
    strict: bool,
    then: str = "the missing parameters stay on the meta device until you load them",
) -> None:
    """`StateDictMismatchError` listing the `missing` and `unexpected` tensors of `what` ("The weights of
    ..."), with `fix`; with `strict=False` a warning saying what becomes of the missing ones (`then`).
    Nothing when both are empty."""
    if not missing and not unexpected:
        return
    missing, unexpected = sorted(missing), sorted(unexpected)
    message = (
        f"{what}: {len(missing)} missing {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
        f"{len(unexpected)} unexpected {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}. Loaded as "
        f"it is, {then} and the unexpected tensors are dropped (a renamed tensor is both)."
    )
    if strict:
        raise StateDictMismatchError(
            f"{message} {fix}, or pass strict=False to accept it.", list(missing), list(unexpected)
        )
    logger.warning("%s Loading anyway (strict=False).", message)


def assign_strict(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: object,
    what: str,
    fix: str,
    name_of: Callable[[str], str] = str,
    file_of: Callable[[str], object] | None = None,
    strict: bool = True,
) -> None:
    """Load `state` (the module's own names) into `module` built on the meta device, strictly: no tensor of
    another shape (`ModelWeightsError`), none missing or left over (`report_mismatch`; a tensor shared by
    two names, tied embeddings, is given under one of them), no NaN/inf (`check_finite`), and no parameter
    left on the meta device. The module's `load_state_dict` assigns the tensors (a backbone's casts each to
    its parameter's dtype and re-ties). `source` is the checkpoint, `what` begins the messages ("The weights
    of <dir>"), `fix` ends them; `name_of` gives a tensor's name as the checkpoint spells it, `file_of` the
    file it was read from."""
    own = module.state_dict(keep_vars=True)
    aliases: dict[int, set[str]] = {}
    for key, tensor in own.items():
        aliases.setdefault(id(tensor), set()).add(key)
    wrong = [
        f"{name_of(k)} is {list(v.shape)}"
        + (f" in {file_of(k)}" if file_of is not None else "")
        + f", the architecture needs {list(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if wrong:
        raise ModelWeightsError(
            f"{what} do not fit the architecture its config describes ({len(wrong)} tensors): "
            f"{'; '.join(wrong[:5])}{' ...' if len(wrong) > 5 else ''}. The weights and the config come from "
            f"different models (or the config was edited). {fix}."
        )
    missing = [name_of(k) for k in own if k not in state and not aliases[id(own[k])] & state.keys()]
    unexpected = [name_of(k) for k in state if k not in own]
    report_mismatch(missing, unexpected, what=f"{what} do not match the model", fix=fix, strict=strict)
    params = {name for name, _ in module.named_parameters()}
    check_finite(
        ((k, v) for k, v in state.items() if k in params),
        source,
        file_of=file_of,
        name_of=name_of,
        strict=strict,
    )
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    still_meta = [name_of(k) for k, t in module.state_dict(keep_vars=True).items() if t.device.type == "meta"]
    if still_meta and strict:
        raise StateDictMismatchError(
            f"After loading, {len(still_meta)} tensors of the model have no data: {still_meta[:10]}. {fix}.",
            still_meta,
            [],
        )


# === Hashes ===
def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in `HASH_CHUNK_BYTES` chunks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_files(paths: Iterable[Path], *, workers: int | None = None) -> dict[Path, str]:
    """`{path: sha256}`, files hashed in parallel threads (hashlib releases the GIL on large updates)."""
    paths = list(paths)
    workers = max(1, min(len(paths), workers or os.cpu_count() or 1))
    if workers == 1:
        return {p: sha256_file(p) for p in paths}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(paths, pool.map(sha256_file, paths), strict=True))


def largest_floating_dtype(files: Iterable[Path]) -> str | None:
    """The dtype (e.g. "float32") holding the most bytes across safetensors `files` (their headers only)."""
    totals: dict[str, int] = {}
    for file in files:
        for dtype, size in safetensors_header(file).values():
            totals[dtype] = totals.get(dtype, 0) + size
    return max(totals, key=totals.__getitem__) if totals else None


def safetensors_header(file: Path) -> dict[str, tuple[str, int]]:
    """`{tensor: (dtype, bytes)}` of the floating tensors of a safetensors file, from its header (no tensor is
    read)."""
    names = {"F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2)}
    try:
        with safe_open(str(file), framework="pt") as handle:
            slices = {name: handle.get_slice(name) for name in handle.keys()}
            result = {}
            for name, piece in slices.items():
                if piece.get_dtype() in names:
                    dtype, width = names[piece.get_dtype()]
                    result[name] = (dtype, width * math.prod(piece.get_shape()))
            return result
    except (SafetensorError, OSError) as exc:
        raise ModelWeightsError(
            f"{file} ({file.stat().st_size} bytes) cannot be read ({exc}): it is truncated or corrupted. "
            "Copy the checkpoint again."
        ) from exc


def unreadable_safetensors(directory: Path) -> list[str]:
    """`"<file> (<n> bytes)"` for each *.safetensors file of `directory` whose header or extent is broken."""
    bad = []
    for file in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                list(handle.keys())
        except Exception:  # SafetensorError, OSError: either way the file cannot be used
            bad.append(f"{file} ({file.stat().st_size} bytes)")
    return bad
