"""The vision half of OpenVLA / Prismatic: timm's ViT towers, run as transformers' own vision models.

OpenVLA builds each tower with `timm.create_model(id, pretrained=False, num_classes=0, img_size=...,
act_layer=...)` and reads the patch tokens of its SECOND-TO-LAST block (`get_intermediate_layers(n={depth -
2})`: no final norm, class and register tokens dropped); a fused backbone (DINOv2 + SigLIP, DINOv2 + CLIP)
concatenates the two towers' patches on the feature dimension. Here the same towers are transformers'
`Dinov2WithRegistersModel`, `SiglipVisionModel`, `CLIPVisionModel` and `ViTModel`, configured to timm's
architecture (activation, norm eps, token layout) and given timm's tensors (the fused `qkv` split into q/k/v,
the class position of DINOv2's patch-only position table zero): no timm and no torchvision needed, and the
same patch features as OpenVLA's code (tests/golden/fixtures/openvla_policy, made by it).

`VISION_BACKBONES` holds every vision backbone id Prismatic and OpenVLA ship. A tower is built with only the
blocks the featurizer reads (depth - 1); the last block's tensors are checked and set aside, like SigLIP's
unused attention-pool head. The tower keeps them (`VisionTower.set_aside`, on CPU), so that
`VisionTower.timm_state_dict()` gives back every tensor timm's model holds (an export writes them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from llm_backbones.core.backbones.loading import parameters_on_meta
from llm_backbones.errors import ImageError, StateDictMismatchError, VLACheckpointError, closest

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class TowerSpec:
    """One timm ViT as OpenVLA creates it (timm 0.9.x), and its preprocessing (timm's data config).

    family: which transformers model runs it ("dinov2": Dinov2WithRegistersModel, "siglip": SiglipVisionModel,
    "clip": CLIPVisionModel, "vit": ViTModel).
    """

    timm_id: str
    family: str
    image_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_dim: int
    act: str  # "gelu" (timm's nn.GELU, exact erf) or "quick_gelu" (OpenVLA's override for OpenAI CLIP)
    norm_eps: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    @property
    def num_prefix_tokens(self) -> int:
        """Class and register tokens ahead of the patches (dropped from the features)."""
        return {"dinov2": 5, "siglip": 0, "clip": 1, "vit": 1}[self.family]

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def _dinov2(size: int) -> TowerSpec:
    return TowerSpec(
        "vit_large_patch14_reg4_dinov2.lvd142m", "dinov2", size, 14, 1024, 24, 16, 4096, "gelu", 1e-6,
        IMAGENET_MEAN, IMAGENET_STD,
    )  # fmt: skip


def _siglip_so400m(size: int) -> TowerSpec:
    return TowerSpec(
        f"vit_so400m_patch14_siglip_{size}", "siglip", size, 14, 1152, 27, 16, 4304, "gelu", 1e-6,
        INCEPTION_MEAN, INCEPTION_STD,
    )  # fmt: skip


def _siglip_b16(size: int) -> TowerSpec:
    return TowerSpec(
        f"vit_base_patch16_siglip_{size}", "siglip", size, 16, 768, 12, 12, 3072, "gelu", 1e-6,
        INCEPTION_MEAN, INCEPTION_STD,
    )  # fmt: skip


def _clip(large: bool, size: int) -> TowerSpec:
    patch, dim, depth, heads = (14, 1024, 24, 16) if large else (16, 768, 12, 12)
    name = f"vit_{'large' if large else 'base'}_patch{patch}_clip_{size}.openai"
    # timm's OpenAI CLIP: pre-norm, nn.LayerNorm (eps 1e-5), no patch-embedding bias; OpenVLA: quick_gelu
    return TowerSpec(
        name,
        "clip",
        size,
        patch,
        dim,
        depth,
        heads,
        4 * dim,
        "quick_gelu",
        1e-5,
        OPENAI_CLIP_MEAN,
        OPENAI_CLIP_STD,
    )


IN1K_VIT_L = TowerSpec(
    "vit_large_patch16_224.augreg_in21k_ft_in1k", "vit", 224, 16, 1024, 24, 16, 4096, "gelu", 1e-6,
    INCEPTION_MEAN, INCEPTION_STD,
)  # fmt: skip


@dataclass(frozen=True)
class VisionBackboneSpec:
    """A Prismatic vision backbone id: one tower, or two whose patches are concatenated ("fused")."""

    vision_backbone_id: str
    towers: tuple[TowerSpec, ...]

    @property
    def fused(self) -> bool:
        return len(self.towers) == 2

    @property
    def embed_dim(self) -> int:
        return sum(t.embed_dim for t in self.towers)

    @property
    def image_size(self) -> int:
        return self.towers[0].image_size

    @property
    def num_patches(self) -> int:
        return self.towers[0].num_patches


# prismatic/models/backbones/vision/*.py and OpenVLA's configuration_prismatic.py (VISION_BACKBONE_TO_TIMM_ID,
# TIMM_OVERRIDE_ACT_LAYER, VISION_BACKBONE_TO_RESOLUTION), openvla/openvla c8f03f4.
VISION_BACKBONES: dict[str, VisionBackboneSpec] = {
    spec.vision_backbone_id: spec
    for spec in (
        VisionBackboneSpec("clip-vit-b", (_clip(False, 224),)),
        VisionBackboneSpec("clip-vit-l", (_clip(True, 224),)),
        VisionBackboneSpec("clip-vit-l-336px", (_clip(True, 336),)),
        VisionBackboneSpec("siglip-vit-b16-224px", (_siglip_b16(224),)),
        VisionBackboneSpec("siglip-vit-b16-256px", (_siglip_b16(256),)),
        VisionBackboneSpec("siglip-vit-b16-384px", (_siglip_b16(384),)),
        VisionBackboneSpec("siglip-vit-so400m", (_siglip_so400m(224),)),
        VisionBackboneSpec("siglip-vit-so400m-384px", (_siglip_so400m(384),)),
        VisionBackboneSpec("dinov2-vit-l", (_dinov2(224),)),
        VisionBackboneSpec("in1k-vit-l", (IN1K_VIT_L,)),
        VisionBackboneSpec("dinoclip-vit-l-336px", (_dinov2(336), _clip(True, 336))),
        VisionBackboneSpec("dinosiglip-vit-so-224px", (_dinov2(224), _siglip_so400m(224))),
        VisionBackboneSpec("dinosiglip-vit-so-384px", (_dinov2(384), _siglip_so400m(384))),
    )
}


def timm_override_act_layers(spec: VisionBackboneSpec) -> list[str | None]:
    """OpenVLA's `timm_override_act_layers` of `spec`: "quick_gelu" where a tower runs it, else None."""
    return ["quick_gelu" if t.act == "quick_gelu" else None for t in spec.towers]


def prismatic_training_spec(spec: VisionBackboneSpec) -> VisionBackboneSpec:
    """`spec` as Prismatic's training code built it, where that differs from OpenVLA's HF port: its
    `DinoCLIPViTBackbone` creates the CLIP tower without the `quick_gelu` override (timm's exact GELU), which
    its single CLIP backbones and OpenVLA's HF config do pass."""
    if not spec.vision_backbone_id.startswith("dinoclip"):
        return spec
    towers = tuple(replace(t, act="gelu") if t.family == "clip" else t for t in spec.towers)
    return replace(spec, towers=towers)


def get_vision_spec(vision_backbone_id: str) -> VisionBackboneSpec:
    """The spec of a Prismatic vision backbone id; `VLACheckpointError` naming the known ids otherwise."""
    spec = VISION_BACKBONES.get(vision_backbone_id) if isinstance(vision_backbone_id, str) else None
    if spec is None:
        close = closest(vision_backbone_id, VISION_BACKBONES)
        hint = f" Closest: {', '.join(close)}." if close else ""
        raise VLACheckpointError(
            f"Unknown vision backbone id {vision_backbone_id!r}.{hint} Known: {', '.join(VISION_BACKBONES)} "
            "(those of Prismatic and OpenVLA)."
        )
    return spec


# === Building a tower ===
def _hf_model(tower: TowerSpec, layers: int) -> nn.Module:
    """The transformers model of `tower` with `layers` blocks, parameters on the meta device."""
    common = {
        "hidden_size": tower.embed_dim,
        "num_hidden_layers": layers,
        "num_attention_heads": tower.num_heads,
        "image_size": tower.image_size,
        "patch_size": tower.patch_size,
        "num_channels": 3,
        "layer_norm_eps": tower.norm_eps,
        "hidden_act": tower.act,
        "attention_dropout": 0.0,
    }
    if tower.family == "dinov2":
        from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

        config = Dinov2WithRegistersConfig(
            **common, mlp_ratio=tower.mlp_dim // tower.embed_dim, num_register_tokens=4, qkv_bias=True,
            layerscale_value=1.0, use_swiglu_ffn=False, drop_path_rate=0.0, hidden_dropout_prob=0.0,
        )  # fmt: skip
        cls: Any = Dinov2WithRegistersModel
    elif tower.family == "siglip":
        from transformers import SiglipVisionConfig, SiglipVisionModel

        config = SiglipVisionConfig(**common, intermediate_size=tower.mlp_dim, vision_use_head=False)
        cls = SiglipVisionModel
    elif tower.family == "clip":
        from transformers import CLIPVisionConfig, CLIPVisionModel

        config = CLIPVisionConfig(**common, intermediate_size=tower.mlp_dim)
        cls = CLIPVisionModel
    else:
        from transformers import ViTConfig, ViTModel

        config = ViTConfig(
            **common, intermediate_size=tower.mlp_dim, qkv_bias=True, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )  # fmt: skip
        cls = ViTModel
    config._attn_implementation = "sdpa"
    with parameters_on_meta():
        model = cls(config, add_pooling_layer=False) if tower.family == "vit" else cls(config)
    return model.eval()


# transformers' parameter names vary between releases (ViT's `attention.attention.query` became `q_proj`):
# a tensor is placed by its role, read from the name, not by one spelling of the name.
_LAYER = re.compile(r"^(?:.*\.)?(?:layer|layers)\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
_LAYER_ROLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ls1", ("layer_scale1",)),
    ("ls2", ("layer_scale2",)),
    ("norm1", ("layer_norm1", "layernorm_before", "norm1")),
    ("norm2", ("layer_norm2", "layernorm_after", "norm2")),
    ("q", ("q_proj", "query")),
    ("k", ("k_proj", "key")),
    ("v", ("v_proj", "value")),
    ("o", ("o_proj", "out_proj", "attention.output.dense")),
    ("fc1", ("fc1", "intermediate.dense")),
    ("fc2", ("fc2", "output.dense")),
)
_TOP_ROLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("mask_token", ("mask_token",)),
    ("cls", ("cls_token", "class_embedding")),
    ("reg", ("register_tokens",)),
    ("pos", ("position_embedding",)),
    ("patch", ("patch_embedding",)),
    ("norm_pre", ("pre_layrnorm", "pre_layernorm")),
    ("norm", ("post_layernorm", "layernorm")),
)


def _role(text: str, roles: tuple[tuple[str, tuple[str, ...]], ...]) -> str | None:
    for role, needles in roles:
        if any(n in text for n in needles):
            return role
    return None


def _hf_roles(model: nn.Module) -> dict[tuple[Any, ...], str]:
    """{(layer index or None, role, leaf): HF name} for every tensor of `model`'s state dict."""
    out: dict[tuple[Any, ...], str] = {}
    for name in model.state_dict():
        match = _LAYER.match(name)
        if match:
            index, middle, leaf = int(match.group(1)), match.group(2), match.group(3)
            role = _role(middle, _LAYER_ROLES)
            key: tuple[Any, ...] = (index, role, "weight" if leaf == "lambda1" else leaf)
        else:
            leaf = name.rsplit(".", 1)[-1]
            role = _role(name, _TOP_ROLES)
            key = (None, role, leaf if leaf in ("weight", "bias") else "value")
        if role is None or key in out:
            raise VLACheckpointError(
                f"This transformers release names a vision tensor {name!r} that llm-backbones cannot place "
                f"({'a second ' + repr(key) if role else 'no known role'}). Please report it with your "
                "transformers version; pin transformers to a release the suite passes with meanwhile."
            )
        out[key] = name
    return out


# timm's names (OpenVLA's HF layout renames LayerScale `gamma` to `scale_factor`)
_TIMM_BLOCK = re.compile(
    r"^blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|ls1|ls2|mlp\.fc1|mlp\.fc2)\.(\w+)$"
)
_TIMM_TOP = {
    "cls_token": ("cls", "value"),
    "reg_token": ("reg", "value"),
    "pos_embed": ("pos", "value"),
    "patch_embed.proj.weight": ("patch", "weight"),
    "patch_embed.proj.bias": ("patch", "bias"),
    "norm_pre.weight": ("norm_pre", "weight"),
    "norm_pre.bias": ("norm_pre", "bias"),
    "norm.weight": ("norm", "weight"),
    "norm.bias": ("norm", "bias"),
}
_TIMM_BLOCK_ROLE = {"norm1": "norm1", "norm2": "norm2", "attn.proj": "o", "ls1": "ls1", "ls2": "ls2"}
_TIMM_BLOCK_ROLE.update({"mlp.fc1": "fc1", "mlp.fc2": "fc2"})


def expected_timm_names(tower: TowerSpec, depth: int) -> dict[str, tuple[int, ...]]:
    """{timm tensor name: shape} of `tower` with `depth` blocks, as `timm.create_model(..., num_classes=0)`
    holds them (LayerScale as `gamma`). What a checkpoint must hold, exactly."""
    d, m, p = tower.embed_dim, tower.mlp_dim, tower.patch_size
    names: dict[str, tuple[int, ...]] = {"patch_embed.proj.weight": (d, 3, p, p)}
    if tower.family != "clip":
        names["patch_embed.proj.bias"] = (d,)
    n = tower.num_patches
    if tower.family == "dinov2":
        names.update({"cls_token": (1, 1, d), "reg_token": (1, 4, d), "pos_embed": (1, n, d)})
    elif tower.family == "siglip":
        names["pos_embed"] = (1, n, d)
    else:
        names.update({"cls_token": (1, 1, d), "pos_embed": (1, n + 1, d)})
    if tower.family == "clip":
        names.update({"norm_pre.weight": (d,), "norm_pre.bias": (d,)})
    for i in range(depth):
        b = f"blocks.{i}."
        names.update({b + "norm1.weight": (d,), b + "norm1.bias": (d,), b + "norm2.weight": (d,)})
        names.update(
            {b + "norm2.bias": (d,), b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,)}
        )
        names.update({b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,)})
        names.update({b + "mlp.fc1.weight": (m, d), b + "mlp.fc1.bias": (m,), b + "mlp.fc2.weight": (d, m)})
        names[b + "mlp.fc2.bias"] = (d,)
        if tower.family == "dinov2":
            names.update({b + "ls1.gamma": (d,), b + "ls2.gamma": (d,)})
    names.update({"norm.weight": (d,), "norm.bias": (d,)})
    if tower.family == "siglip":  # the MAP head timm keeps with num_classes=0 (unused by the featurizer)
        names.update({
            "attn_pool.latent": (1, 1, d), "attn_pool.q.weight": (d, d), "attn_pool.q.bias": (d,),
            "attn_pool.kv.weight": (2 * d, d), "attn_pool.kv.bias": (2 * d,), "attn_pool.proj.weight": (d, d),
            "attn_pool.proj.bias": (d,), "attn_pool.norm.weight": (d,), "attn_pool.norm.bias": (d,),
            "attn_pool.mlp.fc1.weight": (m, d), "attn_pool.mlp.fc1.bias": (m,),
            "attn_pool.mlp.fc2.weight": (d, m), "attn_pool.mlp.fc2.bias": (d,),
        })  # fmt: skip
    return names


class VisionTower(nn.Module):
    """One timm tower as a transformers model: `forward(pixel_values [B, 3, S, S]) -> patches [B, P, D]`,
    the output of block `depth - 2`, prefix tokens dropped (OpenVLA's featurizer)."""

    def __init__(self, tower: TowerSpec, depth: int | None = None) -> None:
        super().__init__()
        self.spec = tower
        self.depth = tower.depth if depth is None else depth
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 2:
            raise VLACheckpointError(
                f"A vision tower needs at least 2 blocks (the featurizer reads the second to last), got "
                f"depth={self.depth!r} for {tower.timm_id}."
            )
        self.model = _hf_model(tower, self.depth - 1)  # the last block is never read
        # timm's tensors the model does not hold (the last block, SigLIP's attn_pool head), by timm name, on
        # CPU as the checkpoint stored them: `load_timm_state` keeps them, `timm_state_dict` gives them back
        self.set_aside: dict[str, torch.Tensor] = {}

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values, output_hidden_states=True)
        # hidden_states[-1]: after the last built block (block depth - 2), before any final norm
        return out.hidden_states[-1][:, self.spec.num_prefix_tokens :]

    def load_timm_state(self, state: Mapping[str, torch.Tensor], *, source: str) -> tuple[str, ...]:
        """Assign timm's tensors (names relative to the tower) to the model; strict: every expected tensor
        present with its shape, nothing else. Returns the names set aside in `self.set_aside` (the last block
        and SigLIP's head: loaded by OpenVLA, never read by its featurizer; kept for export)."""
        state = {
            k[: -len("scale_factor")] + "gamma" if k.endswith(".scale_factor") else k: v
            for k, v in state.items()
        }
        expected = expected_timm_names(self.spec, self.depth)
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise StateDictMismatchError(
                f"The vision tower {source} ({self.spec.timm_id}, {self.depth} blocks) does not match the "
                f"checkpoint: {len(missing)} missing {missing[:8]}, {len(unexpected)} unexpected "
                f"{unexpected[:8]}. The checkpoint was trained with another vision backbone id (or depth)."
                " Check config.json's vision_backbone_id.",
                missing,
                unexpected,
            )
        wrong = [
            f"{k} {tuple(v.shape)} vs {expected[k]}"
            for k, v in state.items()
            if tuple(v.shape) != expected[k]
        ]
        if wrong:
            raise StateDictMismatchError(
                f"The vision tower {source} ({self.spec.timm_id}) has tensors of other shapes (checkpoint vs "
                f"architecture): {'; '.join(wrong[:5])}. The checkpoint was trained with another vision "
                "backbone id.",
                [],
                [],
            )
        roles = _hf_roles(self.model)
        built = self.depth - 1
        target: dict[str, torch.Tensor] = {}
        unused: list[str] = []
        for name, tensor in state.items():
            block = _TIMM_BLOCK.match(name)
            if block:
                index, part, leaf = int(block.group(1)), block.group(2), block.group(3)
                if index >= built:
                    unused.append(name)
                    continue
                leaf = "weight" if leaf == "gamma" else leaf
                if part == "attn.qkv":
                    for role, chunk in zip(("q", "k", "v"), tensor.chunk(3, dim=0), strict=True):
                        target[roles[(index, role, leaf)]] = chunk
                else:
                    target[roles[(index, _TIMM_BLOCK_ROLE[part], leaf)]] = tensor
                continue
            if name not in _TIMM_TOP:
                unused.append(name)  # attn_pool.* (SigLIP's MAP head)
                continue
            role, leaf = _TIMM_TOP[name]
            # a table is a parameter of its own (`position_embeddings`) or an nn.Embedding's `weight`
            hf_name = roles.get((None, role, leaf)) or roles[(None, role, "weight")]
            want = self.model.state_dict()[hf_name].shape
            if role == "cls" and len(want) == 1:  # CLIP's class_embedding is [D]
                tensor = tensor.reshape(want)
            elif role == "pos":
                if self.spec.family == "dinov2":  # timm adds no position to the class token
                    tensor = torch.cat([tensor.new_zeros((1, 1, tensor.shape[-1])), tensor], dim=1)
                tensor = tensor.reshape(want)
            target[hf_name] = tensor
        for key, hf_name in roles.items():
            if key[1] == "mask_token":  # DINOv2's masked-image-modelling token: never used at inference
                target[hf_name] = torch.zeros(self.model.state_dict()[hf_name].shape)
        absent = sorted(set(roles.values()) - set(target))
        if absent:
            raise StateDictMismatchError(
                f"The vision tower {source} left {absent[:8]} of the transformers model without values.",
                absent,
                [],
            )
        dtype = next(iter(state.values())).dtype
        self.model.load_state_dict({k: v.to(dtype) for k, v in target.items()}, strict=True, assign=True)
        self.set_aside = {name: state[name].detach().to("cpu") for name in sorted(unused)}
        return tuple(sorted(unused))

    def timm_state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor of timm's model of this tower (`expected_timm_names`: names relative to the tower,
        LayerScale as `gamma`), the inverse of `load_timm_state`: q/k/v joined into `qkv`, DINOv2's class
        position folded into `cls_token` (timm adds none to it), the set-aside tensors as kept. Raises
        `VLACheckpointError` naming the tensors the tower does not have (a tower built without loading a
        checkpoint has no last block or attention-pool head)."""
        expected = expected_timm_names(self.spec, self.depth)
        roles = _hf_roles(self.model)
        hf = self.model.state_dict()
        part_of = {role: part for part, role in _TIMM_BLOCK_ROLE.items()}
        out: dict[str, torch.Tensor] = {}
        for (index, role, leaf), hf_name in roles.items():
            if index is not None and role not in ("q", "k", "v"):
                out[f"blocks.{index}.{part_of[role]}.{'gamma' if role in ('ls1', 'ls2') else leaf}"] = hf[
                    hf_name
                ]
        for index in range(self.depth - 1):
            for leaf in ("weight", "bias"):
                out[f"blocks.{index}.attn.qkv.{leaf}"] = torch.cat(
                    [hf[roles[(index, r, leaf)]] for r in "qkv"]
                )
        class_position = None
        for name, (role, leaf) in _TIMM_TOP.items():
            if name not in expected:
                continue
            tensor = hf[roles.get((None, role, leaf)) or roles[(None, role, "weight")]]
            if role == "pos" and self.spec.family == "dinov2":  # the HF table has a class row; timm's not
                tensor = tensor.reshape(1, -1, tensor.shape[-1])
                class_position, tensor = tensor[:, :1], tensor[:, 1:]
            out[name] = tensor.reshape(expected[name])
        if class_position is not None:
            out["cls_token"] = out["cls_token"] + class_position.to(out["cls_token"].dtype)
        out.update({k: v for k, v in self.set_aside.items() if k not in out})
        missing = [k for k in expected if k not in out]
        if missing:
            raise VLACheckpointError(
                f"The vision tower {self.spec.timm_id} ({self.depth} blocks) lacks {len(missing)} of timm's "
                f"tensors: {missing[:8]}{' ...' if len(missing) > 8 else ''} (the last block and heads its "
                "featurizer never reads are kept only when the tower was loaded from a checkpoint). Load the "
                "policy with load_vla, or set tower.set_aside to those tensors."
            )
        wrong = [f"{k} {tuple(out[k].shape)} vs {v}" for k, v in expected.items() if tuple(out[k].shape) != v]
        if wrong:
            raise VLACheckpointError(
                f"The vision tower {self.spec.timm_id} has misshapen tensors: {wrong[:5]}."
            )
        return {k: out[k] for k in expected}


class VisionBackbone(nn.Module):
    """OpenVLA's `PrismaticVisionBackbone`: `featurizer` (and `fused_featurizer`); channel-stacked pixel
    values `[B, 3 * towers, S, S]` in, patches `[B, P, sum of dims]` out."""

    def __init__(self, spec: VisionBackboneSpec, depth: int | Sequence[int] | None = None) -> None:
        super().__init__()
        self.spec = spec
        depths = [depth] * len(spec.towers) if depth is None or isinstance(depth, int) else list(depth)
        if len(depths) != len(spec.towers):
            raise VLACheckpointError(
                f"vision_depth={depth!r} gives {len(depths)} depths for the {len(spec.towers)} towers of "
                f"{spec.vision_backbone_id}; pass one int or one per tower."
            )
        self.featurizer = VisionTower(spec.towers[0], depths[0])
        self.fused_featurizer = VisionTower(spec.towers[1], depths[1]) if spec.fused else None
        self.embed_dim = spec.embed_dim

    @property
    def towers(self) -> tuple[VisionTower, ...]:
        return (
            (self.featurizer,) if self.fused_featurizer is None else (self.featurizer, self.fused_featurizer)
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        channels = 3 * len(self.towers)
        size = self.spec.image_size
        if not isinstance(pixel_values, torch.Tensor) or tuple(pixel_values.shape[1:]) != (
            channels,
            size,
            size,
        ):
            shape = (
                tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values)
            )
            raise ImageError(
                f"pixel_values of {self.spec.vision_backbone_id} must be [batch, {channels}, {size}, "
                f"{size}], got {shape}. Make them with the policy's image processor (policy.process_images)."
            )
        dtype = next(self.parameters()).dtype
        pixel_values = pixel_values.to(dtype)
        if self.fused_featurizer is None:
            return self.featurizer(pixel_values)
        first, second = torch.split(pixel_values, [3, 3], dim=1)
        return torch.cat([self.featurizer(first), self.fused_featurizer(second)], dim=2)


class Projector(nn.Module):
    """OpenVLA's `PrismaticProjector`: fc1, GELU, fc2 (single tower); fc1 (to 4x vision dim), GELU, fc2, GELU,
    fc3 (fused). Tensor names as OpenVLA's HF layout (`projector.fc1.weight`, ...)."""

    def __init__(self, vision_dim: int, llm_dim: int, *, fused: bool) -> None:
        super().__init__()
        self.fused = fused
        with parameters_on_meta():
            if fused:
                self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
                self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
                self.fc3 = nn.Linear(llm_dim, llm_dim)
            else:
                self.fc1 = nn.Linear(vision_dim, llm_dim)
                self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act = nn.GELU()

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = self.fc2(self.act(self.fc1(patches)))
        return self.fc3(self.act(x)) if self.fused else x

    # Prismatic's training checkpoints hold the projector as nn.Sequential: projector.{0,2,4}
    PRISMATIC_NAMES = {"0": "fc1", "2": "fc2", "4": "fc3"}

    def load_named_state(self, state: Mapping[str, torch.Tensor], *, source: str) -> None:
        """Strictly assign `fc*.weight/bias` (OpenVLA's names, or Prismatic's `projector.N.*`)."""
        renamed = {}
        for name, tensor in state.items():
            head, _, leaf = name.partition(".")
            if head == "projector":
                head, _, leaf = leaf.partition(".")
            renamed[f"{self.PRISMATIC_NAMES.get(head, head)}.{leaf}"] = tensor
        own = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        missing, unexpected = sorted(set(own) - set(renamed)), sorted(set(renamed) - set(own))
        wrong = [
            f"{k} {tuple(v.shape)} vs {own[k]}"
            for k, v in renamed.items()
            if k in own and tuple(v.shape) != own[k]
        ]
        if missing or unexpected or wrong:
            raise StateDictMismatchError(
                f"The projector of {source} does not match a {'fused' if self.fused else 'single-tower'} "
                f"projector: missing {missing}, unexpected {unexpected[:6]}, shapes (checkpoint vs model) "
                f"{wrong[:4]}. The vision backbone id or the LLM of the checkpoint is another one.",
                missing,
                unexpected,
            )
        self.load_state_dict(renamed, strict=True, assign=True)


__all__ = [
    "Projector",
    "TowerSpec",
    "VISION_BACKBONES",
    "VisionBackbone",
    "VisionBackboneSpec",
    "VisionTower",
    "expected_timm_names",
    "get_vision_spec",
    "prismatic_training_spec",
    "timm_override_act_layers",
]
