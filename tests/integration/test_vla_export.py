"""`export_openvla`: a policy written as an HF OpenVLA checkpoint, checked three ways.

- `load_vla` of the export gives the in-memory policy's token ids and actions (fp32), and in bf16 the bf16
  policy's (the dtype kept, the weights sharded with an index);
- the export's tensor names and shapes are the list OpenVLA's own `save_pretrained` wrote
  (tests/golden/fixtures/openvla_policy/*/tensors.json), its config.json has OpenVLA's keys and values, its
  preprocessor and processor configs are OpenVLA's;
- OpenVLA's own code loaded the same exports (`AutoModelForVision2Seq.from_pretrained(...,
  trust_remote_code=True)` under transformers 4.40.1 / timm 0.9.16: scripts/check_export_with_openvla.py,
  result in tests/golden/fixtures/openvla_export/result.json): the export re-made here is byte-identical in
  its weights and equal in its config to the one it loaded, and `load_vla` of it gives the actions OpenVLA's
  code gave.

Fixture checkpoints: the fused dinosiglip-224 (DINOv2 LayerScale, SigLIP's attn_pool head) and the single
DINOv2 letterbox one (whose argmax leaves the action tokens at some steps: compared with
constrain_to_actions=False, OpenVLA's rule).
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import openvla_reference_spec as spec
from llm_backbones.errors import CheckpointError, NonFiniteWeightsError, OutputPathError, VLACheckpointError
from llm_backbones.vla.export import export_openvla
from llm_backbones.vla.loading import load_vla
from vla_checkpoints import cases_of, fixture_dir, tensors_of, write_hf_checkpoint

pytestmark = pytest.mark.integration

NAMES = ["dinosiglip-224-naive", "dinov2-224-letterbox"]
RESULT = Path(__file__).parents[1] / "golden" / "fixtures" / "openvla_export" / "result.json"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """name -> (source checkpoint, in-memory policy, export folder, policy reloaded from the export)."""
    out = {}
    for name in NAMES:
        root = tmp_path_factory.mktemp(name)
        source = write_hf_checkpoint(name, root / "source")
        policy = load_vla(source, vision_depth=spec.VISION_DEPTH, constrain_to_actions=False)
        export = export_openvla(policy, root / name)
        reloaded = load_vla(export, vision_depth=spec.VISION_DEPTH, constrain_to_actions=False)
        out[name] = (source, policy, export, reloaded)
    return out


@pytest.fixture(scope="module")
def runs(made):
    """name -> {"policy": [(action, token ids)], "reloaded": [...]} on the fixture's cases, run once."""
    return {
        name: {
            which: [_run(policy, case) for case in cases_of(name)]
            for which, policy in (("policy", made[name][1]), ("reloaded", made[name][3]))
        }
        for name in NAMES
    }


def _run(policy, case) -> tuple[np.ndarray, list[int]]:
    action = policy.predict_action(
        spec.image(case["index"], *case["size"]), case["instruction"], unnorm_key="bridge_orig"
    )
    return action, policy.last_tokens[0].tolist()


def _header(file: Path) -> dict:
    """A safetensors file's header: {name: {dtype, shape, data_offsets}} (and __metadata__)."""
    with open(file, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return json.loads(handle.read(length))


def _saved(directory: Path) -> dict[str, tuple[list[int], str]]:
    out = {}
    for file in sorted(directory.glob("*.safetensors")):
        for name, info in _header(file).items():
            if name != "__metadata__":
                out[name] = (info["shape"], info["dtype"])
    return out


@pytest.mark.parametrize("name", NAMES)
def test_reloaded_export_gives_the_same_actions(name, made, runs):
    _, policy, _, reloaded = made[name]
    assert reloaded.vision_backbone_id == policy.vision_backbone_id
    assert reloaded.dtype == policy.dtype == torch.float32
    for case, (action, tokens), (again, again_tokens) in zip(
        cases_of(name), runs[name]["policy"], runs[name]["reloaded"], strict=True
    ):
        assert again_tokens == tokens == case["generated_ids"], case["index"]
        np.testing.assert_array_equal(again, action)
    # every tensor, the set-aside ones included, comes back as it was
    for tower, back in zip(policy.vision.towers, reloaded.vision.towers, strict=True):
        ours, theirs = tower.timm_state_dict(), back.timm_state_dict()
        assert list(ours) == list(theirs)
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("name", NAMES)
def test_export_holds_openvla_tensor_list(name, made):
    """Names, shapes and dtype of every tensor == what OpenVLA's save_pretrained wrote (tensors.json)."""
    _, _, export, _ = made[name]
    want = {t["name"]: (t["shape"], "F32") for t in tensors_of(name)}
    assert _saved(export) == want
    assert not (export / "model.safetensors.index.json").exists()  # one file below max_shard_size


@pytest.mark.parametrize("name", NAMES)
def test_export_configs_are_openvlas(name, made):
    _, policy, export, _ = made[name]
    for file in (
        "config.json",
        "preprocessor_config.json",
        "processor_config.json",
        "generation_config.json",
    ):
        theirs = json.loads((fixture_dir(name) / file).read_text())
        ours = json.loads((export / file).read_text())
        assert sorted(ours) == sorted(theirs), file
        # every value equal but the writer's transformers version (ours: this process's)
        if file in ("config.json", "generation_config.json"):
            assert theirs.pop("transformers_version") == "4.40.1"
            assert ours.pop("transformers_version") == transformers.__version__
        assert ours == theirs, file
    assert json.loads((export / "dataset_statistics.json").read_text()) == policy.norm_stats
    tokenizer_config = json.loads((export / "tokenizer_config.json").read_text())
    for key in ("auto_map", "processor_class", "tokenizer_class", "pad_token", "model_max_length"):
        assert (
            tokenizer_config[key]
            == json.loads((fixture_dir(name) / "tokenizer_config.json").read_text())[key]
        )
    # BPE merges as "a b" strings: the form tokenizers 0.19.1 (OpenVLA's pin) reads
    merges = json.loads((export / "tokenizer.json").read_text())["model"]["merges"]
    assert merges and all(isinstance(m, str) and m.count(" ") == 1 for m in merges)


def test_bf16_export_reloads_in_bf16_sharded(made, tmp_path):
    """dtype=torch.bfloat16: every tensor stored in bf16, sharded with an index above max_shard_size, and
    reloaded it equals the checkpoint loaded in bf16 (tensors and actions)."""
    name = NAMES[0]
    source, policy, _, _ = made[name]
    export = export_openvla(policy, tmp_path / "bf16", dtype=torch.bfloat16, max_shard_size="64MB")
    index = json.loads((export / "model.safetensors.index.json").read_text())
    files = sorted(p.name for p in export.glob("*.safetensors"))
    assert len(files) > 1 and sorted(set(index["weight_map"].values())) == files
    assert {k: (s, "BF16") for k, (s, _) in _saved(export).items()} == _saved(export)
    assert set(_saved(export)) == {t["name"] for t in tensors_of(name)}
    config = json.loads((export / "config.json").read_text())
    assert config["torch_dtype"] == config["text_config"]["torch_dtype"] == "bfloat16"
    reloaded = load_vla(export, vision_depth=spec.VISION_DEPTH, constrain_to_actions=False)
    direct = load_vla(
        source, vision_depth=spec.VISION_DEPTH, constrain_to_actions=False, dtype=torch.bfloat16
    )
    for module in ("vision", "projector", "backbone"):
        ours, theirs = getattr(reloaded, module).state_dict(), getattr(direct, module).state_dict()
        assert all(t.dtype == torch.bfloat16 for t in ours.values() if t.is_floating_point()), module
        assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours), module
    case = cases_of(name)[0]  # bf16 on CPU is slow: one case (the tensors are equal anyway)
    action, tokens = _run(reloaded, case)
    again, again_tokens = _run(direct, case)
    assert tokens == again_tokens
    np.testing.assert_array_equal(action, again)


def test_openvla_loads_the_export_and_gives_the_same_actions(made, runs):
    """tests/golden/fixtures/openvla_export/result.json, written by OpenVLA's own code on these exports."""
    result = json.loads(RESULT.read_text())
    assert result["versions"]["transformers"] == "4.40.1" and result["versions"]["timm"].startswith("0.9.")
    assert set(result["checkpoints"]) == set(spec.CHECKPOINTS)
    for name, entry in result["checkpoints"].items():
        assert entry["model_class"].endswith("modeling_prismatic.OpenVLAForActionPrediction"), name
        assert entry["model_class"].startswith("transformers_modules."), name  # via auto_map
        assert not any(entry["loading_info"].values()), (name, entry["loading_info"])
        assert all(all(c["same_as_original"].values()) for c in entry["cases"]), name
    assert result["bf16"]["parameter_dtypes"] == ["bfloat16"]
    assert not any(result["bf16"]["loading_info"].values())
    for name in NAMES:
        _, _, export, reloaded = made[name]
        entry = result["checkpoints"][name]
        # the export OpenVLA loaded is this one: the same weight bytes and config
        config = json.loads((export / "config.json").read_text())
        config.pop("transformers_version")
        assert config == entry["export"]["config"], name
        for file, digest in entry["export"]["weights_sha256"].items():
            assert hashlib.sha256((export / file).read_bytes()).hexdigest() == digest, (name, file)
        assert [c["index"] for c in entry["cases"]] == [c["index"] for c in cases_of(name)]
        for case, (action, tokens) in zip(entry["cases"], runs[name]["reloaded"], strict=True):
            assert reloaded.prompt_ids(case["instruction"]).tolist()[:-1] == case["input_ids"]
            assert tokens == case["generated_ids"], (name, case["index"])
            np.testing.assert_allclose(action, case["action"], rtol=0, atol=1e-12)


# --- refusals ---
def test_refuses_a_non_empty_folder_unless_overwrite(made, tmp_path):
    _, policy, _, _ = made["dinov2-224-letterbox"]
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(OutputPathError, match="non-empty folder.*overwrite=True"):
        export_openvla(policy, target)
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]
    export_openvla(policy, target, overwrite=True)
    assert (target / "config.json").is_file() and not (target / "notes.txt").exists()
    assert not list(tmp_path.glob(".taken.*"))  # no temporary folder left
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_openvla(policy, empty) == empty and (empty / "model.safetensors").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="is a file"):
        export_openvla(policy, tmp_path / "file")


def test_refuses_a_policy_without_its_set_aside_tensors(made, tmp_path):
    _, policy, _, _ = made["dinosiglip-224-naive"]
    tower = policy.vision.fused_featurizer
    kept = tower.set_aside
    tower.set_aside = {k: v for k, v in kept.items() if not k.startswith("attn_pool.")}
    try:
        with pytest.raises(VLACheckpointError, match=r"vit_so400m_patch14_siglip_224.*attn_pool\.latent"):
            export_openvla(policy, tmp_path / "out")
    finally:
        tower.set_aside = kept
    assert not (tmp_path / "out").exists()


def test_refuses_non_finite_weights(made, tmp_path):
    _, policy, _, _ = made["dinov2-224-letterbox"]
    weight = policy.projector.fc2.weight
    before = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[0, 0] = float("nan")
        with pytest.raises(NonFiniteWeightsError, match=r"projector\.fc2\.weight.*1 NaN") as info:
            export_openvla(policy, tmp_path / "nan")
        assert info.value.tensor == "projector.fc2.weight"
        with torch.no_grad():
            weight[0, 0] = 1e6  # finite in fp32, inf in fp16
        with pytest.raises(NonFiniteWeightsError, match="after the cast to float16"):
            export_openvla(policy, tmp_path / "fp16", dtype=torch.float16)
    finally:
        with torch.no_grad():
            weight.copy_(before)
    assert not (tmp_path / "nan").exists() and not (tmp_path / "fp16").exists()
    assert not list(tmp_path.glob(".*"))


def test_bad_arguments(made, tmp_path):
    _, policy, _, _ = made["dinov2-224-letterbox"]
    with pytest.raises(CheckpointError, match="expects a VLAPolicy"):
        export_openvla(policy.backbone, tmp_path / "a")
    with pytest.raises(CheckpointError, match="floating torch dtype"):
        export_openvla(policy, tmp_path / "a", dtype=torch.int8)
    with pytest.raises(CheckpointError, match="max_shard_size"):
        export_openvla(policy, tmp_path / "a", max_shard_size="lots")
    with pytest.raises(ValueError, match="q01"):
        export_openvla(policy, tmp_path / "a", norm_stats={"robot": {"action": {"q99": [1.0]}}})
    assert not (tmp_path / "a").exists()


def test_norm_stats_argument_is_written(made, tmp_path):
    _, policy, _, _ = made["dinov2-224-letterbox"]
    stats = {"my_robot": {"action": {"q01": np.array([-1.0, 0.0]), "q99": np.array([1.0, 1.0]),
                                     "mask": np.array([True, False])}}}  # fmt: skip
    export = export_openvla(policy, tmp_path / "stats", norm_stats=stats)
    plain = {"my_robot": {"action": {"q01": [-1.0, 0.0], "q99": [1.0, 1.0], "mask": [True, False]}}}
    assert json.loads((export / "dataset_statistics.json").read_text()) == plain
    assert json.loads((export / "config.json").read_text())["norm_stats"] == plain
