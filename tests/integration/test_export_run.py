"""`export_run` / `llm-backbones export`: any checkpoint of a run as a model other tools load (issue 21), and
the LoRA adapters alone in peft's format beside the merged export (issue 22 §5). Tiny runs: the OpenVLA
fixture policy on the toy robot dataset of test_finetune_vla, and llama2-tiny-pure on the conversations of
test_training_loop_resume; 4 steps, a checkpoint every 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_finetune_vla import write_dataset
from test_training_loop_resume import DATA, SETTINGS

from llm_backbones.errors import CheckpointError, OutputPathError
from llm_backbones.training.export import export_run
from vla_checkpoints import write_hf_checkpoint

pytestmark = pytest.mark.integration

VISION_DEPTH = 3
LORA = {"lora_rank": 8, "lora_alpha": 4, "lora_dropout": 0.25}
# Every nn.Linear of the fixture policy's LLM (2 decoder layers; its head excluded) and of its projector
# (not fused: fc1, fc2); the vision towers are frozen (no --train-vision).
VLA_TARGETS = {
    f"backbone.llm.model.layers.{i}.{part}"
    for i in (0, 1)
    for part in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    )
} | {"projector.fc1", "projector.fc2"}


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def assert_same_files(ours: Path, theirs: Path) -> None:
    """The same files; weights equal tensor by tensor, bit for bit; every other file byte for byte."""
    names = sorted(p.name for p in ours.iterdir() if p.is_file())
    assert names == sorted(p.name for p in theirs.iterdir() if p.is_file())
    ours_t, theirs_t = tensors(ours), tensors(theirs)
    assert ours_t.keys() == theirs_t.keys() and ours_t
    for name, tensor in ours_t.items():
        assert tensor.dtype == theirs_t[name].dtype and torch.equal(tensor, theirs_t[name]), name
    for name in names:
        if not name.endswith(".safetensors"):
            assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name


def load(path):
    from llm_backbones.vla.loading import load_vla

    return load_vla(path, vision_depth=VISION_DEPTH)


def weights(policy) -> dict[str, torch.Tensor]:
    """Every parameter of a policy, named as in `VLATrainModule` (vision., projector., backbone.)."""
    parts = {"vision": policy.vision, "projector": policy.projector, "backbone": policy.backbone}
    return {f"{part}.{n}": p for part, module in parts.items() for n, p in module.named_parameters()}


# === A finetune-vla run ===
@pytest.fixture(scope="module")
def vla_base(tmp_path_factory) -> Path:
    return write_hf_checkpoint("clip-224-crop", tmp_path_factory.mktemp("vla") / "checkpoint")


@pytest.fixture(scope="module")
def vla_run(vla_base, tmp_path_factory) -> Path:
    from llm_backbones.training.vla import run_finetune_vla

    root = tmp_path_factory.mktemp("vla-run")
    data = write_dataset(root / "toy")
    output = root / "run"
    run_finetune_vla(
        str(vla_base),
        str(data),
        output=str(output),
        vision_depth=VISION_DEPTH,
        mode="lora",
        steps=4,
        save_every=2,
        batch_size=8,
        lr=1e-2,
        **LORA,
    )
    return output


def test_vla_export_of_the_final_step_is_the_runs_own_export(vla_run, tmp_path):
    assert (vla_run / "checkpoints" / "latest").read_text() == "step-00000004\n"
    path = export_run(vla_run, output=tmp_path / "exported")  # default: the latest, step 4
    assert path == tmp_path / "exported"
    assert_same_files(path, vla_run / "export")
    assert_same_files(path / "adapter", vla_run / "adapter")
    assert json.loads((path / "dataset_statistics.json").read_text()).keys() == {"toy"}


def test_vla_checkpoint_without_statistics_takes_the_datas(vla_run, tmp_path):
    """Checkpoints written before the statistics were kept in meta.json: computed from the run's data again,
    the same export."""
    run = tmp_path / "run"
    shutil.copytree(vla_run, run)
    meta_file = run / "checkpoints" / "step-00000004" / "meta.json"
    meta = json.loads(meta_file.read_text())
    assert meta.pop("norm_stats").keys() == {"toy"}
    meta_file.write_text(json.dumps(meta))
    assert_same_files(export_run(run, output=tmp_path / "exported"), vla_run / "export")


def test_vla_export_of_an_intermediate_step_loads_and_differs(vla_run, vla_base, tmp_path):
    path = export_run(vla_run, step=2, output=tmp_path / "step2")
    policy, final, base = load(path), load(vla_run / "export"), load(vla_base)
    assert policy.norm_stats.keys() == {"toy"}
    ours, final_weights, base_weights = weights(policy), weights(final), weights(base)
    name = "backbone.llm.model.layers.0.self_attn.q_proj.weight"
    assert name in ours
    assert not torch.equal(ours[name], final_weights[name])  # 2 steps short of the end
    assert not torch.equal(ours[name], base_weights[name])  # but trained
    for frozen in [n for n in ours if n.startswith("vision.")]:  # the towers did not train
        assert torch.equal(ours[frozen], base_weights[frozen]), frozen
    adapter = tensors(path / "adapter")
    assert not all(torch.equal(t, tensors(vla_run / "adapter")[k]) for k, t in adapter.items())


def test_vla_adapter_in_peft_format_merges_into_the_export(vla_run, vla_base):
    from peft import PeftModel

    from llm_backbones.training.vla import VLATrainModule

    adapter = vla_run / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (8, 4, 0.25)
    assert set(config["target_modules"]) == VLA_TARGETS
    assert config["base_model_name_or_path"] == str(vla_base)

    base = weights(load(vla_base))
    merged = PeftModel.from_pretrained(VLATrainModule(load(vla_base)), adapter).merge_and_unload()
    ours = dict(merged.named_parameters())
    exported = weights(load(vla_run / "export"))
    assert ours.keys() == exported.keys()
    for name, weight in exported.items():
        torch.testing.assert_close(ours[name], weight, rtol=0, atol=0, msg=name)
    moved = [n for n in exported if not torch.equal(exported[n], base[n])]
    assert {n.removesuffix(".weight") for n in moved} == VLA_TARGETS  # exactly the adapted layers changed


def test_cli_export(vla_run, tmp_path):
    from typer.testing import CliRunner

    from llm_backbones.app.cli import app

    output = tmp_path / "cli"
    args = ["export", str(vla_run), "--step", "2", "--output", str(output)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "step 2" in result.output and str(output) in result.output and "adapter" in result.output
    assert load(output).norm_stats.keys() == {"toy"}
    assert (output / "adapter" / "adapter_model.safetensors").is_file()

    again = CliRunner().invoke(app, args)  # the output exists: refused, nothing replaced
    assert again.exit_code == 1 and "--overwrite" in again.output
    before = tensors(output)
    replaced = CliRunner().invoke(app, ["export", str(vla_run), "--output", str(output), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert_same_files(output, vla_run / "export")  # now the latest step's
    assert not all(torch.equal(t, tensors(output)[k]) for k, t in before.items())

    missing = CliRunner().invoke(
        app, ["export", str(vla_run), "--step", "3", "--output", str(tmp_path / "x")]
    )
    assert missing.exit_code == 1 and "no checkpoint of step 3" in missing.output
    assert not (tmp_path / "x").exists()


# === A finetune (LLM) run ===
@pytest.fixture(scope="module")
def llm_run(tiny_llama_dir, tmp_path_factory) -> Path:
    from llm_backbones.training.finetune import run_finetune

    root = tmp_path_factory.mktemp("llm-run")
    data = root / "data.json"
    data.write_text(json.dumps(DATA))
    settings = {**SETTINGS, "steps": 4, "save_every": 2, "mode": "lora", "lr": 1e-2}
    run_finetune(data=str(data), output=str(root / "run"), **settings)
    return root / "run"


def test_llm_export_of_the_final_step_is_the_runs_own_export(llm_run, tmp_path):
    from llm_backbones.persistence.checkpoint import load_backbone

    path = export_run(llm_run, output=tmp_path / "exported")
    # the run's export lies in export/, beside the run's own files
    exported = sorted(p.name for p in path.iterdir() if p.is_file())
    assert exported == sorted(p.name for p in (llm_run / "export").iterdir() if p.is_file())
    for name, tensor in tensors(path).items():
        assert torch.equal(tensor, tensors(llm_run / "export")[name]), name
    for name in exported:
        assert (path / name).read_bytes() == (llm_run / "export" / name).read_bytes(), name
    assert_same_files(path / "adapter", llm_run / "adapter")
    load_backbone(path)  # fingerprint checked

    step2 = export_run(llm_run, step=2, output=tmp_path / "step2")
    name = "llm.model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(
        load_backbone(step2)[0].state_dict()[name], load_backbone(path)[0].state_dict()[name]
    )


def test_llm_adapter_in_peft_format_merges_into_the_export(llm_run):
    from peft import PeftModel

    from llm_backbones.core.backbones.factory import get_llm_backbone_and_tokenizer
    from llm_backbones.persistence.checkpoint import load_backbone

    config = json.loads((llm_run / "adapter" / "adapter_config.json").read_text())
    # the LLM recipe's LoRA (training.lora): r 16, alpha 32, no dropout, every linear layer of the decoder
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (16, 32, 0.0)
    assert set(config["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    # The PAD rows the build adds are drawn at random (mean resizing); the run drew them after seeding with
    # its seed (0, the default), and the adapter holds no embeddings (peft's format, LoRA weights only).
    torch.manual_seed(0)
    base, _ = get_llm_backbone_and_tokenizer("llama2-tiny-pure")
    merged = PeftModel.from_pretrained(base.llm, llm_run / "adapter").merge_and_unload().state_dict()
    exported = load_backbone(llm_run)[0].llm.state_dict()
    assert merged.keys() == exported.keys()
    for name, weight in exported.items():
        torch.testing.assert_close(merged[name], weight, rtol=0, atol=0, msg=name)


def test_adapter_only_for_lora_and_cleared_by_overwrite(tiny_llama_dir, llm_run, tmp_path):
    from llm_backbones.training.finetune import run_finetune

    run = tmp_path / "run"
    shutil.copytree(llm_run, run)
    data = tmp_path / "data.json"
    data.write_text(json.dumps(DATA))
    settings = {**SETTINGS, "steps": 2, "save_every": 2, "mode": "last-layer", "overwrite": True}
    run_finetune(data=str(data), output=str(run), **settings)
    assert not (run / "adapter").exists()  # the previous lora run's adapter went with it
    path = export_run(run, output=tmp_path / "exported")
    assert not (path / "adapter").exists()
    for name, tensor in tensors(path).items():
        assert torch.equal(tensor, tensors(run / "export")[name]), name


# === Errors ===
def fake_run(folder: Path, steps=(2, 4), partial=(), latest=True) -> Path:
    """A run folder's layout without weights: what export_run checks before it builds anything."""
    checkpoints = folder / "checkpoints"
    checkpoints.mkdir(parents=True)
    (folder / "run_config.json").write_text("{}")
    for step in steps:
        (checkpoints / f"step-{step:08d}").mkdir()
        (checkpoints / f"step-{step:08d}" / ".metadata").write_bytes(b"")
        (checkpoints / f"step-{step:08d}" / "meta.json").write_text("{}")
    for step in partial:
        (checkpoints / f"step-{step:08d}.partial").mkdir()
    if latest and steps:
        (checkpoints / "latest").write_text(f"step-{max(steps):08d}\n")
    return folder


def test_errors_name_the_path_and_the_fix(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError, match=r"is not a run folder .*Pass the --output folder"):
        export_run(plain, output=tmp_path / "out")
    with pytest.raises(CheckpointError, match=r"'.*nowhere' does not exist"):
        export_run(tmp_path / "nowhere", output=tmp_path / "out")

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "run_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"holds no checkpoint: it ran with --save-every 0"):
        export_run(empty, output=tmp_path / "out")

    run = fake_run(tmp_path / "run", steps=(2, 4), partial=(6,))
    with pytest.raises(CheckpointError, match=r"no checkpoint of step 3; its steps are 2, 4\. Pass one"):
        export_run(run, step=3, output=tmp_path / "out")
    with pytest.raises(
        CheckpointError, match=r"step 6 .* is incomplete \(step-00000006\.partial.*steps: 2, 4"
    ):
        export_run(run, step=6, output=tmp_path / "out")
    (run / "checkpoints" / "step-00000002" / ".metadata").unlink()
    with pytest.raises(CheckpointError, match=r"step-00000002' is incomplete .*Complete steps: 2, 4"):
        export_run(run, step=2, output=tmp_path / "out")
    with pytest.raises(CheckpointError, match=r"step must be an int"):
        export_run(run, step="4", output=tmp_path / "out")

    unnamed = fake_run(tmp_path / "unnamed", steps=(2,), latest=False)
    with pytest.raises(CheckpointError, match=r"no checkpoints/latest .* steps are 2\. Pass --step N"):
        export_run(unnamed, output=tmp_path / "out")

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "model.safetensors").write_bytes(b"keep me")
    with pytest.raises(
        OutputPathError, match=r"'.*taken' already exists and is not empty\. Pass --overwrite"
    ):
        export_run(run, output=taken)
    assert (taken / "model.safetensors").read_bytes() == b"keep me"
    for inside in (run, tmp_path, run / "checkpoints" / "x"):
        with pytest.raises(OutputPathError, match=r"is the run folder .* Choose another folder"):
            export_run(run, output=inside, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match=r"'.*file' is a file; an export is a folder"):
        export_run(run, output=tmp_path / "file")
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_without_settings_is_refused(tmp_path):
    run = fake_run(tmp_path / "run", steps=(2,))
    (run / "checkpoints" / "step-00000002" / "meta.json").write_text('{"step": 2}')
    with pytest.raises(
        CheckpointError, match=r"meta\.json has config None, not an object of settings .*Restore"
    ):
        export_run(run, output=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_vla_run_of_a_policy_in_memory_is_refused(tmp_path):
    run = fake_run(tmp_path / "run", steps=(2,))
    meta = {"config": {"policy": None, "mode": "lora"}, "step": 2}
    (run / "checkpoints" / "step-00000002" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"names no policy checkpoint .*--policy PATH"):
        export_run(run, output=tmp_path / "out")
    assert not (tmp_path / "out").exists()
