"""Fine-tuning modes (frozen / full / last-layer / LoRA) and the fine-tuning job.

Modes say which parameters train:
- `frozen`: none (a feature extractor: the VLA trains only its projector).
- `full`: all of them.
- `last-layer`: the seed's `last_layer_finetune_modules` (input embeddings, last decoder layer, LM head).
- `lora`: low-rank adapters (peft) on every linear layer but the head; `merge_lora` folds them back.

`run_finetune` is the job behind `llm-backbones finetune`: one process or torchrun (FSDP2/FSDP1), the
loop of `training` (schedule, accumulation, clipping, evaluation, metrics) and the periodic, exactly
resumable checkpoints of `training.checkpoint`, then an HF-format export (with `lora`, the adapters alone
too, in peft's format, in `adapter/`). `export_checkpoint` exports any checkpoint of a run the same way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from llm_backbones.core.backbones.backbone import count_parameters, last_layer_modules
from llm_backbones.errors import FinetuneError
from llm_backbones.training.loop import (
    DataOrder,
    causal_lm_loss_sum,
    global_batch_indices,
    optimizer_step,
    run_steps,
)
from llm_backbones.training.settings import FINETUNE_MODES, FinetuneConfig, check_batch_size

logger = logging.getLogger(__name__)

__all__ = [
    "FINETUNE_MODES",
    "FinetuneConfig",
    "FinetuneResult",
    "TrainableSummary",
    "apply_finetune_mode",
    "causal_lm_loss_sum",
    "export_checkpoint",
    "global_batch_indices",
    "run_finetune",
    "train_steps",
    "trainable_counts_by_mode",
]


@dataclass(frozen=True)
class TrainableSummary:
    mode: str
    trainable: int
    total: int

    def __str__(self) -> str:
        share = 100.0 * self.trainable / max(self.total, 1)
        return f"{self.mode}: {self.trainable:,} of {self.total:,} parameters trainable ({share:.2f}%)"


def trainable_counts_by_mode(llm: nn.Module) -> dict[str, TrainableSummary]:
    """What each mode would train on `llm` (e.g. built on the meta device); `llm` is consumed (LoRA wraps
    it)."""
    from llm_backbones.training.lora import with_lora

    counts = {}
    for mode in ("frozen", "full", "last-layer"):
        llm.requires_grad_(mode == "full")
        if mode == "last-layer":
            for module in last_layer_modules(llm):
                module.requires_grad_(True)
        counts[mode] = TrainableSummary(mode, *count_parameters(llm))
    counts["lora"] = TrainableSummary("lora", *count_parameters(with_lora(llm)))
    return counts


def apply_finetune_mode(backbone, mode: str, **lora_kwargs) -> TrainableSummary:
    """Set `requires_grad` for `mode` (see module docstring); returns the trainable counts."""
    if mode not in FINETUNE_MODES:
        raise FinetuneError(f"Unknown fine-tune mode {mode!r}; accepted: {', '.join(FINETUNE_MODES)}.")
    if mode == "lora":
        from llm_backbones.training.lora import apply_lora  # peft is imported only when LoRA is asked for

        apply_lora(backbone, **lora_kwargs)
    else:
        backbone.requires_grad_(mode == "full")
        if mode == "last-layer":
            for module in backbone.last_layer_finetune_modules:
                module.requires_grad_(True)
    trainable, total = count_parameters(backbone)
    summary = TrainableSummary(mode, trainable, total)
    logger.info("%s", summary)
    return summary


def train_steps(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    ctx=None,
    autocast=None,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """A bare loop: one optimizer step per batch (`input_ids`, `attention_mask`, `labels`); the losses.

    Each step is `training.optimizer_step` (the loss is the mean over the supervised tokens of the global
    batch, whatever the world size; a non-finite loss raises `NonFiniteLossError`). `on_step(i, loss)`
    gets the 0-based index. `run_finetune` adds the schedule, clipping, checkpoints and metrics.
    """
    model.train()
    losses = []
    for step, batch in enumerate(batches):
        stats = optimizer_step(model, [batch], optimizer, step=step + 1, ctx=ctx, autocast=autocast)
        losses.append(stats.loss)
        if on_step is not None and (ctx is None or ctx.is_main):
            on_step(step, losses[-1])
    return losses


# === The fine-tuning job (single process or torchrun) ===
@dataclass
class FinetuneResult:
    losses: list[float]  # one per step this invocation ran (after `start_step` when resumed)
    world_size: int
    trainable_params: int
    summary: TrainableSummary
    output: str | None
    start_step: int = 0  # the checkpoint step it resumed from (0: a fresh run)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean eval loss)
    checkpoints: list[str] = field(default_factory=list)  # step folders written


def run_finetune(
    backbone_id: str | None = None,
    data: Any = None,
    *,
    config: FinetuneConfig | None = None,
    on_step: Callable[[int, float], None] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    on_ready: Callable[[], None] | None = None,
    **options: Any,
) -> FinetuneResult:
    """Fine-tune `backbone_id` on conversations (a JSON file's path, or a list), single-process or under
    torchrun (FSDP).

    `options` are the settings of `FinetuneConfig` (the CLI flags, underscored: `steps`, `batch_size`,
    `grad_accum`, `lr`, `lr_schedule`, `warmup_steps`, `max_grad_norm`, `max_length`, `fast`,
    `gradient_checkpointing`, `eval_data`, `eval_every`, `log_every`, `save_every`, `keep`, `output`,
    `resume`, `overwrite`, ...), applied over `config`. `batch_size` is the global batch of one
    optimizer step, split into `grad_accum` micro-batches and evenly across ranks; each rank's loss is
    its share of the global token mean, so any world size and accumulation optimise the same objective.

    With `output`: checkpoints every `save_every` steps and at the end (see `training.checkpoint`), the
    metrics in `output/metrics.jsonl`, the settings in `output/run_config.json`, and finally the
    `save_backbone` export that `get_llm_backbone_and_tokenizer(id, model_path=output)` loads. `resume`
    continues from the latest complete checkpoint with the losses an uninterrupted run would have had.
    `on_step(step, loss)` (1-based step) and `on_record(record)` (each metrics record) run on rank 0;
    `on_ready()` once every check (settings, output folder, data) has passed, before any model is built.
    """
    from llm_backbones.data.examples import load_conversations
    from llm_backbones.training.distributed import init_distributed

    if backbone_id is not None:
        options["backbone"] = backbone_id
    in_memory = None
    if data is not None and not isinstance(data, (str, os.PathLike)):
        in_memory = list(data)
    elif data is not None:
        options["data"] = data
    cfg = FinetuneConfig.from_mapping(options, "run_finetune", config)
    run = preflight(cfg, in_memory_data=in_memory is not None)
    conversations = in_memory if in_memory is not None else load_conversations(cfg.data)
    eval_conversations = load_conversations(cfg.eval_data) if cfg.eval_data is not None else None
    source = "the training data" if cfg.data is None else repr(str(cfg.data))
    check_conversations(cfg.backbone, conversations, source, prompt_format=cfg.prompt_format)
    check_batch_size(cfg.batch_size, len(conversations), source)
    if eval_conversations is not None:
        check_conversations(
            cfg.backbone, eval_conversations, repr(str(cfg.eval_data)), prompt_format=cfg.prompt_format
        )
    if on_ready is not None:
        on_ready()
    ctx = init_distributed(cfg.device)
    try:
        return _train(cfg, ctx, run, conversations, eval_conversations, on_step, on_record)
    finally:
        if ctx.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def preflight(cfg: FinetuneConfig, *, in_memory_data: bool = False):
    """Every check that needs no model and no process group: the settings, and an `output` that would be
    written over by mistake. Each rank runs it before joining, so all fail alike. Returns the `RunDir`."""
    from llm_backbones.training.checkpoint import RunDir

    cfg.validate(int(os.environ.get("WORLD_SIZE", "1")))
    if cfg.backbone is None:
        raise FinetuneError(
            "No backbone given: pass --backbone ID (e.g. llama2-tiny-pure), or `backbone:` in --config."
        )
    if not in_memory_data and cfg.data is None:
        raise FinetuneError(
            "No training data given: pass --data FILE (JSON or JSONL: LLaVA or OpenAI chat records), or "
            "`data:` in --config."
        )
    run = RunDir(cfg.output) if cfg.output is not None else None
    if run is not None:
        run.check(resume=cfg.resume, overwrite=cfg.overwrite)
    return run


def check_conversations(
    backbone_id: str, conversations: list, source: str, *, prompt_format: str | None = None
) -> None:
    """Render every conversation with the id's prompt builder, or `prompt_format`'s (no model, no tokenizer):
    a bad record (empty, assistant first, unknown role, non-string text) is reported with its index before
    anything is built."""
    from llm_backbones.core.prompting.builder import DEFAULT_MODEL_FAMILY
    from llm_backbones.core.registry import prompt_builder_for
    from llm_backbones.data.examples import _seams
    from llm_backbones.errors import ConversationError, LLMBackbonesError

    builder = prompt_format if prompt_format is not None else prompt_builder_for(backbone_id)
    for index, conversation in enumerate(conversations):
        try:
            _seams(builder, conversation, DEFAULT_MODEL_FAMILY, None)
        except LLMBackbonesError as exc:
            raise ConversationError(
                f"Conversation {index} of {source} ({len(conversations)} in all): {exc} Fix or drop that "
                "record."
            ) from exc


def _prepare_output(cfg: FinetuneConfig, run, data: tuple[str, str]) -> tuple[Any, dict[str, Any] | None]:
    """Rank 0: clear (`--overwrite`: the run's own files only), drop interrupted writes, find the checkpoint
    to resume (`RunDir.resume_checkpoint`), verify its files and check its settings and its data (`data`:
    the sha256 of this invocation's training data and what to call it), write `run_config.json`. Returns
    (checkpoint folder or None, its meta)."""
    from llm_backbones.training.checkpoint import check_resume_data, check_resume_settings, verify_checkpoint

    if cfg.overwrite and run.holds_run():
        logger.warning("--overwrite: deleting the previous run's files in %s (other files stay)", run.path)
        run.clear()
    run.path.mkdir(parents=True, exist_ok=True)
    run.remove_partial()
    checkpoint = run.resume_checkpoint() if cfg.resume else None
    meta = None
    if checkpoint is not None:
        meta = verify_checkpoint(checkpoint)
        check_resume_data(meta, *data)
        changed = check_resume_settings(meta, cfg.saved())
        if changed:
            logger.warning(
                "Resuming step %s with changed settings (the run differs from then on): %s",
                meta["step"],
                "; ".join(changed),
            )
        if meta["step"] > cfg.steps:
            raise FinetuneError(
                f"The latest checkpoint in {run.path} is at step {meta['step']}, beyond --steps {cfg.steps}; "
                f"pass --steps {meta['step']} or more to continue it."
            )
    elif cfg.resume:
        logger.warning("--resume: %s holds no complete checkpoint yet; starting from step 0", run.path)
    run.write_run_config(cfg.saved())
    return checkpoint, meta


def setup_optimizer(model: nn.Module, cfg: Any, checkpoint: Any, ctx: Any) -> tuple[Any, Any, int]:
    """AdamW over the trainable parameters and the LR schedule of `cfg`; with a `checkpoint`, their state and
    the step it holds (the schedule then follows this run's settings). Returns (optimizer, scheduler, step).
    The one setup of both recipes (`finetune`, `training.vla`)."""
    from llm_backbones.training.checkpoint import load_checkpoint
    from llm_backbones.training.loop import lr_factor, lr_scheduler

    # Fused AdamW: one kernel over all tensors (5x the single-tensor loop on a CPU); DTensor shards too.
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        fused=True,
    )
    scheduler = lr_scheduler(optimizer, cfg)
    if checkpoint is None:
        return optimizer, scheduler, 0
    start_step = load_checkpoint(checkpoint, model, optimizer, scheduler, ctx=ctx)["step"]
    # From here the schedule follows this run's settings (the same numbers when they did not change).
    factor = lr_factor(
        start_step, schedule=cfg.lr_schedule, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps
    )
    scheduler.base_lrs = [cfg.lr for _ in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["initial_lr"], group["lr"] = cfg.lr, cfg.lr * factor
    logger.info("Resumed from %s (step %d)", checkpoint, start_step)
    return optimizer, scheduler, start_step


@dataclass
class _Session:
    """What `_setup` builds for the loop: the model (wrapped for FSDP), the backbone under it, the optimizer
    and schedule (at `start_step` when resumed), the tokenized examples and their order, how batches are
    made."""

    backbone: Any
    model: nn.Module
    optimizer: Any
    scheduler: Any
    start_step: int
    summary: TrainableSummary
    examples: list
    eval_examples: list | None
    order: DataOrder
    collate: Any
    micro_size: int
    autocast: Any
    checkpoint_meta: dict[str, Any]


def _train(
    cfg: FinetuneConfig, ctx, run, conversations, eval_conversations, on_step, on_record
) -> FinetuneResult:
    """The recipe after its checks, in the order torchtune's recipes keep: setup, the loop (`run_steps`, with
    this recipe's batches, records and evaluation), the export."""
    session = _setup(cfg, ctx, run, conversations, eval_conversations)
    result = FinetuneResult(
        [], ctx.world_size, session.summary.trainable, session.summary, None, start_step=session.start_step
    )
    run_steps(
        cfg,
        ctx,
        run,
        _ConversationSteps(cfg, ctx, session, result),
        model=session.model,
        optimizer=session.optimizer,
        scheduler=session.scheduler,
        start_step=session.start_step,
        checkpoint_meta=session.checkpoint_meta,
        losses=result.losses,
        checkpoints=result.checkpoints,
        on_step=on_step,
        on_record=on_record,
    )
    if run is not None:
        result.output = _export_run(cfg, ctx, run, session)
    return result


def _setup(cfg: FinetuneConfig, ctx, run, conversations, eval_conversations) -> _Session:
    """Rank 0 prepares the run folder (and finds the checkpoint to resume); every rank builds the backbone,
    tokenizes the data, sets the mode, wraps the model for FSDP, and builds the optimizer (from the
    checkpoint when resumed)."""
    from llm_backbones.core.backbones.factory import get_llm_backbone_and_tokenizer
    from llm_backbones.data.examples import PaddedCollator, tokenize_conversation
    from llm_backbones.training.checkpoint import conversations_sha256
    from llm_backbones.training.distributed import on_main, shard_fsdp2_from_rank0, wrap_fsdp1

    data_sha256 = conversations_sha256(conversations)
    data = (data_sha256, "the training data" if cfg.data is None else repr(str(cfg.data)))
    checkpoint, meta = (
        on_main(ctx, lambda: _prepare_output(cfg, run, data)) if run is not None else (None, None)
    )
    precision = cfg.precision or ("bf16" if ctx.device.type == "cuda" else "fp32")
    torch.manual_seed(cfg.seed)
    fsdp2 = ctx.enabled and cfg.fsdp == 2
    # FSDP2: only rank 0 reads the weights; the other ranks build the architecture on the meta device and
    # receive their shards from rank 0 (one copy of the model in host memory, not one per rank).
    backbone, tokenizer = get_llm_backbone_and_tokenizer(
        cfg.backbone,
        model_path=cfg.model_path,
        inference_mode=fsdp2 and not ctx.is_main,
        prompt_format=cfg.prompt_format,
    )
    if backbone.inference_mode:
        backbone.set_training_flags()
    max_length = cfg.max_length or backbone.llm_max_length

    def tokenize(items):
        return [
            tokenize_conversation(tokenizer, backbone.prompt_builder_fn, c, max_length=max_length)
            for c in items
        ]

    examples = tokenize(conversations)
    eval_examples = tokenize(eval_conversations) if eval_conversations is not None else None
    if meta is not None and meta.get("n_examples") != len(examples):
        raise FinetuneError(
            f"The checkpoint at step {meta['step']} was trained on {meta.get('n_examples')} examples, but "
            f"--data now holds {len(examples)}: the data order would differ. Resume with the run's own data, "
            "or start a new run."
        )
    summary = apply_finetune_mode(backbone, cfg.mode, **cfg.lora_kwargs())
    if cfg.gradient_checkpointing:
        backbone.enable_gradient_checkpointing()
    if cfg.fast:
        backbone.enable_fast_training()

    half = backbone.half_precision_dtype if precision == "bf16" else None
    model: nn.Module = backbone
    if fsdp2:
        model = shard_fsdp2_from_rank0(backbone, ctx, param_dtype=half)
    elif ctx.enabled:
        model = wrap_fsdp1(backbone.to(ctx.device), ctx.device, param_dtype=half)
    else:
        backbone.to(ctx.device)
    optimizer, scheduler, start_step = setup_optimizer(model, cfg, checkpoint, ctx)
    return _Session(
        backbone=backbone,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        start_step=start_step,
        summary=summary,
        examples=examples,
        eval_examples=eval_examples,
        order=DataOrder(len(examples), cfg.batch_size, cfg.seed),
        collate=PaddedCollator(model_max_length=max_length, pad_token_id=backbone.pad_token_id),
        micro_size=cfg.batch_size // (cfg.grad_accum * ctx.world_size),
        autocast=torch.autocast(ctx.device.type, dtype=half)
        if half is not None and not ctx.enabled
        else None,
        checkpoint_meta={"config": cfg.saved(), "n_examples": len(examples), "data_sha256": data_sha256},
    )


class _ConversationSteps:
    """`training.loop.Recipe` of `finetune`: micro-batches of tokenized conversations, the loss without full
    logits with `--fast`, tokens per second over each metrics window, the mean eval loss."""

    def __init__(self, cfg: FinetuneConfig, ctx, s: _Session, result: FinetuneResult) -> None:
        self.cfg, self.ctx, self.s, self.result = cfg, ctx, s, result
        self.step_options = {"autocast": s.autocast, "fused_loss": cfg.fast}
        self.has_eval = s.eval_examples is not None
        self.window_tokens, self.window_seconds = 0, 0.0

    def batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        from llm_backbones.training.loop import rank_micro_batches

        cfg, ctx, s = self.cfg, self.ctx, self.s
        shares = rank_micro_batches(s.order.batch(step - 1), cfg.grad_accum, ctx.world_size, ctx.rank)
        return [
            {k: v.to(ctx.device) for k, v in s.collate([s.examples[i] for i in share]).items()}
            for share in shares
        ]

    def after_step(self, step: int, stats, seconds: float) -> None:
        self.window_tokens += stats.tokens
        self.window_seconds += seconds

    def record(self, step: int, stats, lr: float) -> dict[str, Any]:
        from llm_backbones.training.loop import peak_memory_bytes

        tokens_per_s = self.window_tokens / max(self.window_seconds, 1e-9)
        self.window_tokens, self.window_seconds = 0, 0.0
        return {
            "step": step,
            "loss": stats.loss,
            "lr": lr,
            "grad_norm": stats.grad_norm,
            "tokens": stats.tokens,
            "supervised_tokens": stats.supervised_tokens,
            "tokens_per_s": tokens_per_s,
            "peak_memory_gb": peak_memory_bytes(self.ctx.device) / 1e9,
            "world_size": self.ctx.world_size,
        }

    def evaluate(self, step: int) -> dict[str, Any]:
        """The mean loss over the supervised tokens of every eval example, in micro-batches of the
        training's."""
        from llm_backbones.training.loop import evaluate

        s = self.s
        eval_loss = evaluate(
            s.model,
            s.eval_examples,
            s.collate,
            micro_batch_size=s.micro_size,
            device=self.ctx.device,
            ctx=self.ctx,
            autocast=s.autocast,
            fused_loss=self.cfg.fast,
        )
        self.result.eval_losses.append((step, eval_loss))
        return {"step": step, "eval_loss": eval_loss, "eval_examples": len(s.eval_examples)}


def _export_run(cfg: FinetuneConfig, ctx, run, s: _Session) -> str:
    """The trained weights, checked finite on every rank, gathered (FSDP) and exported by rank 0 into
    `run.export` in one step (with LoRA, the adapters alone into `run.adapter` too). Returns the export."""
    from llm_backbones.errors import CheckpointError
    from llm_backbones.training.distributed import all_finite, full_state_dict, on_main

    if not all_finite([p for p in s.model.parameters() if p.requires_grad], ctx):
        raise CheckpointError(
            f"After step {cfg.steps} the weights hold NaN or infinite values; nothing was exported over "
            f"{run.path}. Lower --lr or use --precision fp32, then --resume from the last checkpoint."
        )
    state = full_state_dict(s.model) if ctx.enabled else None

    def export() -> str:
        adapter = run.adapter if cfg.mode == "lora" else None
        # save_backbone writes beside export/ and swaps it in, in one step
        exported = _export(cfg, s.backbone, state, run.export, adapter=adapter)
        run.remove_legacy_export()
        return str(exported)

    return on_main(ctx, export)


def _export(cfg, backbone, state, output, *, adapter=None):
    """Write a `save_backbone` checkpoint (LoRA merged, fingerprinted, atomic) that
    `get_llm_backbone_and_tokenizer(id, model_path=OUTPUT)` and `load_backbone(OUTPUT)` load; with LoRA and
    an `adapter` folder, the adapters alone there first, in peft's format (`save_adapter`). The end of a run
    and of `export_checkpoint`."""
    from llm_backbones.core.backbones.factory import get_llm_backbone_and_tokenizer
    from llm_backbones.persistence.checkpoint import save_backbone
    from llm_backbones.training.lora import apply_lora, merge_lora, save_adapter

    if state is not None:  # sharded training: rebuild an unsharded copy (meta device) and assign the weights
        backbone, _ = get_llm_backbone_and_tokenizer(
            cfg.backbone, model_path=cfg.model_path, inference_mode=True, prompt_format=cfg.prompt_format
        )
        if cfg.mode == "lora":
            apply_lora(backbone, **cfg.lora_kwargs())
        backbone.load_state_dict(state)
    backbone = backbone.to("cpu")
    if adapter is not None and hasattr(backbone.llm, "peft_config"):
        save_adapter(backbone.llm, adapter)
    merge_lora(backbone)
    return save_backbone(backbone, output)


def export_checkpoint(checkpoint, meta: Mapping[str, Any], output, adapter):
    """Export one checkpoint of a `finetune` run (`training.export.export_run`): the backbone rebuilt from the
    run's settings (`meta["config"]`) with its pretrained weights, set up for the run's mode, the
    checkpoint's trainable weights loaded (one process, whatever world size wrote it), then the run's own
    `_export` to `output` (with LoRA, the adapters alone to `adapter`). Returns `output`."""
    from llm_backbones.core.backbones.factory import get_llm_backbone_and_tokenizer
    from llm_backbones.training.checkpoint import META_FILE, load_weights

    cfg = FinetuneConfig.from_mapping(meta["config"], str(checkpoint / META_FILE))
    torch.manual_seed(cfg.seed)
    backbone, _ = get_llm_backbone_and_tokenizer(
        cfg.backbone, model_path=cfg.model_path, prompt_format=cfg.prompt_format
    )
    apply_finetune_mode(backbone, cfg.mode, **cfg.lora_kwargs())
    load_weights(checkpoint, backbone)
    return _export(cfg, backbone, None, output, adapter=adapter if cfg.mode == "lora" else None)
