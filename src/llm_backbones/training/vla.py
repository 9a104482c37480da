"""Fine-tuning a whole VLA (image -> vision -> projector -> LLM) on robot episodes: `run_finetune_vla`, the
job behind `llm-backbones finetune-vla`, in one process or under `torchrun --nproc_per_node=N` (FSDP).

Split as a recipe: settings (`VLAFinetuneConfig`, `FinetuneConfig`'s plus the VLA's), data (`vla_examples`,
`VLACollator`, `augment_image`), the model (`VLATrainModule`, `apply_vla_mode`), metrics (`ActionMetrics`),
the loop (the pieces of `training.loop` and the checkpoints of `training.checkpoint`), and the export
(`finish_and_export`: with LoRA the adapters alone in peft's format, then merged; `export_openvla`). The
export of any checkpoint of a run (`export_checkpoint`, `llm-backbones export`) rebuilds the run's model
(`policy_from_config`, `vla_train_model`) and ends the same way.

What trains, by mode (OpenVLA's stages and its `vla-scripts/finetune.py`):
- `full`: the projector and the LLM (Prismatic's `vla-train`); the vision towers too with `train_vision`
  (`vla-full-train`).
- `last-layer`: the LLM's last layer, input embeddings and head only (`vla-last-layer-train`).
- `lora`: peft LoRA adapters (r=32, alpha=min(r, 16), dropout 0, gaussian init, OpenVLA's defaults) on every
  linear layer of the LLM (head excluded) and of the projector, as OpenVLA's `target_modules="all-linear"`
  does; the vision towers' linear layers get adapters only with `train_vision` (vision is frozen by default
  here, where OpenVLA's all-linear adapts it too). The adapters are saved alone (`adapter/`, peft's format)
  and merged into the weights for the export.

The loss is OpenVLA's: next-token cross-entropy on the action tokens and EOS (patches and prompt at -100),
the mean over the supervised tokens of the global batch (`training.optimizer_step`).

Under torchrun it runs as `training.finetune` does: FSDP2 (`--fsdp 2`, the default) or FSDP1 (`--fsdp 1`),
one unit per LLM decoder layer, then the root `VLATrainModule`, so the vision towers, the projector, the
embeddings and the head share the root unit (LoRA adapters sit in the units of the layers they adapt). Every
rank reads the checkpoint (`load_vla` has no meta-device path); with FSDP2 rank 0's weights are sent to the
others. Each global batch is split over the ranks as `rank_micro_batches` says, so the losses are one
process's (to float rounding); the action metrics are summed over the ranks before rank 0 logs them, the eval
likewise. A frozen tower's features are not cached under FSDP (its weights are whole only inside the
forward): the towers run every step. Checkpoints are written per rank (DCP, resumable on any world size);
the export is written once, by rank 0, from the gathered weights (`policy_from_config` rebuilds the policy
to hold them), so under torchrun the policy is given as a path.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llm_backbones.errors import CheckpointError, FinetuneError
from llm_backbones.training.loop import DataOrder, evaluate, rank_micro_batches, run_steps
from llm_backbones.training.settings import VLA_MODES, VLAFinetuneConfig, check_batch_size

logger = logging.getLogger(__name__)

EXPORT_DIR = "export"  # training.checkpoint.EXPORT_DIR: a run's export, in one folder for both recipes

# [Contract] OpenVLA's image augmentation (prismatic/vla/datasets/datasets.py, `image_aug=True`), applied in
# this order: a random crop of 90% of the area at aspect ratio 1, resized back; then colour jitter.
CROP_SCALE = 0.9
BRIGHTNESS_DELTA = 0.2
CONTRAST_RANGE = (0.8, 1.2)
SATURATION_RANGE = (0.8, 1.2)
HUE_DELTA = 0.05


# === Data ===
def vla_examples(policy: Any, dataset: Any, stats: Mapping[str, Any], unnorm_key: str) -> list[dict]:
    """One OpenVLA training example per frame of `dataset` (no image decoded): `input_ids`, `labels` (the
    action tokens and EOS), `frame` (the index to read its image from) and `action` (float32, the robot's
    units, for the L1 metric). Actions are normalized with the dataset's statistics (BOUNDS_Q99)."""
    from llm_backbones.data.examples import vla_example
    from llm_backbones.data.robot import normalize_actions

    actions = dataset.actions()
    normalized = normalize_actions(actions, stats[unnorm_key])
    examples = []
    for i, (instruction, action, target) in enumerate(
        zip(dataset.instructions(), actions, normalized, strict=True)
    ):
        example = vla_example(
            policy.tokenizer, policy.backbone.prompt_builder_fn, policy.action_tokenizer, instruction, target
        )
        example["frame"] = i
        example["action"] = torch.from_numpy(np.asarray(action, dtype=np.float32))
        examples.append(example)
    return examples


def augment_image(image: np.ndarray, rng: Any) -> np.ndarray:
    """OpenVLA's `image_aug` on one uint8 `[H, W, 3]` image (see the constants): random resized crop, then
    brightness, contrast, saturation and hue jitter, each result clipped to [0, 1]; a uint8 image of the same
    size. `rng` (a `np.random.Generator`) gives five `uniform(low, high)` draws, one per stage in that order,
    so the result is deterministic in it.

    [Contract] OpenVLA runs dlimp's `augment_image` (moojink/dlimp_openvla, dlimp/augmentations.py), which
    applies TensorFlow's ops to the image as float32 in [0, 1], clipping after each; their semantics, kept
    here:
    - `random_resized_crop` (dlimp): `tf.image.crop_and_resize` of the box of side sqrt(scale) = sqrt(0.9)
      (ratio 1) back to H x W, bilinear, the box's corners on pixel centres. dlimp draws the height and the
      width offsets from the same seed, so both are the same fraction u of their range: the box starts at
      (u * (1 - side), u * (1 - side)), on the diagonal. Kept, as OpenVLA's models saw it.
    - `tf.image.adjust_brightness`: adds delta.
    - `tf.image.adjust_contrast`: (x - mean) * factor + mean, the mean of each channel over the image.
    - `tf.image.adjust_saturation`: RGB -> HSV, S * factor clipped to [0, 1], back to RGB.
    - `tf.image.adjust_hue`: RGB -> HSV, H + delta modulo 1, back to RGB.
    - back to uint8 as `tf.image.convert_image_dtype(saturate=True)` does: x * 255.5, truncated.
    """
    x = image.astype(np.float32) / 255.0
    side = math.sqrt(CROP_SCALE)
    start = rng.uniform(0.0, 1.0) * (1 - side)
    x = np.clip(_crop_and_resize(x, (start, start, start + side, start + side)), 0, 1)
    x = np.clip(x + np.float32(rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)), 0, 1)
    mean = x.mean(axis=(0, 1), keepdims=True)
    x = np.clip((x - mean) * np.float32(rng.uniform(*CONTRAST_RANGE)) + mean, 0, 1)
    hue, saturation, value = _rgb_to_hsv(x)
    saturation = np.clip(saturation * np.float32(rng.uniform(*SATURATION_RANGE)), 0, 1)
    x = np.clip(_hsv_to_rgb(hue, saturation, value), 0, 1)
    hue, saturation, value = _rgb_to_hsv(x)
    hue = np.mod(hue + np.float32(rng.uniform(-HUE_DELTA, HUE_DELTA)), 1).astype(np.float32)
    x = np.clip(_hsv_to_rgb(hue, saturation, value), 0, 1)
    return (x * np.float32(255.5)).astype(np.uint8)


def _crop_and_resize(x: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """`tf.image.crop_and_resize` of one float `[H, W, C]` image to its own size: the box `(y1, x1, y2, x2)`
    (fractions of the image) sampled at H x W points from y1 * (H - 1) to y2 * (H - 1) (and so for x),
    bilinearly between the four nearest pixels."""
    height, width = x.shape[:2]
    y1, x1, y2, x2 = box
    ys = np.clip((y1 + (y2 - y1) * np.arange(height) / max(height - 1, 1)) * (height - 1), 0, height - 1)
    xs = np.clip((x1 + (x2 - x1) * np.arange(width) / max(width - 1, 1)) * (width - 1), 0, width - 1)
    top, left = np.floor(ys).astype(int), np.floor(xs).astype(int)
    bottom, right = np.ceil(ys).astype(int), np.ceil(xs).astype(int)
    wy = (ys - top).astype(np.float32)[:, None, None]
    wx = (xs - left).astype(np.float32)[None, :, None]
    upper = x[top][:, left] + (x[top][:, right] - x[top][:, left]) * wx
    lower = x[bottom][:, left] + (x[bottom][:, right] - x[bottom][:, left]) * wx
    return upper + (lower - upper) * wy


def _rgb_to_hsv(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in [0, 1) (0 for grays), saturation (max - min) / max (0 for black), value max, per pixel."""
    red, green, blue = x[..., 0], x[..., 1], x[..., 2]
    value = x.max(axis=-1)
    spread = value - x.min(axis=-1)
    saturation = np.where(value > 0, spread / np.where(value > 0, value, 1), 0)
    safe = np.where(spread > 0, spread, 1)
    sector = np.where(
        red == value,
        (green - blue) / safe,
        np.where(green == value, (blue - red) / safe + 2, (red - green) / safe + 4),
    )
    hue = np.where(spread > 0, np.mod(sector / 6, 1), 0)
    return hue.astype(np.float32), saturation.astype(np.float32), value


def _hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    chroma = saturation * value
    sector = hue * 6
    middle = chroma * (1 - np.abs(np.mod(sector, 2) - 1))
    zero = np.zeros_like(chroma)
    index = np.floor(sector).astype(int) % 6
    red = np.choose(index, [chroma, middle, zero, zero, middle, chroma])
    green = np.choose(index, [middle, chroma, chroma, middle, zero, zero])
    blue = np.choose(index, [zero, zero, middle, chroma, chroma, middle])
    return np.stack([red, green, blue], axis=-1) + (value - chroma)[..., None]


@dataclass
class VLACollator:
    """Pads a batch of `vla_examples` (`PaddedCollator`), reads and preprocesses each frame's image
    (`pixel_values`, augmented with `image_aug`: seeded by (seed, step, frame), so a resumed run sees the
    same images) and stacks the true actions (`actions`)."""

    dataset: Any
    image_processor: Any
    pad_token_id: int
    image_aug: bool = False
    seed: int = 0
    step: int = 0  # set by the loop before each step (the augmentation's seed)
    # frozen vision, no augmentation: each frame's vision features are computed once and kept here
    vision: nn.Module | None = None
    device: torch.device | None = None
    autocast: Any = None
    _features: dict[int, torch.Tensor] = field(default_factory=dict)

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        from llm_backbones.data.examples import PaddedCollator

        batch = PaddedCollator(model_max_length=None, pad_token_id=self.pad_token_id)(
            [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples]
        )
        batch["actions"] = torch.stack([e["action"] for e in examples])
        if self.vision is not None:
            batch["vision_features"] = torch.stack([self._frame_features(e["frame"]) for e in examples])
            return batch
        images = []
        for e in examples:
            image = self.dataset[e["frame"]].image
            if self.image_aug:
                image = augment_image(image, np.random.default_rng([self.seed, self.step, e["frame"]]))
            images.append(image)
        batch["pixel_values"] = self.image_processor(images)
        return batch

    @torch.no_grad()
    def _frame_features(self, frame: int) -> torch.Tensor:
        if frame not in self._features:
            pixels = self.image_processor([self.dataset[frame].image]).to(self.device)
            with self.autocast if self.autocast is not None else contextlib.nullcontext():
                self._features[frame] = self.vision(pixels)[0].float().cpu()
        return self._features[frame]


# === The model ===
class VLATrainModule(nn.Module):
    """The trainable step of a `VLAPolicy` as one module (for the optimizer and the checkpoints): patches =
    projector(vision(pixel_values)), spliced after BOS; returns the LLM's output with the logits of the
    text positions only (`[B, T, V]`, the last patch's first: it predicts the first text token), so the
    labels of `input_ids` line up as for a text model. The vision towers run without gradients unless
    `train_vision`."""

    def __init__(self, policy: Any, *, train_vision: bool = False) -> None:
        super().__init__()
        self.vision, self.projector, self.backbone = policy.vision, policy.projector, policy.backbone
        self.train_vision = train_vision

    def forward(self, input_ids, attention_mask, pixel_values=None, vision_features=None, labels=None):  # noqa: ARG002
        from llm_backbones.data.examples import insert_patch_embeddings

        if vision_features is not None:  # precomputed by a frozen tower (`VLACollator`)
            features = vision_features
        else:
            with torch.set_grad_enabled(self.train_vision and torch.is_grad_enabled()):
                features = self.vision(pixel_values)
        patches = self.projector(features)
        spliced = insert_patch_embeddings(self.backbone.embed_input_ids, input_ids, patches, attention_mask)
        # The last `input_ids.shape[1]` positions are the last patch's and the text's: the LM head runs on
        # those only (`logits_to_keep`), the same logits as slicing the full ones, without a vocabulary-wide
        # product per patch (most of a step's time with a small LLM)
        return self.backbone.llm(
            inputs_embeds=spliced["inputs_embeds"],
            attention_mask=spliced["attention_mask"],
            logits_to_keep=input_ids.shape[1],
        )


def lora_targets(module: VLATrainModule, *, train_vision: bool) -> list[str]:
    """The full names of the linear layers LoRA adapts: the LLM's (its head excluded) and the projector's,
    and the vision towers' with `train_vision`."""
    head = module.backbone.llm.get_output_embeddings()
    parts = ("backbone.", "projector.") + (("vision.",) if train_vision else ())
    return [
        name
        for name, m in module.named_modules()
        if isinstance(m, nn.Linear) and m is not head and name.startswith(parts)
    ]


def apply_vla_mode(module: VLATrainModule, cfg: VLAFinetuneConfig) -> nn.Module:
    """Set what trains for `cfg.mode` (see the module docstring); returns the module to train (a peft model
    wrapping `module` for LoRA)."""
    module.requires_grad_(False)
    backbone = module.backbone
    if cfg.mode == "full":
        backbone.requires_grad_(True)
        module.projector.requires_grad_(True)
        module.vision.requires_grad_(cfg.train_vision)
    elif cfg.mode == "last-layer":
        for part in backbone.last_layer_finetune_modules:
            part.requires_grad_(True)
        module.vision.requires_grad_(cfg.train_vision)
    else:
        from llm_backbones.training.lora import require_peft

        peft = require_peft()
        config = peft.LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_kwargs()["alpha"],
            lora_dropout=cfg.lora_dropout,
            target_modules=lora_targets(module, train_vision=cfg.train_vision),
            init_lora_weights="gaussian",
            bias="none",
        )
        model = peft.get_peft_model(module, config)
        # recorded in adapter/adapter_config.json: the policy the adapters go on (peft would write null)
        model.peft_config["default"].base_model_name_or_path = cfg.policy
        return model
    return module


# === Metrics ===
@dataclass
class ActionMetrics:
    """OpenVLA's per-step metrics from the training forward's logits (teacher-forced): action-token accuracy
    (argmax at the positions whose label is an action token; EOS excluded), the L1 of the normalized actions
    those tokens decode to (OpenVLA's `l1_loss`), and the L1 in the robot's units (bin centres un-normalized
    with the dataset's statistics, against the true actions)."""

    action_tokenizer: Any
    norm_stats: Mapping[str, Any]
    unnorm_key: str
    correct: int = 0
    total: int = 0
    l1_normalized: float = 0.0
    l1: float = 0.0
    values: int = 0

    def reset(self) -> None:
        self.correct = self.total = self.values = 0
        self.l1_normalized = self.l1 = 0.0

    def _decode(self, ids: torch.Tensor) -> np.ndarray:
        """OpenVLA's rule: vocab_size - id - 1, clipped to the bin centres."""
        centers = self.action_tokenizer.bin_centers.numpy()
        bins = self.action_tokenizer.base_vocab_size - ids.cpu().numpy() - 1
        return centers[np.clip(bins, 0, centers.shape[0] - 1)]

    def __call__(self, batch: Mapping[str, torch.Tensor], logits: torch.Tensor) -> None:
        from llm_backbones.data.norm_stats import unnormalize_actions

        preds = logits[:, :-1].argmax(-1)
        labels = batch["labels"][:, 1:]
        mask = labels > self.action_tokenizer.action_token_begin_idx
        self.correct += int(((preds == labels) & mask).sum())
        self.total += int(mask.sum())
        for row in range(labels.shape[0]):
            gt_ids, pred_ids = labels[row][mask[row]], preds[row][mask[row]]
            truth = batch["actions"][row].cpu().double().numpy()
            if gt_ids.numel() != truth.shape[0]:
                continue  # a truncated example
            predicted = self._decode(pred_ids)
            self.l1_normalized += float(np.abs(predicted - self._decode(gt_ids)).sum())
            actions = unnormalize_actions(predicted, self.norm_stats, self.unnorm_key)
            self.l1 += float(np.abs(actions - truth).sum())
            self.values += truth.shape[0]

    def all_reduce(self, ctx: Any) -> None:
        """Sum the counts and L1 sums over the ranks (each saw its share of the global batch), so `record`
        gives the global batch's numbers on every rank; nothing in a single process."""
        from llm_backbones.training.distributed import all_reduce_sum

        if ctx is None or not ctx.enabled:
            return
        sums = torch.tensor(
            [self.correct, self.total, self.l1_normalized, self.l1, self.values],
            dtype=torch.float64,
            device=ctx.device,
        )
        correct, total, self.l1_normalized, self.l1, values = all_reduce_sum(sums, ctx).tolist()
        self.correct, self.total, self.values = int(correct), int(total), int(values)

    def record(self, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}action_accuracy": self.correct / max(self.total, 1),
            f"{prefix}action_l1_normalized": self.l1_normalized / max(self.values, 1),
            f"{prefix}action_l1": self.l1 / max(self.values, 1),
        }


# === The job ===
@dataclass
class VLAFinetuneResult:
    losses: list[float]  # one per step this invocation ran
    action_accuracy: list[float]
    action_l1: list[float]  # un-normalized
    trainable_params: int
    total_params: int
    norm_stats: dict[str, Any]
    unnorm_key: str
    output: str | None = None  # the export folder
    start_step: int = 0
    evals: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)


def _open_dataset(data: Any, cfg: VLAFinetuneConfig, what: str) -> Any:
    from llm_backbones.data.robot import RobotDataset, open_robot_dataset

    if isinstance(data, RobotDataset):
        return data
    if data is None:
        raise FinetuneError(f"No {what} given: pass --data DATASET (a LeRobot folder or a JSONL file).")
    keys = {"image_key": cfg.image_key, "action_key": cfg.action_key, "task_key": cfg.task_key}
    return open_robot_dataset(data, **{k: v for k, v in keys.items() if v is not None})


def run_finetune_vla(
    policy: Any = None,
    dataset: Any = None,
    *,
    eval_dataset: Any = None,
    config: VLAFinetuneConfig | None = None,
    on_step: Callable[[int, float], None] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    on_ready: Callable[[], None] | None = None,
    **options: Any,
) -> VLAFinetuneResult:
    """Fine-tune a VLA on robot episodes, in one process (the policy is trained in place) or under torchrun
    (FSDP, see the module docstring; the policy then as a path, `cfg.fsdp` picks FSDP2 or FSDP1).

    `policy` is a `VLAPolicy`, a checkpoint path (`load_vla(path, vision_depth=...)`), or None with the
    options `llm` and `vision` (a fresh policy, `build_vla`; see `VLAFinetuneConfig`), `dataset` a
    `RobotDataset` or a path (`open_robot_dataset`), `eval_dataset` likewise (default: `eval_data`).
    `options` are `VLAFinetuneConfig`'s settings (`mode`, `steps`, `batch_size`, `grad_accum`, `lr`,
    `lr_schedule`, `warmup_steps`, `max_grad_norm`, `seed`, `unnorm_key`, `lora_rank`, `lora_alpha`,
    `lora_dropout`, `train_vision`, `image_aug`, `eval_every`, `log_every`, `save_every`, `keep`, `output`,
    `resume`, `overwrite`, `device`, `precision`, `fsdp`).

    The statistics are the dataset's (`dataset.statistics(unnorm_key)`, key default: the dataset's name).
    With `output`: DCP checkpoints every `save_every` steps and at the end, exactly resumable (`resume`),
    `metrics.jsonl` (loss, lr, grad norm, action accuracy, action L1 per step; the same with `eval_` on the
    eval set), `run_config.json`, and the export in `output/export` (an HF OpenVLA checkpoint `load_vla`
    loads, with the statistics as its `norm_stats`); with `mode="lora"` also the adapters alone, in peft's
    format, in `output/adapter`. `on_ready()` runs once every check of the settings, the output folder and
    the data has passed, before any model is built (the CLI shows its progress bar from then on).
    """
    from llm_backbones.training.checkpoint import RunDir
    from llm_backbones.training.distributed import init_distributed

    if policy is not None and not hasattr(policy, "predict_action"):
        options["policy"] = str(policy)
        policy = None
    if policy is not None and any(options.get(k) is not None for k in ("policy", "llm", "vision")):
        raise FinetuneError(
            "A VLAPolicy and policy=/llm=/vision= (a policy to load or build) were both given: pass one of "
            "them."
        )
    for name, value in (("data", dataset), ("eval_data", eval_dataset)):
        if isinstance(value, (str, Path)):
            options[name] = str(value)
    cfg = VLAFinetuneConfig.from_mapping(options, "run_finetune_vla", config)
    if eval_dataset is not None and not isinstance(eval_dataset, (str, Path)) and cfg.eval_data is None:
        cfg.eval_data = "<in memory>"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cfg.validate(world_size)
    if world_size > 1 and policy is not None:
        raise FinetuneError(
            f"Under torchrun (WORLD_SIZE={world_size}) the policy must be given as a checkpoint path "
            "(--policy PATH, or policy=PATH), not as a loaded VLAPolicy: rank 0 rebuilds it from the path to "
            "export the gathered weights. Pass the path it was loaded from."
        )
    if policy is None:
        cfg.check_start()
    run = RunDir(cfg.output) if cfg.output is not None else None
    if run is not None:
        run.check(resume=cfg.resume, overwrite=cfg.overwrite)
    # the data is read and checked before any model is built
    dataset = _open_dataset(dataset if dataset is not None else cfg.data, cfg, "training data")
    if eval_dataset is None and cfg.eval_data is not None:
        eval_dataset = _open_dataset(cfg.eval_data, cfg, "eval data")
    check_batch_size(cfg.batch_size, len(dataset), f"the dataset {str(dataset.root)!r}")
    unnorm_key = cfg.unnorm_key or dataset.name
    stats = dataset.statistics(unnorm_key)
    if on_ready is not None:
        on_ready()
    if policy is None:
        policy = policy_from_config(cfg)
    ctx = init_distributed(cfg.device)
    try:
        return _train_vla(cfg, ctx, run, policy, dataset, eval_dataset, stats, unnorm_key, on_step, on_record)
    finally:
        if ctx.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def policy_from_config(cfg: VLAFinetuneConfig) -> Any:
    """The run's starting policy, as its settings name it: the one place a run's policy is built (the run
    itself, `--resume` and the `export` of a run's checkpoint all come here). A checkpoint (`policy`) through
    `load_vla`; a fresh policy (`llm`, `vision`) through `build_vla`, deterministic in the settings (`seed`
    included), so a run's `run_config.json` rebuilds it (its random weights are then replaced by a
    checkpoint's)."""
    cfg.check_start()
    if cfg.policy is not None:
        from llm_backbones.vla.loading import load_vla

        return load_vla(cfg.policy, vision_depth=cfg.vision_depth)
    from llm_backbones.vla.assemble import DEFAULT_RESIZE_STRATEGY, build_vla

    return build_vla(
        cfg.llm,
        cfg.vision,
        llm_model_path=cfg.llm_path,
        vision_weights=cfg.weight_sources(),
        vision_depth=cfg.vision_depth,
        image_resize_strategy=cfg.image_resize_strategy or DEFAULT_RESIZE_STRATEGY,
        seed=cfg.seed,
    )


class _FrameSteps:
    """`training.loop.Recipe` of `finetune-vla`: micro-batches of robot frames (augmented per step with
    `--image-aug`), OpenVLA's action metrics observed in every forward and summed over the ranks, examples per
    second, the same metrics on the eval split."""

    def __init__(
        self, cfg, ctx, model, collate, eval_collate, examples, eval_examples, metrics, result, autocast
    ):
        self.cfg, self.ctx, self.model, self.result = cfg, ctx, model, result
        self.collate, self.eval_collate, self.metrics = collate, eval_collate, metrics
        self.examples, self.eval_examples = examples, eval_examples
        self.order = DataOrder(len(examples), cfg.batch_size, cfg.seed)
        self.micro_size = cfg.batch_size // (cfg.grad_accum * ctx.world_size)
        self.step_options = {"autocast": autocast, "observe": metrics}
        self.has_eval = eval_examples is not None
        self.action: dict[str, float] = {}
        self.seconds = 0.0

    def batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        cfg, ctx = self.cfg, self.ctx
        self.collate.step = step  # the augmentation's seed
        self.metrics.reset()
        shares = rank_micro_batches(self.order.batch(step - 1), cfg.grad_accum, ctx.world_size, ctx.rank)
        return [
            {k: v.to(ctx.device) for k, v in self.collate([self.examples[i] for i in share]).items()}
            for share in shares
        ]

    def after_step(self, step: int, stats, seconds: float) -> None:
        self.metrics.all_reduce(self.ctx)  # the global batch's counts, not this rank's share
        self.action, self.seconds = self.metrics.record(), seconds
        self.result.action_accuracy.append(self.action["action_accuracy"])
        self.result.action_l1.append(self.action["action_l1"])

    def record(self, step: int, stats, lr: float) -> dict[str, Any]:
        return {
            "step": step,
            "loss": stats.loss,
            **self.action,
            "lr": lr,
            "grad_norm": stats.grad_norm,
            "examples_per_s": self.cfg.batch_size / max(self.seconds, 1e-9),
            "world_size": self.ctx.world_size,
        }

    def evaluate(self, step: int) -> dict[str, Any]:
        self.metrics.reset()
        eval_loss = evaluate(
            self.model,
            self.eval_examples,
            self.eval_collate,
            micro_batch_size=self.micro_size,
            device=self.ctx.device,
            ctx=self.ctx,
            autocast=self.step_options["autocast"],
            observe=self.metrics,
        )
        self.metrics.all_reduce(self.ctx)
        record = {"step": step, "eval_loss": eval_loss, **self.metrics.record("eval_")}
        self.result.evals.append(record)
        return record


def _train_vla(cfg, ctx, run, policy, dataset, eval_dataset, stats, unnorm_key, on_step, on_record):
    from llm_backbones.core.backbones.backbone import count_parameters
    from llm_backbones.training.checkpoint import ADAPTER_DIR, dataset_sha256
    from llm_backbones.training.distributed import (
        full_state_dict,
        on_main,
        shard_fsdp2_from_rank0,
        wrap_fsdp1,
    )
    from llm_backbones.training.finetune import _prepare_output, setup_optimizer

    checkpoint = meta = data_sha256 = None
    if run is not None:  # the data's hash goes into the checkpoints, for --resume to check
        data_sha256 = dataset_sha256(dataset.root)  # the .jsonl and images, or LeRobot's meta and parquet
        data = (data_sha256, f"the dataset {str(dataset.root)!r}")
        checkpoint, meta = on_main(ctx, lambda: _prepare_output(cfg, run, data))
    precision = cfg.precision or ("bf16" if ctx.device.type == "cuda" else "fp32")
    examples = vla_examples(policy, dataset, stats, unnorm_key)
    eval_examples = None
    if eval_dataset is not None:
        eval_examples = vla_examples(policy, eval_dataset, stats, unnorm_key)
    if meta is not None and meta.get("n_examples") != len(examples):
        raise FinetuneError(
            f"The checkpoint at step {meta['step']} was trained on {meta.get('n_examples')} frames, but the "
            f"data now holds {len(examples)}: the data order would differ. Resume with the run's own data."
        )
    torch.manual_seed(cfg.seed)
    export_dtype = policy.dtype
    fsdp2 = ctx.enabled and cfg.fsdp == 2
    # FSDP2 puts the shards on the device itself (rank 0's weights, sent to each rank): the whole policy never
    # sits there
    model = vla_train_model(policy, cfg, None if fsdp2 else ctx.device)
    trainable, total = count_parameters(model)
    logger.info("%s: %s of %s parameters trainable", cfg.mode, f"{trainable:,}", f"{total:,}")
    half = policy.backbone.half_precision_dtype if precision == "bf16" else None
    # FSDP: one unit per decoder layer, then the root VLATrainModule (vision towers, projector, embeddings and
    # head); with LoRA the peft model wraps that root (FSDP2) or is wrapped itself (FSDP1)
    if fsdp2:
        module = (
            model.get_base_model() if hasattr(model, "get_base_model") else model
        )  # inside peft's wrapper
        shard_fsdp2_from_rank0(policy.backbone, ctx, param_dtype=half, root=module)
    elif ctx.enabled:
        model = wrap_fsdp1(policy.backbone, ctx.device, param_dtype=half, root=model)
    autocast = torch.autocast(ctx.device.type, dtype=half) if half is not None and not ctx.enabled else None
    optimizer, scheduler, start_step = setup_optimizer(model, cfg, checkpoint, ctx)

    pad = policy.backbone.pad_token_id
    # A frozen tower gives each frame the same features every epoch: computed once per frame, when they fit.
    # Not under FSDP: the towers' weights are whole only inside the sharded model's forward, where they run.
    frozen = dict(vision=policy.vision, device=ctx.device, autocast=autocast)
    cache = (
        not ctx.enabled
        and not cfg.train_vision
        and _features_fit(policy, len(examples) + len(eval_examples or ()))
    )
    collate = VLACollator(
        dataset,
        policy.image_processor,
        pad,
        image_aug=cfg.image_aug,
        seed=cfg.seed,
        **(frozen if cache and not cfg.image_aug else {}),
    )
    eval_collate = None
    if eval_dataset is not None:
        eval_collate = VLACollator(eval_dataset, policy.image_processor, pad, **(frozen if cache else {}))
    metrics = ActionMetrics(policy.action_tokenizer, stats, unnorm_key)
    result = VLAFinetuneResult([], [], [], trainable, total, stats, unnorm_key, start_step=start_step)
    recipe = _FrameSteps(
        cfg, ctx, model, collate, eval_collate, examples, eval_examples, metrics, result, autocast
    )
    checkpoint_meta = {
        "config": cfg.saved(),
        "n_examples": len(examples),
        "norm_stats": stats,
        "data_sha256": data_sha256,
    }
    run_steps(
        cfg,
        ctx,
        run,
        recipe,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        start_step=start_step,
        checkpoint_meta=checkpoint_meta,
        losses=result.losses,
        checkpoints=result.checkpoints,
        on_step=on_step,
        on_record=on_record,
    )

    export_dir = adapter_dir = None
    if run is not None:
        export_dir, adapter_dir = run.path / EXPORT_DIR, run.path / ADAPTER_DIR
    if not ctx.enabled:
        output = finish_and_export(
            policy, model, stats, dtype=export_dtype, output=export_dir, adapter=adapter_dir
        )
        result.output = str(output) if output is not None else None
    elif run is not None:  # the whole weights, gathered from every rank's shards; exported once, by rank 0
        state = full_state_dict(model)
        result.output = on_main(
            ctx, lambda: str(_export_gathered(cfg, state, stats, export_dir, adapter_dir))
        )
    return result


def vla_train_model(policy: Any, cfg: VLAFinetuneConfig, device: torch.device | None) -> nn.Module:
    """The model a run trains and checkpoints: `policy` (changed in place) on `device` (None: where it is,
    for FSDP2 to shard) with fp32 master weights (bf16 through autocast or FSDP's mixed precision), wrapped
    in a `VLATrainModule` and set up for `cfg.mode` (`apply_vla_mode`). The run and the export of its
    checkpoints (`export_checkpoint`) build it here, so the checkpoints' keys match."""
    policy.to(device, torch.float32)
    if policy.backbone.inference_mode:
        policy.backbone.set_training_flags()
    return apply_vla_mode(VLATrainModule(policy, train_vision=cfg.train_vision), cfg)


def finish_and_export(
    policy: Any,
    model: nn.Module,
    stats: Mapping[str, Any],
    *,
    dtype: torch.dtype,
    output: Path | None,
    adapter: Path | None,
) -> Path | None:
    """The end of a run, and of the export of one of its checkpoints: with LoRA and an `adapter` folder, the
    adapters alone in peft's format (`save_adapter`, before merging); then `finish_policy` (merged, the
    statistics as `norm_stats`, `dtype`); then, with `output`, the HF OpenVLA export (`export_vla`). Returns
    the export's folder, or None without `output`."""
    if adapter is not None and hasattr(model, "peft_config"):
        from llm_backbones.training.lora import save_adapter

        save_adapter(model, adapter)
    finish_policy(policy, model, stats, dtype=dtype)
    return export_vla(policy, output) if output is not None else None


def export_checkpoint(checkpoint: Path, meta: Mapping[str, Any], output: Path, adapter: Path) -> Path:
    """Export one checkpoint of a finetune-vla run (`training.export.export_run`): the run's starting policy
    rebuilt from its settings (`meta["config"]`, `policy_from_config`), set up as the run's
    (`vla_train_model`, on the CPU), the checkpoint's trainable weights loaded, then `finish_and_export` with
    the run's statistics (`meta["norm_stats"]`; the data's for checkpoints written before they were kept).
    Returns `output`."""
    from llm_backbones.training.checkpoint import META_FILE, load_weights

    source = str(checkpoint / META_FILE)
    cfg = VLAFinetuneConfig.from_mapping(meta["config"], source)
    if cfg.policy is None:
        raise CheckpointError(
            f"{source} names no policy checkpoint (the run was given a policy object in memory), so the "
            "run's starting policy cannot be rebuilt. Export runs started with --policy PATH "
            "(run_finetune_vla(path, ...))."
        )
    stats = meta.get("norm_stats")
    if stats is None:  # a checkpoint written before the statistics were kept in it: the data's again
        if cfg.data is None:
            raise CheckpointError(
                f"{source} holds no action statistics and names no data to compute them from (the run was "
                "given a dataset in memory). Export a checkpoint written by this version, which keeps them."
            )
        dataset = _open_dataset(cfg.data, cfg, "training data")
        stats = dataset.statistics(cfg.unnorm_key or dataset.name)
    torch.manual_seed(cfg.seed)
    policy = policy_from_config(cfg)
    dtype = policy.dtype
    model = vla_train_model(policy, cfg, torch.device("cpu"))
    load_weights(checkpoint, model)
    return finish_and_export(policy, model, stats, dtype=dtype, output=output, adapter=adapter)


def _export_gathered(
    cfg: VLAFinetuneConfig, state: Mapping[str, torch.Tensor], stats, output: Path, adapter: Path
) -> Path:
    """The export of a sharded run: the run's starting policy rebuilt unsharded (`policy_from_config`), in the
    trained model's shape (`vla_train_model`, LoRA adapters too), given the gathered weights, then
    `finish_and_export` as a single process ends (adapter saved, merged in fp32, its own dtype)."""
    policy = policy_from_config(cfg)
    dtype = policy.dtype
    model = vla_train_model(policy, cfg, torch.device("cpu"))
    model.load_state_dict(state)
    return finish_and_export(policy, model, stats, dtype=dtype, output=output, adapter=adapter)


FEATURE_CACHE_BYTES = 2 * 1024**3


def _features_fit(policy: Any, frames: int) -> bool:
    """Whether every frame's vision features (float32, host memory) fit in `FEATURE_CACHE_BYTES`."""
    spec = policy.vision.spec
    return frames * spec.num_patches * spec.embed_dim * 4 <= FEATURE_CACHE_BYTES


def finish_policy(policy: Any, model: nn.Module, stats: Mapping[str, Any], *, dtype: torch.dtype) -> None:
    """After training: LoRA adapters merged into the weights (the policy's modules are changed in place),
    the dataset's statistics as the policy's `norm_stats`, eval mode, no gradients, the original dtype."""
    if hasattr(model, "merge_and_unload"):
        model.merge_and_unload()
    policy.llm.norm_stats = dict(stats)
    for part in policy.modules():
        part.eval()
        part.requires_grad_(False)
    policy.to(dtype=dtype)


def export_vla(policy: Any, directory: Path) -> Path:
    """`export_openvla(policy, directory, overwrite=True)` with the policy's (the dataset's) statistics."""
    from llm_backbones.vla.export import export_openvla

    return export_openvla(policy, directory, norm_stats=policy.norm_stats, overwrite=True)


__all__ = [
    "VLA_MODES",
    "ActionMetrics",
    "VLACollator",
    "VLAFinetuneConfig",
    "VLAFinetuneResult",
    "VLATrainModule",
    "apply_vla_mode",
    "augment_image",
    "export_checkpoint",
    "finish_and_export",
    "lora_targets",
    "policy_from_config",
    "run_finetune_vla",
    "vla_examples",
    "vla_train_model",
]
