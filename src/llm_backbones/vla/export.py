"""`export_openvla`: a policy written as an HF OpenVLA checkpoint, the layout `openvla/openvla-7b` ships.

What the folder holds, each file as OpenVLA's own classes write it (`OpenVLAConfig.save_pretrained`,
`PrismaticImageProcessor` / `PrismaticProcessor.save_pretrained`; compared with the files its code wrote in
tests/golden/fixtures/openvla_policy):

- `config.json`: OpenVLA's keys (`model_type` "openvla", `architectures`, `auto_map`, the vision and LLM
  backbone ids, `arch_specifier`, `use_fused_vision_backbone`, `image_resize_strategy`, `image_sizes`,
  `timm_model_ids`, `timm_override_act_layers`, `hf_llm_id`, `llm_max_length`, `pad_token_id`,
  `pad_to_multiple_of`, `n_action_bins`, `norm_stats`, `text_config` (the LLM config's non-default values,
  under the names transformers 4.40.1 reads), `torch_dtype`, `transformers_version` (this process's)).
- the weights as safetensors (`model.safetensors`, or shards + `model.safetensors.index.json` above
  `max_shard_size`) under OpenVLA's names: `vision_backbone.featurizer.*` and
  `vision_backbone.fused_featurizer.*` in timm's names (the fused `qkv`, LayerScale as `scale_factor`,
  SigLIP's `attn_pool.*`, the last block and final norm: every tensor timm's model holds),
  `projector.fc1/2/3.*`, `language_model.*`.
- `preprocessor_config.json`, `processor_config.json`, `generation_config.json`, the tokenizer files
  (`tokenizer.save_pretrained`; BPE merges written as "a b" strings, which tokenizers 0.19.1, OpenVLA's
  pin, reads as well as today's), and `dataset_statistics.json` (the action statistics, as OpenVLA's
  training runs save them).

`load_vla` loads the folder. OpenVLA's own `AutoModelForVision2Seq.from_pretrained(folder,
trust_remote_code=True)` (and `AutoProcessor`) load it too, in OpenVLA's pinned environment (transformers
4.40.1, timm 0.9.x), once OpenVLA's three HF files (`configuration_prismatic.py`, `modeling_prismatic.py`,
`processing_prismatic.py`, from `prismatic/extern/hf/` of github.com/openvla/openvla, MIT) sit beside the
weights, as they do in the released checkpoints' hub repositories: `auto_map` names them. They are OpenVLA's
code, so the export does not write them; copy them in (scripts/check_export_with_openvla.py does).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm_backbones import _fs
from llm_backbones.core.backbones.files import describe_non_finite, first_non_finite
from llm_backbones.data.norm_stats import validate_norm_stats
from llm_backbones.errors import (
    CheckpointError,
    NonFiniteWeightsError,
    NormStatsError,
    OutputPathError,
)
from llm_backbones.persistence.openvla import BACKBONE_LLM_PREFIX, HF_LLM_PREFIX
from llm_backbones.vla.image_processing import _PIL_CODES
from llm_backbones.vla.loading import HF_PROJECTOR_PREFIX, HF_VISION_PREFIX
from llm_backbones.vla.policy import VLAPolicy
from llm_backbones.vla.vision import timm_override_act_layers

logger = logging.getLogger(__name__)

DEFAULT_MAX_SHARD_SIZE = "5GB"  # transformers 4.40's save_pretrained default (openvla-7b: 4 shards)
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
STATISTICS_NAME = "dataset_statistics.json"
# auto_map as the released checkpoints carry it: the module names of OpenVLA's three HF files
CONFIG_AUTO_MAP = {
    "AutoConfig": "configuration_prismatic.OpenVLAConfig",
    "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction",
}
PROCESSOR_AUTO_MAP = {"AutoProcessor": "processing_prismatic.PrismaticProcessor"}
IMAGE_PROCESSOR_AUTO_MAP = {
    "AutoImageProcessor": "processing_prismatic.PrismaticImageProcessor",
    **PROCESSOR_AUTO_MAP,
}
OPENVLA_HF_FILES = ("configuration_prismatic.py", "modeling_prismatic.py", "processing_prismatic.py")
# config keys that describe the file, not the model (text_config leaves them out)
_CONFIG_META = frozenset({"transformers_version", "_name_or_path", "dtype", "torch_dtype", "architectures"})
# transformers 5 derives these from the others (4.40.1 has no such field): written only when not derived
_DERIVED = ("head_dim", "layer_types")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def export_openvla(
    policy: VLAPolicy,
    directory: str | os.PathLike[str],
    *,
    norm_stats: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
) -> Path:
    """Write `policy` to `directory` as an HF OpenVLA checkpoint; returns the folder's path.

    Args:
        policy: a `VLAPolicy` whose vision towers were loaded from a checkpoint (`load_vla`): the export
            needs every tensor of timm's towers, including the last block and heads the featurizer never
            reads, which the towers keep aside (`VisionTower.set_aside`); a policy without them is refused,
            naming what is missing.
        norm_stats: the action statistics `{dataset: {"action": {"q01", "q99", "mask", ...}}}` to write
            (config.json's `norm_stats` and dataset_statistics.json); default: `policy.norm_stats`.
        dtype: of every floating tensor (and `torch_dtype`); default: the policy's.
        max_shard_size: the largest weights file (bytes, or "5GB" / "500MiB"); above it the weights are
            sharded with an index, as `save_pretrained` does.
        overwrite: replace a non-empty `directory` (default: refuse).

    The folder is written under a temporary name beside `directory` and renamed into place when complete
    (an interrupted export leaves nothing at `directory`, or the previous folder with `overwrite`). NaN/inf
    weights (also after the cast to `dtype`) are refused by name, before anything is published.

    OpenVLA's `AutoModelForVision2Seq.from_pretrained(directory, trust_remote_code=True)` needs OpenVLA's
    three HF files (`OPENVLA_HF_FILES`, from github.com/openvla/openvla `prismatic/extern/hf/`) copied into
    the folder, as the released checkpoints hold them; the export does not ship OpenVLA's code.
    """
    if not isinstance(policy, VLAPolicy):
        raise CheckpointError(
            f"export_openvla expects a VLAPolicy (from load_vla), got {type(policy).__name__}. To save an "
            "LLM backbone alone use save_backbone."
        )
    if not isinstance(overwrite, bool):
        raise CheckpointError(f"overwrite must be True or False, got {overwrite!r:.40}.")
    dtype = _check_dtype(policy.dtype if dtype is None else dtype)
    shard_bytes = _shard_size(max_shard_size)
    stats = _plain_stats(policy.norm_stats if norm_stats is None else norm_stats)
    if not stats:
        logger.warning(
            "Exporting a policy without action statistics (norm_stats is empty): OpenVLA's predict_action "
            "and load_vla's predict_action will have no dataset to un-normalize actions with."
        )
    tensors = openvla_state_dict(policy)
    _check_finite(tensors.items(), where="in the policy")
    config = openvla_config(policy, norm_stats=stats, dtype=dtype)
    target = _check_target(directory, overwrite=overwrite)
    try:
        with _fs.atomic_dir(target, replace=overwrite) as tmp:
            _write_weights(tensors, tmp, dtype=dtype, shard_bytes=shard_bytes)
            _write_json(tmp / "config.json", config)
            _write_json(tmp / "generation_config.json", generation_config(policy))
            _write_json(tmp / "preprocessor_config.json", preprocessor_config(policy))
            _write_json(tmp / "processor_config.json", processor_config())
            _write_tokenizer(policy.tokenizer, tmp)
            _write_json(tmp / STATISTICS_NAME, stats)
    except FileExistsError as exc:  # another writer created it meanwhile
        raise OutputPathError(
            f"{target} appeared while the export was being written; refusing to replace it. Pass "
            "overwrite=True to replace it, or choose another folder."
        ) from exc
    except PermissionError as exc:
        raise OutputPathError(f"Cannot write the export at {target}: {exc}.") from exc
    logger.info(
        "Exported the %s policy (%d tensors, %s) to %s",
        policy.vision_backbone_id,
        len(tensors),
        str(dtype).removeprefix("torch."),
        target,
    )
    return target


# === What is written ===
def openvla_state_dict(policy: VLAPolicy) -> dict[str, torch.Tensor]:
    """{OpenVLA HF name: tensor} of the whole policy (the tensors themselves, not copies): the towers in
    timm's names (LayerScale `gamma` as OpenVLA's `scale_factor`), the projector, the LLM (a tied LM head
    left out, as `save_pretrained` leaves it out)."""
    out: dict[str, torch.Tensor] = {}
    towers = (("featurizer", policy.vision.featurizer), ("fused_featurizer", policy.vision.fused_featurizer))
    for attr, tower in towers:
        if tower is None:
            continue
        for name, tensor in tower.timm_state_dict().items():
            if name.endswith(".gamma"):
                name = name[: -len("gamma")] + "scale_factor"
            out[f"{HF_VISION_PREFIX}{attr}.{name}"] = tensor
    for name, tensor in policy.projector.state_dict().items():
        out[HF_PROJECTOR_PREFIX + name] = tensor
    seen: dict[int, str] = {}
    for name, tensor in policy.backbone.state_dict(keep_vars=True).items():
        if not name.startswith(BACKBONE_LLM_PREFIX):
            raise CheckpointError(
                f"The LLM backbone holds a tensor {name!r} outside its `{BACKBONE_LLM_PREFIX}` model; "
                "OpenVLA's layout has no place for it."
            )
        if id(tensor) in seen:  # tied weights: one name, as save_pretrained writes them
            continue
        seen[id(tensor)] = name
        out[HF_LLM_PREFIX + name[len(BACKBONE_LLM_PREFIX) :]] = tensor.detach()
    on_meta = [k for k, v in out.items() if v.device.type == "meta"]
    if on_meta:
        raise CheckpointError(
            f"{len(on_meta)} tensors of the policy have no data (meta device), e.g. {on_meta[:4]}: it was "
            "built without weights. Load them first."
        )
    return out


def openvla_config(policy: VLAPolicy, *, norm_stats: Mapping[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """config.json as `OpenVLAConfig.save_pretrained` writes it (keys sorted)."""
    spec = policy.vision.spec
    source = policy.llm.config if isinstance(policy.llm.config, Mapping) else {}
    arch = source.get("arch_specifier")
    if not (isinstance(arch, str) and arch.endswith("gelu-mlp") and ("fused" in arch) == spec.fused):
        arch = "no-align+fused-gelu-mlp" if spec.fused else "no-align+gelu-mlp"
    text = text_config(policy.backbone.llm.config, dtype)
    tokenizer = policy.tokenizer
    vocab = text.get("vocab_size", policy.backbone.llm.config.vocab_size)
    pad_to = vocab - policy.action_tokenizer.base_vocab_size
    if pad_to < 0:
        raise CheckpointError(
            f"The LLM has {vocab} embedding rows, fewer than the tokenizer's base vocabulary "
            f"({policy.action_tokenizer.base_vocab_size}): OpenVLA's action tokens would not exist."
        )
    # OpenVLA decodes bin = (text vocab_size - pad_to_multiple_of) - id - 1: pad_to_multiple_of must be the
    # rows beyond the base vocabulary, whatever the padding multiple was (openvla-7b: 32064 - 64 = 32000)
    config = {
        "arch_specifier": arch,
        "architectures": ["OpenVLAForActionPrediction"],
        "auto_map": dict(CONFIG_AUTO_MAP),
        "hf_llm_id": policy.backbone.hf_hub_path,
        "image_resize_strategy": policy.image_processor.strategy,
        "image_sizes": [t.image_size for t in spec.towers],
        "llm_backbone_id": policy.llm.llm_backbone_id,
        "llm_max_length": int(policy.backbone.llm_max_length),
        "model_type": "openvla",
        "n_action_bins": int(policy.action_tokenizer.n_bins),
        "norm_stats": norm_stats,
        "output_projector_states": False,
        "pad_to_multiple_of": int(pad_to),
        "pad_token_id": int(tokenizer.pad_token_id),
        "text_config": text,
        "timm_model_ids": [t.timm_id for t in spec.towers],
        "timm_override_act_layers": timm_override_act_layers(spec),
        "torch_dtype": _dtype_name(dtype),
        "transformers_version": _transformers_version(),
        "use_fused_vision_backbone": spec.fused,
        "vision_backbone_id": spec.vision_backbone_id,
    }
    return dict(sorted(config.items()))


def text_config(config: Any, dtype: torch.dtype) -> dict[str, Any]:
    """The LLM config as OpenVLA's `text_config` holds it: its values that differ from the config class's
    defaults (what `to_diff_dict` keeps), under the names transformers 4.40.1 reads (`rope_theta` /
    `rope_scaling`, `torch_dtype`), `model_type` first. Checked to rebuild the same config here."""
    cls = type(config)

    def fields(c: Any) -> dict[str, Any]:
        return {k: v for k, v in _legacy_names(c.to_dict()).items() if k not in _CONFIG_META}

    wanted, defaults = fields(config), fields(cls())
    text = {k: v for k, v in wanted.items() if k not in defaults or defaults[k] != v}
    for key in _DERIVED:
        if key in text and fields(cls(**{k: v for k, v in text.items() if k != key})) == wanted:
            del text[key]
    rebuilt = fields(cls(**text))
    if rebuilt != wanted:
        differ = sorted(k for k in set(rebuilt) | set(wanted) if rebuilt.get(k) != wanted.get(k))
        raise CheckpointError(
            f"The LLM's {cls.__name__} cannot be written as OpenVLA's text_config: rebuilt from it, it "
            f"differs in {differ[:8]}. Please report this with your transformers version."
        )
    out = {"model_type": config.model_type, **{k: v for k, v in text.items() if k != "model_type"}}
    out["torch_dtype"] = _dtype_name(dtype)
    return dict(sorted(out.items()))


def _legacy_names(values: Mapping[str, Any]) -> dict[str, Any]:
    """transformers 5's `rope_parameters` as the `rope_theta` (and `rope_scaling`) of earlier releases."""
    out = dict(values)
    rope = out.pop("rope_parameters", None)
    if isinstance(rope, Mapping):
        rope = dict(rope)
        if "rope_theta" in rope:
            out["rope_theta"] = rope.pop("rope_theta")
        if rope.get("rope_type", "default") != "default":
            out["rope_scaling"] = rope
    return out


def generation_config(policy: VLAPolicy) -> dict[str, Any]:
    """generation_config.json as OpenVLA's model writes it (`GenerationConfig.from_model_config`)."""
    llm = policy.backbone.llm.config
    out: dict[str, Any] = {"_from_model_config": True}
    for key in ("bos_token_id", "eos_token_id"):
        if getattr(llm, key, None) is not None:
            out[key] = getattr(llm, key)
    out["pad_token_id"] = int(policy.tokenizer.pad_token_id)
    out["transformers_version"] = _transformers_version()
    return out


def preprocessor_config(policy: VLAPolicy) -> dict[str, Any]:
    """preprocessor_config.json as `PrismaticImageProcessor.save_pretrained` writes it: the timm data
    config per tower (`input_sizes`, `interpolations`, `means`, `stds`) and the torchvision parameters it
    derives (`tvf_*`, which OpenVLA's processor uses as stored)."""
    processor = policy.image_processor
    spec = policy.vision.spec
    names = {code: name for name, code in _PIL_CODES.items()}
    means, stds, resize, crop, normalize = [], [], [], [], []
    for tower, t in zip(spec.towers, processor.transforms, strict=True):
        mean32, std32 = _float32(t.mean), _float32(t.std)
        # timm's data config values where they are what the processor normalizes with (float32)
        means.append(list(tower.mean) if _float32(tower.mean) == mean32 else mean32)
        stds.append(list(tower.std) if _float32(tower.std) == std32 else std32)
        size = list(t.resize) if isinstance(t.resize, tuple) else t.resize
        resize.append({"antialias": True, "interpolation": t.interpolation, "max_size": None, "size": size})
        crop.append({"output_size": list(t.crop)})
        normalize.append({"inplace": False, "mean": mean32, "std": std32})
    letterbox = processor.strategy == "letterbox"
    fills = processor.letterbox_fills or ()
    if len(set(fills)) > 1:
        logger.warning(
            "The policy letterboxes each tower with its own fill %s (Prismatic's training transforms); "
            "OpenVLA's HF processor has one fill for all towers, so the export holds the last tower's, %s, "
            "as OpenVLA's convert_openvla_weights_to_hf.py writes it: the exported checkpoint pads images "
            "for the first tower differently than this policy does.",
            [list(f) for f in fills],
            list(fills[-1]),
        )
    config = {
        "auto_map": dict(IMAGE_PROCESSOR_AUTO_MAP),
        "image_processor_type": "PrismaticImageProcessor",
        "image_resize_strategy": processor.strategy,
        "input_sizes": [[3, *t.crop] for t in processor.transforms],
        "interpolations": [names.get(t.interpolation, "bicubic") for t in processor.transforms],
        "means": means,
        "processor_class": "PrismaticProcessor",
        "stds": stds,
        "tvf_crop_params": crop,
        "tvf_do_letterbox": letterbox,
        "tvf_letterbox_fill": list(fills[-1]) if letterbox else None,
        "tvf_normalize_params": normalize,
        "tvf_resize_params": resize,
        "use_fused_vision_backbone": spec.fused,
    }
    return config


def processor_config() -> dict[str, Any]:
    """processor_config.json as `PrismaticProcessor.save_pretrained` writes it."""
    return {"auto_map": dict(PROCESSOR_AUTO_MAP), "processor_class": "PrismaticProcessor"}


# === Writing ===
def _write_weights(
    tensors: Mapping[str, torch.Tensor], directory: Path, *, dtype: torch.dtype, shard_bytes: int
) -> None:
    """The tensors, cast to `dtype` one shard at a time, as safetensors (+ index when sharded)."""
    from safetensors.torch import save_file

    shards: list[list[str]] = [[]]
    size = 0
    total = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * (_cast_dtype(tensor, dtype).itemsize)
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
        total += nbytes
    files = (
        [WEIGHTS_NAME]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map: dict[str, str] = {}
    for names, file in zip(shards, files, strict=True):
        shard = {}
        for name in names:
            tensor = tensors[name].detach().to(device="cpu", dtype=_cast_dtype(tensors[name], dtype))
            shard[name] = tensor.contiguous()
            weight_map[name] = file
        _check_finite(shard.items(), where=f"after the cast to {_dtype_name(dtype)}")
        save_file(shard, str(directory / file), metadata={"format": "pt"})
        del shard
    if len(files) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        _write_json(directory / INDEX_NAME, index)


def _write_tokenizer(tokenizer: Any, directory: Path) -> None:
    """`tokenizer.save_pretrained`, then: BPE merges as "a b" strings (the form tokenizers < 0.20 reads,
    OpenVLA's pinned 0.19.1 among them; today's reads both) where no piece holds a space; tokenizer_config's
    processor fields as OpenVLA's processor writes them."""
    tokenizer.save_pretrained(directory)
    file = directory / "tokenizer.json"
    if file.is_file():
        data = json.loads(file.read_text(encoding="utf-8"))
        model = data.get("model") if isinstance(data, dict) else None
        merges = model.get("merges") if isinstance(model, dict) else None
        if (
            isinstance(merges, list)
            and merges
            and all(isinstance(m, list) and len(m) == 2 and " " not in m[0] + m[1] for m in merges)
        ):
            model["merges"] = [f"{a} {b}" for a, b in merges]
            file.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    config_file = directory / "tokenizer_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config.update({"auto_map": dict(PROCESSOR_AUTO_MAP), "processor_class": "PrismaticProcessor"})
        _write_json(config_file, dict(sorted(config.items())))


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")


# === Checks ===
def _check_target(directory: object, *, overwrite: bool) -> Path:
    if not isinstance(directory, (str, os.PathLike)):
        raise OutputPathError(f"directory must be a str or a path, got {type(directory).__name__}.")
    target = Path(directory).expanduser().absolute()
    if target.is_symlink():
        target = target.resolve()
    if target.exists() and not target.is_dir():
        raise OutputPathError(f"{target} exists and is a file; an export is a folder. Choose another path.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise OutputPathError(
            f"{target} is a non-empty folder; refusing to replace it. Pass overwrite=True to replace it "
            "(in one step: the previous folder stays until the export is complete), or choose a new folder."
        )
    _fs.make_parent(target)
    return target


def _check_finite(named: Any, *, where: str) -> None:
    bad = first_non_finite(named)
    if bad is not None:
        name, tensor = bad
        raise NonFiniteWeightsError(
            f"The tensor {name!r} holds {describe_non_finite(tensor)} {where}; refusing to export it "
            "(OpenVLA would load it and produce NaN actions). Restore the weights from a good checkpoint"
            + (", or export in a wider dtype." if "cast" in where else "."),
            tensor=name,
            file="(export)",
        )


def _check_dtype(dtype: object) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise CheckpointError(
            f"dtype must be a floating torch dtype (torch.float32, torch.bfloat16, torch.float16), got "
            f"{dtype!r:.40}."
        )
    return dtype


def _cast_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    return dtype if tensor.is_floating_point() else tensor.dtype


def _shard_size(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None or float(match.group(1)) <= 0:
        raise CheckpointError(
            f"max_shard_size must be a positive number of bytes or a size such as '5GB' or '500MiB', got "
            f"{value!r:.40}."
        )
    return max(1, int(float(match.group(1)) * _UNITS[(match.group(2) or "B").upper()]))


def _plain_stats(norm_stats: object) -> dict[str, Any]:
    """The statistics checked (`validate_norm_stats`) and as plain JSON values (numpy arrays as lists)."""
    validate_norm_stats(norm_stats, source="norm_stats= (export)")  # type: ignore[arg-type]
    plain = _plain(norm_stats)
    try:
        json.dumps(plain, allow_nan=False)
    except ValueError as exc:
        raise NormStatsError(
            f"The action statistics hold NaN or infinite values ({exc}), which JSON cannot hold and OpenVLA "
            "cannot use. Recompute them from the dataset."
        ) from None
    except TypeError as exc:
        raise NormStatsError(f"The action statistics hold a value JSON cannot hold: {exc}.") from None
    return plain


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _float32(values: Any) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float32)]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


__all__ = [
    "OPENVLA_HF_FILES",
    "export_openvla",
    "generation_config",
    "openvla_config",
    "openvla_state_dict",
    "preprocessor_config",
    "processor_config",
    "text_config",
]
