"""OpenVLA and Prismatic checkpoints: load their LLM backbone, and un-normalize actions as OpenVLA does.

`load_vla_backbone(path)` reads either layout and returns the LLM half of the VLA (`LoadedVLA`):

- HF OpenVLA (`openvla/openvla-7b` and its fine-tunes, as `convert_openvla_weights_to_hf.py` writes them):
  `config.json` with `model_type` "openvla" (or "prismatic"), `llm_backbone_id`, the LLM's `text_config`,
  `n_action_bins`, `norm_stats`, `llm_max_length`, `pad_token_id`; safetensors weights (shards listed in
  `model.safetensors.index.json`, or one `model.safetensors`) with the LLM under `language_model.`; the
  tokenizer with `<PAD>` (32000) already added.
- Prismatic training run: a run directory with `config.json` (or `config.yaml`), `dataset_statistics.json`
  (VLA runs) and `checkpoints/step-*.pt`, or the path of one `.pt` file; each holds
  `{"model": {"llm_backbone": ..., "projector": ..., "vision_backbone": ...}}` with the LLM's tensors under
  the LLMBackbone module's names (`llm.model.embed_tokens.weight`, ...). Read with
  `torch.load(weights_only=True)`, never a full unpickle. The LLM's config and tokenizer come from its base
  model (the id's hub path, or `base_model_path=`), as Prismatic's `load_vla` builds them.

The backbone is built on the meta device (`inference_mode=True`) and receives exactly the checkpoint's LLM
tensors (32064 embedding rows kept, no second `<PAD>`); the vision and projector tensors are not loaded, only
named (`LoadedVLA.unused_tensors` and one log line). Loading is strict: a missing or unexpected LLM tensor
raises `StateDictMismatchError` listing them.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from transformers import PreTrainedTokenizerBase

from llm_backbones import _fs
from llm_backbones.core.backbones.backbone import HFCausalLLMBackbone
from llm_backbones.core.backbones.factory import get_llm_backbone_and_tokenizer
from llm_backbones.core.registry import get_spec
from llm_backbones.data.actions import ActionTokenizer
from llm_backbones.errors import (
    ActionError,
    ModelPathError,
    ModelWeightsError,
    NormStatsError,
    StateDictMismatchError,
    VLACheckpointError,
    closest,
)

logger = logging.getLogger(__name__)

HF_MODEL_TYPES: tuple[str, ...] = ("openvla", "prismatic")
HF_LLM_PREFIX = "language_model."  # the HF OpenVLA's LLM module; the backbone's is `llm.`
BACKBONE_LLM_PREFIX = "llm."
PRISMATIC_LLM_KEY = "llm_backbone"
DEFAULT_ACTION_BINS = 256  # OpenVLA's `n_action_bins` default and Prismatic's ActionTokenizer default
DEFAULT_LLM_MAX_LENGTH = 2048  # every Prismatic ModelConfig's llm_max_length
# Tokenizer files copied from an HF OpenVLA checkpoint (the backbone loads its tokenizer from there).
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl"})
_STEP = re.compile(r"step-(\d+)")

# Prismatic's model ids -> their LLM id (prismatic/conf/models.py, openvla/openvla): how a VLA run's config
# (`vla.base_vlm`) names its LLM. Every one of them has llm_max_length 2048.
_PRISMATIC_MODELS_BY_LLM: dict[str, tuple[str, ...]] = {
    "vicuna-v15-7b": (
        "reproduction-llava-v15+7b",
        "one-stage+7b",
        "full-ft-multi-stage+7b",
        "full-ft-one-stage+7b",
        "in1k-224px+7b",
        "dinov2-224px+7b",
        "clip-224px+7b",
        "siglip-224px+7b",
        "clip-336px-resize-crop+7b",
        "clip-336px-resize-naive+7b",
        "siglip-384px-letterbox+7b",
        "siglip-384px-resize-crop+7b",
        "siglip-384px-resize-naive+7b",
        "dinoclip-336px-letterbox+7b",
        "dinoclip-336px-resize-naive+7b",
        "dinosiglip-384px-letterbox+7b",
        "dinosiglip-384px-resize-naive+7b",
        "dinosiglip-224px-resize-naive+7b",
        "vicuna-no-cotraining+7b",
        "train-1.25-epochs+7b",
        "train-1.5-epochs+7b",
        "train-2-epochs+7b",
        "train-3-epochs+7b",
        "llava-lvis4v+7b",
        "llava-lrv+7b",
        "llava-lvis4v-lrv+7b",
    ),
    "vicuna-v15-13b": ("reproduction-llava-v15+13b", "one-stage+13b"),
    "llama2-7b-pure": (
        "llama2+7b",
        "llama2-no-cotraining+7b",
        "prism-clip-controlled+7b",
        "prism-clip+7b",
        "prism-siglip-controlled+7b",
        "prism-siglip+7b",
        "prism-dinosiglip-controlled+7b",
        "prism-dinosiglip+7b",
        "prism-dinosiglip-224px-controlled+7b",
        "prism-dinosiglip-224px+7b",
    ),
    "llama2-13b-pure": (
        "llama2+13b",
        "prism-clip-controlled+13b",
        "prism-clip+13b",
        "prism-siglip-controlled+13b",
        "prism-siglip+13b",
        "prism-dinosiglip-controlled+13b",
        "prism-dinosiglip+13b",
    ),
    "llama2-7b-chat": ("llama2-chat+7b",),
    "llama2-13b-chat": ("llama2-chat+13b",),
    "mistral-v0.1-7b-pure": ("mistral-v0.1+7b",),
    "mistral-v0.1-7b-instruct": ("mistral-instruct-v0.1+7b",),
    "phi-2-3b": ("phi-2+3b",),
}
PRISMATIC_MODEL_LLMS: Mapping[str, str] = {
    model_id: llm for llm, model_ids in _PRISMATIC_MODELS_BY_LLM.items() for model_id in model_ids
}


# === Un-normalizing actions (OpenVLA's predict_action) ===
def check_unnorm_key(norm_stats: Mapping[str, Any], unnorm_key: str | None) -> str:
    """The dataset key of `norm_stats` to un-normalize with: `unnorm_key`, or the only one when it is None.

    As OpenVLA's `_check_unnorm_key`, with `NormStatsError` (naming the known keys) instead of an assert.
    """
    if not isinstance(norm_stats, Mapping) or not norm_stats:
        raise NormStatsError(
            f"No action statistics to un-normalize with (norm_stats={norm_stats!r:.80}): the checkpoint "
            "has none (a VLM checkpoint, or a run directory without dataset_statistics.json). Pass the "
            "norm_stats of the dataset the policy was trained on "
            "({dataset: {'action': {'q01': [...], 'q99': [...]}}})."
        )
    known = ", ".join(repr(k) for k in norm_stats)
    if unnorm_key is None:
        if len(norm_stats) != 1:
            raise NormStatsError(
                f"unnorm_key=None, but the model was trained on {len(norm_stats)} datasets, so the "
                f"statistics to un-normalize with are ambiguous. Pass unnorm_key= one of: {known}."
            )
        return next(iter(norm_stats))
    if unnorm_key not in norm_stats:
        close = closest(unnorm_key, [str(k) for k in norm_stats])
        hint = f" Closest: {', '.join(close)}." if close else ""
        raise NormStatsError(
            f"unnorm_key={unnorm_key!r} is not a dataset of these statistics.{hint} Known keys: {known}. "
            "Pass one of them (the dataset whose robot and action space you control)."
        )
    return unnorm_key


def get_action_stats(norm_stats: Mapping[str, Any], unnorm_key: str | None = None) -> Mapping[str, Any]:
    """The action statistics (`q01`, `q99`, optional `mask`, ...) of one dataset, as OpenVLA's
    `get_action_stats`."""
    key = check_unnorm_key(norm_stats, unnorm_key)
    entry = norm_stats[key]
    stats = entry.get("action") if isinstance(entry, Mapping) else None
    if not isinstance(stats, Mapping) or "q01" not in stats or "q99" not in stats:
        found = stats if isinstance(stats, Mapping) else entry
        found = sorted(found) if isinstance(found, Mapping) else found
        raise NormStatsError(
            f"norm_stats[{key!r}] has no action statistics with q01 and q99 (found {found!r:.120}). Expected "
            f"{{{key!r}: {{'action': {{'q01': [...], 'q99': [...], 'mask': [...]}}}}}}, as the "
            "dataset_statistics.json of an OpenVLA run holds them."
        )
    return stats


def unnormalize_actions(
    actions: torch.Tensor | np.ndarray | Sequence[float] | Sequence[Sequence[float]],
    norm_stats: Mapping[str, Any],
    unnorm_key: str | None = None,
) -> np.ndarray:
    """Map normalized actions in [-1, 1] (`[..., D]`, e.g. `ActionTokenizer.decode_token_ids_to_actions`)
    back to the robot's units, exactly as OpenVLA's `predict_action`: with the dataset's `q01`/`q99` as
    low/high and `mask` (default: all true), `where(mask, 0.5 * (a + 1) * (high - low) + low, a)`. Dimensions
    whose mask is false (the gripper) stay as they are. Returns a float64 numpy array, as OpenVLA.

    `unnorm_key` names the dataset; None is accepted only when the statistics hold exactly one.
    """
    key = check_unnorm_key(norm_stats, unnorm_key)
    stats = get_action_stats(norm_stats, key)
    try:
        low = np.asarray(stats["q01"], dtype=np.float64)
        high = np.asarray(stats["q99"], dtype=np.float64)
        mask = np.asarray(stats["mask"], dtype=bool) if "mask" in stats else np.ones_like(low, dtype=bool)
    except (TypeError, ValueError) as exc:
        raise NormStatsError(
            f"The action statistics of {key!r} are not lists of numbers ({exc}): q01={stats['q01']!r:.80}, "
            f"q99={stats['q99']!r:.80}. Restore them from the run's dataset_statistics.json."
        ) from None
    if low.ndim != 1 or low.shape != high.shape or mask.shape != low.shape:
        raise NormStatsError(
            f"The action statistics of {key!r} do not fit together: q01 {low.shape}, q99 {high.shape}, mask "
            f"{mask.shape}; each must be one list with one value per action dimension."
        )
    if isinstance(actions, torch.Tensor):
        actions = actions.detach().cpu().numpy()
    try:
        normalized = np.asarray(actions, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ActionError(
            f"Actions must be numbers of shape [..., D], got {type(actions).__name__} ({exc}). Pass the "
            "decoded actions (ActionTokenizer.decode_token_ids_to_actions)."
        ) from None
    if normalized.ndim == 0 or normalized.shape[-1] != low.shape[0]:
        raise ActionError(
            f"Actions of shape {normalized.shape} do not fit the statistics of {key!r}, which have "
            f"{low.shape[0]} dimensions. Decode as many action tokens as the dataset's action has "
            f"dimensions ({low.shape[0]}), or pick the unnorm_key of this robot."
        )
    return np.where(mask, 0.5 * (normalized + 1) * (high - low) + low, normalized)


# === The loaded checkpoint ===
@dataclass
class LoadedVLA:
    """The LLM half of an OpenVLA / Prismatic checkpoint, as `load_vla_backbone` returns it.

    Attributes:
        backbone: the LLM backbone of `llm_backbone_id`, with exactly the checkpoint's LLM weights; in eval
            mode with gradients off, as Prismatic loads a VLA for inference (`requires_grad_(True)` to
            fine-tune it).
        tokenizer: its tokenizer (`<PAD>` present once).
        action_tokenizer: an `ActionTokenizer` with the checkpoint's `n_action_bins` bins.
        norm_stats: `{dataset: {"action": {"q01", "q99", "mask", ...}, ...}}` (empty if the checkpoint has
            none).
        unused_tensors: the names of the tensors not loaded (vision backbone, projector), as the checkpoint
            names them.
        llm_backbone_id: the backbone id the checkpoint was trained with (or the one passed).
        layout: "openvla-hf" or "prismatic".
        source: the directory (HF layout) or `.pt` file (Prismatic) the weights came from.
        config: the checkpoint's config.json (HF layout) or run config (Prismatic), as read.
    """

    backbone: HFCausalLLMBackbone
    tokenizer: PreTrainedTokenizerBase
    action_tokenizer: ActionTokenizer
    norm_stats: dict[str, Any]
    unused_tensors: tuple[str, ...]
    llm_backbone_id: str
    layout: str
    source: Path
    config: dict[str, Any] = field(default_factory=dict, repr=False)

    def get_action_stats(self, unnorm_key: str | None = None) -> Mapping[str, Any]:
        """The action statistics of one dataset (`unnorm_key`; None if there is only one)."""
        return get_action_stats(self.norm_stats, unnorm_key)

    def get_action_dim(self, unnorm_key: str | None = None) -> int:
        """The size of the dataset's action (OpenVLA generates this many tokens)."""
        return len(self.get_action_stats(unnorm_key)["q01"])

    def unnormalize_actions(self, actions: Any, unnorm_key: str | None = None) -> np.ndarray:
        """`unnormalize_actions(actions, self.norm_stats, unnorm_key)`."""
        return unnormalize_actions(actions, self.norm_stats, unnorm_key)


# === Loading ===
def load_vla_backbone(
    path: str | os.PathLike[str],
    *,
    llm_backbone_id: str | None = None,
    step: int | None = None,
    base_model_path: str | os.PathLike[str] | None = None,
    dtype: torch.dtype | None = None,
    n_action_bins: int | None = None,
    llm_max_length: int | None = None,
    hf_token: str | None = None,
    attn_implementation: str | None = None,
) -> LoadedVLA:
    """Load the LLM backbone, tokenizer, action tokenizer and action statistics of an OpenVLA / Prismatic
    checkpoint (see the module docstring for both layouts).

    Args:
        path: an HF OpenVLA directory, a Prismatic run directory, or a Prismatic `.pt` checkpoint file.
        llm_backbone_id: overrides the id the checkpoint names (e.g. to load it as a compatible registered
            id).
        step: Prismatic run directory only: the training step to load (default: the highest step).
        base_model_path: Prismatic only: a local HF directory of the base LLM (config and tokenizer) instead
            of the id's hub path; the HF layout carries its own.
        dtype: the backbone's dtype (default: the dtype the LLM tensors are stored in).
        n_action_bins: overrides the checkpoint's number of action bins (Prismatic checkpoints do not store
            it: 256, Prismatic's default).
        llm_max_length: overrides the checkpoint's `llm_max_length` (the tokenizer's `model_max_length`).
        hf_token: for the base model on the hub (Prismatic layout).
        attn_implementation: passed to the backbone (default: flash-attention-2 where it can run, else sdpa).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ModelPathError(f"path must be a str or a path, got {type(path).__name__}: {path!r:.80}.")
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelPathError(
            f"{str(path)!r} does not exist. Pass an HF OpenVLA directory (config.json, *.safetensors, "
            "tokenizer), a Prismatic run directory (config.json, checkpoints/step-*.pt) or a Prismatic .pt "
            "checkpoint."
        )
    common = {
        "dtype": dtype,
        "n_action_bins": n_action_bins,
        "llm_max_length": llm_max_length,
        "attn_implementation": attn_implementation,
    }
    hf_config = _read_hf_config(path) if path.is_dir() else None
    if hf_config is not None:
        for name, value in (("step", step), ("base_model_path", base_model_path)):
            if value is not None:
                raise VLACheckpointError(
                    f"{name}={value!r} applies to Prismatic training checkpoints only; {path} is an HF "
                    "OpenVLA checkpoint, which holds one set of weights and its own config and tokenizer. "
                    f"Drop {name}=."
                )
        return _load_hf_layout(path, hf_config, llm_backbone_id=llm_backbone_id, **common)
    if path.is_file() or (path / "checkpoints").is_dir():
        return _load_prismatic_layout(
            path,
            llm_backbone_id=llm_backbone_id,
            step=step,
            base_model_path=base_model_path,
            hf_token=hf_token,
            **common,
        )
    found = sorted(p.name for p in path.iterdir())[:12]
    raise VLACheckpointError(
        f"{path} is neither an HF OpenVLA checkpoint (config.json with model_type in {HF_MODEL_TYPES}) nor a "
        f"Prismatic run directory (a checkpoints/ folder of step-*.pt files); it holds {found}. Point path "
        "at one of those, or at a Prismatic .pt file."
    )


def _read_json(file: Path, what: str) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VLACheckpointError(
            f"{file} ({what}) is not valid JSON ({exc}): the file is corrupted or truncated. Restore it from "
            "the original checkpoint."
        ) from exc
    except OSError as exc:
        raise VLACheckpointError(f"{file} ({what}) cannot be read: {exc}.") from exc


def _read_hf_config(directory: Path) -> dict[str, Any] | None:
    """config.json of an HF OpenVLA / Prismatic checkpoint, or None if `directory` is not one."""
    file = directory / "config.json"
    if not file.is_file():
        return None
    config = _read_json(file, "the checkpoint's config")
    if isinstance(config, dict) and config.get("model_type") in HF_MODEL_TYPES:
        return config
    return None


def _stored_dtype(state: Mapping[str, torch.Tensor]) -> torch.dtype:
    """The dtype the LLM's floating tensors are stored in (the most common one)."""
    counts = Counter(t.dtype for t in state.values() if t.is_floating_point())
    return counts.most_common(1)[0][0] if counts else torch.float32


def _backbone_kwargs(dtype: torch.dtype, attn_implementation: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"inference_mode": True, "dtype": dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


# --- HF OpenVLA layout ---
def _inside(directory: Path, name: object, index: Path) -> Path:
    """The shard `name` of the index, refused unless it is a relative *.safetensors path inside `directory`.

    Checked on the path as written, not on its target: the hub cache's shards are symlinks into its blob
    store.
    """
    if not isinstance(name, str) or not name:
        raise VLACheckpointError(f"{index} names the file {name!r}; shard names must be non-empty strings.")
    if not _fs.is_inside(directory, name, follow_symlinks=False):
        raise VLACheckpointError(
            f"{index} names the shard {name!r}, which lies outside {directory}; shards must be files of the "
            "checkpoint directory (e.g. model-00001-of-00003.safetensors). The index is damaged or was "
            "edited: restore it from the original checkpoint."
        )
    if not name.endswith(".safetensors"):
        raise VLACheckpointError(
            f"{index} names the shard {name!r}; llm-backbones opens safetensors files only (pickle weights "
            "can run code when loaded). Convert the checkpoint to safetensors where you trust it."
        )
    file = directory / name
    if not file.is_file():
        raise ModelWeightsError(
            f"{index} names the shard {name!r}, which is missing from {directory}. Copy or download the "
            "checkpoint again (all shards)."
        )
    return file


def _hf_weight_files(directory: Path) -> dict[str, Path]:
    """{tensor name: safetensors file} from model.safetensors.index.json, or from one model.safetensors."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        data = _read_json(index, "the shard index")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise VLACheckpointError(
                f"{index} has no weight_map ({{tensor name: shard file}}). Restore it from the original "
                "checkpoint."
            )
        shards: dict[str, Path] = {}  # each shard name checked once
        result = {}
        for tensor, name in weight_map.items():
            if not isinstance(name, str) or name not in shards:
                shards[str(name)] = _inside(directory, name, index)
            result[str(tensor)] = shards[name]
        return result
    single = directory / "model.safetensors"
    if single.is_file():
        try:
            with safe_open(str(single), framework="pt") as handle:
                return dict.fromkeys(handle.keys(), single)
        except (SafetensorError, OSError) as exc:
            raise ModelWeightsError(
                f"{single} ({single.stat().st_size} bytes) cannot be read ({exc}): it is truncated or "
                "corrupted. Copy or download the checkpoint again."
            ) from exc
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    raise VLACheckpointError(
        f"{directory} has no safetensors weights (neither model.safetensors.index.json nor "
        "model.safetensors)"
        + (f"; it holds {pickles}, which llm-backbones does not unpickle" if pickles else "")
        + ". Download the checkpoint's *.safetensors files (openvla/openvla-7b has three shards and an "
        "index)."
    )


def _read_safetensors(names: Sequence[str], files: Mapping[str, Path]) -> dict[str, torch.Tensor]:
    """The tensors `names`, opening only the shards that hold them."""
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
            ) from exc
    return tensors


def _load_hf_layout(
    directory: Path,
    config: dict[str, Any],
    *,
    llm_backbone_id: str | None,
    dtype: torch.dtype | None,
    n_action_bins: int | None,
    llm_max_length: int | None,
    attn_implementation: str | None,
) -> LoadedVLA:
    backbone_id = llm_backbone_id or config.get("llm_backbone_id")
    if not isinstance(backbone_id, str) or not backbone_id:
        raise VLACheckpointError(
            f"{directory}/config.json names no llm_backbone_id (got {config.get('llm_backbone_id')!r}). Pass "
            "llm_backbone_id= the id the model was trained with (openvla-7b: 'llama2-7b-pure')."
        )
    spec = get_spec(backbone_id)
    expected = spec.llm_cls.config_class.model_type
    text_config = config.get("text_config")
    if not isinstance(text_config, dict):
        raise VLACheckpointError(
            f"{directory}/config.json has no text_config object (got {type(text_config).__name__}); an "
            "OpenVLA checkpoint keeps the LLM's config there. Restore config.json from the original "
            "checkpoint."
        )
    # [Contract] the LLM's config as OpenVLA's HF class builds it: text_config, whose missing fields take the
    # HF config class's defaults (openvla-7b was converted from a default LlamaConfig with vocab_size 32064
    # and pad_token_id 32000 set on top).
    text_config = {"model_type": expected, **text_config}
    if text_config["model_type"] != expected:
        raise VLACheckpointError(
            f"{directory}/config.json: text_config is a {text_config['model_type']!r} model, but "
            f"llm_backbone_id={backbone_id!r} ({spec.llm_family}) needs {expected!r}. Pass the "
            "llm_backbone_id the checkpoint was trained with."
        )
    files = _hf_weight_files(directory)
    llm_names = sorted(n for n in files if n.startswith(HF_LLM_PREFIX))
    unused = tuple(sorted(n for n in files if not n.startswith(HF_LLM_PREFIX)))
    if not llm_names:
        raise VLACheckpointError(
            f"The weights of {directory} hold no tensor under {HF_LLM_PREFIX!r} (found e.g. "
            f"{list(files)[:3]}): this is not the LLM of an OpenVLA / Prismatic HF checkpoint."
        )
    raw = _read_safetensors(llm_names, files)
    state = {BACKBONE_LLM_PREFIX + n[len(HF_LLM_PREFIX) :]: t for n, t in raw.items()}
    del raw
    tokenizer_files = [f for f in TOKENIZER_FILES if (directory / f).is_file()]
    if not any(f in tokenizer_files for f in ("tokenizer.json", "tokenizer.model")):
        raise VLACheckpointError(
            f"{directory} has no tokenizer (tokenizer.json or tokenizer.model). Copy the checkpoint's "
            "tokenizer files (with <PAD> added, as OpenVLA saved them) into it."
        )
    max_length = llm_max_length or config.get("llm_max_length") or DEFAULT_LLM_MAX_LENGTH
    with tempfile.TemporaryDirectory(prefix="llm-backbones-openvla-") as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(text_config, indent=2), encoding="utf-8")
        for name in tokenizer_files:
            shutil.copyfile(directory / name, Path(tmp) / name)
        backbone, tokenizer = get_llm_backbone_and_tokenizer(
            backbone_id,
            llm_max_length=max_length,
            model_path=tmp,
            **_backbone_kwargs(dtype or _stored_dtype(state), attn_implementation),
        )
    tokenizer.name_or_path = str(directory)
    pad = config.get("pad_token_id")
    if isinstance(pad, int) and pad != tokenizer.pad_token_id:
        raise VLACheckpointError(
            f"{directory}/config.json says pad_token_id={pad}, but its tokenizer's PAD "
            f"({tokenizer.pad_token!r}) is {tokenizer.pad_token_id}: the tokenizer files and the weights "
            "come from different checkpoints. Restore the tokenizer files of this checkpoint."
        )
    _load_llm_state(
        backbone, state, directory, name_of=lambda k: HF_LLM_PREFIX + k[len(BACKBONE_LLM_PREFIX) :]
    )
    norm_stats = config.get("norm_stats")
    if norm_stats is None and (directory / "dataset_statistics.json").is_file():
        norm_stats = _read_json(directory / "dataset_statistics.json", "the action statistics")
    return _finish(
        backbone,
        tokenizer,
        norm_stats,
        unused,
        backbone_id,
        "openvla-hf",
        directory,
        config,
        n_action_bins or config.get("n_action_bins") or DEFAULT_ACTION_BINS,
        n_llm=len(state),
    )


# --- Prismatic training layout ---
def _step_of(file: Path) -> int | None:
    match = _STEP.match(file.name)
    return int(match.group(1)) if match else None


def _find_training_checkpoint(path: Path, step: int | None) -> tuple[Path, Path]:
    """(the .pt file, the run directory) for a run directory or a .pt path."""
    if path.is_file():
        if step is not None:
            raise VLACheckpointError(
                f"step={step} selects a checkpoint of a run directory, but {path} is one checkpoint file. "
                "Drop step= or pass the run directory."
            )
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return path, run_dir
    folder = path / "checkpoints"
    steps = sorted((s, f.name, f) for f in folder.glob("step-*.pt") if (s := _step_of(f)) is not None)
    latest = folder / "latest-checkpoint.pt"
    available = [f.name for _, _, f in steps] + ([latest.name] if latest.is_file() else [])
    if step is not None:
        chosen = [f for s, _, f in steps if s == step]
        if len(chosen) != 1:
            raise VLACheckpointError(
                f"{folder} has {len(chosen) or 'no'} checkpoints of step {step}; available: "
                f"{available or 'none'}. Pass one of their steps, or the .pt file itself."
            )
        return chosen[0], path
    if steps:
        return steps[-1][2], path
    if latest.is_file():
        return latest, path
    raise VLACheckpointError(
        f"{folder} holds no checkpoint (step-*.pt or latest-checkpoint.pt). Pass the run directory of a "
        "finished save, or the .pt file itself."
    )


def _read_run_config(run_dir: Path) -> dict[str, Any]:
    """The run's config.json, else config.yaml (Prismatic writes both), else {}."""
    if (run_dir / "config.json").is_file():
        config = _read_json(run_dir / "config.json", "the run's config")
    elif (run_dir / "config.yaml").is_file():
        import yaml  # a transformers dependency

        try:
            config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
            raise VLACheckpointError(f"{run_dir / 'config.yaml'} cannot be read as YAML ({exc}).") from exc
    else:
        return {}
    if not isinstance(config, dict):
        raise VLACheckpointError(
            f"The config of {run_dir} holds a {type(config).__name__}, not an object of fields."
        )
    return config


def _prismatic_llm_id(config: Mapping[str, Any], run_dir: Path) -> str:
    """The LLM id of a run: `model.llm_backbone_id` (VLM runs), else the LLM of `vla.base_vlm` (VLA runs)."""
    model = config.get("model")
    if isinstance(model, Mapping) and isinstance(model.get("llm_backbone_id"), str):
        return model["llm_backbone_id"]
    vla = config.get("vla")
    base = vla.get("base_vlm") if isinstance(vla, Mapping) else None
    if isinstance(base, str):
        if base in PRISMATIC_MODEL_LLMS:
            return PRISMATIC_MODEL_LLMS[base]
        base_dir = Path(base).expanduser()
        if base_dir.is_dir():  # a base VLM given as its run directory
            inner = _read_run_config(base_dir).get("model")
            if isinstance(inner, Mapping) and isinstance(inner.get("llm_backbone_id"), str):
                return inner["llm_backbone_id"]
    where = f"{run_dir}/config.json" if config else f"{run_dir} (no config.json or config.yaml)"
    raise VLACheckpointError(
        f"Cannot tell the LLM of {where}: no model.llm_backbone_id, and vla.base_vlm={base!r} is not a known "
        "Prismatic model id or run directory. Pass llm_backbone_id= (e.g. 'llama2-7b-pure', OpenVLA's)."
    )


def _torch_load_model(file: Path) -> dict[str, Any]:
    """`torch.load(weights_only=True)["model"]`: tensors and containers only, never arbitrary objects."""
    try:
        try:
            checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # an old (non-zip) serialization cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VLACheckpointError(
            f"{file} holds objects other than tensors and plain containers, which llm-backbones does not "
            f"unpickle (torch.load(weights_only=True): {first}). Where you trust the file, re-save it as "
            "{'model': {'llm_backbone': state_dict, ...}} of tensors."
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise ModelWeightsError(
            f"{file} ({file.stat().st_size} bytes) cannot be read as a torch checkpoint ({exc}): it is "
            "truncated or corrupted. Copy the checkpoint again."
        ) from exc
    model = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get(PRISMATIC_LLM_KEY), Mapping):
        found: Any = model if isinstance(model, dict) else checkpoint
        found = sorted(found) if isinstance(found, dict) else type(found).__name__
        raise VLACheckpointError(
            f"{file} is not a Prismatic training checkpoint: expected {{'model': {{'llm_backbone': "
            f"state_dict, 'projector': ..., 'vision_backbone': ...}}}}, found keys {found!r:.160}. Pass a "
            "checkpoint of a Prismatic / OpenVLA training run (checkpoints/step-*.pt)."
        )
    return model


def _load_prismatic_layout(
    path: Path,
    *,
    llm_backbone_id: str | None,
    step: int | None,
    base_model_path: str | os.PathLike[str] | None,
    hf_token: str | None,
    dtype: torch.dtype | None,
    n_action_bins: int | None,
    llm_max_length: int | None,
    attn_implementation: str | None,
) -> LoadedVLA:
    checkpoint, run_dir = _find_training_checkpoint(path, step)
    config = _read_run_config(run_dir)
    backbone_id = llm_backbone_id or _prismatic_llm_id(config, run_dir)
    get_spec(backbone_id)  # an unknown id fails before the checkpoint is read
    model_cfg = config.get("model") if isinstance(config.get("model"), Mapping) else {}
    max_length = llm_max_length or model_cfg.get("llm_max_length") or DEFAULT_LLM_MAX_LENGTH
    model = _torch_load_model(checkpoint)
    state = dict(model[PRISMATIC_LLM_KEY])
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise VLACheckpointError(
            f"{checkpoint}: model['llm_backbone'] holds entries that are not named tensors (e.g. {bad[:3]}). "
            "Pass a checkpoint of a Prismatic / OpenVLA training run."
        )
    unused = tuple(
        sorted(
            f"{group}.{name}"
            for group, tensors in model.items()
            if group != PRISMATIC_LLM_KEY
            for name in (tensors if isinstance(tensors, Mapping) else {})
        )
    )
    kwargs = _backbone_kwargs(dtype or _stored_dtype(state), attn_implementation)
    if base_model_path is not None:
        kwargs["model_path"] = base_model_path
    try:
        backbone, tokenizer = get_llm_backbone_and_tokenizer(
            backbone_id, llm_max_length=max_length, hf_token=hf_token, **kwargs
        )
    except ModelPathError as exc:
        if base_model_path is not None:
            raise
        raise ModelPathError(
            f"{checkpoint} holds the LLM's weights but not its config and tokenizer, which come from the "
            f"base model of {backbone_id!r}, and that could not be loaded: {exc} Pass base_model_path= a "
            "local HF directory of the base model (config.json and tokenizer files)."
        ) from exc
    _load_llm_state(backbone, state, checkpoint, name_of=lambda k: f"{PRISMATIC_LLM_KEY}.{k}")
    statistics = run_dir / "dataset_statistics.json"
    norm_stats = _read_json(statistics, "the action statistics") if statistics.is_file() else {}
    return _finish(
        backbone,
        tokenizer,
        norm_stats,
        unused,
        backbone_id,
        "prismatic",
        checkpoint,
        config,
        n_action_bins or DEFAULT_ACTION_BINS,
        n_llm=len(state),
    )


# --- Both layouts ---
def _load_llm_state(
    backbone: HFCausalLLMBackbone,
    state: dict[str, torch.Tensor],
    source: Path,
    *,
    name_of: Callable[[str], str],
) -> None:
    """Load `state` (backbone names) strictly: every tensor of the backbone, nothing else, same shapes.

    A tensor shared by two names (tied embeddings) needs to be given under one of them. `name_of` turns a
    backbone name into the checkpoint's, for the messages.
    """
    own = backbone.state_dict(keep_vars=True)
    aliases: dict[int, set[str]] = {}
    for key, tensor in own.items():
        aliases.setdefault(id(tensor), set()).add(key)
    missing = sorted(k for k in own if k not in state and not aliases[id(own[k])] & state.keys())
    unexpected = sorted(k for k in state if k not in own)
    if missing or unexpected:
        shown_missing = [name_of(k) for k in missing]
        shown_unexpected = [name_of(k) for k in unexpected]
        raise StateDictMismatchError(
            f"The LLM weights of {source} do not match backbone {backbone.identifier!r}: "
            f"{len(missing)} missing {shown_missing[:10]}{' ...' if len(missing) > 10 else ''}, "
            f"{len(unexpected)} unexpected {shown_unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}. "
            "The checkpoint was trained with another LLM: pass its llm_backbone_id= (openvla-7b: "
            "'llama2-7b-pure').",
            shown_missing,
            shown_unexpected,
        )
    wrong = [
        f"{name_of(k)} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if tuple(v.shape) != tuple(own[k].shape)
    ]
    if wrong:
        raise ModelWeightsError(
            f"The LLM weights of {source} have other shapes than backbone {backbone.identifier!r} "
            f"(checkpoint vs backbone): {'; '.join(wrong[:5])}{' ...' if len(wrong) > 5 else ''}. The "
            "checkpoint's config does not describe its weights, or it was trained with another LLM: pass its "
            "llm_backbone_id=."
        )
    backbone.load_state_dict(state, strict=False)  # the backbone's: assigns onto meta, keeps its dtype
    loaded = backbone.state_dict(keep_vars=True)
    still_meta = [name_of(k) for k, t in loaded.items() if t.device.type == "meta"]
    if still_meta:
        raise StateDictMismatchError(
            f"After loading {source}, backbone {backbone.identifier!r} still has {len(still_meta)} tensors "
            f"without data: {still_meta[:10]}. The checkpoint lacks them.",
            still_meta,
            [],
        )


def _finish(
    backbone: HFCausalLLMBackbone,
    tokenizer: PreTrainedTokenizerBase,
    norm_stats: Any,
    unused: tuple[str, ...],
    backbone_id: str,
    layout: str,
    source: Path,
    config: dict[str, Any],
    n_action_bins: int,
    *,
    n_llm: int,
) -> LoadedVLA:
    if norm_stats is None:
        norm_stats = {}
    if not isinstance(norm_stats, dict):
        raise NormStatsError(
            f"The action statistics of {source} are a {type(norm_stats).__name__}, not "
            "{dataset: {'action': {...}}}. Restore norm_stats / dataset_statistics.json from the original "
            "run."
        )
    # [Contract] as Prismatic's load_vla for inference (freeze_weights): eval mode, no gradients.
    backbone.requires_grad_(False)
    backbone.eval()
    groups = Counter(name.split(".", 1)[0] for name in unused)
    more = f", ... ({len(unused) - 8} more in LoadedVLA.unused_tensors)" if len(unused) > 8 else ""
    logger.info(
        "Loaded the %s LLM (%d tensors) of %s (%s layout); left alone %d other tensors (%s): %s%s",
        backbone_id,
        n_llm,
        source,
        layout,
        len(unused),
        ", ".join(f"{g}: {n}" for g, n in sorted(groups.items())) or "none",
        ", ".join(unused[:8]),
        more,
    )
    return LoadedVLA(
        backbone=backbone,
        tokenizer=tokenizer,
        action_tokenizer=ActionTokenizer(tokenizer, bins=n_action_bins),
        norm_stats=norm_stats,
        unused_tensors=unused,
        llm_backbone_id=backbone_id,
        layout=layout,
        source=source,
        config=config,
    )


__all__ = [
    "LoadedVLA",
    "PRISMATIC_MODEL_LLMS",
    "check_unnorm_key",
    "get_action_stats",
    "load_vla_backbone",
    "unnormalize_actions",
]
