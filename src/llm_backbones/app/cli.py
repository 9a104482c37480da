"""`llm-backbones` runs, serves and fine-tunes OpenVLA-style policies and their LLM backbones. `serve`
answers robot actions over HTTP from an OpenVLA checkpoint (`act` asks a running server for one); `finetune`
fine-tunes an LLM backbone on conversations and `finetune-vla` a VLA on robot episodes (full, last-layer or
LoRA; one process or torchrun with FSDP); `export` turns a run's checkpoint into a model other tools load;
`list`, `info` and `prompt` show the registered backbones, one backbone's facts and the prompt a
conversation renders to; `demo` teaches the embedded tiny backbone robot actions on the CPU in a few
minutes."""

from __future__ import annotations

import contextlib
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
from llm_backbones.training.settings import FinetuneConfig, VLAFinetuneConfig

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


def _interrupted(command: str, ctx: typer.Context, settings) -> None:
    """Ctrl-C during a run: one line saying what was kept and the command that continues it; exit 130.
    Where the run folder holds its run_config.json, `--output DIR --resume` alone continues it (the run's own
    settings); else the options as given, resumed."""
    import shlex

    from llm_backbones.training.checkpoint import RUN_CONFIG, RunDir

    output = None if settings is None else settings.output
    if settings is None:
        resume_args = None
    elif output is not None and (Path(output) / RUN_CONFIG).is_file():
        resume_args = ["--output", str(output), "--resume"]
    else:
        resume_args = [*_given_args(ctx), "--resume"]
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


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _start_progress(shown: contextlib.ExitStack, progress, output: object, is_main: bool) -> None:
    """A run's checks have all passed (a refused run shows its error line alone): the warning of a run
    without --output, then the progress bar, until `shown` closes."""
    _warn_unsaved(output, is_main)
    shown.enter_context(progress)


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


def _settings_options(table: type, skip: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """The command's options, generated from a settings table (`training.loop.FinetuneConfig`): one flag per
    row but `skip`, with the row's type (a path for `table.PATHS`), help and default; every flag defaults to
    None, so the command sees only what was given (a `--config` file and a resumed run's own settings fill
    the rest, `FinetuneConfig.resolve`). The decorated command takes `ctx`, `config` and the settings as
    keywords. Adds `--config`."""
    import dataclasses
    import inspect
    import typing

    hints = typing.get_type_hints(table)

    def decorate(command: Callable) -> Callable:
        keyword = inspect.Parameter.KEYWORD_ONLY
        params = [inspect.Parameter("ctx", keyword, annotation=typer.Context)]
        for row in dataclasses.fields(table):
            if row.name in skip:
                continue
            kind = next(
                a for a in (*typing.get_args(hints[row.name]), hints[row.name]) if a is not type(None)
            )
            kind = Path if row.name in table.PATHS else kind
            flag = row.metadata["flag"] or f"--{row.name.replace('_', '-')}"
            option = typer.Option(flag, help=_setting_help(row))
            params.append(
                inspect.Parameter(row.name, keyword, annotation=Annotated[kind | None, option], default=None)
            )
        config = typer.Option(
            help="YAML or JSON file of these settings (keys as the flags); flags given here override it."
        )
        params.append(
            inspect.Parameter("config", keyword, annotation=Annotated[Path | None, config], default=None)
        )
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


def _setting_help(row) -> str:
    """A settings row's help as its flag shows it: the row's help, then its default."""
    shown, default = row.metadata["shown"], row.default
    if shown is None and isinstance(default, bool):  # a two-way switch says its default; `--resume` does not
        shown = ("on" if default else "off") if "/" in (row.metadata["flag"] or "") else None
    elif shown is None and default is not None:
        shown = str(default)
    return row.metadata["help"] + (f" (default: {shown})" if shown is not None else "")


@app.command()
@_settings_options(FinetuneConfig)
def finetune(ctx: typer.Context, config: Path | None = None, **given) -> None:
    """Fine-tune a backbone on conversations; single process, or `torchrun --nproc_per_node=N` (FSDP)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    is_main = os.environ.get("RANK", "0") == "0"
    settings = None
    try:
        settings = FinetuneConfig.resolve(config, {k: v for k, v in given.items() if v is not None})
        settings.validate(_world_size())  # the table's checks, before torch is loaded: a bad flag fails fast
        from llm_backbones.training.finetune import run_finetune

        if settings.metrics_json is not None:
            _check_output_file(Path(settings.metrics_json), "--metrics-json")
        columns = (
            TextColumn(f"{settings.mode} fine-tuning"),
            BarColumn(),
            TextColumn("step {task.completed}/{task.total}"),
            TextColumn(_LOSS_COLUMN),
            TextColumn("lr {task.fields[lr]:.2e}"),
            TextColumn("{task.fields[tps]:,.0f} tok/s"),
            TimeElapsedColumn(),
        )
        progress = Progress(*columns, console=console, disable=not is_main)
        task = progress.add_task("train", total=settings.steps, loss="", lr=settings.lr, tps=0.0)

        def on_record(record: dict) -> None:
            if "lr" in record:
                progress.update(task, lr=record["lr"], tps=record["tokens_per_s"])

        with contextlib.ExitStack() as shown:
            result = run_finetune(
                config=settings,
                on_ready=lambda: _start_progress(shown, progress, settings.output, is_main),
                on_record=on_record,
                on_step=lambda step, loss: progress.update(task, completed=step, loss=_loss_field(loss)),
            )
    except (LLMBackbonesError, OSError, ValueError) as exc:
        _fail(exc)
    except KeyboardInterrupt:
        if not is_main:
            raise typer.Exit(code=130) from None
        _interrupted("finetune", ctx, settings)
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
@_settings_options(VLAFinetuneConfig, skip=VLAFinetuneConfig.NOT_FOR_VLA)
def finetune_vla(ctx: typer.Context, config: Path | None = None, **given) -> None:
    """Fine-tune a VLA on robot episodes (image + instruction -> action tokens, OpenVLA's loss), one process
    or under torchrun (FSDP), from a checkpoint (--policy) or a fresh policy (--llm and --vision); export an
    HF OpenVLA checkpoint that load_vla loads (and OpenVLA's own code, for LLaMA-2 LLMs)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    is_main = os.environ.get("RANK", "0") == "0"
    settings = None
    try:
        settings = VLAFinetuneConfig.resolve(config, {k: v for k, v in given.items() if v is not None})
        settings.validate(_world_size())
        from llm_backbones.training.vla import run_finetune_vla

        columns = (
            TextColumn(f"{settings.mode} VLA fine-tuning"),
            BarColumn(),
            TextColumn("step {task.completed}/{task.total}"),
            TextColumn(_LOSS_COLUMN),
            TimeElapsedColumn(),
        )
        progress = Progress(*columns, console=console, disable=not is_main)
        task = progress.add_task("train", total=settings.steps, loss="")
        with contextlib.ExitStack() as shown:
            result = run_finetune_vla(
                config=settings,
                on_ready=lambda: _start_progress(shown, progress, settings.output, is_main),
                on_step=lambda step, loss: progress.update(task, completed=step, loss=_loss_field(loss)),
            )
    except (LLMBackbonesError, OSError, ValueError) as exc:
        _fail(exc)
    except KeyboardInterrupt:
        if not is_main:
            raise typer.Exit(code=130) from None
        _interrupted("finetune-vla", ctx, settings)
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
        builder_for(spec.prompt_format, prismatic_compat=True) if prismatic_compat else spec.prompt_builder_fn
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
