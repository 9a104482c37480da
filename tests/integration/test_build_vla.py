"""`build_vla`: a fresh policy from a registry LLM id and a vision backbone id, trained from scratch
(`run_finetune_vla`, `finetune-vla --llm ... --vision ...`), exported, and loaded back by `load_vla`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_finetune_vla import write_dataset
from typer.testing import CliRunner

pytestmark = pytest.mark.integration

LLM = "llama2-tiny-pure"  # the embedded LLM: no files, no hub
SINGLE = "siglip-vit-b16-224px"
FUSED = "dinosiglip-vit-so-224px"
DEPTH = 2  # one block built per tower
STATS = {"toy": {"action": {"q01": [-1.0] * 7, "q99": [1.0] * 7, "mask": [True] * 7}}}
IMAGE = np.full((32, 32, 3), 90, dtype=np.uint8)


def build(vision: str = SINGLE, **options):
    from llm_backbones import build_vla

    return build_vla(LLM, vision, vision_depth=DEPTH, **options)


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("robot") / "toy")


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("vision", "vision_dim", "projector"),
    [
        (SINGLE, 768, {"fc1.weight": (128, 768), "fc2.weight": (128, 128)}),
        (
            FUSED,
            1024 + 1152,
            {"fc1.weight": (8704, 2176), "fc2.weight": (128, 8704), "fc3.weight": (128, 128)},
        ),
    ],
)
def test_build_vla_assembles_a_policy_that_predicts(vision, vision_dim, projector):
    policy = build(vision)
    assert policy.vision_backbone_id == vision and policy.vision.embed_dim == vision_dim
    assert policy.llm.llm_backbone_id == LLM and policy.llm.layout == "fresh"
    assert {k: tuple(v.shape) for k, v in policy.projector.state_dict().items() if k.endswith("weight")} == (
        projector
    )
    assert policy.image_processor.strategy == "letterbox"  # OpenVLA's default
    assert policy.action_tokenizer.token_id_range == (31744, 31999)  # the last 256 ids of LLaMA-2's 32000
    assert policy.backbone.pad_token_id == 32000
    assert [t.depth for t in policy.vision.towers] == [DEPTH] * len(policy.vision.towers)
    assert not any(p.requires_grad for m in policy.modules() for p in m.parameters())
    assert policy.norm_stats == {}
    # every tensor timm's towers hold, the unread last block included, is there for an export
    for tower in policy.vision.towers:
        state = tower.timm_state_dict()
        assert "blocks.1.mlp.fc2.weight" in state and all(
            bool(torch.isfinite(v).all()) for v in state.values()
        )
    policy.llm.norm_stats = STATS
    action = policy.predict_action(IMAGE, "pick up the block")
    assert action.shape == (7,) and np.isfinite(action).all() and (np.abs(action) <= 1).all()


def test_build_vla_is_deterministic_in_its_seed():
    first, again, other = build(seed=3), build(seed=3), build(seed=4)
    for part in ("projector", "vision"):
        assert same(params(getattr(first, part)), params(getattr(again, part)))
        assert not same(params(getattr(first, part)), params(getattr(other, part)))
    assert same(params(first.backbone), params(again.backbone))


def test_fresh_policy_learns_the_images_actions_and_its_export_reloads(tmp_path):
    """Trained on the demo's four images (one instruction, each image its own action), the fresh policy gets
    every action token right; its export, reloaded by load_vla, gives the trained policy's actions, each
    within half a bin of its target."""
    from llm_backbones.app.demo import demo_robot_dataset
    from llm_backbones.training.vla import run_finetune_vla
    from llm_backbones.vla.loading import load_vla

    policy, dataset = build(), demo_robot_dataset()
    settings = {"batch_size": 4, "lr_schedule": "constant", "save_every": 0, "mode": "full"}
    result = run_finetune_vla(policy, dataset, output=str(tmp_path / "run"), steps=40, lr=3e-3, **settings)
    assert result.action_accuracy[0] < 0.2
    assert result.action_accuracy[-1] == 1.0
    export = Path(result.output)
    config = json.loads((export / "config.json").read_text())
    assert (config["llm_backbone_id"], config["vision_backbone_id"]) == (LLM, SINGLE)
    assert config["image_resize_strategy"] == "letterbox" and config["arch_specifier"] == "no-align+gelu-mlp"
    frames = [dataset[i] for i in range(len(dataset))]
    images, instructions = [f.image for f in frames], [f.instruction for f in frames]
    reloaded = load_vla(export, vision_depth=DEPTH)
    predicted = reloaded.predict_actions(images, instructions, "demo")
    np.testing.assert_array_equal(predicted, policy.predict_actions(images, instructions, "demo"))
    stats = reloaded.norm_stats["demo"]["action"]
    low, high = np.array(stats["q01"]), np.array(stats["q99"])
    expected = np.clip(np.stack([f.action for f in frames]), low, high)
    half_bin = (high - low) / 2 / 255
    assert (np.abs(predicted - expected) <= half_bin + 1e-6).all(), np.abs(predicted - expected) / half_bin
    assert reloaded.stray_tokens == 0


def test_policy_from_config_rebuilds_the_fresh_policy_of_a_saved_run():
    from llm_backbones.training.vla import VLAFinetuneConfig, policy_from_config

    cfg = VLAFinetuneConfig(llm=LLM, vision=SINGLE, vision_depth=DEPTH, seed=5)
    saved = VLAFinetuneConfig.from_mapping(json.loads(json.dumps(cfg.saved())), "run_config.json")
    first, again = policy_from_config(cfg), policy_from_config(saved)
    assert (again.llm.llm_backbone_id, again.vision_backbone_id) == (LLM, SINGLE)
    assert same(params(first.projector), params(again.projector))
    assert same(params(first.vision), params(again.vision))


def test_timm_weights_file_fills_the_tower(tmp_path):
    """A safetensors file in timm's names: its tensors become the tower's (the classifier head and the blocks
    beyond `vision_depth` left out), and a position table of another grid is resampled to the tower's."""
    from llm_backbones import get_vision_spec
    from llm_backbones.vla.assemble import random_timm_state

    tower = get_vision_spec(SINGLE).towers[0]
    torch.manual_seed(0)
    state = random_timm_state(tower, 3)  # one block more than the tower keeps
    state["head.weight"] = torch.ones(10, 768)
    file = tmp_path / "model.safetensors"
    save_file(state, file)
    policy = build(vision_weights=file)
    loaded = policy.vision.featurizer.timm_state_dict()
    assert loaded.keys() == {k for k in state if not k.startswith(("head.", "blocks.2."))}
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)

    state["pos_embed"] = torch.full((1, 16 * 16, 768), 0.25)  # a 16x16 grid (256 px) for a 14x14 tower
    save_file(state, file)
    table = build(vision_weights=str(file)).vision.featurizer.timm_state_dict()["pos_embed"]
    assert table.shape == (1, 14 * 14, 768)
    torch.testing.assert_close(table, torch.full((1, 196, 768), 0.25))


def test_qwen_policy_exports_and_reloads_with_the_same_actions(tiny_family_model, tmp_path):
    """A non-LLaMA LLM (Qwen2.5: no BOS, PAD in a spare row, tied embeddings) through export and load_vla."""
    from llm_backbones import build_vla, export_openvla, load_vla

    policy = build_vla(
        "qwen2.5-0.5b-pure", SINGLE, llm_model_path=tiny_family_model("qwen2.5-small"), vision_depth=DEPTH
    )
    assert policy.action_tokenizer.token_id_range == (151387, 151642)  # the last 256 of 151643 base ids
    policy.llm.norm_stats = STATS
    export = export_openvla(policy, tmp_path / "export")
    assert json.loads((export / "config.json").read_text())["llm_backbone_id"] == "qwen2.5-0.5b-pure"
    reloaded = load_vla(export, vision_depth=DEPTH)
    images = [IMAGE, np.zeros((32, 32, 3), dtype=np.uint8)]
    instructions = ["pick up the block", "open the drawer"]
    np.testing.assert_array_equal(
        reloaded.predict_actions(images, instructions), policy.predict_actions(images, instructions)
    )
    assert torch.equal(reloaded.last_tokens, policy.last_tokens)


def test_cli_finetune_vla_trains_a_fresh_policy(dataset_path, tmp_path):
    from llm_backbones.app.cli import app
    from llm_backbones.vla.loading import load_vla

    output = tmp_path / "run"
    args = [
        "finetune-vla",
        "--llm",
        LLM,
        "--vision",
        SINGLE,
        "--vision-depth",
        "2",
        "--data",
        str(dataset_path),
    ]
    args += ["--mode", "full", "--steps", "2", "--batch-size", "4", "--output", str(output)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "action tokens right" in result.output and "export:" in result.output
    saved = json.loads((output / "run_config.json").read_text())
    assert {k: saved[k] for k in ("policy", "llm", "vision", "vision_depth")} == {
        "policy": None,
        "llm": LLM,
        "vision": SINGLE,
        "vision_depth": 2,
    }
    policy = load_vla(output / "export", vision_depth=2)
    assert (policy.llm.llm_backbone_id, policy.vision_backbone_id) == (LLM, SINGLE)
    assert policy.norm_stats.keys() == {"toy"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "ckpt", "--llm", LLM, "--vision", SINGLE], "not both"),
        ([], "No policy given"),
        (["--llm", LLM], "--vision is missing"),
        (["--vision", SINGLE], "--llm is missing"),
        (["--llm", "llama2-tiny", "--vision", SINGLE], "llama2-tiny-pure"),
        (["--llm", LLM, "--vision", "siglip-vit"], "siglip-vit-so400m"),
        (["--llm", LLM, "--vision", SINGLE, "--image-resize-strategy", "crop"], "letterbox"),
        (["--policy", "ckpt", "--vision-weights", "w.safetensors"], "--vision-weights"),
    ],
)
def test_cli_refuses_a_policy_named_neither_or_both_ways(args, message, tmp_path):
    """Refused before any data is read or model built: the data path does not even exist."""
    from llm_backbones.app.cli import app

    result = CliRunner().invoke(app, ["finetune-vla", "--data", str(tmp_path / "absent"), *args])
    assert result.exit_code == 1, result.output
    assert message in " ".join(result.output.split()), result.output


def test_build_vla_refuses_bad_arguments_naming_what_is_accepted(tmp_path):
    from llm_backbones import build_vla
    from llm_backbones.errors import ModelPathError, UnknownBackboneError, VLACheckpointError

    with pytest.raises(UnknownBackboneError, match="qwen2.5-0.5b-pure"):
        build_vla("qwen2.5-0.5b", SINGLE)
    with pytest.raises(VLACheckpointError, match="Known: .*siglip-vit-so400m"):
        build_vla(LLM, "siglip-so400m")
    with pytest.raises(VLACheckpointError, match="'letterbox'"):
        build_vla(LLM, SINGLE, image_resize_strategy="pad")
    with pytest.raises(VLACheckpointError, match="seed must be an integer"):
        build_vla(LLM, SINGLE, seed=1.5)
    with pytest.raises(VLACheckpointError, match="2 towers"):
        build_vla(LLM, FUSED, vision_weights=tmp_path / "one.safetensors")
    with pytest.raises(ModelPathError, match="do not exist"):
        build_vla(LLM, SINGLE, vision_weights=tmp_path / "absent.safetensors")
    (tmp_path / "tower.bin").write_bytes(b"pickle")
    with pytest.raises(ModelPathError, match="not a .safetensors file"):
        build_vla(LLM, SINGLE, vision_weights=tmp_path / "tower.bin")
