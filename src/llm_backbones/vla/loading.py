"""`load_vla`: a whole OpenVLA / Prismatic checkpoint (vision towers, projector, LLM) as a `VLAPolicy`.

The LLM half goes through `load_vla_backbone` (the same strict, safetensors-only, contained loading); this
module adds the rest of the checkpoint's tensors, each accounted for:

- HF OpenVLA layout: `vision_backbone.featurizer.*` (and `vision_backbone.fused_featurizer.*`) and
  `projector.fc{1,2,3}.*` from the same safetensors shards; the vision backbone id and resize strategy from
  config.json (`vision_backbone_id`, `image_resize_strategy`, checked against `use_fused_vision_backbone`,
  `timm_model_ids`, `image_sizes`, `timm_override_act_layers`); the image preprocessing from
  `preprocessor_config.json` (else from the vision id).
- Prismatic training checkpoint (`{"model": {"vision_backbone", "projector", "llm_backbone"}}`, read with
  `torch.load(weights_only=True)`): `featurizer.*` or the fused towers' `dino_featurizer.*` +
  `siglip_featurizer.*` / `clip_featurizer.*`, `projector.{0,2,4}.*`; the vision id and strategy from the run
  config (`model.*`, or `vla.base_vlm` through Prismatic's model table).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from llm_backbones.core.backbones import files
from llm_backbones.errors import VLACheckpointError
from llm_backbones.persistence import openvla
from llm_backbones.vla.image_processing import RESIZE_STRATEGIES, ImageProcessor
from llm_backbones.vla.policy import VLAPolicy
from llm_backbones.vla.vision import (
    Projector,
    VisionBackbone,
    VisionBackboneSpec,
    get_vision_spec,
    prismatic_training_spec,
    timm_override_act_layers,
)

logger = logging.getLogger(__name__)

HF_VISION_PREFIX = "vision_backbone."
HF_PROJECTOR_PREFIX = "projector."
# Prismatic's fused backbones name their towers by family; OpenVLA's HF layout calls them featurizer /
# fused_featurizer (convert_openvla_weights_to_hf.py)
_PRISMATIC_TOWERS = {
    "featurizer": "featurizer",
    "dino_featurizer": "featurizer",
    "siglip_featurizer": "fused_featurizer",
    "clip_featurizer": "fused_featurizer",
}


def load_vla(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    vision_depth: int | Sequence[int] | None = None,
    constrain_to_actions: bool = True,
    llm_backbone_id: str | None = None,
    step: int | None = None,
    base_model_path: str | os.PathLike[str] | None = None,
    n_action_bins: int | None = None,
    llm_max_length: int | None = None,
    hf_token: str | None = None,
    attn_implementation: str | None = None,
    allow_external_files: bool = False,
) -> VLAPolicy:
    """Load an OpenVLA / Prismatic checkpoint as a policy: image + instruction -> action.

    Args:
        path: an HF OpenVLA directory (`openvla/openvla-7b` as downloaded), a Prismatic run directory, or a
            Prismatic `.pt` checkpoint.
        dtype: of every part (default: the dtype the LLM is stored in; OpenVLA's are bf16).
        device: where the policy runs (default: CPU).
        vision_depth: the towers' number of blocks when a checkpoint cuts them (tests); default: the
            architecture's (DINOv2-L 24, SigLIP-so400m 27, ...).
        constrain_to_actions: decode among the action tokens only (default), or OpenVLA's exact rule
            (argmax over the whole vocabulary, then its clipping) with False.
        The other arguments are `load_vla_backbone`'s.
    """
    if not isinstance(constrain_to_actions, bool):
        raise VLACheckpointError(f"constrain_to_actions must be True or False, got {constrain_to_actions!r}.")
    llm = openvla.load_vla_backbone(
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
    if llm.layout == "openvla-hf":
        spec, strategy = _hf_vision_config(llm.config, llm.source)
        vision_state, projector_state = _hf_vision_tensors(
            llm.source, llm.unused_tensors, allow_external=allow_external_files
        )
        processor = _hf_image_processor(llm.source, spec, strategy, allow_external=allow_external_files)
    else:
        spec, strategy = _prismatic_vision_config(llm.config, llm.source)
        vision_state, projector_state = _prismatic_vision_tensors(llm.source)
        processor = ImageProcessor.from_vision_spec(spec, strategy, prismatic=True)
    for part, tensors in (("vision_backbone", vision_state), ("projector", projector_state)):
        files.check_finite(  # the loaders' one check
            sorted(tensors.items()),
            llm.source,
            name_of=lambda name, part=part: f"{part}.{name}",
            fix="Restore it from the original (the checkpoint is damaged, or saved after a diverged step)",
        )
    vision = VisionBackbone(spec, vision_depth)
    set_aside: list[str] = []
    for attr, tower in (("featurizer", vision.featurizer), ("fused_featurizer", vision.fused_featurizer)):
        prefix = f"{attr}."
        state = {k[len(prefix) :]: v for k, v in vision_state.items() if k.startswith(prefix)}
        if tower is None:
            continue
        set_aside += [prefix + n for n in tower.load_timm_state(state, source=f"{llm.source} ({attr})")]
    towers = ("featurizer.",) if vision.fused_featurizer is None else ("featurizer.", "fused_featurizer.")
    stray = sorted(k for k in vision_state if not k.startswith(towers))
    if stray:
        raise VLACheckpointError(
            f"{llm.source} holds vision tensors of no tower of {spec.vision_backbone_id}: {stray[:6]}. The "
            "checkpoint's vision_backbone_id is another one."
        )
    llm_dim = llm.backbone.embed_dim
    projector = Projector(spec.embed_dim, llm_dim, fused=spec.fused)
    projector.load_named_state(projector_state, source=str(llm.source))
    target = dtype or next(llm.backbone.parameters()).dtype
    vision.to(dtype=target).eval().requires_grad_(False)
    projector.to(dtype=target).eval().requires_grad_(False)
    logger.info(
        "Loaded the %s vision backbone (%d tensors, %d set aside: the last block and heads its featurizer "
        "never reads) and the projector of %s",
        spec.vision_backbone_id,
        len(vision_state),
        len(set_aside),
        llm.source,
    )
    policy = VLAPolicy(
        llm=llm,
        vision=vision,
        projector=projector,
        image_processor=processor,
        constrain_to_actions=constrain_to_actions,
    )
    return policy.to(device) if device is not None else policy


# --- HF OpenVLA layout ---
def _hf_vision_config(config: Mapping[str, Any], source: Path) -> tuple[VisionBackboneSpec, str]:
    vision_id = config.get("vision_backbone_id")
    spec = get_vision_spec(vision_id)
    # OpenVLA's PrismaticConfig default when the field is absent
    strategy = config.get("image_resize_strategy", "letterbox")
    if strategy not in RESIZE_STRATEGIES:
        raise VLACheckpointError(
            f"{source}/config.json: image_resize_strategy={strategy!r} is not one of {RESIZE_STRATEGIES} "
            "(Prismatic's). Restore config.json from the original checkpoint."
        )

    def mismatch(field: str, found: object, expected: object) -> VLACheckpointError:
        return VLACheckpointError(
            f"{source}/config.json: {field}={found!r} does not fit vision_backbone_id={vision_id!r}, which "
            f"has {expected!r} (OpenVLA's configuration_prismatic.py). The file was edited or damaged: "
            "restore it from the original checkpoint."
        )

    fused = config.get("use_fused_vision_backbone")
    if fused is not None and fused is not spec.fused:
        raise mismatch("use_fused_vision_backbone", fused, spec.fused)
    checks = {
        "timm_model_ids": [t.timm_id for t in spec.towers],
        "image_sizes": [t.image_size for t in spec.towers],
        "timm_override_act_layers": timm_override_act_layers(spec),
    }
    for field, expected in checks.items():
        if field in config and config[field] != expected:
            raise mismatch(field, config[field], expected)
    return spec, strategy


def _hf_vision_tensors(
    directory: Path, names: Sequence[str], *, allow_external: bool = False
) -> tuple[dict, dict]:
    wanted = [n for n in names if n.startswith((HF_VISION_PREFIX, HF_PROJECTOR_PREFIX))]
    others = sorted(set(names) - set(wanted))
    if others:
        raise VLACheckpointError(
            f"{directory} holds tensors of no part of an OpenVLA model (neither language_model., "
            f"vision_backbone. nor projector.): {others[:8]}. It is not an OpenVLA checkpoint, or was edited."
        )
    tensors = files.read_tensors(wanted, openvla.hf_weight_files(directory, allow_external=allow_external))
    vision = {k[len(HF_VISION_PREFIX) :]: v for k, v in tensors.items() if k.startswith(HF_VISION_PREFIX)}
    projector = {
        k[len(HF_PROJECTOR_PREFIX) :]: v for k, v in tensors.items() if k.startswith(HF_PROJECTOR_PREFIX)
    }
    return vision, projector


def _hf_image_processor(
    directory: Path, spec: VisionBackboneSpec, strategy: str, *, allow_external: bool
) -> ImageProcessor:
    file = directory / "preprocessor_config.json"
    if not file.exists() and not file.is_symlink():
        return ImageProcessor.from_vision_spec(spec, strategy)
    file = files.contained(directory, file.name, allow_external=allow_external)
    config = files.read_json_object(file, "the image preprocessing", error=VLACheckpointError)
    processor = ImageProcessor.from_preprocessor_config(config, source=str(file))
    if config.get("image_resize_strategy") != strategy:
        raise VLACheckpointError(
            f"{file} says image_resize_strategy={config.get('image_resize_strategy')!r}, config.json "
            f"{strategy!r}: the files come from different checkpoints. Restore them from the original."
        )
    sizes = [t.crop for t in processor.transforms]
    if sizes != [(t.image_size, t.image_size) for t in spec.towers]:
        raise VLACheckpointError(
            f"{file} crops images to {sizes}, but {spec.vision_backbone_id} takes "
            f"{[t.image_size for t in spec.towers]} px: the files come from different checkpoints."
        )
    return processor


# --- Prismatic training layout ---
def _prismatic_vision_config(config: Mapping[str, Any], source: Path) -> tuple[VisionBackboneSpec, str]:
    vision_id, strategy = openvla.prismatic_vision_config(config)
    return prismatic_training_spec(get_vision_spec(vision_id)), strategy


def _prismatic_vision_tensors(file: Path) -> tuple[dict, dict]:
    model = openvla.torch_load_model(file)
    groups = sorted(model)
    unknown = [g for g in groups if g not in ("vision_backbone", "projector", "llm_backbone") and model[g]]
    if unknown:
        raise VLACheckpointError(
            f"{file} holds weights of {unknown}, which no part of an OpenVLA policy has (Prismatic's VLAs "
            "have vision_backbone, projector and llm_backbone)."
        )
    if not isinstance(model.get("vision_backbone"), Mapping) or not model["vision_backbone"]:
        raise VLACheckpointError(
            f"{file} holds no vision_backbone weights: the run froze the vision backbone, so its weights are "
            "timm's pretrained ones, which llm-backbones does not download. Convert the run to OpenVLA's HF "
            "layout with OpenVLA's script, or use a checkpoint that saved the vision backbone."
        )
    vision = {}
    for name, tensor in model["vision_backbone"].items():
        head, _, rest = name.partition(".")
        if head not in _PRISMATIC_TOWERS:
            raise VLACheckpointError(
                f"{file}: vision_backbone tensor {name!r} belongs to no known tower "
                f"({sorted(_PRISMATIC_TOWERS)})."
            )
        vision[f"{_PRISMATIC_TOWERS[head]}.{rest}"] = tensor
    projector = dict(model.get("projector") or {})
    return vision, projector


__all__ = ["load_vla"]
