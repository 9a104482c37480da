"""The training loop people expect, in small pieces: settings (flags or a config file), the LR schedule,
the data order, one optimizer step (gradient accumulation, clipping, non-finite checks), evaluation, and
metrics (a JSONL file, TensorBoard when it is installed).

`llm_backbones.training.finetune.run_finetune` puts them together with the checkpoints of
`training.checkpoint`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llm_backbones.data.examples import IGNORE_INDEX
from llm_backbones.errors import FinetuneError, NonFiniteLossError, closest

logger = logging.getLogger(__name__)

FINETUNE_MODES = ("frozen", "full", "last-layer", "lora")
LR_SCHEDULES = ("cosine", "constant")


# === Settings ===
@dataclass
class FinetuneConfig:
    """Every setting of a fine-tuning run, with its default. The CLI flags, a `--config` file (YAML or
    JSON, keys spelled as the flags: `batch-size` or `batch_size`) and `run_finetune(**options)` all fill
    this one table; `saved()` is what a run writes into its output to be repeated exactly."""

    backbone: str | None = None
    data: str | None = None
    model_path: str | None = None
    mode: str = "full"
    prompt_format: str | None = (
        None  # None: the backbone id's (e.g. "llama2-chat-prismatic" for Prismatic's strings)
    )
    steps: int = 10
    batch_size: int = 8  # the global batch of one optimizer step, whatever the world size and accumulation
    grad_accum: int = 1
    lr: float = 1e-4
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0  # 0: no clipping (the norm is still reported)
    max_length: int | None = None  # None: the backbone's llm_max_length
    seed: int = 0
    precision: str | None = None  # None: bf16 on CUDA, fp32 on CPU
    fsdp: int = 2
    device: str | None = None
    fast: bool = False
    gradient_checkpointing: bool = False
    eval_data: str | None = None
    eval_every: int = 0  # 0: evaluate once, after the last step
    log_every: int = 1
    save_every: int = 500  # 0: no periodic checkpoints
    keep: int = 2
    # Run control: where and how this invocation writes; not part of the saved settings.
    output: str | None = None
    resume: bool = False
    overwrite: bool = False
    metrics_json: str | None = None

    RUN_CONTROL: typing.ClassVar[tuple[str, ...]] = ("output", "resume", "overwrite", "metrics_json")
    PATHS: typing.ClassVar[tuple[str, ...]] = ("data", "model_path", "eval_data", "output", "metrics_json")

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], source: str, base: FinetuneConfig | None = None
    ) -> FinetuneConfig:
        """`base` (default: the defaults) with `values` applied; keys may use `-` or `_`. Unknown keys and
        values of the wrong type raise `FinetuneError` naming `source` (a file, or "options")."""
        hints = typing.get_type_hints(cls)
        updates: dict[str, Any] = {}
        spelled: dict[str, Any] = {}
        for raw_key, value in values.items():
            key = str(raw_key).replace("-", "_")
            if key in spelled:
                raise FinetuneError(
                    f"{source}: {spelled[key]!r} and {raw_key!r} are the same setting, given twice "
                    f"({updates.get(key, spelled[key])!r} and {value!r}); keep one of them."
                )
            spelled[key] = raw_key
            if key not in hints or key in ("RUN_CONTROL", "PATHS"):
                close = closest(key, cls.fields())
                hint = f" Did you mean {', '.join(close)}?" if close else ""
                raise FinetuneError(
                    f"{source}: unknown setting {raw_key!r}.{hint} Accepted: {', '.join(cls.fields())} "
                    "(dashes or underscores)."
                )
            updates[key] = _coerce(key, value, hints[key], source)
        return dataclasses.replace(base or cls(), **updates)

    @classmethod
    def resolve(
        cls, config_file: str | Path | None = None, given: Mapping[str, Any] | None = None
    ) -> FinetuneConfig:
        """The settings of one invocation, each layer over the one before: the defaults; with `resume`, the
        run's own `run_config.json` in `output` (so `--output DIR --resume` alone continues a run); the
        `config_file`; then `given` (the flags on the command line)."""
        from llm_backbones.training.checkpoint import RUN_CONFIG

        given = dict(given or {})
        file_values = read_config_file(config_file) if config_file is not None else {}
        control = {**{str(k).replace("-", "_"): v for k, v in file_values.items()}, **given}
        config = cls()
        if control.get("resume") and control.get("output") is not None:
            saved = Path(control["output"]).expanduser() / RUN_CONFIG
            if saved.is_file():
                try:
                    values = json.loads(saved.read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    raise FinetuneError(
                        f"{saved} cannot be read as JSON ({exc}); restore it, or give every setting on the "
                        "command line."
                    ) from None
                if not isinstance(values, Mapping):
                    raise FinetuneError(
                        f"{saved} must hold an object of settings (as the run wrote it), got "
                        f"{type(values).__name__}; restore it, or give every setting on the command line."
                    )
                config = cls.from_mapping(values, str(saved), config)
        if file_values:
            config = cls.from_mapping(file_values, f"--config {config_file}", config)
        return cls.from_mapping(given, "command line", config)

    def saved(self) -> dict[str, Any]:
        """The settings that define the run (run control left out), paths absolute."""
        out = {}
        for name in self.fields():
            if name in self.RUN_CONTROL:
                continue
            value = getattr(self, name)
            if name in self.PATHS and value is not None:
                value = str(Path(value).expanduser().absolute())
            out[name] = value
        return out

    def validate(self, world_size: int = 1) -> None:
        """Raise `FinetuneError` for a setting that cannot run; nothing is read or built."""
        if self.resume and self.overwrite:
            raise FinetuneError(
                "--resume and --overwrite exclude each other: continue the run in --output, or replace it."
            )
        if self.resume and self.output is None:
            raise FinetuneError(
                "--resume needs --output: the folder whose latest checkpoint to continue from."
            )
        if self.mode not in FINETUNE_MODES or self.mode == "frozen":
            raise FinetuneError(
                f"Unknown fine-tune mode {self.mode!r} for training; accepted: full, last-layer, lora "
                "('frozen' trains nothing)."
            )
        if self.mode == "lora":  # before any model is built: without peft, say which extra to install
            from llm_backbones.training.lora import require_peft

            require_peft()
        if self.precision not in (None, "fp32", "bf16"):
            raise FinetuneError(
                f"precision must be fp32 or bf16, got {self.precision!r}; bf16 needs a GPU to be fast."
            )
        if self.device not in (None, "cpu", "cuda"):
            raise FinetuneError(f"device must be 'cpu' or 'cuda', got {self.device!r}.")
        if self.fsdp not in (1, 2):
            raise FinetuneError(f"fsdp must be 1 or 2, got {self.fsdp!r}; 2 (fully_shard) is the default.")
        for name, low, meaning in (
            ("steps", 1, "the number of optimizer steps"),
            ("batch_size", 1, "the global batch of one optimizer step"),
            ("grad_accum", 1, "micro-batches accumulated per optimizer step"),
            ("warmup_steps", 0, "steps of linear warm-up"),
            ("eval_every", 0, "steps between evaluations, 0 for once at the end"),
            ("log_every", 1, "steps between metrics records"),
            ("save_every", 0, "steps between checkpoints, 0 for none"),
            ("keep", 1, "checkpoints kept"),
        ):
            value = getattr(self, name)
            if value < low:
                raise FinetuneError(f"--{_flag(name)} must be >= {low} ({meaning}), got {value!r}.")
        if self.max_length is not None and self.max_length < 1:
            raise FinetuneError(
                f"--max-length must be a positive number of tokens, got {self.max_length!r}; omit it for the "
                "backbone's llm_max_length."
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise FinetuneError(
                f"--lr must be a finite number > 0, got {self.lr!r}; e.g. 2e-5 for full fine-tuning."
            )
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0):
            raise FinetuneError(
                f"--max-grad-norm must be a finite number >= 0, got {self.max_grad_norm!r}; 0 turns clipping "
                "off."
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise FinetuneError(
                f"--lr-schedule {self.lr_schedule!r} is unknown; accepted: {', '.join(LR_SCHEDULES)}."
            )
        if self.warmup_steps > self.steps:
            raise FinetuneError(
                f"--warmup-steps {self.warmup_steps} is more than --steps {self.steps}; use at most "
                f"{self.steps}."
            )
        split = world_size * self.grad_accum
        if self.batch_size % split:
            over = f"{world_size} ranks" + (
                f" x {self.grad_accum} accumulation steps" if self.grad_accum > 1 else ""
            )
            raise FinetuneError(
                f"--batch-size {self.batch_size} (global) does not split evenly over {over}; use a multiple "
                f"of {split}."
            )
        if self.eval_every and self.eval_data is None:
            raise FinetuneError(
                f"--eval-every {self.eval_every} needs --eval-data FILE.json (conversations to evaluate on)."
            )


def _flag(name: str) -> str:
    return name.replace("_", "-")


_INVALID = object()


def _coerce(name: str, value: Any, hint: Any, source: str) -> Any:
    """`value` as the type of setting `name` (YAML reads 1e-4 as a string, so numbers may be strings)."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next(a for a in args if a is not type(None)) if args else hint
    if value is None and optional:
        return None
    if isinstance(value, os.PathLike) and base is str:
        value = os.fspath(value)
    converted = _convert(value, base)
    if converted is _INVALID:
        raise FinetuneError(
            f"{source}: setting {name!r} must be a {base.__name__}{' or null' if optional else ''}, got "
            f"{type(value).__name__} {value!r}."
        )
    return converted


def _convert(value: Any, base: type) -> Any:
    if isinstance(value, bool):
        return value if base is bool else _INVALID
    if base is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, (int, str)):
            with contextlib.suppress(ValueError):
                return int(value)
    elif base is float and isinstance(value, (int, float, str)):
        with contextlib.suppress(ValueError):
            return float(value)
    elif base is str and isinstance(value, str):
        return value
    return _INVALID


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings of a `--config` file: `.json`, or `.yaml`/`.yml` (needs PyYAML, which transformers
    installs). A mapping of setting names to values."""
    path = Path(path)
    if not path.is_file():
        raise FinetuneError(
            f"--config {str(path)!r} does not exist (or is not a file); pass a .yaml or .json file."
        )
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FinetuneError(f"--config {str(path)!r} is not valid JSON ({exc}).") from None
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise FinetuneError(
                f"--config {str(path)!r} is YAML, but PyYAML is not installed; `pip install pyyaml`, or "
                "write the same settings as JSON."
            ) from None
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise FinetuneError(f"--config {str(path)!r} is not valid YAML ({exc}).") from None
    else:
        raise FinetuneError(
            f"--config {str(path)!r}: unknown file type {suffix or '(none)'!r}; accepted: .yaml, .yml, .json."
        )
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise FinetuneError(
            f"--config {str(path)!r} must hold a mapping of settings (e.g. `steps: 100`), got "
            f"{type(values).__name__}."
        )
    return dict(values)


def check_batch_size(batch_size: int, n_examples: int, source: str) -> None:
    """Refuse (`FinetuneError`) a global batch larger than the data, before anything is built: each batch
    would hold some examples twice, and a huge one would be built index by index until memory runs out."""
    if batch_size > n_examples:
        raise FinetuneError(
            f"--batch-size {batch_size} is larger than the data: {source} holds {n_examples} examples. Use "
            f"--batch-size {n_examples} or less (with --grad-accum to split it), or add data."
        )


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
