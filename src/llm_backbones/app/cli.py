"""`llm-backbones` runs, serves and fine-tunes OpenVLA-style policies and their LLM backbones. `serve`
answers robot actions over HTTP from an OpenVLA checkpoint (`act` asks a running server for one); `finetune`
fine-tunes an LLM backbone on conversations and `finetune-vla` a VLA on robot episodes (full, last-layer or
LoRA; one process or torchrun with FSDP); `export` turns a run's checkpoint into a model other tools load;
`list`, `info` and `prompt` show the registered backbones, one backbone's facts and the prompt a
conversation renders to; `demo` teaches the embedded tiny backbone robot actions on the CPU in a few
minutes."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from llm_backbones.core.prompting.builder import DEFAULT_MODEL_FAMILY
from llm_backbones.errors import LLMBackbonesError, OutputPathError

# Names other trainers give to an option of ours, for the "No such option" of a misspelt flag: difflib
# (click's own suggestion) does not find --lr from --learning-rate.
_OPTION_HINTS = {
    "--learning-rate": "--lr",
    "--lr-scheduler": "--lr-schedule",
    "--lr-scheduler-type": "--lr-schedule",
    "--warmup": "--warmup-steps",
    "--max-steps": "--steps",
    "--num-steps": "--steps",
    "--epochs": "--steps",
    "--num-train-epochs": "--steps",
    "--bs": "--batch-size",
    "--per-device-train-batch-size": "--batch-size",
    "--gradient-accumulation-steps": "--grad-accum",
    "--gradient-accumulation": "--grad-accum",
    "--output-dir": "--output",
    "--out": "--output",
    "--model": "--backbone",
    "--model-name-or-path": "--model-path",
    "--dataset": "--data",
    "--train-data": "--data",
    "--eval-dataset": "--eval-data",
    "--max-seq-length": "--max-length",
    "--lora-r": "--lora-rank",
}


class _Group(TyperGroup):
    """Names the flag meant in "No such option": for a name other trainers use (`--learning-rate` for
    `--lr`, where click's close-match search finds nothing or the wrong flag); else for underscores in place
    of dashes (`--batch_size`) where click found no close match."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except typer.Exit:
            raise
        except Exception as exc:
            name, sub = getattr(exc, "option_name", None), getattr(exc, "ctx", None)
            if name and sub is not None and hasattr(exc, "possibilities"):
                known = {opt for param in sub.command.params for opt in param.opts + param.secondary_opts}
                meant = _OPTION_HINTS.get(name)
                if meant not in known and not exc.possibilities:
                    meant = name.replace("_", "-")
                if meant in known and meant != name:
                    exc.message = f"No such option: {name}. Did you mean {meant}?"
                    exc.possibilities = None
            raise


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    help=__doc__,
    rich_markup_mode="markdown",
    # every subcommand's context inherits these from the app's
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console()
_state = {"debug": False}


# Deprecation notices raised inside these packages are meant for us, not the CLI's user (--debug shows them).
_THIRD_PARTY_MODULES = r"(transformers|torch|peft|huggingface_hub)(\.|$)"


@app.callback()
def _main(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    _state["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not debug:  # the CLI shows its own progress; transformers' bars and notices would interleave
        ctx.call_on_close(_quiet_transformers())
        # for this command only: the previous filters come back when it ends (in-process callers keep theirs)
        ctx.with_resource(warnings.catch_warnings())
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=_THIRD_PARTY_MODULES)


def _quiet_transformers() -> Callable[[], None]:
    """Errors only from transformers, and no hub progress bars. Without importing transformers, which
    `list` and `--help` never need (it costs about as much as torch): through the environment variables it
    and huggingface_hub read when imported, or their switches where a caller already imported them.
    Returns what puts the environment back when the command ends."""
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        return lambda: None
    quiet = {"TRANSFORMERS_VERBOSITY": "error"}
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    else:
        quiet["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    before = {name: os.environ.get(name) for name in quiet}
    for name, value in quiet.items():
        os.environ.setdefault(name, value)

    def restore() -> None:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    return restore


def _fail(exc: Exception) -> None:
    if _state["debug"]:
        raise exc
    # escaped: a message's own brackets (`pip install 'llm-backbones[serve]'`, `['a', 'b']`) are not markup
    console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)


# A progress bar's loss field: empty until the first step reports one (not "loss nan").
_LOSS_COLUMN = "{task.fields[loss]}"


def _loss_field(loss: float) -> str:
    return f"loss {loss:.4f}"


def _interrupted(command: str, output: str | Path | None, resume_args: list[str] | None) -> None:
    """Ctrl-C during a run: one line saying what was kept and the command that continues it; exit 130."""
    import shlex

    from llm_backbones.training.checkpoint import RunDir

    if resume_args is None:
        said = "before training started; nothing was written"
    elif output is None:
        said = (
            "nothing was saved (no --output); pass --output DIR to keep checkpoints that --resume continues"
        )
    else:
        try:
            kept = RunDir(output).resume_checkpoint(warn=False)
        except (LLMBackbonesError, OSError):
            kept = None
        said = (
            f"the last checkpoint kept is {kept}" if kept else "no checkpoint was written yet"
        ) + f"; continue with: {shlex.join(['llm-backbones', command, *resume_args])}"
    console.print(f"interrupted: {said}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code=130)


def _warn_unsaved(output: object, is_main: bool) -> None:
    """A run without --output trains and keeps nothing: say so before it starts."""
    if output is None and is_main:
        console.print(
            "warning: no --output: nothing of this run will be saved (no checkpoints, no model); "
            "pass --output DIR to keep it.",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def _given_args(ctx: typer.Context, drop: tuple[str, ...] = ("resume", "overwrite")) -> list[str]:
    """The command's options as the user gave them (not their defaults), less `drop`."""
    args: list[str] = []
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        given = source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")
        if param.name in drop or not given or param.param_type_name != "option":
            continue
        value = ctx.params[param.name]
        if param.is_flag:
            args.extend(param.opts[:1] if value else param.secondary_opts[:1])
        elif value is not None:
            args.extend([param.opts[0], str(value)])
    return args


def _registry_rows() -> list[dict[str, str]]:
    from llm_backbones.core.registry import get_spec, registered_ids

    rows = []
    for backbone_id in registered_ids():
        spec = get_spec(backbone_id)
        rows.append(
            {
                "id": backbone_id,
                "llm_family": spec.llm_family,
                "parameters": spec.parameters,
                "hf_hub_path": spec.hf_hub_path,
                "prompt_format": spec.prompt_format,
                "decoder_layer": spec.layer_cls_name,
                "pad_policy": spec.pad_policy_text,
                "adds_bos": str(spec.adds_bos).lower(),
            }
        )
    return rows


@app.command("list")
def list_backbones(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Every registered backbone id: family, parameters, hub path, prompt format, decoder layer, pad policy."""  # noqa: E501
    rows = _registry_rows()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="Registered LLM backbones")
    for column in rows[0]:
        table.add_column(column, no_wrap=column == "id", overflow="fold")
    for row in rows:
        table.add_row(*row.values())
    console.print(table)


@app.command()
def info(
    backbone: Annotated[str, typer.Argument(help="Backbone id.")],
    model_path: Annotated[
        Path | None, typer.Option(help="Read config and tokenizer from this local directory.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Everything about one id, offline: vocabulary before/after PAD, rows, special ids, layer, dtype,
    and the parameters each fine-tune mode trains."""
    from llm_backbones.app.info import backbone_info

    try:
        facts = backbone_info(backbone, model_path)
    except (LLMBackbonesError, OSError) as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(facts, indent=2))
        return
    table = Table(title=f"{backbone}", show_header=False)
    for key, value in facts.items():
        if key == "trainable_by_mode":
            value = ", ".join(f"{mode} {count:,}" for mode, count in value.items())
        elif isinstance(value, int) and not isinstance(value, bool) and value > 99_999:
            value = f"{value:,}"
        table.add_row(key.replace("_", " "), str(value))
    console.print(table)


@app.command()
def demo(
    backbone: Annotated[str, typer.Option(help="Backbone id.")] = "llama2-tiny-pure",
    model_path: Annotated[
        Path | None, typer.Option(help="Local HF-format directory replacing the hub path.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    steps: Annotated[int, typer.Option(min=1, help="Fine-tuning steps.")] = 60,
    policy_steps: Annotated[
        int, typer.Option(min=1, help="Fine-tuning steps of the fresh VLA (images -> actions).")
    ] = 40,
    metrics_json: Annotated[
        Path | None, typer.Option(help="Write the demo's numbers to this JSON file.")
    ] = None,
) -> None:
    """Teach a backbone OpenVLA-style 7-D actions for eight robot instructions, then predict them; then train
    a fresh VLA (the backbone, a small random ViT, a new projector) on synthetic images and predict their
    actions from the images."""
    try:
        if metrics_json is not None:
            _check_output_file(metrics_json, "--metrics-json")
        _demo(backbone, model_path, device, steps, policy_steps, metrics_json)
    except (LLMBackbonesError, OSError) as exc:
        _fail(exc)


def _check_output_file(path: Path, option: str) -> None:
    """Fail before any work when the output file cannot be written (not after a long run)."""
    if path.is_dir():
        raise OutputPathError(
            f"{option} {str(path)!r} is a directory; pass a file path such as {str(path / 'metrics.json')!r}."
        )
    if not path.parent.is_dir():
        raise OutputPathError(
            f"{option} {str(path)!r}: the folder {str(path.parent)!r} does not exist. Create it first "
            f"(mkdir -p {path.parent}) or choose another path."
        )


def _summary_table(backbone, tokenizer, build_s: float) -> Table:
    table = Table(title=f"Backbone {backbone.identifier}", show_header=False)
    n_params = sum(p.numel() for p in backbone.parameters())
    facts = {
        "class": type(backbone).__name__,
        "model": f"{type(backbone.llm).__name__} ({n_params:,} parameters)",
        "hidden size (embed_dim)": str(backbone.embed_dim),
        "tokenizer": f"{len(tokenizer)} tokens, BOS {tokenizer.bos_token}={tokenizer.bos_token_id}, "
        f"PAD {tokenizer.pad_token}={backbone.pad_token_id}",
        "embedding rows": str(backbone.llm.get_input_embeddings().weight.shape[0]),
        "attention": backbone.llm.config._attn_implementation,
        "FSDP unit": backbone.transformer_layer_cls.__name__,
        "half precision": str(backbone.half_precision_dtype),
        "prompt builder": backbone.prompt_builder_fn.__name__,
        "build time": f"{build_s:.2f} s",
    }
    for key, value in facts.items():
        table.add_row(key, value)
    return table


def _demo(
    backbone_id: str,
    model_path: Path | None,
    device: str,
    steps: int,
    policy_steps: int,
    metrics_json: Path | None,
) -> None:
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from llm_backbones.app.demo import run_vla_demo
    from llm_backbones.core.backbones.factory import get_llm_backbone_and_tokenizer

    if device not in ("cpu", "cuda"):
        raise typer.BadParameter(f"--device must be cpu or cuda, got {device!r}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise typer.BadParameter("--device cuda was asked for, but CUDA is not available; use --device cpu.")
    start = time.perf_counter()
    with console.status(f"Building {backbone_id} ..."):
        backbone, tokenizer = get_llm_backbone_and_tokenizer(backbone_id, model_path=model_path)
    backbone.to(device)
    console.print(_summary_table(backbone, tokenizer, time.perf_counter() - start))

    columns = (
        TextColumn("fine-tuning"),
        BarColumn(),
        TextColumn("step {task.completed}/{task.total}"),
        TextColumn(_LOSS_COLUMN),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("train", total=steps, loss="")
        result = run_vla_demo(
            backbone,
            tokenizer,
            steps=steps,
            on_step=lambda i, loss: progress.update(task, advance=1, loss=_loss_field(loss)),
        )

    table = Table(title="Greedy action prediction (7-D, OpenVLA action tokens)")
    for column in ("instruction", "true action", "predicted action", "max abs error"):
        table.add_column(column, overflow="fold")
    for text, truth, pred in zip(
        result.instructions, result.true_actions, result.predicted_actions, strict=True
    ):
        table.add_row(
            text,
            " ".join(f"{v:+.2f}" for v in truth.tolist()),
            " ".join(f"{v:+.2f}" for v in pred.tolist())
            if not pred.isnan().any()
            else "(not all action tokens)",
            f"{(truth - pred).abs().max().item():.4f}" if not pred.isnan().any() else "-",
        )
    console.print(table)
    total_s = time.perf_counter() - start
    console.print(
        f"loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}; action tokens right: "
        f"{100 * result.action_token_accuracy:.1f}%; {result.trainable}; {total_s:.1f} s in all",
        highlight=False,
    )
    del backbone
    policy = _policy_demo(backbone_id, model_path, device, policy_steps, columns)
    if metrics_json is not None:
        metrics = {
            "backbone": backbone_id,
            "initial_loss": result.losses[0],
            "final_loss": result.losses[-1],
            "action_token_accuracy": result.action_token_accuracy,
            "seconds": total_s,
            "policy": {
                "vision": policy.vision_backbone_id,
                "initial_loss": policy.losses[0],
                "final_loss": policy.losses[-1],
                "action_token_accuracy": policy.action_token_accuracy,
                "max_error_half_bins": float(policy.bin_errors.max()),
                "targets": policy.targets.tolist(),
                "predicted": policy.predicted.tolist(),
                "seconds": policy.seconds,
            },
        }
        metrics_json.write_text(json.dumps(metrics, indent=2) + "\n")


def _policy_demo(backbone_id: str, model_path: Path | None, device: str, steps: int, columns: tuple):
    """The demo's second part: a fresh VLA trained on synthetic images, its actions against the targets."""
    from rich.progress import Progress

    from llm_backbones.app.demo import POLICY_VISION, POLICY_VISION_DEPTH, run_policy_demo

    console.print(
        f"\nA fresh VLA: {backbone_id} + {POLICY_VISION} ({POLICY_VISION_DEPTH} blocks, random) + a new "
        "projector (build_vla), fine-tuned on 4 synthetic images, one instruction, each image its own action",
        highlight=False,
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("train", total=steps, loss="")
        result = run_policy_demo(
            backbone_id,
            llm_model_path=model_path,
            steps=steps,
            device=device,
            on_step=lambda i, loss: progress.update(task, advance=1, loss=_loss_field(loss)),
        )
    table = Table(title=f"predict_action from each image ('{result.instruction}')")
    for column in ("image", "target action", "predicted action", "max error (half bins)"):
        table.add_column(column, overflow="fold")
    for k, (target, predicted, errors) in enumerate(
        zip(result.targets, result.predicted, result.bin_errors, strict=True)
    ):
        table.add_row(
            str(k),
            " ".join(f"{v:+.3f}" for v in target.tolist()),
            " ".join(f"{v:+.3f}" for v in predicted.tolist()),
            f"{errors.max():.2f}",
        )
    console.print(table)
    console.print(
        f"loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}; action tokens right: "
        f"{100 * result.action_token_accuracy:.1f}%; {result.parameters:,} parameters; "
        f"{result.seconds:.1f} s",
        highlight=False,
    )
    return result


@app.command()
def finetune(
    ctx: typer.Context,
    backbone: Annotated[str | None, typer.Option(help="Backbone id.")] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Conversations: a JSON or JSONL file of LLaVA records (conversations) or OpenAI chat "
            "records (messages)."
        ),
    ] = None,
    model_path: Annotated[
        Path | None, typer.Option(help="Local HF-format directory replacing the hub path.")
    ] = None,
    mode: Annotated[str | None, typer.Option(help="full, last-layer or lora (default: full).")] = None,
    prompt_format: Annotated[
        str | None,
        typer.Option(
            help="Prompt format to train with, e.g. llama2-chat-prismatic "
            "(default: the backbone's; see `llm-backbones list`)."
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps of the whole run (default: 10).")] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Global batch of one optimizer step, split over --grad-accum micro-batches and the ranks "
            "(default: 8)."
        ),
    ] = None,
    grad_accum: Annotated[
        int | None,
        typer.Option(
            help="Micro-batches accumulated per optimizer step; the global batch stays --batch-size "
            "(default: 1)."
        ),
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default: 1e-4).")] = None,
    lr_schedule: Annotated[
        str | None,
        typer.Option(
            help="After the warm-up: cosine (down toward 0 at --steps) or constant (default: cosine)."
        ),
    ] = None,
    warmup_steps: Annotated[
        int | None, typer.Option(help="Steps of linear warm-up up to --lr (default: 0).")
    ] = None,
    max_grad_norm: Annotated[
        float | None,
        typer.Option(help="Clip the global gradient norm to this; 0 turns clipping off (default: 1.0)."),
    ] = None,
    max_length: Annotated[
        int | None,
        typer.Option(help="Truncate examples to this many tokens (default: the backbone's llm_max_length)."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Data order and initialisation depend only on it (default: 0).")
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help="fp32 or bf16 (default: bf16 on CUDA, fp32 on CPU).")
    ] = None,
    fsdp: Annotated[
        int | None, typer.Option(help="FSDP version under torchrun: 2 (fully_shard) or 1 (default: 2).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda if available).")] = None,
    fast: Annotated[
        bool | None,
        typer.Option(
            "--fast/--no-fast",
            help="backbone.enable_fast_training(): the loss "
            "without full logits; compiled decoder layers on CUDA (default: off).",
        ),
    ] = None,
    gradient_checkpointing: Annotated[
        bool | None,
        typer.Option(
            "--gradient-checkpointing/--no-gradient-checkpointing",
            help="Recompute each decoder layer's activations in backward (default: off).",
        ),
    ] = None,
    eval_data: Annotated[
        Path | None, typer.Option(help="Conversation JSON file to report the mean eval loss on.")
    ] = None,
    eval_every: Annotated[
        int | None,
        typer.Option(help="Evaluate every N steps, and after the last (default: 0, after the last only)."),
    ] = None,
    log_every: Annotated[
        int | None, typer.Option(help="Write a metrics record every N steps (default: 1).")
    ] = None,
    save_every: Annotated[
        int | None,
        typer.Option(help="Checkpoint (DCP) every N steps and after the last; 0: none (default: 500)."),
    ] = None,
    keep: Annotated[int | None, typer.Option(help="Checkpoints kept, newest first (default: 2).")] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            help="Run folder: checkpoints/, metrics.jsonl, run_config.json and the final HF-format model."
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in --output from its latest complete "
            "checkpoint (settings not given: the run's own).",
        ),
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the run in --output.")] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            help="YAML or JSON file of these settings (keys as the flags); flags given here override it."
        ),
    ] = None,
    metrics_json: Annotated[
        Path | None, typer.Option(help="Write losses, world size and trainable params here.")
    ] = None,
) -> None:
    """Fine-tune a backbone on conversations; single process, or `torchrun --nproc_per_node=N` (FSDP)."""
    import os

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    given = {
        "backbone": backbone,
        "data": data,
        "model_path": model_path,
        "mode": mode,
        "prompt_format": prompt_format,
        "steps": steps,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "lr": lr,
        "lr_schedule": lr_schedule,
        "warmup_steps": warmup_steps,
        "max_grad_norm": max_grad_norm,
        "max_length": max_length,
        "seed": seed,
        "precision": precision,
        "fsdp": fsdp,
        "device": device,
        "fast": fast,
        "gradient_checkpointing": gradient_checkpointing,
        "eval_data": eval_data,
        "eval_every": eval_every,
        "log_every": log_every,
        "save_every": save_every,
        "keep": keep,
        "output": output,
        "resume": resume or None,
        "overwrite": overwrite or None,
        "metrics_json": metrics_json,
    }
    is_main = os.environ.get("RANK", "0") == "0"
    settings = None
    try:
        from llm_backbones.data.examples import load_conversations
        from llm_backbones.training.finetune import check_conversations, preflight, run_finetune
        from llm_backbones.training.loop import FinetuneConfig, check_batch_size

        settings = FinetuneConfig.resolve(config, {k: v for k, v in given.items() if v is not None})
        if settings.metrics_json is not None:
            _check_output_file(Path(settings.metrics_json), "--metrics-json")
        preflight(settings)  # bad settings, outputs and data files fail here, before the progress bar
        conversations = load_conversations(settings.data)
        fmt = settings.prompt_format
        check_conversations(settings.backbone, conversations, repr(str(settings.data)), prompt_format=fmt)
        check_batch_size(settings.batch_size, len(conversations), repr(str(settings.data)))
        if settings.eval_data is not None:
            check_conversations(
                settings.backbone,
                load_conversations(settings.eval_data),
                repr(str(settings.eval_data)),
                prompt_format=fmt,
            )
        _warn_unsaved(settings.output, is_main)  # after the checks: a refused run shows its error line alone
        columns = (
            TextColumn(f"{settings.mode} fine-tuning"),
            BarColumn(),
            TextColumn("step {task.completed}/{task.total}"),
            TextColumn(_LOSS_COLUMN),
            TextColumn("lr {task.fields[lr]:.2e}"),
            TextColumn("{task.fields[tps]:,.0f} tok/s"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, disable=not is_main) as progress:
            task = progress.add_task("train", total=settings.steps, loss="", lr=settings.lr, tps=0.0)

            def on_record(record: dict) -> None:
                if "lr" in record:
                    progress.update(task, lr=record["lr"], tps=record["tokens_per_s"])

            result = run_finetune(
                data=conversations,
                config=settings,
                on_record=on_record,
                on_step=lambda step, loss: progress.update(task, completed=step, loss=_loss_field(loss)),
            )
    except (LLMBackbonesError, OSError, ValueError) as exc:
        _fail(exc)
    except KeyboardInterrupt:
        if not is_main:
            raise typer.Exit(code=130) from None
        from llm_backbones.training.checkpoint import RUN_CONFIG

        output = None if settings is None else settings.output
        if output is not None and (Path(output) / RUN_CONFIG).is_file():
            args = ["--output", str(output), "--resume"]  # the run's own settings: these alone continue it
        else:
            args = [*_given_args(ctx), "--resume"]
        _interrupted("finetune", output, None if settings is None else args)
    if not is_main:
        return
    if result.losses:
        resumed = f" (resumed at step {result.start_step})" if result.start_step else ""
        trained = f"loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}{resumed}"
    else:
        trained = f"nothing to train: the latest checkpoint is already at step {result.start_step}"
    evals = f"; eval loss {result.eval_losses[-1][1]:.4f}" if result.eval_losses else ""
    console.print(
        f"{result.summary}; world size {result.world_size}; {trained}{evals}"
        + (f"; checkpoint: {result.output}" if result.output else ""),
        highlight=False,
    )
    if settings.metrics_json is not None:
        metrics = {
            "losses": result.losses,
            "world_size": result.world_size,
            "trainable_params": result.trainable_params,
            "start_step": result.start_step,
            "eval_losses": result.eval_losses,
            "output": result.output,
        }
        Path(settings.metrics_json).write_text(json.dumps(metrics, indent=2) + "\n")


@app.command("finetune-vla")
def finetune_vla(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option(help="Robot episodes: a LeRobot dataset folder or a .jsonl file.")],
    policy: Annotated[
        Path | None, typer.Option(help="OpenVLA / Prismatic checkpoint to start from (load_vla).")
    ] = None,
    llm: Annotated[
        str | None,
        typer.Option(
            help="Instead of --policy, a fresh policy (build_vla): its LLM id (`llm-backbones list`)."
        ),
    ] = None,
    vision: Annotated[
        str | None, typer.Option(help="The fresh policy's vision backbone id (e.g. siglip-vit-so400m).")
    ] = None,
    llm_path: Annotated[
        Path | None, typer.Option(help="Local HF directory of the --llm weights (default: its hub path).")
    ] = None,
    vision_weights: Annotated[
        str | None,
        typer.Option(
            help="timm's tower weights: a .safetensors file or hf-hub:timm/MODEL; a comma between the "
            "two towers of a fused id (default: random towers)."
        ),
    ] = None,
    image_resize_strategy: Annotated[
        str | None, typer.Option(help="Fresh policy: letterbox (default), resize-naive or resize-crop.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Run folder: checkpoints, metrics.jsonl, and the export in export/.")
    ] = None,
    unnorm_key: Annotated[
        str | None, typer.Option(help="Name of the dataset's statistics in the export (default: its name).")
    ] = None,
    mode: Annotated[str, typer.Option(help="full, last-layer or lora.")] = "lora",
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 100,
    batch_size: Annotated[int, typer.Option(help="Frames per optimizer step.")] = 8,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per step.")] = 1,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 5e-4,
    warmup_steps: Annotated[int, typer.Option(help="Linear warm-up steps.")] = 0,
    max_grad_norm: Annotated[float, typer.Option(help="Gradient clip (0: none).")] = 1.0,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank (OpenVLA: 32).")] = 32,
    lora_alpha: Annotated[int | None, typer.Option(help="LoRA alpha (default min(rank, 16)).")] = None,
    lora_dropout: Annotated[float, typer.Option(help="LoRA dropout.")] = 0.0,
    train_vision: Annotated[bool, typer.Option("--train-vision", help="Unfreeze the vision towers.")] = False,
    image_aug: Annotated[
        bool, typer.Option("--image-aug", help="OpenVLA's random crop and colour jitter.")
    ] = False,
    image_key: Annotated[
        str | None, typer.Option(help="LeRobot camera feature (observation.images.*).")
    ] = None,
    action_key: Annotated[str | None, typer.Option(help="Action feature (default: action).")] = None,
    task_key: Annotated[str | None, typer.Option(help="Instruction column (default: task_index).")] = None,
    eval_data: Annotated[Path | None, typer.Option(help="Held-out episodes, same formats.")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Evaluate every N steps.")] = None,
    save_every: Annotated[int | None, typer.Option(help="Checkpoint every N steps.")] = None,
    lr_schedule: Annotated[
        str | None,
        typer.Option(
            help="After the warm-up: cosine (down toward 0 at --steps) or constant (default: cosine)."
        ),
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help="fp32 or bf16 (default: bf16 on CUDA, fp32 on CPU).")
    ] = None,
    log_every: Annotated[
        int | None, typer.Option(help="Write a metrics record every N steps (default: 1).")
    ] = None,
    keep: Annotated[int | None, typer.Option(help="Checkpoints kept, newest first (default: 2).")] = None,
    seed: Annotated[
        int,
        typer.Option(help="Seed of the data order, LoRA init, augmentation and a fresh policy's weights."),
    ] = 0,
    vision_depth: Annotated[
        int | None,
        typer.Option(
            help="Blocks per vision tower, for checkpoints whose towers were cut (or small fresh ones)."
        ),
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    fsdp: Annotated[
        int, typer.Option(help="Under torchrun: 2 (fully_shard) or 1 (FullyShardedDataParallel).")
    ] = 2,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --output.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the run in --output.")] = False,
) -> None:
    """Fine-tune a VLA on robot episodes (image + instruction -> action tokens, OpenVLA's loss), one process
    or under torchrun (FSDP), from a checkpoint (--policy) or a fresh policy (--llm and --vision); export an
    HF OpenVLA checkpoint that load_vla loads (and OpenVLA's own code, for LLaMA-2 LLMs)."""
    options = {
        "policy": str(policy) if policy is not None else None,
        "llm": llm,
        "vision": vision,
        "llm_path": str(llm_path) if llm_path is not None else None,
        "vision_weights": vision_weights,
        "image_resize_strategy": image_resize_strategy,
        "data": str(data),
        "output": str(output) if output is not None else None,
        "unnorm_key": unnorm_key,
        "mode": mode,
        "steps": steps,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "lr": lr,
        "warmup_steps": warmup_steps,
        "max_grad_norm": max_grad_norm,
        "lora_rank": lora_rank,
        "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout,
        "train_vision": train_vision,
        "image_aug": image_aug,
        "image_key": image_key,
        "action_key": action_key,
        "task_key": task_key,
        "eval_data": str(eval_data) if eval_data is not None else None,
        "eval_every": eval_every,
        "save_every": save_every,
        "lr_schedule": lr_schedule,
        "precision": precision,
        "log_every": log_every,
        "keep": keep,
        "seed": seed,
        "vision_depth": vision_depth,
        "device": device,
        "fsdp": fsdp,
        "resume": resume or None,
        "overwrite": overwrite or None,
    }
    is_main = os.environ.get("RANK", "0") == "0"
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    try:
        from llm_backbones.training.vla import VLAFinetuneConfig, run_finetune_vla

        given = {k: v for k, v in options.items() if v is not None}
        # the settings are refused before the progress bar shows (run_finetune_vla checks them again)
        VLAFinetuneConfig.from_mapping(given, "options").validate(int(os.environ.get("WORLD_SIZE", "1")))
        _warn_unsaved(output, is_main)
        columns = (
            TextColumn(f"{mode} VLA fine-tuning"),
            BarColumn(),
            TextColumn("step {task.completed}/{task.total}"),
            TextColumn(_LOSS_COLUMN),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, disable=not is_main) as progress:
            task = progress.add_task("train", total=steps, loss="")
            result = run_finetune_vla(
                on_step=lambda step, loss: progress.update(task, completed=step, loss=_loss_field(loss)),
                **given,
            )
    except (LLMBackbonesError, OSError, ValueError) as exc:
        _fail(exc)
    except KeyboardInterrupt:
        if not is_main:
            raise typer.Exit(code=130) from None
        _interrupted("finetune-vla", output, [*_given_args(ctx), "--resume"])  # the same options, resumed
    if not is_main:
        return
    if result.losses:
        console.print(
            f"loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}; action tokens right "
            f"{100 * result.action_accuracy[-1]:.1f}%; action L1 {result.action_l1[-1]:.4f}; "
            f"{result.trainable_params:,} of {result.total_params:,} parameters trained"
            + (f"; export: {result.output}" if result.output else ""),
            highlight=False,
        )
    else:
        console.print(f"nothing to train: the run is already at step {result.start_step}", highlight=False)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="Run folder: the --output of finetune or finetune-vla.")],
    output: Annotated[
        Path, typer.Option(help="Folder to write the checkpoint to (for a LoRA run with adapter/ inside).")
    ],
    step: Annotated[
        int | None, typer.Option(help="Checkpoint step to export (default: the run's latest).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --output.")] = False,
) -> None:
    """Turn a checkpoint of a run (checkpoints/step-N) into a model other tools load: an HF OpenVLA
    checkpoint (load_vla) for finetune-vla, a save_backbone checkpoint for finetune; LoRA also alone, in
    peft's format, in adapter/."""
    try:
        from llm_backbones.training.export import export_run

        which = f"step {step}" if step is not None else "the latest checkpoint"
        with console.status(f"Exporting {which} of {run_dir} ..."):
            path = export_run(run_dir, step=step, output=output, overwrite=overwrite)
    except (LLMBackbonesError, OSError) as exc:
        _fail(exc)
    adapter = path / "adapter"
    console.print(
        f"exported {which} of {run_dir}: {path}"
        + (f"; LoRA adapter (peft): {adapter}" if adapter.is_dir() else ""),
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def prompt(
    backbone: Annotated[str, typer.Argument(help="Backbone id.")],
    conversation: Annotated[
        Path, typer.Option("--conversation", help="LLaVA/Prismatic conversation JSON file.")
    ],
    tokens: Annotated[
        bool, typer.Option("--tokens", help="Show token ids and pieces, supervised ones highlighted.")
    ] = False,
    model_path: Annotated[
        Path | None, typer.Option(help="Local HF-format directory for the tokenizer.")
    ] = None,
    model_family: Annotated[
        str, typer.Option(help="Selects the default system prompt.")
    ] = DEFAULT_MODEL_FAMILY,
    prismatic_compat: Annotated[bool, typer.Option(help="Render the original Prismatic strings.")] = False,
) -> None:
    """Render the training prompt and the generation prompt of a conversation (and, with --tokens, its labels)."""  # noqa: E501
    try:
        _prompt(backbone, conversation, tokens, model_path, model_family, prismatic_compat)
    except (LLMBackbonesError, OSError) as exc:
        _fail(exc)


def _prompt(backbone_id, path, tokens, model_path, model_family, prismatic_compat) -> None:
    from rich.text import Text

    from llm_backbones.core.prompting.builder import builder_for
    from llm_backbones.core.registry import get_spec
    from llm_backbones.data.examples import (
        IGNORE_INDEX,
        load_conversations,
        make_builder,
        split_system,
        tokenize_conversation,
        tokenize_prompt,
    )

    spec = get_spec(backbone_id)
    builder_fn = (
        builder_for(spec.prompt_format, prismatic_compat=True) if prismatic_compat else spec.prompt_builder
    )

    conversations = load_conversations(path)
    conversation = conversations[0]
    if len(conversations) > 1:
        console.print(f"{path} holds {len(conversations)} conversations; showing the first.", highlight=False)
    system_prompt, turns = split_system(conversation)  # a leading system turn is the system prompt
    builder = make_builder(builder_fn, model_family, system_prompt)
    for role, message in turns:
        builder.add_turn(role, message)
    gen_builder = make_builder(builder_fn, model_family, system_prompt)
    for role, message in turns if len(turns) % 2 == 1 else turns[:-1]:
        gen_builder.add_turn(role, message)
    console.print(f"[bold]Builder[/]: {builder!r}", highlight=False)
    # escaped: a template's own brackets ([INST] ... [/INST]) are not markup
    console.print(
        "[bold]Training prompt[/]:", escape(repr(builder.get_prompt())), highlight=False, soft_wrap=True
    )
    console.print(
        "[bold]Generation prompt[/]:", escape(repr(gen_builder.get_prompt())), highlight=False, soft_wrap=True
    )
    if not tokens:
        return
    tokenizer = _tokenizer_for(backbone_id, model_path)
    if len(turns) % 2 == 0:
        example = tokenize_conversation(tokenizer, builder_fn, conversation, model_family=model_family)
        ids, labels = example["input_ids"].tolist(), example["labels"].tolist()
    else:
        ids = tokenize_prompt(tokenizer, builder_fn, conversation, model_family=model_family).tolist()
        labels = [IGNORE_INDEX] * len(ids)
    text = Text()
    for token_id, label, piece in zip(ids, labels, tokenizer.convert_ids_to_tokens(ids), strict=True):
        style = "bold black on green" if label != IGNORE_INDEX else "dim"
        text.append(f"{piece}", style=style)
        text.append(f"({token_id}) ")
    console.print(text, soft_wrap=True)
    console.print(
        f"{len(ids)} tokens, {sum(label != IGNORE_INDEX for label in labels)} supervised (highlighted)"
    )


def _tokenizer_for(backbone_id: str, model_path: Path | None):
    """Exactly the backbone's tokenizer (PAD policy, max length, padding side): the backbone is built in
    inference mode, on the meta device, which reads config and tokenizer and no weights."""
    from llm_backbones.core.backbones.factory import get_llm_backbone_and_tokenizer

    return get_llm_backbone_and_tokenizer(backbone_id, model_path=model_path, inference_mode=True)[1]


_DTYPES = ("float32", "bfloat16", "float16")


@app.command()
def serve(
    path: Annotated[
        Path, typer.Argument(help="OpenVLA checkpoint: an HF directory, a Prismatic run directory or a .pt.")
    ],
    host: Annotated[
        str, typer.Option(help="Address to bind; 0.0.0.0 (every interface) only when asked for.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8000,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N (default: cpu).")] = None,
    dtype: Annotated[
        str | None, typer.Option(help="float32, bfloat16 or float16 (default: as the checkpoint stores it).")
    ] = None,
    max_batch: Annotated[
        int | None, typer.Option(min=1, max=1024, help="Most requests in one model call (default 8).")
    ] = None,
    max_wait_ms: Annotated[
        float | None,
        typer.Option(
            min=0, max=60_000, help="How long a request waits for companions in its batch (default 5 ms)."
        ),
    ] = None,
    unnorm_key: Annotated[
        str | None, typer.Option(help="Dataset statistics for requests that name none.")
    ] = None,
    vision_depth: Annotated[
        int | None,
        typer.Option(
            min=2, help="Blocks of the vision towers, for checkpoints whose towers were cut (tests)."
        ),
    ] = None,
    max_body_mb: Annotated[
        float | None, typer.Option(min=0.001, help="Larger request bodies are answered 413 (default 16).")
    ] = None,
) -> None:
    """Serve an OpenVLA checkpoint over HTTP: POST /act (OpenVLA deploy.py's request, or .npy bytes), GET
    /health; concurrent requests are batched. Needs `pip install 'llm-backbones[serve]'`."""
    from llm_backbones.serving.protocol import require_serve_packages

    # OpenMP threads that spin while waiting lose their core to the event loop's thread (it reads requests
    # while the model runs) and stall every parallel region: on 2 CPU cores the policy served half as fast
    # (benchmarks/bench_serve.py). Read when torch loads (below, not yet); a value the user set wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        require_serve_packages()
        if dtype is not None and dtype not in _DTYPES:
            raise typer.BadParameter(f"--dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}.")
        _serve(path, host, port, device, dtype, max_batch, max_wait_ms, unnorm_key, vision_depth, max_body_mb)
    except (LLMBackbonesError, OSError) as exc:
        _fail(exc)


def _serve(path, host, port, device, dtype, max_batch, max_wait_ms, unnorm_key, vision_depth, max_body_mb):
    import torch

    from llm_backbones.data.norm_stats import check_unnorm_key
    from llm_backbones.serving.batching import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_S
    from llm_backbones.serving.protocol import DEFAULT_MAX_BODY_BYTES
    from llm_backbones.serving.server import serve as run_server
    from llm_backbones.vla.loading import load_vla

    max_batch = DEFAULT_MAX_BATCH if max_batch is None else max_batch
    max_wait_ms = DEFAULT_MAX_WAIT_S * 1000 if max_wait_ms is None else max_wait_ms
    max_body_bytes = DEFAULT_MAX_BODY_BYTES if max_body_mb is None else int(max_body_mb * 2**20)

    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        raise typer.BadParameter(f"--device {device} was asked for, but CUDA is not available; use cpu.")
    start = time.perf_counter()
    with console.status(f"Loading {path} ..."):
        policy = load_vla(
            path,
            dtype=getattr(torch, dtype) if dtype else None,
            device=device,
            vision_depth=vision_depth,
        )
    if unnorm_key is not None:
        check_unnorm_key(policy.norm_stats, unnorm_key)
    console.print(
        f"Serving {policy.vision_backbone_id} + {policy.backbone.identifier} ({policy.device}, "
        f"{str(policy.dtype).removeprefix('torch.')}; loaded in {time.perf_counter() - start:.1f} s) on "
        f"http://{host}:{port} (POST /act, GET /health; max batch {max_batch}, max wait {max_wait_ms:g} ms)",
        highlight=False,
        soft_wrap=True,
    )
    run_server(
        policy,
        host=host,
        port=port,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_body_bytes=max_body_bytes,
        unnorm_key=unnorm_key,
    )


@app.command()
def act(
    url: Annotated[str, typer.Argument(help="The server, e.g. http://127.0.0.1:8000.")],
    image: Annotated[Path, typer.Option(help="Camera image file (PNG, JPEG, ...).")],
    instruction: Annotated[str, typer.Option(help="What the robot should do.")],
    unnorm_key: Annotated[
        str | None, typer.Option(help="Dataset statistics (default: the server's).")
    ] = None,
) -> None:
    """Ask a running `llm-backbones serve` for one action (a check by hand); prints it as a JSON list."""
    from llm_backbones.serving.client import PolicyClient

    try:
        array = _read_image(image)
        action = PolicyClient(url).act(array, instruction, unnorm_key=unnorm_key)
    except (LLMBackbonesError, OSError) as exc:
        _fail(exc)
    print(json.dumps(action.tolist()))


def _read_image(path: Path):
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from llm_backbones.errors import ImageError

    if not path.is_file():
        raise ImageError(f"--image {str(path)!r} is not a file; pass a PNG or JPEG camera image.")
    try:
        with Image.open(path) as opened:
            return np.asarray(opened.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(f"--image {str(path)!r} is not an image PIL can read ({exc}).") from None


if __name__ == "__main__":
    app()
