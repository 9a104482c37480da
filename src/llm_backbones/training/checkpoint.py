"""Periodic training checkpoints with `torch.distributed.checkpoint` (DCP), and the run folder they live in.

A run's `--output` folder:

    OUTPUT/
      config.json, model.safetensors, tokenizer*, fingerprint.json
                               the final export (save_backbone, HF format; `finetune-vla`: in export/)
      adapter/                 `--mode lora`: the LoRA adapters alone, in peft's format (before merging)
      run_config.json          the settings of the run (`--config OUTPUT/run_config.json` repeats it)
      metrics.jsonl            one JSON record per logged step and per evaluation
      tensorboard/             the same metrics, when tensorboard is installed
      checkpoints/
        step-00000500/         DCP: .metadata + one or more *.distcp per rank, and meta.json
        step-00001000/
        latest                 "step-00001000": the newest complete checkpoint, written last

A checkpoint holds the trainable weights, the optimizer and LR-scheduler states, the data position (the
step; the data order is a function of seed and global batch) and every rank's RNG states. Under FSDP
each rank writes its own shards (`get_state_dict`); a single process writes the same format, and DCP
reshards on load, so a checkpoint resumes on any world size. Each is written into `step-N.partial` by
every rank, renamed to `step-N` once all have finished, and only then named in `latest` (a temporary
file replaced in one step), so a run killed at any moment leaves `latest` naming a complete checkpoint.
The last `keep` checkpoints are kept. `RunDir.checkpoint_at` finds one by step (`llm-backbones export`).

`run_finetune` publishes the checkpoint of step N once step N+1's loss has come out finite (the weights
after an update are known good only then), or right away after the last step: a loss that turns NaN
never gets the weights that caused it named in `latest`, nor lets `keep` delete the last good one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from llm_backbones import _fs
from llm_backbones.errors import CheckpointError, FinetuneError, OutputPathError
from llm_backbones.training.distributed import DistributedContext, all_finite, barrier

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest"
META_FILE = "meta.json"
RUN_CONFIG = "run_config.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
EXPORT_FINGERPRINT = "fingerprint.json"  # written by save_backbone: an export is there
STAGED_EXPORT = ".export"
ADAPTER_DIR = "adapter"  # the LoRA adapters alone (peft's save_pretrained), written before merging
FORMAT = "torch.distributed.checkpoint"
_STEP_DIR = re.compile(r"^step-(\d+)$")
# Settings a checkpoint cannot be resumed with a different value of: they change the model or the data.
RESUME_FIXED = ("backbone", "mode", "prompt_format", "seed", "batch_size", "max_length")


def step_name(step: int) -> str:
    return f"step-{step:08d}"


# === The run folder ===
class RunDir:
    """The `--output` folder of a run (see the module docstring for its layout)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().absolute()
        self.checkpoints = self.path / CHECKPOINTS_DIR
        self.metrics = self.path / METRICS_FILE
        self.run_config = self.path / RUN_CONFIG
        self.tensorboard = self.path / TENSORBOARD_DIR

    def holds_run(self) -> bool:
        """Whether the folder holds a run (or a `save_backbone` export) of llm-backbones."""
        return any(
            p.exists()
            for p in (self.checkpoints, self.run_config, self.metrics, self.path / EXPORT_FINGERPRINT)
        )

    def describe(self) -> str:
        parts = []
        latest = self.latest_step()
        if latest is not None:
            parts.append(f"checkpoints up to step {latest}")
        if (self.path / EXPORT_FINGERPRINT).is_file():
            parts.append("an exported model")
        if self.metrics.is_file():
            parts.append(METRICS_FILE)
        return ", ".join(parts) or "the files of a run"

    def check(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse an output that would be written over by mistake; read-only (every rank may call it)."""
        if self.path.exists() and not self.path.is_dir():
            raise OutputPathError(
                f"--output {str(self.path)!r} is a file; a run writes a folder. Choose another path."
            )
        blocking = next((p for p in self.path.parents if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise OutputPathError(
                f"--output {str(self.path)!r} lies under {str(blocking)!r}, which is a file, so the folder "
                "cannot be made. Choose a path under a folder."
            )
        existing = next(p for p in (self.path, *self.path.parents) if p.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            raise OutputPathError(
                f"--output {str(self.path)!r} cannot be written: {str(existing)!r} is not writable by this "
                "user. Choose a writable folder, or fix its permissions."
            )
        if not self.path.is_dir() or not any(self.path.iterdir()):
            return
        if not self.holds_run():
            raise OutputPathError(
                f"--output {str(self.path)!r} is a non-empty folder that holds no llm-backbones run (no "
                f"{RUN_CONFIG}, {CHECKPOINTS_DIR}/ or {EXPORT_FINGERPRINT}); refusing to write into it. "
                "Choose a new or empty folder."
            )
        if not resume and not overwrite:
            raise OutputPathError(
                f"--output {str(self.path)!r} already holds a run ({self.describe()}). Pass --resume to "
                "continue it from its latest checkpoint, --overwrite to replace it, or choose a new folder."
            )

    def clear(self) -> None:
        """Delete what a previous run wrote here (`--overwrite`); other files stay."""
        for child in list(self.path.iterdir()) if self.path.is_dir() else []:
            if child.is_dir() and child.name in (
                CHECKPOINTS_DIR,
                TENSORBOARD_DIR,
                STAGED_EXPORT,
                ADAPTER_DIR,
            ):
                shutil.rmtree(child)
            elif child.is_file():
                child.unlink()

    def latest_step(self) -> int | None:
        path = self.latest_checkpoint()
        return None if path is None else int(_STEP_DIR.match(path.name).group(1))

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint `latest` names, or None when there is none. A `latest` that names a missing or
        incomplete folder raises `CheckpointError` (it is written only after its checkpoint is complete)."""
        marker = self.checkpoints / LATEST
        if not marker.is_file():
            return None
        name = marker.read_text(encoding="utf-8").strip()
        path = self.checkpoints / name
        if (
            not _STEP_DIR.match(name)
            or not (path / ".metadata").is_file()
            or not (path / META_FILE).is_file()
        ):
            raise CheckpointError(
                f"{marker} names {name!r}, which is not a complete checkpoint (a step-N folder with "
                f".metadata and {META_FILE}). The folder was changed by hand; point {LATEST} at a complete "
                "step-N folder, or start over with --overwrite."
            )
        return path

    def step_dirs(self) -> list[tuple[int, Path]]:
        if not self.checkpoints.is_dir():
            return []
        found = [
            (int(m.group(1)), p)
            for p in self.checkpoints.iterdir()
            if p.is_dir() and (m := _STEP_DIR.match(p.name))
        ]
        return sorted(found)

    def checkpoint_at(self, step: int | None = None) -> Path:
        """The complete checkpoint of `step` (default: the one `latest` names). `CheckpointError`, naming the
        folder and the fix, when this is no run folder, it holds no checkpoint, `step` is not among them (the
        available steps listed) or its checkpoint is incomplete (an interrupted write)."""
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise CheckpointError(f"step must be an int (a checkpoint's step) or None, got {step!r:.40}.")
        if not self.path.is_dir() or not self.holds_run():
            what = "does not exist" if not self.path.exists() else "is not a run folder"
            raise CheckpointError(
                f"{str(self.path)!r} {what} (no {RUN_CONFIG} or {CHECKPOINTS_DIR}/). Pass the --output "
                "folder of a `finetune` or `finetune-vla` run."
            )
        steps = self.step_dirs()
        available = ", ".join(str(n) for n, _ in steps) or "none"
        if step is None:
            latest = self.latest_checkpoint()
            if latest is not None:
                return latest
            if not steps:
                raise CheckpointError(
                    f"The run in {str(self.path)!r} holds no checkpoint: it ran with --save-every 0, or "
                    "stopped before its first one. Run it again with --save-every N (or --resume it) to "
                    "write some."
                )
            raise CheckpointError(
                f"The run in {str(self.path)!r} has no {CHECKPOINTS_DIR}/{LATEST} naming its newest "
                f"checkpoint; its steps are {available}. Pass --step N."
            )
        path = self.checkpoints / step_name(step)
        if not path.is_dir():
            if (self.checkpoints / f"{step_name(step)}.partial").is_dir():
                raise CheckpointError(
                    f"The checkpoint of step {step} in {str(self.path)!r} is incomplete "
                    f"({path.name}.partial: its writing was interrupted, or it was never published). "
                    f"Complete steps: {available}; pass one of them to --step."
                )
            raise CheckpointError(
                f"The run in {str(self.path)!r} has no checkpoint of step {step}; its steps are {available}. "
                "Pass one of them to --step."
            )
        if not (path / ".metadata").is_file() or not (path / META_FILE).is_file():
            raise CheckpointError(
                f"The checkpoint {str(path)!r} is incomplete (no .metadata or {META_FILE}: changed by hand). "
                f"Complete steps: {available}; pass another to --step."
            )
        return path

    def remove_partial(self) -> None:
        """Delete checkpoints whose writing was interrupted (never named in `latest`)."""
        if self.checkpoints.is_dir():
            for path in self.checkpoints.glob("*.partial"):
                logger.warning("Removing %s: a checkpoint whose writing was interrupted", path)
                shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(self.path / STAGED_EXPORT, ignore_errors=True)
        for path in self.path.glob(f".{STAGED_EXPORT}.tmp-*"):
            shutil.rmtree(path, ignore_errors=True)

    def write_run_config(self, settings: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _fs.write_text_atomic(self.run_config, json.dumps(settings, indent=2) + "\n")


def read_meta(checkpoint: Path) -> dict[str, Any]:
    try:
        return json.loads((checkpoint / META_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{checkpoint / META_FILE} cannot be read ({exc}); resume from another checkpoint."
        ) from None


def check_resume_settings(meta: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """Raise `FinetuneError` when a setting that fixes the model or the data order differs from the
    checkpoint's; return the other differences (which change the run from that step on)."""
    saved = meta.get("config", {})
    fixed = [k for k in RESUME_FIXED if k in saved and saved[k] != settings.get(k)]
    if fixed:
        changes = "; ".join(f"--{k.replace('_', '-')} {saved[k]!r} -> {settings.get(k)!r}" for k in fixed)
        raise FinetuneError(
            f"Cannot resume the checkpoint at step {meta.get('step')} with other settings: {changes}. Exact "
            f"resume needs the same {', '.join(RESUME_FIXED)}; drop those flags (the run's own are in "
            f"{RUN_CONFIG}), or start a new run in another --output (or --overwrite)."
        )
    return [
        f"{k.replace('_', '-')} {saved[k]!r} -> {settings.get(k)!r}"
        for k in sorted(saved)
        if k not in RESUME_FIXED and k in settings and saved[k] != settings[k]
    ]


# === DCP save / load ===
_STATE_OPTIONS = StateDictOptions(ignore_frozen_params=True)  # frozen weights come from the base model


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _dcp_call(fn, *args, ctx: DistributedContext | None, **kwargs):
    """`dcp.save`/`dcp.load`; in a single process without its warning that no process group exists."""
    if ctx is not None and ctx.enabled:
        return fn(*args, **kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        return fn(*args, no_dist=True, **kwargs)


@dataclass(frozen=True)
class PendingCheckpoint:
    """A checkpoint whose shards every rank has written (`partial`), not yet published."""

    step: int
    partial: Path
    final: Path
    meta: dict[str, Any]


def write_checkpoint(
    run: RunDir,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    ctx: DistributedContext,
    meta: dict[str, Any],
) -> PendingCheckpoint:
    """Write the training state after `step` optimizer steps into `checkpoints/step-N.partial` (every rank
    calls it; each writes its own shards). Publish it with `publish_checkpoint`.

    Weights that are not finite are never written (`CheckpointError`)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not all_finite(trainable, ctx):
        raise CheckpointError(
            f"Step {step}: the weights hold NaN or infinite values; no checkpoint was written and {LATEST} "
            "still names the last good one. Lower --lr or use --precision fp32, then --resume."
        )
    partial = run.checkpoints / f"{step_name(step)}.partial"
    if ctx.is_main:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    barrier(ctx)
    model_state, optim_state = get_state_dict(model, optimizer, options=_STATE_OPTIONS)
    rngs: list[Any] = [None] * ctx.world_size
    if ctx.enabled:
        dist.all_gather_object(rngs, _rng_state(ctx.device))
    else:
        rngs = [_rng_state(ctx.device)]
    state = {
        "model": model_state,
        "optimizer": optim_state,
        "scheduler": scheduler.state_dict(),
        # A tuple is stored as one object (DCP flattens dicts and lists): one RNG state per rank.
        "train": {"step": step, "world_size": ctx.world_size, "rng": tuple(rngs)},
    }
    start = time.perf_counter()
    _dcp_call(dcp.save, state, ctx=ctx, storage_writer=dcp.FileSystemWriter(partial))
    logger.info("Checkpoint of step %d written in %.2f s", step, time.perf_counter() - start)
    return PendingCheckpoint(
        step, partial, run.checkpoints / step_name(step), {**meta, "step": step, "world_size": ctx.world_size}
    )


def publish_checkpoint(
    run: RunDir, pending: PendingCheckpoint, *, ctx: DistributedContext, keep: int
) -> Path:
    """Rank 0 renames a written checkpoint into place and names it in `latest`, then deletes all but the
    newest `keep`; every rank calls it (and waits). Returns the checkpoint's folder."""
    if ctx.is_main:
        _publish(run, pending.partial, pending.final, pending.meta)
        _prune(run, keep)
    barrier(ctx)
    return pending.final


def discard_checkpoint(pending: PendingCheckpoint | None, *, ctx: DistributedContext) -> None:
    """Delete a written checkpoint that must not be published (rank 0; best effort, no collective)."""
    if pending is not None and ctx.is_main:
        shutil.rmtree(pending.partial, ignore_errors=True)


def _publish(run: RunDir, partial: Path, final: Path, meta: dict[str, Any]) -> None:
    """Rank 0, once every rank's shards are written: meta.json, rename into place, then `latest`."""
    meta = {
        "format": FORMAT,
        "torch": torch.__version__,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **meta,
    }
    _fs.write_text_atomic(partial / META_FILE, json.dumps(meta, indent=2) + "\n")
    _fs.fsync_tree(partial)  # DCP syncs its data files; .metadata too, to be sure
    # replaces a step re-done after a resume; `latest` never names it (it is newer)
    _fs.publish_dir(partial, final)
    _fs.write_text_atomic(run.checkpoints / LATEST, final.name + "\n")


def _prune(run: RunDir, keep: int) -> None:
    latest = run.latest_checkpoint()
    steps = run.step_dirs()
    for _, path in steps[: max(0, len(steps) - keep)]:
        if path != latest:
            shutil.rmtree(path, ignore_errors=True)


def _dcp_load(checkpoint: Path, state: dict[str, Any], ctx: DistributedContext | None) -> None:
    try:
        _dcp_call(dcp.load, state, ctx=ctx, storage_reader=dcp.FileSystemReader(checkpoint))
    except Exception as exc:  # DCP raises CheckpointException / RuntimeError with per-rank details
        raise CheckpointError(
            f"Cannot load the checkpoint {checkpoint}: {str(exc).splitlines()[0][:300]}. Was it written by "
            f"another backbone or fine-tune mode? Resume with the run's own settings ({RUN_CONFIG}), or "
            "start over with --overwrite."
        ) from exc


def _check_fit(checkpoint: Path, model: nn.Module, result: Any) -> None:
    """Every trainable weight of `model` came from the checkpoint, and nothing else was in it."""
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    missing = [k for k in result.missing_keys if k not in frozen and not k.endswith("inv_freq")]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"The checkpoint {checkpoint} does not fit the model: missing {missing[:3]}, unexpected "
            f"{list(result.unexpected_keys)[:3]}. Resume with the run's own backbone and mode ({RUN_CONFIG})."
        )


def load_checkpoint(
    checkpoint: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    ctx: DistributedContext,
) -> dict[str, Any]:
    """Load a checkpoint of `write_checkpoint` into the (sharded or not) model, optimizer and scheduler,
    whatever world size wrote it; restore this rank's RNG state. Returns the `train` state (`step`, ...)."""
    model_state, optim_state = get_state_dict(model, optimizer, options=_STATE_OPTIONS)
    state = {
        "model": model_state,
        "optimizer": optim_state,
        "scheduler": scheduler.state_dict(),
        "train": {"step": 0, "world_size": 0, "rng": None},
    }
    _dcp_load(checkpoint, state, ctx)
    result = set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
        options=StateDictOptions(ignore_frozen_params=True, strict=False),
    )
    _check_fit(checkpoint, model, result)
    scheduler.load_state_dict(state["scheduler"])
    train = state["train"]
    rngs = train["rng"] or ()
    if len(rngs) == ctx.world_size:
        mine = rngs[ctx.rank]
    else:  # another world size: every rank continues from rank 0's generator state
        mine = rngs[0] if rngs else None
    if mine is not None:
        torch.set_rng_state(mine["cpu"])
        if "cuda" in mine and ctx.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"], ctx.device)
    return train


def load_weights(checkpoint: Path, model: nn.Module) -> None:
    """Load only the trainable weights of a `write_checkpoint` checkpoint into `model`, in one process
    (whatever world size wrote it): no optimizer, scheduler or RNG state. `model` is built and set up for its
    mode as the run's was (its frozen weights are the base model's); for `export_run`."""
    state = {"model": get_model_state_dict(model, options=_STATE_OPTIONS)}
    _dcp_load(checkpoint, state, None)
    result = set_model_state_dict(
        model, state["model"], options=StateDictOptions(ignore_frozen_params=True, strict=False)
    )
    _check_fit(checkpoint, model, result)


# === The final export ===
def publish_export(run: RunDir, staged: Path) -> Path:
    """Move a `save_backbone` directory written at `staged` (inside the run folder) to the top of the run
    folder, `fingerprint.json` last (an export without it is visibly incomplete); weight files of an
    earlier export that the new one does not have are removed. Returns the run folder."""
    names = {p.name for p in staged.iterdir()}
    old_fingerprint = run.path / EXPORT_FINGERPRINT
    if old_fingerprint.exists():
        old_fingerprint.unlink()
    run_files = {RUN_CONFIG, METRICS_FILE}
    for child in run.path.iterdir():
        if (
            child.is_file()
            and child.name not in run_files
            and child.name not in names
            and not child.name.startswith(".")
        ):
            child.unlink()  # e.g. model-00001-of-00002.safetensors of an earlier, sharded export
    for name in sorted(names - {EXPORT_FINGERPRINT}) + [EXPORT_FINGERPRINT]:
        if (staged / name).is_dir():
            shutil.rmtree(run.path / name, ignore_errors=True)
        os.replace(staged / name, run.path / name)
    _fs.fsync_dir(run.path)
    staged.rmdir()
    return run.path


__all__ = [
    "PendingCheckpoint",
    "RunDir",
    "check_resume_settings",
    "discard_checkpoint",
    "load_checkpoint",
    "load_weights",
    "publish_checkpoint",
    "publish_export",
    "read_meta",
    "write_checkpoint",
]
