"""Scale-out on torch.distributed: FSDP2 (`fully_shard`) and FSDP1, mixed precision, full state dicts.

Launch with `torchrun --nproc_per_node=N` (and `--nnodes`/`--rdzv-endpoint` across nodes); NCCL on
CUDA, gloo on CPU. FSDP2 shards each decoder layer (the registry's layer class) and then the root, so
the embeddings and the LM head (tied or not) live in the root unit together. The root is the backbone, or
a module holding it (a VLA's `VLATrainModule`: its vision towers and projector join the root unit).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)
from torch.distributed.fsdp import FullyShardedDataParallel, MixedPrecision, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from llm_backbones.errors import FinetuneError, LLMBackbonesError

T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistributedContext:
    """Join the process group torchrun describes (env `WORLD_SIZE`, `RANK`, `LOCAL_RANK`); single process
    otherwise. NCCL where CUDA is used, gloo on CPU."""
    from llm_backbones.training.settings import check_device

    check_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    return DistributedContext(rank=rank, world_size=world_size, device=dev)


def decoder_layers(backbone) -> list[nn.Module]:
    """Every module of the backbone's decoder-layer class (the FSDP unit), in order."""
    return [m for m in backbone.modules() if isinstance(m, backbone.transformer_layer_cls)]


def shard_fsdp2(
    backbone,
    *,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype | None = torch.float32,
    root: nn.Module | None = None,
) -> nn.Module:
    """`fully_shard` each decoder layer, then the root: the backbone itself (embeddings, final norm, LM
    head), or `root`, a module holding the backbone (whose other parameters then join the root unit).
    Returns the root.

    `param_dtype` (e.g. the backbone's `half_precision_dtype`) is the compute dtype of the gathered
    parameters; the sharded master weights keep their dtype; gradients are reduced in `reduce_dtype`.
    """
    root = backbone if root is None else root
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype if param_dtype else None)
    for layer in decoder_layers(backbone):
        fully_shard(layer, mp_policy=policy)
    fully_shard(root, mp_policy=policy)
    return root


def shard_fsdp2_from_rank0(
    backbone,
    ctx: DistributedContext,
    *,
    param_dtype: torch.dtype | None = None,
    root: nn.Module | None = None,
) -> nn.Module:
    """FSDP2-shard a backbone (or the `root` holding it, see `shard_fsdp2`) whose weights only rank 0 needs
    to hold (the others may have built it on the meta device), then send every rank its shards from rank
    0's full state dict. Non-persistent buffers (RoPE frequencies), real on every rank, are kept. Returns
    the root."""
    root = backbone if root is None else root
    state = root.state_dict() if ctx.is_main else {}
    buffers = {name: b.detach().clone() for name, b in root.named_buffers()}
    root.to("meta")
    shard_fsdp2(backbone, param_dtype=param_dtype, root=root)
    root.to_empty(device=ctx.device)
    with torch.no_grad():
        for name, b in buffers.items():
            root.get_buffer(name).copy_(b)
    set_model_state_dict(
        root, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    )
    return root


def wrap_fsdp1(
    backbone,
    device: torch.device,
    *,
    param_dtype: torch.dtype | None = None,
    root: nn.Module | None = None,
) -> FullyShardedDataParallel:
    """FSDP1 through the backbone's own `get_fsdp_wrapping_policy()` (one unit per decoder layer); the
    root unit wraps the backbone, or `root`, a module holding it (see `shard_fsdp2`)."""
    # Buffers stay fp32: RoPE's inv_freq in bf16 would shift every position's angle (FSDP2 keeps them too).
    mixed = (
        MixedPrecision(param_dtype=param_dtype, reduce_dtype=torch.float32, buffer_dtype=None)
        if param_dtype
        else None
    )
    return FullyShardedDataParallel(
        backbone if root is None else root,
        auto_wrap_policy=backbone.get_fsdp_wrapping_policy(),
        mixed_precision=mixed,
        device_id=device,  # [Contract] on CPU, FSDP1 needs device_id=cpu explicitly
        use_orig_params=True,  # frozen and trainable parameters may share a unit (last-layer, LoRA)
    )


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole, unsharded state dict, with the backbone's own key names. Every rank must call it.

    On CUDA it is gathered into host memory on rank 0 only (other ranks get an empty dict), so 7B fits;
    on CPU/gloo every rank gets it (the tensors already live in host memory, and FSDP1's offloading path
    segfaults there).
    """
    on_cuda = next(model.parameters()).device.type == "cuda"
    options = StateDictOptions(full_state_dict=True, cpu_offload=on_cuda)
    state = get_model_state_dict(model, options=options)
    return {k: v.detach().to("cpu") for k, v in state.items()}


def load_full_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load a full state dict into a sharded (FSDP1/FSDP2) or unsharded backbone."""
    if isinstance(model, FullyShardedDataParallel) or any(hasattr(m, "unshard") for m in model.modules()):
        set_model_state_dict(model, dict(state_dict), options=StateDictOptions(full_state_dict=True))
    else:
        model.load_state_dict(state_dict)


def all_reduce_sum(value: torch.Tensor, ctx: DistributedContext | None) -> torch.Tensor:
    """Sum over ranks (in place); the value itself in a single process (`ctx` None or one rank)."""
    if ctx is not None and ctx.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def barrier(ctx: DistributedContext | None) -> None:
    """Wait for every rank (nothing in a single process)."""
    if ctx is not None and ctx.enabled:
        dist.barrier()


def on_main(ctx: DistributedContext | None, fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and give every rank its result; an llm-backbones error (or OSError) raised
    there is raised on every rank, so all ranks fail alike instead of the others hanging."""
    result: list[Any] = [None]
    if ctx is None or ctx.is_main:
        try:
            result[0] = ("ok", fn())
        except (LLMBackbonesError, OSError) as exc:
            if ctx is None or not ctx.enabled:
                raise
            result[0] = ("error", exc)
    if ctx is not None and ctx.enabled:
        try:
            dist.broadcast_object_list(result, src=0)
        except Exception:  # an exception object that does not pickle: send its message
            if ctx.is_main and result[0][0] == "error":
                result[0] = ("error", FinetuneError(str(result[0][1])))
            dist.broadcast_object_list(result, src=0)
    kind, value = result[0]
    if kind == "error":
        raise value
    return value


def clip_grad_norm(model: nn.Module, max_norm: float | None) -> torch.Tensor:
    """The total gradient norm over all ranks before clipping; the gradients are scaled down to `max_norm`
    when it is > 0 and the norm exceeds it. Works on FSDP2 (DTensor gradients), FSDP1 and plain modules."""
    limit = max_norm if max_norm else math.inf
    if isinstance(model, FullyShardedDataParallel):
        return model.clip_grad_norm_(limit).detach().cpu()
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return torch.zeros(())
    total = torch.nn.utils.get_total_norm([p.grad for p in params])
    if isinstance(total, DTensor):  # FSDP2: each rank holds a partial norm of its shards
        total = total.full_tensor()
    if max_norm:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total.detach().cpu()


def all_finite(tensors: list[torch.Tensor], ctx: DistributedContext | None) -> bool:
    """Whether every element of `tensors` (this rank's shards of them) is finite, on every rank."""
    bad = torch.zeros((), dtype=torch.long)
    for tensor in tensors:
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        if local.device.type != "meta" and not bool(torch.isfinite(local.detach()).all()):
            bad += 1
    device = ctx.device if ctx is not None and ctx.enabled else torch.device("cpu")
    return int(all_reduce_sum(bad.to(device), ctx)) == 0
