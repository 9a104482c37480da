"""The vision table (`VISION_BACKBONES`) against the towers timm 0.9.16 itself built, as OpenVLA creates them
(tests/golden/fixtures/openvla_policy/timm_towers.json, written by scripts/make_openvla_fixtures.py from the
real timm models), and Prismatic's own training-time differences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_backbones.vla.vision import (
    VISION_BACKBONES,
    get_vision_spec,
    prismatic_training_spec,
    timm_override_act_layers,
)

TIMM = json.loads(
    (Path(__file__).parents[1] / "golden" / "fixtures" / "openvla_policy" / "timm_towers.json").read_text()
)
ACTS = {"GELU(approximate='none')": "gelu", "QuickGELU": "quick_gelu"}
TOWERS = {t.timm_id: t for spec in VISION_BACKBONES.values() for t in spec.towers}


@pytest.mark.parametrize("timm_id", sorted(TIMM))
def test_tower_matches_timm(timm_id):
    facts, tower = TIMM[timm_id], TOWERS[timm_id]
    arch = facts["arch"]
    assert tower.embed_dim == arch["embed_dim"]
    assert tower.depth == arch["depth"]
    assert tower.num_heads == arch["num_heads"]
    assert tower.mlp_dim == arch["mlp_hidden"]
    assert [tower.patch_size] * 2 == arch["patch_size"]
    assert tower.num_prefix_tokens == arch["num_prefix_tokens"]
    assert tower.norm_eps == arch["block_norm"]["eps"] == arch["final_norm"]["eps"]
    assert tower.act == ACTS[arch["act"]]  # with OpenVLA's act_layer override applied
    data = facts["data_config"]
    assert (tower.interpolation, list(tower.mean), list(tower.std)) == (
        data["interpolation"],
        data["mean"],
        data["std"],
    )


def test_every_prismatic_and_openvla_vision_id_is_there():
    assert sorted(VISION_BACKBONES) == sorted(
        [
            "clip-vit-b",
            "clip-vit-l",
            "clip-vit-l-336px",
            "siglip-vit-b16-224px",
            "siglip-vit-b16-256px",
            "siglip-vit-b16-384px",
            "siglip-vit-so400m",
            "siglip-vit-so400m-384px",
            "dinov2-vit-l",
            "in1k-vit-l",
            "dinoclip-vit-l-336px",
            "dinosiglip-vit-so-224px",
            "dinosiglip-vit-so-384px",
        ]
    )


def test_openvla_config_act_overrides():
    """configuration_prismatic.py's TIMM_OVERRIDE_ACT_LAYER, written out."""
    assert timm_override_act_layers(get_vision_spec("clip-vit-l-336px")) == ["quick_gelu"]
    assert timm_override_act_layers(get_vision_spec("dinoclip-vit-l-336px")) == [None, "quick_gelu"]
    assert timm_override_act_layers(get_vision_spec("dinosiglip-vit-so-224px")) == [None, None]


def test_prismatic_dinoclip_trained_clip_with_timms_gelu():
    """prismatic/models/backbones/vision/dinoclip_vit.py creates its CLIP tower without act_layer (its single
    CLIP backbone passes quick_gelu): a Prismatic .pt of that run is read with GELU there."""
    spec = prismatic_training_spec(get_vision_spec("dinoclip-vit-l-336px"))
    assert [t.act for t in spec.towers] == ["gelu", "gelu"]
    assert prismatic_training_spec(get_vision_spec("clip-vit-l")).towers[0].act == "quick_gelu"
