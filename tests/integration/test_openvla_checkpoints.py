"""load_vla_backbone: tiny OpenVLA checkpoints in both published layouts, built here from the layout facts.

HF layout (`openvla/openvla-7b`, as prismatic's convert_openvla_weights_to_hf.py writes it): config.json with
model_type "openvla", llm_backbone_id, text_config (vocab_size = 32000 + pad_to_multiple_of 64 = 32064,
pad_token_id 32000), n_action_bins, norm_stats; bf16 safetensors shards with model.safetensors.index.json;
LLM tensors under `language_model.`; vision under `vision_backbone.`, projector under `projector.fc1/fc2/fc3`;
the tokenizer saved with `<PAD>` (32000) added.
Prismatic layout (a training run): config.json ({"model": {...llm_backbone_id...}} for VLM runs,
{"vla": {"base_vlm": ...}} for VLA runs), dataset_statistics.json, checkpoints/step-XXXXXX-epoch-XX-loss=X.pt
holding {"model": {"vision_backbone", "projector", "llm_backbone"}}, LLM keys `llm.model.*`,
`llm.lm_head.weight`.
The tiny LLaMA-2 (same tokenizer, so the same 32000 + <PAD> -> 32064 rows) stands in for Llama-2-7B.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from llm_backbones import get_llm_backbone_and_tokenizer
from llm_backbones.errors import (
    NormStatsError,
    StateDictMismatchError,
    UnknownBackboneError,
    UnsafeFileError,
    VLACheckpointError,
)
from llm_backbones.persistence.openvla import (
    PRISMATIC_MODEL_LLMS,
    PRISMATIC_MODELS,
    LoadedVLA,
    PrismaticModel,
    load_vla_backbone,
    prismatic_vision_config,
    unnormalize_actions,
)

pytestmark = pytest.mark.integration

TINY = "llama2-tiny-pure"
# The tiny LLaMA-2's text_config as OpenVLA's config.json would hold it
# (vocab_size already padded: 32000 + 64).
TEXT_CONFIG = {
    "model_type": "llama",
    "vocab_size": 32064,
    "hidden_size": 128,
    "intermediate_size": 344,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-05,
    "pad_token_id": 32000,
    "torch_dtype": "bfloat16",
}
# Two datasets; the gripper dimension (last) is not normalized (mask false), as in OpenVLA's statistics.
NORM_STATS = {
    "bridge_orig": {
        "action": {"q01": [-0.1, 0.0, -2.0], "q99": [0.3, 1.0, 2.0], "mask": [True, True, False]}
    },
    "fractal": {"action": {"q01": [-1.0, -0.5, 0.0], "q99": [1.0, 0.5, 1.0]}},
}
# Fake vision / projector tensors (names in the HF layout; Prismatic keeps them under their module keys).
HF_VISION = {
    "vision_backbone.featurizer.patch_embed.proj.weight": (8, 3, 2, 2),
    "vision_backbone.fused_featurizer.blocks.0.attn.qkv.weight": (24, 8),
    "projector.fc1.weight": (16, 16),
    "projector.fc1.bias": (16,),
}
PRISMATIC_OTHER = {
    "vision_backbone": {
        "dino_featurizer.pos_embed": (1, 5, 8),
        "siglip_featurizer.patch_embed.proj.bias": (8,),
    },
    "projector": {"projector.0.weight": (16, 16), "projector.0.bias": (16,)},
}
# Backbone state-dict names of the tiny LLaMA-2 (2 layers): what a checkpoint must hold, nothing more.
LLM_KEYS = sorted(
    ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    + [
        f"model.layers.{i}.{name}.weight"
        for i in range(2)
        for name in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
            "input_layernorm",
            "post_attention_layernorm",
        )
    ]
)


def tiny_tokenizer_and_shapes():
    """The tiny backbone's tokenizer (<PAD> added: what OpenVLA saves) and the shape of each LLM tensor."""
    backbone, tokenizer = get_llm_backbone_and_tokenizer(TINY)
    shapes = {k.removeprefix("llm."): tuple(v.shape) for k, v in backbone.state_dict().items()}
    return tokenizer, shapes


@pytest.fixture(scope="module")
def tiny():
    return tiny_tokenizer_and_shapes()


def random_llm(shapes: dict[str, tuple[int, ...]], seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g).to(dtype) for k, shape in shapes.items()}


def write_hf_openvla(
    directory: Path, tokenizer, llm: dict[str, torch.Tensor], *, config_overrides=None, extra=None, drop=()
) -> Path:
    """An HF OpenVLA checkpoint: two bf16 shards + index, config.json, tokenizer files with <PAD>."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {f"language_model.{k}": v for k, v in llm.items()}
    state.update({k: torch.full(shape, 0.5, dtype=torch.bfloat16) for k, shape in HF_VISION.items()})
    state.update(extra or {})
    for name in drop:
        del state[name]
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, shard_names in shards.items():
        save_file(
            {n: state[n].contiguous() for n in shard_names}, directory / file, metadata={"format": "pt"}
        )
        weight_map.update(dict.fromkeys(shard_names, file))
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
        "weight_map": weight_map,
    }
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    config = {
        "architectures": ["OpenVLAForActionPrediction"],
        "model_type": "openvla",
        "llm_backbone_id": TINY,
        "vision_backbone_id": "dinosiglip-vit-so-224px",
        "arch_specifier": "no-align+fused-gelu-mlp",
        "use_fused_vision_backbone": True,
        "image_resize_strategy": "resize-naive",
        "llm_max_length": 2048,
        "pad_token_id": 32000,
        "pad_to_multiple_of": 64,
        "n_action_bins": 256,
        "norm_stats": NORM_STATS,
        "text_config": TEXT_CONFIG,
        "torch_dtype": "bfloat16",
        **(config_overrides or {}),
    }
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "dataset_statistics.json").write_text(json.dumps(NORM_STATS))
    tokenizer.save_pretrained(directory)
    return directory


def write_prismatic_run(
    run: Path, steps: dict[int, dict[str, torch.Tensor]], *, config=None, extra=None
) -> Path:
    """A Prismatic run: config.json, dataset_statistics.json, one checkpoints/step-*.pt per step (fp32)."""
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    if config is None:
        config = {
            "model": {
                "model_id": "prism-tiny",
                "llm_backbone_id": TINY,
                "llm_max_length": 2048,
                "vision_backbone_id": "dinosiglip-vit-so-224px",
                "arch_specifier": "no-align+fused-gelu-mlp",
            }
        }
    (run / "config.json").write_text(json.dumps(config))
    (run / "dataset_statistics.json").write_text(json.dumps(NORM_STATS))
    for i, (step, llm) in enumerate(sorted(steps.items())):
        model = {
            group: {k: torch.zeros(shape) for k, shape in tensors.items()}
            for group, tensors in PRISMATIC_OTHER.items()
        }
        model["llm_backbone"] = {f"llm.{k}": v for k, v in llm.items()} | (extra or {})
        name = f"step-{step:06d}-epoch-{i:02d}-loss=0.{step:04d}.pt"
        torch.save({"model": model}, run / "checkpoints" / name)
    return run


def assert_llm_equal(loaded: LoadedVLA, llm: dict[str, torch.Tensor]) -> None:
    state = loaded.backbone.state_dict()
    assert sorted(k.removeprefix("llm.") for k in state) == LLM_KEYS
    for key, tensor in llm.items():
        got = state[f"llm.{key}"]
        assert got.dtype == tensor.dtype and torch.equal(got, tensor), key


def assert_openvla_vocabulary(loaded: LoadedVLA) -> None:
    """32000 pieces + <PAD> (32000) once; embedding and LM head keep the checkpoint's 32064 rows."""
    tokenizer = loaded.tokenizer
    got = (tokenizer.vocab_size, len(tokenizer), tokenizer.pad_token, tokenizer.pad_token_id)
    assert got == (32000, 32001, "<PAD>", 32000)
    assert tokenizer.get_added_vocab().get("<PAD>") == 32000
    assert loaded.backbone.llm.get_input_embeddings().weight.shape == (32064, 128)
    assert loaded.backbone.llm.get_output_embeddings().weight.shape == (32064, 128)
    assert loaded.backbone.llm.config.pad_token_id == 32000
    assert loaded.action_tokenizer.n_bins == 256 and loaded.action_tokenizer.token_id_range == (31744, 31999)


# ids -> bins: token t is bin 31999 - t (clamped to 0..254); bin i's centre is -1 + (2i + 1) / 255.
ACTION_IDS = [[31999, 31872, 31745], [31744, 31999, 31872]]
NORMALIZED = [[-254 / 255, 0.0, 254 / 255], [254 / 255, -254 / 255, 0.0]]
# bridge_orig: 0.5 * (a + 1) * (q99 - q01) + q01 on the first two dimensions; the gripper (mask false)
# unchanged.
BRIDGE_ACTIONS = [
    [-0.1 + 0.2 / 255, 0.5, 254 / 255],  # -0.0992156..., 0.5, 0.9960784...
    [0.3 - 0.2 / 255, 0.5 / 255, 0.0],  #  0.2992156..., 0.0019607..., 0.0
]
# fractal (no mask: every dimension): q01 [-1, -0.5, 0], q99 [1, 0.5, 1].
FRACTAL_ACTIONS = [[-254 / 255, 0.0, 254.5 / 255], [254 / 255, -0.5 + 0.5 / 255, 0.5]]


def assert_action_round_trip(loaded: LoadedVLA) -> None:
    normalized = loaded.action_tokenizer.decode_token_ids_to_actions(torch.tensor(ACTION_IDS))
    np.testing.assert_allclose(normalized.numpy(), NORMALIZED, rtol=0, atol=1e-12)
    bridge = loaded.unnormalize_actions(normalized, "bridge_orig")
    np.testing.assert_allclose(bridge, BRIDGE_ACTIONS, rtol=0, atol=1e-12)
    fractal = loaded.unnormalize_actions(normalized, "fractal")
    np.testing.assert_allclose(fractal, FRACTAL_ACTIONS, rtol=0, atol=1e-12)
    assert loaded.get_action_dim("bridge_orig") == 3
    with pytest.raises(NormStatsError, match="'bridge_orig', 'fractal'"):
        loaded.unnormalize_actions(normalized)  # two datasets: unnorm_key is required


# === HF OpenVLA layout ===
def test_hf_layout_loads_every_llm_tensor_and_nothing_else(tiny, tmp_path, caplog) -> None:
    tokenizer, shapes = tiny
    llm = random_llm(shapes, seed=1, dtype=torch.bfloat16)
    directory = write_hf_openvla(tmp_path / "openvla-tiny", tokenizer, llm)
    with caplog.at_level("INFO", logger="llm_backbones.persistence.openvla"):
        loaded = load_vla_backbone(directory)
    assert (loaded.layout, loaded.llm_backbone_id, loaded.source) == ("openvla-hf", TINY, directory)
    assert_llm_equal(loaded, llm)  # bf16 as stored: the default dtype is the checkpoint's
    assert_openvla_vocabulary(loaded)
    assert loaded.unused_tensors == tuple(sorted(HF_VISION))
    assert loaded.norm_stats == NORM_STATS
    assert not loaded.backbone.training and not any(p.requires_grad for p in loaded.backbone.parameters())
    [line] = [r.getMessage() for r in caplog.records if r.name == "llm_backbones.persistence.openvla"]
    for name in HF_VISION:
        assert name in line


def test_hf_layout_actions_round_trip(tiny, tmp_path) -> None:
    tokenizer, shapes = tiny
    llm = random_llm(shapes, 2, torch.bfloat16)
    loaded = load_vla_backbone(write_hf_openvla(tmp_path / "ckpt", tokenizer, llm))
    assert_action_round_trip(loaded)


def test_hf_layout_forward_matches_the_written_weights(tiny, tmp_path) -> None:
    """The loaded backbone computes with the checkpoint's weights: same logits as a model given them
    directly."""
    tokenizer, shapes = tiny
    llm = random_llm(shapes, 3, torch.float32)
    loaded = load_vla_backbone(write_hf_openvla(tmp_path / "ckpt", tokenizer, llm))
    reference, _ = get_llm_backbone_and_tokenizer(TINY, inference_mode=True)
    reference.load_state_dict({f"llm.{k}": v for k, v in llm.items()})
    prompt = "In: What action should the robot take to pick up the block?\nOut:"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(loaded.backbone(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_hf_layout_dtype_override(tiny, tmp_path) -> None:
    tokenizer, shapes = tiny
    llm = random_llm(shapes, 4, torch.bfloat16)
    loaded = load_vla_backbone(write_hf_openvla(tmp_path / "ckpt", tokenizer, llm), dtype=torch.float32)
    state = loaded.backbone.state_dict()
    assert {t.dtype for t in state.values()} == {torch.float32}
    assert torch.equal(state["llm.model.norm.weight"], llm["model.norm.weight"].float())


def test_hf_layout_missing_llm_tensor_is_named(tiny, tmp_path) -> None:
    tokenizer, shapes = tiny
    llm = random_llm(shapes, 5, torch.bfloat16)
    directory = write_hf_openvla(tmp_path / "ckpt", tokenizer, llm, drop=["language_model.model.norm.weight"])
    with pytest.raises(StateDictMismatchError, match=r"language_model\.model\.norm\.weight") as info:
        load_vla_backbone(directory)
    assert (info.value.missing, info.value.unexpected) == (["language_model.model.norm.weight"], [])


def test_hf_layout_unexpected_llm_tensor_is_named(tiny, tmp_path) -> None:
    tokenizer, shapes = tiny
    extra = {"language_model.model.layers.2.mlp.up_proj.weight": torch.zeros(344, 128, dtype=torch.bfloat16)}
    llm = random_llm(shapes, 6, torch.bfloat16)
    directory = write_hf_openvla(tmp_path / "ckpt", tokenizer, llm, extra=extra)
    with pytest.raises(StateDictMismatchError) as info:
        load_vla_backbone(directory)
    assert info.value.missing == []
    assert info.value.unexpected == ["language_model.model.layers.2.mlp.up_proj.weight"]


@pytest.mark.parametrize(
    "shard", ["../outside.safetensors", "/tmp/outside.safetensors", "sub/../../x.safetensors"]
)
def test_hf_layout_refuses_index_entries_outside_the_directory(tiny, tmp_path, shard) -> None:
    """The backbone loader's containment check (files.contained): its UnsafeFileError, reason "outside"."""
    tokenizer, shapes = tiny
    directory = write_hf_openvla(tmp_path / "ckpt", tokenizer, random_llm(shapes, 7, torch.bfloat16))
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    index["weight_map"]["language_model.model.norm.weight"] = shard
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UnsafeFileError, match="outside the checkpoint directory") as info:
        load_vla_backbone(directory)
    assert info.value.reason == "outside"
    assert f"model.safetensors.index.json names {shard!r}" in str(info.value)


def test_hf_layout_opens_safetensors_only(tiny, tmp_path) -> None:
    tokenizer, shapes = tiny
    directory = write_hf_openvla(tmp_path / "ckpt", tokenizer, random_llm(shapes, 8, torch.bfloat16))
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    index["weight_map"]["language_model.model.norm.weight"] = "pytorch_model.bin"
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    (directory / "pytorch_model.bin").write_bytes(b"not opened")
    with pytest.raises(UnsafeFileError, match="which is not a safetensors file") as info:
        load_vla_backbone(directory)  # the backbone loader's own refusal (files.weight_files)
    assert info.value.reason == "pickle"
    for file in [*directory.glob("*.safetensors"), directory / "model.safetensors.index.json"]:
        file.unlink()
    with pytest.raises(VLACheckpointError, match=r"pytorch_model\.bin"):
        load_vla_backbone(directory)


def test_hf_layout_unknown_llm_id_names_the_registry(tiny, tmp_path) -> None:
    tokenizer, shapes = tiny
    llm = random_llm(shapes, 9, torch.bfloat16)
    overrides = {"llm_backbone_id": "llama2-7b-puree"}
    directory = write_hf_openvla(tmp_path / "ckpt", tokenizer, llm, config_overrides=overrides)
    with pytest.raises(UnknownBackboneError, match="llama2-7b-pure"):
        load_vla_backbone(directory)


def test_hf_layout_pad_id_must_match_the_tokenizer(tiny, tmp_path) -> None:
    tokenizer, shapes = tiny
    llm = random_llm(shapes, 10, torch.bfloat16)
    directory = write_hf_openvla(tmp_path / "ckpt", tokenizer, llm, config_overrides={"pad_token_id": 31999})
    with pytest.raises(VLACheckpointError, match="pad_token_id=31999"):
        load_vla_backbone(directory)


# === Prismatic training layout ===
def test_prismatic_run_dir_loads_the_latest_step(tiny, tmp_path, caplog) -> None:
    tokenizer, shapes = tiny
    early, late = random_llm(shapes, 11, torch.float32), random_llm(shapes, 12, torch.float32)
    run = write_prismatic_run(tmp_path / "run", {5000: early, 10000: late})
    with caplog.at_level("INFO", logger="llm_backbones.persistence.openvla"):
        loaded = load_vla_backbone(run)
    assert loaded.source.name == "step-010000-epoch-01-loss=0.10000.pt" and loaded.layout == "prismatic"
    assert_llm_equal(loaded, late)
    assert_openvla_vocabulary(loaded)
    assert loaded.unused_tensors == (
        "projector.projector.0.bias",
        "projector.projector.0.weight",
        "vision_backbone.dino_featurizer.pos_embed",
        "vision_backbone.siglip_featurizer.patch_embed.proj.bias",
    )
    assert loaded.norm_stats == NORM_STATS
    [line] = [r.getMessage() for r in caplog.records if r.name == "llm_backbones.persistence.openvla"]
    assert "vision_backbone.dino_featurizer.pos_embed" in line and "projector.projector.0.weight" in line
    assert_action_round_trip(loaded)


def test_prismatic_step_and_pt_path_select_a_checkpoint(tiny, tmp_path) -> None:
    tokenizer, shapes = tiny
    early, late = random_llm(shapes, 13, torch.float32), random_llm(shapes, 14, torch.float32)
    run = write_prismatic_run(tmp_path / "run", {5000: early, 10000: late})
    assert_llm_equal(load_vla_backbone(run, step=5000), early)
    pt = run / "checkpoints" / "step-005000-epoch-00-loss=0.5000.pt"
    loaded = load_vla_backbone(pt)
    assert loaded.source == pt and loaded.norm_stats == NORM_STATS  # the run directory is two levels up
    assert_llm_equal(loaded, early)
    with pytest.raises(VLACheckpointError, match="step-005000-epoch-00-loss=0.5000.pt"):
        load_vla_backbone(run, step=7)


def test_prismatic_vla_run_names_its_llm_through_base_vlm(tiny, tmp_path) -> None:
    """A VLA run's config has no llm_backbone_id: it comes from `vla.base_vlm` (here the base VLM's run
    dir)."""
    tokenizer, shapes = tiny
    base = write_prismatic_run(tmp_path / "prism-tiny", {1: random_llm(shapes, 15, torch.float32)})
    llm = random_llm(shapes, 16, torch.float32)
    config = {"vla": {"vla_id": "prism-tiny+mx-bridge", "base_vlm": str(base), "data_mix": "bridge"}}
    run = write_prismatic_run(tmp_path / "vla-run", {20: llm}, config=config)
    loaded = load_vla_backbone(run)
    assert loaded.llm_backbone_id == TINY
    assert_llm_equal(loaded, llm)


def test_prismatic_unexpected_llm_tensor_is_named(tiny, tmp_path) -> None:
    tokenizer, shapes = tiny
    extra = {"llm.model.extra.weight": torch.zeros(2)}
    run = write_prismatic_run(tmp_path / "run", {1: random_llm(shapes, 17, torch.float32)}, extra=extra)
    with pytest.raises(StateDictMismatchError) as info:
        load_vla_backbone(run)
    assert (info.value.missing, info.value.unexpected) == ([], ["llm_backbone.llm.model.extra.weight"])


_UNPICKLED: list[str] = []


def _record_unpickling(note: str) -> str:
    _UNPICKLED.append(note)
    return note


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (_record_unpickling, ("unpickled",))


def test_prismatic_checkpoint_is_never_fully_unpickled(tiny, tmp_path) -> None:
    tokenizer, shapes = tiny
    run = write_prismatic_run(tmp_path / "run", {1: random_llm(shapes, 18, torch.float32)})
    [pt] = (run / "checkpoints").glob("*.pt")
    checkpoint = torch.load(pt, weights_only=True)
    checkpoint["optimizer"] = _RunsCodeWhenUnpickled()
    torch.save(checkpoint, pt)
    with pytest.raises(VLACheckpointError, match="weights_only=True"):
        load_vla_backbone(pt)
    assert _UNPICKLED == []


def test_prismatic_checkpoint_without_llm_backbone(tiny, tmp_path) -> None:
    tokenizer, shapes = tiny
    run = write_prismatic_run(tmp_path / "run", {1: random_llm(shapes, 19, torch.float32)})
    [pt] = (run / "checkpoints").glob("*.pt")
    torch.save({"model": {"projector": {}}}, pt)
    with pytest.raises(VLACheckpointError, match=r"found keys \['projector'\]"):
        load_vla_backbone(run)


def test_not_a_checkpoint(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(VLACheckpointError, match="notes.txt"):
        load_vla_backbone(tmp_path)


# === Un-normalizing: clipped to [-1, 1] first, as OpenVLA's bins ===
def test_actions_outside_minus_one_one_are_clipped_before_unnormalizing() -> None:
    """bridge_orig: q01 [-0.1, 0, -2], q99 [0.3, 1, 2], gripper (last) not normalized: 1.7 -> 1 -> q99 0.3,
    -5 -> -1 -> q01 0.0, and the gripper's 3.0 -> 1.0 (kept, clipped)."""
    got = unnormalize_actions([[1.7, -5.0, 3.0], [-1.0, 1.0, -1.5]], NORM_STATS, "bridge_orig")
    np.testing.assert_allclose(got, [[0.3, 0.0, 1.0], [-0.1, 1.0, -1.0]], rtol=0, atol=1e-15)


# === Prismatic's model table (prismatic/conf/models.py, inherited fields resolved) ===
def test_prismatic_models_written_out_rows() -> None:
    assert PRISMATIC_MODELS["prism-dinosiglip-224px+7b"] == PrismaticModel(
        "llama2-7b-pure", "dinosiglip-vit-so-224px", "resize-naive", "no-align+fused-gelu-mlp"
    )  # OpenVLA's base VLM
    # LLaVa-v1.5 7B itself: the one multi-stage ("gelu-mlp", with an align stage) base of the table
    assert PRISMATIC_MODELS["reproduction-llava-v15+7b"] == PrismaticModel(
        "vicuna-v15-7b", "clip-vit-l-336px", "letterbox", "gelu-mlp"
    )
    # inherits everything but its id and vision backbone from Exp_7B_One_Stage
    assert PRISMATIC_MODELS["siglip-224px+7b"] == PrismaticModel(
        "vicuna-v15-7b", "siglip-vit-so400m", "letterbox", "no-align+gelu-mlp"
    )
    # from Exp_13B_One_Stage: 13B vicuna overridden by llama2-13b-pure, projector inherited
    assert PRISMATIC_MODELS["prism-clip+13b"] == PrismaticModel(
        "llama2-13b-pure", "clip-vit-l-336px", "resize-naive", "no-align+gelu-mlp"
    )
    # as Prismatic declares it (its vision backbone is CLIP's, not SigLIP's)
    assert PRISMATIC_MODELS["prism-siglip+13b"].vision_backbone_id == "clip-vit-l-336px"
    assert PRISMATIC_MODELS["phi-2+3b"] == PrismaticModel(
        "phi-2-3b", "clip-vit-l-336px", "letterbox", "no-align+gelu-mlp"
    )
    assert len(PRISMATIC_MODELS) == 50
    assert dict(PRISMATIC_MODEL_LLMS) == {k: m.llm_backbone_id for k, m in PRISMATIC_MODELS.items()}
    with pytest.raises(TypeError):
        PRISMATIC_MODELS["mine"] = PRISMATIC_MODELS["phi-2+3b"]  # type: ignore[index]


def test_prismatic_vision_config_of_vlm_and_vla_runs(tiny, tmp_path) -> None:
    vlm = {"model": {"vision_backbone_id": "siglip-vit-so400m-384px", "image_resize_strategy": "letterbox"}}
    assert prismatic_vision_config(vlm) == ("siglip-vit-so400m-384px", "letterbox")
    vla = {"vla": {"vla_id": "prism-dinosiglip-224px+mx-bridge", "base_vlm": "prism-dinosiglip-224px+7b"}}
    assert prismatic_vision_config(vla) == ("dinosiglip-vit-so-224px", "resize-naive")
    tokenizer, shapes = tiny
    base = write_prismatic_run(tmp_path / "prism-tiny", {1: random_llm(shapes, 20, torch.float32)})
    config = json.loads((base / "config.json").read_text())
    config["model"]["image_resize_strategy"] = "letterbox"
    (base / "config.json").write_text(json.dumps(config))
    assert prismatic_vision_config({"vla": {"base_vlm": str(base)}}) == (
        "dinosiglip-vit-so-224px",
        "letterbox",
    )
    with pytest.raises(VLACheckpointError, match=r"vla\.base_vlm='dinosiglip-224px\+7b'"):
        prismatic_vision_config({"vla": {"base_vlm": "dinosiglip-224px+7b"}})
