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
raises `StateDictMismatchError` listing them; a NaN/inf one `NonFiniteWeightsError`; a file that resolves
outside the checkpoint folder `UnsafeFileError` (`files.contained`, the backbone loader's check); bad action
statistics `NormStatsError`, once, at load (`validate_norm_stats`).

`PRISMATIC_MODELS` is Prismatic's table of model ids (LLM, vision backbone, resize strategy, projector), how a
VLA run's config names its base model; `prismatic_vision_config` reads a run config's vision backbone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from llm_backbones import _args
from llm_backbones._redact import HubToken, redacting, rewrite_exception
from llm_backbones.core.backbones import files as _files
from llm_backbones.core.backbones.backbone import HFCausalLLMBackbone
from llm_backbones.core.backbones.factory import get_llm_backbone_and_tokenizer
from llm_backbones.core.registry import get_spec
from llm_backbones.data.actions import ActionTokenizer
from llm_backbones.data.norm_stats import (  # noqa: F401 (re-exported: their home before data.norm_stats)
    action_arrays,
    check_unnorm_key,
    get_action_stats,
    unnormalize_actions,
    validate_norm_stats,
)
from llm_backbones.errors import (
    ActionError,
    ModelPathError,
    ModelWeightsError,
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


@dataclass(frozen=True)
class PrismaticModel:
    """What one of Prismatic's model configs (`prismatic/conf/models.py`) is built of.

    Attributes:
        llm_backbone_id: the LLM (an id of this library's registry, e.g. "llama2-7b-pure").
        vision_backbone_id: the vision backbone (e.g. "dinosiglip-vit-so-224px").
        image_resize_strategy: "letterbox", "resize-naive" or "resize-crop".
        arch_specifier: the projector ("gelu-mlp", "no-align+gelu-mlp", "no-align+fused-gelu-mlp", ...).
    """

    llm_backbone_id: str
    vision_backbone_id: str
    image_resize_strategy: str
    arch_specifier: str


_P = PrismaticModel
# Prismatic's model ids (its ModelRegistry, openvla/openvla c8f03f4 prismatic/conf/models.py) with the fields
# each resolves to, inherited ones included (most subclass `Exp_7B_One_Stage`, i.e. LLaVa-v1.5-7B's vicuna +
# clip-vit-l-336px + letterbox with "no-align+gelu-mlp"). How a VLA run's config (`vla.base_vlm`) names the
# model it was trained from; every one has llm_max_length 2048. Written out as Prismatic declares them, its
# quirks included: "prism-siglip+13b" declares clip-vit-l-336px.
PRISMATIC_MODELS: Mapping[str, PrismaticModel] = MappingProxyType(
    {
        "reproduction-llava-v15+7b": _P("vicuna-v15-7b", "clip-vit-l-336px", "letterbox", "gelu-mlp"),
        "reproduction-llava-v15+13b": _P("vicuna-v15-13b", "clip-vit-l-336px", "letterbox", "gelu-mlp"),
        "one-stage+7b": _P("vicuna-v15-7b", "clip-vit-l-336px", "letterbox", "no-align+gelu-mlp"),
        "one-stage+13b": _P("vicuna-v15-13b", "clip-vit-l-336px", "letterbox", "no-align+gelu-mlp"),
        "full-ft-multi-stage+7b": _P("vicuna-v15-7b", "clip-vit-l-336px", "letterbox", "gelu-mlp"),
        "full-ft-one-stage+7b": _P("vicuna-v15-7b", "clip-vit-l-336px", "letterbox", "no-align+gelu-mlp"),
        "in1k-224px+7b": _P("vicuna-v15-7b", "in1k-vit-l", "letterbox", "no-align+gelu-mlp"),
        "dinov2-224px+7b": _P("vicuna-v15-7b", "dinov2-vit-l", "letterbox", "no-align+gelu-mlp"),
        "clip-224px+7b": _P("vicuna-v15-7b", "clip-vit-l", "letterbox", "no-align+gelu-mlp"),
        "siglip-224px+7b": _P("vicuna-v15-7b", "siglip-vit-so400m", "letterbox", "no-align+gelu-mlp"),
        "clip-336px-resize-crop+7b": _P(
            "vicuna-v15-7b", "clip-vit-l-336px", "resize-crop", "no-align+gelu-mlp"
        ),
        "clip-336px-resize-naive+7b": _P(
            "vicuna-v15-7b", "clip-vit-l-336px", "resize-naive", "no-align+gelu-mlp"
        ),
        "siglip-384px-letterbox+7b": _P(
            "vicuna-v15-7b", "siglip-vit-so400m-384px", "letterbox", "no-align+gelu-mlp"
        ),
        "siglip-384px-resize-crop+7b": _P(
            "vicuna-v15-7b", "siglip-vit-so400m-384px", "resize-crop", "no-align+gelu-mlp"
        ),
        "siglip-384px-resize-naive+7b": _P(
            "vicuna-v15-7b", "siglip-vit-so400m-384px", "resize-naive", "no-align+gelu-mlp"
        ),
        "dinoclip-336px-letterbox+7b": _P(
            "vicuna-v15-7b", "dinoclip-vit-l-336px", "letterbox", "no-align+fused-gelu-mlp"
        ),
        "dinoclip-336px-resize-naive+7b": _P(
            "vicuna-v15-7b", "dinoclip-vit-l-336px", "resize-naive", "no-align+fused-gelu-mlp"
        ),
        "dinosiglip-384px-letterbox+7b": _P(
            "vicuna-v15-7b", "dinosiglip-vit-so-384px", "letterbox", "no-align+fused-gelu-mlp"
        ),
        "dinosiglip-384px-resize-naive+7b": _P(
            "vicuna-v15-7b", "dinosiglip-vit-so-384px", "resize-naive", "no-align+fused-gelu-mlp"
        ),
        "llama2+7b": _P("llama2-7b-pure", "clip-vit-l-336px", "letterbox", "no-align+gelu-mlp"),
        "llama2+13b": _P("llama2-13b-pure", "clip-vit-l-336px", "letterbox", "no-align+gelu-mlp"),
        "llama2-chat+7b": _P("llama2-7b-chat", "clip-vit-l-336px", "letterbox", "no-align+gelu-mlp"),
        "llama2-chat+13b": _P("llama2-13b-chat", "clip-vit-l-336px", "letterbox", "no-align+gelu-mlp"),
        "mistral-v0.1+7b": _P("mistral-v0.1-7b-pure", "clip-vit-l-336px", "letterbox", "no-align+gelu-mlp"),
        "mistral-instruct-v0.1+7b": _P(
            "mistral-v0.1-7b-instruct", "clip-vit-l-336px", "letterbox", "no-align+gelu-mlp"
        ),
        "phi-2+3b": _P("phi-2-3b", "clip-vit-l-336px", "letterbox", "no-align+gelu-mlp"),
        "vicuna-no-cotraining+7b": _P("vicuna-v15-7b", "clip-vit-l-336px", "letterbox", "no-align+gelu-mlp"),
        "llama2-no-cotraining+7b": _P("llama2-7b-pure", "clip-vit-l-336px", "letterbox", "no-align+gelu-mlp"),
        "train-1.25-epochs+7b": _P("vicuna-v15-7b", "clip-vit-l-336px", "letterbox", "no-align+gelu-mlp"),
        "train-1.5-epochs+7b": _P("vicuna-v15-7b", "clip-vit-l-336px", "letterbox", "no-align+gelu-mlp"),
        "train-2-epochs+7b": _P("vicuna-v15-7b", "clip-vit-l-336px", "letterbox", "no-align+gelu-mlp"),
        "train-3-epochs+7b": _P("vicuna-v15-7b", "clip-vit-l-336px", "letterbox", "no-align+gelu-mlp"),
        "llava-lvis4v+7b": _P("vicuna-v15-7b", "clip-vit-l-336px", "letterbox", "no-align+gelu-mlp"),
        "llava-lrv+7b": _P("vicuna-v15-7b", "clip-vit-l-336px", "letterbox", "no-align+gelu-mlp"),
        "llava-lvis4v-lrv+7b": _P("vicuna-v15-7b", "clip-vit-l-336px", "letterbox", "no-align+gelu-mlp"),
        "prism-clip-controlled+7b": _P(
            "llama2-7b-pure", "clip-vit-l-336px", "resize-naive", "no-align+gelu-mlp"
        ),
        "prism-clip-controlled+13b": _P(
            "llama2-13b-pure", "clip-vit-l-336px", "resize-naive", "no-align+gelu-mlp"
        ),
        "prism-clip+7b": _P("llama2-7b-pure", "clip-vit-l-336px", "resize-naive", "no-align+gelu-mlp"),
        "prism-clip+13b": _P("llama2-13b-pure", "clip-vit-l-336px", "resize-naive", "no-align+gelu-mlp"),
        "prism-siglip-controlled+7b": _P(
            "llama2-7b-pure", "siglip-vit-so400m-384px", "resize-naive", "no-align+gelu-mlp"
        ),
        "prism-siglip-controlled+13b": _P(
            "llama2-13b-pure", "siglip-vit-so400m-384px", "resize-naive", "no-align+gelu-mlp"
        ),
        "prism-siglip+7b": _P(
            "llama2-7b-pure", "siglip-vit-so400m-384px", "resize-naive", "no-align+gelu-mlp"
        ),
        "prism-siglip+13b": _P("llama2-13b-pure", "clip-vit-l-336px", "resize-naive", "no-align+gelu-mlp"),
        "prism-dinosiglip-controlled+7b": _P(
            "llama2-7b-pure", "dinosiglip-vit-so-384px", "resize-naive", "no-align+fused-gelu-mlp"
        ),
        "prism-dinosiglip-controlled+13b": _P(
            "llama2-13b-pure", "dinosiglip-vit-so-384px", "resize-naive", "no-align+fused-gelu-mlp"
        ),
        "prism-dinosiglip+7b": _P(
            "llama2-7b-pure", "dinosiglip-vit-so-384px", "resize-naive", "no-align+fused-gelu-mlp"
        ),
        "prism-dinosiglip+13b": _P(
            "llama2-13b-pure", "dinosiglip-vit-so-384px", "resize-naive", "no-align+fused-gelu-mlp"
        ),
        "dinosiglip-224px-resize-naive+7b": _P(
            "vicuna-v15-7b", "dinosiglip-vit-so-224px", "resize-naive", "no-align+fused-gelu-mlp"
        ),
        "prism-dinosiglip-224px-controlled+7b": _P(
            "llama2-7b-pure", "dinosiglip-vit-so-224px", "resize-naive", "no-align+fused-gelu-mlp"
        ),
        "prism-dinosiglip-224px+7b": _P(
            "llama2-7b-pure", "dinosiglip-vit-so-224px", "resize-naive", "no-align+fused-gelu-mlp"
        ),
    }
)
# The LLM of each Prismatic model id (a view of PRISMATIC_MODELS).
PRISMATIC_MODEL_LLMS: Mapping[str, str] = MappingProxyType(
    {model_id: model.llm_backbone_id for model_id, model in PRISMATIC_MODELS.items()}
)


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
        layout: "openvla-hf" or "prismatic" (or "fresh": a new policy of `build_vla`).
        source: the directory (HF layout) or `.pt` file (Prismatic) the weights came from (`build_vla`: the
            LLM's model path or hub path).
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
    hf_token: str | HubToken | None = None,
    attn_implementation: str | None = None,
    allow_external_files: bool = False,
) -> LoadedVLA:
    """Load the LLM backbone, tokenizer, action tokenizer and action statistics of an OpenVLA / Prismatic
    checkpoint (see the module docstring for both layouts).

    Before a weight is read: every file of the checkpoint that is read (config.json, the tokenizer files,
    the shard index and shards, dataset_statistics.json; a run's config and checkpoints/*.pt) must lie inside
    its folder, symlinks followed (`UnsafeFileError`; a hub-cache snapshot's links into its blob store are
    inside); `n_action_bins` and `llm_max_length` are checked, and the action statistics of every dataset
    (`validate_norm_stats`). After: no LLM weight is NaN or infinite (`NonFiniteWeightsError`).

    Args:
        path: an HF OpenVLA directory, a Prismatic run directory, or a Prismatic `.pt` checkpoint file.
        llm_backbone_id: overrides the id the checkpoint names (e.g. to load it as a compatible registered
            id).
        step: Prismatic run directory only: the training step to load (default: the highest step).
        base_model_path: Prismatic only: a local HF directory of the base LLM (config and tokenizer) instead
            of the id's hub path; the HF layout carries its own.
        dtype: the backbone's dtype (default: the dtype the LLM tensors are stored in).
        n_action_bins: overrides the checkpoint's number of action bins (an integer >= 2 whose action tokens
            fit the vocabulary; Prismatic checkpoints do not store it: 256, Prismatic's default).
        llm_max_length: overrides the checkpoint's `llm_max_length` (the tokenizer's `model_max_length`; a
            positive integer).
        hf_token: for the base model on the hub (Prismatic layout); a str or a `HubToken`, wrapped at once
            so that no frame of the load holds the plain token.
        attn_implementation: passed to the backbone (default: flash-attention-2 where it can run, else sdpa).
        allow_external_files: read files that resolve outside the checkpoint folder (symlinks pointing
            elsewhere) instead of refusing them; only for a folder whose links you trust.
    """
    hf_token = HubToken.wrap(hf_token)  # first: from here on no frame of the load holds the plain token
    with redacting(hf_token):
        return _load_vla_backbone(
            path,
            llm_backbone_id=llm_backbone_id,
            step=step,
            base_model_path=base_model_path,
            dtype=dtype,
            n_action_bins=n_action_bins,
            llm_max_length=llm_max_length,
            hf_token=hf_token,
            attn_implementation=attn_implementation,
            allow_external_files=allow_external_files,
        )


def _load_vla_backbone(
    path: str | os.PathLike[str],
    *,
    llm_backbone_id: str | None,
    step: int | None,
    base_model_path: str | os.PathLike[str] | None,
    dtype: torch.dtype | None,
    n_action_bins: int | None,
    llm_max_length: int | None,
    hf_token: HubToken | bool | None,
    attn_implementation: str | None,
    allow_external_files: bool,
) -> LoadedVLA:
    if not isinstance(path, (str, os.PathLike)):
        raise ModelPathError(f"path must be a str or a path, got {type(path).__name__}: {path!r:.80}.")
    _args.check_bool(
        allow_external_files,
        "allow_external_files",
        error=VLACheckpointError,
        fix="Pass allow_external_files=True only for a checkpoint folder whose symlinks you trust.",
    )
    # The arguments first, before any file is read.
    if n_action_bins is not None:
        _check_action_bins(n_action_bins, "n_action_bins= (the argument)")
    if llm_max_length is not None:
        _files.check_llm_max_length(llm_max_length, "llm_max_length= (the argument)")
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelPathError(
            f"{str(path)!r} does not exist. Pass an HF OpenVLA directory (config.json, *.safetensors, "
            "tokenizer), a Prismatic run directory (config.json, checkpoints/step-*.pt) or a Prismatic .pt "
            "checkpoint."
        )
    common: dict[str, Any] = {
        "dtype": dtype,
        "n_action_bins": n_action_bins,
        "llm_max_length": llm_max_length,
        "attn_implementation": attn_implementation,
        "allow_external": allow_external_files,
    }
    hf_config = _read_hf_config(path, allow_external=allow_external_files) if path.is_dir() else None
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
    """`files.read_json` with this layout's error (`VLACheckpointError`)."""
    return _files.read_json(file, what, error=VLACheckpointError)


def _contained_if_present(directory: Path, name: str, *, allow_external: bool) -> Path | None:
    """`directory / name` if it exists (or is a dangling link), refused (`UnsafeFileError`) when it resolves
    outside `directory` (the loaders' one containment check, `files.contained`); None if absent."""
    file = directory / name
    if not (file.exists() or file.is_symlink()):
        return None
    return _files.contained(directory, name, allow_external=allow_external)


def _read_hf_config(directory: Path, *, allow_external: bool = False) -> dict[str, Any] | None:
    """config.json of an HF OpenVLA / Prismatic checkpoint, or None if `directory` is not one."""
    file = _contained_if_present(directory, "config.json", allow_external=allow_external)
    if file is None or not file.is_file():
        return None
    config = _read_json(file, "the checkpoint's config")
    if isinstance(config, dict) and config.get("model_type") in HF_MODEL_TYPES:
        return config
    return None


def _stored_dtype(state: Mapping[str, torch.Tensor]) -> torch.dtype:
    """The dtype the LLM's floating tensors are stored in (the most common one)."""
    counts = Counter(t.dtype for t in state.values() if t.is_floating_point())
    return counts.most_common(1)[0][0] if counts else torch.float32


def _backbone_kwargs(
    dtype: torch.dtype, attn_implementation: str | None, allow_external: bool
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"inference_mode": True, "dtype": dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if allow_external:
        kwargs["allow_external_files"] = True
    return kwargs


def _check_action_bins(value: object, where: str) -> int:
    """`n_action_bins` as OpenVLA's ActionTokenizer takes it: an integer >= 2 (not a bool); whether its
    tokens fit the vocabulary is `ActionTokenizer`'s check."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise VLACheckpointError(
            f"{where}: n_action_bins={value!r:.40} is not accepted: the number of action bins must be an "
            "integer >= 2 (OpenVLA's is 256). Fix the value (restore config.json from the original "
            "checkpoint, or pass n_action_bins=256)."
        )
    return value


def _action_tokenizer(tokenizer: PreTrainedTokenizerBase, bins: int, where: str) -> ActionTokenizer:
    """The `ActionTokenizer` of `bins` bins, or `VLACheckpointError` naming where `bins` came from."""
    try:
        return ActionTokenizer(tokenizer, bins=bins)
    except ActionError as exc:
        raise VLACheckpointError(
            f"{where}: n_action_bins={bins} does not fit the tokenizer: {exc} Pass the n_action_bins the "
            "model was trained with (OpenVLA's is 256)."
        ) from exc


def _setting(override: Any, config: Mapping[str, Any], key: str, default: Any, where: str) -> tuple[Any, str]:
    """(value, where it came from) of a setting: the argument, else `config[key]` (None counts as absent),
    else `default`. Never `or`: a 0 read from a file is a value to refuse, not "absent"."""
    if override is not None:
        return override, f"{key}= (the argument)"
    if config.get(key) is not None:
        return config[key], where
    return default, f"the default {key}"


@contextlib.contextmanager
def _errors_naming(tmp: Path, directory: Path) -> Iterator[None]:
    """Errors raised within name the checkpoint `directory`, not the temporary folder `tmp` that holds its
    LLM config (config.json's text_config) and tokenizer files while the backbone loader reads them."""
    try:
        yield
    except Exception as exc:
        olds = dict.fromkeys([str(tmp), str(tmp.resolve())])
        replacements = [(f"{old}/config.json", f"{directory}/config.json (text_config)") for old in olds]
        replacements += [(old, str(directory)) for old in olds]

        def fix(value: str) -> str:
            for old, new in replacements:
                value = value.replace(old, new)
            return value

        rewrite_exception(exc, fix)
        raise


# --- HF OpenVLA layout ---
def hf_weight_files(directory: Path, *, allow_external: bool = False) -> dict[str, Path]:
    """{tensor name: safetensors file} of an HF OpenVLA directory (`files.tensor_files`: its shard index, or
    one model.safetensors; every file safetensors and inside `directory`, symlinks followed, unless
    `allow_external`); `VLACheckpointError` naming what it holds when it has no safetensors weights."""
    files = _files.tensor_files(directory, allow_external=allow_external)
    if files:
        return files
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    raise VLACheckpointError(
        f"{directory} has no safetensors weights (neither model.safetensors.index.json nor "
        "model.safetensors)"
        + (f"; it holds {pickles}, which llm-backbones does not unpickle" if pickles else "")
        + ". Download the checkpoint's *.safetensors files (openvla/openvla-7b has three shards and an "
        "index)."
    )


def _load_hf_layout(
    directory: Path,
    config: dict[str, Any],
    *,
    llm_backbone_id: str | None,
    dtype: torch.dtype | None,
    n_action_bins: int | None,
    llm_max_length: int | None,
    attn_implementation: str | None,
    allow_external: bool,
) -> LoadedVLA:
    config_file = f"{directory}/config.json"
    backbone_id = llm_backbone_id or config.get("llm_backbone_id")
    if not isinstance(backbone_id, str) or not backbone_id:
        raise VLACheckpointError(
            f"{config_file} names no llm_backbone_id (got {config.get('llm_backbone_id')!r}). Pass "
            "llm_backbone_id= the id the model was trained with (openvla-7b: 'llama2-7b-pure')."
        )
    spec = get_spec(backbone_id)
    expected = spec.llm_cls.config_class.model_type
    text_config = config.get("text_config")
    if not isinstance(text_config, dict):
        raise VLACheckpointError(
            f"{config_file} has no text_config object (got {type(text_config).__name__}); an "
            "OpenVLA checkpoint keeps the LLM's config there. Restore config.json from the original "
            "checkpoint."
        )
    # [Contract] the LLM's config as OpenVLA's HF class builds it: text_config, whose missing fields take the
    # HF config class's defaults (openvla-7b was converted from a default LlamaConfig with vocab_size 32064
    # and pad_token_id 32000 set on top).
    text_config = {"model_type": expected, **text_config}
    if text_config["model_type"] != expected:
        raise VLACheckpointError(
            f"{config_file}: text_config is a {text_config['model_type']!r} model, but "
            f"llm_backbone_id={backbone_id!r} ({spec.llm_family}) needs {expected!r}. Pass the "
            "llm_backbone_id the checkpoint was trained with."
        )
    bins, bins_from = _setting(n_action_bins, config, "n_action_bins", DEFAULT_ACTION_BINS, config_file)
    _check_action_bins(bins, bins_from)
    max_length, length_from = _setting(
        llm_max_length, config, "llm_max_length", DEFAULT_LLM_MAX_LENGTH, config_file
    )
    max_length = _files.check_llm_max_length(max_length, length_from)
    # Every file read below lies inside the checkpoint folder (symlinks followed), before any is read.
    _files.check_local_files(directory, allow_external=allow_external)
    statistics = _contained_if_present(directory, "dataset_statistics.json", allow_external=allow_external)
    norm_stats, stats_from = config.get("norm_stats"), config_file
    if norm_stats is None and statistics is not None and statistics.is_file():
        norm_stats = _read_json(statistics, "the action statistics")
        stats_from = str(statistics)
    norm_stats = validate_norm_stats({} if norm_stats is None else norm_stats, source=stats_from)
    files = hf_weight_files(directory, allow_external=allow_external)
    llm_names = sorted(n for n in files if n.startswith(HF_LLM_PREFIX))
    unused = tuple(sorted(n for n in files if not n.startswith(HF_LLM_PREFIX)))
    if not llm_names:
        raise VLACheckpointError(
            f"The weights of {directory} hold no tensor under {HF_LLM_PREFIX!r} (found e.g. "
            f"{list(files)[:3]}): this is not the LLM of an OpenVLA / Prismatic HF checkpoint."
        )
    raw = _files.read_tensors(llm_names, files)
    state = {BACKBONE_LLM_PREFIX + n[len(HF_LLM_PREFIX) :]: t for n, t in raw.items()}
    del raw

    def hf_name(key: str) -> str:
        return HF_LLM_PREFIX + key[len(BACKBONE_LLM_PREFIX) :]

    tokenizer_files = [f for f in TOKENIZER_FILES if (directory / f).is_file()]
    if not any(f in tokenizer_files for f in ("tokenizer.json", "tokenizer.model")):
        raise VLACheckpointError(
            f"{directory} has no tokenizer (tokenizer.json or tokenizer.model). Copy the checkpoint's "
            "tokenizer files (with <PAD> added, as OpenVLA saved them) into it."
        )
    # The backbone loader reads an HF folder: the LLM's config (text_config) and the tokenizer files go to a
    # temporary one, and any error it raises names the checkpoint instead.
    with tempfile.TemporaryDirectory(prefix="llm-backbones-openvla-") as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(text_config, indent=2), encoding="utf-8")
        for name in tokenizer_files:
            shutil.copyfile(directory / name, Path(tmp) / name)
        with _errors_naming(Path(tmp), directory):
            backbone, tokenizer = get_llm_backbone_and_tokenizer(
                backbone_id,
                llm_max_length=max_length,
                model_path=tmp,
                **_backbone_kwargs(dtype or _stored_dtype(state), attn_implementation, False),
            )
    tokenizer.name_or_path = str(directory)
    backbone.llm.config._name_or_path = str(directory)
    pad = config.get("pad_token_id")
    if isinstance(pad, int) and pad != tokenizer.pad_token_id:
        raise VLACheckpointError(
            f"{config_file} says pad_token_id={pad}, but its tokenizer's PAD "
            f"({tokenizer.pad_token!r}) is {tokenizer.pad_token_id}: the tokenizer files and the weights "
            "come from different checkpoints. Restore the tokenizer files of this checkpoint."
        )
    action_tokenizer = _action_tokenizer(tokenizer, bins, bins_from)
    _load_llm_state(backbone, state, directory, name_of=hf_name, file_of=lambda k: files[hf_name(k)])
    return _finish(
        backbone,
        tokenizer,
        norm_stats,
        unused,
        backbone_id,
        "openvla-hf",
        directory,
        config,
        action_tokenizer,
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


def _read_run_config(run_dir: Path, *, allow_external: bool = False) -> dict[str, Any]:
    """The run's config.json, else config.yaml (Prismatic writes both), else {}; each inside `run_dir`."""
    config_json = _contained_if_present(run_dir, "config.json", allow_external=allow_external)
    config_yaml = _contained_if_present(run_dir, "config.yaml", allow_external=allow_external)
    if config_json is not None and config_json.is_file():
        config = _read_json(config_json, "the run's config")
    elif config_yaml is not None and config_yaml.is_file():
        import yaml  # a transformers dependency

        try:
            config = yaml.safe_load(config_yaml.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
            raise VLACheckpointError(f"{config_yaml} cannot be read as YAML ({exc}).") from exc
    else:
        return {}
    if not isinstance(config, dict):
        raise VLACheckpointError(
            f"The config of {run_dir} holds a {type(config).__name__}, not an object of fields."
        )
    return config


def _run_model_fields(config: Mapping[str, Any], names: tuple[str, ...]) -> tuple[dict[str, str] | None, str]:
    """The fields `names` of a run's model, and what was found (for a message when they are not there).

    From `model.*` (VLM runs: Prismatic's ModelConfig) when it holds them all; else through `vla.base_vlm`
    (VLA runs): a Prismatic model id (`PRISMATIC_MODELS`), or the base VLM's run directory (its `model.*`).
    """
    model = config.get("model") if isinstance(config, Mapping) else None
    if isinstance(model, Mapping) and all(isinstance(model.get(n), str) for n in names):
        return {n: model[n] for n in names}, "model"
    vla = config.get("vla") if isinstance(config, Mapping) else None
    base = vla.get("base_vlm") if isinstance(vla, Mapping) else None
    if isinstance(base, str) and base in PRISMATIC_MODELS:
        entry = PRISMATIC_MODELS[base]
        return {n: getattr(entry, n) for n in names}, f"vla.base_vlm={base!r}"
    if isinstance(base, str) and base and Path(base).expanduser().is_dir():  # the base VLM's run directory
        inner = _read_run_config(Path(base).expanduser()).get("model")
        if isinstance(inner, Mapping) and all(isinstance(inner.get(n), str) for n in names):
            return {n: inner[n] for n in names}, f"vla.base_vlm={base!r}"
    if isinstance(model, Mapping):
        found = "model." + ", model.".join(f"{n}={model.get(n)!r:.40}" for n in names)
    elif isinstance(config, Mapping):
        close = closest(base, PRISMATIC_MODELS) if isinstance(base, str) else []
        hint = f" (not a Prismatic model id; closest: {', '.join(close)})" if close else ""
        found = f"no model object, vla.base_vlm={base!r:.80}{hint}"
    else:
        found = f"a {type(config).__name__}, not a run config"
    return None, found


def prismatic_vision_config(config: Mapping[str, Any]) -> tuple[str, str]:
    """(vision_backbone_id, image_resize_strategy) of a Prismatic run config: `model.vision_backbone_id` and
    `model.image_resize_strategy` (VLM runs), else those of the model `vla.base_vlm` names (VLA runs; a
    Prismatic model id of `PRISMATIC_MODELS`, or the base VLM's run directory). `VLACheckpointError` naming
    what was found otherwise."""
    names = ("vision_backbone_id", "image_resize_strategy")
    fields, found = _run_model_fields(config, names)
    if fields is None:
        raise VLACheckpointError(
            f"Cannot tell the vision backbone of this run config: found {found}. Expected "
            "model.vision_backbone_id and model.image_resize_strategy (a VLM run), or vla.base_vlm naming a "
            "Prismatic model id (e.g. 'prism-dinosiglip-224px+7b', OpenVLA's; see PRISMATIC_MODELS) or the "
            "base VLM's run directory. Restore the run's config.json from the original run."
        )
    return fields["vision_backbone_id"], fields["image_resize_strategy"]


def _prismatic_llm_id(config: Mapping[str, Any], run_dir: Path) -> str:
    """The LLM id of a run: `model.llm_backbone_id` (VLM runs), else the LLM of `vla.base_vlm` (VLA runs)."""
    fields, found = _run_model_fields(config, ("llm_backbone_id",))
    if fields is not None:
        return fields["llm_backbone_id"]
    where = f"{run_dir}/config.json" if config else f"{run_dir} (no config.json or config.yaml)"
    raise VLACheckpointError(
        f"Cannot tell the LLM of {where}: found {found}, and no model.llm_backbone_id or vla.base_vlm naming "
        "a known Prismatic model id or run directory. Pass llm_backbone_id= (e.g. 'llama2-7b-pure', "
        "OpenVLA's)."
    )


def torch_load_model(file: Path) -> dict[str, Any]:
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
    hf_token: HubToken | bool | None,
    dtype: torch.dtype | None,
    n_action_bins: int | None,
    llm_max_length: int | None,
    attn_implementation: str | None,
    allow_external: bool,
) -> LoadedVLA:
    checkpoint, run_dir = _find_training_checkpoint(path, step)
    if (
        checkpoint != path
    ):  # found in the run directory: it lies inside it (a .pt passed itself is the caller's)
        _files.contained(run_dir, str(checkpoint.relative_to(run_dir)), allow_external=allow_external)
    config = _read_run_config(run_dir, allow_external=allow_external)
    backbone_id = llm_backbone_id or _prismatic_llm_id(config, run_dir)
    get_spec(backbone_id)  # an unknown id fails before the checkpoint is read
    model_cfg = config.get("model") if isinstance(config.get("model"), Mapping) else {}
    max_length, length_from = _setting(
        llm_max_length,
        model_cfg,
        "llm_max_length",
        DEFAULT_LLM_MAX_LENGTH,
        f"The run config of {run_dir} (model)",
    )
    max_length = _files.check_llm_max_length(max_length, length_from)
    bins, bins_from = (
        (n_action_bins, "n_action_bins= (the argument)")
        if n_action_bins is not None
        else (DEFAULT_ACTION_BINS, "the default n_action_bins (Prismatic's)")
    )
    statistics = _contained_if_present(run_dir, "dataset_statistics.json", allow_external=allow_external)
    norm_stats: Any = {}
    if statistics is not None and statistics.is_file():
        norm_stats = _read_json(statistics, "the action statistics")
    norm_stats = validate_norm_stats(norm_stats, source=str(statistics) if statistics else None)
    model = torch_load_model(checkpoint)
    state = dict(model[PRISMATIC_LLM_KEY])
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise VLACheckpointError(
            f"{checkpoint}: model['llm_backbone'] holds entries that are not named tensors (e.g. {bad[:3]}). "
            "Pass a checkpoint of a Prismatic / OpenVLA training run."
        )

    def name_of(key: str) -> str:
        return f"{PRISMATIC_LLM_KEY}.{key}"

    unused = tuple(
        sorted(
            f"{group}.{name}"
            for group, tensors in model.items()
            if group != PRISMATIC_LLM_KEY
            for name in (tensors if isinstance(tensors, Mapping) else {})
        )
    )
    kwargs = _backbone_kwargs(dtype or _stored_dtype(state), attn_implementation, allow_external)
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
    action_tokenizer = _action_tokenizer(tokenizer, bins, bins_from)
    _load_llm_state(backbone, state, checkpoint, name_of=name_of, file_of=lambda k: checkpoint)
    return _finish(
        backbone,
        tokenizer,
        norm_stats,
        unused,
        backbone_id,
        "prismatic",
        checkpoint,
        config,
        action_tokenizer,
        n_llm=len(state),
    )


# --- Both layouts ---
def _load_llm_state(
    backbone: HFCausalLLMBackbone,
    state: dict[str, torch.Tensor],
    source: Path,
    *,
    name_of: Callable[[str], str],
    file_of: Callable[[str], Path],
) -> None:
    """Load `state` (backbone names) strictly, through the loaders' one path (`files.assign_strict`): every
    tensor of the backbone, nothing else, same shapes, no NaN/inf. A tensor shared by two names (tied
    embeddings) needs to be given under one of them. `name_of` turns a backbone name into the checkpoint's,
    for the messages."""
    _files.assign_strict(
        backbone,
        state,
        source=source,
        what=f"The LLM weights of {source}",
        fix=(
            f"The checkpoint was trained with another LLM than {backbone.identifier!r}: pass its "
            "llm_backbone_id= (openvla-7b: 'llama2-7b-pure')"
        ),
        name_of=name_of,
        file_of=file_of,
    )


def _finish(
    backbone: HFCausalLLMBackbone,
    tokenizer: PreTrainedTokenizerBase,
    norm_stats: dict[str, Any],
    unused: tuple[str, ...],
    backbone_id: str,
    layout: str,
    source: Path,
    config: dict[str, Any],
    action_tokenizer: ActionTokenizer,
    *,
    n_llm: int,
) -> LoadedVLA:
    """`norm_stats` are those `validate_norm_stats` returned."""
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
        action_tokenizer=action_tokenizer,
        norm_stats=norm_stats,
        unused_tensors=unused,
        llm_backbone_id=backbone_id,
        layout=layout,
        source=source,
        config=config,
    )


__all__ = [
    "LoadedVLA",
    "PRISMATIC_MODELS",
    "PRISMATIC_MODEL_LLMS",
    "PrismaticModel",
    "check_unnorm_key",
    "get_action_stats",
    "hf_weight_files",
    "load_vla_backbone",
    "prismatic_vision_config",
    "torch_load_model",
    "unnormalize_actions",
    "validate_norm_stats",
]
