"""`export_run`: any checkpoint of a run (`checkpoints/step-N`) as a model other tools load, the job behind
`llm-backbones export`. A run's DCP checkpoints hold only what trains (and the optimizer); only `--resume`
reads them. This rebuilds the run's model from the settings the checkpoint was written with, loads its
trainable weights (one process, whatever world size wrote it) and ends as the run's own export does, by the
same code:

- a `finetune-vla` run (its settings name a `policy`): an HF OpenVLA checkpoint `load_vla` loads
  (`training.vla.export_checkpoint`);
- a `finetune` run: a `save_backbone` checkpoint, as the run writes at the top of its folder, that
  `load_backbone` and `get_llm_backbone_and_tokenizer(id, model_path=...)` load
  (`training.finetune.export_checkpoint`).

With `mode: lora` the adapters alone, in peft's format, go into `adapter/` inside the output folder (before
merging, as the run writes `adapter/` beside its export). The output folder appears complete or not at all.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from llm_backbones import _fs
from llm_backbones.errors import OutputPathError

logger = logging.getLogger(__name__)


def export_run(
    run_dir: str | os.PathLike[str],
    *,
    step: int | None = None,
    output: str | os.PathLike[str],
    overwrite: bool = False,
) -> Path:
    """Export the checkpoint of `step` (default: the run's `latest`) of the run in `run_dir` (the `--output`
    of `finetune` or `finetune-vla`) to the folder `output`; returns its path.

    Raises `CheckpointError` when `run_dir` is not a run folder, holds no checkpoint, has none of `step` (the
    available steps named) or only an incomplete one, or a damaged one (a file whose sha256 is not the one
    recorded when it was written, a meta.json of the wrong shape, weights that are not finite);
    `OutputPathError` when `output` is a file, the run folder itself (or holds it, or lies in its
    checkpoints), or a non-empty folder without `overwrite` (with it, the folder is replaced in one step once
    the export is complete)."""
    from llm_backbones.training.checkpoint import ADAPTER_DIR, RunDir, verify_checkpoint

    if not isinstance(overwrite, bool):
        raise OutputPathError(f"overwrite must be True or False, got {overwrite!r:.40}.")
    run = RunDir(run_dir)
    checkpoint = run.checkpoint_at(step)
    target = _check_output(output, run, overwrite=overwrite)
    meta = verify_checkpoint(checkpoint)  # meta.json's shape, and every file's sha256
    if "policy" in meta["config"]:
        from llm_backbones.training.vla import export_checkpoint
    else:
        from llm_backbones.training.finetune import export_checkpoint
    logger.info("Exporting %s to %s", checkpoint, target)
    staging = _fs.new_temp_dir(target)
    try:
        model, adapter = staging / "model", staging / ADAPTER_DIR
        export_checkpoint(checkpoint, meta, model, adapter)
        if adapter.is_dir():
            os.replace(adapter, model / ADAPTER_DIR)
            _fs.fsync_dir(model)
        _fs.publish_dir(model, target, replace=overwrite)
    except FileExistsError as exc:  # another writer created it meanwhile
        raise OutputPathError(
            f"--output {str(target)!r} appeared while the export was being written; it was left as it is. "
            "Pass --overwrite to replace it, or choose another folder."
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _check_output(output: object, run, *, overwrite: bool) -> Path:
    """The export's folder; refuses a file, the run folder (or a folder holding it, or its checkpoints), and
    a non-empty folder without `overwrite`. Creates its parent."""
    if not isinstance(output, (str, os.PathLike)):
        raise OutputPathError(f"output must be a str or a path, got {type(output).__name__}: {output!r:.80}.")
    target = Path(output).expanduser().absolute()
    if target.exists() and not target.is_dir():
        raise OutputPathError(
            f"--output {str(target)!r} is a file; an export is a folder. Choose another path."
        )
    resolved, run_path = target.resolve(), run.path.resolve()
    if run_path.is_relative_to(resolved) or resolved.is_relative_to(run.checkpoints.resolve()):
        raise OutputPathError(
            f"--output {str(target)!r} is the run folder {str(run.path)!r}, holds it or lies in its "
            f"checkpoints: the export would replace them. Choose another folder, e.g. "
            f"{str(run.path.parent / (run.path.name + '-export'))!r}."
        )
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise OutputPathError(
            f"--output {str(target)!r} already exists and is not empty. Pass --overwrite to replace it (in "
            "one step, once the export is complete), or choose a new folder."
        )
    _fs.make_parent(target, f"--output {str(target)!r}")
    return target


__all__ = ["export_run"]
