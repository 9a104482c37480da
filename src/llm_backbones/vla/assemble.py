"""`build_vla`: a fresh policy assembled from a registry LLM id and a Prismatic vision backbone id.

Where `load_vla` reads a trained OpenVLA / Prismatic checkpoint, `build_vla` puts a new one together, as
Prismatic's `get_vla` does before its first training step (and MiniVLA-style policies, e.g. Qwen2.5-0.5B with
a SigLIP tower, are trained from scratch):

- the LLM: the registry id's pretrained weights (`llm_model_path`, else its hub path; the embedded
  `llama2-tiny-pure` needs neither), its tokenizer with PAD as the id declares it, and OpenVLA's action
  tokens (the last `n_action_bins` ids of the base vocabulary);
- the vision towers of `VISION_BACKBONES`: random (timm's ViT initialisation, seeded) or timm's pretrained
  tensors from a safetensors file in timm's naming (`vision_weights`: a file, or `hf-hub:timm/<model id>`,
  timm's own spelling of a hub repository, whose `model.safetensors` is downloaded);
- a fresh projector (Prismatic's: fc1, GELU, fc2; fc1, GELU, fc2, GELU, fc3 for fused towers), PyTorch's
  default `nn.Linear` initialisation, seeded;
- the image processor of the vision id with `image_resize_strategy` (OpenVLA's default "letterbox").

The policy has no action statistics yet (`norm_stats` is empty): fine-tuning (`run_finetune_vla`) sets the
dataset's. Its export (`export_openvla`) is an HF OpenVLA checkpoint `load_vla` loads back; OpenVLA's own
code loads it only for LLaMA-2 ids (its HF classes build a LLaMA-2 LLM whatever `llm_backbone_id` says).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llm_backbones._redact import HubToken, redacting
from llm_backbones.core.backbones.factory import get_llm_backbone_and_tokenizer
from llm_backbones.core.backbones.files import (
    describe_non_finite,
    first_non_finite,
    read_tensors,
    safetensors_header,
)
from llm_backbones.core.registry import get_spec
from llm_backbones.data.actions import ActionTokenizer
from llm_backbones.errors import ModelPathError, NonFiniteWeightsError, VLACheckpointError
from llm_backbones.persistence.openvla import (
    DEFAULT_ACTION_BINS,
    DEFAULT_LLM_MAX_LENGTH,
    LoadedVLA,
)
from llm_backbones.vla.image_processing import RESIZE_STRATEGIES, ImageProcessor
from llm_backbones.vla.policy import VLAPolicy
from llm_backbones.vla.vision import (
    Projector,
    TowerSpec,
    VisionBackbone,
    VisionTower,
    expected_timm_names,
    get_vision_spec,
)

logger = logging.getLogger(__name__)

# OpenVLA's PrismaticConfig default, and load_vla's when a config.json names no strategy
DEFAULT_RESIZE_STRATEGY = "letterbox"
HUB_PREFIX = "hf-hub:"  # timm's spelling of "this model's weights from a hub repository"
HUB_WEIGHTS_FILE = "model.safetensors"  # what timm's hub repositories (timm/<model id>) hold
# [Contract] timm's ViT initialisation (`init_weights_vit_timm` and the model's own tokens): linear and
# patch-projection weights and the position table truncated normal (std 0.02, cut at +-2), biases zero,
# norms one, class and register tokens normal with std 1e-6, LayerScale at DINOv2's `init_values` (1e-5).
INIT_STD = 0.02
TOKEN_STD = 1e-6
LAYER_SCALE_INIT = 1e-5
# timm's classifier head (CLIP's projection, ImageNet logits): `create_model(num_classes=0)` drops it
_HEAD_PREFIX = "head."


def build_vla(
    llm_backbone_id: str,
    vision_backbone_id: str,
    *,
    llm_model_path: str | os.PathLike[str] | None = None,
    vision_weights: str | os.PathLike[str] | Sequence[str | os.PathLike[str] | None] | None = None,
    vision_depth: int | Sequence[int] | None = None,
    image_resize_strategy: str = DEFAULT_RESIZE_STRATEGY,
    n_action_bins: int = DEFAULT_ACTION_BINS,
    llm_max_length: int = DEFAULT_LLM_MAX_LENGTH,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    hf_token: str | HubToken | None = None,
    attn_implementation: str | None = None,
    constrain_to_actions: bool = True,
) -> VLAPolicy:
    """A new, untrained policy: a registry id's LLM, a vision backbone id's towers, a fresh projector.

    Args:
        llm_backbone_id: a registered LLM id (`llm-backbones list`; e.g. "qwen2.5-0.5b-pure", or the embedded
            "llama2-tiny-pure", which needs no files).
        vision_backbone_id: a key of `VISION_BACKBONES` (e.g. "siglip-vit-so400m", "dinosiglip-vit-so-224px").
        llm_model_path: a local HF directory of the LLM instead of its hub path.
        vision_weights: timm's pretrained tensors, one source per tower (a fused id takes a sequence of two,
            in the id's order; None keeps that tower random): a `.safetensors` file in timm's naming, or
            "hf-hub:timm/<model id>" (e.g. "hf-hub:timm/vit_so400m_patch14_siglip_224.webli"), downloaded
            with huggingface_hub. Default: every tower random.
        vision_depth: blocks per tower (one int, or one per tower), for small test and demo policies;
            default: the architecture's. A pretrained file's deeper blocks are left out (logged).
        image_resize_strategy: one of `RESIZE_STRATEGIES` (OpenVLA's default "letterbox").
        n_action_bins: OpenVLA's action bins (256): the last `n_action_bins` ids of the base vocabulary.
        llm_max_length: the tokenizer's `model_max_length` (Prismatic: 2048).
        seed: every random tensor (towers, projector, new embedding rows) follows from it; the caller's
            random state is left as it was.
        dtype: of every part (default: the LLM's, float32).
        device: where the policy runs (default: CPU).
        hf_token, attn_implementation: as `get_llm_backbone_and_tokenizer`'s.
        constrain_to_actions: as `load_vla`'s.

    Raises `UnknownBackboneError` (an unknown LLM id) or `VLACheckpointError` (an unknown vision id, a bad
    strategy, depth or seed), naming the accepted values; `ModelPathError` for a weights file that does not
    exist or is not safetensors; `StateDictMismatchError` for one that is not timm's tower of the id.
    """
    get_spec(llm_backbone_id)  # UnknownBackboneError listing the registered ids
    spec = get_vision_spec(vision_backbone_id)
    if image_resize_strategy not in RESIZE_STRATEGIES:
        raise VLACheckpointError(
            f"image_resize_strategy={image_resize_strategy!r} is not one of {RESIZE_STRATEGIES} "
            f"(Prismatic's); OpenVLA trains with {DEFAULT_RESIZE_STRATEGY!r}."
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise VLACheckpointError(f"seed must be an integer, got {seed!r:.40}.")
    if not isinstance(constrain_to_actions, bool):
        raise VLACheckpointError(f"constrain_to_actions must be True or False, got {constrain_to_actions!r}.")
    hf_token = HubToken.wrap(hf_token)
    with redacting(hf_token):
        sources = _weight_sources(vision_weights, spec.towers, hf_token)
        kwargs: dict[str, Any] = {"model_path": llm_model_path}
        if dtype is not None:
            kwargs["dtype"] = dtype
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
            torch.manual_seed(seed)
            backbone, tokenizer = get_llm_backbone_and_tokenizer(
                llm_backbone_id, llm_max_length=llm_max_length, hf_token=hf_token, **kwargs
            )
            action_tokenizer = ActionTokenizer(tokenizer, bins=n_action_bins)
            # the vision and projector draws do not depend on what building the LLM drew
            torch.manual_seed(seed)
            vision = VisionBackbone(spec, vision_depth)
            for tower, source in zip(vision.towers, sources, strict=True):
                _fill_tower(tower, source)
            projector = Projector(spec.embed_dim, backbone.embed_dim, fused=spec.fused)
            projector.to_empty(device="cpu")
            for layer in projector.modules():
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()
    # [Contract] as load_vla gives a policy: eval mode, no gradients (fine-tuning turns them on)
    target = dtype or next(backbone.parameters()).dtype
    for part in (backbone, vision, projector):
        part.to(dtype=target).eval().requires_grad_(False)
    arch = "no-align+fused-gelu-mlp" if spec.fused else "no-align+gelu-mlp"
    llm = LoadedVLA(
        backbone=backbone,
        tokenizer=tokenizer,
        action_tokenizer=action_tokenizer,
        norm_stats={},
        unused_tensors=(),
        llm_backbone_id=llm_backbone_id,
        layout="fresh",
        source=Path(llm_model_path) if llm_model_path is not None else Path(backbone.hf_hub_path),
        config={
            "llm_backbone_id": llm_backbone_id,
            "vision_backbone_id": vision_backbone_id,
            "arch_specifier": arch,
            "image_resize_strategy": image_resize_strategy,
            "n_action_bins": n_action_bins,
            "llm_max_length": llm_max_length,
        },
    )
    policy = VLAPolicy(
        llm=llm,
        vision=vision,
        projector=projector,
        image_processor=ImageProcessor.from_vision_spec(spec, image_resize_strategy),
        constrain_to_actions=constrain_to_actions,
    )
    logger.info(
        "Built a fresh %s + %s policy (towers: %s; seed %d)",
        llm_backbone_id,
        vision_backbone_id,
        ", ".join(
            f"{t.spec.timm_id} x{t.depth} {s or 'random'}"
            for t, s in zip(vision.towers, sources, strict=True)
        ),
        seed,
    )
    return policy.to(device) if device is not None else policy


# === The towers' weights ===
def _weight_sources(
    vision_weights: Any, towers: Sequence[TowerSpec], hf_token: HubToken | bool | None
) -> tuple[Path | None, ...]:
    """One local safetensors file (or None: random) per tower, hub sources downloaded."""
    if vision_weights is None:
        return (None,) * len(towers)
    given = [vision_weights] if isinstance(vision_weights, (str, os.PathLike)) else vision_weights
    if not isinstance(given, Sequence) or len(given) != len(towers):
        names = ", ".join(t.timm_id for t in towers)
        count = len(given) if isinstance(given, Sequence) else "no"
        raise VLACheckpointError(
            f"vision_weights={vision_weights!r:.200} gives {count} sources for {len(towers)} towers "
            f"({names}); pass one file (or hf-hub:timm/<model id>) per tower, in that order (None keeps a "
            "tower random)."
        )
    return tuple(_local_weights(source, tower, hf_token) for source, tower in zip(given, towers, strict=True))


def _local_weights(source: Any, tower: TowerSpec, hf_token: HubToken | bool | None) -> Path | None:
    if source is None:
        return None
    if not isinstance(source, (str, os.PathLike)):
        raise VLACheckpointError(
            "A vision weights source must be a path or 'hf-hub:timm/<model id>', got "
            f"{type(source).__name__}."
        )
    text = os.fspath(source)
    if text.startswith(HUB_PREFIX):
        return _download(text[len(HUB_PREFIX) :], tower, hf_token)
    path = Path(text).expanduser()
    if not path.is_file():
        raise ModelPathError(
            f"The vision weights {text!r} do not exist (or are not a file). Pass timm's model.safetensors of "
            f"{tower.timm_id}, or hf-hub:timm/<model id> to download it (e.g. hf-hub:timm/{tower.timm_id})."
        )
    if path.suffix != ".safetensors":
        raise ModelPathError(
            f"The vision weights {text!r} are not a .safetensors file; llm-backbones reads no pickles. "
            f"timm's hub repositories hold {HUB_WEIGHTS_FILE} (hf-hub:timm/<model id>)."
        )
    return path


def _download(repo_id: str, tower: TowerSpec, hf_token: HubToken | bool | None) -> Path:
    from huggingface_hub import hf_hub_download

    token = hf_token.for_hub() if isinstance(hf_token, HubToken) else hf_token
    try:
        return Path(hf_hub_download(repo_id, HUB_WEIGHTS_FILE, token=token))
    except Exception as exc:  # offline, unknown repository, no such file: one typed error naming the source
        raise ModelPathError(
            f"Cannot download {HUB_WEIGHTS_FILE} of {repo_id!r} for {tower.timm_id} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Check the repository id (timm/<model id>) and "
            "the network, or download the file and pass its path."
        ) from None


def _fill_tower(tower: VisionTower, source: Path | None) -> None:
    """Give `tower` its tensors: timm's from `source`, or timm's initialisation (the global RNG, seeded)."""
    if source is None:
        state = random_timm_state(tower.spec, tower.depth)
        tower.load_timm_state(state, source=f"random {tower.spec.timm_id}")
        return
    names = list(safetensors_header(source))
    state = read_tensors(names, dict.fromkeys(names, source))
    bad = first_non_finite(sorted(state.items()))
    if bad is not None:
        raise NonFiniteWeightsError(
            f"The vision tensor {bad[0]!r} of {source} holds {describe_non_finite(bad[1])}: the file is "
            "damaged. Download it again."
        )
    dropped = sorted(n for n in state if n.startswith(_HEAD_PREFIX))
    cut = sorted(n for n in state if _block_index(n) is not None and _block_index(n) >= tower.depth)
    for name in (*dropped, *cut):
        del state[name]
    if dropped or cut:
        logger.info(
            "%s: left out %d classifier-head tensors (timm's num_classes=0) and %d tensors of blocks >= %d "
            "(vision_depth)",
            source,
            len(dropped),
            len(cut),
            tower.depth,
        )
    _resample_positions(state, tower.spec, source)
    tower.load_timm_state(state, source=str(source))


def _block_index(name: str) -> int | None:
    head, _, rest = name.partition(".")
    index = rest.partition(".")[0]
    return int(index) if head == "blocks" and index.isdigit() else None


def _resample_positions(state: dict[str, torch.Tensor], tower: TowerSpec, source: Path) -> None:
    """timm's position table resized to the tower's patch grid, as `timm.create_model(img_size=...)` does
    when it loads weights trained at another resolution (bicubic, antialiased; class position kept)."""
    table = state.get("pos_embed")
    if table is None or table.ndim != 3:
        return
    prefix = 1 if tower.family in ("clip", "vit") else 0  # DINOv2 and SigLIP tables hold patches only
    patches = table.shape[1] - prefix
    side, want = math.isqrt(patches), tower.image_size // tower.patch_size
    if side * side != patches or side == want:
        return  # not a square grid (load_timm_state names the shape) or already the tower's
    grid = table[:, prefix:].reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    grid = nn.functional.interpolate(
        grid, size=(want, want), mode="bicubic", antialias=True, align_corners=False
    )
    grid = grid.permute(0, 2, 3, 1).reshape(1, want * want, -1).to(table.dtype)
    state["pos_embed"] = torch.cat([table[:, :prefix], grid], dim=1)
    logger.info("%s: position table resampled from %dx%d to %dx%d patches", source, side, side, want, want)


def random_timm_state(tower: TowerSpec, depth: int) -> dict[str, torch.Tensor]:
    """Every tensor of timm's `tower` with `depth` blocks (`expected_timm_names`), initialised as timm
    initialises a new ViT (see the constants), float32, from the global RNG (seed it first)."""
    state = {}
    for name, shape in expected_timm_names(tower, depth).items():
        tensor = torch.empty(shape)
        leaf = name.rsplit(".", 1)[-1]
        owner = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
        if leaf == "bias":
            nn.init.zeros_(tensor)
        elif leaf == "gamma":
            nn.init.constant_(tensor, LAYER_SCALE_INIT)
        elif leaf == "weight" and owner.startswith("norm"):
            nn.init.ones_(tensor)
        elif name in ("cls_token", "reg_token"):
            nn.init.normal_(tensor, std=TOKEN_STD)
        else:  # linear and patch-projection weights, the position table, SigLIP's pooling latent
            nn.init.trunc_normal_(tensor, std=INIT_STD, a=-2.0, b=2.0)  # timm's bounds
        state[name] = tensor
    return state


__all__ = ["DEFAULT_RESIZE_STRATEGY", "HUB_PREFIX", "build_vla", "random_timm_state"]
