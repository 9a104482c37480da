"""Fine-tuning never loses or mixes work: `--overwrite` deletes only the run's own files, the export is
published in one step, `--resume` without `latest` continues from the newest complete checkpoint (or refuses),
checkpoints are verified (sha256 of every file, finite weights) on resume and on export, damaged checkpoint
files raise typed errors naming the file, a changed data file is refused, and so are a config file giving one
setting twice and a batch larger than the data. One tiny run (2 steps, a checkpoint after each) is copied and
damaged by each test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_training_loop_resume import DATA
from typer.testing import CliRunner

from llm_backbones.app.cli import app
from llm_backbones.errors import CheckpointError, FinetuneError
from llm_backbones.training.checkpoint import RunDir, verify_checkpoint
from llm_backbones.training.export import export_run
from llm_backbones.training.finetune import run_finetune
from llm_backbones.training.loop import read_records

pytestmark = pytest.mark.integration
runner = CliRunner()

SETTINGS = {
    "backbone": "llama2-tiny-pure",
    "steps": 2,
    "batch_size": 4,
    "lr": 1e-3,
    "save_every": 1,
    "keep": 2,
    "device": "cpu",
    "precision": "fp32",
}
STEP1, STEP2 = "step-00000001", "step-00000002"
CONVERSATIONS = [record["conversations"] for record in DATA]


@pytest.fixture(scope="module")
def base(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    data = root / "data.json"
    data.write_text(json.dumps(DATA))
    run_finetune(data=str(data), output=str(root / "run"), **SETTINGS)
    return SimpleNamespace(root=root, data=data, run=root / "run")


def copy_run(base, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(base.run, run)
    return run


def resume(base, run: Path, **options):
    return run_finetune(data=str(base.data), output=str(run), resume=True, **{**SETTINGS, **options})


def cli_resume(run: Path, *extra: str):
    """`finetune --output RUN --resume` (the settings come from its run_config.json), without --debug."""
    return runner.invoke(app, ["finetune", "--output", str(run), "--resume", *extra])


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def distcp(checkpoint: Path) -> Path:
    return sorted(checkpoint.glob("*.distcp"))[0]


def drop_checksums(checkpoint: Path) -> None:
    """A checkpoint as an earlier version wrote it: meta.json without the sha256 of its files."""
    meta = json.loads((checkpoint / "meta.json").read_text())
    del meta["files"]
    (checkpoint / "meta.json").write_text(json.dumps(meta))


# === --overwrite, and the export in one step ===
def test_overwrite_deletes_only_the_runs_own_files(base, tmp_path) -> None:
    run = copy_run(base, tmp_path)
    (run / "NOTES.md").write_text("why this run")
    (run / "train.yaml").write_text("steps: 2\n")
    (run / "plots").mkdir()
    (run / "plots" / "loss.png").write_bytes(b"png")
    # an export at the top of the folder, as earlier versions wrote it
    for file in (run / "export").iterdir():
        shutil.copy(file, run / file.name)
    (run / "export").rename(run / "old-export-kept-by-the-user")
    run_finetune(data=str(base.data), output=str(run), overwrite=True, **{**SETTINGS, "steps": 1})
    assert (run / "NOTES.md").read_text() == "why this run"
    assert (run / "train.yaml").read_text() == "steps: 2\n"
    assert (run / "plots" / "loss.png").read_bytes() == b"png"
    assert (run / "old-export-kept-by-the-user" / "fingerprint.json").is_file()
    assert sorted(p.name for p in run.iterdir()) == [
        "NOTES.md",
        "checkpoints",
        "export",
        "metrics.jsonl",
        "old-export-kept-by-the-user",
        "plots",
        "run_config.json",
        "train.yaml",
    ]  # the old top-level export (config.json, model.safetensors, tokenizer*, fingerprint.json) is gone
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", STEP1]
    assert [r["step"] for r in read_records(run / "metrics.jsonl")] == [1]


def test_clear_removes_a_vla_runs_export_and_adapter_and_nothing_else(tmp_path) -> None:
    run = tmp_path / "run"
    for folder in ("export", "adapter", "checkpoints/step-00000002", "tensorboard", ".export.tmp-1a2b3c4d"):
        (run / folder).mkdir(parents=True)
        (run / folder / "file").write_text("x")
    for name in ("run_config.json", "metrics.jsonl", "NOTES.md", "config.json"):
        (run / name).write_text("{}")
    RunDir(run).clear()
    # config.json stays: no fingerprint.json names it as the file of an export
    assert sorted(p.name for p in run.iterdir()) == ["NOTES.md", "config.json"]


def test_the_export_is_published_in_one_step(base, tmp_path, monkeypatch) -> None:
    from llm_backbones.persistence import checkpoint as persistence
    from llm_backbones.persistence.checkpoint import load_backbone

    run = copy_run(base, tmp_path)
    backbone, _ = load_backbone(run)  # the run folder loads its export/
    assert backbone.identifier == "llama2-tiny-pure"
    before = files_of(run / "export")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(persistence, "_write_fingerprint", fail)  # the export dies half-written
    with pytest.raises(CheckpointError, match="the disk is full"):  # save_backbone names the file and the fix
        resume(base, run, steps=3)
    assert files_of(run / "export") == before  # the previous export, whole
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoints",
        "export",
        "metrics.jsonl",
        "run_config.json",
    ]


def test_a_legacy_top_level_export_is_removed_once_the_new_one_is_published(base, tmp_path) -> None:
    run = copy_run(base, tmp_path)
    for file in (run / "export").iterdir():
        shutil.copy(file, run / file.name)
    shutil.rmtree(run / "export")
    (run / "NOTES.md").write_text("mine")
    resume(base, run, steps=3)
    assert sorted(p.name for p in run.iterdir() if p.is_file()) == [
        "NOTES.md",
        "metrics.jsonl",
        "run_config.json",
    ]
    assert (run / "export" / "fingerprint.json").is_file()


# === --resume without latest ===
def test_resume_without_latest_continues_from_the_newest_complete_checkpoint(base, tmp_path, caplog) -> None:
    run = copy_run(base, tmp_path)
    (run / "checkpoints" / "latest").unlink()
    (run / "checkpoints" / "step-00000003").mkdir()  # an interrupted one: no .metadata, no meta.json
    with caplog.at_level("WARNING"):
        result = resume(base, run, steps=4)
    assert result.start_step == 2 and len(result.losses) == 2
    assert "no latest marker: resuming from the newest complete checkpoint, step-00000002" in caplog.text
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "latest",
        "step-00000003",
        "step-00000004",
    ]
    assert [r["step"] for r in read_records(run / "metrics.jsonl")] == [1, 2, 3, 4]


def test_resume_without_latest_and_no_complete_checkpoint_refuses(base, tmp_path) -> None:
    run = copy_run(base, tmp_path)
    (run / "checkpoints" / "latest").unlink()
    for step in (STEP1, STEP2):
        (run / "checkpoints" / step / ".metadata").unlink()
    before = files_of(run)
    result = cli_resume(run)
    assert result.exit_code == 1 and result.output.startswith("error: ")  # before the progress bar
    assert "Traceback" not in result.output
    assert "has no latest marker and none of its checkpoints (step-00000001, step-00000002)" in result.output
    assert "--overwrite" in result.output
    assert files_of(run) == before  # nothing written over


# === Verified checkpoints ===
def test_meta_records_the_sha256_of_every_file(base) -> None:
    checkpoint = base.run / "checkpoints" / STEP2
    meta = json.loads((checkpoint / "meta.json").read_text())
    assert sorted(meta["files"]) == sorted(p.name for p in checkpoint.iterdir() if p.name != "meta.json")
    assert ".metadata" in meta["files"] and any(name.endswith(".distcp") for name in meta["files"])
    import hashlib

    shard = distcp(checkpoint)
    assert meta["files"][shard.name] == hashlib.sha256(shard.read_bytes()).hexdigest()
    assert len(meta["data_sha256"]) == 64
    assert verify_checkpoint(checkpoint) == meta


@pytest.mark.parametrize("where", ["distcp", ".metadata"])
def test_flipped_bytes_are_refused_on_resume_and_export(base, tmp_path, where) -> None:
    run = copy_run(base, tmp_path)
    checkpoint = run / "checkpoints" / STEP2
    file = distcp(checkpoint) if where == "distcp" else checkpoint / ".metadata"
    data = bytearray(file.read_bytes())
    for i in range(5):  # five flipped bytes in the middle: the size is unchanged
        data[len(data) // 2 + i] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{file}.* is damaged: its sha256 is .*recorded"):
        resume(base, run, steps=3)
    with pytest.raises(CheckpointError, match=rf"{file}.* is damaged"):
        export_run(run, output=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_nan_in_the_loaded_weights_is_refused(base, tmp_path, monkeypatch) -> None:
    """A checkpoint whose shard holds a NaN yet matches its sha256 (written so): refused on load."""
    from llm_backbones.training import checkpoint as ckpt

    run = copy_run(base, tmp_path)
    real_dcp_load = ckpt._dcp_load

    def poisoned(checkpoint, state, ctx):
        real_dcp_load(checkpoint, state, ctx)
        state["model"]["llm.lm_head.weight"][3, 5] = float("nan")

    monkeypatch.setattr(ckpt, "_dcp_load", poisoned)
    with pytest.raises(CheckpointError, match=r"step-00000002 holds NaN or infinite weights \(llm\.lm_head"):
        resume(base, run, steps=3)
    with pytest.raises(CheckpointError, match=r"holds NaN or infinite weights"):
        export_run(run, output=tmp_path / "out")


@pytest.mark.parametrize("where", ["distcp", ".metadata"])
def test_a_truncated_file_without_checksums_is_a_typed_error(base, tmp_path, where) -> None:
    """Checkpoints of earlier versions have no sha256: DCP's own failure (a CheckpointException, which is a
    BaseException) becomes a CheckpointError naming the checkpoint, on the CLI one error line."""
    run = copy_run(base, tmp_path)
    checkpoint = run / "checkpoints" / STEP2
    drop_checksums(checkpoint)
    file = distcp(checkpoint) if where == "distcp" else checkpoint / ".metadata"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"Cannot load the checkpoint {checkpoint} .*damaged"):
        resume(base, run, steps=3)
    result = cli_resume(run, "--steps", "3")
    assert result.exit_code == 1 and "\nerror: Cannot load the checkpoint" in result.output
    assert "Traceback" not in result.output and STEP2 in result.output


def test_broken_run_files_are_typed_errors_naming_the_file(base, tmp_path) -> None:
    run = copy_run(base, tmp_path)
    latest = run / "checkpoints" / "latest"
    cases = [
        (lambda: latest.write_bytes(b"\xff\xfe\x00garbage"), f"{latest} cannot be read as text"),
        (lambda: latest.write_text("../../etc\n"), f"{latest} names '../../etc', which is not a complete"),
        (lambda: latest.mkdir(), f"{latest} is not a file (a folder"),
    ]
    for damage, words in cases:
        damage()
        result = cli_resume(run, "--steps", "3")
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert words in result.output.replace("\n", ""), result.output
        with pytest.raises(CheckpointError, match="checkpoints/latest"):
            resume(base, run, steps=3)
        shutil.rmtree(latest) if latest.is_dir() else latest.unlink()
    latest.write_text(STEP2 + "\n")

    meta = run / "checkpoints" / STEP2 / "meta.json"
    good = meta.read_text()
    for value, words in (("[1, 2]", "holds a list, not an object"), ('{"step": "2"}', "has step '2'")):
        meta.write_text(value)
        with pytest.raises(CheckpointError, match=rf"{meta} {words}"):
            resume(base, run, steps=3)
    meta.write_text(good)

    (run / "run_config.json").write_text("[1, 2]")
    result = cli_resume(run)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "run_config.json must hold an object of settings" in result.output.replace("\n", "")


# === The data ===
def test_resume_on_changed_data_is_refused(base, tmp_path) -> None:
    run = copy_run(base, tmp_path)
    changed = json.loads(base.data.read_text())
    changed[1]["conversations"][1]["value"] = "a red cuP"  # same size, other content
    data = tmp_path / "data.json"
    data.write_text(json.dumps(changed))
    assert data.stat().st_size == base.data.stat().st_size
    before = files_of(run)
    with pytest.raises(
        FinetuneError, match=r"training data '.*data\.json' is not the data the checkpoint at step 2"
    ):
        run_finetune(data=str(data), output=str(run), resume=True, **{**SETTINGS, "steps": 3})
    assert {k: v for k, v in files_of(run).items() if k != "run_config.json"} == {
        k: v for k, v in before.items() if k != "run_config.json"
    }
    # the same records in another layout are the same data
    data.write_text(json.dumps(json.loads(base.data.read_text()), indent=4))
    assert (
        run_finetune(data=str(data), output=str(run), resume=True, **{**SETTINGS, "steps": 3}).start_step == 2
    )


# === Settings ===
def test_a_config_file_giving_a_setting_twice_is_refused(tmp_path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("backbone: llama2-tiny-pure\nbatch-size: 4\nbatch_size: 8\n")
    result = runner.invoke(app, ["finetune", "--config", str(config), "--data", "x.json"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert (
        f"--config {config}: 'batch-size' and 'batch_size' are the same setting, given twice (4 and 8)"
        in (result.output.replace("\n", ""))
    )


def test_a_batch_larger_than_the_data_is_refused_before_anything_is_built(tmp_path, monkeypatch) -> None:
    import llm_backbones.core.backbones.factory as factory

    def never(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(factory, "get_llm_backbone_and_tokenizer", never)
    with pytest.raises(
        FinetuneError,
        match=r"--batch-size 1000000000 is larger than the data: the training data "
        r"holds 5 examples\. Use --batch-size 5 or less",
    ):
        run_finetune("llama2-tiny-pure", CONVERSATIONS, batch_size=1_000_000_000, device="cpu")
