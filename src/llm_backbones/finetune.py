"""Fine-tuning modes (frozen / full / last-layer / LoRA) and the one training loop.

Modes say which parameters train:
- `frozen`: none (a feature extractor: the VLA trains only its projector).
- `full`: all of them.
- `last-layer`: the seed's `last_layer_finetune_modules` (input embeddings, last decoder layer, LM head).
- `lora`: low-rank adapters (peft) on every linear layer but the head; `merge_lora` folds them back.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from llm_backbones.data import IGNORE_INDEX
from llm_backbones.errors import FinetuneError

logger = logging.getLogger(__name__)

FINETUNE_MODES = ("frozen", "full", "last-layer", "lora")


@dataclass(frozen=True)
class TrainableSummary:
    mode: str
    trainable: int
    total: int

    def __str__(self) -> str:
        share = 100.0 * self.trainable / max(self.total, 1)
        return f"{self.mode}: {self.trainable:,} of {self.total:,} parameters trainable ({share:.2f}%)"


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, each shared tensor counted once."""
    seen: dict[int, nn.Parameter] = {}
    for p in module.parameters():
        seen.setdefault(id(p), p)
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, total


def last_layer_modules(llm: nn.Module) -> tuple[nn.Module, ...]:
    """Input embeddings, the last decoder layer and the LM head of an HF causal LM, each module and each
    parameter once (a tied LM head, whose weight *is* the input embedding, is not listed again)."""
    candidates = (llm.get_input_embeddings(), llm.get_decoder().layers[-1], llm.get_output_embeddings())
    unique: list[nn.Module] = []
    seen: set[int] = set()
    for module in candidates:
        if module is None or any(module is m for m in unique):
            continue
        params = {id(p) for p in module.parameters()}
        if unique and params and params <= seen:  # tied head: nothing of its own to add
            continue
        unique.append(module)
        seen |= params
    return tuple(unique)


def trainable_counts_by_mode(llm: nn.Module) -> dict[str, TrainableSummary]:
    """What each mode would train on `llm` (e.g. built on the meta device); `llm` is consumed (LoRA wraps it)."""
    from llm_backbones.lora import with_lora

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
        from llm_backbones.lora import apply_lora  # peft is imported only when LoRA is asked for

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
    """The one training loop: a step per batch (`input_ids`, `attention_mask`, `labels`); the losses.

    The loss is the mean over supervised tokens of the *global* batch: under torchrun (`ctx`, a
    `DistributedContext`, with this rank's share of the batch) each rank's token sum is divided by the
    global token count and scaled by the world size, since FSDP averages gradients over ranks. So any world
    size optimises exactly what one process does on the whole batch.
    """
    from llm_backbones.distributed import all_reduce_sum

    world_size = ctx.world_size if ctx is not None else 1
    model.train()
    losses = []
    for step, batch in enumerate(batches):
        with autocast if autocast is not None else contextlib.nullcontext():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss_sum, count = causal_lm_loss_sum(logits, batch["labels"])
        global_count = all_reduce_sum(count.detach().clone(), ctx).clamp(min=1)
        (loss_sum * world_size / global_count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append((all_reduce_sum(loss_sum.detach().clone(), ctx) / global_count).item())
        if on_step is not None and (ctx is None or ctx.is_main):
            on_step(step, losses[-1])
    return losses


# === The fine-tuning job (single process or torchrun) ===
def global_batch_indices(n_examples: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """The example indices of every step's global batch: seeded permutations, epoch after epoch.
    Depends only on the seed, so every world size sees the same global batches."""
    generator = torch.Generator().manual_seed(seed)
    stream: list[int] = []
    while len(stream) < batch_size * steps:
        stream += torch.randperm(n_examples, generator=generator).tolist()
    return [stream[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


def causal_lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token cross-entropies over supervised tokens, number of supervised tokens)."""
    shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1)
    loss_sum = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, (shift_labels != IGNORE_INDEX).sum()


@dataclass
class FinetuneResult:
    losses: list[float]
    world_size: int
    trainable_params: int
    summary: TrainableSummary
    output: str | None


def run_finetune(
    backbone_id: str,
    data,
    *,
    model_path=None,
    mode: str = "full",
    steps: int = 10,
    batch_size: int = 8,
    lr: float = 1e-4,
    seed: int = 0,
    precision: str | None = None,
    output=None,
    fsdp_version: int = 2,
    device: str | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> FinetuneResult:
    """Fine-tune `backbone_id` on conversations (a JSON file's path, or a list), single-process or under
    torchrun (FSDP).

    `batch_size` is the global batch, split evenly across ranks; each rank's loss is its share of the
    global token-mean, so any world size optimises the same objective as one process.
    """
    import os

    import torch.distributed as dist

    from llm_backbones.backbones import get_llm_backbone_and_tokenizer
    from llm_backbones.data import PaddedCollator, load_conversations, tokenize_conversation
    from llm_backbones.distributed import full_state_dict, init_distributed, shard_fsdp2_from_rank0, wrap_fsdp1

    if mode not in FINETUNE_MODES or mode == "frozen":
        raise FinetuneError(
            f"Unknown fine-tune mode {mode!r} for training; accepted: full, last-layer, lora ('frozen' trains nothing)."
        )
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # checked before joining: every rank fails alike
    if batch_size % world_size:
        raise FinetuneError(
            f"--batch-size {batch_size} (global) does not split evenly over {world_size} ranks; use a "
            f"multiple of {world_size}."
        )
    if precision not in (None, "fp32", "bf16"):
        raise FinetuneError(f"precision must be fp32 or bf16, got {precision!r}; bf16 needs a GPU to be fast.")
    ctx = init_distributed(device)
    precision = precision or ("bf16" if ctx.device.type == "cuda" else "fp32")
    torch.manual_seed(seed)
    fsdp2 = ctx.enabled and fsdp_version == 2
    if ctx.enabled and fsdp_version not in (1, 2):
        raise FinetuneError(f"fsdp_version must be 1 or 2, got {fsdp_version!r}; 2 (fully_shard) is the default.")
    # FSDP2: only rank 0 reads the weights; the other ranks build the architecture on the meta device and
    # receive their shards from rank 0 (one copy of the model in host memory, not one per rank).
    backbone, tokenizer = get_llm_backbone_and_tokenizer(
        backbone_id, model_path=model_path, inference_mode=fsdp2 and not ctx.is_main
    )
    if backbone.inference_mode:
        backbone.set_training_flags()
    conversations = load_conversations(data) if isinstance(data, (str, os.PathLike)) else list(data)
    examples = [tokenize_conversation(tokenizer, backbone.prompt_builder_fn, c) for c in conversations]
    summary = apply_finetune_mode(backbone, mode)

    half = backbone.half_precision_dtype if precision == "bf16" else None
    model: nn.Module = backbone
    if fsdp2:
        model = shard_fsdp2_from_rank0(backbone, ctx, param_dtype=half)
    elif ctx.enabled:
        model = wrap_fsdp1(backbone.to(ctx.device), ctx.device, param_dtype=half)
    else:
        backbone.to(ctx.device)
    autocast = torch.autocast(ctx.device.type, dtype=half) if half is not None and not ctx.enabled else None
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    collate = PaddedCollator(backbone.pad_token_id)
    per_rank = batch_size // ctx.world_size

    def rank_batches():
        for global_batch in global_batch_indices(len(examples), batch_size, steps, seed):
            mine = global_batch[ctx.rank * per_rank : (ctx.rank + 1) * per_rank]
            yield {k: v.to(ctx.device) for k, v in collate([examples[i] for i in mine]).items()}

    losses = train_steps(model, rank_batches(), optimizer, ctx=ctx, autocast=autocast, on_step=on_step)

    saved = None
    if output is not None:
        state = full_state_dict(model) if ctx.enabled else None
        if ctx.is_main:
            saved = str(_export(backbone_id, model_path, mode, backbone, state, output))
        if ctx.enabled:
            dist.barrier()
    result = FinetuneResult(losses, ctx.world_size, summary.trainable, summary, saved)
    if ctx.enabled:
        dist.destroy_process_group()
    return result


def _export(backbone_id, model_path, mode, backbone, state, output):
    """Write a `save_backbone` checkpoint (LoRA merged, fingerprinted, atomic) that
    `get_llm_backbone_and_tokenizer(id, model_path=OUTPUT)` and `load_backbone(OUTPUT)` load."""
    from llm_backbones.backbones import get_llm_backbone_and_tokenizer
    from llm_backbones.checkpoint import save_backbone
    from llm_backbones.lora import apply_lora, merge_lora

    if state is not None:  # sharded training: rebuild an unsharded copy (meta device) and assign the weights
        backbone, _ = get_llm_backbone_and_tokenizer(backbone_id, model_path=model_path, inference_mode=True)
        if mode == "lora":
            apply_lora(backbone)
        backbone.load_state_dict(state)
    backbone = backbone.to("cpu")
    merge_lora(backbone)
    return save_backbone(backbone, output)
