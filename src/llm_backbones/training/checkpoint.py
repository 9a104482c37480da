"""Periodic training checkpoints with `torch.distributed.checkpoint` (DCP), and the run folder they live in.

A run's `--output` folder:

    OUTPUT/
      export/                  the final export: `finetune` a save_backbone checkpoint (HF format, which
                               `load_backbone(OUTPUT)` and `model_path=OUTPUT` find here), `finetune-vla`
                               an HF OpenVLA checkpoint; written beside it and swapped in, in one step
      adapter/                 `--mode lora`: the LoRA adapters alone, in peft's format (before merging)
      run_config.json          the settings of the run (`--config OUTPUT/run_config.json` repeats it)
      metrics.jsonl            one JSON record per logged step and per evaluation
      tensorboard/             the same metrics, when tensorboard is installed
      checkpoints/
        step-00000500/         DCP: .metadata + one or more *.distcp per rank, and meta.json (the settings,
                               the data's sha256 and the sha256 of every other file of the checkpoint)
        step-00001000/
        latest                 "step-00001000": the newest complete checkpoint, written last

These are the run's own files: `--overwrite` deletes them and nothing else (a `NOTES.md` or `train.yaml`
beside them stays). Runs of earlier versions had the `finetune` export at the top of the folder; its files
(those its `fingerprint.json` names) count as the run's too, and are removed once a new export is published.

A checkpoint holds the trainable weights, the optimizer and LR-scheduler states, the data position (the
step; the data order is a function of seed and global batch) and every rank's RNG states. Under FSDP
each rank writes its own shards (`get_state_dict`); a single process writes the same format, and DCP
reshards on load, so a checkpoint resumes on any world size. Each is written into `step-N.partial` by
every rank, renamed to `step-N` once all have finished, and only then named in `latest` (a temporary
file replaced in one step), so a run killed at any moment leaves `latest` naming a complete checkpoint.
The last `keep` checkpoints are kept. `RunDir.checkpoint_at` finds one by step (`llm-backbones export`).

Nothing is resumed unchecked (`verify_checkpoint`): meta.json must have its shape, every file must have the
sha256 recorded when the checkpoint was published (a flipped byte, a truncated shard), the loaded weights must
be finite, and the data must be the data the run trained on (`data_sha256`). `--resume` continues from the
checkpoint `latest` names, or, without `latest`, from the newest complete one (with a warning).

`run_finetune` publishes the checkpoint of step N once step N+1's loss has come out finite (the weights
after an update are known good only then), or right away after the last step: a loss that turns NaN
never gets the weights that caused it named in `latest`, nor lets `keep` delete the last good one.
"""

from __future__ import annotations

import hashlib
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
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from llm_backbones import _fs
from llm_backbones.core.backbones.files import RUN_EXPORT_DIR, sha256_files
from llm_backbones.errors import CheckpointError, FinetuneError, OutputPathError
from llm_backbones.training.distributed import DistributedContext, all_finite, barrier
from llm_backbones.training.settings import RUN_CONFIG

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest"
META_FILE = "meta.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
EXPORT_FINGERPRINT = "fingerprint.json"  # written by save_backbone: an export is there
EXPORT_DIR = RUN_EXPORT_DIR  # the final export (both recipes)
STAGED_EXPORT = ".export"  # where earlier versions staged the export; removed with the run's files
ADAPTER_DIR = "adapter"  # the LoRA adapters alone (peft's save_pretrained), written before merging
# The run's own entries at the top of its folder: all `--overwrite` may delete (with a legacy export's files).
OWN_DIRS = (CHECKPOINTS_DIR, TENSORBOARD_DIR, EXPORT_DIR, ADAPTER_DIR, STAGED_EXPORT)
OWN_FILES = (RUN_CONFIG, METRICS_FILE)
# What a legacy top-level export held, when its fingerprint.json cannot be read to name its files.
LEGACY_EXPORT_FILES = (
    "config.json",
    "generation_config.json",
    "model*.safetensors",
    "model.safetensors.index.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    EXPORT_FINGERPRINT,
)
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")  # hashed by name and size only (data_sha256)
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
        self.export = self.path / EXPORT_DIR
        self.adapter = self.path / ADAPTER_DIR

    def holds_run(self) -> bool:
        """Whether the folder holds a run (or a `save_backbone` export) of llm-backbones."""
        return any(
            p.exists()
            for p in (self.checkpoints, self.run_config, self.metrics, self.path / EXPORT_FINGERPRINT)
        )

    def own_files(self) -> list[Path]:
        """The entries at the top of the folder that the run wrote (see the module docstring): its folders
        and files, what interrupted atomic writes of them left (`.NAME.tmp-*`, `.NAME.old-*`), and the files
        of a legacy top-level export. Everything else in the folder is the user's."""
        if not self.path.is_dir():
            return []
        names = set(OWN_DIRS) | set(OWN_FILES)
        found = {p for p in self.path.iterdir() if p.name in names}
        for name in names:
            found.update(self.path.glob(f".{name}.*"))
        found.update(self.legacy_export_files())
        return sorted(found)

    def legacy_export_files(self) -> list[Path]:
        """The files of an export earlier versions wrote at the top of the folder: those its
        `fingerprint.json` names (every file `save_backbone` wrote), or, when it cannot be read, the names
        such an export has."""
        fingerprint = self.path / EXPORT_FINGERPRINT
        if not fingerprint.is_file():
            return []
        try:
            listed = json.loads(fingerprint.read_text(encoding="utf-8")).get("files")
        except (OSError, ValueError, AttributeError):
            listed = None
        if isinstance(listed, list) and all(isinstance(n, str) and "/" not in n for n in listed):
            candidates = [self.path / n for n in listed]
        else:
            candidates = [p for pattern in LEGACY_EXPORT_FILES for p in self.path.glob(pattern)]
        return sorted({p for p in [*candidates, fingerprint] if p.is_file() and not p.is_symlink()})

    def describe(self) -> str:
        parts = []
        latest = self.latest_step()
        if latest is not None:
            parts.append(f"checkpoints up to step {latest}")
        if (self.export / EXPORT_FINGERPRINT).is_file() or (self.export / "config.json").is_file():
            parts.append(f"an exported model in {EXPORT_DIR}/")
        elif (self.path / EXPORT_FINGERPRINT).is_file():
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
        if resume:  # a broken `latest`, or step folders of which none is complete, fail before any work
            self.resume_checkpoint(warn=False)
        if not resume and not overwrite:
            raise OutputPathError(
                f"--output {str(self.path)!r} already holds a run ({self.describe()}). Pass --resume to "
                "continue it from its latest checkpoint, --overwrite to replace it, or choose a new folder."
            )

    def clear(self) -> None:
        """Delete what a previous run wrote here (`--overwrite`): `own_files` only; other files stay."""
        for child in self.own_files():
            logger.info("--overwrite: deleting %s", child)
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def remove_legacy_export(self) -> None:
        """After a new export is published in `export/`: delete the export an earlier version of this run
        wrote at the top of the folder (else `model_path=OUTPUT` would find two)."""
        for path in self.legacy_export_files():
            logger.warning("Removing %s: the run's earlier export, now replaced by %s", path, self.export)
            path.unlink()

    def latest_step(self) -> int | None:
        path = self.latest_checkpoint()
        return None if path is None else int(_STEP_DIR.match(path.name).group(1))

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint `latest` names, or None when there is none. A `latest` that is not a readable file
        naming a complete step-N folder raises `CheckpointError` (it is written only after its checkpoint is
        complete)."""
        marker = self.checkpoints / LATEST
        if not marker.exists() and not marker.is_symlink():
            return None
        fix = (
            f"Write the name of a complete step-N folder into it (e.g. `echo {step_name(0)} > {marker}` with "
            f"the step you want), delete it to resume from the newest complete checkpoint, or start over "
            "with --overwrite."
        )
        if not marker.is_file():
            raise CheckpointError(f"{marker} is not a file (a folder, or a broken link). {fix}")
        try:
            name = marker.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{marker} cannot be read as text ({exc}). {fix}") from None
        path = self.checkpoints / name
        if not _STEP_DIR.match(name) or not is_complete(path):
            raise CheckpointError(
                f"{marker} names {name[:80]!r}, which is not a complete checkpoint (a step-N folder with "
                f".metadata and {META_FILE}). The folder was changed by hand. {fix}"
            )
        return path

    def resume_checkpoint(self, *, warn: bool = True) -> Path | None:
        """The checkpoint `--resume` continues from: the one `latest` names; without `latest`, the newest
        complete one (a warning says so; never step 0 over existing checkpoints); None when there are no
        checkpoints. `CheckpointError` when there are step folders but none is complete."""
        latest = self.latest_checkpoint()
        if latest is not None:
            return latest
        steps = self.step_dirs()
        if not steps:
            return None
        complete = [path for _, path in steps if is_complete(path)]
        if not complete:
            raise CheckpointError(
                f"{self.checkpoints} has no {LATEST} marker and none of its checkpoints "
                f"({', '.join(p.name for _, p in steps)}) is complete (.metadata and {META_FILE}); there is "
                "nothing to resume from, and starting at step 0 would write over them. Start over with "
                "--overwrite, or choose a new --output."
            )
        newest = complete[-1]
        newest_step = int(_STEP_DIR.match(newest.name).group(1))
        skipped = [path.name for step, path in steps if step > newest_step]
        (logger.warning if warn else logger.debug)(
            "%s has no %s marker: resuming from the newest complete checkpoint, %s%s",
            self.checkpoints,
            LATEST,
            newest.name,
            f" (incomplete, to be written again: {', '.join(skipped)})" if skipped else "",
        )
        return newest

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
        if not is_complete(path):
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
        for target in (self.export, self.adapter, self.path / STAGED_EXPORT):
            for path in _fs.siblings(target, "tmp"):  # interrupted atomic writes of the export, the adapter
                logger.warning("Removing %s: an export whose writing was interrupted", path)
                shutil.rmtree(path, ignore_errors=True)

    def write_run_config(self, settings: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _fs.write_text_atomic(self.run_config, json.dumps(settings, indent=2) + "\n")


def is_complete(checkpoint: Path) -> bool:
    """Whether a step folder holds what a published checkpoint has (`.metadata` and meta.json)."""
    return (checkpoint / ".metadata").is_file() and (checkpoint / META_FILE).is_file()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_meta(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's meta.json, checked for its shape (`CheckpointError` naming the file and the field)."""
    file = checkpoint / META_FILE
    fix = "Restore the file, resume from another checkpoint, or start over with --overwrite."
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{file} cannot be read ({exc}). {fix}") from None
    problem = None
    if not isinstance(meta, dict):
        problem = f"holds a {type(meta).__name__}, not an object"
    elif not _is_int(meta.get("step")) or meta["step"] < 0:
        problem = f"has step {meta.get('step')!r:.40}, not a step number >= 0"
    elif not isinstance(meta.get("config"), dict):
        problem = f"has config {meta.get('config')!r:.40}, not an object of settings"
    elif "n_examples" in meta and not _is_int(meta["n_examples"]):
        problem = f"has n_examples {meta['n_examples']!r:.40}, not a number"
    elif "data_sha256" in meta and not isinstance(meta["data_sha256"], str):
        problem = f"has data_sha256 {meta['data_sha256']!r:.40}, not a string"
    elif "files" in meta and not (
        isinstance(meta["files"], dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in meta["files"].items())
    ):
        problem = f"has files {meta['files']!r:.60}, not an object of file names to sha256"
    if problem is not None:
        raise CheckpointError(f"{file} {problem} (it was changed by hand, or damaged). {fix}")
    return meta


def checkpoint_files(checkpoint: Path) -> list[Path]:
    """The files of a checkpoint that meta.json's `files` records (every file but meta.json)."""
    return sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name != META_FILE)


def verify_checkpoint(checkpoint: Path) -> dict[str, Any]:
    """Check a checkpoint before it is loaded and return its meta.json: the shape of meta.json
    (`read_meta`), and the sha256 of each of its files against the one recorded when it was published.
    `CheckpointError` naming the file for one that is missing, added, truncated or changed (one flipped byte
    is enough). A checkpoint of an earlier version, without recorded sha256, loads with a warning."""
    meta = read_meta(checkpoint)
    recorded = meta.get("files")
    fix = (
        "Resume from another checkpoint (write its step-N name into checkpoints/latest; `llm-backbones "
        "export --step N` to export one), or start over with --overwrite."
    )
    if recorded is None:
        logger.warning(
            "%s records no sha256 of its files (written by an earlier version): it is loaded unverified",
            checkpoint / META_FILE,
        )
        return meta
    present = {str(p.relative_to(checkpoint)): p for p in checkpoint_files(checkpoint)}
    missing = sorted(set(recorded) - set(present))
    added = sorted(set(present) - set(recorded))
    if missing or added:
        what = f"misses {missing[:3]}" if missing else f"holds files not written by the run: {added[:3]}"
        raise CheckpointError(
            f"The checkpoint {checkpoint} {what} ({META_FILE} records {len(recorded)} files). {fix}"
        )
    actual = sha256_files(present.values())
    for name, path in sorted(present.items()):
        if actual[path] != recorded[name]:
            raise CheckpointError(
                f"{path} is damaged: its sha256 is {actual[path][:16]}..., but {recorded[name][:16]}... was "
                f"recorded when the checkpoint was written (a truncated, edited or corrupted file). {fix}"
            )
    return meta


def conversations_sha256(conversations: Any) -> str:
    """The sha256 of a `finetune` run's training data: its conversations as loaded, as canonical JSON (keys
    sorted), so the same records in another file layout hash the same, and any changed text does not."""
    text = json.dumps(conversations, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def dataset_sha256(root: str | Path) -> str:
    """The sha256 of a `finetune-vla` run's robot dataset: every file under its folder (`dataset.root`) by
    path and content (a JSONL dataset: the .jsonl and its images; LeRobot: meta/ and the data parquet files,
    which hold any images stored inline), except videos (`VIDEO_SUFFIXES`), which count by path and size
    only: hashing every video of a large dataset at each start would take minutes."""
    root = Path(root)
    if not root.exists():
        logger.warning("The dataset's folder %s does not exist: its data cannot be hashed", root)
        return hashlib.sha256(b"").hexdigest()
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    hashed = sha256_files([p for p in files if p.suffix.lower() not in VIDEO_SUFFIXES])
    digest = hashlib.sha256()
    for path in files:
        name = str(path.relative_to(root)) if root.is_dir() else path.name
        value = hashed.get(path) or f"size {path.stat().st_size}"
        digest.update(f"{name}\0{value}\n".encode())
    return digest.hexdigest()


def check_resume_data(meta: dict[str, Any], data_sha256: str, source: str) -> None:
    """Refuse (`FinetuneError`) to resume a checkpoint on data whose sha256 differs from the run's; a
    checkpoint of an earlier version, without one, resumes with a warning."""
    saved = meta.get("data_sha256")
    if saved is None:
        logger.warning(
            "The checkpoint at step %s records no hash of its data (an earlier version): %s is assumed to be "
            "the run's data, unchanged",
            meta.get("step"),
            source,
        )
    elif saved != data_sha256:
        raise FinetuneError(
            f"The training data {source} is not the data the checkpoint at step {meta.get('step')} was "
            f"trained on: its sha256 is {data_sha256[:16]}..., the run's was {saved[:16]}... (a changed, "
            "added or removed record or file). Resuming would mix two data sets. Restore the run's data, or "
            "start a new run on this data (another --output, or --overwrite)."
        )


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
    _fs.fsync_tree(partial)  # DCP syncs its data files; .metadata too, to be sure, before they are hashed
    files = {str(p.relative_to(partial)): d for p, d in sha256_files(checkpoint_files(partial)).items()}
    meta = {
        "format": FORMAT,
        "torch": torch.__version__,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **meta,
        "files": dict(sorted(files.items())),  # checked by verify_checkpoint before any load
    }
    _fs.write_text_atomic(partial / META_FILE, json.dumps(meta, indent=2) + "\n")
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
    # DCP raises CheckpointException (a BaseException: `except Exception` misses it) with per-rank details,
    # RuntimeError or an unpickling error for a damaged .metadata
    except (Exception, CheckpointException) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        # a CheckpointException's text is each rank's traceback: its last line is the error itself
        cause = (lines[-1] if isinstance(exc, CheckpointException) else lines[0])[:300]
        raise CheckpointError(
            f"Cannot load the checkpoint {checkpoint} ({cause}): a damaged .metadata "
            f"or *.distcp file, or one written by another backbone or fine-tune mode. Resume another "
            f"checkpoint or with the run's own settings ({RUN_CONFIG}), or start over with --overwrite."
        ) from exc


def _check_finite(checkpoint: Path, model: nn.Module, ctx: DistributedContext | None) -> None:
    """The trainable weights loaded from `checkpoint` are finite (every rank calls it)."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if all_finite([p for _, p in trainable], ctx):
        return
    bad = [
        n
        for n, p in trainable
        if not torch.isfinite(p.to_local() if hasattr(p, "to_local") else p.detach()).all()
    ]
    raise CheckpointError(
        f"The checkpoint {checkpoint} holds NaN or infinite weights{f' ({bad[0]})' if bad else ''}: it "
        "was damaged after it was written (checkpoints are written only with finite weights). Resume from "
        "another checkpoint, or start over with --overwrite."
    )


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
    whatever world size wrote it; restore this rank's RNG state. Returns the `train` state (`step`, ...).
    Check its files first with `verify_checkpoint` (once, on rank 0: `run_finetune` does); a damaged file
    DCP cannot read, or weights that are not finite, raise `CheckpointError` here."""
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
    _check_finite(checkpoint, model, ctx)
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
    mode as the run's was (its frozen weights are the base model's); for `export_run`, which verifies the
    checkpoint's files first (`verify_checkpoint`). Weights that are not finite raise `CheckpointError`."""
    state = {"model": get_model_state_dict(model, options=_STATE_OPTIONS)}
    _dcp_load(checkpoint, state, None)
    result = set_model_state_dict(
        model, state["model"], options=StateDictOptions(ignore_frozen_params=True, strict=False)
    )
    _check_fit(checkpoint, model, result)
    _check_finite(checkpoint, model, None)


__all__ = [
    "PendingCheckpoint",
    "RunDir",
    "check_resume_data",
    "check_resume_settings",
    "conversations_sha256",
    "dataset_sha256",
    "discard_checkpoint",
    "load_checkpoint",
    "load_weights",
    "publish_checkpoint",
    "read_meta",
    "verify_checkpoint",
    "write_checkpoint",
]
