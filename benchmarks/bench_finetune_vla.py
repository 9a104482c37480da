"""Training step time and examples/s of `finetune-vla` against OpenVLA's own training step, on the same tiny
policy and the same batch, in one run. fp32 on CPU.

The policy is the fused `dinosiglip-224-naive` of tests/golden/fixtures/openvla_policy (OpenVLA's DINOv2 +
SigLIP architecture, towers cut to 3 blocks, a tiny LLaMA-2), loaded with `load_vla(folder, vision_depth=3)`.
The data: `--batch` frames (224x224 images, instructions, 7-D actions) written as a JSONL robot dataset; one
global batch of all of them per step. Its collated tensors (input_ids, attention_mask, labels, pixel_values,
made by our `vla_examples` + `VLACollator`) are written to a file that OpenVLA's side reads, so both sides
train on identical tensors.

Modes: `full` (vision frozen, projector + LLM trained: Prismatic's `vla-train`) and `lora` (r=32 adapters on
every linear layer: OpenVLA's finetune.py, whose "all-linear" also adapts the vision towers; ours does so
with `train_vision=True`, and adapts the LLM and projector only by default, timed as `run_lora_default`).

Ours, two measures, median over `--n` steps after `--warmup`:
- `step`: the training step alone, as `run_finetune_vla` builds it (`VLATrainModule`, `apply_vla_mode`,
  `setup_optimizer`, `optimizer_step` with its default clip at 1.0) on the saved batch: vision run every
  step. The same work as OpenVLA's step.
- `run`: `run_finetune_vla` itself on the dataset (what users run), per step from its `on_step` callback
  (data collation, metrics and scheduler included; its metrics' own `examples_per_s` would also count the
  OpenVLA step run inside `on_step`, so it is not used). With frozen vision and
  no augmentation it computes each frame's vision features once and keeps them (so after the first epoch a
  step runs no vision): that is what a user's run does, and less work than OpenVLA's step.
OpenVLA's: scripts/openvla_train_step.py in the throw-away environment (`--reference-python`), forward +
backward (+ clip for full) + AdamW, kept running beside ours (`--serve`): after each of our steps it runs one
of its own, so every ratio compares two steps run back to back (the machine is shared: its load changes
over minutes, not seconds). Prints JSON.

    python benchmarks/bench_finetune_vla.py [--n 8] [--warmup 2] [--rounds 1] \
        [--reference-python /tmp/openvla-ref/bin/python --openvla-mirror /work/.mirror/openvla+openvla/repo] \
        [--out benchmarks/results/DATE-finetune-vla-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from _common import cpu_description, gemm_gflops
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import openvla_reference_spec as spec  # noqa: E402
from llm_backbones.vla.loading import load_vla  # noqa: E402
from vla_checkpoints import write_hf_checkpoint  # noqa: E402

NAME = "dinosiglip-224-naive"
LR = {"full": 2e-5, "lora": 5e-4}  # OpenVLA's: its VLA configs (vla-train), finetune.py (LoRA)
UNNORM_KEY = "bench"
NOTES = [
    "step: forward + backward + clip at 1.0 + fused AdamW on the saved batch (vision every step); run: "
    "run_finetune_vla per step (on_step to on_step: collate, step, metrics, scheduler), its vision features "
    "computed once per frame when the towers are frozen and there is no augmentation (run_full, "
    "run_lora_default), images preprocessed every step otherwise (run_lora_all_linear)",
    "OpenVLA: OpenVLAForActionPrediction.forward(labels=...) (HF port of PrismaticVLM.forward) + backward "
    "+ torch AdamW (its default, single-tensor on CPU); full also clips at 1.0 (Prismatic), lora does not "
    "(finetune.py)",
    "OpenVLA's featurizer runs every block of a tower (timm get_intermediate_layers) though it reads the "
    "second-to-last; ours stops there: with 3-block towers OpenVLA's vision forward is 1.5x ours (1/24 more "
    "on the real 24/27-block towers)",
    "lora: peft 0.11.1's target_modules='all-linear' on OpenVLA's model also adapts language_model.lm_head "
    "(its output-layer exclusion compares a full name with leaf names), the towers' patch_embed.proj convs "
    "('proj' matches by suffix), the unused last blocks and SigLIP's attn_pool; ours (train_vision) adapts "
    "the linear layers of the blocks that run, the projector and the LLM without its head",
    "first_loss: same weights, same batch, LoRA B initialised to 0: the two sides' first loss must agree",
]


def write_dataset(folder: Path, frames: int) -> Path:
    """`frames` frames in 2 episodes: 224x224 images (the fixtures' rule), instructions, 7-D actions."""
    rng = np.random.default_rng(0)
    (folder / "frames").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(frames):
        name = f"frames/{i}.png"
        Image.fromarray(spec.image(i, 224, 224)).save(folder / name)
        action = rng.uniform(-1, 1, 7).round(3).tolist()
        instruction = spec.INSTRUCTIONS[i % len(spec.INSTRUCTIONS)]
        lines.append(
            json.dumps(
                {"image": name, "instruction": instruction, "action": action, "episode": 2 * i // frames}
            )
        )
    path = folder / f"{UNNORM_KEY}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_batch(checkpoint: Path, data: Path, path: Path) -> dict[str, torch.Tensor]:
    """The one global batch (every frame, in order) as `run_finetune_vla` collates it, saved to `path`."""
    from safetensors.torch import save_file

    from llm_backbones.data.robot import open_robot_dataset
    from llm_backbones.training.vla import VLACollator, vla_examples

    policy = load_vla(checkpoint, vision_depth=spec.VISION_DEPTH)
    dataset = open_robot_dataset(data)
    examples = vla_examples(policy, dataset, dataset.statistics(UNNORM_KEY), UNNORM_KEY)
    batch = VLACollator(dataset, policy.image_processor, policy.backbone.pad_token_id)(examples)
    tensors = {k: batch[k].contiguous() for k in ("input_ids", "attention_mask", "labels", "pixel_values")}
    save_file(tensors, path)
    return {**tensors, "actions": batch["actions"]}


def _config(mode: str, train_vision: bool, steps: int, batch_size: int):
    from llm_backbones.training.vla import VLAFinetuneConfig

    return VLAFinetuneConfig(
        mode=mode,
        train_vision=train_vision,
        steps=steps,
        batch_size=batch_size,
        lr=LR[mode],
        lr_schedule="constant",
    )


def ours_step(
    checkpoint: Path, batch: dict, mode: str, train_vision: bool, steps: int, warmup: int, partner
) -> dict:
    """The training step of `run_finetune_vla` (its pieces, as `_train_vla` puts them together) on `batch`."""
    from llm_backbones.core.backbones.backbone import count_parameters
    from llm_backbones.training.distributed import init_distributed
    from llm_backbones.training.finetune import setup_optimizer
    from llm_backbones.training.loop import optimizer_step
    from llm_backbones.training.vla import VLATrainModule, apply_vla_mode

    cfg = _config(mode, train_vision, steps, len(batch["input_ids"]))
    ctx = init_distributed(cfg.device)
    policy = load_vla(checkpoint, vision_depth=spec.VISION_DEPTH)
    torch.manual_seed(cfg.seed)
    policy.to(ctx.device, torch.float32)
    if policy.backbone.inference_mode:
        policy.backbone.set_training_flags()
    model = apply_vla_mode(VLATrainModule(policy, train_vision=cfg.train_vision), cfg)
    trainable, total = count_parameters(model)
    optimizer, _, _ = setup_optimizer(model, cfg, None, ctx)
    micro = [{k: v for k, v in batch.items() if k != "actions"}]
    model.train()
    gemm = gemm_gflops()
    times, losses, theirs = [], [], []
    for step in range(1, steps + 1):
        start = time.perf_counter()
        stats = optimizer_step(model, micro, optimizer, step=step, ctx=ctx, max_grad_norm=cfg.max_grad_norm)
        times.append((time.perf_counter() - start) * 1000)
        losses.append(stats.loss)
        theirs.append(partner())
    return _summary(times, losses, warmup, len(batch["input_ids"]), theirs) | {
        "gemm_gflops": gemm,
        "trainable_params": trainable,
        "total_params": total,
    }


def ours_run(
    checkpoint: Path, data: Path, mode: str, train_vision: bool, steps: int, warmup: int, size: int, partner
) -> dict:
    """`run_finetune_vla` itself; a step's time is from the end of the last `on_step` call (which ran the
    partner's step) to the next `on_step` call."""
    from llm_backbones.training.vla import run_finetune_vla

    policy = load_vla(checkpoint, vision_depth=spec.VISION_DEPTH)
    gemm = gemm_gflops()
    ends, resumes, theirs = [], [], []

    def on_step(step: int, loss: float) -> None:
        ends.append(time.perf_counter())
        theirs.append(partner())
        resumes.append(time.perf_counter())

    result = run_finetune_vla(
        policy,
        str(data),
        config=_config(mode, train_vision, steps, size),
        log_every=1,
        on_step=on_step,
    )
    times = [(end - resume) * 1000 for resume, end in zip(resumes, ends[1:], strict=False)]
    # step 1's time (from before the call) is not known; the measured steps are warmup + 1 ..
    out = _summary([float("nan")] + times, result.losses, warmup, size, theirs)
    out["gemm_gflops"] = gemm
    out["trainable_params"], out["total_params"] = result.trainable_params, result.total_params
    return out


def _summary(times: list[float], losses: list[float], warmup: int, size: int, theirs: list) -> dict:
    measured = times[warmup:]
    median = statistics.median(measured)
    out = {
        "step_ms": [round(t, 2) for t in times],
        "median_ms": round(median, 2),
        "min_ms": round(min(measured), 2),
        "n": len(measured),
        "examples_per_s": round(size / (median / 1000), 3),
        "first_loss": losses[0],
    }
    if theirs and theirs[0] is not None:
        paired = theirs[warmup:]
        out["openvla_paired_step_ms"] = [round(t, 2) for t in theirs]
        out["openvla_paired_median_ms"] = round(statistics.median(paired), 2)
        # OpenVLA's step right after ours, pair by pair: the load of a shared machine changes slowly
        out["speedup_vs_openvla"] = round(
            statistics.median(t / o for t, o in zip(paired, measured, strict=True)), 2
        )
    return out


class OpenVLAStepper:
    """scripts/openvla_train_step.py --serve in the throw-away environment: one OpenVLA step when called."""

    def __init__(self, args, batch_file: Path, mode: str, log: Path) -> None:
        self.log = log
        self.process = subprocess.Popen(
            [
                str(args.reference_python),
                str(ROOT / "scripts" / "openvla_train_step.py"),
                "--batch",
                str(batch_file),
                "--mode",
                mode,
                "--lr",
                str(LR[mode]),
                "--openvla-mirror",
                str(args.openvla_mirror),
                "--serve",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
            text=True,
            cwd=ROOT,
        )
        self.info = self._read("ready")
        self.losses: list[float] = []

    def _read(self, key: str) -> dict:
        for line in self.process.stdout:
            if line.startswith("{"):
                message = json.loads(line)
                if key in message:
                    return message
        raise RuntimeError(f"openvla_train_step.py ended: {self.log.read_text()[-2000:]}")

    def __call__(self) -> float:
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        message = self._read("ms")
        self.losses.append(message["loss"])
        return message["ms"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8, help="measured steps per configuration and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="rounds (a fresh OpenVLA process each)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--modes", nargs="+", default=["full", "lora"], choices=["full", "lora"])
    parser.add_argument("--reference-python", type=Path)
    parser.add_argument("--openvla-mirror", type=Path, default=Path("/work/.mirror/openvla+openvla/repo"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (run_finetune_vla's first step has no start time here)")
    import transformers

    steps = args.warmup + args.n
    result: dict = {
        "device": cpu_description(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "checkpoint": NAME,
        "batch": f"{args.batch} frames, 224x224 images, 7-D actions; one global batch per step, fp32",
        "lr": LR,
        "load_before": os.getloadavg(),
    }
    # ours: name -> (mode, train_vision, measure)
    ours = {
        "full": {"step_full": ("full", False, "step"), "run_full": ("full", False, "run")},
        "lora": {
            "step_lora_all_linear": ("lora", True, "step"),
            "run_lora_all_linear": ("lora", True, "run"),
            "run_lora_default": ("lora", False, "run"),
        },
    }
    runs: dict[str, list[dict]] = {}
    openvla_info: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = write_hf_checkpoint(NAME, tmp / NAME)
        data = write_dataset(tmp / "data", args.batch)
        batch_file = tmp / "batch.safetensors"
        batch = write_batch(checkpoint, data, batch_file)
        result["sequence_lengths"] = batch["attention_mask"].sum(1).tolist()
        result["supervised_tokens"] = int((batch["labels"][:, 1:] != -100).sum())
        for _ in range(args.rounds):
            for mode in args.modes:
                stepper = None
                if args.reference_python is not None:
                    stepper = OpenVLAStepper(args, batch_file, mode, tmp / f"openvla-{mode}.log")
                partner = stepper if stepper is not None else (lambda: None)
                for name, (m, train_vision, measure) in ours[mode].items():
                    if measure == "step":
                        out = ours_step(checkpoint, batch, m, train_vision, steps, args.warmup, partner)
                    else:
                        out = ours_run(
                            checkpoint, data, m, train_vision, steps, args.warmup, args.batch, partner
                        )
                    runs.setdefault(f"ours_{name}", []).append(out)
                    print(
                        f"ours {name}: {out['median_ms']} ms; OpenVLA {out.get('openvla_paired_median_ms')}",
                        file=sys.stderr,
                        flush=True,
                    )
                if stepper is not None:
                    stepper.close()
                    openvla_info.setdefault(mode, []).append({**stepper.info, "losses": stepper.losses})
    result["load_after"] = os.getloadavg()

    # per configuration: the median over the measured steps of all rounds; the speedup is the median of
    # the step-by-step ratios (OpenVLA's step / ours, each pair back to back)
    for name, outs in runs.items():
        steps_ms = [t for out in outs for t in out["step_ms"][args.warmup :]]
        median = statistics.median(steps_ms)
        entry = {
            "median_ms": round(median, 2),
            "examples_per_s": round(args.batch / (median / 1000), 3),
            "first_loss": outs[0]["first_loss"],
        }
        if "openvla_paired_step_ms" in outs[0]:
            theirs = [t for out in outs for t in out["openvla_paired_step_ms"][args.warmup :]]
            entry["openvla_paired_median_ms"] = round(statistics.median(theirs), 2)
            entry["openvla_paired_examples_per_s"] = round(args.batch / (statistics.median(theirs) / 1000), 3)
            entry["speedup_vs_openvla"] = round(
                statistics.median(t / o for t, o in zip(theirs, steps_ms, strict=True)), 2
            )
        entry["gemm_gflops"] = [out["gemm_gflops"] for out in outs]
        entry["rounds"] = outs
        result[name] = entry
    for mode, infos in openvla_info.items():
        # OpenVLA's first step ran on the fresh model, on the same batch as our first step: the same job
        first = infos[0]["losses"][0]
        result[f"openvla_{mode}"] = {
            "first_loss": first,
            "trainable_params": infos[0]["trainable_params"],
            "total_params": infos[0]["total_params"],
            "optimizer": infos[0]["optimizer"],
            "model": infos[0]["model"],
            "torch_threads": infos[0]["torch_threads"],
        }
        for name in ours[mode]:
            mine = result[f"ours_{name}"]
            mine["first_loss_abs_diff_vs_openvla"] = abs(mine["first_loss"] - first)
    if openvla_info:
        first = next(iter(openvla_info.values()))[0]
        result["openvla_versions"] = first["versions"]
        result["openvla_source"] = first["openvla"]
    result["notes"] = NOTES
    result["date"] = date.today().isoformat()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
