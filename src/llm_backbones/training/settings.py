"""The settings tables of the two fine-tuning recipes: every setting's name, type, default, help and check, in
one place. `FinetuneConfig` (`llm-backbones finetune`) and `VLAFinetuneConfig` (`finetune-vla`) are filled by
the CLI flags (generated from these tables, `app.cli`), a `--config` file, a resumed run's `run_config.json`
and the keyword arguments of `run_finetune` / `run_finetune_vla`. Importing this module loads no torch: the
CLI builds its flags from it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_backbones.errors import FinetuneError, closest

FINETUNE_MODES = ("frozen", "full", "last-layer", "lora")
VLA_MODES = ("full", "last-layer", "lora")
LR_SCHEDULES = ("cosine", "constant")
RUN_CONFIG = "run_config.json"  # a run's settings (`FinetuneConfig.saved`), in its output folder


# === Settings ===
def setting(
    default: Any, help: str, *, shown: str | None = None, flag: str | None = None, low: int | None = None
):
    """One row of a settings table: the default, the help the CLI shows for its flag (followed by "(default:
    `shown`, else the default)"; nothing for a default of None without `shown`), the flag where it is not
    `--name` (`--fast/--no-fast`; `--resume` for a switch), and the least value an int may take (`low`,
    checked by `validate`)."""
    return dataclasses.field(
        default=default, metadata={"help": help, "shown": shown, "flag": flag, "low": low}
    )


@dataclass
class FinetuneConfig:
    """Every setting of a fine-tuning run: the one table of name, type, default, help and check. The CLI
    flags of `finetune` are generated from it (`app.cli`), a `--config` file (YAML or JSON, keys spelled as
    the flags: `batch-size` or `batch_size`) and `run_finetune(**options)` fill it, `validate` checks it, and
    `saved()` is what a run writes into its output to be repeated exactly."""

    backbone: str | None = setting(None, "Backbone id (`llm-backbones list` shows them).")
    data: str | None = setting(
        None,
        "Conversations: a JSON or JSONL file of LLaVA records (conversations) or OpenAI chat records "
        "(messages).",
    )
    model_path: str | None = setting(
        None, "Local HF-format directory of the backbone's weights and tokenizer.", shown="its hub path"
    )
    mode: str = setting("full", "What trains: full, last-layer or lora.")
    prompt_format: str | None = setting(
        None, "Prompt format to train with, e.g. llama2-chat-prismatic.", shown="the backbone's"
    )
    steps: int = setting(10, "Optimizer steps of the whole run.", low=1)
    batch_size: int = setting(
        8, "Global batch of one optimizer step, split over --grad-accum micro-batches and the ranks.", low=1
    )
    grad_accum: int = setting(
        1, "Micro-batches accumulated per optimizer step; the global batch stays --batch-size.", low=1
    )
    lr: float = setting(1e-4, "Peak learning rate.")
    lr_schedule: str = setting("cosine", "After the warm-up: cosine (down toward 0 at --steps) or constant.")
    warmup_steps: int = setting(0, "Steps of linear warm-up up to --lr.", low=0)
    weight_decay: float = setting(0.0, "AdamW's decoupled weight decay.")
    max_grad_norm: float = setting(1.0, "Clip the global gradient norm to this; 0 turns clipping off.")
    lora_rank: int = setting(16, "--mode lora: the adapters' rank.", low=1)
    lora_alpha: int | None = setting(None, "--mode lora: the adapters' alpha.", shown="2 x --lora-rank")
    lora_dropout: float = setting(0.0, "--mode lora: dropout on the adapters' input.")
    max_length: int | None = setting(
        None, "Truncate examples to this many tokens.", shown="the backbone's llm_max_length"
    )
    seed: int = setting(0, "Data order and initialisation depend only on it.")
    precision: str | None = setting(None, "fp32 or bf16.", shown="bf16 on CUDA, fp32 on CPU")
    fsdp: int = setting(2, "FSDP version under torchrun: 2 (fully_shard) or 1.")
    device: str | None = setting(None, "cpu or cuda.", shown="cuda when available")
    fast: bool = setting(
        False,
        "backbone.enable_fast_training(): the loss without full logits; compiled decoder layers on CUDA.",
        flag="--fast/--no-fast",
    )
    gradient_checkpointing: bool = setting(
        False,
        "Recompute each decoder layer's activations in backward.",
        flag="--gradient-checkpointing/--no-gradient-checkpointing",
    )
    eval_data: str | None = setting(
        None, "Conversations (same formats as --data) to report the eval loss on."
    )
    eval_every: int = setting(0, "Evaluate every N steps, and after the last; 0: after the last only.", low=0)
    log_every: int = setting(1, "Write a metrics record every N steps.", low=1)
    save_every: int = setting(500, "Checkpoint (DCP) every N steps and after the last; 0: none.", low=0)
    keep: int = setting(2, "Checkpoints kept, newest first.", low=1)
    # Run control: where and how this invocation writes; not part of the saved settings.
    output: str | None = setting(
        None, "Run folder: checkpoints/, metrics.jsonl, run_config.json and the final model in export/."
    )
    resume: bool = setting(
        False,
        "Continue the run in --output from its latest complete checkpoint (settings not given: the run's "
        "own).",
        flag="--resume",
    )
    overwrite: bool = setting(
        False, "Replace the run in --output (only the run's own files).", flag="--overwrite"
    )
    metrics_json: str | None = setting(
        None, "Write the losses, world size and trainable parameter count here (JSON)."
    )

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

    def lora_kwargs(self) -> dict[str, Any]:
        """`lora_rank` / `lora_alpha` / `lora_dropout` as `training.lora.with_lora` takes them, alpha's
        default filled in (2 x rank, as r=16 / alpha 32 before these were settings)."""
        alpha = self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_rank
        return {"r": self.lora_rank, "alpha": alpha, "dropout": self.lora_dropout}

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
        """Raise `FinetuneError` for a setting that cannot run; nothing is read or built. The values first
        (no import), then what they need of this machine: peft for LoRA, a CUDA device for --device cuda."""
        self.check_values(world_size)
        if self.mode == "lora":  # without peft, say which extra to install
            from llm_backbones.training.lora import require_peft

            require_peft()
        check_device(self.device)

    def check_values(self, world_size: int = 1) -> None:
        """`validate`'s checks of the values alone: the table's bounds and choices, how settings combine."""
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
        if self.precision not in (None, "fp32", "bf16"):
            raise FinetuneError(
                f"precision must be fp32 or bf16, got {self.precision!r}; bf16 needs a GPU to be fast."
            )
        if self.fsdp not in (1, 2):
            raise FinetuneError(f"fsdp must be 1 or 2, got {self.fsdp!r}; 2 (fully_shard) is the default.")
        for row in dataclasses.fields(self):  # the table's bounds
            low, value = row.metadata.get("low"), getattr(self, row.name)
            if low is not None and value is not None and value < low:
                meaning = row.metadata["help"].rstrip(".")
                raise FinetuneError(f"--{_flag(row.name)} must be >= {low} ({meaning}), got {value!r}.")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise FinetuneError(
                f"--lora-alpha must be > 0, got {self.lora_alpha!r}; omit it for the default."
            )
        for name, value in (("lora_dropout", self.lora_dropout), ("weight_decay", self.weight_decay)):
            if not (math.isfinite(value) and 0 <= value < 1):
                raise FinetuneError(f"--{_flag(name)} must be in [0, 1), got {value!r}.")
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


def check_device(device: str | None) -> None:
    """`FinetuneError` unless `device` is None, "cpu", or "cuda" with a CUDA device present (the one device
    check of the settings and of `training.distributed.init_distributed`)."""
    if device not in (None, "cpu", "cuda"):
        raise FinetuneError(f"--device must be 'cpu' or 'cuda', got {device!r}.")
    if device == "cuda":
        import torch  # here, not at the top: the CLI reads this table without loading torch

        if not torch.cuda.is_available():
            raise FinetuneError(
                "--device cuda: torch sees no CUDA device here; drop --device (or pass --device cpu) to "
                "train on the CPU."
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


# === The VLA recipe ===
@dataclass
class VLAFinetuneConfig(FinetuneConfig):
    """`FinetuneConfig` plus the VLA's settings: the starting policy, the robot dataset (`data`, `image_key`,
    `action_key`, `task_key`, `unnorm_key`), LoRA's rank/alpha/dropout, `train_vision` and `image_aug`.
    `eval_data` is a robot dataset too. The LLM-only settings (`backbone`, `model_path`, `prompt_format`,
    `max_length`, `fast`, `gradient_checkpointing`) do not apply.

    The starting policy, one of two ways: a checkpoint (`policy`, `load_vla`), or a fresh one (`build_vla`)
    from a registry LLM id (`llm`, its weights from `llm_path` or the hub) and a vision backbone id (`vision`,
    random towers, or timm's weights from `vision_weights`: a .safetensors file or hf-hub:timm/<model id>, a
    comma between the two towers of a fused id), with `image_resize_strategy` (default letterbox) and `seed`.
    `vision_depth` cuts the towers of either. Everything that builds it is here, so `policy_from_config`
    rebuilds the same policy from a run's saved settings."""

    # The defaults that differ from `finetune`'s: OpenVLA's LoRA recipe (vla-scripts/finetune.py: r=32 on all
    # linear layers, lr 5e-4).
    data: str | None = setting(None, "Robot episodes: a LeRobot dataset folder or a .jsonl file.")
    mode: str = setting("lora", "What trains: full, last-layer or lora.")
    steps: int = setting(100, "Optimizer steps of the whole run.", low=1)
    lr: float = setting(5e-4, "Peak learning rate.")
    lora_rank: int = setting(32, "--mode lora: the adapters' rank (OpenVLA: 32).", low=1)
    lora_alpha: int | None = setting(None, "--mode lora: the adapters' alpha.", shown="min(--lora-rank, 16)")
    eval_data: str | None = setting(None, "Held-out robot episodes (same formats as --data).")
    output: str | None = setting(
        None, "Run folder: checkpoints/, metrics.jsonl, run_config.json and the export in export/."
    )
    policy: str | None = setting(None, "OpenVLA / Prismatic checkpoint to start from (load_vla).")
    llm: str | None = setting(
        None, "Instead of --policy, a fresh policy (build_vla): its LLM id (`llm-backbones list`)."
    )
    vision: str | None = setting(None, "The fresh policy's vision backbone id (e.g. siglip-vit-so400m).")
    llm_path: str | None = setting(None, "Local HF directory of the --llm weights.", shown="its hub path")
    vision_weights: str | None = setting(
        None,
        "timm's tower weights: a .safetensors file or hf-hub:timm/MODEL; a comma between the two towers of a "
        "fused id.",
        shown="random towers",
    )
    image_resize_strategy: str | None = setting(
        None, "Fresh policy: letterbox, resize-naive or resize-crop.", shown="letterbox"
    )
    vision_depth: int | None = setting(
        None, "Blocks per vision tower, for checkpoints whose towers were cut (or small fresh ones)."
    )
    image_key: str | None = setting(
        None, "LeRobot camera feature (observation.images.*).", shown="the dataset's only camera"
    )
    action_key: str | None = setting(None, "Action feature.", shown="action")
    task_key: str | None = setting(None, "Instruction column.", shown="task_index")
    unnorm_key: str | None = setting(
        None, "Name of the dataset's statistics in the export.", shown="the dataset's name"
    )
    train_vision: bool = setting(False, "Unfreeze the vision towers.", flag="--train-vision")
    image_aug: bool = setting(False, "OpenVLA's random resized crop and colour jitter.", flag="--image-aug")

    PATHS: typing.ClassVar[tuple[str, ...]] = (*FinetuneConfig.PATHS, "policy", "llm_path")
    FRESH_ONLY: typing.ClassVar[tuple[str, ...]] = ("llm_path", "vision_weights", "image_resize_strategy")
    NOT_FOR_VLA: typing.ClassVar[tuple[str, ...]] = (
        "backbone",
        "model_path",
        "prompt_format",
        "max_length",
        "fast",
        "gradient_checkpointing",
        "metrics_json",
    )

    def check_values(self, world_size: int = 1) -> None:
        super().check_values(world_size)
        defaults = VLAFinetuneConfig()
        for name in self.NOT_FOR_VLA:
            if getattr(self, name) != getattr(defaults, name):
                raise FinetuneError(
                    f"--{name.replace('_', '-')} is a setting of `finetune` (LLM on conversations); "
                    "finetune-vla takes the LLM, its tokenizer and prompt from --policy or --llm. Drop it."
                )
        if self.mode not in VLA_MODES:
            raise FinetuneError(
                f"Unknown VLA fine-tune mode {self.mode!r}; accepted: {', '.join(VLA_MODES)}."
            )
        if self.vision_depth is not None and self.vision_depth < 2:
            raise FinetuneError(
                f"--vision-depth must be >= 2 (the featurizer reads the second-to-last block), got "
                f"{self.vision_depth!r}."
            )

    def lora_kwargs(self) -> dict[str, Any]:
        """`FinetuneConfig.lora_kwargs` with OpenVLA's alpha default, min(rank, 16)."""
        alpha = self.lora_alpha if self.lora_alpha is not None else min(self.lora_rank, 16)
        return {**super().lora_kwargs(), "alpha": alpha}

    def check_start(self) -> None:
        """Raise `FinetuneError` unless the starting policy is named exactly one way (`policy`, or `llm` with
        `vision`), and an unknown id with the accepted ones (`UnknownBackboneError`, `VLACheckpointError`);
        nothing is read or built."""
        fresh = {"--llm": self.llm, "--vision": self.vision}
        if self.policy is not None and any(v is not None for v in fresh.values()):
            raise FinetuneError(
                f"Both --policy {self.policy!r} and --llm/--vision ({self.llm!r}, {self.vision!r}) were "
                "given: start from a checkpoint (--policy PATH) or from a fresh policy (--llm ID --vision "
                "ID), not both. Drop one."
            )
        if self.policy is None:
            missing = [flag for flag, value in fresh.items() if value is None]
            if len(missing) == 2:
                raise FinetuneError(
                    "No policy given: pass --policy PATH (an OpenVLA / Prismatic checkpoint), or --llm ID "
                    "--vision ID for a fresh policy (e.g. --llm qwen2.5-0.5b-pure --vision "
                    "siglip-vit-so400m; `llm-backbones list` shows the LLM ids)."
                )
            if missing:
                raise FinetuneError(
                    f"A fresh policy needs both --llm and --vision; {missing[0]} is missing (e.g. --llm "
                    "qwen2.5-0.5b-pure --vision siglip-vit-so400m)."
                )
            from llm_backbones.core.registry import get_spec
            from llm_backbones.vla.image_processing import RESIZE_STRATEGIES
            from llm_backbones.vla.vision import get_vision_spec

            get_spec(self.llm)
            get_vision_spec(self.vision)
            if self.image_resize_strategy not in (None, *RESIZE_STRATEGIES):
                raise FinetuneError(
                    f"--image-resize-strategy {self.image_resize_strategy!r} is not one of "
                    f"{', '.join(RESIZE_STRATEGIES)} (Prismatic's; OpenVLA's default is letterbox)."
                )
            return
        given = [f"--{n.replace('_', '-')}" for n in self.FRESH_ONLY if getattr(self, n) is not None]
        if given:
            raise FinetuneError(
                f"{', '.join(given)} set up a fresh policy (--llm/--vision); --policy {self.policy!r} brings "
                "its own LLM, vision weights and image processing. Drop them, or start fresh instead."
            )

    def weight_sources(self) -> list[str] | None:
        """`vision_weights` as `build_vla` takes them: one source per tower (split at commas)."""
        if self.vision_weights is None:
            return None
        return [part.strip() for part in self.vision_weights.split(",")]

    def saved(self) -> dict[str, Any]:
        """`FinetuneConfig.saved`, with local vision weight files made absolute too."""
        from llm_backbones.vla.assemble import HUB_PREFIX

        out = super().saved()
        sources = self.weight_sources()
        if sources is not None:
            out["vision_weights"] = ",".join(
                s if s.startswith(HUB_PREFIX) else str(Path(s).expanduser().absolute()) for s in sources
            )
        return out
