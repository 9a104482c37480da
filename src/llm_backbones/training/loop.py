"""The training loop people expect, in small pieces: the LR schedule, the data order, one optimizer step
(gradient accumulation, clipping, non-finite checks), evaluation, metrics (a JSONL file, TensorBoard when it
is installed), and `run_steps`, the loop of both recipes (`training.finetune.run_finetune`,
`training.vla.run_finetune_vla`) with the checkpoints of `training.checkpoint`. The settings are
`training.settings`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llm_backbones.data.examples import IGNORE_INDEX
from llm_backbones.errors import FinetuneError, NonFiniteLossError
from llm_backbones.training.settings import FinetuneConfig

logger = logging.getLogger(__name__)


# === LR schedule ===
def lr_factor(step: int, *, schedule: str, warmup_steps: int, total_steps: int) -> float:
    """The multiple of the peak LR used by optimizer step `step` (0-based): linear warm-up over
    `warmup_steps` steps (step 0 already at 1/warmup_steps), then constant, or a cosine from the peak down
    toward 0 at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_scheduler(
    optimizer: torch.optim.Optimizer, config: FinetuneConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` over `lr_factor` (its state, the step counter, goes into every checkpoint)."""

    def factor(step: int) -> float:
        return lr_factor(
            step, schedule=config.lr_schedule, warmup_steps=config.warmup_steps, total_steps=config.steps
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# === Data order ===
class DataOrder:
    """The example indices of every step's global batch: seeded permutations, epoch after epoch, from one
    generator. A function of (n_examples, batch_size, seed) only, so every world size, accumulation and
    resume point sees the same global batches. Holds one epoch's permutation at a time."""

    def __init__(self, n_examples: int, batch_size: int, seed: int) -> None:
        if n_examples < 1:
            raise FinetuneError(
                "No training examples: the data holds no conversation; pass a non-empty --data file."
            )
        self.n, self.batch_size, self.seed = n_examples, batch_size, seed
        self._restart()

    def _restart(self) -> None:
        self._generator = torch.Generator().manual_seed(self.seed)
        self._epoch, self._perm = -1, []

    def _permutation(self, epoch: int) -> list[int]:
        if epoch < self._epoch:
            self._restart()
        while self._epoch < epoch:
            self._perm = torch.randperm(self.n, generator=self._generator).tolist()
            self._epoch += 1
        return self._perm

    def batch(self, step: int) -> list[int]:
        """The global batch of optimizer step `step` (0-based)."""
        start = step * self.batch_size
        out = []
        for position in range(start, start + self.batch_size):
            out.append(self._permutation(position // self.n)[position % self.n])
        return out


def global_batch_indices(n_examples: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """The example indices of the first `steps` global batches (see `DataOrder`)."""
    order = DataOrder(n_examples, batch_size, seed)
    return [order.batch(step) for step in range(steps)]


def rank_micro_batches(
    global_batch: Sequence[int], grad_accum: int, world_size: int, rank: int
) -> list[list[int]]:
    """This rank's share of each of the `grad_accum` micro-batches of a global batch."""
    micro = len(global_batch) // grad_accum
    per_rank = micro // world_size
    return [
        list(global_batch[m * micro + rank * per_rank : m * micro + (rank + 1) * per_rank])
        for m in range(grad_accum)
    ]


# === One optimizer step ===
def causal_lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token cross-entropies over supervised tokens, number of supervised tokens)."""
    shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1)
    loss_sum = torch.nn.functional.cross_entropy(
        shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss_sum, (shift_labels != IGNORE_INDEX).sum()


def supervised_tokens(labels: torch.Tensor) -> torch.Tensor:
    """How many next-token targets a batch supervises (labels shifted by one, -100 ignored)."""
    return (labels[:, 1:] != IGNORE_INDEX).sum()


def micro_loss_sum(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    *,
    autocast=None,
    fused_loss: bool = False,
    observe: Callable[[Mapping[str, torch.Tensor], torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """The summed next-token loss of one micro-batch. With `fused_loss` (`enable_fast_training`) the
    backbone computes the loss chunk by chunk without the full logits and returns its mean.

    A batch with `pixel_values` or `vision_features` (a VLA's) passes them on to `model`, which returns the
    logits of the text positions. `observe(batch, logits)` sees each micro-batch's logits (detached; not
    with `fused_loss`), e.g. for the action accuracy of `training.vla`."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    for key in ("pixel_values", "vision_features"):
        if key in batch:
            inputs[key] = batch[key]
    with autocast if autocast is not None else contextlib.nullcontext():
        if fused_loss:
            out = model(**inputs, labels=batch["labels"])
            return out.loss.float() * supervised_tokens(batch["labels"])
        logits = model(**inputs).logits
    if observe is not None:
        observe(batch, logits.detach())
    return causal_lm_loss_sum(logits, batch["labels"])[0]


@dataclass(frozen=True)
class StepStats:
    loss: float  # mean over the supervised tokens of the global batch
    grad_norm: float  # total norm over all ranks, before clipping
    tokens: int  # non-padding tokens of the global batch
    supervised_tokens: int


def optimizer_step(
    model: nn.Module,
    micro_batches: Sequence[Mapping[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    step: int,
    ctx=None,
    autocast=None,
    fused_loss: bool = False,
    max_grad_norm: float = 0.0,
    observe: Callable[[Mapping[str, torch.Tensor], torch.Tensor], None] | None = None,
) -> StepStats:
    """One optimizer step over this rank's micro-batches of a global batch (`step` is 1-based, for messages).

    The loss is the mean over the supervised tokens of the *global* batch: every micro-batch's token sum
    is divided by the global token count (known before the forward pass) and scaled by the world size,
    since FSDP averages gradients over ranks. So any world size and any accumulation optimise exactly what
    one process does on the whole batch. A non-finite loss or gradient norm raises `NonFiniteLossError`
    before the weights change.
    """
    from llm_backbones.training.distributed import all_reduce_sum, clip_grad_norm

    world_size = ctx.world_size if ctx is not None else 1
    counts = torch.zeros(2, dtype=torch.long)
    for batch in micro_batches:
        counts[0] += supervised_tokens(batch["labels"]).cpu()
        counts[1] += batch["attention_mask"].sum().cpu()
    device = micro_batches[0]["input_ids"].device
    counts = all_reduce_sum(counts.to(device), ctx).cpu()
    global_count = counts[0].clamp(min=1).to(device)
    total = None
    for batch in micro_batches:
        loss_sum = micro_loss_sum(model, batch, autocast=autocast, fused_loss=fused_loss, observe=observe)
        (loss_sum * world_size / global_count).backward()
        total = loss_sum.detach() if total is None else total + loss_sum.detach()
    loss = (all_reduce_sum(total.clone(), ctx) / global_count).item()
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"Step {step}: the loss is {loss} (not finite); the run stopped before updating the weights, and "
            "nothing was written over the last checkpoint. Lower --lr, keep --max-grad-norm on, use fp32 "
            "(--precision fp32), or check the data; then --resume from the last checkpoint.",
            step=step,
            what="loss",
            value=loss,
        )
    grad_norm = float(clip_grad_norm(model, max_grad_norm))
    if not math.isfinite(grad_norm):
        raise NonFiniteLossError(
            f"Step {step}: the gradient norm is {grad_norm} (not finite; loss {loss:.4f}); the run stopped "
            "before updating the weights, and nothing was written over the last checkpoint. Lower --lr, use "
            "fp32 (--precision fp32), or check the data; then --resume from the last checkpoint.",
            step=step,
            what="gradient norm",
            value=grad_norm,
        )
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepStats(loss=loss, grad_norm=grad_norm, tokens=int(counts[1]), supervised_tokens=int(counts[0]))


# === Evaluation ===
@torch.no_grad()
def evaluate(
    model: nn.Module,
    examples: Sequence[Mapping[str, torch.Tensor]],
    collate: Callable[[list], dict[str, torch.Tensor]],
    *,
    micro_batch_size: int,
    device: torch.device,
    ctx=None,
    autocast=None,
    fused_loss: bool = False,
    observe: Callable[[Mapping[str, torch.Tensor], torch.Tensor], None] | None = None,
) -> float:
    """The mean next-token loss over every supervised token of `examples`, split across ranks. Every rank
    runs the same number of forward passes (FSDP gathers weights collectively); a rank left without
    examples in the last round runs one with no supervised token."""
    from llm_backbones.training.distributed import all_reduce_sum

    world_size, rank = (ctx.world_size, ctx.rank) if ctx is not None else (1, 0)
    per_round = micro_batch_size * world_size
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for start in range(0, len(examples), per_round):
        mine = list(
            examples[
                start + rank * micro_batch_size : min(start + (rank + 1) * micro_batch_size, len(examples))
            ]
        )
        if mine:
            batch = collate(mine)
        else:  # keep the collectives in step: one example (its other fields too), nothing supervised
            batch = collate(examples[:1])
            batch["labels"] = torch.full_like(batch["labels"], IGNORE_INDEX)
        batch = {k: v.to(device) for k, v in batch.items()}
        loss_sum = micro_loss_sum(model, batch, autocast=autocast, fused_loss=fused_loss, observe=observe)
        total[0] += loss_sum.double()
        total[1] += supervised_tokens(batch["labels"])
    total = all_reduce_sum(total, ctx)
    model.train(was_training)
    return (total[0] / total[1].clamp(min=1)).item()


# === The loop ===
class Recipe(typing.Protocol):
    """What differs between the recipes (`finetune`, `finetune-vla`) inside `run_steps`: how a step's
    micro-batches are made, what `optimizer_step` also gets, what a step adds to the result and the metrics
    record, and the evaluation."""

    step_options: dict[str, Any]  # more keywords of optimizer_step (fused_loss=, observe=)
    has_eval: bool

    def batches(self, step: int) -> list[dict[str, torch.Tensor]]: ...

    def after_step(self, step: int, stats: StepStats, seconds: float) -> None: ...

    def record(self, step: int, stats: StepStats, lr: float) -> dict[str, Any]: ...

    def evaluate(self, step: int) -> dict[str, Any]: ...


def run_steps(
    cfg: FinetuneConfig,
    ctx: Any,
    run: Any,
    recipe: Recipe,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    start_step: int,
    checkpoint_meta: dict[str, Any],
    losses: list[float],
    checkpoints: list[str],
    on_step: Callable[[int, float], None] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Steps `start_step + 1 .. cfg.steps` of either recipe: one `optimizer_step` each (then the schedule),
    the loss appended to `losses`, a metrics record every `log_every` steps and after the last (rank 0:
    `run.metrics`, TensorBoard, `on_record`), the evaluation every `eval_every` steps and after the last, a
    checkpoint every `save_every` steps and after the last: written at once, published (its folder path
    appended to `checkpoints`) only once the next step's loss came out finite, discarded if the run stops
    first. `on_step(step, loss)` runs on rank 0."""
    from llm_backbones.training.checkpoint import discard_checkpoint, publish_checkpoint, write_checkpoint

    main_run = run if (run is not None and ctx.is_main) else None
    log = MetricsLog(
        main_run.metrics if main_run else None,
        start_step=start_step,
        tensorboard_dir=main_run.tensorboard if main_run else None,
    )

    def emit(record: dict[str, Any]) -> None:
        if ctx.is_main:
            log.write(record)
            if on_record is not None:
                on_record(record)

    pending = None  # a checkpoint written, published once the next step's loss is finite
    try:
        model.train()
        for step in range(start_step + 1, cfg.steps + 1):
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            micro = recipe.batches(step)
            # looked up at call time: one place for a test to stop a run inside a step
            # (tests/distributed/_finetune_until_fault.py)
            stats = optimizer_step(
                model,
                micro,
                optimizer,
                step=step,
                ctx=ctx,
                max_grad_norm=cfg.max_grad_norm,
                **recipe.step_options,
            )
            scheduler.step()
            recipe.after_step(step, stats, time.perf_counter() - started)
            if pending is not None:  # the weights it holds gave a finite loss: publish it
                checkpoints.append(str(publish_checkpoint(run, pending, ctx=ctx, keep=cfg.keep)))
                pending = None
            losses.append(stats.loss)
            if on_step is not None and ctx.is_main:
                on_step(step, stats.loss)
            last = step == cfg.steps
            if step % cfg.log_every == 0 or last:
                emit(recipe.record(step, stats, lr))
            if recipe.has_eval and ((cfg.eval_every and step % cfg.eval_every == 0) or last):
                emit(recipe.evaluate(step))
            if run is not None and cfg.save_every and (step % cfg.save_every == 0 or last):
                pending = write_checkpoint(
                    run, step, model, optimizer, scheduler, ctx=ctx, meta=checkpoint_meta
                )
        if pending is not None:  # after the last step: no later loss to wait for
            checkpoints.append(str(publish_checkpoint(run, pending, ctx=ctx, keep=cfg.keep)))
            pending = None
    except BaseException:
        discard_checkpoint(pending, ctx=ctx)
        raise
    finally:
        log.close()


# === Metrics ===
def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory so far: allocated CUDA memory on a GPU, the process's peak RSS on a CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource
    except ImportError:  # Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class MetricsLog:
    """Metrics records to `path` (JSON lines, flushed as written) and, when `tensorboard` is importable, to
    TensorBoard event files in `tensorboard_dir`. Opening it drops the records of steps after
    `start_step` (those of a run killed after its last checkpoint), so a resumed run's file reads as
    one uninterrupted run."""

    def __init__(
        self, path: Path | None, *, start_step: int = 0, tensorboard_dir: Path | None = None
    ) -> None:
        self.path, self._file, self._tb = path, None, None
        if path is not None:
            _truncate_records(path, start_step)
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        if tensorboard_dir is not None and tensorboard_available():
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(tensorboard_dir), purge_step=start_step + 1)
        elif tensorboard_dir is not None:
            logger.info("tensorboard is not installed: metrics go to %s only (pip install tensorboard)", path)

    def write(self, record: Mapping[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(
                        key.replace("_", "/", 1) if key.startswith("eval_") else f"train/{key}",
                        value,
                        record["step"],
                    )
            self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def _truncate_records(path: Path, start_step: int) -> None:
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if isinstance(record, dict) and record.get("step", 0) <= start_step:
            kept.append(line)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics JSONL file (as `MetricsLog` writes it)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
