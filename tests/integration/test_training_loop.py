"""The fine-tuning loop's flags on the tiny default, each shown to do what it says: accumulation, clipping,
the LR schedule, evaluation, truncation, the fast path, gradient checkpointing, logging, checkpoints and
their pruning, config files, and the refusals that protect a run folder."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from llm_backbones import get_llm_backbone_and_tokenizer, tokenize_conversation
from llm_backbones.app.cli import app
from llm_backbones.errors import FinetuneError, NonFiniteLossError, OutputPathError
from llm_backbones.training.distributed import clip_grad_norm
from llm_backbones.training.finetune import run_finetune
from llm_backbones.training.loop import (
    DataOrder,
    global_batch_indices,
    lr_factor,
    lr_scheduler,
    rank_micro_batches,
    read_records,
)
from llm_backbones.training.settings import FinetuneConfig, read_config_file

pytestmark = pytest.mark.integration
runner = CliRunner()


def conv(question: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


DATA = [
    conv("What action should the robot take to open the drawer?", "pull the handle"),
    conv("What is on the table?", "a red cup and a sponge"),
    conv("What action should the robot take to close the door?", "push it"),
    conv("Describe the scene.", "a kitchen counter with a kettle, two mugs and a bowl of fruit"),
    conv("Pick up the carrot?", "grasp and lift"),
    conv("Is the gripper open?", "yes"),
    conv("Where is the cup?", "left of the sponge"),
    conv("Stack the blocks.", "red on blue, then green on red"),
]
EVAL = [
    conv("Is the drawer open?", "no, it is closed"),
    conv("What is left of the sponge?", "the cup"),
    conv("Close the gripper.", "closing"),
]
BASE = {"device": "cpu", "precision": "fp32", "save_every": 0, "lr": 1e-3}


def train(data=DATA, **options):
    """run_finetune on the tiny default; returns (result, every metrics record it emitted)."""
    records: list[dict] = []
    result = run_finetune("llama2-tiny-pure", data, on_record=records.append, **{**BASE, **options})
    return result, records


def write_json(path: Path, value) -> Path:
    path.write_text(json.dumps(value))
    return path


# The run most tests compare against: 4 steps of the whole data set (batch 8), 2 of warm-up then cosine,
# evaluated every 2 steps, a checkpoint every 3 steps and after the last, 1 kept, exported.
BASE_RUN = {"steps": 4, "batch_size": 8, "warmup_steps": 2}
BASE_OUTPUTS = {"eval_every": 2, "save_every": 3, "keep": 1}


@pytest.fixture(scope="module")
def base(tiny_llama_dir, tmp_path_factory):
    # (tiny_llama_dir: the embedded weights exist before the first run, so every run builds alike)
    root = tmp_path_factory.mktemp("loop")
    eval_file = write_json(root / "eval.json", EVAL)
    result, records = train(**BASE_RUN, **BASE_OUTPUTS, eval_data=str(eval_file), output=str(root / "run"))
    return SimpleNamespace(
        root=root,
        run=root / "run",
        result=result,
        records=records,
        eval_file=eval_file,
        steps=[r for r in records if "loss" in r],
    )


def files_of(run: Path) -> dict[Path, bytes]:
    """Every file of a run folder but those a resumed run rewrites: its settings and its metrics (JSONL, and
    TensorBoard events where tensorboard is installed)."""
    return {
        p.relative_to(run): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name not in ("run_config.json", "metrics.jsonl") and "tensorboard" not in p.parts
    }


def test_lr_schedule_values_written_out(base) -> None:
    # lr 1e-3, 10 steps, 3 warm-up steps: 1/3, 2/3, 1, then 0.5 * (1 + cos(pi * k / 7)) for k = 0..6.
    cosine = [
        3.3333333333333335e-4,
        6.666666666666666e-4,
        1e-3,
        1e-3,
        9.504844339512095e-4,
        8.117449009293668e-4,
        6.112604669781572e-4,
        3.887395330218428e-4,
        1.8825509907063325e-4,
        4.951556604879043e-5,
    ]
    constant = [3.3333333333333335e-4, 6.666666666666666e-4] + [1e-3] * 8
    for schedule, expected in (("cosine", cosine), ("constant", constant)):
        cfg = FinetuneConfig(lr=1e-3, steps=10, warmup_steps=3, lr_schedule=schedule)
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
        scheduler = lr_scheduler(optimizer, cfg)
        got = []
        for _ in range(10):
            got.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    assert lr_factor(0, schedule="cosine", warmup_steps=0, total_steps=4) == 1.0
    # End to end, the lr each step of the base run used (4 steps, 2 of warm-up, cosine): 1/2, 1, 1, 1/2.
    torch.testing.assert_close([r["lr"] for r in base.steps], [5e-4, 1e-3, 1e-3, 5e-4], rtol=1e-12, atol=0)


def test_grad_accum_over_4_equals_one_batch_4x_larger(base) -> None:
    # 4 micro-batches of 2 against the base run's one batch of 8 (its first 2 steps: same warm-up lrs).
    accumulated, records = train(**{**BASE_RUN, "steps": 2, "grad_accum": 4})
    torch.testing.assert_close(accumulated.losses, base.result.losses[:2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        [r["grad_norm"] for r in records], [r["grad_norm"] for r in base.steps[:2]], rtol=1e-5, atol=1e-5
    )
    assert accumulated.losses[1] < accumulated.losses[0]  # the second step sees the updated weights
    with pytest.raises(
        FinetuneError,
        match=r"--batch-size 8 \(global\) does not split evenly over 1 ranks x 3 "
        r"accumulation steps; use a multiple of 3",
    ):
        train(steps=1, batch_size=8, grad_accum=3)


def test_max_grad_norm_bounds_the_norm_the_optimizer_sees(monkeypatch) -> None:
    seen: list[float] = []
    step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        seen.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    _, clipped = train(steps=1, batch_size=4, max_grad_norm=0.05)
    assert clipped[0]["grad_norm"] > 1.0  # the reported norm is the one before clipping
    assert len(seen) == 1 and seen[0] == pytest.approx(0.05, rel=1e-4)

    # 0 turns clipping off: the norm is reported and the gradients stay as they are.
    layer = torch.nn.Linear(3, 2)
    layer(torch.ones(4, 3)).pow(2).sum().backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    norm = clip_grad_norm(layer, 0.0)
    assert norm.item() == pytest.approx(
        torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])).item()
    )
    assert all(torch.equal(p.grad, g) for p, g in zip(layer.parameters(), grads, strict=True)) and norm > 0.1
    clip_grad_norm(layer, 0.1)
    assert torch.linalg.vector_norm(
        torch.cat([p.grad.flatten() for p in layer.parameters()])
    ).item() == pytest.approx(0.1)


def test_eval_loss_is_the_token_mean_over_the_eval_set(base) -> None:
    evals = [r for r in base.records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4] and [r["eval_examples"] for r in evals] == [3, 3]
    assert base.result.eval_losses == [(2, evals[0]["eval_loss"]), (4, evals[1]["eval_loss"])]
    assert evals[1]["eval_loss"] < evals[0]["eval_loss"]
    # Recomputed independently on the exported model with HF's own loss (a mean per example).
    backbone, tokenizer = get_llm_backbone_and_tokenizer("llama2-tiny-pure", model_path=base.run)
    backbone.eval()
    total = count = 0.0
    with torch.no_grad():
        for conversation in EVAL:
            example = tokenize_conversation(tokenizer, backbone.prompt_builder_fn, conversation)
            n = int((example["labels"][1:] != -100).sum())
            total += (
                backbone(input_ids=example["input_ids"][None], labels=example["labels"][None]).loss.item() * n
            )
            count += n
    assert evals[-1]["eval_loss"] == pytest.approx(total / count, rel=1e-5)


def test_max_length_truncates_every_example(base) -> None:
    backbone, tokenizer = get_llm_backbone_and_tokenizer("llama2-tiny-pure", inference_mode=True)
    lengths = [
        len(tokenize_conversation(tokenizer, backbone.prompt_builder_fn, c)["input_ids"]) for c in DATA
    ]
    assert lengths == [22, 21, 20, 30, 16, 15, 18, 19]
    assert base.steps[0]["tokens"] == 161  # the first global batch is the whole data set
    _, cut = train(steps=1, batch_size=8, max_length=20)
    assert cut[0]["tokens"] == 20 + 20 + 20 + 20 + 16 + 15 + 18 + 19


def test_fast_computes_the_loss_without_logits_and_equally(base, monkeypatch) -> None:
    import llm_backbones.core.backbones.backbone as backbone_base

    calls = []
    fused = backbone_base.chunked_causal_lm_loss
    monkeypatch.setattr(
        backbone_base, "chunked_causal_lm_loss", lambda *a, **k: calls.append(1) or fused(*a, **k)
    )
    fast, _ = train(**{**BASE_RUN, "steps": 2, "fast": True})
    assert len(calls) == 2  # one fused-loss forward per step
    torch.testing.assert_close(fast.losses, base.result.losses[:2], rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_recomputes_each_layer_in_backward(base, monkeypatch) -> None:
    from transformers.models.llama import modeling_llama

    calls = []  # each decoder layer's MLP (the layer's own forward is what transformers wraps to checkpoint)
    forward = modeling_llama.LlamaMLP.forward
    monkeypatch.setattr(
        modeling_llama.LlamaMLP, "forward", lambda self, x: calls.append(1) or forward(self, x)
    )
    checkpointed, _ = train(**{**BASE_RUN, "steps": 2, "gradient_checkpointing": True})
    assert len(calls) == 2 * 2 * 2  # 2 steps x 2 layers x (forward + recomputation in backward)
    torch.testing.assert_close(checkpointed.losses, base.result.losses[:2], rtol=1e-6, atol=1e-6)


def test_log_every_and_the_metrics_file(base) -> None:
    result, records = train(steps=3, batch_size=4, log_every=2)
    assert [r["step"] for r in records] == [2, 3]  # every 2 steps, and the last
    assert [r["loss"] for r in records] == [result.losses[1], result.losses[2]]
    assert [r["step"] for r in base.steps] == [1, 2, 3, 4]
    for record in base.steps:
        assert set(record) >= {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "peak_memory_gb"}
        assert record["tokens_per_s"] > 0 and record["peak_memory_gb"] > 0 and record["grad_norm"] > 0
    assert [r["loss"] for r in base.steps] == base.result.losses
    assert read_records(base.run / "metrics.jsonl") == base.records  # the same records, on disk
    tensorboard = base.run / "tensorboard"
    try:
        import tensorboard as _  # noqa: F401
    except ImportError:
        assert not tensorboard.exists()  # optional: without it, the JSONL file only
    else:
        assert any(tensorboard.glob("events.out.tfevents.*"))


def test_save_every_and_keep(base) -> None:
    assert [Path(p).name for p in base.result.checkpoints] == ["step-00000003", "step-00000004"]
    assert sorted(p.name for p in (base.run / "checkpoints").iterdir()) == ["latest", "step-00000004"]
    assert (base.run / "checkpoints" / "latest").read_text() == "step-00000004\n"
    meta = json.loads((base.run / "checkpoints" / "step-00000004" / "meta.json").read_text())
    assert meta["step"] == 4 and meta["world_size"] == 1 and meta["format"] == "torch.distributed.checkpoint"
    assert meta["config"]["batch_size"] == 8 and meta["n_examples"] == 8
    # the export, in its own folder (save_backbone's files), nothing of it at the top
    assert (base.run / "export" / "model.safetensors").is_file()
    assert (base.run / "export" / "fingerprint.json").is_file()
    assert sorted(p.name for p in base.run.iterdir() if p.is_file()) == ["metrics.jsonl", "run_config.json"]


def test_config_file_flags_override_and_the_saved_config_repeats_the_run(tmp_path) -> None:
    data = write_json(tmp_path / "data.json", DATA)
    config = tmp_path / "run.yaml"
    config.write_text(
        f"backbone: llama2-tiny-pure\ndata: {data}\nsteps: 3\nbatch-size: 4\nlr: 1e-3\n"
        "device: cpu\nprecision: fp32\nsave_every: 0\n"
    )
    first = runner.invoke(
        app,
        [
            "finetune",
            "--config",
            str(config),
            "--steps",
            "2",
            "--output",
            str(tmp_path / "a"),
            "--metrics-json",
            str(tmp_path / "a.json"),
        ],
    )
    assert first.exit_code == 0, first.output
    losses = json.loads((tmp_path / "a.json").read_text())["losses"]
    assert len(losses) == 2  # --steps 2 on the command line beat `steps: 3` in the file
    saved = json.loads((tmp_path / "a" / "run_config.json").read_text())
    assert (
        saved["steps"] == 2 and saved["lr"] == 1e-3 and saved["data"] == str(data) and "output" not in saved
    )
    again = runner.invoke(
        app,
        [
            "finetune",
            "--config",
            str(tmp_path / "a" / "run_config.json"),
            "--output",
            str(tmp_path / "b"),
            "--metrics-json",
            str(tmp_path / "b.json"),
        ],
    )
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "b.json").read_text())["losses"] == losses  # exactly the same run

    bad = write_json(tmp_path / "bad.json", {"backbone": "llama2-tiny-pure", "batchsize": 4})
    result = runner.invoke(app, ["finetune", "--config", str(bad)])
    assert result.exit_code == 1
    assert "unknown setting 'batchsize'" in result.output and "Did you mean batch_size" in result.output
    result = runner.invoke(
        app, ["finetune", "--config", str(write_json(tmp_path / "t.json", {"steps": "many"}))]
    )
    assert result.exit_code == 1 and "setting 'steps' must be a int, got str 'many'" in result.output


def test_output_holding_a_run_is_refused_unless_resume_or_overwrite(base, tmp_path) -> None:
    data = write_json(tmp_path / "data.json", DATA)
    args = [
        "finetune",
        "--backbone",
        "llama2-tiny-pure",
        "--data",
        str(data),
        "--steps",
        "1",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--save-every",
        "0",
    ]
    before = files_of(base.run)
    refused = runner.invoke(app, [*args, "--output", str(base.run)])
    assert refused.exit_code == 1 and refused.output.startswith("error: ")
    assert (
        "already holds a run (checkpoints up to step 4, an exported model in export/, metrics.jsonl)"
        in refused.output
    )
    assert "Pass --resume to continue it" in refused.output and "--overwrite to replace it" in refused.output
    both = runner.invoke(app, [*args, "--output", str(base.run), "--resume", "--overwrite"])
    assert both.exit_code == 1 and "--resume and --overwrite exclude each other" in both.output
    assert files_of(base.run) == before

    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    foreign = runner.invoke(app, [*args, "--output", str(other), "--overwrite"])
    assert foreign.exit_code == 1 and "holds no llm-backbones run" in foreign.output
    assert [p.name for p in other.iterdir()] == ["todo.txt"]

    copy = tmp_path / "run"
    shutil.copytree(base.run, copy)
    replaced = runner.invoke(app, [*args, "--lr", "1e-2", "--output", str(copy), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert not (copy / "checkpoints").exists()  # the old run's checkpoints are gone
    assert json.loads((copy / "run_config.json").read_text())["lr"] == 1e-2
    assert [r["step"] for r in read_records(copy / "metrics.jsonl")] == [1]
    weights = Path("export/model.safetensors")
    assert (copy / weights).read_bytes() != before[weights]


def test_non_finite_loss_stops_before_anything_is_written(base, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(base.run, run)
    before = files_of(run)
    # Resume at step 4. Step 5 runs on good weights and its update (lr 1e30) ruins them; its checkpoint
    # is written but not published, since step 6's loss is not finite. keep=1 must not delete step 4.
    options = {
        **BASE,
        **BASE_RUN,
        **BASE_OUTPUTS,
        "steps": 8,
        "save_every": 5,
        "lr": 1e30,
        "resume": True,
        "output": str(run),
        "eval_data": str(base.eval_file),
    }
    with pytest.raises(NonFiniteLossError, match=r"^Step 6: the loss is (nan|inf) \(not finite\)") as err:
        run_finetune("llama2-tiny-pure", DATA, **options)
    assert err.value.step == 6 and err.value.what == "loss" and isinstance(err.value, FinetuneError)
    assert files_of(run) == before  # latest, its checkpoint and the export: byte for byte
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-00000004"]
    assert [r["step"] for r in read_records(run / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4, 5]

    result = runner.invoke(app, ["finetune", "--lr", "inf", "--output", str(run), "--resume"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith(
        "error: --lr must be a finite number > 0, got inf"
    )
    assert files_of(run) == before


def test_resume_refuses_settings_that_change_the_data_or_model(base, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(base.run, run)
    options = {
        **BASE,
        **BASE_RUN,
        **BASE_OUTPUTS,
        "steps": 5,
        "resume": True,
        "output": str(run),
        "eval_data": str(base.eval_file),
    }
    with pytest.raises(
        FinetuneError,
        match=r"Cannot resume the checkpoint at step 4 with other settings: "
        r"--batch-size 8 -> 4",
    ):
        run_finetune("llama2-tiny-pure", DATA, **{**options, "batch_size": 4})
    with pytest.raises(FinetuneError, match=r"the training data is not the data the checkpoint at step 4"):
        run_finetune("llama2-tiny-pure", DATA[:7] + DATA[:1], **options)
    with pytest.raises(FinetuneError, match=r"--batch-size 8 is larger than the data: .* holds 7 examples"):
        run_finetune("llama2-tiny-pure", DATA[:7], **options)
    with pytest.raises(FinetuneError, match=r"at step 4, beyond --steps 3; pass --steps 4 or more"):
        run_finetune("llama2-tiny-pure", DATA, **{**options, "steps": 3})
    with pytest.raises(OutputPathError, match="is a file"):
        run_finetune("llama2-tiny-pure", DATA, **{**options, "output": str(write_json(tmp_path / "f", 1))})


def test_settings_are_checked_before_any_work() -> None:
    cases = [
        ({"lr": float("nan")}, "--lr must be a finite number > 0, got nan"),
        ({"lr_schedule": "linear"}, "--lr-schedule 'linear' is unknown; accepted: cosine, constant"),
        ({"warmup_steps": 20, "steps": 10}, "--warmup-steps 20 is more than --steps 10"),
        (
            {"max_grad_norm": -1.0},
            "--max-grad-norm must be a finite number >= 0, got -1.0; 0 turns clipping off",
        ),
        ({"grad_accum": 0}, "--grad-accum must be >= 1"),
        ({"keep": 0}, "--keep must be >= 1"),
        ({"max_length": 0}, "--max-length must be a positive number of tokens, got 0"),
        ({"eval_every": 5}, "--eval-every 5 needs --eval-data FILE.json"),
        ({"resume": True}, "--resume needs --output"),
        ({"fsdp_version": 2}, "unknown setting 'fsdp_version'"),
    ]
    for options, words in cases:
        with pytest.raises(FinetuneError) as err:
            run_finetune("llama2-tiny-pure", DATA, **{"device": "cpu", **options})
        assert words in str(err.value), (options, str(err.value))
    assert math.isfinite(FinetuneConfig().max_grad_norm)


def test_data_order_depends_only_on_seed_and_global_batch() -> None:
    # Seeded permutations epoch after epoch (the order run_finetune had before resumable runs), read from
    # any step on: a resumed run and any world size see the same global batches.
    expected = global_batch_indices(6, 4, 7, seed=3)
    order = DataOrder(6, 4, seed=3)
    assert [order.batch(step) for step in (5, 6, 0, 1, 2, 3, 4)] == [
        expected[s] for s in (5, 6, 0, 1, 2, 3, 4)
    ]
    assert sorted(expected[0] + expected[1][:2]) == list(range(6))  # the first epoch is a permutation
    batch = [10, 11, 12, 13, 14, 15, 16, 17]
    assert rank_micro_batches(batch, 2, 2, 0) == [[10, 11], [14, 15]]  # micro-batch 0 and 1, rank 0's half
    assert rank_micro_batches(batch, 2, 2, 1) == [[12, 13], [16, 17]]
    assert rank_micro_batches(batch, 1, 1, 0) == [batch]


def test_config_files_yaml_and_json(tmp_path) -> None:
    yaml_file = tmp_path / "c.yml"
    yaml_file.write_text("lr: 1e-4\nmax-grad-norm: 0\nfast: true\nmax_length: null\ngrad_accum: 2\n")
    values = read_config_file(yaml_file)
    cfg = FinetuneConfig.from_mapping(values, "c.yml")
    assert (cfg.lr, cfg.max_grad_norm, cfg.fast, cfg.max_length, cfg.grad_accum) == (1e-4, 0.0, True, None, 2)
    assert (
        FinetuneConfig.from_mapping(
            read_config_file(write_json(tmp_path / "c.json", {"steps": 3})), "c.json"
        ).steps
        == 3
    )
    for name, text, words in (
        ("c.toml", "steps = 3", "unknown file type '.toml'; accepted: .yaml, .yml, .json"),
        ("list.yaml", "- 1\n- 2\n", "must hold a mapping of settings"),
        ("broken.json", "{", "is not valid JSON"),
        ("missing.yaml", None, "does not exist"),
    ):
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(FinetuneError, match=words.replace("(", r"\(").replace(")", r"\)")):
            read_config_file(tmp_path / name)
    with pytest.raises(FinetuneError, match="setting 'fast' must be a bool, got str 'yes'"):
        FinetuneConfig.from_mapping({"fast": "yes"}, "x")


def test_every_setting_is_a_flag_whose_help_states_the_default() -> None:
    import re

    import typer

    options = {p.name: p for p in typer.main.get_command(app).commands["finetune"].params}
    assert set(FinetuneConfig.fields()) <= set(options)  # --config files and flags take the same settings
    defaults = FinetuneConfig()
    stated = 0
    for name in FinetuneConfig.fields():
        match = re.search(r"\(default: ([^),]+)", options[name].help or "")
        value = getattr(defaults, name)
        if match is None or value is None:
            continue
        text = match.group(1)
        if isinstance(value, bool):
            assert text == ("on" if value else "off"), name
        elif isinstance(value, (int, float)):
            assert float(text) == value, name
        else:
            assert text == value, name
        stated += 1
    assert stated == 19  # 21 rows with a default, less --resume and --overwrite (switches, shown without)
